#version 450
// Layer normalization (lunet_backend_i.layernorm): rows of x (rows, cols).
// MODE 0: one invocation per row: mean, rstd = 1/sqrt(biased var + eps),
//         y = (x - mean) rstd gamma + beta.
// MODE 1: one per row: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma.
// MODE 2: one per column: dgamma = sum over rows dy xhat, dbeta = sum dy
//         (has_dgamma / has_dbeta say which to write).
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer O0 { float out0[]; };  // y | dx | dgamma
layout(std430, binding = 1) buffer O1 { float out1[]; };  // mean | - | dbeta
layout(std430, binding = 2) buffer O2 { float out2[]; };  // rstd
layout(std430, binding = 3) readonly buffer X { float x[]; };
layout(std430, binding = 4) readonly buffer G { float gamma[]; };
layout(std430, binding = 5) readonly buffer B { float beta[]; };   // MODE 0
layout(std430, binding = 6) readonly buffer DY { float dy[]; };    // MODE 1, 2
layout(std430, binding = 7) readonly buffer MR { float mr[]; };    // MODE 1, 2: mean (rows) then rstd (rows)
layout(push_constant, std430) uniform PC {
  uint rows, cols, has_dgamma, has_dbeta;
  float eps;
  uint r0, r1; // MODE 2: the rows [r0, r1) this dispatch sums, added to the earlier ones' when r0 > 0
} pc;

void main() {
  uint i = gl_GlobalInvocationID.x, c = pc.cols;
  if (MODE == 0) {
    if (i >= pc.rows) return;
    // float sums shifted by the row's first value, as batchnorm.comp's: a
    // row far from 0 loses no digits to its mean
    float x0 = x[i * c], s = 0.0;
    for (uint k = 0u; k < c; k++) s += x[i * c + k] - x0;
    float dm = s / float(c), q = 0.0;
    for (uint k = 0u; k < c; k++) q += ((x[i * c + k] - x0) - dm) * ((x[i * c + k] - x0) - dm);
    float rs = 1.0 / sqrt(q / float(c) + pc.eps);
    out1[i] = x0 + dm;
    out2[i] = rs;
    for (uint k = 0u; k < c; k++) out0[i * c + k] = ((x[i * c + k] - x0) - dm) * rs * gamma[k] + beta[k];
  } else if (MODE == 1) {
    if (i >= pc.rows) return;
    float m = mr[i], rs = mr[pc.rows + i], sg = 0.0, sgx = 0.0;
    for (uint k = 0u; k < c; k++) {
      float g = dy[i * c + k] * gamma[k];
      sg += g;
      sgx += g * (x[i * c + k] - m) * rs;
    }
    float mg = sg / float(c), mgx = sgx / float(c);
    for (uint k = 0u; k < c; k++) out0[i * c + k] = rs * (dy[i * c + k] * gamma[k] - mg - (x[i * c + k] - m) * rs * mgx);
  } else {
    if (i >= c) return;
    float dg = 0.0, db = 0.0;
    for (uint r = pc.r0; r < pc.r1; r++) {
      float d = dy[r * c + i];
      dg += d * (x[r * c + i] - mr[r]) * mr[pc.rows + r];
      db += d;
    }
    if (pc.has_dgamma != 0u) out0[i] = pc.r0 > 0u ? out0[i] + dg : dg;
    if (pc.has_dbeta != 0u) out1[i] = pc.r0 > 0u ? out1[i] + db : db;
  }
}
