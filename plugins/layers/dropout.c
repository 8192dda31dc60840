/* Dropout: in training, zeroes each value with probability `rate` and scales
 * the rest by 1/(1-rate) (Keras's inverted dropout); identity in inference. */
#include "layers.h"

typedef struct dropout_state {
  lunet_tensor *mask; /* shape of x: 0 or 1/(1-rate); NULL after an identity forward */
} dropout_state;

static const lunet_arg_schema dropout_args[] = {
    {"rate", LUNET_ARG_FLOAT, NULL, "fraction of the inputs to drop, in [0, 1)", NULL},
    {"seed", LUNET_ARG_INT, "nil",
     "accepted for Keras compatibility; masks come from the context's RNG (lunet.seed)", NULL},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status dropout_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                  int64_t *out) {
  double rate = lunet_layer_get_float(l, "rate");
  if (!(rate >= 0.0 && rate < 1.0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "rate must be in [0, 1), got %g", rate);
  *out_ndim = in_ndim;
  for (int i = 0; i < in_ndim; i++) out[i] = in[i];
  return LUNET_OK;
}

/* x (N, ...) -> y (N, ...) = x * mask, or a view of x */
static lunet_status dropout_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y,
                                    bool training) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  dropout_state *st = lunet_layer_state(l);
  float rate = (float)lunet_layer_get_float(l, "rate");
  layers_set(&st->mask, NULL);
  if (!training || rate == 0.0f) {
    /* A view rather than x itself: the caller gets an object of its own. */
    if (!(*y = layers_reshape_like(ctx, x, x))) return layers_failed(l);
    return LUNET_OK;
  }
  lunet_tensor *mask = lunet_op_dropout_mask(ctx, x, rate);
  if (!mask || !(*y = lunet_op_binary(ctx, LUNET_BINARY_MUL, x, mask))) {
    layers_release(mask);
    return layers_failed(l);
  }
  st->mask = mask;
  return LUNET_OK;
}

/* dy (N, ...) -> dx = dy * mask, or a view of dy */
static lunet_status dropout_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                     bool need_dx) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  dropout_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (need_dx) {
    *dx = st->mask ? lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, st->mask)
                   : layers_reshape_like(ctx, dy, dy);
    if (!*dx) return layers_failed(l);
  }
  layers_set(&st->mask, NULL);
  return LUNET_OK;
}

static void dropout_destroy(lunet_layer *l) {
  dropout_state *st = lunet_layer_state(l);
  layers_set(&st->mask, NULL);
}

/* The gradient check needs the same mask at every evaluation: the core's
 * checker runs these in inference mode or reseeds the context each time. */
static const lunet_layer_test dropout_tests[] = {
    {"0.5", 1, {10}, 4, 1e-2f},
    {"0.25", 3, {2, 2, 3}, 2, 1e-2f},
    {"0", 1, {6}, 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_dropout = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Dropout",
    .doc = "Randomly zeroes a fraction `rate` of the inputs in training, scaling the rest",
    .args = dropout_args,
    .nargs = sizeof dropout_args / sizeof dropout_args[0],
    .positional = 1,
    .state_size = sizeof(dropout_state),
    .build = dropout_build,
    .forward = dropout_forward,
    .backward = dropout_backward,
    .destroy = dropout_destroy,
    .tests = dropout_tests,
    .ntests = sizeof dropout_tests / sizeof dropout_tests[0],
};
