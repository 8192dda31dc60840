/*
 * Metrics.  Each keeps an additive state: the sums and counts from which
 * its result follows (Keras's "state variables"), so batches, threads and
 * processes combine exactly by adding states: a precision is tp / (tp + fp)
 * over everything seen, never a mean of per-batch precisions.
 *
 * A batch's statistics are computed on the predictions' device as one 1-D
 * float vector (lunet_metric_batch) and read back together with the loss
 * and the other metrics in one download; lunet_metric_absorb adds them to
 * the state in double precision.  The counts of one batch are whole numbers
 * below 2^24, exact in float32.
 *
 * Batch vectors (K classes or columns, T thresholds):
 *   accuracies        [correct]
 *   precision, recall [tp, predicted positive, actual positive]
 *   AUC               [tp at each threshold (T), predicted positive (T),
 *                      actual positive, min(pred), max(pred)]
 *   top-k accuracies  [correct, labels in range]
 *   F1                [tp (K), predicted positive (K), actual positive (K)]
 *   MeanIoU           [confusion matrix (K*K), true rows]
 *   MAE, RMSE         [sum |e|] or [sum e^2]
 *   R2                [sum y (K), sum y^2 (K), sum (y - pred)^2 (K)]
 * The sample, row or element counts come from the shapes, on the host.
 *
 * Weighted (Keras's sample_weight, and a padding mask on a sequence output
 * as the model passes it): one weight per sample or per position (the
 * prediction's shape without its last axis) multiplies every count and sum
 * of its rows or elements, and the batch vector ends with the sum of the
 * weights, from which the weighted count follows (a weight stands for its
 * sample's or position's rows or elements): a weighted mean is
 * sum(w v) / sum(w), as Keras's Mean with sample_weight.  The checks that
 * labels are class ids still count rows, unweighted.
 */
#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/model.h"

struct lunet_metric {
  char name[64];
  lunet_metric_config cfg;
  double *state; /* nstate sums and counts (see above; AUC keeps tp, pp, ap) */
  int nstate;
  double count;  /* samples, rows or elements seen */
  int classes;   /* F1, R2: columns, fixed by the first batch; 0 before it */
  int64_t positions; /* MeanIoU: the positions of the batch last computed */
  lunet_tensor *ids;        /* (1, K) 0 .. K-1 on the last device used, for one-hot */
  lunet_tensor *thresholds; /* (1, T) AUC's thresholds */
};

/* Keras's names, as compile's strings and as classes. */
static const struct {
  const char *string, *class_name, *log_name;
  lunet_metric_kind kind;
} known[] = {
    {"accuracy", NULL, "accuracy", LUNET_METRIC_BINARY_ACCURACY}, /* resolved by compile */
    {NULL, "Accuracy", "accuracy", LUNET_METRIC_ACCURACY},         /* the class: exact equality */
    {"sparse_categorical_accuracy", "SparseCategoricalAccuracy", "sparse_categorical_accuracy",
     LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY},
    {"categorical_accuracy", "CategoricalAccuracy", "categorical_accuracy",
     LUNET_METRIC_CATEGORICAL_ACCURACY},
    {"binary_accuracy", "BinaryAccuracy", "binary_accuracy", LUNET_METRIC_BINARY_ACCURACY},
    {"precision", "Precision", "precision", LUNET_METRIC_PRECISION},
    {"recall", "Recall", "recall", LUNET_METRIC_RECALL},
    {"auc", "AUC", "auc", LUNET_METRIC_AUC},
    {"top_k_categorical_accuracy", "TopKCategoricalAccuracy", "top_k_categorical_accuracy",
     LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY},
    {"sparse_top_k_categorical_accuracy", "SparseTopKCategoricalAccuracy",
     "sparse_top_k_categorical_accuracy", LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY},
    {"f1_score", "F1Score", "f1_score", LUNET_METRIC_F1},
    {"mean_iou", "MeanIoU", "mean_io_u", LUNET_METRIC_MEAN_IOU},
    {"mae", "MeanAbsoluteError", "mean_absolute_error", LUNET_METRIC_MEAN_ABSOLUTE_ERROR},
    {"mean_absolute_error", NULL, "mean_absolute_error", LUNET_METRIC_MEAN_ABSOLUTE_ERROR},
    {"rmse", "RootMeanSquaredError", "root_mean_squared_error",
     LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR},
    {"root_mean_squared_error", NULL, "root_mean_squared_error",
     LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR},
    {"r2_score", "R2Score", "r2_score", LUNET_METRIC_R2},
};
#define NKNOWN (int)(sizeof known / sizeof known[0])

lunet_metric_config lunet_metric_config_defaults(lunet_metric_kind kind) {
  lunet_metric_config c = {.kind = kind, .threshold = 0.5f, .top_k = 5, .num_thresholds = 200,
                           .class_id = -1, .average = LUNET_AVERAGE_MACRO, .sparse_y_true = -1,
                           .sparse_y_pred = -1};
  if (kind == LUNET_METRIC_F1) c.threshold = NAN;
  return c;
}

/* ---- parsing "Name(key=value, ...)" ---- */

static lunet_status bad_spec(lunet_ctx *ctx, const char *spec, const char *why) {
  return lunet_error(ctx, LUNET_ERR_ARG, "metric '%s': %s", spec, why);
}

static int int_value(const char *v, int *out) {
  char *end;
  long x = strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || x < -1 || x > 1000000) return -1;
  *out = (int)x;
  return 0;
}

static int bool_value(const char *v, int *out) {
  if (!strcmp(v, "true")) *out = 1;
  else if (!strcmp(v, "false")) *out = 0;
  else return -1;
  return 0;
}

static lunet_status set_option(lunet_ctx *ctx, const char *spec, lunet_metric_config *c, const char *k,
                               const char *v, char *name, size_t name_len) {
  char why[256];
  int bad = 0, b = 0;
  if (!strcmp(k, "name")) {
    snprintf(name, name_len, "%s", v);
  } else if (!strcmp(k, "threshold") || !strcmp(k, "thresholds")) {
    char *end;
    double x = strtod(v, &end);
    if (!strcmp(v, "none") && c->kind == LUNET_METRIC_F1) x = NAN;
    else if (*v == '\0' || *end != '\0' || !(x >= 0 && x <= 1)) bad = 1;
    c->threshold = (float)x;
  } else if (!strcmp(k, "k")) {
    bad = int_value(v, &c->top_k) || c->top_k < 1;
  } else if (!strcmp(k, "num_classes")) {
    bad = int_value(v, &c->num_classes) || c->num_classes < 1 || c->num_classes > 4096;
  } else if (!strcmp(k, "num_thresholds")) {
    bad = int_value(v, &c->num_thresholds) || c->num_thresholds < 3 || c->num_thresholds > 100000;
  } else if (!strcmp(k, "class_id")) {
    bad = int_value(v, &c->class_id);
  } else if (!strcmp(k, "curve")) {
    bad = strcmp(v, "ROC") && strcmp(v, "PR");
    c->pr_curve = !strcmp(v, "PR");
  } else if (!strcmp(k, "average") || !strcmp(k, "class_aggregation")) {
    if (!strcmp(v, "none")) c->average = LUNET_AVERAGE_NONE;
    else if (!strcmp(v, "micro")) c->average = LUNET_AVERAGE_MICRO;
    else if (!strcmp(v, "macro") || !strcmp(v, "uniform_average")) c->average = LUNET_AVERAGE_MACRO;
    else if (!strcmp(v, "weighted") || !strcmp(v, "variance_weighted") || !strcmp(v, "variance_weighted_average"))
      c->average = LUNET_AVERAGE_WEIGHTED;
    else bad = 1;
    if (c->kind == LUNET_METRIC_R2 && c->average == LUNET_AVERAGE_MICRO) bad = 1;
  } else if (!strcmp(k, "sparse_y_true")) {
    bad = bool_value(v, &b);
    c->sparse_y_true = b;
  } else if (!strcmp(k, "sparse_y_pred")) {
    bad = bool_value(v, &b);
    c->sparse_y_pred = b;
  } else if (!strcmp(k, "from_logits")) {
    bad = bool_value(v, &b);
    c->logits = b;
  } else {
    snprintf(why, sizeof why,
             "unknown option '%s' (options: name, threshold, k, num_classes, num_thresholds, "
             "class_id, curve, average, sparse_y_true, sparse_y_pred, from_logits)",
             k);
    return bad_spec(ctx, spec, why);
  }
  if (bad) {
    snprintf(why, sizeof why, "bad value '%s' for %s", v, k);
    return bad_spec(ctx, spec, why);
  }
  return LUNET_OK;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  if (*s == '"' && e > s + 1 && e[-1] == '"') {
    e[-1] = '\0';
    s++;
  }
  return s;
}

lunet_status lunet_metric_parse(lunet_ctx *ctx, const char *spec, lunet_metric_config *out, char *name,
                                size_t name_len) {
  char buf[512];
  if (!spec || strlen(spec) >= sizeof buf) return lunet_error(ctx, LUNET_ERR_ARG, "metric: no name, or one too long");
  snprintf(buf, sizeof buf, "%s", spec);
  char *open = strchr(buf, '('), *args = NULL;
  if (open) {
    char *close = strrchr(buf, ')');
    if (!close || close < open || trim(close + 1)[0]) return bad_spec(ctx, spec, "unbalanced parentheses");
    *open = *close = '\0';
    args = open + 1;
  }
  char *head = trim(buf);
  int which = -1;
  for (int i = 0; i < NKNOWN && which < 0; i++)
    if ((known[i].string && !strcmp(head, known[i].string)) ||
        (known[i].class_name && !strcmp(head, known[i].class_name)))
      which = i;
  if (which < 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "unknown metric '%s' (valid: accuracy, binary_accuracy, categorical_accuracy, "
                       "sparse_categorical_accuracy, precision, recall, auc, top_k_categorical_accuracy, "
                       "sparse_top_k_categorical_accuracy, f1_score, mean_iou, mae, rmse, r2_score, or "
                       "their Keras class names)",
                       head);
  *out = lunet_metric_config_defaults(known[which].kind);
  bool as_string = known[which].string && !strcmp(head, known[which].string);
  snprintf(name, name_len, "%s", as_string ? head : known[which].log_name);
  for (char *kv = args ? strtok(args, ",") : NULL; kv; kv = strtok(NULL, ",")) {
    char *eq = strchr(kv, '=');
    if (!eq) return bad_spec(ctx, spec, "options are key=value, separated by commas");
    *eq = '\0';
    lunet_status s = set_option(ctx, spec, out, trim(kv), trim(eq + 1), name, name_len);
    if (s) return s;
  }
  if (out->kind == LUNET_METRIC_MEAN_IOU && out->num_classes < 1)
    return bad_spec(ctx, spec, "MeanIoU needs num_classes (the number of classes, e.g. MeanIoU(num_classes=21))");
  return LUNET_OK;
}

/* ---- objects ---- */

lunet_metric *lunet_metric_new_config(lunet_ctx *ctx, const char *name, const lunet_metric_config *cfg) {
  if ((unsigned)cfg->kind >= LUNET_METRIC_KIND_COUNT) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric: unknown kind %d", (int)cfg->kind);
    return NULL;
  }
  if (cfg->kind == LUNET_METRIC_MEAN_IOU && cfg->num_classes < 1) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric '%s': MeanIoU needs num_classes", name ? name : "mean_io_u");
    return NULL;
  }
  /* the limits lunet_metric_parse puts on a spec, for a config made in C */
  lunet_metric_kind k = cfg->kind;
  bool top = k == LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY || k == LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY;
  const char *bad = top && cfg->top_k < 1 ? "top_k must be at least 1"
                    : k == LUNET_METRIC_MEAN_IOU && cfg->num_classes > 4096 ? "num_classes must be 1 to 4096"
                    : k == LUNET_METRIC_AUC && (cfg->num_thresholds < 3 || cfg->num_thresholds > 100000)
                        ? "num_thresholds must be 3 to 100000"
                        : NULL;
  if (bad) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric '%s': %s", name ? name : "metric", bad);
    return NULL;
  }
  lunet_metric *m = calloc(1, sizeof *m);
  int n = 0; /* the state's size, when the kind alone fixes it */
  switch (cfg->kind) {
  case LUNET_METRIC_PRECISION:
  case LUNET_METRIC_RECALL: n = 3; break;
  case LUNET_METRIC_AUC: n = 2 * cfg->num_thresholds + 1; break;
  case LUNET_METRIC_MEAN_IOU: n = cfg->num_classes * cfg->num_classes; break;
  case LUNET_METRIC_F1:
  case LUNET_METRIC_R2: n = 0; break;
  default: n = 1;
  }
  if (m && n) m->state = calloc((size_t)n, sizeof *m->state);
  if (!m || (n && !m->state)) {
    free(m);
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a metric");
    return NULL;
  }
  m->nstate = n;
  snprintf(m->name, sizeof m->name, "%s", name ? name : "metric");
  m->cfg = *cfg;
  return m;
}

lunet_metric *lunet_metric_new(lunet_ctx *ctx, const char *name, lunet_metric_kind kind, float threshold) {
  if ((unsigned)kind > LUNET_METRIC_BINARY_ACCURACY) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric: kind %d needs its options (use lunet_metric_new_config)",
                (int)kind);
    return NULL;
  }
  lunet_metric_config c = lunet_metric_config_defaults(kind);
  c.threshold = threshold;
  return lunet_metric_new_config(ctx, name, &c);
}

void lunet_metric_free(lunet_metric *m) {
  if (!m) return;
  lunet_tensor_release(m->ids);
  lunet_tensor_release(m->thresholds);
  free(m->state);
  free(m);
}

const char *lunet_metric_name(const lunet_metric *m) { return m->name; }
lunet_metric_kind lunet_metric_kind_get(const lunet_metric *m) { return m->cfg.kind; }
const lunet_metric_config *lunet_metric_config_get(const lunet_metric *m) { return &m->cfg; }

bool lunet_metric_needs_probabilities(const lunet_metric *m) {
  switch (m->cfg.kind) {
  case LUNET_METRIC_MEAN:
  case LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_MEAN_IOU: return false; /* argmax and ranks: the same on logits */
  default: return true;
  }
}

void lunet_metric_add(lunet_metric *m, double total, double count) {
  m->state[0] += total;
  m->count += count;
}

void lunet_metric_reset(lunet_metric *m) {
  if (m->state) memset(m->state, 0, sizeof *m->state * (size_t)m->nstate);
  m->count = 0;
}

void lunet_metric_state(const lunet_metric *m, double *total, double *count) {
  *total = m->nstate ? m->state[0] : 0;
  *count = m->count;
}

int lunet_metric_state_vector(const lunet_metric *m, double *out, int n) {
  for (int i = 0; i < m->nstate && i < n; i++) out[i] = m->state[i];
  if (m->nstate && m->nstate < n) out[m->nstate] = m->count;
  return m->nstate ? m->nstate + 1 : 0;
}

/* F1 and R2 learn their column count from the first batch. */
static lunet_status size_state(lunet_ctx *ctx, lunet_metric *m, int classes) {
  if (m->classes == classes && m->state) return LUNET_OK;
  if (m->classes && m->classes != classes)
    return lunet_error(ctx, LUNET_ERR_SHAPE,
                       "%s: this batch has %d classes (columns), earlier ones had %d (reset_state first "
                       "to measure another model)",
                       m->name, classes, m->classes);
  double *s = calloc((size_t)3 * (size_t)classes, sizeof *s);
  if (!s) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a metric");
  free(m->state);
  m->state = s;
  m->nstate = 3 * classes;
  m->classes = classes;
  return LUNET_OK;
}

lunet_status lunet_metric_set_state_vector(lunet_ctx *ctx, lunet_metric *m, const double *v, int n) {
  if (!m->nstate && n > 1 && (n - 1) % 3 == 0 &&
      (m->cfg.kind == LUNET_METRIC_F1 || m->cfg.kind == LUNET_METRIC_R2)) {
    lunet_status s = size_state(ctx, m, (n - 1) / 3);
    if (s) return s;
  }
  if (n != m->nstate + 1)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: a state of %d values, expected %d", m->name, n,
                       m->nstate + 1);
  memcpy(m->state, v, sizeof *v * (size_t)m->nstate);
  m->count = v[m->nstate];
  return LUNET_OK;
}

static bool same_config(const lunet_metric_config *a, const lunet_metric_config *b) {
  return a->kind == b->kind && (a->threshold == b->threshold || (isnan(a->threshold) && isnan(b->threshold))) &&
         a->top_k == b->top_k && a->num_classes == b->num_classes &&
         a->num_thresholds == b->num_thresholds && a->class_id == b->class_id &&
         a->pr_curve == b->pr_curve && a->average == b->average && a->logits == b->logits &&
         a->sparse_y_true == b->sparse_y_true && a->sparse_y_pred == b->sparse_y_pred;
}

lunet_status lunet_metric_merge(lunet_ctx *ctx, lunet_metric *dst, const lunet_metric *src) {
  if (!same_config(&dst->cfg, &src->cfg))
    return lunet_error(ctx, LUNET_ERR_ARG, "metric: cannot merge '%s' into '%s' (another kind or options)",
                       src->name, dst->name);
  if (!src->nstate) return LUNET_OK;
  if (!dst->nstate && src->classes) {
    lunet_status s = size_state(ctx, dst, src->classes);
    if (s) return s;
  }
  if (dst->nstate != src->nstate)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "metric: cannot merge '%s' (%d classes) into '%s' (%d)",
                       src->name, src->classes, dst->name, dst->classes);
  for (int i = 0; i < dst->nstate; i++) dst->state[i] += src->state[i];
  dst->count += src->count;
  return LUNET_OK;
}

/* ---- results ---- */

static double ratio(double a, double b) { return b != 0 ? a / b : 0.0; } /* Keras's divide_no_nan */

/* Keras's AUC by interpolation: ROC by the trapezoid rule over (fpr, tpr);
 * PR by Davis and Goadrich's interpolation, which is linear in the true
 * positives between thresholds, not in precision. */
static double auc_result(const lunet_metric *m) {
  int t = m->cfg.num_thresholds;
  const double *tp = m->state, *pp = m->state + t;
  double ap = m->state[2 * t], an = m->count - ap;
  double area = 0;
  for (int i = 0; i + 1 < t; i++) {
    if (!m->cfg.pr_curve) {
      double fpr0 = ratio(pp[i] - tp[i], an), fpr1 = ratio(pp[i + 1] - tp[i + 1], an);
      double tpr0 = ratio(tp[i], ap), tpr1 = ratio(tp[i + 1], ap);
      area += (fpr0 - fpr1) * (tpr0 + tpr1) / 2;
    } else {
      double dtp = tp[i] - tp[i + 1], dp = pp[i] - pp[i + 1];
      double slope = ratio(dtp, dp > 0 ? dp : 0);
      double intercept = tp[i + 1] - slope * pp[i + 1];
      double p_ratio = pp[i] > 0 && pp[i + 1] > 0 ? ratio(pp[i], pp[i + 1]) : 1.0;
      double positives = tp[i + 1] + (ap - tp[i + 1]); /* tp + fn */
      area += ratio(slope * (dtp + intercept * log(p_ratio)), positives > 0 ? positives : 0);
    }
  }
  return area;
}

/* Keras's FBetaScore (beta 1) with its epsilons: they show where the counts
 * are small, as under small sample weights (0.5 became 0.49995). */
#define F1_EPSILON 1e-7
static double f1_of(double tp, double pp, double ap) {
  double p = tp / (pp + F1_EPSILON), r = tp / (ap + F1_EPSILON);
  return 2 * p * r / (p + r + F1_EPSILON);
}

/* F1 per class (average none) or averaged; returns how many values. */
static int f1_results(const lunet_metric *m, double *out, int n) {
  int k = m->classes;
  const double *tp = m->state, *pp = m->state + k, *ap = m->state + 2 * k;
  if (m->cfg.average == LUNET_AVERAGE_NONE) {
    for (int c = 0; c < k && c < n; c++) out[c] = f1_of(tp[c], pp[c], ap[c]);
    return k;
  }
  double stp = 0, spp = 0, sap = 0, sum = 0, weighted = 0;
  for (int c = 0; c < k; c++) {
    double f = f1_of(tp[c], pp[c], ap[c]);
    stp += tp[c], spp += pp[c], sap += ap[c];
    sum += f;
    weighted += f * ap[c];
  }
  double r = m->cfg.average == LUNET_AVERAGE_MICRO ? f1_of(stp, spp, sap)
             : m->cfg.average == LUNET_AVERAGE_MACRO ? ratio(sum, k)
                                                     : weighted / (sap + F1_EPSILON);
  if (n > 0) out[0] = r;
  return 1;
}

/* R2 = 1 - SS_res / SS_tot per column, SS_tot = sum y^2 - (sum y)^2 / n. */
static int r2_results(const lunet_metric *m, double *out, int n) {
  int k = m->classes;
  const double *sy = m->state, *syy = m->state + k, *res = m->state + 2 * k;
  double sum = 0, tot_all = 0, weighted = 0;
  for (int c = 0; c < k; c++) {
    double tot = syy[c] - (m->count > 0 ? sy[c] * sy[c] / m->count : 0);
    double r2 = tot > 0 ? 1 - res[c] / tot : 0; /* a constant target: Keras gives 0 (NaN when res is 0 too) */
    if (m->cfg.average == LUNET_AVERAGE_NONE && c < n) out[c] = r2;
    sum += r2;
    /* Keras's variance weighting: sum(tot r2) / sum(tot), so a constant
     * column (tot 0) weighs nothing, its residual included */
    if (tot > 0) tot_all += tot, weighted += tot * r2;
  }
  if (m->cfg.average == LUNET_AVERAGE_NONE) return k;
  double r = m->cfg.average == LUNET_AVERAGE_MACRO ? ratio(sum, k) : ratio(weighted, tot_all);
  if (n > 0) out[0] = r;
  return 1;
}

static double mean_iou(const lunet_metric *m) {
  int k = m->cfg.num_classes, valid = 0;
  double sum = 0;
  for (int c = 0; c < k; c++) {
    double row = 0, col = 0, tp = m->state[c * k + c];
    for (int j = 0; j < k; j++) row += m->state[c * k + j], col += m->state[j * k + c];
    double denom = row + col - tp;
    if (denom > 0) valid++, sum += tp / denom;
  }
  return ratio(sum, valid);
}

int lunet_metric_results(const lunet_metric *m, double *out, int n) {
  if (m->cfg.kind == LUNET_METRIC_F1 || m->cfg.kind == LUNET_METRIC_R2) {
    if (!m->classes) {
      if (n > 0) out[0] = 0;
      return 1;
    }
    return m->cfg.kind == LUNET_METRIC_F1 ? f1_results(m, out, n) : r2_results(m, out, n);
  }
  double r;
  const double *s = m->state;
  switch (m->cfg.kind) {
  case LUNET_METRIC_PRECISION: r = ratio(s[0], s[1]); break;
  case LUNET_METRIC_RECALL: r = ratio(s[0], s[2]); break;
  case LUNET_METRIC_AUC: r = auc_result(m); break;
  case LUNET_METRIC_MEAN_IOU: r = mean_iou(m); break;
  case LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR: r = sqrt(ratio(s[0], m->count)); break;
  default: r = ratio(s[0], m->count);
  }
  if (n > 0) out[0] = r;
  return 1;
}

double lunet_metric_result(const lunet_metric *m) {
  double r = 0;
  int n = lunet_metric_results(m, &r, 1);
  if (n == 1) return r;
  /* per-class values: the plain mean stands for them in logs */
  double *v = malloc(sizeof *v * (size_t)n), sum = 0;
  if (!v) return NAN;
  lunet_metric_results(m, v, n);
  for (int i = 0; i < n; i++) sum += v[i];
  free(v);
  return sum / n;
}

/* ---- one batch on the device ---- */

/* The temporaries of one batch's computation, released together.  Every
 * helper passes NULL through (an earlier op failed; ctx holds the error). */
typedef struct scratch {
  lunet_ctx *ctx;
  lunet_tensor *t[64];
  int n;
  lunet_tensor *w; /* the weights, flat (one per sample or position); NULL: unweighted */
} scratch;

static lunet_tensor *keep(scratch *s, lunet_tensor *t) {
  if (!t) return NULL;
  if (s->n == (int)(sizeof s->t / sizeof s->t[0])) {
    lunet_tensor_release(t);
    lunet_error(s->ctx, LUNET_ERR_ARG, "metric: too many temporaries");
    return NULL;
  }
  return s->t[s->n++] = t;
}

static lunet_tensor *bin(scratch *s, lunet_binary_op op, lunet_tensor *a, lunet_tensor *b) {
  return a && b ? keep(s, lunet_op_binary(s->ctx, op, a, b)) : NULL;
}
static lunet_tensor *un(scratch *s, lunet_unary_op op, lunet_tensor *x) {
  return x ? keep(s, lunet_op_unary(s->ctx, op, x, 0, 0)) : NULL;
}
static lunet_tensor *affine(scratch *s, lunet_tensor *x, float a, float b) {
  return x ? keep(s, lunet_op_unary(s->ctx, LUNET_UNARY_AFFINE, x, a, b)) : NULL;
}
static lunet_tensor *sum(scratch *s, lunet_tensor *x, int axis, bool keepdims) {
  return x ? keep(s, lunet_op_reduce(s->ctx, LUNET_REDUCE_SUM, x, axis, keepdims)) : NULL;
}
static lunet_tensor *reduce(scratch *s, lunet_reduce_op op, lunet_tensor *x) {
  return x ? keep(s, lunet_op_reduce(s->ctx, op, x, LUNET_ALL_AXES, false)) : NULL;
}
static lunet_tensor *scalar(scratch *s, lunet_tensor *like, float v) {
  return like ? keep(s, lunet_scalar_like(s->ctx, like, v)) : NULL;
}
/* 1 where x is finite, 0 at a NaN or an infinity (x - x is NaN there). */
static lunet_tensor *finite_mask(scratch *s, lunet_tensor *x) {
  return bin(s, LUNET_BINARY_EQ, bin(s, LUNET_BINARY_SUB, x, x), scalar(s, x, 0));
}
static lunet_tensor *reshape2(scratch *s, lunet_tensor *x, int64_t rows, int64_t cols) {
  int64_t shape[2] = {rows, cols};
  return x ? keep(s, lunet_op_reshape(s->ctx, x, 2, shape)) : NULL;
}
static lunet_tensor *matmul(scratch *s, lunet_tensor *a, lunet_tensor *b, bool ta, bool tb) {
  return a && b ? keep(s, lunet_op_matmul(s->ctx, a, b, ta, tb)) : NULL;
}
static lunet_tensor *flat(scratch *s, lunet_tensor *x) {
  return x ? keep(s, lunet_op_reshape(s->ctx, x, 1, &x->numel)) : NULL;
}

/* A (1, n) constant on x's device, cached in *slot until the device or the
 * values change: the class ids 0 .. n-1, or AUC's thresholds. */
static lunet_tensor *constant_row(scratch *s, lunet_tensor **slot, const lunet_tensor *x, int n,
                                  bool thresholds) {
  if (!x) return NULL;
  if (*slot && (*slot)->numel == n && !strcmp(lunet_tensor_backend(*slot), lunet_tensor_backend(x)))
    return *slot;
  float *v = malloc(sizeof *v * (size_t)n);
  if (!v) {
    lunet_error(s->ctx, LUNET_ERR_NOMEM, "out of host memory for a metric");
    return NULL;
  }
  for (int i = 0; i < n; i++) v[i] = (float)i;
  if (thresholds) { /* Keras's: just below 0, i / (n - 1) between, just above 1 */
    for (int i = 1; i < n - 1; i++) v[i] = (float)i / (float)(n - 1);
    v[0] = -1e-7f;
    v[n - 1] = 1.0f + 1e-7f;
  }
  int64_t shape[2] = {1, n};
  lunet_tensor *t = lunet_tensor_from_data_on(s->ctx, lunet_tensor_backend(x), LUNET_F32, 2, shape, v);
  free(v);
  if (!t) return NULL;
  lunet_tensor_release(*slot);
  return *slot = t;
}

/* ids (R) or (R, 1) -> one-hot (R, K) */
static lunet_tensor *one_hot(scratch *s, lunet_metric *m, lunet_tensor *ids, int64_t k) {
  lunet_tensor *row = constant_row(s, &m->ids, ids, (int)k, false);
  return row ? bin(s, LUNET_BINARY_EQ, reshape2(s, ids, ids->numel, 1), row) : NULL;
}

static int64_t last_dim(const lunet_tensor *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }

static lunet_tensor *shape_error(scratch *s, const lunet_metric *m, const lunet_tensor *p,
                                 const lunet_tensor *y, const char *want) {
  char a[128], b[128];
  lunet_error(s->ctx, LUNET_ERR_SHAPE, "%s: predictions %s and targets %s do not fit (%s)", m->name,
              lunet_shape_str(p->ndim, p->shape, a, sizeof a), lunet_shape_str(y->ndim, y->shape, b, sizeof b),
              want);
  return NULL;
}

/* The targets as (rows, K) like the predictions: the same values when the
 * sizes agree, one-hot rows when y holds class ids. */
static lunet_tensor *dense_targets(scratch *s, lunet_metric *m, lunet_tensor *p2, lunet_tensor *y) {
  int64_t rows = p2->shape[0], k = p2->shape[1];
  if (y->numel == p2->numel) return reshape2(s, y, rows, k);
  if (k > 1 && y->numel == rows) return one_hot(s, m, y, k);
  return shape_error(s, m, p2, y, "targets of the same size, or one class id per row");
}

/* Sum of x over everything, as a (1) vector for the batch's concat. */
static lunet_tensor *total(scratch *s, lunet_tensor *x) {
  lunet_tensor *t = reduce(s, LUNET_REDUCE_SUM, x);
  return t ? flat(s, t) : NULL;
}

/* x (sample-major: each weight's rows or elements together) times its
 * weights, in x's shape; x itself unweighted. */
static lunet_tensor *weigh(scratch *s, lunet_tensor *x) {
  if (!x || !s->w) return x;
  int64_t wn = s->w->numel, shape[2] = {wn, x->numel / wn}, col[2] = {wn, 1};
  lunet_tensor *prod = bin(s, LUNET_BINARY_MUL, keep(s, lunet_op_reshape(s->ctx, x, 2, shape)),
                           keep(s, lunet_op_reshape(s->ctx, s->w, 2, col)));
  return prod ? keep(s, lunet_op_reshape(s->ctx, prod, x->ndim, x->shape)) : NULL;
}

static lunet_tensor *concat(scratch *s, lunet_tensor **parts, int n) {
  for (int i = 0; i < n; i++)
    if (!(parts[i] = flat(s, parts[i]))) return NULL;
  return keep(s, lunet_op_concat(s->ctx, parts, n, 0));
}

static lunet_tensor *batch_accuracy(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  lunet_tensor *a, *b;
  if (m->cfg.kind == LUNET_METRIC_BINARY_ACCURACY) {
    a = bin(s, LUNET_BINARY_GT, p, scalar(s, p, m->cfg.threshold));
    b = y;
  } else if (m->cfg.kind == LUNET_METRIC_ACCURACY) { /* Keras's Accuracy: equal values */
    a = p;
    b = y;
  } else {
    a = keep(s, lunet_op_argmax(s->ctx, p));
    /* categorical with one label per row ((N) or (N, 1) ids against (N, K)
     * scores) reads the ids, as Keras's "accuracy" picks sparse from the
     * shapes: the argmax of a one-column target would be 0 for every row */
    int64_t k = last_dim(p);
    bool ids = k > 1 && y->numel * k == p->numel;
    b = m->cfg.kind == LUNET_METRIC_CATEGORICAL_ACCURACY && !ids ? keep(s, lunet_op_argmax(s->ctx, y)) : y;
  }
  if (!a || !b) return NULL;
  if (a->numel != b->numel) return shape_error(s, m, p, y, "one label per prediction");
  return total(s, weigh(s, bin(s, LUNET_BINARY_EQ, flat(s, a), flat(s, b))));
}

/* The predictions counted positive and the positive targets, as 0/1. */
static lunet_tensor *batch_precision_recall(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  lunet_tensor *p2 = reshape2(s, p, p->numel / last_dim(p), last_dim(p));
  lunet_tensor *y2 = p2 ? dense_targets(s, m, p2, y) : NULL;
  if (!y2) return NULL;
  if (m->cfg.class_id >= 0) {
    if (m->cfg.class_id >= p2->shape[1]) {
      lunet_error(s->ctx, LUNET_ERR_ARG, "%s: class_id %d, but the predictions have %lld classes", m->name,
                  m->cfg.class_id, (long long)p2->shape[1]);
      return NULL;
    }
    int64_t start[2] = {0, m->cfg.class_id}, stop[2] = {p2->shape[0], m->cfg.class_id + 1}, step[2] = {1, 1};
    p2 = keep(s, lunet_op_slice(s->ctx, p2, start, stop, step));
    y2 = keep(s, lunet_op_slice(s->ctx, y2, start, stop, step));
  }
  lunet_tensor *pos = bin(s, LUNET_BINARY_GT, p2, scalar(s, p2, m->cfg.threshold));
  lunet_tensor *act = bin(s, LUNET_BINARY_GT, un(s, LUNET_UNARY_ABS, y2), scalar(s, y2, 0));
  lunet_tensor *parts[3] = {total(s, weigh(s, bin(s, LUNET_BINARY_MUL, pos, act))), total(s, weigh(s, pos)),
                            total(s, weigh(s, act))};
  return parts[0] && parts[1] && parts[2] ? concat(s, parts, 3) : NULL;
}

/* Counts at T thresholds: tp(T) = y^T mask, mask (E, T) = pred > threshold. */
static lunet_tensor *batch_auc(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  lunet_tensor *p2 = reshape2(s, p, p->numel / last_dim(p), last_dim(p));
  lunet_tensor *y2 = p2 ? dense_targets(s, m, p2, y) : NULL;
  if (!y2) return NULL;
  lunet_tensor *th = constant_row(s, &m->thresholds, p, m->cfg.num_thresholds, true);
  lunet_tensor *pe = reshape2(s, p2, p2->numel, 1);
  lunet_tensor *act = bin(s, LUNET_BINARY_GT, un(s, LUNET_UNARY_ABS, reshape2(s, y2, p2->numel, 1)),
                          scalar(s, y2, 0));
  lunet_tensor *mask = th ? bin(s, LUNET_BINARY_GT, pe, th) : NULL;
  /* weighted: tp = (w act)^T mask, pp = w^T mask (a column of weights per element) */
  lunet_tensor *ones = s->w ? weigh(s, bin(s, LUNET_BINARY_EQ, pe, pe)) : NULL;
  lunet_tensor *parts[6] = {matmul(s, weigh(s, act), mask, true, false),
                            s->w ? matmul(s, ones, mask, true, false) : sum(s, mask, 0, false), total(s, weigh(s, act)),
                            flat(s, reduce(s, LUNET_REDUCE_MIN, p)), flat(s, reduce(s, LUNET_REDUCE_MAX, p)),
                            /* the predictions that are not finite (x - x is NaN there): any is an error */
                            total(s, affine(s, finite_mask(s, p), -1.0f, 1.0f))};
  for (int i = 0; i < 6; i++)
    if (!parts[i]) return NULL;
  return concat(s, parts, 6);
}

/* The true class's score, and how many classes score above it: the label is
 * in the top k when fewer than k do (ties count in, as tf.math.in_top_k). */
static lunet_tensor *batch_top_k(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  int64_t k = last_dim(p), rows = p->numel / k;
  lunet_tensor *p2 = reshape2(s, p, rows, k), *ids;
  if (m->cfg.kind == LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY) {
    if (y->numel != p->numel) return shape_error(s, m, p, y, "one-hot targets like the predictions");
    ids = keep(s, lunet_op_argmax(s->ctx, reshape2(s, y, rows, k)));
  } else {
    if (y->numel != rows) return shape_error(s, m, p, y, "one class id per row");
    ids = y;
  }
  lunet_tensor *hot = ids && p2 ? one_hot(s, m, ids, k) : NULL;
  /* the label's score: hot * p with p's infinities clipped to the largest
   * floats, so 0 * inf makes no NaN (a row with one is a miss below) */
  lunet_tensor *pc = p2 ? keep(s, lunet_op_unary(s->ctx, LUNET_UNARY_CLIP, p2, -FLT_MAX, FLT_MAX)) : NULL;
  lunet_tensor *score = sum(s, bin(s, LUNET_BINARY_MUL, hot, pc), 1, true);
  lunet_tensor *above = sum(s, bin(s, LUNET_BINARY_GT, p2, score), 1, false);
  /* a row with a NaN or an infinity is a miss (tf.math.in_top_k) */
  lunet_tensor *fin = finite_mask(s, p2);
  lunet_tensor *row_ok = fin ? keep(s, lunet_op_reduce(s->ctx, LUNET_REDUCE_MIN, fin, 1, false)) : NULL;
  lunet_tensor *hit = bin(s, LUNET_BINARY_MUL, bin(s, LUNET_BINARY_LT, above, scalar(s, p2, (float)m->cfg.top_k)),
                          row_ok);
  lunet_tensor *parts[2] = {total(s, weigh(s, hit)), total(s, hot)};
  return parts[0] && parts[1] ? concat(s, parts, 2) : NULL;
}

/* Per class: tp, predicted positive, actual positive.  Without a threshold
 * a row predicts its maximum (ties: all of them, as Keras's F1Score). */
static lunet_tensor *batch_f1(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  int64_t k = last_dim(p);
  lunet_tensor *p2 = reshape2(s, p, p->numel / k, k);
  lunet_tensor *y2 = p2 ? dense_targets(s, m, p2, y) : NULL;
  if (!y2) return NULL;
  lunet_tensor *pos;
  if (isnan(m->cfg.threshold)) {
    lunet_tensor *mx = p2 ? keep(s, lunet_op_reduce(s->ctx, LUNET_REDUCE_MAX, p2, 1, true)) : NULL;
    pos = bin(s, LUNET_BINARY_MUL, bin(s, LUNET_BINARY_EQ, p2, mx),
              bin(s, LUNET_BINARY_GT, un(s, LUNET_UNARY_ABS, p2), scalar(s, p2, 1e-9f)));
  } else {
    pos = bin(s, LUNET_BINARY_GT, p2, scalar(s, p2, m->cfg.threshold));
  }
  lunet_tensor *parts[3] = {sum(s, weigh(s, bin(s, LUNET_BINARY_MUL, pos, y2)), 0, false),
                            sum(s, weigh(s, pos), 0, false), sum(s, weigh(s, y2), 0, false)};
  return parts[0] && parts[1] && parts[2] ? concat(s, parts, 3) : NULL;
}

/* Whether y_pred (and y_true) hold per-class scores rather than ids. */
static lunet_status iou_layout(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y, bool *p_scores,
                               bool *y_scores) {
  int64_t k = m->cfg.num_classes;
  bool p_fits = last_dim(p) == k && k > 1;
  *p_scores = m->cfg.sparse_y_pred == 0 || (m->cfg.sparse_y_pred < 0 && p_fits && p->numel != y->numel);
  *y_scores = m->cfg.sparse_y_true == 0;
  /* predictions and targets of one shape are ids on both sides unless said
   * otherwise (Keras's defaults, sparse_y_true = sparse_y_pred = true) */
  int64_t pn = *p_scores ? p->numel / k : p->numel, yn = *y_scores ? y->numel / k : y->numel;
  if (pn != yn) {
    shape_error(s, m, p, y,
                "class ids, or per-class scores whose last axis is num_classes; say which with "
                "sparse_y_true and sparse_y_pred");
    return s->ctx->status;
  }
  return LUNET_OK;
}

/* The confusion matrix (K, K) = one_hot(true)^T one_hot(pred) (weighted:
 * one_hot(true)^T (w one_hot(pred)), then the unweighted count of the rows
 * that had a class in range on both sides, for the check). */
static lunet_tensor *batch_iou(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  int64_t k = m->cfg.num_classes;
  bool ps, ys;
  if (iou_layout(s, m, p, y, &ps, &ys)) return NULL;
  lunet_tensor *pi = ps ? keep(s, lunet_op_argmax(s->ctx, reshape2(s, p, p->numel / k, k))) : p;
  lunet_tensor *yi = ys ? keep(s, lunet_op_argmax(s->ctx, reshape2(s, y, y->numel / k, k))) : y;
  if (pi) m->positions = pi->numel;
  lunet_tensor *yh = pi && yi ? one_hot(s, m, yi, k) : NULL, *ph = yh ? one_hot(s, m, pi, k) : NULL;
  lunet_tensor *cm = ph ? matmul(s, yh, weigh(s, ph), true, false) : NULL;
  lunet_tensor *parts[2] = {cm, s->w && cm ? total(s, matmul(s, yh, ph, true, false)) : NULL};
  if (s->w && !parts[1]) return NULL;
  return cm ? concat(s, parts, s->w ? 2 : 1) : NULL;
}

static lunet_tensor *batch_error(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  if (y->numel != p->numel) return shape_error(s, m, p, y, "one target per prediction");
  lunet_tensor *d = bin(s, LUNET_BINARY_SUB, flat(s, p), flat(s, y));
  return total(s, weigh(s, un(s, m->cfg.kind == LUNET_METRIC_MEAN_ABSOLUTE_ERROR ? LUNET_UNARY_ABS : LUNET_UNARY_SQUARE, d)));
}

static lunet_tensor *batch_r2(scratch *s, lunet_metric *m, lunet_tensor *p, lunet_tensor *y) {
  if (p->ndim < 2)
    return shape_error(s, m, p, y, "2-D (samples, outputs) predictions, as Keras's R2Score: reshape (N) to (N, 1)");
  if (y->numel != p->numel) return shape_error(s, m, p, y, "one target per prediction");
  int64_t k = last_dim(p), rows = p->numel / k;
  lunet_tensor *y2 = reshape2(s, y, rows, k), *p2 = reshape2(s, p, rows, k);
  lunet_tensor *parts[3] = {sum(s, weigh(s, y2), 0, false), sum(s, weigh(s, un(s, LUNET_UNARY_SQUARE, y2)), 0, false),
                            sum(s, weigh(s, un(s, LUNET_UNARY_SQUARE, bin(s, LUNET_BINARY_SUB, y2, p2))), 0, false)};
  return parts[0] && parts[1] && parts[2] ? concat(s, parts, 3) : NULL;
}

lunet_tensor *lunet_metric_batch(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred, lunet_tensor *y_true,
                                 const lunet_tensor *weights) {
  if (m->cfg.kind == LUNET_METRIC_MEAN) {
    lunet_error(ctx, LUNET_ERR_ARG, "metric '%s' is a mean: give it values with lunet_metric_add", m->name);
    return NULL;
  }
  int64_t n = y_pred->ndim ? y_pred->shape[0] : 1;
  if (weights && weights->numel == 0 && y_pred->numel == 0) weights = NULL; /* an empty batch: nothing to weigh */
  if (weights && (weights->numel == 0 || (weights->numel != n && weights->numel != lunet_tensor_positions(y_pred)))) {
    char a[128], b[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "%s: sample_weight has shape %s for predictions %s: give one weight per sample",
                m->name, lunet_shape_str(weights->ndim, weights->shape, a, sizeof a),
                lunet_shape_str(y_pred->ndim, y_pred->shape, b, sizeof b));
    return NULL;
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  scratch s = {.ctx = ctx};
  if (weights) {
    int64_t wn = weights->numel;
    lunet_tensor *wf = weights->dtype == LUNET_F32 ? (lunet_tensor *)weights
                                                  : keep(&s, lunet_op_cast(ctx, weights, LUNET_F32));
    s.w = wf ? keep(&s, lunet_op_reshape(ctx, wf, 1, &wn)) : NULL;
    if (!s.w) {
      lunet_set_grad_enabled(ctx, prev);
      for (int i = 0; i < s.n; i++) lunet_tensor_release(s.t[i]);
      return NULL;
    }
  }
  lunet_tensor *p = y_pred, *y = y_true;
  if (p->dtype != LUNET_F32) p = keep(&s, lunet_op_cast(ctx, p, LUNET_F32));
  if (y->dtype != LUNET_F32) y = keep(&s, lunet_op_cast(ctx, y, LUNET_F32));
  if (p && m->cfg.logits && lunet_metric_needs_probabilities(m))
    p = keep(&s, m->cfg.logits == 1 ? lunet_op_unary(ctx, LUNET_UNARY_SIGMOID, p, 0, 0)
                                    : lunet_op_softmax(ctx, p, false));
  lunet_tensor *v = NULL;
  if (p && y) switch (m->cfg.kind) {
    case LUNET_METRIC_PRECISION:
    case LUNET_METRIC_RECALL: v = batch_precision_recall(&s, m, p, y); break;
    case LUNET_METRIC_AUC: v = batch_auc(&s, m, p, y); break;
    case LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY:
    case LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY: v = batch_top_k(&s, m, p, y); break;
    case LUNET_METRIC_F1: v = batch_f1(&s, m, p, y); break;
    case LUNET_METRIC_MEAN_IOU: v = batch_iou(&s, m, p, y); break;
    case LUNET_METRIC_MEAN_ABSOLUTE_ERROR:
    case LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR: v = batch_error(&s, m, p, y); break;
    case LUNET_METRIC_R2: v = batch_r2(&s, m, p, y); break;
    default: v = batch_accuracy(&s, m, p, y);
    }
  if (v && s.w) { /* the weights' sum closes the vector */
    lunet_tensor *parts[2] = {v, total(&s, s.w)};
    v = parts[1] ? concat(&s, parts, 2) : NULL;
  }
  if (v) lunet_tensor_retain(v);
  for (int i = 0; i < s.n; i++) lunet_tensor_release(s.t[i]);
  lunet_set_grad_enabled(ctx, prev);
  return v;
}

/* The batch vector's length for these predictions. */
static int64_t batch_len(const lunet_metric *m, const lunet_tensor *p) {
  int64_t k = last_dim(p);
  switch (m->cfg.kind) {
  case LUNET_METRIC_PRECISION:
  case LUNET_METRIC_RECALL: return 3;
  case LUNET_METRIC_AUC: return 2 * (int64_t)m->cfg.num_thresholds + 4;
  case LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY: return 2;
  case LUNET_METRIC_F1:
  case LUNET_METRIC_R2: return 3 * k;
  case LUNET_METRIC_MEAN_IOU: return (int64_t)m->cfg.num_classes * m->cfg.num_classes;
  default: return 1;
  }
}

lunet_status lunet_metric_absorb(lunet_ctx *ctx, lunet_metric *m, const float *v, int64_t n,
                                 const lunet_tensor *y_pred, int64_t nweights) {
  int64_t k = last_dim(y_pred), rows = k ? y_pred->numel / k : 0;
  bool iou = m->cfg.kind == LUNET_METRIC_MEAN_IOU;
  int64_t expect = batch_len(m, y_pred) + (nweights > 0 ? (iou ? 2 : 1) : 0);
  if (n != expect)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: a batch of %lld statistics, expected %lld", m->name,
                       (long long)n, (long long)expect);
  double wsum = nweights > 0 ? v[n - 1] : 0;
  n = batch_len(m, y_pred);
  double count = (double)rows; /* rows: one prediction per position of (N, ..., K) */
  switch (m->cfg.kind) {
  case LUNET_METRIC_BINARY_ACCURACY:
  case LUNET_METRIC_ACCURACY:
  case LUNET_METRIC_AUC:
  case LUNET_METRIC_PRECISION:
  case LUNET_METRIC_RECALL:
  case LUNET_METRIC_MEAN_ABSOLUTE_ERROR:
  case LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR: count = (double)y_pred->numel; break;
  case LUNET_METRIC_F1:
  case LUNET_METRIC_R2: {
    lunet_status s = size_state(ctx, m, (int)k);
    if (s) return s;
    break;
  }
  default: break;
  }
  if (m->cfg.kind == LUNET_METRIC_AUC) {
    int t = m->cfg.num_thresholds;
    float lo = v[2 * t + 1], hi = v[2 * t + 2], nonfinite = v[2 * t + 3];
    if (nonfinite != 0)
      return lunet_error(ctx, LUNET_ERR_ARG, "%s: predictions that are NaN or infinite (the model diverged?)", m->name);
    if (!(lo >= 0 && hi <= 1))
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "%s: predictions from %g to %g, outside [0, 1] (AUC thresholds probabilities: "
                         "give it from_logits = true for logits)",
                         m->name, lo, hi);
    n = 2 * t + 1;
  }
  if (m->cfg.kind == LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY ||
      m->cfg.kind == LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY) {
    if (v[1] != (float)rows)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "%s: %lld of %lld labels are not class ids in [0, %lld) (whole numbers from 0)",
                         m->name, (long long)(rows - (int64_t)v[1]), (long long)rows, (long long)k);
    n = 1;
  }
  if (iou) {
    double seen = 0; /* weighted: the unweighted count follows the matrix */
    if (nweights > 0) seen = v[n];
    else for (int64_t i = 0; i < n; i++) seen += v[i];
    int64_t expect = m->positions;
    if (seen != (double)expect)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "%s: %lld of %lld positions have a label or prediction that is not a class id in "
                         "[0, %d) (num_classes = %d)%s",
                         m->name, (long long)(expect - (int64_t)seen), (long long)expect, m->cfg.num_classes,
                         m->cfg.num_classes,
                         k == m->cfg.num_classes
                             ? "; predictions and targets of one shape are read as ids (Keras's defaults): for "
                               "per-class scores say sparse_y_pred = false, and sparse_y_true = false for one-hot "
                               "targets"
                             : "");
    count = (double)expect;
  }
  /* weighted: each weight stands for count / nweights rows or elements */
  if (nweights > 0) count = wsum * (count / (double)nweights);
  for (int64_t i = 0; i < n; i++) m->state[i] += v[i];
  m->count += count;
  return LUNET_OK;
}

lunet_status lunet_metric_update(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred, lunet_tensor *y_true) {
  return lunet_metric_update_weighted(ctx, m, y_pred, y_true, NULL);
}

lunet_status lunet_metric_update_weighted(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred, lunet_tensor *y_true,
                                          const lunet_tensor *sample_weight) {
  lunet_tensor *t = lunet_metric_batch(ctx, m, y_pred, y_true, sample_weight);
  if (!t) return ctx->status;
  float small[8], *v = t->numel <= 8 ? small : malloc(sizeof *v * (size_t)t->numel);
  lunet_status s = v ? lunet_tensor_read(ctx, t, v, sizeof *v * (size_t)t->numel)
                     : lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a metric");
  if (!s) s = lunet_metric_absorb(ctx, m, v, t->numel, y_pred, sample_weight ? sample_weight->numel : 0);
  if (v != small) free(v);
  lunet_tensor_release(t);
  return s;
}
