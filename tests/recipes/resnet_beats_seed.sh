#!/bin/sh
# On Fashion-MNIST (Debian's dataset-fashion-mnist), 2 epochs each: the seed
# CNN must reach 0.85 test accuracy, and the residual network
# (recipes/fashion_mnist_resnet.lua) must beat the seed CNN's own figure of
# this run.  Both save their models, which must load back.
# The reload evaluates raw uint8 images: the Rescaling is in the model.
#   resnet_beats_seed.sh LUNET_EXECUTABLE SOURCE_DIR WORK_DIR
set -eu
. "$(dirname "$0")/fashion_setup.sh"
"$lunet" "$src/recipes/fashion_mnist_cnn.lua" --epochs 2 --verbose 2 --save "$work/seed.safetensors" | tee "$work/seed.log"
"$lunet" "$src/recipes/fashion_mnist_resnet.lua" --epochs 2 --verbose 2 --save "$work/resnet.safetensors" | tee "$work/resnet.log"
seed=$(accuracy "$work/seed.log") resnet=$(accuracy "$work/resnet.log")
[ -n "$seed" ] && [ -n "$resnet" ] || { echo "a recipe printed no test accuracy"; exit 1; }
echo "seed CNN: $seed, ResNet: $resnet"
awk -v s="$seed" -v r="$resnet" 'BEGIN { if (s < 0.85) { print "the seed CNN reached only " s; exit 1 }
  if (r <= s) { print "the ResNet (" r ") does not beat the seed CNN (" s ")"; exit 1 } }'
# the saved ResNet loads back and gives the same test accuracy
cat > "$work/reload.lua" <<LUA
local nn = require "lunet"
local _, _, x, y = nn.datasets.fashion_mnist.load_data{}
local m = nn.load_model("$work/resnet.safetensors")
print(string.format("reloaded test accuracy: %.4f", m:evaluate(x, y, {batch_size = 256}).accuracy))
LUA
reloaded=$("$lunet" "$work/reload.lua" | sed -n 's/^reloaded test accuracy: //p')
echo "reloaded ResNet: $reloaded"
[ "$reloaded" = "$resnet" ] || { echo "the reloaded ResNet gives $reloaded, not $resnet"; exit 1; }
echo "resnet beats seed: ok"
