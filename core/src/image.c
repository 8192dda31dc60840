/* PNG and JPEG files into float pixels, resized as Keras does; see
 * lunet/image.h for the rules. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "lunet/env.h"
#include "lunet/image.h"

/* ---- the pixel limit ---- */

/* LUNET_IMAGE_MAX_PIXELS, else the default; -1 when it is not a whole
 * number of at least 1 (it was ignored: a lowered limit given as "1e6"
 * let the default's larger images through). */
static int64_t max_pixels(void) {
  const char *e = getenv("LUNET_IMAGE_MAX_PIXELS");
  long long v;
  if (!e || !*e) return LUNET_IMAGE_MAX_PIXELS;
  return lunet_env_whole(e, 1, INT64_MAX, &v) ? (int64_t)v : -1;
}

static lunet_status check_size(lunet_ctx *ctx, const char *path, int64_t w, int64_t h) {
  if (w <= 0 || h <= 0)
    return lunet_error(ctx, LUNET_ERR_FORMAT, "%s: the header gives an empty image (%lld x %lld)", path,
                       (long long)w, (long long)h);
  int64_t limit = max_pixels();
  if (limit < 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: LUNET_IMAGE_MAX_PIXELS=%.40s is not a whole number of pixels (at least 1; unset it for "
                       "%lld)", path, getenv("LUNET_IMAGE_MAX_PIXELS"), (long long)LUNET_IMAGE_MAX_PIXELS);
  if (w > limit / h)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: %lld x %lld pixels is over the limit of %lld (not decoded); raise "
                       "LUNET_IMAGE_MAX_PIXELS if the file is trusted",
                       path, (long long)w, (long long)h, (long long)limit);
  return LUNET_OK;
}

/* ---- decoded pixels ---- */

typedef struct pixels {
  unsigned char *p;
  int64_t w, h;
  int c;       /* bytes per pixel: 1 (gray), 3 (RGB) or 4 (RGBA) */
  bool gray;   /* the file is gray (its R = G = B) */
  bool alpha;  /* the file has alpha */
} pixels;

typedef enum kind { KIND_UNKNOWN, KIND_PNG, KIND_JPEG } kind;

static kind sniff(lunet_ctx *ctx, const char *path, lunet_status *st) {
  unsigned char b[8] = {0};
  FILE *f = fopen(path, "rb");
  if (!f) {
    *st = lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
    return KIND_UNKNOWN;
  }
  size_t n = fread(b, 1, sizeof b, f);
  fclose(f);
  *st = LUNET_OK;
  if (n == 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return KIND_PNG;
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return KIND_JPEG;
  *st = lunet_error(ctx, LUNET_ERR_FORMAT, "%s: not a PNG or JPEG file (lunet reads those two)", path);
  return KIND_UNKNOWN;
}

/* libpng's errors jump back into read_png with the message kept. */
static void png_fail(png_structp png, png_const_charp msg) {
  snprintf(png_get_error_ptr(png), 256, "%s", msg);
  png_longjmp(png, 1);
}

static void png_warn(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg; /* ancillary trouble (a bad CRC in a text chunk): the pixels stand */
}

/* PNG as 8-bit RGBA, the stored values as PIL and TensorFlow read them: a
 * 16-bit sample keeps its high byte and a gAMA chunk is ignored (libpng's
 * simplified API would convert both to sRGB: 0x8080 became 186, not 128);
 * palettes, tRNS, gray and interlacing expanded.  info_only stops after
 * the header. */
static lunet_status read_png(lunet_ctx *ctx, const char *path, pixels *px, bool info_only) {
  FILE *f = fopen(path, "rb");
  if (!f) return lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
  char why[256] = "";
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, why, png_fail, png_warn);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  png_bytep *volatile rows = NULL;
  lunet_status st = LUNET_OK;
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    fclose(f);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory for the PNG reader", path);
  }
  if (setjmp(png_jmpbuf(png))) {
    free(px->p);
    px->p = NULL;
    st = lunet_error(ctx, LUNET_ERR_FORMAT, "%s: bad PNG: %s", path, why);
    goto done;
  }
  png_init_io(png, f);
  png_read_info(png, info);
  png_uint_32 w, h;
  int depth, type, interlace;
  png_get_IHDR(png, info, &w, &h, &depth, &type, &interlace, NULL, NULL);
  bool trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  px->w = w;
  px->h = h;
  px->gray = !(type & PNG_COLOR_MASK_COLOR);
  px->alpha = (type & PNG_COLOR_MASK_ALPHA) || trns;
  px->c = 4;
  if ((st = check_size(ctx, path, px->w, px->h)) || info_only) goto done;
  if (depth == 16) png_set_strip_16(png);
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (trns) png_set_tRNS_to_alpha(png);
  if (px->gray) png_set_gray_to_rgb(png);
  if (!px->alpha) png_set_filler(png, 0xFF, PNG_FILLER_AFTER);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != (size_t)w * 4) png_error(png, "unexpected row layout after expansion");
  if (!(px->p = malloc((size_t)w * h * 4)) || !(rows = malloc(sizeof *rows * h))) {
    free(px->p);
    px->p = NULL;
    st = lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory for %lld x %lld pixels", path, (long long)px->w,
                     (long long)px->h);
    goto done;
  }
  for (png_uint_32 i = 0; i < h; i++) rows[i] = px->p + (size_t)i * w * 4;
  png_read_image(png, rows);
  png_read_end(png, NULL);
done:
  free(rows);
  png_destroy_read_struct(&png, &info, NULL);
  fclose(f);
  return st;
}

typedef struct jpeg_err {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_fail(j_common_ptr c) {
  jpeg_err *e = (jpeg_err *)c->err;
  c->err->format_message(c, e->msg);
  longjmp(e->jump, 1);
}

/* Warnings that mean missing or corrupt pixel data are errors: libjpeg
 * would fill the rest with grey (or garbage) and call it a success.  Others
 * (extraneous bytes between markers, common in camera files) pass. */
static void jpeg_warn(j_common_ptr c, int level) {
  int code = c->err->msg_code;
  if (level < 0 && (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
                    code == JWRN_MUST_RESYNC || code == JWRN_NOT_SEQUENTIAL))
    jpeg_fail(c);
}

static lunet_status read_jpeg(lunet_ctx *ctx, const char *path, pixels *px, bool gray, bool info_only) {
  FILE *f = fopen(path, "rb");
  if (!f) return lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
  struct jpeg_decompress_struct cinfo;
  jpeg_err err;
  unsigned char *volatile buf = NULL;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_warn;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    fclose(f);
    free(buf);
    return lunet_error(ctx, LUNET_ERR_FORMAT, "%s: bad JPEG: %s", path, err.msg);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, f);
  jpeg_read_header(&cinfo, TRUE);
  px->w = cinfo.image_width;
  px->h = cinfo.image_height;
  px->gray = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  px->alpha = false;
  px->c = gray || px->gray ? 1 : 3;
  lunet_status st = check_size(ctx, path, px->w, px->h);
  if (!st && (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK))
    st = lunet_error(ctx, LUNET_ERR_FORMAT, "%s: a CMYK JPEG (convert it to RGB first)", path);
  if (st || info_only) {
    jpeg_destroy_decompress(&cinfo);
    fclose(f);
    if (info_only && !st) px->c = px->gray ? 1 : 3;
    return st;
  }
  cinfo.out_color_space = px->c == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  size_t row = (size_t)cinfo.output_width * (size_t)cinfo.output_components;
  if (!(buf = malloc(row * cinfo.output_height))) {
    jpeg_destroy_decompress(&cinfo);
    fclose(f);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory for %lld x %lld pixels", path, (long long)px->w,
                       (long long)px->h);
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW r = buf + row * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &r, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  fclose(f);
  px->p = buf;
  return LUNET_OK;
}

static lunet_status decode(lunet_ctx *ctx, const char *path, int channels, pixels *px, bool info_only,
                           const char **format) {
  lunet_status st;
  memset(px, 0, sizeof *px);
  kind k = sniff(ctx, path, &st);
  if (st) return st;
  *format = k == KIND_PNG ? "png" : "jpeg";
  return k == KIND_PNG ? read_png(ctx, path, px, info_only) : read_jpeg(ctx, path, px, channels == 1, info_only);
}

lunet_status lunet_image_info_read(lunet_ctx *ctx, const char *path, lunet_image_info *info) {
  if (!path || !info) return lunet_error(ctx, LUNET_ERR_ARG, "image: no %s (NULL)", path ? "info to fill" : "path");
  pixels px;
  lunet_status st = decode(ctx, path, 3, &px, true, &info->format);
  if (st) return st;
  info->width = px.w;
  info->height = px.h;
  info->channels = (px.gray ? 1 : 3) + (px.alpha ? 1 : 0);
  return LUNET_OK;
}

/* ---- channels and resize ---- */

/* Pixel (y, x) of px as `channels` floats. */
static void fetch(const pixels *px, int64_t y, int64_t x, int channels, float *v) {
  const unsigned char *s = px->p + ((size_t)y * (size_t)px->w + (size_t)x) * (size_t)px->c;
  float r = s[0], g = px->c > 1 ? s[1] : s[0], b = px->c > 1 ? s[2] : s[0];
  if (channels == 1) {
    /* TensorFlow's PNG decoder (Keras's image_dataset_from_directory):
     * libpng's png_set_rgb_to_gray(png, 1, 0.299, 0.587), whose fixed
     * point (15 bits) truncates; JPEG comes as libjpeg's luma already */
    v[0] = px->c == 1 || px->gray ? r : (float)((9797u * s[0] + 19234u * s[1] + 3737u * s[2]) >> 15);
    return;
  }
  v[0] = r, v[1] = g, v[2] = b;
  if (channels == 4) v[3] = px->c == 4 ? s[3] : 255.0f;
}

/* The two source pixels and the weight of the second for output pixel i
 * of an axis of `size` read at `scale` (half-pixel centres, clamped). */
static void taps(int64_t i, double scale, int64_t size, int64_t *lo, int64_t *hi, double *w) {
  double f = (i + 0.5) * scale - 0.5, f0 = floor(f);
  *w = f - f0;
  *lo = f0 < 0 ? 0 : (int64_t)f0 > size - 1 ? size - 1 : (int64_t)f0;
  *hi = (int64_t)f0 + 1 < 0 ? 0 : (int64_t)f0 + 1 > size - 1 ? size - 1 : (int64_t)f0 + 1;
}

/* out (oh, ow, channels): the window (top, left, ch, cw) of px resized
 * bilinearly with half-pixel centres, clamped at the window's edges. */
static void resize(const pixels *px, int64_t top, int64_t left, int64_t ch, int64_t cw, int64_t oh, int64_t ow,
                   int channels, float *out) {
  double sy = (double)ch / (double)oh, sx = (double)cw / (double)ow;
  float a[4], b[4], c[4], d[4];
  for (int64_t i = 0; i < oh; i++) {
    int64_t ya, yb, xa, xb;
    double wy, wx;
    taps(i, sy, ch, &ya, &yb, &wy);
    for (int64_t j = 0; j < ow; j++) {
      taps(j, sx, cw, &xa, &xb, &wx);
      fetch(px, top + ya, left + xa, channels, a);
      fetch(px, top + ya, left + xb, channels, b);
      fetch(px, top + yb, left + xa, channels, c);
      fetch(px, top + yb, left + xb, channels, d);
      float *o = out + ((size_t)i * (size_t)ow + (size_t)j) * (size_t)channels;
      for (int k = 0; k < channels; k++) {
        double up = a[k] + wx * (b[k] - a[k]), down = c[k] + wx * (d[k] - c[k]);
        o[k] = (float)(up + wy * (down - up));
      }
    }
  }
}

/* What the readers decode into: a size, 1, 3 or 4 channels, a buffer. */
static lunet_status check_target(lunet_ctx *ctx, int64_t height, int64_t width, int channels, const float *out) {
  if (height <= 0 || width <= 0 || (channels != 1 && channels != 3 && channels != 4))
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "image: the size must be positive and channels 1, 3 or 4, got %lld x %lld x %d",
                       (long long)height, (long long)width, channels);
  if (!out) return lunet_error(ctx, LUNET_ERR_ARG, "image: no buffer (NULL) to decode into");
  return LUNET_OK;
}

lunet_status lunet_image_load(lunet_ctx *ctx, const char *path, int64_t height, int64_t width, int channels,
                              bool crop_to_aspect_ratio, float *out) {
  if (!path) return lunet_error(ctx, LUNET_ERR_ARG, "image: no path (NULL)");
  lunet_status st = check_target(ctx, height, width, channels, out);
  if (st) return st;
  pixels px;
  const char *format;
  st = decode(ctx, path, channels, &px, false, &format);
  if (st) return st;
  int64_t box[4] = {0, 0, px.h, px.w};
  if (crop_to_aspect_ratio) lunet_aspect_window(px.h, px.w, height, width, box);
  resize(&px, box[0], box[1], box[2], box[3], height, width, channels, out);
  free(px.p);
  return LUNET_OK;
}

void lunet_aspect_window(int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t box[4]) {
  int64_t ch = (int64_t)((double)w * (double)oh / (double)ow), cw = (int64_t)((double)h * (double)ow / (double)oh);
  ch = ch < h ? ch : h;
  cw = cw < w ? cw : w;
  ch = ch > 0 ? ch : 1; /* a thin image and a wide target: one row, as Keras */
  cw = cw > 0 ? cw : 1;
  box[0] = (h - ch) / 2, box[1] = (w - cw) / 2, box[2] = ch, box[3] = cw;
}

/* ---- a batch on several threads ---- */

typedef struct batch_job {
  const char *const *paths;
  int64_t n, h, w;
  int c, nthreads;
  bool crop;
  float *out;
  int64_t failed_at; /* the first failing file, or n */
  char msg[1024];
  lunet_status status;
  pthread_mutex_t lock;
} batch_job;

typedef struct worker {
  batch_job *job;
  int index;
} worker;

static void *work(void *arg) {
  worker *wk = arg;
  batch_job *j = wk->job;
  lunet_ctx *ctx = lunet_ctx_new();
  for (int64_t i = wk->index; i < j->n; i += j->nthreads) {
    lunet_status st = ctx ? lunet_image_load(ctx, j->paths[i], j->h, j->w, j->c, j->crop,
                                             j->out + (size_t)i * (size_t)(j->h * j->w * j->c))
                          : LUNET_ERR_NOMEM;
    if (st) {
      pthread_mutex_lock(&j->lock);
      if (i < j->failed_at) {
        j->failed_at = i;
        j->status = st;
        snprintf(j->msg, sizeof j->msg, "%s", ctx ? lunet_ctx_error(ctx) : "out of memory");
      }
      pthread_mutex_unlock(&j->lock);
      break;
    }
  }
  lunet_ctx_free(ctx);
  return NULL;
}

lunet_status lunet_images_load(lunet_ctx *ctx, const char *const *paths, int64_t n, int64_t height, int64_t width,
                               int channels, bool crop_to_aspect_ratio, int threads, float *out) {
  if (n < 0 || (n > 0 && !paths))
    return lunet_error(ctx, LUNET_ERR_ARG, "images: %lld files at %s", (long long)n, paths ? "a list" : "NULL");
  if (n == 0) return LUNET_OK;
  lunet_status st = check_target(ctx, height, width, channels, out);
  if (st) return st;
  if (threads <= 0) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cores > 0 ? (int)cores : 1;
  }
  if (threads > 8) threads = 8;
  if (threads > n) threads = (int)(n > 0 ? n : 1);
  batch_job job = {paths, n, height, width, channels, threads, crop_to_aspect_ratio, out, n, "", LUNET_OK,
                   PTHREAD_MUTEX_INITIALIZER};
  pthread_t tid[8];
  worker wk[8];
  bool running[8] = {false};
  for (int t = 0; t < threads; t++) wk[t] = (worker){&job, t};
  for (int t = 1; t < threads; t++) running[t] = pthread_create(&tid[t], NULL, work, &wk[t]) == 0;
  work(&wk[0]);
  for (int t = 1; t < threads; t++) { /* a thread that did not start: its share here */
    if (running[t])
      pthread_join(tid[t], NULL);
    else
      work(&wk[t]);
  }
  pthread_mutex_destroy(&job.lock);
  if (job.status) return lunet_error(ctx, job.status, "%s", job.msg);
  return LUNET_OK;
}

/* ---- writing ---- */

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcasecmp(s + n - k, suffix);
}

lunet_status lunet_image_save(lunet_ctx *ctx, const char *path, const float *pixels, int64_t height, int64_t width,
                              int channels, int quality) {
  if (!path || !pixels) return lunet_error(ctx, LUNET_ERR_ARG, "image: no %s (NULL)", path ? "pixels" : "path");
  bool png = ends_with(path, ".png"), jpeg = ends_with(path, ".jpg") || ends_with(path, ".jpeg");
  if (!png && !jpeg) return lunet_error(ctx, LUNET_ERR_ARG, "%s: name the file .png, .jpg or .jpeg", path);
  if (height <= 0 || width <= 0 || (channels != 1 && channels != 3 && channels != 4) || quality < 1 || quality > 100)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: %lld x %lld x %d pixels (channels 1, 3 or 4), quality %d (1..100)",
                       path, (long long)height, (long long)width, channels, quality);
  if (height > INT64_MAX / 4 / width / channels) /* the count below would overflow */
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: %lld x %lld x %d pixels is more than memory holds", path,
                       (long long)height, (long long)width, channels);
  size_t count = (size_t)(height * width * channels);
  unsigned char *u8 = malloc(count);
  if (!u8) return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory", path);
  for (size_t i = 0; i < count; i++) {
    float v = pixels[i] != pixels[i] ? 0.0f : pixels[i];
    u8[i] = (unsigned char)(v <= 0 ? 0 : v >= 255 ? 255 : lrintf(v));
  }
  lunet_status st = LUNET_OK;
  if (png) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)width;
    img.height = (png_uint_32)height;
    img.format = channels == 1 ? PNG_FORMAT_GRAY : channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
    if (!png_image_write_to_file(&img, path, 0, u8, 0, NULL))
      st = lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, img.message);
  } else {
    FILE *f = fopen(path, "wb");
    if (!f) {
      free(u8);
      return lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
    }
    struct jpeg_compress_struct cinfo;
    jpeg_err err;
    unsigned char *volatile row = NULL;
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_fail;
    if (setjmp(err.jump)) {
      jpeg_destroy_compress(&cinfo);
      fclose(f);
      free(u8);
      free(row);
      return lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, err.msg);
    }
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = channels == 1 ? 1 : 3;
    cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    row = malloc((size_t)width * 3);
    while (row && cinfo.next_scanline < cinfo.image_height) {
      const unsigned char *src = u8 + (size_t)cinfo.next_scanline * (size_t)width * (size_t)channels;
      for (int64_t x = 0; x < width; x++)
        for (int k = 0; k < cinfo.input_components; k++) row[x * cinfo.input_components + k] = src[x * channels + k];
      JSAMPROW r = row;
      jpeg_write_scanlines(&cinfo, &r, 1);
    }
    if (row) jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    free(row);
    if (fclose(f) != 0 || !row) st = lunet_error(ctx, LUNET_ERR_IO, "%s: could not write the file", path);
  }
  free(u8);
  return st;
}
