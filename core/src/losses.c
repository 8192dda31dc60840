/* Losses as tape ops; Keras's definitions and its probability clipping. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define EPS 1e-7f

/* dlogits dy / rows; dy is the loss's gradient, most often the backward's
 * seed of 1 (the loss is the root): then one op, not a product by 1 first
 * (the same bits: x * 1 is x). */
static lunet_status xent_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                  lunet_tensor **dx) {
  lunet_tensor *g = dy->unit ? lunet_tensor_retain(n->saved[0]) : lunet_op_binary(ctx, LUNET_BINARY_MUL, n->saved[0], dy);
  dx[0] = g ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, g, n->fparams[0], 0) : NULL;
  lunet_tensor_release(g);
  return dx[0] ? LUNET_OK : ctx->status;
}

/* Fused softmax + sparse cross-entropy on logits: mean over rows. */
static lunet_tensor *sparse_xent_logits(lunet_ctx *ctx, lunet_tensor *logits,
                                        lunet_tensor *labels) {
  bool grad = lunet_needs_grad(ctx, 1, &logits);
  lunet_tensor *dlogits = NULL;
  lunet_tensor *rows = lunet_op_softmax_xent(ctx, logits, labels, grad ? &dlogits : NULL);
  lunet_tensor *loss =
      rows ? lunet_op_reduce(ctx, LUNET_REDUCE_MEAN, rows, LUNET_ALL_AXES, false) : NULL;
  int64_t nrows = rows ? rows->numel : 1;
  lunet_tensor_release(rows);
  if (loss && grad) {
    lunet_node *n = lunet_node_new(ctx, "sparse_categorical_crossentropy", 1, &logits);
    if (!n) {
      lunet_tensor_release(loss);
      loss = NULL;
    } else {
      n->backward = xent_backward;
      n->saved[0] = dlogits;
      dlogits = NULL;
      n->fparams[0] = 1.0f / (float)(nrows ? nrows : 1);
      lunet_node_attach(loss, n);
    }
  }
  lunet_tensor_release(dlogits);
  return loss;
}

/* A constant tensor on t's backend from host floats. */
static lunet_tensor *constant(lunet_ctx *ctx, const lunet_tensor *like, int ndim,
                              const int64_t *shape, const float *data) {
  lunet_tensor *t = lunet_op_new(ctx, like, LUNET_F32, ndim, shape);
  if (t && lunet_tensor_write(ctx, t, data, sizeof(float) * (size_t)t->numel)) {
    lunet_tensor_release(t);
    return NULL;
  }
  return t;
}

/* The batch's loss from the loss terms e: their mean without sample
 * weights (as before weights existed); with weights w (one per sample, or
 * one per row: a sequence's positions), Keras's sum_over_batch_size: each
 * row's loss (a per-element e first averaged over its last axis) times its
 * weight, summed and divided by the number of rows (not by the sum of the
 * weights). */
static lunet_tensor *reduce_terms(lunet_ctx *ctx, lunet_tensor *e, bool per_element, const lunet_tensor *w) {
  if (!e) return NULL;
  if (!w) return lunet_reduce(ctx, LUNET_REDUCE_MEAN, e, LUNET_ALL_AXES, false);
  lunet_tensor *rows = per_element && e->ndim > 1 ? lunet_reduce(ctx, LUNET_REDUCE_MEAN, e, -1, false)
                                                  : lunet_tensor_retain(e);
  int64_t shape[LUNET_MAX_DIMS];
  bool per_row = rows && w->numel == rows->numel;
  for (int i = 0; rows && i < rows->ndim; i++) shape[i] = per_row || !i ? rows->shape[i] : 1;
  lunet_tensor *wb = rows ? lunet_tensor_alias(ctx, (lunet_tensor *)w, rows->ndim, shape) : NULL;
  lunet_tensor *prod = wb ? lunet_mul(ctx, rows, wb) : NULL;
  lunet_tensor *loss = prod ? lunet_reduce(ctx, LUNET_REDUCE_MEAN, prod, LUNET_ALL_AXES, false) : NULL;
  lunet_tensor_release(rows);
  lunet_tensor_release(wb);
  lunet_tensor_release(prod);
  return loss;
}

/* One-hot rows (R, K) from class ids, checking their range. */
static lunet_tensor *one_hot(lunet_ctx *ctx, const lunet_tensor *pred, lunet_tensor *labels) {
  int64_t k = pred->shape[pred->ndim - 1], r = pred->numel / (k ? k : 1);
  float *ids = malloc(sizeof(float) * (size_t)(r ? r : 1));
  float *oh = calloc((size_t)(r * k > 0 ? r * k : 1), sizeof(float));
  lunet_tensor *t = NULL;
  if (!ids || !oh) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for one-hot labels");
  } else if (lunet_tensor_read(ctx, labels, ids, sizeof(float) * (size_t)r) == LUNET_OK) {
    int64_t bad = -1;
    for (int64_t i = 0; i < r && bad < 0; i++) {
      int64_t c = (int64_t)ids[i];
      if ((float)c != ids[i] || c < 0 || c >= k)
        bad = i;
      else
        oh[i * k + c] = 1.0f;
    }
    if (bad >= 0)
      lunet_error(ctx, LUNET_ERR_ARG, "label %g at row %lld is outside [0, %lld)", ids[bad],
                  (long long)bad, (long long)k);
    else
      t = constant(ctx, pred, pred->ndim, pred->shape, oh);
  }
  free(ids);
  free(oh);
  return t;
}

/* -mean(sum(onehot * log(clip(p)), -1)) and friends: differentiable ops. */
static lunet_tensor *neg_mean_sum(lunet_ctx *ctx, lunet_tensor *target, lunet_tensor *logp,
                                  const lunet_tensor *w) {
  lunet_tensor *prod = lunet_mul(ctx, target, logp);
  lunet_tensor *s = prod ? lunet_reduce(ctx, LUNET_REDUCE_SUM, prod, -1, false) : NULL;
  lunet_tensor *m = reduce_terms(ctx, s, false, w);
  lunet_tensor *loss = m ? lunet_unary(ctx, LUNET_UNARY_NEG, m, 0, 0) : NULL;
  lunet_tensor_release(prod);
  lunet_tensor_release(s);
  lunet_tensor_release(m);
  return loss;
}

static lunet_tensor *log_clipped(lunet_ctx *ctx, lunet_tensor *p) {
  lunet_tensor *c = lunet_unary(ctx, LUNET_UNARY_CLIP, p, EPS, 1.0f - EPS);
  lunet_tensor *l = c ? lunet_unary(ctx, LUNET_UNARY_LOG, c, 0, 0) : NULL;
  lunet_tensor_release(c);
  return l;
}

static lunet_tensor *categorical(lunet_ctx *ctx, lunet_tensor *pred, lunet_tensor *target,
                                 bool from_logits, const lunet_tensor *w) {
  lunet_tensor *logp;
  if (from_logits) {
    logp = lunet_softmax(ctx, pred, true);
  } else { /* Keras rescales the probabilities to sum to one first */
    lunet_tensor *s = lunet_reduce(ctx, LUNET_REDUCE_SUM, pred, -1, true);
    lunet_tensor *p = s ? lunet_div(ctx, pred, s) : NULL;
    logp = p ? log_clipped(ctx, p) : NULL;
    lunet_tensor_release(s);
    lunet_tensor_release(p);
  }
  lunet_tensor *loss = logp ? neg_mean_sum(ctx, target, logp, w) : NULL;
  lunet_tensor_release(logp);
  return loss;
}

static lunet_tensor *mse(lunet_ctx *ctx, lunet_tensor *pred, lunet_tensor *truth, const lunet_tensor *w) {
  lunet_tensor *d = lunet_sub(ctx, pred, truth);
  lunet_tensor *sq = d ? lunet_unary(ctx, LUNET_UNARY_SQUARE, d, 0, 0) : NULL;
  lunet_tensor *loss = reduce_terms(ctx, sq, true, w);
  lunet_tensor_release(d);
  lunet_tensor_release(sq);
  return loss;
}

/* ---- names ---- */

static const char *const names[LUNET_LOSS_COUNT] = {
    "mean_squared_error", "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
    "mean_absolute_error", "huber", "log_cosh", "kl_divergence", "hinge", "squared_hinge", "categorical_hinge",
    "cosine_similarity"};

const char *lunet_loss_name(lunet_loss_kind kind) {
  return (unsigned)kind < LUNET_LOSS_COUNT ? names[kind] : NULL;
}

int lunet_loss_find(const char *name) {
  static const struct {
    const char *alias;
    lunet_loss_kind kind;
  } aliases[] = {{"mse", LUNET_LOSS_MSE},          {"mae", LUNET_LOSS_MAE},
                 {"huber_loss", LUNET_LOSS_HUBER}, {"logcosh", LUNET_LOSS_LOG_COSH},
                 {"kld", LUNET_LOSS_KL_DIVERGENCE}, {"kullback_leibler_divergence", LUNET_LOSS_KL_DIVERGENCE}};
  if (!name) return -1;
  for (int k = 0; k < LUNET_LOSS_COUNT; k++)
    if (!strcmp(name, names[k])) return k;
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (!strcmp(name, aliases[i].alias)) return (int)aliases[i].kind;
  return -1;
}

/* ---- the regression and margin losses: per-row values, then the mean ---- */


static lunet_tensor *u(lunet_ctx *ctx, lunet_unary_op op, lunet_tensor *x, float a, float b) {
  return x ? lunet_unary(ctx, op, x, a, b) : NULL;
}

static lunet_tensor *release_then(lunet_tensor *keep, int n, lunet_tensor **drop) {
  for (int i = 0; i < n; i++) lunet_tensor_release(drop[i]);
  return keep;
}

/* Labels that are all 0 or 1 read as -1/1, as Keras's hinge losses do
 * (convert_binary_labels_to_hinge; any other value: all kept as they are). */
static lunet_tensor *signed_labels(lunet_ctx *ctx, lunet_tensor *t) {
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *one = lunet_scalar_like(ctx, t, 1.0f), *zero = lunet_scalar_like(ctx, t, 0.0f);
  lunet_tensor *is1 = one ? lunet_op_binary(ctx, LUNET_BINARY_EQ, t, one) : NULL;
  lunet_tensor *is0 = zero ? lunet_op_binary(ctx, LUNET_BINARY_EQ, t, zero) : NULL;
  lunet_tensor *either = is1 && is0 ? lunet_op_binary(ctx, LUNET_BINARY_ADD, is1, is0) : NULL;
  lunet_tensor *all = either ? lunet_op_reduce(ctx, LUNET_REDUCE_MIN, either, LUNET_ALL_AXES, false) : NULL;
  lunet_set_grad_enabled(ctx, prev);
  double lo = 0;
  bool binary = all && !lunet_tensor_item(ctx, all, 0, &lo) && lo > 0;
  lunet_tensor *tmp[] = {one, zero, is1, is0, either, all};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
  return binary ? lunet_unary(ctx, LUNET_UNARY_AFFINE, t, 2.0f, -1.0f) : lunet_tensor_retain(t);
}

static lunet_tensor *l2_normalized(lunet_ctx *ctx, lunet_tensor *x) {
  lunet_tensor *sq = u(ctx, LUNET_UNARY_SQUARE, x, 0, 0);
  lunet_tensor *s = sq ? lunet_reduce(ctx, LUNET_REDUCE_SUM, sq, -1, true) : NULL;
  /* Keras's normalize: the norm at least its epsilon 1e-7 */
  lunet_tensor *c = u(ctx, LUNET_UNARY_CLIP, s, 1e-14f, 3.4e38f), *r = u(ctx, LUNET_UNARY_SQRT, c, 0, 0);
  lunet_tensor *y = r ? lunet_div(ctx, x, r) : NULL;
  return release_then(y, 4, (lunet_tensor *[]){sq, s, c, r});
}

/* Per-element terms (elem) or per-row terms (row), reduced by reduce_terms. */
#define elem(e) reduce_terms(ctx, e, true, w)
#define row(e) reduce_terms(ctx, e, false, w)

static lunet_tensor *regression(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *p, lunet_tensor *t,
                                const lunet_tensor *w, float delta) {
  switch (kind) {
  case LUNET_LOSS_MAE: {
    lunet_tensor *d = lunet_sub(ctx, p, t), *a = u(ctx, LUNET_UNARY_ABS, d, 0, 0);
    return release_then(elem(a), 2, (lunet_tensor *[]){d, a});
  }
  case LUNET_LOSS_HUBER: { /* 0.5 q^2 + delta (|e| - q), q = min(|e|, delta) */
    lunet_tensor *d = lunet_sub(ctx, p, t), *a = u(ctx, LUNET_UNARY_ABS, d, 0, 0);
    lunet_tensor *q = u(ctx, LUNET_UNARY_CLIP, a, -3.4e38f, delta);
    lunet_tensor *lin = q ? lunet_sub(ctx, a, q) : NULL, *q2 = u(ctx, LUNET_UNARY_SQUARE, q, 0, 0);
    lunet_tensor *dl = u(ctx, LUNET_UNARY_AFFINE, lin, delta, 0.0f);
    lunet_tensor *hq = u(ctx, LUNET_UNARY_AFFINE, q2, 0.5f, 0.0f), *sum = hq && dl ? lunet_add(ctx, hq, dl) : NULL;
    return release_then(elem(sum), 8, (lunet_tensor *[]){d, a, q, lin, q2, dl, hq, sum});
  }
  case LUNET_LOSS_LOG_COSH: { /* x + log(1 + exp(-2x)) - log 2, stably: |x| + log(1 + exp(-2|x|)) - log 2 */
    lunet_tensor *d = lunet_sub(ctx, p, t), *a = u(ctx, LUNET_UNARY_ABS, d, 0, 0);
    lunet_tensor *m2 = u(ctx, LUNET_UNARY_AFFINE, a, -2.0f, 0.0f), *e = u(ctx, LUNET_UNARY_EXP, m2, 0, 0);
    lunet_tensor *e1 = u(ctx, LUNET_UNARY_AFFINE, e, 1.0f, 1.0f), *l = u(ctx, LUNET_UNARY_LOG, e1, 0, 0);
    lunet_tensor *s = l ? lunet_add(ctx, a, l) : NULL, *y = u(ctx, LUNET_UNARY_AFFINE, s, 1.0f, -0.69314718f);
    return release_then(elem(y), 8, (lunet_tensor *[]){d, a, m2, e, e1, l, s, y});
  }
  case LUNET_LOSS_KL_DIVERGENCE: {
    lunet_tensor *tc = u(ctx, LUNET_UNARY_CLIP, t, 1e-7f, 1.0f), *pc = u(ctx, LUNET_UNARY_CLIP, p, 1e-7f, 1.0f);
    lunet_tensor *r = tc && pc ? lunet_div(ctx, tc, pc) : NULL, *l = u(ctx, LUNET_UNARY_LOG, r, 0, 0);
    lunet_tensor *m = l ? lunet_mul(ctx, tc, l) : NULL;
    lunet_tensor *s = m ? lunet_reduce(ctx, LUNET_REDUCE_SUM, m, -1, false) : NULL;
    return release_then(row(s), 6, (lunet_tensor *[]){tc, pc, r, l, m, s});
  }
  case LUNET_LOSS_HINGE:
  case LUNET_LOSS_SQUARED_HINGE: {
    lunet_tensor *ts = signed_labels(ctx, t), *m = ts ? lunet_mul(ctx, ts, p) : NULL;
    lunet_tensor *om = u(ctx, LUNET_UNARY_AFFINE, m, -1.0f, 1.0f), *h = u(ctx, LUNET_UNARY_RELU, om, 0, 0);
    lunet_tensor *h2 = kind == LUNET_LOSS_SQUARED_HINGE ? u(ctx, LUNET_UNARY_SQUARE, h, 0, 0) : (h ? lunet_tensor_retain(h) : NULL);
    return release_then(elem(h2), 5, (lunet_tensor *[]){ts, m, om, h, h2});
  }
  case LUNET_LOSS_CATEGORICAL_HINGE: {
    lunet_tensor *tp = lunet_mul(ctx, t, p), *pos = tp ? lunet_reduce(ctx, LUNET_REDUCE_SUM, tp, -1, false) : NULL;
    lunet_tensor *nt = u(ctx, LUNET_UNARY_AFFINE, t, -1.0f, 1.0f), *np = nt ? lunet_mul(ctx, nt, p) : NULL;
    lunet_tensor *neg = np ? lunet_reduce(ctx, LUNET_REDUCE_MAX, np, -1, false) : NULL;
    lunet_tensor *d = neg && pos ? lunet_sub(ctx, neg, pos) : NULL;
    lunet_tensor *d1 = u(ctx, LUNET_UNARY_AFFINE, d, 1.0f, 1.0f), *h = u(ctx, LUNET_UNARY_RELU, d1, 0, 0);
    return release_then(row(h), 8, (lunet_tensor *[]){tp, pos, nt, np, neg, d, d1, h});
  }
  case LUNET_LOSS_COSINE_SIMILARITY: {
    lunet_tensor *a = l2_normalized(ctx, t), *b = l2_normalized(ctx, p), *m = a && b ? lunet_mul(ctx, a, b) : NULL;
    lunet_tensor *s = m ? lunet_reduce(ctx, LUNET_REDUCE_SUM, m, -1, false) : NULL;
    lunet_tensor *n = u(ctx, LUNET_UNARY_NEG, s, 0, 0);
    return release_then(row(n), 5, (lunet_tensor *[]){a, b, m, s, n});
  }
  default:
    lunet_error(ctx, LUNET_ERR_ARG, "unknown loss kind %d", (int)kind);
    return NULL;
  }
}

#undef elem
#undef row

/* Keras: logits: max(x,0) - x*z + log(1 + exp(-|x|)); else clipped logs.
 * max(x, 0) is written (x + |x|) / 2: the same value, and with |x|'s
 * gradient 0 at 0 the sum's gradient there is sigmoid(0) - z = 0.5 - z (as
 * relu, whose gradient at 0 is 0, it was -z: a Dense started at zeros took
 * a wrong first step). */
static lunet_tensor *binary_xent(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *z,
                                 bool from_logits, const lunet_tensor *w) {
  lunet_tensor *t[9] = {0}, *loss = NULL;
  if (from_logits) {
    if ((t[3] = lunet_unary(ctx, LUNET_UNARY_ABS, x, 0, 0)) && (t[8] = lunet_add(ctx, x, t[3])) &&
        (t[0] = lunet_unary(ctx, LUNET_UNARY_AFFINE, t[8], 0.5f, 0)) && (t[1] = lunet_mul(ctx, x, z)) &&
        (t[2] = lunet_sub(ctx, t[0], t[1])) &&
        (t[4] = lunet_unary(ctx, LUNET_UNARY_AFFINE, t[3], -1, 0)) &&
        (t[5] = lunet_unary(ctx, LUNET_UNARY_EXP, t[4], 0, 0)) &&
        (t[6] = lunet_unary(ctx, LUNET_UNARY_AFFINE, t[5], 1, 1)) &&
        (t[7] = lunet_unary(ctx, LUNET_UNARY_LOG, t[6], 0, 0))) {
      lunet_tensor *sum = lunet_add(ctx, t[2], t[7]);
      loss = reduce_terms(ctx, sum, true, w);
      lunet_tensor_release(sum);
    }
  } else {
    /* -(z log p + (1 - z) log(1 - p)), p clipped to [eps, 1 - eps] first, as Keras's: at p = 1 the second
     * term is log(1 - float32(1 - 1e-7)) = log(1.19e-7), not log(1e-7) */
    if ((t[8] = lunet_unary(ctx, LUNET_UNARY_CLIP, x, EPS, 1.0f - EPS)) &&
        (t[0] = lunet_unary(ctx, LUNET_UNARY_LOG, t[8], 0, 0)) &&
        (t[1] = lunet_unary(ctx, LUNET_UNARY_AFFINE, t[8], -1, 1)) &&
        (t[2] = lunet_unary(ctx, LUNET_UNARY_LOG, t[1], 0, 0)) && (t[3] = lunet_mul(ctx, z, t[0])) &&
        (t[4] = lunet_unary(ctx, LUNET_UNARY_AFFINE, z, -1, 1)) &&
        (t[5] = lunet_mul(ctx, t[4], t[2])) && (t[6] = lunet_add(ctx, t[3], t[5])) &&
        (t[7] = reduce_terms(ctx, t[6], true, w)))
      loss = lunet_unary(ctx, LUNET_UNARY_NEG, t[7], 0, 0);
  }
  for (int i = 0; i < 9; i++) lunet_tensor_release(t[i]);
  return loss;
}

static bool same_count(lunet_ctx *ctx, const char *name, const lunet_tensor *pred,
                       const lunet_tensor *truth, int64_t want) {
  if (truth->numel == want) return true;
  char a[128], b[128];
  lunet_error(ctx, LUNET_ERR_SHAPE, "%s: y_pred has shape %s but y_true has shape %s", name,
              lunet_shape_str(pred->ndim, pred->shape, a, sizeof a),
              lunet_shape_str(truth->ndim, truth->shape, b, sizeof b));
  return false;
}

static lunet_tensor *loss(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred,
                          lunet_tensor *truth, bool from_logits, const lunet_tensor *w, float delta);

/* Sample weights as float32 (N) with one per sample of pred, or an error. */
/* The weights w as a flat float32 vector: one per sample (N), or one per
 * row of `rows` positions (a sequence output's (N, T) positions, as the
 * model weighs a padding mask). */
static lunet_tensor *sample_weights(lunet_ctx *ctx, const lunet_tensor *pred, const lunet_tensor *w, int64_t rows) {
  bool per_sample = w->numel == pred->shape[0] && (w->ndim <= 1 || w->numel == w->shape[0]);
  if (!per_sample && w->numel != rows) {
    char a[128], b[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "sample_weight has shape %s, but y_pred %s: give one weight per sample",
                lunet_shape_str(w->ndim, w->shape, a, sizeof a), lunet_shape_str(pred->ndim, pred->shape, b, sizeof b));
    return NULL;
  }
  int64_t n = w->numel;
  lunet_tensor *f = w->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)w) : lunet_op_cast(ctx, w, LUNET_F32);
  lunet_tensor *flat = f ? lunet_tensor_alias(ctx, f, 1, &n) : NULL;
  lunet_tensor_release(f);
  return flat;
}

/* Labels in any dtype become float32, and targets with the prediction's
 * element count take its shape: a (N,) target against a (N, 1) prediction
 * must not broadcast into an (N, N) loss. */
lunet_tensor *lunet_loss_mean_rows(lunet_ctx *ctx, lunet_tensor *rows, const lunet_tensor *sample_weight) {
  if (!sample_weight) return reduce_terms(ctx, rows, false, NULL);
  lunet_tensor *w = sample_weights(ctx, rows, sample_weight, rows->numel);
  lunet_tensor *loss = w ? reduce_terms(ctx, rows, false, w) : NULL;
  lunet_tensor_release(w);
  return loss;
}

lunet_tensor *lunet_loss(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred,
                         lunet_tensor *truth, bool from_logits) {
  return lunet_loss_weighted(ctx, kind, pred, truth, from_logits, NULL);
}

lunet_tensor *lunet_loss_weighted(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred, lunet_tensor *truth,
                                  bool from_logits, const lunet_tensor *sample_weight) {
  lunet_loss_options o = {.from_logits = from_logits, .sample_weight = sample_weight};
  return lunet_loss_ex(ctx, kind, pred, truth, &o);
}

/* Keras's label smoothing of targets t with K classes (K 2 for binary). */
static lunet_tensor *smoothed(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred, lunet_tensor *t, double s) {
  double k = kind == LUNET_LOSS_BINARY_CE ? 2 : (double)pred->shape[pred->ndim - 1];
  return lunet_op_unary(ctx, LUNET_UNARY_AFFINE, t, (float)(1 - s), (float)(s / k));
}

lunet_tensor *lunet_loss_ex(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred, lunet_tensor *truth,
                            const lunet_loss_options *opts) {
  bool from_logits = opts->from_logits;
  const lunet_tensor *sample_weight = opts->sample_weight;
  double ls = opts->label_smoothing;
  if (!(ls >= 0 && ls <= 1)) {
    lunet_error(ctx, LUNET_ERR_ARG, "loss: label_smoothing must be in [0, 1], got %g", ls);
    return NULL;
  }
  if (ls > 0 && kind != LUNET_LOSS_CATEGORICAL_CE && kind != LUNET_LOSS_BINARY_CE) {
    lunet_error(ctx, LUNET_ERR_ARG,
                kind == LUNET_LOSS_SPARSE_CATEGORICAL_CE
                    ? "loss: sparse_categorical_crossentropy takes no label_smoothing (nor does Keras's): make the "
                      "labels one-hot (nn.utils.to_categorical) and use categorical_crossentropy"
                    : "loss: label_smoothing is for categorical_crossentropy and binary_crossentropy, not %s",
                lunet_loss_name(kind));
    return NULL;
  }
  if (pred->ndim < 1) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "loss: y_pred must have a batch axis");
    return NULL;
  }
  lunet_tensor *t =
      truth->dtype == LUNET_F32 ? lunet_tensor_retain(truth) : lunet_op_cast(ctx, truth, LUNET_F32);
  if ((unsigned)kind >= LUNET_LOSS_COUNT) {
    lunet_error(ctx, LUNET_ERR_ARG, "loss: unknown loss kind %d", (int)kind);
    lunet_tensor_release(t);
    return NULL;
  }
  if (t && kind != LUNET_LOSS_SPARSE_CATEGORICAL_CE && t->numel == pred->numel &&
      !lunet_shape_equal(t, pred)) {
    lunet_tensor *r = lunet_tensor_alias(ctx, t, pred->ndim, pred->shape);
    lunet_tensor_release(t);
    t = r;
  }
  if (t && ls > 0) {
    lunet_tensor *s = smoothed(ctx, kind, pred, t, ls);
    lunet_tensor_release(t);
    t = s;
  }
  lunet_tensor *w = t && sample_weight ? sample_weights(ctx, pred, sample_weight, lunet_tensor_positions(pred)) : NULL;
  float delta = opts->delta > 0 ? (float)opts->delta : 1.0f;
  lunet_tensor *l = t && (w || !sample_weight) ? loss(ctx, kind, pred, t, from_logits, w, delta) : NULL;
  lunet_tensor_release(t);
  lunet_tensor_release(w);
  return l;
}

static lunet_tensor *loss(lunet_ctx *ctx, lunet_loss_kind kind, lunet_tensor *pred,
                          lunet_tensor *truth, bool from_logits, const lunet_tensor *w, float delta) {
  int64_t k = pred->shape[pred->ndim - 1];
  switch (kind) {
  case LUNET_LOSS_MSE:
    return same_count(ctx, "mean_squared_error", pred, truth, pred->numel) ? mse(ctx, pred, truth, w)
                                                                           : NULL;
  case LUNET_LOSS_BINARY_CE:
    return same_count(ctx, "binary_crossentropy", pred, truth, pred->numel)
               ? binary_xent(ctx, pred, truth, from_logits, w)
               : NULL;
  case LUNET_LOSS_CATEGORICAL_CE:
    return same_count(ctx, "categorical_crossentropy", pred, truth, pred->numel)
               ? categorical(ctx, pred, truth, from_logits, w)
               : NULL;
  case LUNET_LOSS_SPARSE_CATEGORICAL_CE: {
    if (!same_count(ctx, "sparse_categorical_crossentropy", pred, truth, pred->numel / (k ? k : 1)))
      return NULL;
    if (from_logits && !w) return sparse_xent_logits(ctx, pred, truth);
    lunet_tensor *oh = one_hot(ctx, pred, truth);
    lunet_tensor *loss = oh ? categorical(ctx, pred, oh, from_logits, w) : NULL;
    lunet_tensor_release(oh);
    return loss;
  }
  default:
    return same_count(ctx, lunet_loss_name(kind), pred, truth, pred->numel) ? regression(ctx, kind, pred, truth, w, delta) : NULL;
  }
}
