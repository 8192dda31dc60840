#!/bin/sh
# ONNX export, end to end: lunet exports models holding every registered
# layer type (tests/onnx/export_models.lua), python3-onnx checks each file
# (tests/onnx/check_onnx.py) and ONNX Runtime runs each on lunet's inputs,
# agreeing with lunet's predictions within 1e-4 (tests/onnx/run_ort.js).
# Usage: run.sh LUNET WORKDIR; ONNX Runtime is looked for in
# $LUNET_ORT_DIR/node_modules (default /opt/lunet-ort, where
# scripts/setup.sh installs it).
set -eu
lunet=$1
work=$2
here=$(dirname "$0")
ort=${LUNET_ORT_DIR:-/opt/lunet-ort}
rm -rf "$work"
mkdir -p "$work"
"$lunet" "$here/export_models.lua" "$work"
/usr/bin/python3 "$here/check_onnx.py" "$work"
if [ ! -d "$ort/node_modules/onnxruntime-node" ]; then
  echo "run.sh: ONNX Runtime is not in $ort/node_modules: run scripts/setup.sh, or" \
       "npm install --prefix $ort --ignore-scripts onnxruntime-node@1.20.1" >&2
  exit 1
fi
NODE_PATH="$ort/node_modules" node "$here/run_ort.js" "$work"
echo "onnx: ok"
