/*
 * The tape: ops on tensors that require grad record a node holding their
 * inputs; lunet_backward() visits the nodes in reverse topological order and
 * accumulates gradients into the leaves' .grad.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

lunet_node *lunet_node_new(lunet_ctx *ctx, const char *name, int ninputs,
                           lunet_tensor *const *inputs) {
  lunet_node *n = calloc(1, sizeof *n);
  if (!n) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory recording %s", name);
    return NULL;
  }
  n->refcount = 1;
  n->name = name;
  n->ninputs = ninputs;
  for (int i = 0; i < ninputs; i++) n->inputs[i] = lunet_tensor_retain(inputs[i]);
  return n;
}

bool lunet_needs_grad(lunet_ctx *ctx, int n, lunet_tensor *const *ts) {
  if (!ctx->grad_enabled) return false;
  for (int i = 0; i < n; i++)
    if (ts[i] && (ts[i]->requires_grad || ts[i]->grad_fn)) return true;
  return false;
}

void lunet_node_attach(lunet_tensor *out, lunet_node *n) { out->grad_fn = n; }

lunet_tensor *lunet_scalar_like(lunet_ctx *ctx, const lunet_tensor *like, float v) {
  lunet_tensor *t = lunet_tensor_on(ctx, like->buf->be, LUNET_F32, 0, NULL);
  if (t && lunet_op_fill(ctx, t, v)) {
    lunet_tensor_release(t);
    return NULL;
  }
  return t;
}

/* Saves an alias of t (its data, without its grad_fn) to avoid a cycle
 * between a node and its own output. */
static bool save(lunet_ctx *ctx, lunet_node *n, int slot, lunet_tensor *t) {
  n->saved[slot] = lunet_tensor_alias(ctx, t, t->ndim, t->shape);
  return n->saved[slot] != NULL;
}

/* Records `out = op(inputs)` when needed; on failure releases out. */
static lunet_tensor *record(lunet_ctx *ctx, lunet_tensor *out, const char *name, int ninputs,
                            lunet_tensor *const *inputs,
                            lunet_status (*bw)(lunet_ctx *, lunet_node *, lunet_tensor *,
                                               lunet_tensor **),
                            lunet_node **node_out) {
  if (node_out) *node_out = NULL;
  if (!out || !lunet_needs_grad(ctx, ninputs, inputs)) return out;
  lunet_node *n = lunet_node_new(ctx, name, ninputs, inputs);
  if (!n) {
    lunet_tensor_release(out);
    return NULL;
  }
  n->backward = bw;
  out->grad_fn = n;
  if (node_out) *node_out = n;
  return out;
}

/* ---- copies: clone and moves between backends pass the gradient back ---- */

static lunet_status copy_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                  lunet_tensor **dx) {
  lunet_tensor *x = n->inputs[0];
  dx[0] = dy->buf->be == x->buf->be ? lunet_tensor_retain(dy)
                                    : lunet_tensor_to(ctx, dy, x->buf->be->name);
  return dx[0] ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_record_copy(lunet_ctx *ctx, lunet_tensor *out, lunet_tensor *in) {
  return record(ctx, out, "copy", 1, &in, copy_backward, NULL);
}

lunet_tensor *lunet_copy(lunet_ctx *ctx, lunet_tensor *x) {
  return lunet_record_copy(ctx, lunet_op_copy(ctx, x), x);
}

/* ---- backward ---- */

typedef struct order {
  lunet_tensor **items;
  size_t n, cap;
} order;

static bool push(lunet_ctx *ctx, order *o, lunet_tensor *t) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 64;
    lunet_tensor **items = realloc(o->items, cap * sizeof *items);
    if (!items) {
      lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory in backward");
      return false;
    }
    o->items = items;
    o->cap = cap;
  }
  o->items[o->n++] = t;
  return true;
}

/* Post-order over the graph: every tensor comes after its inputs.  An
 * explicit stack, since a long RNN unroll would overflow recursion. */
static bool topo(lunet_ctx *ctx, lunet_tensor *root, uint64_t gen, order *out) {
  order stack = {0};
  bool ok = push(ctx, &stack, root);
  root->grad_fn->mark = gen;
  size_t *next = NULL, depth_cap = 0;
  while (ok && stack.n) {
    if (depth_cap < stack.cap) { /* new slots start at input 0 */
      size_t *nn = realloc(next, stack.cap * sizeof *nn);
      if (!nn) {
        ok = false;
        break;
      }
      for (size_t i = depth_cap; i < stack.cap; i++) nn[i] = 0;
      next = nn;
      depth_cap = stack.cap;
    }
    lunet_tensor *t = stack.items[stack.n - 1];
    lunet_node *n = t->grad_fn;
    size_t *i = &next[stack.n - 1];
    if (*i < (size_t)n->ninputs) {
      lunet_tensor *in = n->inputs[(*i)++];
      if (in->grad_fn) { /* each node's inputs are walked once: its edges counted once */
        if (in->uses_gen != gen) in->uses_gen = gen, in->uses = 0;
        in->uses++;
      }
      if (in->grad_fn && in->grad_fn->mark != gen) {
        in->grad_fn->mark = gen;
        ok = push(ctx, &stack, in);
        if (ok && depth_cap < stack.cap) continue; /* grow next[] first */
        if (ok) next[stack.n - 1] = 0;
      }
    } else {
      stack.n--;
      ok = push(ctx, out, t);
    }
  }
  free(stack.items);
  free(next);
  if (!ok && ctx->status == LUNET_OK)
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory in backward");
  return ok;
}

/* Adds g into *slot, taking g's reference.  A gradient shared with anyone
 * else (the same dy handed to both inputs of an add, a user's grad_out, a
 * reshape alias) is copied before it becomes an accumulator, so
 * accumulating in place never changes another tensor. */
static lunet_status add_into(lunet_ctx *ctx, lunet_tensor **slot, lunet_tensor *g) {
  if (!*slot) {
    if (g->refcount > 1 || g->buf->refcount > 1) {
      lunet_tensor *c = lunet_op_copy(ctx, g);
      lunet_tensor_release(g);
      if (!c) return ctx->status;
      g = c;
    }
    *slot = g;
    return LUNET_OK;
  }
  lunet_status s = lunet_op_accumulate(ctx, *slot, g);
  lunet_tensor_release(g);
  return s;
}

static lunet_status slice_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy, lunet_tensor **dx);

/* A slice's gradient added straight into its input's accumulator at the
 * sliced positions (made as zeros the first time): a slice of a big tensor
 * (an RNN's step of its input projection) costs the slice's size, not the
 * tensor's, in each backward. */
static lunet_status slice_into(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy, lunet_tensor **slot,
                               lunet_tensor *x) {
  if (!*slot) {
    lunet_tensor *z = lunet_tensor_on(ctx, x->buf->be, LUNET_F32, x->ndim, x->shape);
    if (!z || lunet_op_fill(ctx, z, 0)) {
      lunet_tensor_release(z);
      return ctx->status;
    }
    *slot = z;
  }
  int64_t start[LUNET_MAX_DIMS], stop[LUNET_MAX_DIMS], step[LUNET_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) {
    start[i] = n->iparams[i];
    step[i] = n->iparams[LUNET_MAX_DIMS + i];
    stop[i] = dy->shape[i] ? start[i] + (dy->shape[i] - 1) * step[i] + 1 : start[i];
  }
  if (!dy->numel) return LUNET_OK;
  lunet_tensor *part = lunet_op_slice(ctx, *slot, start, stop, step);
  lunet_status s = !part ? ctx->status : lunet_op_accumulate(ctx, part, dy);
  if (!s) s = lunet_op_assign_slice(ctx, *slot, start, stop, step, part);
  lunet_tensor_release(part);
  return s;
}

static lunet_status propagate(lunet_ctx *ctx, lunet_tensor *t) {
  lunet_node *n = t->grad_fn;
  lunet_tensor *dx[LUNET_NODE_MAX_INPUTS] = {0};
  lunet_tensor *dy = t->acc;
  t->acc = NULL;
  if (n->backward == slice_backward) {
    lunet_tensor *in = n->inputs[0];
    lunet_status s = in->grad_fn ? slice_into(ctx, n, dy, &in->acc, in)
                     : in->requires_grad ? slice_into(ctx, n, dy, &in->grad, in)
                                         : LUNET_OK;
    lunet_tensor_release(dy);
    return s;
  }
  uint64_t t0 = n->prof_layer ? lunet_prof_now(ctx) : 0;
  lunet_status s = n->backward(ctx, n, dy, dx);
  if (t0) lunet_prof_layer(ctx, n->prof_layer, "activation_backward", t0);
  lunet_tensor_release(dy);
  for (int i = 0; i < n->ninputs; i++) {
    lunet_tensor *in = n->inputs[i];
    if (!dx[i]) continue;
    if (s != LUNET_OK) {
      lunet_tensor_release(dx[i]);
      continue;
    }
    if (in->grad_fn) {
      s = add_into(ctx, &in->acc, dx[i]);
    } else if (in->requires_grad) {
      /* A leaf's gradient keeps the leaf's shape (views of one buffer may differ). */
      lunet_tensor *g = dx[i];
      if (!lunet_shape_equal(g, in)) {
        g = lunet_tensor_alias(ctx, dx[i], in->ndim, in->shape);
        lunet_tensor_release(dx[i]);
        if (!g) {
          s = ctx->status;
          continue;
        }
      }
      s = add_into(ctx, &in->grad, g);
    } else {
      lunet_tensor_release(dx[i]);
    }
  }
  return s;
}

/* The gradient backward starts from: grad_out, or 1 for a one-element tensor. */
static lunet_tensor *seed_grad(lunet_ctx *ctx, lunet_tensor *root, lunet_tensor *grad_out) {
  if (grad_out) return lunet_tensor_retain(grad_out);
  if (root->numel != 1) {
    lunet_error(ctx, LUNET_ERR_ARG,
                "backward on a tensor of %lld elements needs a "
                "gradient argument (or call it on a scalar loss)",
                (long long)root->numel);
    return NULL;
  }
  lunet_tensor *one = lunet_scalar_like(ctx, root, 1);
  lunet_tensor *g = one ? lunet_tensor_alias(ctx, one, root->ndim, root->shape) : NULL;
  lunet_tensor_release(one);
  if (g) g->unit = true;
  return g;
}

/* Counts (count) or releases (done) the uses of leaves by node t's inputs;
 * a leaf whose last use has run is reported. */
static void leaf_uses(lunet_tensor *t, bool count, lunet_leaf_done_fn done, void *user) {
  lunet_node *n = t->grad_fn;
  for (int k = 0; k < n->ninputs; k++) {
    lunet_tensor *in = n->inputs[k];
    if (in->grad_fn || !in->requires_grad) continue;
    if (count)
      in->pending++;
    else if (--in->pending == 0 && in->grad)
      done(user, in);
  }
}

/* Backward from n roots at once (a layer's graph with several outputs):
 * one topological order over all of them, each root seeded with its
 * gradient (grads[i], or 1 for a one-element root when grads is NULL).  A
 * root nothing differentiable reaches is skipped when `skip_constant`, an
 * error otherwise. */
static lunet_status run_backward(lunet_ctx *ctx, int n, lunet_tensor *const *roots,
                                 lunet_tensor *const *grads, bool skip_constant,
                                 lunet_leaf_done_fn done, void *user) {
  for (int r = 0; r < n; r++) {
    lunet_tensor *root = roots[r], *grad_out = grads ? grads[r] : NULL;
    if (grad_out && !lunet_shape_equal(grad_out, root)) {
      char a[128], b[128];
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "backward: the gradient has shape %s but the tensor "
                         "has shape %s",
                         lunet_shape_str(grad_out->ndim, grad_out->shape, a, sizeof a),
                         lunet_shape_str(root->ndim, root->shape, b, sizeof b));
    }
    if (!root->grad_fn && !root->requires_grad && !skip_constant)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "backward: this tensor does not require grad "
                         "(no input of the computation had requires_grad(true))");
    if (root->grad_fn) {
      lunet_tensor_release(root->acc);
      root->acc = NULL;
    }
  }
  order o = {0};
  uint64_t gen = ++ctx->generation, outer_gen = ctx->backward_gen;
  ctx->backward_gen = gen; /* a backward inside a node's (a layer's own graph) restores it */
  lunet_status s = LUNET_OK;
  for (int r = 0; !s && r < n; r++) {
    lunet_tensor *root = roots[r];
    if (!root->grad_fn && !root->requires_grad) continue;
    lunet_tensor *g = seed_grad(ctx, root, grads ? grads[r] : NULL);
    if (!g) {
      s = ctx->status;
    } else if (!root->grad_fn) { /* a leaf */
      s = add_into(ctx, &root->grad, g);
      if (!s && done) done(user, root);
    } else {
      s = add_into(ctx, &root->acc, g);
      if (!s && root->grad_fn->mark != gen && !topo(ctx, root, gen, &o)) s = ctx->status;
    }
  }
  if (done && !s) {
    for (size_t i = 0; i < o.n; i++)
      for (int k = 0; k < o.items[i]->grad_fn->ninputs; k++) o.items[i]->grad_fn->inputs[k]->pending = 0;
    for (size_t i = 0; i < o.n; i++) leaf_uses(o.items[i], true, NULL, NULL);
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  for (size_t i = o.n; s == LUNET_OK && i-- > 0;) {
    if (o.items[i]->acc) s = propagate(ctx, o.items[i]);
    if (done && s == LUNET_OK) leaf_uses(o.items[i], false, done, user);
  }
  for (size_t i = 0; i < o.n; i++) {
    lunet_tensor_release(o.items[i]->acc);
    o.items[i]->acc = NULL;
  }
  for (int r = 0; r < n; r++)
    if (roots[r]->grad_fn) {
      lunet_tensor_release(roots[r]->acc);
      roots[r]->acc = NULL;
    }
  lunet_set_grad_enabled(ctx, prev);
  free(o.items);
  ctx->backward_gen = outer_gen;
  return s;
}

lunet_status lunet_backward(lunet_ctx *ctx, lunet_tensor *root, lunet_tensor *grad_out) {
  return run_backward(ctx, 1, &root, grad_out ? &grad_out : NULL, false, NULL, NULL);
}

lunet_status lunet_backward_many(lunet_ctx *ctx, int n, lunet_tensor *const *roots,
                                 lunet_tensor *const *grads) {
  return run_backward(ctx, n, roots, grads, true, NULL, NULL);
}

lunet_status lunet_backward_hooked(lunet_ctx *ctx, lunet_tensor *root, lunet_leaf_done_fn done,
                                   void *user) {
  return run_backward(ctx, 1, &root, NULL, false, done, user);
}

/* ---- elementwise ---- */

static lunet_tensor *reduce_like(lunet_ctx *ctx, lunet_tensor *g, const lunet_tensor *like) {
  if (!g || lunet_shape_equal(g, like)) return g;
  lunet_tensor *r = lunet_op_sum_to(ctx, g, like->ndim, like->shape);
  lunet_tensor_release(g);
  if (r && !lunet_shape_equal(r, like)) {
    lunet_tensor *a = lunet_tensor_alias(ctx, r, like->ndim, like->shape);
    lunet_tensor_release(r);
    r = a;
  }
  return r;
}

static lunet_tensor *bin(lunet_ctx *ctx, lunet_binary_op op, lunet_tensor *a, lunet_tensor *b) {
  return lunet_op_binary(ctx, op, a, b);
}

static lunet_status binary_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                    lunet_tensor **dx) {
  lunet_tensor *a = n->inputs[0], *b = n->inputs[1], *ga = NULL, *gb = NULL;
  lunet_binary_op op = (lunet_binary_op)n->iparams[0];
  bool need_a = a->requires_grad || a->grad_fn, need_b = b->requires_grad || b->grad_fn;
  switch (op) {
  case LUNET_BINARY_ADD:
    ga = need_a ? lunet_tensor_retain(dy) : NULL;
    gb = need_b ? lunet_tensor_retain(dy) : NULL;
    break;
  case LUNET_BINARY_SUB:
    ga = need_a ? lunet_tensor_retain(dy) : NULL;
    gb = need_b ? lunet_op_unary(ctx, LUNET_UNARY_NEG, dy, 0, 0) : NULL;
    break;
  case LUNET_BINARY_MUL:
    ga = need_a ? bin(ctx, LUNET_BINARY_MUL, dy, b) : NULL;
    gb = need_b ? bin(ctx, LUNET_BINARY_MUL, dy, a) : NULL;
    break;
  case LUNET_BINARY_DIV: {
    ga = need_a ? bin(ctx, LUNET_BINARY_DIV, dy, b) : NULL;
    if (need_b) { /* -dy * a / b^2 = -(dy / b) * (a / b) */
      lunet_tensor *q = bin(ctx, LUNET_BINARY_DIV, dy, b), *r = bin(ctx, LUNET_BINARY_DIV, a, b);
      lunet_tensor *p = q && r ? bin(ctx, LUNET_BINARY_MUL, q, r) : NULL;
      gb = p ? lunet_op_unary(ctx, LUNET_UNARY_NEG, p, 0, 0) : NULL;
      lunet_tensor_release(q);
      lunet_tensor_release(r);
      lunet_tensor_release(p);
    }
    break;
  }
  case LUNET_BINARY_POW: {
    /* y = a^b: da = dy b a^(b-1), db = dy y ln a, with PyTorch's zeros
     * where the formula is 0 * inf: da where b = 0 (a^(b-1) taken as a^0
     * there, times b = 0), db where a = 0 and b >= 0 (ln a taken as ln 1) */
    lunet_tensor *y = n->saved[0];
    lunet_tensor *dyy = bin(ctx, LUNET_BINARY_MUL, dy, y), *zero = lunet_scalar_like(ctx, a, 0.0f);
    if (need_a && dyy && zero) {
      lunet_tensor *b0 = bin(ctx, LUNET_BINARY_EQ, b, zero), *b1 = b0 ? bin(ctx, LUNET_BINARY_ADD, b, b0) : NULL;
      lunet_tensor *bm1 = b1 ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, b1, 1, -1) : NULL;
      lunet_tensor *p = bm1 ? bin(ctx, LUNET_BINARY_POW, a, bm1) : NULL;
      lunet_tensor *bp = p ? bin(ctx, LUNET_BINARY_MUL, b, p) : NULL;
      ga = bp ? bin(ctx, LUNET_BINARY_MUL, dy, bp) : NULL;
      lunet_tensor *tmp[] = {b0, b1, bm1, p, bp};
      for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
    }
    if (need_b && dyy && zero) {
      lunet_tensor *a0 = bin(ctx, LUNET_BINARY_EQ, a, zero), *bneg = bin(ctx, LUNET_BINARY_LT, b, zero);
      lunet_tensor *bpos = bneg ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, bneg, -1, 1) : NULL;
      lunet_tensor *z = a0 && bpos ? bin(ctx, LUNET_BINARY_MUL, a0, bpos) : NULL;
      lunet_tensor *a1 = z ? bin(ctx, LUNET_BINARY_ADD, a, z) : NULL;
      lunet_tensor *la = a1 ? lunet_op_unary(ctx, LUNET_UNARY_LOG, a1, 0, 0) : NULL;
      gb = la ? bin(ctx, LUNET_BINARY_MUL, dyy, la) : NULL;
      lunet_tensor *tmp[] = {a0, bneg, bpos, z, a1, la};
      for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
    }
    lunet_tensor_release(dyy);
    lunet_tensor_release(zero);
    break;
  }
  case LUNET_BINARY_MAX:
  case LUNET_BINARY_MIN: { /* the gradient goes to the selected side (a on ties) */
    lunet_tensor *y = n->saved[0];
    lunet_tensor *ma = bin(ctx, LUNET_BINARY_EQ, a, y);
    lunet_tensor *mb = ma ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, ma, -1, 1) : NULL;
    ga = need_a && ma ? bin(ctx, LUNET_BINARY_MUL, dy, ma) : NULL;
    gb = need_b && mb ? bin(ctx, LUNET_BINARY_MUL, dy, mb) : NULL;
    lunet_tensor_release(ma);
    lunet_tensor_release(mb);
    break;
  }
  default: /* comparisons have no gradient */
    return LUNET_OK;
  }
  dx[0] = need_a ? reduce_like(ctx, ga, a) : NULL;
  dx[1] = need_b ? reduce_like(ctx, gb, b) : NULL;
  if ((need_a && !dx[0]) || (need_b && !dx[1])) return ctx->status ? ctx->status : LUNET_ERR_NOMEM;
  return LUNET_OK;
}

/* uint8 and int32 operands of arithmetic, comparisons and reductions
 * compute in float32, as NumPy promotes uint8 with a float (int32 with
 * int32 too, unlike NumPy: exact below 2^24).  Ints never need a gradient,
 * so the cast is not recorded.  NULL with the error set on a
 * failed cast. */
static lunet_tensor *as_float(lunet_ctx *ctx, lunet_tensor *t) {
  return t->dtype == LUNET_F32 ? lunet_tensor_retain(t) : lunet_op_cast(ctx, t, LUNET_F32);
}

/* f(ctx, ..., a, b) on float copies of a and b when either is not float32. */
#define PROMOTED2(call, a, b)                                                                       \
  do {                                                                                             \
    if ((a)->dtype != LUNET_F32 || (b)->dtype != LUNET_F32) {                                      \
      lunet_tensor *fa_ = as_float(ctx, a), *fb_ = fa_ ? as_float(ctx, b) : NULL;                  \
      lunet_tensor *y_ = fb_ ? call(fa_, fb_) : NULL;                                              \
      lunet_tensor_release(fa_);                                                                   \
      lunet_tensor_release(fb_);                                                                   \
      return y_;                                                                                   \
    }                                                                                              \
  } while (0)

static lunet_tensor *binary(lunet_ctx *ctx, lunet_binary_op op, lunet_tensor *a, lunet_tensor *b) {
#define BINARY_(x, y) binary(ctx, op, x, y)
  PROMOTED2(BINARY_, a, b);
#undef BINARY_
  lunet_node *n;
  lunet_tensor *y =
      record(ctx, bin(ctx, op, a, b), "binary", 2, (lunet_tensor *[]){a, b}, binary_backward, &n);
  if (n) {
    n->iparams[0] = op;
    if ((op == LUNET_BINARY_POW || op == LUNET_BINARY_MAX || op == LUNET_BINARY_MIN) &&
        !save(ctx, n, 0, y)) {
      lunet_tensor_release(y);
      return NULL;
    }
  }
  return y;
}

lunet_tensor *lunet_add(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_ADD, a, b);
}
lunet_tensor *lunet_sub(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_SUB, a, b);
}
lunet_tensor *lunet_mul(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_MUL, a, b);
}
lunet_tensor *lunet_div(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_DIV, a, b);
}
lunet_tensor *lunet_pow(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_POW, a, b);
}
lunet_tensor *lunet_maximum(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return binary(ctx, LUNET_BINARY_MAX, a, b);
}
lunet_tensor *lunet_compare(lunet_ctx *ctx, lunet_binary_op op, lunet_tensor *a, lunet_tensor *b) {
#define COMPARE_(x, y) bin(ctx, op, x, y)
  PROMOTED2(COMPARE_, a, b);
#undef COMPARE_
  return bin(ctx, op, a, b);
}

static lunet_status unary_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                   lunet_tensor **dx) {
  dx[0] = lunet_op_unary_backward(ctx, (lunet_unary_op)n->iparams[0], dy, n->inputs[0], n->saved[0],
                                  n->fparams[0], n->fparams[1]);
  return dx[0] ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_unary(lunet_ctx *ctx, lunet_unary_op op, lunet_tensor *x, float alpha,
                          float beta) {
  if (x->dtype != LUNET_F32) {
    lunet_tensor *f = as_float(ctx, x), *y = f ? lunet_unary(ctx, op, f, alpha, beta) : NULL;
    lunet_tensor_release(f);
    return y;
  }
  lunet_node *n;
  lunet_tensor *y =
      record(ctx, lunet_op_unary(ctx, op, x, alpha, beta), "unary", 1, &x, unary_backward, &n);
  if (n) {
    n->iparams[0] = op;
    n->fparams[0] = alpha;
    n->fparams[1] = beta;
    if (!save(ctx, n, 0, y)) {
      lunet_tensor_release(y);
      return NULL;
    }
  }
  return y;
}

/* ---- matmul ---- */

/* Gradient of one matmul side; sums over the batch when that side was 2-D. */
static lunet_tensor *matmul_grad(lunet_ctx *ctx, lunet_tensor *l, lunet_tensor *r, bool tl, bool tr,
                                 const lunet_tensor *like) {
  lunet_tensor *g = lunet_op_matmul(ctx, l, r, tl, tr);
  if (!g || like->ndim == g->ndim) return g;
  return reduce_like(ctx, g, like);
}

static lunet_status matmul_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                    lunet_tensor **dx) {
  lunet_tensor *a = n->inputs[0], *b = n->inputs[1];
  if (a->requires_grad || a->grad_fn) {
    dx[0] = matmul_grad(ctx, dy, b, false, true, a);
    if (!dx[0]) return ctx->status;
  }
  if (b->requires_grad || b->grad_fn) {
    dx[1] = matmul_grad(ctx, a, dy, true, false, b);
    if (!dx[1]) return ctx->status;
  }
  return LUNET_OK;
}

lunet_tensor *lunet_matmul(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b) {
  return record(ctx, lunet_op_matmul(ctx, a, b, false, false), "matmul", 2,
                (lunet_tensor *[]){a, b}, matmul_backward, NULL);
}

/* ---- reductions ---- */

static lunet_status reduce_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                    lunet_tensor **dx) {
  lunet_tensor *x = n->inputs[0];
  lunet_reduce_op op = (lunet_reduce_op)n->iparams[0];
  int axis = (int)n->iparams[1];
  /* dy with the reduced axis kept as 1, then broadcast over x. */
  int64_t kshape[LUNET_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++)
    kshape[i] = axis == LUNET_ALL_AXES || i == axis ? 1 : x->shape[i];
  lunet_tensor *k = lunet_tensor_alias(ctx, dy, x->ndim, kshape);
  if (!k) return ctx->status;
  lunet_tensor *g = NULL;
  if (op == LUNET_REDUCE_SUM || op == LUNET_REDUCE_MEAN) {
    lunet_tensor *ones = lunet_op_empty_like(ctx, x);
    if (ones &&
        !lunet_op_fill(ctx, ones,
                       op == LUNET_REDUCE_SUM ? 1.0f
                                              : (float)k->numel / (float)(x->numel ? x->numel : 1)))
      g = bin(ctx, LUNET_BINARY_MUL, ones, k);
    lunet_tensor_release(ones);
  } else { /* max/min: shared equally by the elements equal to the result */
    lunet_tensor *y = lunet_tensor_alias(ctx, n->saved[0], x->ndim, kshape);
    lunet_tensor *mask = y ? bin(ctx, LUNET_BINARY_EQ, x, y) : NULL;
    lunet_tensor *cnt = mask ? lunet_op_reduce(ctx, LUNET_REDUCE_SUM, mask, axis, true) : NULL;
    lunet_tensor *share = cnt ? bin(ctx, LUNET_BINARY_DIV, k, cnt) : NULL;
    g = share ? bin(ctx, LUNET_BINARY_MUL, mask, share) : NULL;
    lunet_tensor_release(y);
    lunet_tensor_release(mask);
    lunet_tensor_release(cnt);
    lunet_tensor_release(share);
  }
  lunet_tensor_release(k);
  dx[0] = g;
  return g ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_reduce(lunet_ctx *ctx, lunet_reduce_op op, lunet_tensor *x, int axis,
                           bool keepdims) {
  if (x->dtype != LUNET_F32) {
    lunet_tensor *f = as_float(ctx, x), *y = f ? lunet_reduce(ctx, op, f, axis, keepdims) : NULL;
    lunet_tensor_release(f);
    return y;
  }
  lunet_node *n;
  int a = axis == LUNET_ALL_AXES ? axis : axis < 0 ? axis + x->ndim : axis;
  lunet_tensor *y = record(ctx, lunet_op_reduce(ctx, op, x, axis, keepdims), "reduce", 1, &x,
                           reduce_backward, &n);
  if (n) {
    n->iparams[0] = op;
    n->iparams[1] = a;
    if (!save(ctx, n, 0, y)) {
      lunet_tensor_release(y);
      return NULL;
    }
  }
  return y;
}

/* ---- shape ops ---- */

static lunet_status reshape_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                     lunet_tensor **dx) {
  lunet_tensor *x = n->inputs[0];
  dx[0] = lunet_tensor_alias(ctx, dy, x->ndim, x->shape);
  return dx[0] ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_reshape(lunet_ctx *ctx, lunet_tensor *x, int ndim, const int64_t *shape) {
  return record(ctx, lunet_tensor_alias(ctx, x, ndim, shape), "reshape", 1, &x, reshape_backward,
                NULL);
}

static lunet_status permute_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                     lunet_tensor **dx) {
  int inv[LUNET_MAX_DIMS];
  for (int i = 0; i < dy->ndim; i++) inv[n->iparams[i]] = i;
  dx[0] = lunet_op_permute(ctx, dy, inv);
  return dx[0] ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_permute(lunet_ctx *ctx, lunet_tensor *x, const int *perm) {
  lunet_node *n;
  lunet_tensor *y =
      record(ctx, lunet_op_permute(ctx, x, perm), "permute", 1, &x, permute_backward, &n);
  if (n)
    for (int i = 0; i < x->ndim; i++) n->iparams[i] = perm[i];
  return y;
}

/* ---- rows by index (index_select, gather, embedding lookups) ---- */

typedef struct take_rows_data {
  int64_t n;
  int64_t idx[];
} take_rows_data;

static void take_rows_release(lunet_node *n) { free(n->data); }

/* dx: zeros like x with dy's rows added at their indices. */
static lunet_status take_rows_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy, lunet_tensor **dx) {
  lunet_tensor *x = n->inputs[0];
  const take_rows_data *d = n->data;
  lunet_tensor *g = lunet_tensor_on(ctx, x->buf->be, LUNET_F32, x->ndim, x->shape);
  if (!g || lunet_op_fill(ctx, g, 0) || lunet_op_scatter_add_rows(ctx, g, dy, d->idx, d->n)) {
    lunet_tensor_release(g);
    return ctx->status;
  }
  dx[0] = g;
  return LUNET_OK;
}

lunet_tensor *lunet_take_rows(lunet_ctx *ctx, lunet_tensor *x, const int64_t *idx, int64_t n) {
  lunet_node *nd;
  lunet_tensor *y = record(ctx, lunet_op_gather_rows(ctx, x, idx, n), "take_rows", 1, &x, take_rows_backward, &nd);
  if (nd) {
    take_rows_data *d = malloc(sizeof *d + sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!d) {
      lunet_tensor_release(y);
      lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory recording take_rows");
      return NULL;
    }
    d->n = n;
    memcpy(d->idx, idx, sizeof(int64_t) * (size_t)n);
    nd->data = d;
    nd->release = take_rows_release;
  }
  return y;
}

/* The permutation that brings `axis` to the front, and its inverse. */
static void front_perm(int nd, int axis, int *perm, int *inv) {
  perm[0] = axis;
  for (int i = 0, k = 1; i < nd; i++)
    if (i != axis) perm[k++] = i;
  for (int i = 0; i < nd; i++) inv[perm[i]] = i;
}

static bool norm_axis(lunet_ctx *ctx, const char *op, const lunet_tensor *x, int *axis) {
  int a = *axis < 0 ? *axis + x->ndim : *axis;
  if (x->ndim < 1 || a < 0 || a >= x->ndim) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: axis %d is out of range for a tensor of rank %d", op, *axis, x->ndim);
    return false;
  }
  *axis = a;
  return true;
}

lunet_tensor *lunet_index_select(lunet_ctx *ctx, lunet_tensor *x, int axis, const int64_t *idx, int64_t n) {
  if (!norm_axis(ctx, "index_select", x, &axis)) return NULL;
  for (int64_t i = 0; i < n; i++)
    if (idx[i] < 0 || idx[i] >= x->shape[axis]) {
      lunet_error(ctx, LUNET_ERR_ARG, "index_select: index %lld (entry %lld) is outside [0, %lld) on axis %d",
                  (long long)idx[i], (long long)i + 1, (long long)x->shape[axis], axis + 1);
      return NULL;
    }
  if (axis == 0) return lunet_take_rows(ctx, x, idx, n);
  int perm[LUNET_MAX_DIMS], inv[LUNET_MAX_DIMS];
  front_perm(x->ndim, axis, perm, inv);
  lunet_tensor *xp = lunet_permute(ctx, x, perm);
  lunet_tensor *yp = xp ? lunet_take_rows(ctx, xp, idx, n) : NULL;
  lunet_tensor *y = yp ? lunet_permute(ctx, yp, inv) : NULL;
  lunet_tensor_release(xp);
  lunet_tensor_release(yp);
  return y;
}

lunet_tensor *lunet_gather(lunet_ctx *ctx, lunet_tensor *x, int axis, const lunet_tensor *index) {
  if (!norm_axis(ctx, "gather", x, &axis)) return NULL;
  char a[128], b[128];
  bool fits = index->ndim == x->ndim;
  for (int d = 0; fits && d < x->ndim; d++) fits = d == axis || index->shape[d] <= x->shape[d];
  if (!fits) {
    lunet_error(ctx, LUNET_ERR_SHAPE,
                "gather: the index %s must have the rank of the input %s and no larger sizes off axis %d",
                lunet_shape_str(index->ndim, index->shape, a, sizeof a), lunet_shape_str(x->ndim, x->shape, b, sizeof b),
                axis + 1);
    return NULL;
  }
  int64_t m = index->numel;
  int64_t *flat = malloc(sizeof *flat * (size_t)(m > 0 ? m : 1));
  lunet_tensor *ix = index->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)index)
                                              : lunet_op_cast(ctx, index, LUNET_F32);
  float *v = malloc(sizeof *v * (size_t)(m > 0 ? m : 1));
  lunet_status s = !flat || !v ? lunet_error(ctx, LUNET_ERR_NOMEM, "gather: out of host memory")
                   : !ix       ? ctx->status
                               : lunet_tensor_read(ctx, ix, v, sizeof *v * (size_t)m);
  lunet_tensor_release(ix);
  int64_t xs[LUNET_MAX_DIMS], pos[LUNET_MAX_DIMS] = {0}, st = 1;
  for (int d = x->ndim - 1; d >= 0; d--) {
    xs[d] = st;
    st *= x->shape[d];
  }
  for (int64_t i = 0; !s && i < m; i++) {
    double k = v[i];
    if (k != (double)(int64_t)k || k < 0 || k >= (double)x->shape[axis]) {
      s = lunet_error(ctx, LUNET_ERR_ARG, "gather: index %g (entry %lld) is not a whole number in [0, %lld) on axis %d", k,
                      (long long)i + 1, (long long)x->shape[axis], axis + 1);
      break;
    }
    int64_t f = 0;
    for (int d = 0; d < x->ndim; d++) f += (d == axis ? (int64_t)k : pos[d]) * xs[d];
    flat[i] = f;
    for (int d = index->ndim - 1; d >= 0; d--) { /* next position in index */
      if (++pos[d] < index->shape[d]) break;
      pos[d] = 0;
    }
  }
  free(v);
  int64_t rows[2] = {x->numel, 1};
  lunet_tensor *col = s ? NULL : lunet_reshape(ctx, x, 2, rows);
  lunet_tensor *picked = col ? lunet_take_rows(ctx, col, flat, m) : NULL;
  lunet_tensor *y = picked ? lunet_reshape(ctx, picked, index->ndim, index->shape) : NULL;
  free(flat);
  lunet_tensor_release(col);
  lunet_tensor_release(picked);
  return y;
}

/* Writes dy into a zero tensor shaped like x at the sliced positions. */
static lunet_status slice_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                   lunet_tensor **dx) {
  lunet_tensor *x = n->inputs[0];
  lunet_tensor *g = lunet_op_empty_like(ctx, x);
  if (!g || lunet_op_fill(ctx, g, 0)) {
    lunet_tensor_release(g);
    return ctx->status;
  }
  lunet_strided_desc d = {.ndim = x->ndim, .elem_size = 4};
  int64_t xs = 1, ys = 1;
  for (int i = x->ndim - 1; i >= 0; i--) {
    int64_t start = n->iparams[i], step = n->iparams[LUNET_MAX_DIMS + i];
    d.shape[i] = dy->shape[i];
    d.x_strides[i] = ys;
    d.y_strides[i] = xs * step;
    d.y_offset += start * xs;
    xs *= x->shape[i];
    ys *= dy->shape[i];
  }
  lunet_be *be = x->buf->be;
  if (dy->numel &&
      lunet_be_check(ctx, be, PROFILED(ctx, be, "strided_copy", 0, be->i->strided_copy(be->state, g->buf->handle, dy->buf->handle, &d)),
                     "slice backward")) {
    lunet_tensor_release(g);
    return ctx->status;
  }
  dx[0] = g;
  return LUNET_OK;
}

lunet_tensor *lunet_slice(lunet_ctx *ctx, lunet_tensor *x, const int64_t *start,
                          const int64_t *stop, const int64_t *step) {
  lunet_node *n;
  lunet_tensor *y =
      record(ctx, lunet_op_slice(ctx, x, start, stop, step), "slice", 1, &x, slice_backward, &n);
  if (n)
    for (int i = 0; i < x->ndim; i++) {
      n->iparams[i] = start[i];
      n->iparams[LUNET_MAX_DIMS + i] = step[i];
    }
  return y;
}

static lunet_status concat_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                    lunet_tensor **dx) {
  int axis = (int)n->iparams[0];
  int64_t start[LUNET_MAX_DIMS] = {0}, stop[LUNET_MAX_DIMS], step[LUNET_MAX_DIMS];
  for (int i = 0; i < dy->ndim; i++) {
    stop[i] = dy->shape[i];
    step[i] = 1;
  }
  for (int k = 0; k < n->ninputs; k++) {
    stop[axis] = start[axis] + n->inputs[k]->shape[axis];
    dx[k] = lunet_op_slice(ctx, dy, start, stop, step);
    if (!dx[k]) return ctx->status;
    start[axis] = stop[axis];
  }
  return LUNET_OK;
}

lunet_tensor *lunet_concat(lunet_ctx *ctx, lunet_tensor *const *xs, int n, int axis) {
  if (n > LUNET_NODE_MAX_INPUTS && lunet_needs_grad(ctx, n, xs)) {
    lunet_error(ctx, LUNET_ERR_ARG, "concat records at most %d tensors for autograd",
                LUNET_NODE_MAX_INPUTS);
    return NULL;
  }
  lunet_node *node;
  lunet_tensor *y =
      record(ctx, lunet_op_concat(ctx, xs, n, axis), "concat", n, xs, concat_backward, &node);
  if (node) node->iparams[0] = axis < 0 ? axis + xs[0]->ndim : axis;
  return y;
}

static lunet_status softmax_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                     lunet_tensor **dx) {
  dx[0] = lunet_op_softmax_backward(ctx, dy, n->saved[0], n->iparams[0] != 0);
  return dx[0] ? LUNET_OK : ctx->status;
}

lunet_tensor *lunet_softmax(lunet_ctx *ctx, lunet_tensor *x, bool log) {
  lunet_node *n;
  lunet_tensor *y =
      record(ctx, lunet_op_softmax(ctx, x, log), "softmax", 1, &x, softmax_backward, &n);
  if (n) {
    n->iparams[0] = log;
    if (!save(ctx, n, 0, y)) {
      lunet_tensor_release(y);
      return NULL;
    }
  }
  return y;
}
