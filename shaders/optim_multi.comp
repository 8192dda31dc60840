#version 450
#extension GL_GOOGLE_include_directive : require
// One optimizer step over up to 8 tensors in one dispatch (the backend's
// update_multi): tensor t is p[t], g[t], s1[t], s2[t] of n[t] elements and
// owns workgroups first[t] .. first[t + 1] - 1 (first[count] = all of
// them), which stride over it.  A workgroup's tensor index is the same for
// all its invocations (dynamically uniform), as indexing an array of
// buffers requires.  The arithmetic is optim.glsl's, as optim.comp's.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
#define TENSORS 8
layout(std430, binding = 0) buffer P { float d[]; } p[TENSORS];
layout(std430, binding = 1) readonly buffer G { float d[]; } g[TENSORS];
layout(std430, binding = 2) buffer S1 { float d[]; } s1[TENSORS];
layout(std430, binding = 3) buffer S2 { float d[]; } s2[TENSORS];
layout(push_constant, std430) uniform PC {
  uint n[TENSORS];
  uint first[TENSORS + 1];
  uint count, has_s1, has_s2, flag;
  float lr, a, b, eps, wd, step;
} pc;

#include "optim.glsl"

void main() {
  uint wg = gl_WorkGroupID.x, t = 0u;
  for (uint k = 1u; k < pc.count; k++)
    if (pc.first[k] <= wg) t = k;
  uint groups = pc.first[t + 1u] - pc.first[t];
  uint stride = groups * gl_WorkGroupSize.x;
  for (uint i = (wg - pc.first[t]) * gl_WorkGroupSize.x + gl_LocalInvocationID.x; i < pc.n[t]; i += stride)
    OPTIM_ELEMENT(p[t].d, g[t].d, s1[t].d, s2[t].d, i)
}
