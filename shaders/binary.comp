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

// C's powf (C99 Annex F), where GLSL's pow is undefined (x <= 0, NaN,
// infinities) or inexact (pow(10, 2) = 99.999992 on lavapipe: exp2 of a
// log2): NaN propagates except x^0 = 1^e = 1, (-1)^+-inf = 1, signed zeros
// and infinities for odd integer exponents; squares, square roots and
// reciprocals exactly.
float powf_(float x, float e) {
  const float INF = uintBitsToFloat(0x7f800000u), NAN = uintBitsToFloat(0x7fc00000u);
  if (e == 0.0 || x == 1.0) return 1.0;
  if (isnan(x) || isnan(e)) return NAN;
  bool odd = e == trunc(e) && mod(e, 2.0) == 1.0; // an odd integer (none past 2^24)
  float ax = abs(x);
  if (isinf(e)) return ax == 1.0 ? 1.0 : (ax > 1.0) == (e > 0.0) ? INF : 0.0;
  if (isinf(x) || x == 0.0) { // |x| ^ e is inf or 0; an odd e keeps x's sign
    float m = (e > 0.0) == isinf(x) ? INF : 0.0;
    return odd && (x < 0.0 || (x == 0.0 && floatBitsToUint(x) != 0u)) ? -m : m;
  }
  if (x < 0.0 && e != trunc(e)) return NAN;
  float m = e == 1.0 ? ax : e == 2.0 ? ax * ax : e == 0.5 ? sqrt(ax) : e == -1.0 ? 1.0 / ax : pow(ax, e);
  return x < 0.0 && odd ? -m : m;
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
