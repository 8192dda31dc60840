/* Dense: y = x @ kernel + bias over the last axis of an input of any rank. */
#include "layers.h"

enum { KERNEL = 0, BIAS = 1 };

typedef struct dense_state {
  lunet_tensor *x; /* (N, ..., in), kept for the kernel gradient */
  lunet_tensor *y; /* (N, ..., units): the output, for a ReLU its linear op ran */
} dense_state;

static const lunet_arg_schema dense_args[] = {
    {"units", LUNET_ARG_INT, LUNET_ARG_REQUIRED,
     .doc = "number of output features (the last axis)"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL,
     .doc = "activation applied to the output (\"relu\", \"softmax\", ...); nil: linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add a learned bias vector"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (in, units)", .choices = LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of the bias (units)", .choices = LAYERS_INITIALIZERS},
    {"kernel_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL,
     .doc = "penalty on the kernel added to the loss (nn.regularizers.l2(1e-4))"},
    LAYERS_ARG_BIAS_REGULARIZER,
    LAYERS_ARG_ACTIVITY_REGULARIZER,
    LAYERS_ARG_CONSTRAINT("kernel"),
    LAYERS_ARG_CONSTRAINT("bias"),
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status dense_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t units = lunet_layer_get_int(l, "units");
  if (units <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "units must be positive, got %lld",
                             (long long)units);
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more (..., features)", &in[0]);
  int64_t kshape[2] = {in[0].dims[in[0].ndim - 1], units};
  const char *kinit = layers_initializer(l, "kernel_initializer", "glorot_uniform");
  if (lunet_layer_add_weight(l, "kernel", 2, kshape, kinit, true) < 0) return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &units,
                             layers_initializer(l, "bias_initializer", "zeros"), true) < 0)
    return layers_failed(l);
  out[0] = in[0];
  out[0].dims[in[0].ndim - 1] = units;
  return LUNET_OK;
}

/* x (N, ..., in), kernel (in, units), bias (units) -> y (N, ..., units) */
static lunet_status dense_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                  lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *w = lunet_layer_weight(l, KERNEL);
  if (lunet_tensor_dim(x[0], -1) != lunet_tensor_dim(w, 0))
    return lunet_call_error(c, LUNET_ERR_SHAPE, "expects %lld input features (last axis), got %lld",
                            (long long)lunet_tensor_dim(w, 0),
                            (long long)lunet_tensor_dim(x[0], -1));
  lunet_tensor *x2 = NULL, *y2 = NULL;
  if (!(x2 = layers_as_2d(ctx, x[0]))) goto fail;
  /* the bias (and a "relu" activation, LUNET_LAYER_FUSES_RELU) in the product's epilogue */
  if (!(y2 = lunet_op_linear(ctx, x2, w, lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, BIAS) : NULL)))
    goto fail;
  int64_t shape[LUNET_MAX_DIMS];
  int nd = lunet_tensor_ndim(x[0]);
  for (int i = 0; i < nd; i++) shape[i] = lunet_tensor_dim(x[0], i);
  shape[nd - 1] = lunet_tensor_dim(w, 1);
  if (!(y[0] = lunet_op_reshape(ctx, y2, nd, shape))) goto fail;
  lunet_tensor_release(x2);
  lunet_tensor_release(y2);
  dense_state *st = lunet_call_state(c);
  layers_set(&st->x, lunet_tensor_retain(x[0]));
  layers_set(&st->y, lunet_tensor_retain(y[0]));
  return LUNET_OK;
fail:
  layers_release(x2);
  layers_release(y2);
  return layers_call_failed(c);
}

/* Weight gradients from x2 (M, in), dy2 (M, units): dW = x2^T dy2, db = sum dy2. */
static lunet_status dense_weight_grads(lunet_layer *l, lunet_call *c, lunet_tensor *x2,
                                       lunet_tensor *dy2) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *dw = lunet_op_matmul(ctx, x2, dy2, true, false);
  if (!dw || lunet_call_accumulate_grad(c, KERNEL, dw) != LUNET_OK) goto fail;
  lunet_tensor_release(dw);
  if (!lunet_layer_get_bool(l, "use_bias")) return LUNET_OK;
  lunet_tensor *db = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, dy2, 0, false);
  lunet_status s = db ? lunet_call_accumulate_grad(c, BIAS, db) : lunet_ctx_status(ctx);
  layers_release(db);
  return s == LUNET_OK ? LUNET_OK : layers_call_failed(c);
fail:
  layers_release(dw);
  return layers_call_failed(c);
}

/* dy (N, ..., units) -> dx (N, ..., in) = dy @ kernel^T */
static lunet_status dense_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                   lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dense_state *st = lunet_call_state(c);
  if (!st->x) return layers_no_forward(c);
  lunet_tensor *x2 = NULL, *dy2 = NULL, *dx2 = NULL, *g = NULL;
  dx[0] = NULL;
  /* the ReLU's gradient first when the forward's linear op ran it */
  if (!(g = lunet_op_relu_grad(ctx, dy[0], st->y))) goto fail;
  if (!(x2 = layers_as_2d(ctx, st->x)) || !(dy2 = layers_as_2d(ctx, g))) goto fail;
  layers_set(&g, NULL);
  if (dense_weight_grads(l, c, x2, dy2) != LUNET_OK) goto fail;
  if (lunet_call_needs_dx(c, 0)) {
    /* the whole input gradient: the ReLU that made the input may run in its epilogue */
    dx2 = lunet_op_matmul_dx(ctx, dy2, lunet_layer_weight(l, KERNEL), false, true);
    if (!dx2 || !(dx[0] = layers_reshape_like(ctx, dx2, st->x))) goto fail;
  }
  layers_release(dx2);
  lunet_tensor_release(x2);
  lunet_tensor_release(dy2);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  return LUNET_OK;
fail:
  layers_release(g);
  layers_release(x2);
  layers_release(dy2);
  layers_release(dx2);
  return layers_call_failed(c);
}

static void dense_release(lunet_layer *l, lunet_call *c) {
  dense_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
}

static const lunet_layer_test dense_tests[] = {
    {LAYERS_ARGS({"units", {.i = 3}}), LAYERS_INPUTS({1, {5}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 4}}, {"use_bias", {.b = false}}), LAYERS_INPUTS({1, {6}}), 3,
     1e-2f},
    /* rank-2 samples: applies to the last axis */
    {LAYERS_ARGS({"units", {.i = 2}}), LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"activation", {.s = "tanh"}}), LAYERS_INPUTS({1, {4}}), 2,
     1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"activation", {.s = "elu"}}), LAYERS_INPUTS({1, {4}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"activation", {.s = "silu"}}), LAYERS_INPUTS({1, {4}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 4}}, {"activation", {.s = "log_softmax"}}), LAYERS_INPUTS({1, {3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_dense = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Dense",
    .flags = LUNET_LAYER_STEPWISE | LUNET_LAYER_FUSES_RELU,
    .doc = "Fully connected layer: y = activation(x @ kernel + bias) on the last axis",
    .args = dense_args,
    .nargs = sizeof dense_args / sizeof dense_args[0],
    .positional = 6,
    .call_state_size = sizeof(dense_state),
    .build = dense_build,
    .forward = dense_forward,
    .backward = dense_backward,
    .release = dense_release,
    .tests = dense_tests,
    .ntests = sizeof dense_tests / sizeof dense_tests[0],
};
