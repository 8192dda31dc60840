// The optimizer update of one element, shared by optim.comp (one tensor a
// dispatch) and optim_multi.comp (several): p, g and the states s1, s2 as
// values, in the same order of operations as the CPU backend.  The
// including shader declares MODE and the push constants pc with lr, a, b,
// eps, wd, step, has_s1, has_s2 and flag.
// MODE 0 SGD: a = momentum, s1 = velocity (has_s1), flag = nesterov.
// MODE 1 Adam/AdamW: a = beta1, b = beta2, step = lr*sqrt(1-b2^t)/(1-b1^t),
//        s1 = m, s2 = v.
// MODE 2 RMSprop: a = rho, b = momentum, s1 = mean square, s2 = momentum
//        buffer (has_s2).

void sgd(inout float p, float g, inout float s1) {
  if (pc.wd > 0.0) p -= pc.lr * pc.wd * p;
  if (pc.has_s1 == 0u) {
    p -= pc.lr * g;
    return;
  }
  s1 = pc.a * s1 - pc.lr * g;
  if (pc.flag != 0u) p += pc.a * s1 - pc.lr * g;
  else p += s1;
}

void adam(inout float p, float g, inout float s1, inout float s2) {
  if (pc.wd > 0.0) p -= pc.lr * pc.wd * p;
  s1 = pc.a * s1 + (1.0 - pc.a) * g;
  s2 = pc.b * s2 + (1.0 - pc.b) * g * g;
  p -= pc.step * s1 / (sqrt(s2) + pc.eps);
}

void rmsprop(inout float p, float g, inout float s1, inout float s2) {
  s1 = pc.a * s1 + (1.0 - pc.a) * g * g;
  float inc = pc.lr * g / sqrt(s1 + pc.eps);
  if (pc.b > 0.0 && pc.has_s2 != 0u) {
    s2 = pc.b * s2 + inc;
    p -= s2;
  } else {
    p -= inc;
  }
}

// Element i of one tensor: its states are read and written only where
// present (an absent one is the placeholder buffer, too short to index).
#define OPTIM_ELEMENT(P, G, S1, S2, i)                   \
  {                                                      \
    float p_ = P[i], s1_ = 0.0, s2_ = 0.0;               \
    if (pc.has_s1 != 0u) s1_ = S1[i];                    \
    if (pc.has_s2 != 0u) s2_ = S2[i];                    \
    if (MODE == 0) sgd(p_, G[i], s1_);                   \
    else if (MODE == 1) adam(p_, G[i], s1_, s2_);        \
    else rmsprop(p_, G[i], s1_, s2_);                    \
    P[i] = p_;                                           \
    if (pc.has_s1 != 0u) S1[i] = s1_;                    \
    if (pc.has_s2 != 0u) S2[i] = s2_;                    \
  }
