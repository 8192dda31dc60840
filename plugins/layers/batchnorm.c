/* BatchNormalization over the last axis (channels of NHWC images, features
 * of vectors), Keras's semantics: batch statistics in training with the
 * moving ones updated by `momentum`, moving statistics in inference. */
#include <string.h>
#include "layers.h"

/* Keras's get_weights() order. */
enum { GAMMA = 0, BETA = 1, MOVING_MEAN = 2, MOVING_VAR = 3 };

typedef struct bn_state {
  lunet_tensor *x;          /* (N, ..., C) of the last forward */
  lunet_batchnorm_state bn; /* save_mean/save_invstd (C) owned here, reused */
  bool training;            /* the mode of the last forward */
} bn_state;

static const lunet_arg_schema bn_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = -1},
     .doc = "the channel axis; only the last (-1) is supported"},
    {"momentum", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0.99},
     .doc = "moving = moving * momentum + batch * (1 - momentum)"},
    {"epsilon", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0.001},
     .doc = "added to the variance before the square root"},
    {"center", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "learn the offset beta"},
    {"scale", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "learn the factor gamma"},
    {"beta_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of beta (C)", .choices = LAYERS_INITIALIZERS},
    {"gamma_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "ones"},
     .doc = "initializer of gamma (C)", .choices = LAYERS_INITIALIZERS},
    {"moving_mean_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of moving_mean (C)", .choices = LAYERS_INITIALIZERS},
    {"moving_variance_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "ones"},
     .doc = "initializer of moving_variance (C)", .choices = LAYERS_INITIALIZERS},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status bn_check_args(lunet_layer *l, int in_ndim) {
  int64_t axis = lunet_layer_get_int(l, "axis");
  double momentum = lunet_layer_get_float(l, "momentum");
  double epsilon = lunet_layer_get_float(l, "epsilon");
  /* Keras counts the batch axis: axis = 3 is the last axis of (N, H, W, C). */
  if (axis != -1 && axis != in_ndim)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "axis must be -1 (the last axis, channels), got %lld; other axes "
                             "are not supported",
                             (long long)axis);
  if (!(momentum >= 0.0 && momentum <= 1.0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "momentum must be in [0, 1], got %g", momentum);
  if (!(epsilon > 0.0))
    return lunet_layer_error(l, LUNET_ERR_ARG, "epsilon must be positive, got %g", epsilon);
  return LUNET_OK;
}

static lunet_status bn_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more (..., C)", &in[0]);
  lunet_status s = bn_check_args(l, in[0].ndim);
  if (s != LUNET_OK) return s;
  bool scale = lunet_layer_get_bool(l, "scale"), center = lunet_layer_get_bool(l, "center");
  const int64_t *c = &in[0].dims[in[0].ndim - 1];
  /* Without scale/center, gamma/beta stay at 1/0 and out of training. */
  const char *gi = scale ? layers_initializer(l, "gamma_initializer", "ones") : "ones";
  const char *bi = center ? layers_initializer(l, "beta_initializer", "zeros") : "zeros";
  if (lunet_layer_add_weight(l, "gamma", 1, c, gi, scale) < 0 ||
      lunet_layer_add_weight(l, "beta", 1, c, bi, center) < 0 ||
      lunet_layer_add_weight(l, "moving_mean", 1, c,
                             layers_initializer(l, "moving_mean_initializer", "zeros"),
                             false) < 0 ||
      lunet_layer_add_weight(l, "moving_variance", 1, c,
                             layers_initializer(l, "moving_variance_initializer", "ones"),
                             false) < 0)
    return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

/* Makes save_mean/save_invstd (C) exist on x's backend, reusing the ones a
 * kept call record already holds. */
static lunet_status bn_stats(lunet_call *c, const lunet_tensor *x, lunet_batchnorm_state *bn) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t ch = lunet_tensor_dim(x, -1);
  if (bn->save_mean && bn->save_invstd && lunet_tensor_dim(bn->save_mean, 0) == ch &&
      strcmp(lunet_tensor_backend(bn->save_mean), lunet_tensor_backend(x)) == 0)
    return LUNET_OK;
  layers_set(&bn->save_mean, lunet_op_new(ctx, x, LUNET_F32, 1, &ch));
  layers_set(&bn->save_invstd, lunet_op_new(ctx, x, LUNET_F32, 1, &ch));
  return bn->save_mean && bn->save_invstd ? LUNET_OK : layers_call_failed(c);
}

/* x (N, ..., C), gamma/beta (C) -> y (N, ..., C) */
static lunet_status bn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **y, bool training) {
  bn_state *st = lunet_call_state(c);
  if (training && bn_stats(c, x[0], &st->bn) != LUNET_OK) return layers_call_failed(c);
  st->bn.running_mean = lunet_layer_weight(l, MOVING_MEAN);
  st->bn.running_var = lunet_layer_weight(l, MOVING_VAR);
  st->bn.momentum = (float)lunet_layer_get_float(l, "momentum");
  st->bn.epsilon = (float)lunet_layer_get_float(l, "epsilon");
  y[0] = lunet_op_batchnorm(lunet_call_ctx(c), x[0], lunet_layer_weight(l, GAMMA),
                            lunet_layer_weight(l, BETA), &st->bn, training);
  if (!y[0]) return layers_call_failed(c);
  layers_set(&st->x, lunet_tensor_retain(x[0]));
  st->training = training;
  return LUNET_OK;
}

/* Accumulates dgamma/dbeta (C) into the trainable ones; takes both references. */
static lunet_status bn_weight_grads(lunet_layer *l, lunet_call *c, lunet_tensor *dgamma,
                                    lunet_tensor *dbeta) {
  lunet_status s = LUNET_OK;
  if (lunet_layer_get_bool(l, "scale")) s = lunet_call_accumulate_grad(c, GAMMA, dgamma);
  if (s == LUNET_OK && lunet_layer_get_bool(l, "center"))
    s = lunet_call_accumulate_grad(c, BETA, dbeta);
  layers_release(dgamma);
  layers_release(dbeta);
  return s == LUNET_OK ? LUNET_OK : layers_call_failed(c);
}

/* After a training forward: the op's own backward through batch statistics. */
static lunet_tensor *bn_dx_training(lunet_layer *l, lunet_call *c, lunet_tensor *dy,
                                    lunet_tensor **dgamma, lunet_tensor **dbeta) {
  bn_state *st = lunet_call_state(c);
  return lunet_op_batchnorm_backward(lunet_call_ctx(c), dy, st->x, lunet_layer_weight(l, GAMMA),
                                     &st->bn, dgamma, dbeta);
}

/* After an inference forward the statistics are constants:
 * invstd = 1/sqrt(var + eps), dx = dy * gamma * invstd,
 * dgamma = sum(dy * (x - mean) * invstd), dbeta = sum(dy), sums over all but C. */
static lunet_tensor *bn_dx_inference(lunet_layer *l, lunet_call *c, lunet_tensor *dy,
                                     lunet_tensor **dgamma, lunet_tensor **dbeta) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  bn_state *st = lunet_call_state(c);
  int64_t ch = lunet_tensor_dim(st->x, -1);
  lunet_tensor *v = NULL, *sd = NULL, *inv = NULL, *g = NULL, *xc = NULL, *xh = NULL, *p = NULL,
               *dx = NULL;
  if ((v = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, st->bn.running_var, 1.0f, st->bn.epsilon)) &&
      (sd = lunet_op_unary(ctx, LUNET_UNARY_SQRT, v, 0.0f, 0.0f)) &&
      (inv = lunet_op_unary(ctx, LUNET_UNARY_RECIP, sd, 0.0f, 0.0f)) &&
      (g = lunet_op_binary(ctx, LUNET_BINARY_MUL, lunet_layer_weight(l, GAMMA), inv)) &&
      (xc = lunet_op_binary(ctx, LUNET_BINARY_SUB, st->x, st->bn.running_mean)) &&
      (xh = lunet_op_binary(ctx, LUNET_BINARY_MUL, xc, inv)) &&
      (p = lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, xh)) &&
      (*dgamma = lunet_op_sum_to(ctx, p, 1, &ch)) && (*dbeta = lunet_op_sum_to(ctx, dy, 1, &ch)))
    dx = lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, g);
  lunet_tensor *tmp[] = {v, sd, inv, g, xc, xh, p};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) layers_release(tmp[i]);
  return dx;
}

/* dy (N, ..., C) -> dx (N, ..., C); dgamma, dbeta (C) */
static lunet_status bn_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                lunet_tensor **dx) {
  bn_state *st = lunet_call_state(c);
  lunet_tensor *dgamma = NULL, *dbeta = NULL, *d;
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  d = st->training ? bn_dx_training(l, c, dy[0], &dgamma, &dbeta)
                   : bn_dx_inference(l, c, dy[0], &dgamma, &dbeta);
  if (!d) {
    layers_release(dgamma);
    layers_release(dbeta);
    return layers_call_failed(c);
  }
  if (bn_weight_grads(l, c, dgamma, dbeta) != LUNET_OK) {
    lunet_tensor_release(d);
    return layers_call_failed(c);
  }
  if (lunet_call_needs_dx(c, 0))
    dx[0] = d;
  else
    lunet_tensor_release(d);
  layers_set(&st->x, NULL);
  return LUNET_OK;
}

static void bn_release(lunet_layer *l, lunet_call *c) {
  bn_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->bn.save_mean, NULL);
  layers_set(&st->bn.save_invstd, NULL);
}

static const lunet_layer_test bn_tests[] = {
    {NULL, 0, LAYERS_INPUTS({1, {6}}), 4, 5e-2f},
    {NULL, 0, LAYERS_INPUTS({3, {3, 3, 2}}), 2, 5e-2f},
    {LAYERS_ARGS({"momentum", {.f = 0.9}}, {"epsilon", {.f = 0.01}}, {"center", {.b = false}}),
     LAYERS_INPUTS({1, {4}}), 5, 5e-2f},
    {LAYERS_ARGS({"scale", {.b = false}}), LAYERS_INPUTS({2, {2, 3}}), 3, 5e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_batch_normalization = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "BatchNormalization",
    .doc = "Normalizes each channel (last axis) by batch statistics, then scales and shifts",
    .args = bn_args,
    .nargs = sizeof bn_args / sizeof bn_args[0],
    .positional = 9,
    .flags = LUNET_LAYER_FROZEN_INFERENCE,
    .call_state_size = sizeof(bn_state),
    .build = bn_build,
    .forward = bn_forward,
    .backward = bn_backward,
    .release = bn_release,
    .tests = bn_tests,
    .ntests = sizeof bn_tests / sizeof bn_tests[0],
};
