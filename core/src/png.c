/* PNG grids of image batches, for looking at data and augmentation.  The one
 * place stb_image_write's implementation is compiled. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <stb_image_write.h>
#pragma GCC diagnostic pop

#include "lunet/augment.h"

#define GAP 2
#define GAP_VALUE 255 /* white, so dark image borders stay visible */

static unsigned char to_byte(float v, float scale) {
  float s = v * scale + 0.5f;
  if (!(s > 0)) return 0; /* also NaN */
  if (s >= 255) return 255;
  return (unsigned char)s;
}

/* Auto-scaling: data whose largest value exceeds 1.5 is taken as 0..255. */
static float value_scale(const float *x, int64_t count) {
  float mx = 0;
  for (int64_t i = 0; i < count; i++)
    if (x[i] > mx) mx = x[i];
  return mx > 1.5f ? 1.0f : 255.0f;
}

/* img (rows*h + gaps, cols*w + gaps, c) bytes <- x (n,h,w,c) */
static void draw_grid(unsigned char *img, const float *x, int64_t n, int64_t h, int64_t w,
                      int64_t c, int64_t cols, int64_t gw, float scale) {
  for (int64_t i = 0; i < n; i++) {
    int64_t top = (i / cols) * (h + GAP), left = (i % cols) * (w + GAP);
    for (int64_t y = 0; y < h; y++) {
      unsigned char *row = img + ((top + y) * gw + left) * c;
      const float *src = x + (i * h + y) * w * c;
      for (int64_t j = 0; j < w * c; j++) row[j] = to_byte(src[j], scale);
    }
  }
}

lunet_status lunet_png_grid(lunet_ctx *ctx, const char *path, const float *x, int64_t n, int64_t h,
                            int64_t w, int64_t c, int64_t cols) {
  if (!path || !x) return lunet_error(ctx, LUNET_ERR_ARG, "png_grid: need a path and image data");
  if (c != 1 && c != 3)
    return lunet_error(ctx, LUNET_ERR_SHAPE,
                       "png_grid: '%s': images must have 1 or 3 channels, got %lld", path,
                       (long long)c);
  if (n <= 0 || h <= 0 || w <= 0)
    return lunet_error(ctx, LUNET_ERR_SHAPE,
                       "png_grid: '%s': need at least one image of positive size, got "
                       "(%lld, %lld, %lld, %lld)",
                       path, (long long)n, (long long)h, (long long)w, (long long)c);
  if (cols <= 0) cols = (int64_t)ceil(sqrt((double)n));
  if (cols > n) cols = n;
  int64_t rows = (n + cols - 1) / cols;
  int64_t gw = cols * w + (cols - 1) * GAP, gh = rows * h + (rows - 1) * GAP;
  if (gw > 65535 || gh > 65535)
    return lunet_error(ctx, LUNET_ERR_SHAPE,
                       "png_grid: '%s': a %lld x %lld grid is too large; show fewer "
                       "images",
                       path, (long long)gw, (long long)gh);
  unsigned char *img = malloc((size_t)(gw * gh * c));
  if (!img) return lunet_error(ctx, LUNET_ERR_NOMEM, "png_grid: '%s': out of memory", path);
  memset(img, GAP_VALUE, (size_t)(gw * gh * c));
  draw_grid(img, x, n, h, w, c, cols, gw, value_scale(x, n * h * w * c));
  errno = 0;
  int ok = stbi_write_png(path, (int)gw, (int)gh, (int)c, img, (int)(gw * c));
  int e = errno;
  free(img);
  if (!ok)
    return lunet_error(ctx, LUNET_ERR_IO, "png_grid: cannot write '%s': %s", path,
                       e ? strerror(e) : "write failed");
  return LUNET_OK;
}
