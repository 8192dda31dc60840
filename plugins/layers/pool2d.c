/* MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D over NHWC images. */
#include "layers.h"

typedef struct pool2d_state {
  lunet_tensor *x, *y; /* (N,H,W,C), (N,OH,OW,C): max pooling's backward needs both */
  lunet_pool2d_desc d;
} pool2d_state;

static const lunet_arg_schema pool2d_args[] = {
    {"pool_size", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {2}},
     .doc = "window size: k or {kh, kw}"},
    {"strides", LUNET_ARG_INT2, LUNET_ARG_NIL,
     .doc = "step of the window: s or {sh, sw}; nil: pool_size"},
    {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},
     .doc = "\"valid\": no padding; \"same\": pad so that out = ceil(in / stride)",
     .choices = "valid|same"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* The window and its step: strides default to pool_size. */
static void pool2d_window(const lunet_layer *l, int64_t k[2], int64_t s[2]) {
  lunet_layer_get_int2(l, "pool_size", k);
  if (!layers_get_int2_opt(l, "strides", s)) s[0] = k[0], s[1] = k[1];
}

/* Fills d for a batch of n images (h, w, c) from the arguments
 * pool2d_check() accepted. */
static lunet_status pool2d_desc_fill(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t h,
                                     int64_t w, int64_t c, lunet_pool2d_desc *d) {
  int64_t k[2], s[2];
  pool2d_window(l, k, s);
  *d = (lunet_pool2d_desc){
      .n = n, .h = h, .w = w, .c = c, .kh = k[0], .kw = k[1], .sh = s[0], .sw = s[1]};
  return lunet_pool2d_geometry(ctx, d, layers_padding(l));
}

/* Checks the arguments against one sample (H, W, C). */
static lunet_status pool2d_check(lunet_layer *l, const lunet_shape *in) {
  if (in->ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in);
  int64_t k[2], s[2];
  pool2d_window(l, k, s);
  lunet_status st = layers_check_pair(l, "pool_size", k);
  if (st == LUNET_OK) st = layers_check_pair(l, "strides", s);
  if (st != LUNET_OK) return st;
  if (layers_padding(l) == LUNET_PAD_VALID && (k[0] > in->dims[0] || k[1] > in->dims[1]))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "pool_size {%lld, %lld} is larger than the input (%lld, %lld) "
                             "with padding \"valid\"; use padding = \"same\" or a smaller "
                             "pool",
                             (long long)k[0], (long long)k[1], (long long)in->dims[0],
                             (long long)in->dims[1]);
  return LUNET_OK;
}

static lunet_status pool2d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_status s = pool2d_check(l, &in[0]);
  if (s != LUNET_OK) return s;
  lunet_pool2d_desc d;
  const int64_t *hwc = in[0].dims;
  if (pool2d_desc_fill(l, lunet_layer_ctx(l), 1, hwc[0], hwc[1], hwc[2], &d) != LUNET_OK)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.oh, d.ow, hwc[2]}};
  return LUNET_OK;
}

/* x (N,H,W,C) -> y (N,OH,OW,C) */
static lunet_status pool2d_forward(lunet_layer *l, lunet_call *c, lunet_pool_mode mode,
                                   lunet_tensor *x, lunet_tensor **y) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  pool2d_state *st = lunet_call_state(c);
  if (lunet_tensor_ndim(x) != 4) return layers_batch_error(c, "(N, H, W, C)", x);
  lunet_pool2d_desc d;
  if (pool2d_desc_fill(l, ctx, lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1),
                       lunet_tensor_dim(x, 2), lunet_tensor_dim(x, 3), &d) != LUNET_OK)
    return layers_call_failed(c);
  if (!(*y = lunet_op_pool2d(ctx, mode, x, &d))) return layers_call_failed(c);
  layers_set(&st->x, lunet_tensor_retain(x));
  layers_set(&st->y, lunet_tensor_retain(*y));
  st->d = d;
  return LUNET_OK;
}

/* dy (N,OH,OW,C) -> dx (N,H,W,C) */
static lunet_status pool2d_backward(lunet_call *c, lunet_pool_mode mode, lunet_tensor *dy,
                                    lunet_tensor **dx) {
  pool2d_state *st = lunet_call_state(c);
  *dx = NULL;
  if (!st->x) return layers_no_forward(c);
  if (lunet_call_needs_dx(c, 0) &&
      !(*dx = lunet_op_pool2d_backward(lunet_call_ctx(c), mode, dy, st->x, st->y, &st->d)))
    return layers_call_failed(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  return LUNET_OK;
}

/* The two pooling types differ only in the mode they pass down. */
static lunet_status max_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  return pool2d_forward(l, c, LUNET_POOL_MAX, x[0], &y[0]);
}

static lunet_status max_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                 lunet_tensor **dx) {
  return pool2d_backward(c, LUNET_POOL_MAX, dy[0], &dx[0]);
}

static lunet_status avg_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  return pool2d_forward(l, c, LUNET_POOL_AVG, x[0], &y[0]);
}

static lunet_status avg_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                 lunet_tensor **dx) {
  return pool2d_backward(c, LUNET_POOL_AVG, dy[0], &dx[0]);
}

static void pool2d_release(lunet_layer *l, lunet_call *c) {
  pool2d_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
}

static const lunet_layer_test pool2d_tests[] = {
    {NULL, 0, LAYERS_INPUTS({3, {4, 4, 2}}), 2, 1e-2f},
    /* overlapping windows */
    {LAYERS_ARGS({"pool_size", {.n = 1, .v = {3}}}, {"strides", {.n = 1, .v = {2}}}),
     LAYERS_INPUTS({3, {5, 5, 1}}), 2, 1e-2f},
    /* odd size, padded */
    {LAYERS_ARGS({"pool_size", {.n = 1, .v = {2}}}, {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {5, 5, 2}}), 2, 1e-2f},
    /* non-square */
    {LAYERS_ARGS({"pool_size", {.n = 2, .v = {2, 3}}}, {"strides", {.n = 2, .v = {1, 2}}}),
     LAYERS_INPUTS({3, {5, 6, 1}}), 2, 1e-2f},
    {LAYERS_ARGS({"pool_size", {.n = 1, .v = {3}}}, {"strides", {.n = 1, .v = {1}}},
                 {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {3, 4, 2}}), 1, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_max_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "MaxPooling2D",
    .doc = "Maximum over each pool_size window of (H, W, C) images, per channel",
    .args = pool2d_args,
    .nargs = sizeof pool2d_args / sizeof pool2d_args[0],
    .positional = 3,
    .call_state_size = sizeof(pool2d_state),
    .build = pool2d_build,
    .forward = max_forward,
    .backward = max_backward,
    .release = pool2d_release,
    .tests = pool2d_tests,
    .ntests = sizeof pool2d_tests / sizeof pool2d_tests[0],
    .compute_mask = layers_drop_mask,
};

LAYERS_HIDDEN const lunet_layer_type layers_average_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "AveragePooling2D",
    .doc = "Mean over each pool_size window of (H, W, C) images, per channel "
           "(padding excluded from the count)",
    .args = pool2d_args,
    .nargs = sizeof pool2d_args / sizeof pool2d_args[0],
    .positional = 3,
    .call_state_size = sizeof(pool2d_state),
    .build = pool2d_build,
    .forward = avg_forward,
    .backward = avg_backward,
    .release = pool2d_release,
    .tests = pool2d_tests,
    .ntests = sizeof pool2d_tests / sizeof pool2d_tests[0],
    .compute_mask = layers_drop_mask,
};

/* ---- GlobalAveragePooling2D ---- */

typedef struct gap_state {
  int64_t n, h, w, c; /* the input of the last forward */
} gap_state;

static const lunet_arg_schema gap_args[] = {
    {"keepdims", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "output (1, 1, C) instead of (C)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status gap_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (in[0].ndim != 3) return layers_rank_error(l, "3 (H, W, C)", &in[0]);
  int64_t c = in[0].dims[2];
  out[0] =
      lunet_layer_get_bool(l, "keepdims") ? (lunet_shape){3, {1, 1, c}} : (lunet_shape){1, {c}};
  return LUNET_OK;
}

/* x (N,H,W,C) -> y (N,C) or (N,1,1,C): the mean over (H,W) of the view (N,H*W,C) */
static lunet_status gap_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  gap_state *st = lunet_call_state(c);
  if (lunet_tensor_ndim(x[0]) != 4) return layers_batch_error(c, "(N, H, W, C)", x[0]);
  *st = (gap_state){lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1), lunet_tensor_dim(x[0], 2),
                    lunet_tensor_dim(x[0], 3)};
  int64_t s3[3] = {st->n, st->h * st->w, st->c}, s4[4] = {st->n, 1, 1, st->c};
  lunet_tensor *x3 = lunet_op_reshape(ctx, x[0], 3, s3), *m = NULL;
  if (!x3 || !(m = lunet_op_reduce(ctx, LUNET_REDUCE_MEAN, x3, 1, false))) goto fail;
  if (lunet_layer_get_bool(l, "keepdims")) {
    if (!(y[0] = lunet_op_reshape(ctx, m, 4, s4))) goto fail;
    lunet_tensor_release(m);
  } else {
    y[0] = m;
  }
  lunet_tensor_release(x3);
  return LUNET_OK;
fail:
  layers_release(x3);
  layers_release(m);
  return layers_call_failed(c);
}

/* dy (N,C) or (N,1,1,C) -> dx (N,H,W,C) = dy / (H*W) at every position */
static lunet_status gap_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                 lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  gap_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (st->c == 0) return layers_no_forward(c);
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  int64_t s3[3] = {st->n, st->h * st->w, st->c}, s4[4] = {st->n, st->h, st->w, st->c};
  int64_t sdy[3] = {st->n, 1, st->c};
  lunet_tensor *dy3 = lunet_op_reshape(ctx, dy[0], 3, sdy), *scale = NULL, *dx3 = NULL;
  if (!dy3 || !(scale = lunet_op_new(ctx, dy[0], LUNET_F32, 3, s3))) goto fail;
  if (lunet_op_fill(ctx, scale, 1.0f / (float)(st->h * st->w)) != LUNET_OK) goto fail;
  if (!(dx3 = lunet_op_binary(ctx, LUNET_BINARY_MUL, scale, dy3))) goto fail;
  if (!(dx[0] = lunet_op_reshape(ctx, dx3, 4, s4))) goto fail;
  lunet_tensor_release(dy3);
  lunet_tensor_release(scale);
  lunet_tensor_release(dx3);
  return LUNET_OK;
fail:
  layers_release(dy3);
  layers_release(scale);
  layers_release(dx3);
  return layers_call_failed(c);
}

static const lunet_layer_test gap_tests[] = {
    {NULL, 0, LAYERS_INPUTS({3, {3, 3, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"keepdims", {.b = true}}), LAYERS_INPUTS({3, {2, 3, 4}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GlobalAveragePooling2D",
    .doc = "Mean over H and W of (H, W, C) images: one value per channel",
    .args = gap_args,
    .nargs = sizeof gap_args / sizeof gap_args[0],
    .positional = 0,
    .call_state_size = sizeof(gap_state),
    .build = gap_build,
    .forward = gap_forward,
    .backward = gap_backward,
    .release = NULL,
    .tests = gap_tests,
    .ntests = sizeof gap_tests / sizeof gap_tests[0],
    .compute_mask = layers_drop_mask,
};
