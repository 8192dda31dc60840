/*
 * Fused recurrent cells: one backend kernel for the gates of a step
 * forward and one for its gradient, where the unrolled graph would run a
 * dozen small ops (slices, activations, products) per step.  The LSTM's is
 * differentiable (recorded on the tape) and returns [h, c] side by side.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Whether the backend has op `fn` of ABI 2.1 (a 2.0 backend's interface
 * ends before them); an error naming op and backend otherwise. */
static bool has_op(lunet_ctx *ctx, lunet_be *be, bool present, const char *op) {
  if (be->desc->abi_minor >= 1 && present) return true;
  lunet_error(ctx, LUNET_ERR_UNSUPPORTED, "%s is not supported by backend '%s' (built for ABI %u.%u)", op, be->name,
              be->desc->abi_major, be->desc->abi_minor);
  return false;
}

static bool cell_act_ok(lunet_ctx *ctx, lunet_unary_op op) {
  if (op == LUNET_UNARY_TANH || op == LUNET_UNARY_SIGMOID || op == LUNET_UNARY_RELU || op == LUNET_UNARY_AFFINE)
    return true;
  lunet_error(ctx, LUNET_ERR_ARG, "lstm_cell: activation op %d is not tanh, sigmoid, relu or linear", (int)op);
  return false;
}

/* The gradient of the fused cell: dhc (n, 2u) -> dz and dcp. */
static lunet_status lstm_cell_backward(lunet_ctx *ctx, lunet_node *nd, lunet_tensor *dy, lunet_tensor **dx) {
  lunet_tensor *z = nd->inputs[0], *cp = nd->ninputs > 1 ? nd->inputs[1] : NULL;
  lunet_tensor *hc = nd->saved[0], *gates = nd->saved[1];
  lunet_be *be = z->buf->be;
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->lstm_cell_backward, "lstm_cell_backward")) return ctx->status;
  int64_t n = z->shape[0], u = z->shape[1] / 4, cs[2] = {n, u};
  bool need_cp = cp && (cp->requires_grad || cp->grad_fn);
  lunet_tensor *dz = lunet_tensor_on(ctx, be, LUNET_F32, 2, z->shape);
  lunet_tensor *dcp = dz && need_cp ? lunet_tensor_on(ctx, be, LUNET_F32, 2, cs) : NULL;
  if (!dz || (need_cp && !dcp)) {
    lunet_tensor_release(dz);
    return ctx->status;
  }
  lunet_status s = lunet_be_check(
      ctx, be,
      PROFILED(ctx, be, "lstm_cell_backward", 0, be->i->lstm_cell_backward(be->state, dz->buf->handle, dcp ? dcp->buf->handle : NULL, dy->buf->handle,
                                hc->buf->handle, gates->buf->handle, cp ? cp->buf->handle : NULL, (size_t)n,
                                (size_t)u, (lunet_unary_op)nd->iparams[0], (lunet_unary_op)nd->iparams[1])),
      "lstm_cell_backward");
  if (s) {
    lunet_tensor_release(dz);
    lunet_tensor_release(dcp);
    return s;
  }
  dx[0] = dz;
  if (nd->ninputs > 1) dx[1] = dcp;
  return LUNET_OK;
}

lunet_tensor *lunet_lstm_cell(lunet_ctx *ctx, lunet_tensor *z, lunet_tensor *cp, lunet_unary_op act,
                              lunet_unary_op rec) {
  char a[128], b[128];
  if (z->ndim != 2 || z->shape[1] % 4 || z->dtype != LUNET_F32 ||
      (cp && (cp->ndim != 2 || cp->shape[0] != z->shape[0] || cp->shape[1] * 4 != z->shape[1] ||
              cp->dtype != LUNET_F32))) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "lstm_cell: z %s must be float32 (n, 4u) and the cell %s (n, u)",
                lunet_shape_str(z->ndim, z->shape, a, sizeof a),
                cp ? lunet_shape_str(cp->ndim, cp->shape, b, sizeof b) : "(none)");
    return NULL;
  }
  lunet_be *be = z->buf->be;
  if (cp && cp->buf->be != be) {
    lunet_error(ctx, LUNET_ERR_ARG, "lstm_cell: z and the cell live on different backends ('%s' and '%s')", be->name,
                cp->buf->be->name);
    return NULL;
  }
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->lstm_cell, "lstm_cell") || !cell_act_ok(ctx, act) ||
      !cell_act_ok(ctx, rec))
    return NULL;
  int64_t n = z->shape[0], u = z->shape[1] / 4, hs[2] = {n, 2 * u};
  lunet_tensor *hc = lunet_tensor_on(ctx, be, LUNET_F32, 2, hs);
  lunet_tensor *gates = hc ? lunet_tensor_on(ctx, be, LUNET_F32, 2, z->shape) : NULL;
  if (!gates ||
      lunet_be_check(ctx, be,
                     PROFILED(ctx, be, "lstm_cell", 0, be->i->lstm_cell(be->state, hc->buf->handle, gates->buf->handle, z->buf->handle,
                                      cp ? cp->buf->handle : NULL, (size_t)n, (size_t)u, act, rec)),
                     "lstm_cell")) {
    lunet_tensor_release(hc);
    lunet_tensor_release(gates);
    return NULL;
  }
  lunet_tensor *inputs[2] = {z, cp};
  int nin = cp ? 2 : 1;
  if (lunet_needs_grad(ctx, nin, inputs)) {
    lunet_node *nd = lunet_node_new(ctx, "lstm_cell", nin, inputs);
    lunet_tensor *saved = nd ? lunet_tensor_alias(ctx, hc, 2, hc->shape) : NULL;
    if (!saved) {
      if (nd) lunet_node_release(nd);
      lunet_tensor_release(hc);
      lunet_tensor_release(gates);
      return NULL;
    }
    nd->backward = lstm_cell_backward;
    nd->iparams[0] = act;
    nd->iparams[1] = rec;
    nd->saved[0] = saved;
    nd->saved[1] = gates;
    gates = NULL;
    lunet_node_attach(hc, nd);
  }
  lunet_tensor_release(gates);
  return hc;
}

/* ---- layer normalization, fused ---- */

static bool wants_grad(const lunet_tensor *t) { return t->requires_grad || t->grad_fn; }

/* dy -> dx, dgamma, dbeta (each only when its input needs it). */
static lunet_status layernorm_backward(lunet_ctx *ctx, lunet_node *nd, lunet_tensor *dy, lunet_tensor **dx) {
  lunet_tensor *x = nd->inputs[0], *gamma = nd->inputs[1], *beta = nd->inputs[2];
  lunet_tensor *mean = nd->saved[0], *rstd = nd->saved[1];
  lunet_be *be = x->buf->be;
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->layernorm_backward, "layernorm_backward")) return ctx->status;
  int64_t cols = gamma->numel, rows = cols ? x->numel / cols : 0;
  lunet_tensor *g[3] = {wants_grad(x) ? lunet_tensor_on(ctx, be, LUNET_F32, x->ndim, x->shape) : NULL,
                        wants_grad(gamma) ? lunet_tensor_on(ctx, be, LUNET_F32, gamma->ndim, gamma->shape) : NULL,
                        wants_grad(beta) ? lunet_tensor_on(ctx, be, LUNET_F32, beta->ndim, beta->shape) : NULL};
  lunet_status s = (wants_grad(x) && !g[0]) || (wants_grad(gamma) && !g[1]) || (wants_grad(beta) && !g[2])
                       ? ctx->status
                       : lunet_be_check(ctx, be,
                                        PROFILED(ctx, be, "layernorm_backward", 0, be->i->layernorm_backward(be->state, g[0] ? g[0]->buf->handle : NULL,
                                                                  g[1] ? g[1]->buf->handle : NULL,
                                                                  g[2] ? g[2]->buf->handle : NULL, dy->buf->handle,
                                                                  x->buf->handle, gamma->buf->handle,
                                                                  mean->buf->handle, rstd->buf->handle,
                                                                  (size_t)rows, (size_t)cols)),
                                        "layernorm_backward");
  for (int i = 0; i < 3; i++) {
    if (s) lunet_tensor_release(g[i]);
    else dx[i] = g[i];
  }
  return s;
}

lunet_tensor *lunet_layernorm(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *gamma, lunet_tensor *beta, float epsilon) {
  char a[128], b[128];
  int64_t cols = x->ndim ? x->shape[x->ndim - 1] : 0;
  if (x->ndim < 1 || x->dtype != LUNET_F32 || gamma->numel != cols || beta->numel != cols ||
      gamma->dtype != LUNET_F32 || beta->dtype != LUNET_F32) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "layernorm: x %s and gamma, beta %s must be float32 with the last axis's size",
                lunet_shape_str(x->ndim, x->shape, a, sizeof a), lunet_shape_str(gamma->ndim, gamma->shape, b, sizeof b));
    return NULL;
  }
  lunet_be *be = x->buf->be;
  if (gamma->buf->be != be || beta->buf->be != be) {
    lunet_error(ctx, LUNET_ERR_ARG, "layernorm: x, gamma and beta must live on one backend");
    return NULL;
  }
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->layernorm, "layernorm")) return NULL;
  int64_t rows = cols ? x->numel / cols : 0;
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, x->ndim, x->shape);
  lunet_tensor *mean = y ? lunet_tensor_on(ctx, be, LUNET_F32, 1, &rows) : NULL;
  lunet_tensor *rstd = mean ? lunet_tensor_on(ctx, be, LUNET_F32, 1, &rows) : NULL;
  if (!rstd || lunet_be_check(ctx, be,
                              PROFILED(ctx, be, "layernorm", 0, be->i->layernorm(be->state, y->buf->handle, mean->buf->handle, rstd->buf->handle,
                                               x->buf->handle, gamma->buf->handle, beta->buf->handle, (size_t)rows,
                                               (size_t)cols, epsilon)),
                              "layernorm")) {
    lunet_tensor_release(y);
    lunet_tensor_release(mean);
    lunet_tensor_release(rstd);
    return NULL;
  }
  lunet_tensor *inputs[3] = {x, gamma, beta};
  if (lunet_needs_grad(ctx, 3, inputs)) {
    lunet_node *nd = lunet_node_new(ctx, "layernorm", 3, inputs);
    if (!nd) {
      lunet_tensor_release(y);
      lunet_tensor_release(mean);
      lunet_tensor_release(rstd);
      return NULL;
    }
    nd->backward = layernorm_backward;
    nd->saved[0] = mean;
    nd->saved[1] = rstd;
    lunet_node_attach(y, nd);
    return y;
  }
  lunet_tensor_release(mean);
  lunet_tensor_release(rstd);
  return y;
}

/* ---- the GRU cell (reset_after), fused ---- */

/* dhn -> dxs, dhs, dh. */
static lunet_status gru_cell_backward(lunet_ctx *ctx, lunet_node *nd, lunet_tensor *dy, lunet_tensor **dx) {
  lunet_tensor *xs = nd->inputs[0], *hs = nd->inputs[1], *h = nd->inputs[2], *gates = nd->saved[0];
  lunet_be *be = xs->buf->be;
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->gru_cell_backward, "gru_cell_backward")) return ctx->status;
  int64_t n = h->shape[0], u = h->shape[1];
  lunet_tensor *g[3] = {wants_grad(xs) ? lunet_tensor_on(ctx, be, LUNET_F32, 2, xs->shape) : NULL,
                        wants_grad(hs) ? lunet_tensor_on(ctx, be, LUNET_F32, 2, hs->shape) : NULL,
                        wants_grad(h) ? lunet_tensor_on(ctx, be, LUNET_F32, 2, h->shape) : NULL};
  lunet_status s = (wants_grad(xs) && !g[0]) || (wants_grad(hs) && !g[1]) || (wants_grad(h) && !g[2])
                       ? ctx->status
                       : lunet_be_check(ctx, be,
                                        PROFILED(ctx, be, "gru_cell_backward", 0, be->i->gru_cell_backward(be->state, g[0] ? g[0]->buf->handle : NULL,
                                                                 g[1] ? g[1]->buf->handle : NULL,
                                                                 g[2] ? g[2]->buf->handle : NULL, dy->buf->handle,
                                                                 gates->buf->handle, hs->buf->handle, h->buf->handle,
                                                                 (size_t)n, (size_t)u, (lunet_unary_op)nd->iparams[0],
                                                                 (lunet_unary_op)nd->iparams[1])),
                                        "gru_cell_backward");
  for (int i = 0; i < 3; i++) {
    if (s) lunet_tensor_release(g[i]);
    else dx[i] = g[i];
  }
  return s;
}

lunet_tensor *lunet_gru_cell(lunet_ctx *ctx, lunet_tensor *xs, lunet_tensor *hs, lunet_tensor *h, lunet_unary_op act,
                             lunet_unary_op rec) {
  char a[128], b[128], c[128];
  bool ok = h->ndim == 2 && xs->ndim == 2 && hs->ndim == 2 && xs->dtype == LUNET_F32 && hs->dtype == LUNET_F32 &&
            h->dtype == LUNET_F32;
  for (int i = 0; ok && i < 2; i++) ok = xs->shape[i] == hs->shape[i];
  ok = ok && xs->shape[0] == h->shape[0] && xs->shape[1] == 3 * h->shape[1];
  if (!ok) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "gru_cell: xs %s and hs %s must be float32 (n, 3u) and h %s (n, u)",
                lunet_shape_str(xs->ndim, xs->shape, a, sizeof a), lunet_shape_str(hs->ndim, hs->shape, b, sizeof b),
                lunet_shape_str(h->ndim, h->shape, c, sizeof c));
    return NULL;
  }
  lunet_be *be = xs->buf->be;
  if (hs->buf->be != be || h->buf->be != be) {
    lunet_error(ctx, LUNET_ERR_ARG, "gru_cell: its inputs live on different backends");
    return NULL;
  }
  if (!has_op(ctx, be, be->desc->abi_minor >= 1 && be->i->gru_cell, "gru_cell") || !cell_act_ok(ctx, act) ||
      !cell_act_ok(ctx, rec))
    return NULL;
  int64_t n = h->shape[0], u = h->shape[1];
  lunet_tensor *hn = lunet_tensor_on(ctx, be, LUNET_F32, 2, h->shape);
  lunet_tensor *gates = hn ? lunet_tensor_on(ctx, be, LUNET_F32, 2, xs->shape) : NULL;
  if (!gates || lunet_be_check(ctx, be,
                               PROFILED(ctx, be, "gru_cell", 0, be->i->gru_cell(be->state, hn->buf->handle, gates->buf->handle, xs->buf->handle,
                                               hs->buf->handle, h->buf->handle, (size_t)n, (size_t)u, act, rec)),
                               "gru_cell")) {
    lunet_tensor_release(hn);
    lunet_tensor_release(gates);
    return NULL;
  }
  lunet_tensor *inputs[3] = {xs, hs, h};
  lunet_node *nd = lunet_needs_grad(ctx, 3, inputs) ? lunet_node_new(ctx, "gru_cell", 3, inputs) : NULL;
  if (nd) {
    nd->backward = gru_cell_backward;
    nd->iparams[0] = act;
    nd->iparams[1] = rec;
    nd->saved[0] = gates;
    lunet_node_attach(hn, nd);
    return hn;
  }
  lunet_tensor_release(gates);
  if (lunet_needs_grad(ctx, 3, inputs)) { /* the node could not be made */
    lunet_tensor_release(hn);
    return NULL;
  }
  return hn;
}
