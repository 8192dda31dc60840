#version 450
#extension GL_GOOGLE_include_directive : require
#include "tanh.glsl"
// The fused LSTM cell (lunet_backend_i.lstm_cell): one invocation per
// (row, unit).  MODE 0: z (n, 4u) [i f c o] pre-activations, cp (n, u) ->
// hc (n, 2u) [h c] and gates (n, 4u) [i f g o].  MODE 1: dhc (n, 2u), hc,
// gates, cp -> dz (n, 4u) and dcp (n, u).  act/rec: lunet_unary_op numbers
// (7 sigmoid, 8 tanh, 6 relu, 11 identity); has_cp / has_dcp: 0 or 1.
layout(local_size_x_id = 0) in;
layout(constant_id = 2) const int MODE = 0;
layout(std430, binding = 0) buffer A { float outa[]; };   // hc | dz
layout(std430, binding = 1) buffer B { float outb[]; };   // gates | dcp
layout(std430, binding = 2) readonly buffer Z { float zin[]; };  // z | dhc
layout(std430, binding = 3) readonly buffer CP { float cp[]; };
layout(std430, binding = 4) readonly buffer HC { float hcin[]; }; // MODE 1: hc
layout(std430, binding = 5) readonly buffer G { float gin[]; };   // MODE 1: gates
layout(push_constant, std430) uniform PC {
  uint n, u, act, rec, has_cp, has_dcp;
} pc;

const uint RELU = 6u, SIGMOID = 7u, TANH = 8u;

float f_act(uint op, float x) {
  if (op == SIGMOID) return x >= 0.0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
  if (op == TANH) return tanh_(x);
  if (op == RELU) return x > 0.0 || isnan(x) ? x : 0.0;
  return x;
}

// act'(x) from y = act(x)
float f_grad(uint op, float y) {
  if (op == SIGMOID) return y * (1.0 - y);
  if (op == TANH) return 1.0 - y * y;
  if (op == RELU) return y > 0.0 ? 1.0 : 0.0;
  return 1.0;
}

void main() {
  uint e = gl_GlobalInvocationID.x;
  if (e >= pc.n * pc.u) return;
  uint r = e / pc.u, k = e % pc.u, u = pc.u;
  uint zr = r * 4u * u, hr = r * 2u * u;
  float c_prev = pc.has_cp != 0u ? cp[r * u + k] : 0.0;
  if (MODE == 0) {
    float i = f_act(pc.rec, zin[zr + k]), f = f_act(pc.rec, zin[zr + u + k]);
    float g = f_act(pc.act, zin[zr + 2u * u + k]), o = f_act(pc.rec, zin[zr + 3u * u + k]);
    float c = i * g + f * c_prev;
    outb[zr + k] = i;
    outb[zr + u + k] = f;
    outb[zr + 2u * u + k] = g;
    outb[zr + 3u * u + k] = o;
    outa[hr + u + k] = c;
    outa[hr + k] = o * f_act(pc.act, c);
  } else {
    float i = gin[zr + k], f = gin[zr + u + k], g = gin[zr + 2u * u + k], o = gin[zr + 3u * u + k];
    float a = f_act(pc.act, hcin[hr + u + k]);
    float dh = zin[hr + k], dc = zin[hr + u + k] + dh * o * f_grad(pc.act, a);
    outa[zr + k] = dc * g * f_grad(pc.rec, i);
    outa[zr + u + k] = dc * c_prev * f_grad(pc.rec, f);
    outa[zr + 2u * u + k] = dc * i * f_grad(pc.act, g);
    outa[zr + 3u * u + k] = dh * a * f_grad(pc.rec, o);
    if (pc.has_dcp != 0u) outb[r * u + k] = dc * f;
  }
}
