/*
 * The primitive ops: argument checks, output allocation, and dispatch to the
 * backend that owns the inputs.  Nothing here records on the tape.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

lunet_status lunet_be_check(lunet_ctx *ctx, lunet_be *be, int rc, const char *op) {
  if (rc == 0) return LUNET_OK;
  const char *msg = be->i->last_error(be->state);
  return lunet_error(ctx, (lunet_status)rc, "%s on backend '%s': %s", op, be->name,
                     msg && *msg ? msg : lunet_status_name((lunet_status)rc));
}

static bool supported(lunet_ctx *ctx, lunet_be *be, const void *fn, const char *op) {
  if (fn) return true;
  lunet_error(ctx, LUNET_ERR_UNSUPPORTED,
              "op '%s' is not supported by backend '%s' (move the tensors with "
              "t:to(\"cpu\") or pick another backend with lunet.use)",
              op, be->name);
  return false;
}

/* The backend's bfloat16 version of a product (ABI 2.3; NULL from an
 * older backend, whose vtable ends before it). */
#define BF16_FN(be, name) ((be)->desc->abi_minor >= 3 ? (be)->i->name##_bf16 : NULL)

/* The product kernel the context's precision asks for: fn32, or fn16
 * under mixed_bfloat16 (an error when the backend has none). */
static bool product_ok(lunet_ctx *ctx, lunet_be *be, const void *fn32, const void *fn16, const char *op) {
  if (ctx->precision != LUNET_PRECISION_BFLOAT16) return supported(ctx, be, fn32, op);
  if (fn16) return true;
  lunet_error(ctx, LUNET_ERR_UNSUPPORTED,
              "op '%s' in bfloat16 (the mixed_bfloat16 policy): backend '%s' has no bfloat16 products (make the "
              "layers under the float32 policy, nn.mixed_precision.set_global_policy(\"float32\"), or run on the cpu "
              "backend)",
              op, be->name);
  return false;
}

/* Checks that the inputs are float32 and share one backend; returns it. */
static lunet_be *inputs_be(lunet_ctx *ctx, const char *op, int n, const lunet_tensor *const *ts) {
  lunet_be *be = NULL;
  for (int i = 0; i < n; i++) {
    const lunet_tensor *t = ts[i];
    if (!t) continue;
    if (t->dtype != LUNET_F32) {
      lunet_error(ctx, LUNET_ERR_ARG,
                  "%s: input %d is %s; this op computes in float32 "
                  "(convert with t:float())",
                  op, i + 1, lunet_dtype_name(t->dtype));
      return NULL;
    }
    if (be && t->buf->be != be) {
      lunet_error(ctx, LUNET_ERR_ARG,
                  "%s: inputs live on different backends ('%s' and "
                  "'%s'); move one with t:to(\"%s\")",
                  op, be->name, t->buf->be->name, be->name);
      return NULL;
    }
    be = t->buf->be;
  }
  return be;
}

#define BE1(op, a) inputs_be(ctx, op, 1, (const lunet_tensor *const[]){a})
#define BE2(op, a, b) inputs_be(ctx, op, 2, (const lunet_tensor *const[]){a, b})
#define BE3(op, a, b, c) inputs_be(ctx, op, 3, (const lunet_tensor *const[]){a, b, c})

/* Releases out and returns NULL when the backend call failed. */
/* ---- names and counts for the profiler ---- */

static const char *const unary_names[LUNET_UNARY_COUNT][2] = {
    {"neg", "neg_backward"},         {"exp", "exp_backward"},       {"log", "log_backward"},
    {"sqrt", "sqrt_backward"},       {"abs", "abs_backward"},       {"square", "square_backward"},
    {"relu", "relu_backward"},       {"sigmoid", "sigmoid_backward"}, {"tanh", "tanh_backward"},
    {"gelu", "gelu_backward"},       {"leaky_relu", "leaky_relu_backward"}, {"affine", "affine_backward"},
    {"clip", "clip_backward"},       {"recip", "recip_backward"},   {"sign", "sign_backward"},
    {"sin", "sin_backward"},         {"cos", "cos_backward"}};
static const char *const binary_names[LUNET_BINARY_COUNT] = {"add", "sub", "mul", "div", "max",
                                                             "min", "pow", "eq",  "gt",  "lt"};
static const char *const reduce_names[LUNET_REDUCE_COUNT] = {"reduce_sum", "reduce_mean", "reduce_max",
                                                             "reduce_min"};

static const char *lunet_unary_op_name(lunet_unary_op op, bool backward) {
  return op >= 0 && op < LUNET_UNARY_COUNT ? unary_names[op][backward] : "unary";
}
static const char *lunet_binary_op_name(lunet_binary_op op) {
  return op >= 0 && op < LUNET_BINARY_COUNT ? binary_names[op] : "binary";
}
static const char *lunet_reduce_op_name(lunet_reduce_op op) {
  return op >= 0 && op < LUNET_REDUCE_COUNT ? reduce_names[op] : "reduce";
}

/* Multiply-adds of a convolution, times 2 (the same for its two gradients). */
static double lunet_conv2d_flops(const lunet_conv2d_desc *d) {
  return 2.0 * (double)d->n * (double)d->oh * (double)d->ow * (double)d->f * (double)d->kh * (double)d->kw *
         (double)d->c;
}

static lunet_tensor *done(lunet_ctx *ctx, lunet_be *be, int rc, const char *op, lunet_tensor *out) {
  if (lunet_be_check(ctx, be, rc, op) == LUNET_OK) return out;
  lunet_tensor_release(out);
  return NULL;
}

static const char *shape_s(const lunet_tensor *t, char *buf, size_t n) {
  return lunet_shape_str(t->ndim, t->shape, buf, n);
}

lunet_tensor *lunet_op_new(lunet_ctx *ctx, const lunet_tensor *like, lunet_dtype dt, int ndim,
                           const int64_t *shape) {
  return lunet_tensor_on(ctx, like->buf->be, dt, ndim, shape);
}

lunet_tensor *lunet_op_empty_like(lunet_ctx *ctx, const lunet_tensor *t) {
  return lunet_tensor_on(ctx, t->buf->be, t->dtype, t->ndim, t->shape);
}

lunet_status lunet_op_fill(lunet_ctx *ctx, lunet_tensor *t, float v) {
  lunet_be *be = t->buf->be;
  if (t->dtype == LUNET_F32)
    return lunet_be_check(ctx, be, PROFILED(ctx, be, "fill", 0, be->i->fill(be->state, t->buf->handle, v, (size_t)t->numel)),
                          "fill");
  /* Other dtypes: fill a float32 twin and cast it over. */
  lunet_tensor *f = lunet_tensor_on(ctx, be, LUNET_F32, t->ndim, t->shape);
  if (!f || lunet_op_fill(ctx, f, v)) {
    lunet_tensor_release(f);
    return ctx->status;
  }
  lunet_status s = lunet_be_check(
      ctx, be,
      PROFILED(ctx, be, "cast", 0, be->i->cast(be->state, t->buf->handle, t->dtype, f->buf->handle, LUNET_F32, (size_t)t->numel)),
      "cast");
  lunet_tensor_release(f);
  return s;
}

lunet_tensor *lunet_op_copy(lunet_ctx *ctx, const lunet_tensor *x) {
  lunet_tensor *y = lunet_op_empty_like(ctx, x);
  if (!y) return NULL;
  lunet_be *be = x->buf->be;
  return done(ctx, be,
              PROFILED(ctx, be, "buffer_copy", 0, be->i->buffer_copy(be->state, y->buf->handle, 0, x->buf->handle, 0, x->buf->nbytes)),
              "copy", y);
}

lunet_tensor *lunet_op_reshape(lunet_ctx *ctx, lunet_tensor *x, int ndim, const int64_t *shape) {
  return lunet_tensor_alias(ctx, x, ndim, shape);
}

lunet_tensor *lunet_op_cast(lunet_ctx *ctx, const lunet_tensor *x, lunet_dtype dt) {
  lunet_tensor *y = lunet_op_new(ctx, x, dt, x->ndim, x->shape);
  if (!y) return NULL;
  lunet_be *be = x->buf->be;
  return done(
      ctx, be,
      PROFILED(ctx, be, "cast", 0, be->i->cast(be->state, y->buf->handle, dt, x->buf->handle, x->dtype, (size_t)x->numel)),
      "cast", y);
}

/* ---- elementwise ---- */

lunet_tensor *lunet_op_unary(lunet_ctx *ctx, lunet_unary_op op, const lunet_tensor *x, float alpha,
                             float beta) {
  lunet_be *be = BE1("unary", x);
  if (!be) return NULL;
  lunet_tensor *y = lunet_op_empty_like(ctx, x);
  if (!y) return NULL;
  return done(
      ctx, be,
      PROFILED(ctx, be, lunet_unary_op_name(op, false), 0, be->i->unary(be->state, op, alpha, beta, y->buf->handle, x->buf->handle, (size_t)x->numel)),
      "unary", y);
}

lunet_tensor *lunet_op_unary_backward(lunet_ctx *ctx, lunet_unary_op op, const lunet_tensor *dy,
                                      const lunet_tensor *x, const lunet_tensor *y, float alpha,
                                      float beta) {
  lunet_be *be = BE3("unary_backward", dy, x, y);
  if (!be) return NULL;
  if ((x && x->numel != dy->numel) || (y && y->numel != dy->numel)) {
    lunet_error(ctx, LUNET_ERR_SHAPE,
                "unary_backward: the gradient has %lld elements, the input %lld",
                (long long)dy->numel, (long long)(x ? x->numel : y->numel));
    return NULL;
  }
  lunet_tensor *dx = lunet_op_empty_like(ctx, dy);
  if (!dx) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, lunet_unary_op_name(op, true), 0, be->i->unary_backward(be->state, op, alpha, beta, dx->buf->handle, dy->buf->handle,
                                    x ? x->buf->handle : NULL, y ? y->buf->handle : NULL,
                                    (size_t)dy->numel)),
              "unary_backward", dx);
}

/* numpy broadcasting: align from the right. */
static lunet_status broadcast(lunet_ctx *ctx, const lunet_tensor *a, const lunet_tensor *b,
                              lunet_bcast_desc *d) {
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  memset(d, 0, sizeof *d);
  d->ndim = nd;
  int64_t sa = 1, sb = 1;
  for (int i = nd - 1; i >= 0; i--) {
    int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1) {
      char x[128], y[128];
      return lunet_error(
          ctx, LUNET_ERR_SHAPE, "shapes %s and %s do not broadcast (axis %d: %lld vs %lld)",
          shape_s(a, x, sizeof x), shape_s(b, y, sizeof y), i + 1, (long long)da, (long long)db);
    }
    d->shape[i] = da > db ? da : db;
    if (da == 0 || db == 0) d->shape[i] = 0;
    d->a_strides[i] = da == 1 ? 0 : sa;
    d->b_strides[i] = db == 1 ? 0 : sb;
    sa *= da;
    sb *= db;
  }
  return LUNET_OK;
}

lunet_tensor *lunet_op_binary(lunet_ctx *ctx, lunet_binary_op op, const lunet_tensor *a,
                              const lunet_tensor *b) {
  lunet_be *be = BE2("binary", a, b);
  lunet_bcast_desc d;
  if (!be || broadcast(ctx, a, b, &d)) return NULL;
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, d.ndim, d.shape);
  if (!y) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, lunet_binary_op_name(op), 0, be->i->binary(be->state, op, y->buf->handle, a->buf->handle, b->buf->handle, &d)),
              "binary", y);
}

lunet_status lunet_op_accumulate(lunet_ctx *ctx, lunet_tensor *acc, const lunet_tensor *x) {
  lunet_be *be = BE2("accumulate", acc, x);
  if (!be) return ctx->status;
  acc->unit = false; /* no longer a backward's untouched seed of 1 */
  if (acc->numel != x->numel) {
    char s1[128], s2[128];
    return lunet_error(ctx, LUNET_ERR_SHAPE, "cannot accumulate %s into %s",
                       shape_s(x, s1, sizeof s1), shape_s(acc, s2, sizeof s2));
  }
  lunet_bcast_desc d = {.ndim = 1, .shape = {acc->numel}, .a_strides = {1}, .b_strides = {1}};
  return lunet_be_check(ctx, be,
                        PROFILED(ctx, be, "accumulate", 0, be->i->binary(be->state, LUNET_BINARY_ADD, acc->buf->handle,
                                      acc->buf->handle, x->buf->handle, &d)),
                        "accumulate");
}

/* ---- reductions ---- */

static int norm_axis(lunet_ctx *ctx, int axis, int ndim) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim) {
    lunet_error(ctx, LUNET_ERR_ARG, "axis %d is out of range for a tensor of rank %d", axis, ndim);
    return -1;
  }
  return a;
}

lunet_tensor *lunet_op_reduce(lunet_ctx *ctx, lunet_reduce_op op, const lunet_tensor *x, int axis,
                              bool keepdims) {
  lunet_be *be = BE1("reduce", x);
  if (!be) return NULL;
  int64_t shape[LUNET_MAX_DIMS];
  int nd = 0;
  size_t outer = 1, len = 1, inner = 1;
  if (axis == LUNET_ALL_AXES) {
    len = (size_t)x->numel;
    if (keepdims)
      for (int i = 0; i < x->ndim; i++) shape[nd++] = 1;
  } else {
    int a = norm_axis(ctx, axis, x->ndim);
    if (a < 0) return NULL;
    for (int i = 0; i < x->ndim; i++) {
      if (i < a)
        outer *= (size_t)x->shape[i];
      else if (i == a)
        len = (size_t)x->shape[i];
      else
        inner *= (size_t)x->shape[i];
      if (i != a)
        shape[nd++] = x->shape[i];
      else if (keepdims)
        shape[nd++] = 1;
    }
  }
  if (len == 0 && op != LUNET_REDUCE_SUM) {
    lunet_error(ctx, LUNET_ERR_ARG, "cannot take the %s of an empty axis",
                op == LUNET_REDUCE_MEAN ? "mean" : "max/min");
    return NULL;
  }
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, nd, shape);
  if (!y) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, lunet_reduce_op_name(op), 0, be->i->reduce(be->state, op, y->buf->handle, x->buf->handle, outer, len, inner)),
              "reduce", y);
}

lunet_tensor *lunet_op_sum_to(lunet_ctx *ctx, const lunet_tensor *x, int ndim,
                              const int64_t *shape) {
  /* Sum leading extra axes, then every axis where the target has 1. */
  lunet_tensor *cur = lunet_tensor_retain((lunet_tensor *)x);
  while (cur && cur->ndim > ndim) {
    lunet_tensor *next = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, cur, 0, false);
    lunet_tensor_release(cur);
    cur = next;
  }
  for (int i = 0; cur && i < ndim; i++) {
    if (shape[i] == 1 && cur->shape[i] != 1) {
      lunet_tensor *next = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, cur, i, true);
      lunet_tensor_release(cur);
      cur = next;
    }
  }
  /* a target the shape does not broadcast to: an error, not the input back
   * (a result of the target's size in other axes, which autograd's
   * reduce_like views as the target, is fine) */
  if (cur && cur->numel != lunet_shape_numel(ndim, shape)) {
    char a[96], b[96];
    lunet_error(ctx, LUNET_ERR_SHAPE, "sum_to: %s does not broadcast to %s", lunet_shape_str(x->ndim, x->shape, a, sizeof a),
                lunet_shape_str(ndim, shape, b, sizeof b));
    lunet_tensor_release(cur);
    return NULL;
  }
  return cur;
}

lunet_tensor *lunet_op_argmax(lunet_ctx *ctx, const lunet_tensor *x) {
  lunet_be *be = BE1("argmax", x);
  if (!be) return NULL;
  if (x->ndim < 1 || x->shape[x->ndim - 1] == 0) {
    lunet_error(ctx, LUNET_ERR_ARG, "argmax needs a non-empty last axis");
    return NULL;
  }
  size_t cols = (size_t)x->shape[x->ndim - 1];
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, x->ndim - 1, x->shape);
  if (!y) return NULL;
  return done(
      ctx, be,
      PROFILED(ctx, be, "argmax", 0, be->i->argmax(be->state, y->buf->handle, x->buf->handle, (size_t)x->numel / cols, cols)),
      "argmax", y);
}

/* ---- matmul ---- */

lunet_tensor *lunet_op_matmul(lunet_ctx *ctx, const lunet_tensor *a, const lunet_tensor *b, bool ta,
                              bool tb) {
  lunet_be *be = BE2("matmul", a, b);
  if (!be || !product_ok(ctx, be, be->i->gemm, BF16_FN(be, gemm), "matmul")) return NULL;
  bool bf16 = ctx->precision == LUNET_PRECISION_BFLOAT16;
  char s1[128], s2[128];
  if (a->ndim < 2 || b->ndim < 2) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "matmul needs matrices, got %s and %s",
                shape_s(a, s1, sizeof s1), shape_s(b, s2, sizeof s2));
    return NULL;
  }
  int64_t m = a->shape[a->ndim - (ta ? 1 : 2)], k = a->shape[a->ndim - (ta ? 2 : 1)];
  int64_t k2 = b->shape[b->ndim - (tb ? 1 : 2)], n = b->shape[b->ndim - (tb ? 2 : 1)];
  int64_t ba = 1, bb = 1; /* the batch sizes, from the shapes (numel says nothing when a matrix is empty) */
  for (int i = 0; i < a->ndim - 2; i++) ba *= a->shape[i];
  for (int i = 0; i < b->ndim - 2; i++) bb *= b->shape[i];
  bool batch_ok = a->ndim == 2 || b->ndim == 2 || a->ndim == b->ndim;
  for (int i = 0; batch_ok && a->ndim > 2 && b->ndim > 2 && i < a->ndim - 2; i++)
    batch_ok = a->shape[i] == b->shape[i];
  if (!batch_ok) {
    lunet_error(ctx, LUNET_ERR_SHAPE,
                "matmul: the batch dimensions of %s and %s differ (they must "
                "be equal, or one operand 2-D)",
                shape_s(a, s1, sizeof s1), shape_s(b, s2, sizeof s2));
    return NULL;
  }
  if (k != k2) {
    lunet_error(ctx, LUNET_ERR_SHAPE,
                "matmul: shapes %s and %s do not fit (inner sizes %lld "
                "and %lld)",
                shape_s(a, s1, sizeof s1), shape_s(b, s2, sizeof s2), (long long)k, (long long)k2);
    return NULL;
  }
  const lunet_tensor *big = a->ndim >= b->ndim ? a : b;
  int64_t shape[LUNET_MAX_DIMS];
  int nd = big->ndim;
  memcpy(shape, big->shape, sizeof(int64_t) * (size_t)nd);
  shape[nd - 2] = m;
  shape[nd - 1] = n;
  int64_t batch = ba > bb ? ba : bb;
  lunet_tensor *c = lunet_tensor_on(ctx, be, LUNET_F32, nd, shape);
  if (!c || c->numel == 0) return c; /* an empty product: nothing to compute */
  return done(ctx, be,
              PROFILED(ctx, be, bf16 ? "gemm_bf16" : "gemm", 2.0 * (double)m * (double)n * (double)k * (double)batch, (bf16 ? be->i->gemm_bf16 : be->i->gemm)(be->state, ta, tb, m, n, k, 1.0f, a->buf->handle, ba > 1 ? m * k : 0,
                          b->buf->handle, bb > 1 ? k * n : 0, 0.0f, c->buf->handle, m * n, batch)),
              "matmul", c);
}

lunet_tensor *lunet_op_matmul_dx(lunet_ctx *ctx, const lunet_tensor *a, const lunet_tensor *b, bool ta, bool tb) {
  const lunet_tensor *mask = ctx->input_relu == LUNET_POOL_RELU_ASKED ? ctx->input_relu_mask : NULL;
  lunet_be *be = mask ? BE2("matmul", a, b) : NULL;
  if (!mask || !be || a->ndim != 2 || b->ndim != 2 || be->desc->abi_minor < 6 || !be->i->gemm_relu_mask ||
      ctx->precision == LUNET_PRECISION_BFLOAT16 || mask->buf->be != be || mask->dtype != LUNET_F32)
    return lunet_op_matmul(ctx, a, b, ta, tb);
  int64_t m = a->shape[ta ? 1 : 0], k = a->shape[ta ? 0 : 1], k2 = b->shape[tb ? 1 : 0], n = b->shape[tb ? 0 : 1];
  if (k != k2 || m * n != mask->numel) return lunet_op_matmul(ctx, a, b, ta, tb); /* its errors, or no fold */
  lunet_tensor *c = lunet_tensor_on(ctx, be, LUNET_F32, 2, (int64_t[]){m, n});
  if (!c) return NULL;
  ctx->input_relu = LUNET_POOL_RELU_DONE;
  return done(ctx, be,
              PROFILED(ctx, be, "gemm_relu_mask", 2.0 * (double)m * (double)n * (double)k,
                       be->i->gemm_relu_mask(be->state, ta, tb, m, n, k, a->buf->handle, b->buf->handle,
                                             mask->buf->handle, c->buf->handle)),
              "matmul", c);
}

/* Whether the fused linear op runs here: the backend has it and the
 * products are float32 (mixed precision runs matmul's bfloat16 path). */
static bool linear_fused(const lunet_ctx *ctx, const lunet_be *be) {
  return be->desc->abi_minor >= 5 && be->i->linear && ctx->precision != LUNET_PRECISION_BFLOAT16;
}

lunet_tensor *lunet_op_linear(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *w,
                              const lunet_tensor *bias) {
  lunet_be *be = bias ? BE3("linear", x, w, bias) : BE2("linear", x, w);
  if (!be) return NULL;
  char s1[128], s2[128];
  if (x->ndim != 2 || w->ndim != 2 || x->shape[1] != w->shape[0] ||
      (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[1]))) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "linear: x %s and w %s do not fit (x (M, K), w (K, N), bias (N))",
                shape_s(x, s1, sizeof s1), shape_s(w, s2, sizeof s2));
    return NULL;
  }
  if (!linear_fused(ctx, be)) {
    lunet_tensor *y = lunet_op_matmul(ctx, x, w, false, false);
    if (!y || !bias) return y;
    lunet_tensor *yb = lunet_op_binary(ctx, LUNET_BINARY_ADD, y, bias);
    lunet_tensor_release(y);
    return yb;
  }
  int64_t m = x->shape[0], k = x->shape[1], n = w->shape[1];
  bool relu = ctx->pool_relu == LUNET_POOL_RELU_ASKED;
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, 2, (int64_t[]){m, n});
  if (!y) return NULL;
  if (relu) ctx->pool_relu = LUNET_POOL_RELU_DONE;
  return done(ctx, be,
              PROFILED(ctx, be, relu ? "linear_relu" : "linear", 2.0 * (double)m * (double)n * (double)k,
                       be->i->linear(be->state, m, n, k, x->buf->handle, w->buf->handle,
                                     bias ? bias->buf->handle : NULL, relu, y->buf->handle)),
              "linear", y);
}

lunet_tensor *lunet_op_relu_grad(lunet_ctx *ctx, const lunet_tensor *dy, const lunet_tensor *y) {
  if (ctx->pool_relu == LUNET_POOL_RELU_FOLDED) { /* the consumer's input gradient took it */
    ctx->pool_relu = LUNET_POOL_RELU_DONE;
    return lunet_tensor_retain((lunet_tensor *)dy);
  }
  if (ctx->pool_relu != LUNET_POOL_RELU_ASKED) return lunet_tensor_retain((lunet_tensor *)dy);
  /* y > 0 exactly where the ReLU's input was: y stands for it */
  lunet_tensor *dx = lunet_op_unary_backward(ctx, LUNET_UNARY_RELU, dy, y, y, 0.0f, 0.0f);
  if (dx) ctx->pool_relu = LUNET_POOL_RELU_DONE;
  return dx;
}

/* ---- convolution and pooling ---- */

static lunet_status geometry(lunet_ctx *ctx, const char *what, int64_t h, int64_t w, int64_t kh,
                             int64_t kw, int64_t sh, int64_t sw, lunet_padding pad, int64_t *pt,
                             int64_t *pl, int64_t *oh, int64_t *ow) {
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: kernel and strides must be positive, got "
                       "kernel (%lld, %lld), strides (%lld, %lld)",
                       what, (long long)kh, (long long)kw, (long long)sh, (long long)sw);
  if (pad == LUNET_PAD_SAME) {
    *oh = (h + sh - 1) / sh;
    *ow = (w + sw - 1) / sw;
    int64_t ph = (*oh - 1) * sh + kh - h, pw = (*ow - 1) * sw + kw - w;
    *pt = ph > 0 ? ph / 2 : 0;
    *pl = pw > 0 ? pw / 2 : 0;
  } else {
    if (kh > h || kw > w)
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "%s: a %lldx%lld window does not fit a %lldx%lld "
                         "input with padding \"valid\" (use padding = \"same\" or a larger "
                         "input)",
                         what, (long long)kh, (long long)kw, (long long)h, (long long)w);
    *oh = (h - kh) / sh + 1;
    *ow = (w - kw) / sw + 1;
    *pt = *pl = 0;
  }
  return LUNET_OK;
}

lunet_status lunet_conv2d_geometry(lunet_ctx *ctx, lunet_conv2d_desc *d, lunet_padding pad) {
  return geometry(ctx, "Conv2D", d->h, d->w, d->kh, d->kw, d->sh, d->sw, pad, &d->pad_top,
                  &d->pad_left, &d->oh, &d->ow);
}

lunet_status lunet_pool2d_geometry(lunet_ctx *ctx, lunet_pool2d_desc *d, lunet_padding pad) {
  return geometry(ctx, "pooling", d->h, d->w, d->kh, d->kw, d->sh, d->sw, pad, &d->pad_top,
                  &d->pad_left, &d->oh, &d->ow);
}

static bool has_shape(lunet_ctx *ctx, const char *op, const char *what, const lunet_tensor *t,
                      int nd, const int64_t *want) {
  bool ok = t->ndim == nd;
  for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == want[i];
  if (!ok) {
    char s1[128], s2[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "%s: %s has shape %s, expected %s", op, what,
                shape_s(t, s1, sizeof s1), lunet_shape_str(nd, want, s2, sizeof s2));
  }
  return ok;
}

lunet_tensor *lunet_op_conv2d(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *w,
                              const lunet_tensor *bias, const lunet_conv2d_desc *d) {
  lunet_be *be = BE3("conv2d", x, w, bias);
  if (!be || !product_ok(ctx, be, be->i->conv2d, BF16_FN(be, conv2d), "conv2d") ||
      !has_shape(ctx, "conv2d", "input", x, 4, (int64_t[]){d->n, d->h, d->w, d->c}) ||
      !has_shape(ctx, "conv2d", "kernel", w, 4, (int64_t[]){d->kh, d->kw, d->c, d->f}) ||
      (bias && !has_shape(ctx, "conv2d", "bias", bias, 1, (int64_t[]){d->f})))
    return NULL;
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, 4, (int64_t[]){d->n, d->oh, d->ow, d->f});
  if (!y) return NULL;
  bool bf16 = ctx->precision == LUNET_PRECISION_BFLOAT16;
  return done(ctx, be,
              PROFILED(ctx, be, bf16 ? "conv2d_bf16" : "conv2d", lunet_conv2d_flops(d), (bf16 ? be->i->conv2d_bf16 : be->i->conv2d)(be->state, y->buf->handle, x->buf->handle, w->buf->handle,
                            bias ? bias->buf->handle : NULL, d)),
              "conv2d", y);
}

lunet_tensor *lunet_op_conv2d_backward_data(lunet_ctx *ctx, const lunet_tensor *dy,
                                            const lunet_tensor *w, const lunet_conv2d_desc *d) {
  lunet_be *be = BE2("conv2d_backward_data", dy, w);
  if (!be || !product_ok(ctx, be, be->i->conv2d_backward_data, BF16_FN(be, conv2d_backward_data), "conv2d_backward_data") ||
      !has_shape(ctx, "conv2d_backward_data", "kernel", w, 4,
                 (int64_t[]){d->kh, d->kw, d->c, d->f}) ||
      !has_shape(ctx, "conv2d_backward_data", "dy", dy, 4, (int64_t[]){d->n, d->oh, d->ow, d->f}))
    return NULL;
  lunet_tensor *dx = lunet_tensor_on(ctx, be, LUNET_F32, 4, (int64_t[]){d->n, d->h, d->w, d->c});
  if (!dx) return NULL;
  bool bf16 = ctx->precision == LUNET_PRECISION_BFLOAT16;
  return done(
      ctx, be,
      PROFILED(ctx, be, bf16 ? "conv2d_backward_data_bf16" : "conv2d_backward_data", lunet_conv2d_flops(d), (bf16 ? be->i->conv2d_backward_data_bf16 : be->i->conv2d_backward_data)(be->state, dx->buf->handle, dy->buf->handle, w->buf->handle, d)),
      "conv2d_backward_data", dx);
}

lunet_tensor *lunet_op_conv2d_backward_filter(lunet_ctx *ctx, const lunet_tensor *dy,
                                              const lunet_tensor *x, const lunet_conv2d_desc *d,
                                              lunet_tensor **db) {
  lunet_be *be = BE2("conv2d_backward_filter", dy, x);
  if (db) *db = NULL;
  if (!be || !product_ok(ctx, be, be->i->conv2d_backward_filter, BF16_FN(be, conv2d_backward_filter), "conv2d_backward_filter") ||
      !has_shape(ctx, "conv2d_backward_filter", "input", x, 4,
                 (int64_t[]){d->n, d->h, d->w, d->c}) ||
      !has_shape(ctx, "conv2d_backward_filter", "dy", dy, 4, (int64_t[]){d->n, d->oh, d->ow, d->f}))
    return NULL;
  lunet_tensor *dw = lunet_tensor_on(ctx, be, LUNET_F32, 4, (int64_t[]){d->kh, d->kw, d->c, d->f});
  lunet_tensor *b = db && dw ? lunet_tensor_on(ctx, be, LUNET_F32, 1, (int64_t[]){d->f}) : NULL;
  if (!dw || (db && !b)) {
    lunet_tensor_release(dw);
    return NULL;
  }
  bool bf16 = ctx->precision == LUNET_PRECISION_BFLOAT16;
  int rc = PROFILED(ctx, be, bf16 ? "conv2d_backward_filter_bf16" : "conv2d_backward_filter", lunet_conv2d_flops(d), (bf16 ? be->i->conv2d_backward_filter_bf16 : be->i->conv2d_backward_filter)(be->state, dw->buf->handle, b ? b->buf->handle : NULL,
                                         dy->buf->handle, x->buf->handle, d));
  if (lunet_be_check(ctx, be, rc, "conv2d_backward_filter")) {
    lunet_tensor_release(dw);
    lunet_tensor_release(b);
    return NULL;
  }
  if (db) *db = b;
  return dw;
}

/* Whether this max pooling takes the ReLU layer.c asked for (ctx->pool_relu)
 * in the backend's fused ops: then the request is answered.  Both ops or
 * neither: a forward fused on a backend without the fused backward could
 * not be trained. */
static bool pool_relu_fused(lunet_ctx *ctx, const lunet_be *be, lunet_pool_mode mode) {
  if (ctx->pool_relu != LUNET_POOL_RELU_ASKED || mode != LUNET_POOL_MAX || be->desc->abi_minor < 4 ||
      !be->i->max_pool2d_relu || !be->i->max_pool2d_relu_backward)
    return false;
  ctx->pool_relu = LUNET_POOL_RELU_DONE;
  return true;
}

lunet_tensor *lunet_op_pool2d(lunet_ctx *ctx, lunet_pool_mode mode, const lunet_tensor *x,
                              const lunet_pool2d_desc *d) {
  lunet_be *be = BE1("pool2d", x);
  if (!be || !supported(ctx, be, be->i->pool2d, "pool2d") ||
      !has_shape(ctx, "pool2d", "input", x, 4, (int64_t[]){d->n, d->h, d->w, d->c}))
    return NULL;
  lunet_tensor *y = lunet_tensor_on(ctx, be, LUNET_F32, 4, (int64_t[]){d->n, d->oh, d->ow, d->c});
  if (!y) return NULL;
  if (pool_relu_fused(ctx, be, mode))
    return done(ctx, be,
                PROFILED(ctx, be, "pool2d_relu", 0, be->i->max_pool2d_relu(be->state, y->buf->handle, x->buf->handle, d)),
                "max_pool2d_relu", y);
  return done(ctx, be, PROFILED(ctx, be, "pool2d", 0, be->i->pool2d(be->state, mode, y->buf->handle, x->buf->handle, d)), "pool2d",
              y);
}

lunet_tensor *lunet_op_pool2d_backward(lunet_ctx *ctx, lunet_pool_mode mode, const lunet_tensor *dy,
                                       const lunet_tensor *x, const lunet_tensor *y,
                                       const lunet_pool2d_desc *d) {
  lunet_be *be = BE3("pool2d_backward", dy, x, y);
  if (!be || !supported(ctx, be, be->i->pool2d_backward, "pool2d_backward") ||
      !has_shape(ctx, "pool2d_backward", "dy", dy, 4, (int64_t[]){d->n, d->oh, d->ow, d->c}) ||
      !has_shape(ctx, "pool2d_backward", "input", x, 4, (int64_t[]){d->n, d->h, d->w, d->c}))
    return NULL;
  lunet_tensor *dx = lunet_op_empty_like(ctx, x);
  if (!dx) return NULL;
  if (pool_relu_fused(ctx, be, mode))
    return done(ctx, be,
                PROFILED(ctx, be, "pool2d_relu_backward", 0,
                         be->i->max_pool2d_relu_backward(be->state, dx->buf->handle, dy->buf->handle, x->buf->handle,
                                                         y ? y->buf->handle : NULL, d)),
                "max_pool2d_relu_backward", dx);
  return done(ctx, be,
              PROFILED(ctx, be, "pool2d_backward", 0, be->i->pool2d_backward(be->state, mode, dx->buf->handle, dy->buf->handle,
                                     x->buf->handle, y ? y->buf->handle : NULL, d)),
              "pool2d_backward", dx);
}

/* ---- softmax and losses ---- */

static size_t last_dim(const lunet_tensor *t) {
  return t->ndim ? (size_t)t->shape[t->ndim - 1] : 1;
}

lunet_tensor *lunet_op_softmax(lunet_ctx *ctx, const lunet_tensor *x, bool log) {
  lunet_be *be = BE1("softmax", x);
  if (!be) return NULL;
  lunet_tensor *y = lunet_op_empty_like(ctx, x);
  size_t cols = last_dim(x);
  if (!y) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, "softmax", 0, be->i->softmax(be->state, log, y->buf->handle, x->buf->handle,
                             cols ? (size_t)x->numel / cols : 0, cols)),
              "softmax", y);
}

lunet_tensor *lunet_op_softmax_backward(lunet_ctx *ctx, const lunet_tensor *dy,
                                        const lunet_tensor *y, bool log) {
  lunet_be *be = BE2("softmax_backward", dy, y);
  if (!be) return NULL;
  if (!lunet_shape_equal(dy, y)) {
    char s1[128], s2[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "softmax_backward: gradient %s, output %s",
                shape_s(dy, s1, sizeof s1), shape_s(y, s2, sizeof s2));
    return NULL;
  }
  lunet_tensor *dx = lunet_op_empty_like(ctx, y);
  size_t cols = last_dim(y);
  if (!dx) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, "softmax_backward", 0, be->i->softmax_backward(be->state, log, dx->buf->handle, dy->buf->handle,
                                      y->buf->handle, cols ? (size_t)y->numel / cols : 0, cols)),
              "softmax_backward", dx);
}

lunet_tensor *lunet_op_softmax_xent(lunet_ctx *ctx, const lunet_tensor *logits,
                                    const lunet_tensor *labels, lunet_tensor **dlogits) {
  lunet_be *be = BE2("softmax_xent", logits, labels);
  if (dlogits) *dlogits = NULL;
  if (!be) return NULL;
  size_t cols = last_dim(logits), rows = cols ? (size_t)logits->numel / cols : 0;
  if ((size_t)labels->numel != rows) {
    char s1[128], s2[128];
    lunet_error(ctx, LUNET_ERR_SHAPE,
                "sparse cross-entropy: %zu predictions %s but %lld labels "
                "%s (labels are class ids, one per sample)",
                rows, shape_s(logits, s1, sizeof s1), (long long)labels->numel,
                shape_s(labels, s2, sizeof s2));
    return NULL;
  }
  lunet_tensor *loss = lunet_tensor_on(ctx, be, LUNET_F32, 1, (int64_t[]){(int64_t)rows});
  lunet_tensor *d = dlogits && loss ? lunet_op_empty_like(ctx, logits) : NULL;
  if (!loss || (dlogits && !d)) {
    lunet_tensor_release(loss);
    return NULL;
  }
  int rc = PROFILED(ctx, be, "softmax_xent", 0, be->i->softmax_xent(be->state, loss->buf->handle, d ? d->buf->handle : NULL,
                               logits->buf->handle, labels->buf->handle, rows, cols));
  if (lunet_be_check(ctx, be, rc, "sparse cross-entropy")) {
    lunet_tensor_release(loss);
    lunet_tensor_release(d);
    return NULL;
  }
  if (dlogits) *dlogits = d;
  return loss;
}

/* ---- normalisation and dropout ---- */

lunet_tensor *lunet_op_batchnorm(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *gamma,
                                 const lunet_tensor *beta, lunet_batchnorm_state *st,
                                 bool training) {
  lunet_be *be = BE3("batchnorm", x, gamma, beta);
  if (!be || !supported(ctx, be, be->i->batchnorm, "batchnorm")) return NULL;
  size_t c = last_dim(x), rows = c ? (size_t)x->numel / c : 0;
  lunet_tensor *y = lunet_op_empty_like(ctx, x);
  if (!y) return NULL;
  int rc = PROFILED(ctx, be, "batchnorm", 0, be->i->batchnorm(
      be->state, training, y->buf->handle, training ? st->save_mean->buf->handle : NULL,
      training ? st->save_invstd->buf->handle : NULL, st->running_mean->buf->handle,
      st->running_var->buf->handle, x->buf->handle, gamma->buf->handle, beta->buf->handle, rows, c,
      st->momentum, st->epsilon));
  return done(ctx, be, rc, "batchnorm", y);
}

lunet_tensor *lunet_op_batchnorm_backward(lunet_ctx *ctx, const lunet_tensor *dy,
                                          const lunet_tensor *x, const lunet_tensor *gamma,
                                          const lunet_batchnorm_state *st, lunet_tensor **dgamma,
                                          lunet_tensor **dbeta) {
  lunet_be *be = BE3("batchnorm_backward", dy, x, gamma);
  *dgamma = *dbeta = NULL;
  if (!be || !supported(ctx, be, be->i->batchnorm_backward, "batchnorm_backward")) return NULL;
  size_t c = last_dim(x), rows = c ? (size_t)x->numel / c : 0;
  lunet_tensor *dx = lunet_op_empty_like(ctx, x);
  lunet_tensor *dg = lunet_op_empty_like(ctx, gamma), *db = lunet_op_empty_like(ctx, gamma);
  if (dx && dg && db) {
    int rc = PROFILED(ctx, be, "batchnorm_backward", 0, be->i->batchnorm_backward(be->state, dx->buf->handle, dg->buf->handle, db->buf->handle,
                                       dy->buf->handle, x->buf->handle, gamma->buf->handle,
                                       st->save_mean->buf->handle, st->save_invstd->buf->handle,
                                       rows, c));
    if (lunet_be_check(ctx, be, rc, "batchnorm_backward") == LUNET_OK) {
      *dgamma = dg;
      *dbeta = db;
      return dx;
    }
  }
  lunet_tensor_release(dx);
  lunet_tensor_release(dg);
  lunet_tensor_release(db);
  return NULL;
}

lunet_tensor *lunet_op_dropout_mask(lunet_ctx *ctx, const lunet_tensor *like, float rate) {
  if (!(rate >= 0.0f && rate < 1.0f)) {
    lunet_error(ctx, LUNET_ERR_ARG, "dropout rate must be in [0, 1), got %g", rate);
    return NULL;
  }
  lunet_be *be = like->buf->be;
  lunet_tensor *m = lunet_tensor_on(ctx, be, LUNET_F32, like->ndim, like->shape);
  if (!m) return NULL;
  uint64_t counter = lunet_rng_take(ctx, (uint64_t)m->numel);
  return done(
      ctx, be,
      PROFILED(ctx, be, "dropout_mask", 0, be->i->dropout_mask(be->state, m->buf->handle, (size_t)m->numel, rate, ctx->seed, counter)),
      "dropout", m);
}

/* ---- indexing and layout ---- */

lunet_tensor *lunet_op_gather_rows(lunet_ctx *ctx, const lunet_tensor *x, const int64_t *idx,
                                   int64_t n) {
  if (x->ndim < 1) {
    lunet_error(ctx, LUNET_ERR_ARG, "cannot take rows of a scalar");
    return NULL;
  }
  for (int64_t i = 0; i < n; i++)
    if (idx[i] < 0 || idx[i] >= x->shape[0]) {
      lunet_error(ctx, LUNET_ERR_ARG, "row index %lld is outside [0, %lld)", (long long)idx[i],
                  (long long)x->shape[0]);
      return NULL;
    }
  int64_t shape[LUNET_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[0] = n;
  lunet_be *be = x->buf->be;
  lunet_tensor *y = lunet_tensor_on(ctx, be, x->dtype, x->ndim, shape);
  if (!y) return NULL;
  size_t row = x->shape[0] ? x->buf->nbytes / (size_t)x->shape[0] : 0;
  return done(ctx, be,
              PROFILED(ctx, be, "gather_rows", 0, be->i->gather_rows(be->state, y->buf->handle, x->buf->handle, idx, (size_t)n, row)),
              "gather_rows", y);
}

lunet_status lunet_op_scatter_add_rows(lunet_ctx *ctx, lunet_tensor *y, const lunet_tensor *x, const int64_t *idx,
                                       int64_t n) {
  lunet_be *be = BE2("scatter_add_rows", y, x);
  if (!be) return ctx->status;
  char a[128], b[128];
  int64_t cols = y->ndim ? (y->shape[0] ? y->numel / y->shape[0] : 0) : 0;
  if (y->ndim < 1 || x->dtype != LUNET_F32 || y->dtype != LUNET_F32 || x->numel != n * cols)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "scatter_add_rows: %lld float32 rows of %s into %s do not fit",
                       (long long)n, shape_s(x, a, sizeof a), shape_s(y, b, sizeof b));
  for (int64_t i = 0; i < n; i++)
    if (idx[i] < 0 || idx[i] >= y->shape[0])
      return lunet_error(ctx, LUNET_ERR_ARG, "row index %lld is outside [0, %lld)", (long long)idx[i],
                         (long long)y->shape[0]);
  if (be->desc->abi_minor < 1 || !be->i->scatter_add_rows)
    return lunet_error(ctx, LUNET_ERR_UNSUPPORTED, "scatter_add_rows is not supported by backend '%s' (built for ABI %u.%u)",
                       be->name, be->desc->abi_major, be->desc->abi_minor);
  return lunet_be_check(ctx, be,
                        PROFILED(ctx, be, "scatter_add_rows", 0, be->i->scatter_add_rows(be->state, y->buf->handle, x->buf->handle, idx, (size_t)n,
                                                (size_t)cols)),
                        "scatter_add_rows");
}

lunet_tensor *lunet_op_slice_rows(lunet_ctx *ctx, const lunet_tensor *x, int64_t start, int64_t n) {
  if (x->ndim < 1 || start < 0 || n < 0 || start + n > x->shape[0]) {
    lunet_error(ctx, LUNET_ERR_ARG, "rows [%lld, %lld) are outside a tensor of %lld rows",
                (long long)start, (long long)(start + n), (long long)(x->ndim ? x->shape[0] : 0));
    return NULL;
  }
  int64_t shape[LUNET_MAX_DIMS];
  memcpy(shape, x->shape, sizeof shape);
  shape[0] = n;
  lunet_be *be = x->buf->be;
  lunet_tensor *y = lunet_tensor_on(ctx, be, x->dtype, x->ndim, shape);
  if (!y) return NULL;
  size_t row = x->shape[0] ? x->buf->nbytes / (size_t)x->shape[0] : 0;
  return done(ctx, be,
              PROFILED(ctx, be, "buffer_copy", 0, be->i->buffer_copy(be->state, y->buf->handle, 0, x->buf->handle, row * (size_t)start,
                                 row * (size_t)n)),
              "slice", y);
}

static void contiguous_strides(int nd, const int64_t *shape, int64_t *strides) {
  int64_t s = 1;
  for (int i = nd - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
}

static lunet_tensor *strided(lunet_ctx *ctx, lunet_tensor *y, const lunet_tensor *x,
                             lunet_strided_desc *d, const char *op) {
  lunet_be *be = x->buf->be;
  d->elem_size = lunet_dtype_size(x->dtype);
  if (lunet_shape_numel(d->ndim, d->shape) == 0) return y;
  return done(ctx, be, PROFILED(ctx, be, "strided_copy", 0, be->i->strided_copy(be->state, y->buf->handle, x->buf->handle, d)), op, y);
}

lunet_tensor *lunet_op_permute(lunet_ctx *ctx, const lunet_tensor *x, const int *perm) {
  int64_t xs[LUNET_MAX_DIMS], shape[LUNET_MAX_DIMS];
  bool seen[LUNET_MAX_DIMS] = {0};
  for (int i = 0; i < x->ndim; i++) {
    if (perm[i] < 0 || perm[i] >= x->ndim || seen[perm[i]]) {
      lunet_error(ctx, LUNET_ERR_ARG, "permutation is not a rearrangement of 0..%d", x->ndim - 1);
      return NULL;
    }
    seen[perm[i]] = true;
  }
  contiguous_strides(x->ndim, x->shape, xs);
  lunet_strided_desc d = {.ndim = x->ndim};
  for (int i = 0; i < x->ndim; i++) {
    shape[i] = x->shape[perm[i]];
    d.x_strides[i] = xs[perm[i]];
  }
  memcpy(d.shape, shape, sizeof shape);
  lunet_tensor *y = lunet_tensor_on(ctx, x->buf->be, x->dtype, x->ndim, shape);
  if (!y) return NULL;
  contiguous_strides(x->ndim, shape, d.y_strides);
  return strided(ctx, y, x, &d, "permute");
}

/* Elements start, start + step, ... below stop (step >= 1; no overflow for
 * any step), and the stride between them, `stride` times the step. */
static int64_t slice_len(int64_t start, int64_t stop, int64_t step, int64_t stride, int64_t *step_stride) {
  int64_t len = stop > start ? (stop - start - 1) / step + 1 : 0;
  *step_stride = len > 1 ? stride * step : stride; /* one element: the step never moves */
  return len;
}

lunet_tensor *lunet_op_slice(lunet_ctx *ctx, const lunet_tensor *x, const int64_t *start,
                             const int64_t *stop, const int64_t *step) {
  int64_t xs[LUNET_MAX_DIMS];
  contiguous_strides(x->ndim, x->shape, xs);
  lunet_strided_desc d = {.ndim = x->ndim};
  for (int i = 0; i < x->ndim; i++) {
    if (step[i] < 1 || start[i] < 0 || stop[i] > x->shape[i]) {
      lunet_error(ctx, LUNET_ERR_ARG,
                  "slice %lld:%lld:%lld is out of range for axis %d of "
                  "size %lld",
                  (long long)start[i], (long long)stop[i], (long long)step[i], i + 1,
                  (long long)x->shape[i]);
      return NULL;
    }
    d.shape[i] = slice_len(start[i], stop[i], step[i], xs[i], &d.x_strides[i]);
    d.x_offset += start[i] * xs[i];
  }
  lunet_tensor *y = lunet_tensor_on(ctx, x->buf->be, x->dtype, x->ndim, d.shape);
  if (!y) return NULL;
  contiguous_strides(x->ndim, d.shape, d.y_strides);
  return strided(ctx, y, x, &d, "slice");
}

lunet_status lunet_op_assign_slice(lunet_ctx *ctx, lunet_tensor *dst, const int64_t *start,
                                   const int64_t *stop, const int64_t *step,
                                   const lunet_tensor *src) {
  if (ctx->grad_enabled && (dst->requires_grad || dst->grad_fn))
    return lunet_error(ctx, LUNET_ERR_ARG, "cannot assign into a tensor that requires grad (the "
                       "tape would miss the change; use t:detach() or nn.no_grad)");
  if (src->dtype != dst->dtype || src->buf->be != dst->buf->be)
    return lunet_error(ctx, LUNET_ERR_ARG, "assignment: the value is %s on '%s', the tensor %s on "
                       "'%s'", lunet_dtype_name(src->dtype), src->buf->be->name,
                       lunet_dtype_name(dst->dtype), dst->buf->be->name);
  int64_t ds[LUNET_MAX_DIMS];
  contiguous_strides(dst->ndim, dst->shape, ds);
  lunet_strided_desc d = {.ndim = dst->ndim};
  for (int i = 0; i < dst->ndim; i++) {
    if (step[i] < 1 || start[i] < 0 || stop[i] > dst->shape[i])
      return lunet_error(ctx, LUNET_ERR_ARG, "slice %lld:%lld is out of range for axis %d of size "
                         "%lld", (long long)start[i], (long long)stop[i], i + 1,
                         (long long)dst->shape[i]);
    d.shape[i] = slice_len(start[i], stop[i], step[i], ds[i], &d.y_strides[i]);
    d.y_offset += start[i] * ds[i];
  }
  int64_t n = lunet_shape_numel(dst->ndim, d.shape);
  if (n != src->numel) {
    char a[128];
    return lunet_error(ctx, LUNET_ERR_SHAPE, "assignment: the slice has %lld elements but the value "
                       "%s has %lld", (long long)n, shape_s(src, a, sizeof a),
                       (long long)src->numel);
  }
  contiguous_strides(dst->ndim, d.shape, d.x_strides);
  d.elem_size = lunet_dtype_size(dst->dtype);
  if (n == 0) return LUNET_OK;
  lunet_be *be = dst->buf->be;
  return lunet_be_check(ctx, be, PROFILED(ctx, be, "strided_copy", 0, be->i->strided_copy(be->state, dst->buf->handle, src->buf->handle,
                                                     &d)), "assignment");
}

lunet_tensor *lunet_op_concat(lunet_ctx *ctx, lunet_tensor *const *xs, int n, int axis) {
  if (n < 1) {
    lunet_error(ctx, LUNET_ERR_ARG, "concat needs at least one tensor");
    return NULL;
  }
  int a = norm_axis(ctx, axis, xs[0]->ndim);
  if (a < 0) return NULL;
  int64_t shape[LUNET_MAX_DIMS];
  memcpy(shape, xs[0]->shape, sizeof shape);
  shape[a] = 0;
  for (int i = 0; i < n; i++) {
    bool ok = xs[i]->ndim == xs[0]->ndim && xs[i]->dtype == xs[0]->dtype &&
              xs[i]->buf->be == xs[0]->buf->be;
    for (int j = 0; ok && j < xs[0]->ndim; j++) ok = j == a || xs[i]->shape[j] == xs[0]->shape[j];
    if (!ok) {
      char s1[128], s2[128];
      lunet_error(ctx, LUNET_ERR_SHAPE,
                  "concat: tensor %d %s does not fit tensor 1 %s along "
                  "axis %d",
                  i + 1, shape_s(xs[i], s1, sizeof s1), shape_s(xs[0], s2, sizeof s2), a + 1);
      return NULL;
    }
    shape[a] += xs[i]->shape[a];
  }
  lunet_tensor *y = lunet_tensor_on(ctx, xs[0]->buf->be, xs[0]->dtype, xs[0]->ndim, shape);
  if (!y) return NULL;
  int64_t ys[LUNET_MAX_DIMS], offset = 0;
  contiguous_strides(y->ndim, shape, ys);
  for (int i = 0; i < n; i++) {
    lunet_strided_desc d = {.ndim = y->ndim, .y_offset = offset * ys[a]};
    memcpy(d.shape, xs[i]->shape, sizeof d.shape);
    contiguous_strides(y->ndim, xs[i]->shape, d.x_strides);
    memcpy(d.y_strides, ys, sizeof ys);
    if (!strided(ctx, y, xs[i], &d, "concat")) return NULL;
    offset += xs[i]->shape[a];
  }
  return y;
}

/* ---- optimizers ---- */

/* The gradient and every state slot must match the parameter. */
static lunet_status same_numel(lunet_ctx *ctx, const char *op, const lunet_tensor *p,
                               const lunet_tensor *g, const lunet_tensor *s1,
                               const lunet_tensor *s2) {
  if (p->numel != g->numel)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: gradient has %lld elements, parameter %lld", op,
                       (long long)g->numel, (long long)p->numel);
  const lunet_tensor *st[2] = {s1, s2};
  for (int i = 0; i < 2; i++)
    if (st[i] &&
        (st[i]->numel != p->numel || st[i]->buf->be != p->buf->be || st[i]->dtype != LUNET_F32))
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "%s: optimizer state has %lld elements on '%s', the "
                         "parameter %lld on '%s' (is one optimizer shared by two models? give each "
                         "model its own)",
                         op, (long long)st[i]->numel, st[i]->buf->be->name, (long long)p->numel,
                         p->buf->be->name);
  return LUNET_OK;
}

lunet_status lunet_op_sgd_update(lunet_ctx *ctx, lunet_tensor *p, const lunet_tensor *g,
                                 lunet_tensor *vel, float lr, float momentum, bool nesterov,
                                 float wd) {
  lunet_be *be = BE2("sgd", p, g);
  if (!be || same_numel(ctx, "sgd", p, g, vel, NULL)) return ctx->status;
  return lunet_be_check(ctx, be,
                        PROFILED(ctx, be, "sgd_update", 0, be->i->sgd_update(be->state, p->buf->handle, g->buf->handle,
                                          vel ? vel->buf->handle : NULL, (size_t)p->numel, lr,
                                          momentum, nesterov, wd)),
                        "sgd");
}

lunet_status lunet_op_adam_update(lunet_ctx *ctx, lunet_tensor *p, const lunet_tensor *g,
                                  lunet_tensor *m, lunet_tensor *v, float lr, float b1, float b2,
                                  float eps, float wd, int64_t step) {
  lunet_be *be = BE2("adam", p, g);
  if (!be || same_numel(ctx, "adam", p, g, m, v)) return ctx->status;
  return lunet_be_check(ctx, be,
                        PROFILED(ctx, be, "adam_update", 0, be->i->adam_update(be->state, p->buf->handle, g->buf->handle,
                                           m->buf->handle, v->buf->handle, (size_t)p->numel, lr, b1,
                                           b2, eps, wd, step)),
                        "adam");
}

lunet_status lunet_op_rmsprop_update(lunet_ctx *ctx, lunet_tensor *p, const lunet_tensor *g,
                                     lunet_tensor *ms, lunet_tensor *mom, float lr, float rho,
                                     float momentum, float eps) {
  lunet_be *be = BE2("rmsprop", p, g);
  if (!be) return ctx->status;
  if (!ms) return lunet_error(ctx, LUNET_ERR_ARG, "rmsprop: the mean-square state is required");
  if (same_numel(ctx, "rmsprop", p, g, ms, mom)) return ctx->status;
  return lunet_be_check(ctx, be,
                        PROFILED(ctx, be, "rmsprop_update", 0, be->i->rmsprop_update(be->state, p->buf->handle, g->buf->handle,
                                              ms->buf->handle, mom ? mom->buf->handle : NULL,
                                              (size_t)p->numel, lr, rho, momentum, eps)),
                        "rmsprop");
}

/* One tensor of update_multi as its single op. */
static lunet_status update_single(lunet_ctx *ctx, const lunet_update_desc *u, lunet_tensor *p,
                                  const lunet_tensor *g, lunet_tensor *s1, lunet_tensor *s2) {
  switch (u->kind) {
  case LUNET_UPDATE_SGD:
    return lunet_op_sgd_update(ctx, p, g, s1, u->lr, u->momentum, u->nesterov, u->weight_decay);
  case LUNET_UPDATE_ADAM:
    return lunet_op_adam_update(ctx, p, g, s1, s2, u->lr, u->beta1, u->beta2, u->epsilon,
                                u->weight_decay, u->step);
  default:
    return lunet_op_rmsprop_update(ctx, p, g, s1, s2, u->lr, u->rho, u->momentum, u->epsilon);
  }
}

lunet_status lunet_op_update_multi(lunet_ctx *ctx, const lunet_update_desc *u, int count,
                                   lunet_tensor *const *p, const lunet_tensor *const *g,
                                   lunet_tensor *const *s1, lunet_tensor *const *s2) {
  static const char *const names[] = {"sgd", "adam", "rmsprop"};
  static const char *const profiled[] = {"sgd_update_multi", "adam_update_multi", "rmsprop_update_multi"};
  if ((unsigned)u->kind > LUNET_UPDATE_RMSPROP)
    return lunet_error(ctx, LUNET_ERR_ARG, "update_multi: unknown optimizer kind %d (valid: LUNET_UPDATE_SGD, "
                                           "_ADAM, _RMSPROP)", (int)u->kind);
  const char *op = names[u->kind];
  if (count <= 0) return LUNET_OK;
  lunet_be *be = BE2(op, p[0], g[0]);
  if (!be) return ctx->status;
  /* One call where the backend has it and every tensor is there (and each
   * optional state present for all or none); otherwise tensor by tensor. */
  bool one = be->desc->abi_minor >= 6 && be->i->update_multi;
  for (int t = 0; one && t < count; t++)
    one = p[t]->buf->be == be && g[t]->buf->be == be && (s1[t] != NULL) == (s1[0] != NULL) &&
          (s2[t] != NULL) == (s2[0] != NULL);
  if (!one) {
    lunet_status s = LUNET_OK;
    for (int t = 0; !s && t < count; t++) s = update_single(ctx, u, p[t], g[t], s1[t], s2[t]);
    return s;
  }
  if (u->kind == LUNET_UPDATE_ADAM && (!s1[0] || !s2[0]))
    return lunet_error(ctx, LUNET_ERR_ARG, "adam: the m and v states are required");
  if (u->kind == LUNET_UPDATE_RMSPROP && !s1[0])
    return lunet_error(ctx, LUNET_ERR_ARG, "rmsprop: the mean-square state is required");
  /* the handles: p, s1, s2, then g, then the sizes (all 8-byte aligned);
   * on the stack for a model's usual count (no allocation a step) */
  enum { ON_STACK = 64 };
  unsigned char stack[ON_STACK * (3 * sizeof(lunet_buf) + sizeof(lunet_cbuf) + sizeof(size_t))]
      __attribute__((aligned(16)));
  bool heap = count > ON_STACK;
  lunet_buf *h = heap ? malloc((size_t)count * (3 * sizeof(lunet_buf) + sizeof(lunet_cbuf) + sizeof(size_t)))
                      : (lunet_buf *)stack;
  if (!h) return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of host memory for %d tensors", op, count);
  lunet_buf *hp = h, *hs1 = h + count, *hs2 = h + 2 * count;
  lunet_cbuf *hg = (lunet_cbuf *)(h + 3 * count);
  size_t *n = (size_t *)(hg + count);
  lunet_status s = LUNET_OK;
  for (int t = 0; !s && t < count; t++) {
    s = same_numel(ctx, op, p[t], g[t], s1[t], s2[t]);
    hp[t] = p[t]->buf->handle, hg[t] = g[t]->buf->handle, n[t] = (size_t)p[t]->numel;
    hs1[t] = s1[t] ? s1[t]->buf->handle : NULL, hs2[t] = s2[t] ? s2[t]->buf->handle : NULL;
  }
  if (!s)
    s = lunet_be_check(ctx, be,
                       PROFILED(ctx, be, profiled[u->kind], 0,
                                be->i->update_multi(be->state, u, count, hp, hg, s1[0] ? hs1 : NULL,
                                                    s2[0] ? hs2 : NULL, n)),
                       op);
  if (heap) free(h);
  return s;
}

lunet_tensor *lunet_op_affine_resample(lunet_ctx *ctx, const lunet_tensor *x, const float *mats,
                                       int64_t oh, int64_t ow, lunet_fill_mode mode, float fill) {
  lunet_be *be = BE1("affine_resample", x);
  if (!be || !supported(ctx, be, be->i->affine_resample, "affine_resample")) return NULL;
  if (x->ndim != 4) {
    char s[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "affine_resample: expected images (N, H, W, C), got %s",
                shape_s(x, s, sizeof s));
    return NULL;
  }
  lunet_tensor *y =
      lunet_tensor_on(ctx, be, LUNET_F32, 4, (int64_t[]){x->shape[0], oh, ow, x->shape[3]});
  if (!y) return NULL;
  return done(ctx, be,
              PROFILED(ctx, be, "affine_resample", 0, be->i->affine_resample(be->state, y->buf->handle, x->buf->handle, mats,
                                     (size_t)x->shape[0], (size_t)x->shape[1], (size_t)x->shape[2],
                                     (size_t)x->shape[3], (size_t)oh, (size_t)ow, mode, fill)),
              "affine_resample", y);
}
