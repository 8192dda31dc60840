/*
 * The naive reference kernels: plain single-threaded loops written to be
 * read, one per op, with double accumulators where a sum is long.  The fast
 * kernels are tested against these; nothing here is tuned.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cpu.h"
#include "lunet/resample.h"

static int naive_fill(lunet_backend *be, lunet_buf y, float value, size_t n) {
  float *py = y;
  for (size_t i = 0; i < n; i++) py[i] = value;
  return 0;
}

static int naive_cast(lunet_backend *be, lunet_buf y, lunet_dtype ydt, lunet_cbuf x,
                      lunet_dtype xdt, size_t n) {
  lunet_cpu_cast_range(y, ydt, x, xdt, 0, n);
  return 0;
}

static int naive_strided_copy(lunet_backend *be, lunet_buf y, lunet_cbuf x,
                              const lunet_strided_desc *d) {
  int64_t total = 1, idx[LUNET_MAX_DIMS] = {0};
  for (int i = 0; i < d->ndim; i++) total *= d->shape[i];
  for (int64_t e = 0; e < total; e++) {
    int64_t rem = e, xo = d->x_offset, yo = d->y_offset;
    for (int i = d->ndim - 1; i >= 0; i--) {
      idx[i] = rem % d->shape[i];
      rem /= d->shape[i];
      xo += idx[i] * d->x_strides[i];
      yo += idx[i] * d->y_strides[i];
    }
    memcpy((char *)y + yo * (int64_t)d->elem_size, (const char *)x + xo * (int64_t)d->elem_size,
           d->elem_size);
  }
  return 0;
}

static int naive_unary(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf y,
                       lunet_cbuf x, size_t n) {
  const float *px = x;
  float *py = y;
  for (size_t i = 0; i < n; i++) py[i] = lunet_cpu_unary_one(op, alpha, beta, px[i]);
  return 0;
}

static int naive_unary_backward(lunet_backend *be, lunet_unary_op op, float alpha, float beta,
                                lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y, size_t n) {
  const float *px = x, *py = y, *pdy = dy;
  float *pdx = dx;
  for (size_t i = 0; i < n; i++)
    pdx[i] =
        lunet_cpu_unary_grad_one(op, alpha, beta, pdy[i], px ? px[i] : 0.0f, py ? py[i] : 0.0f);
  return 0;
}

static int naive_binary(lunet_backend *be, lunet_binary_op op, lunet_buf y, lunet_cbuf a,
                        lunet_cbuf b, const lunet_bcast_desc *d) {
  const float *pa = a, *pb = b;
  float *py = y;
  int64_t total = 1;
  for (int i = 0; i < d->ndim; i++) total *= d->shape[i];
  for (int64_t e = 0; e < total; e++) {
    int64_t rem = e, ao = 0, bo = 0;
    for (int i = d->ndim - 1; i >= 0; i--) {
      int64_t k = rem % d->shape[i];
      rem /= d->shape[i];
      ao += k * d->a_strides[i];
      bo += k * d->b_strides[i];
    }
    py[e] = lunet_cpu_binary_one(op, pa[ao], pb[bo]);
  }
  return 0;
}

static int naive_reduce(lunet_backend *be, lunet_reduce_op op, lunet_buf y, lunet_cbuf x,
                        size_t outer, size_t len, size_t inner) {
  const float *px = x;
  float *py = y;
  for (size_t o = 0; o < outer; o++) {
    for (size_t i = 0; i < inner; i++) {
      double acc = op == LUNET_REDUCE_MAX ? -INFINITY : op == LUNET_REDUCE_MIN ? INFINITY : 0.0;
      for (size_t j = 0; j < len; j++) {
        float v = px[(o * len + j) * inner + i];
        if (op == LUNET_REDUCE_MAX)
          acc = v > acc || v != v ? v : acc;
        else if (op == LUNET_REDUCE_MIN)
          acc = v < acc || v != v ? v : acc;
        else
          acc += v;
      }
      if (op == LUNET_REDUCE_MEAN) acc = len ? acc / (double)len : NAN;
      py[o * inner + i] = (float)acc;
    }
  }
  return 0;
}

static int naive_argmax(lunet_backend *be, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols) {
  const float *px = x;
  float *py = y;
  for (size_t r = 0; r < rows; r++) {
    size_t best = 0;
    for (size_t j = 1; j < cols; j++)
      if (px[r * cols + j] > px[r * cols + best] || (px[r * cols + j] != px[r * cols + j] &&
                                                    px[r * cols + best] == px[r * cols + best]))
        best = j;
    py[r] = (float)best;
  }
  return 0;
}

/* An operand as a product reads it: rounded to bfloat16 for the ABI 2.3
 * products (lunet_bf16_round), as it is otherwise. */
static inline float operand(float v, bool bf16) { return bf16 ? lunet_bf16_round(v) : v; }

static int gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, lunet_cbuf a, int64_t sa,
                lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc, int64_t batch, bool bf16) {
  for (int64_t bi = 0; bi < batch; bi++) {
    const float *pa = (const float *)a + bi * sa, *pb = (const float *)b + bi * sb;
    float *pc = (float *)c + bi * sc;
    for (int64_t i = 0; i < m; i++) {
      for (int64_t j = 0; j < n; j++) {
        double acc = 0.0;
        for (int64_t p = 0; p < k; p++) {
          float av = operand(ta ? pa[p * m + i] : pa[i * k + p], bf16);
          float bv = operand(tb ? pb[j * k + p] : pb[p * n + j], bf16);
          acc += (double)av * bv;
        }
        float old = beta == 0.0f ? 0.0f : beta * pc[i * n + j];
        pc[i * n + j] = alpha * (float)acc + old;
      }
    }
  }
  return 0;
}

static int naive_gemm(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                      lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc,
                      int64_t batch) {
  return gemm(ta, tb, m, n, k, alpha, a, sa, b, sb, beta, c, sc, batch, false);
}
static int naive_gemm_bf16(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                           lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc,
                           int64_t batch) {
  return gemm(ta, tb, m, n, k, alpha, a, sa, b, sb, beta, c, sc, batch, true);
}

/* c = a b, then + bias and the ReLU, each a pass of its own. */
static int naive_linear(lunet_backend *be, int64_t m, int64_t n, int64_t k, lunet_cbuf a, lunet_cbuf b,
                        lunet_cbuf bias, bool relu, lunet_buf c) {
  int rc = gemm(false, false, m, n, k, 1.0f, a, 0, b, 0, 0.0f, c, m * n, 1, false);
  float *pc = c;
  const float *pb = bias;
  for (int64_t i = 0; !rc && pb && i < m; i++)
    for (int64_t j = 0; j < n; j++) pc[i * n + j] += pb[j];
  for (int64_t i = 0; !rc && relu && i < m * n; i++) pc[i] = !(pc[i] <= 0.0f) ? pc[i] : 0.0f;
  return rc;
}

static int naive_gemm_relu_mask(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, lunet_cbuf a,
                                lunet_cbuf b, lunet_cbuf mask, lunet_buf c) {
  int rc = gemm(ta, tb, m, n, k, 1.0f, a, 0, b, 0, 0.0f, c, m * n, 1, false);
  float *pc = c;
  const float *pm = mask;
  for (int64_t i = 0; !rc && i < m * n; i++) pc[i] = pm[i] > 0.0f ? pc[i] : 0.0f;
  return rc;
}

/* Input row and column read by output (oy, ox) through tap (ky, kx). */
static inline int64_t in_row(const lunet_conv2d_desc *d, int64_t oy, int64_t ky) {
  return oy * d->sh - d->pad_top + ky;
}
static inline int64_t in_col(const lunet_conv2d_desc *d, int64_t ox, int64_t kx) {
  return ox * d->sw - d->pad_left + kx;
}

/* x (N,H,W,C), w (KH,KW,C,F), bias (F) or NULL -> y (N,OH,OW,F); direct 7-loop. */
static int conv2d(lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias, const lunet_conv2d_desc *d,
                  bool bf16) {
  int rc = lunet_cpu_check_conv(d, "conv2d");
  if (rc) return rc;
  const float *px = x, *pw = w, *pb = bias;
  float *py = y;
  for (int64_t n = 0; n < d->n; n++)
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++)
        for (int64_t f = 0; f < d->f; f++) {
          double acc = pb ? pb[f] : 0.0;
          for (int64_t ky = 0; ky < d->kh; ky++)
            for (int64_t kx = 0; kx < d->kw; kx++)
              for (int64_t c = 0; c < d->c; c++) {
                int64_t iy = in_row(d, oy, ky), ix = in_col(d, ox, kx);
                if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
                acc += (double)operand(px[((n * d->h + iy) * d->w + ix) * d->c + c], bf16) *
                       operand(pw[((ky * d->kw + kx) * d->c + c) * d->f + f], bf16);
              }
          py[((n * d->oh + oy) * d->ow + ox) * d->f + f] = (float)acc;
        }
  return 0;
}

/* dy (N,OH,OW,F), w (KH,KW,C,F) -> dx (N,H,W,C): each input pixel gathers the
 * outputs whose window covers it. */
static int conv2d_backward_data(lunet_buf dx, lunet_cbuf dy, lunet_cbuf w, const lunet_conv2d_desc *d,
                                bool bf16) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_data");
  if (rc) return rc;
  const float *pdy = dy, *pw = w;
  float *pdx = dx;
  for (int64_t n = 0; n < d->n; n++)
    for (int64_t iy = 0; iy < d->h; iy++)
      for (int64_t ix = 0; ix < d->w; ix++)
        for (int64_t c = 0; c < d->c; c++) {
          double acc = 0.0;
          for (int64_t oy = 0; oy < d->oh; oy++)
            for (int64_t ox = 0; ox < d->ow; ox++) {
              int64_t ky = iy - in_row(d, oy, 0), kx = ix - in_col(d, ox, 0);
              if (ky < 0 || ky >= d->kh || kx < 0 || kx >= d->kw) continue;
              for (int64_t f = 0; f < d->f; f++)
                acc += (double)operand(pdy[((n * d->oh + oy) * d->ow + ox) * d->f + f], bf16) *
                       operand(pw[((ky * d->kw + kx) * d->c + c) * d->f + f], bf16);
            }
          pdx[((n * d->h + iy) * d->w + ix) * d->c + c] = (float)acc;
        }
  return 0;
}

/* dy (N,OH,OW,F), x (N,H,W,C) -> dw (KH,KW,C,F), db (F) or NULL. */
static int conv2d_backward_filter(lunet_buf dw, lunet_buf db, lunet_cbuf dy, lunet_cbuf x,
                                  const lunet_conv2d_desc *d, bool bf16) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_filter");
  if (rc) return rc;
  const float *pdy = dy, *px = x;
  float *pdw = dw, *pdb = db;
  for (int64_t ky = 0; ky < d->kh; ky++)
    for (int64_t kx = 0; kx < d->kw; kx++)
      for (int64_t c = 0; c < d->c; c++)
        for (int64_t f = 0; f < d->f; f++) {
          double acc = 0.0;
          for (int64_t n = 0; n < d->n; n++)
            for (int64_t oy = 0; oy < d->oh; oy++)
              for (int64_t ox = 0; ox < d->ow; ox++) {
                int64_t iy = in_row(d, oy, ky), ix = in_col(d, ox, kx);
                if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
                acc += (double)operand(px[((n * d->h + iy) * d->w + ix) * d->c + c], bf16) *
                       operand(pdy[((n * d->oh + oy) * d->ow + ox) * d->f + f], bf16);
              }
          pdw[((ky * d->kw + kx) * d->c + c) * d->f + f] = (float)acc;
        }
  if (pdb) {
    for (int64_t f = 0; f < d->f; f++) {
      double acc = 0.0;
      for (int64_t r = 0; r < d->n * d->oh * d->ow; r++) acc += pdy[r * d->f + f];
      pdb[f] = (float)acc;
    }
  }
  return 0;
}

#define CONV_WRAPPERS(suffix, bf16)                                                                         \
  static int naive_conv2d##suffix(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,  \
                                  const lunet_conv2d_desc *d) {                                              \
    return conv2d(y, x, w, bias, d, bf16);                                                                   \
  }                                                                                                          \
  static int naive_conv2d_backward_data##suffix(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w, \
                                                const lunet_conv2d_desc *d) {                                \
    return conv2d_backward_data(dx, dy, w, d, bf16);                                                         \
  }                                                                                                          \
  static int naive_conv2d_backward_filter##suffix(lunet_backend *be, lunet_buf dw, lunet_buf db,             \
                                                  lunet_cbuf dy, lunet_cbuf x, const lunet_conv2d_desc *d) { \
    return conv2d_backward_filter(dw, db, dy, x, d, bf16);                                                   \
  }
CONV_WRAPPERS(, false)
CONV_WRAPPERS(_bf16, true)

/* The reference's bfloat16 products are emulated (rounded operands). */
static int naive_bf16_native(lunet_backend *be) { return 0; }

/* The first maximum of output (n, oy, ox) channel c, scanning kh then kw;
 * returns the flat input pixel index, -1 for a window of padding only. */
static int64_t pool_argmax(const float *x, const lunet_pool2d_desc *d, int64_t n, int64_t oy,
                           int64_t ox, int64_t c) {
  int64_t best = -1;
  for (int64_t ky = 0; ky < d->kh; ky++)
    for (int64_t kx = 0; kx < d->kw; kx++) {
      int64_t iy = oy * d->sh - d->pad_top + ky, ix = ox * d->sw - d->pad_left + kx;
      if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
      int64_t p = (n * d->h + iy) * d->w + ix;
      if (best < 0 || lunet_cpu_pool_beats(x[p * d->c + c], x[best * d->c + c])) best = p;
    }
  return best;
}

/* The number of input pixels (padding excluded) under output (oy, ox). */
static int64_t pool_count(const lunet_pool2d_desc *d, int64_t oy, int64_t ox) {
  int64_t count = 0;
  for (int64_t ky = 0; ky < d->kh; ky++)
    for (int64_t kx = 0; kx < d->kw; kx++) {
      int64_t iy = oy * d->sh - d->pad_top + ky, ix = ox * d->sw - d->pad_left + kx;
      if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w) count++;
    }
  return count;
}

/* x (N,H,W,C) -> y (N,OH,OW,C) */
static int naive_pool2d(lunet_backend *be, lunet_pool_mode mode, lunet_buf y, lunet_cbuf x,
                        const lunet_pool2d_desc *d) {
  int rc = lunet_cpu_check_pool(d, "pool2d");
  if (rc) return rc;
  const float *px = x;
  float *py = y;
  for (int64_t n = 0; n < d->n; n++)
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++)
        for (int64_t c = 0; c < d->c; c++) {
          float out = 0.0f;
          if (mode == LUNET_POOL_MAX) {
            int64_t p = pool_argmax(px, d, n, oy, ox, c);
            out = p < 0 ? 0.0f : px[p * d->c + c];
          } else {
            double sum = 0.0;
            for (int64_t ky = 0; ky < d->kh; ky++)
              for (int64_t kx = 0; kx < d->kw; kx++) {
                int64_t iy = oy * d->sh - d->pad_top + ky;
                int64_t ix = ox * d->sw - d->pad_left + kx;
                if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
                sum += px[((n * d->h + iy) * d->w + ix) * d->c + c];
              }
            int64_t count = pool_count(d, oy, ox);
            out = count ? (float)(sum / (double)count) : 0.0f;
          }
          py[((n * d->oh + oy) * d->ow + ox) * d->c + c] = out;
        }
  return 0;
}

/* dy (N,OH,OW,C), x (N,H,W,C) -> dx (N,H,W,C) */
static int naive_pool2d_backward(lunet_backend *be, lunet_pool_mode mode, lunet_buf dx,
                                 lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y,
                                 const lunet_pool2d_desc *d) {
  int rc = lunet_cpu_check_pool(d, "pool2d_backward");
  if (rc) return rc;
  const float *px = x, *pdy = dy;
  float *pdx = dx;
  memset(pdx, 0, (size_t)(d->n * d->h * d->w * d->c) * sizeof(float));
  for (int64_t n = 0; n < d->n; n++)
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++)
        for (int64_t c = 0; c < d->c; c++) {
          float g = pdy[((n * d->oh + oy) * d->ow + ox) * d->c + c];
          if (mode == LUNET_POOL_MAX) {
            int64_t p = pool_argmax(px, d, n, oy, ox, c);
            if (p >= 0) pdx[p * d->c + c] += g;
            continue;
          }
          int64_t count = pool_count(d, oy, ox);
          for (int64_t ky = 0; ky < d->kh; ky++)
            for (int64_t kx = 0; kx < d->kw; kx++) {
              int64_t iy = oy * d->sh - d->pad_top + ky, ix = ox * d->sw - d->pad_left + kx;
              if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
              pdx[((n * d->h + iy) * d->w + ix) * d->c + c] += g / (float)count;
            }
        }
  return 0;
}

/* The definition: a max pooling, then the ReLU (as unary relu: x > 0 ? x : 0). */
static int naive_max_pool2d_relu(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_pool2d_desc *d) {
  int rc = naive_pool2d(be, LUNET_POOL_MAX, y, x, d);
  float *py = y;
  for (int64_t i = 0; !rc && i < d->n * d->oh * d->ow * d->c; i++) py[i] = !(py[i] <= 0.0f) ? py[i] : 0.0f;
  return rc;
}

/* The ReLU's gradient (dy where the window's maximum is > 0), then the
 * pooling's. */
static int naive_max_pool2d_relu_backward(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf x,
                                          lunet_cbuf y, const lunet_pool2d_desc *d) {
  int rc = lunet_cpu_check_pool(d, "pool2d_backward");
  if (rc) return rc;
  size_t n = (size_t)(d->n * d->oh * d->ow * d->c);
  float *m = malloc(n * sizeof *m), *g = malloc(n * sizeof *g);
  if (!m || !g) {
    free(m);
    free(g);
    return LUNET_ERR_NOMEM;
  }
  rc = naive_pool2d(be, LUNET_POOL_MAX, m, x, d);
  const float *pdy = dy;
  for (size_t i = 0; i < n; i++) g[i] = m[i] > 0.0f ? pdy[i] : 0.0f;
  if (!rc) rc = naive_pool2d_backward(be, LUNET_POOL_MAX, dx, g, x, y, d);
  free(m);
  free(g);
  return rc;
}

/* x, y (rows, cols) */
static int naive_softmax(lunet_backend *be, bool log, lunet_buf y, lunet_cbuf x, size_t rows,
                         size_t cols) {
  const float *px = x;
  float *py = y;
  for (size_t r = 0; r < rows; r++) {
    const float *xr = px + r * cols;
    float *yr = py + r * cols;
    float m = -INFINITY;
    for (size_t j = 0; j < cols; j++) m = xr[j] > m ? xr[j] : m;
    double sum = 0.0;
    for (size_t j = 0; j < cols; j++) sum += exp((double)xr[j] - m);
    for (size_t j = 0; j < cols; j++)
      yr[j] = log ? (float)((double)xr[j] - m - logf((float)sum))
                  : (float)(exp((double)xr[j] - m) / sum);
  }
  return 0;
}

/* softmax: dx = y * (dy - sum(dy*y)); log-softmax: dx = dy - exp(y) * sum(dy). */
static int naive_softmax_backward(lunet_backend *be, bool log, lunet_buf dx, lunet_cbuf dy,
                                  lunet_cbuf y, size_t rows, size_t cols) {
  const float *pdy = dy, *py = y;
  float *pdx = dx;
  for (size_t r = 0; r < rows; r++) {
    const float *g = pdy + r * cols, *yr = py + r * cols;
    double s = 0.0;
    for (size_t j = 0; j < cols; j++) s += log ? (double)g[j] : (double)g[j] * yr[j];
    for (size_t j = 0; j < cols; j++)
      pdx[r * cols + j] = log ? (float)(g[j] - expf(yr[j]) * s) : (float)(yr[j] * (g[j] - s));
  }
  return 0;
}

/* logits (rows, cols), labels (rows) -> loss (rows), dlogits (rows, cols) or NULL */
static int naive_softmax_xent(lunet_backend *be, lunet_buf loss, lunet_buf dlogits,
                              lunet_cbuf logits, lunet_cbuf labels, size_t rows, size_t cols) {
  const float *px = logits, *pl = labels;
  float *ploss = loss, *pd = dlogits;
  for (size_t r = 0; r < rows; r++) {
    int rc = lunet_cpu_check_label(pl[r], r, cols);
    if (rc) return rc;
  }
  for (size_t r = 0; r < rows; r++) {
    const float *xr = px + r * cols;
    size_t label = (size_t)pl[r];
    float m = -INFINITY;
    for (size_t j = 0; j < cols; j++) m = xr[j] > m ? xr[j] : m;
    double sum = 0.0;
    for (size_t j = 0; j < cols; j++) sum += exp((double)xr[j] - m);
    double lse = m + log(sum);
    ploss[r] = (float)(lse - xr[label]);
    if (pd)
      for (size_t j = 0; j < cols; j++)
        pd[r * cols + j] = (float)exp(xr[j] - lse) - (j == label ? 1.0f : 0.0f);
  }
  return 0;
}

/* x, y (rows, c) */
static int naive_batchnorm(lunet_backend *be, bool training, lunet_buf y, lunet_buf save_mean,
                           lunet_buf save_invstd, lunet_buf run_mean, lunet_buf run_var,
                           lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t c,
                           float momentum, float epsilon) {
  const float *px = x, *pg = gamma, *pb = beta;
  float *py = y, *psm = save_mean, *psi = save_invstd, *prm = run_mean, *prv = run_var;
  if (!training && (!prm || !prv))
    return lunet_cpu_error(LUNET_ERR_ARG, "batchnorm: inference needs the running mean "
                                          "and variance");
  for (size_t ch = 0; ch < c; ch++) {
    float mean, invstd;
    if (training) {
      double s = 0.0, ss = 0.0;
      for (size_t r = 0; r < rows; r++) s += px[r * c + ch];
      double mu = rows ? s / (double)rows : 0.0;
      for (size_t r = 0; r < rows; r++) {
        double dlt = px[r * c + ch] - mu;
        ss += dlt * dlt;
      }
      double var = rows ? ss / (double)rows : 0.0;
      mean = (float)mu;
      invstd = (float)(1.0 / sqrt(var + (double)epsilon));
      if (psm) psm[ch] = mean;
      if (psi) psi[ch] = invstd;
      if (prm) prm[ch] = prm[ch] * momentum + mean * (1.0f - momentum);
      if (prv) prv[ch] = prv[ch] * momentum + (float)var * (1.0f - momentum);
    } else {
      mean = prm[ch];
      invstd = 1.0f / sqrtf(prv[ch] + epsilon);
    }
    float g = pg ? pg[ch] : 1.0f, b = pb ? pb[ch] : 0.0f;
    for (size_t r = 0; r < rows; r++) py[r * c + ch] = g * (px[r * c + ch] - mean) * invstd + b;
  }
  return 0;
}

/* dx = gamma*invstd/R * (R*dy - sum(dy) - xhat*sum(dy*xhat)) */
static int naive_batchnorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma,
                                    lunet_buf dbeta, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma,
                                    lunet_cbuf save_mean, lunet_cbuf save_invstd, size_t rows,
                                    size_t c) {
  const float *pdy = dy, *px = x, *pg = gamma, *pm = save_mean, *pi = save_invstd;
  float *pdx = dx, *pdg = dgamma, *pdb = dbeta;
  for (size_t ch = 0; ch < c; ch++) {
    double sdy = 0.0, sdyx = 0.0;
    for (size_t r = 0; r < rows; r++) {
      double xhat = (px[r * c + ch] - pm[ch]) * pi[ch];
      sdy += pdy[r * c + ch];
      sdyx += pdy[r * c + ch] * xhat;
    }
    if (pdg) pdg[ch] = (float)sdyx;
    if (pdb) pdb[ch] = (float)sdy;
    double g = pg ? pg[ch] : 1.0;
    for (size_t r = 0; r < rows; r++) {
      double xhat = (px[r * c + ch] - pm[ch]) * pi[ch];
      pdx[r * c + ch] =
          (float)(g * pi[ch] / (double)rows * ((double)rows * pdy[r * c + ch] - sdy - xhat * sdyx));
    }
  }
  return 0;
}

static int naive_dropout_mask(lunet_backend *be, lunet_buf mask, size_t n, float rate,
                              uint64_t seed, uint64_t counter) {
  if (!(rate >= 0.0f && rate <= 1.0f))
    return lunet_cpu_error(LUNET_ERR_ARG, "dropout_mask: rate %g is outside [0, 1]", (double)rate);
  float *pm = mask;
  for (size_t i = 0; i < n; i++)
    pm[i] = lunet_philox_uniform(seed, counter + i) >= rate ? 1.0f / (1.0f - rate) : 0.0f;
  return 0;
}

static int naive_gather_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx,
                             size_t n, size_t row_bytes) {
  for (size_t i = 0; i < n; i++)
    memcpy((char *)y + i * row_bytes, (const char *)x + (size_t)idx[i] * row_bytes, row_bytes);
  return 0;
}

static int naive_scatter_add_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                                  size_t cols) {
  for (size_t i = 0; i < n; i++)
    for (size_t c = 0; c < cols; c++) ((float *)y)[(size_t)idx[i] * cols + c] += ((const float *)x)[i * cols + c];
  return 0;
}

/* The LSTM cell as written in backend.h, one element at a time. */
static float naive_act(lunet_unary_op op, float x) {
  return op == LUNET_UNARY_AFFINE ? x : lunet_cpu_unary_one(op, 0.0f, 0.0f, x);
}

static float naive_act_grad(lunet_unary_op op, float x) {
  float y = naive_act(op, x);
  return op == LUNET_UNARY_SIGMOID ? y * (1.0f - y) : op == LUNET_UNARY_TANH ? 1.0f - y * y
                                     : op == LUNET_UNARY_RELU ? (x > 0.0f ? 1.0f : 0.0f) : 1.0f;
}

static int naive_lstm_cell(lunet_backend *be, lunet_buf hc, lunet_buf gates, lunet_cbuf z, lunet_cbuf cp, size_t n,
                           size_t u, lunet_unary_op act, lunet_unary_op rec) {
  const float *pz = z, *pc = cp;
  float *ph = hc, *pg = gates;
  for (size_t r = 0; r < n; r++)
    for (size_t k = 0; k < u; k++) {
      const float *zr = pz + r * 4 * u;
      float i = naive_act(rec, zr[k]), f = naive_act(rec, zr[u + k]), g = naive_act(act, zr[2 * u + k]);
      float o = naive_act(rec, zr[3 * u + k]), c = f * (pc ? pc[r * u + k] : 0.0f) + i * g;
      pg[r * 4 * u + k] = i, pg[r * 4 * u + u + k] = f, pg[r * 4 * u + 2 * u + k] = g, pg[r * 4 * u + 3 * u + k] = o;
      ph[r * 2 * u + u + k] = c;
      ph[r * 2 * u + k] = o * naive_act(act, c);
    }
  return 0;
}

/* Derivatives through the pre-activations, recomputed from the gates. */
static int naive_lstm_cell_backward(lunet_backend *be, lunet_buf dz, lunet_buf dcp, lunet_cbuf dhc, lunet_cbuf hc,
                                    lunet_cbuf gates, lunet_cbuf cp, size_t n, size_t u, lunet_unary_op act,
                                    lunet_unary_op rec) {
  const float *pd = dhc, *ph = hc, *pg = gates, *pc = cp;
  float *pz = dz, *pdc = dcp;
  for (size_t r = 0; r < n; r++)
    for (size_t k = 0; k < u; k++) {
      const float *g = pg + r * 4 * u;
      float i = g[k], f = g[u + k], gg = g[2 * u + k], o = g[3 * u + k], c = ph[r * 2 * u + u + k];
      float dh = pd[r * 2 * u + k], dc = pd[r * 2 * u + u + k] + dh * o * naive_act_grad(act, c);
      float ac = naive_act(act, c), prev = pc ? pc[r * u + k] : 0.0f;
      /* the gates' own derivatives from their values (the pre-activations are gone) */
      float di = rec == LUNET_UNARY_SIGMOID ? i * (1 - i) : rec == LUNET_UNARY_TANH ? 1 - i * i : rec == LUNET_UNARY_RELU ? (i > 0) : 1;
      float df = rec == LUNET_UNARY_SIGMOID ? f * (1 - f) : rec == LUNET_UNARY_TANH ? 1 - f * f : rec == LUNET_UNARY_RELU ? (f > 0) : 1;
      float dO = rec == LUNET_UNARY_SIGMOID ? o * (1 - o) : rec == LUNET_UNARY_TANH ? 1 - o * o : rec == LUNET_UNARY_RELU ? (o > 0) : 1;
      float dg = act == LUNET_UNARY_SIGMOID ? gg * (1 - gg) : act == LUNET_UNARY_TANH ? 1 - gg * gg : act == LUNET_UNARY_RELU ? (gg > 0) : 1;
      float *z = pz + r * 4 * u;
      z[k] = dc * gg * di;
      z[u + k] = dc * prev * df;
      z[2 * u + k] = dc * i * dg;
      z[3 * u + k] = dh * ac * dO;
      if (pdc) pdc[r * u + k] = dc * f;
    }
  return 0;
}

/* The GRU cell as written in backend.h, one element at a time. */
static int naive_gru_cell(lunet_backend *be, lunet_buf hn, lunet_buf gates, lunet_cbuf xs, lunet_cbuf hs, lunet_cbuf h,
                          size_t n, size_t u, lunet_unary_op act, lunet_unary_op rec) {
  const float *px = xs, *ph = hs, *pp = h;
  float *po = hn, *pg = gates;
  for (size_t r = 0; r < n; r++)
    for (size_t k = 0; k < u; k++) {
      size_t b = r * 3 * u;
      float z = naive_act(rec, px[b + k] + ph[b + k]), rr = naive_act(rec, px[b + u + k] + ph[b + u + k]);
      float g = naive_act(act, px[b + 2 * u + k] + rr * ph[b + 2 * u + k]);
      pg[b + k] = z, pg[b + u + k] = rr, pg[b + 2 * u + k] = g;
      po[r * u + k] = z * pp[r * u + k] + (1.0f - z) * g;
    }
  return 0;
}

/* Its gradient, the pre-activations' derivatives from the gate values. */
static float naive_from_value(lunet_unary_op op, float y) {
  return op == LUNET_UNARY_SIGMOID ? y * (1 - y) : op == LUNET_UNARY_TANH ? 1 - y * y : op == LUNET_UNARY_RELU ? (y > 0) : 1;
}

static int naive_gru_cell_backward(lunet_backend *be, lunet_buf dxs, lunet_buf dhs, lunet_buf dh, lunet_cbuf dhn,
                                   lunet_cbuf gates, lunet_cbuf hs, lunet_cbuf h, size_t n, size_t u,
                                   lunet_unary_op act, lunet_unary_op rec) {
  const float *pd = dhn, *pg = gates, *ph = hs, *pp = h;
  float *px = dxs, *pq = dhs, *pr = dh;
  for (size_t r = 0; r < n; r++)
    for (size_t k = 0; k < u; k++) {
      size_t b = r * 3 * u;
      float z = pg[b + k], rr = pg[b + u + k], g = pg[b + 2 * u + k], d = pd[r * u + k];
      float pre_g = d * (1.0f - z) * naive_from_value(act, g);
      float pre_z = d * (pp[r * u + k] - g) * naive_from_value(rec, z);
      float pre_r = pre_g * ph[b + 2 * u + k] * naive_from_value(rec, rr);
      if (px) px[b + k] = pre_z, px[b + u + k] = pre_r, px[b + 2 * u + k] = pre_g;
      if (pq) pq[b + k] = pre_z, pq[b + u + k] = pre_r, pq[b + 2 * u + k] = pre_g * rr;
      if (pr) pr[r * u + k] = d * z;
    }
  return 0;
}

/* Layer normalization as written: mean, biased variance, then each value. */
static int naive_layernorm(lunet_backend *be, lunet_buf y, lunet_buf mean, lunet_buf rstd, lunet_cbuf x,
                           lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t cols, float eps) {
  const float *px = x, *pg = gamma, *pb = beta;
  float *py = y, *pm = mean, *pr = rstd;
  for (size_t r = 0; r < rows; r++) {
    double m = 0, v = 0;
    for (size_t k = 0; k < cols; k++) m += px[r * cols + k];
    m /= (double)cols;
    for (size_t k = 0; k < cols; k++) v += (px[r * cols + k] - m) * (px[r * cols + k] - m);
    v /= (double)cols;
    pm[r] = (float)m;
    pr[r] = (float)(1.0 / sqrt(v + eps));
    for (size_t k = 0; k < cols; k++) py[r * cols + k] = (float)((px[r * cols + k] - m) * pr[r]) * pg[k] + pb[k];
  }
  return 0;
}

/* Its gradient from the chain rule through mean and variance, term by term. */
static int naive_layernorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta,
                                    lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf mean, lunet_cbuf rstd,
                                    size_t rows, size_t cols) {
  const float *pdy = dy, *px = x, *pg = gamma, *pm = mean, *pr = rstd;
  float *pdx = dx, *pdg = dgamma, *pdb = dbeta;
  for (size_t k = 0; dgamma && k < cols; k++) pdg[k] = 0;
  for (size_t k = 0; dbeta && k < cols; k++) pdb[k] = 0;
  for (size_t r = 0; r < rows; r++) {
    double dvar = 0, dmean = 0, s = pr[r];
    for (size_t k = 0; k < cols; k++) {
      double g = (double)pdy[r * cols + k] * pg[k], d = px[r * cols + k] - pm[r];
      dvar += g * d * -0.5 * s * s * s;
      dmean += -g * s;
    }
    for (size_t k = 0; k < cols; k++) {
      double d = px[r * cols + k] - pm[r], g = (double)pdy[r * cols + k] * pg[k];
      if (dx) pdx[r * cols + k] = (float)(g * s + dvar * 2.0 * d / (double)cols + dmean / (double)cols);
      if (dgamma) pdg[k] += (float)(pdy[r * cols + k] * d * s);
      if (dbeta) pdb[k] += pdy[r * cols + k];
    }
  }
  return 0;
}

static int naive_sgd_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf velocity,
                            size_t n, float lr, float momentum, bool nesterov, float weight_decay) {
  float *pp = p, *pv = velocity;
  const float *pg = g;
  if (!pv && momentum != 0.0f)
    return lunet_cpu_error(LUNET_ERR_ARG, "sgd_update: momentum %g needs a velocity buffer",
                           (double)momentum);
  for (size_t i = 0; i < n; i++) {
    if (weight_decay > 0.0f) pp[i] -= lr * weight_decay * pp[i];
    if (!pv) {
      pp[i] -= lr * pg[i];
      continue;
    }
    pv[i] = momentum * pv[i] - lr * pg[i];
    if (nesterov)
      pp[i] += momentum * pv[i] - lr * pg[i];
    else
      pp[i] += pv[i];
  }
  return 0;
}

static int naive_adam_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf m, lunet_buf v,
                             size_t n, float lr, float beta1, float beta2, float epsilon,
                             float weight_decay, int64_t step) {
  float alpha;
  int rc = lunet_cpu_adam_alpha(lr, beta1, beta2, step, &alpha);
  if (rc) return rc;
  float *pp = p, *pm = m, *pv = v;
  const float *pg = g;
  for (size_t i = 0; i < n; i++) {
    if (weight_decay > 0.0f) pp[i] -= lr * weight_decay * pp[i];
    pm[i] = beta1 * pm[i] + (1.0f - beta1) * pg[i];
    pv[i] = beta2 * pv[i] + (1.0f - beta2) * pg[i] * pg[i];
    pp[i] -= alpha * pm[i] / (sqrtf(pv[i]) + epsilon);
  }
  return 0;
}

static int naive_rmsprop_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf ms,
                                lunet_buf mom, size_t n, float lr, float rho, float momentum,
                                float epsilon) {
  float *pp = p, *pms = ms, *pmom = mom;
  const float *pg = g;
  for (size_t i = 0; i < n; i++) {
    pms[i] = rho * pms[i] + (1.0f - rho) * pg[i] * pg[i];
    float inc = lr * pg[i] / sqrtf(pms[i] + epsilon);
    if (momentum > 0.0f && pmom) {
      pmom[i] = momentum * pmom[i] + inc;
      pp[i] -= pmom[i];
    } else {
      pp[i] -= inc;
    }
  }
  return 0;
}

/* Tensor by tensor through the single updates above. */
static int naive_update_multi(lunet_backend *be, const lunet_update_desc *u, int count, const lunet_buf *p,
                              const lunet_cbuf *g, const lunet_buf *s1, const lunet_buf *s2, const size_t *n) {
  int rc = 0;
  for (int t = 0; !rc && t < count; t++) {
    lunet_buf a = s1 ? s1[t] : NULL, b = s2 ? s2[t] : NULL;
    if (u->kind == LUNET_UPDATE_SGD)
      rc = naive_sgd_update(be, p[t], g[t], a, n[t], u->lr, u->momentum, u->nesterov, u->weight_decay);
    else if (u->kind == LUNET_UPDATE_ADAM)
      rc = !a || !b ? lunet_cpu_error(LUNET_ERR_ARG, "update_multi: Adam needs its m and v states")
                    : naive_adam_update(be, p[t], g[t], a, b, n[t], u->lr, u->beta1, u->beta2, u->epsilon,
                                        u->weight_decay, u->step);
    else
      rc = !a ? lunet_cpu_error(LUNET_ERR_ARG, "update_multi: RMSprop needs its mean-square state")
              : naive_rmsprop_update(be, p[t], g[t], a, b, n[t], u->lr, u->rho, u->momentum, u->epsilon);
  }
  return rc;
}

static int naive_affine_resample(lunet_backend *be, lunet_buf y, lunet_cbuf x, const float *mats,
                                 size_t n, size_t h, size_t w, size_t c, size_t oh, size_t ow,
                                 lunet_fill_mode mode, float fill) {
  for (size_t i = 0; i < n; i++)
    lunet_resample_one((float *)y + i * oh * ow * c, (const float *)x + i * h * w * c, mats + 6 * i,
                       h, w, c, oh, ow, mode, fill);
  return 0;
}

const lunet_backend_i lunet_cpu_naive_vtable = {
    .fill = naive_fill,
    .cast = naive_cast,
    .strided_copy = naive_strided_copy,
    .unary = naive_unary,
    .unary_backward = naive_unary_backward,
    .binary = naive_binary,
    .reduce = naive_reduce,
    .argmax = naive_argmax,
    .gemm = naive_gemm,
    .conv2d = naive_conv2d,
    .conv2d_backward_data = naive_conv2d_backward_data,
    .conv2d_backward_filter = naive_conv2d_backward_filter,
    .pool2d = naive_pool2d,
    .pool2d_backward = naive_pool2d_backward,
    .max_pool2d_relu = naive_max_pool2d_relu,
    .max_pool2d_relu_backward = naive_max_pool2d_relu_backward,
    .linear = naive_linear,
    .softmax = naive_softmax,
    .softmax_backward = naive_softmax_backward,
    .softmax_xent = naive_softmax_xent,
    .batchnorm = naive_batchnorm,
    .batchnorm_backward = naive_batchnorm_backward,
    .dropout_mask = naive_dropout_mask,
    .gather_rows = naive_gather_rows,
    .scatter_add_rows = naive_scatter_add_rows,
    .lstm_cell = naive_lstm_cell,
    .lstm_cell_backward = naive_lstm_cell_backward,
    .gru_cell = naive_gru_cell,
    .gru_cell_backward = naive_gru_cell_backward,
    .layernorm = naive_layernorm,
    .layernorm_backward = naive_layernorm_backward,
    .sgd_update = naive_sgd_update,
    .adam_update = naive_adam_update,
    .rmsprop_update = naive_rmsprop_update,
    .affine_resample = naive_affine_resample,
    .bf16_native = naive_bf16_native,
    .gemm_bf16 = naive_gemm_bf16,
    .conv2d_bf16 = naive_conv2d_bf16,
    .conv2d_backward_data_bf16 = naive_conv2d_backward_data_bf16,
    .conv2d_backward_filter_bf16 = naive_conv2d_backward_filter_bf16,
    .update_multi = naive_update_multi,
    .gemm_relu_mask = naive_gemm_relu_mask,
};
