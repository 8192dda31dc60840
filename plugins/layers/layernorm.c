/*
 * LayerNormalization (Keras's, over the last axis): for each sample and
 * position, y = (x - mean) / sqrt(var + epsilon) * gamma + beta, mean and
 * (biased) variance over the last axis; gamma (C) and beta (C) as
 * PyTorch's nn.LayerNorm weight and bias.  Forward is the core's fused
 * lunet_layernorm on the tape (layers_graph), one kernel forward and one
 * backward on every backend.  As Keras's, gamma is a weight only with
 * scale = true and beta only with center = true; a switched-off one is a
 * constant 1 or 0.
 */
#include "layers.h"

static const lunet_arg_schema layernorm_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = -1},
     .doc = "the axis normalized (only -1, the last, so far)"},
    {"epsilon", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 1e-3},
     .doc = "added to the variance (Keras's 1e-3; PyTorch's default is 1e-5)"},
    {"center", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add beta"},
    {"scale", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "multiply by gamma"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status layernorm_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t axis = lunet_layer_get_int(l, "axis");
  if (axis != -1 && axis != in[0].ndim)
    return lunet_layer_error(l, LUNET_ERR_ARG, "only the last axis (-1) is normalized so far, got axis %lld",
                             (long long)axis);
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more (..., features)", &in[0]);
  if (lunet_layer_get_float(l, "epsilon") <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "epsilon must be positive");
  int64_t c = in[0].dims[in[0].ndim - 1];
  int gi, bi;
  layers_norm_affine(l, &gi, &bi);
  if ((gi >= 0 && lunet_layer_add_weight(l, "gamma", 1, &c, "ones", true) < 0) ||
      (bi >= 0 && lunet_layer_add_weight(l, "beta", 1, &c, "zeros", true) < 0))
    return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

lunet_tensor *layers_layernorm_graph(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *gamma, lunet_tensor *beta,
                                     float epsilon) {
  return lunet_layernorm(ctx, x, gamma, beta, epsilon);
}

static lunet_status layernorm_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                      lunet_tensor **y, bool training) {
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  int gi, bi, nw = layers_norm_affine(l, &gi, &bi);
  lunet_status s = layers_graph_begin(c, l, st, x[0], nw);
  if (s) return s;
  int64_t ch = lunet_tensor_dim(x[0], -1);
  lunet_tensor *one = gi < 0 ? layers_filled(c, x[0], 1, &ch, 1.0f) : NULL;
  lunet_tensor *zero = bi < 0 ? layers_filled(c, x[0], 1, &ch, 0.0f) : NULL;
  lunet_tensor *gamma = gi < 0 ? one : st->w[gi], *beta = bi < 0 ? zero : st->w[bi];
  lunet_tensor *out = gamma && beta ? layers_layernorm_graph(lunet_call_ctx(c), st->x[0], gamma, beta,
                                                             (float)lunet_layer_get_float(l, "epsilon"))
                                    : NULL;
  layers_release(one);
  layers_release(zero);
  return layers_graph_end(c, st, out, y);
}

static const lunet_layer_test layernorm_tests[] = {
    {NULL, 0, LAYERS_INPUTS({1, {5}}), 3, 1e-2f},
    {LAYERS_ARGS({"epsilon", {.f = 1e-5}}), LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"center", {.b = false}}), LAYERS_INPUTS({1, {6}}), 2, 1e-2f},
    {LAYERS_ARGS({"scale", {.b = false}}), LAYERS_INPUTS({2, {2, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"scale", {.b = false}}, {"center", {.b = false}}), LAYERS_INPUTS({1, {4}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_layer_normalization = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "LayerNormalization",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Normalizes each position over the last axis, then scales by gamma and shifts by beta",
    .args = layernorm_args,
    .nargs = sizeof layernorm_args / sizeof layernorm_args[0],
    .positional = 2, /* LayerNormalization{axis, epsilon}, as Keras's */
    .call_state_size = sizeof(layers_graph),
    .build = layernorm_build,
    .forward = layernorm_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .tests = layernorm_tests,
    .ntests = sizeof layernorm_tests / sizeof layernorm_tests[0],
};
