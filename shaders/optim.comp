#version 450
#extension GL_GOOGLE_include_directive : require
// Fused optimizer updates, in place on p and the state (n each); the
// arithmetic is optim.glsl's.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer P { float p[]; };
layout(std430, binding = 1) readonly buffer G { float g[]; };
layout(std430, binding = 2) buffer S1 { float s1[]; };
layout(std430, binding = 3) buffer S2 { float s2[]; };
layout(push_constant, std430) uniform PC {
  uint n, has_s1, has_s2, flag;
  float lr, a, b, eps, wd, step;
} pc;

#include "optim.glsl"

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) OPTIM_ELEMENT(p, g, s1, s2, i)
}
