/*
 * The reference affine resample shared by the core's augmentation pipeline
 * and every backend's affine_resample, so that all of them agree.
 */
#ifndef LUNET_RESAMPLE_H
#define LUNET_RESAMPLE_H

#include <math.h>
#include <stddef.h>
#include "lunet/lunet.h"

/* Maps coordinate v into [0, n) by the fill mode; returns -1 for "outside"
 * (constant fill). */
static inline long lunet_resample_index(long v, long n, lunet_fill_mode mode) {
  if (v >= 0 && v < n) return v;
  switch (mode) {
  case LUNET_FILL_REFLECT: {
    long period = 2 * n;
    long r = v % period;
    if (r < 0) r += period;
    return r < n ? r : period - 1 - r;
  }
  case LUNET_FILL_NEAREST:
    return v < 0 ? 0 : n - 1;
  case LUNET_FILL_WRAP: {
    long r = v % n;
    return r < 0 ? r + n : r;
  }
  default:
    return -1;
  }
}

/* x (H,W,C) -> y (OH,OW,C), one sample; m[6] maps output pixel (ox, oy) to
 * input (m0*ox + m1*oy + m2, m3*ox + m4*oy + m5), bilinear. */
static inline void lunet_resample_one(float *y, const float *x, const float m[6], size_t h,
                                      size_t w, size_t c, size_t oh, size_t ow,
                                      lunet_fill_mode mode, float fill) {
  for (size_t oy = 0; oy < oh; oy++) {
    for (size_t ox = 0; ox < ow; ox++) {
      /* far outside (a zoom of 1e30, or NaN) stays far outside: the cast
       * to long below is undefined beyond its range */
      float sx = fminf(fmaxf(m[0] * (float)ox + m[1] * (float)oy + m[2], -1e9f), 1e9f);
      float sy = fminf(fmaxf(m[3] * (float)ox + m[4] * (float)oy + m[5], -1e9f), 1e9f);
      float fx = floorf(sx), fy = floorf(sy);
      float ax = sx - fx, ay = sy - fy;
      long x0 = (long)fx, y0 = (long)fy;
      long xs[2] = {lunet_resample_index(x0, (long)w, mode),
                    lunet_resample_index(x0 + 1, (long)w, mode)};
      long ys[2] = {lunet_resample_index(y0, (long)h, mode),
                    lunet_resample_index(y0 + 1, (long)h, mode)};
      float wts[4] = {(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay};
      float *out = y + (oy * ow + ox) * c;
      for (size_t k = 0; k < c; k++) out[k] = 0.0f;
      for (int j = 0; j < 4; j++) {
        long yy = ys[j >> 1], xx = xs[j & 1];
        if (wts[j] == 0.0f) continue;
        if (yy < 0 || xx < 0) {
          for (size_t k = 0; k < c; k++) out[k] += wts[j] * fill;
        } else {
          const float *in = x + ((size_t)yy * w + (size_t)xx) * c;
          for (size_t k = 0; k < c; k++) out[k] += wts[j] * in[k];
        }
      }
    }
  }
}

#endif
