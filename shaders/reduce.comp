#version 450
#extension GL_GOOGLE_include_directive : require
#ifdef SUBGROUPS
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// Reductions.  x viewed as (outer, len, inner) -> y (outer, inner).
// MODE 0: one workgroup per output, a tree over len (long reductions).
// MODE 1: argmax, x (rows=outer, cols=len) -> y (rows) float index of the
//         first maximum, one workgroup per row.
// MODE 2: one invocation per output, a loop over len (many short ones).
// op: 0 sum, 1 mean, 2 max, 3 min (lunet_reduce_op).
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer BIAS { float bias[]; };
layout(std430, binding = 3) readonly buffer MASK { float mask[]; };
// bias_cols, relu, has_mask: an epilogue on each output o (split-K's sum
// for linear or gemm_relu_mask): + bias[o % bias_cols] (0: none), then the
// ReLU, then the ReLU's gradient: mask[o] > 0 ? v : 0.
// j0, j1: MODE 0 sums the elements [j0, j1) of each output's len (a part of
// a reduction too long for one dispatch on lavapipe) into y[yoff + o]
layout(push_constant, std430) uniform PC { uint outer, len, inner, op, bias_cols, relu, has_mask, j0, j1, yoff; } pc;

shared float red[gl_WorkGroupSize.x];
shared uint ridx[gl_WorkGroupSize.x];
#include "group.glsl"

#define INF uintBitsToFloat(0x7f800000u)

float init() { return pc.op == 2u ? -INF : pc.op == 3u ? INF : 0.0; }

// max and min: a NaN anywhere gives NaN (PyTorch's), once acc is NaN no
// comparison replaces it
float combine(float acc, float v) {
  if (pc.op == 2u) return v > acc || isnan(v) ? v : acc;
  if (pc.op == 3u) return v < acc || isnan(v) ? v : acc;
  return acc + v;
}

// Whether v at index i comes before best at index bi as an argmax: larger,
// a NaN (the first NaN wins, as torch.argmax), or equal at a lower index.
bool before(float v, uint i, float best, uint bi) {
  if (isnan(best)) return isnan(v) && i < bi;
  return isnan(v) || v > best || (v == best && i < bi);
}

float finish_op(float acc) {
  if (pc.op != 1u) return acc;
  return pc.len != 0u ? acc / float(pc.len) : uintBitsToFloat(0x7fc00000u);
}

float finish(float acc, uint o) {
  float v = finish_op(acc);
  if (pc.bias_cols != 0u) v = v + bias[o % pc.bias_cols];
  if (pc.relu != 0u) v = v > 0.0 || isnan(v) ? v : 0.0;
  if (pc.has_mask != 0u) v = mask[o] > 0.0 ? v : 0.0;
  return v;
}

void reduce_groups() {
  uint t = gl_LocalInvocationID.x, outs = pc.outer * pc.inner;
  for (uint o = gl_WorkGroupID.x; o < outs; o += gl_NumWorkGroups.x) {
    uint base = (o / pc.inner) * pc.len * pc.inner + o % pc.inner;
    float acc = init();
    for (uint j = pc.j0 + t; j < pc.j1; j += gl_WorkGroupSize.x) acc = combine(acc, x[base + j * pc.inner]);
    if (pc.op <= 1u) {
      // sum and mean: group.glsl's (subgroups where the device has them)
      float total = group_reduce(acc, 0u);
      if (t == 0u) y[pc.yoff + o] = finish(total, o);
      continue;
    }
    // max and min: a tree with combine's NaN rule
    red[t] = acc;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
      if (t < s) red[t] = combine(red[t], red[t + s]);
      barrier();
    }
    if (t == 0u) y[pc.yoff + o] = finish(red[0], o);
    barrier();
  }
}

void argmax_rows() {
  uint t = gl_LocalInvocationID.x;
  for (uint r = gl_WorkGroupID.x; r < pc.outer; r += gl_NumWorkGroups.x) {
    float best = -INF;
    uint bi = 0xffffffffu;
    for (uint j = t; j < pc.len; j += gl_WorkGroupSize.x) {
      float v = x[r * pc.len + j];
      if (bi == 0xffffffffu || before(v, j, best, bi)) { best = v; bi = j; }
    }
    red[t] = best;
    ridx[t] = bi;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1) {
      if (t < s) {
        float v = red[t + s];
        uint i = ridx[t + s];
        // The first maximum (or NaN): ties go to the lower index.
        if (i != 0xffffffffu && (ridx[t] == 0xffffffffu || before(v, i, red[t], ridx[t]))) {
          red[t] = v;
          ridx[t] = i;
        }
      }
      barrier();
    }
    if (t == 0u) y[r] = ridx[0] == 0xffffffffu ? 0.0 : float(ridx[0]);
    barrier();
  }
}

void reduce_serial() {
  uint outs = pc.outer * pc.inner, stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint o = gl_GlobalInvocationID.x; o < outs; o += stride) {
    uint base = (o / pc.inner) * pc.len * pc.inner + o % pc.inner;
    float acc = init();
    for (uint j = 0u; j < pc.len; j++) acc = combine(acc, x[base + j * pc.inner]);
    y[o] = finish(acc, o);
  }
}

void main() {
  if (MODE == 0) reduce_groups();
  else if (MODE == 1) argmax_rows();
  else reduce_serial();
}
