/*
 * Fast elementwise kernels: fill, cast, strided copy, unary and binary ops
 * (with their broadcast fast paths), reductions and argmax.  Each splits
 * its range over the pool in static chunks; the inner loops run over
 * contiguous floats so that -O3 vectorises them.
 */
#include <string.h>
#include "cpu.h"

/* Items per chunk below which a loop is not worth a thread. */
#define GRAIN 16384

typedef struct ew_job {
  int op;
  float alpha, beta, value;
  float *y;
  const float *x, *dy, *yin;
  void *vy;
  const void *vx;
  lunet_dtype ydt, xdt;
} ew_job;

static void fill_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ew_job *j = arg;
  float *restrict y = j->y;
  for (int64_t i = begin; i < end; i++) y[i] = j->value;
}

int lunet_cpu_fill(lunet_backend *be, lunet_buf y, float value, size_t n) {
  ew_job j = {.y = y, .value = value};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, fill_task, &j);
  return 0;
}

static void cast_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ew_job *j = arg;
  lunet_cpu_cast_range(j->vy, j->ydt, j->vx, j->xdt, (size_t)begin, (size_t)end);
}

int lunet_cpu_cast(lunet_backend *be, lunet_buf y, lunet_dtype ydt, lunet_cbuf x, lunet_dtype xdt,
                   size_t n) {
  if ((unsigned)ydt > LUNET_I32 || (unsigned)xdt > LUNET_I32)
    return lunet_cpu_error(LUNET_ERR_ARG, "cast: unknown dtype %d or %d", (int)xdt, (int)ydt);
  ew_job j = {.vy = y, .vx = x, .ydt = ydt, .xdt = xdt};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, cast_task, &j);
  return 0;
}

/* ---- unary ---- */

/* The cheap ops get their own loops so they vectorise; the libm ones share
 * one loop through the scalar definition. */
static inline __attribute__((always_inline)) void unary_range_body(lunet_unary_op op, float a, float b,
                                                                    float *restrict y, const float *restrict x,
                                                                    int64_t n) {
  switch (op) {
  case LUNET_UNARY_RELU: /* !(x <= 0): a NaN stays NaN */
    for (int64_t i = 0; i < n; i++) y[i] = !(x[i] <= 0.0f) ? x[i] : 0.0f;
    return;
  case LUNET_UNARY_NEG:
    for (int64_t i = 0; i < n; i++) y[i] = -x[i];
    return;
  case LUNET_UNARY_SQUARE:
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * x[i];
    return;
  case LUNET_UNARY_AFFINE:
    for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + b;
    return;
  case LUNET_UNARY_LEAKY_RELU:
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : a * x[i];
    return;
  default:
    for (int64_t i = 0; i < n; i++) y[i] = lunet_cpu_unary_one(op, a, b, x[i]);
  }
}

LUNET_CPU_ISA_DISPATCH(unary_range,
                       (lunet_unary_op op, float a, float b, float *restrict y, const float *restrict x, int64_t n),
                       (op, a, b, y, x, n))

static void unary_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ew_job *j = arg;
  unary_range(j->op, j->alpha, j->beta, j->y + begin, j->x + begin, end - begin);
}

int lunet_cpu_unary(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf y,
                    lunet_cbuf x, size_t n) {
  if ((unsigned)op >= LUNET_UNARY_COUNT)
    return lunet_cpu_error(LUNET_ERR_ARG, "unary: unknown op %d", (int)op);
  ew_job j = {.op = op, .alpha = alpha, .beta = beta, .y = y, .x = x};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, unary_task, &j);
  return 0;
}

static inline __attribute__((always_inline)) void unary_grad_range_body(
    lunet_unary_op op, float a, float b, float *restrict dx, const float *restrict dy, const float *restrict x,
    const float *restrict y, int64_t n) {
  switch (op) {
  case LUNET_UNARY_RELU:
    /* dy is loaded whatever the sign: a load only where x > 0 keeps gcc
     * from vectorising and costs a mispredicted branch per element on
     * real data (12x slower, measured) */
    for (int64_t i = 0; i < n; i++) {
      float g = dy[i];
      dx[i] = x[i] > 0.0f ? g : 0.0f;
    }
    return;
  case LUNET_UNARY_SIGMOID:
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
    return;
  case LUNET_UNARY_TANH:
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
    return;
  default:
    for (int64_t i = 0; i < n; i++)
      dx[i] = lunet_cpu_unary_grad_one(op, a, b, dy[i], x ? x[i] : 0.0f, y ? y[i] : 0.0f);
  }
}

LUNET_CPU_ISA_DISPATCH(unary_grad_range,
                       (lunet_unary_op op, float a, float b, float *restrict dx, const float *restrict dy,
                        const float *restrict x, const float *restrict y, int64_t n),
                       (op, a, b, dx, dy, x, y, n))

static void unary_grad_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ew_job *j = arg;
  unary_grad_range(j->op, j->alpha, j->beta, j->y + begin, j->dy + begin,
                   j->x ? j->x + begin : NULL, j->yin ? j->yin + begin : NULL, end - begin);
}

/* Which of x and y an op's derivative reads. */
static int unary_grad_needs(lunet_unary_op op) {
  switch (op) {
  case LUNET_UNARY_NEG:
  case LUNET_UNARY_AFFINE:
  case LUNET_UNARY_SIGN:
    return 0;
  case LUNET_UNARY_EXP:
  case LUNET_UNARY_SQRT:
  case LUNET_UNARY_SIGMOID:
  case LUNET_UNARY_TANH:
  case LUNET_UNARY_RECIP:
    return 2;
  default:
    return 1;
  }
}

int lunet_cpu_unary_backward(lunet_backend *be, lunet_unary_op op, float alpha, float beta,
                             lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y, size_t n) {
  if ((unsigned)op >= LUNET_UNARY_COUNT)
    return lunet_cpu_error(LUNET_ERR_ARG, "unary_backward: unknown op %d", (int)op);
  int need = unary_grad_needs(op);
  if ((need == 1 && !x) || (need == 2 && !y))
    return lunet_cpu_error(LUNET_ERR_ARG, "unary_backward: op %d needs %s", (int)op,
                           need == 1 ? "x" : "y");
  ew_job j = {.op = op, .alpha = alpha, .beta = beta, .y = dx, .dy = dy, .x = x, .yin = y};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, unary_grad_task, &j);
  return 0;
}

/* ---- binary with broadcasting ---- */

/* y (n) = a[i*as] op b[i*bs]; the stride patterns of the fast paths get
 * their own loops. */
static void binary_row(lunet_binary_op op, float *restrict y, const float *restrict a, int64_t as,
                       const float *restrict b, int64_t bs, int64_t n) {
  if (as == 1 && bs == 1) {
    if (op == LUNET_BINARY_ADD)
      for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    else if (op == LUNET_BINARY_MUL)
      for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
    else if (op == LUNET_BINARY_SUB)
      for (int64_t i = 0; i < n; i++) y[i] = a[i] - b[i];
    else
      for (int64_t i = 0; i < n; i++) y[i] = lunet_cpu_binary_one(op, a[i], b[i]);
  } else if (as == 1 && bs == 0) {
    float s = b[0];
    if (op == LUNET_BINARY_ADD)
      for (int64_t i = 0; i < n; i++) y[i] = a[i] + s;
    else if (op == LUNET_BINARY_MUL)
      for (int64_t i = 0; i < n; i++) y[i] = a[i] * s;
    else
      for (int64_t i = 0; i < n; i++) y[i] = lunet_cpu_binary_one(op, a[i], s);
  } else if (as == 0 && bs == 1) {
    float s = a[0];
    for (int64_t i = 0; i < n; i++) y[i] = lunet_cpu_binary_one(op, s, b[i]);
  } else {
    for (int64_t i = 0; i < n; i++) y[i] = lunet_cpu_binary_one(op, a[i * as], b[i * bs]);
  }
}

typedef struct bin_job {
  lunet_binary_op op;
  float *y;
  const float *a, *b;
  lunet_bcast_desc d; /* collapsed */
  int64_t len;        /* the last axis */
} bin_job;

/* Rows [begin, end) of the last axis; offsets from the row's index. */
static void binary_task(void *arg, int64_t begin, int64_t end, int chunk) {
  bin_job *j = arg;
  const lunet_bcast_desc *d = &j->d;
  int nd = d->ndim - 1;
  int64_t idx[LUNET_MAX_DIMS] = {0}, rem = begin, ao = 0, bo = 0;
  for (int i = nd - 1; i >= 0; i--) {
    idx[i] = rem % d->shape[i];
    rem /= d->shape[i];
    ao += idx[i] * d->a_strides[i];
    bo += idx[i] * d->b_strides[i];
  }
  for (int64_t r = begin; r < end; r++) {
    binary_row(j->op, j->y + r * j->len, j->a + ao, d->a_strides[nd], j->b + bo, d->b_strides[nd],
               j->len);
    for (int i = nd - 1; i >= 0; i--) {
      ao += d->a_strides[i];
      bo += d->b_strides[i];
      if (++idx[i] < d->shape[i]) break;
      ao -= idx[i] * d->a_strides[i];
      bo -= idx[i] * d->b_strides[i];
      idx[i] = 0;
    }
  }
}

static void binary_flat_task(void *arg, int64_t begin, int64_t end, int chunk) {
  bin_job *j = arg;
  int64_t as = j->d.a_strides[0], bs = j->d.b_strides[0];
  binary_row(j->op, j->y + begin, j->a + begin * as, as, j->b + begin * bs, bs, end - begin);
}

/* Drops size-1 axes and merges neighbours that are contiguous in out, a and
 * b alike, so a same-shape op becomes one flat row and a bias add (R, C). */
static void collapse_bcast(lunet_bcast_desc *o, const lunet_bcast_desc *d) {
  o->ndim = 0;
  for (int i = 0; i < d->ndim; i++) {
    if (d->shape[i] == 1) continue;
    int k = o->ndim;
    if (k > 0 && o->a_strides[k - 1] == d->a_strides[i] * d->shape[i] &&
        o->b_strides[k - 1] == d->b_strides[i] * d->shape[i]) {
      o->shape[k - 1] *= d->shape[i];
      o->a_strides[k - 1] = d->a_strides[i];
      o->b_strides[k - 1] = d->b_strides[i];
      continue;
    }
    o->shape[k] = d->shape[i];
    o->a_strides[k] = d->a_strides[i];
    o->b_strides[k] = d->b_strides[i];
    o->ndim++;
  }
  if (o->ndim == 0) {
    o->ndim = 1;
    o->shape[0] = 1;
    o->a_strides[0] = o->b_strides[0] = 0;
  }
}

int lunet_cpu_binary(lunet_backend *be, lunet_binary_op op, lunet_buf y, lunet_cbuf a, lunet_cbuf b,
                     const lunet_bcast_desc *d) {
  if ((unsigned)op >= LUNET_BINARY_COUNT)
    return lunet_cpu_error(LUNET_ERR_ARG, "binary: unknown op %d", (int)op);
  if (d->ndim < 0 || d->ndim > LUNET_MAX_DIMS)
    return lunet_cpu_error(LUNET_ERR_SHAPE, "binary: %d dims, at most %d", d->ndim, LUNET_MAX_DIMS);
  for (int i = 0; i < d->ndim; i++)
    if (d->shape[i] == 0) return 0;
  bin_job j = {.op = op, .y = y, .a = a, .b = b};
  collapse_bcast(&j.d, d);
  j.len = j.d.shape[j.d.ndim - 1];
  int64_t rows = 1;
  for (int i = 0; i < j.d.ndim - 1; i++) rows *= j.d.shape[i];
  if (rows == 1) {
    /* One long row (same shapes, or a scalar operand): split the row itself. */
    lunet_cpu_parallel(be, j.len, GRAIN, binary_flat_task, &j);
    return 0;
  }
  int64_t grain = j.len >= GRAIN ? 1 : GRAIN / j.len;
  lunet_cpu_parallel(be, rows, grain, binary_task, &j);
  return 0;
}

/* ---- reductions over (outer, len, inner) ---- */

#define REDUCE_BLOCK 256

typedef struct red_job {
  lunet_reduce_op op;
  float *y;
  const float *x;
  int64_t outer, len, inner, blocks;
} red_job;

static double reduce_contig(lunet_reduce_op op, const float *restrict x, int64_t n) {
  if (op == LUNET_REDUCE_MAX || op == LUNET_REDUCE_MIN) {
    /* a NaN anywhere makes the result NaN (PyTorch's): once m is NaN no
     * comparison replaces it */
    float m = op == LUNET_REDUCE_MAX ? -INFINITY : INFINITY;
    if (op == LUNET_REDUCE_MAX)
      for (int64_t i = 0; i < n; i++) m = x[i] > m || x[i] != x[i] ? x[i] : m;
    else
      for (int64_t i = 0; i < n; i++) m = x[i] < m || x[i] != x[i] ? x[i] : m;
    return m;
  }
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += x[i + k];
  for (; i < n; i++) acc[0] += x[i];
  double s = 0.0;
  for (int k = 0; k < 8; k++) s += acc[k];
  return op == LUNET_REDUCE_MEAN ? (n ? s / (double)n : NAN) : s;
}

/* y[o, i0:i1] from x[o, :, i0:i1], accumulating whole rows at a time. */
static void reduce_cols(const red_job *j, int64_t o, int64_t i0, int64_t i1) {
  int64_t w = i1 - i0;
  const float *x = j->x + o * j->len * j->inner + i0;
  float *restrict y = j->y + o * j->inner + i0;
  if (j->op == LUNET_REDUCE_MAX || j->op == LUNET_REDUCE_MIN) {
    bool mx = j->op == LUNET_REDUCE_MAX;
    for (int64_t i = 0; i < w; i++) y[i] = mx ? -INFINITY : INFINITY;
    for (int64_t r = 0; r < j->len; r++) {
      const float *restrict xr = x + r * j->inner;
      if (mx) /* NaN propagates, as above */
        for (int64_t i = 0; i < w; i++) y[i] = xr[i] > y[i] || xr[i] != xr[i] ? xr[i] : y[i];
      else
        for (int64_t i = 0; i < w; i++) y[i] = xr[i] < y[i] || xr[i] != xr[i] ? xr[i] : y[i];
    }
    return;
  }
  double acc[REDUCE_BLOCK] = {0};
  for (int64_t r = 0; r < j->len; r++) {
    const float *restrict xr = x + r * j->inner;
    for (int64_t i = 0; i < w; i++) acc[i] += xr[i];
  }
  double scale = j->op == LUNET_REDUCE_MEAN ? (j->len ? 1.0 / (double)j->len : NAN) : 1.0;
  for (int64_t i = 0; i < w; i++) y[i] = (float)(acc[i] * scale);
}

static void reduce_task(void *arg, int64_t begin, int64_t end, int chunk) {
  red_job *j = arg;
  for (int64_t t = begin; t < end; t++) {
    int64_t o = t / j->blocks, blk = t % j->blocks;
    if (j->inner == 1) {
      j->y[o] = (float)reduce_contig(j->op, j->x + o * j->len, j->len);
      continue;
    }
    int64_t i0 = blk * REDUCE_BLOCK, i1 = i0 + REDUCE_BLOCK;
    reduce_cols(j, o, i0, i1 < j->inner ? i1 : j->inner);
  }
}

int lunet_cpu_reduce(lunet_backend *be, lunet_reduce_op op, lunet_buf y, lunet_cbuf x, size_t outer,
                     size_t len, size_t inner) {
  if ((unsigned)op >= LUNET_REDUCE_COUNT)
    return lunet_cpu_error(LUNET_ERR_ARG, "reduce: unknown op %d", (int)op);
  red_job j = {.op = op,
               .y = y,
               .x = x,
               .outer = (int64_t)outer,
               .len = (int64_t)len,
               .inner = (int64_t)inner};
  j.blocks = inner == 1 ? 1 : ((int64_t)inner + REDUCE_BLOCK - 1) / REDUCE_BLOCK;
  int64_t items = j.outer * j.blocks;
  int64_t per_item = (int64_t)len * (inner == 1 ? 1 : REDUCE_BLOCK);
  int64_t grain = per_item >= GRAIN ? 1 : GRAIN / (per_item ? per_item : 1);
  lunet_cpu_parallel(be, items, grain, reduce_task, &j);
  return 0;
}

typedef struct argmax_job {
  float *y;
  const float *x;
  int64_t cols;
} argmax_job;

static void argmax_task(void *arg, int64_t begin, int64_t end, int chunk) {
  argmax_job *j = arg;
  for (int64_t r = begin; r < end; r++) {
    const float *xr = j->x + r * j->cols;
    int64_t best = 0;
    for (int64_t c = 1; c < j->cols; c++) /* the first NaN wins, as torch.argmax */
      if (xr[c] > xr[best] || (xr[c] != xr[c] && xr[best] == xr[best])) best = c;
    j->y[r] = (float)best;
  }
}

int lunet_cpu_argmax(lunet_backend *be, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols) {
  argmax_job j = {.y = y, .x = x, .cols = (int64_t)cols};
  int64_t grain = cols >= GRAIN ? 1 : GRAIN / (int64_t)(cols ? cols : 1);
  lunet_cpu_parallel(be, (int64_t)rows, grain, argmax_task, &j);
  return 0;
}

/* ---- strided copy ---- */

typedef struct copy_job {
  char *y;
  const char *x;
  lunet_strided_desc d; /* collapsed */
  int64_t len;
} copy_job;

static void copy_row(char *y, const char *x, int64_t ys, int64_t xs, int64_t n, size_t es) {
  if (xs == 1 && ys == 1) {
    memcpy(y, x, (size_t)n * es);
  } else if (es == 4) {
    const uint32_t *restrict px = (const uint32_t *)x;
    uint32_t *restrict py = (uint32_t *)y;
    for (int64_t i = 0; i < n; i++) py[i * ys] = px[i * xs];
  } else {
    for (int64_t i = 0; i < n; i++) memcpy(y + i * ys * (int64_t)es, x + i * xs * (int64_t)es, es);
  }
}

static void copy_task(void *arg, int64_t begin, int64_t end, int chunk) {
  copy_job *j = arg;
  const lunet_strided_desc *d = &j->d;
  int nd = d->ndim - 1;
  int64_t es = (int64_t)d->elem_size;
  int64_t idx[LUNET_MAX_DIMS] = {0}, rem = begin, xo = d->x_offset, yo = d->y_offset;
  for (int i = nd - 1; i >= 0; i--) {
    idx[i] = rem % d->shape[i];
    rem /= d->shape[i];
    xo += idx[i] * d->x_strides[i];
    yo += idx[i] * d->y_strides[i];
  }
  for (int64_t r = begin; r < end; r++) {
    copy_row(j->y + yo * es, j->x + xo * es, d->y_strides[nd], d->x_strides[nd], j->len,
             d->elem_size);
    for (int i = nd - 1; i >= 0; i--) {
      xo += d->x_strides[i];
      yo += d->y_strides[i];
      if (++idx[i] < d->shape[i]) break;
      xo -= idx[i] * d->x_strides[i];
      yo -= idx[i] * d->y_strides[i];
      idx[i] = 0;
    }
  }
}

static void copy_flat_task(void *arg, int64_t begin, int64_t end, int chunk) {
  copy_job *j = arg;
  const lunet_strided_desc *d = &j->d;
  int64_t es = (int64_t)d->elem_size;
  copy_row(j->y + (d->y_offset + begin * d->y_strides[0]) * es,
           j->x + (d->x_offset + begin * d->x_strides[0]) * es, d->y_strides[0], d->x_strides[0],
           end - begin, d->elem_size);
}

static void collapse_strided(lunet_strided_desc *o, const lunet_strided_desc *d) {
  *o = *d;
  o->ndim = 0;
  for (int i = 0; i < d->ndim; i++) {
    if (d->shape[i] == 1) continue;
    int k = o->ndim;
    if (k > 0 && o->x_strides[k - 1] == d->x_strides[i] * d->shape[i] &&
        o->y_strides[k - 1] == d->y_strides[i] * d->shape[i]) {
      o->shape[k - 1] *= d->shape[i];
      o->x_strides[k - 1] = d->x_strides[i];
      o->y_strides[k - 1] = d->y_strides[i];
      continue;
    }
    o->shape[k] = d->shape[i];
    o->x_strides[k] = d->x_strides[i];
    o->y_strides[k] = d->y_strides[i];
    o->ndim++;
  }
  if (o->ndim == 0) {
    o->ndim = 1;
    o->shape[0] = 1;
    o->x_strides[0] = o->y_strides[0] = 1;
  }
}

int lunet_cpu_strided_copy(lunet_backend *be, lunet_buf y, lunet_cbuf x,
                           const lunet_strided_desc *d) {
  if (d->ndim < 0 || d->ndim > LUNET_MAX_DIMS || d->elem_size == 0)
    return lunet_cpu_error(LUNET_ERR_SHAPE, "strided_copy: %d dims of %zu-byte elements", d->ndim,
                           d->elem_size);
  for (int i = 0; i < d->ndim; i++)
    if (d->shape[i] == 0) return 0;
  copy_job j = {.y = y, .x = x};
  collapse_strided(&j.d, d);
  j.len = j.d.shape[j.d.ndim - 1];
  int64_t rows = 1;
  for (int i = 0; i < j.d.ndim - 1; i++) rows *= j.d.shape[i];
  if (rows == 1) {
    lunet_cpu_parallel(be, j.len, GRAIN, copy_flat_task, &j);
    return 0;
  }
  int64_t grain = j.len >= GRAIN ? 1 : GRAIN / j.len;
  lunet_cpu_parallel(be, rows, grain, copy_task, &j);
  return 0;
}
