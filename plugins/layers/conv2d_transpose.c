/*
 * Conv2DTranspose (Keras): the transpose of a Conv2D, for upsampling.  Its
 * forward is the input gradient of the convolution that maps the output
 * (N, OH, OW, filters) back to the input (N, H, W, C), and its backward
 * that convolution's forward; so the backends' three convolution kernels
 * serve it as they are.
 *
 * Keras's kernel layout (KH, KW, filters, C) and sizes (its
 * deconv_output_length): "valid" gives OH = H * sh + max(KH - sh, 0), that
 * is (H - 1) * sh + KH unless the kernel is smaller than the stride,
 * "same" gives OH = H * sh, the padding of the matching convolution split
 * as Keras splits it (the odd pixel at the bottom and right).  With
 * output_padding op (below the stride), OH is exactly (H - 1) sh + KH -
 * 2 pad + op, pad = KH / 2 for "same" (Keras's deconv_output_length), the
 * matching convolution's padding taken as TensorFlow's SAME conv_transpose
 * takes it for that size.
 *
 * dilation_rate (strides 1, as Keras requires) is the transpose of the
 * dilated convolution: that convolution runs on the d x d sub-grids
 * (atrous.c), so this layer runs its transpose there, x split as that
 * convolution's output gradient and the result merged as its input
 * gradient; sizes as above with the dilated extent d (k - 1) + 1.
 */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct transpose_state {
  lunet_tensor *x;     /* (N,H,W,C), for the kernel gradient (dilated: its sub-grids) */
  lunet_conv2d_desc d; /* the matching convolution (dilated: the sub-grids') */
  layers_atrous a;     /* a dilated forward's plan */
  bool dilated;
} transpose_state;

static const lunet_arg_schema transpose_args[] = {
    {"filters", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "number of output channels"},
    {"kernel_size", LUNET_ARG_INT2, LUNET_ARG_REQUIRED, .doc = "window size: k or {kh, kw}"},
    {"strides", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},
     .doc = "upsampling factor: s or {sh, sw}"},
    {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},
     .doc = "\"valid\": out = in * stride + max(kernel - stride, 0); \"same\": out = in * stride",
     .choices = "valid|same"},
    {"dilation_rate", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},
     .doc = "spacing of the kernel's taps: d or {dh, dw}; above 1 needs strides 1 (as Keras's)"},
    {"output_padding", LUNET_ARG_INT2, LUNET_ARG_NIL,
     .doc = "extra rows and columns of the output: p or {ph, pw}, each below its stride; nil: Keras's inferred size"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL, .doc = "activation applied to the output; nil: linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add a learned bias per filter"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (KH, KW, filters, C)", .choices = LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of the bias (filters)", .choices = LAYERS_INITIALIZERS},
    {"kernel_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL,
     .doc = "penalty on the kernel added to the loss (nn.regularizers.l2(1e-4))"},
    LAYERS_ARG_BIAS_REGULARIZER,
    LAYERS_ARG_ACTIVITY_REGULARIZER,
    LAYERS_ARG_CONSTRAINT("kernel"),
    LAYERS_ARG_CONSTRAINT("bias"),
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* The convolution from the output back to an input of (h, w, c): its desc
 * reads "input" as this layer's output; with a dilation, *a its plan on
 * the sub-grids (when a is not NULL). */
static lunet_status transpose_desc(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t h, int64_t w, int64_t c,
                                   lunet_conv2d_desc *d, layers_atrous *a) {
  int64_t kernel[2], s[2], r[2], k[2];
  lunet_layer_get_int2(l, "kernel_size", kernel);
  lunet_layer_get_int2(l, "strides", s);
  lunet_layer_get_int2(l, "dilation_rate", r);
  k[0] = r[0] * (kernel[0] - 1) + 1, k[1] = r[1] * (kernel[1] - 1) + 1; /* the dilated extent */
  bool same = layers_padding(l) == LUNET_PAD_SAME;
  int64_t oh = h * s[0] + (same || k[0] < s[0] ? 0 : k[0] - s[0]);
  int64_t ow = w * s[1] + (same || k[1] < s[1] ? 0 : k[1] - s[1]);
  if (lunet_layer_arg_is_set(l, "output_padding")) {
    int64_t op[2];
    lunet_layer_get_int2(l, "output_padding", op);
    oh = (h - 1) * s[0] + k[0] - 2 * (same ? k[0] / 2 : 0) + op[0];
    ow = (w - 1) * s[1] + k[1] - 2 * (same ? k[1] / 2 : 0) + op[1];
  }
  *d = (lunet_conv2d_desc){.n = n, .h = oh, .w = ow, .c = lunet_layer_get_int(l, "filters"), .f = c,
                           .kh = k[0], .kw = k[1], .sh = s[0], .sw = s[1]};
  lunet_status st = lunet_conv2d_geometry(ctx, d, layers_padding(l));
  if (st == LUNET_OK && (d->oh != h || d->ow != w))
    st = lunet_error(ctx, LUNET_ERR_SHAPE, "Conv2DTranspose: the geometry does not invert (%lld x %lld -> %lld x %lld)",
                     (long long)h, (long long)w, (long long)d->oh, (long long)d->ow);
  d->kh = kernel[0], d->kw = kernel[1];
  if (st == LUNET_OK && a && (r[0] > 1 || r[1] > 1)) st = layers_atrous_plan(ctx, d, r[0], r[1], a);
  return st;
}

static lunet_status transpose_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t f = lunet_layer_get_int(l, "filters"), s[2];
  if (f <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "filters must be positive, got %lld", (long long)f);
  if (in[0].ndim != 3) return layers_rank_error(l, "3 (H, W, C)", &in[0]);
  lunet_layer_get_int2(l, "strides", s);
  lunet_status st = layers_check_window_args(l, "upsample with strides, then dilate in a later layer");
  if (st != LUNET_OK) return st;
  if (lunet_layer_arg_is_set(l, "output_padding")) {
    int64_t op[2];
    lunet_layer_get_int2(l, "output_padding", op);
    if (op[0] < 0 || op[1] < 0 || op[0] >= s[0] || op[1] >= s[1])
      return lunet_layer_error(l, LUNET_ERR_ARG,
                               "output_padding {%lld, %lld} must be >= 0 and below the strides {%lld, %lld} (as Keras's)",
                               (long long)op[0], (long long)op[1], (long long)s[0], (long long)s[1]);
  }
  lunet_conv2d_desc d;
  if (transpose_desc(l, lunet_layer_ctx(l), 1, in[0].dims[0], in[0].dims[1], in[0].dims[2], &d, NULL))
    return layers_failed(l);
  int64_t kshape[4] = {d.kh, d.kw, d.c, d.f};
  if (lunet_layer_add_weight(l, "kernel", 4, kshape, layers_initializer(l, "kernel_initializer", "glorot_uniform"),
                             true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &d.c, layers_initializer(l, "bias_initializer", "zeros"), true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.h, d.w, d.c}};
  return LUNET_OK;
}

/* x (N,H,W,C) -> y (N,OH,OW,filters) = the convolution's input gradient of x, + bias */
static lunet_status transpose_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                      lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  transpose_state *st = lunet_call_state(c);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  if (layers_check_images(c, x[0], lunet_tensor_dim(w, 3))) return LUNET_ERR_SHAPE;
  lunet_conv2d_desc d;
  layers_atrous a = {0};
  if (transpose_desc(l, ctx, lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1), lunet_tensor_dim(x[0], 2),
                     lunet_tensor_dim(x[0], 3), &d, &a))
    return layers_call_failed(c);
  bool dil = a.dh > 1 || a.dw > 1;
  if (dil) d = a.inner;
  lunet_tensor *xin = dil ? layers_atrous_output_grad(ctx, &a, x[0]) : lunet_tensor_retain(x[0]);
  lunet_tensor *upin = xin ? lunet_op_conv2d_backward_data(ctx, xin, w, &d) : NULL;
  lunet_tensor *up = upin && dil ? layers_atrous_input_grad(ctx, &a, upin) : (upin ? lunet_tensor_retain(upin) : NULL);
  layers_release(upin);
  if (up && lunet_layer_get_bool(l, "use_bias")) {
    y[0] = lunet_op_binary(ctx, LUNET_BINARY_ADD, up, lunet_layer_weight(l, BIAS));
    layers_release(up);
  } else {
    y[0] = up;
  }
  if (!y[0]) {
    layers_release(xin);
    return layers_call_failed(c);
  }
  layers_set(&st->x, xin);
  st->d = d;
  st->a = a;
  st->dilated = dil;
  return LUNET_OK;
}

/* dy (N,OH,OW,filters) -> dx = conv(dy, kernel); dkernel = the convolution's
 * filter gradient with x as its output gradient; dbias = sum of dy. */
static lunet_status transpose_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  transpose_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  /* the matching convolution's input is dy: on the sub-grids when dilated */
  lunet_tensor *dyin = st->dilated ? layers_atrous_input(ctx, &st->a, dy[0]) : lunet_tensor_retain(dy[0]);
  lunet_tensor *dw = dyin ? lunet_op_conv2d_backward_filter(ctx, st->x, dyin, &st->d, NULL) : NULL, *db = NULL;
  lunet_tensor *dxin = NULL;
  if (!dw || lunet_call_accumulate_grad(c, KERNEL, dw) != LUNET_OK) goto fail;
  if (lunet_layer_get_bool(l, "use_bias")) {
    int64_t f = st->d.c;
    if (!(db = lunet_op_sum_to(ctx, dy[0], 1, &f)) || lunet_call_accumulate_grad(c, BIAS, db) != LUNET_OK) goto fail;
  }
  if (lunet_call_needs_dx(c, 0)) {
    if (!(dxin = lunet_op_conv2d(ctx, dyin, lunet_layer_weight(l, KERNEL), NULL, &st->d))) goto fail;
    if (!(dx[0] = st->dilated ? layers_atrous_output(ctx, &st->a, dxin) : lunet_tensor_retain(dxin))) goto fail;
  }
  layers_release(dyin);
  layers_release(dxin);
  layers_release(dw);
  layers_release(db);
  layers_set(&st->x, NULL);
  return LUNET_OK;
fail:
  layers_release(dyin);
  layers_release(dxin);
  layers_release(dw);
  layers_release(db);
  return layers_call_failed(c);
}

static void transpose_release(lunet_layer *l, lunet_call *c) {
  transpose_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test transpose_tests[] = {
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {3}}}), LAYERS_INPUTS({3, {3, 3, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {3}}}, {"strides", {.n = 1, .v = {2}}},
                 {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {3, 2, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 2, .v = {2, 3}}}, {"strides", {.n = 2, .v = {2, 1}}},
                 {"use_bias", {.b = false}}),
     LAYERS_INPUTS({3, {2, 3, 1}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {3}}}, {"strides", {.n = 1, .v = {2}}},
                 {"padding", {.s = "same"}}, {"output_padding", {.n = 1, .v = {1}}}),
     LAYERS_INPUTS({3, {3, 2, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 2, .v = {3, 2}}}, {"dilation_rate", {.n = 2, .v = {2, 3}}}),
     LAYERS_INPUTS({3, {3, 2, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {3}}}, {"dilation_rate", {.n = 1, .v = {2}}},
                 {"padding", {.s = "same"}}),
     LAYERS_INPUTS({3, {4, 5, 2}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_conv2d_transpose = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Conv2DTranspose",
    .doc = "Transposed 2-D convolution (upsampling): (H, W, C) -> (H*s, W*s, filters) with \"same\"",
    .args = transpose_args,
    .nargs = sizeof transpose_args / sizeof transpose_args[0],
    .positional = 4,
    .call_state_size = sizeof(transpose_state),
    .build = transpose_build,
    .forward = transpose_forward,
    .backward = transpose_backward,
    .release = transpose_release,
    .tests = transpose_tests,
    .ntests = sizeof transpose_tests / sizeof transpose_tests[0],
    .compute_mask = layers_drop_mask,
};
