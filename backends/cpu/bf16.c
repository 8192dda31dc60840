/*
 * bfloat16 products for mixed precision (Keras's "mixed_bfloat16"): every
 * operand rounded to bfloat16, the products summed in float32.
 *
 *   With AVX512-BF16, vdpbf16ps adds to each of 16 float32 accumulators
 *   a0 b0 + a1 b1 from two pairs of bfloat16: twice vfmadd231ps's
 *   multiply-adds per instruction, and half the bytes per operand.  So the
 *   operands are packed as pairs along the summed axis (k):
 *
 *     a: (m, k/2) words, word (i, p) = a[i][2p] | a[i][2p + 1] << 16
 *     b: (k/2, n) words, word (p, j) = b[2p][j] | b[2p + 1][j] << 16
 *
 *   (the low half is the even k; an odd k's last pair is completed with a
 *   zero), and tile_gemm.c's register tile (6 rows by 64 columns, 24 zmm
 *   accumulators; 12 by 32) walks k two at a time: per pair 4 loads of b,
 *   6 broadcasts of a's words, 24 vdpbf16ps.
 *
 *   pack_rows makes a's words from rows contiguous in k (im2col rows, dy
 *   rows, a row-major a); pack_pairs makes b's words from two rows (2p,
 *   2p + 1) of a matrix, and also a's words for the filter gradient, whose
 *   sum runs over rows of im2col.
 *
 * Conversion is VCVTNEPS2BF16's round to nearest even (lunet_bf16_round in
 * lunet/backend.h is the plain-C statement of it, which the naive
 * reference and the emulated path use).  Without AVX512-BF16, or with
 * LUNET_CPU_ISA below avx512, the backend rounds the operands into float32
 * copies and runs the float32 kernels (conv.c): the same numbers up to the
 * order of the sums, at float32 speed.
 */
#include <immintrin.h>
#include "cpu.h"

#define ROWS 6
#define ROWS_NARROW 12
#define TARGET __attribute__((target("avx512f,avx512bf16")))

bool lunet_cpu_bf16 = false;

bool lunet_cpu_bf16_fits(int64_t n) { return lunet_cpu_bf16 && n % 32 == 0 && n > 0; }

/* ---- packing ---- */

/* 16 floats as bfloat16 in the low halves of 16 words. */
static inline __attribute__((always_inline)) TARGET __m512i low_halves(__m512 v) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

static inline __mmask16 first(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

TARGET void lunet_cpu_bf16_pack_rows(uint32_t *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                                     int64_t rows, int64_t k) {
  for (int64_t i = 0; i < rows; i++) {
    const float *s = src + i * lds;
    uint32_t *d = dst + i * ldd;
    for (int64_t j = 0; j < k; j += 32) {
      __m512 lo = _mm512_maskz_loadu_ps(first(k - j), s + j);
      __m512 hi = _mm512_maskz_loadu_ps(k - j > 16 ? first(k - j - 16) : 0, s + j + 16);
      int64_t words = (k - j + 1) / 2;
      _mm512_mask_storeu_epi32(d + j / 2, first(words), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

TARGET void lunet_cpu_bf16_pack_pairs(uint32_t *restrict dst, int64_t ldd, const float *restrict src, int64_t lds,
                                      int64_t rows, int64_t n) {
  for (int64_t q = 0; 2 * q < rows; q++) {
    const float *r0 = src + 2 * q * lds, *r1 = 2 * q + 1 < rows ? r0 + lds : NULL;
    uint32_t *d = dst + q * ldd;
    for (int64_t j = 0; j < n; j += 16) {
      __mmask16 mk = first(n - j);
      __m512i lo = low_halves(_mm512_maskz_loadu_ps(mk, r0 + j));
      __m512i hi = r1 ? low_halves(_mm512_maskz_loadu_ps(mk, r1 + j)) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(d + j, mk, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

/* ---- the register tile ---- */

/* c[r][16 v + ..] for r < R, v < V = sum over word p < kp of the pair
 * products of a(r, p) = a[r * ar + p * ap] and b[p][16 v + ..], starting
 * from the bias, c's old values (add) or zero. */
static inline __attribute__((always_inline)) TARGET void tile(const int R, const int V, int64_t kp,
                                                              const uint32_t *restrict a, int64_t ar, int64_t ap,
                                                              const uint32_t *restrict b, int64_t ldb,
                                                              const float *restrict bias, bool add,
                                                              float *restrict c, int64_t ldc) {
  __m512 acc[ROWS_NARROW][4];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++)
      acc[r][v] = add ? _mm512_loadu_ps(c + r * ldc + 16 * v)
                : bias ? _mm512_loadu_ps(bias + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; p++) {
    __m512bh bv[4];
    for (int v = 0; v < V; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + p * ldb + 16 * v);
    for (int r = 0; r < R; r++) {
      __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * ar + p * ap]);
      for (int v = 0; v < V; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
}

/* Rows past the last whole tile, with R and V compile-time constants. */
static inline __attribute__((always_inline)) TARGET void tile_of(int rows, bool wide, int64_t kp,
                                                                 const uint32_t *restrict a, int64_t ar, int64_t ap,
                                                                 const uint32_t *restrict b, int64_t ldb,
                                                                 const float *restrict bias, bool add,
                                                                 float *restrict c, int64_t ldc) {
#define TILE(R, V) tile(R, V, kp, a, ar, ap, b, ldb, bias, add, c, ldc)
  LUNET_CPU_TILE_REMAINDER(rows, wide, TILE);
#undef TILE
}

/* Rows [0, rows) of c over all its columns: row i of the tile is a(i) =
 * a + i * ar (words ap apart along k). */
static inline __attribute__((always_inline)) TARGET void tiles(int64_t rows, int64_t n, int64_t kp,
                                                               const uint32_t *restrict a, int64_t ar, int64_t ap,
                                                               const uint32_t *restrict b, int64_t ldb,
                                                               const float *restrict bias, bool add,
                                                               float *restrict c, int64_t ldc) {
#define ARGS(i, j) kp, a + (i) * ar, ar, ap, b + (j), ldb, bias ? bias + (j) : NULL, add, c + (i) * ldc + (j), ldc
#define FULL(R, V, i, j) tile(R, V, ARGS(i, j))
#define REST(count, wide, i, j) tile_of(count, wide, ARGS(i, j))
  LUNET_CPU_OVER_TILES(rows, n, ROWS, ROWS_NARROW, FULL, REST)
#undef FULL
#undef REST
#undef ARGS
}

TARGET void lunet_cpu_bf16_gemm_nn(int64_t m, int64_t n, int64_t kp, const uint32_t *restrict a, int64_t lda,
                                   const uint32_t *restrict b, int64_t ldb, const float *restrict bias, bool add,
                                   float *restrict c, int64_t ldc) {
  tiles(m, n, kp, a, lda, 1, b, ldb, bias, add, c, ldc);
}

TARGET void lunet_cpu_bf16_gemm_tn(int64_t mp, int64_t n, int64_t k, const uint32_t *restrict a, int64_t lda,
                                   const uint32_t *restrict b, int64_t ldb, float *restrict c, int64_t ldc,
                                   bool add) {
  tiles(k, n, mp, a, 1, lda, b, ldb, NULL, add, c, ldc);
}

/* ---- the emulated path ---- */

/* lunet_bf16_round without branches, so that it vectorizes. */
static inline __attribute__((always_inline)) void round_copy_body(uint32_t *restrict y, const uint32_t *restrict x,
                                                                  size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t u = x[i], nearest = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    uint32_t nan = (u | 0x00400000u) & 0xffff0000u, zero = u & 0x80000000u;
    y[i] = (u & 0x7fffffffu) > 0x7f800000u ? nan : (u & 0x7f800000u) == 0 ? zero : nearest;
  }
}
LUNET_CPU_ISA_DISPATCH(round_copy, (uint32_t *restrict y, const uint32_t *restrict x, size_t n), (y, x, n))

typedef struct round_job {
  float *y;
  const float *x;
  size_t n;
} round_job;

static void round_task(void *arg, int64_t begin, int64_t end, int chunk) {
  round_job *j = arg;
  size_t b = (size_t)begin << 12, e = (size_t)end << 12 < j->n ? (size_t)end << 12 : j->n;
  round_copy((uint32_t *)j->y + b, (const uint32_t *)j->x + b, e - b);
}

void lunet_cpu_bf16_round(lunet_backend *be, float *y, const float *x, size_t n) {
  round_job j = {y, x, n};
  lunet_cpu_parallel(be, (int64_t)((n + 4095) >> 12), 16, round_task, &j);
}
