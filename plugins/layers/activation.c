/* Activation: applies a named function elementwise (softmax: over the last
 * axis).  The layer applies it itself; the `activation` argument of Dense and
 * Conv2D is the core's business instead. */
#include <float.h>
#include <string.h>
#include "layers.h"

typedef enum act_kind {
  ACT_LINEAR,
  ACT_UNARY, /* one lunet_unary_op */
  ACT_SOFTMAX,
  ACT_LOG_SOFTMAX,
  ACT_ELU, /* x > 0 ? x : exp(x) - 1 */
  ACT_SILU /* x * sigmoid(x) */
} act_kind;

typedef struct act_fn {
  const char *name;
  act_kind kind;
  lunet_unary_op op;
  float alpha; /* leaky_relu's negative slope (Keras's default 0.2) */
} act_fn;

static const act_fn act_fns[] = {
    {"linear", ACT_LINEAR, 0, 0.0f},
    {"relu", ACT_UNARY, LUNET_UNARY_RELU, 0.0f},
    {"sigmoid", ACT_UNARY, LUNET_UNARY_SIGMOID, 0.0f},
    {"tanh", ACT_UNARY, LUNET_UNARY_TANH, 0.0f},
    {"gelu", ACT_UNARY, LUNET_UNARY_GELU, 0.0f},
    {"leaky_relu", ACT_UNARY, LUNET_UNARY_LEAKY_RELU, 0.2f},
    {"softmax", ACT_SOFTMAX, 0, 0.0f},
    {"log_softmax", ACT_LOG_SOFTMAX, 0, 0.0f},
    {"elu", ACT_ELU, 0, 0.0f},
    {"silu", ACT_SILU, 0, 0.0f},
    {"swish", ACT_SILU, 0, 0.0f},
};

typedef struct act_state {
  lunet_tensor *x, *y; /* input and output of the last forward */
  lunet_tensor *aux;   /* elu: exp(min(x, 0)), its derivative; silu: sigmoid(x) */
} act_state;

static const lunet_arg_schema act_args[] = {
    {"activation", LUNET_ARG_STRING, LUNET_ARG_REQUIRED, .doc = "the function to apply",
     .choices = "relu|sigmoid|tanh|softmax|log_softmax|gelu|leaky_relu|elu|silu|swish|linear"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const act_fn *act_lookup(const lunet_layer *l) {
  const char *name = lunet_layer_get_string(l, "activation");
  for (size_t i = 0; name && i < sizeof act_fns / sizeof act_fns[0]; i++)
    if (strcmp(act_fns[i].name, name) == 0) return &act_fns[i];
  return NULL;
}

/* The schema's choices already reject unknown names; this covers a core
 * that does not check them. */
static lunet_status act_unknown(lunet_layer *l) {
  const char *name = lunet_layer_get_string(l, "activation");
  return lunet_layer_error(l, LUNET_ERR_ARG, "unknown activation \"%s\" (expected one of %s)",
                           name ? name : "nil", act_args[0].choices);
}

static lunet_status act_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (!act_lookup(l)) return act_unknown(l);
  out[0] = in[0];
  return LUNET_OK;
}

/* forward/backward of a layer whose name build() refused (never, with a
 * core that builds before it calls). */
static lunet_status act_unknown_call(lunet_call *c) {
  return lunet_call_error(c, LUNET_ERR_ARG, "called with an unknown activation (not built?)");
}

/* elu(x) = relu(x) + (exp(min(x, 0)) - 1), the 1 taken off before the sum
 * so that x > 0 comes out exactly (x + 1 - 1 rounds small x); keeps
 * e = exp(min(x, 0)) = elu'(x). */
static lunet_tensor *elu_forward(lunet_ctx *ctx, const lunet_tensor *x, lunet_tensor **e) {
  lunet_tensor *neg = lunet_op_unary(ctx, LUNET_UNARY_CLIP, x, -FLT_MAX, 0.0f);
  lunet_tensor *r = NULL, *em1 = NULL, *y = NULL;
  if (neg && (*e = lunet_op_unary(ctx, LUNET_UNARY_EXP, neg, 0.0f, 0.0f)) &&
      (r = lunet_op_unary(ctx, LUNET_UNARY_RELU, x, 0.0f, 0.0f)) &&
      (em1 = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, *e, 1.0f, -1.0f)))
    y = lunet_op_binary(ctx, LUNET_BINARY_ADD, r, em1);
  layers_release(neg);
  layers_release(r);
  layers_release(em1);
  return y;
}

/* silu(x) = x * s with s = sigmoid(x), kept for backward. */
static lunet_tensor *silu_forward(lunet_ctx *ctx, const lunet_tensor *x, lunet_tensor **s) {
  if (!(*s = lunet_op_unary(ctx, LUNET_UNARY_SIGMOID, x, 0.0f, 0.0f))) return NULL;
  return lunet_op_binary(ctx, LUNET_BINARY_MUL, x, *s);
}

/* x (N, ...) -> y (N, ...) */
static lunet_status act_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *xs,
                                lunet_tensor **ys, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  act_state *st = lunet_call_state(c);
  const act_fn *fn = act_lookup(l);
  lunet_tensor *x = xs[0], **y = &ys[0], *aux = NULL;
  if (!fn) return act_unknown_call(c);
  switch (fn->kind) {
  case ACT_LINEAR:
    *y = layers_reshape_like(ctx, x, x);
    break;
  case ACT_UNARY:
    *y = lunet_op_unary(ctx, fn->op, x, fn->alpha, 0.0f);
    break;
  case ACT_SOFTMAX:
    *y = lunet_op_softmax(ctx, x, false);
    break;
  case ACT_LOG_SOFTMAX:
    *y = lunet_op_softmax(ctx, x, true);
    break;
  case ACT_ELU:
    *y = elu_forward(ctx, x, &aux);
    break;
  case ACT_SILU:
    *y = silu_forward(ctx, x, &aux);
    break;
  }
  if (!*y) {
    layers_release(aux);
    return layers_call_failed(c);
  }
  layers_set(&st->x, lunet_tensor_retain(x));
  layers_set(&st->y, lunet_tensor_retain(*y));
  layers_set(&st->aux, aux);
  return LUNET_OK;
}

/* silu'(x) = s + y * (1 - s); dx = dy * silu'(x) */
static lunet_tensor *silu_backward(lunet_ctx *ctx, const lunet_tensor *dy, const act_state *st) {
  lunet_tensor *om = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, st->aux, -1.0f, 1.0f);
  lunet_tensor *t = NULL, *d = NULL, *dx = NULL;
  if (om && (t = lunet_op_binary(ctx, LUNET_BINARY_MUL, st->y, om)) &&
      (d = lunet_op_binary(ctx, LUNET_BINARY_ADD, st->aux, t)))
    dx = lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, d);
  layers_release(om);
  layers_release(t);
  layers_release(d);
  return dx;
}

/* dy (N, ...) -> dx (N, ...) */
static lunet_tensor *act_dx(lunet_ctx *ctx, const act_fn *fn, lunet_tensor *dy,
                            const act_state *st) {
  switch (fn->kind) {
  case ACT_LINEAR:
    return layers_reshape_like(ctx, dy, dy);
  case ACT_UNARY:
    return lunet_op_unary_backward(ctx, fn->op, dy, st->x, st->y, fn->alpha, 0.0f);
  case ACT_SOFTMAX:
    return lunet_op_softmax_backward(ctx, dy, st->y, false);
  case ACT_LOG_SOFTMAX:
    return lunet_op_softmax_backward(ctx, dy, st->y, true);
  case ACT_ELU:
    return lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, st->aux);
  case ACT_SILU:
    return silu_backward(ctx, dy, st);
  }
  return NULL;
}

static lunet_status act_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                 lunet_tensor **dx) {
  act_state *st = lunet_call_state(c);
  const act_fn *fn = act_lookup(l);
  dx[0] = NULL;
  if (!fn) return act_unknown_call(c);
  if (!st->y) return layers_no_forward(c);
  if (lunet_call_needs_dx(c, 0) && !(dx[0] = act_dx(lunet_call_ctx(c), fn, dy[0], st)))
    return layers_call_failed(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  layers_set(&st->aux, NULL);
  return LUNET_OK;
}

static void act_release(lunet_layer *l, lunet_call *c) {
  act_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->y, NULL);
  layers_set(&st->aux, NULL);
}

static const lunet_layer_test act_tests[] = {
    {LAYERS_ARGS({"activation", {.s = "relu"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "sigmoid"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "tanh"}}), LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "softmax"}}), LAYERS_INPUTS({1, {5}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "softmax"}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "log_softmax"}}), LAYERS_INPUTS({1, {5}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "gelu"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "leaky_relu"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "elu"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "silu"}}), LAYERS_INPUTS({1, {7}}), 3, 1e-2f},
    {LAYERS_ARGS({"activation", {.s = "linear"}}), LAYERS_INPUTS({1, {4}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_activation = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Activation",
    .doc = "Applies an activation function: relu, sigmoid, tanh, softmax, gelu, ...",
    .args = act_args,
    .nargs = sizeof act_args / sizeof act_args[0],
    .positional = 1,
    .flags = LUNET_LAYER_OWNS_ACTIVATION | LUNET_LAYER_STEPWISE,
    .call_state_size = sizeof(act_state),
    .build = act_build,
    .forward = act_forward,
    .backward = act_backward,
    .release = act_release,
    .tests = act_tests,
    .ntests = sizeof act_tests / sizeof act_tests[0],
};
