/*
 * lunet image files: PNG (libpng) and JPEG (libjpeg-turbo) decoded into
 * float pixels 0..255 (N, H, W, C), resized as Keras's
 * image_dataset_from_directory does (tf.image.resize: bilinear with
 * half-pixel centres, edges clamped; crop_to_aspect_ratio first cuts the
 * largest centred window of the target's aspect ratio).
 *
 * Files from elsewhere are hostile until read: the size in the header is
 * checked against a pixel limit before any pixel is decoded (default
 * LUNET_IMAGE_MAX_PIXELS, raised or lowered by the environment variable
 * of the same name), every decoder error comes back with the file's path,
 * and a truncated file is an error, never a partly grey image.
 *
 * Channels: 1 (grayscale), 3 (RGB) or 4 (RGBA), whatever the file holds:
 * a gray file is repeated into RGB, an alpha channel dropped (RGB) or set
 * to 255 (RGBA from a file without one); color to gray is TensorFlow's:
 * libjpeg's luma for JPEG, (9797 R + 19234 G + 3737 B) >> 15 for PNG
 * (libpng's png_set_rgb_to_gray(png, 1, 0.299, 0.587)).  Pixels are the
 * stored values (a 16-bit sample's high byte, a gAMA chunk ignored).
 */
#ifndef LUNET_IMAGE_H
#define LUNET_IMAGE_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_IMAGE_MAX_PIXELS (INT64_C(1) << 27) /* 134 megapixels */

typedef struct lunet_image_info {
  int64_t width, height;
  int channels;       /* as stored: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA */
  const char *format; /* "png" or "jpeg" */
} lunet_image_info;

/* Reads the header only (format from the file's first bytes, not its name). */
LUNET_API lunet_status lunet_image_info_read(lunet_ctx *ctx, const char *path, lunet_image_info *info);

/* Keras's crop_to_aspect_ratio window of an (h, w) image for an (oh, ow)
 * target: the largest centred window of that aspect (at least 1 x 1), as
 * box = {top, left, height, width}.  Shared by the readers and Resizing. */
LUNET_API void lunet_aspect_window(int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t box[4]);

/* Decodes one file into out (height, width, channels) floats 0..255,
 * resized (and cropped) as described above. */
LUNET_API lunet_status lunet_image_load(lunet_ctx *ctx, const char *path, int64_t height, int64_t width,
                                        int channels, bool crop_to_aspect_ratio, float *out);

/* n files into out (n, height, width, channels) on `threads` threads (<= 0:
 * one per core, at most 8).  The first failure (in file order) is the error,
 * naming its file. */
LUNET_API lunet_status lunet_images_load(lunet_ctx *ctx, const char *const *paths, int64_t n, int64_t height,
                                         int64_t width, int channels, bool crop_to_aspect_ratio, int threads,
                                         float *out);

/* Writes pixels (height, width, channels) 0..255 (rounded, clamped) as a
 * PNG or a JPEG (quality 1..100; RGBA loses its alpha), chosen by the
 * name's extension (.png, .jpg, .jpeg); 1, 3 or 4 channels. */
LUNET_API lunet_status lunet_image_save(lunet_ctx *ctx, const char *path, const float *pixels, int64_t height,
                                        int64_t width, int channels, int quality);

#ifdef __cplusplus
}
#endif

#endif
