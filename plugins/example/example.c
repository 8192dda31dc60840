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

/* Per-call state (zeroed by the core for each forward): what backward needs.
 * It lives in the call record, never in the layer, so one layer can run on
 * several threads at once. */
typedef struct scale_state {
  lunet_tensor *x; /* (N, ..., C) of this call's forward */
} scale_state;

/* Defaults are typed C values; the core fills them before build() runs. */
static const lunet_arg_schema scale_args[] = {
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add a learned bias per channel"},
    {"scale_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "ones"},
     .doc = "initializer of scale (C)",
     .choices = "ones|zeros|glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal"},
    {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of bias (C)",
     .choices = "zeros|ones|glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal"},
    /* Declared so users may pass them; the core handles both. */
    {"input_shape", LUNET_ARG_SHAPE, LUNET_ARG_NIL,
     .doc = "shape of one sample (first layer only)"},
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, .doc = "the layer's name in summary()"},
};

static void release(lunet_tensor *t) {
  if (t) lunet_tensor_release(t);
}

/* A string argument, or `dflt` when the user passed nil explicitly. */
static const char *string_or(const lunet_layer *l, const char *arg, const char *dflt) {
  return lunet_layer_arg_is_set(l, arg) ? lunet_layer_get_string(l, arg) : dflt;
}

/* The status to return after an op failed in build(): the op has set the
 * message. */
static lunet_status build_failed(lunet_layer *l) {
  lunet_status s = lunet_ctx_status(lunet_layer_ctx(l));
  return s != LUNET_OK ? s : lunet_layer_error(l, LUNET_ERR_DEVICE, "an op failed");
}

/* The same in forward() or backward(), which run in the call's context. */
static lunet_status call_failed(lunet_call *c) {
  lunet_status s = lunet_ctx_status(lunet_call_ctx(c));
  return s != LUNET_OK ? s : lunet_call_error(c, LUNET_ERR_DEVICE, "an op failed");
}

/* in[0]: one sample (..., C); the output has the same shape. */
static lunet_status scale_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  (void)nin; /* the core passes exactly one input: min_inputs and max_inputs are 1 */
  if (in[0].ndim < 1) return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects input of rank >= 1");
  const int64_t *c = &in[0].dims[in[0].ndim - 1];
  if (lunet_layer_add_weight(l, "scale", 1, c, string_or(l, "scale_initializer", "ones"), true) < 0)
    return build_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, c, string_or(l, "bias_initializer", "zeros"), true) < 0)
    return build_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

/* x[0] (N, ..., C), scale (C), bias (C) -> y[0] (N, ..., C); the ops broadcast (C). */
static lunet_status scale_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                  lunet_tensor **y, bool training) {
  (void)nin;
  (void)training;
  lunet_ctx *ctx = lunet_call_ctx(c);
  scale_state *st = lunet_call_state(c);
  lunet_tensor *xs = lunet_op_binary(ctx, LUNET_BINARY_MUL, x[0], lunet_layer_weight(l, SCALE));
  if (!xs) return call_failed(c);
  if (lunet_layer_get_bool(l, "use_bias")) {
    y[0] = lunet_op_binary(ctx, LUNET_BINARY_ADD, xs, lunet_layer_weight(l, BIAS));
    lunet_tensor_release(xs);
    if (!y[0]) return call_failed(c);
  } else {
    y[0] = xs;
  }
  /* Keep x for the scale gradient, dropping what an earlier forward kept
   * (a caller may reuse one call record for several forwards). */
  release(st->x);
  st->x = lunet_tensor_retain(x[0]);
  return LUNET_OK;
}

/* dscale = sum(dy * x), dbias = sum(dy), summed down to (C). */
static lunet_status scale_weight_grads(lunet_layer *l, lunet_call *c, lunet_tensor *dy,
                                       lunet_tensor *x) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t ch = lunet_tensor_dim(x, -1);
  lunet_tensor *p = lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, x), *ds = NULL, *db = NULL;
  lunet_status s = LUNET_ERR_DEVICE;
  if (p && (ds = lunet_op_sum_to(ctx, p, 1, &ch)) &&
      lunet_call_accumulate_grad(c, SCALE, ds) == LUNET_OK) {
    s = LUNET_OK;
    if (lunet_layer_get_bool(l, "use_bias"))
      s = (db = lunet_op_sum_to(ctx, dy, 1, &ch)) ? lunet_call_accumulate_grad(c, BIAS, db)
                                                  : LUNET_ERR_DEVICE;
  }
  release(p);
  release(ds);
  release(db);
  return s == LUNET_OK ? LUNET_OK : call_failed(c);
}

/* dy[0] (N, ..., C) -> dx[0] (N, ..., C) = dy * scale */
static lunet_status scale_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                   lunet_tensor **dx) {
  scale_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return lunet_call_error(c, LUNET_ERR_ARG, "backward called before forward");
  if (scale_weight_grads(l, c, dy[0], st->x) != LUNET_OK) return call_failed(c);
  /* Skip dx when x needs no gradient (the first layer's input, say). */
  if (lunet_call_needs_dx(c, 0) && !(dx[0] = lunet_op_binary(lunet_call_ctx(c), LUNET_BINARY_MUL,
                                                             dy[0], lunet_layer_weight(l, SCALE))))
    return call_failed(c);
  release(st->x);
  st->x = NULL;
  return LUNET_OK;
}

/* Releases what the call's state holds once the core is done with it. */
static void scale_release(lunet_layer *l, lunet_call *c) {
  (void)l;
  scale_state *st = lunet_call_state(c);
  release(st->x);
  st->x = NULL;
}

/* Cases for nn.check_plugin("Scale"): typed arguments, one sample's shape
 * per input, the batch, and the relative tolerance of the finite-difference
 * gradient check. */
static const lunet_arg_setting no_bias[] = {{"use_bias", {.b = false}}};
static const lunet_shape vector5[] = {{1, {5}}};
static const lunet_shape tensor234[] = {{3, {2, 3, 4}}};

static const lunet_layer_test scale_tests[] = {
    /* args, nargs, ninputs, inputs, batch, tolerance */
    {NULL, 0, 1, vector5, 3, 1e-2f},
    {no_bias, 1, 1, tensor234, 2, 1e-2f},
};

static const lunet_layer_type scale_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Scale",
    .doc = "Per-channel affine: y = x * scale + bias over the last axis",
    .args = scale_args,
    .nargs = sizeof scale_args / sizeof scale_args[0],
    .positional = 1,
    .min_inputs = 1,
    .max_inputs = 1,
    .noutputs = 1,
    .call_state_size = sizeof(scale_state),
    .build = scale_build,
    .forward = scale_forward,
    .backward = scale_backward,
    .release = scale_release,
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
