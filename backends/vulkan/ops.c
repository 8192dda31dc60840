/*
 * The Vulkan backend's ops: argument checks, push constants and dispatches.
 * The math is in the shaders (shaders/<family>.comp); the semantics are those of the CPU
 * backend's naive reference (backends/cpu/naive.c).
 *
 * Indices inside shaders are 32-bit: a tensor of 2^31 elements or more is
 * refused with a message rather than miscomputed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "vk.h"

#define MAX_ELEMS ((int64_t)INT32_MAX)

static int too_big(int64_t n, const char *op) {
  if (n >= 0 && n <= MAX_ELEMS) return 0;
  return lunet_vk_error(LUNET_ERR_ARG,
                        "%s: %lld elements is more than the Vulkan backend indexes (2^31 - "
                        "1); split the tensor",
                        op, (long long)n);
}

static uint32_t min_u32(size_t a, size_t b) { return (uint32_t)(a < b ? a : b); }

/* ---- memory-like ops ---- */

static int vk_fill(lunet_backend *be, lunet_buf y, float value, size_t n) {
  if (n == 0) return 0;
  lunet_vk_buffer *b = y;
  lunet_vk_record_begin(be);
  lunet_vk_pending *p = lunet_vk_defer(be, 0);
  int rc = LUNET_ERR_DEVICE;
  if (p) {
    p->kind = VK_PENDING_FILL;
    p->writes[p->nw++] = b->buf;
    p->fill.dst = b->buf;
    p->fill.bytes = n * sizeof(float);
    memcpy(&p->fill.bits, &value, sizeof p->fill.bits);
    rc = lunet_vk_commit(be, p, NULL, 0);
  }
  lunet_vk_record_end(be);
  return rc;
}

static int cast_mode(lunet_dtype ydt, lunet_dtype xdt) {
  if (xdt == LUNET_U8 && ydt == LUNET_F32) return 0;
  if (xdt == LUNET_I32 && ydt == LUNET_F32) return 1;
  if (xdt == LUNET_F32 && ydt == LUNET_U8) return 2;
  if (xdt == LUNET_F32 && ydt == LUNET_I32) return 3;
  if (xdt == LUNET_U8 && ydt == LUNET_I32) return 4;
  if (xdt == LUNET_I32 && ydt == LUNET_U8) return 5;
  return -1;
}

static int vk_cast(lunet_backend *be, lunet_buf y, lunet_dtype ydt, lunet_cbuf x, lunet_dtype xdt,
                   size_t n) {
  if (n == 0) return 0;
  if (ydt == xdt) return lunet_vk_buffer_copy(be, y, 0, x, 0, n * (ydt == LUNET_U8 ? 1 : 4));
  int mode = cast_mode(ydt, xdt);
  if (mode < 0)
    return lunet_vk_error(LUNET_ERR_ARG, "cast: dtype %d to %d is not known", (int)xdt, (int)ydt);
  int rc = too_big((int64_t)n, "cast");
  if (rc) return rc;
  uint32_t pc[1] = {(uint32_t)n};
  size_t items = mode == 2 || mode == 5 ? (n + 3) / 4 : n;
  return lunet_vk_dispatch(be, VK_SH_CAST, mode, (lunet_cbuf[]){y, x}, 2, pc, sizeof pc,
                           lunet_vk_groups(be, items), 1, 1);
}

typedef struct copy_pc {
  uint32_t ndim, total;
  int32_t x_off, y_off;
  int32_t shape[8], xs[8], ys[8];
} copy_pc;

static int vk_strided_copy(lunet_backend *be, lunet_buf y, lunet_cbuf x,
                           const lunet_strided_desc *d) {
  int64_t total = 1, words = d->elem_size / 4;
  bool bytes = d->elem_size == 1;
  if (!bytes && (d->elem_size == 0 || d->elem_size % 4 != 0))
    return lunet_vk_error(LUNET_ERR_UNSUPPORTED,
                          "strided_copy: elements of %zu bytes (the Vulkan backend copies 1 "
                          "and multiples of 4)",
                          d->elem_size);
  if (d->ndim < 0 || d->ndim > LUNET_MAX_DIMS || (words > 1 && d->ndim == LUNET_MAX_DIMS))
    return lunet_vk_error(LUNET_ERR_ARG, "strided_copy: %d dims", d->ndim);
  copy_pc pc = {.ndim = (uint32_t)d->ndim};
  int64_t scale = bytes ? 1 : words, xo = d->x_offset * scale, yo = d->y_offset * scale;
  int rc = too_big(xo, "strided_copy") || too_big(yo, "strided_copy");
  for (int i = 0; i < d->ndim && !rc; i++) {
    total *= d->shape[i];
    int64_t xs = d->x_strides[i] * scale, ys = d->y_strides[i] * scale;
    if (d->shape[i] > MAX_ELEMS || llabs(xs) > MAX_ELEMS || llabs(ys) > MAX_ELEMS)
      rc = too_big(MAX_ELEMS + 1, "strided_copy");
    pc.shape[i] = (int32_t)d->shape[i];
    pc.xs[i] = (int32_t)xs;
    pc.ys[i] = (int32_t)ys;
  }
  if (words > 1) {
    /* A wide element is an extra innermost axis of 4-byte words. */
    pc.shape[pc.ndim] = (int32_t)words;
    pc.xs[pc.ndim] = pc.ys[pc.ndim] = 1;
    pc.ndim++;
    total *= words;
  }
  if (rc || (rc = too_big(total, "strided_copy"))) return rc;
  if (total == 0) return 0;
  pc.total = (uint32_t)total;
  pc.x_off = (int32_t)xo;
  pc.y_off = (int32_t)yo;
  return lunet_vk_dispatch(be, VK_SH_COPY, bytes ? 1 : 0, (lunet_cbuf[]){y, x}, 2, &pc, sizeof pc,
                           lunet_vk_groups(be, (size_t)total), 1, 1);
}

/* y (n, row_bytes) = x rows idx[i]: one transfer with a region per run of
 * consecutive rows. */
static int vk_gather_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx,
                          size_t n, size_t row_bytes) {
  const lunet_vk_buffer *src = x;
  lunet_vk_buffer *dst = y;
  if (n == 0 || row_bytes == 0) return 0;
  if (n * row_bytes > dst->size)
    return lunet_vk_error(LUNET_ERR_ARG,
                          "gather_rows: %zu rows of %zu bytes overflow the "
                          "output",
                          n, row_bytes);
  VkBufferCopy *r = malloc(n * sizeof *r);
  if (!r) return lunet_vk_error(LUNET_ERR_NOMEM, "gather_rows: out of host memory");
  uint32_t nr = 0;
  for (size_t i = 0; i < n; i++) {
    if (idx[i] < 0 || (size_t)(idx[i] + 1) * row_bytes > src->size) {
      free(r);
      return lunet_vk_error(LUNET_ERR_ARG,
                            "gather_rows: index %lld at %zu is outside the "
                            "%zu rows of the source",
                            (long long)idx[i], i, src->size / row_bytes);
    }
    VkDeviceSize so = (VkDeviceSize)idx[i] * row_bytes, d = i * row_bytes;
    if (nr && r[nr - 1].srcOffset + r[nr - 1].size == so &&
        r[nr - 1].dstOffset + r[nr - 1].size == d)
      r[nr - 1].size += row_bytes;
    else
      r[nr++] = (VkBufferCopy){so, d, row_bytes};
  }
  int rc = lunet_vk_copy_regions(be, dst, src, r, nr);
  if (!rc) be->stats.bytes_copied += (uint64_t)n * row_bytes;
  free(r);
  return rc;
}

/* ---- elementwise ---- */

typedef struct unary_pc {
  uint32_t n, op, has_x, has_y;
  float alpha, beta;
} unary_pc;

static int vk_unary(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf y,
                    lunet_cbuf x, size_t n) {
  if ((unsigned)op >= LUNET_UNARY_COUNT)
    return lunet_vk_error(LUNET_ERR_ARG, "unary: unknown op %d", (int)op);
  int rc = too_big((int64_t)n, "unary");
  if (rc || n == 0) return rc;
  unary_pc pc = {(uint32_t)n, (uint32_t)op, 1, 0, alpha, beta};
  return lunet_vk_dispatch(be, VK_SH_UNARY, 0, (lunet_cbuf[]){y, x}, 2, &pc, sizeof pc,
                           lunet_vk_groups(be, n), 1, 1);
}

static int vk_unary_backward(lunet_backend *be, lunet_unary_op op, float alpha, float beta,
                             lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y, size_t n) {
  if ((unsigned)op >= LUNET_UNARY_COUNT)
    return lunet_vk_error(LUNET_ERR_ARG, "unary_backward: unknown op %d", (int)op);
  int rc = too_big((int64_t)n, "unary_backward");
  if (rc || n == 0) return rc;
  unary_pc pc = {(uint32_t)n, (uint32_t)op, x != NULL, y != NULL, alpha, beta};
  return lunet_vk_dispatch(be, VK_SH_UNARY, 1, (lunet_cbuf[]){dx, x, dy, y}, 4, &pc, sizeof pc,
                           lunet_vk_groups(be, n), 1, 1);
}

typedef struct binary_pc {
  uint32_t ndim, total, op, pad;
  int32_t shape[8], as[8], bs[8];
} binary_pc;

/* Drops unit axes and merges axes that are contiguous in both inputs, so a
 * same-shape op is one flat loop. */
static int vk_binary(lunet_backend *be, lunet_binary_op op, lunet_buf y, lunet_cbuf a, lunet_cbuf b,
                     const lunet_bcast_desc *d) {
  if ((unsigned)op >= LUNET_BINARY_COUNT)
    return lunet_vk_error(LUNET_ERR_ARG, "binary: unknown op %d", (int)op);
  if (d->ndim < 0 || d->ndim > LUNET_MAX_DIMS)
    return lunet_vk_error(LUNET_ERR_ARG, "binary: %d dims", d->ndim);
  int64_t sh[8], as[8], bs[8], total = 1;
  int nd = 0;
  for (int i = 0; i < d->ndim; i++) {
    total *= d->shape[i];
    if (d->shape[i] == 1) continue;
    if (nd && as[nd - 1] == d->a_strides[i] * d->shape[i] &&
        bs[nd - 1] == d->b_strides[i] * d->shape[i]) {
      sh[nd - 1] *= d->shape[i];
    } else {
      sh[nd] = d->shape[i];
      nd++;
    }
    as[nd - 1] = d->a_strides[i];
    bs[nd - 1] = d->b_strides[i];
  }
  int rc = too_big(total, "binary");
  if (rc || total == 0) return rc;
  binary_pc pc = {.ndim = (uint32_t)(nd ? nd : 1), .total = (uint32_t)total, .op = (uint32_t)op};
  pc.shape[0] = 1;
  for (int i = 0; i < nd; i++) {
    pc.shape[i] = (int32_t)sh[i];
    pc.as[i] = (int32_t)as[i];
    pc.bs[i] = (int32_t)bs[i];
  }
  return lunet_vk_dispatch(be, VK_SH_BINARY, 0, (lunet_cbuf[]){y, a, b}, 3, &pc, sizeof pc,
                           lunet_vk_groups(be, (size_t)total), 1, 1);
}

/* ---- reductions ---- */

/* The iterations one invocation of a shader's long loop (scatter.comp's
 * sources, layernorm.comp's column sums, reduce.comp's share of a row) runs
 * in one dispatch, at most: lavapipe ends every shader loop
 * after 65,535 iterations (LP_MAX_TGSI_LOOP_ITERATIONS, shared by the loops
 * of an invocation) without an error, so a longer loop would leave a sum
 * short.  Longer runs are split over several dispatches. */
#define VK_LOOP_CHUNK 32768

/* An epilogue on a reduction's outputs (split-K's sum of slices for
 * linear): + bias[o % bias_cols] (bias_cols 0: none), then the ReLU. */
typedef struct reduce_epilogue {
  lunet_cbuf bias;
  uint32_t bias_cols, relu;
  lunet_cbuf mask; /* gemm_relu_mask: zero where mask <= 0 (NULL: none) */
} reduce_epilogue;

static int reduce_dispatch_ep(lunet_backend *be, int op, lunet_buf y, lunet_cbuf x, size_t outer, size_t len,
                              size_t inner, bool argmax, reduce_epilogue ep) {
  int rc = too_big((int64_t)(outer * len * inner), argmax ? "argmax" : "reduce");
  if (!rc) rc = too_big((int64_t)(outer * inner), argmax ? "argmax" : "reduce");
  if (rc || outer * inner == 0) return rc;
  uint32_t pc[10] = {(uint32_t)outer, (uint32_t)len, (uint32_t)inner, (uint32_t)op, ep.bias_cols, ep.relu,
                     ep.mask != NULL, 0, (uint32_t)len, 0};
  size_t outs = outer * inner;
  /* Many short reductions: one invocation each; else a workgroup each. */
  int mode = argmax ? 1 : (len <= 64 || outs >= 16384) ? 2 : 0;
  uint32_t groups = mode == 2 ? lunet_vk_groups(be, outs) : min_u32(outs, 65535);
  /* A workgroup's invocations each add len / workgroup size elements: past
   * VK_LOOP_CHUNK of them (lavapipe's loop limit) the sum goes in parts,
   * each into its slot of a buffer, then the parts are reduced (a mean's
   * parts divided by the whole length first, so they add up to it). */
  size_t part = (size_t)VK_LOOP_CHUNK * be->wg;
  if (mode != 0 || len <= part || (outs + 65534) / 65535 > 1)
    return lunet_vk_dispatch(be, VK_SH_REDUCE, mode, (lunet_cbuf[]){y, x, ep.bias, ep.mask}, 4, pc, sizeof pc,
                             groups, 1, 1);
  size_t nparts = (len + part - 1) / part;
  lunet_buf ws = lunet_vk_buffer_alloc(be, nparts * outs * sizeof(float));
  if (!ws) return lunet_vk_error(LUNET_ERR_NOMEM, "reduce: out of device memory for %zu partial sums", nparts * outs);
  pc[4] = pc[5] = pc[6] = 0; /* the epilogue goes to the sum of the parts */
  for (size_t q = 0; !rc && q < nparts; q++) {
    pc[7] = (uint32_t)(q * part);
    pc[8] = (uint32_t)(len - q * part < part ? len : (q + 1) * part);
    pc[9] = (uint32_t)(q * outs);
    rc = lunet_vk_dispatch(be, VK_SH_REDUCE, 0, (lunet_cbuf[]){ws, x, NULL, NULL}, 4, pc, sizeof pc, groups, 1, 1);
  }
  if (!rc)
    rc = reduce_dispatch_ep(be, op == LUNET_REDUCE_MEAN ? LUNET_REDUCE_SUM : op, y, ws, 1, nparts, outs, false, ep);
  lunet_vk_buffer_free(be, ws);
  return rc;
}

static int reduce_dispatch(lunet_backend *be, int op, lunet_buf y, lunet_cbuf x, size_t outer, size_t len,
                           size_t inner, bool argmax) {
  return reduce_dispatch_ep(be, op, y, x, outer, len, inner, argmax, (reduce_epilogue){0});
}

static int vk_reduce(lunet_backend *be, lunet_reduce_op op, lunet_buf y, lunet_cbuf x, size_t outer,
                     size_t len, size_t inner) {
  if ((unsigned)op >= LUNET_REDUCE_COUNT)
    return lunet_vk_error(LUNET_ERR_ARG, "reduce: unknown op %d", (int)op);
  return reduce_dispatch(be, op, y, x, outer, len, inner, false);
}

static int vk_argmax(lunet_backend *be, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols) {
  return reduce_dispatch(be, 0, y, x, rows, cols, 1, true);
}

/* ---- GEMM and convolution (gemm.comp) ---- */

/* Split-K (split_k below): the workgroups to reach (a device runs a few
 * hundred at once: 132 SMs x 2 on an H200, fewer elsewhere) and the least
 * K a slice sums. */
#define SPLIT_TARGET 256
#define SPLIT_MIN_K 256

typedef struct gemm_pc {
  uint32_t m, n, k, ta, tb, batch;
  int32_t sa, sb, sc;
  float alpha, beta;
  int32_t cn, h, w, c, f, kh, kw, sh, sw, pt, pl, oh, ow;
  uint32_t has_bias;
  uint32_t splits; /* OP 3, and OP 0 with one batch entry: slices of K summed apart (split-K) */
  uint32_t bf16;   /* mixed precision: the operands rounded to bfloat16 as fetched */
  uint32_t relu;   /* OP 0 (linear): the ReLU after alpha ab + beta c + bias */
  uint32_t relu_mask; /* OP 0 (gemm_relu_mask): then zero where the mask is <= 0 */
} gemm_pc;

/* Blocks of tile << v along a dimension of n: each workgroup's
 * invocations hold 1 << v outputs each along it in registers (gemm.comp). */
static uint32_t tiles(lunet_backend *be, int64_t n, int v) {
  int64_t bs = (int64_t)be->tile << v, t = (n + bs - 1) / bs;
  return (uint32_t)(t < 1 ? 1 : t > 65535 ? 65535 : t);
}

/* A product's register blocking: each invocation RM = 1 << vm rows by
 * RN = 1 << vn columns of outputs, a workgroup's block tile RM x tile RN; and
 * vec: bit 0 A's RM elements an invocation fetches are one vector load,
 * bit 1 B's RN (vec_bits). */
typedef struct blocks {
  int vm, vn, vec;
} blocks;

/* The blocking of an (m, n) product: of those whose blocks make at least
 * SPLIT_TARGET workgroups, the one of least work, counted as each
 * invocation's multiply-adds and shared-memory reads per step of K (RM RN
 * + RM + RN) over every block launched, edges and all: big products run
 * 64 x 64 blocks (16 outputs per invocation, a quarter of the reads per
 * multiply-add of one output each), one 32 wide 64 x 32 (a 64 x 64 block
 * would be half empty: twice the multiply-adds for the same outputs), and
 * small ones the smallest blocks, keeping the device busy (and split-K). */
static blocks blocking(lunet_backend *be, int64_t m, int64_t n) {
  blocks best = {0, 0, 0};
  int64_t best_cost = -1;
  for (int vm = 0; vm <= 2; vm++)
    for (int vn = 0; vn <= 2; vn++) {
      int64_t wg = (int64_t)tiles(be, m, vm) * tiles(be, n, vn), rm = 1 << vm, rn = 1 << vn;
      int64_t cost = wg * (rm * rn + rm + rn);
      if ((vm || vn) && wg >= SPLIT_TARGET && (best_cost < 0 || cost <= best_cost)) {
        best = (blocks){vm, vn, 0};
        best_cost = cost;
      }
    }
  return best;
}

/* gemm.comp's MODE: the op, the blocking and the vector loads. */
static int gemm_mode(int op, blocks b) { return op + 4 * b.vm + 16 * b.vn + 64 * b.vec; }

/* b with its vec bits: an invocation reads RM (A) or RN (B) consecutive
 * elements of each operand along its contiguous dimension, in one vector
 * load where that dimension's extent is a multiple of them (so every group
 * lies wholly inside the operand, aligned; blocks of a batch of products
 * are 1 x 1, so batch strides never matter). */
static blocks vec_bits(blocks b, int64_t a_extent, int64_t b_extent) {
  b.vec = (a_extent % ((int64_t)1 << b.vm) == 0) | (b_extent % ((int64_t)1 << b.vn) == 0) << 1;
  return b;
}

/* Split-K: a product whose output makes fewer than SPLIT_TARGET
 * workgroups but whose K is long would have each workgroup walk all of K
 * while the device idles.  The slices of K to reach the target, each at
 * least SPLIT_MIN_K long, at most 64 (the reduction adds each output's
 * slices in one invocation); 1 when it does not pay. */
static int64_t split_k(int64_t workgroups, int64_t k) {
  if (workgroups >= SPLIT_TARGET || k < 2 * SPLIT_MIN_K) return 1;
  int64_t s = (SPLIT_TARGET + workgroups - 1) / workgroups;
  if (s > k / SPLIT_MIN_K) s = k / SPLIT_MIN_K;
  return s > 64 ? 64 : s;
}

/* The product of pc (MODE 0 or 3) in `splits` slices of K, each into its
 * own (M, N) part of a workspace, then summed into c by one reduction. */
static int split_dispatch(lunet_backend *be, int mode, gemm_pc *pc, int64_t splits, lunet_buf c, lunet_cbuf a,
                          lunet_cbuf b, const char *op, int64_t m, int64_t n, int64_t k, int64_t workgroups,
                          reduce_epilogue ep) {
  lunet_buf ws = lunet_vk_buffer_alloc(be, (size_t)(splits * m * n) * sizeof(float));
  if (!ws) return LUNET_ERR_NOMEM;
  pc->splits = (uint32_t)splits;
  lunet_backend_log_gemm(&be->stats, op, m, n, k, workgroups * splits);
  int rc = lunet_vk_dispatch(be, VK_SH_GEMM, mode, (lunet_cbuf[]){ws, a, b}, 3, pc, sizeof *pc, tiles(be, n, 0),
                             tiles(be, m, 0), (uint32_t)splits);
  if (!rc) rc = reduce_dispatch_ep(be, LUNET_REDUCE_SUM, c, ws, 1, (size_t)splits, (size_t)(m * n), false, ep);
  lunet_vk_buffer_free(be, ws);
  return rc;
}

/* c = alpha op(a) op(b) + beta c, then (linear) + bias (NULL: none) and the
 * ReLU, then (gemm_relu_mask) zero where mask <= 0 (NULL: none). */
static int gemm_ep(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                   lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc,
                   int64_t batch, bool bf16, lunet_cbuf bias, bool relu, lunet_cbuf mask) {
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    return lunet_vk_error(LUNET_ERR_SHAPE,
                          "gemm: negative size m=%lld n=%lld k=%lld "
                          "batch=%lld",
                          (long long)m, (long long)n, (long long)k, (long long)batch);
  if (m == 0 || n == 0 || batch == 0) return 0;
  int rc = too_big(m * k + (batch - 1) * sa, "gemm");
  if (!rc) rc = too_big(k * n + (batch - 1) * sb, "gemm");
  if (!rc) rc = too_big(m * n + (batch - 1) * sc, "gemm");
  if (rc) return rc;
  gemm_pc pc = {.m = (uint32_t)m,
                .n = (uint32_t)n,
                .k = (uint32_t)k,
                .ta = ta,
                .tb = tb,
                .batch = (uint32_t)batch,
                .sa = (int32_t)sa,
                .sb = (int32_t)sb,
                .sc = (int32_t)sc,
                .alpha = alpha,
                .beta = beta,
                .bf16 = bf16,
                .has_bias = bias != NULL,
                .relu = relu,
                .relu_mask = mask != NULL};
  /* a batch of products fills the device with its entries */
  blocks v = vec_bits(batch > 1 ? (blocks){0, 0, 0} : blocking(be, m, n), ta ? m : k, tb ? k : n);
  int64_t wg = (int64_t)tiles(be, n, v.vn) * tiles(be, m, v.vm), splits = 1;
  if (batch == 1 && alpha == 1.0f && beta == 0.0f) splits = split_k(wg, k);
  /* split: the bias and the ReLU go to the reduction that sums the slices */
  if (splits > 1)
    return split_dispatch(be, 0, &pc, splits, c, a, b, "gemm", m, n, k, wg,
                          (reduce_epilogue){bias, bias ? (uint32_t)n : 0, relu, mask});
  lunet_backend_log_gemm(&be->stats, "gemm", m * batch, n, k, wg * min_u32((size_t)batch, 65535));
  return lunet_vk_dispatch(be, VK_SH_GEMM, gemm_mode(0, v), (lunet_cbuf[]){c, a, b, bias, mask}, 5, &pc,
                           sizeof pc, tiles(be, n, v.vn), tiles(be, m, v.vm), min_u32((size_t)batch, 65535));
}

static int gemm(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, lunet_cbuf a,
                int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c, int64_t sc, int64_t batch, bool bf16) {
  return gemm_ep(be, ta, tb, m, n, k, alpha, a, sa, b, sb, beta, c, sc, batch, bf16, NULL, false, NULL);
}

static int vk_linear(lunet_backend *be, int64_t m, int64_t n, int64_t k, lunet_cbuf a, lunet_cbuf b, lunet_cbuf bias,
                     bool relu, lunet_buf c) {
  return gemm_ep(be, false, false, m, n, k, 1.0f, a, 0, b, 0, 0.0f, c, m * n, 1, false, bias, relu, NULL);
}

static int vk_gemm_relu_mask(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, lunet_cbuf a,
                             lunet_cbuf b, lunet_cbuf mask, lunet_buf c) {
  return gemm_ep(be, ta, tb, m, n, k, 1.0f, a, 0, b, 0, 0.0f, c, m * n, 1, false, NULL, false, mask);
}

static int check_conv(const lunet_conv2d_desc *d, const char *op) {
  char text[256];
  if (!lunet_conv2d_desc_ok(d, text, sizeof text))
    return lunet_vk_error(LUNET_ERR_SHAPE,
                          "%s: bad geometry %s (fill it with lunet_conv2d_geometry)", op, text);
  int rc = too_big(d->n * d->h * d->w * d->c, op);
  if (!rc) rc = too_big(d->n * d->oh * d->ow * d->f, op);
  if (!rc) rc = too_big(d->kh * d->kw * d->c * d->f, op);
  return rc;
}

static gemm_pc conv_pc(const lunet_conv2d_desc *d, int64_t m, int64_t n, int64_t k, bool bf16) {
  return (gemm_pc){.bf16 = bf16,
                   .m = (uint32_t)m,
                   .n = (uint32_t)n,
                   .k = (uint32_t)k,
                   .batch = 1,
                   .alpha = 1.0f,
                   .cn = (int32_t)d->n,
                   .h = (int32_t)d->h,
                   .w = (int32_t)d->w,
                   .c = (int32_t)d->c,
                   .f = (int32_t)d->f,
                   .kh = (int32_t)d->kh,
                   .kw = (int32_t)d->kw,
                   .sh = (int32_t)d->sh,
                   .sw = (int32_t)d->sw,
                   .pt = (int32_t)d->pad_top,
                   .pl = (int32_t)d->pad_left,
                   .oh = (int32_t)d->oh,
                   .ow = (int32_t)d->ow};
}

/* x (N,H,W,C), w (KH,KW,C,F), bias (F) or NULL -> y (N,OH,OW,F) */
static int conv2d(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                  const lunet_conv2d_desc *d, bool bf16) {
  int rc = check_conv(d, "conv2d");
  if (rc || d->n == 0) return rc;
  int64_t m = d->n * d->oh * d->ow;
  gemm_pc pc = conv_pc(d, m, d->f, d->kh * d->kw * d->c, bf16);
  pc.has_bias = bias != NULL;
  blocks v = vec_bits(blocking(be, m, d->f), d->c, d->f);
  lunet_backend_log_gemm(&be->stats, "conv2d", m, d->f, d->kh * d->kw * d->c,
                         (int64_t)tiles(be, d->f, v.vn) * tiles(be, m, v.vm));
  return lunet_vk_dispatch(be, VK_SH_GEMM, gemm_mode(1, v), (lunet_cbuf[]){y, x, w, bias}, 4, &pc, sizeof pc,
                           tiles(be, d->f, v.vn), tiles(be, m, v.vm), 1);
}

/* dy (N,OH,OW,F), w (KH,KW,C,F) -> dx (N,H,W,C) */
static int conv2d_backward_data(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                const lunet_conv2d_desc *d, bool bf16) {
  int rc = check_conv(d, "conv2d_backward_data");
  if (rc || d->n == 0) return rc;
  int64_t m = d->n * d->h * d->w;
  gemm_pc pc = conv_pc(d, m, d->c, d->kh * d->kw * d->f, bf16);
  blocks v = vec_bits(blocking(be, m, d->c), d->f, d->f); /* dy's and w's runs along k are F long */
  lunet_backend_log_gemm(&be->stats, "conv2d_backward_data", m, d->c, d->kh * d->kw * d->f,
                         (int64_t)tiles(be, d->c, v.vn) * tiles(be, m, v.vm));
  return lunet_vk_dispatch(be, VK_SH_GEMM, gemm_mode(2, v), (lunet_cbuf[]){dx, dy, w}, 3, &pc, sizeof pc,
                           tiles(be, d->c, v.vn), tiles(be, m, v.vm), 1);
}

/* dy (N,OH,OW,F), x (N,H,W,C) -> dw (KH,KW,C,F), db (F) or NULL */
static int conv2d_backward_filter(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy, lunet_cbuf x,
                                  const lunet_conv2d_desc *d, bool bf16) {
  int rc = check_conv(d, "conv2d_backward_filter");
  if (rc) return rc;
  int64_t m = d->kh * d->kw * d->c, rows = d->n * d->oh * d->ow;
  gemm_pc pc = conv_pc(d, m, d->f, rows, bf16);
  /* dw is small (KH*KW*C x F) and K = N*OH*OW long: split-K */
  blocks v = vec_bits(blocking(be, m, d->f), d->c, d->f);
  int64_t wg = (int64_t)tiles(be, d->f, v.vn) * tiles(be, m, v.vm), splits = v.vm || v.vn ? 1 : split_k(wg, rows);
  if (splits > 1) {
    rc = split_dispatch(be, 3, &pc, splits, dw, x, dy, "conv2d_backward_filter", m, d->f, rows, wg,
                        (reduce_epilogue){0});
  } else {
    lunet_backend_log_gemm(&be->stats, "conv2d_backward_filter", m, d->f, rows, wg);
    rc = lunet_vk_dispatch(be, VK_SH_GEMM, gemm_mode(3, v), (lunet_cbuf[]){dw, x, dy}, 3, &pc, sizeof pc,
                           tiles(be, d->f, v.vn), tiles(be, m, v.vm), 1);
  }
  if (rc || !db) return rc;
  return reduce_dispatch(be, LUNET_REDUCE_SUM, db, dy, 1, (size_t)rows, (size_t)d->f, false);
}

/* The products in float32 and, for mixed precision (ABI 2.3), with the
 * operands rounded to bfloat16 as gemm.comp fetches them: the same
 * shader, so bfloat16 is emulated (no faster than float32; no bfloat16
 * storage or cooperative-matrix path yet). */
#define PRODUCTS(suffix, bf16)                                                                                  \
  static int vk_gemm##suffix(lunet_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, \
                             lunet_cbuf a, int64_t sa, lunet_cbuf b, int64_t sb, float beta, lunet_buf c,       \
                             int64_t sc, int64_t batch) {                                                       \
    return gemm(be, ta, tb, m, n, k, alpha, a, sa, b, sb, beta, c, sc, batch, bf16);                            \
  }                                                                                                             \
  static int vk_conv2d##suffix(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,     \
                               const lunet_conv2d_desc *d) {                                                    \
    return conv2d(be, y, x, w, bias, d, bf16);                                                                  \
  }                                                                                                             \
  static int vk_conv2d_backward_data##suffix(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,      \
                                             const lunet_conv2d_desc *d) {                                      \
    return conv2d_backward_data(be, dx, dy, w, d, bf16);                                                        \
  }                                                                                                             \
  static int vk_conv2d_backward_filter##suffix(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,    \
                                               lunet_cbuf x, const lunet_conv2d_desc *d) {                      \
    return conv2d_backward_filter(be, dw, db, dy, x, d, bf16);                                                  \
  }
PRODUCTS(, false)
PRODUCTS(_bf16, true)

static int vk_bf16_native(lunet_backend *be) {
  (void)be;
  return 0;
}

/* ---- pooling ---- */

static int check_pool(const lunet_pool2d_desc *d, const char *op) {
  char text[256];
  if (!lunet_pool2d_desc_ok(d, text, sizeof text))
    return lunet_vk_error(LUNET_ERR_SHAPE,
                          "%s: bad geometry %s (fill it with lunet_pool2d_geometry)", op, text);
  int rc = too_big(d->n * d->h * d->w * d->c, op);
  return rc ? rc : too_big(d->n * d->oh * d->ow * d->c, op);
}

static int pool_dispatch(lunet_backend *be, int mode, lunet_buf out, lunet_cbuf x, lunet_cbuf dy,
                         const lunet_pool2d_desc *d, int64_t total) {
  int32_t pc[12] = {(int32_t)d->n,       (int32_t)d->h,        (int32_t)d->w,  (int32_t)d->c,
                    (int32_t)d->kh,      (int32_t)d->kw,       (int32_t)d->sh, (int32_t)d->sw,
                    (int32_t)d->pad_top, (int32_t)d->pad_left, (int32_t)d->oh, (int32_t)d->ow};
  if (total == 0) return 0;
  return lunet_vk_dispatch(be, VK_SH_POOL, mode, (lunet_cbuf[]){out, x, dy}, 3, pc, sizeof pc,
                           lunet_vk_groups(be, (size_t)total), 1, 1);
}

/* x (N,H,W,C) -> y (N,OH,OW,C) */
static int vk_pool2d(lunet_backend *be, lunet_pool_mode mode, lunet_buf y, lunet_cbuf x,
                     const lunet_pool2d_desc *d) {
  int rc = check_pool(d, "pool2d");
  if (rc) return rc;
  return pool_dispatch(be, mode == LUNET_POOL_MAX ? 0 : 1, y, x, NULL, d,
                       d->n * d->oh * d->ow * d->c);
}

/* dy (N,OH,OW,C), x (N,H,W,C) -> dx (N,H,W,C) */
static int vk_pool2d_backward(lunet_backend *be, lunet_pool_mode mode, lunet_buf dx, lunet_cbuf dy,
                              lunet_cbuf x, lunet_cbuf y, const lunet_pool2d_desc *d) {
  int rc = check_pool(d, "pool2d_backward");
  if (rc) return rc;
  return pool_dispatch(be, mode == LUNET_POOL_MAX ? 2 : 3, dx, x, dy, d, d->n * d->h * d->w * d->c);
}

/* ABI 2.4: max pooling with the ReLU after it (pool.comp's modes 4, 5) */
static int vk_max_pool2d_relu(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_pool2d_desc *d) {
  int rc = check_pool(d, "pool2d");
  return rc ? rc : pool_dispatch(be, 4, y, x, NULL, d, d->n * d->oh * d->ow * d->c);
}

static int vk_max_pool2d_relu_backward(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y,
                                       const lunet_pool2d_desc *d) {
  (void)y;
  int rc = check_pool(d, "pool2d_backward");
  return rc ? rc : pool_dispatch(be, 5, dx, x, dy, d, d->n * d->h * d->w * d->c);
}

/* ---- softmax family ---- */

static int softmax_dispatch(lunet_backend *be, int mode, lunet_cbuf const *bufs, int nbufs,
                            size_t rows, size_t cols, bool has_d) {
  int rc = too_big((int64_t)(rows * cols), "softmax");
  if (rc || rows == 0) return rc;
  uint32_t pc[3] = {(uint32_t)rows, (uint32_t)cols, has_d};
  return lunet_vk_dispatch(be, VK_SH_SOFTMAX, mode, bufs, nbufs, pc, sizeof pc,
                           min_u32(rows, 65535), 1, 1);
}

/* x, y (rows, cols) */
static int vk_softmax(lunet_backend *be, bool log, lunet_buf y, lunet_cbuf x, size_t rows,
                      size_t cols) {
  return softmax_dispatch(be, log ? 1 : 0, (lunet_cbuf[]){y, x}, 2, rows, cols, false);
}

/* dy, y, dx (rows, cols) */
static int vk_softmax_backward(lunet_backend *be, bool log, lunet_buf dx, lunet_cbuf dy,
                               lunet_cbuf y, size_t rows, size_t cols) {
  return softmax_dispatch(be, log ? 3 : 2, (lunet_cbuf[]){dx, dy, y}, 3, rows, cols, false);
}

/* logits (rows, cols), labels (rows) -> loss (rows), dlogits (rows, cols) or
 * NULL.  A label outside [0, cols) raises a flag on the device, reported by
 * the next synchronize() (the core calls it before reading any result), so
 * the labels need not come back to the host every step. */
static int vk_softmax_xent(lunet_backend *be, lunet_buf loss, lunet_buf dlogits, lunet_cbuf logits,
                           lunet_cbuf labels, size_t rows, size_t cols) {
  lunet_cbuf bufs[5] = {loss, logits, labels, dlogits, &be->errbuf};
  int rc = softmax_dispatch(be, 4, bufs, 5, rows, cols, dlogits != NULL);
  if (rc || rows == 0) return rc;
  uint32_t pc[3] = {(uint32_t)rows, (uint32_t)cols, 0};
  /* the flag's label: only the labels and errbuf bound, so that what reads
   * the loss or dlogits does not wait for it */
  lunet_cbuf flag_bufs[5] = {NULL, NULL, labels, NULL, &be->errbuf};
  return lunet_vk_dispatch(be, VK_SH_SOFTMAX, 5, flag_bufs, 5, pc, sizeof pc, 1, 1, 1);
}

/* ---- batch norm ---- */

typedef struct bn_pc {
  uint32_t rows, c, has_run, inference, has_gamma, has_beta;
  float momentum, eps;
} bn_pc;

/* x, y (rows, c); the stats (c) */
static int vk_batchnorm(lunet_backend *be, bool training, lunet_buf y, lunet_buf save_mean,
                        lunet_buf save_invstd, lunet_buf run_mean, lunet_buf run_var, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t c, float momentum,
                        float epsilon) {
  if (!training && (!run_mean || !run_var))
    return lunet_vk_error(LUNET_ERR_ARG, "batchnorm: inference needs the running mean "
                                         "and variance");
  int rc = too_big((int64_t)(rows * c), "batchnorm");
  if (rc || c == 0) return rc;
  bn_pc pc = {(uint32_t)rows, (uint32_t)c,   run_mean || run_var,
              !training,      gamma != NULL, beta != NULL,
              momentum,       epsilon};
  if (!training)
    return lunet_vk_dispatch(be, VK_SH_BATCHNORM, 1,
                             (lunet_cbuf[]){y, x, gamma, beta, run_mean, run_var}, 6, &pc,
                             sizeof pc, lunet_vk_groups(be, rows * c), 1, 1);
  /* Scratch for the stats the caller does not keep (the pool makes it free). */
  lunet_buf tmp[4] = {NULL};
  lunet_buf *need[4] = {&save_mean, &save_invstd, &run_mean, &run_var};
  for (int i = 0; i < 4 && !rc; i++)
    if (!*need[i] && (i < 2 || pc.has_run)) {
      if (!(tmp[i] = *need[i] = lunet_vk_buffer_alloc(be, c * sizeof(float))))
        rc = lunet_vk_error(LUNET_ERR_NOMEM, "batchnorm: out of device memory for stats");
    }
  if (!rc)
    rc = lunet_vk_dispatch(
        be, VK_SH_BATCHNORM, 0,
        (lunet_cbuf[]){NULL, x, NULL, NULL, save_mean, save_invstd, run_mean, run_var}, 8, &pc,
        sizeof pc, min_u32(c, 65535), 1, 1);
  if (!rc && rows)
    rc = lunet_vk_dispatch(be, VK_SH_BATCHNORM, 1,
                           (lunet_cbuf[]){y, x, gamma, beta, save_mean, save_invstd}, 6, &pc,
                           sizeof pc, lunet_vk_groups(be, rows * c), 1, 1);
  for (int i = 0; i < 4; i++) lunet_vk_buffer_free(be, tmp[i]);
  return rc;
}

/* dy, x, dx (rows, c); gamma, stats, dgamma, dbeta (c) */
static int vk_batchnorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta,
                                 lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma,
                                 lunet_cbuf save_mean, lunet_cbuf save_invstd, size_t rows,
                                 size_t c) {
  int rc = too_big((int64_t)(rows * c), "batchnorm_backward");
  if (rc || c == 0) return rc;
  bn_pc pc = {.rows = (uint32_t)rows, .c = (uint32_t)c, .has_gamma = gamma != NULL};
  lunet_buf tmp[2] = {NULL, NULL};
  if (!dgamma && !(tmp[0] = dgamma = lunet_vk_buffer_alloc(be, c * sizeof(float))))
    rc = LUNET_ERR_NOMEM;
  if (!dbeta && !(tmp[1] = dbeta = lunet_vk_buffer_alloc(be, c * sizeof(float))))
    rc = LUNET_ERR_NOMEM;
  if (rc) rc = lunet_vk_error(rc, "batchnorm_backward: out of device memory for sums");
  lunet_cbuf bufs[8] = {dx, x, gamma, dy, save_mean, save_invstd, dgamma, dbeta};
  if (!rc)
    rc =
        lunet_vk_dispatch(be, VK_SH_BATCHNORM, 2, bufs, 8, &pc, sizeof pc, min_u32(c, 65535), 1, 1);
  if (!rc && rows)
    rc = lunet_vk_dispatch(be, VK_SH_BATCHNORM, 3, bufs, 8, &pc, sizeof pc,
                           lunet_vk_groups(be, rows * c), 1, 1);
  lunet_vk_buffer_free(be, tmp[0]);
  lunet_vk_buffer_free(be, tmp[1]);
  return rc;
}

/* ---- dropout ---- */

static int vk_dropout_mask(lunet_backend *be, lunet_buf mask, size_t n, float rate, uint64_t seed,
                           uint64_t counter) {
  if (!(rate >= 0.0f && rate <= 1.0f))
    return lunet_vk_error(LUNET_ERR_ARG, "dropout_mask: rate %g is outside [0, 1]", (double)rate);
  int rc = too_big((int64_t)n, "dropout_mask");
  if (rc || n == 0) return rc;
  struct {
    uint32_t n, seed_lo, seed_hi, ctr_lo, ctr_hi;
    float rate, scale;
  } pc = {(uint32_t)n,
          (uint32_t)seed,
          (uint32_t)(seed >> 32),
          (uint32_t)counter,
          (uint32_t)(counter >> 32),
          rate,
          1.0f / (1.0f - rate)};
  return lunet_vk_dispatch(be, VK_SH_DROPOUT, 0, (lunet_cbuf[]){mask}, 1, &pc, sizeof pc,
                           lunet_vk_groups(be, n), 1, 1);
}

/* ---- optimizers (in place on p and the state, n each) ---- */

typedef struct optim_pc {
  uint32_t n, has_s1, has_s2, flag;
  float lr, a, b, eps, wd, step;
} optim_pc;

static int optim_dispatch(lunet_backend *be, int mode, lunet_buf p, lunet_cbuf g, lunet_buf s1,
                          lunet_buf s2, optim_pc *pc) {
  int rc = too_big((int64_t)pc->n, "optimizer update");
  if (rc || pc->n == 0) return rc;
  return lunet_vk_dispatch(be, VK_SH_OPTIM, mode, (lunet_cbuf[]){p, g, s1, s2}, 4, pc, sizeof *pc,
                           lunet_vk_groups(be, pc->n), 1, 1);
}

static int vk_sgd_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf velocity, size_t n,
                         float lr, float momentum, bool nesterov, float weight_decay) {
  if (!velocity && momentum != 0.0f)
    return lunet_vk_error(LUNET_ERR_ARG, "sgd_update: momentum %g needs a velocity buffer",
                          (double)momentum);
  optim_pc pc = {.n = (uint32_t)n,
                 .has_s1 = velocity != NULL,
                 .flag = nesterov,
                 .lr = lr,
                 .a = momentum,
                 .wd = weight_decay};
  return optim_dispatch(be, 0, p, g, velocity, NULL, &pc);
}

static int vk_adam_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf m, lunet_buf v,
                          size_t n, float lr, float beta1, float beta2, float epsilon,
                          float weight_decay, int64_t step) {
  if (step < 1)
    return lunet_vk_error(LUNET_ERR_ARG,
                          "adam_update: step is %lld, expected 1 or more (the count of "
                          "updates including this one)",
                          (long long)step);
  double t = (double)step;
  float alpha =
      (float)((double)lr * sqrt(1.0 - pow((double)beta2, t)) / (1.0 - pow((double)beta1, t)));
  optim_pc pc = {.n = (uint32_t)n,
                 .has_s1 = 1,
                 .has_s2 = 1,
                 .lr = lr,
                 .a = beta1,
                 .b = beta2,
                 .eps = epsilon,
                 .wd = weight_decay,
                 .step = alpha};
  return optim_dispatch(be, 1, p, g, m, v, &pc);
}

static int vk_rmsprop_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf ms,
                             lunet_buf mom, size_t n, float lr, float rho, float momentum,
                             float epsilon) {
  optim_pc pc = {.n = (uint32_t)n,
                 .has_s1 = 1,
                 .has_s2 = mom != NULL,
                 .lr = lr,
                 .a = rho,
                 .b = momentum,
                 .eps = epsilon};
  return optim_dispatch(be, 2, p, g, ms, mom, &pc);
}

/* update_multi: LUNET_VK_MULTI tensors a dispatch (optim_multi.comp), each
 * given workgroups in proportion to its size; tensor by tensor through the
 * single ops where the device cannot (be->multi_tensor). */
typedef struct multi_pc {
  uint32_t n[LUNET_VK_MULTI];
  uint32_t first[LUNET_VK_MULTI + 1];
  uint32_t count, has_s1, has_s2, flag;
  float lr, a, b, eps, wd, step;
} multi_pc;
_Static_assert(sizeof(multi_pc) <= LUNET_VK_PUSH_BYTES, "optim_multi's push constants");

static int update_single(lunet_backend *be, const lunet_update_desc *u, lunet_buf p, lunet_cbuf g, lunet_buf s1,
                         lunet_buf s2, size_t n) {
  if (u->kind == LUNET_UPDATE_SGD)
    return vk_sgd_update(be, p, g, s1, n, u->lr, u->momentum, u->nesterov, u->weight_decay);
  if (u->kind == LUNET_UPDATE_ADAM)
    return vk_adam_update(be, p, g, s1, s2, n, u->lr, u->beta1, u->beta2, u->epsilon, u->weight_decay, u->step);
  return vk_rmsprop_update(be, p, g, s1, s2, n, u->lr, u->rho, u->momentum, u->epsilon);
}

static int vk_update_multi(lunet_backend *be, const lunet_update_desc *u, int count, const lunet_buf *p,
                           const lunet_cbuf *g, const lunet_buf *s1, const lunet_buf *s2, const size_t *n) {
  if ((u->kind == LUNET_UPDATE_ADAM && (!s1 || !s2)) || (u->kind == LUNET_UPDATE_RMSPROP && !s1))
    return lunet_vk_error(LUNET_ERR_ARG, "update_multi: %s needs its states",
                          u->kind == LUNET_UPDATE_ADAM ? "Adam" : "RMSprop");
  int rc = 0;
  if (!be->multi_tensor) {
    for (int t = 0; !rc && t < count; t++)
      rc = update_single(be, u, p[t], g[t], s1 ? s1[t] : NULL, s2 ? s2[t] : NULL, n[t]);
    return rc;
  }
  multi_pc pc = {.lr = u->lr, .eps = u->epsilon};
  int mode = u->kind == LUNET_UPDATE_SGD ? 0 : u->kind == LUNET_UPDATE_ADAM ? 1 : 2;
  if (u->kind == LUNET_UPDATE_SGD) {
    if (!s1 && u->momentum != 0.0f)
      return lunet_vk_error(LUNET_ERR_ARG, "sgd_update: momentum %g needs a velocity buffer", (double)u->momentum);
    pc.has_s1 = s1 != NULL, pc.flag = u->nesterov, pc.a = u->momentum, pc.wd = u->weight_decay;
  } else if (u->kind == LUNET_UPDATE_ADAM) {
    if (u->step < 1)
      return lunet_vk_error(LUNET_ERR_ARG,
                            "adam_update: step is %lld, expected 1 or more (the count of "
                            "updates including this one)",
                            (long long)u->step);
    double t = (double)u->step;
    pc.step = (float)((double)u->lr * sqrt(1.0 - pow((double)u->beta2, t)) / (1.0 - pow((double)u->beta1, t)));
    pc.has_s1 = pc.has_s2 = 1, pc.a = u->beta1, pc.b = u->beta2, pc.wd = u->weight_decay;
  } else {
    pc.has_s1 = 1, pc.has_s2 = s2 != NULL, pc.a = u->rho, pc.b = u->momentum;
  }
  for (int t = 0; !rc && t < count; t++) rc = too_big((int64_t)n[t], "optimizer update");
  /* up to LUNET_VK_MULTI non-empty tensors a dispatch, each with the
   * workgroups that cover it (at most 4096: the shader strides) */
  for (int t = 0; !rc && t < count;) {
    lunet_cbuf bufs[LUNET_VK_DESCRIPTORS] = {0};
    uint32_t k = 0, groups = 0;
    for (; t < count && k < LUNET_VK_MULTI; t++) {
      if (n[t] == 0) continue;
      uint32_t gt = lunet_vk_groups(be, n[t]);
      if (gt > 4096) gt = 4096;
      bufs[k] = p[t], bufs[LUNET_VK_MULTI + k] = g[t];
      bufs[2 * LUNET_VK_MULTI + k] = s1 ? s1[t] : NULL, bufs[3 * LUNET_VK_MULTI + k] = s2 ? s2[t] : NULL;
      pc.n[k] = (uint32_t)n[t], pc.first[k] = groups;
      groups += gt;
      k++;
    }
    if (k == 0) break;
    /* The slots the shader does not touch (tensors past k, absent states)
     * bind this dispatch's own buffers, not the placeholder: a write set of
     * the tensors alone (the placeholder, counted as written, would chain
     * this dispatch to every other that binds it). */
    for (uint32_t j = 0; j < LUNET_VK_MULTI; j++)
      for (int w = 0; w < 4; w++) {
        lunet_cbuf *slot = &bufs[w * LUNET_VK_MULTI + j];
        if (j >= k) *slot = bufs[w * LUNET_VK_MULTI];
        if (!*slot) *slot = bufs[j < k ? j : 0];
      }
    for (uint32_t j = k; j <= LUNET_VK_MULTI; j++) pc.first[j] = groups;
    for (uint32_t j = k; j < LUNET_VK_MULTI; j++) pc.n[j] = 0;
    pc.count = k;
    rc = lunet_vk_dispatch_multi(be, mode, bufs, &pc, sizeof pc, groups);
  }
  return rc;
}

/* ---- augmentation ---- */

/* x (N,H,W,C) -> y (N,OH,OW,C); mats (N,6) on the host, uploaded per call. */
static int vk_affine_resample(lunet_backend *be, lunet_buf y, lunet_cbuf x, const float *mats,
                              size_t n, size_t h, size_t w, size_t c, size_t oh, size_t ow,
                              lunet_fill_mode fill_mode, float fill) {
  int rc = too_big((int64_t)(n * h * w * c), "affine_resample");
  if (!rc) rc = too_big((int64_t)(n * oh * ow * c), "affine_resample");
  if (rc || n * oh * ow * c == 0) return rc;
  lunet_buf m = lunet_vk_buffer_alloc(be, n * 6 * sizeof(float));
  if (!m) return lunet_vk_error(LUNET_ERR_NOMEM, "affine_resample: out of device memory");
  rc = lunet_vk_buffer_upload(be, m, 0, mats, n * 6 * sizeof(float));
  struct {
    int32_t n, h, w, c, oh, ow, mode;
    float fill;
  } pc = {(int32_t)n,  (int32_t)h,  (int32_t)w,         (int32_t)c,
          (int32_t)oh, (int32_t)ow, (int32_t)fill_mode, fill};
  if (!rc)
    rc = lunet_vk_dispatch(be, VK_SH_RESAMPLE, 0, (lunet_cbuf[]){y, x, m}, 3, &pc, sizeof pc,
                           lunet_vk_groups(be, n * oh * ow * c), 1, 1);
  lunet_vk_buffer_free(be, m);
  return rc;
}

/* Sources grouped by target, stable: the plan scatter.comp reads. */
typedef struct scatter_src {
  int64_t target;
  size_t src;
  size_t run; /* its place among its target's sources, set after the sort */
} scatter_src;

static int cmp_scatter(const void *a, const void *b) {
  const scatter_src *p = a, *q = b;
  if (p->target != q->target) return p->target < q->target ? -1 : 1;
  return p->src < q->src ? -1 : p->src > q->src;
}

static int vk_scatter_add_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                               size_t cols) {
  int rc = too_big((int64_t)(n * cols), "scatter_add_rows");
  if (rc || n == 0 || cols == 0) return rc;
  scatter_src *s = malloc(n * sizeof *s);
  int32_t *plan = malloc((3 * n + 1) * sizeof *plan);
  if (!s || !plan) {
    free(s);
    free(plan);
    return lunet_vk_error(LUNET_ERR_NOMEM, "scatter_add_rows: out of host memory");
  }
  for (size_t i = 0; i < n; i++) s[i] = (scatter_src){idx[i], i, 0};
  qsort(s, n, sizeof *s, cmp_scatter);
  size_t most = 0; /* the most sources of one target */
  for (size_t i = 0; i < n; i++) {
    s[i].run = i > 0 && s[i].target == s[i - 1].target ? s[i - 1].run + 1 : 0;
    if (s[i].run + 1 > most) most = s[i].run + 1;
  }
  /* round r adds each target's sources r * VK_LOOP_CHUNK onwards, up to
   * VK_LOOP_CHUNK of them: one round unless a target has more */
  for (size_t r = 0; !rc && r * VK_LOOP_CHUNK < most; r++) {
    size_t u = 0, m = 0; /* targets and sources of this round */
    for (size_t i = 0; i < n; i++) {
      if (s[i].run < r * VK_LOOP_CHUNK || s[i].run >= (r + 1) * VK_LOOP_CHUNK) continue;
      if (s[i].run == r * VK_LOOP_CHUNK) u++;
      m++;
    }
    /* targets (u), offsets (u + 1), sources (m) */
    size_t t = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
      if (s[i].run < r * VK_LOOP_CHUNK || s[i].run >= (r + 1) * VK_LOOP_CHUNK) continue;
      if (s[i].run == r * VK_LOOP_CHUNK) {
        plan[t] = (int32_t)s[i].target;
        plan[u + t] = (int32_t)k;
        t++;
      }
      plan[2 * u + 1 + k++] = (int32_t)s[i].src;
    }
    plan[2 * u] = (int32_t)m;
    size_t bytes = (2 * u + 1 + m) * sizeof *plan;
    lunet_buf p = lunet_vk_buffer_alloc(be, bytes);
    rc = p ? lunet_vk_buffer_upload(be, p, 0, plan, bytes)
           : lunet_vk_error(LUNET_ERR_NOMEM, "scatter_add_rows: out of device memory");
    struct {
      uint32_t u, cols;
    } pc = {(uint32_t)u, (uint32_t)cols};
    if (!rc)
      rc = lunet_vk_dispatch(be, VK_SH_SCATTER, 0, (lunet_cbuf[]){y, x, p}, 3, &pc, sizeof pc,
                             lunet_vk_groups(be, u * cols), 1, 1);
    if (p) lunet_vk_buffer_free(be, p);
  }
  free(s);
  free(plan);
  return rc;
}

typedef struct lstm_pc {
  uint32_t n, u, act, rec, has_cp, has_dcp;
} lstm_pc;

static int vk_lstm_cell(lunet_backend *be, lunet_buf hc, lunet_buf gates, lunet_cbuf z, lunet_cbuf cp, size_t n,
                        size_t u, lunet_unary_op act, lunet_unary_op rec) {
  int rc = too_big((int64_t)(n * 4 * u), "lstm_cell");
  if (rc || n * u == 0) return rc;
  lstm_pc pc = {(uint32_t)n, (uint32_t)u, (uint32_t)act, (uint32_t)rec, cp != NULL, 0};
  return lunet_vk_dispatch(be, VK_SH_LSTM, 0, (lunet_cbuf[]){hc, gates, z, cp}, 4, &pc, sizeof pc,
                           lunet_vk_groups(be, n * u), 1, 1);
}

static int vk_lstm_cell_backward(lunet_backend *be, lunet_buf dz, lunet_buf dcp, lunet_cbuf dhc, lunet_cbuf hc,
                                 lunet_cbuf gates, lunet_cbuf cp, size_t n, size_t u, lunet_unary_op act,
                                 lunet_unary_op rec) {
  int rc = too_big((int64_t)(n * 4 * u), "lstm_cell_backward");
  if (rc || n * u == 0) return rc;
  lstm_pc pc = {(uint32_t)n, (uint32_t)u, (uint32_t)act, (uint32_t)rec, cp != NULL, dcp != NULL};
  return lunet_vk_dispatch(be, VK_SH_LSTM, 1, (lunet_cbuf[]){dz, dcp, dhc, cp, hc, gates}, 6, &pc, sizeof pc,
                           lunet_vk_groups(be, n * u), 1, 1);
}

typedef struct gru_pc {
  uint32_t n, u, act, rec, has_dxs, has_dhs, has_dh;
} gru_pc;

static int vk_gru_cell(lunet_backend *be, lunet_buf hn, lunet_buf gates, lunet_cbuf xs, lunet_cbuf hs, lunet_cbuf h,
                       size_t n, size_t u, lunet_unary_op act, lunet_unary_op rec) {
  int rc = too_big((int64_t)(n * 3 * u), "gru_cell");
  if (rc || n * u == 0) return rc;
  gru_pc pc = {(uint32_t)n, (uint32_t)u, (uint32_t)act, (uint32_t)rec, 0, 0, 0};
  return lunet_vk_dispatch(be, VK_SH_GRU, 0, (lunet_cbuf[]){hn, gates, NULL, xs, hs, h}, 6, &pc, sizeof pc,
                           lunet_vk_groups(be, n * u), 1, 1);
}

static int vk_gru_cell_backward(lunet_backend *be, lunet_buf dxs, lunet_buf dhs, lunet_buf dh, lunet_cbuf dhn,
                                lunet_cbuf gates, lunet_cbuf hs, lunet_cbuf h, size_t n, size_t u,
                                lunet_unary_op act, lunet_unary_op rec) {
  int rc = too_big((int64_t)(n * 3 * u), "gru_cell_backward");
  if (rc || n * u == 0) return rc;
  gru_pc pc = {(uint32_t)n, (uint32_t)u, (uint32_t)act, (uint32_t)rec, dxs != NULL, dhs != NULL, dh != NULL};
  return lunet_vk_dispatch(be, VK_SH_GRU, 1, (lunet_cbuf[]){dxs, dhs, dh, dhn, hs, h, gates}, 7, &pc, sizeof pc,
                           lunet_vk_groups(be, n * u), 1, 1);
}

typedef struct layernorm_pc {
  uint32_t rows, cols, has_dgamma, has_dbeta;
  float eps;
  uint32_t r0, r1; /* the column sums' rows in one dispatch */
} layernorm_pc;

static int vk_layernorm(lunet_backend *be, lunet_buf y, lunet_buf mean, lunet_buf rstd, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t cols, float eps) {
  int rc = too_big((int64_t)(rows * cols), "layernorm");
  if (rc || rows * cols == 0) return rc;
  layernorm_pc pc = {(uint32_t)rows, (uint32_t)cols, 0, 0, eps, 0, 0};
  return lunet_vk_dispatch(be, VK_SH_LAYERNORM, 0, (lunet_cbuf[]){y, mean, rstd, x, gamma, beta}, 6, &pc, sizeof pc,
                           lunet_vk_groups(be, rows), 1, 1);
}

/* mean and rstd go to the shader as one buffer (rows, then rows): copied
 * together first. */
static int vk_layernorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta, lunet_cbuf dy,
                                 lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf mean, lunet_cbuf rstd, size_t rows,
                                 size_t cols) {
  int rc = too_big((int64_t)(rows * cols), "layernorm_backward");
  if (rc || rows * cols == 0) return rc;
  lunet_buf mr = lunet_vk_buffer_alloc(be, 2 * rows * sizeof(float));
  if (!mr) return lunet_vk_error(LUNET_ERR_NOMEM, "layernorm_backward: out of device memory");
  rc = lunet_vk_buffer_copy(be, mr, 0, mean, 0, rows * sizeof(float));
  if (!rc) rc = lunet_vk_buffer_copy(be, mr, rows * sizeof(float), rstd, 0, rows * sizeof(float));
  layernorm_pc pc = {(uint32_t)rows, (uint32_t)cols, dgamma != NULL, dbeta != NULL, 0, 0, 0};
  if (!rc && dx)
    rc = lunet_vk_dispatch(be, VK_SH_LAYERNORM, 1, (lunet_cbuf[]){dx, NULL, NULL, x, gamma, NULL, dy, mr}, 8, &pc,
                           sizeof pc, lunet_vk_groups(be, rows), 1, 1);
  for (size_t r0 = 0; !rc && (dgamma || dbeta) && r0 < rows; r0 += VK_LOOP_CHUNK) { /* lavapipe's loop limit */
    pc.r0 = (uint32_t)r0;
    pc.r1 = (uint32_t)(rows - r0 < VK_LOOP_CHUNK ? rows : r0 + VK_LOOP_CHUNK);
    rc = lunet_vk_dispatch(be, VK_SH_LAYERNORM, 2, (lunet_cbuf[]){dgamma, dbeta, NULL, x, gamma, NULL, dy, mr}, 8,
                           &pc, sizeof pc, lunet_vk_groups(be, cols), 1, 1);
  }
  lunet_vk_buffer_free(be, mr);
  return rc;
}

static int vk_set_threads(lunet_backend *be, int n) { return 0; }

const lunet_backend_i lunet_vk_vtable = {
    .last_error = lunet_vk_last_error,
    .describe = lunet_vk_describe,
    .set_threads = vk_set_threads,
    .buffer_alloc = lunet_vk_buffer_alloc,
    .buffer_free = lunet_vk_buffer_free,
    .buffer_upload = lunet_vk_buffer_upload,
    .buffer_download = lunet_vk_buffer_download,
    .buffer_copy = lunet_vk_buffer_copy,
    .synchronize = lunet_vk_synchronize,
    .stats = lunet_vk_stats,
    .fill = vk_fill,
    .cast = vk_cast,
    .strided_copy = vk_strided_copy,
    .unary = vk_unary,
    .unary_backward = vk_unary_backward,
    .binary = vk_binary,
    .reduce = vk_reduce,
    .argmax = vk_argmax,
    .gemm = vk_gemm,
    .conv2d = vk_conv2d,
    .conv2d_backward_data = vk_conv2d_backward_data,
    .conv2d_backward_filter = vk_conv2d_backward_filter,
    .bf16_native = vk_bf16_native,
    .gemm_bf16 = vk_gemm_bf16,
    .conv2d_bf16 = vk_conv2d_bf16,
    .conv2d_backward_data_bf16 = vk_conv2d_backward_data_bf16,
    .conv2d_backward_filter_bf16 = vk_conv2d_backward_filter_bf16,
    .pool2d = vk_pool2d,
    .pool2d_backward = vk_pool2d_backward,
    .max_pool2d_relu = vk_max_pool2d_relu,
    .max_pool2d_relu_backward = vk_max_pool2d_relu_backward,
    .linear = vk_linear,
    .softmax = vk_softmax,
    .softmax_backward = vk_softmax_backward,
    .softmax_xent = vk_softmax_xent,
    .batchnorm = vk_batchnorm,
    .batchnorm_backward = vk_batchnorm_backward,
    .dropout_mask = vk_dropout_mask,
    .gather_rows = vk_gather_rows,
    .scatter_add_rows = vk_scatter_add_rows,
    .lstm_cell = vk_lstm_cell,
    .lstm_cell_backward = vk_lstm_cell_backward,
    .gru_cell = vk_gru_cell,
    .gru_cell_backward = vk_gru_cell_backward,
    .layernorm = vk_layernorm,
    .layernorm_backward = vk_layernorm_backward,
    .sgd_update = vk_sgd_update,
    .adam_update = vk_adam_update,
    .rmsprop_update = vk_rmsprop_update,
    .update_multi = vk_update_multi,
    .gemm_relu_mask = vk_gemm_relu_mask,
    .affine_resample = vk_affine_resample,
};
