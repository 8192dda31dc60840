#version 450
// Elementwise binary ops with broadcasting (op numbers: lunet_binary_op):
// y (shape) = a[sum(idx*as)] op b[sum(idx*bs)], strides 0 on broadcast axes.
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) writeonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer A { float a[]; };
layout(std430, binding = 2) readonly buffer B { float b[]; };
layout(push_constant, std430) uniform PC {
  uint ndim, total, op, pad;
  int shape[8], as[8], bs[8];
} pc;

const uint ADD = 0u, SUB = 1u, MUL = 2u, DIV = 3u, MAX = 4u, MIN = 5u, POW = 6u, EQ = 7u,
           GT = 8u, LT = 9u;

// C's powf for the cases GLSL's pow leaves undefined (x <= 0).
float powf_(float x, float e) {
  if (x > 0.0) return pow(x, e);
  if (e == 0.0) return 1.0;
  if (x == 0.0) return e > 0.0 ? 0.0 : uintBitsToFloat(0x7f800000u);
  if (e != trunc(e)) return uintBitsToFloat(0x7fc00000u);
  float m = pow(-x, e);
  return mod(e, 2.0) == 1.0 ? -m : m;
}

float apply(float x, float z) {
  switch (pc.op) {
  case ADD: return x + z;
  case SUB: return x - z;
  case MUL: return x * z;
  case DIV: return x / z;
  case MAX: return x > z || isnan(x) ? x : z; // NaN on either side: NaN
  case MIN: return x < z || isnan(x) ? x : z;
  case POW: return powf_(x, z);
  case EQ: return x == z ? 1.0 : 0.0;
  case GT: return x > z ? 1.0 : 0.0;
  case LT: return x < z ? 1.0 : 0.0;
  default: return uintBitsToFloat(0x7fc00000u);
  }
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint e = gl_GlobalInvocationID.x; e < pc.total; e += stride) {
    int rem = int(e), ao = 0, bo = 0;
    for (int i = int(pc.ndim) - 1; i >= 0; i--) {
      int k = rem % pc.shape[i];
      rem /= pc.shape[i];
      ao += k * pc.as[i];
      bo += k * pc.bs[i];
    }
    y[e] = apply(a[ao], b[bo]);
  }
}
