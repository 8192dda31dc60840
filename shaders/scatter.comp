#version 450
// Scatter-add of rows: y[target] += the x rows sent there, in source order.
// The host plans it (lunet_backend_i.scatter_add_rows): plan holds the u
// distinct targets, then u + 1 offsets into the source list, then the n
// source rows grouped by target.  One invocation per (target, column):
// no two write one element, so no atomics, and the sums are deterministic.
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer PLAN { int plan[]; };
layout(push_constant, std430) uniform PC {
  uint u, cols;
} pc;

void main() {
  uint i = gl_GlobalInvocationID.x;
  if (i >= pc.u * pc.cols) return;
  uint t = i / pc.cols, c = i % pc.cols;
  uint target = uint(plan[t]);
  int begin = plan[pc.u + t], end = plan[pc.u + t + 1];
  float s = 0.0;
  for (int k = begin; k < end; k++) s += x[uint(plan[2u * pc.u + 1u + uint(k)]) * pc.cols + c];
  y[target * pc.cols + c] += s;
}
