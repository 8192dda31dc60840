#version 450
// cast: y (n) of one dtype <- x (n) of another.  Buffers are viewed as
// 32-bit words; uint8 elements are the bytes of a word (little-endian), and
// a uint8 output is written a word (four elements) per invocation.
// MODE 0 u8->f32, 1 i32->f32, 2 f32->u8, 3 f32->i32, 4 u8->i32, 5 i32->u8.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer Y { uint y[]; };
layout(std430, binding = 1) readonly buffer X { uint x[]; };
layout(push_constant, std430) uniform PC { uint n; } pc;

uint load_u8(uint i) { return (x[i >> 2] >> ((i & 3u) * 8u)) & 0xffu; }

// As the CPU: round half away from zero, clamp to [0, 255], NaN to 0.
uint f32_to_u8(float v) {
  if (isnan(v)) return 0u;
  float r = trunc(v);
  if (abs(v - r) >= 0.5) r += sign(v);
  return uint(clamp(r, 0.0, 255.0));
}

// Truncate toward zero, saturate, NaN to 0.
int f32_to_i32(float v) {
  if (isnan(v)) return 0;
  if (v >= 2147483648.0) return 2147483647;
  if (v <= -2147483648.0) return -2147483647 - 1;
  return int(v);
}

uint to_u8(uint i) {
  if (MODE == 2) return f32_to_u8(uintBitsToFloat(x[i]));
  return uint(clamp(int(x[i]), 0, 255));
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  if (MODE == 2 || MODE == 5) {
    uint words = (pc.n + 3u) / 4u;
    for (uint wd = gl_GlobalInvocationID.x; wd < words; wd += stride) {
      uint v = 0u, keep = 0u;
      for (uint b = 0u; b < 4u; b++) {
        uint i = wd * 4u + b;
        if (i < pc.n) v |= to_u8(i) << (b * 8u);
        else keep |= 0xffu << (b * 8u);
      }
      // The last word may hold bytes past n: keep them.
      y[wd] = keep != 0u ? (y[wd] & keep) | v : v;
    }
    return;
  }
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    if (MODE == 0) y[i] = floatBitsToUint(float(load_u8(i)));
    else if (MODE == 1) y[i] = floatBitsToUint(float(int(x[i])));
    else if (MODE == 3) y[i] = uint(f32_to_i32(uintBitsToFloat(x[i])));
    else y[i] = load_u8(i);
  }
}
