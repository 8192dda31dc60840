/*
 * What the recurrent layers (LSTM, GRU, SimpleRNN) share, Keras's
 * behaviour: the input projection of every step in one product, the loop
 * over the steps (reversed with go_backwards, whose sequence output then
 * runs from the last step to the first, as in Keras), masked steps that
 * keep the state, initial states passed as extra inputs (gradients flow to
 * them) and the final states as extra outputs with return_state.  Each
 * layer gives its cell: one step from the step's projection and the
 * states.
 */
#include <stdlib.h>

#include "layers.h"

int layers_rnn_output_count(const lunet_layer *l, int nstates) {
  return lunet_layer_get_bool(l, "return_state") ? 1 + nstates : 1;
}

lunet_status layers_rnn_build_io(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out, int nstates) {
  int64_t u = lunet_layer_get_int(l, "units");
  static const char *const rates[2] = {"dropout", "recurrent_dropout"};
  for (int i = 0; i < 2; i++) {
    double r = lunet_layer_get_float(l, rates[i]);
    if (!(r >= 0 && r < 1)) return lunet_layer_error(l, LUNET_ERR_ARG, "%s must be in [0, 1), got %g", rates[i], r);
  }
  if (in[0].ndim != 2) return layers_rank_error(l, "2 (timesteps, features)", &in[0]);
  if (nin != 1 && nin != 1 + nstates)
    return lunet_layer_error(l, LUNET_ERR_ARG, "takes the sequence and %d initial state%s, got %d inputs", nstates,
                             nstates == 1 ? "" : "s", nin);
  for (int i = 1; i < nin; i++)
    if (in[i].ndim != 1 || in[i].dims[0] != u) {
      char buf[128];
      return lunet_layer_error(l, LUNET_ERR_SHAPE, "initial state %d must be (None, %lld) (units), got %s", i,
                               (long long)u, layers_sample_str(&in[i], buf, sizeof buf));
    }
  out[0].ndim = lunet_layer_get_bool(l, "return_sequences") ? 2 : 1;
  out[0].dims[0] = out[0].ndim == 2 ? in[0].dims[0] : u;
  out[0].dims[1] = u;
  for (int j = 1; j < layers_rnn_output_count(l, nstates); j++) out[j] = (lunet_shape){1, {u}};
  return LUNET_OK;
}

/* The unrolled graph over st's views: y (N, u) or (N, T, u), and the final
 * states (new references) into states. */
/* A dropout mask of shape (d0, d1[, d2]) on x's backend, off the tape. */
static lunet_tensor *dropout_mask(lunet_ctx *ctx, lunet_tensor *x, int nd, const int64_t *shape, float rate) {
  lunet_tensor *like = lunet_op_new(ctx, x, LUNET_F32, nd, shape);
  lunet_tensor *m = like ? lunet_op_dropout_mask(ctx, like, rate) : NULL;
  layers_release(like);
  return m;
}

static lunet_tensor *unroll(lunet_layer *l, lunet_ctx *ctx, layers_graph *st, const layers_rnn_kind *k,
                            lunet_tensor **states, lunet_tensor *x) {
  int64_t n = lunet_tensor_dim(st->x[0], 0), t = lunet_tensor_dim(st->x[0], 1), d = lunet_tensor_dim(st->x[0], 2);
  int64_t u = lunet_layer_get_int(l, "units"), w = k->gates * u;
  bool seq = lunet_layer_get_bool(l, "return_sequences"), back = lunet_layer_get_bool(l, "go_backwards");
  bool zero_masked = seq && st->mask && lunet_layer_get_bool(l, "zero_output_for_mask");
  /* the input projection of every step at once: (N*T, D) kernel + bias */
  int64_t flat[2] = {n * t, d}, zshape[3] = {n, t, w}, step2[2] = {n, w};
  lunet_tensor *bias = k->input_bias(ctx, st);
  lunet_tensor *x2 = lunet_reshape(ctx, x, 2, flat);
  lunet_tensor *xw = x2 ? lunet_matmul(ctx, x2, st->w[LAYERS_RNN_KERNEL]) : NULL;
  if (xw && bias) layers_set(&xw, lunet_add(ctx, xw, bias));
  lunet_tensor *z3 = xw ? lunet_reshape(ctx, xw, 3, zshape) : NULL;
  layers_release(x2);
  layers_release(xw);
  layers_release(bias);
  for (int i = 0; i < k->nstates; i++) states[i] = st->x[1 + i] ? lunet_tensor_retain(st->x[1 + i]) : NULL;
  lunet_tensor **hs = NULL, *y = NULL;
  bool ok = z3 != NULL;
  if (ok && seq) ok = (hs = calloc((size_t)t, sizeof *hs)) != NULL;
  for (int64_t i = 0; ok && i < t; i++) {
    int64_t s = back ? t - 1 - i : i;
    int64_t start[3] = {0, s, 0}, stop[3] = {n, s + 1, w}, one[3] = {1, 1, 1};
    lunet_tensor *zs = lunet_slice(ctx, z3, start, stop, one);
    lunet_tensor *zt = zs ? lunet_reshape(ctx, zs, 2, step2) : NULL;
    layers_release(zs);
    lunet_tensor *mt = layers_rnn_mask_at(ctx, st->mask, s);
    ok = zt && (!st->mask || mt) && k->cell(l, ctx, st, zt, states, mt) == LUNET_OK;
    layers_release(zt);
    if (ok && seq) { /* h, or h times the step's mask: zeros where masked */
      int64_t hshape[3] = {n, 1, u};
      lunet_tensor *h = zero_masked ? lunet_mul(ctx, states[0], mt) : lunet_tensor_retain(states[0]);
      ok = h && (hs[i] = lunet_reshape(ctx, h, 3, hshape)) != NULL;
      layers_release(h);
    }
    layers_release(mt);
  }
  if (ok) y = seq ? lunet_concat(ctx, hs, (int)t, 1) : lunet_tensor_retain(states[0]);
  for (int64_t i = 0; hs && i < t; i++) layers_release(hs[i]);
  free(hs);
  layers_release(z3);
  if (!y)
    for (int i = 0; i < k->nstates; i++) layers_set(&states[i], NULL);
  return y;
}

lunet_status layers_rnn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training, const layers_rnn_kind *k) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_graph *st = lunet_call_state(c);
  layers_graph_release(st);
  /* (N, T): a masked step keeps the state, as in Keras */
  if (lunet_call_mask(c, 0) && !(st->mask = layers_step_mask(c, x[0]))) return lunet_ctx_status(ctx);
  lunet_status s = layers_graph_begin_many(c, l, st, nin, x, layers_rnn_nweights(l));
  if (s) return s;
  /* Keras's dropout: one mask per sequence for the inputs (N, 1, D) and one
   * for h in the recurrent product (N, units), the same at every step */
  float rate = (float)lunet_layer_get_float(l, "dropout"), rrate = (float)lunet_layer_get_float(l, "recurrent_dropout");
  int64_t n = lunet_tensor_dim(x[0], 0), u = lunet_layer_get_int(l, "units");
  lunet_tensor *xin = lunet_tensor_retain(st->x[0]);
  if (training && rate > 0) {
    int64_t shape[3] = {n, 1, lunet_tensor_dim(x[0], 2)};
    lunet_tensor *m = dropout_mask(ctx, x[0], 3, shape, rate);
    layers_set(&xin, m ? lunet_mul(ctx, st->x[0], m) : NULL);
    layers_release(m);
  }
  if (xin && training && rrate > 0) {
    int64_t shape[2] = {n, u};
    if (!(st->rec_mask = dropout_mask(ctx, x[0], 2, shape, rrate))) layers_set(&xin, NULL);
  }
  lunet_tensor *outs[1 + LAYERS_RNN_MAX_STATES] = {0}, *states[LAYERS_RNN_MAX_STATES] = {0};
  outs[0] = xin ? unroll(l, ctx, st, k, states, xin) : NULL;
  layers_release(xin);
  int nout = layers_rnn_output_count(l, k->nstates);
  for (int i = 0; i < k->nstates; i++) {
    if (i + 1 < nout) outs[i + 1] = states[i];
    else layers_release(states[i]);
  }
  return layers_graph_end_many(c, st, nout, outs, y);
}

lunet_status layers_rnn_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **mask_out) {
  lunet_tensor *m = lunet_call_mask(c, 0);
  mask_out[0] = m && lunet_layer_get_bool(l, "return_sequences") ? lunet_tensor_retain(m) : NULL;
  return LUNET_OK;
}
