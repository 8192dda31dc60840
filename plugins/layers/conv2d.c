/* Conv2D: 2-D convolution over NHWC images, Keras's kernel layout
 * (KH,KW,C/groups,F); a dilation_rate above 1 runs on the sub-grids
 * (atrous.c), groups above 1 one convolution per group (depthwise.c). */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct conv2d_state {
  lunet_tensor *x;     /* (N,H,W,C), kept for the filter gradient (dilated: the sub-grids) */
  lunet_conv2d_desc d; /* geometry of that forward: one group's convolution (dilated: the sub-grids') */
  layers_atrous a;     /* a dilated forward's plan */
  bool dilated;
  int64_t groups;
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
    {"groups", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 1},
     .doc = "channel groups convolved apart (ResNeXt): C and filters divisible by it"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL,
     .doc = "activation applied to the output (\"relu\", ...); nil: linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add a learned bias per filter"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (KH, KW, C / groups, F)", .choices = LAYERS_INITIALIZERS},
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
 * kernel exists.  c and f are one group's (C / groups, F / groups).
 * Dilated, the padding and output are those of the kernel's extent
 * r (k - 1) + 1, kh and kw its own size, and `a` (when not NULL) gets the
 * plan.  The arguments are those conv2d_check() accepted. */
static lunet_status conv2d_desc_fill(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t h,
                                     int64_t w, int64_t c, lunet_conv2d_desc *d, layers_atrous *a) {
  int64_t k[2], s[2], r[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "strides", s);
  bool dil = dilated(l, r);
  int64_t g = lunet_layer_get_int(l, "groups");
  *d = (lunet_conv2d_desc){.n = n,
                           .h = h,
                           .w = w,
                           .c = c / g,
                           .f = lunet_layer_get_int(l, "filters") / g,
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
  int64_t f = lunet_layer_get_int(l, "filters"), g = lunet_layer_get_int(l, "groups");
  if (f <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "filters must be positive, got %lld", (long long)f);
  if (g <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "groups must be positive, got %lld", (long long)g);
  if (in->ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in);
  if (in->dims[2] % g || f % g)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "groups = %lld must divide both the input's %lld channels and filters = %lld "
                             "(as Keras's)",
                             (long long)g, (long long)in->dims[2], (long long)f);
  return layers_check_window(l, in);
}

static lunet_status conv2d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_status s = conv2d_check(l, &in[0]);
  if (s != LUNET_OK) return s;
  lunet_conv2d_desc d;
  const int64_t *hwc = in[0].dims;
  if (conv2d_desc_fill(l, lunet_layer_ctx(l), 1, hwc[0], hwc[1], hwc[2], &d, NULL) != LUNET_OK)
    return layers_failed(l);
  int64_t f = lunet_layer_get_int(l, "filters"), kshape[4] = {d.kh, d.kw, d.c, f};
  if (lunet_layer_add_weight(l, "kernel", 4, kshape,
                             layers_initializer(l, "kernel_initializer", "glorot_uniform"),
                             true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &f, layers_initializer(l, "bias_initializer", "zeros"),
                             true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.oh, d.ow, f}};
  return LUNET_OK;
}

/* x (N,H,W,C), kernel (KH,KW,C/G,F), bias (F) -> y (N,OH,OW,F) */
static lunet_status conv2d_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv2d_state *st = lunet_call_state(c);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  int64_t r[2], groups = lunet_layer_get_int(l, "groups");
  if (layers_check_images(c, x[0], lunet_tensor_dim(w, 2) * groups)) return LUNET_ERR_SHAPE;
  lunet_conv2d_desc d;
  layers_atrous a;
  bool dil = dilated(l, r);
  if (conv2d_desc_fill(l, ctx, lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1),
                       lunet_tensor_dim(x[0], 2), lunet_tensor_dim(x[0], 3), &d, &a) != LUNET_OK)
    return layers_call_failed(c);
  if (dil) d = a.inner;
  lunet_tensor *b = lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, BIAS) : NULL;
  lunet_tensor *xin = dil ? layers_atrous_input(ctx, &a, x[0]) : lunet_tensor_retain(x[0]), *yin = NULL;
  if (xin && groups == 1) {
    yin = lunet_op_conv2d(ctx, xin, w, b, &d);
  } else if (xin) {
    lunet_tensor *z = layers_grouped_conv(ctx, xin, w, &d, groups, 3);
    yin = z && b ? lunet_op_binary(ctx, LUNET_BINARY_ADD, z, b) : (z ? lunet_tensor_retain(z) : NULL);
    layers_release(z);
  }
  y[0] = yin && dil ? layers_atrous_output(ctx, &a, yin) : (yin ? lunet_tensor_retain(yin) : NULL);
  layers_release(yin);
  if (!y[0]) {
    layers_release(xin);
    return layers_call_failed(c);
  }
  layers_set(&st->x, xin);
  st->d = d;
  st->a = a;
  st->dilated = dil;
  st->groups = groups;
  return LUNET_OK;
}

/* dy (N,OH,OW,F) -> dx (N,H,W,C); dkernel (KH,KW,C/G,F) and dbias (F) accumulated */
static lunet_status conv2d_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                    lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv2d_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  bool bias = lunet_layer_get_bool(l, "use_bias"), needs_dx = lunet_call_needs_dx(c, 0);
  lunet_tensor *dw = NULL, *db = NULL, *dxin = NULL, *w = lunet_layer_weight(l, KERNEL);
  lunet_tensor *dyin = st->dilated ? layers_atrous_output_grad(ctx, &st->a, dy[0]) : lunet_tensor_retain(dy[0]);
  lunet_status s = dyin ? LUNET_OK : LUNET_ERR_DEVICE;
  if (!s && st->groups == 1) {
    if (!(dw = lunet_op_conv2d_backward_filter(ctx, dyin, st->x, &st->d, bias ? &db : NULL)) ||
        (needs_dx && !(dxin = lunet_op_conv2d_backward_data(ctx, dyin, w, &st->d))))
      s = LUNET_ERR_DEVICE;
  } else if (!s) {
    int64_t f = lunet_tensor_dim(w, 3);
    s = layers_grouped_conv_backward(ctx, dyin, st->x, w, &st->d, st->groups, 3, &dw, needs_dx ? &dxin : NULL);
    if (!s && bias && !(db = lunet_op_sum_to(ctx, dy[0], 1, &f))) s = LUNET_ERR_DEVICE;
  }
  if (!s && dxin) {
    dx[0] = st->dilated ? layers_atrous_input_grad(ctx, &st->a, dxin) : lunet_tensor_retain(dxin);
    if (!dx[0]) s = LUNET_ERR_DEVICE;
  }
  if (!s) s = lunet_call_accumulate_grad(c, KERNEL, dw);
  if (!s && bias) s = lunet_call_accumulate_grad(c, BIAS, db);
  layers_release(dyin);
  layers_release(dxin);
  layers_release(dw);
  layers_release(db);
  layers_set(&st->x, NULL);
  if (!s) return LUNET_OK;
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
    {LAYERS_ARGS({"filters", {.i = 4}}, {"kernel_size", {.n = 1, .v = {3}}}, {"groups", {.i = 2}},
                 {"strides", {.n = 1, .v = {2}}}, {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {5, 5, 6}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {2}}}, {"groups", {.i = 3}},
                 {"dilation_rate", {.n = 1, .v = {2}}}, {"use_bias", {.b = false}}),
     LAYERS_INPUTS({3, {5, 4, 3}}), 2, 2e-2f},
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
    .compute_mask = layers_drop_mask,
};
