/*
 * The CPU backend's private header: its state, thread pool, buffer pool and
 * the two sets of kernels (fast and naive reference) behind its vtables.
 *
 * Everything here has hidden visibility (the module is built with
 * -fvisibility=hidden); the only exported symbols are lunet_backend_entry()
 * and lunet_cpu_naive_iface().
 */
#ifndef LUNET_CPU_H
#define LUNET_CPU_H

#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <cblas.h> /* types only: OpenBLAS itself is loaded at run time */
#include "lunet/backend.h"

#define LUNET_CPU_ALIGN 64
/* Idle bytes the buffer pool may keep; a freed buffer beyond this goes back
 * to the system. */
#define LUNET_CPU_POOL_CAP ((size_t)1 << 30)

/* A task run by the pool: items [begin, end) of chunk `chunk`.  Which
 * thread runs a chunk varies; lunet_cpu_tid() names it (for scratch space). */
typedef void (*lunet_cpu_task)(void *arg, int64_t begin, int64_t end, int chunk);

/* The backend's own threads: n-1 workers plus the calling thread.  A
 * parallel region cuts [0, n) into static chunks (ranges depend only on n and
 * the thread count, so results are the same run to run); the caller and
 * the workers claim chunks from a counter, so a worker the OS has not
 * scheduled yet delays nothing: the caller runs its chunks. */
typedef struct lunet_cpu_pool {
  int n; /* threads, the caller included */
  pthread_t *workers;
  struct lunet_cpu_worker *wargs;
  pthread_mutex_t mu;     /* guards sleeping and waking */
  pthread_mutex_t run_mu; /* one parallel region at a time */
  pthread_cond_t start_cv, done_cv;
  atomic_uint_fast64_t gen;   /* bumped for every region (and to stop) */
  atomic_uint_fast64_t claim; /* region << 32 | chunks << 16 | next chunk */
  atomic_int done;            /* chunks finished in this region */
  atomic_int sleepers;
  int started; /* workers that have set up their thread (guarded by mu) */
  bool stop;
  lunet_cpu_task fn;
  void *arg;
  int64_t total;
} lunet_cpu_pool;

/* Freed buffers of one size, ready for reuse. */
typedef struct lunet_cpu_bin {
  size_t size;
  void **ptrs;
  size_t count, cap;
} lunet_cpu_bin;

struct lunet_backend {
  lunet_cpu_pool pool;
  pthread_mutex_t mem_mu; /* the bins, and stats.gemm */
  lunet_backend_stats stats; /* counters (atomic adds) and the product log (under mem_mu) */
  lunet_cpu_bin *bins;
  size_t nbins, bins_cap;
  size_t idle_bytes;
};

/* ---- OpenBLAS, loaded at init (blas.c) ---- */
typedef void (*lunet_cpu_sgemm_fn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE,
                                   blasint m, blasint n, blasint k, float alpha, const float *a,
                                   blasint lda, const float *b, blasint ldb, float beta, float *c,
                                   blasint ldc);
typedef struct lunet_cpu_blas_fns {
  lunet_cpu_sgemm_fn sgemm;
  void (*set_num_threads)(int n);
  char *(*get_config)(void);
  char *(*get_corename)(void);
} lunet_cpu_blas_fns;
extern lunet_cpu_blas_fns lunet_cpu_blas;
/* Chooses OpenBLAS's kernel for this CPU (unless OPENBLAS_CORETYPE is set)
 * and loads it, once; -1 with the reason in err. */
int lunet_cpu_blas_load(char *err, size_t n);
const char *lunet_cpu_blas_kernel_for_cpu(void);

/* ---- instruction sets for lunet's own kernels (isa.c) ---- */
/* The widest vector ISA the hand-written kernels use: the best this CPU and
 * OS run, capped by LUNET_CPU_ISA=avx512|avx2|scalar (so that the tests
 * cover every path on one machine).  Chosen once, at init. */
typedef enum lunet_cpu_isa { LUNET_CPU_SCALAR = 0, LUNET_CPU_AVX2 = 1, LUNET_CPU_AVX512 = 2 } lunet_cpu_isa;
extern lunet_cpu_isa lunet_cpu_isa_in_use;
/* Sets lunet_cpu_isa_in_use; -1 with the reason in err for a bad LUNET_CPU_ISA. */
int lunet_cpu_isa_choose(char *err, size_t n);
const char *lunet_cpu_isa_name(lunet_cpu_isa isa);
/* Defines `static void name params` that runs name##_body (an always-inline
 * function taking `args`) compiled for AVX-512, AVX2 or the baseline,
 * whichever isa.c chose: the backend itself is built for the baseline
 * (SSE2), so a memory-bound loop gets 4 lanes unless it goes through this. */
#define LUNET_CPU_ISA_DISPATCH(name, params, args)                                                         \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void name##_avx512 params {          \
    name##_body args;                                                                                      \
  }                                                                                                        \
  __attribute__((target("avx2,fma"))) static void name##_avx2 params { name##_body args; }                 \
  static void name##_scalar params { name##_body args; }                                                   \
  static void name params {                                                                                \
    switch (lunet_cpu_isa_in_use) {                                                                        \
    case LUNET_CPU_AVX512: name##_avx512 args; return;                                                     \
    case LUNET_CPU_AVX2: name##_avx2 args; return;                                                         \
    default: name##_scalar args;                                                                           \
    }                                                                                                      \
  }

/* The body of a tile_of() (tile_gemm.c, bf16.c): the rows past the last
 * whole tile (fewer than 6 of 64 columns when wide, else fewer than 12 of
 * 32) as compile-time constants, TILE(R, V) running R rows of V vectors. */
#define LUNET_CPU_TILE_REMAINDER(rows, wide, TILE)                                                           \
  do {                                                                                                     \
    if (wide) {                                                                                            \
      switch (rows) {                                                                                      \
      case 1: TILE(1, 4); return;                                                                          \
      case 2: TILE(2, 4); return;                                                                          \
      case 3: TILE(3, 4); return;                                                                          \
      case 4: TILE(4, 4); return;                                                                          \
      case 5: TILE(5, 4); return;                                                                          \
      }                                                                                                    \
    } else {                                                                                               \
      switch (rows) {                                                                                      \
      case 1: TILE(1, 2); return;                                                                          \
      case 2: TILE(2, 2); return;                                                                          \
      case 3: TILE(3, 2); return;                                                                          \
      case 4: TILE(4, 2); return;                                                                          \
      case 5: TILE(5, 2); return;                                                                          \
      case 6: TILE(6, 2); return;                                                                          \
      case 7: TILE(7, 2); return;                                                                          \
      case 8: TILE(8, 2); return;                                                                          \
      case 9: TILE(9, 2); return;                                                                          \
      case 10: TILE(10, 2); return;                                                                        \
      case 11: TILE(11, 2); return;                                                                        \
      }                                                                                                    \
    }                                                                                                      \
  } while (0)

/* The loops of a tiled product (tile_gemm.c, bf16.c): rows [0, rows) of
 * c by n's blocks of 64 columns (32 for the last when n % 64 == 32), whole
 * tiles of RW rows (wide) or RN rows (32 columns) first, TILE(R, V, i, j)
 * at row i of column block j, then the rest, REST(count, wide, i, j). */
#define LUNET_CPU_OVER_TILES(rows, n, RW, RN, TILE, REST)                                                    \
  for (int64_t j = 0; j < (n); j += 64) {                                                                  \
    bool wide = (n) - j >= 64;                                                                             \
    int64_t i = 0;                                                                                         \
    if (wide)                                                                                              \
      for (; i + (RW) <= (rows); i += (RW)) TILE(RW, 4, i, j);                                             \
    else                                                                                                   \
      for (; i + (RN) <= (rows); i += (RN)) TILE(RN, 2, i, j);                                             \
    if (i < (rows)) REST((int)((rows) - i), wide, i, j);                                                   \
  }

/* ---- register-tiled AVX-512 products (tile_gemm.c) ---- */
/* Whether they run an n-column product: AVX-512 in use, n a multiple of 32. */
bool lunet_cpu_tile_gemm_fits(int64_t n);
/* c (m, n) = a (m, k) b (k, n) [+ bias (n)], or + c's old values when add;
 * row strides lda, ldb, ldc. */
void lunet_cpu_tile_gemm_nn(int64_t m, int64_t n, int64_t k, const float *restrict a, int64_t lda,
                            const float *restrict b, int64_t ldb, const float *restrict bias, bool add,
                            float *restrict c, int64_t ldc);
/* The same summed over segs segments: a's segment s starts at a + s * sa
 * (its rows lda apart), b's at row s * k (a direct convolution's kernel
 * rows, whose taps lie in different rows of x). */
void lunet_cpu_tile_gemm_nn_segments(int64_t m, int64_t n, int64_t k, int64_t segs, const float *restrict a,
                                     int64_t lda, int64_t sa, const float *restrict b, int64_t ldb,
                                     const float *restrict bias, bool add, float *restrict c, int64_t ldc);
/* The same with each row of a where rows[i] says, summed over segs
 * segments: a(s, i, p) = rows[i][s * sa + p], b's segment s from row s * k
 * (a direct convolution's output pixels, across the ends of output rows,
 * and its kernel rows). */
void lunet_cpu_tile_gemm_nn_rows(int64_t m, int64_t n, int64_t k, int64_t segs, const float *const *rows,
                                 int64_t sa, const float *restrict b, int64_t ldb, const float *restrict bias,
                                 bool add, float *restrict c, int64_t ldc);
/* c (k, n) = a^T b, plus c's old values when add; a (m, k), b (m, n). */
/* The same summed over segs segments: a's rows (the sum's) of segment s
 * start at a + s * sa, b's at row s * m (a filter gradient's output rows,
 * each a run of pixels in x). */
void lunet_cpu_tile_gemm_tn_segments(int64_t m, int64_t n, int64_t k, int64_t segs, const float *restrict a,
                                     int64_t lda, int64_t sa, const float *restrict b, int64_t ldb,
                                     float *restrict c, int64_t ldc, bool add);
void lunet_cpu_tile_gemm_tn(int64_t m, int64_t n, int64_t k, const float *restrict a, int64_t lda,
                            const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc,
                            bool add);

/* ---- bfloat16 products (bf16.c) ---- */
/* AVX512-BF16 in use: the CPU has it and LUNET_CPU_ISA allows AVX-512. */
extern bool lunet_cpu_bf16;
/* Whether the bfloat16 tiles run an n-column product (n a multiple of 32). */
bool lunet_cpu_bf16_fits(int64_t n);
/* dst row i (ldd words apart) <- src row i's k floats as (k + 1) / 2
 * bfloat16 pairs (word p = element 2p | element 2p + 1 << 16). */
void lunet_cpu_bf16_pack_rows(uint32_t *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                              int64_t rows, int64_t k);
/* dst row q <- src rows 2q and 2q + 1 (a zero row past the last), n words:
 * word j = row 2q's element j | row 2q + 1's << 16. */
void lunet_cpu_bf16_pack_pairs(uint32_t *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                               int64_t rows, int64_t n);
/* c (m, n) = a (m, kp words) b (kp words, n) [+ bias | + c when add]. */
void lunet_cpu_bf16_gemm_nn(int64_t m, int64_t n, int64_t kp, const uint32_t *restrict a, int64_t lda,
                            const uint32_t *restrict b, int64_t ldb, const float *restrict bias, bool add,
                            float *restrict c, int64_t ldc);
/* c (k, n) [+]= a^T b summed over mp words: a (mp, k), b (mp, n). */
void lunet_cpu_bf16_gemm_tn(int64_t mp, int64_t n, int64_t k, const uint32_t *restrict a, int64_t lda,
                            const uint32_t *restrict b, int64_t ldb, float *restrict c, int64_t ldc, bool add);
/* y (n) = x rounded to bfloat16 (lunet_bf16_round), as float32, on the
 * backend's threads. */
void lunet_cpu_bf16_round(lunet_backend *be, float *y, const float *x, size_t n);

/* ---- counters (nn.backend_stats) ---- */
#define LUNET_CPU_COUNT(be, field, v) __atomic_add_fetch(&(be)->stats.field, (uint64_t)(v), __ATOMIC_RELAXED)
/* Logs a product (contexts on several threads may share the backend). */
void lunet_cpu_log_gemm(lunet_backend *be, const char *op, int64_t m, int64_t n, int64_t k, int64_t chunks);

/* ---- errors (thread-local message) ---- */
int lunet_cpu_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *lunet_cpu_last_error(lunet_backend *be);

/* ---- threads (threads.c) ---- */
int lunet_cpu_pool_start(lunet_cpu_pool *p, int n);
void lunet_cpu_pool_stop(lunet_cpu_pool *p);
/* Runs fn over [0, n) in at most pool->n chunks of at least `grain` items. */
void lunet_cpu_parallel(lunet_backend *be, int64_t n, int64_t grain, lunet_cpu_task fn, void *arg);
int lunet_cpu_threads(lunet_backend *be);
/* The pool thread running the current chunk: 0 (the caller) .. n-1. */
int lunet_cpu_tid(void);
/* The number of chunks lunet_cpu_parallel() will use for (n, grain). */
int lunet_cpu_chunks(lunet_backend *be, int64_t n, int64_t grain);

/* ---- memory (memory.c) ---- */
lunet_buf lunet_cpu_buffer_alloc(lunet_backend *be, size_t nbytes);
void lunet_cpu_buffer_free(lunet_backend *be, lunet_buf buf);
int lunet_cpu_buffer_upload(lunet_backend *be, lunet_buf dst, size_t off, const void *src,
                            size_t nbytes);
int lunet_cpu_buffer_download(lunet_backend *be, lunet_cbuf src, size_t off, void *dst,
                              size_t nbytes);
int lunet_cpu_buffer_copy(lunet_backend *be, lunet_buf dst, size_t doff, lunet_cbuf src,
                          size_t soff, size_t nbytes);
int lunet_cpu_synchronize(lunet_backend *be);
void lunet_cpu_stats(lunet_backend *be, lunet_backend_stats *out);
void lunet_cpu_pool_drain(lunet_backend *be);

/* ---- shared checks ---- */
int lunet_cpu_check_conv(const lunet_conv2d_desc *d, const char *op);
int lunet_cpu_check_pool(const lunet_pool2d_desc *d, const char *op);
int lunet_cpu_check_label(float label, size_t row, size_t cols);

/* ---- fast kernels ---- */
int lunet_cpu_fill(lunet_backend *be, lunet_buf y, float value, size_t n);
int lunet_cpu_cast(lunet_backend *be, lunet_buf y, lunet_dtype ydt, lunet_cbuf x, lunet_dtype xdt,
                   size_t n);
int lunet_cpu_strided_copy(lunet_backend *be, lunet_buf y, lunet_cbuf x,
                           const lunet_strided_desc *d);
int lunet_cpu_unary(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf y,
                    lunet_cbuf x, size_t n);
int lunet_cpu_unary_backward(lunet_backend *be, lunet_unary_op op, float alpha, float beta,
                             lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y, size_t n);
int lunet_cpu_binary(lunet_backend *be, lunet_binary_op op, lunet_buf y, lunet_cbuf a, lunet_cbuf b,
                     const lunet_bcast_desc *d);
int lunet_cpu_reduce(lunet_backend *be, lunet_reduce_op op, lunet_buf y, lunet_cbuf x, size_t outer,
                     size_t len, size_t inner);
int lunet_cpu_argmax(lunet_backend *be, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols);
int lunet_cpu_gemm(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                   float alpha, lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta,
                   lunet_buf c, int64_t sc, int64_t batch);
/* ABI 2.5: c = a b + bias, then the ReLU when relu (conv.c) */
int lunet_cpu_linear(lunet_backend *be, int64_t m, int64_t n, int64_t k, lunet_cbuf a, lunet_cbuf b,
                     lunet_cbuf bias, bool relu, lunet_buf c);
int lunet_cpu_gemm_relu_mask(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, lunet_cbuf a,
                             lunet_cbuf b, lunet_cbuf mask, lunet_buf c);
/* bfloat16 products (ABI 2.3): conv.c */
int lunet_cpu_bf16_native(lunet_backend *be);
int lunet_cpu_gemm_bf16(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                        lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc,
                        int64_t batch);
int lunet_cpu_conv2d_bf16(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                          const lunet_conv2d_desc *d);
int lunet_cpu_conv2d_backward_data_bf16(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                        const lunet_conv2d_desc *d);
int lunet_cpu_conv2d_backward_filter_bf16(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                          lunet_cbuf x, const lunet_conv2d_desc *d);
int lunet_cpu_conv2d(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                     const lunet_conv2d_desc *d);
int lunet_cpu_conv2d_backward_data(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                   const lunet_conv2d_desc *d);
int lunet_cpu_conv2d_backward_filter(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                     lunet_cbuf x, const lunet_conv2d_desc *d);
int lunet_cpu_pool2d(lunet_backend *be, lunet_pool_mode mode, lunet_buf y, lunet_cbuf x,
                     const lunet_pool2d_desc *d);
int lunet_cpu_pool2d_backward(lunet_backend *be, lunet_pool_mode mode, lunet_buf dx, lunet_cbuf dy,
                              lunet_cbuf x, lunet_cbuf y, const lunet_pool2d_desc *d);
int lunet_cpu_max_pool2d_relu(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_pool2d_desc *d);
int lunet_cpu_max_pool2d_relu_backward(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y,
                                       const lunet_pool2d_desc *d);
int lunet_cpu_softmax(lunet_backend *be, bool log, lunet_buf y, lunet_cbuf x, size_t rows,
                      size_t cols);
int lunet_cpu_softmax_backward(lunet_backend *be, bool log, lunet_buf dx, lunet_cbuf dy,
                               lunet_cbuf y, size_t rows, size_t cols);
int lunet_cpu_softmax_xent(lunet_backend *be, lunet_buf loss, lunet_buf dlogits, lunet_cbuf logits,
                           lunet_cbuf labels, size_t rows, size_t cols);
int lunet_cpu_batchnorm(lunet_backend *be, bool training, lunet_buf y, lunet_buf save_mean,
                        lunet_buf save_invstd, lunet_buf run_mean, lunet_buf run_var, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t c, float momentum,
                        float epsilon);
int lunet_cpu_batchnorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta,
                                 lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma,
                                 lunet_cbuf save_mean, lunet_cbuf save_invstd, size_t rows,
                                 size_t c);
int lunet_cpu_dropout_mask(lunet_backend *be, lunet_buf mask, size_t n, float rate, uint64_t seed,
                           uint64_t counter);
int lunet_cpu_lstm_cell(lunet_backend *be, lunet_buf hc, lunet_buf gates, lunet_cbuf z, lunet_cbuf cp, size_t n,
                        size_t u, lunet_unary_op act, lunet_unary_op rec);
int lunet_cpu_lstm_cell_backward(lunet_backend *be, lunet_buf dz, lunet_buf dcp, lunet_cbuf dhc, lunet_cbuf hc,
                                 lunet_cbuf gates, lunet_cbuf cp, size_t n, size_t u, lunet_unary_op act,
                                 lunet_unary_op rec);
int lunet_cpu_gru_cell(lunet_backend *be, lunet_buf hn, lunet_buf gates, lunet_cbuf xs, lunet_cbuf hs, lunet_cbuf h,
                       size_t n, size_t u, lunet_unary_op act, lunet_unary_op rec);
int lunet_cpu_gru_cell_backward(lunet_backend *be, lunet_buf dxs, lunet_buf dhs, lunet_buf dh, lunet_cbuf dhn,
                                lunet_cbuf gates, lunet_cbuf hs, lunet_cbuf h, size_t n, size_t u, lunet_unary_op act,
                                lunet_unary_op rec);
int lunet_cpu_layernorm(lunet_backend *be, lunet_buf y, lunet_buf mean, lunet_buf rstd, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t cols, float eps);
int lunet_cpu_layernorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta, lunet_cbuf dy,
                                 lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf mean, lunet_cbuf rstd, size_t rows,
                                 size_t cols);
int lunet_cpu_scatter_add_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                               size_t cols);
int lunet_cpu_gather_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx,
                          size_t n, size_t row_bytes);
int lunet_cpu_sgd_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf velocity, size_t n,
                         float lr, float momentum, bool nesterov, float weight_decay);
int lunet_cpu_adam_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf m, lunet_buf v,
                          size_t n, float lr, float beta1, float beta2, float epsilon,
                          float weight_decay, int64_t step);
int lunet_cpu_rmsprop_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf ms,
                             lunet_buf mom, size_t n, float lr, float rho, float momentum,
                             float epsilon);
int lunet_cpu_update_multi(lunet_backend *be, const lunet_update_desc *u, int count, const lunet_buf *p,
                           const lunet_cbuf *g, const lunet_buf *s1, const lunet_buf *s2, const size_t *n);
int lunet_cpu_affine_resample(lunet_backend *be, lunet_buf y, lunet_cbuf x, const float *mats,
                              size_t n, size_t h, size_t w, size_t c, size_t oh, size_t ow,
                              lunet_fill_mode mode, float fill);

/* ---- scalar definitions shared by fast and naive kernels ---- */
/* Whether v takes the place of the maximum so far, best, in a max pooling
 * scanned in order: larger, or a NaN (PyTorch's max_pool2d: a NaN in the
 * window is the output, and the last one takes the gradient). */
static inline bool lunet_cpu_pool_beats(float v, float best) { return v > best || v != v; }

/* tanh in float32 to a few units in the last place, without libm's slow
 * expm1 path: an odd polynomial (Taylor to x^15) under 0.5, 1 - 2 / (1 +
 * e^2|x|) above, exactly +-1 past 9: within 3 ulp of tanh (checked over
 * [-12, 12] by steps of 1e-5). */
static inline float lunet_cpu_tanhf(float x) {
  float a = fabsf(x);
  if (a < 0.5f) {
    float x2 = x * x;
    float p = -929569.0f / 638512875.0f;
    p = p * x2 + 21844.0f / 6081075.0f;
    p = p * x2 - 1382.0f / 155925.0f;
    p = p * x2 + 62.0f / 2835.0f;
    p = p * x2 - 17.0f / 315.0f;
    p = p * x2 + 2.0f / 15.0f;
    p = p * x2 - 1.0f / 3.0f;
    return x + x * x2 * p;
  }
  if (a > 9.0f) return copysignf(1.0f, x);
  return copysignf(1.0f - 2.0f / (1.0f + expf(2.0f * a)), x);
}

static inline float lunet_cpu_unary_one(lunet_unary_op op, float alpha, float beta, float x) {
  switch (op) {
  case LUNET_UNARY_NEG:
    return -x;
  case LUNET_UNARY_EXP:
    return expf(x);
  case LUNET_UNARY_LOG:
    return logf(x);
  case LUNET_UNARY_SQRT:
    return sqrtf(x);
  case LUNET_UNARY_ABS:
    return fabsf(x);
  case LUNET_UNARY_SQUARE:
    return x * x;
  case LUNET_UNARY_RELU: /* a NaN stays NaN (PyTorch's): !(x <= 0) holds for it */
    return !(x <= 0.0f) ? x : 0.0f;
  case LUNET_UNARY_SIGMOID:
    /* Two forms so that exp never overflows. */
    if (x >= 0.0f)
      return 1.0f / (1.0f + expf(-x));
    else {
      float e = expf(x);
      return e / (1.0f + e);
    }
  case LUNET_UNARY_TANH:
    return lunet_cpu_tanhf(x);
  case LUNET_UNARY_GELU:
    return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
  case LUNET_UNARY_LEAKY_RELU:
    return x > 0.0f ? x : alpha * x;
  case LUNET_UNARY_AFFINE:
    return alpha * x + beta;
  case LUNET_UNARY_CLIP: /* a NaN stays NaN (fmaxf would take the bound) */
    return x != x ? x : fminf(fmaxf(x, alpha), beta);
  case LUNET_UNARY_RECIP:
    return 1.0f / x;
  case LUNET_UNARY_SIGN:
    return (float)((x > 0.0f) - (x < 0.0f));
  case LUNET_UNARY_SIN:
    return sinf(x);
  case LUNET_UNARY_COS:
    return cosf(x);
  default:
    return NAN;
  }
}

/* dy * f'(x), with y = f(x) where the derivative is cheaper from y. */
static inline float lunet_cpu_unary_grad_one(lunet_unary_op op, float alpha, float beta, float dy,
                                             float x, float y) {
  switch (op) {
  case LUNET_UNARY_NEG:
    return -dy;
  case LUNET_UNARY_EXP:
    return dy * y;
  case LUNET_UNARY_LOG:
    return dy / x;
  case LUNET_UNARY_SQRT:
    return dy * 0.5f / y;
  case LUNET_UNARY_ABS:
    return x > 0.0f ? dy : x < 0.0f ? -dy : 0.0f;
  case LUNET_UNARY_SQUARE:
    return 2.0f * x * dy;
  case LUNET_UNARY_RELU:
    return x > 0.0f ? dy : 0.0f;
  case LUNET_UNARY_SIGMOID:
    return dy * y * (1.0f - y);
  case LUNET_UNARY_TANH:
    return dy * (1.0f - y * y);
  case LUNET_UNARY_GELU: {
    float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    float pdf = expf(-0.5f * x * x) * 0.3989422804014327f; /* 1/sqrt(2 pi) */
    return dy * (cdf + x * pdf);
  }
  case LUNET_UNARY_LEAKY_RELU:
    return x > 0.0f ? dy : alpha * dy;
  case LUNET_UNARY_AFFINE:
    return alpha * dy;
  /* As TensorFlow's clip_by_value: the bounds themselves pass the gradient. */
  case LUNET_UNARY_CLIP:
    return (x >= alpha && x <= beta) ? dy : 0.0f;
  case LUNET_UNARY_RECIP:
    return -dy * y * y;
  case LUNET_UNARY_SIGN:
    return 0.0f;
  case LUNET_UNARY_SIN:
    return dy * cosf(x);
  case LUNET_UNARY_COS:
    return -dy * sinf(x);
  default:
    return NAN;
  }
}

static inline float lunet_cpu_binary_one(lunet_binary_op op, float a, float b) {
  switch (op) {
  case LUNET_BINARY_ADD:
    return a + b;
  case LUNET_BINARY_SUB:
    return a - b;
  case LUNET_BINARY_MUL:
    return a * b;
  case LUNET_BINARY_DIV:
    return a / b;
  case LUNET_BINARY_MAX: /* a NaN on either side gives NaN, as torch.maximum */
    return a > b || a != a ? a : b;
  case LUNET_BINARY_MIN:
    return a < b || a != a ? a : b;
  case LUNET_BINARY_POW:
    return powf(a, b);
  case LUNET_BINARY_EQ:
    return a == b ? 1.0f : 0.0f;
  case LUNET_BINARY_GT:
    return a > b ? 1.0f : 0.0f;
  case LUNET_BINARY_LT:
    return a < b ? 1.0f : 0.0f;
  default:
    return NAN;
  }
}

/* Keras's Adam step size lr*sqrt(1-b2^t)/(1-b1^t); error for step < 1. */
int lunet_cpu_adam_alpha(float lr, float beta1, float beta2, int64_t step, float *alpha);
/* y[i] (ydt) <- x[i] (xdt) for i in [begin, end): to U8 rounds and clamps to
 * [0, 255], to I32 truncates toward zero and saturates; NaN becomes 0. */
void lunet_cpu_cast_range(void *y, lunet_dtype ydt, const void *x, lunet_dtype xdt, size_t begin,
                          size_t end);

/* ---- the naive reference vtable (naive.c) ---- */
extern const lunet_backend_i lunet_cpu_naive_vtable;

#endif
