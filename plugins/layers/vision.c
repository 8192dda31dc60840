/*
 * Small vision and activation layers of Keras, each a graph of the core's
 * differentiable ops (layers_graph), so backward follows and every backend
 * runs them:
 *   GlobalMaxPooling2D{keepdims}   max over H and W of (N, H, W, C)
 *   LeakyReLU{negative_slope=0.3}  x, or slope * x below 0
 *   ReLU{max_value, negative_slope=0}
 *   Softmax{axis=-1}
 *   ZeroPadding2D{padding=1}       zeros around H and W (n, {h, w} or {{top, bottom}, {left, right}})
 *   UpSampling2D{size=2}           nearest: each pixel repeated size times
 *   Cropping2D{cropping=0}         rows and columns cut from each side (as padding)
 */
#include <stdlib.h>

#include "layers.h"

/* Runs `body` on the tape over the call's input view and keeps the graph. */
static lunet_status graph_forward(lunet_layer *l, lunet_call *c, lunet_tensor *x, lunet_tensor **y,
                                  lunet_tensor *(*body)(lunet_layer *, lunet_ctx *, lunet_tensor *)) {
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  lunet_status s = layers_graph_begin(c, l, st, x, 0);
  return s ? s : layers_graph_end(c, st, body(l, lunet_call_ctx(c), st->x[0]), y);
}

static lunet_status images_only(lunet_layer *l, const lunet_shape *in) {
  return in->ndim == 3 ? LUNET_OK : layers_rank_error(l, "3 (height, width, channels)", in);
}

#define GRAPH_TYPE(sym, tname, tdoc, targs, tbuild, tfwd, ttests) GRAPH_TYPE_M(sym, tname, tdoc, targs, tbuild, tfwd, ttests, NULL)
/* maskfn: the layer's compute_mask (NULL: the input's mask passes, as for Keras's element-wise layers) */
#define GRAPH_TYPE_M(sym, tname, tdoc, targs, tbuild, tfwd, ttests, maskfn)                                          \
  LAYERS_HIDDEN const lunet_layer_type sym = {                                                                     \
      .struct_size = sizeof(lunet_layer_type),                                                                     \
      .name = tname,                                                                                               \
      .doc = tdoc,                                                                                                 \
      .args = targs,                                                                                               \
      .nargs = sizeof targs / sizeof targs[0],                                                                     \
      .positional = 1,                                                                                             \
      .call_state_size = sizeof(layers_graph),                                                                     \
      .build = tbuild,                                                                                             \
      .forward = tfwd,                                                                                             \
      .backward = layers_graph_backward_member,                                                                    \
      .release = layers_graph_release_member,                                                                      \
      .compute_mask = maskfn,                                                                                      \
      .tests = ttests,                                                                                             \
      .ntests = sizeof ttests / sizeof ttests[0],                                                                  \
  }

/* ---- GlobalMaxPooling2D ---- */

static const lunet_arg_schema gmp_args[] = {
    {"keepdims", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false}, .doc = "keep H and W as 1 x 1"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status gmp_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (images_only(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = lunet_layer_get_bool(l, "keepdims") ? (lunet_shape){3, {1, 1, in[0].dims[2]}}
                                               : (lunet_shape){1, {in[0].dims[2]}};
  return LUNET_OK;
}

static lunet_tensor *gmp_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  bool keep = lunet_layer_get_bool(l, "keepdims");
  lunet_tensor *a = lunet_reduce(ctx, LUNET_REDUCE_MAX, x, 1, keep);
  lunet_tensor *b = a ? lunet_reduce(ctx, LUNET_REDUCE_MAX, a, keep ? 2 : 1, keep) : NULL;
  layers_release(a);
  return b;
}

static lunet_status gmp_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training) {
  return graph_forward(l, c, x[0], y, gmp_body);
}

static const lunet_layer_test gmp_tests[] = {
    {NULL, 0, LAYERS_INPUTS({3, {3, 4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"keepdims", {.b = true}}), LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
};

GRAPH_TYPE_M(layers_global_max_pooling2d, "GlobalMaxPooling2D", "The maximum of each channel over H and W", gmp_args,
           gmp_build, gmp_forward, gmp_tests, layers_drop_mask);

/* ---- LeakyReLU, ReLU, Softmax ---- */

static const lunet_arg_schema leaky_args[] = {
    {"negative_slope", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0.3}, .doc = "the slope below 0 (Keras's 0.3)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status same_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_tensor *leaky_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  return lunet_unary(ctx, LUNET_UNARY_LEAKY_RELU, x, (float)lunet_layer_get_float(l, "negative_slope"), 0);
}

static lunet_status leaky_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                  bool training) {
  return graph_forward(l, c, x[0], y, leaky_body);
}

static const lunet_layer_test leaky_tests[] = {
    {NULL, 0, LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
};

GRAPH_TYPE(layers_leaky_relu, "LeakyReLU", "x, or negative_slope * x below 0", leaky_args, same_build, leaky_forward,
           leaky_tests);

static const lunet_arg_schema relu_args[] = {
    {"max_value", LUNET_ARG_FLOAT, LUNET_ARG_NIL, .doc = "the largest output (nil: none)"},
    {"negative_slope", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "the slope below 0"},
    {"threshold", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "(only 0 so far)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status relu_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (lunet_layer_get_float(l, "threshold") != 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "threshold other than 0 is not supported yet");
  if (lunet_layer_arg_is_set(l, "max_value") && !(lunet_layer_get_float(l, "max_value") >= 0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "max_value must be >= 0");
  if (!(lunet_layer_get_float(l, "negative_slope") >= 0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "negative_slope must be >= 0");
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_tensor *relu_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  float slope = (float)lunet_layer_get_float(l, "negative_slope");
  lunet_tensor *y = slope > 0 ? lunet_unary(ctx, LUNET_UNARY_LEAKY_RELU, x, slope, 0)
                              : lunet_unary(ctx, LUNET_UNARY_RELU, x, 0, 0);
  if (y && lunet_layer_arg_is_set(l, "max_value"))
    layers_set(&y, lunet_unary(ctx, LUNET_UNARY_CLIP, y, -3.4e38f, (float)lunet_layer_get_float(l, "max_value")));
  return y;
}

static lunet_status relu_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  return graph_forward(l, c, x[0], y, relu_body);
}

static const lunet_layer_test relu_tests[] = {
    {LAYERS_ARGS({"max_value", {.f = 0.6}}), LAYERS_INPUTS({1, {9}}), 3, 1e-2f},
    {LAYERS_ARGS({"negative_slope", {.f = 0.1}}), LAYERS_INPUTS({1, {6}}), 2, 1e-2f},
};

GRAPH_TYPE(layers_relu, "ReLU", "max(x, 0), with an optional max_value and negative_slope (Keras's)", relu_args,
           relu_build, relu_forward, relu_tests);

static const lunet_arg_schema softmax_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = -1}, .doc = "the axis normalized (only -1 so far)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status softmax_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t a = lunet_layer_get_int(l, "axis");
  if (a != -1 && a != in[0].ndim)
    return lunet_layer_error(l, LUNET_ERR_ARG, "only the last axis (-1) so far, got axis %lld", (long long)a);
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_tensor *softmax_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  return lunet_softmax(ctx, x, false);
}

static lunet_status softmax_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                    bool training) {
  return graph_forward(l, c, x[0], y, softmax_body);
}

static const lunet_layer_test softmax_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
};

GRAPH_TYPE(layers_softmax, "Softmax", "The softmax over the last axis", softmax_args, softmax_build, softmax_forward,
           softmax_tests);

/* ---- ZeroPadding2D, Cropping2D, UpSampling2D ---- */

static const lunet_arg_schema pad_args[] = {
    {"padding", LUNET_ARG_SIDES, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},
     .doc = "zeros added on each side: a number, {h, w} (above and below, left and right) or "
            "{{top, bottom}, {left, right}}"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status pad_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t p[4]; /* top, bottom, left, right */
  if (images_only(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  lunet_layer_get_sides(l, "padding", p);
  if (p[0] < 0 || p[1] < 0 || p[2] < 0 || p[3] < 0) return lunet_layer_error(l, LUNET_ERR_ARG, "padding must be >= 0");
  out[0] = (lunet_shape){3, {in[0].dims[0] + p[0] + p[1], in[0].dims[1] + p[2] + p[3], in[0].dims[2]}};
  return LUNET_OK;
}

/* zeros of x's shape but `n` along `axis` (NULL with n 0: nothing to add). */
static lunet_tensor *zeros_along(lunet_ctx *ctx, lunet_tensor *x, int axis, int64_t n, bool *failed) {
  if (n == 0) return NULL;
  int64_t shape[4];
  for (int i = 0; i < 4; i++) shape[i] = lunet_tensor_dim(x, i);
  shape[axis] = n;
  lunet_tensor *z = lunet_op_new(ctx, x, LUNET_F32, 4, shape);
  if (z && lunet_op_fill(ctx, z, 0.0f)) {
    layers_release(z);
    z = NULL;
  }
  *failed = *failed || !z;
  return z;
}

/* [zeros(before), x, zeros(after)] along `axis`, on the tape. */
static lunet_tensor *pad_axis(lunet_ctx *ctx, lunet_tensor *x, int axis, int64_t before, int64_t after) {
  if (before == 0 && after == 0) return lunet_tensor_retain(x);
  bool failed = false;
  lunet_tensor *zb = zeros_along(ctx, x, axis, before, &failed), *za = zeros_along(ctx, x, axis, after, &failed);
  lunet_tensor *parts[3];
  int n = 0;
  if (zb) parts[n++] = zb;
  parts[n++] = x;
  if (za) parts[n++] = za;
  lunet_tensor *y = failed ? NULL : lunet_concat(ctx, parts, n, axis);
  layers_release(zb);
  layers_release(za);
  return y;
}

static lunet_tensor *pad_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  int64_t p[4];
  lunet_layer_get_sides(l, "padding", p);
  lunet_tensor *a = pad_axis(ctx, x, 1, p[0], p[1]), *b = a ? pad_axis(ctx, a, 2, p[2], p[3]) : NULL;
  layers_release(a);
  return b;
}

static lunet_status pad_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training) {
  return graph_forward(l, c, x[0], y, pad_body);
}

static const lunet_layer_test pad_tests[] = {
    {LAYERS_ARGS({"padding", {.n = 2, .v = {1, 2}}}), LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"padding", {.n = 4, .v = {0, 2, 3, 1}}}), LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
};

GRAPH_TYPE_M(layers_zero_padding2d, "ZeroPadding2D", "Zeros around the height and width of images", pad_args,
           pad_build, pad_forward, pad_tests, layers_drop_mask);

static const lunet_arg_schema crop_args[] = {
    {"cropping", LUNET_ARG_SIDES, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {0}},
     .doc = "rows and columns cut from each side: a number, {h, w} (top and bottom, left and right) or "
            "{{top, bottom}, {left, right}}"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status crop_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t p[4]; /* top, bottom, left, right */
  if (images_only(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  lunet_layer_get_sides(l, "cropping", p);
  if (p[0] < 0 || p[1] < 0 || p[2] < 0 || p[3] < 0 || p[0] + p[1] >= in[0].dims[0] || p[2] + p[3] >= in[0].dims[1]) {
    char buf[128];
    return lunet_layer_error(l, LUNET_ERR_ARG, "cropping {{%lld, %lld}, {%lld, %lld}} leaves nothing of images %s",
                             (long long)p[0], (long long)p[1], (long long)p[2], (long long)p[3],
                             layers_sample_str(&in[0], buf, sizeof buf));
  }
  out[0] = (lunet_shape){3, {in[0].dims[0] - p[0] - p[1], in[0].dims[1] - p[2] - p[3], in[0].dims[2]}};
  return LUNET_OK;
}

static lunet_tensor *crop_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  int64_t p[4];
  lunet_layer_get_sides(l, "cropping", p);
  int64_t start[4] = {0, p[0], p[2], 0};
  int64_t stop[4] = {lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1) - p[1], lunet_tensor_dim(x, 2) - p[3],
                     lunet_tensor_dim(x, 3)};
  int64_t step[4] = {1, 1, 1, 1};
  return lunet_slice(ctx, x, start, stop, step);
}

static lunet_status crop_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  return graph_forward(l, c, x[0], y, crop_body);
}

static const lunet_layer_test crop_tests[] = {
    {LAYERS_ARGS({"cropping", {.n = 2, .v = {1, 2}}}), LAYERS_INPUTS({3, {4, 6, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"cropping", {.n = 4, .v = {0, 2, 3, 1}}}), LAYERS_INPUTS({3, {4, 6, 2}}), 2, 1e-2f},
};

GRAPH_TYPE_M(layers_cropping2d, "Cropping2D", "Cuts rows and columns from the sides of images", crop_args, crop_build,
           crop_forward, crop_tests, layers_drop_mask);

static const lunet_arg_schema up_args[] = {
    {"size", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {2}},
     .doc = "how many times each row (h) and column (w) repeats: a number or {h, w}"},
    {"interpolation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "nearest"},
     .doc = "nearest (the only one so far)", .choices = "nearest"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status up_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t f[2];
  if (images_only(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  lunet_layer_get_int2(l, "size", f);
  lunet_status s = layers_check_pair(l, "size", f);
  if (s) return s;
  out[0] = (lunet_shape){3, {in[0].dims[0] * f[0], in[0].dims[1] * f[1], in[0].dims[2]}};
  return LUNET_OK;
}

/* Each index of `axis` repeated f times, through index_select (its
 * gradient adds the copies back). */
static lunet_tensor *repeat_axis(lunet_ctx *ctx, lunet_tensor *x, int axis, int64_t f) {
  if (f == 1) return lunet_tensor_retain(x);
  int64_t n = lunet_tensor_dim(x, axis);
  int64_t *idx = malloc(sizeof *idx * (size_t)(n * f));
  if (!idx) return NULL;
  for (int64_t i = 0; i < n * f; i++) idx[i] = i / f;
  lunet_tensor *y = lunet_index_select(ctx, x, axis, idx, n * f);
  free(idx);
  return y;
}

static lunet_tensor *up_body(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x) {
  int64_t f[2];
  lunet_layer_get_int2(l, "size", f);
  lunet_tensor *a = repeat_axis(ctx, x, 1, f[0]), *b = a ? repeat_axis(ctx, a, 2, f[1]) : NULL;
  layers_release(a);
  return b;
}

static lunet_status up_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                               bool training) {
  return graph_forward(l, c, x[0], y, up_body);
}

static const lunet_layer_test up_tests[] = {
    {LAYERS_ARGS({"size", {.n = 2, .v = {2, 3}}}), LAYERS_INPUTS({3, {2, 2, 2}}), 2, 1e-2f},
};

GRAPH_TYPE_M(layers_up_sampling2d, "UpSampling2D", "Repeats each pixel size times (nearest neighbour)", up_args,
           up_build, up_forward, up_tests, layers_drop_mask);

/* ---- PReLU: a learned slope below 0 ---- */

static const lunet_arg_schema prelu_args[] = {
    {"alpha_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of the slopes", .choices = LAYERS_INITIALIZERS},
    {"shared_axes", LUNET_ARG_SHAPE, LUNET_ARG_NIL,
     .doc = "sample axes (from 1) that share one slope, as Keras's ({1, 2}: one per channel of images)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status prelu_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_shape a = in[0];
  int64_t shared[LUNET_MAX_DIMS];
  int n = lunet_layer_get_shape(l, "shared_axes", shared, LUNET_MAX_DIMS);
  for (int i = 0; i < n; i++) {
    if (shared[i] < 1 || shared[i] > in[0].ndim) {
      char buf[128];
      return lunet_layer_error(l, LUNET_ERR_ARG, "shared_axes: %lld is not an axis of samples %s (1 to %d)",
                               (long long)shared[i], layers_sample_str(&in[0], buf, sizeof buf), in[0].ndim);
    }
    a.dims[shared[i] - 1] = 1;
  }
  if (lunet_layer_add_weight(l, "alpha", a.ndim, a.dims, lunet_layer_get_string(l, "alpha_initializer"), true) < 0)
    return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

/* relu(x) - alpha relu(-x), on the tape (alpha broadcasts over the batch). */
static lunet_status prelu_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                  bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  lunet_status s = layers_graph_begin(c, l, st, x[0], 1);
  if (s) return s;
  lunet_tensor *pos = lunet_unary(ctx, LUNET_UNARY_RELU, st->x[0], 0, 0);
  lunet_tensor *neg = lunet_unary(ctx, LUNET_UNARY_RELU, lunet_unary(ctx, LUNET_UNARY_NEG, st->x[0], 0, 0), 0, 0);
  lunet_tensor *an = neg ? lunet_mul(ctx, neg, st->w[0]) : NULL;
  lunet_tensor *out = pos && an ? lunet_sub(ctx, pos, an) : NULL;
  layers_release(pos);
  layers_release(neg);
  layers_release(an);
  return layers_graph_end(c, st, out, y);
}

static const lunet_layer_test prelu_tests[] = {
    {LAYERS_ARGS({"alpha_initializer", {.s = "glorot_uniform"}}), LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"alpha_initializer", {.s = "ones"}}, {"shared_axes", {.n = 2, .v = {1, 2}}}),
     LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_prelu = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "PReLU",
    .doc = "x, or a learned alpha * x below 0 (Keras's)",
    .args = prelu_args,
    .nargs = sizeof prelu_args / sizeof prelu_args[0],
    .call_state_size = sizeof(layers_graph),
    .build = prelu_build,
    .forward = prelu_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .tests = prelu_tests,
    .ntests = sizeof prelu_tests / sizeof prelu_tests[0],
};

/* ---- SpatialDropout2D: whole channels dropped ---- */

static const lunet_arg_schema sdrop_args[] = {
    {"rate", LUNET_ARG_FLOAT, LUNET_ARG_REQUIRED, .doc = "fraction of the channels dropped, in [0, 1)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status sdrop_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  double r = lunet_layer_get_float(l, "rate");
  if (!(r >= 0 && r < 1)) return lunet_layer_error(l, LUNET_ERR_ARG, "rate must be in [0, 1), got %g", r);
  if (images_only(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = in[0];
  return LUNET_OK;
}

/* In training x * mask, the mask (N, 1, 1, C) one draw per sample and
 * channel (Keras's); identity otherwise.  On the tape. */
static lunet_status sdrop_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                  bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  lunet_status s = layers_graph_begin(c, l, st, x[0], 0);
  if (s) return s;
  float rate = (float)lunet_layer_get_float(l, "rate");
  lunet_tensor *out;
  if (!training || rate == 0) {
    out = lunet_unary(ctx, LUNET_UNARY_AFFINE, st->x[0], 1.0f, 0.0f);
  } else {
    int64_t shape[4] = {lunet_tensor_dim(x[0], 0), 1, 1, lunet_tensor_dim(x[0], 3)};
    lunet_tensor *like = lunet_op_new(ctx, x[0], LUNET_F32, 4, shape);
    lunet_tensor *m = like ? lunet_op_dropout_mask(ctx, like, rate) : NULL;
    out = m ? lunet_mul(ctx, st->x[0], m) : NULL;
    layers_release(like);
    layers_release(m);
  }
  return layers_graph_end(c, st, out, y);
}

static const lunet_layer_test sdrop_tests[] = {
    {LAYERS_ARGS({"rate", {.f = 0.5}}), LAYERS_INPUTS({3, {2, 2, 4}}), 3, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_spatial_dropout2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SpatialDropout2D",
    .doc = "In training, drops whole channels of images with probability rate (Keras's)",
    .args = sdrop_args,
    .nargs = sizeof sdrop_args / sizeof sdrop_args[0],
    .positional = 1,
    .call_state_size = sizeof(layers_graph),
    .build = sdrop_build,
    .forward = sdrop_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .tests = sdrop_tests,
    .ntests = sizeof sdrop_tests / sizeof sdrop_tests[0],
    .compute_mask = layers_drop_mask,
};
