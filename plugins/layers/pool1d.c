/*
 * GlobalAveragePooling1D and GlobalMaxPooling1D (Keras's): x (N, T, C) ->
 * (N, C), the mean or the maximum over the steps (keepdims: (N, 1, C)).
 * The average honours an input mask (N, T) as Keras does: the mean over the
 * unmasked steps (0 when every step is masked).  Built on the tape
 * (layers_graph).
 */
#include "layers.h"

static const lunet_arg_schema pool1d_args[] = {
    {"keepdims", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "keep the steps axis, as size 1"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status pool1d_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (in[0].ndim != 2) return layers_rank_error(l, "2 (steps, features)", &in[0]);
  bool keep = lunet_layer_get_bool(l, "keepdims");
  out[0].ndim = keep ? 2 : 1;
  out[0].dims[0] = keep ? 1 : in[0].dims[1];
  out[0].dims[1] = in[0].dims[1];
  return LUNET_OK;
}

/* The masked mean: sum(x * m) / max(sum(m), 1) over the steps. */
static lunet_tensor *masked_mean(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *mask, bool keep) {
  int64_t n = lunet_tensor_dim(x, 0), t = lunet_tensor_dim(x, 1), m3[3] = {n, t, 1};
  lunet_tensor *m = lunet_reshape(ctx, mask, 3, m3);
  lunet_tensor *xm = m ? lunet_mul(ctx, x, m) : NULL;
  lunet_tensor *sum = xm ? lunet_reduce(ctx, LUNET_REDUCE_SUM, xm, 1, keep) : NULL;
  lunet_tensor *cnt = sum ? lunet_reduce(ctx, LUNET_REDUCE_SUM, m, 1, keep) : NULL;
  lunet_tensor *one = cnt ? lunet_op_new(ctx, cnt, LUNET_F32, 0, NULL) : NULL;
  lunet_tensor *den = one && !lunet_op_fill(ctx, one, 1.0f) ? lunet_maximum(ctx, cnt, one) : NULL;
  lunet_tensor *y = den ? lunet_div(ctx, sum, den) : NULL;
  layers_release(m);
  layers_release(xm);
  layers_release(sum);
  layers_release(cnt);
  layers_release(one);
  layers_release(den);
  return y;
}

static lunet_status pool1d_forward(lunet_layer *l, lunet_call *c, lunet_tensor *x, lunet_tensor **y,
                                   lunet_reduce_op op) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  if (lunet_call_mask(c, 0)) {
    if (op != LUNET_REDUCE_MEAN)
      return lunet_call_error(c, LUNET_ERR_ARG, "a masked input is not supported (as in Keras)");
    if (!(st->mask = layers_step_mask(c, x))) return lunet_ctx_status(ctx);
  }
  lunet_status s = layers_graph_begin(c, l, st, x, 0);
  if (s) return s;
  bool keep = lunet_layer_get_bool(l, "keepdims");
  lunet_tensor *r = st->mask ? masked_mean(ctx, st->x[0], st->mask, keep) : lunet_reduce(ctx, op, st->x[0], 1, keep);
  return layers_graph_end(c, st, r, y);
}

static lunet_status average_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  return pool1d_forward(l, c, x[0], y, LUNET_REDUCE_MEAN);
}

static lunet_status max_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  return pool1d_forward(l, c, x[0], y, LUNET_REDUCE_MAX);
}

/* The steps are gone: no mask goes on. */
static lunet_status pool1d_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **mask_out) {
  mask_out[0] = NULL;
  return LUNET_OK;
}

static const lunet_layer_test pool1d_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {4, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"keepdims", {.b = true}}), LAYERS_INPUTS({2, {3, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling1d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GlobalAveragePooling1D",
    .doc = "Mean over the steps: (N, T, C) -> (N, C); honours a mask",
    .args = pool1d_args,
    .nargs = sizeof pool1d_args / sizeof pool1d_args[0],
    .call_state_size = sizeof(layers_graph),
    .build = pool1d_build,
    .forward = average_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = pool1d_mask,
    .tests = pool1d_tests,
    .ntests = sizeof pool1d_tests / sizeof pool1d_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_global_max_pooling1d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GlobalMaxPooling1D",
    .doc = "Maximum over the steps: (N, T, C) -> (N, C)",
    .args = pool1d_args,
    .nargs = sizeof pool1d_args / sizeof pool1d_args[0],
    .call_state_size = sizeof(layers_graph),
    .build = pool1d_build,
    .forward = max_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = pool1d_mask,
    .tests = pool1d_tests,
    .ntests = sizeof pool1d_tests / sizeof pool1d_tests[0],
};
