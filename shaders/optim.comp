#version 450
// Fused optimizer updates, in place on p and the state (n each), in the same
// order of operations as the CPU backend.
// MODE 0 SGD: a = momentum, s1 = velocity (has_s1), flag = nesterov.
// MODE 1 Adam/AdamW: a = beta1, b = beta2, step = lr*sqrt(1-b2^t)/(1-b1^t),
//        s1 = m, s2 = v.
// MODE 2 RMSprop: a = rho, b = momentum, s1 = mean square, s2 = momentum
//        buffer (has_s2).
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

void sgd(uint i) {
  if (pc.wd > 0.0) p[i] -= pc.lr * pc.wd * p[i];
  if (pc.has_s1 == 0u) {
    p[i] -= pc.lr * g[i];
    return;
  }
  s1[i] = pc.a * s1[i] - pc.lr * g[i];
  if (pc.flag != 0u) p[i] += pc.a * s1[i] - pc.lr * g[i];
  else p[i] += s1[i];
}

void adam(uint i) {
  if (pc.wd > 0.0) p[i] -= pc.lr * pc.wd * p[i];
  s1[i] = pc.a * s1[i] + (1.0 - pc.a) * g[i];
  s2[i] = pc.b * s2[i] + (1.0 - pc.b) * g[i] * g[i];
  p[i] -= pc.step * s1[i] / (sqrt(s2[i]) + pc.eps);
}

void rmsprop(uint i) {
  s1[i] = pc.a * s1[i] + (1.0 - pc.a) * g[i] * g[i];
  float inc = pc.lr * g[i] / sqrt(s1[i] + pc.eps);
  if (pc.b > 0.0 && pc.has_s2 != 0u) {
    s2[i] = pc.b * s2[i] + inc;
    p[i] -= s2[i];
  } else {
    p[i] -= inc;
  }
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    if (MODE == 0) sgd(i);
    else if (MODE == 1) adam(i);
    else rmsprop(i);
  }
}
