// tanh as the CPU backend's lunet_cpu_tanhf (backends/cpu/cpu.h), so both
// backends give the same digits: an odd polynomial (Taylor to x^15) under
// 0.5, 1 - 2 / (1 + e^2|x|) above, exactly +-1 past 9, a NaN kept.  A
// driver's tanh may lose the digits near 0 (lavapipe's gave 1.19e-7 for
// tanh(1e-7) and 2.98e-8 for tanh(1e-20)) or turn NaN into a bound.
float tanh_(float x) {
  if (isnan(x)) return x;
  float a = abs(x);
  if (a < 0.5) {
    float x2 = x * x;
    float p = -929569.0 / 638512875.0;
    p = p * x2 + 21844.0 / 6081075.0;
    p = p * x2 - 1382.0 / 155925.0;
    p = p * x2 + 62.0 / 2835.0;
    p = p * x2 - 17.0 / 315.0;
    p = p * x2 + 2.0 / 15.0;
    p = p * x2 - 1.0 / 3.0;
    return x + x * x2 * p;
  }
  float r = a > 9.0 ? 1.0 : 1.0 - 2.0 / (1.0 + exp(2.0 * a));
  return x < 0.0 ? -r : r;
}
