/* Conv2D: 2-D convolution over NHWC images, Keras's kernel layout (KH,KW,C,F). */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct conv2d_state {
  lunet_tensor *x;     /* (N,H,W,C), kept for the filter gradient */
  lunet_conv2d_desc d; /* geometry of that forward */
} conv2d_state;

static const lunet_arg_schema conv2d_args[] = {
    {"filters", LUNET_ARG_INT, NULL, "number of output channels F", NULL},
    {"kernel_size", LUNET_ARG_INT2, NULL, "window size: k or {kh, kw}", NULL},
    {"strides", LUNET_ARG_INT2, "1", "step of the window: s or {sh, sw}", NULL},
    {"padding", LUNET_ARG_STRING, "\"valid\"",
     "\"valid\": no padding; \"same\": pad so that out = ceil(in / stride)", "valid|same"},
    {"activation", LUNET_ARG_STRING, "nil",
     "activation applied to the output (\"relu\", ...); nil: linear", NULL},
    {"use_bias", LUNET_ARG_BOOL, "true", "add a learned bias per filter", NULL},
    {"kernel_initializer", LUNET_ARG_STRING, "\"glorot_uniform\"",
     "initializer of the kernel (KH, KW, C, F)", LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, "\"zeros\"", "initializer of the bias (F)",
     LAYERS_INITIALIZERS},
    {"kernel_regularizer", LUNET_ARG_REGULARIZER, "nil",
     "penalty on the kernel added to the loss (nn.regularizers.l2(1e-4))", NULL},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* Fills d for a batch of n images (h, w, c) from the layer's arguments; f,
 * kh, kw come from the arguments too, so build() can use it before the
 * kernel exists. */
static lunet_status conv2d_desc_fill(lunet_layer *l, int64_t n, int64_t h, int64_t w, int64_t c,
                                     lunet_conv2d_desc *d) {
  int64_t k[2], s[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "strides", s);
  lunet_status st = layers_check_pair(l, "kernel_size", k);
  if (st == LUNET_OK) st = layers_check_pair(l, "strides", s);
  if (st != LUNET_OK) return st;
  lunet_padding pad = layers_padding(l);
  if (pad == LUNET_PAD_VALID && (k[0] > h || k[1] > w))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "kernel_size {%lld, %lld} is larger than the input (%lld, %lld) "
                             "with padding \"valid\"; use padding = \"same\" or a smaller "
                             "kernel",
                             (long long)k[0], (long long)k[1], (long long)h, (long long)w);
  *d = (lunet_conv2d_desc){.n = n,
                           .h = h,
                           .w = w,
                           .c = c,
                           .f = lunet_layer_get_int(l, "filters"),
                           .kh = k[0],
                           .kw = k[1],
                           .sh = s[0],
                           .sw = s[1]};
  return lunet_conv2d_geometry(lunet_layer_ctx(l), d, pad);
}

static lunet_status conv2d_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                 int64_t *out) {
  int64_t f = lunet_layer_get_int(l, "filters");
  if (f <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "filters must be positive, got %lld", (long long)f);
  if (in_ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in_ndim, in);
  lunet_conv2d_desc d;
  lunet_status s = conv2d_desc_fill(l, 1, in[0], in[1], in[2], &d);
  if (s != LUNET_OK) return s;
  int64_t kshape[4] = {d.kh, d.kw, d.c, d.f};
  if (lunet_layer_add_weight(l, "kernel", 4, kshape,
                             layers_initializer(l, "kernel_initializer", "glorot_uniform"),
                             true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &f, layers_initializer(l, "bias_initializer", "zeros"),
                             true) < 0)
    return layers_failed(l);
  *out_ndim = 3;
  out[0] = d.oh;
  out[1] = d.ow;
  out[2] = f;
  return LUNET_OK;
}

/* x (N,H,W,C), kernel (KH,KW,C,F), bias (F) -> y (N,OH,OW,F) */
static lunet_status conv2d_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y,
                                   bool training) {
  (void)training;
  conv2d_state *st = lunet_layer_state(l);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  if (lunet_tensor_ndim(x) != 4 || lunet_tensor_dim(x, 3) != lunet_tensor_dim(w, 2)) {
    char buf[128];
    return lunet_layer_error(
        l, LUNET_ERR_SHAPE, "expects a batch (N, H, W, %lld), got shape %s",
        (long long)lunet_tensor_dim(w, 2),
        lunet_shape_str(lunet_tensor_ndim(x), lunet_tensor_shape(x), buf, sizeof buf));
  }
  lunet_conv2d_desc d;
  lunet_status s = conv2d_desc_fill(l, lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1),
                                    lunet_tensor_dim(x, 2), lunet_tensor_dim(x, 3), &d);
  if (s != LUNET_OK) return s;
  lunet_tensor *b = lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, BIAS) : NULL;
  if (!(*y = lunet_op_conv2d(lunet_layer_ctx(l), x, w, b, &d))) return layers_failed(l);
  layers_set(&st->x, lunet_tensor_retain(x));
  st->d = d;
  return LUNET_OK;
}

/* dy (N,OH,OW,F) -> dx (N,H,W,C); dkernel (KH,KW,C,F) and dbias (F) accumulated */
static lunet_status conv2d_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                    bool need_dx) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  conv2d_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (!st->x) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  bool bias = lunet_layer_get_bool(l, "use_bias");
  lunet_tensor *dw = NULL, *db = NULL;
  if (!(dw = lunet_op_conv2d_backward_filter(ctx, dy, st->x, &st->d, bias ? &db : NULL))) goto fail;
  if (lunet_layer_accumulate_grad(l, KERNEL, dw) != LUNET_OK) goto fail;
  if (bias && lunet_layer_accumulate_grad(l, BIAS, db) != LUNET_OK) goto fail;
  if (need_dx &&
      !(*dx = lunet_op_conv2d_backward_data(ctx, dy, lunet_layer_weight(l, KERNEL), &st->d)))
    goto fail;
  lunet_tensor_release(dw);
  layers_release(db);
  layers_set(&st->x, NULL);
  return LUNET_OK;
fail:
  layers_release(dw);
  layers_release(db);
  return layers_failed(l);
}

static void conv2d_destroy(lunet_layer *l) {
  conv2d_state *st = lunet_layer_state(l);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test conv2d_tests[] = {
    {"2, 3", 3, {5, 5, 2}, 2, 2e-2f},
    {"3, 3, strides = 2, padding = \"same\"", 3, {5, 5, 2}, 2, 2e-2f},
    {"2, {2, 3}, strides = {1, 2}, use_bias = false", 3, {4, 5, 1}, 2, 2e-2f},
    {"4, 1", 3, {3, 3, 3}, 2, 2e-2f},
    {"2, 3, padding = \"same\"", 3, {4, 4, 3}, 1, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_conv2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Conv2D",
    .doc = "2-D convolution over (H, W, C) images: y = activation(conv(x, kernel) + bias)",
    .args = conv2d_args,
    .nargs = sizeof conv2d_args / sizeof conv2d_args[0],
    .positional = 4,
    .state_size = sizeof(conv2d_state),
    .build = conv2d_build,
    .forward = conv2d_forward,
    .backward = conv2d_backward,
    .destroy = conv2d_destroy,
    .tests = conv2d_tests,
    .ntests = sizeof conv2d_tests / sizeof conv2d_tests[0],
};
