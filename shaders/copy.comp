#version 450
// strided_copy: y[y_off + sum(idx*ys)] = x[x_off + sum(idx*xs)] over `shape`
// (ndim <= 8, in elements).  MODE 0: 4-byte elements (wider ones arrive as
// an extra axis); MODE 1: bytes, written with atomics on their word since
// neighbouring bytes belong to other invocations.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer Y { uint y[]; };
layout(std430, binding = 1) readonly buffer X { uint x[]; };
layout(push_constant, std430) uniform PC {
  uint ndim, total;
  int x_off, y_off;
  int shape[8], xs[8], ys[8];
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint e = gl_GlobalInvocationID.x; e < pc.total; e += stride) {
    int rem = int(e), xo = pc.x_off, yo = pc.y_off;
    for (int i = int(pc.ndim) - 1; i >= 0; i--) {
      int k = rem % pc.shape[i];
      rem /= pc.shape[i];
      xo += k * pc.xs[i];
      yo += k * pc.ys[i];
    }
    if (MODE == 0) {
      y[yo] = x[xo];
    } else {
      uint v = (x[uint(xo) >> 2] >> ((uint(xo) & 3u) * 8u)) & 0xffu;
      uint sh = (uint(yo) & 3u) * 8u;
      atomicAnd(y[uint(yo) >> 2], ~(0xffu << sh));
      atomicOr(y[uint(yo) >> 2], v << sh);
    }
  }
}
