/*
 * lunet tensor ops.
 *
 * Two families:
 *  - lunet_op_*: the primitives, forward and backward, dispatched to the
 *    backend that owns the inputs.  They record nothing on the tape.  Layer
 *    plugins write their forward and backward with these, so one plugin runs
 *    on every backend.
 *  - lunet_<name> (lunet_add, lunet_matmul, ...): differentiable ops for Lua
 *    expressions; each records a node on the tape when an input requires
 *    grad and grad mode is on.
 * Every op returns a new reference, or NULL with the context's error set.
 * All inputs of one op must live on one backend; mixing is an error naming
 * both.
 */
#ifndef LUNET_OPS_H
#define LUNET_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lunet_unary_op {
  LUNET_UNARY_NEG = 0, /* -x */
  LUNET_UNARY_EXP,
  LUNET_UNARY_LOG,
  LUNET_UNARY_SQRT,
  LUNET_UNARY_ABS,
  LUNET_UNARY_SQUARE,
  LUNET_UNARY_RELU,
  LUNET_UNARY_SIGMOID,
  LUNET_UNARY_TANH,
  LUNET_UNARY_GELU,       /* exact, erf form (Keras approximate=False) */
  LUNET_UNARY_LEAKY_RELU, /* alpha = negative slope */
  LUNET_UNARY_AFFINE,     /* alpha * x + beta */
  LUNET_UNARY_CLIP,       /* min(max(x, alpha), beta) */
  LUNET_UNARY_RECIP,      /* 1 / x */
  LUNET_UNARY_SIGN,
  LUNET_UNARY_SIN, /* (backend ABI 2.1) */
  LUNET_UNARY_COS, /* (backend ABI 2.1) */
  LUNET_UNARY_COUNT
} lunet_unary_op;

typedef enum lunet_binary_op {
  LUNET_BINARY_ADD = 0,
  LUNET_BINARY_SUB,
  LUNET_BINARY_MUL,
  LUNET_BINARY_DIV,
  LUNET_BINARY_MAX,
  LUNET_BINARY_MIN,
  LUNET_BINARY_POW,
  LUNET_BINARY_EQ, /* 1.0 where equal, else 0.0 */
  LUNET_BINARY_GT,
  LUNET_BINARY_LT,
  LUNET_BINARY_COUNT
} lunet_binary_op;

typedef enum lunet_reduce_op {
  LUNET_REDUCE_SUM = 0,
  LUNET_REDUCE_MEAN,
  LUNET_REDUCE_MAX,
  LUNET_REDUCE_MIN,
  LUNET_REDUCE_COUNT
} lunet_reduce_op;

typedef enum lunet_pool_mode { LUNET_POOL_MAX = 0, LUNET_POOL_AVG = 1 } lunet_pool_mode;

/* "valid" or "same", Keras's meaning: "same" pads so that out = ceil(in/stride),
 * the odd pixel of padding going at the bottom/right. */
typedef enum lunet_padding { LUNET_PAD_VALID = 0, LUNET_PAD_SAME = 1 } lunet_padding;

/* x (N,H,W,C), w (KH,KW,C,F), y (N,OH,OW,F) */
typedef struct lunet_conv2d_desc {
  int64_t n, h, w, c, f;
  int64_t kh, kw, sh, sw;
  int64_t pad_top, pad_left; /* bottom/right padding follow from oh, ow */
  int64_t oh, ow;
} lunet_conv2d_desc;

/* x (N,H,W,C), y (N,OH,OW,C) */
typedef struct lunet_pool2d_desc {
  int64_t n, h, w, c;
  int64_t kh, kw, sh, sw;
  int64_t pad_top, pad_left;
  int64_t oh, ow;
} lunet_pool2d_desc;

/* Fills a conv or pool geometry from Keras's arguments; error on a kernel
 * larger than the (padded) input. */
LUNET_API lunet_status lunet_conv2d_geometry(lunet_ctx *ctx, lunet_conv2d_desc *d,
                                             lunet_padding pad);
LUNET_API lunet_status lunet_pool2d_geometry(lunet_ctx *ctx, lunet_pool2d_desc *d,
                                             lunet_padding pad);

/* ---- primitives (no autograd) ---- */

LUNET_API lunet_tensor *lunet_op_empty_like(lunet_ctx *ctx, const lunet_tensor *t);
LUNET_API lunet_tensor *lunet_op_new(lunet_ctx *ctx, const lunet_tensor *like_backend,
                                     lunet_dtype dt, int ndim, const int64_t *shape);
LUNET_API lunet_status lunet_op_fill(lunet_ctx *ctx, lunet_tensor *t, float v);
LUNET_API lunet_tensor *lunet_op_copy(lunet_ctx *ctx, const lunet_tensor *x);
/* Shares x's buffer with a new shape of the same element count. */
LUNET_API lunet_tensor *lunet_op_reshape(lunet_ctx *ctx, lunet_tensor *x, int ndim,
                                         const int64_t *shape);
LUNET_API lunet_tensor *lunet_op_cast(lunet_ctx *ctx, const lunet_tensor *x, lunet_dtype dt);

LUNET_API lunet_tensor *lunet_op_unary(lunet_ctx *ctx, lunet_unary_op op, const lunet_tensor *x,
                                       float alpha, float beta);
/* dx = dy * f'(x); y = f(x) is passed for ops whose derivative uses it. */
LUNET_API lunet_tensor *lunet_op_unary_backward(lunet_ctx *ctx, lunet_unary_op op,
                                                const lunet_tensor *dy, const lunet_tensor *x,
                                                const lunet_tensor *y, float alpha, float beta);
/* Broadcasting (numpy rules). */
LUNET_API lunet_tensor *lunet_op_binary(lunet_ctx *ctx, lunet_binary_op op, const lunet_tensor *a,
                                        const lunet_tensor *b);
/* acc += x in place (same shapes). */
LUNET_API lunet_status lunet_op_accumulate(lunet_ctx *ctx, lunet_tensor *acc,
                                           const lunet_tensor *x);
/* Reduces over `axis` (negative from the end; LUNET_ALL_AXES: everything). */
#define LUNET_ALL_AXES 127
LUNET_API lunet_tensor *lunet_op_reduce(lunet_ctx *ctx, lunet_reduce_op op, const lunet_tensor *x,
                                        int axis, bool keepdims);
/* Sums x down to `ndim/shape` (the inverse of broadcasting, for gradients). */
LUNET_API lunet_tensor *lunet_op_sum_to(lunet_ctx *ctx, const lunet_tensor *x, int ndim,
                                        const int64_t *shape);
/* Float32 indices of the maximum along the last axis (first on ties). */
LUNET_API lunet_tensor *lunet_op_argmax(lunet_ctx *ctx, const lunet_tensor *x);

/* c = op(a) @ op(b); a (..., M, K) b (..., K, N), batch dims broadcast
 * when one side has none. */
LUNET_API lunet_tensor *lunet_op_matmul(lunet_ctx *ctx, const lunet_tensor *a,
                                        const lunet_tensor *b, bool trans_a, bool trans_b);
/* A layer's input gradient that is one product, a op(b) as lunet_op_matmul
 * with 2-D operands: where the core asks it during the layer's backward
 * (its input is the output of a layer whose own op ran a ReLU, Dense's
 * "relu", and no other gradient reaches that output), the ReLU's gradient
 * runs in the product's epilogue and that layer's lunet_op_relu_grad then
 * takes the gradient as it comes: one pass fewer, the same bits.  Call it
 * only for the whole gradient of the layer's first input (a sum of parts
 * would be masked in part). */
LUNET_API lunet_tensor *lunet_op_matmul_dx(lunet_ctx *ctx, const lunet_tensor *a, const lunet_tensor *b,
                                           bool trans_a, bool trans_b);

/* y (M, N) = x (M, K) @ w (K, N) + bias (N) (NULL: none): a Dense layer's
 * product with its bias added in the product's epilogue where the backend
 * has the fused op (backend ABI 2.5), else as matmul then add.  In the
 * forward of a layer flagged LUNET_LAYER_FUSES_RELU whose activation is
 * "relu", the fused op also runs the ReLU (the core then does not). */
LUNET_API lunet_tensor *lunet_op_linear(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *w,
                                        const lunet_tensor *bias);
/* In the backward of such a layer: dy * (y > 0), y the layer's output,
 * when its forward's lunet_op_linear ran the ReLU; else dy itself (a new
 * reference). */
LUNET_API lunet_tensor *lunet_op_relu_grad(lunet_ctx *ctx, const lunet_tensor *dy, const lunet_tensor *y);

/* x (N,H,W,C), w (KH,KW,C,F), bias (F) or NULL -> y (N,OH,OW,F) */
LUNET_API lunet_tensor *lunet_op_conv2d(lunet_ctx *ctx, const lunet_tensor *x,
                                        const lunet_tensor *w, const lunet_tensor *bias,
                                        const lunet_conv2d_desc *d);
/* dy (N,OH,OW,F), w -> dx (N,H,W,C) */
LUNET_API lunet_tensor *lunet_op_conv2d_backward_data(lunet_ctx *ctx, const lunet_tensor *dy,
                                                      const lunet_tensor *w,
                                                      const lunet_conv2d_desc *d);
/* dy, x -> dw (KH,KW,C,F) and, when db != NULL, *db (F) */
LUNET_API lunet_tensor *lunet_op_conv2d_backward_filter(lunet_ctx *ctx, const lunet_tensor *dy,
                                                        const lunet_tensor *x,
                                                        const lunet_conv2d_desc *d,
                                                        lunet_tensor **db);
LUNET_API lunet_tensor *lunet_op_pool2d(lunet_ctx *ctx, lunet_pool_mode mode, const lunet_tensor *x,
                                        const lunet_pool2d_desc *d);
LUNET_API lunet_tensor *lunet_op_pool2d_backward(lunet_ctx *ctx, lunet_pool_mode mode,
                                                 const lunet_tensor *dy, const lunet_tensor *x,
                                                 const lunet_tensor *y, const lunet_pool2d_desc *d);

/* Over the last axis. */
LUNET_API lunet_tensor *lunet_op_softmax(lunet_ctx *ctx, const lunet_tensor *x, bool log);
LUNET_API lunet_tensor *lunet_op_softmax_backward(lunet_ctx *ctx, const lunet_tensor *dy,
                                                  const lunet_tensor *y, bool log);
/* logits (R,K), labels (R) float class ids -> per-row loss (R); *dlogits
 * (R,K) = softmax - onehot, unscaled, when dlogits != NULL. */
LUNET_API lunet_tensor *lunet_op_softmax_xent(lunet_ctx *ctx, const lunet_tensor *logits,
                                              const lunet_tensor *labels, lunet_tensor **dlogits);

/* x (..., C) normalised per channel over all other axes.  Training: batch
 * statistics, saved mean/invstd for backward, running stats updated with
 * Keras's momentum.  Inference: running stats. */
typedef struct lunet_batchnorm_state {
  lunet_tensor *running_mean, *running_var; /* (C), updated in place */
  lunet_tensor *save_mean, *save_invstd;    /* (C), outputs in training */
  float momentum, epsilon;
} lunet_batchnorm_state;
LUNET_API lunet_tensor *lunet_op_batchnorm(lunet_ctx *ctx, const lunet_tensor *x,
                                           const lunet_tensor *gamma, const lunet_tensor *beta,
                                           lunet_batchnorm_state *st, bool training);
/* -> dx; dgamma/dbeta (C) written to *dgamma, *dbeta. */
LUNET_API lunet_tensor *lunet_op_batchnorm_backward(lunet_ctx *ctx, const lunet_tensor *dy,
                                                    const lunet_tensor *x,
                                                    const lunet_tensor *gamma,
                                                    const lunet_batchnorm_state *st,
                                                    lunet_tensor **dgamma, lunet_tensor **dbeta);

/* mask with shape of like: 0 or 1/(1-rate), from the context's RNG. */
LUNET_API lunet_tensor *lunet_op_dropout_mask(lunet_ctx *ctx, const lunet_tensor *like, float rate);

/* Rows of x (axis 0) picked by int32/float32 indices (on any backend). */
LUNET_API lunet_tensor *lunet_op_gather_rows(lunet_ctx *ctx, const lunet_tensor *x,
                                             const int64_t *idx, int64_t n);
/* y[idx[i]] += x[i] along axis 0, in place (float32; repeated indices add
 * up): the gradient of gather_rows. */
LUNET_API lunet_status lunet_op_scatter_add_rows(lunet_ctx *ctx, lunet_tensor *y, const lunet_tensor *x,
                                                 const int64_t *idx, int64_t n);
/* Rows [start, start+n) of x along axis 0. */
LUNET_API lunet_tensor *lunet_op_slice_rows(lunet_ctx *ctx, const lunet_tensor *x, int64_t start,
                                            int64_t n);
LUNET_API lunet_tensor *lunet_op_permute(lunet_ctx *ctx, const lunet_tensor *x, const int *perm);
/* General strided slice: start/stop/step per axis (already normalised). */
LUNET_API lunet_tensor *lunet_op_slice(lunet_ctx *ctx, const lunet_tensor *x, const int64_t *start,
                                       const int64_t *stop, const int64_t *step);
/* dst[start:stop:step] = src, in place (src has the slice's element count). */
LUNET_API lunet_status lunet_op_assign_slice(lunet_ctx *ctx, lunet_tensor *dst,
                                             const int64_t *start, const int64_t *stop,
                                             const int64_t *step, const lunet_tensor *src);
LUNET_API lunet_tensor *lunet_op_concat(lunet_ctx *ctx, lunet_tensor *const *xs, int n, int axis);

/* Fused optimizer updates, in place on p and the state tensors. */
LUNET_API lunet_status lunet_op_sgd_update(lunet_ctx *ctx, lunet_tensor *p, const lunet_tensor *g,
                                           lunet_tensor *velocity, float lr, float momentum,
                                           bool nesterov, float weight_decay);
/* Keras's Adam: alpha = lr*sqrt(1-b2^t)/(1-b1^t); p -= alpha*m/(sqrt(v)+eps).
 * weight_decay > 0 is AdamW's decoupled decay: p -= lr*wd*p. */
LUNET_API lunet_status lunet_op_adam_update(lunet_ctx *ctx, lunet_tensor *p, const lunet_tensor *g,
                                            lunet_tensor *m, lunet_tensor *v, float lr, float beta1,
                                            float beta2, float epsilon, float weight_decay,
                                            int64_t step);
LUNET_API lunet_status lunet_op_rmsprop_update(lunet_ctx *ctx, lunet_tensor *p,
                                               const lunet_tensor *g, lunet_tensor *ms,
                                               lunet_tensor *mom, float lr, float rho,
                                               float momentum, float epsilon);

/* An optimizer step over many tensors: the optimizer and its
 * hyper-parameters, as the single ops above take them (the backend's
 * update_multi, ABI 2.6, takes the same). */
typedef enum { LUNET_UPDATE_SGD, LUNET_UPDATE_ADAM, LUNET_UPDATE_RMSPROP } lunet_update_kind;
typedef struct lunet_update_desc {
  lunet_update_kind kind;
  float lr;
  float beta1, beta2;  /* Adam */
  float rho;           /* RMSprop */
  float momentum;      /* SGD, RMSprop */
  float epsilon;       /* Adam, RMSprop */
  float weight_decay;  /* SGD, Adam */
  bool nesterov;       /* SGD */
  int64_t step;        /* Adam: the count of updates including this one */
} lunet_update_desc;

/* Each tensor t of count updated as the single op above would update it
 * (p[t], g[t], s1[t], s2[t]: velocity; m, v; mean square, momentum), the
 * same bits, in one backend call where the backend has one (a device: one
 * dispatch for several tensors); s1[t] and s2[t] may be NULL where the
 * single op allows it. */
LUNET_API lunet_status lunet_op_update_multi(lunet_ctx *ctx, const lunet_update_desc *u, int count,
                                             lunet_tensor *const *p, const lunet_tensor *const *g,
                                             lunet_tensor *const *s1, lunet_tensor *const *s2);

/* How a resample reads outside the image (Keras's fill_mode). */
typedef enum lunet_fill_mode {
  LUNET_FILL_REFLECT = 0, /* d c b a | a b c d | d c b a */
  LUNET_FILL_CONSTANT,    /* k k k k | a b c d | k k k k */
  LUNET_FILL_NEAREST,     /* a a a a | a b c d | d d d d */
  LUNET_FILL_WRAP         /* a b c d | a b c d | a b c d */
} lunet_fill_mode;

/* Per-sample affine resample (augmentation): mats (N, 6) on the host map
 * output pixel (x, y) to input (m0*x + m1*y + m2, m3*x + m4*y + m5), pixel
 * centres at integers, bilinear.  x (N,H,W,C) -> y (N,OH,OW,C). */
LUNET_API lunet_tensor *lunet_op_affine_resample(lunet_ctx *ctx, const lunet_tensor *x,
                                                 const float *mats, int64_t oh, int64_t ow,
                                                 lunet_fill_mode mode, float fill);

/* ---- differentiable ops (record on the tape) ---- */

LUNET_API lunet_tensor *lunet_add(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_sub(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_mul(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_div(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_pow(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_maximum(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_compare(lunet_ctx *ctx, lunet_binary_op op, lunet_tensor *a,
                                      lunet_tensor *b);
LUNET_API lunet_tensor *lunet_unary(lunet_ctx *ctx, lunet_unary_op op, lunet_tensor *x, float alpha,
                                    float beta);
LUNET_API lunet_tensor *lunet_matmul(lunet_ctx *ctx, lunet_tensor *a, lunet_tensor *b);
LUNET_API lunet_tensor *lunet_reduce(lunet_ctx *ctx, lunet_reduce_op op, lunet_tensor *x, int axis,
                                     bool keepdims);
LUNET_API lunet_tensor *lunet_reshape(lunet_ctx *ctx, lunet_tensor *x, int ndim,
                                      const int64_t *shape);
LUNET_API lunet_tensor *lunet_permute(lunet_ctx *ctx, lunet_tensor *x, const int *perm);
LUNET_API lunet_tensor *lunet_slice(lunet_ctx *ctx, lunet_tensor *x, const int64_t *start,
                                    const int64_t *stop, const int64_t *step);
LUNET_API lunet_tensor *lunet_concat(lunet_ctx *ctx, lunet_tensor *const *xs, int n, int axis);
LUNET_API lunet_tensor *lunet_softmax(lunet_ctx *ctx, lunet_tensor *x, bool log);
/* x's rows idx[0..n) along axis 0 (host indices, in range; repeats
 * allowed); the gradient scatters back, adding repeats. */
LUNET_API lunet_tensor *lunet_take_rows(lunet_ctx *ctx, lunet_tensor *x, const int64_t *idx, int64_t n);
/* torch.index_select: the entries idx[0..n) of x along `axis` (0-based,
 * negative from the end). */
LUNET_API lunet_tensor *lunet_index_select(lunet_ctx *ctx, lunet_tensor *x, int axis, const int64_t *idx,
                                           int64_t n);
/* torch.gather: out (index's shape) with out[..i_axis..] = x[..index[...]..]
 * along `axis`; index (int32, or float32 whole numbers) has x's rank and
 * no larger sizes on the other axes. */
LUNET_API lunet_tensor *lunet_gather(lunet_ctx *ctx, lunet_tensor *x, int axis, const lunet_tensor *index);
/* Picks, orders and sums (select.c); gradients flow to the values.
 * where: a where cond is nonzero, else b (numpy broadcasting; exact: the
 * branch not taken never enters the arithmetic). */
LUNET_API lunet_tensor *lunet_where(lunet_ctx *ctx, const lunet_tensor *cond, lunet_tensor *a, lunet_tensor *b);
/* triu (upper) / tril of the last two axes: entries with col - row >= k
 * (triu) or <= k (tril) kept, the rest 0. */
LUNET_API lunet_tensor *lunet_triangle(lunet_ctx *ctx, lunet_tensor *x, int64_t k, bool upper);
/* int32 indices that sort each line along `axis` (stable; NaN last). */
LUNET_API lunet_tensor *lunet_argsort(lunet_ctx *ctx, const lunet_tensor *x, int axis, bool descending);
/* The k largest (or smallest) along `axis`, sorted: values (differentiable)
 * and int32 indices. */
LUNET_API lunet_status lunet_topk(lunet_ctx *ctx, lunet_tensor *x, int64_t k, int axis, bool largest,
                                  lunet_tensor **values, lunet_tensor **indices);
/* Running sums along `axis`. */
LUNET_API lunet_tensor *lunet_cumsum(lunet_ctx *ctx, lunet_tensor *x, int axis);
/* The LSTM cell, fused (cells.c): z (n, 4u) the pre-activations of gates
 * i, f, c, o; cp (n, u) the previous cell or NULL (zeros); act for the
 * candidate and the output, rec for the gates (TANH, SIGMOID, RELU or
 * AFFINE = identity).  Returns [h, c] as (n, 2u); differentiable. */
LUNET_API lunet_tensor *lunet_lstm_cell(lunet_ctx *ctx, lunet_tensor *z, lunet_tensor *cp, lunet_unary_op act,
                                        lunet_unary_op rec);
/* The GRU cell (reset_after), fused (cells.c): xs, hs (n, 3u) the input
 * and recurrent parts of gates z, r, h, h (n, u) the state: returns
 * h' = z h + (1 - z) act(xh + r hh) with z, r = rec(x + h parts);
 * differentiable. */
LUNET_API lunet_tensor *lunet_gru_cell(lunet_ctx *ctx, lunet_tensor *xs, lunet_tensor *hs, lunet_tensor *h,
                                       lunet_unary_op act, lunet_unary_op rec);
/* Layer normalization over the last axis, fused (cells.c): y = (x - mean)
 * / sqrt(var + epsilon) * gamma + beta; differentiable in x, gamma and
 * beta. */
LUNET_API lunet_tensor *lunet_layernorm(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *gamma, lunet_tensor *beta,
                                        float epsilon);
/* A copy that passes gradients back to x. */
LUNET_API lunet_tensor *lunet_copy(lunet_ctx *ctx, lunet_tensor *x);

/* Losses: y_pred (N, ...) against y_true; mean over samples (and over the
 * last axis for MSE and binary cross-entropy, as Keras does).
 * sparse: y_true (N) class ids.  from_logits: y_pred are logits. */
typedef enum lunet_loss_kind {
  LUNET_LOSS_MSE = 0,
  LUNET_LOSS_CATEGORICAL_CE,
  LUNET_LOSS_SPARSE_CATEGORICAL_CE,
  LUNET_LOSS_BINARY_CE,
  /* Keras's regression and margin losses, each a mean over the last axis
   * then over the samples (0.3) */
  LUNET_LOSS_MAE,               /* |y_pred - y_true| */
  LUNET_LOSS_HUBER,             /* 0.5 q^2 + delta (|e| - q), q = min(|e|, delta) */
  LUNET_LOSS_LOG_COSH,          /* log(cosh(y_pred - y_true)) */
  LUNET_LOSS_KL_DIVERGENCE,     /* sum y_true log(y_true / y_pred), both clipped to [1e-7, 1] */
  LUNET_LOSS_HINGE,             /* max(1 - y_true y_pred, 0), 0/1 labels read as -1/1 */
  LUNET_LOSS_SQUARED_HINGE,     /* max(1 - y_true y_pred, 0)^2, likewise */
  LUNET_LOSS_CATEGORICAL_HINGE, /* max(max((1 - t) p) - sum(t p) + 1, 0) */
  LUNET_LOSS_COSINE_SIMILARITY, /* -sum(l2n(y_true) l2n(y_pred)) */
  LUNET_LOSS_COUNT
} lunet_loss_kind;
/* Keras's name of a loss ("mean_squared_error"), and the kind of a name
 * (also Keras's short ones: mse, mae, kld, huber ...; -1 if unknown). */
LUNET_API const char *lunet_loss_name(lunet_loss_kind kind);
LUNET_API int lunet_loss_find(const char *name);
LUNET_API lunet_tensor *lunet_loss(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *y_pred,
                                   lunet_tensor *y_true, bool from_logits);
/* With one weight per sample (N,) or (N, 1) (NULL: all 1), reduced as
 * Keras does: sum(w_i * loss_i) / (number of rows), a row's loss being the
 * mean over its last axis where the loss is per element; a sequence output
 * (N, T, ...) gives each of a sample's T rows its weight. */
LUNET_API lunet_tensor *lunet_loss_weighted(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *y_pred,
                                            lunet_tensor *y_true, bool from_logits,
                                            const lunet_tensor *sample_weight);

/* Every option of a loss.  delta: Huber's threshold (<= 0: Keras's 1.0);
 * label_smoothing in [0, 1]: categorical targets become t (1 - s) + s / K,
 * binary ones t (1 - s) + s / 2 (Keras); other losses refuse it. */
typedef struct lunet_loss_options {
  bool from_logits;
  double delta;
  double label_smoothing;
  const lunet_tensor *sample_weight; /* NULL: every sample weighs 1 */
} lunet_loss_options;
LUNET_API lunet_tensor *lunet_loss_ex(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *y_pred,
                                      lunet_tensor *y_true, const lunet_loss_options *opts);

#ifdef __cplusplus
}
#endif

#endif
