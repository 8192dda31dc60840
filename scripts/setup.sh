#!/bin/sh
# Installs lunet's dependencies (Debian 12 packages), builds it in build/
# and installs it under /usr/local, so `lua recipes/cifar_cnn.lua` works.
# Run as root from the repository root.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  ca-certificates gcc libc6-dev make cmake pkg-config \
  lua5.4 liblua5.4-dev libopenblas-dev libcurl4-openssl-dev zlib1g-dev \
  libarchive-dev libcjson-dev libstb-dev libedit-dev libssl-dev libpng-dev libjpeg62-turbo-dev libcsv-dev \
  libcairo2-dev fonts-dejavu-core libopenmpi-dev openmpi-bin libmicrohttpd-dev \
  libprotobuf-c-dev protobuf-c-compiler libonnx-dev python3-onnx nodejs \
  check libsubunit-dev python3 dataset-fashion-mnist fortunes clang libclang-rt-14-dev \
  libvulkan-dev glslang-tools mesa-vulkan-drivers vulkan-validationlayers >/dev/null
# ONNX Runtime, to run exported models in the tests: the npm registry's
# package holds the Linux library (its install script would download more)
# (Debian's npm, unless the machine's nodejs brings its own)
command -v npm >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends npm >/dev/null
if [ ! -d /opt/lunet-ort/node_modules/onnxruntime-node ]; then
  npm install --prefix /opt/lunet-ort --ignore-scripts --no-audit --no-fund --loglevel=error \
    onnxruntime-node@1.20.1 >/dev/null
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cmake --install build >/dev/null
ldconfig
echo "lunet installed: try 'lunet' for the REPL or 'lua recipes/fashion_mnist_cnn.lua'"
