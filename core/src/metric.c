/* Metrics: a running (total, count) pair, and for accuracies the device
 * computation of one batch's correct count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/model.h"

struct lunet_metric {
  char name[64];
  lunet_metric_kind kind;
  float threshold;
  double total, count;
};

lunet_metric *lunet_metric_new(lunet_ctx *ctx, const char *name, lunet_metric_kind kind,
                               float threshold) {
  if ((unsigned)kind > LUNET_METRIC_BINARY_ACCURACY) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric: unknown kind %d", (int)kind);
    return NULL;
  }
  lunet_metric *m = calloc(1, sizeof *m);
  if (!m) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a metric");
    return NULL;
  }
  snprintf(m->name, sizeof m->name, "%s", name ? name : "metric");
  m->kind = kind;
  m->threshold = threshold;
  return m;
}

void lunet_metric_free(lunet_metric *m) { free(m); }
const char *lunet_metric_name(const lunet_metric *m) { return m->name; }
lunet_metric_kind lunet_metric_kind_get(const lunet_metric *m) { return m->kind; }

void lunet_metric_add(lunet_metric *m, double total, double count) {
  m->total += total;
  m->count += count;
}

double lunet_metric_result(const lunet_metric *m) {
  return m->count > 0 ? m->total / m->count : 0.0;
}

void lunet_metric_reset(lunet_metric *m) { m->total = m->count = 0; }

void lunet_metric_state(const lunet_metric *m, double *total, double *count) {
  *total = m->total;
  *count = m->count;
}

lunet_status lunet_metric_merge(lunet_ctx *ctx, lunet_metric *dst, const lunet_metric *src) {
  if (dst->kind != src->kind)
    return lunet_error(ctx, LUNET_ERR_ARG, "metric: cannot merge '%s' into '%s' (another kind)",
                       src->name, dst->name);
  lunet_metric_add(dst, src->total, src->count);
  return LUNET_OK;
}

/* Samples (or elements, for binary accuracy) one batch adds to the count. */
double lunet_metric_batch_count(const lunet_metric *m, const lunet_tensor *y_pred) {
  if (m->kind == LUNET_METRIC_BINARY_ACCURACY) return (double)y_pred->numel;
  /* one prediction per position: (N, T, classes) counts N * T */
  int64_t classes = y_pred->ndim ? y_pred->shape[y_pred->ndim - 1] : 1;
  return (double)(classes ? y_pred->numel / classes : 0);
}

/* The number of correct predictions in the batch, as a scalar on the
 * device; NULL with an error.  Binary: y_pred > threshold against y_true
 * (any shape with the same element count); categorical: argmax of both;
 * sparse: argmax of y_pred against the labels. */
lunet_tensor *lunet_metric_correct(lunet_ctx *ctx, const lunet_metric *m, lunet_tensor *y_pred,
                                   lunet_tensor *y_true) {
  if (m->kind == LUNET_METRIC_MEAN) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric '%s' is a mean: give it values with lunet_metric_add",
                m->name);
    return NULL;
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *a = NULL, *b = NULL, *eq = NULL, *s = NULL;
  if (m->kind == LUNET_METRIC_BINARY_ACCURACY) {
    lunet_tensor *th = lunet_scalar_like(ctx, y_pred, m->threshold);
    a = th ? lunet_op_binary(ctx, LUNET_BINARY_GT, y_pred, th) : NULL;
    lunet_tensor_release(th);
  } else {
    a = lunet_op_argmax(ctx, y_pred);
  }
  b = m->kind == LUNET_METRIC_CATEGORICAL_ACCURACY ? lunet_op_argmax(ctx, y_true)
      : y_true->dtype == LUNET_F32                 ? lunet_tensor_retain(y_true)
                                                   : lunet_op_cast(ctx, y_true, LUNET_F32);
  bool fits = a && b;
  if (fits && !lunet_shape_equal(a, b)) {
    if (a->numel != b->numel) {
      fits = false;
      char sa[128], sb[128];
      lunet_error(ctx, LUNET_ERR_SHAPE, "%s: the predictions give %s but the targets are %s",
                  m->name, lunet_shape_str(a->ndim, a->shape, sa, sizeof sa),
                  lunet_shape_str(y_true->ndim, y_true->shape, sb, sizeof sb));
    } else {
      lunet_tensor *r = lunet_op_reshape(ctx, b, a->ndim, a->shape);
      lunet_tensor_release(b);
      fits = (b = r) != NULL;
    }
  }
  if (fits) eq = lunet_op_binary(ctx, LUNET_BINARY_EQ, a, b);
  if (eq) s = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, eq, LUNET_ALL_AXES, false);
  lunet_tensor_release(a);
  lunet_tensor_release(b);
  lunet_tensor_release(eq);
  lunet_set_grad_enabled(ctx, prev);
  return s;
}

lunet_status lunet_metric_update(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred,
                                 lunet_tensor *y_true) {
  lunet_tensor *c = lunet_metric_correct(ctx, m, y_pred, y_true);
  double v = 0;
  lunet_status s = c ? lunet_tensor_item(ctx, c, 0, &v) : ctx->status;
  lunet_tensor_release(c);
  if (!s) lunet_metric_add(m, v, lunet_metric_batch_count(m, y_pred));
  return s;
}
