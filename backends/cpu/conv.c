/*
 * GEMM and convolution on OpenBLAS.
 *
 * OpenBLAS runs single-threaded; the pool splits each GEMM (by batch, rows
 * or columns) so the two never oversubscribe the cores.  A convolution in
 * NHWC is one GEMM over im2col rows: y (N*OH*OW, F) = cols (N*OH*OW,
 * KH*KW*C) @ w (KH*KW*C, F).  Each thread takes a range of output rows and
 * walks it in sub-chunks whose im2col workspace stays in cache; a 1x1
 * stride-1 unpadded convolution reads x as its own cols.
 */
#include <string.h>
#include "cpu.h"

/* Bytes of im2col workspace per sub-chunk: small enough for L2, large
 * enough for an efficient GEMM. */
#ifndef COLS_BUDGET
#define COLS_BUDGET ((int64_t)512 * 1024)
#endif
/* FMAs below which a GEMM is not worth splitting. */
#define GEMM_SERIAL_FMAS ((double)(1 << 18))

static void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  lunet_cpu_blas.sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c,
              (blasint)ldc);
}

/* ---- batched GEMM ---- */

typedef struct gemm_job {
  bool ta, tb;
  int64_t m, n, k;
  float alpha, beta;
  const float *a, *b;
  float *c;
  int64_t sa, sb, sc;
  int split; /* 0: batch, 1: rows of c, 2: columns of c */
  int64_t parts, batch;
  const float *bias; /* linear: added to every row of c after the product (NULL: none) */
  bool relu;         /* linear: then c = c > 0 ? c : 0 */
  const float *mask; /* gemm_relu_mask: then c = mask > 0 ? c : 0 (mask laid out as c) */
} gemm_job;

/* linear's epilogue on rows x cols of c (row stride ldc), each part as soon
 * as its product is done (still in cache): the same operations in the same
 * order as the add and the ReLU ops, so the same bits. */
static void epilogue(float *c, int64_t rows, int64_t cols, int64_t ldc, const float *bias, bool relu,
                     const float *mask) {
  for (int64_t r = 0; r < rows; r++) {
    float *row = c + r * ldc;
    if (bias)
      for (int64_t j = 0; j < cols; j++) row[j] = row[j] + bias[j];
    if (relu)
      for (int64_t j = 0; j < cols; j++) row[j] = !(row[j] <= 0.0f) ? row[j] : 0.0f; /* NaN stays */
    if (mask) /* as the ReLU's gradient: x > 0 ? dy : 0 */
      for (int64_t j = 0, at = r * ldc; j < cols; j++) row[j] = mask[at + j] > 0.0f ? row[j] : 0.0f;
  }
}

/* One product of gemm_task: the AVX-512 tiles for c = a b and c = a^T b
 * (alpha 1; beta 0, or 1 to add) with whole 32-column tiles, OpenBLAS for
 * the rest (b transposed: the tiles read b's rows). */
static void product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                    int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (!tb && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && k > 0 && m > 0 &&
      lunet_cpu_tile_gemm_fits(n)) {
    if (ta) lunet_cpu_tile_gemm_tn(k, n, m, a, lda, b, ldb, c, ldc, beta == 1.0f);
    else lunet_cpu_tile_gemm_nn(m, n, k, a, lda, b, ldb, NULL, beta == 1.0f, c, ldc);
    return;
  }
  sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Items are (batch, part) pairs; a part is a range of rows or columns. */
static void gemm_task(void *arg, int64_t begin, int64_t end, int chunk) {
  gemm_job *j = arg;
  for (int64_t t = begin; t < end; t++) {
    int64_t bi = t / j->parts, p = t % j->parts;
    const float *a = j->a + bi * j->sa, *b = j->b + bi * j->sb;
    float *c = j->c + bi * j->sc;
    int64_t lda = j->ta ? j->m : j->k, ldb = j->tb ? j->k : j->n;
    bool ep = j->bias || j->relu || j->mask;
    if (j->split == 1) {
      int64_t r0 = j->m * p / j->parts, r1 = j->m * (p + 1) / j->parts;
      product(j->ta, j->tb, r1 - r0, j->n, j->k, j->alpha, a + (j->ta ? r0 : r0 * lda), lda, b, ldb,
              j->beta, c + r0 * j->n, j->n);
      if (ep) epilogue(c + r0 * j->n, r1 - r0, j->n, j->n, j->bias, j->relu, j->mask ? j->mask + r0 * j->n : NULL);
    } else {
      int64_t c0 = j->n * p / j->parts, c1 = j->n * (p + 1) / j->parts;
      product(j->ta, j->tb, j->m, c1 - c0, j->k, j->alpha, a, lda, b + (j->tb ? c0 * ldb : c0), ldb,
              j->beta, c + c0, j->n);
      if (ep) epilogue(c + c0, j->m, c1 - c0, j->n, j->bias ? j->bias + c0 : NULL, j->relu, j->mask ? j->mask + c0 : NULL);
    }
  }
}

static void run_job(lunet_backend *be, gemm_job *jp);

int lunet_cpu_gemm(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                   float alpha, lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta,
                   lunet_buf c, int64_t sc, int64_t batch) {
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return lunet_cpu_error(LUNET_ERR_SHAPE,
                           "gemm: negative size m=%lld n=%lld k=%lld "
                           "batch=%lld",
                           (long long)m, (long long)n, (long long)k, (long long)batch);
  if (sc == 0 && batch > 1)
    return lunet_cpu_error(LUNET_ERR_ARG,
                           "gemm: stride_c 0 with batch %lld would write "
                           "one c from every batch entry",
                           (long long)batch);
  gemm_job j = {ta, tb, m, n, k, alpha, beta, a, b, c, sa, sb, sc, 1, 1, batch, NULL, false, NULL};
  run_job(be, &j);
  return 0;
}

int lunet_cpu_linear(lunet_backend *be, int64_t m, int64_t n, int64_t k, lunet_cbuf a, lunet_cbuf b,
                     lunet_cbuf bias, bool relu, lunet_buf c) {
  if (m < 0 || n < 0 || k < 0)
    return lunet_cpu_error(LUNET_ERR_SHAPE, "linear: negative size m=%lld n=%lld k=%lld", (long long)m,
                           (long long)n, (long long)k);
  gemm_job j = {false, false, m, n, k, 1.0f, 0.0f, a, b, c, 0, 0, m * n, 1, 1, 1, bias, relu, NULL};
  run_job(be, &j);
  return 0;
}

int lunet_cpu_gemm_relu_mask(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, lunet_cbuf a,
                             lunet_cbuf b, lunet_cbuf mask, lunet_buf c) {
  if (m < 0 || n < 0 || k < 0)
    return lunet_cpu_error(LUNET_ERR_SHAPE, "gemm_relu_mask: negative size m=%lld n=%lld k=%lld", (long long)m,
                           (long long)n, (long long)k);
  gemm_job j = {ta, tb, m, n, k, 1.0f, 0.0f, a, b, c, 0, 0, m * n, 1, 1, 1, NULL, false, mask};
  run_job(be, &j);
  return 0;
}

/* Runs job j (its parts filled in here) on the thread pool. */
static void run_job(lunet_backend *be, gemm_job *jp) {
  gemm_job j = *jp;
  int64_t m = j.m, n = j.n, k = j.k, batch = j.batch;
  int threads = lunet_cpu_threads(be);
  double fmas = (double)m * (double)n * (double)k;
  if (threads > 1 && batch < threads && fmas >= GEMM_SERIAL_FMAS) {
    /* Split the larger side of c, in parts of at least 16 rows/columns. */
    j.split = m >= n ? 1 : 2;
    int64_t side = j.split == 1 ? m : n;
    j.parts = side / 16 < threads ? (side / 16 > 0 ? side / 16 : 1) : threads;
  }
  int64_t grain =
      batch * j.parts > 1 && fmas * (double)batch >= GEMM_SERIAL_FMAS ? 1 : batch * j.parts;
  lunet_cpu_log_gemm(be, "gemm", m * batch, n, k, lunet_cpu_chunks(be, batch * j.parts, grain));
  lunet_cpu_parallel(be, batch * j.parts, grain, gemm_task, &j);
}

/* ---- im2col ---- */

static inline bool conv_is_1x1(const lunet_conv2d_desc *d) {
  return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->pad_top == 0 &&
         d->pad_left == 0 && d->oh == d->h && d->ow == d->w;
}

/* Output row r = (n, oy, ox) flattened. */
typedef struct row_pos {
  int64_t n, oy, ox;
} row_pos;

static row_pos row_at(const lunet_conv2d_desc *d, int64_t r) {
  int64_t p = r % (d->oh * d->ow);
  return (row_pos){r / (d->oh * d->ow), p / d->ow, p % d->ow};
}

static inline void row_next(const lunet_conv2d_desc *d, row_pos *q) {
  if (++q->ox == d->ow) {
    q->ox = 0;
    if (++q->oy == d->oh) {
      q->oy = 0;
      q->n++;
    }
  }
}

/* cols (nr, KH*KW*C) <- the windows of output rows [r0, r0+nr); taps in the
 * padding read as zero.  A tap row inside the image is KW*C contiguous floats. */
static void im2col(float *restrict cols, const float *restrict x, const lunet_conv2d_desc *d,
                   int64_t r0, int64_t nr) {
  int64_t c = d->c, run = d->kw * c, kk = d->kh * run;
  row_pos q = row_at(d, r0);
  for (int64_t r = 0; r < nr; r++, row_next(d, &q)) {
    float *row = cols + r * kk;
    const float *xn = x + q.n * d->h * d->w * c;
    int64_t ix0 = q.ox * d->sw - d->pad_left;
    for (int64_t ky = 0; ky < d->kh; ky++) {
      float *dst = row + ky * run;
      int64_t iy = q.oy * d->sh - d->pad_top + ky;
      if (iy < 0 || iy >= d->h) {
        memset(dst, 0, (size_t)run * sizeof(float));
        continue;
      }
      const float *src = xn + iy * d->w * c;
      if (ix0 >= 0 && ix0 + d->kw <= d->w) {
        memcpy(dst, src + ix0 * c, (size_t)run * sizeof(float));
        continue;
      }
      for (int64_t kx = 0; kx < d->kw; kx++) {
        int64_t ix = ix0 + kx;
        if (ix < 0 || ix >= d->w)
          memset(dst + kx * c, 0, (size_t)c * sizeof(float));
        else
          memcpy(dst + kx * c, src + ix * c, (size_t)c * sizeof(float));
      }
    }
  }
}

/* dx += the scatter of dcols (nr, KH*KW*C) for output rows [r0, r0+nr). */
static void col2im_add(float *restrict dx, const float *restrict dcols, const lunet_conv2d_desc *d,
                       int64_t r0, int64_t nr) {
  int64_t c = d->c, run = d->kw * c, kk = d->kh * run;
  row_pos q = row_at(d, r0);
  for (int64_t r = 0; r < nr; r++, row_next(d, &q)) {
    const float *row = dcols + r * kk;
    float *dxn = dx + q.n * d->h * d->w * c;
    int64_t ix0 = q.ox * d->sw - d->pad_left;
    for (int64_t ky = 0; ky < d->kh; ky++) {
      int64_t iy = q.oy * d->sh - d->pad_top + ky;
      if (iy < 0 || iy >= d->h) continue;
      const float *src = row + ky * run;
      float *dst = dxn + iy * d->w * c;
      if (ix0 >= 0 && ix0 + d->kw <= d->w) {
        float *restrict o = dst + ix0 * c;
        for (int64_t i = 0; i < run; i++) o[i] += src[i];
        continue;
      }
      for (int64_t kx = 0; kx < d->kw; kx++) {
        int64_t ix = ix0 + kx;
        if (ix < 0 || ix >= d->w) continue;
        float *restrict o = dst + ix * c;
        for (int64_t i = 0; i < c; i++) o[i] += src[kx * c + i];
      }
    }
  }
}

/* db[f] += the sum of dy's nr rows (f columns), in doubles (the baseline
 * build converts and adds 2 lanes at a time: compiled per instruction set). */
static inline __attribute__((always_inline)) void column_sums_body(double *restrict db, const float *restrict dy,
                                                                   int64_t nr, int64_t f) {
  for (int64_t i = 0; i < nr; i++)
    for (int64_t k = 0; k < f; k++) db[k] += dy[i * f + k];
}
LUNET_CPU_ISA_DISPATCH(column_sums, (double *restrict db, const float *restrict dy, int64_t nr, int64_t f),
                       (db, dy, nr, f))

/* ---- convolution ---- */

typedef struct conv_job {
  const lunet_conv2d_desc *d;
  const float *x, *w, *bias, *dy;
  const float *wt;   /* backward data with tile_gemm: w transposed, (F, KK) */
  float *y, *dx;
  float *ws;         /* per chunk: ws_floats */
  int64_t ws_floats; /* cols, then (filter) the dw part, then db part (doubles) */
  int64_t sub;       /* rows per sub-chunk */
  int64_t kk;        /* KH*KW*C */
  int64_t dw_off, db_off;
  bool direct;       /* forward without im2col (conv_fwd_direct) */
  /* bfloat16 products (bf16.c): w packed as words, ((KK+1)/2, F) for the
   * forward or ((F+1)/2, KK) for the data gradient; each chunk's packed
   * operands at pa_off and pb_off of its workspace (in floats, 4 bytes
   * like a word) */
  bool bf16;
  const uint32_t *wp;
  int64_t pa_off, pb_off;
} conv_job;

static int64_t words(int64_t v) { return (v + 1) / 2; }

static int64_t round16(int64_t v) { return (v + 15) & ~(int64_t)15; }

static int64_t sub_rows(int64_t kk) {
  int64_t r = COLS_BUDGET / (kk * (int64_t)sizeof(float));
  return r < 16 ? 16 : r;
}

/* c (m, n) = a (m, k) @ b (k, n) + bias (n, or NULL), for the small k of
 * a first convolution (k = KH*KW*C <= SMALL_K: 27 for 3x3 RGB), where
 * OpenBLAS reached a tenth of the FMA peak (measured: its kernels amortize
 * the loads and stores of a tile of c over a long k).  Here a tile of 4
 * rows by 32 columns of c stays in registers over all of k; each step of
 * k loads 32 floats of b and broadcasts 4 of a.  The loops have fixed
 * bounds so that gcc keeps the tile in registers and vectorises the
 * columns; it is compiled for AVX-512, AVX2 and the baseline, and
 * isa.c's choice runs.  n is a multiple of 32 (small_k); the last rows
 * take the plain loop. */
#define SMALL_K 32
#define TILE_R 4
#define TILE_C 32

static inline __attribute__((always_inline)) void gemm_small_k_body(
    int64_t m, int64_t n, int64_t k, const float *restrict a, const float *restrict b,
    const float *restrict bias, float *restrict c) {
  for (int64_t i0 = 0; i0 < m; i0 += TILE_R) {
    for (int64_t j0 = 0; j0 < n; j0 += TILE_C) {
      if (i0 + TILE_R <= m && j0 + TILE_C <= n) {
        float acc[TILE_R][TILE_C];
        for (int r = 0; r < TILE_R; r++)
          for (int q = 0; q < TILE_C; q++) acc[r][q] = bias ? bias[j0 + q] : 0.0f;
        for (int64_t p = 0; p < k; p++) {
          const float *restrict bp = b + p * n + j0;
          for (int r = 0; r < TILE_R; r++) {
            float av = a[(i0 + r) * k + p];
            for (int q = 0; q < TILE_C; q++) acc[r][q] += av * bp[q];
          }
        }
        for (int r = 0; r < TILE_R; r++)
          for (int q = 0; q < TILE_C; q++) c[(i0 + r) * n + j0 + q] = acc[r][q];
        continue;
      }
      int64_t i1 = i0 + TILE_R < m ? i0 + TILE_R : m, j1 = j0 + TILE_C < n ? j0 + TILE_C : n;
      for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) {
          float v = bias ? bias[j] : 0.0f;
          for (int64_t p = 0; p < k; p++) v += a[i * k + p] * b[p * n + j];
          c[i * n + j] = v;
        }
    }
  }
}

/* The filter gradient's half: dw (k, n) = a^T (k, m) @ dy (m, n), plus
 * dw's old values when `add`, with a (m, k) row-major and k small.  A tile
 * of up to 4 rows by 32 columns of dw stays in registers over all m rows;
 * each row loads 32 floats of dy and broadcasts up to 4 of a. */
static inline __attribute__((always_inline)) void gemm_small_k_tn_body(
    int64_t m, int64_t n, int64_t k, const float *restrict a, const float *restrict dy, float *restrict dw,
    bool add) {
  for (int64_t p0 = 0; p0 < k; p0 += TILE_R) {
    int rows = k - p0 < TILE_R ? (int)(k - p0) : TILE_R;
    for (int64_t j0 = 0; j0 < n; j0 += TILE_C) {
      float acc[TILE_R][TILE_C];
      for (int r = 0; r < rows; r++)
        for (int q = 0; q < TILE_C; q++) acc[r][q] = add ? dw[(p0 + r) * n + j0 + q] : 0.0f;
      for (int64_t i = 0; i < m; i++) {
        const float *restrict dr = dy + i * n + j0;
        for (int r = 0; r < rows; r++) {
          float av = a[i * k + p0 + r];
          for (int q = 0; q < TILE_C; q++) acc[r][q] += av * dr[q];
        }
      }
      for (int r = 0; r < rows; r++)
        for (int q = 0; q < TILE_C; q++) dw[(p0 + r) * n + j0 + q] = acc[r][q];
    }
  }
}

/* The bodies above compiled for each instruction set (isa.c picks one;
 * with AVX-512 in use tile_gemm.c takes these shapes first). */
#define SMALL_K_ARGS int64_t m, int64_t n, int64_t k, const float *restrict a, const float *restrict b
LUNET_CPU_ISA_DISPATCH(gemm_small_k, (SMALL_K_ARGS, const float *restrict bias, float *restrict c),
                       (m, n, k, a, b, bias, c))
LUNET_CPU_ISA_DISPATCH(gemm_small_k_tn, (SMALL_K_ARGS, float *restrict dw, bool add), (m, n, k, a, b, dw, add))

/* Whether a convolution's GEMMs take the small-k kernels: k = KH*KW*C up
 * to SMALL_K and whole 32-column tiles (F a multiple of 32). */
static bool small_k(int64_t kk, int64_t f) { return kk <= SMALL_K && f % TILE_C == 0; }

/* Whether every tap of every output lies inside the input (no padding):
 * then the forward needs no im2col (conv_fwd_direct). */
static bool no_padding(const lunet_conv2d_desc *d) {
  return d->pad_top == 0 && d->pad_left == 0 && (d->oh - 1) * d->sh + d->kh <= d->h &&
         (d->ow - 1) * d->sw + d->kw <= d->w;
}

/* Bytes of w below which a direct convolution sums all its kernel rows in
 * one pass of the tiles (w stays in the L1 cache: a first convolution,
 * 3.5 KB); above, one pass per kernel row, whose part of w does. */
#define DIRECT_ONE_PASS_BYTES (16 * 1024)

/* Output rows [begin, end) without im2col, for convolutions without
 * padding and with the AVX-512 tiles: at one ky, a patch's taps (kx, c)
 * are KW*C contiguous floats of x, so the tile product reads x in place,
 * the KH kernel rows as segments W*C floats apart (w's rows follow on)
 * summed in registers, or each kernel row's part added into y.  With 64
 * filters or more each output pixel's row of taps is read from where it
 * starts, so the 6-row tiles run on across the ends of output rows, whole
 * (a 13-pixel row was 6 + 6 + a 1-row tile at a sixth of the speed),
 * DIRECT_BLOCK pixels at a time; with 32 (12-row tiles, whose 12 row
 * pointers the registers do not hold, measured) an output row at a time,
 * consecutive pixels SW*C floats apart. */
#define DIRECT_BLOCK 96
static void conv_fwd_direct(const conv_job *j, int64_t begin, int64_t end) {
  const lunet_conv2d_desc *d = j->d;
  int64_t kwc = d->kw * d->c, rowx = d->w * d->c;
  bool one_pass = j->kk * d->f * (int64_t)sizeof(float) <= DIRECT_ONE_PASS_BYTES;
  if (d->f % 64) {
    for (int64_t r = begin; r < end;) {
      int64_t ox = r % d->ow, t = r / d->ow, oy = t % d->oh, n = t / d->oh;
      int64_t len = d->ow - ox < end - r ? d->ow - ox : end - r;
      const float *a = j->x + ((n * d->h + oy * d->sh) * d->w + ox * d->sw) * d->c;
      float *y = j->y + r * d->f;
      if (one_pass)
        lunet_cpu_tile_gemm_nn_segments(len, d->f, kwc, d->kh, a, d->sw * d->c, rowx, j->w, d->f, j->bias, false, y,
                                        d->f);
      else
        for (int64_t ky = 0; ky < d->kh; ky++)
          lunet_cpu_tile_gemm_nn(len, d->f, kwc, a + ky * rowx, d->sw * d->c, j->w + ky * kwc * d->f, d->f,
                                 ky == 0 ? j->bias : NULL, ky > 0, y, d->f);
      r += len;
    }
    return;
  }
  const float *rows[DIRECT_BLOCK];
  for (int64_t r0 = begin; r0 < end; r0 += DIRECT_BLOCK) {
    int64_t len = end - r0 < DIRECT_BLOCK ? end - r0 : DIRECT_BLOCK;
    row_pos q = row_at(d, r0);
    for (int64_t i = 0; i < len; i++, row_next(d, &q))
      rows[i] = j->x + ((q.n * d->h + q.oy * d->sh) * d->w + q.ox * d->sw) * d->c;
    float *y = j->y + r0 * d->f;
    if (one_pass) {
      lunet_cpu_tile_gemm_nn_rows(len, d->f, kwc, d->kh, rows, rowx, j->w, d->f, j->bias, false, y, d->f);
      continue;
    }
    for (int64_t ky = 0; ky < d->kh; ky++) {
      if (ky > 0)
        for (int64_t i = 0; i < len; i++) rows[i] += rowx;
      lunet_cpu_tile_gemm_nn_rows(len, d->f, kwc, 1, rows, 0, j->w + ky * kwc * d->f, d->f, ky == 0 ? j->bias : NULL,
                                  ky > 0, y, d->f);
    }
  }
}

/* Output rows [begin, end). */
static void conv_fwd_task(void *arg, int64_t begin, int64_t end, int chunk) {
  conv_job *j = arg;
  const lunet_conv2d_desc *d = j->d;
  if (j->direct) {
    conv_fwd_direct(j, begin, end);
    return;
  }
  float *ws = j->ws ? j->ws + lunet_cpu_tid() * j->ws_floats : NULL;
  for (int64_t r = begin; r < end; r += j->sub) {
    int64_t nr = end - r < j->sub ? end - r : j->sub;
    const float *cols = j->x + r * d->c;
    if (ws && !conv_is_1x1(d)) {
      im2col(ws, j->x, d, r, nr);
      cols = ws;
    }
    float *y = j->y + r * d->f;
    if (j->bf16) {
      uint32_t *pa = (uint32_t *)(ws + j->pa_off);
      lunet_cpu_bf16_pack_rows(pa, words(j->kk), cols, j->kk, nr, j->kk);
      lunet_cpu_bf16_gemm_nn(nr, d->f, words(j->kk), pa, words(j->kk), j->wp, d->f, j->bias, false, y, d->f);
      continue;
    }
    if (lunet_cpu_tile_gemm_fits(d->f)) {
      lunet_cpu_tile_gemm_nn(nr, d->f, j->kk, cols, j->kk, j->w, d->f, j->bias, false, y, d->f);
      continue;
    }
    if (small_k(j->kk, d->f)) {
      gemm_small_k(nr, d->f, j->kk, cols, j->w, j->bias, y);
      continue;
    }
    sgemm(false, false, nr, d->f, j->kk, 1.0f, cols, j->kk, j->w, d->f, 0.0f, y, d->f);
    if (!j->bias) continue;
    for (int64_t i = 0; i < nr; i++) {
      float *restrict yr = y + i * d->f;
      const float *restrict b = j->bias;
      for (int64_t f = 0; f < d->f; f++) yr[f] += b[f];
    }
  }
}

/* A workspace of `chunks` blocks of `floats` each from the buffer pool. */
static float *workspace(lunet_backend *be, int64_t chunks, int64_t floats) {
  return lunet_cpu_buffer_alloc(be, (size_t)(chunks * floats) * sizeof(float));
}

/* w (KK, F) packed for the bfloat16 forward: ((KK+1)/2, F) words. */
static uint32_t *packed_w(lunet_backend *be, const float *w, int64_t kk, int64_t f) {
  uint32_t *wp = lunet_cpu_buffer_alloc(be, (size_t)(words(kk) * f) * sizeof(uint32_t));
  if (wp) lunet_cpu_bf16_pack_pairs(wp, f, w, f, kk, f);
  return wp;
}

static int conv2d(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                  const lunet_conv2d_desc *d, bool bf16) {
  conv_job j = {.d = d, .x = x, .w = w, .bias = bias, .y = y, .kk = d->kh * d->kw * d->c, .bf16 = bf16};
  int64_t rows = d->n * d->oh * d->ow;
  j.sub = sub_rows(j.kk);
  j.direct = !bf16 && !conv_is_1x1(d) && no_padding(d) && lunet_cpu_tile_gemm_fits(d->f);
  int64_t cols = conv_is_1x1(d) || j.direct ? 0 : j.sub * j.kk;
  j.pa_off = round16(cols);
  j.ws_floats = bf16 ? j.pa_off + round16(j.sub * words(j.kk)) : cols;
  if (j.ws_floats && !(j.ws = workspace(be, lunet_cpu_threads(be), j.ws_floats))) return LUNET_ERR_NOMEM;
  uint32_t *wp = bf16 ? packed_w(be, w, j.kk, d->f) : NULL;
  if (bf16 && !wp) {
    lunet_cpu_buffer_free(be, j.ws);
    return LUNET_ERR_NOMEM;
  }
  j.wp = wp;
  lunet_cpu_log_gemm(be, "conv2d", rows, d->f, j.kk, lunet_cpu_chunks(be, rows, 16));
  lunet_cpu_parallel(be, rows, 16, conv_fwd_task, &j);
  if (j.ws) lunet_cpu_buffer_free(be, j.ws);
  if (wp) lunet_cpu_buffer_free(be, wp);
  return 0;
}

int lunet_cpu_conv2d(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                     const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d");
  return rc ? rc : conv2d(be, y, x, w, bias, d, false);
}

/* Samples [begin, end): dx is zeroed, then each sub-chunk of output rows
 * scatters dcols = dy @ w^T into it.  Whole samples per thread keep the
 * scatters of two threads apart. */
static void conv_bwd_data_task(void *arg, int64_t begin, int64_t end, int chunk) {
  conv_job *j = arg;
  const lunet_conv2d_desc *d = j->d;
  int64_t per = d->oh * d->ow, r_end = end * per;
  if (!j->ws) {
    sgemm(false, true, r_end - begin * per, d->c, d->f, 1.0f, j->dy + begin * per * d->f, d->f,
          j->w, d->f, 0.0f, j->dx + begin * per * d->c, d->c);
    return;
  }
  float *ws = j->ws + lunet_cpu_tid() * j->ws_floats;
  memset(j->dx + begin * d->h * d->w * d->c, 0,
         (size_t)((end - begin) * d->h * d->w * d->c) * sizeof(float));
  for (int64_t r = begin * per; r < r_end; r += j->sub) {
    int64_t nr = r_end - r < j->sub ? r_end - r : j->sub;
    if (j->bf16) {
      uint32_t *pa = (uint32_t *)(ws + j->pa_off);
      lunet_cpu_bf16_pack_rows(pa, words(d->f), j->dy + r * d->f, d->f, nr, d->f);
      lunet_cpu_bf16_gemm_nn(nr, j->kk, words(d->f), pa, words(d->f), j->wp, j->kk, NULL, false, ws, j->kk);
    } else if (j->wt)
      lunet_cpu_tile_gemm_nn(nr, j->kk, d->f, j->dy + r * d->f, d->f, j->wt, j->kk, NULL, false, ws, j->kk);
    else
      sgemm(false, true, nr, j->kk, d->f, 1.0f, j->dy + r * d->f, d->f, j->w, d->f, 0.0f, ws, j->kk);
    col2im_add(j->dx, ws, d, r, nr);
  }
}

/* w (KK, F) packed for the bfloat16 data gradient, dcols = dy w^T:
 * ((F+1)/2, KK) words, word (p, t) = w[t][2p] | w[t][2p+1] << 16. */
static uint32_t *packed_wt(lunet_backend *be, const float *w, int64_t kk, int64_t f) {
  int64_t fp = words(f);
  uint32_t *wp = lunet_cpu_buffer_alloc(be, (size_t)(fp * kk) * sizeof(uint32_t));
  uint32_t *rows = lunet_cpu_buffer_alloc(be, (size_t)(fp * kk) * sizeof(uint32_t));
  if (wp && rows) {
    lunet_cpu_bf16_pack_rows(rows, fp, w, f, kk, f);
    for (int64_t t = 0; t < kk; t++)
      for (int64_t p = 0; p < fp; p++) wp[p * kk + t] = rows[t * fp + p];
  }
  if (rows) lunet_cpu_buffer_free(be, rows);
  if (wp && !rows) {
    lunet_cpu_buffer_free(be, wp);
    wp = NULL;
  }
  return wp;
}

static int conv2d_backward_data(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                const lunet_conv2d_desc *d, bool bf16) {
  conv_job j = {.d = d, .w = w, .dy = dy, .dx = dx, .kk = d->kh * d->kw * d->c, .bf16 = bf16};
  j.sub = sub_rows(j.kk);
  float *wt = NULL;
  if (bf16) { /* dcols (f32) then dy's packed rows */
    j.pa_off = round16(j.sub * j.kk);
    j.ws_floats = j.pa_off + round16(j.sub * words(d->f));
    j.ws = workspace(be, lunet_cpu_threads(be), j.ws_floats);
    wt = (float *)packed_wt(be, w, j.kk, d->f);
    if (!j.ws || !wt) {
      if (j.ws) lunet_cpu_buffer_free(be, j.ws);
      if (wt) lunet_cpu_buffer_free(be, wt);
      return LUNET_ERR_NOMEM;
    }
    j.wp = (const uint32_t *)wt;
  } else if (!conv_is_1x1(d)) {
    j.ws_floats = j.sub * j.kk;
    j.ws = workspace(be, lunet_cpu_threads(be), j.ws_floats);
    if (!j.ws) return LUNET_ERR_NOMEM;
    if (lunet_cpu_tile_gemm_fits(j.kk)) { /* dcols = dy @ w^T as dy @ wt */
      wt = workspace(be, 1, j.kk * d->f);
      if (!wt) {
        lunet_cpu_buffer_free(be, j.ws);
        return LUNET_ERR_NOMEM;
      }
      for (int64_t t = 0; t < j.kk; t++)
        for (int64_t f = 0; f < d->f; f++) wt[f * j.kk + t] = ((const float *)w)[t * d->f + f];
      j.wt = wt;
    }
  }
  lunet_cpu_log_gemm(be, "conv2d_backward_data", d->n * d->oh * d->ow, j.kk, d->f, lunet_cpu_chunks(be, d->n, 1));
  lunet_cpu_parallel(be, d->n, 1, conv_bwd_data_task, &j);
  if (j.ws) lunet_cpu_buffer_free(be, j.ws);
  if (wt) lunet_cpu_buffer_free(be, wt);
  return 0;
}

int lunet_cpu_conv2d_backward_data(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                   const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_data");
  return rc ? rc : conv2d_backward_data(be, dx, dy, w, d, false);
}

/* Output rows [begin, end) into this chunk's dw part (KK, F) and db part (F,
 * doubles): dw += cols^T @ dy, db += column sums of dy.  Without padding
 * (j->direct) the items are samples and x is read in place. */
/* Output pixels per sample from which the filter gradient reads x in
 * place, a sample at a time: each tile pass then sums over a whole
 * sample's pixels (measured, batch 64: the first convolution's, 900 pixels,
 * 0.61 -> 0.32 ms, conv2d_1's, 169, 1.16 -> 1.08 ms; conv2d_2's 16 pixels
 * ran slower, 0.46 -> 0.59 ms: too short a sum for the tile's loads and
 * stores). */
#define DIRECT_FILTER_MIN_PIXELS 64

static void conv_bwd_filter_task(void *arg, int64_t begin, int64_t end, int chunk) {
  conv_job *j = arg;
  const lunet_conv2d_desc *d = j->d;
  float *base = j->ws + chunk * j->ws_floats;
  float *cols_ws = base, *dw = base + j->dw_off;
  double *db = (double *)(base + j->db_off);
  bool is1x1 = conv_is_1x1(d);
  for (int64_t f = 0; f < d->f; f++) db[f] = 0.0;
  if (j->direct) { /* samples [begin, end), without im2col */
    int64_t kwc = d->kw * d->c, pixels = d->oh * d->ow;
    for (int64_t n = begin; n < end; n++) {
      const float *dyn = j->dy + n * pixels * d->f;
      /* at ky, tap t (kx, c) of output (oy, ox) is x[n][oy SH + ky][ox SW][t]:
       * the taps are contiguous, pixels SW*C apart, output rows SH*W*C */
      for (int64_t ky = 0; ky < d->kh; ky++)
        lunet_cpu_tile_gemm_tn_segments(d->ow, d->f, kwc, d->oh, j->x + (n * d->h + ky) * d->w * d->c, d->sw * d->c,
                                        d->sh * d->w * d->c, dyn, d->f, dw + ky * kwc * d->f, d->f, n != begin);
      column_sums(db, dyn, pixels, d->f);
    }
    return;
  }
  for (int64_t r = begin; r < end; r += j->sub) {
    int64_t nr = end - r < j->sub ? end - r : j->sub;
    const float *cols = j->x + r * d->c;
    if (!is1x1) {
      im2col(cols_ws, j->x, d, r, nr);
      cols = cols_ws;
    }
    const float *dy = j->dy + r * d->f;
    if (j->bf16) { /* pairs of rows: cols^T (KK, nr) dy (nr, F) */
      uint32_t *pa = (uint32_t *)(base + j->pa_off), *pb = (uint32_t *)(base + j->pb_off);
      lunet_cpu_bf16_pack_pairs(pa, j->kk, cols, j->kk, nr, j->kk);
      lunet_cpu_bf16_pack_pairs(pb, d->f, dy, d->f, nr, d->f);
      lunet_cpu_bf16_gemm_tn(words(nr), d->f, j->kk, pa, j->kk, pb, d->f, dw, d->f, r != begin);
    } else if (lunet_cpu_tile_gemm_fits(d->f))
      lunet_cpu_tile_gemm_tn(nr, d->f, j->kk, cols, j->kk, dy, d->f, dw, d->f, r != begin);
    else if (small_k(j->kk, d->f))
      gemm_small_k_tn(nr, d->f, j->kk, cols, dy, dw, r != begin);
    else
      sgemm(true, false, j->kk, d->f, nr, 1.0f, cols, j->kk, dy, d->f, r == begin ? 0.0f : 1.0f, dw,
            d->f);
    column_sums(db, dy, nr, d->f);
  }
}

static int conv2d_backward_filter(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                  lunet_cbuf x, const lunet_conv2d_desc *d, bool bf16) {
  conv_job j = {.d = d, .x = x, .dy = dy, .kk = d->kh * d->kw * d->c, .bf16 = bf16};
  int64_t rows = d->n * d->oh * d->ow, kf = j.kk * d->f;
  j.sub = sub_rows(j.kk);
  /* without padding, x's taps are read in place, a sample per item */
  j.direct = !bf16 && !conv_is_1x1(d) && no_padding(d) && lunet_cpu_tile_gemm_fits(d->f) &&
             d->oh * d->ow >= DIRECT_FILTER_MIN_PIXELS;
  /* cols, the dw part, the db part as doubles, (bf16) cols' and dy's
   * packed pairs of rows, each 64-byte aligned */
  j.dw_off = j.direct ? 0 : round16(j.sub * j.kk);
  j.db_off = round16(j.dw_off + kf);
  j.pa_off = round16(j.db_off + 2 * d->f);
  j.pb_off = round16(j.pa_off + (bf16 ? words(j.sub) * j.kk : 0));
  j.ws_floats = round16(j.pb_off + (bf16 ? words(j.sub) * d->f : 0));
  int threads = lunet_cpu_threads(be);
  j.ws = workspace(be, threads, j.ws_floats);
  if (!j.ws) return LUNET_ERR_NOMEM;
  int64_t items = j.direct ? d->n : rows, grain = j.direct ? 1 : 16;
  int64_t chunks = lunet_cpu_chunks(be, items, grain);
  lunet_cpu_log_gemm(be, "conv2d_backward_filter", j.kk, d->f, rows, chunks);
  lunet_cpu_parallel(be, items, grain, conv_bwd_filter_task, &j);
  /* Sum the parts in chunk order: the same result for the same thread count. */
  float *out = dw;
  if (rows == 0) memset(out, 0, (size_t)kf * sizeof(float));
  for (int64_t t = 0; t < chunks && rows > 0; t++) {
    const float *part = j.ws + t * j.ws_floats + j.dw_off;
    if (t == 0)
      memcpy(out, part, (size_t)kf * sizeof(float));
    else
      for (int64_t i = 0; i < kf; i++) out[i] += part[i];
  }
  if (db) {
    float *pdb = db;
    for (int64_t f = 0; f < d->f; f++) {
      double s = 0.0;
      for (int64_t t = 0; t < chunks && rows > 0; t++)
        s += ((const double *)(j.ws + t * j.ws_floats + j.db_off))[f];
      pdb[f] = (float)s;
    }
  }
  lunet_cpu_buffer_free(be, j.ws);
  return 0;
}

int lunet_cpu_conv2d_backward_filter(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                     lunet_cbuf x, const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_filter");
  return rc ? rc : conv2d_backward_filter(be, dw, db, dy, x, d, false);
}

/* ---- bfloat16 products (bf16.c; lunet/backend.h's ABI 2.3) ---- */

int lunet_cpu_bf16_native(lunet_backend *be) {
  (void)be;
  return lunet_cpu_bf16;
}

/* x (n) rounded to bfloat16 into a float32 copy from the pool: the
 * emulated path's operands. */
static float *rounded(lunet_backend *be, const float *x, size_t n) {
  float *r = lunet_cpu_buffer_alloc(be, (n ? n : 1) * sizeof(float));
  if (r) lunet_cpu_bf16_round(be, r, x, n);
  return r;
}

/* Frees what rounded() made; LUNET_ERR_NOMEM when either is missing. */
static int emulated(lunet_backend *be, float *a, float *b, int (*run)(lunet_backend *, const float *, const float *, void *),
                    void *arg) {
  int rc = a && b ? run(be, a, b, arg) : lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: out of memory for bfloat16 operands");
  if (a) lunet_cpu_buffer_free(be, a);
  if (b) lunet_cpu_buffer_free(be, b);
  return rc;
}

typedef struct conv_args {
  float *out, *db;
  const float *bias;
  const lunet_conv2d_desc *d;
} conv_args;

static int run_fwd(lunet_backend *be, const float *x, const float *w, void *arg) {
  conv_args *c = arg;
  return conv2d(be, c->out, x, w, c->bias, c->d, false);
}
static int run_data(lunet_backend *be, const float *dy, const float *w, void *arg) {
  conv_args *c = arg;
  return conv2d_backward_data(be, c->out, dy, w, c->d, false);
}
static int run_filter(lunet_backend *be, const float *dy, const float *x, void *arg) {
  conv_args *c = arg;
  return conv2d_backward_filter(be, c->out, NULL, dy, x, c->d, false);
}

static size_t conv_sizes(const lunet_conv2d_desc *d, size_t *nx, size_t *nw) {
  *nx = (size_t)(d->n * d->h * d->w * d->c);
  *nw = (size_t)(d->kh * d->kw * d->c * d->f);
  return (size_t)(d->n * d->oh * d->ow * d->f);
}

/* Whether a product summing over k to n columns takes the bfloat16 tiles:
 * below BF16_MIN_K the packing costs more than the halved arithmetic saves
 * (a first convolution's k = 27: its float32 small-k kernel on rounded
 * operands is faster, measured), and the tiles need n % 32 == 0. */
#define BF16_MIN_K 64
static bool bf16_tiles(int64_t k, int64_t n) { return k >= BF16_MIN_K && lunet_cpu_bf16_fits(n); }

int lunet_cpu_conv2d_bf16(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                          const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d");
  if (rc) return rc;
  if (bf16_tiles(d->kh * d->kw * d->c, d->f)) return conv2d(be, y, x, w, bias, d, true);
  size_t nx, nw;
  conv_sizes(d, &nx, &nw);
  conv_args c = {.out = y, .bias = bias, .d = d};
  return emulated(be, rounded(be, x, nx), rounded(be, w, nw), run_fwd, &c);
}

int lunet_cpu_conv2d_backward_data_bf16(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                        const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_data");
  if (rc) return rc;
  int64_t kk = d->kh * d->kw * d->c;
  if (!conv_is_1x1(d) && bf16_tiles(d->f, kk)) return conv2d_backward_data(be, dx, dy, w, d, true);
  size_t nx, nw, ny = conv_sizes(d, &nx, &nw);
  conv_args c = {.out = dx, .d = d};
  return emulated(be, rounded(be, dy, ny), rounded(be, w, nw), run_data, &c);
}

int lunet_cpu_conv2d_backward_filter_bf16(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                          lunet_cbuf x, const lunet_conv2d_desc *d) {
  int rc = lunet_cpu_check_conv(d, "conv2d_backward_filter");
  if (rc) return rc;
  /* a first convolution's (k < 64 taps) runs faster through rounded copies
   * and the float32 kernel reading x in place (0.45 against 0.72 ms at
   * batch 64, measured) */
  if (bf16_tiles(d->kh * d->kw * d->c, d->f)) return conv2d_backward_filter(be, dw, db, dy, x, d, true);
  size_t nx, nw, ny = conv_sizes(d, &nx, &nw);
  conv_args c = {.out = dw, .d = d};
  rc = emulated(be, rounded(be, dy, ny), rounded(be, x, nx), run_filter, &c);
  if (rc || !db) return rc;
  /* the bias gradient from dy as it is, as the bfloat16 kernels sum it */
  double *sums = lunet_cpu_buffer_alloc(be, (size_t)d->f * sizeof(double));
  if (!sums) return lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: out of memory for the bias gradient");
  for (int64_t f = 0; f < d->f; f++) sums[f] = 0.0;
  column_sums(sums, dy, d->n * d->oh * d->ow, d->f);
  for (int64_t f = 0; f < d->f; f++) ((float *)db)[f] = (float)sums[f];
  lunet_cpu_buffer_free(be, sums);
  return 0;
}

/* ---- bfloat16 gemm ---- */

/* c = op(a) b with the operands packed as bfloat16 pairs along k
 * (bf16.c): a as (m, k/2) words (a^T: (k/2, m), for the tn tile), b as
 * (k/2, n).  Both are packed by all threads first (items: blocks of
 * destination rows), then the rows of c are split as lunet_cpu_gemm
 * splits them. */
typedef struct gemm16_job {
  bool ta, add;
  int64_t m, n, k, kp, batch, ba, bb; /* ba, bb: a's and b's distinct matrices */
  const float *a, *b;
  int64_t sa, sb, sc;
  float *c;
  uint32_t *pa, *pb;
  int64_t blocks, parts;
} gemm16_job;

static void gemm16_pack_task(void *arg, int64_t begin, int64_t end, int chunk) {
  gemm16_job *j = arg;
  int64_t kp = j->kp, m = j->m, n = j->n, k = j->k;
  for (int64_t t = begin; t < end; t++) {
    int64_t e = t / j->blocks, blk = t % j->blocks;
    if (e < j->ba) { /* a's entry e */
      const float *a = j->a + e * j->sa;
      uint32_t *pa = j->pa + e * m * kp;
      int64_t rows = j->ta ? kp : m, r0 = rows * blk / j->blocks, r1 = rows * (blk + 1) / j->blocks;
      if (!j->ta) lunet_cpu_bf16_pack_rows(pa + r0 * kp, kp, a + r0 * k, k, r1 - r0, k);
      else if (r1 > r0) lunet_cpu_bf16_pack_pairs(pa + r0 * m, m, a + 2 * r0 * m, m, (2 * r1 < k ? 2 * r1 : k) - 2 * r0, m);
      continue;
    }
    e -= j->ba; /* b's entry e */
    int64_t q0 = kp * blk / j->blocks, q1 = kp * (blk + 1) / j->blocks;
    if (q1 > q0)
      lunet_cpu_bf16_pack_pairs(j->pb + e * kp * n + q0 * n, n, j->b + e * j->sb + 2 * q0 * n, n,
                                (2 * q1 < k ? 2 * q1 : k) - 2 * q0, n);
  }
}

static void gemm16_task(void *arg, int64_t begin, int64_t end, int chunk) {
  gemm16_job *j = arg;
  for (int64_t t = begin; t < end; t++) {
    int64_t bi = t / j->parts, part = t % j->parts;
    int64_t r0 = j->m * part / j->parts, r1 = j->m * (part + 1) / j->parts;
    const uint32_t *pa = j->pa + (j->ba > 1 ? bi : 0) * j->m * j->kp, *pb = j->pb + (j->bb > 1 ? bi : 0) * j->kp * j->n;
    float *c = j->c + bi * j->sc + r0 * j->n;
    if (j->ta) lunet_cpu_bf16_gemm_tn(j->kp, j->n, r1 - r0, pa + r0, j->m, pb, j->n, c, j->n, j->add);
    else lunet_cpu_bf16_gemm_nn(r1 - r0, j->n, j->kp, pa + r0 * j->kp, j->kp, pb, j->n, NULL, j->add, c, j->n);
  }
}

/* The floats a strided batch of matrices spans. */
static size_t span(int64_t stride, int64_t batch, int64_t size) {
  return (size_t)(stride ? stride * (batch - 1) + size : size);
}

typedef struct gemm_args {
  bool ta, tb;
  int64_t m, n, k, sa, sb, sc, batch;
  float alpha, beta;
  float *c;
} gemm_args;

static int run_gemm(lunet_backend *be, const float *a, const float *b, void *arg) {
  gemm_args *g = arg;
  return lunet_cpu_gemm(be, g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, g->sa, b, g->sb, g->beta, g->c, g->sc,
                        g->batch);
}

int lunet_cpu_gemm_bf16(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                        lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc,
                        int64_t batch) {
  /* the tiles when b is not transposed (b^T's pairs would be gathered
   * across its rows: rounding copies and the float32 kernels were faster,
   * measured) */
  bool fast = bf16_tiles(k, n) && !tb && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && batch > 0 &&
              !(sc == 0 && batch > 1);
  if (!fast) { /* also the sizes' errors, from lunet_cpu_gemm */
    gemm_args g = {ta, tb, m, n, k, sa, sb, sc, batch, alpha, beta, c};
    if (m <= 0 || n <= 0 || k <= 0 || batch <= 0) return run_gemm(be, a, b, &g);
    return emulated(be, rounded(be, a, span(sa, batch, m * k)), rounded(be, b, span(sb, batch, k * n)), run_gemm, &g);
  }
  gemm16_job j = {.ta = ta, .add = beta == 1.0f, .m = m, .n = n, .k = k, .kp = words(k),
                  .batch = batch, .ba = sa ? batch : 1, .bb = sb ? batch : 1, .a = a, .b = b,
                  .sa = sa, .sb = sb, .sc = sc, .c = c};
  int threads = lunet_cpu_threads(be);
  j.pa = lunet_cpu_buffer_alloc(be, (size_t)(j.ba * m * j.kp) * sizeof(uint32_t));
  j.pb = lunet_cpu_buffer_alloc(be, (size_t)(j.bb * j.kp * n) * sizeof(uint32_t));
  if (!j.pa || !j.pb) {
    if (j.pa) lunet_cpu_buffer_free(be, j.pa);
    if (j.pb) lunet_cpu_buffer_free(be, j.pb);
    return lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: out of memory for bfloat16 operands");
  }
  j.blocks = (j.ba + j.bb) >= threads ? 1 : threads;
  lunet_cpu_parallel(be, (j.ba + j.bb) * j.blocks, 1, gemm16_pack_task, &j);
  double fmas = (double)m * (double)n * (double)k;
  j.parts = threads > 1 && batch < threads && fmas >= GEMM_SERIAL_FMAS ? (m / 16 < threads ? (m / 16 > 0 ? m / 16 : 1) : threads) : 1;
  int64_t grain = batch * j.parts > 1 && fmas * (double)batch >= GEMM_SERIAL_FMAS ? 1 : batch * j.parts;
  lunet_cpu_log_gemm(be, "gemm", m * batch, n, k, lunet_cpu_chunks(be, batch * j.parts, grain));
  lunet_cpu_parallel(be, batch * j.parts, grain, gemm16_task, &j);
  lunet_cpu_buffer_free(be, j.pa);
  lunet_cpu_buffer_free(be, j.pb);
  return 0;
}
