/* Dropout: in training, zeroes each value with probability `rate` and scales
 * the rest by 1/(1-rate) (Keras's inverted dropout); identity in inference.
 * GaussianNoise and GaussianDropout at the end. */
#include <math.h>
#include <stdlib.h>

#include "layers.h"
#include "lunet/backend.h"

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

/* ---- GaussianNoise and GaussianDropout (Keras): in training, x + N(0,
 * stddev^2) noise, or x times 1 + N(0, rate / (1 - rate)) noise; identity
 * in inference.  The normal draws come from the context's RNG (lunet.seed),
 * Box-Muller on Philox pairs, made on the host and uploaded to x's device. */

/* n standard normal floats on x's backend, shaped as x. */
static lunet_tensor *normal_like(lunet_ctx *ctx, const lunet_tensor *x, float scale, float shift) {
  int64_t n = lunet_tensor_numel(x);
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!v) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory for %lld noise values", (long long)n);
    return NULL;
  }
  uint64_t seed = lunet_seed_get(ctx), c = lunet_rng_take(ctx, (uint64_t)n * 2);
  for (int64_t i = 0; i < n; i++) {
    double u1 = lunet_philox_uniform(seed, c + 2 * (uint64_t)i), u2 = lunet_philox_uniform(seed, c + 2 * (uint64_t)i + 1);
    v[i] = shift + scale * (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
  }
  lunet_tensor *t = lunet_tensor_from_data_on(ctx, lunet_tensor_backend(x), LUNET_F32, lunet_tensor_ndim(x),
                                              lunet_tensor_shape(x), v);
  free(v);
  return t;
}

static lunet_status noise_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  bool drop = lunet_layer_arg_is_set(l, "rate");
  double v = lunet_layer_get_float(l, drop ? "rate" : "stddev");
  if (drop ? !(v >= 0 && v < 1) : !(v >= 0 && isfinite(v)))
    return lunet_layer_error(l, LUNET_ERR_ARG, drop ? "rate must be in [0, 1), got %g" : "stddev must be >= 0, got %g", v);
  out[0] = in[0];
  return LUNET_OK;
}

/* GaussianNoise adds the noise (its mask stays NULL: the gradient passes);
 * GaussianDropout multiplies by it and keeps it for backward. */
static lunet_status noise_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                  bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dropout_state *st = lunet_call_state(c);
  layers_set(&st->mask, NULL);
  bool drop = lunet_layer_arg_is_set(l, "rate");
  double v = lunet_layer_get_float(l, drop ? "rate" : "stddev");
  if (!training || v == 0) {
    if (!(y[0] = layers_reshape_like(ctx, x[0], x[0]))) return layers_call_failed(c);
    return LUNET_OK;
  }
  lunet_tensor *noise = drop ? normal_like(ctx, x[0], (float)sqrt(v / (1 - v)), 1.0f) : normal_like(ctx, x[0], (float)v, 0.0f);
  y[0] = noise ? lunet_op_binary(ctx, drop ? LUNET_BINARY_MUL : LUNET_BINARY_ADD, x[0], noise) : NULL;
  if (drop && y[0])
    st->mask = noise;
  else
    layers_release(noise);
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

static const lunet_arg_schema gaussian_noise_args[] = {
    {"stddev", LUNET_ARG_FLOAT, LUNET_ARG_REQUIRED, .doc = "the standard deviation of the added noise"},
    {"seed", LUNET_ARG_INT, LUNET_ARG_NIL, .doc = "accepted for Keras compatibility; draws come from lunet.seed"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema gaussian_dropout_args[] = {
    {"rate", LUNET_ARG_FLOAT, LUNET_ARG_REQUIRED,
     .doc = "the drop probability of the equivalent Dropout: noise variance rate / (1 - rate)"},
    {"seed", LUNET_ARG_INT, LUNET_ARG_NIL, .doc = "accepted for Keras compatibility; draws come from lunet.seed"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* In inference mode the checker sees the identity; with stddev 0 (rate 0)
 * the training path too. */
static const lunet_layer_test gaussian_noise_tests[] = {
    {LAYERS_ARGS({"stddev", {.f = 0.5}}), LAYERS_INPUTS({1, {6}}), 3, 1e-2f},
    {LAYERS_ARGS({"stddev", {.f = 0}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
};
static const lunet_layer_test gaussian_dropout_tests[] = {
    {LAYERS_ARGS({"rate", {.f = 0.3}}), LAYERS_INPUTS({1, {6}}), 3, 1e-2f},
    {LAYERS_ARGS({"rate", {.f = 0}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_gaussian_noise = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GaussianNoise",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Adds zero-mean Gaussian noise of standard deviation `stddev` in training",
    .args = gaussian_noise_args,
    .nargs = sizeof gaussian_noise_args / sizeof gaussian_noise_args[0],
    .positional = 1,
    .call_state_size = sizeof(dropout_state),
    .build = noise_build,
    .forward = noise_forward,
    .backward = dropout_backward,
    .release = dropout_release,
    .tests = gaussian_noise_tests,
    .ntests = sizeof gaussian_noise_tests / sizeof gaussian_noise_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_gaussian_dropout = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GaussianDropout",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Multiplies by 1-centred Gaussian noise of variance rate / (1 - rate) in training",
    .args = gaussian_dropout_args,
    .nargs = sizeof gaussian_dropout_args / sizeof gaussian_dropout_args[0],
    .positional = 1,
    .call_state_size = sizeof(dropout_state),
    .build = noise_build,
    .forward = noise_forward,
    .backward = dropout_backward,
    .release = dropout_release,
    .tests = gaussian_dropout_tests,
    .ntests = sizeof gaussian_dropout_tests / sizeof gaussian_dropout_tests[0],
};

/* ---- ActivityRegularization (Keras): the identity, whose output the core
 * penalizes with l1 * sum|y| + l2 * sum(y^2) (LUNET_LAYER_ACTIVITY_L1L2). */

static const lunet_arg_schema activity_args[] = {
    {"l1", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "factor of sum |y|"},
    {"l2", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "factor of sum y^2"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status activity_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  double a = lunet_layer_get_float(l, "l1"), b = lunet_layer_get_float(l, "l2");
  if (!(a >= 0 && b >= 0 && isfinite(a) && isfinite(b)))
    return lunet_layer_error(l, LUNET_ERR_ARG, "l1 and l2 must be >= 0, got %g and %g", a, b);
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status activity_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                     bool training) {
  return (y[0] = layers_reshape_like(lunet_call_ctx(c), x[0], x[0])) ? LUNET_OK : layers_call_failed(c);
}

static lunet_status activity_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  return (dx[0] = layers_reshape_like(lunet_call_ctx(c), dy[0], dy[0])) ? LUNET_OK : layers_call_failed(c);
}

static const lunet_layer_test activity_tests[] = {
    {LAYERS_ARGS({"l1", {.f = 0.1}}, {"l2", {.f = 0.2}}), LAYERS_INPUTS({2, {2, 3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_activity_regularization = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "ActivityRegularization",
    .flags = LUNET_LAYER_STEPWISE | LUNET_LAYER_ACTIVITY_L1L2,
    .doc = "The identity; l1 * sum|y| + l2 * sum(y^2) of its output joins the loss",
    .args = activity_args,
    .nargs = sizeof activity_args / sizeof activity_args[0],
    .positional = 2, /* Keras's ActivityRegularization(l1, l2) */
    .build = activity_build,
    .forward = activity_forward,
    .backward = activity_backward,
    .tests = activity_tests,
    .ntests = sizeof activity_tests / sizeof activity_tests[0],
};
