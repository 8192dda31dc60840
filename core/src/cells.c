/*
 * Fused recurrent cells: one backend kernel for the gates of a step
 * forward and one for its gradient, where the unrolled graph would run a
 * dozen small ops (slices, activations, products) per step.  The LSTM's is
 * differentiable (recorded on the tape) and returns [h, c] side by side.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static bool cell_supported(lunet_ctx *ctx, lunet_be *be, bool backward) {
  if (be->desc->abi_minor >= 1 && (backward ? be->i->lstm_cell_backward != NULL : be->i->lstm_cell != NULL))
    return true;
  lunet_error(ctx, LUNET_ERR_UNSUPPORTED, "lstm_cell%s is not supported by backend '%s' (built for ABI %u.%u)",
              backward ? "_backward" : "", be->name, be->desc->abi_major, be->desc->abi_minor);
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
  if (!cell_supported(ctx, be, true)) return ctx->status;
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
      be->i->lstm_cell_backward(be->state, dz->buf->handle, dcp ? dcp->buf->handle : NULL, dy->buf->handle,
                                hc->buf->handle, gates->buf->handle, cp ? cp->buf->handle : NULL, (size_t)n,
                                (size_t)u, (lunet_unary_op)nd->iparams[0], (lunet_unary_op)nd->iparams[1]),
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
  if (!cell_supported(ctx, be, false) || !cell_act_ok(ctx, act) || !cell_act_ok(ctx, rec)) return NULL;
  int64_t n = z->shape[0], u = z->shape[1] / 4, hs[2] = {n, 2 * u};
  lunet_tensor *hc = lunet_tensor_on(ctx, be, LUNET_F32, 2, hs);
  lunet_tensor *gates = hc ? lunet_tensor_on(ctx, be, LUNET_F32, 2, z->shape) : NULL;
  if (!gates ||
      lunet_be_check(ctx, be,
                     be->i->lstm_cell(be->state, hc->buf->handle, gates->buf->handle, z->buf->handle,
                                      cp ? cp->buf->handle : NULL, (size_t)n, (size_t)u, act, rec),
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
