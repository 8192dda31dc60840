/* Conv2D: 2-D convolution over NHWC images, Keras's kernel layout (KH,KW,C,F);
 * a dilation_rate above 1 runs on the sub-grids (atrous.c). */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct conv2d_state {
  lunet_tensor *x;     /* (N,H,W,C), kept for the filter gradient (dilated: the sub-grids) */
  lunet_conv2d_desc d; /* geometry of that forward */
  layers_atrous a;     /* a dilated forward's plan */
  bool dilated;
} conv2d_state;

static const lunet_arg_schema conv2d_args[] = {
    {"filters", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "number of output channels F"},
    {"kernel_size", LUNET_ARG_INT2, LUNET_ARG_REQUIRED, .doc = "window size: k or {kh, kw}"},
    {"strides", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},
     .doc = "step of the window: s or {sh, sw}"},
    {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},
     .doc = "\"valid\": no padding; \"same\": pad so that out = ceil(in / stride)",
     .choices = "valid|same"},
    {"dilation_rate", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},
     .doc = "spacing of the kernel's taps: d or {dh, dw}; above 1 needs strides 1"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL,
     .doc = "activation applied to the output (\"relu\", ...); nil: linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add a learned bias per filter"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (KH, KW, C, F)", .choices = LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of the bias (F)", .choices = LAYERS_INITIALIZERS},
    {"kernel_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL,
     .doc = "penalty on the kernel added to the loss (nn.regularizers.l2(1e-4))"},
    LAYERS_ARG_BIAS_REGULARIZER,
    LAYERS_ARG_ACTIVITY_REGULARIZER,
    LAYERS_ARG_CONSTRAINT("kernel"),
    LAYERS_ARG_CONSTRAINT("bias"),
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* The layer's dilation {dh, dw} in r; whether either is above 1. */
static bool dilated(const lunet_layer *l, int64_t r[2]) {
  lunet_layer_get_int2(l, "dilation_rate", r);
  return r[0] > 1 || r[1] > 1;
}

/* Fills d for a batch of n images (h, w, c) from the layer's arguments; f,
 * kh, kw come from the arguments too, so build() can use it before the
 * kernel exists.  Dilated, the padding and output are those of the kernel's
 * extent r (k - 1) + 1, kh and kw its own size, and `a` (when not NULL)
 * gets the plan.  The arguments are those conv2d_check() accepted. */
static lunet_status conv2d_desc_fill(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t h,
                                     int64_t w, int64_t c, lunet_conv2d_desc *d, layers_atrous *a) {
  int64_t k[2], s[2], r[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "strides", s);
  bool dil = dilated(l, r);
  *d = (lunet_conv2d_desc){.n = n,
                           .h = h,
                           .w = w,
                           .c = c,
                           .f = lunet_layer_get_int(l, "filters"),
                           .kh = r[0] * (k[0] - 1) + 1,
                           .kw = r[1] * (k[1] - 1) + 1,
                           .sh = s[0],
                           .sw = s[1]};
  lunet_status st = lunet_conv2d_geometry(ctx, d, layers_padding(l));
  d->kh = k[0], d->kw = k[1];
  if (st == LUNET_OK && dil && a) st = layers_atrous_plan(ctx, d, r[0], r[1], a);
  return st;
}

/* Checks the arguments against one sample (H, W, C). */
static lunet_status conv2d_check(lunet_layer *l, const lunet_shape *in) {
  int64_t f = lunet_layer_get_int(l, "filters");
  if (f <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "filters must be positive, got %lld", (long long)f);
  if (in->ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in);
  return layers_check_window(l, in);
}

static lunet_status conv2d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_status s = conv2d_check(l, &in[0]);
  if (s != LUNET_OK) return s;
  lunet_conv2d_desc d;
  const int64_t *hwc = in[0].dims;
  if (conv2d_desc_fill(l, lunet_layer_ctx(l), 1, hwc[0], hwc[1], hwc[2], &d, NULL) != LUNET_OK)
    return layers_failed(l);
  int64_t kshape[4] = {d.kh, d.kw, d.c, d.f};
  if (lunet_layer_add_weight(l, "kernel", 4, kshape,
                             layers_initializer(l, "kernel_initializer", "glorot_uniform"),
                             true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &d.f, layers_initializer(l, "bias_initializer", "zeros"),
                             true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.oh, d.ow, d.f}};
  return LUNET_OK;
}

/* x (N,H,W,C), kernel (KH,KW,C,F), bias (F) -> y (N,OH,OW,F) */
static lunet_status conv2d_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv2d_state *st = lunet_call_state(c);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  if (layers_check_images(c, x[0], lunet_tensor_dim(w, 2))) return LUNET_ERR_SHAPE;
  lunet_conv2d_desc d;
  layers_atrous a;
  int64_t r[2];
  bool dil = dilated(l, r);
  if (conv2d_desc_fill(l, ctx, lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1),
                       lunet_tensor_dim(x[0], 2), lunet_tensor_dim(x[0], 3), &d, &a) != LUNET_OK)
    return layers_call_failed(c);
  lunet_tensor *b = lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, BIAS) : NULL;
  lunet_tensor *kept = NULL;
  if (dil) y[0] = layers_atrous_forward(ctx, &a, x[0], w, b, &kept);
  else if ((y[0] = lunet_op_conv2d(ctx, x[0], w, b, &d))) kept = lunet_tensor_retain(x[0]);
  if (!y[0]) return layers_call_failed(c);
  layers_set(&st->x, kept);
  st->d = d;
  st->a = a;
  st->dilated = dil;
  return LUNET_OK;
}

/* dy (N,OH,OW,F) -> dx (N,H,W,C); dkernel (KH,KW,C,F) and dbias (F) accumulated */
static lunet_status conv2d_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                    lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv2d_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  bool bias = lunet_layer_get_bool(l, "use_bias");
  lunet_tensor *dw = NULL, *db = NULL, *w = lunet_layer_weight(l, KERNEL);
  bool needs_dx = lunet_call_needs_dx(c, 0);
  if (st->dilated) {
    if (layers_atrous_backward(ctx, &st->a, dy[0], st->x, w, &dw, bias ? &db : NULL, needs_dx ? &dx[0] : NULL))
      goto fail;
  } else if (!(dw = lunet_op_conv2d_backward_filter(ctx, dy[0], st->x, &st->d, bias ? &db : NULL))) {
    goto fail;
  }
  if (lunet_call_accumulate_grad(c, KERNEL, dw) != LUNET_OK) goto fail;
  if (bias && lunet_call_accumulate_grad(c, BIAS, db) != LUNET_OK) goto fail;
  if (needs_dx && !st->dilated && !(dx[0] = lunet_op_conv2d_backward_data(ctx, dy[0], w, &st->d)))
    goto fail;
  lunet_tensor_release(dw);
  layers_release(db);
  layers_set(&st->x, NULL);
  return LUNET_OK;
fail:
  layers_release(dw);
  layers_release(db);
  layers_set(&dx[0], NULL);
  return layers_call_failed(c);
}

static void conv2d_release(lunet_layer *l, lunet_call *c) {
  conv2d_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test conv2d_tests[] = {
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {3}}}),
     LAYERS_INPUTS({3, {5, 5, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {3}}},
                 {"strides", {.n = 1, .v = {2}}}, {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {5, 5, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 2, .v = {2, 3}}},
                 {"strides", {.n = 2, .v = {1, 2}}}, {"use_bias", {.b = false}}),
     LAYERS_INPUTS({3, {4, 5, 1}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 4}}, {"kernel_size", {.n = 1, .v = {1}}}),
     LAYERS_INPUTS({3, {3, 3, 3}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {3}}},
                 {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {4, 4, 3}}), 1, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 2, .v = {3, 2}}},
                 {"dilation_rate", {.n = 2, .v = {2, 3}}}),
     LAYERS_INPUTS({3, {7, 6, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {3}}},
                 {"dilation_rate", {.n = 1, .v = {2}}}, {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {5, 4, 2}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_conv2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Conv2D",
    .doc = "2-D convolution over (H, W, C) images: y = activation(conv(x, kernel) + bias)",
    .args = conv2d_args,
    .nargs = sizeof conv2d_args / sizeof conv2d_args[0],
    .positional = 4,
    .call_state_size = sizeof(conv2d_state),
    .build = conv2d_build,
    .forward = conv2d_forward,
    .backward = conv2d_backward,
    .release = conv2d_release,
    .tests = conv2d_tests,
    .ntests = sizeof conv2d_tests / sizeof conv2d_tests[0],
};
