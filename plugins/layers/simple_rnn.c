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

enum { KERNEL = 0, RECURRENT = 1, BIAS = 2 };

static const lunet_arg_schema rnn_args[] = {
    {"units", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "size of the state h"},
    {"activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "tanh"},
     .doc = "activation of the new state", .choices = "tanh|sigmoid|relu|linear"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add a bias (units)"},
    {"return_sequences", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "return h of every step (N, T, units), not only the last (N, units)"},
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
  if (in[0].ndim != 2) return layers_rank_error(l, "2 (timesteps, features)", &in[0]);
  int64_t k[2] = {in[0].dims[1], u}, r[2] = {u, u};
  if (lunet_layer_add_weight(l, "kernel", 2, k, lunet_layer_get_string(l, "kernel_initializer"), true) < 0 ||
      lunet_layer_add_weight(l, "recurrent_kernel", 2, r,
                             lunet_layer_get_string(l, "recurrent_initializer"), true) < 0 ||
      (lunet_layer_get_bool(l, "use_bias") && lunet_layer_add_weight(l, "bias", 1, &u, "zeros", true) < 0))
    return layers_failed(l);
  out[0].ndim = lunet_layer_get_bool(l, "return_sequences") ? 2 : 1;
  out[0].dims[0] = out[0].ndim == 2 ? in[0].dims[0] : u;
  out[0].dims[1] = u;
  return LUNET_OK;
}

static lunet_tensor *unroll(lunet_layer *l, lunet_ctx *ctx, layers_graph *st) {
  int64_t n = lunet_tensor_dim(st->x[0], 0), t = lunet_tensor_dim(st->x[0], 1), d = lunet_tensor_dim(st->x[0], 2);
  int64_t u = lunet_layer_get_int(l, "units");
  bool seq = lunet_layer_get_bool(l, "return_sequences");
  lunet_unary_op a = layers_act_op(lunet_layer_get_string(l, "activation"));
  int64_t flat[2] = {n * t, d}, zshape[3] = {n, t, u}, step2[2] = {n, u};
  lunet_tensor *x2 = lunet_reshape(ctx, st->x[0], 2, flat);
  lunet_tensor *xw = x2 ? lunet_matmul(ctx, x2, st->w[KERNEL]) : NULL;
  if (xw && st->w[BIAS]) layers_set(&xw, lunet_add(ctx, xw, st->w[BIAS]));
  lunet_tensor *z3 = xw ? lunet_reshape(ctx, xw, 3, zshape) : NULL;
  layers_release(x2);
  layers_release(xw);
  lunet_tensor *h = NULL, **hs = NULL, *y = NULL;
  bool ok = z3 != NULL;
  if (ok && seq) ok = (hs = calloc((size_t)t, sizeof *hs)) != NULL;
  for (int64_t s = 0; ok && s < t; s++) {
    int64_t start[3] = {0, s, 0}, stop[3] = {n, s + 1, u}, one[3] = {1, 1, 1};
    lunet_tensor *zs = lunet_slice(ctx, z3, start, stop, one);
    lunet_tensor *zt = zs ? lunet_reshape(ctx, zs, 2, step2) : NULL;
    layers_release(zs);
    if (zt && h) {
      lunet_tensor *hr = lunet_matmul(ctx, h, st->w[RECURRENT]);
      layers_set(&zt, hr ? lunet_add(ctx, zt, hr) : NULL);
      layers_release(hr);
    }
    lunet_tensor *hn = zt ? layers_act(ctx, a, zt) : NULL;
    layers_release(zt);
    if (hn && st->mask) {
      lunet_tensor *mt = layers_rnn_mask_at(ctx, st->mask, s);
      layers_set(&hn, mt ? layers_keep_masked(ctx, hn, h, mt) : NULL);
      layers_release(mt);
    }
    ok = hn != NULL;
    if (ok) layers_set(&h, hn);
    if (ok && seq) {
      int64_t hshape[3] = {n, 1, u};
      ok = (hs[s] = lunet_reshape(ctx, h, 3, hshape)) != NULL;
    }
  }
  if (ok) y = seq ? lunet_concat(ctx, hs, (int)t, 1) : lunet_tensor_retain(h);
  for (int64_t s = 0; hs && s < t; s++) layers_release(hs[s]);
  free(hs);
  layers_release(z3);
  layers_release(h);
  return y;
}

static lunet_status rnn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **y, bool training) {
  return layers_rnn_forward(l, c, x[0], y, unroll);
}

static const lunet_layer_test rnn_tests[] = {
    {LAYERS_ARGS({"units", {.i = 3}}), LAYERS_INPUTS({2, {4, 2}}), 2, 1e-2f},
    {LAYERS_ARGS({"units", {.i = 2}}, {"return_sequences", {.b = true}}), LAYERS_INPUTS({2, {3, 3}}), 2,
     1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_simple_rnn = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SimpleRNN",
    .doc = "Fully-connected recurrent layer over (N, T, D): h = act(x W + h U + b)",
    .args = rnn_args,
    .nargs = sizeof rnn_args / sizeof rnn_args[0],
    .positional = 1,
    .flags = LUNET_LAYER_OWNS_ACTIVATION,
    .call_state_size = sizeof(layers_graph),
    .build = rnn_build,
    .forward = rnn_forward,
    .backward = layers_graph_backward_member,
    .release = layers_graph_release_member,
    .compute_mask = layers_rnn_mask,
    .tests = rnn_tests,
    .ntests = sizeof rnn_tests / sizeof rnn_tests[0],
};
