/*
 * SimpleRNN (Keras's): x (N, T, D) -> the last h (N, units), or every h
 * with return_sequences; h = act(x_t kernel + h recurrent_kernel + bias).
 * Keras's layout: kernel (D, u), recurrent_kernel (u, u), bias (u);
 * PyTorch's nn.RNN has weight_ih_l0 = kernel^T, weight_hh_l0 =
 * recurrent_kernel^T and bias_ih_l0 + bias_hh_l0 = bias.  Built on the tape
 * like the LSTM (layers_graph); a masked step keeps h.
 */
#include <stdlib.h>

#include "layers.h"

static const lunet_arg_schema rnn_args[] = {
    {"units", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "size of the state h"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "tanh"},
     .doc = "activation of the new state", .choices = "tanh|sigmoid|relu|linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add a bias (units)"},
    LAYERS_RNN_ARGS,
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernel (D, units)", .choices = LAYERS_INITIALIZERS "|orthogonal"},
    {"recurrent_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "orthogonal"},
     .doc = "initializer of the recurrent kernel (units, units)", .choices = LAYERS_INITIALIZERS "|orthogonal"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status rnn_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t u = lunet_layer_get_int(l, "units");
  if (u <= 0) return lunet_layer_error(l, LUNET_ERR_ARG, "units must be positive, got %lld", (long long)u);
  lunet_status st = layers_rnn_build_io(l, nin, in, out, 1);
  if (st) return st;
  int64_t k[2] = {in[0].dims[1], u}, r[2] = {u, u};
  if (lunet_layer_add_weight(l, "kernel", 2, k, lunet_layer_get_string(l, "kernel_initializer"), true) < 0 ||
      lunet_layer_add_weight(l, "recurrent_kernel", 2, r,
                             lunet_layer_get_string(l, "recurrent_initializer"), true) < 0 ||
      (lunet_layer_get_bool(l, "use_bias") && lunet_layer_add_weight(l, "bias", 1, &u, "zeros", true) < 0))
    return layers_failed(l);
  return LUNET_OK;
}

/* One step: h = act(zt + h recurrent_kernel), kept where masked. */
static lunet_status rnn_cell(lunet_layer *l, lunet_ctx *ctx, layers_graph *st, lunet_tensor *zt,
                             lunet_tensor **states, lunet_tensor *m) {
  lunet_tensor *z = layers_rnn_add_recurrent(ctx, st, zt, states[0]);
  lunet_tensor *hn = z ? layers_act(ctx, layers_act_op(lunet_layer_get_string(l, "activation")), z) : NULL;
  layers_release(z);
  if (hn && m) layers_set(&hn, layers_keep_masked(ctx, hn, states[0], m));
  if (!hn) return lunet_ctx_status(ctx);
  layers_set(&states[0], hn);
  return LUNET_OK;
}

static const layers_rnn_kind rnn_kind = {1, 1, layers_rnn_plain_bias, rnn_cell};

static lunet_status rnn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **y, bool training) {
  return layers_rnn_forward(l, c, nin, x, y, training, &rnn_kind);
}

static int rnn_outputs(const lunet_layer *l) { return layers_rnn_output_count(l, 1); }

static const lunet_layer_test rnn_tests[] = {
    {LAYERS_ARGS({"units", {.i = 3}}), LAYERS_INPUTS({2, {4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_sequences", {.b = true}}), LAYERS_INPUTS({2, {3, 3}}), 2,
     1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_state", {.b = true}}, {"go_backwards", {.b = true}}),
     LAYERS_INPUTS({2, {3, 2}}, {1, {2}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_simple_rnn = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SimpleRNN",
    .doc = "Fully-connected recurrent layer over (N, T, D): h = act(x W + h U + b)",
    .args = rnn_args,
    .nargs = sizeof rnn_args / sizeof rnn_args[0],
    .positional = 1,
    .max_inputs = 2,
    .flags = LUNET_LAYER_OWNS_ACTIVATION,
    .call_state_size = sizeof(layers_graph),
    .build = rnn_build,
    .forward = rnn_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = layers_rnn_mask,
    .tests = rnn_tests,
    .ntests = sizeof rnn_tests / sizeof rnn_tests[0],
    .output_count = rnn_outputs,
};
