/*
 * Position information for sequence models, KerasHub's layers: both take
 * x (N, T, D) and return position vectors of the same shape, which the
 * user adds to x (they do not add them themselves).
 *   PositionEmbedding{sequence_length}: learned, rows 0..T-1 of a table
 *     `embeddings` (sequence_length, D); a longer sequence is an error.
 *   SinePositionEncoding{max_wavelength = 10000}: fixed; at position p and
 *     feature i, sin(p * w_i) for even i and cos(p * w_i) for odd i, with
 *     w_i = max_wavelength ^ -(2 * floor(i / 2) / D).
 * Built on the tape (layers_graph); x gets no gradient (only its shape
 * counts).  Step by step (generation), positions start at the call's step
 * offset.
 */
#include <math.h>
#include <stdlib.h>

#include "layers.h"

static const lunet_arg_schema position_embedding_args[] = {
    {"sequence_length", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the longest sequence (table rows)"},
    {"initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the table", .choices = LAYERS_INITIALIZERS "|uniform"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema sine_args[] = {
    {"max_wavelength", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 10000},
     .doc = "the longest wavelength of the sines"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status sequence_shape(lunet_layer *l, const lunet_shape *in) {
  return in->ndim == 2 ? LUNET_OK : layers_rank_error(l, "2 (steps, features)", in);
}

static lunet_status position_embedding_build(lunet_layer *l, int nin, const lunet_shape *in,
                                             lunet_shape *out) {
  int64_t len = lunet_layer_get_int(l, "sequence_length");
  if (len <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "sequence_length must be positive");
  if (sequence_shape(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  if (in[0].dims[0] > len)
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "a sequence of %lld steps is longer than the position table's %lld "
                             "(sequence_length)",
                             (long long)in[0].dims[0], (long long)len);
  int64_t shape[2] = {len, in[0].dims[1]};
  if (lunet_layer_add_weight(l, "embeddings", 2, shape, lunet_layer_get_string(l, "initializer"), true) < 0)
    return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status sine_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (!(lunet_layer_get_float(l, "max_wavelength") > 1))
    return lunet_layer_error(l, LUNET_ERR_ARG, "max_wavelength must be above 1");
  if (sequence_shape(l, &in[0])) return lunet_ctx_status(lunet_layer_ctx(l));
  out[0] = in[0];
  return LUNET_OK;
}

/* zeros like x (N, T, D) + rows (T, D), broadcast over the batch, on the tape. */
static lunet_tensor *broadcast_rows(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *rows) {
  lunet_tensor *zero = lunet_op_empty_like(ctx, x);
  lunet_tensor *y = zero && !lunet_op_fill(ctx, zero, 0.0f) ? lunet_add(ctx, zero, rows) : NULL;
  layers_release(zero);
  return y;
}

static lunet_status position_embedding_forward(lunet_layer *l, lunet_call *c, int nin,
                                               lunet_tensor *const *x, lunet_tensor **y,
                                               bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  int64_t t = lunet_tensor_dim(x[0], 1), d = lunet_tensor_dim(x[0], 2);
  int64_t first = lunet_call_step_offset(c) > 0 ? lunet_call_step_offset(c) : 0;
  int64_t len = lunet_layer_get_int(l, "sequence_length");
  if (first + t > len)
    return lunet_call_error(c, LUNET_ERR_SHAPE, "position %lld is past the position table's %lld (sequence_length)",
                            (long long)(first + t - 1), (long long)len);
  lunet_status s = layers_graph_begin(c, l, st, x[0], 1);
  if (s) return s;
  int64_t start[2] = {first, 0}, stop[2] = {first + t, d}, step[2] = {1, 1};
  lunet_tensor *rows = lunet_slice(ctx, st->w[0], start, stop, step);
  lunet_tensor *out = rows ? broadcast_rows(ctx, st->x[0], rows) : NULL;
  layers_release(rows);
  return layers_graph_end(c, st, out, y);
}

static lunet_status sine_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                 lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  int64_t t = lunet_tensor_dim(x[0], 1), d = lunet_tensor_dim(x[0], 2), shape[2] = {t, d};
  int64_t first = lunet_call_step_offset(c) > 0 ? lunet_call_step_offset(c) : 0;
  double wave = lunet_layer_get_float(l, "max_wavelength");
  float *v = malloc(sizeof *v * (size_t)(t * d > 0 ? t * d : 1));
  if (!v) return lunet_call_error(c, LUNET_ERR_NOMEM, "out of host memory");
  for (int64_t p = 0; p < t; p++)
    for (int64_t i = 0; i < d; i++) {
      double angle = (double)(p + first) * pow(wave, -(double)(2 * (i / 2)) / (double)d);
      v[p * d + i] = (float)(i % 2 ? cos(angle) : sin(angle));
    }
  lunet_tensor *enc = lunet_op_new(ctx, x[0], LUNET_F32, 2, shape);
  lunet_status s = enc ? lunet_tensor_write(ctx, enc, v, sizeof *v * (size_t)(t * d)) : layers_call_failed(c);
  free(v);
  if (!s) s = layers_graph_begin(c, l, st, x[0], 0);
  if (s) {
    layers_release(enc);
    return s;
  }
  lunet_tensor *out = broadcast_rows(ctx, st->x[0], enc);
  layers_release(enc);
  return layers_graph_end(c, st, out, y);
}

static const lunet_layer_test position_embedding_tests[] = {
    {LAYERS_ARGS({"sequence_length", {.i = 6}}), LAYERS_INPUTS({2, {4, 3}}), 2, 1e-2f},
};

static const lunet_layer_test sine_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {4, 6}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_position_embedding = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "PositionEmbedding",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Learned position vectors for (N, T, D) input (add them to it)",
    .args = position_embedding_args,
    .nargs = sizeof position_embedding_args / sizeof position_embedding_args[0],
    .positional = 1,
    .call_state_size = sizeof(layers_graph),
    .build = position_embedding_build,
    .forward = position_embedding_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .tests = position_embedding_tests,
    .ntests = 1,
};

LAYERS_HIDDEN const lunet_layer_type layers_sine_position_encoding = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SinePositionEncoding",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Fixed sinusoidal position vectors for (N, T, D) input (add them to it)",
    .args = sine_args,
    .nargs = sizeof sine_args / sizeof sine_args[0],
    .call_state_size = sizeof(layers_graph),
    .build = sine_build,
    .forward = sine_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .tests = sine_tests,
    .ntests = 1,
};
