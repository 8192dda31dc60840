#version 450
// Per-sample affine resample, bilinear, as lunet_resample_one() in
// lunet/resample.h.  x (N,H,W,C) -> y (N,OH,OW,C); mats (N,6) maps output
// pixel (ox, oy) to input (m0*ox + m1*oy + m2, m3*ox + m4*oy + m5).
// mode: 0 reflect, 1 constant (fill), 2 nearest, 3 wrap (lunet_fill_mode).
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) readonly buffer MATS { float mats[]; };
layout(push_constant, std430) uniform PC {
  int n, h, w, c, oh, ow, mode;
  float fill;
} pc;

// v modulo p in [0, p), p > 0: GLSL leaves % undefined for a negative
// operand, so a negative v is folded with non-negative ones only.
int pmod(int v, int p) { return v >= 0 ? v % p : p - 1 - (-v - 1) % p; }

// Maps v into [0, n) by the fill mode; -1 for "outside" (constant fill).
int index_of(int v, int n) {
  if (v >= 0 && v < n) return v;
  if (pc.mode == 0) {
    int period = 2 * n, r = pmod(v, period);
    return r < n ? r : period - 1 - r;
  }
  if (pc.mode == 2) return v < 0 ? 0 : n - 1;
  if (pc.mode == 3) return pmod(v, n);
  return -1;
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  uint total = uint(pc.n * pc.oh * pc.ow * pc.c);
  for (uint e = gl_GlobalInvocationID.x; e < total; e += stride) {
    int k = int(e) % pc.c, ox = (int(e) / pc.c) % pc.ow, oy = (int(e) / (pc.c * pc.ow)) % pc.oh;
    int i = int(e) / (pc.c * pc.ow * pc.oh);
    int m = 6 * i;
    float sx = mats[m] * float(ox) + mats[m + 1] * float(oy) + mats[m + 2];
    float sy = mats[m + 3] * float(ox) + mats[m + 4] * float(oy) + mats[m + 5];
    float fx = floor(sx), fy = floor(sy), ax = sx - fx, ay = sy - fy;
    int x0 = int(fx), y0 = int(fy);
    int xs[2] = int[2](index_of(x0, pc.w), index_of(x0 + 1, pc.w));
    int ys[2] = int[2](index_of(y0, pc.h), index_of(y0 + 1, pc.h));
    float wts[4] = float[4]((1.0 - ax) * (1.0 - ay), ax * (1.0 - ay), (1.0 - ax) * ay, ax * ay);
    float acc = 0.0;
    for (int j = 0; j < 4; j++) {
      int yy = ys[j >> 1], xx = xs[j & 1];
      if (wts[j] == 0.0) continue;
      if (yy < 0 || xx < 0) acc += wts[j] * pc.fill;
      else acc += wts[j] * x[((i * pc.h + yy) * pc.w + xx) * pc.c + k];
    }
    y[e] = acc;
  }
}
