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

static lunet_status flatten_build(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                                  int64_t *out) {
  if (in_ndim < 1) return layers_rank_error(l, "1 or more", in_ndim, in);
  int64_t n = 1;
  for (int i = 0; i < in_ndim; i++) n *= in[i];
  *out_ndim = 1;
  out[0] = n;
  return LUNET_OK;
}

/* x (N, ...) -> y (N, prod(...)) */
static lunet_status flatten_forward(lunet_layer *l, lunet_tensor *x, lunet_tensor **y,
                                    bool training) {
  (void)training;
  flatten_state *st = lunet_layer_state(l);
  int64_t n = lunet_tensor_dim(x, 0);
  int64_t shape[2] = {n, n > 0 ? lunet_tensor_numel(x) / n : 0};
  if (!(*y = lunet_op_reshape(lunet_layer_ctx(l), x, 2, shape))) return layers_failed(l);
  st->ndim = lunet_tensor_ndim(x);
  for (int i = 0; i < st->ndim; i++) st->shape[i] = lunet_tensor_dim(x, i);
  return LUNET_OK;
}

/* dy (N, prod(...)) -> dx (N, ...) */
static lunet_status flatten_backward(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx,
                                     bool need_dx) {
  flatten_state *st = lunet_layer_state(l);
  *dx = NULL;
  if (st->ndim == 0) return lunet_layer_error(l, LUNET_ERR_ARG, "backward called before forward");
  if (need_dx && !(*dx = lunet_op_reshape(lunet_layer_ctx(l), dy, st->ndim, st->shape)))
    return layers_failed(l);
  return LUNET_OK;
}

static const lunet_layer_test flatten_tests[] = {
    {"", 3, {2, 3, 2}, 2, 1e-2f},
    {"", 1, {5}, 3, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_flatten = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Flatten",
    .doc = "Flattens each sample to one axis: (H, W, C) -> (H*W*C); no copy",
    .args = flatten_args,
    .nargs = sizeof flatten_args / sizeof flatten_args[0],
    .positional = 0,
    .state_size = sizeof(flatten_state),
    .build = flatten_build,
    .forward = flatten_forward,
    .backward = flatten_backward,
    .destroy = NULL,
    .tests = flatten_tests,
    .ntests = sizeof flatten_tests / sizeof flatten_tests[0],
};
