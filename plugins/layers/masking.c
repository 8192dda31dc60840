/*
 * Masking (Keras's): a step whose every feature equals mask_value is
 * masked: its output is zeros and the mask it gives the layers after it
 * (recurrent layers keep their state there, GlobalAveragePooling1D leaves
 * it out, the loss skips it) is 0.  Keras 3:
 *   present = any(x != mask_value, axis = -1);  y = x * present
 * A step with a NaN is present (NaN != anything).
 */
#include "layers.h"

#include "lunet/ops.h"

static const lunet_arg_schema masking_args[] = {
    {"mask_value", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "the value of every feature of a padded step"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status masking_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (in[0].ndim < 2) return layers_rank_error(l, "2 or more (steps, ..., features)", &in[0]);
  out[0] = in[0];
  return LUNET_OK;
}

/* 1 where a step holds a value other than mask_value, else 0: (N, T, ..., 1)
 * with keepdims, (N, T, ...) without.  Off the tape. */
static lunet_tensor *present(lunet_layer *l, lunet_ctx *ctx, lunet_tensor *x, bool keepdims) {
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *xf = layers_as_f32(ctx, x);
  lunet_tensor *v = xf ? lunet_op_new(ctx, xf, LUNET_F32, 0, NULL) : NULL;
  lunet_tensor *eq = v && !lunet_op_fill(ctx, v, (float)lunet_layer_get_float(l, "mask_value"))
                         ? lunet_op_binary(ctx, LUNET_BINARY_EQ, xf, v)
                         : NULL;
  lunet_tensor *all = eq ? lunet_op_reduce(ctx, LUNET_REDUCE_MIN, eq, -1, keepdims) : NULL;
  lunet_tensor *m = all ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, all, -1.0f, 1.0f) : NULL; /* not all equal */
  layers_release(xf);
  layers_release(v);
  layers_release(eq);
  layers_release(all);
  lunet_set_grad_enabled(ctx, prev);
  return m;
}

static lunet_status masking_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                    bool training) {
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  lunet_status s = layers_graph_begin(c, l, st, x[0], 0);
  if (s) return s;
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *m = present(l, ctx, st->x[0], true);
  lunet_tensor *out = m ? lunet_mul(ctx, st->x[0], m) : NULL;
  layers_release(m);
  return layers_graph_end(c, st, out, y);
}

static lunet_status masking_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                 lunet_tensor **mask_out) {
  return (mask_out[0] = present(l, lunet_call_ctx(c), x[0], false)) ? LUNET_OK : layers_call_failed(c);
}

static const lunet_layer_test masking_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {4, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"mask_value", {.f = 0.5}}), LAYERS_INPUTS({2, {3, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_masking = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Masking",
    .doc = "Masks the steps whose every feature equals mask_value (zeros them, and the layers after skip them)",
    .args = masking_args,
    .nargs = sizeof masking_args / sizeof masking_args[0],
    .positional = 1,
    .call_state_size = sizeof(layers_graph),
    .build = masking_build,
    .forward = masking_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = masking_mask,
    .tests = masking_tests,
    .ntests = sizeof masking_tests / sizeof masking_tests[0],
};
