#version 450
#extension GL_GOOGLE_include_directive : require
#ifdef SUBGROUPS
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// Softmax family over the last axis, one workgroup per row.
// MODE 0 softmax, 1 log-softmax: y (rows, cols) <- x.
// MODE 2 softmax backward: dx = y * (dy - sum(dy*y)).
// MODE 3 log-softmax backward: dx = dy - exp(y) * sum(dy).
// MODE 4 softmax cross-entropy: logits (rows, cols), labels (rows) ->
//        loss (rows), dlogits = softmax - onehot when has_d.  A bad label
//        raises a flag: err[0] the first bad row (atomicMin).
// MODE 5 (one invocation, after MODE 4): copies the bad row's label into
//        err[1] and cols into err[2], for the host's message.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer OUT { float outv[]; };
layout(std430, binding = 1) readonly buffer IN { float inv[]; };
layout(std430, binding = 2) readonly buffer AUX { float aux[]; };
layout(std430, binding = 3) writeonly buffer D { float dv[]; };
layout(std430, binding = 4) buffer ERR { uint err[]; };
layout(push_constant, std430) uniform PC { uint rows, cols, has_d; } pc;

#define INF uintBitsToFloat(0x7f800000u)
#include "group.glsl"

float row_max(uint base) {
  float m = -INF;
  for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x)
    m = max(m, inv[base + j]);
  return group_reduce(m, 2u);
}

float row_sumexp(uint base, float m) {
  float s = 0.0;
  for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x)
    s += exp(inv[base + j] - m);
  return group_reduce(s, 0u);
}

void forward(uint r) {
  uint base = r * pc.cols;
  float m = row_max(base), s = row_sumexp(base, m), ls = log(s);
  for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x)
    outv[base + j] = MODE == 1 ? inv[base + j] - m - ls : exp(inv[base + j] - m) / s;
}

void backward(uint r) {
  uint base = r * pc.cols;
  float s = 0.0;
  for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x)
    s += MODE == 3 ? inv[base + j] : inv[base + j] * aux[base + j];
  s = group_reduce(s, 0u);
  for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x) {
    float g = inv[base + j], y = aux[base + j];
    outv[base + j] = MODE == 3 ? g - exp(y) * s : y * (g - s);
  }
}

void xent(uint r) {
  uint base = r * pc.cols;
  float label = aux[r];
  bool ok = label >= 0.0 && label < float(pc.cols) && label == floor(label);
  if (!ok) {
    if (gl_LocalInvocationID.x == 0u && err[2] == 0xffffffffu) atomicMin(err[0], r);
    label = 0.0;
  }
  uint li = uint(label);
  // relative to the row's maximum: m + log(s) would drop log(s) next to a large m
  float m = row_max(base), s = row_sumexp(base, m), inv_s = 1.0 / s;
  if (gl_LocalInvocationID.x == 0u)
    outv[r] = ok ? (m - inv[base + li]) + log(s) : uintBitsToFloat(0x7fc00000u);
  if (pc.has_d != 0u)
    for (uint j = gl_LocalInvocationID.x; j < pc.cols; j += gl_WorkGroupSize.x)
      dv[base + j] = exp(inv[base + j] - m) * inv_s - (ok && j == li ? 1.0 : 0.0);
}

void main() {
  if (MODE == 5) {
    if (gl_GlobalInvocationID.x == 0u && err[0] != 0xffffffffu && err[2] == 0xffffffffu) {
      err[1] = floatBitsToUint(aux[err[0]]);
      err[2] = pc.cols;
    }
    return;
  }
  for (uint r = gl_WorkGroupID.x; r < pc.rows; r += gl_NumWorkGroups.x) {
    if (MODE <= 1) forward(r);
    else if (MODE <= 3) backward(r);
    else xent(r);
  }
}
