/*
 * An out-of-tree lunet layer plugin: one layer type, Scale.
 *
 *   y = x * scale + bias, with scale and bias (C) learned per channel of the
 *   last axis (a per-channel affine: what BatchNormalization does after
 *   normalizing, on its own).
 *
 * Everything here goes through the installed headers lunet/plugin.h and
 * lunet/ops.h: forward and backward are written with lunet_op_* tensor
 * primitives, so the layer runs on every backend lunet has.
 */
#include "lunet/lunet.h"
#include "lunet/plugin.h"

enum { SCALE = 0, BIAS = 1 }; /* weight indices, in lunet_layer_add_weight order */

/* Per-instance state (zeroed by the core): what backward needs. */
typedef struct scale_state {
  lunet_tensor *x; /* (N, ..., C) of the last forward */
} scale_state;

static const lunet_arg_schema scale_args[] = {
    {"use_bias", LUNET_ARG_BOOL, "true", "add a learned bias per channel", NULL},
    {"scale_initializer", LUNET_ARG_STRING, "\"ones\"", "initializer of scale (C)",
     "ones|zeros|glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal"},
    {"bias_initializer", LUNET_ARG_STRING, "\"zeros\"", "initializer of bias (C)",
     "zeros|ones|glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal"},
    /* Declared so users may pass them; the core handles both. */
    {"input_shape", LUNET_ARG_SHAPE, "nil", "shape of one sample (first layer only)", NULL},
    {"name", LUNET_ARG_STRING, "nil", "the layer's name in summary()", NULL},
};

static void release(lunet_tensor *t) {
  if (t) lunet_tensor_release(t);
}

/* A string argument, or `dflt` when the user passed nil. */
static const char *string_or(const lunet_layer *l, const char *arg, const char *dflt) {
  const char *s = lunet_layer_get_string(l, arg);
  return s ? s : dflt;
}

/* The status to return after an op failed: the op has set the message. */
static lunet_status failed(lunet_layer *l) {
  lunet_status s = lunet_ctx_status(lunet_layer_ctx(l));
  return s != LUNET_OK ? s : lunet_layer_error(l, LUNET_ERR_DEVICE, "an op failed");
}

/* in: one sample (..., C); the output has the same shape. */
static lunet_status scale_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                int64_t *out) {
  if (in_ndim < 1) return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects input of rank >= 1");
  const int64_t *c = &in[in_ndim - 1];
  if (lunet_layer_add_weight(l, "scale", 1, c, string_or(l, "scale_initializer", "ones"), true) < 0)
    return failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, c, string_or(l, "bias_initializer", "zeros"), true) < 0)
    return failed(l);
  *out_ndim = in_ndim;
  for (int i = 0; i < in_ndim; i++) out[i] = in[i];
  return LUNET_OK;
}

/* x (N, ..., C), scale (C), bias (C) -> y (N, ..., C); the ops broadcast (C). */
static lunet_status scale_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y,
                                  bool training) {
  (void)training;
  lunet_ctx *ctx = lunet_layer_ctx(l);
  scale_state *st = lunet_layer_state(l);
  lunet_tensor *xs = lunet_op_binary(ctx, LUNET_BINARY_MUL, x, lunet_layer_weight(l, SCALE));
  if (!xs) return failed(l);
  if (lunet_layer_get_bool(l, "use_bias")) {
    *y = lunet_op_binary(ctx, LUNET_BINARY_ADD, xs, lunet_layer_weight(l, BIAS));
    lunet_tensor_release(xs);
    if (!*y) return failed(l);
  } else {
    *y = xs;
  }
  /* Keep x for the scale gradient, dropping what the last forward kept. */
  release(st->x);
  st->x = lunet_tensor_retain(x);
  return LUNET_OK;
}

/* dscale = sum(dy * x), dbias = sum(dy), summed down to (C). */
static lunet_status scale_weight_grads(lunet_layer *l, lunet_tensor *dy, lunet_tensor *x) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  int64_t c = lunet_tensor_dim(x, -1);
  lunet_tensor *p = lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, x), *ds = NULL, *db = NULL;
  lunet_status s = LUNET_ERR_DEVICE;
  if (p && (ds = lunet_op_sum_to(ctx, p, 1, &c)) &&
      lunet_layer_accumulate_grad(l, SCALE, ds) == LUNET_OK) {
    s = LUNET_OK;
    if (lunet_layer_get_bool(l, "use_bias"))
      s = (db = lunet_op_sum_to(ctx, dy, 1, &c)) ? lunet_layer_accumulate_grad(l, BIAS, db)
                                                 : LUNET_ERR_DEVICE;
  }
  release(p);
  release(ds);
  release(db);
  return s == LUNET_OK ? LUNET_OK : failed(l);
}

/* dy (N, ..., C) -> dx (N, ..., C) = dy * scale */
static lunet_status scale_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                   bool need_dx) {
  scale_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (!st->x) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  if (scale_weight_grads(l, dy, st->x) != LUNET_OK) return failed(l);
  if (need_dx && !(*dx = lunet_op_binary(lunet_layer_ctx(l), LUNET_BINARY_MUL, dy,
                                         lunet_layer_weight(l, SCALE))))
    return failed(l);
  release(st->x);
  st->x = NULL;
  return LUNET_OK;
}

static void scale_destroy(lunet_layer *l) {
  scale_state *st = lunet_layer_state(l);
  release(st->x);
  st->x = NULL;
}

/* Cases for lunet.check_plugin("example"): args, one sample's shape, batch,
 * relative tolerance of the finite-difference gradient check. */
static const lunet_layer_test scale_tests[] = {
    {"", 1, {5}, 3, 1e-2f},
    {"use_bias = false", 3, {2, 3, 4}, 2, 1e-2f},
};

static const lunet_layer_type scale_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Scale",
    .doc = "Per-channel affine: y = x * scale + bias over the last axis",
    .args = scale_args,
    .nargs = sizeof scale_args / sizeof scale_args[0],
    .positional = 1,
    .state_size = sizeof(scale_state),
    .build = scale_build,
    .forward = scale_forward,
    .backward = scale_backward,
    .destroy = scale_destroy,
    .tests = scale_tests,
    .ntests = sizeof scale_tests / sizeof scale_tests[0],
};

static const lunet_layer_type *const types[] = {&scale_type};

static const lunet_plugin_desc plugin = {
    .abi_major = LUNET_PLUGIN_ABI_MAJOR,
    .abi_minor = LUNET_PLUGIN_ABI_MINOR,
    .struct_size = sizeof(lunet_plugin_desc),
    .name = "example",
    .version = "1.0.0",
    .types = types,
    .ntypes = 1,
};

/* The one exported symbol (build with -fvisibility=hidden: nothing else is). */
__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
  return &plugin;
}
