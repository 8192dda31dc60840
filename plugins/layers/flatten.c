/* Flatten: (N, d1, d2, ...) -> (N, d1*d2*...), a view of the same buffer. */
#include "layers.h"

typedef struct flatten_state {
  int ndim; /* the input of the last forward, batch included */
  int64_t shape[LUNET_MAX_DIMS];
} flatten_state;

static const lunet_arg_schema flatten_args[] = {
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status flatten_build(lunet_layer *l, int nin, const lunet_shape *in,
                                  lunet_shape *out) {
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more", &in[0]);
  int64_t n = 1;
  for (int i = 0; i < in[0].ndim; i++) n *= in[0].dims[i];
  out[0] = (lunet_shape){1, {n}};
  return LUNET_OK;
}

/* x (N, ...) -> y (N, prod(...)) */
static lunet_status flatten_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  flatten_state *st = lunet_call_state(c);
  int64_t shape[2] = {lunet_tensor_dim(x[0], 0), 1}; /* from the dims: numel / N says nothing at N = 0 */
  for (int i = 1; i < lunet_tensor_ndim(x[0]); i++) shape[1] *= lunet_tensor_dim(x[0], i);
  if (!(y[0] = lunet_op_reshape(lunet_call_ctx(c), x[0], 2, shape))) return layers_call_failed(c);
  st->ndim = lunet_tensor_ndim(x[0]);
  for (int i = 0; i < st->ndim; i++) st->shape[i] = lunet_tensor_dim(x[0], i);
  return LUNET_OK;
}

/* dy (N, prod(...)) -> dx (N, ...) */
static lunet_status flatten_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  flatten_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (st->ndim == 0) return layers_no_forward(c);
  if (lunet_call_needs_dx(c, 0) &&
      !(dx[0] = lunet_op_reshape(lunet_call_ctx(c), dy[0], st->ndim, st->shape)))
    return layers_call_failed(c);
  return LUNET_OK;
}

static const lunet_layer_test flatten_tests[] = {
    {NULL, 0, LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({1, {5}}), 3, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_flatten = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Flatten",
    .doc = "Flattens each sample to one axis: (H, W, C) -> (H*W*C); no copy",
    .args = flatten_args,
    .nargs = sizeof flatten_args / sizeof flatten_args[0],
    .positional = 0,
    .call_state_size = sizeof(flatten_state),
    .build = flatten_build,
    .forward = flatten_forward,
    .backward = flatten_backward,
    .release = NULL,
    .tests = flatten_tests,
    .ntests = sizeof flatten_tests / sizeof flatten_tests[0],
    .compute_mask = layers_drop_mask,
};
