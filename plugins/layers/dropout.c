/* Dropout: in training, zeroes each value with probability `rate` and scales
 * the rest by 1/(1-rate) (Keras's inverted dropout); identity in inference. */
#include "layers.h"

typedef struct dropout_state {
  lunet_tensor *mask; /* shape of x: 0 or 1/(1-rate); NULL after an identity forward */
} dropout_state;

static const lunet_arg_schema dropout_args[] = {
    {"rate", LUNET_ARG_FLOAT, LUNET_ARG_REQUIRED,
     .doc = "fraction of the inputs to drop, in [0, 1)"},
    {"seed", LUNET_ARG_INT, LUNET_ARG_NIL,
     .doc = "accepted for Keras compatibility; masks come from the context's RNG (lunet.seed)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status dropout_build(lunet_layer *l, int nin, const lunet_shape *in,
                                  lunet_shape *out) {
  double rate = lunet_layer_get_float(l, "rate");
  if (!(rate >= 0.0 && rate < 1.0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "rate must be in [0, 1), got %g", rate);
  out[0] = in[0];
  return LUNET_OK;
}

/* x (N, ...) -> y (N, ...) = x * mask, or a view of x */
static lunet_status dropout_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dropout_state *st = lunet_call_state(c);
  float rate = (float)lunet_layer_get_float(l, "rate");
  layers_set(&st->mask, NULL);
  if (!training || rate == 0.0f) {
    /* A view rather than x itself: the caller gets an object of its own. */
    if (!(y[0] = layers_reshape_like(ctx, x[0], x[0]))) return layers_call_failed(c);
    return LUNET_OK;
  }
  lunet_tensor *mask = lunet_op_dropout_mask(ctx, x[0], rate);
  if (!mask || !(y[0] = lunet_op_binary(ctx, LUNET_BINARY_MUL, x[0], mask))) {
    layers_release(mask);
    return layers_call_failed(c);
  }
  st->mask = mask;
  return LUNET_OK;
}

/* dy (N, ...) -> dx = dy * mask, or a view of dy */
static lunet_status dropout_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dropout_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (lunet_call_needs_dx(c, 0)) {
    dx[0] = st->mask ? lunet_op_binary(ctx, LUNET_BINARY_MUL, dy[0], st->mask)
                     : layers_reshape_like(ctx, dy[0], dy[0]);
    if (!dx[0]) return layers_call_failed(c);
  }
  layers_set(&st->mask, NULL);
  return LUNET_OK;
}

static void dropout_release(lunet_layer *l, lunet_call *c) {
  dropout_state *st = lunet_call_state(c);
  layers_set(&st->mask, NULL);
}

/* The gradient check needs the same mask at every evaluation: the core's
 * checker runs these in inference mode or reseeds the context each time. */
static const lunet_layer_test dropout_tests[] = {
    {LAYERS_ARGS({"rate", {.f = 0.5}}), LAYERS_INPUTS({1, {10}}), 4, 1e-2f},
    {LAYERS_ARGS({"rate", {.f = 0.25}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"rate", {.f = 0}}), LAYERS_INPUTS({1, {6}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_dropout = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Dropout",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Randomly zeroes a fraction `rate` of the inputs in training, scaling the rest",
    .args = dropout_args,
    .nargs = sizeof dropout_args / sizeof dropout_args[0],
    .positional = 1,
    .call_state_size = sizeof(dropout_state),
    .build = dropout_build,
    .forward = dropout_forward,
    .backward = dropout_backward,
    .release = dropout_release,
    .tests = dropout_tests,
    .ntests = sizeof dropout_tests / sizeof dropout_tests[0],
};
