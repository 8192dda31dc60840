/*
 * Tensor ops that pick, order or accumulate elements: where, triu/tril,
 * topk, argsort, cumsum.  They are built on differentiable ops (gather,
 * concat, matmul), so gradients follow and every backend runs them; the
 * choices (conditions, orders) are made on the host, which reads the
 * tensor that decides them.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* x's values as float32 on the host (a new array, NULL with the error set). */
static float *host_values(lunet_ctx *ctx, const lunet_tensor *x, const char *op) {
  lunet_tensor *f = x->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)x) : lunet_op_cast(ctx, x, LUNET_F32);
  float *v = f ? malloc(sizeof *v * (size_t)(x->numel > 0 ? x->numel : 1)) : NULL;
  if (f && !v) lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of host memory", op);
  if (v && lunet_tensor_read(ctx, f, v, sizeof *v * (size_t)x->numel)) {
    free(v);
    v = NULL;
  }
  lunet_tensor_release(f);
  return v;
}

/* x + zeros of `shape` (broadcast on the tape), or x itself when it has it. */
static lunet_tensor *expand(lunet_ctx *ctx, lunet_tensor *x, int nd, const int64_t *shape) {
  if (x->ndim == nd && !memcmp(x->shape, shape, sizeof(int64_t) * (size_t)nd)) return lunet_tensor_retain(x);
  lunet_tensor *z = lunet_tensor_on(ctx, x->buf->be, LUNET_F32, nd, shape);
  lunet_tensor *y = z && !lunet_op_fill(ctx, z, 0) ? lunet_add(ctx, x, z) : NULL;
  lunet_tensor_release(z);
  if (y && (y->ndim != nd || memcmp(y->shape, shape, sizeof(int64_t) * (size_t)nd))) {
    char a[128], b[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "where: %s does not broadcast to %s", lunet_shape_str(x->ndim, x->shape, a, sizeof a),
                lunet_shape_str(nd, shape, b, sizeof b));
    lunet_tensor_release(y);
    return NULL;
  }
  return y;
}

/* The broadcast shape of a and b (numpy's rules), false when they do not fit. */
static bool broadcast_shape(const lunet_tensor *a, const lunet_tensor *b, int *nd, int64_t *shape) {
  *nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int i = 0; i < *nd; i++) {
    int64_t da = i < *nd - a->ndim ? 1 : a->shape[i - (*nd - a->ndim)];
    int64_t db = i < *nd - b->ndim ? 1 : b->shape[i - (*nd - b->ndim)];
    if (da != db && da != 1 && db != 1) return false;
    shape[i] = da == 1 ? db : da;
  }
  return true;
}

/* Exact selection: y[i] = keep[i] ? a[i] : b[i] (a, b of one shape), by
 * gathering from their concatenation: no arithmetic touches the values, so
 * an infinity or NaN in the branch not taken stays out. */
static lunet_tensor *select_flat(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b, const bool *keep) {
  int64_t n = a->numel, col[2] = {n, 1};
  int64_t *idx = malloc(sizeof *idx * (size_t)(n > 0 ? n : 1));
  if (!idx) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory selecting %lld values", (long long)n);
    return NULL;
  }
  for (int64_t i = 0; i < n; i++) idx[i] = keep[i] ? i : n + i;
  lunet_tensor *ac = lunet_reshape(ctx, a, 2, col), *bc = ac ? lunet_reshape(ctx, b, 2, col) : NULL;
  lunet_tensor *both = bc ? lunet_concat(ctx, (lunet_tensor *[]){ac, bc}, 2, 0) : NULL;
  lunet_tensor *picked = both ? lunet_take_rows(ctx, both, idx, n) : NULL;
  lunet_tensor *y = picked ? lunet_reshape(ctx, picked, a->ndim, a->shape) : NULL;
  free(idx);
  lunet_tensor *tmp[] = {ac, bc, both, picked};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
  return y;
}

lunet_tensor *lunet_where(lunet_ctx *ctx, const lunet_tensor *cond, lunet_tensor *a, lunet_tensor *b) {
  int nd;
  int64_t shape[LUNET_MAX_DIMS];
  lunet_tensor values = {0};
  bool fit = broadcast_shape(a, b, &values.ndim, values.shape) && broadcast_shape(cond, &values, &nd, shape);
  if (!fit) {
    char x[128], y[128], z[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "where: the condition %s and the values %s and %s do not broadcast together",
                lunet_shape_str(cond->ndim, cond->shape, x, sizeof x), lunet_shape_str(a->ndim, a->shape, y, sizeof y),
                lunet_shape_str(b->ndim, b->shape, z, sizeof z));
    return NULL;
  }
  lunet_tensor *cf = cond->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)cond) : lunet_op_cast(ctx, cond, LUNET_F32);
  lunet_tensor *c = cf ? expand(ctx, cf, nd, shape) : NULL;
  lunet_tensor *ae = c ? expand(ctx, a, nd, shape) : NULL, *be = ae ? expand(ctx, b, nd, shape) : NULL;
  float *cv = be ? host_values(ctx, c, "where") : NULL;
  bool *keep = cv ? malloc(sizeof *keep * (size_t)(c->numel > 0 ? c->numel : 1)) : NULL;
  lunet_tensor *y = NULL;
  if (keep) {
    for (int64_t i = 0; i < c->numel; i++) keep[i] = cv[i] != 0.0f;
    y = select_flat(ctx, ae, be, keep);
  } else if (cv) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "where: out of host memory");
  }
  free(cv);
  free(keep);
  lunet_tensor *tmp[] = {cf, c, ae, be};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
  return y;
}

lunet_tensor *lunet_triangle(lunet_ctx *ctx, lunet_tensor *x, int64_t k, bool upper) {
  if (x->ndim < 2) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "%s needs a matrix (or a batch of them), got rank %d", upper ? "triu" : "tril",
                x->ndim);
    return NULL;
  }
  int64_t r = x->shape[x->ndim - 2], c = x->shape[x->ndim - 1];
  bool *keep = malloc(sizeof *keep * (size_t)(x->numel > 0 ? x->numel : 1));
  lunet_tensor *zero = keep ? lunet_tensor_on(ctx, x->buf->be, LUNET_F32, x->ndim, x->shape) : NULL;
  if (!keep) lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of host memory", upper ? "triu" : "tril");
  lunet_tensor *y = NULL;
  if (zero && !lunet_op_fill(ctx, zero, 0)) {
    for (int64_t i = 0; i < x->numel; i++) {
      int64_t row = (i / c) % r, col = i % c;
      keep[i] = upper ? col - row >= k : col - row <= k;
    }
    y = select_flat(ctx, x, zero, keep);
  }
  free(keep);
  lunet_tensor_release(zero);
  return y;
}

/* ---- orders ---- */

typedef struct keyed {
  float v;
  int64_t i;
} keyed;

static int ascending(const void *a, const void *b) {
  const keyed *p = a, *q = b;
  /* NaN sorts last, as in numpy; ties keep their order (stable) */
  bool pn = p->v != p->v, qn = q->v != q->v;
  if (pn != qn) return pn ? 1 : -1;
  if (!pn && p->v != q->v) return p->v < q->v ? -1 : 1;
  return p->i < q->i ? -1 : p->i > q->i;
}

static int descending(const void *a, const void *b) {
  const keyed *p = a, *q = b;
  bool pn = p->v != p->v, qn = q->v != q->v;
  if (pn != qn) return pn ? 1 : -1;
  if (!pn && p->v != q->v) return p->v > q->v ? -1 : 1;
  return p->i < q->i ? -1 : p->i > q->i;
}

/* The first k of each line of x along `axis` in sorted order, as int32
 * indices (x's shape with k on the axis). */
static lunet_tensor *order(lunet_ctx *ctx, const lunet_tensor *x, int axis, int64_t k, bool desc, const char *op) {
  int a = axis < 0 ? axis + x->ndim : axis;
  if (x->ndim < 1 || a < 0 || a >= x->ndim) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: axis %d is out of range for a tensor of rank %d", op, axis, x->ndim);
    return NULL;
  }
  int64_t len = x->shape[a];
  if (k < 0 || k > len) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: k = %lld is outside [0, %lld] (the size of axis %d)", op, (long long)k,
                (long long)len, a + 1);
    return NULL;
  }
  int64_t inner = 1;
  for (int d = a + 1; d < x->ndim; d++) inner *= x->shape[d];
  int64_t outer = len ? x->numel / (len * inner) : 0;
  float *v = host_values(ctx, x, op);
  keyed *line = v ? malloc(sizeof *line * (size_t)(len > 0 ? len : 1)) : NULL;
  int32_t *out = line ? malloc(sizeof *out * (size_t)(outer * inner * k > 0 ? outer * inner * k : 1)) : NULL;
  if (v && !out) lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of host memory", op);
  lunet_tensor *t = NULL;
  if (out) {
    for (int64_t o = 0; o < outer; o++)
      for (int64_t in = 0; in < inner; in++) {
        for (int64_t j = 0; j < len; j++) line[j] = (keyed){v[(o * len + j) * inner + in], j};
        qsort(line, (size_t)len, sizeof *line, desc ? descending : ascending);
        for (int64_t j = 0; j < k; j++) out[(o * k + j) * inner + in] = (int32_t)line[j].i;
      }
    int64_t shape[LUNET_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[a] = k;
    t = lunet_tensor_on(ctx, x->buf->be, LUNET_I32, x->ndim, shape);
    if (t && lunet_tensor_write(ctx, t, out, sizeof *out * (size_t)t->numel)) {
      lunet_tensor_release(t);
      t = NULL;
    }
  }
  free(v);
  free(line);
  free(out);
  return t;
}

lunet_tensor *lunet_argsort(lunet_ctx *ctx, const lunet_tensor *x, int axis, bool descending_) {
  int a = axis < 0 ? axis + x->ndim : axis;
  return order(ctx, x, axis, a >= 0 && a < x->ndim ? x->shape[a] : 0, descending_, "argsort");
}

lunet_status lunet_topk(lunet_ctx *ctx, lunet_tensor *x, int64_t k, int axis, bool largest, lunet_tensor **values,
                        lunet_tensor **indices) {
  *values = *indices = NULL;
  lunet_tensor *idx = order(ctx, x, axis, k, largest, "topk");
  lunet_tensor *val = idx ? lunet_gather(ctx, x, axis, idx) : NULL;
  if (!val) {
    lunet_tensor_release(idx);
    return ctx->status;
  }
  *values = val;
  *indices = idx;
  return LUNET_OK;
}

/* ---- cumulative sums ---- */

lunet_tensor *lunet_cumsum(lunet_ctx *ctx, lunet_tensor *x, int axis) {
  int a = axis < 0 ? axis + x->ndim : axis;
  if (x->ndim < 1 || a < 0 || a >= x->ndim) {
    lunet_error(ctx, LUNET_ERR_ARG, "cumsum: axis %d is out of range for a tensor of rank %d", axis, x->ndim);
    return NULL;
  }
  /* A scan of log2(n) rounds (Hillis and Steele): y += y shifted by k
   * along the axis, k = 1, 2, 4, ...; tape ops, so every backend runs it
   * and the gradient is theirs.  Each position only ever adds earlier
   * ones, so a NaN or an infinity reaches the positions after it only (a
   * product with a 0/1 triangle, as before, made 0 * inf = NaN of them). */
  int nd = x->ndim;
  int64_t n = x->shape[a];
  lunet_tensor *y = x->dtype != LUNET_F32 ? lunet_op_cast(ctx, x, LUNET_F32) : lunet_tensor_retain(x);
  lunet_tensor *cur = y ? lunet_copy(ctx, y) : NULL;
  lunet_tensor_release(y);
  for (int64_t k = 1; cur && k < n; k *= 2) {
    int64_t start[LUNET_MAX_DIMS], stop[LUNET_MAX_DIMS], step[LUNET_MAX_DIMS], zshape[LUNET_MAX_DIMS];
    for (int i = 0; i < nd; i++) start[i] = 0, stop[i] = zshape[i] = x->shape[i], step[i] = 1;
    stop[a] = n - k;
    zshape[a] = k;
    lunet_tensor *head = lunet_op_new(ctx, cur, LUNET_F32, nd, zshape);
    lunet_tensor *body = head && !lunet_op_fill(ctx, head, 0.0f) ? lunet_slice(ctx, cur, start, stop, step) : NULL;
    lunet_tensor *parts[2] = {head, body};
    lunet_tensor *shifted = body ? lunet_concat(ctx, parts, 2, a) : NULL;
    lunet_tensor *next = shifted ? lunet_add(ctx, cur, shifted) : NULL;
    lunet_tensor *tmp[] = {head, body, shifted, cur};
    for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
    cur = next;
  }
  return cur;
}
