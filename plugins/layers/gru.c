/*
 * GRU (Keras's, reset_after = true as Keras's default): x (N, T, D) -> the
 * last h (N, units), or every h with return_sequences.  Weights in Keras's
 * layout, gates z, r, h: kernel (D, 3u), recurrent_kernel (u, 3u), bias
 * (2, 3u) (row 0 the input bias, row 1 the recurrent bias).  PyTorch orders
 * its gates r, z, n: weight_ih_l0 = [kernel_r; kernel_z; kernel_h]^T, likewise
 * weight_hh_l0 from recurrent_kernel, bias_ih_l0 = bias[0] and bias_hh_l0 =
 * bias[1] in that order.
 *
 * For each step t, with xk = x_t kernel_k + bias[0]_k and hk = h
 * recurrent_kernel_k + bias[1]_k:
 *   z = rec_act(xz + hz),  r = rec_act(xr + hr),  g = act(xh + r * hh),
 *   h = z * h + (1 - z) * g.
 * With reset_after = false (Keras's original form) the bias is (3u) and
 * g = act(xh + (r * h) recurrent_kernel_h).
 * Like the LSTM, forward builds the unrolled graph on the tape over detached
 * views and backward runs it from dy; a masked step keeps h.
 */
#include <stdlib.h>

#include "layers.h"

#define GRU_ACTIVATIONS "tanh|sigmoid|relu|linear"

static const lunet_arg_schema gru_args[] = {
    {"units", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "size of the state h"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "tanh"},
     .doc = "activation of the candidate state", .choices = GRU_ACTIVATIONS},
    {"recurrent_activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "sigmoid"},
     .doc = "activation of the gates z and r", .choices = GRU_ACTIVATIONS},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "add the input and recurrent biases (2, 3 units)"},
    LAYERS_RNN_ARGS,
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (D, 3 units)", .choices = LAYERS_INITIALIZERS "|orthogonal"},
    {"recurrent_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "orthogonal"},
     .doc = "initializer of the recurrent kernel (units, 3 units)",
     .choices = LAYERS_INITIALIZERS "|orthogonal"},
    {"reset_after", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "apply r after the recurrent product (Keras's default and PyTorch's form; false: r * h "
            "before it, with one bias (3 units))"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status gru_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t u = lunet_layer_get_int(l, "units");
  if (u <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "units must be positive, got %lld", (long long)u);
  lunet_status st = layers_rnn_build_io(l, nin, in, out, 1);
  if (st) return st;
  int64_t k[2] = {in[0].dims[1], 3 * u}, r[2] = {u, 3 * u}, b[2] = {2, 3 * u};
  if (lunet_layer_add_weight(l, "kernel", 2, k, lunet_layer_get_string(l, "kernel_initializer"), true) < 0 ||
      lunet_layer_add_weight(l, "recurrent_kernel", 2, r,
                             lunet_layer_get_string(l, "recurrent_initializer"), true) < 0 ||
      (lunet_layer_get_bool(l, "use_bias") &&
       lunet_layer_add_weight(l, "bias", lunet_layer_get_bool(l, "reset_after") ? 2 : 1,
                              lunet_layer_get_bool(l, "reset_after") ? b : b + 1, "zeros", true) < 0))
    return layers_failed(l);
  return LUNET_OK;
}

/* Columns [k*u, (k+1)*u) of a (rows, 3u) tensor, on the tape. */
static lunet_tensor *cols(lunet_ctx *ctx, lunet_tensor *t, int64_t u, int k) {
  int64_t start[2] = {0, k * u}, stop[2] = {lunet_tensor_dim(t, 0), (k + 1) * u}, step[2] = {1, 1};
  return lunet_slice(ctx, t, start, stop, step);
}

/* Row i of the bias (2, 3u) as (1, 3u), on the tape; NULL without bias. */
static lunet_tensor *bias_row(lunet_ctx *ctx, lunet_tensor *b, int i) {
  if (!b) return NULL;
  int64_t start[2] = {i, 0}, stop[2] = {i + 1, lunet_tensor_dim(b, 1)}, step[2] = {1, 1};
  return lunet_slice(ctx, b, start, stop, step);
}

/* The recurrent part of the candidate with reset_after = false:
 * (r * h) U_h. */
typedef struct candidate {
  lunet_tensor *h, *uh;
} candidate;

static lunet_tensor *candidate_part(lunet_ctx *ctx, const candidate *cd, lunet_tensor *r) {
  lunet_tensor *rh = lunet_mul(ctx, r, cd->h), *y = rh ? lunet_matmul(ctx, rh, cd->uh) : NULL;
  layers_release(rh);
  return y;
}

/* One step of reset_after = false: xs (N, 3u) the input part, hs (N, 2u)
 * the recurrent part of z and r (NULL before the first state); cd the
 * candidate's (NULL before the first state); *h becomes the new state (m:
 * the step's mask or NULL). */
static lunet_status step(lunet_ctx *ctx, lunet_tensor *xs, lunet_tensor *hs, const candidate *cd, lunet_tensor **h,
                         int64_t u, lunet_unary_op a, lunet_unary_op ra, lunet_tensor *m) {
  lunet_tensor *x3[3] = {0}, *h2[2] = {0}, *z = NULL, *r = NULL, *g = NULL, *hn = NULL;
  bool ok = true;
  for (int k = 0; ok && k < 3; k++) {
    x3[k] = cols(ctx, xs, u, k);
    if (k < 2) h2[k] = hs ? cols(ctx, hs, u, k) : NULL;
    ok = x3[k] && (k >= 2 || !hs || h2[k]);
  }
  lunet_tensor *sz = ok ? (h2[0] ? lunet_add(ctx, x3[0], h2[0]) : lunet_tensor_retain(x3[0])) : NULL;
  lunet_tensor *sr = sz ? (h2[1] ? lunet_add(ctx, x3[1], h2[1]) : lunet_tensor_retain(x3[1])) : NULL;
  if (sr) z = layers_act(ctx, ra, sz);
  if (z) r = layers_act(ctx, ra, sr);
  if (r) {
    lunet_tensor *rh = cd ? candidate_part(ctx, cd, r) : NULL;
    lunet_tensor *sg = rh ? lunet_add(ctx, x3[2], rh) : (cd ? NULL : lunet_tensor_retain(x3[2]));
    g = sg ? layers_act(ctx, a, sg) : NULL;
    layers_release(rh);
    layers_release(sg);
  }
  if (g) {
    /* h = z * h + (1 - z) * g = g + z * (h - g) */
    lunet_tensor *d = *h ? lunet_sub(ctx, *h, g) : lunet_unary(ctx, LUNET_UNARY_NEG, g, 0, 0);
    lunet_tensor *zd = d ? lunet_mul(ctx, z, d) : NULL;
    hn = zd ? lunet_add(ctx, g, zd) : NULL;
    layers_release(d);
    layers_release(zd);
  }
  if (hn && m) layers_set(&hn, layers_keep_masked(ctx, hn, *h, m));
  lunet_tensor *tmp[] = {x3[0], x3[1], x3[2], h2[0], h2[1], sz, sr, z, r, g};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) layers_release(tmp[i]);
  if (!hn) return lunet_ctx_status(ctx);
  layers_set(h, hn);
  return LUNET_OK;
}

/* reset_after: the input row of the bias (2, 3u); otherwise the bias (3u). */
static lunet_tensor *gru_input_bias(lunet_ctx *ctx, layers_graph *st) {
  lunet_tensor *b = st->w[LAYERS_RNN_BIAS];
  if (b && lunet_tensor_ndim(b) == 1) return lunet_tensor_retain(b);
  return bias_row(ctx, b, 0);
}

/* Columns [first, first + n) of the recurrent kernel (u, 3u), on the tape. */
static lunet_tensor *kernel_cols(lunet_ctx *ctx, layers_graph *st, int64_t first, int64_t n) {
  lunet_tensor *k = st->w[LAYERS_RNN_RECURRENT];
  int64_t start[2] = {0, first}, stop[2] = {lunet_tensor_dim(k, 0), first + n}, step[2] = {1, 1};
  return lunet_slice(ctx, k, start, stop, step);
}

/* One step.  reset_after: the fused cell on h U + b_r, r applied after
 * the product.  Otherwise z and r from h U_zr, the candidate from
 * (r * h) U_h, on the tape op by op. */
static lunet_status gru_cell(lunet_layer *l, lunet_ctx *ctx, layers_graph *st, lunet_tensor *xs,
                             lunet_tensor **states, lunet_tensor *m) {
  int64_t u = lunet_layer_get_int(l, "units");
  lunet_unary_op a = layers_act_op(lunet_layer_get_string(l, "activation"));
  lunet_unary_op ra = layers_act_op(lunet_layer_get_string(l, "recurrent_activation"));
  lunet_tensor *h = states[0];
  lunet_status s;
  if (lunet_layer_get_bool(l, "reset_after")) {
    /* one fused op (lunet_gru_cell) on xs, h U + b_r and h (zeros before
     * the first state) */
    int64_t shape[2] = {lunet_tensor_dim(xs, 0), u};
    lunet_tensor *h0 = h ? lunet_tensor_retain(h) : lunet_op_new(ctx, xs, LUNET_F32, 2, shape);
    if (h0 && !h && lunet_op_fill(ctx, h0, 0.0f)) layers_set(&h0, NULL);
    lunet_tensor *br = bias_row(ctx, st->w[LAYERS_RNN_BIAS], 1);
    lunet_tensor *hu = h0 ? layers_rnn_recurrent_product(ctx, st, h0) : NULL;
    if (hu && br) layers_set(&hu, lunet_add(ctx, hu, br));
    lunet_tensor *hn = hu && (!st->w[LAYERS_RNN_BIAS] || br) ? lunet_gru_cell(ctx, xs, hu, h0, a, ra) : NULL;
    if (hn && m) layers_set(&hn, layers_keep_masked(ctx, hn, h, m));
    layers_release(h0);
    layers_release(br);
    layers_release(hu);
    if (!hn) return lunet_ctx_status(ctx);
    layers_set(&states[0], hn);
    return LUNET_OK;
  }
  lunet_tensor *hm = NULL, *uzr = NULL, *uh = NULL, *hs = NULL;
  if (h) {
    hm = st->rec_mask ? lunet_mul(ctx, h, st->rec_mask) : lunet_tensor_retain(h);
    uzr = hm ? kernel_cols(ctx, st, 0, 2 * u) : NULL;
    uh = uzr ? kernel_cols(ctx, st, 2 * u, u) : NULL;
    hs = uh ? lunet_matmul(ctx, hm, uzr) : NULL;
  }
  candidate cd = {.h = hm, .uh = uh};
  s = h && !hs ? lunet_ctx_status(ctx) : step(ctx, xs, hs, h ? &cd : NULL, &states[0], u, a, ra, m);
  lunet_tensor *tmp[] = {hm, uzr, uh, hs};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) layers_release(tmp[i]);
  return s;
}

static const layers_rnn_kind gru_kind = {1, 3, gru_input_bias, gru_cell};

static lunet_status gru_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **y, bool training) {
  return layers_rnn_forward(l, c, nin, x, y, training, &gru_kind);
}

static int gru_outputs(const lunet_layer *l) { return layers_rnn_output_count(l, 1); }

static const lunet_layer_test gru_tests[] = {
    {LAYERS_ARGS({"units", {.i = 3}}), LAYERS_INPUTS({2, {4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_sequences", {.b = true}}), LAYERS_INPUTS({2, {3, 3}}), 2,
     1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"use_bias", {.b = false}}), LAYERS_INPUTS({2, {2, 2}}), 3, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_state", {.b = true}}, {"go_backwards", {.b = true}}),
     LAYERS_INPUTS({2, {3, 2}}, {1, {2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"dropout", {.f = 0.3}}, {"recurrent_dropout", {.f = 0.4}}),
     LAYERS_INPUTS({2, {4, 3}}), 3, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"reset_after", {.b = false}}), LAYERS_INPUTS({2, {4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"reset_after", {.b = false}}, {"recurrent_dropout", {.f = 0.3}},
                 {"return_sequences", {.b = true}}),
     LAYERS_INPUTS({2, {3, 2}}, {1, {2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_gru = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "GRU",
    .doc = "Gated recurrent unit over (N, T, D): the last h, or every h with return_sequences",
    .args = gru_args,
    .nargs = sizeof gru_args / sizeof gru_args[0],
    .positional = 1,
    .max_inputs = 2,
    .flags = LUNET_LAYER_OWNS_ACTIVATION,
    .call_state_size = sizeof(layers_graph),
    .build = gru_build,
    .forward = gru_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = layers_rnn_mask,
    .tests = gru_tests,
    .ntests = sizeof gru_tests / sizeof gru_tests[0],
    .output_count = gru_outputs,
};
