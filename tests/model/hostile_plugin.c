/* A test plugin that breaks its contract with the core in every way we
 * could think of, one layer type per fault.  Each must end as an error that
 * names the layer and this plugin, never as a crash, a silently wrong
 * gradient or a leak (hostile_plugin.lua runs them, also under the
 * sanitizers).  All take one input of one sample axis (d) and build out = in
 * unless their fault is in build. */
#include <math.h>
#include <string.h>

#include "lunet/ops.h"
#include "lunet/plugin.h"

static lunet_status same_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status copy_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  *y = lunet_op_copy(lunet_call_ctx(c), x[0]);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

static lunet_status pass_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = lunet_op_copy(lunet_call_ctx(c), dy[0]);
  return dx[0] ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

/* build: an error with a message, one without, and outputs no tensor could hold */
static lunet_status refusing_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  return lunet_layer_error(l, LUNET_ERR_ARG, "refuses to build, as a test");
}
static lunet_status silent_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  return LUNET_ERR_SHAPE;
}
static lunet_status huge_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = (lunet_shape){3, {INT64_C(1) << 30, INT64_C(1) << 30, INT64_C(1) << 30}};
  return LUNET_OK;
}
static lunet_status negative_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = (lunet_shape){1, {-3}};
  return LUNET_OK;
}
static lunet_status many_dims_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0].ndim = 99;
  return LUNET_OK;
}
static lunet_status bad_weight_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t shape[1] = {-5};
  if (lunet_layer_add_weight(l, "w", 1, shape, "zeros", true) < 0) return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = in[0];
  return LUNET_OK;
}

/* forward: a wrong shape, no output, an error without a message */
static lunet_status wide_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  lunet_tensor *parts[2] = {x[0], x[0]};
  *y = lunet_op_concat(lunet_call_ctx(c), parts, 2, 1);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}
static lunet_status int_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training) {
  *y = lunet_op_cast(lunet_call_ctx(c), x[0], LUNET_I32);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}
static lunet_status null_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  return LUNET_OK;
}
static lunet_status silent_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                   bool training) {
  return LUNET_ERR_ARG;
}

/* backward: no gradient where one is needed, a gradient of the wrong shape,
 * an error without a message, a weight gradient of the wrong shape */
static lunet_status null_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  return LUNET_OK;
}
static lunet_status wide_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  lunet_tensor *parts[2] = {dy[0], dy[0]};
  dx[0] = lunet_op_concat(lunet_call_ctx(c), parts, 2, 1);
  return dx[0] ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}
static lunet_status silent_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  return LUNET_ERR_ARG;
}
static lunet_status weight_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t shape[1] = {in[0].dims[0]};
  if (lunet_layer_add_weight(l, "w", 1, shape, "ones", true) < 0) return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = in[0];
  return LUNET_OK;
}
static lunet_status weight_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                   bool training) {
  *y = lunet_op_binary(lunet_call_ctx(c), LUNET_BINARY_MUL, x[0], lunet_layer_weight(l, 0));
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}
static lunet_status bad_weight_grad_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                             lunet_tensor **dx) {
  lunet_status s = pass_backward(l, c, dy, dx);
  if (s) return s;
  return lunet_call_accumulate_grad(c, 0, dy[0]); /* (N, d) for a weight of (d) */
}

/* Gradients that are wrong, though of the right shape, for nn.check_plugin
 * to find: y = k * x * w, w of a sample's shape, "ones"; the state keeps x. */
typedef struct keep_x {
  lunet_tensor *x;
} keep_x;

static lunet_tensor *full_like(lunet_ctx *ctx, const lunet_tensor *t, float v) {
  lunet_tensor *out = lunet_op_empty_like(ctx, t);
  if (out && lunet_op_fill(ctx, out, v)) {
    lunet_tensor_release(out);
    out = NULL;
  }
  return out;
}

static lunet_status grid_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (lunet_layer_add_weight(l, "w", in[0].ndim, in[0].dims, "ones", true) < 0)
    return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status scaled_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                   bool training, float k) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  keep_x *st = lunet_call_state(c);
  lunet_tensor *xw = lunet_op_binary(ctx, LUNET_BINARY_MUL, x[0], lunet_layer_weight(l, 0));
  lunet_tensor *kt = xw ? full_like(ctx, xw, k) : NULL;
  *y = kt ? lunet_op_binary(ctx, LUNET_BINARY_MUL, xw, kt) : NULL;
  lunet_tensor_release(xw);
  lunet_tensor_release(kt);
  lunet_tensor_release(st->x);
  st->x = lunet_tensor_retain(x[0]);
  return *y ? LUNET_OK : lunet_ctx_status(ctx);
}
static lunet_status grid_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  return scaled_forward(l, c, nin, x, y, training, 1.0f);
}
static lunet_status small_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                  bool training) {
  return scaled_forward(l, c, nin, x, y, training, 0.003f);
}

/* dx = k dy w; dw = `wrong`(k sum_n dy x) */
static lunet_status scaled_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx,
                                    float k, lunet_tensor *(*wrong)(lunet_ctx *, lunet_tensor *)) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  keep_x *st = lunet_call_state(c);
  lunet_tensor *kt = full_like(ctx, dy[0], k);
  lunet_tensor *kdy = kt ? lunet_op_binary(ctx, LUNET_BINARY_MUL, dy[0], kt) : NULL;
  lunet_tensor *p = kdy ? lunet_op_binary(ctx, LUNET_BINARY_MUL, kdy, st->x) : NULL;
  lunet_tensor *dw = p ? lunet_op_reduce(ctx, LUNET_REDUCE_SUM, p, 0, false) : NULL;
  lunet_tensor *bad = dw ? wrong(ctx, dw) : NULL;
  lunet_status s = bad ? lunet_call_accumulate_grad(c, 0, bad) : lunet_ctx_status(ctx);
  if (!s && !(dx[0] = lunet_op_binary(ctx, LUNET_BINARY_MUL, kdy, lunet_layer_weight(l, 0)))) s = lunet_ctx_status(ctx);
  lunet_tensor_release(kt);
  lunet_tensor_release(kdy);
  lunet_tensor_release(p);
  lunet_tensor_release(dw);
  lunet_tensor_release(bad);
  return s;
}
/* g with g[0:rows, c0:c1] set to v */
static lunet_tensor *with_block(lunet_ctx *ctx, lunet_tensor *g, int64_t rows, int64_t c0, int64_t c1, float v) {
  int64_t start[2] = {0, c0}, stop[2] = {rows, c1}, step[2] = {1, 1};
  lunet_tensor *block = lunet_op_slice(ctx, g, start, stop, step);
  lunet_tensor *out = block ? lunet_op_copy(ctx, g) : NULL;
  if (out && (lunet_op_fill(ctx, block, v) || lunet_op_assign_slice(ctx, out, start, stop, step, block))) {
    lunet_tensor_release(out);
    out = NULL;
  }
  lunet_tensor_release(block);
  return out;
}
static lunet_tensor *nan_at_0(lunet_ctx *ctx, lunet_tensor *g) { return with_block(ctx, g, 1, 0, 1, NAN); }
static lunet_tensor *column_5_zero(lunet_ctx *ctx, lunet_tensor *g) {
  return with_block(ctx, g, lunet_tensor_dim(g, 0), 5, 6, 0.0f);
}
static lunet_tensor *doubled(lunet_ctx *ctx, lunet_tensor *g) { return lunet_op_binary(ctx, LUNET_BINARY_ADD, g, g); }
static lunet_tensor *as_is(lunet_ctx *ctx, lunet_tensor *g) { return lunet_op_copy(ctx, g); }
static lunet_status nan_grad_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  return scaled_backward(l, c, dy, dx, 1.0f, nan_at_0);
}
static lunet_status small_doubled_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                           lunet_tensor **dx) {
  return scaled_backward(l, c, dy, dx, 0.003f, doubled);
}
static lunet_status column_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  return scaled_backward(l, c, dy, dx, 1.0f, column_5_zero);
}
static lunet_status honest_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  return scaled_backward(l, c, dy, dx, 1.0f, as_is);
}
static void keep_x_release(lunet_layer *l, lunet_call *c) {
  keep_x *st = lunet_call_state(c);
  lunet_tensor_release(st->x);
  st->x = NULL;
}

/* One shipped test case each, so nn.check_plugin meets every fault too. */
static const lunet_shape test_input = {1, {3}};
static const lunet_layer_test tests[] = {{NULL, 0, 1, &test_input, 2, 1e-2f}};

static const lunet_arg_schema args[] = {
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name", NULL},
};

#define TYPE_OF(NAME, DOC, BUILD, FORWARD, BACKWARD, STATE_SIZE, RELEASE, TESTS)                                   \
  static const lunet_layer_type NAME##_type = {.struct_size = sizeof(lunet_layer_type),                           \
                                               .name = #NAME,                                                     \
                                               .doc = DOC,                                                        \
                                               .args = args,                                                      \
                                               .nargs = 1,                                                        \
                                               .call_state_size = STATE_SIZE,                                     \
                                               .build = BUILD,                                                    \
                                               .forward = FORWARD,                                                \
                                               .backward = BACKWARD,                                              \
                                               .release = RELEASE,                                                \
                                               .tests = TESTS,                                                    \
                                               .ntests = 1};
#define TYPE(NAME, DOC, BUILD, FORWARD, BACKWARD) TYPE_OF(NAME, DOC, BUILD, FORWARD, BACKWARD, 0, NULL, tests)

TYPE(RefusingBuild, "build fails with a message", refusing_build, copy_forward, pass_backward)
TYPE(SilentBuild, "build fails without a message", silent_build, copy_forward, pass_backward)
TYPE(HugeOutput, "build declares 2^90 elements per sample", huge_build, copy_forward, pass_backward)
TYPE(NegativeOutput, "build declares a negative size", negative_build, copy_forward, pass_backward)
TYPE(ManyDims, "build declares 99 dimensions", many_dims_build, copy_forward, pass_backward)
TYPE(BadWeight, "build declares a weight of negative size", bad_weight_build, copy_forward, pass_backward)
TYPE(WideForward, "forward returns twice the declared width", same_build, wide_forward, pass_backward)
TYPE(IntForward, "forward returns int32 where layers return float32", same_build, int_forward, pass_backward)
TYPE(NullForward, "forward returns success and no output", same_build, null_forward, pass_backward)
TYPE(SilentForward, "forward fails without a message", same_build, silent_forward, pass_backward)
TYPE(NullBackward, "backward returns no input gradient", same_build, copy_forward, null_backward)
TYPE(WideBackward, "backward returns a gradient of twice the width", same_build, copy_forward, wide_backward)
TYPE(SilentBackward, "backward fails without a message", same_build, copy_forward, silent_backward)
TYPE(BadWeightGrad, "backward hands a weight gradient of the wrong shape", weight_build, weight_forward,
     bad_weight_grad_backward)
TYPE(Honest, "the identity, done right (the control)", same_build, copy_forward, pass_backward)

/* Sample shapes: (4, 6), every element probed; (32, 24), more than
 * nn.check_plugin probes one by one, where a probe every numel / 48
 * elements met columns 0, 8 and 16 alone. */
static const lunet_shape grid_small = {2, {4, 6}}, grid_large = {2, {32, 24}};
static const lunet_layer_test small_tests[] = {{NULL, 0, 1, &grid_small, 2, 1e-2f}};
static const lunet_layer_test large_tests[] = {{NULL, 0, 1, &grid_large, 2, 1e-2f}};

#define WRONG(NAME, DOC, FORWARD, BACKWARD, TESTS) \
  TYPE_OF(NAME, DOC, grid_build, FORWARD, BACKWARD, sizeof(keep_x), keep_x_release, TESTS)

WRONG(NaNGradient, "the weight gradient's first entry is NaN", grid_forward, nan_grad_backward, small_tests)
WRONG(SmallDoubled, "y = 0.003 x w, its weight gradient twice the true one", small_forward, small_doubled_backward,
      small_tests)
WRONG(ColumnGradient, "the weight gradient's column 5 is zero", grid_forward, column_backward, large_tests)
WRONG(HonestGrid, "y = x w, done right (the control)", grid_forward, honest_backward, large_tests)

static const lunet_layer_type *const types[] = {
    &RefusingBuild_type, &SilentBuild_type,   &HugeOutput_type,  &NegativeOutput_type, &ManyDims_type,
    &BadWeight_type,     &WideForward_type,   &IntForward_type,  &NullForward_type,    &SilentForward_type,
    &NullBackward_type,  &WideBackward_type,  &SilentBackward_type, &BadWeightGrad_type, &Honest_type,
    &NaNGradient_type,   &SmallDoubled_type,  &ColumnGradient_type, &HonestGrid_type,
};

static const lunet_plugin_desc desc = {LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR, sizeof(lunet_plugin_desc),
                                       "hostile", "1", types, (int)(sizeof types / sizeof types[0])};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) { return &desc; }
