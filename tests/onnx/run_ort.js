// Runs every model of a manifest (tests/onnx/export_models.lua) in ONNX
// Runtime (the npm package onnxruntime-node) on the inputs lunet saw, and
// requires lunet's predictions within 1e-4 (|ort - lunet| <= 1e-4 * (1 +
// |lunet|)) on every output.
// Usage: NODE_PATH=DIR/node_modules node tests/onnx/run_ort.js DIR
'use strict';
const fs = require('fs');
const path = require('path');
let ort;
try {
  ort = require('onnxruntime-node');
} catch (e) {
  console.error('run_ort.js: onnxruntime-node is not installed (scripts/setup.sh installs it with ' +
                '`npm install --ignore-scripts onnxruntime-node`; set NODE_PATH to its node_modules): ' + e.message);
  process.exit(2);
}

const dir = process.argv[2];
const TOL = 1e-4;

function readFloats(file) {
  const b = fs.readFileSync(path.join(dir, file));
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
}

(async () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  let bad = 0;
  for (const c of manifest) {
    try {
      const session = await ort.InferenceSession.create(path.join(dir, c.file), {intraOpNumThreads: 1});
      const feeds = {};
      for (const x of c.inputs) feeds[x.name] = new ort.Tensor('float32', readFloats(x.file), x.shape);
      const got = await session.run(feeds);
      let worst = 0;
      for (const y of c.outputs) {
        const want = readFloats(y.file);
        const t = got[y.name];
        if (!t) throw new Error(`no output ${y.name}`);
        if (t.dims.join(',') !== y.shape.join(',')) {
          throw new Error(`output ${y.name} has shape [${t.dims}], lunet's is [${y.shape}]`);
        }
        for (let i = 0; i < want.length; i++) {
          const err = Math.abs(t.data[i] - want[i]) / (1 + Math.abs(want[i]));
          if (!(err <= worst)) worst = err; // NaN counts as the worst
          if (!(err <= TOL)) {
            throw new Error(`output ${y.name}[${i}]: onnxruntime ${t.data[i]}, lunet ${want[i]}`);
          }
        }
      }
      console.log(`ok   ${c.name}: ${c.outputs.length} output(s), largest difference ${worst.toExponential(2)}`);
    } catch (e) {
      console.log(`FAIL ${c.name}: ${e.message}`);
      bad++;
    }
  }
  console.log(`onnxruntime ${require('onnxruntime-node/package.json').version} on node ${process.version}: ` +
              `${manifest.length - bad} of ${manifest.length} models agree with lunet`);
  process.exit(bad ? 1 : 0);
})();
