"""Checks every model of a manifest (tests/onnx/export_models.lua) with
ONNX's own checker (python3-onnx), shape inference included, and that the
shapes it infers for the outputs are the ones lunet predicted.
Usage: /usr/bin/python3 tests/onnx/check_onnx.py DIR"""
import json
import os
import sys

import onnx

d = sys.argv[1]
bad = 0
for case in json.load(open(os.path.join(d, "manifest.json"))):
    path = os.path.join(d, case["file"])
    model = onnx.load(path)
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - every checker error fails the case
        print(f"FAIL {case['name']}: {e}")
        bad += 1
        continue
    outs = {o.name: o for o in inferred.graph.output}
    for want in case["outputs"]:
        dims = outs[want["name"]].type.tensor_type.shape.dim
        got = [x.dim_value if x.HasField("dim_value") else None for x in dims]
        if got[1:] != want["shape"][1:] or dims[0].dim_param != "N":
            print(f"FAIL {case['name']}: output {want['name']} has shape {got}, lunet gives {want['shape']}")
            bad += 1
    print(f"ok   {case['name']}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes")
sys.exit(1 if bad else 0)
