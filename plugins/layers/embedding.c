/*
 * Embedding (Keras's): ids (N, ...) of whole numbers in [0, input_dim),
 * float32 or int32 -> (N, ..., output_dim), row `id` of the table
 * `embeddings` (input_dim, output_dim), as PyTorch's nn.Embedding.weight.
 *
 * Forward reads the ids to the host (one transfer), checks every one and
 * gathers the rows.  Backward adds each row of dy into the row of its id
 * (the backend's scatter_add_rows: the work of the ids, whatever the
 * vocabulary).  mask_zero: the output mask marks ids other than 0
 * (padding).
 */
#include <math.h>
#include <stdlib.h>

#include "layers.h"

typedef struct embedding_state {
  int64_t *ids; /* the checked ids on the host, kept for backward */
  int64_t n;
} embedding_state;

static void embedding_forget(embedding_state *st) {
  free(st->ids);
  st->ids = NULL;
  st->n = 0;
}

static const lunet_arg_schema embedding_args[] = {
    {"input_dim", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the number of ids (vocabulary size)"},
    {"output_dim", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the size of each vector"},
    {"embeddings_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "uniform"},
     .doc = "initializer of the table (uniform: U(-0.05, 0.05))",
     .choices = "uniform|" LAYERS_INITIALIZERS},
    {"embeddings_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL, .doc = "penalty on the table added to the loss"},
    LAYERS_ARG_ACTIVITY_REGULARIZER,
    LAYERS_ARG_CONSTRAINT("embeddings"),
    {"mask_zero", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "id 0 is padding: the output's mask marks the other ids"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status embedding_build(lunet_layer *l, int nin, const lunet_shape *in,
                                    lunet_shape *out) {
  int64_t v = lunet_layer_get_int(l, "input_dim"), d = lunet_layer_get_int(l, "output_dim");
  if (v <= 0 || d <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "input_dim and output_dim must be positive, got %lld and %lld",
                             (long long)v, (long long)d);
  if (in[0].ndim + 1 >= LUNET_MAX_DIMS) return layers_rank_error(l, "below 7", &in[0]);
  int64_t shape[2] = {v, d};
  if (lunet_layer_add_weight(l, "embeddings", 2, shape, lunet_layer_get_string(l, "embeddings_initializer"),
                             true) < 0)
    return layers_failed(l);
  out[0] = in[0];
  out[0].dims[out[0].ndim++] = d;
  return LUNET_OK;
}

/* The ids of x on the host, checked: whole numbers in [0, v). */
static int64_t *read_ids(lunet_call *c, lunet_tensor *x, int64_t v) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t n = lunet_tensor_numel(x);
  float *f = malloc(sizeof *f * (size_t)(n ? n : 1));
  int64_t *ids = malloc(sizeof *ids * (size_t)(n ? n : 1));
  lunet_tensor *xf = lunet_tensor_dtype(x) == LUNET_F32 ? lunet_tensor_retain(x) : lunet_op_cast(ctx, x, LUNET_F32);
  lunet_status s = f && ids ? LUNET_OK : lunet_call_error(c, LUNET_ERR_NOMEM, "out of host memory");
  if (!s) s = xf ? lunet_tensor_read(ctx, xf, f, sizeof *f * (size_t)n) : layers_call_failed(c);
  for (int64_t i = 0; !s && i < n; i++) {
    if (f[i] != floorf(f[i]) || f[i] < 0 || f[i] >= (float)v)
      s = lunet_call_error(c, LUNET_ERR_ARG,
                           "id %g at flat position %lld is outside [0, %lld) (input_dim is %lld; ids "
                           "must be whole numbers)",
                           f[i], (long long)i, (long long)v, (long long)v);
    else
      ids[i] = (int64_t)f[i];
  }
  layers_release(xf);
  free(f);
  if (s) {
    free(ids);
    return NULL;
  }
  return ids;
}

/* ids (N, ...) -> y (N, ..., d) = embeddings[ids] */
static lunet_status embedding_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                      lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  embedding_state *st = lunet_call_state(c);
  lunet_tensor *table = lunet_layer_weight(l, 0);
  int64_t v = lunet_tensor_dim(table, 0), d = lunet_tensor_dim(table, 1), n = lunet_tensor_numel(x[0]);
  int64_t *ids = read_ids(c, x[0], v);
  if (!ids) return lunet_ctx_status(ctx);
  lunet_tensor *rows = lunet_op_gather_rows(ctx, table, ids, n);
  embedding_forget(st);
  if (rows && lunet_call_recording(c)) {
    st->ids = ids;
    st->n = n;
  } else {
    free(ids);
  }
  if (!rows) return layers_call_failed(c);
  int64_t shape[LUNET_MAX_DIMS];
  int nd = lunet_tensor_ndim(x[0]);
  for (int i = 0; i < nd; i++) shape[i] = lunet_tensor_dim(x[0], i);
  shape[nd] = d;
  *y = lunet_op_reshape(ctx, rows, nd + 1, shape);
  layers_release(rows);
  return *y ? LUNET_OK : layers_call_failed(c);
}

/* dy (N, ..., d) -> d(embeddings): each dy row added to its id's row; ids
 * get no gradient. */
static lunet_status embedding_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                       lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  embedding_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->ids) return layers_no_forward(c);
  lunet_tensor *table = lunet_layer_weight(l, 0);
  int64_t d = lunet_tensor_dim(table, 1), flat[2] = {st->n, d};
  lunet_tensor *g = lunet_op_empty_like(ctx, table);
  lunet_tensor *dy2 = g ? lunet_op_reshape(ctx, dy[0], 2, flat) : NULL;
  lunet_status s = !dy2 || lunet_op_fill(ctx, g, 0.0f) || lunet_op_scatter_add_rows(ctx, g, dy2, st->ids, st->n)
                       ? layers_call_failed(c)
                       : lunet_call_accumulate_grad(c, 0, g);
  layers_release(g);
  layers_release(dy2);
  embedding_forget(st);
  return s;
}

/* mask_zero: 1 where the id is not 0, with the ids' shape. */
static lunet_status embedding_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **mask_out) {
  mask_out[0] = NULL;
  if (!lunet_layer_get_bool(l, "mask_zero")) return LUNET_OK;
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *xf = layers_as_f32(ctx, x[0]);
  lunet_tensor *zero = xf ? lunet_op_new(ctx, xf, LUNET_F32, 0, NULL) : NULL;
  lunet_tensor *gt = zero && !lunet_op_fill(ctx, zero, 0.0f) ? lunet_op_binary(ctx, LUNET_BINARY_GT, xf, zero)
                                                             : NULL;
  layers_release(xf);
  layers_release(zero);
  mask_out[0] = gt;
  return gt ? LUNET_OK : layers_call_failed(c);
}

static void embedding_release(lunet_layer *l, lunet_call *c) { embedding_forget(lunet_call_state(c)); }

LAYERS_HIDDEN const lunet_layer_type layers_embedding = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Embedding",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Vectors of ids: (N, ...) whole numbers in [0, input_dim) -> (N, ..., output_dim)",
    .args = embedding_args,
    .nargs = sizeof embedding_args / sizeof embedding_args[0],
    .positional = 2,
    .call_state_size = sizeof(embedding_state),
    .build = embedding_build,
    .forward = embedding_forward,
    .backward = embedding_backward,
    .release = embedding_release,
    .compute_mask = embedding_mask,
    /* no self-test cases: the check feeds random floats, which are not ids
     * (tests/lua/test_sequence.lua checks it by hand) */
};
