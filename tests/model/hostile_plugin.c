/* A test plugin that breaks its contract with the core in every way we
 * could think of, one layer type per fault.  Each must end as an error that
 * names the layer and this plugin, never as a crash, a silently wrong
 * gradient or a leak (hostile_plugin.lua runs them, also under the
 * sanitizers).  All take one input of one sample axis (d) and build out = in
 * unless their fault is in build. */
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

/* One shipped test case each, so nn.check_plugin meets every fault too. */
static const lunet_shape test_input = {1, {3}};
static const lunet_layer_test tests[] = {{NULL, 0, 1, &test_input, 2, 1e-2f}};

static const lunet_arg_schema args[] = {
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name", NULL},
};

#define TYPE(NAME, DOC, BUILD, FORWARD, BACKWARD)                                                                     \
  static const lunet_layer_type NAME##_type = {.struct_size = sizeof(lunet_layer_type),                           \
                                               .name = #NAME,                                                     \
                                               .doc = DOC,                                                        \
                                               .args = args,                                                      \
                                               .nargs = 1,                                                        \
                                               .build = BUILD,                                                    \
                                               .forward = FORWARD,                                                \
                                               .backward = BACKWARD,                                              \
                                               .tests = tests,                                                    \
                                               .ntests = 1};

TYPE(RefusingBuild, "build fails with a message", refusing_build, copy_forward, pass_backward)
TYPE(SilentBuild, "build fails without a message", silent_build, copy_forward, pass_backward)
TYPE(HugeOutput, "build declares 2^90 elements per sample", huge_build, copy_forward, pass_backward)
TYPE(NegativeOutput, "build declares a negative size", negative_build, copy_forward, pass_backward)
TYPE(ManyDims, "build declares 99 dimensions", many_dims_build, copy_forward, pass_backward)
TYPE(BadWeight, "build declares a weight of negative size", bad_weight_build, copy_forward, pass_backward)
TYPE(WideForward, "forward returns twice the declared width", same_build, wide_forward, pass_backward)
TYPE(NullForward, "forward returns success and no output", same_build, null_forward, pass_backward)
TYPE(SilentForward, "forward fails without a message", same_build, silent_forward, pass_backward)
TYPE(NullBackward, "backward returns no input gradient", same_build, copy_forward, null_backward)
TYPE(WideBackward, "backward returns a gradient of twice the width", same_build, copy_forward, wide_backward)
TYPE(SilentBackward, "backward fails without a message", same_build, copy_forward, silent_backward)
TYPE(BadWeightGrad, "backward hands a weight gradient of the wrong shape", weight_build, weight_forward,
     bad_weight_grad_backward)
TYPE(Honest, "the identity, done right (the control)", same_build, copy_forward, pass_backward)

static const lunet_layer_type *const types[] = {
    &RefusingBuild_type, &SilentBuild_type,   &HugeOutput_type,    &NegativeOutput_type, &ManyDims_type,
    &BadWeight_type,     &WideForward_type,   &NullForward_type,   &SilentForward_type,  &NullBackward_type,
    &WideBackward_type,  &SilentBackward_type, &BadWeightGrad_type, &Honest_type,
};

static const lunet_plugin_desc desc = {LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR, sizeof(lunet_plugin_desc),
                                       "hostile", "1", types, (int)(sizeof types / sizeof types[0])};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) { return &desc; }
