/*
 * Conv1D (Keras's): x (N, T, C) -> (N, T', F) over the steps, kernel
 * (k, C, F) and bias (F) in Keras's layout (PyTorch's nn.Conv1d weight is
 * the kernel permuted to (F, C, k)).  It runs as Conv2D's ops on the views
 * (N, 1, T, C) and (1, k, C, F), so it has every backend's fast 2-D
 * convolution.  Padding "valid", "same" or "causal" (k - 1 zeros before
 * the first step and none after: step t sees only steps <= t; out = ceil(in
 * / stride), as Keras's).  A dilation_rate d > 1 (strides 1) spaces the
 * kernel's taps d steps apart and runs on the d interleaved sub-sequences
 * (atrous.c); causal padding is then d (k - 1) zeros.
 * MaxPooling1D, below, works the same way on MaxPooling2D's ops.
 */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct conv1d_state {
  lunet_tensor *x; /* (N, 1, T, C), kept for the kernel gradient (dilated: the sub-sequences) */
  lunet_conv2d_desc d;
  layers_atrous a; /* a dilated forward's plan */
  bool dilated;
} conv1d_state;

static const lunet_arg_schema conv1d_args[] = {
    {"filters", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "number of output channels F"},
    {"kernel_size", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "window length k"},
    {"strides", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 1}, .doc = "step of the window"},
    {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},
     .doc = "\"valid\": no padding; \"same\": pad so that out = ceil(in / stride); \"causal\": pad only "
            "before, so step t sees steps <= t",
     .choices = "valid|same|causal"},
    {"dilation_rate", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 1},
     .doc = "spacing of the kernel's taps (WaveNet's dilated causal convolutions); above 1 needs strides 1"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL,
     .doc = "activation applied to the output (\"relu\", ...); nil: linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add a learned bias per filter"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (k, C, F)", .choices = LAYERS_INITIALIZERS},
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

static bool causal(const lunet_layer *l) { return lunet_layer_get_string(l, "padding")[0] == 'c'; }

/* The 2-D geometry of n sequences (t, c): height 1, width t.  Dilated, the
 * padding and output are those of the kernel's extent d (k - 1) + 1, kw its
 * own length, and `a` (when not NULL) gets the plan. */
static lunet_status desc_fill(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t t, int64_t c,
                              lunet_conv2d_desc *d, layers_atrous *a) {
  int64_t k = lunet_layer_get_int(l, "kernel_size"), r = lunet_layer_get_int(l, "dilation_rate");
  *d = (lunet_conv2d_desc){.n = n, .h = 1, .w = t, .c = c, .f = lunet_layer_get_int(l, "filters"),
                           .kh = 1, .kw = r * (k - 1) + 1, .sh = 1,
                           .sw = lunet_layer_get_int(l, "strides")};
  lunet_status st = LUNET_OK;
  if (!causal(l)) {
    st = lunet_conv2d_geometry(ctx, d, layers_padding(l));
  } else { /* extent - 1 zeros on the left, none on the right */
    d->pad_top = 0;
    d->pad_left = d->kw - 1;
    d->oh = 1;
    d->ow = (t - 1) / d->sw + 1;
  }
  d->kw = k;
  if (st == LUNET_OK && r > 1 && a) st = layers_atrous_plan(ctx, d, 1, r, a);
  return st;
}

static lunet_status conv1d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t f = lunet_layer_get_int(l, "filters"), k = lunet_layer_get_int(l, "kernel_size");
  int64_t s = lunet_layer_get_int(l, "strides"), r = lunet_layer_get_int(l, "dilation_rate");
  if (f <= 0 || k <= 0 || s <= 0 || r <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "filters, kernel_size, strides and dilation_rate must be positive");
  if (r > 1 && s > 1)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "dilation_rate %lld with strides %lld: a dilated convolution takes strides 1 "
                             "(as Keras's); follow it with a pooling layer to shorten the sequence",
                             (long long)r, (long long)s);
  if (in[0].ndim != 2) return layers_rank_error(l, "2 (steps, channels)", &in[0]);
  int64_t extent = r * (k - 1) + 1;
  if (!causal(l) && layers_padding(l) == LUNET_PAD_VALID && extent > in[0].dims[0])
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "kernel_size %lld%s spans %lld steps, longer than the input's %lld with "
                             "padding \"valid\"; use padding = \"same\" or a smaller kernel",
                             (long long)k, r > 1 ? " dilated" : "", (long long)extent, (long long)in[0].dims[0]);
  lunet_conv2d_desc d;
  if (desc_fill(l, lunet_layer_ctx(l), 1, in[0].dims[0], in[0].dims[1], &d, NULL)) return layers_failed(l);
  int64_t kshape[3] = {k, in[0].dims[1], f};
  if (lunet_layer_add_weight(l, "kernel", 3, kshape, lunet_layer_get_string(l, "kernel_initializer"), true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &f, lunet_layer_get_string(l, "bias_initializer"), true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){2, {d.ow, f}};
  return LUNET_OK;
}

/* The kernel (k, C, F) as (1, k, C, F), a view. */
static lunet_tensor *kernel4(lunet_ctx *ctx, lunet_layer *l) {
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  int64_t shape[4] = {1, lunet_tensor_dim(w, 0), lunet_tensor_dim(w, 1), lunet_tensor_dim(w, 2)};
  return lunet_op_reshape(ctx, w, 4, shape);
}

/* x (N, T, C) -> y (N, T', F) */
static lunet_status conv1d_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv1d_state *st = lunet_call_state(c);
  int64_t n = lunet_tensor_dim(x[0], 0), t = lunet_tensor_dim(x[0], 1), ch = lunet_tensor_dim(x[0], 2);
  lunet_conv2d_desc d;
  layers_atrous a;
  bool dil = lunet_layer_get_int(l, "dilation_rate") > 1;
  if (desc_fill(l, ctx, n, t, ch, &d, &a)) return layers_call_failed(c);
  int64_t x4s[4] = {n, 1, t, ch}, y3s[3] = {n, d.ow, d.f};
  lunet_tensor *x4 = lunet_op_reshape(ctx, x[0], 4, x4s), *w4 = x4 ? kernel4(ctx, l) : NULL;
  lunet_tensor *b = lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, BIAS) : NULL;
  lunet_tensor *kept = NULL, *y4 = NULL;
  if (w4 && dil) y4 = layers_atrous_forward(ctx, &a, x4, w4, b, &kept);
  else if (w4 && (y4 = lunet_op_conv2d(ctx, x4, w4, b, &d))) kept = lunet_tensor_retain(x4);
  y[0] = y4 ? lunet_op_reshape(ctx, y4, 3, y3s) : NULL;
  layers_release(w4);
  layers_release(y4);
  layers_release(x4);
  layers_set(&st->x, y[0] ? kept : NULL);
  if (!y[0]) {
    layers_release(kept);
    return layers_call_failed(c);
  }
  st->d = d;
  st->a = a;
  st->dilated = dil;
  return LUNET_OK;
}

/* dy (N, T', F) -> dx (N, T, C); dkernel (k, C, F) and dbias (F) accumulated */
static lunet_status conv1d_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                    lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  conv1d_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  bool bias = lunet_layer_get_bool(l, "use_bias");
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  int64_t dy4s[4] = {st->d.n, 1, st->d.ow, st->d.f}, dx3s[3] = {st->d.n, st->d.w, st->d.c};
  lunet_tensor *dy4 = lunet_op_reshape(ctx, dy[0], 4, dy4s), *dw4 = NULL, *dw = NULL, *db = NULL;
  lunet_tensor *w4 = NULL, *dx4 = NULL;
  lunet_status s = dy4 ? LUNET_OK : layers_call_failed(c);
  bool needs_dx = lunet_call_needs_dx(c, 0);
  if (!s && st->dilated) {
    if (!(w4 = kernel4(ctx, l)) ||
        layers_atrous_backward(ctx, &st->a, dy4, st->x, w4, &dw4, bias ? &db : NULL, needs_dx ? &dx4 : NULL))
      s = layers_call_failed(c);
  } else if (!s && !(dw4 = lunet_op_conv2d_backward_filter(ctx, dy4, st->x, &st->d, bias ? &db : NULL))) {
    s = layers_call_failed(c);
  }
  if (!s && !(dw = lunet_op_reshape(ctx, dw4, 3, lunet_tensor_shape(w)))) s = layers_call_failed(c);
  if (!s) s = lunet_call_accumulate_grad(c, KERNEL, dw);
  if (!s && bias) s = lunet_call_accumulate_grad(c, BIAS, db);
  if (!s && needs_dx) {
    if ((!w4 && !(w4 = kernel4(ctx, l))) ||
        (!dx4 && !(dx4 = lunet_op_conv2d_backward_data(ctx, dy4, w4, &st->d))) ||
        !(dx[0] = lunet_op_reshape(ctx, dx4, 3, dx3s)))
      s = layers_call_failed(c);
  }
  layers_release(dy4);
  layers_release(dw4);
  layers_release(dw);
  layers_release(db);
  layers_release(w4);
  layers_release(dx4);
  layers_set(&st->x, NULL);
  return s;
}

static void conv1d_release(lunet_layer *l, lunet_call *c) {
  conv1d_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test conv1d_tests[] = {
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.i = 3}}), LAYERS_INPUTS({2, {6, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.i = 2}}, {"strides", {.i = 2}},
                 {"padding", {.s = "same"}}),
     LAYERS_INPUTS({2, {5, 3}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.i = 1}}, {"use_bias", {.b = false}}),
     LAYERS_INPUTS({2, {4, 2}}), 3, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.i = 3}}, {"padding", {.s = "causal"}}),
     LAYERS_INPUTS({2, {5, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.i = 4}}, {"strides", {.i = 2}}, {"padding", {.s = "causal"}}),
     LAYERS_INPUTS({2, {3, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.i = 2}}, {"dilation_rate", {.i = 3}}, {"padding", {.s = "causal"}}),
     LAYERS_INPUTS({2, {7, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.i = 3}}, {"dilation_rate", {.i = 2}}),
     LAYERS_INPUTS({2, {8, 2}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_conv1d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Conv1D",
    .doc = "1-D convolution over (T, C) sequences: y = activation(conv(x, kernel) + bias)",
    .args = conv1d_args,
    .nargs = sizeof conv1d_args / sizeof conv1d_args[0],
    .positional = 4,
    .call_state_size = sizeof(conv1d_state),
    .build = conv1d_build,
    .forward = conv1d_forward,
    .backward = conv1d_backward,
    .release = conv1d_release,
    .tests = conv1d_tests,
    .ntests = sizeof conv1d_tests / sizeof conv1d_tests[0],
    .compute_mask = layers_drop_mask,
};

/* ---- MaxPooling1D: x (N, T, C) -> (N, T', C), as MaxPooling2D's ops on
 * the view (N, 1, T, C) ---- */

typedef struct pool1d_state {
  lunet_tensor *x, *y; /* the 4-D views, kept for backward */
  lunet_pool2d_desc d;
} pool1d_state;

static const lunet_arg_schema max_pool1d_args[] = {
    {"pool_size", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 2}, .doc = "window length"},
    {"strides", LUNET_ARG_INT, LUNET_ARG_NIL, .doc = "step of the window; nil: pool_size"},
    {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},
     .doc = "\"valid\" or \"same\"", .choices = "valid|same"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status pool_desc(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t t, int64_t c,
                              lunet_pool2d_desc *d) {
  int64_t k = lunet_layer_get_int(l, "pool_size");
  int64_t s = lunet_layer_arg_is_set(l, "strides") ? lunet_layer_get_int(l, "strides") : k;
  *d = (lunet_pool2d_desc){.n = n, .h = 1, .w = t, .c = c, .kh = 1, .kw = k, .sh = 1, .sw = s};
  return lunet_pool2d_geometry(ctx, d, layers_padding(l));
}

static lunet_status max_pool1d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (lunet_layer_get_int(l, "pool_size") <= 0 ||
      (lunet_layer_arg_is_set(l, "strides") && lunet_layer_get_int(l, "strides") <= 0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "pool_size and strides must be positive");
  if (in[0].ndim != 2) return layers_rank_error(l, "2 (steps, channels)", &in[0]);
  lunet_pool2d_desc d;
  if (pool_desc(l, lunet_layer_ctx(l), 1, in[0].dims[0], in[0].dims[1], &d)) return layers_failed(l);
  out[0] = (lunet_shape){2, {d.ow, in[0].dims[1]}};
  return LUNET_OK;
}

static lunet_status max_pool1d_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                       lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  pool1d_state *st = lunet_call_state(c);
  int64_t n = lunet_tensor_dim(x[0], 0), t = lunet_tensor_dim(x[0], 1), ch = lunet_tensor_dim(x[0], 2);
  lunet_pool2d_desc d;
  if (pool_desc(l, ctx, n, t, ch, &d)) return layers_call_failed(c);
  int64_t x4s[4] = {n, 1, t, ch}, y3s[3] = {n, d.ow, ch};
  lunet_tensor *x4 = lunet_op_reshape(ctx, x[0], 4, x4s);
  lunet_tensor *y4 = x4 ? lunet_op_pool2d(ctx, LUNET_POOL_MAX, x4, &d) : NULL;
  y[0] = y4 ? lunet_op_reshape(ctx, y4, 3, y3s) : NULL;
  layers_set(&st->x, x4);
  layers_set(&st->y, y4);
  st->d = d;
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

static lunet_status max_pool1d_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                        lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  pool1d_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  int64_t dy4s[4] = {st->d.n, 1, st->d.ow, st->d.c}, dx3s[3] = {st->d.n, st->d.w, st->d.c};
  lunet_tensor *dy4 = lunet_op_reshape(ctx, dy[0], 4, dy4s);
  lunet_tensor *dx4 = dy4 ? lunet_op_pool2d_backward(ctx, LUNET_POOL_MAX, dy4, st->x, st->y, &st->d) : NULL;
  dx[0] = dx4 ? lunet_op_reshape(ctx, dx4, 3, dx3s) : NULL;
  layers_release(dy4);
  layers_release(dx4);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  return dx[0] ? LUNET_OK : layers_call_failed(c);
}

static void max_pool1d_release(lunet_layer *l, lunet_call *c) {
  pool1d_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
}

static const lunet_layer_test max_pool1d_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {6, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"pool_size", {.i = 3}}, {"strides", {.i = 1}}, {"padding", {.s = "same"}}),
     LAYERS_INPUTS({2, {5, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_max_pooling1d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "MaxPooling1D",
    .doc = "Maximum over windows of steps: (N, T, C) -> (N, T', C)",
    .args = max_pool1d_args,
    .nargs = sizeof max_pool1d_args / sizeof max_pool1d_args[0],
    .positional = 1,
    .call_state_size = sizeof(pool1d_state),
    .build = max_pool1d_build,
    .forward = max_pool1d_forward,
    .backward = max_pool1d_backward,
    .release = max_pool1d_release,
    .tests = max_pool1d_tests,
    .ntests = sizeof max_pool1d_tests / sizeof max_pool1d_tests[0],
    .compute_mask = layers_drop_mask,
};
