#version 450
#extension GL_GOOGLE_include_directive : require
#ifdef SUBGROUPS
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// Batch normalization over rows, per channel.  x, y, dy, dx (rows, C).
// MODE 0 training statistics, one workgroup per channel: mean and biased
//        variance (two passes) -> save_mean, save_invstd, and the running
//        stats when has_run (run = run*momentum + batch*(1-momentum)).
// MODE 1 normalize, per element: y = gamma*(x-mean)*invstd + beta, mean and
//        invstd from the saved stats, or (inference) from the running ones.
// MODE 2 backward statistics per channel: dbeta = sum(dy),
//        dgamma = sum(dy*xhat).
// MODE 3 backward, per element:
//        dx = gamma*invstd/R * (R*dy - dbeta - xhat*dgamma).
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) writeonly buffer OUT { float outv[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer GAMMA { float gamma[]; };
layout(std430, binding = 3) readonly buffer BETA_DY { float bdy[]; }; // beta (MODE 1) or dy
layout(std430, binding = 4) buffer MEAN { float mean[]; };
layout(std430, binding = 5) buffer INVSTD { float invstd[]; }; // running var at inference
layout(std430, binding = 6) buffer S6 { float s6[]; }; // run_mean or dgamma
layout(std430, binding = 7) buffer S7 { float s7[]; }; // run_var or dbeta
layout(push_constant, std430) uniform PC {
  uint rows, c, has_run, inference, has_gamma, has_beta;
  float momentum, eps;
} pc;

#include "group.glsl"

float group_sum(float v) { return group_reduce(v, 0u); }

// The sums run in float (the CPU's in double), shifted by the channel's
// first value k: a channel far from 0 (a constant 10000.1) loses no digits
// to the shift of its mean (whose last-place error, times 1/sqrt(eps), was
// 0.03 in y where the CPU gives 0).
void stats(uint ch) {
  uint t = gl_LocalInvocationID.x;
  float k = pc.rows != 0u ? x[ch] : 0.0, s = 0.0;
  for (uint r = t; r < pc.rows; r += gl_WorkGroupSize.x) s += x[r * pc.c + ch] - k;
  float dm = pc.rows != 0u ? group_sum(s) / float(pc.rows) : 0.0; // the mean - k
  float mu = k + dm;
  float ss = 0.0;
  for (uint r = t; r < pc.rows; r += gl_WorkGroupSize.x) {
    float d = (x[r * pc.c + ch] - k) - dm;
    ss += d * d;
  }
  float var = pc.rows != 0u ? group_sum(ss) / float(pc.rows) : 0.0;
  if (t == 0u) {
    mean[ch] = mu;
    invstd[ch] = 1.0 / sqrt(var + pc.eps);
    if (pc.has_run != 0u) {
      s6[ch] = s6[ch] * pc.momentum + mu * (1.0 - pc.momentum);
      s7[ch] = s7[ch] * pc.momentum + var * (1.0 - pc.momentum);
    }
  }
}

void backward_stats(uint ch) {
  uint t = gl_LocalInvocationID.x;
  float sdy = 0.0, sdyx = 0.0;
  for (uint r = t; r < pc.rows; r += gl_WorkGroupSize.x) {
    float xhat = (x[r * pc.c + ch] - mean[ch]) * invstd[ch];
    float g = bdy[r * pc.c + ch];
    sdy += g;
    sdyx += g * xhat;
  }
  sdy = group_sum(sdy);
  sdyx = group_sum(sdyx);
  if (t == 0u) {
    s6[ch] = sdyx;
    s7[ch] = sdy;
  }
}

float normalize_one(uint i) {
  uint ch = i % pc.c;
  float is = pc.inference != 0u ? 1.0 / sqrt(invstd[ch] + pc.eps) : invstd[ch];
  float g = pc.has_gamma != 0u ? gamma[ch] : 1.0, b = pc.has_beta != 0u ? bdy[ch] : 0.0;
  return g * (x[i] - mean[ch]) * is + b;
}

float backward_one(uint i) {
  uint ch = i % pc.c;
  float xhat = (x[i] - mean[ch]) * invstd[ch];
  float g = pc.has_gamma != 0u ? gamma[ch] : 1.0, R = float(pc.rows);
  return g * invstd[ch] / R * (R * bdy[i] - s7[ch] - xhat * s6[ch]);
}

void main() {
  if (MODE == 0 || MODE == 2) {
    for (uint ch = gl_WorkGroupID.x; ch < pc.c; ch += gl_NumWorkGroups.x) {
      if (MODE == 0) stats(ch);
      else backward_stats(ch);
    }
    return;
  }
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x, total = pc.rows * pc.c;
  for (uint i = gl_GlobalInvocationID.x; i < total; i += stride)
    outv[i] = MODE == 1 ? normalize_one(i) : backward_one(i);
}
