#version 450
#extension GL_GOOGLE_include_directive : require
#include "tanh.glsl"
// Elementwise unary ops and their gradients (op numbers: lunet_unary_op).
// MODE 0: y (n) = f(x).  MODE 1: dx (n) = dy * f'(x), with y = f(x) where
// the derivative is cheaper from y; x or y may be absent (has_x, has_y).
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) writeonly buffer OUT { float outv[]; };
layout(std430, binding = 1) readonly buffer X { float xv[]; };
layout(std430, binding = 2) readonly buffer DY { float dyv[]; };
layout(std430, binding = 3) readonly buffer YV { float yv[]; };
layout(push_constant, std430) uniform PC {
  uint n, op, has_x, has_y;
  float alpha, beta;
} pc;

const uint NEG = 0u, EXP = 1u, LOG = 2u, SQRT = 3u, ABS = 4u, SQUARE = 5u, RELU = 6u,
           SIGMOID = 7u, TANH = 8u, GELU = 9u, LEAKY_RELU = 10u, AFFINE = 11u,
           CLIP = 12u, RECIP = 13u, SIGN = 14u, SIN = 15u, COS = 16u;

// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7): GLSL has
// no erf.
float erf_(float x) {
  float s = sign(x), a = abs(x);
  float t = 1.0 / (1.0 + 0.3275911 * a);
  float p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t +
             0.254829592) * t;
  return s * (1.0 - p * exp(-a * a));
}

float forward(float x) {
  switch (pc.op) {
  case NEG: return -x;
  case EXP: return exp(x);
  case LOG: return log(x);
  case SQRT: return sqrt(x);
  case ABS: return abs(x);
  case SQUARE: return x * x;
  case RELU: return x > 0.0 || isnan(x) ? x : 0.0; // a NaN stays NaN
  case SIGMOID:
    // Two forms so that exp never overflows.
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    else { float e = exp(x); return e / (1.0 + e); }
  case TANH: return tanh_(x);
  case GELU: return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752));
  case LEAKY_RELU: return x > 0.0 ? x : pc.alpha * x;
  case AFFINE: return pc.alpha * x + pc.beta;
  case CLIP: return isnan(x) ? x : min(max(x, pc.alpha), pc.beta);
  case RECIP: return 1.0 / x;
  case SIGN: return x > 0.0 ? 1.0 : x < 0.0 ? -1.0 : 0.0;
  case SIN: return sin(x);
  case COS: return cos(x);
  default: return uintBitsToFloat(0x7fc00000u);
  }
}

float backward(float dy, float x, float y) {
  switch (pc.op) {
  case NEG: return -dy;
  case EXP: return dy * y;
  case LOG: return dy / x;
  case SQRT: return dy * 0.5 / y;
  case ABS: return x > 0.0 ? dy : x < 0.0 ? -dy : 0.0;
  case SQUARE: return 2.0 * x * dy;
  case RELU: return x > 0.0 ? dy : 0.0;
  case SIGMOID: return dy * y * (1.0 - y);
  case TANH: return dy * (1.0 - y * y);
  case GELU: {
    float cdf = 0.5 * (1.0 + erf_(x * 0.70710678118654752));
    float pdf = exp(-0.5 * x * x) * 0.3989422804014327;
    return dy * (cdf + x * pdf);
  }
  case LEAKY_RELU: return x > 0.0 ? dy : pc.alpha * dy;
  case AFFINE: return pc.alpha * dy;
  // As TensorFlow's clip_by_value: the bounds themselves pass the gradient.
  case CLIP: return (x >= pc.alpha && x <= pc.beta) ? dy : 0.0;
  case RECIP: return -dy * y * y;
  case SIGN: return 0.0;
  case SIN: return dy * cos(x);
  case COS: return -dy * sin(x);
  default: return uintBitsToFloat(0x7fc00000u);
  }
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    if (MODE == 0) {
      outv[i] = forward(xv[i]);
    } else {
      float x = pc.has_x != 0u ? xv[i] : 0.0, y = pc.has_y != 0u ? yv[i] : 0.0;
      outv[i] = backward(dyv[i], x, y);
    }
  }
}
