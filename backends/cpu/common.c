/*
 * Definitions shared by the fast and the naive kernels: argument checks and
 * their messages, Adam's step size, dtype conversion.
 */
#include <math.h>
#include <string.h>
#include "cpu.h"

int lunet_cpu_adam_alpha(float lr, float beta1, float beta2, int64_t step, float *alpha) {
  if (step < 1)
    return lunet_cpu_error(LUNET_ERR_ARG,
                           "adam_update: step is %lld, expected 1 or more (the count of "
                           "updates including this one)",
                           (long long)step);
  double t = (double)step;
  *alpha = (float)((double)lr * sqrt(1.0 - pow((double)beta2, t)) / (1.0 - pow((double)beta1, t)));
  return 0;
}

int lunet_cpu_check_conv(const lunet_conv2d_desc *d, const char *op) {
  char text[256];
  if (!lunet_conv2d_desc_ok(d, text, sizeof text))
    return lunet_cpu_error(LUNET_ERR_SHAPE,
                           "%s: bad geometry %s (fill it with lunet_conv2d_geometry)", op, text);
  return 0;
}

int lunet_cpu_check_pool(const lunet_pool2d_desc *d, const char *op) {
  char text[256];
  if (!lunet_pool2d_desc_ok(d, text, sizeof text))
    return lunet_cpu_error(LUNET_ERR_SHAPE,
                           "%s: bad geometry %s (fill it with lunet_pool2d_geometry)", op, text);
  return 0;
}

int lunet_cpu_check_label(float label, size_t row, size_t cols) {
  if (label >= 0.0f && label < (float)cols && label == floorf(label)) return 0;
  if (label == floorf(label))
    return lunet_cpu_error(LUNET_ERR_ARG, "softmax_xent: label %g at row %zu is outside [0, %zu)",
                           (double)label, row, cols);
  return lunet_cpu_error(LUNET_ERR_ARG,
                         "softmax_xent: label %g at row %zu is not an integer class id "
                         "in [0, %zu)",
                         (double)label, row, cols);
}

static float load_as_float(const void *x, lunet_dtype dt, size_t i) {
  switch (dt) {
  case LUNET_U8:
    return (float)((const uint8_t *)x)[i];
  case LUNET_I32:
    return (float)((const int32_t *)x)[i];
  default:
    return ((const float *)x)[i];
  }
}

static int32_t float_to_i32(float v) {
  if (v != v) return 0;
  if (v >= 2147483648.0f) return INT32_MAX;
  if (v <= -2147483648.0f) return INT32_MIN;
  return (int32_t)v;
}

static uint8_t float_to_u8(float v) {
  float r = v != v ? 0.0f : roundf(v);
  return (uint8_t)(r < 0.0f ? 0.0f : r > 255.0f ? 255.0f : r);
}

void lunet_cpu_cast_range(void *y, lunet_dtype ydt, const void *x, lunet_dtype xdt, size_t begin,
                          size_t end) {
  if (ydt == xdt) {
    size_t es = ydt == LUNET_U8 ? 1 : 4;
    memcpy((char *)y + begin * es, (const char *)x + begin * es, (end - begin) * es);
    return;
  }
  if (ydt == LUNET_I32 && xdt == LUNET_U8) {
    for (size_t i = begin; i < end; i++) ((int32_t *)y)[i] = ((const uint8_t *)x)[i];
    return;
  }
  if (ydt == LUNET_U8 && xdt == LUNET_I32) {
    for (size_t i = begin; i < end; i++) {
      int32_t v = ((const int32_t *)x)[i];
      ((uint8_t *)y)[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    return;
  }
  for (size_t i = begin; i < end; i++) {
    float v = load_as_float(x, xdt, i);
    if (ydt == LUNET_F32)
      ((float *)y)[i] = v;
    else if (ydt == LUNET_U8)
      ((uint8_t *)y)[i] = float_to_u8(v);
    else
      ((int32_t *)y)[i] = float_to_i32(v);
  }
}
