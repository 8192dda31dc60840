/* Check tests of the augmentation pipeline, the batch loader and PNG grids. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STB_IMAGE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#include <stb_image.h>
#pragma GCC diagnostic pop

#include "lunet/augment.h"
#include "lunet/backend.h"

static lunet_ctx *ctx;
static lunet_augment *aug;

static void setup(void) {
  ctx = lunet_ctx_new();
  aug = lunet_augment_new(ctx);
}

static void teardown(void) {
  lunet_augment_free(aug);
  lunet_ctx_free(ctx);
}

/* The documented counter layout, computed here independently. */
static float draw(uint64_t seed, uint64_t epoch, int64_t idx, int d) {
  return lunet_philox_uniform(seed, (epoch << 44) | ((uint64_t)idx << 8) | (uint64_t)d);
}

/* x (n,h,w,c) with distinct values 1, 2, 3, ... */
static float *ramp(int64_t numel) {
  float *x = malloc((size_t)numel * sizeof *x);
  for (int64_t i = 0; i < numel; i++) x[i] = (float)(i + 1);
  return x;
}

#define AT(p, h, w, c, y, x, k) ((p)[(((y) * (w)) + (x)) * (c) + (k)])

START_TEST(augment_flip_horizontal_exact) {
  enum { N = 16, H = 3, W = 4, C = 2 };
  ck_assert_int_eq(lunet_augment_add_flip(ctx, aug, LUNET_FLIP_HORIZONTAL), LUNET_OK);
  float *in = ramp(H * W * C), out[N][H * W * C];
  float *rep = malloc(sizeof(float) * N * H * W * C);
  for (int i = 0; i < N; i++) memcpy(rep + i * H * W * C, in, sizeof(float) * H * W * C);
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, &out[0][0], rep, N, H, W, C, NULL, 7, 3),
                   LUNET_OK);
  int flipped = 0;
  for (int i = 0; i < N; i++) {
    bool flip = draw(7, 3, i, 0) < 0.5f;
    flipped += flip;
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++)
        for (int k = 0; k < C; k++)
          ck_assert_float_eq(AT(out[i], H, W, C, y, x, k),
                             AT(in, H, W, C, y, flip ? W - 1 - x : x, k));
  }
  ck_assert_int_gt(flipped, 0);
  ck_assert_int_lt(flipped, N);
  free(in);
  free(rep);
}
END_TEST

START_TEST(augment_flip_vertical_exact) {
  enum { N = 16, H = 5, W = 3, C = 1 };
  ck_assert_int_eq(lunet_augment_add_flip(ctx, aug, LUNET_FLIP_VERTICAL), LUNET_OK);
  float *in = ramp(H * W * C), out[H * W * C];
  int flipped = 0;
  for (int64_t i = 0; i < N; i++) {
    ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, H, W, C, &i, 11, 0),
                     LUNET_OK);
    /* vertical flips use the step's second draw */
    bool flip = draw(11, 0, i, 1) < 0.5f;
    flipped += flip;
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++)
        ck_assert_float_eq(AT(out, H, W, C, y, x, 0), AT(in, H, W, C, flip ? H - 1 - y : y, x, 0));
  }
  ck_assert_int_gt(flipped, 0);
  ck_assert_int_lt(flipped, N);
  free(in);
}
END_TEST

START_TEST(augment_rotation_90_is_transpose_flip) {
  enum { S = 5, C = 2 };
  ck_assert_int_eq(lunet_augment_add_rotation(ctx, aug, 0.25, 0.25, LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  float *in = ramp(S * S * C), out[S * S * C];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, S, S, C, NULL, 1, 0), LUNET_OK);
  /* A quarter turn counter-clockwise on screen: out[y][x] = in[x][S-1-y], so
   * the top-right pixel lands top-left. */
  for (int y = 1; y < S - 1; y++)
    for (int x = 1; x < S - 1; x++)
      for (int k = 0; k < C; k++)
        ck_assert_float_eq_tol(AT(out, S, S, C, y, x, k), AT(in, S, S, C, x, S - 1 - y, k),
                               1e-4);
  free(in);
}
END_TEST

/* One row a b c d = 1 2 3 4 shifted by dx whole pixels under `mode`. */
static void shift_row(double frac, lunet_fill_mode mode, float fill, const float want[4]) {
  lunet_augment *a = lunet_augment_new(ctx);
  ck_assert_int_eq(lunet_augment_add_translation(ctx, a, 0, 0, frac, frac, mode, fill),
                   LUNET_OK);
  float in[4] = {1, 2, 3, 4}, out[4];
  ck_assert_int_eq(lunet_augment_apply(ctx, a, out, in, 1, 1, 4, 1, NULL, 5, 0), LUNET_OK);
  for (int i = 0; i < 4; i++) ck_assert_float_eq(out[i], want[i]);
  lunet_augment_free(a);
}

START_TEST(augment_translation_fill_modes) {
  /* right by 2: out[x] = in[x-2], reading in[-2], in[-1] */
  shift_row(0.5, LUNET_FILL_REFLECT, 0, (float[]){2, 1, 1, 2});
  shift_row(0.5, LUNET_FILL_CONSTANT, 9, (float[]){9, 9, 1, 2});
  shift_row(0.5, LUNET_FILL_NEAREST, 0, (float[]){1, 1, 1, 2});
  shift_row(0.5, LUNET_FILL_WRAP, 0, (float[]){3, 4, 1, 2});
  /* left by 1: out[x] = in[x+1], reading in[4] */
  shift_row(-0.25, LUNET_FILL_REFLECT, 0, (float[]){2, 3, 4, 4});
  shift_row(-0.25, LUNET_FILL_CONSTANT, -1, (float[]){2, 3, 4, -1});
  shift_row(-0.25, LUNET_FILL_WRAP, 0, (float[]){2, 3, 4, 1});
}
END_TEST

START_TEST(augment_translation_2d_exact_shift) {
  enum { H = 4, W = 4, C = 3 };
  /* down 1 (0.25 * 4), left 2 (-0.5 * 4) */
  ck_assert_int_eq(lunet_augment_add_translation(ctx, aug, 0.25, 0.25, -0.5, -0.5,
                                                 LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  float *in = ramp(H * W * C), out[H * W * C];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, H, W, C, NULL, 3, 9), LUNET_OK);
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      for (int k = 0; k < C; k++) {
        int sy = y - 1, sx = x + 2;
        float want = sy >= 0 && sx < W ? AT(in, H, W, C, sy, sx, k) : 0;
        ck_assert_float_eq(AT(out, H, W, C, y, x, k), want);
      }
  free(in);
}
END_TEST

/* Finds the (top, left) window of the zero-padded input equal to out;
 * returns how many windows match. */
static int find_window(const float *out, const float *in, int h, int w, int c, int pad,
                       int oh, int ow, int *top, int *left) {
  int matches = 0;
  for (int t = 0; t <= h + 2 * pad - oh; t++) {
    for (int l = 0; l <= w + 2 * pad - ow; l++) {
      bool same = true;
      for (int y = 0; y < oh && same; y++)
        for (int x = 0; x < ow && same; x++)
          for (int k = 0; k < c && same; k++) {
            int sy = y + t - pad, sx = x + l - pad;
            float v = sy >= 0 && sy < h && sx >= 0 && sx < w ? AT(in, h, w, c, sy, sx, k) : 0;
            same = AT(out, oh, ow, c, y, x, k) == v;
          }
      if (same) {
        matches++;
        *top = t;
        *left = l;
      }
    }
  }
  return matches;
}

START_TEST(augment_crop_padding_shape_and_content) {
  enum { H = 4, W = 4, C = 3, N = 40 };
  /* padding 1: every window overlaps the image, so its content names it */
  ck_assert_int_eq(lunet_augment_add_crop(ctx, aug, 3, 2, 1), LUNET_OK);
  int64_t oh, ow, oc;
  lunet_augment_output_shape(aug, H, W, C, &oh, &ow, &oc);
  ck_assert_int_eq(oh, 3);
  ck_assert_int_eq(ow, 2);
  ck_assert_int_eq(oc, 3);
  float *in = ramp(H * W * C), out[3 * 2 * C];
  bool seen[4][5] = {{false}};
  int distinct = 0;
  for (int64_t i = 0; i < N; i++) {
    ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, H, W, C, &i, 2, 0), LUNET_OK);
    int top = -1, left = -1;
    ck_assert_int_eq(find_window(out, in, H, W, C, 1, 3, 2, &top, &left), 1);
    distinct += !seen[top][left];
    seen[top][left] = true;
  }
  ck_assert_int_ge(distinct, 8); /* 4 x 5 offsets exist */
  free(in);
}
END_TEST

START_TEST(augment_crop_too_large) {
  ck_assert_int_eq(lunet_augment_add_crop(ctx, aug, 7, 7, 1), LUNET_OK);
  float in[16] = {0}, out[49];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, 4, 4, 1, NULL, 0, 0),
                   LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomCrop: the 7 x 7 crop does not fit in the 4 x 4 input padded by "
                   "1; lower height/width or raise padding");
}
END_TEST

START_TEST(augment_zoom_zero_is_identity) {
  enum { N = 3, H = 5, W = 6, C = 2 };
  ck_assert_int_eq(lunet_augment_add_zoom(ctx, aug, 0, 0, true, 0, 0, LUNET_FILL_REFLECT, 0),
                   LUNET_OK);
  float *in = ramp(N * H * W * C), out[N * H * W * C];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, N, H, W, C, NULL, 4, 1), LUNET_OK);
  for (int i = 0; i < N * H * W * C; i++) ck_assert_float_eq(out[i], in[i]);
  free(in);
}
END_TEST

START_TEST(augment_zoom_out_by_two) {
  enum { S = 5 };
  /* factor 1: zoom 2, out x maps to 2 + 2 (x - 2): x = 3 reads column 4 */
  ck_assert_int_eq(lunet_augment_add_zoom(ctx, aug, 1, 1, true, 0, 0, LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  float *in = ramp(S * S), out[S * S];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, S, S, 1, NULL, 4, 1), LUNET_OK);
  ck_assert_float_eq(AT(out, S, S, 1, 2, 2, 0), AT(in, S, S, 1, 2, 2, 0));
  ck_assert_float_eq(AT(out, S, S, 1, 2, 3, 0), AT(in, S, S, 1, 2, 4, 0));
  ck_assert_float_eq(AT(out, S, S, 1, 1, 2, 0), AT(in, S, S, 1, 0, 2, 0));
  ck_assert_float_eq(AT(out, S, S, 1, 2, 4, 0), 0); /* reads column 6: outside */
  free(in);
}
END_TEST

/* A pipeline with every random step, constant fill so the crop agrees. */
static void full_pipeline(lunet_augment *a) {
  ck_assert_int_eq(lunet_augment_add_flip(ctx, a, LUNET_FLIP_HORIZONTAL_AND_VERTICAL), LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_rotation(ctx, a, -0.1, 0.1, LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_translation(ctx, a, -0.2, 0.2, -0.2, 0.2,
                                                 LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_zoom(ctx, a, -0.2, 0.2, false, -0.1, 0.3,
                                          LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_crop(ctx, a, 6, 6, 1), LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_rescaling(ctx, a, 0.5f, 1.0f), LUNET_OK);
}

START_TEST(augment_determinism_split_batches) {
  enum { N = 10, H = 6, W = 6, C = 3, S = H * W * C };
  full_pipeline(aug);
  float *in = ramp(N * S), whole[N * S], parts[N * S], other[N * S];
  int64_t idx[N];
  for (int i = 0; i < N; i++) idx[i] = i;
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, whole, in, N, H, W, C, idx, 42, 1), LUNET_OK);
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, parts, in, 5, H, W, C, idx, 42, 1), LUNET_OK);
  ck_assert_int_eq(
      lunet_augment_apply(ctx, aug, parts + 5 * S, in + 5 * S, 5, H, W, C, idx + 5, 42, 1),
      LUNET_OK);
  ck_assert_mem_eq(whole, parts, sizeof whole);
  /* another epoch, and another seed, change every sample */
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, other, in, N, H, W, C, idx, 42, 2), LUNET_OK);
  for (int i = 0; i < N; i++) ck_assert(memcmp(whole + i * S, other + i * S, S * 4) != 0);
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, other, in, N, H, W, C, idx, 43, 1), LUNET_OK);
  for (int i = 0; i < N; i++) ck_assert(memcmp(whole + i * S, other + i * S, S * 4) != 0);
  free(in);
}
END_TEST

START_TEST(augment_rescaling_normalization_values) {
  enum { C = 2 };
  float mean[C] = {1, 2}, std[C] = {2, 4};
  ck_assert_int_eq(lunet_augment_add_normalization(ctx, aug, mean, std, C), LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_rescaling(ctx, aug, 3, -1), LUNET_OK);
  float in[2 * C] = {5, 10, -1, 2}, out[2 * C];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, 1, 2, C, NULL, 0, 0), LUNET_OK);
  /* ((x - m) / s) * 3 - 1 */
  ck_assert_float_eq(out[0], 5.0f);   /* (5-1)/2 = 2 */
  ck_assert_float_eq(out[1], 5.0f);   /* (10-2)/4 = 2 */
  ck_assert_float_eq(out[2], -4.0f);  /* (-1-1)/2 = -1 */
  ck_assert_float_eq(out[3], -1.0f);  /* (2-2)/4 = 0 */
}
END_TEST

START_TEST(augment_rescaling_by_255) {
  ck_assert_int_eq(lunet_augment_add_rescaling(ctx, aug, 1.0f / 255, 0), LUNET_OK);
  float in[3] = {0, 51, 255}, out[3];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, 1, 1, 3, NULL, 0, 0), LUNET_OK);
  ck_assert_float_eq_tol(out[0], 0.0, 1e-7);
  ck_assert_float_eq_tol(out[1], 0.2, 1e-6);
  ck_assert_float_eq_tol(out[2], 1.0, 1e-6);
}
END_TEST

START_TEST(augment_normalization_channel_mismatch) {
  float mean[2] = {0, 0}, std[2] = {1, 1};
  ck_assert_int_eq(lunet_augment_add_normalization(ctx, aug, mean, std, 2), LUNET_OK);
  float in[3] = {0}, out[3];
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, out, in, 1, 1, 1, 3, NULL, 0, 0),
                   LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx), "Normalization: 2 mean/std values for images with 3 "
                                         "channels; give one value or one per channel");
}
END_TEST

START_TEST(augment_bad_arguments) {
  ck_assert_int_eq(lunet_augment_add_rotation(ctx, aug, 0.5, 0.2, LUNET_FILL_REFLECT, 0),
                   LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomRotation: factor range [0.5, 0.2] is reversed (lower must be <= upper)");
  ck_assert_int_eq(lunet_augment_add_translation(ctx, aug, 0, 0, -1.5, 0.2,
                                                 LUNET_FILL_REFLECT, 0),
                   LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomTranslation: width_factor must be in [-1, 1], got [-1.5, 0.2]");
  ck_assert_int_eq(lunet_augment_add_zoom(ctx, aug, -1, 0.5, true, 0, 0, LUNET_FILL_REFLECT, 0),
                   LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomZoom: height_factor must be in (-1, inf], got [-1, 0.5]");
  ck_assert_int_eq(lunet_augment_add_flip(ctx, aug, 0), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "RandomFlip: mode must be horizontal, vertical or "
                                         "horizontal_and_vertical, got 0");
  ck_assert_int_eq(lunet_augment_add_crop(ctx, aug, 0, 4, 0), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomCrop: height and width must be positive, got 0 x 4");
  float mean = 0, std = 0;
  ck_assert_int_eq(lunet_augment_add_normalization(ctx, aug, &mean, &std, 1), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "Normalization: std must be > 0 and mean finite, got "
                                         "mean 0, std 0 for channel 1");
  ck_assert_int_eq(lunet_augment_size(aug), 0);
}
END_TEST

START_TEST(augment_fill_conflict) {
  ck_assert_int_eq(lunet_augment_add_crop(ctx, aug, 4, 4, 2), LUNET_OK);
  ck_assert_int_eq(lunet_augment_add_rotation(ctx, aug, -0.1, 0.1, LUNET_FILL_REFLECT, 0),
                   LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "RandomRotation: fill_mode 'reflect' (fill_value 0) differs from "
                   "RandomCrop's 'constant' (fill_value 0); the geometric steps share one "
                   "resample, so give them the same fill");
  ck_assert_int_eq(lunet_augment_add_rotation(ctx, aug, -0.1, 0.1, LUNET_FILL_CONSTANT, 0),
                   LUNET_OK);
}
END_TEST

/* ---- batch loader ---- */

enum { LN = 10, LH = 6, LW = 6, LC = 3, LS = LH * LW * LC };

static lunet_batches_opts loader_opts(const float *x, const float *y, const int64_t *order,
                                      int64_t batch) {
  lunet_batches_opts o = {.x = x, .y = y, .n = LN, .y_numel = 2, .h = LH, .w = LW,
                          .c = LC, .batch_size = batch, .order = order, .order_len = LN,
                          .seed = 42, .epoch = 1};
  return o;
}

START_TEST(augment_batches_cover_epoch) {
  float *x = ramp(LN * LS), y[LN * 2];
  for (int i = 0; i < LN; i++) {
    y[2 * i] = (float)(100 + i);
    y[2 * i + 1] = (float)-i;
  }
  int64_t order[LN] = {3, 9, 0, 7, 1, 8, 2, 6, 4, 5};
  lunet_batches_opts o = loader_opts(x, y, order, 4);
  lunet_batches *b = lunet_batches_new(ctx, &o);
  ck_assert_ptr_nonnull(b);
  ck_assert_int_eq(lunet_batches_count(b), 3);
  ck_assert_int_eq(lunet_batches_x_numel(b), LS);
  float bx[4 * LS], by[4 * 2];
  int64_t want_counts[4] = {4, 4, 2, 0}, pos = 0, count;
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq(lunet_batches_next(b, bx, by, &count), LUNET_OK);
    ck_assert_int_eq(count, want_counts[k]);
    for (int j = 0; j < count; j++, pos++) {
      ck_assert_float_eq(by[2 * j], (float)(100 + order[pos]));
      ck_assert_float_eq(by[2 * j + 1], (float)-order[pos]);
      ck_assert_float_eq(bx[j * LS], x[order[pos] * LS]);
      ck_assert_float_eq(bx[j * LS + LS - 1], x[order[pos] * LS + LS - 1]);
    }
  }
  ck_assert_int_eq(pos, LN);
  ck_assert_int_eq(lunet_batches_next(b, bx, by, &count), LUNET_OK);
  ck_assert_int_eq(count, 0);
  lunet_batches_free(b);
  free(x);
}
END_TEST

/* Augmented batches equal a direct apply, whatever the batch size. */
START_TEST(augment_batches_match_apply) {
  full_pipeline(aug);
  float *x = ramp(LN * LS), want[LN * LS], bx[4 * LS];
  int64_t order[LN] = {5, 2, 8, 0, 9, 1, 4, 7, 3, 6};
  ck_assert_int_eq(lunet_augment_apply(ctx, aug, want, x, LN, LH, LW, LC, NULL, 42, 1), LUNET_OK);
  for (int64_t batch = 3; batch <= 4; batch++) {
    lunet_batches_opts o = loader_opts(x, NULL, order, batch);
    o.aug = aug;
    lunet_batches *b = lunet_batches_new(ctx, &o);
    ck_assert_ptr_nonnull(b);
    int64_t pos = 0, count;
    do {
      ck_assert_int_eq(lunet_batches_next(b, bx, NULL, &count), LUNET_OK);
      for (int j = 0; j < count; j++, pos++)
        ck_assert_mem_eq(bx + j * LS, want + order[pos] * LS, LS * sizeof(float));
    } while (count > 0);
    ck_assert_int_eq(pos, LN);
    lunet_batches_free(b);
  }
  free(x);
}
END_TEST

START_TEST(augment_batches_free_mid_epoch) {
  enum { N = 1000 };
  float *x = ramp(N), bx[1];
  lunet_batches_opts o = {.x = x, .n = N, .sample_numel = 1, .batch_size = 1};
  for (int taken = 0; taken < 3; taken++) {
    lunet_batches *b = lunet_batches_new(ctx, &o);
    ck_assert_ptr_nonnull(b);
    int64_t count;
    for (int k = 0; k < taken; k++) {
      ck_assert_int_eq(lunet_batches_next(b, bx, NULL, &count), LUNET_OK);
      ck_assert_float_eq(bx[0], (float)(k + 1)); /* no order: 0..n-1 */
    }
    lunet_batches_free(b); /* must not hang with the worker blocked on a full queue */
  }
  free(x);
}
END_TEST

START_TEST(augment_batches_worker_error) {
  ck_assert_int_eq(lunet_augment_add_flip(ctx, aug, LUNET_FLIP_HORIZONTAL), LUNET_OK);
  float *x = ramp(LN * LS), bx[4 * LS];
  lunet_batches_opts o = loader_opts(x, NULL, NULL, 4);
  o.order_len = 0;
  o.aug = aug;
  o.epoch = UINT64_C(1) << 20;
  lunet_batches *b = lunet_batches_new(ctx, &o);
  ck_assert_ptr_nonnull(b);
  int64_t count = -1;
  ck_assert_int_eq(lunet_batches_next(b, bx, NULL, &count), LUNET_ERR_ARG);
  ck_assert_int_eq(count, 0);
  ck_assert_str_eq(lunet_ctx_error(ctx), "augment: epoch 1048576 is out of range [0, 2^20)");
  lunet_batches_free(b);
  free(x);
}
END_TEST

START_TEST(augment_batches_bad_order) {
  float x[LN * LS] = {0};
  int64_t order[LN] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10};
  lunet_batches_opts o = loader_opts(x, NULL, order, 4);
  ck_assert_ptr_null(lunet_batches_new(ctx, &o));
  ck_assert_str_eq(lunet_ctx_error(ctx), "batches: order[9] = 10 is not a sample index in [0, 10)");
}
END_TEST

/* ---- PNG ---- */

START_TEST(augment_png_grid_roundtrip) {
  char path[] = "/tmp/lunet_augment_png_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  /* two 2x3 RGB images in 0..1: grid 8 x 2 with a 2-pixel gap at x = 3, 4 */
  float x[2 * 2 * 3 * 3];
  for (int i = 0; i < 36; i++) x[i] = 0.25f;
  x[0] = 0.5f;         /* image 0, (0,0), red */
  x[18 + 3 * 1 + 2] = 1.0f; /* image 1, (0,1), blue */
  ck_assert_int_eq(lunet_png_grid(ctx, path, x, 2, 2, 3, 3, 0), LUNET_OK);
  int w, h, comp;
  unsigned char *img = stbi_load(path, &w, &h, &comp, 3);
  ck_assert_ptr_nonnull(img);
  ck_assert_int_eq(w, 8);
  ck_assert_int_eq(h, 2);
  ck_assert_int_eq(comp, 3);
  ck_assert_int_eq(img[0], 128);                  /* round(0.5 * 255) */
  ck_assert_int_eq(img[1], 64);                   /* round(0.25 * 255) */
  ck_assert_int_eq(img[3 * 3], 255);              /* gap */
  ck_assert_int_eq(img[(0 * 8 + 6) * 3 + 2], 255);/* image 1 starts at x = 5 */
  ck_assert_int_eq(img[(0 * 8 + 6) * 3 + 1], 64);
  stbi_image_free(img);
  /* 0..255 data is taken as is; a 2 x 2 grid of 1-channel images */
  float g[3 * 1 * 1] = {200, 10, -5};
  ck_assert_int_eq(lunet_png_grid(ctx, path, g, 3, 1, 1, 1, 2), LUNET_OK);
  img = stbi_load(path, &w, &h, &comp, 1);
  ck_assert_ptr_nonnull(img);
  ck_assert_int_eq(w, 4);
  ck_assert_int_eq(h, 4);
  ck_assert_int_eq(img[0], 200);
  ck_assert_int_eq(img[3], 10);
  ck_assert_int_eq(img[1], 255);     /* gap */
  ck_assert_int_eq(img[3 * 4], 0);   /* clamped */
  stbi_image_free(img);
  unlink(path);
}
END_TEST

START_TEST(augment_png_grid_errors) {
  float x[4] = {0};
  ck_assert_int_eq(lunet_png_grid(ctx, "/nonexistent-dir/grid.png", x, 1, 2, 2, 1, 1),
                   LUNET_ERR_IO);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "png_grid: cannot write '/nonexistent-dir/grid.png': No such file or "
                   "directory");
  ck_assert_int_eq(lunet_png_grid(ctx, "a.png", x, 1, 1, 2, 2, 1), LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "png_grid: 'a.png': images must have 1 or 3 channels, got 2");
}
END_TEST

static Suite *augment_suite(void) {
  Suite *s = suite_create("augment");
  TCase *p = tcase_create("pipeline");
  tcase_add_checked_fixture(p, setup, teardown);
  tcase_add_test(p, augment_flip_horizontal_exact);
  tcase_add_test(p, augment_flip_vertical_exact);
  tcase_add_test(p, augment_rotation_90_is_transpose_flip);
  tcase_add_test(p, augment_translation_fill_modes);
  tcase_add_test(p, augment_translation_2d_exact_shift);
  tcase_add_test(p, augment_crop_padding_shape_and_content);
  tcase_add_test(p, augment_crop_too_large);
  tcase_add_test(p, augment_zoom_zero_is_identity);
  tcase_add_test(p, augment_zoom_out_by_two);
  tcase_add_test(p, augment_determinism_split_batches);
  tcase_add_test(p, augment_rescaling_normalization_values);
  tcase_add_test(p, augment_rescaling_by_255);
  tcase_add_test(p, augment_normalization_channel_mismatch);
  tcase_add_test(p, augment_bad_arguments);
  tcase_add_test(p, augment_fill_conflict);
  suite_add_tcase(s, p);
  TCase *b = tcase_create("batches");
  tcase_add_checked_fixture(b, setup, teardown);
  tcase_add_test(b, augment_batches_cover_epoch);
  tcase_add_test(b, augment_batches_match_apply);
  tcase_add_test(b, augment_batches_free_mid_epoch);
  tcase_add_test(b, augment_batches_worker_error);
  tcase_add_test(b, augment_batches_bad_order);
  suite_add_tcase(s, b);
  TCase *g = tcase_create("png");
  tcase_add_checked_fixture(g, setup, teardown);
  tcase_add_test(g, augment_png_grid_roundtrip);
  tcase_add_test(g, augment_png_grid_errors);
  suite_add_tcase(s, g);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(augment_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
