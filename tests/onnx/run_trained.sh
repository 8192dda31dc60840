#!/bin/sh
# Real data through the export: recipes/text_classify.lua trains its two
# models (a masked Transformer encoder, a masked LSTM) on Debian's fortunes
# for one epoch each, export_trained.lua exports them, and ONNX Runtime
# must agree with lunet's predictions on real sentences within 1e-4.
# Usage: run_trained.sh LUNET SOURCE_DIR WORKDIR
set -eu
lunet=$1 src=$2 work=$3
ort=${LUNET_ORT_DIR:-/opt/lunet-ort}
rm -rf "$work"
mkdir -p "$work"
"$lunet" "$src/recipes/text_classify.lua" --epochs 1 --verbose 0 --save "$work/tr.lunet" | tail -n 1
"$lunet" "$src/recipes/text_classify.lua" --epochs 1 --verbose 0 --model lstm --save "$work/lstm.lunet" | tail -n 1
"$lunet" "$src/tests/onnx/export_trained.lua" "$work"
NODE_PATH="$ort/node_modules" node "$src/tests/onnx/run_ort.js" "$work"
echo "onnx trained: ok"
