/*
 * Register-tiled AVX-512 products for the convolutions' GEMMs (and the
 * backend's gemm where they fit), where the output has few columns (the
 * filters, F = 32..512) and OpenBLAS, which packs both operands for every
 * call and amortizes its tiles over a long k, ran at a third of the FMA
 * peak.
 *
 *   nn: c (m, n) = a (m, k) b (k, n) [+ bias (n) | + c]
 *       a tile of 6 rows by 64 columns of c (24 zmm accumulators) stays in
 *       registers over all of k; each step of k loads 4 vectors of b's row
 *       and broadcasts 6 values of a: 10 loads per 24 FMAs.  A direct
 *       convolution's kernel rows are segments the tile stays in
 *       registers over, and its rows of a may start anywhere in x
 *       (nn_rows: the output pixels across the ends of output rows).
 *   tn: c (k, n) [+]= a^T (k, m) b (m, n), a (m, k) row-major
 *       the filter gradient: a tile of 6 rows of c (6 consecutive columns
 *       of a) by 64 columns stays in registers over all m rows of a and b.
 *
 * Neither packs anything: a's rows (im2col rows, contiguous in k) are read
 * in place, six streams at a time, and b's rows are contiguous. Tiles of 32
 * columns (12 rows, 24 accumulators too) take n's remainder or n = 32,
 * tiles of fewer rows the rows past the last whole tile.  n must be a multiple of 32 (tile_gemm_fits); the callers
 * keep OpenBLAS for the rest and for CPUs without AVX-512.  The naive
 * reference is backends/cpu/naive.c (the cpu_backend test compares both).
 */
#include <immintrin.h>
#include "cpu.h"

#define ROWS 6        /* rows of a 64-column tile: 24 accumulators */
#define ROWS_NARROW 12 /* rows of a 32-column tile (n's remainder, or n = 32): 24 too */
#define TARGET __attribute__((target("avx512f")))

/* One tile: c[r][16 v + 0..15] for r < R, v < V (R and V compile-time) =
 * sum over segments s < segs and p < k of a(s, r, p) b[s k + p][16 v +
 * ...], with a(s, r, p) = a[s * sa + r * ar + p * ap] (nn: a's rows; tn:
 * a's columns; a direct convolution's segments are its kernel rows, each
 * a run of KW*C contiguous taps in x), starting from the bias, from c's
 * old values (add) or from zero. */
static inline __attribute__((always_inline)) TARGET void tile(const int R, const int V, int64_t k, int64_t segs,
                                                              const float *restrict a, int64_t sa, int64_t ar,
                                                              int64_t ap, const float *restrict b, int64_t ldb,
                                                              const float *restrict bias, bool add,
                                                              float *restrict c, int64_t ldc) {
  __m512 acc[ROWS_NARROW][4];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++)
      acc[r][v] = add ? _mm512_loadu_ps(c + r * ldc + 16 * v)
                : bias ? _mm512_loadu_ps(bias + 16 * v) : _mm512_setzero_ps();
  for (int64_t s = 0; s < segs; s++) {
    const float *restrict as = a + s * sa, *restrict bs = b + s * k * ldb;
    for (int64_t p = 0; p < k; p++) {
      __m512 bv[4];
      for (int v = 0; v < V; v++) bv[v] = _mm512_loadu_ps(bs + p * ldb + 16 * v);
      for (int r = 0; r < R; r++) {
        __m512 av = _mm512_set1_ps(as[r * ar + p * ap]);
        for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

/* A tile of `rows` rows (fewer than a whole tile's: the remainder), 64
 * columns when wide, else 32, with tile()'s R and V as compile-time
 * constants. */
static inline __attribute__((always_inline)) TARGET void tile_of(int rows, bool wide, int64_t k, int64_t segs,
                                                                 const float *restrict a, int64_t sa, int64_t ar,
                                                                 int64_t ap, const float *restrict b, int64_t ldb,
                                                                 const float *restrict bias, bool add,
                                                                 float *restrict c, int64_t ldc) {
#define TILE(R, V) tile(R, V, k, segs, a, sa, ar, ap, b, ldb, bias, add, c, ldc)
  LUNET_CPU_TILE_REMAINDER(rows, wide, TILE);
#undef TILE
}

TARGET void lunet_cpu_tile_gemm_nn_segments(int64_t m, int64_t n, int64_t k, int64_t segs, const float *restrict a,
                                            int64_t lda, int64_t sa, const float *restrict b, int64_t ldb,
                                            const float *restrict bias, bool add, float *restrict c, int64_t ldc) {
#define NN_ARGS(i, j) k, segs, a + (i) * lda, sa, lda, 1, b + (j), ldb, bias ? bias + (j) : NULL, add, c + (i) * ldc + (j), ldc
#define FULL(R, V, i, j) tile(R, V, NN_ARGS(i, j))
#define REST(rest, wide, i, j) tile_of(rest, wide, NN_ARGS(i, j))
  LUNET_CPU_OVER_TILES(m, n, ROWS, ROWS_NARROW, FULL, REST)
#undef FULL
#undef REST
#undef NN_ARGS
}

void lunet_cpu_tile_gemm_nn(int64_t m, int64_t n, int64_t k, const float *restrict a, int64_t lda,
                            const float *restrict b, int64_t ldb, const float *restrict bias, bool add,
                            float *restrict c, int64_t ldc) {
  lunet_cpu_tile_gemm_nn_segments(m, n, k, 1, a, lda, 0, b, ldb, bias, add, c, ldc);
}

/* A tile whose rows of a start anywhere: a(s, r, p) = rows[r][s * sa + p]
 * (a direct convolution's output pixels, consecutive across the ends of
 * output rows and samples, so every tile is whole but the chunk's last). */
static inline __attribute__((always_inline)) TARGET void tile_rows(const int R, const int V, int64_t k, int64_t segs,
                                                                   const float *const *rows, int64_t sa,
                                                                   const float *restrict b, int64_t ldb,
                                                                   const float *restrict bias, bool add,
                                                                   float *restrict c, int64_t ldc) {
  __m512 acc[ROWS_NARROW][4];
  const float *ar[ROWS_NARROW];
  for (int r = 0; r < R; r++) ar[r] = rows[r];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++)
      acc[r][v] = add ? _mm512_loadu_ps(c + r * ldc + 16 * v)
                : bias ? _mm512_loadu_ps(bias + 16 * v) : _mm512_setzero_ps();
  for (int64_t s = 0; s < segs; s++) {
    const float *restrict bs = b + s * k * ldb;
    for (int64_t p = 0; p < k; p++) {
      __m512 bv[4];
      for (int v = 0; v < V; v++) bv[v] = _mm512_loadu_ps(bs + p * ldb + 16 * v);
      for (int r = 0; r < R; r++) {
        __m512 av = _mm512_set1_ps(ar[r][s * sa + p]);
        for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

static inline __attribute__((always_inline)) TARGET void tile_rows_of(int rest, bool wide, int64_t k, int64_t segs,
                                                                      const float *const *rows, int64_t sa,
                                                                      const float *restrict b, int64_t ldb,
                                                                      const float *restrict bias, bool add,
                                                                      float *restrict c, int64_t ldc) {
#define TILE(R, V) tile_rows(R, V, k, segs, rows, sa, b, ldb, bias, add, c, ldc)
  LUNET_CPU_TILE_REMAINDER(rest, wide, TILE);
#undef TILE
}

TARGET void lunet_cpu_tile_gemm_nn_rows(int64_t m, int64_t n, int64_t k, int64_t segs, const float *const *rows,
                                        int64_t sa, const float *restrict b, int64_t ldb,
                                        const float *restrict bias, bool add, float *restrict c, int64_t ldc) {
#define ROWS_ARGS(i, j) k, segs, rows + (i), sa, b + (j), ldb, bias ? bias + (j) : NULL, add, c + (i) * ldc + (j), ldc
#define FULL(R, V, i, j) tile_rows(R, V, ROWS_ARGS(i, j))
#define REST(rest, wide, i, j) tile_rows_of(rest, wide, ROWS_ARGS(i, j))
  LUNET_CPU_OVER_TILES(m, n, ROWS, ROWS_NARROW, FULL, REST)
#undef FULL
#undef REST
#undef ROWS_ARGS
}

TARGET void lunet_cpu_tile_gemm_tn_segments(int64_t m, int64_t n, int64_t k, int64_t segs, const float *restrict a,
                                            int64_t lda, int64_t sa, const float *restrict b, int64_t ldb,
                                            float *restrict c, int64_t ldc, bool add) {
  /* c's rows are a's columns */
#define TN_ARGS(p, j) m, segs, a + (p), sa, 1, lda, b + (j), ldb, NULL, add, c + (p) * ldc + (j), ldc
#define FULL(R, V, p, j) tile(R, V, TN_ARGS(p, j))
#define REST(rest, wide, p, j) tile_of(rest, wide, TN_ARGS(p, j))
  LUNET_CPU_OVER_TILES(k, n, ROWS, ROWS_NARROW, FULL, REST)
#undef FULL
#undef REST
#undef TN_ARGS
}

void lunet_cpu_tile_gemm_tn(int64_t m, int64_t n, int64_t k, const float *restrict a, int64_t lda,
                            const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, bool add) {
  lunet_cpu_tile_gemm_tn_segments(m, n, k, 1, a, lda, 0, b, ldb, c, ldc, add);
}

bool lunet_cpu_tile_gemm_fits(int64_t n) { return lunet_cpu_isa_in_use == LUNET_CPU_AVX512 && n % 32 == 0 && n > 0; }
