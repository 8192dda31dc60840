/* BatchNormalization over the last axis (channels of NHWC images, features
 * of vectors), Keras's semantics: batch statistics in training with the
 * moving ones updated by `momentum`, moving statistics in inference.
 *
 * With a padding mask in training (a sequence after Embedding{mask_zero}
 * or Masking), Keras 3's weighted moments: the statistics are those of the
 * valid positions only,
 *   mean = sum(m x) / (sum(m) + 1e-7),  var = sum(m (m x - mean)^2) / (sum(m) + 1e-7),
 * every position normalized by them; that path is built from tape ops
 * (layers_graph), so its gradient is the graph's, on every backend.
 *
 * The weights in Keras's get_weights() order: gamma (only with scale =
 * true), beta (only with center = true), moving_mean, moving_variance; a
 * switched-off gamma or beta is a constant 1 or 0. */
#include <string.h>
#include "layers.h"

/* The indices of gamma and beta (-1: absent) and of the moving statistics. */
typedef struct bn_weights {
  int gamma, beta, mean, var;
} bn_weights;

static bn_weights bn_weight_indices(lunet_layer *l) {
  bn_weights w;
  w.mean = layers_norm_affine(l, &w.gamma, &w.beta);
  w.var = w.mean + 1;
  return w;
}

typedef struct bn_state {
  layers_graph g;           /* the masked path's graph (first: layers_graph_* read it) */
  lunet_tensor *x;          /* (N, ..., C) of the last forward */
  lunet_tensor *gamma;      /* gamma of the last forward (ones when scale is off) */
  lunet_tensor *one, *zero; /* the constant gamma and beta of a switched-off scale or center, kept */
  lunet_batchnorm_state bn; /* save_mean/save_invstd (C) owned here, reused */
  bool training;            /* the mode of the last forward */
  bool masked;              /* the last forward took the masked path */
} bn_state;

/* Keras's backend epsilon, added to the count of valid positions. */
#define BN_COUNT_EPSILON 1e-7f

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
  const int64_t *c = &in[0].dims[in[0].ndim - 1];
  bn_weights w = bn_weight_indices(l);
  if ((w.gamma >= 0 && lunet_layer_add_weight(l, "gamma", 1, c, layers_initializer(l, "gamma_initializer", "ones"),
                                              true) < 0) ||
      (w.beta >= 0 && lunet_layer_add_weight(l, "beta", 1, c, layers_initializer(l, "beta_initializer", "zeros"),
                                             true) < 0) ||
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

/* The call's mask as (M, 1) float32 weights for x viewed as (M, C): the
 * mask must have x's shape without its last axis.  NULL with the error set. */
static lunet_tensor *bn_mask_weights(lunet_call *c, lunet_tensor *x, lunet_tensor *mask, int64_t m) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int nd = lunet_tensor_ndim(x);
  bool fits = lunet_tensor_ndim(mask) == nd - 1;
  for (int i = 0; fits && i < nd - 1; i++) fits = lunet_tensor_dim(mask, i) == lunet_tensor_dim(x, i);
  if (!fits) {
    char a[64], b[64];
    lunet_call_error(c, LUNET_ERR_SHAPE, "a mask of shape %s for input %s: it must be the input's shape without its last axis",
                     lunet_shape_str(lunet_tensor_ndim(mask), lunet_tensor_shape(mask), a, sizeof a),
                     lunet_shape_str(nd, lunet_tensor_shape(x), b, sizeof b));
    return NULL;
  }
  int64_t shape[2] = {m, 1};
  lunet_tensor *mf = layers_as_f32(ctx, mask);
  lunet_tensor *w = mf ? lunet_op_reshape(ctx, mf, 2, shape) : NULL;
  layers_release(mf);
  if (!w) layers_call_failed(c);
  return w;
}

/* moving = moving * momentum + batch * (1 - momentum), in place, off the tape. */
static lunet_status bn_move(lunet_ctx *ctx, lunet_tensor *moving, lunet_tensor *batch, float momentum) {
  int64_t ch = lunet_tensor_numel(moving), start = 0, step = 1;
  lunet_tensor *a = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, moving, momentum, 0.0f);
  lunet_tensor *b = a ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, batch, 1.0f - momentum, 0.0f) : NULL;
  lunet_tensor *sum = b ? lunet_op_binary(ctx, LUNET_BINARY_ADD, a, b) : NULL;
  lunet_status s = sum ? lunet_op_assign_slice(ctx, moving, &start, &ch, &step, sum) : lunet_ctx_status(ctx);
  layers_release(a);
  layers_release(b);
  layers_release(sum);
  return s;
}

/* Training with a mask: Keras 3's weighted moments on the tape. */
static lunet_status bn_forward_masked(lunet_layer *l, lunet_call *c, bn_state *st, lunet_tensor *x,
                                      lunet_tensor *mask, lunet_tensor **y) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t ch = lunet_tensor_dim(x, -1), m = ch ? lunet_tensor_numel(x) / ch : 0, flat[2] = {m, ch};
  lunet_tensor *w = bn_mask_weights(c, x, mask, m);
  if (!w) return lunet_ctx_status(ctx);
  bn_weights iw = bn_weight_indices(l);
  lunet_status s = layers_graph_begin(c, l, &st->g, x, iw.mean);
  if (s) {
    layers_release(w);
    return s;
  }
  float eps = (float)lunet_layer_get_float(l, "epsilon"), momentum = (float)lunet_layer_get_float(l, "momentum");
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *wsum = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, w, LUNET_ALL_AXES, false);
  lunet_tensor *count = wsum ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, wsum, 1.0f, BN_COUNT_EPSILON) : NULL;
  lunet_set_grad_enabled(ctx, prev);
  enum { XF, XW, SUM, MEAN, DIFF, SQ, WSQ, SSQ, VAR, VE, SD, INV, XC, XN, SC, SH, NT };
  lunet_tensor *t[NT] = {0};
  bool ok = count && (t[XF] = lunet_reshape(ctx, st->g.x[0], 2, flat)) && (t[XW] = lunet_mul(ctx, t[XF], w)) &&
            (t[SUM] = lunet_reduce(ctx, LUNET_REDUCE_SUM, t[XW], 0, true)) &&
            (t[MEAN] = lunet_div(ctx, t[SUM], count)) && (t[DIFF] = lunet_sub(ctx, t[XW], t[MEAN])) &&
            (t[SQ] = lunet_mul(ctx, t[DIFF], t[DIFF])) && (t[WSQ] = lunet_mul(ctx, t[SQ], w)) &&
            (t[SSQ] = lunet_reduce(ctx, LUNET_REDUCE_SUM, t[WSQ], 0, true)) &&
            (t[VAR] = lunet_div(ctx, t[SSQ], count)) &&
            (t[VE] = lunet_unary(ctx, LUNET_UNARY_AFFINE, t[VAR], 1.0f, eps)) &&
            (t[SD] = lunet_unary(ctx, LUNET_UNARY_SQRT, t[VE], 0.0f, 0.0f)) &&
            (t[INV] = lunet_unary(ctx, LUNET_UNARY_RECIP, t[SD], 0.0f, 0.0f)) &&
            (t[XC] = lunet_sub(ctx, t[XF], t[MEAN])) && (t[XN] = lunet_mul(ctx, t[XC], t[INV])) &&
            (iw.gamma < 0 || (t[SC] = lunet_mul(ctx, t[XN], st->g.w[iw.gamma]))) &&
            (iw.beta < 0 || (t[SH] = lunet_add(ctx, t[SC] ? t[SC] : t[XN], st->g.w[iw.beta])));
  lunet_tensor *last = t[SH] ? t[SH] : t[SC] ? t[SC] : t[XN];
  lunet_tensor *out = ok ? lunet_reshape(ctx, last, lunet_tensor_ndim(x), lunet_tensor_shape(x)) : NULL;
  /* the moving statistics follow the batch's (weighted) ones */
  if (out) {
    prev = lunet_set_grad_enabled(ctx, false);
    if (bn_move(ctx, lunet_layer_weight(l, iw.mean), t[MEAN], momentum) ||
        bn_move(ctx, lunet_layer_weight(l, iw.var), t[VAR], momentum))
      layers_set(&out, NULL);
    lunet_set_grad_enabled(ctx, prev);
  }
  for (int i = 0; i < NT; i++) layers_release(t[i]);
  layers_release(w);
  layers_release(wsum);
  layers_release(count);
  st->masked = true;
  return layers_graph_end(c, &st->g, out, y);
}

/* x (N, ..., C), gamma/beta (C) -> y (N, ..., C) */
static lunet_status bn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **y, bool training) {
  bn_state *st = lunet_call_state(c);
  layers_graph_release(&st->g);
  st->masked = false;
  lunet_tensor *mask = training ? lunet_call_mask(c, 0) : NULL;
  if (mask) return bn_forward_masked(l, c, st, x[0], mask, y);
  if (training && bn_stats(c, x[0], &st->bn) != LUNET_OK) return layers_call_failed(c);
  bn_weights w = bn_weight_indices(l);
  int64_t ch = lunet_tensor_dim(x[0], -1);
  st->bn.running_mean = lunet_layer_weight(l, w.mean);
  st->bn.running_var = lunet_layer_weight(l, w.var);
  st->bn.momentum = (float)lunet_layer_get_float(l, "momentum");
  st->bn.epsilon = (float)lunet_layer_get_float(l, "epsilon");
  lunet_tensor *gamma = w.gamma >= 0 ? lunet_layer_weight(l, w.gamma) : layers_constant(c, &st->one, x[0], ch, 1.0f);
  lunet_tensor *beta = w.beta >= 0 ? lunet_layer_weight(l, w.beta) : layers_constant(c, &st->zero, x[0], ch, 0.0f);
  layers_set(&st->gamma, gamma ? lunet_tensor_retain(gamma) : NULL);
  y[0] = gamma && beta ? lunet_op_batchnorm(lunet_call_ctx(c), x[0], gamma, beta, &st->bn, training) : NULL;
  if (!y[0]) return layers_call_failed(c);
  layers_set(&st->x, lunet_tensor_retain(x[0]));
  st->training = training;
  return LUNET_OK;
}

/* Accumulates dgamma/dbeta (C) into the trainable ones; takes both references. */
static lunet_status bn_weight_grads(lunet_layer *l, lunet_call *c, lunet_tensor *dgamma,
                                    lunet_tensor *dbeta) {
  lunet_status s = LUNET_OK;
  bn_weights w = bn_weight_indices(l);
  if (w.gamma >= 0) s = lunet_call_accumulate_grad(c, w.gamma, dgamma);
  if (s == LUNET_OK && w.beta >= 0) s = lunet_call_accumulate_grad(c, w.beta, dbeta);
  layers_release(dgamma);
  layers_release(dbeta);
  return s == LUNET_OK ? LUNET_OK : layers_call_failed(c);
}

/* After a training forward: the op's own backward through batch statistics. */
static lunet_tensor *bn_dx_training(lunet_layer *l, lunet_call *c, lunet_tensor *dy,
                                    lunet_tensor **dgamma, lunet_tensor **dbeta) {
  bn_state *st = lunet_call_state(c);
  return lunet_op_batchnorm_backward(lunet_call_ctx(c), dy, st->x, st->gamma, &st->bn, dgamma, dbeta);
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
      (g = lunet_op_binary(ctx, LUNET_BINARY_MUL, st->gamma, inv)) &&
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
  if (st->masked) return layers_graph_backward(c, &st->g, dy, dx);
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
  layers_graph_release(&st->g);
  layers_set(&st->x, NULL);
  layers_set(&st->gamma, NULL);
  layers_set(&st->one, NULL);
  layers_set(&st->zero, NULL);
  layers_set(&st->bn.save_mean, NULL);
  layers_set(&st->bn.save_invstd, NULL);
}

static const lunet_layer_test bn_tests[] = {
    {NULL, 0, LAYERS_INPUTS({1, {6}}), 4, 5e-2f},
    {NULL, 0, LAYERS_INPUTS({3, {3, 3, 2}}), 2, 5e-2f},
    {LAYERS_ARGS({"momentum", {.f = 0.9}}, {"epsilon", {.f = 0.01}}, {"center", {.b = false}}),
     LAYERS_INPUTS({1, {4}}), 5, 5e-2f},
    {LAYERS_ARGS({"scale", {.b = false}}), LAYERS_INPUTS({2, {2, 3}}), 3, 5e-2f},
    {LAYERS_ARGS({"scale", {.b = false}}, {"center", {.b = false}}), LAYERS_INPUTS({1, {4}}), 5, 5e-2f},
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
