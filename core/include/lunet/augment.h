/*
 * lunet augmentation: a seeded per-sample pipeline (Keras preprocessing
 * layers), the prefetching batch loader Model:fit reads from, and PNG grids
 * for looking at the result.
 *
 * A pipeline is an ordered list of steps.  The geometric steps (flip,
 * rotation, translation, crop, zoom) compose into ONE affine matrix per
 * sample, about the image centre, followed by one bilinear resample
 * (lunet_resample_one in lunet/resample.h); the pointwise steps (rescaling,
 * normalization) then run in their order.  Coordinates are pixel indices, as
 * in Keras: pixel centres sit at integers, so a horizontal flip maps x to
 * W-1-x exactly and a translation by whole pixels is an exact shift.
 *
 * One resample means one fill mode: every step that can read outside the
 * image (rotation, translation, zoom, a crop with padding, which fills with
 * 0 like torchvision) must agree on fill mode and value, or adding the step
 * is an error saying so.  A constant fill value is used as given, even when
 * a pointwise step comes earlier in the list (the pointwise steps all run
 * after the resample).
 *
 * Randomness is Philox keyed by the seed, with the counter
 * (epoch << 44) | (sample_index << 8) | draw, so a sample's augmentation
 * depends only on (seed, epoch, sample index): not on batch size, batch
 * order or thread count.  Limits that follow: sample_index < 2^36,
 * epoch < 2^20, at most 256 random draws per pipeline (2 per step at most).
 *
 * Building a pipeline: lunet_augment_new(), then one lunet_augment_add_*
 * call per step, in order.  Each add validates its arguments and returns
 * LUNET_ERR_ARG with a message such as
 *   "RandomRotation: factor range [0.5, 0.2] is reversed (lower must be <= upper)".
 * Ranges are given as [lo, hi] pairs; the Lua layer turns a single number f
 * into [-f, f] as Keras does.
 *
 * Threads: a finished pipeline is read-only, so several threads may apply it
 * at once, each with its own lunet_ctx.
 */
#ifndef LUNET_AUGMENT_H
#define LUNET_AUGMENT_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lunet_augment lunet_augment;

typedef enum lunet_flip_mode {
  LUNET_FLIP_HORIZONTAL = 1,             /* left-right, x -> W-1-x */
  LUNET_FLIP_VERTICAL = 2,               /* top-bottom, y -> H-1-y */
  LUNET_FLIP_HORIZONTAL_AND_VERTICAL = 3 /* each independently, p = 0.5 */
} lunet_flip_mode;

/* An empty pipeline (the identity); NULL on out-of-memory. */
LUNET_API lunet_augment *lunet_augment_new(lunet_ctx *ctx);
LUNET_API void lunet_augment_free(lunet_augment *a);
/* Number of steps added so far. */
LUNET_API int lunet_augment_size(const lunet_augment *a);

/* RandomFlip: each enabled flip happens with probability 0.5. */
LUNET_API lunet_status lunet_augment_add_flip(lunet_ctx *ctx, lunet_augment *a,
                                              lunet_flip_mode mode);
/* RandomRotation: angle uniform in [lo, hi] * 2*pi (fractions of a turn,
 * each in [-1, 1]); a positive angle turns the content counter-clockwise on
 * screen (Keras's matrix). */
LUNET_API lunet_status lunet_augment_add_rotation(lunet_ctx *ctx, lunet_augment *a, double lo,
                                                  double hi, lunet_fill_mode mode, float fill);
/* RandomTranslation: shifts uniform in [h_lo, h_hi] * H down and
 * [w_lo, w_hi] * W right (fractions of the size, each in [-1, 1]). */
LUNET_API lunet_status lunet_augment_add_translation(lunet_ctx *ctx, lunet_augment *a, double h_lo,
                                                     double h_hi, double w_lo, double w_hi,
                                                     lunet_fill_mode mode, float fill);
/* RandomCrop (torchvision style): pad by `padding` zeros on every side, then
 * take a random height x width window.  Sets the output size. */
LUNET_API lunet_status lunet_augment_add_crop(lunet_ctx *ctx, lunet_augment *a, int64_t height,
                                              int64_t width, int64_t padding);
/* RandomZoom (Keras): the zoom factor is 1 + uniform(lo, hi) per axis; a
 * positive value zooms out.  same_as_height: the width uses the height's
 * draw and w_lo/w_hi are ignored.  Values must be > -1. */
LUNET_API lunet_status lunet_augment_add_zoom(lunet_ctx *ctx, lunet_augment *a, double h_lo,
                                              double h_hi, bool same_as_height, double w_lo,
                                              double w_hi, lunet_fill_mode mode, float fill);
/* Rescaling: y = x * scale + offset. */
LUNET_API lunet_status lunet_augment_add_rescaling(lunet_ctx *ctx, lunet_augment *a, float scale,
                                                   float offset);
/* Normalization: y = (x - mean[k]) / std[k] per channel k; nchan is 1 (one
 * value for every channel) or the image's channel count.  Copies the arrays;
 * std must be > 0. */
LUNET_API lunet_status lunet_augment_add_normalization(lunet_ctx *ctx, lunet_augment *a,
                                                       const float *mean, const float *std,
                                                       int64_t nchan);

/* The output sample shape for input samples (h, w, c): a crop sets oh, ow. */
LUNET_API void lunet_augment_output_shape(const lunet_augment *a, int64_t h, int64_t w, int64_t c,
                                          int64_t *oh, int64_t *ow, int64_t *oc);
/* Checks that samples of shape (h, w, c) suit the pipeline (crop sizes,
 * normalization channels). */
LUNET_API lunet_status lunet_augment_check(lunet_ctx *ctx, const lunet_augment *a, int64_t h,
                                           int64_t w, int64_t c);
/* in (n,h,w,c) -> out (n,oh,ow,oc), host float arrays that must not overlap.
 * sample_index (n): each sample's index in its dataset, keying its random
 * draws; NULL means 0..n-1. */
LUNET_API lunet_status lunet_augment_apply(lunet_ctx *ctx, const lunet_augment *a, float *out,
                                           const float *in, int64_t n, int64_t h, int64_t w,
                                           int64_t c, const int64_t *sample_index, uint64_t seed,
                                           uint64_t epoch);
/* The geometric part alone, for model layers that resample on their
 * device (nn.RandomFlip ...): mats (n, 6) gets each sample's output->input
 * matrix, the map lunet_op_affine_resample takes, drawn with the same keys
 * and checks as lunet_augment_apply; *mode and *fill get the resample's
 * fill.  The pointwise steps are not applied. */
LUNET_API lunet_status lunet_augment_matrices(lunet_ctx *ctx, const lunet_augment *a, float *mats,
                                              int64_t n, int64_t h, int64_t w, int64_t c,
                                              const int64_t *sample_index, uint64_t seed,
                                              uint64_t epoch, lunet_fill_mode *mode, float *fill);

/* ---- batch loader ---- */

typedef struct lunet_batches lunet_batches;

typedef struct lunet_batches_opts {
  const float *x;       /* (n, sample_numel) host, borrowed until _free */
  const uint8_t *x_u8;  /* instead of x: 8-bit samples, made float (0..255) batch by batch */
  const float *y;       /* (n, y_numel) host, borrowed; NULL: no labels */
  int64_t n;            /* samples in x and y */
  int64_t sample_numel; /* floats per sample; 0: h*w*c */
  int64_t y_numel;      /* floats per label row */
  int64_t h, w, c;      /* sample shape; needed only with aug */
  int64_t batch_size;
  const int64_t *order;     /* (order_len) indices into x, copied; the caller shuffles */
  int64_t order_len;        /* 0: n */
  const lunet_augment *aug; /* NULL: samples pass unchanged; borrowed */
  uint64_t seed, epoch;     /* keys of the augmentation */
  int queue_depth;          /* batches prepared ahead; <= 0: 2 */
} lunet_batches_opts;

/* Starts a prefetch thread that prepares the epoch's batches in `order`,
 * augmented, while the caller computes.  NULL with ctx's error set on bad
 * options or out-of-memory. */
LUNET_API lunet_batches *lunet_batches_new(lunet_ctx *ctx, const lunet_batches_opts *o);
/* Floats per sample of x_out (after augmentation) and per label of y_out. */
LUNET_API int64_t lunet_batches_x_numel(const lunet_batches *b);
LUNET_API int64_t lunet_batches_y_numel(const lunet_batches *b);
/* Number of batches in the epoch. */
LUNET_API int64_t lunet_batches_count(const lunet_batches *b);
/* Blocks for the next batch: x_out (batch_size, x_numel), y_out
 * (batch_size, y_numel) or NULL; *count is the batch's sample count (less
 * than batch_size for the last one, 0 at the end of the epoch).  An error
 * on the prefetch thread comes back here, on the ctx given to _new. */
LUNET_API lunet_status lunet_batches_next(lunet_batches *b, float *x_out, float *y_out,
                                          int64_t *count);
/* Stops the thread (even mid-epoch), joins it and frees; NULL is a no-op. */
LUNET_API void lunet_batches_free(lunet_batches *b);

/* ---- preview ---- */

/* Writes x (n,h,w,c), c = 1 or 3, as an 8-bit PNG grid of `cols` columns
 * (<= 0: about square) with 2-pixel white gaps.  Values are scaled by 255
 * unless the largest exceeds 1.5 (then taken as 0..255), then clamped. */
LUNET_API lunet_status lunet_png_grid(lunet_ctx *ctx, const char *path, const float *x, int64_t n,
                                      int64_t h, int64_t w, int64_t c, int64_t cols);

#ifdef __cplusplus
}
#endif

#endif
