#!/bin/sh
# Mixed precision on real data (Debian's dataset-fashion-mnist): the seed
# CNN, 2 epochs, the same seed, under float32 and under mixed_bfloat16; the
# bfloat16 run must reach 0.85 test accuracy and come within 0.01 of the
# float32 one.  Its saved model keeps the policy: loaded back (under the
# float32 policy) it gives the same test accuracy.
#   mixed_precision_accuracy.sh LUNET_EXECUTABLE SOURCE_DIR WORK_DIR
set -eu
. "$(dirname "$0")/fashion_setup.sh"
"$lunet" "$src/recipes/fashion_mnist_cnn.lua" --epochs 2 --verbose 2 | tee "$work/f32.log"
"$lunet" "$src/recipes/fashion_mnist_cnn.lua" --epochs 2 --verbose 2 --policy mixed_bfloat16 \
  --save "$work/bf16.safetensors" | tee "$work/bf16.log"
f32=$(accuracy "$work/f32.log") bf16=$(accuracy "$work/bf16.log")
[ -n "$f32" ] && [ -n "$bf16" ] || { echo "a run printed no test accuracy"; exit 1; }
echo "float32: $f32, mixed_bfloat16: $bf16"
awk -v a="$f32" -v b="$bf16" 'BEGIN { d = a - b; if (d < 0) d = -d
  if (b < 0.85) { print "mixed_bfloat16 reached only " b; exit 1 }
  if (d > 0.01) { print "mixed_bfloat16 (" b ") is more than 0.01 from float32 (" a ")"; exit 1 } }'
cat > "$work/reload.lua" <<LUA
local nn = require "lunet"
local _, _, x, y = nn.datasets.fashion_mnist.load_data{}
local m = nn.load_model("$work/bf16.safetensors")
assert(m.layers[2].dtype_policy == "mixed_bfloat16", "the file lost the policy")
print(string.format("reloaded test accuracy: %.4f", m:evaluate(x, y, {batch_size = 256}).accuracy))
LUA
reloaded=$("$lunet" "$work/reload.lua" | sed -n 's/^reloaded test accuracy: //p')
echo "reloaded: $reloaded"
[ "$reloaded" = "$bf16" ] || { echo "the reloaded model gives $reloaded, not $bf16"; exit 1; }
echo "mixed precision accuracy: ok"
