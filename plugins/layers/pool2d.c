/* MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D over NHWC images. */
#include "layers.h"

typedef struct pool2d_state {
  lunet_tensor *x, *y; /* (N,H,W,C), (N,OH,OW,C): max pooling's backward needs both */
  lunet_pool2d_desc d;
} pool2d_state;

static const lunet_arg_schema pool2d_args[] = {
    {"pool_size", LUNET_ARG_INT2, "2", "window size: k or {kh, kw}", NULL},
    {"strides", LUNET_ARG_INT2, "nil", "step of the window: s or {sh, sw}; nil: pool_size", NULL},
    {"padding", LUNET_ARG_STRING, "\"valid\"",
     "\"valid\": no padding; \"same\": pad so that out = ceil(in / stride)", "valid|same"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* Fills d for a batch of n images (h, w, c) from the layer's arguments. */
static lunet_status pool2d_desc_fill(lunet_layer *l, int64_t n, int64_t h, int64_t w, int64_t c,
                                     lunet_pool2d_desc *d) {
  int64_t k[2], s[2];
  lunet_layer_get_int2(l, "pool_size", k);
  if (!layers_get_int2_opt(l, "strides", s)) s[0] = k[0], s[1] = k[1];
  lunet_status st = layers_check_pair(l, "pool_size", k);
  if (st == LUNET_OK) st = layers_check_pair(l, "strides", s);
  if (st != LUNET_OK) return st;
  lunet_padding pad = layers_padding(l);
  if (pad == LUNET_PAD_VALID && (k[0] > h || k[1] > w))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "pool_size {%lld, %lld} is larger than the input (%lld, %lld) "
                             "with padding \"valid\"; use padding = \"same\" or a smaller "
                             "pool",
                             (long long)k[0], (long long)k[1], (long long)h, (long long)w);
  *d = (lunet_pool2d_desc){
      .n = n, .h = h, .w = w, .c = c, .kh = k[0], .kw = k[1], .sh = s[0], .sw = s[1]};
  return lunet_pool2d_geometry(lunet_layer_ctx(l), d, pad);
}

static lunet_status pool2d_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                 int64_t *out) {
  if (in_ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in_ndim, in);
  lunet_pool2d_desc d;
  lunet_status s = pool2d_desc_fill(l, 1, in[0], in[1], in[2], &d);
  if (s != LUNET_OK) return s;
  *out_ndim = 3;
  out[0] = d.oh;
  out[1] = d.ow;
  out[2] = in[2];
  return LUNET_OK;
}

/* x (N,H,W,C) -> y (N,OH,OW,C) */
static lunet_status pool2d_forward(lunet_layer *l, lunet_pool_mode mode, lunet_tensor *x,
                                   lunet_tensor **y) {
  pool2d_state *st = lunet_layer_state(l);
  if (lunet_tensor_ndim(x) != 4) {
    char buf[128];
    return lunet_layer_error(
        l, LUNET_ERR_SHAPE, "expects a batch (N, H, W, C), got shape %s",
        lunet_shape_str(lunet_tensor_ndim(x), lunet_tensor_shape(x), buf, sizeof buf));
  }
  lunet_pool2d_desc d;
  lunet_status s = pool2d_desc_fill(l, lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1),
                                    lunet_tensor_dim(x, 2), lunet_tensor_dim(x, 3), &d);
  if (s != LUNET_OK) return s;
  if (!(*y = lunet_op_pool2d(lunet_layer_ctx(l), mode, x, &d))) return layers_failed(l);
  layers_set(&st->x, lunet_tensor_retain(x));
  layers_set(&st->y, lunet_tensor_retain(*y));
  st->d = d;
  return LUNET_OK;
}

/* dy (N,OH,OW,C) -> dx (N,H,W,C) */
static lunet_status pool2d_backward(lunet_layer *l, lunet_pool_mode mode, lunet_tensor *dy,
                                    lunet_tensor **dx, bool need_dx) {
  pool2d_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (!st->x) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  if (need_dx &&
      !(*dx = lunet_op_pool2d_backward(lunet_layer_ctx(l), mode, dy, st->x, st->y, &st->d)))
    return layers_failed(l);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  return LUNET_OK;
}

/* The two pooling types differ only in the mode they pass down. */
static lunet_status max_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y, bool training) {
  (void)training;
  return pool2d_forward(l, LUNET_POOL_MAX, x, y);
}

static lunet_status max_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                 bool need_dx) {
  return pool2d_backward(l, LUNET_POOL_MAX, dy, dx, need_dx);
}

static lunet_status avg_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y, bool training) {
  (void)training;
  return pool2d_forward(l, LUNET_POOL_AVG, x, y);
}

static lunet_status avg_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                 bool need_dx) {
  return pool2d_backward(l, LUNET_POOL_AVG, dy, dx, need_dx);
}

static void pool2d_destroy(lunet_layer *l) {
  pool2d_state *st = lunet_layer_state(l);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
}

static const lunet_layer_test pool2d_tests[] = {
    {"", 3, {4, 4, 2}, 2, 1e-2f},
    {"3, 2", 3, {5, 5, 1}, 2, 1e-2f},                  /* overlapping windows */
    {"2, padding = \"same\"", 3, {5, 5, 2}, 2, 1e-2f}, /* odd size, padded */
    {"{2, 3}, {1, 2}", 3, {5, 6, 1}, 2, 1e-2f},        /* non-square */
    {"3, 1, padding = \"same\"", 3, {3, 4, 2}, 1, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_max_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "MaxPooling2D",
    .doc = "Maximum over each pool_size window of (H, W, C) images, per channel",
    .args = pool2d_args,
    .nargs = sizeof pool2d_args / sizeof pool2d_args[0],
    .positional = 3,
    .state_size = sizeof(pool2d_state),
    .build = pool2d_build,
    .forward = max_forward,
    .backward = max_backward,
    .destroy = pool2d_destroy,
    .tests = pool2d_tests,
    .ntests = sizeof pool2d_tests / sizeof pool2d_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_average_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "AveragePooling2D",
    .doc = "Mean over each pool_size window of (H, W, C) images, per channel "
           "(padding excluded from the count)",
    .args = pool2d_args,
    .nargs = sizeof pool2d_args / sizeof pool2d_args[0],
    .positional = 3,
    .state_size = sizeof(pool2d_state),
    .build = pool2d_build,
    .forward = avg_forward,
    .backward = avg_backward,
    .destroy = pool2d_destroy,
    .tests = pool2d_tests,
    .ntests = sizeof pool2d_tests / sizeof pool2d_tests[0],
};

/* ---- GlobalAveragePooling2D ---- */

typedef struct gap_state {
  int64_t n, h, w, c; /* the input of the last forward */
} gap_state;

static const lunet_arg_schema gap_args[] = {
    {"keepdims", LUNET_ARG_BOOL, "false", "output (1, 1, C) instead of (C)", NULL},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status gap_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                              int64_t *out) {
  if (in_ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in_ndim, in);
  bool keep = lunet_layer_get_bool(l, "keepdims");
  *out_ndim = keep ? 3 : 1;
  out[0] = out[1] = 1;
  out[*out_ndim - 1] = in[2];
  return LUNET_OK;
}

/* x (N,H,W,C) -> y (N,C) or (N,1,1,C): the mean over (H,W) of the view (N,H*W,C) */
static lunet_status gap_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y, bool training) {
  (void)training;
  lunet_ctx *ctx = lunet_layer_ctx(l);
  gap_state *st = lunet_layer_state(l);
  if (lunet_tensor_ndim(x) != 4) {
    char buf[128];
    return lunet_layer_error(
        l, LUNET_ERR_SHAPE, "expects a batch (N, H, W, C), got shape %s",
        lunet_shape_str(lunet_tensor_ndim(x), lunet_tensor_shape(x), buf, sizeof buf));
  }
  *st = (gap_state){lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1), lunet_tensor_dim(x, 2),
                    lunet_tensor_dim(x, 3)};
  int64_t s3[3] = {st->n, st->h * st->w, st->c}, s4[4] = {st->n, 1, 1, st->c};
  lunet_tensor *x3 = lunet_op_reshape(ctx, x, 3, s3), *m = NULL;
  if (!x3 || !(m = lunet_op_reduce(ctx, LUNET_REDUCE_MEAN, x3, 1, false))) goto fail;
  if (lunet_layer_get_bool(l, "keepdims")) {
    if (!(*y = lunet_op_reshape(ctx, m, 4, s4))) goto fail;
    lunet_tensor_release(m);
  } else {
    *y = m;
  }
  lunet_tensor_release(x3);
  return LUNET_OK;
fail:
  layers_release(x3);
  layers_release(m);
  return layers_failed(l);
}

/* dy (N,C) or (N,1,1,C) -> dx (N,H,W,C) = dy / (H*W) at every position */
static lunet_status gap_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                 bool need_dx) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  gap_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (st->c == 0) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  if (!need_dx) return LUNET_OK;
  int64_t s3[3] = {st->n, st->h * st->w, st->c}, s4[4] = {st->n, st->h, st->w, st->c};
  int64_t sdy[3] = {st->n, 1, st->c};
  lunet_tensor *dy3 = lunet_op_reshape(ctx, dy, 3, sdy), *scale = NULL, *dx3 = NULL;
  if (!dy3 || !(scale = lunet_op_new(ctx, dy, LUNET_F32, 3, s3))) goto fail;
  if (lunet_op_fill(ctx, scale, 1.0f / (float)(st->h * st->w)) != LUNET_OK) goto fail;
  if (!(dx3 = lunet_op_binary(ctx, LUNET_BINARY_MUL, scale, dy3))) goto fail;
  if (!(*dx = lunet_op_reshape(ctx, dx3, 4, s4))) goto fail;
  lunet_tensor_release(dy3);
  lunet_tensor_release(scale);
  lunet_tensor_release(dx3);
  return LUNET_OK;
fail:
  layers_release(dy3);
  layers_release(scale);
  layers_release(dx3);
  return layers_failed(l);
}

static const lunet_layer_test gap_tests[] = {
    {"", 3, {3, 3, 2}, 2, 1e-2f},
    {"keepdims = true", 3, {2, 3, 4}, 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GlobalAveragePooling2D",
    .doc = "Mean over H and W of (H, W, C) images: one value per channel",
    .args = gap_args,
    .nargs = sizeof gap_args / sizeof gap_args[0],
    .positional = 0,
    .state_size = sizeof(gap_state),
    .build = gap_build,
    .forward = gap_forward,
    .backward = gap_backward,
    .destroy = NULL,
    .tests = gap_tests,
    .ntests = sizeof gap_tests / sizeof gap_tests[0],
};
