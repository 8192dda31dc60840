/*
 * lunet backend ABI, version 2: what a compute backend shared object
 * implements.
 *
 * A backend .so exports one symbol, LUNET_BACKEND_ENTRY, returning a
 * descriptor.  The loader checks, before any other call, the rule plugins
 * follow too (lunet/plugin.h): abi_major equal to the core's, abi_minor not
 * newer than the core's (a minor version only appends members, so an older
 * backend works with a newer core), and struct_size at least the size of
 * its minor version's structs; a refused backend is listed as unavailable
 * with both versions named.
 *
 * The core names no backend: what a backend offers is declared (caps, the
 * ops it supports, its devices), and what it needs to set up (a BLAS
 * library's kernel, a device) happens inside it, from init()'s arguments.
 *
 * Buffers are opaque handles (void *) that the backend hands out; with
 * LUNET_BACKEND_HOST_VISIBLE a handle is the host address of the data.  All sizes are in
 * elements unless named *_bytes.  Every op returns 0 on success or a
 * lunet_status, with a message readable through iface.last_error().  An
 * optional member left NULL means "not supported": the core reports it as
 * an error naming op and backend.  Ops may run asynchronously; the core calls
 * synchronize() before reading results on the host (unless the backend's
 * download waits by itself: LUNET_BACKEND_DOWNLOAD_WAITS).
 */
#ifndef LUNET_BACKEND_H
#define LUNET_BACKEND_H

#include <stddef.h>
#include <stdio.h>

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_BACKEND_ABI_MAJOR 2
#define LUNET_BACKEND_ABI_MINOR 6

/* caps: a buffer handle is the host address of its data, readable and
 * writable directly (the CPU backend). */
#define LUNET_BACKEND_HOST_VISIBLE 1u
/* caps: buffer_download() itself waits for the work recorded before it
 * (and reports the kernels' errors as synchronize() does), so the core
 * reads without a synchronize() first: one wait on the device per read,
 * not two (Vulkan). */
#define LUNET_BACKEND_DOWNLOAD_WAITS 2u
#define LUNET_BACKEND_ENTRY lunet_backend_entry
#define LUNET_BACKEND_ENTRY_NAME "lunet_backend_entry"

typedef void *lunet_buf;
typedef const void *lunet_cbuf;
typedef struct lunet_backend lunet_backend; /* a backend's own state */

/* Broadcasting geometry: out shape and each input's strides (0 on a
 * broadcast axis), in elements. */
typedef struct lunet_bcast_desc {
  int ndim;
  int64_t shape[LUNET_MAX_DIMS];
  int64_t a_strides[LUNET_MAX_DIMS];
  int64_t b_strides[LUNET_MAX_DIMS];
} lunet_bcast_desc;

/* y[index] = x[x_offset + sum(index_i * x_strides_i)] over `shape`, writing y
 * at y_offset + sum(index_i * y_strides_i).  Permute, slice, concat and
 * broadcast-expand are all this one copy. */
typedef struct lunet_strided_desc {
  int ndim;
  size_t elem_size;
  int64_t shape[LUNET_MAX_DIMS];
  int64_t x_strides[LUNET_MAX_DIMS];
  int64_t y_strides[LUNET_MAX_DIMS];
  int64_t x_offset, y_offset;
} lunet_strided_desc;

/* Counters of a backend's work since it started (nn.backend_stats).  The
 * product dispatches (matrix products and convolutions) are also listed,
 * the most recent LUNET_BACKEND_GEMM_LOG of them, oldest first. */
#define LUNET_BACKEND_GEMM_LOG 256
typedef struct lunet_backend_gemm {
  const char *op; /* "gemm", "conv2d", "conv2d_backward_data", "conv2d_backward_filter" */
  int64_t m, n, k; /* the product's shape: (m, k) x (k, n) */
  int64_t workgroups; /* dispatched (a device) or chunks run (the CPU) */
  double flops;
} lunet_backend_gemm;
typedef struct lunet_backend_stats {
  uint64_t dispatches, barriers, submits, descriptor_writes, pipelines, allocations;
  uint64_t waits, waits_read, waits_sync; /* all waits on the device; those for a read, those for synchronize */
  uint64_t bytes_up, bytes_down, bytes_copied;
  uint64_t pipeline_cache_bytes;         /* a saved pipeline cache read at start (0: none, or not this device's) */
  uint64_t gemm_total;                   /* product dispatches ever */
  int ngemm;                             /* entries in gemm (<= LUNET_BACKEND_GEMM_LOG) */
  lunet_backend_gemm gemm[LUNET_BACKEND_GEMM_LOG];
  /* ABI 2.5 (0 from an older backend): host time, in nanoseconds, spent
   * recording and submitting commands (a device backend: its ops' calls,
   * waits on the device excluded), and blocked waiting for the device. */
  uint64_t record_ns, wait_ns;
} lunet_backend_stats;

/* Adds a product to a stats log (a ring of the most recent ones). */
static inline void lunet_backend_log_gemm(lunet_backend_stats *s, const char *op, int64_t m, int64_t n, int64_t k,
                                          int64_t workgroups) {
  lunet_backend_gemm *g = &s->gemm[s->gemm_total % LUNET_BACKEND_GEMM_LOG];
  *g = (lunet_backend_gemm){op, m, n, k, workgroups, 2.0 * (double)m * (double)n * (double)k};
  s->gemm_total++;
  if (s->ngemm < LUNET_BACKEND_GEMM_LOG) s->ngemm++;
}

typedef struct lunet_backend_i {
  /* ---- required ---- */
  const char *(*last_error)(lunet_backend *be);
  /* The device this backend runs on and what it uses, for lunet.backends(). */
  void (*describe)(lunet_backend *be, lunet_backend_info *info);
  int (*set_threads)(lunet_backend *be, int n);

  lunet_buf (*buffer_alloc)(lunet_backend *be, size_t nbytes); /* NULL: out of memory */
  void (*buffer_free)(lunet_backend *be, lunet_buf buf);
  int (*buffer_upload)(lunet_backend *be, lunet_buf dst, size_t offset_bytes, const void *src,
                       size_t nbytes);
  int (*buffer_download)(lunet_backend *be, lunet_cbuf src, size_t offset_bytes, void *dst,
                         size_t nbytes);
  int (*buffer_copy)(lunet_backend *be, lunet_buf dst, size_t dst_offset_bytes, lunet_cbuf src,
                     size_t src_offset_bytes, size_t nbytes);
  int (*synchronize)(lunet_backend *be);

  /* ---- primitives (float32 unless said) ---- */
  int (*fill)(lunet_backend *be, lunet_buf y, float value, size_t n);
  /* y (n) of dtype ydt <- x (n) of dtype xdt */
  int (*cast)(lunet_backend *be, lunet_buf y, lunet_dtype ydt, lunet_cbuf x, lunet_dtype xdt,
              size_t n);
  int (*strided_copy)(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_strided_desc *d);

  /* y (n) = f(x) */
  int (*unary)(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf y,
               lunet_cbuf x, size_t n);
  /* dx (n) = dy * f'(x), y = f(x) */
  int (*unary_backward)(lunet_backend *be, lunet_unary_op op, float alpha, float beta, lunet_buf dx,
                        lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y, size_t n);
  int (*binary)(lunet_backend *be, lunet_binary_op op, lunet_buf y, lunet_cbuf a, lunet_cbuf b,
                const lunet_bcast_desc *d);
  /* x viewed as (outer, len, inner) -> y (outer, inner) */
  int (*reduce)(lunet_backend *be, lunet_reduce_op op, lunet_buf y, lunet_cbuf x, size_t outer,
                size_t len, size_t inner);
  /* x (rows, cols) -> y (rows) float32 index of the first maximum */
  int (*argmax)(lunet_backend *be, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols);

  /* c (batch, M, N) = alpha * op(a) op(b) + beta * c, row-major; a is (M,K)
   * or (K,M) when trans_a; b is (K,N) or (N,K) when trans_b.  A stride of 0
   * reuses one matrix for the whole batch. */
  int (*gemm)(lunet_backend *be, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
              float alpha, lunet_cbuf a, int64_t stride_a, lunet_cbuf b, int64_t stride_b,
              float beta, lunet_buf c, int64_t stride_c, int64_t batch);

  /* x (N,H,W,C), w (KH,KW,C,F), bias (F) or NULL -> y (N,OH,OW,F) */
  int (*conv2d)(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                const lunet_conv2d_desc *d);
  /* dy (N,OH,OW,F), w (KH,KW,C,F) -> dx (N,H,W,C) */
  int (*conv2d_backward_data)(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                              const lunet_conv2d_desc *d);
  /* dy (N,OH,OW,F), x (N,H,W,C) -> dw (KH,KW,C,F), db (F) or NULL; overwrites */
  int (*conv2d_backward_filter)(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                lunet_cbuf x, const lunet_conv2d_desc *d);
  /* x (N,H,W,C) -> y (N,OH,OW,C); avg excludes padding from the count */
  int (*pool2d)(lunet_backend *be, lunet_pool_mode mode, lunet_buf y, lunet_cbuf x,
                const lunet_pool2d_desc *d);
  /* dy (N,OH,OW,C), x, y -> dx (N,H,W,C); max routes to the first maximum */
  int (*pool2d_backward)(lunet_backend *be, lunet_pool_mode mode, lunet_buf dx, lunet_cbuf dy,
                         lunet_cbuf x, lunet_cbuf y, const lunet_pool2d_desc *d);

  /* x, y (rows, cols), over cols */
  int (*softmax)(lunet_backend *be, bool log, lunet_buf y, lunet_cbuf x, size_t rows, size_t cols);
  int (*softmax_backward)(lunet_backend *be, bool log, lunet_buf dx, lunet_cbuf dy, lunet_cbuf y,
                          size_t rows, size_t cols);
  /* logits (rows, cols), labels (rows) float ids in [0, cols) -> loss (rows),
   * dlogits (rows, cols) = softmax - onehot or NULL */
  int (*softmax_xent)(lunet_backend *be, lunet_buf loss, lunet_buf dlogits, lunet_cbuf logits,
                      lunet_cbuf labels, size_t rows, size_t cols);

  /* x, y (rows, C); training: batch mean and biased variance, saved as
   * save_mean/save_invstd, and the running stats updated as Keras does
   * (run = run*momentum + batch*(1-momentum)); inference: running stats. */
  int (*batchnorm)(lunet_backend *be, bool training, lunet_buf y, lunet_buf save_mean,
                   lunet_buf save_invstd, lunet_buf run_mean, lunet_buf run_var, lunet_cbuf x,
                   lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t c, float momentum,
                   float epsilon);
  int (*batchnorm_backward)(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta,
                            lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf save_mean,
                            lunet_cbuf save_invstd, size_t rows, size_t c);

  /* mask (n): element i keeps (value 1/(1-rate)) when
   * lunet_philox_uniform(seed, counter + i) >= rate, else 0. */
  int (*dropout_mask)(lunet_backend *be, lunet_buf mask, size_t n, float rate, uint64_t seed,
                      uint64_t counter);

  /* y (n, row_bytes) = x rows idx[i]; idx (n) int64 on the host, in range */
  int (*gather_rows)(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                     size_t row_bytes);

  /* In place on p and state (n each). */
  int (*sgd_update)(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf velocity, size_t n,
                    float lr, float momentum, bool nesterov, float weight_decay);
  int (*adam_update)(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf m, lunet_buf v,
                     size_t n, float lr, float beta1, float beta2, float epsilon,
                     float weight_decay, int64_t step);
  int (*rmsprop_update)(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf ms, lunet_buf mom,
                        size_t n, float lr, float rho, float momentum, float epsilon);

  /* x (N,H,W,C) -> y (N,OH,OW,C); mats (N,6) host floats; the reference is
   * lunet_resample_one() in lunet/resample.h */
  int (*affine_resample)(lunet_backend *be, lunet_buf y, lunet_cbuf x, const float *mats, size_t n,
                         size_t h, size_t w, size_t c, size_t oh, size_t ow,
                         lunet_fill_mode fill_mode, float fill);

  /* ---- ABI 2.1 (the core reads these only from a backend of minor >= 1;
   * unary ops LUNET_UNARY_SIN and _COS are 2.1 too) ---- */

  /* y (rows, cols) float32 += x (n, cols) row by row: y[idx[i]] += x[i];
   * idx (n) on the host, in range (the core checks); repeated indices add
   * up (the gradient of gather_rows). */
  int (*scatter_add_rows)(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                          size_t cols);

  /* The LSTM cell, fused.  z (n, 4u): the pre-activations of the gates i,
   * f, c, o (input and recurrent products and biases already added); cp
   * (n, u) the previous cell, or NULL for zeros.  i, f, o = rec(z_*), g =
   * act(z_c), c = f cp + i g, h = o act(c); hc (n, 2u) receives [h, c] and
   * gates (n, 4u) the activated gates [i, f, g, o].  act and rec are
   * LUNET_UNARY_TANH, _SIGMOID, _RELU or _AFFINE (the identity). */
  int (*lstm_cell)(lunet_backend *be, lunet_buf hc, lunet_buf gates, lunet_cbuf z, lunet_cbuf cp, size_t n,
                   size_t u, lunet_unary_op act, lunet_unary_op rec);
  /* Its gradient: dhc (n, 2u) the gradients of [h, c] -> dz (n, 4u) and,
   * when dcp is not NULL, dcp (n, u); hc, gates, cp (or NULL) as forward
   * left them. */
  int (*lstm_cell_backward)(lunet_backend *be, lunet_buf dz, lunet_buf dcp, lunet_cbuf dhc, lunet_cbuf hc,
                            lunet_cbuf gates, lunet_cbuf cp, size_t n, size_t u, lunet_unary_op act,
                            lunet_unary_op rec);

  /* The GRU cell (reset_after, Keras's default), fused.  xs (n, 3u) the
   * input part of the gates z, r, h (x kernel + input bias), hs (n, 3u) the
   * recurrent part (h recurrent_kernel + recurrent bias), h (n, u) the
   * state: z = rec(xz + hz), r = rec(xr + hr), g = act(xh + r hh),
   * h' = z h + (1 - z) g into hn (n, u); gates (n, 3u) receives [z, r, g]. */
  int (*gru_cell)(lunet_backend *be, lunet_buf hn, lunet_buf gates, lunet_cbuf xs, lunet_cbuf hs, lunet_cbuf h,
                  size_t n, size_t u, lunet_unary_op act, lunet_unary_op rec);
  /* Its gradient from dhn: dxs (n, 3u), dhs (n, 3u), dh (n, u) (each
   * skipped when NULL). */
  int (*gru_cell_backward)(lunet_backend *be, lunet_buf dxs, lunet_buf dhs, lunet_buf dh, lunet_cbuf dhn,
                           lunet_cbuf gates, lunet_cbuf hs, lunet_cbuf h, size_t n, size_t u, lunet_unary_op act,
                           lunet_unary_op rec);

  /* Layer normalization of each row of x (rows, cols): y = (x - mean) rstd
   * gamma + beta, rstd = 1 / sqrt(var + eps), var the biased variance;
   * mean and rstd (rows) are kept for the gradient. */
  int (*layernorm)(lunet_backend *be, lunet_buf y, lunet_buf mean, lunet_buf rstd, lunet_cbuf x, lunet_cbuf gamma,
                   lunet_cbuf beta, size_t rows, size_t cols, float eps);
  /* Its gradient: dx (rows, cols) and dgamma, dbeta (cols), each skipped
   * when NULL. */
  int (*layernorm_backward)(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta, lunet_cbuf dy,
                            lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf mean, lunet_cbuf rstd, size_t rows,
                            size_t cols);

  /* ---- ABI 2.2 (read only from a backend of minor >= 2) ---- */

  /* The backend's counters since it started (lunet_backend_stats; a
   * backend fills what applies to it and leaves the rest 0). */
  void (*stats)(lunet_backend *be, lunet_backend_stats *out);

  /* ---- ABI 2.3 (read only from a backend of minor >= 3) ---- */

  /* Mixed precision (lunet_set_precision; Keras's "mixed_bfloat16"): the
   * products above with every operand (a and b; x or dy and w) rounded to
   * bfloat16 as lunet_bf16_round() does, and the products summed in
   * float32; outputs, bias and bias gradient stay float32 (db sums dy
   * unrounded).  Same arguments as their float32 versions.  bf16_native()
   * says how the device runs them: 1 faster than float32 (bfloat16
   * arithmetic), 0 emulated (operands rounded, then the float32 kernels:
   * the same numbers, no speed-up).  NULL members: no bfloat16 products. */
  int (*bf16_native)(lunet_backend *be);
  int (*gemm_bf16)(lunet_backend *be, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                   float alpha, lunet_cbuf a, int64_t stride_a, lunet_cbuf b, int64_t stride_b,
                   float beta, lunet_buf c, int64_t stride_c, int64_t batch);
  int (*conv2d_bf16)(lunet_backend *be, lunet_buf y, lunet_cbuf x, lunet_cbuf w, lunet_cbuf bias,
                     const lunet_conv2d_desc *d);
  int (*conv2d_backward_data_bf16)(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf w,
                                   const lunet_conv2d_desc *d);
  int (*conv2d_backward_filter_bf16)(lunet_backend *be, lunet_buf dw, lunet_buf db, lunet_cbuf dy,
                                     lunet_cbuf x, const lunet_conv2d_desc *d);

  /* ---- ABI 2.4 (read only from a backend of minor >= 4) ---- */

  /* A max pooling whose output goes through a ReLU, in one pass: y =
   * max(pool2d(max, x), 0) (a ReLU before a max pooling, moved after it by
   * the core: relu(max(a, b)) = max(relu(a), relu(b))).  The backward routes
   * dy as pool2d_backward does (to the first maximum) where that maximum is
   * > 0, and gives 0 where it is not (the ReLU's gradient).  Same arguments
   * as pool2d / pool2d_backward.  Both or neither (NULL: the core runs
   * pool2d and a ReLU; the core fuses only where both are present). */
  int (*max_pool2d_relu)(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_pool2d_desc *d);
  int (*max_pool2d_relu_backward)(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y,
                                  const lunet_pool2d_desc *d);

  /* ---- ABI 2.5 (read only from a backend of minor >= 5) ---- */

  /* A Dense layer's forward in one op: c (m, n) = a (m, k) b (k, n), plus
   * bias (n) on every row unless bias is NULL, then max(c, 0) when relu
   * (x > 0 ? x : 0, as the RELU unary op): the bias and the ReLU in the
   * product's epilogue, the same bits as gemm, an add and the ReLU op in
   * turn.  NULL: the core runs those. */
  int (*linear)(lunet_backend *be, int64_t m, int64_t n, int64_t k, lunet_cbuf a, lunet_cbuf b, lunet_cbuf bias,
                bool relu, lunet_buf c);

  /* ---- ABI 2.6 (read only from a backend of minor >= 6) ---- */

  /* One optimizer step over `count` tensors in one call (on a device: one
   * dispatch for several tensors instead of one each).  Tensor t is p[t],
   * g[t], s1[t], s2[t] of n[t] elements, updated with the bits that
   * sgd_update (u->kind LUNET_UPDATE_SGD: s1 the velocity), adam_update
   * (s1 m, s2 v) or rmsprop_update (s1 the mean square, s2 the momentum)
   * would give it, called with u's hyper-parameters.  s1 (SGD without
   * momentum) or s2 (RMSprop without momentum) may be NULL as a whole
   * array; tensors are distinct buffers.  NULL: the core calls the single
   * ops tensor by tensor. */
  int (*update_multi)(lunet_backend *be, const lunet_update_desc *u, int count, const lunet_buf *p,
                      const lunet_cbuf *g, const lunet_buf *s1, const lunet_buf *s2, const size_t *n);

  /* A layer's input gradient through the ReLU that made its input, in the
   * product's epilogue: c (m, n) = op(a) op(b) (as gemm with alpha 1, beta
   * 0, one product), then c = mask > 0 ? c : 0 element by element, mask
   * (m, n) the ReLU's output: the same bits as gemm and the RELU
   * unary_backward with x = mask.  NULL: the core runs those. */
  int (*gemm_relu_mask)(lunet_backend *be, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                        lunet_cbuf a, lunet_cbuf b, lunet_cbuf mask, lunet_buf c);
} lunet_backend_i;

/* The size of lunet_backend_i in ABI 2.0 to 2.5 (what such a backend provides). */
#define LUNET_BACKEND_I_SIZE_2_0 offsetof(lunet_backend_i, scatter_add_rows)
#define LUNET_BACKEND_I_SIZE_2_1 offsetof(lunet_backend_i, stats)
#define LUNET_BACKEND_I_SIZE_2_2 offsetof(lunet_backend_i, bf16_native)
#define LUNET_BACKEND_I_SIZE_2_3 offsetof(lunet_backend_i, max_pool2d_relu)
#define LUNET_BACKEND_I_SIZE_2_4 offsetof(lunet_backend_i, linear)
#define LUNET_BACKEND_I_SIZE_2_5 offsetof(lunet_backend_i, update_multi)

typedef struct lunet_backend_desc {
  uint32_t abi_major, abi_minor;
  uint32_t struct_size; /* sizeof(lunet_backend_desc) as the backend was built */
  uint32_t iface_size;  /* sizeof(lunet_backend_i) as the backend was built */
  const char *name;     /* "cpu", "vulkan" */
  const char *version;
  /* Is there a usable device here?  Returns a score (higher is better, 0:
   * unavailable, with the reason written into why). */
  int (*probe)(char *why, size_t why_len);
  /* threads <= 0: the backend's default; device: an index of its device
   * list (describe()), or -1 for its own choice.  NULL with the reason in
   * err. */
  lunet_backend *(*init)(int threads, int device, char *err, size_t err_len);
  void (*shutdown)(lunet_backend *be);
  const lunet_backend_i *iface;
  uint32_t caps; /* LUNET_BACKEND_* */
} lunet_backend_desc;

typedef const lunet_backend_desc *(*lunet_backend_entry_fn)(void);

/* Geometry checks every backend runs before a conv or pool kernel: false
 * when the descriptor was not filled by lunet_conv2d_geometry /
 * lunet_pool2d_geometry (a kernel must never index outside its buffers).
 * The text describes the descriptor for the error message. */
static inline bool lunet_conv2d_desc_ok(const lunet_conv2d_desc *d, char *text, size_t n) {
  snprintf(text, n,
           "n=%lld h=%lld w=%lld c=%lld f=%lld kernel %lldx%lld stride %lldx%lld out %lldx%lld",
           (long long)d->n, (long long)d->h, (long long)d->w, (long long)d->c, (long long)d->f,
           (long long)d->kh, (long long)d->kw, (long long)d->sh, (long long)d->sw, (long long)d->oh,
           (long long)d->ow);
  return d->n >= 0 && d->h >= 1 && d->w >= 1 && d->c >= 1 && d->f >= 1 && d->kh >= 1 &&
         d->kw >= 1 && d->sh >= 1 && d->sw >= 1 && d->oh >= 1 && d->ow >= 1 && d->pad_top >= 0 &&
         d->pad_left >= 0;
}

static inline bool lunet_pool2d_desc_ok(const lunet_pool2d_desc *d, char *text, size_t n) {
  snprintf(text, n,
           "n=%lld h=%lld w=%lld c=%lld pool %lldx%lld stride %lldx%lld pad %lld,%lld out "
           "%lldx%lld",
           (long long)d->n, (long long)d->h, (long long)d->w, (long long)d->c, (long long)d->kh,
           (long long)d->kw, (long long)d->sh, (long long)d->sw, (long long)d->pad_top,
           (long long)d->pad_left, (long long)d->oh, (long long)d->ow);
  return d->n >= 0 && d->h >= 1 && d->w >= 1 && d->c >= 1 && d->kh >= 1 && d->kw >= 1 &&
         d->sh >= 1 && d->sw >= 1 && d->oh >= 1 && d->ow >= 1 && d->pad_top >= 0 &&
         d->pad_left >= 0 && d->pad_top < d->kh && d->pad_left < d->kw;
}

/* x rounded to the nearest bfloat16 (ties to even) and returned as the
 * float32 it stands for: the top 16 bits kept.  As x86's VCVTNEPS2BF16 does
 * it: a NaN stays a (quiet) NaN, a subnormal becomes a zero of its sign. */
static inline float lunet_bf16_round(float x) {
  union { float f; uint32_t u; } v = {x};
  if ((v.u & 0x7fffffffu) > 0x7f800000u) v.u |= 0x00400000u;
  else if ((v.u & 0x7f800000u) == 0) v.u &= 0x80000000u;
  else v.u += 0x7fffu + ((v.u >> 16) & 1u);
  v.u &= 0xffff0000u;
  return v.f;
}

/* Counter-based RNG shared by every backend: Philox4x32-10, so a random
 * stream is the same on CPU and GPU.  Returns a float in [0, 1). */
static inline float lunet_philox_uniform(uint64_t seed, uint64_t counter) {
  uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return (float)(c0 >> 8) * (1.0f / 16777216.0f);
}

#ifdef __cplusplus
}
#endif

#endif
