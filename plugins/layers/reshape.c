/* Reshape and Permute, Keras's: both rearrange the axes of one sample; the
 * batch axis stays first. */
#include <stdlib.h>
#include <string.h>

#include "layers.h"

/* ---- Reshape ---- */

typedef struct reshape_state {
  int ndim; /* the input of the last forward, batch included */
  int64_t shape[LUNET_MAX_DIMS];
} reshape_state;

static const lunet_arg_schema reshape_args[] = {
    {"target_shape", LUNET_ARG_SHAPE, LUNET_ARG_REQUIRED,
     .doc = "shape of one sample after the reshape, without the batch axis; one entry may be -1, "
            "inferred from the others"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* target_shape with its -1, if any, resolved for samples of `count` values;
 * false when they do not fit (reshape_build() says why). */
static bool reshape_target(const lunet_layer *l, int64_t count, lunet_shape *out) {
  int n = lunet_layer_get_shape(l, "target_shape", out->dims, LUNET_MAX_DIMS);
  int inferred = -1;
  int64_t known = 1;
  if (n > LUNET_MAX_DIMS - 1) return false;
  out->ndim = n;
  for (int i = 0; i < n; i++) {
    if (out->dims[i] == -1 && inferred < 0)
      inferred = i;
    else if (out->dims[i] > 0)
      known *= out->dims[i];
    else
      return false;
  }
  if (inferred < 0) return known == count;
  if (count % known != 0) return false;
  out->dims[inferred] = count / known;
  return true;
}

static lunet_status reshape_build(lunet_layer *l, int nin, const lunet_shape *in,
                                  lunet_shape *out) {
  int64_t t[LUNET_MAX_DIMS], count = 1;
  int n = lunet_layer_get_shape(l, "target_shape", t, LUNET_MAX_DIMS), minus = 0;
  char s1[128], s2[128];
  /* the batch axis takes one of the LUNET_MAX_DIMS */
  if (n > LUNET_MAX_DIMS - 1)
    return lunet_layer_error(l, LUNET_ERR_ARG, "target_shape has %d axes; a sample has at most %d",
                             n, LUNET_MAX_DIMS - 1);
  layers_list_str(n, t, s2, sizeof s2);
  for (int i = 0; i < n; i++) {
    if (t[i] == -1)
      minus++;
    else if (t[i] < 1)
      return lunet_layer_error(l, LUNET_ERR_ARG,
                               "target_shape %s has %lld at position %d; sizes must be positive, "
                               "or -1 for the one size to infer",
                               s2, (long long)t[i], i + 1);
  }
  if (minus > 1)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "target_shape %s has %d entries of -1; only one size can be inferred",
                             s2, minus);
  for (int i = 0; i < in[0].ndim; i++) count *= in[0].dims[i];
  if (!reshape_target(l, count, &out[0]))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "cannot reshape input %s (%lld values per sample) to target_shape "
                             "%s; the counts must match",
                             layers_sample_str(&in[0], s1, sizeof s1), (long long)count, s2);
  return LUNET_OK;
}

/* x (N, in...) -> y (N, target...), a view of x */
static lunet_status reshape_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  reshape_state *st = lunet_call_state(c);
  int nd = lunet_tensor_ndim(x[0]);
  int64_t count = 1, shape[LUNET_MAX_DIMS];
  for (int i = 1; i < nd; i++) count *= lunet_tensor_dim(x[0], i);
  lunet_shape target;
  if (!reshape_target(l, count, &target))
    return lunet_call_error(c, LUNET_ERR_SHAPE, "target_shape does not fit the input (not built?)");
  int ny = layers_batch_shape(lunet_tensor_dim(x[0], 0), &target, shape);
  if (!(y[0] = lunet_op_reshape(lunet_call_ctx(c), x[0], ny, shape))) return layers_call_failed(c);
  st->ndim = nd;
  memcpy(st->shape, lunet_tensor_shape(x[0]), sizeof(int64_t) * (size_t)nd);
  return LUNET_OK;
}

/* dy (N, target...) -> dx (N, in...), a view of dy */
static lunet_status reshape_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  reshape_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (st->ndim == 0) return layers_no_forward(c);
  if (lunet_call_needs_dx(c, 0) &&
      !(dx[0] = lunet_op_reshape(lunet_call_ctx(c), dy[0], st->ndim, st->shape)))
    return layers_call_failed(c);
  return LUNET_OK;
}

static const lunet_layer_test reshape_tests[] = {
    {LAYERS_ARGS({"target_shape", {.n = 2, .v = {3, -1}}}), LAYERS_INPUTS({2, {2, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"target_shape", {.n = 1, .v = {4}}}), LAYERS_INPUTS({2, {2, 2}}), 3, 1e-2f},
    {LAYERS_ARGS({"target_shape", {.n = 1, .v = {-1}}}), LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"target_shape", {.n = 3, .v = {2, 2, 3}}}), LAYERS_INPUTS({1, {12}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_reshape = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Reshape",
    .doc = "Gives each sample a new shape with the same number of values; no copy",
    .args = reshape_args,
    .nargs = sizeof reshape_args / sizeof reshape_args[0],
    .positional = 1,
    .call_state_size = sizeof(reshape_state),
    .build = reshape_build,
    .forward = reshape_forward,
    .backward = reshape_backward,
    .release = NULL,
    .tests = reshape_tests,
    .ntests = sizeof reshape_tests / sizeof reshape_tests[0],
    .compute_mask = layers_drop_mask,
};

/* ---- Permute ---- */

static const lunet_arg_schema permute_args[] = {
    {"dims", LUNET_ARG_SHAPE, LUNET_ARG_REQUIRED,
     .doc = "the new order of a sample's axes, numbered from 1 as in Keras: {2, 1} swaps the two "
            "axes of a matrix"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status permute_build(lunet_layer *l, int nin, const lunet_shape *in,
                                  lunet_shape *out) {
  int64_t d[LUNET_MAX_DIMS];
  int n = lunet_layer_get_shape(l, "dims", d, LUNET_MAX_DIMS);
  bool seen[LUNET_MAX_DIMS] = {false};
  char s1[128], s2[128];
  layers_list_str(n < LUNET_MAX_DIMS ? n : LUNET_MAX_DIMS, d, s2, sizeof s2);
  if (n != in[0].ndim)
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "dims %s has %d entries but the input %s has %d axes; list each "
                             "axis once",
                             s2, n, layers_sample_str(&in[0], s1, sizeof s1), in[0].ndim);
  for (int i = 0; i < n; i++) {
    if (d[i] < 1 || d[i] > n || seen[d[i] - 1])
      return lunet_layer_error(l, LUNET_ERR_ARG,
                               "dims must list each of the axes 1 to %d once, got %s", n, s2);
    seen[d[i] - 1] = true;
    out[0].dims[i] = in[0].dims[d[i] - 1];
  }
  out[0].ndim = n;
  return LUNET_OK;
}

/* The permutation of the batch tensors' axes: the batch axis stays first,
 * and Keras's 1-based dims are already their numbers. */
static void permute_perm(const lunet_layer *l, int ndim, int *perm) {
  int64_t d[LUNET_MAX_DIMS];
  lunet_layer_get_shape(l, "dims", d, LUNET_MAX_DIMS);
  perm[0] = 0;
  for (int i = 1; i < ndim; i++) perm[i] = (int)d[i - 1];
}

/* x (N, d1, ..., dn) -> y (N, d[dims[0]], ..., d[dims[n-1]]) */
static lunet_status permute_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  int perm[LUNET_MAX_DIMS];
  permute_perm(l, lunet_tensor_ndim(x[0]), perm);
  if (!(y[0] = lunet_op_permute(lunet_call_ctx(c), x[0], perm))) return layers_call_failed(c);
  return LUNET_OK;
}

/* dy (N, permuted...) -> dx (N, d1, ..., dn): the inverse permutation */
static lunet_status permute_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  int nd = lunet_tensor_ndim(dy[0]), perm[LUNET_MAX_DIMS], inv[LUNET_MAX_DIMS];
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  permute_perm(l, nd, perm);
  for (int i = 0; i < nd; i++) inv[perm[i]] = i;
  if (!(dx[0] = lunet_op_permute(lunet_call_ctx(c), dy[0], inv))) return layers_call_failed(c);
  return LUNET_OK;
}

static const lunet_layer_test permute_tests[] = {
    {LAYERS_ARGS({"dims", {.n = 2, .v = {2, 1}}}), LAYERS_INPUTS({2, {3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"dims", {.n = 3, .v = {3, 1, 2}}}), LAYERS_INPUTS({3, {2, 3, 4}}), 2, 1e-2f},
    {LAYERS_ARGS({"dims", {.n = 3, .v = {1, 3, 2}}}), LAYERS_INPUTS({3, {2, 2, 3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_permute = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Permute",
    .doc = "Reorders the axes of each sample: dims = {2, 1} transposes a matrix",
    .args = permute_args,
    .nargs = sizeof permute_args / sizeof permute_args[0],
    .positional = 1,
    .call_state_size = 0,
    .build = permute_build,
    .forward = permute_forward,
    .backward = permute_backward,
    .release = NULL,
    .tests = permute_tests,
    .ntests = sizeof permute_tests / sizeof permute_tests[0],
    .compute_mask = layers_drop_mask,
};

/* ---- Reverse ---- */

static const lunet_arg_schema reverse_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 1},
     .doc = "the sample axis to reverse, numbered from 1 (1: the steps of a sequence)"},
    {"flip_mask", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "reverse a padding mask with the steps; false keeps it (Bidirectional: the backward direction's "
            "output, put back in order, has the input's mask)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status reverse_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t a = lunet_layer_get_int(l, "axis");
  if (a < 1 || a > in[0].ndim) {
    char buf[128];
    return lunet_layer_error(l, LUNET_ERR_ARG, "axis %lld is not an axis of a sample %s (1 to %d)", (long long)a,
                             layers_sample_str(&in[0], buf, sizeof buf), in[0].ndim);
  }
  out[0] = in[0];
  return LUNET_OK;
}

/* x with batch axis `axis` reversed: the axis brought to the front, its
 * rows gathered backwards, put back.  A new reference, or NULL. */
static lunet_tensor *flip(lunet_ctx *ctx, lunet_tensor *x, int axis) {
  int nd = lunet_tensor_ndim(x), perm[LUNET_MAX_DIMS], inv[LUNET_MAX_DIMS];
  int64_t n = lunet_tensor_dim(x, axis);
  int64_t *idx = malloc(sizeof *idx * (size_t)(n > 0 ? n : 1));
  if (!idx) return NULL;
  for (int64_t i = 0; i < n; i++) idx[i] = n - 1 - i;
  perm[0] = axis;
  for (int i = 0, k = 1; i < nd; i++)
    if (i != axis) perm[k++] = i;
  for (int i = 0; i < nd; i++) inv[perm[i]] = i;
  lunet_tensor *front = lunet_op_permute(ctx, x, perm);
  lunet_tensor *rev = front ? lunet_op_gather_rows(ctx, front, idx, n) : NULL;
  lunet_tensor *y = rev ? lunet_op_permute(ctx, rev, inv) : NULL;
  free(idx);
  layers_release(front);
  layers_release(rev);
  return y;
}

static lunet_status reverse_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  if (!(y[0] = flip(lunet_call_ctx(c), x[0], (int)lunet_layer_get_int(l, "axis")))) return layers_call_failed(c);
  return LUNET_OK;
}

static lunet_status reverse_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  if (!(dx[0] = flip(lunet_call_ctx(c), dy[0], (int)lunet_layer_get_int(l, "axis")))) return layers_call_failed(c);
  return LUNET_OK;
}

/* A mask (N, T) reversed with the steps when the steps are reversed (and
 * flip_mask is on). */
static lunet_status reverse_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                 lunet_tensor **mask_out) {
  lunet_tensor *m = lunet_call_mask(c, 0);
  int axis = (int)lunet_layer_get_int(l, "axis");
  mask_out[0] = NULL;
  if (!m) return LUNET_OK;
  if (axis >= lunet_tensor_ndim(m) || !lunet_layer_get_bool(l, "flip_mask")) {
    mask_out[0] = lunet_tensor_retain(m);
    return LUNET_OK;
  }
  return (mask_out[0] = flip(lunet_call_ctx(c), m, axis)) ? LUNET_OK : layers_call_failed(c);
}

static const lunet_layer_test reverse_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {4, 3}}), 2, 1e-2f},
    {LAYERS_ARGS({"axis", {.i = 2}}), LAYERS_INPUTS({3, {2, 3, 2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_reverse = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Reverse",
    .doc = "Reverses one axis of each sample (the steps, by default): what Bidirectional does to the backward "
           "layer's sequence",
    .args = reverse_args,
    .nargs = sizeof reverse_args / sizeof reverse_args[0],
    .positional = 1,
    .build = reverse_build,
    .forward = reverse_forward,
    .backward = reverse_backward,
    .compute_mask = reverse_mask,
    .tests = reverse_tests,
    .ntests = sizeof reverse_tests / sizeof reverse_tests[0],
};
