/*
 * Preprocessing as model layers (Keras's), so training, validation,
 * evaluate and predict all see the same data and a saved model carries its
 * preprocessing:
 *   Rescaling{scale, offset = 0}: y = x * scale + offset, float32 out
 *     (uint8 images in);
 *   Normalization{axis = -1}: y = (x - mean) / max(sqrt(variance), 1e-7)
 *     per feature of the last axis, mean and variance learned by
 *     layer:adapt(x) (Lua) and saved with the model; a layer never adapted
 *     refuses to run rather than pass data through unchanged;
 *   CenterCrop{height, width}: the centre window of (N, H, W, C) images.
 */
#include <math.h>
#include <string.h>

#include "layers.h"

/* ---- Rescaling ---- */

static const lunet_arg_schema rescaling_args[] = {
    {"scale", LUNET_ARG_FLOAT, LUNET_ARG_REQUIRED, .doc = "the factor (1/255 for 8-bit images)"},
    {"offset", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "added after scaling"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status same_shape_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status rescaling_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                      lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *f = layers_as_f32(ctx, x[0]);
  y[0] = f ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, f, (float)lunet_layer_get_float(l, "scale"),
                            (float)lunet_layer_get_float(l, "offset"))
           : NULL;
  layers_release(f);
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

static lunet_status rescaling_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  dx[0] = lunet_op_unary(lunet_call_ctx(c), LUNET_UNARY_AFFINE, dy[0], (float)lunet_layer_get_float(l, "scale"), 0);
  return dx[0] ? LUNET_OK : layers_call_failed(c);
}

static const lunet_layer_test rescaling_tests[] = {
    {LAYERS_ARGS({"scale", {.f = 0.5}}, {"offset", {.f = -1}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_rescaling = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Rescaling",
    .doc = "y = x * scale + offset, in the model (8-bit images in, float32 out)",
    .args = rescaling_args,
    .nargs = sizeof rescaling_args / sizeof rescaling_args[0],
    .positional = 2,
    .flags = LUNET_LAYER_STEPWISE,
    .build = same_shape_build,
    .forward = rescaling_forward,
    .backward = rescaling_backward,
    .tests = rescaling_tests,
    .ntests = sizeof rescaling_tests / sizeof rescaling_tests[0],
};

/* ---- Normalization ---- */

enum { MEAN = 0, VARIANCE = 1, COUNT = 2 };

static const lunet_arg_schema normalization_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = -1},
     .doc = "the axis whose features get their own mean and variance (only -1, the last, so far)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status normalization_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t axis = lunet_layer_get_int(l, "axis");
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more (..., features)", &in[0]);
  if (axis != -1 && axis != in[0].ndim)
    return lunet_layer_error(l, LUNET_ERR_ARG, "only the last axis (-1) is normalized so far, got axis %lld",
                             (long long)axis);
  int64_t c = in[0].dims[in[0].ndim - 1], one = 1;
  /* count: the samples adapt saw; 0 until then */
  if (lunet_layer_add_weight(l, "mean", 1, &c, "zeros", false) < 0 ||
      lunet_layer_add_weight(l, "variance", 1, &c, "ones", false) < 0 ||
      lunet_layer_add_weight(l, "count", 1, &one, "zeros", false) < 0)
    return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

typedef struct normalization_state {
  lunet_tensor *denom; /* max(sqrt(variance), 1e-7), for backward */
} normalization_state;

static lunet_status normalization_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                          lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  normalization_state *st = lunet_call_state(c);
  double count;
  if (lunet_tensor_item(ctx, lunet_layer_weight(l, COUNT), 0, &count)) return layers_call_failed(c);
  if (!(count > 0))
    return lunet_call_error(c, LUNET_ERR_ARG,
                            "not adapted: call layer:adapt(x) on training data first (or set_weights{mean, "
                            "variance, count}); an unadapted Normalization would pass the data through unchanged");
  lunet_tensor *f = layers_as_f32(ctx, x[0]);
  lunet_tensor *sd = lunet_op_unary(ctx, LUNET_UNARY_SQRT, lunet_layer_weight(l, VARIANCE), 0, 0);
  lunet_tensor *den = sd ? lunet_op_unary(ctx, LUNET_UNARY_CLIP, sd, 1e-7f, 3.4e38f) : NULL;
  lunet_tensor *d = f && den ? lunet_op_binary(ctx, LUNET_BINARY_SUB, f, lunet_layer_weight(l, MEAN)) : NULL;
  y[0] = d ? lunet_op_binary(ctx, LUNET_BINARY_DIV, d, den) : NULL;
  layers_release(f);
  layers_release(sd);
  layers_release(d);
  layers_set(&st->denom, y[0] ? den : (layers_release(den), NULL));
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

static lunet_status normalization_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                           lunet_tensor **dx) {
  normalization_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->denom) return layers_no_forward(c);
  if (lunet_call_needs_dx(c, 0) &&
      !(dx[0] = lunet_op_binary(lunet_call_ctx(c), LUNET_BINARY_DIV, dy[0], st->denom)))
    return layers_call_failed(c);
  layers_set(&st->denom, NULL);
  return LUNET_OK;
}

static void normalization_release(lunet_layer *l, lunet_call *c) {
  normalization_state *st = lunet_call_state(c);
  layers_set(&st->denom, NULL);
}

LAYERS_HIDDEN const lunet_layer_type layers_normalization = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Normalization",
    .doc = "Standardizes each feature with the mean and variance layer:adapt(x) learned (saved with the model)",
    .args = normalization_args,
    .nargs = sizeof normalization_args / sizeof normalization_args[0],
    .flags = LUNET_LAYER_STEPWISE,
    .call_state_size = sizeof(normalization_state),
    .build = normalization_build,
    .forward = normalization_forward,
    .backward = normalization_backward,
    .release = normalization_release,
};

/* ---- CenterCrop ---- */

static const lunet_arg_schema center_crop_args[] = {
    {"height", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "rows kept"},
    {"width", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "columns kept"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status center_crop_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t h = lunet_layer_get_int(l, "height"), w = lunet_layer_get_int(l, "width");
  if (in[0].ndim != 3) return layers_rank_error(l, "3 (height, width, channels)", &in[0]);
  if (h < 1 || w < 1)
    return lunet_layer_error(l, LUNET_ERR_ARG, "height and width must be at least 1, got %lld x %lld", (long long)h,
                             (long long)w);
  out[0] = (lunet_shape){3, {h, w, in[0].dims[2]}};
  return LUNET_OK;
}

/* The window's corner: the odd row or column of the margin goes to the
 * bottom/right, as Keras's (height - target) // 2. */
static void crop_box(const lunet_layer *l, const lunet_tensor *x, int64_t *start, int64_t *stop) {
  int64_t h = lunet_layer_get_int(l, "height"), w = lunet_layer_get_int(l, "width");
  int64_t top = (lunet_tensor_dim(x, 1) - h) / 2, left = (lunet_tensor_dim(x, 2) - w) / 2;
  int64_t a[4] = {0, top, left, 0}, b[4] = {lunet_tensor_dim(x, 0), top + h, left + w, lunet_tensor_dim(x, 3)};
  memcpy(start, a, sizeof a);
  memcpy(stop, b, sizeof b);
}

typedef struct center_crop_state {
  int64_t shape[4]; /* the input's, for the gradient */
  int64_t start[4], stop[4];
  bool resized; /* images smaller than the crop: resized instead */
} center_crop_state;

/* The window, or, for images smaller than the crop on an axis, Keras's
 * smart_resize: the largest centred window of the crop's aspect, resized. */
static lunet_status center_crop_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                        lunet_tensor **y, bool training) {
  center_crop_state *st = lunet_call_state(c);
  int64_t *start = st->start, *stop = st->stop, step[4] = {1, 1, 1, 1};
  int64_t h = lunet_layer_get_int(l, "height"), w = lunet_layer_get_int(l, "width");
  memcpy(st->shape, lunet_tensor_shape(x[0]), sizeof st->shape);
  st->resized = h > st->shape[1] || w > st->shape[2];
  if (st->resized) {
    y[0] = layers_resize_images(lunet_call_ctx(c), x[0], h, w, true);
  } else {
    crop_box(l, x[0], start, stop);
    y[0] = lunet_op_slice(lunet_call_ctx(c), x[0], start, stop, step);
  }
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

/* dx: zeros with dy in the window. */
static lunet_status center_crop_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  center_crop_state *st = lunet_call_state(c);
  if (st->resized) return layers_no_input_gradient(l, c, dy, dx);
  lunet_tensor *g = lunet_op_new(ctx, dy[0], LUNET_F32, 4, st->shape);
  if (!g || lunet_op_fill(ctx, g, 0.0f)) {
    layers_release(g);
    return layers_call_failed(c);
  }
  int64_t step[4] = {1, 1, 1, 1};
  if (lunet_op_assign_slice(ctx, g, st->start, st->stop, step, dy[0])) {
    layers_release(g);
    return layers_call_failed(c);
  }
  dx[0] = g;
  return LUNET_OK;
}

static const lunet_layer_test center_crop_tests[] = {
    {LAYERS_ARGS({"height", {.i = 2}}, {"width", {.i = 3}}), LAYERS_INPUTS({3, {5, 4, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_center_crop = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "CenterCrop",
    .doc = "The centre height x width window of each image (N, H, W, C); smaller images are resized (smart_resize)",
    .args = center_crop_args,
    .nargs = sizeof center_crop_args / sizeof center_crop_args[0],
    .positional = 2,
    .call_state_size = sizeof(center_crop_state),
    .build = center_crop_build,
    .forward = center_crop_forward,
    .backward = center_crop_backward,
    .tests = center_crop_tests,
    .ntests = sizeof center_crop_tests / sizeof center_crop_tests[0],
    .compute_mask = layers_drop_mask,
};
