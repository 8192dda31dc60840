#!/bin/sh
# Builds examples/fashion_mnist.c against lunet installed into a scratch
# prefix, with nothing but `pkg-config lunet`, and runs it: the C API alone
# must train the seed CNN to 0.85 test accuracy in 2 epochs, save it, load it
# back and get the same predictions.
#   c_example.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -eu
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (scripts/setup.sh does)"
  exit 1
fi
build=$1 src=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
export PKG_CONFIG_PATH="$(ls -d "$work"/prefix/lib*/pkgconfig | head -n 1)"
libdir=$(pkg-config --variable=libdir lunet)
cc -std=gnu11 -O2 -Wall -Wextra -Werror "$src/examples/fashion_mnist.c" $(pkg-config --cflags --libs lunet) \
  -Wl,-rpath,"$libdir" -o "$work/fashion_mnist"
cd "$work"
./fashion_mnist --epochs 2 --min-accuracy 0.85 --save "$work/cnn.safetensors"
echo "C example: ok"
