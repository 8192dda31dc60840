#version 450
#extension GL_GOOGLE_include_directive : require
#include "tanh.glsl"
// The fused GRU cell, reset_after (lunet_backend_i.gru_cell): one
// invocation per (row, unit).  MODE 0: xs, hs (n, 3u) [z r h] parts, h
// (n, u) -> hn (n, u) and gates (n, 3u) [z r g].  MODE 1: dhn, gates, hs,
// h -> dxs, dhs (n, 3u) and dh (n, u), each written when has_* is 1.
// act/rec: lunet_unary_op numbers (7 sigmoid, 8 tanh, 6 relu, 11 identity).
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer O0 { float out0[]; };  // hn | dxs
layout(std430, binding = 1) buffer O1 { float out1[]; };  // gates | dhs
layout(std430, binding = 2) buffer O2 { float out2[]; };  // - | dh
layout(std430, binding = 3) readonly buffer XS { float xs[]; };   // MODE 0: xs | MODE 1: dhn
layout(std430, binding = 4) readonly buffer HS { float hs[]; };
layout(std430, binding = 5) readonly buffer H { float h[]; };
layout(std430, binding = 6) readonly buffer GT { float gt[]; };   // MODE 1: gates
layout(push_constant, std430) uniform PC {
  uint n, u, act, rec, has_dxs, has_dhs, has_dh;
} pc;

const uint RELU = 6u, SIGMOID = 7u, TANH = 8u;

float f_act(uint op, float x) {
  if (op == SIGMOID) return x >= 0.0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
  if (op == TANH) return tanh_(x);
  if (op == RELU) return x > 0.0 || isnan(x) ? x : 0.0;
  return x;
}

float f_grad(uint op, float y) {
  if (op == SIGMOID) return y * (1.0 - y);
  if (op == TANH) return 1.0 - y * y;
  if (op == RELU) return y > 0.0 ? 1.0 : 0.0;
  return 1.0;
}

void main() {
  uint e = gl_GlobalInvocationID.x;
  if (e >= pc.n * pc.u) return;
  uint r = e / pc.u, k = e % pc.u, u = pc.u, b = r * 3u * u;
  float hp = h[r * u + k];
  if (MODE == 0) {
    float z = f_act(pc.rec, xs[b + k] + hs[b + k]), rr = f_act(pc.rec, xs[b + u + k] + hs[b + u + k]);
    float g = f_act(pc.act, xs[b + 2u * u + k] + rr * hs[b + 2u * u + k]);
    out1[b + k] = z;
    out1[b + u + k] = rr;
    out1[b + 2u * u + k] = g;
    out0[r * u + k] = g + z * (hp - g);
  } else {
    float z = gt[b + k], rr = gt[b + u + k], g = gt[b + 2u * u + k], d = xs[r * u + k];
    float dz = d * (hp - g) * f_grad(pc.rec, z);
    float dg = d * (1.0 - z) * f_grad(pc.act, g);
    float dr = dg * hs[b + 2u * u + k] * f_grad(pc.rec, rr);
    if (pc.has_dxs != 0u) { out0[b + k] = dz; out0[b + u + k] = dr; out0[b + 2u * u + k] = dg; }
    if (pc.has_dhs != 0u) { out1[b + k] = dz; out1[b + u + k] = dr; out1[b + 2u * u + k] = dg * rr; }
    if (pc.has_dh != 0u) out2[r * u + k] = d * z;
  }
}
