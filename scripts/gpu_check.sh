#!/bin/sh
# The GPU check of the Vulkan backend, on a machine with a GPU, from the
# repository root with .gpu (scripts/gpu_bundle.sh) carried along: the
# backend's test suite against the CPU, one training step's counters with
# the H200 estimate, training and inference throughput at several batch
# sizes, and the CPU backend on the same machine for the ratio.  The log
# goes to $OUT/gpu_check.log (the device tool brings $OUT back).
set -u
out=${OUT:-/tmp/gpu_check}
g=/tmp/lunet-gpu
mkdir -p "$out" "$g"
tar -C "$g" -xzf .gpu/bundle.tar.gz || exit 1
for f in "$g"/deb/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
export LD_LIBRARY_PATH="$g/prefix/lib:$g/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
lunet=$g/prefix/bin/lunet
be=$(dirname "$(find "$g/prefix" -name vulkan.so | head -1)")
cores=$(nproc)
{
  echo "== $(date -u) on $(uname -m), $cores cores"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  $lunet -e 'for _, b in ipairs(require("lunet").backends()) do print(b.name, b.available, b.device, b.detail) end'
  echo "== the Vulkan backend against the CPU (no validation layer there)"
  LUNET_VULKAN_VALIDATION=0 timeout 300 "$g/prefix/bin/test_vulkan_backend" "$be/cpu.so" "$be/vulkan.so"
  echo "== one training step's counters (batch 64 and 256)"
  timeout 120 $lunet bench/bench_cnn.lua --backend vulkan --batches 64,256 --stats --gpu h200
  echo "== throughput on Vulkan"
  timeout 240 $lunet bench/bench_cnn.lua --backend vulkan --batches 32,64,128,256 --seconds 3 --repeats 3 --infer-batch 256
  echo "== throughput on the CPU, $cores threads"
  timeout 120 $lunet bench/bench_cnn.lua --backend cpu --threads "$cores" --batches 64,256 --seconds 2 --repeats 2 --infer-batch 256
} 2>&1 | tee "$out/gpu_check.log"
