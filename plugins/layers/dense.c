/* Dense: y = x @ kernel + bias over the last axis of an input of any rank. */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct dense_state {
  lunet_tensor *x; /* (N, ..., in), kept for the kernel gradient */
} dense_state;

static const lunet_arg_schema dense_args[] = {
    {"units", LUNET_ARG_INT, NULL, "number of output features (the last axis)", NULL},
    {"activation", LUNET_ARG_STRING, "nil",
     "activation applied to the output (\"relu\", \"softmax\", ...); nil: linear", NULL},
    {"use_bias", LUNET_ARG_BOOL, "true", "add a learned bias vector", NULL},
    {"kernel_initializer", LUNET_ARG_STRING, "\"glorot_uniform\"",
     "initializer of the kernel (in, units)", LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, "\"zeros\"", "initializer of the bias (units)",
     LAYERS_INITIALIZERS},
    {"kernel_regularizer", LUNET_ARG_REGULARIZER, "nil",
     "penalty on the kernel added to the loss (nn.regularizers.l2(1e-4))", NULL},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status dense_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                int64_t *out) {
  int64_t units = lunet_layer_get_int(l, "units");
  if (units <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "units must be positive, got %lld",
                             (long long)units);
  if (in_ndim < 1) return layers_rank_error(l, "1 or more (..., features)", in_ndim, in);
  int64_t kshape[2] = {in[in_ndim - 1], units};
  const char *kinit = layers_initializer(l, "kernel_initializer", "glorot_uniform");
  if (lunet_layer_add_weight(l, "kernel", 2, kshape, kinit, true) < 0) return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &units,
                             layers_initializer(l, "bias_initializer", "zeros"), true) < 0)
    return layers_failed(l);
  *out_ndim = in_ndim;
  for (int i = 0; i < in_ndim - 1; i++) out[i] = in[i];
  out[in_ndim - 1] = units;
  return LUNET_OK;
}

/* x (N, ..., in), kernel (in, units), bias (units) -> y (N, ..., units) */
static lunet_status dense_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y,
                                  bool training) {
  (void)training;
  lunet_ctx *ctx = lunet_layer_ctx(l);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  if (lunet_tensor_dim(x, -1) != lunet_tensor_dim(w, 0))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "expects %lld input features (last axis), got %lld",
                             (long long)lunet_tensor_dim(w, 0), (long long)lunet_tensor_dim(x, -1));
  lunet_tensor *x2 = NULL, *y2 = NULL, *yb = NULL;
  if (!(x2 = layers_as_2d(ctx, x))) goto fail;
  if (!(y2 = lunet_op_matmul(ctx, x2, w, false, false))) goto fail;
  if (lunet_layer_get_bool(l, "use_bias")) {
    if (!(yb = lunet_op_binary(ctx, LUNET_BINARY_ADD, y2, lunet_layer_weight(l, BIAS)))) goto fail;
    layers_set(&y2, yb);
  }
  int64_t shape[LUNET_MAX_DIMS];
  int nd = lunet_tensor_ndim(x);
  for (int i = 0; i < nd; i++) shape[i] = lunet_tensor_dim(x, i);
  shape[nd - 1] = lunet_tensor_dim(w, 1);
  if (!(*y = lunet_op_reshape(ctx, y2, nd, shape))) goto fail;
  lunet_tensor_release(x2);
  lunet_tensor_release(y2);
  dense_state *st = lunet_layer_state(l);
  layers_set(&st->x, lunet_tensor_retain(x));
  return LUNET_OK;
fail:
  layers_release(x2);
  layers_release(y2);
  return layers_failed(l);
}

/* Weight gradients from x2 (M, in), dy2 (M, units): dW = x2^T dy2, db = sum dy2. */
static lunet_status dense_weight_grads(lunet_layer *l, lunet_tensor *x2, lunet_tensor *dy2) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  lunet_tensor *dw = lunet_op_matmul(ctx, x2, dy2, true, false);
  if (!dw || lunet_layer_accumulate_grad(l, KERNEL, dw) != LUNET_OK) goto fail;
  lunet_tensor_release(dw);
  if (!lunet_layer_get_bool(l, "use_bias")) return LUNET_OK;
  lunet_tensor *db = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, dy2, 0, false);
  lunet_status s = db ? lunet_layer_accumulate_grad(l, BIAS, db) : lunet_ctx_status(ctx);
  layers_release(db);
  return s == LUNET_OK ? LUNET_OK : layers_failed(l);
fail:
  layers_release(dw);
  return layers_failed(l);
}

/* dy (N, ..., units) -> dx (N, ..., in) = dy @ kernel^T */
static lunet_status dense_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                   bool need_dx) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  dense_state *st = lunet_layer_state(l);
  if (!st->x) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  lunet_tensor *x2 = NULL, *dy2 = NULL, *dx2 = NULL;
  *dx = NULL;
  if (!(x2 = layers_as_2d(ctx, st->x)) || !(dy2 = layers_as_2d(ctx, dy))) goto fail;
  if (dense_weight_grads(l, x2, dy2) != LUNET_OK) goto fail;
  if (need_dx) {
    dx2 = lunet_op_matmul(ctx, dy2, lunet_layer_weight(l, KERNEL), false, true);
    if (!dx2 || !(*dx = layers_reshape_like(ctx, dx2, st->x))) goto fail;
  }
  layers_release(dx2);
  lunet_tensor_release(x2);
  lunet_tensor_release(dy2);
  layers_set(&st->x, NULL);
  return LUNET_OK;
fail:
  layers_release(x2);
  layers_release(dy2);
  layers_release(dx2);
  return layers_failed(l);
}

static void dense_destroy(lunet_layer *l) {
  dense_state *st = lunet_layer_state(l);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test dense_tests[] = {
    {"3", 1, {5}, 2, 1e-2f},
    {"4, use_bias = false", 1, {6}, 3, 1e-2f},
    {"2", 2, {3, 4}, 2, 1e-2f}, /* rank-2 samples: applies to the last axis */
    {"3, \"tanh\"", 1, {4}, 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_dense = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Dense",
    .doc = "Fully connected layer: y = activation(x @ kernel + bias) on the last axis",
    .args = dense_args,
    .nargs = sizeof dense_args / sizeof dense_args[0],
    .positional = 6,
    .state_size = sizeof(dense_state),
    .build = dense_build,
    .forward = dense_forward,
    .backward = dense_backward,
    .destroy = dense_destroy,
    .tests = dense_tests,
    .ntests = sizeof dense_tests / sizeof dense_tests[0],
};
