/*
 * LSTM (Keras's): x (N, T, D) -> the last h (N, units), or every h
 * (N, T, units) with return_sequences.  Weights in Keras's layout, gates in
 * Keras's (and PyTorch's) order i, f, c, o: kernel (D, 4u), recurrent_kernel
 * (u, 4u), bias (4u).  PyTorch's weight_ih_l0 is kernel transposed,
 * weight_hh_l0 recurrent_kernel transposed, and bias_ih_l0 + bias_hh_l0
 * is bias.
 *
 * For each step t:  z = x_t kernel + h recurrent_kernel + bias,
 *   i = rec_act(z_i), f = rec_act(z_f), g = act(z_c), o = rec_act(z_o),
 *   c = f * c + i * g,  h = o * act(c).
 * Forward builds that unrolled graph on the tape from the core's
 * differentiable ops, over detached views of the inputs and weights; backward
 * runs the tape back from dy and hands over what reached those views.  One
 * matrix product covers the input projection of every step, and the gates
 * of a step are one fused op (lunet_lstm_cell) forward and backward.  With an input
 * mask (N, T) (Embedding's mask_zero), a masked step keeps h and c, as in
 * Keras; with return_sequences the output keeps the mask.
 */
#include <stdlib.h>
#include <string.h>

#include "layers.h"

#define LSTM_ACTIVATIONS "tanh|sigmoid|relu|linear"
#define LSTM_INITIALIZERS LAYERS_INITIALIZERS "|orthogonal"

static const lunet_arg_schema lstm_args[] = {
    {"units", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "size of the state h (and c)"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "tanh"},
     .doc = "activation of the candidate and of the cell on output", .choices = LSTM_ACTIVATIONS},
    {"recurrent_activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "sigmoid"},
     .doc = "activation of the gates i, f, o", .choices = LSTM_ACTIVATIONS},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add a bias (4 units)"},
    LAYERS_RNN_ARGS,
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (D, 4 units)", .choices = LSTM_INITIALIZERS},
    {"recurrent_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "orthogonal"},
     .doc = "initializer of the recurrent kernel (units, 4 units)", .choices = LSTM_INITIALIZERS},
    {"unit_forget_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "start the forget gate's bias at 1 (the rest of the bias at 0)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status lstm_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t u = lunet_layer_get_int(l, "units");
  if (u <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "units must be positive, got %lld", (long long)u);
  lunet_status st = layers_rnn_build_io(l, nin, in, out, 2);
  if (st) return st;
  int64_t k[2] = {in[0].dims[1], 4 * u}, r[2] = {u, 4 * u}, b = 4 * u;
  if (lunet_layer_add_weight(l, "kernel", 2, k, lunet_layer_get_string(l, "kernel_initializer"), true) < 0 ||
      lunet_layer_add_weight(l, "recurrent_kernel", 2, r,
                             lunet_layer_get_string(l, "recurrent_initializer"), true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias")) {
    int i = lunet_layer_add_weight(l, "bias", 1, &b, "zeros", true);
    if (i < 0) return layers_failed(l);
    if (lunet_layer_get_bool(l, "unit_forget_bias")) {
      float *v = calloc((size_t)b, sizeof *v);
      if (!v) return lunet_layer_error(l, LUNET_ERR_NOMEM, "out of host memory");
      for (int64_t k = u; k < 2 * u; k++) v[k] = 1.0f;
      lunet_status s = lunet_tensor_write(lunet_layer_ctx(l), lunet_layer_weight(l, i), v, sizeof *v * (size_t)b);
      free(v);
      if (s) return layers_failed(l);
    }
  }
  return LUNET_OK;
}

/* Columns [first, first + u) of t (N, 2u), on the tape. */
static lunet_tensor *half(lunet_ctx *ctx, lunet_tensor *t, int64_t u, int64_t first) {
  int64_t start[2] = {0, first}, stop[2] = {lunet_tensor_dim(t, 0), first + u}, step[2] = {1, 1};
  return lunet_slice(ctx, t, start, stop, step);
}

/* One step: z = zt + h recurrent_kernel, then the gates in one fused op
 * (lunet_lstm_cell: c = f c + i g, h = o act(c)); states (h, c); a masked
 * step keeps both. */
static lunet_status lstm_cell(lunet_layer *l, lunet_ctx *ctx, layers_graph *st, lunet_tensor *zt,
                              lunet_tensor **states, lunet_tensor *m) {
  int64_t u = lunet_layer_get_int(l, "units");
  lunet_tensor *z = layers_rnn_add_recurrent(ctx, st, zt, states[0]);
  lunet_tensor *hc = z ? lunet_lstm_cell(ctx, z, states[1], layers_act_op(lunet_layer_get_string(l, "activation")),
                                         layers_act_op(lunet_layer_get_string(l, "recurrent_activation")))
                       : NULL;
  lunet_tensor *h = hc ? half(ctx, hc, u, 0) : NULL, *c = h ? half(ctx, hc, u, u) : NULL;
  layers_release(z);
  layers_release(hc);
  if (c && m) {
    layers_set(&h, layers_keep_masked(ctx, h, states[0], m));
    layers_set(&c, h ? layers_keep_masked(ctx, c, states[1], m) : NULL);
  }
  if (!h || !c) {
    layers_release(h);
    layers_release(c);
    return lunet_ctx_status(ctx);
  }
  layers_set(&states[0], h);
  layers_set(&states[1], c);
  return LUNET_OK;
}

static const layers_rnn_kind lstm_kind = {2, 4, layers_rnn_plain_bias, lstm_cell};

static lunet_status lstm_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  return layers_rnn_forward(l, c, nin, x, y, training, &lstm_kind);
}

static int lstm_outputs(const lunet_layer *l) { return layers_rnn_output_count(l, 2); }

static const lunet_layer_test lstm_tests[] = {
    {LAYERS_ARGS({"units", {.i = 3}}), LAYERS_INPUTS({2, {4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_sequences", {.b = true}}), LAYERS_INPUTS({2, {3, 3}}), 2,
     1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"use_bias", {.b = false}}, {"activation", {.s = "relu"}}),
     LAYERS_INPUTS({2, {2, 2}}), 3, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_state", {.b = true}}, {"go_backwards", {.b = true}},
                 {"return_sequences", {.b = true}}),
     LAYERS_INPUTS({2, {3, 2}}, {1, {2}}, {1, {2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 3}}, {"dropout", {.f = 0.3}}, {"recurrent_dropout", {.f = 0.4}}),
     LAYERS_INPUTS({2, {4, 3}}), 3, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_lstm = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "LSTM",
    .doc = "Long short-term memory over (N, T, D): the last h, or every h with return_sequences",
    .args = lstm_args,
    .nargs = sizeof lstm_args / sizeof lstm_args[0],
    .positional = 1,
    .max_inputs = 3,
    .flags = LUNET_LAYER_OWNS_ACTIVATION,
    .call_state_size = sizeof(layers_graph),
    .build = lstm_build,
    .forward = lstm_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = layers_rnn_mask,
    .tests = lstm_tests,
    .ntests = sizeof lstm_tests / sizeof lstm_tests[0],
    .output_count = lstm_outputs,
};
