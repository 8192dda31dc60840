#version 450
// 2-D pooling, NHWC.  x (N,H,W,C), y and dy (N,OH,OW,C), dx (N,H,W,C).
// MODE 0 max, 1 average (padding excluded from the count): one invocation
//        per output.
// MODE 2 max backward (to the first maximum of each window), 3 average
//        backward: one invocation per input element gathering from the
//        windows that cover it, in the CPU's order, so no atomics.
// MODE 4, 5: max and its backward with a ReLU after the pooling (the core
//        moves a convolution's there): y = max(m, 0), the gradient routed
//        only from windows whose maximum m is > 0.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) writeonly buffer OUT { float outv[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer DY { float dy[]; };
layout(push_constant, std430) uniform PC {
  int n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow;
} pc;

// Flat input pixel of the first maximum of window (n, oy, ox), channel ch
// (the last NaN, if any: PyTorch's max_pool2d); -1 for a window of padding
// only.
int window_argmax(int n, int oy, int ox, int ch) {
  int best = -1;
  float bv = 0.0;
  for (int ky = 0; ky < pc.kh; ky++)
    for (int kx = 0; kx < pc.kw; kx++) {
      int iy = oy * pc.sh - pc.pt + ky, ix = ox * pc.sw - pc.pl + kx;
      if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) continue;
      int p = (n * pc.h + iy) * pc.w + ix;
      float v = x[p * pc.c + ch];
      if (best < 0 || v > bv || isnan(v)) { best = p; bv = v; } // a NaN wins, as the CPU's
    }
  return best;
}

int window_count(int oy, int ox) {
  int y0 = max(oy * pc.sh - pc.pt, 0), y1 = min(oy * pc.sh - pc.pt + pc.kh, pc.h);
  int x0 = max(ox * pc.sw - pc.pl, 0), x1 = min(ox * pc.sw - pc.pl + pc.kw, pc.w);
  return max(y1 - y0, 0) * max(x1 - x0, 0);
}

float forward(int e) {
  int ch = e % pc.c, ox = (e / pc.c) % pc.ow, oy = (e / (pc.c * pc.ow)) % pc.oh;
  int n = e / (pc.c * pc.ow * pc.oh);
  if (MODE == 0 || MODE == 4) {
    int p = window_argmax(n, oy, ox, ch);
    float m = p < 0 ? 0.0 : x[p * pc.c + ch];
    return MODE == 4 ? (m > 0.0 || isnan(m) ? m : 0.0) : m; // the ReLU as the CPU's: a NaN stays
  }
  float sum = 0.0;
  for (int ky = 0; ky < pc.kh; ky++)
    for (int kx = 0; kx < pc.kw; kx++) {
      int iy = oy * pc.sh - pc.pt + ky, ix = ox * pc.sw - pc.pl + kx;
      if (iy < 0 || iy >= pc.h || ix < 0 || ix >= pc.w) continue;
      sum += x[((n * pc.h + iy) * pc.w + ix) * pc.c + ch];
    }
  int count = window_count(oy, ox);
  return count > 0 ? sum / float(count) : 0.0;
}

float backward(int e) {
  int ch = e % pc.c, ix = (e / pc.c) % pc.w, iy = (e / (pc.c * pc.w)) % pc.h;
  int n = e / (pc.c * pc.w * pc.h);
  int p = (n * pc.h + iy) * pc.w + ix;
  // Outputs oy with oy*sh - pt <= iy < oy*sh - pt + kh.
  int oy0 = max(0, (iy + pc.pt - pc.kh + pc.sh) / pc.sh), oy1 = min(pc.oh - 1, (iy + pc.pt) / pc.sh);
  int ox0 = max(0, (ix + pc.pl - pc.kw + pc.sw) / pc.sw), ox1 = min(pc.ow - 1, (ix + pc.pl) / pc.sw);
  float acc = 0.0;
  for (int oy = oy0; oy <= oy1; oy++)
    for (int ox = ox0; ox <= ox1; ox++) {
      float g = dy[((n * pc.oh + oy) * pc.ow + ox) * pc.c + ch];
      if (MODE == 2) {
        if (window_argmax(n, oy, ox, ch) == p) acc += g;
      } else if (MODE == 5) {
        if (window_argmax(n, oy, ox, ch) == p && x[p * pc.c + ch] > 0.0) acc += g;
      } else {
        acc += g / float(window_count(oy, ox));
      }
    }
  return acc;
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  bool fwd = MODE <= 1 || MODE == 4;
  uint total = fwd ? uint(pc.n * pc.oh * pc.ow * pc.c) : uint(pc.n * pc.h * pc.w * pc.c);
  for (uint e = gl_GlobalInvocationID.x; e < total; e += stride)
    outv[e] = fwd ? forward(int(e)) : backward(int(e));
}
