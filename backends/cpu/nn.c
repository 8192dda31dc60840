/*
 * Fast kernels for the rest: softmax and its cross-entropy, batch norm,
 * dropout masks, row gathers, fused optimizer updates and the affine
 * resample.  Rows (or channel blocks, or flat ranges) go to the pool in
 * static chunks; nothing here depends on how many chunks there are.
 */
#include <stdlib.h>
#include <string.h>
#include "cpu.h"
#include "lunet/resample.h"

#define GRAIN 16384

/* ---- softmax ---- */

typedef struct sm_job {
  bool log;
  float *y, *dx, *loss;
  const float *x, *dy, *labels;
  int64_t cols;
} sm_job;

static float row_max(const float *restrict x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
  return m;
}

static void softmax_task(void *arg, int64_t begin, int64_t end, int chunk) {
  sm_job *j = arg;
  int64_t n = j->cols;
  for (int64_t r = begin; r < end; r++) {
    const float *restrict x = j->x + r * n;
    float *restrict y = j->y + r * n;
    float m = row_max(x, n), sum = 0.0f;
    if (j->log) { /* (x - m) - log(sum): m + log(sum) would drop log(sum) next to a large m */
      for (int64_t k = 0; k < n; k++) sum += expf(x[k] - m);
      float ls = logf(sum);
      for (int64_t k = 0; k < n; k++) y[k] = (x[k] - m) - ls;
    } else {
      for (int64_t k = 0; k < n; k++) {
        y[k] = expf(x[k] - m);
        sum += y[k];
      }
      float inv = 1.0f / sum;
      for (int64_t k = 0; k < n; k++) y[k] *= inv;
    }
  }
}

int lunet_cpu_softmax(lunet_backend *be, bool log, lunet_buf y, lunet_cbuf x, size_t rows,
                      size_t cols) {
  sm_job j = {.log = log, .y = y, .x = x, .cols = (int64_t)cols};
  lunet_cpu_parallel(be, (int64_t)rows, GRAIN / ((int64_t)cols + 1) + 1, softmax_task, &j);
  return 0;
}

static void softmax_back_task(void *arg, int64_t begin, int64_t end, int chunk) {
  sm_job *j = arg;
  int64_t n = j->cols;
  for (int64_t r = begin; r < end; r++) {
    const float *restrict g = j->dy + r * n, *restrict y = j->x + r * n;
    float *restrict dx = j->dx + r * n;
    float s = 0.0f;
    if (j->log) {
      for (int64_t k = 0; k < n; k++) s += g[k];
      for (int64_t k = 0; k < n; k++) dx[k] = g[k] - expf(y[k]) * s;
    } else {
      for (int64_t k = 0; k < n; k++) s += g[k] * y[k];
      for (int64_t k = 0; k < n; k++) dx[k] = y[k] * (g[k] - s);
    }
  }
}

int lunet_cpu_softmax_backward(lunet_backend *be, bool log, lunet_buf dx, lunet_cbuf dy,
                               lunet_cbuf y, size_t rows, size_t cols) {
  sm_job j = {.log = log, .dx = dx, .dy = dy, .x = y, .cols = (int64_t)cols};
  lunet_cpu_parallel(be, (int64_t)rows, GRAIN / ((int64_t)cols + 1) + 1, softmax_back_task, &j);
  return 0;
}

/* loss = logsumexp(row) - row[label]; dlogits = softmax - onehot. */
static void xent_task(void *arg, int64_t begin, int64_t end, int chunk) {
  sm_job *j = arg;
  int64_t n = j->cols;
  for (int64_t r = begin; r < end; r++) {
    const float *restrict x = j->x + r * n;
    int64_t label = (int64_t)j->labels[r];
    float m = row_max(x, n), sum = 0.0f;
    for (int64_t k = 0; k < n; k++) sum += expf(x[k] - m);
    /* relative to the row's maximum, so large logits keep their digits */
    j->loss[r] = (m - x[label]) + logf(sum);
    if (!j->dx) continue;
    float *restrict d = j->dx + r * n, inv = 1.0f / sum;
    for (int64_t k = 0; k < n; k++) d[k] = expf(x[k] - m) * inv;
    d[label] -= 1.0f;
  }
}

int lunet_cpu_softmax_xent(lunet_backend *be, lunet_buf loss, lunet_buf dlogits, lunet_cbuf logits,
                           lunet_cbuf labels, size_t rows, size_t cols) {
  const float *pl = labels;
  for (size_t r = 0; r < rows; r++) {
    int rc = lunet_cpu_check_label(pl[r], r, cols);
    if (rc) return rc;
  }
  sm_job j = {.loss = loss, .dx = dlogits, .x = logits, .labels = labels, .cols = (int64_t)cols};
  lunet_cpu_parallel(be, (int64_t)rows, GRAIN / ((int64_t)cols + 1) + 1, xent_task, &j);
  return 0;
}

/* ---- batch norm: blocks of channels, all rows each ---- */

#define BN_BLOCK 16

typedef struct bn_job {
  bool training;
  float *y, *save_mean, *save_invstd, *run_mean, *run_var, *dgamma, *dbeta;
  const float *x, *gamma, *beta, *dy;
  int64_t rows, c;
  float momentum, epsilon;
} bn_job;

/* Channels [c0, c0+w) of x (rows, c): mean and biased variance, two passes. */
static void bn_stats(const bn_job *j, int64_t c0, int64_t w, double *mean, double *var) {
  for (int64_t k = 0; k < w; k++) mean[k] = var[k] = 0.0;
  for (int64_t r = 0; r < j->rows; r++)
    for (int64_t k = 0; k < w; k++) mean[k] += j->x[r * j->c + c0 + k];
  for (int64_t k = 0; k < w; k++) mean[k] = j->rows ? mean[k] / (double)j->rows : 0.0;
  for (int64_t r = 0; r < j->rows; r++)
    for (int64_t k = 0; k < w; k++) {
      double dlt = j->x[r * j->c + c0 + k] - mean[k];
      var[k] += dlt * dlt;
    }
  for (int64_t k = 0; k < w; k++) var[k] = j->rows ? var[k] / (double)j->rows : 0.0;
}

static void bn_task(void *arg, int64_t begin, int64_t end, int chunk) {
  bn_job *j = arg;
  for (int64_t blk = begin; blk < end; blk++) {
    int64_t c0 = blk * BN_BLOCK, w = j->c - c0 < BN_BLOCK ? j->c - c0 : BN_BLOCK;
    float scale[BN_BLOCK], shift[BN_BLOCK];
    double mean[BN_BLOCK], var[BN_BLOCK];
    if (j->training) bn_stats(j, c0, w, mean, var);
    for (int64_t k = 0; k < w; k++) {
      int64_t ch = c0 + k;
      float mu, invstd;
      if (j->training) {
        mu = (float)mean[k];
        invstd = (float)(1.0 / sqrt(var[k] + (double)j->epsilon));
        if (j->save_mean) j->save_mean[ch] = mu;
        if (j->save_invstd) j->save_invstd[ch] = invstd;
        if (j->run_mean)
          j->run_mean[ch] = j->run_mean[ch] * j->momentum + mu * (1.0f - j->momentum);
        if (j->run_var)
          j->run_var[ch] = j->run_var[ch] * j->momentum + (float)var[k] * (1.0f - j->momentum);
      } else {
        mu = j->run_mean[ch];
        invstd = 1.0f / sqrtf(j->run_var[ch] + j->epsilon);
      }
      float g = j->gamma ? j->gamma[ch] : 1.0f, b = j->beta ? j->beta[ch] : 0.0f;
      scale[k] = g * invstd;
      shift[k] = b - mu * g * invstd;
    }
    for (int64_t r = 0; r < j->rows; r++) {
      const float *restrict x = j->x + r * j->c + c0;
      float *restrict y = j->y + r * j->c + c0;
      for (int64_t k = 0; k < w; k++) y[k] = x[k] * scale[k] + shift[k];
    }
  }
}

int lunet_cpu_batchnorm(lunet_backend *be, bool training, lunet_buf y, lunet_buf save_mean,
                        lunet_buf save_invstd, lunet_buf run_mean, lunet_buf run_var, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t c, float momentum,
                        float epsilon) {
  if (!training && (!run_mean || !run_var))
    return lunet_cpu_error(LUNET_ERR_ARG, "batchnorm: inference needs the running mean "
                                          "and variance");
  bn_job j = {.training = training,
              .y = y,
              .save_mean = save_mean,
              .save_invstd = save_invstd,
              .run_mean = run_mean,
              .run_var = run_var,
              .x = x,
              .gamma = gamma,
              .beta = beta,
              .rows = (int64_t)rows,
              .c = (int64_t)c,
              .momentum = momentum,
              .epsilon = epsilon};
  int64_t blocks = ((int64_t)c + BN_BLOCK - 1) / BN_BLOCK;
  lunet_cpu_parallel(be, blocks, GRAIN / ((int64_t)rows * BN_BLOCK + 1) + 1, bn_task, &j);
  return 0;
}

static void bn_back_task(void *arg, int64_t begin, int64_t end, int chunk) {
  bn_job *j = arg;
  const float *mean = j->save_mean, *invstd = j->save_invstd;
  for (int64_t blk = begin; blk < end; blk++) {
    int64_t c0 = blk * BN_BLOCK, w = j->c - c0 < BN_BLOCK ? j->c - c0 : BN_BLOCK;
    double sdy[BN_BLOCK] = {0}, sdyx[BN_BLOCK] = {0};
    for (int64_t r = 0; r < j->rows; r++)
      for (int64_t k = 0; k < w; k++) {
        double g = j->dy[r * j->c + c0 + k];
        sdy[k] += g;
        sdyx[k] += g * ((j->x[r * j->c + c0 + k] - mean[c0 + k]) * invstd[c0 + k]);
      }
    float a[BN_BLOCK], b[BN_BLOCK], e[BN_BLOCK];
    for (int64_t k = 0; k < w; k++) {
      int64_t ch = c0 + k;
      if (j->dgamma) j->dgamma[ch] = (float)sdyx[k];
      if (j->dbeta) j->dbeta[ch] = (float)sdy[k];
      /* dx = a*dy - b - e*xhat with xhat = (x - mean)*invstd */
      double g = j->gamma ? j->gamma[ch] : 1.0, inv_r = j->rows ? 1.0 / (double)j->rows : 0.0;
      a[k] = (float)(g * invstd[ch]);
      b[k] = (float)(g * invstd[ch] * sdy[k] * inv_r);
      e[k] = (float)(g * invstd[ch] * sdyx[k] * inv_r);
    }
    for (int64_t r = 0; r < j->rows; r++) {
      const float *restrict x = j->x + r * j->c + c0, *restrict dy = j->dy + r * j->c + c0;
      float *restrict dx = j->y + r * j->c + c0;
      for (int64_t k = 0; k < w; k++)
        dx[k] = a[k] * dy[k] - b[k] - e[k] * ((x[k] - mean[c0 + k]) * invstd[c0 + k]);
    }
  }
}

int lunet_cpu_batchnorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta,
                                 lunet_cbuf dy, lunet_cbuf x, lunet_cbuf gamma,
                                 lunet_cbuf save_mean, lunet_cbuf save_invstd, size_t rows,
                                 size_t c) {
  bn_job j = {.y = dx,
              .dgamma = dgamma,
              .dbeta = dbeta,
              .dy = dy,
              .x = x,
              .gamma = gamma,
              .save_mean = (float *)save_mean,
              .save_invstd = (float *)save_invstd,
              .rows = (int64_t)rows,
              .c = (int64_t)c};
  int64_t blocks = ((int64_t)c + BN_BLOCK - 1) / BN_BLOCK;
  lunet_cpu_parallel(be, blocks, GRAIN / ((int64_t)rows * BN_BLOCK + 1) + 1, bn_back_task, &j);
  return 0;
}

/* ---- dropout, gather ---- */

typedef struct flat_job {
  float *p, *s1, *s2;
  const float *g;
  float lr, a, b, eps, wd, alpha;
  bool flag;
  uint64_t seed, counter;
  char *y;
  const char *x;
  const int64_t *idx;
  size_t row_bytes;
} flat_job;

static void dropout_task(void *arg, int64_t begin, int64_t end, int chunk) {
  flat_job *j = arg;
  float keep = 1.0f / (1.0f - j->a);
  for (int64_t i = begin; i < end; i++)
    j->p[i] = lunet_philox_uniform(j->seed, j->counter + (uint64_t)i) >= j->a ? keep : 0.0f;
}

int lunet_cpu_dropout_mask(lunet_backend *be, lunet_buf mask, size_t n, float rate, uint64_t seed,
                           uint64_t counter) {
  if (!(rate >= 0.0f && rate <= 1.0f))
    return lunet_cpu_error(LUNET_ERR_ARG, "dropout_mask: rate %g is outside [0, 1]", (double)rate);
  flat_job j = {.p = mask, .a = rate, .seed = seed, .counter = counter};
  lunet_cpu_parallel(be, (int64_t)n, 4096, dropout_task, &j);
  return 0;
}

static void gather_task(void *arg, int64_t begin, int64_t end, int chunk) {
  flat_job *j = arg;
  for (int64_t i = begin; i < end; i++)
    memcpy(j->y + (size_t)i * j->row_bytes, j->x + (size_t)j->idx[i] * j->row_bytes, j->row_bytes);
}

int lunet_cpu_gather_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx,
                          size_t n, size_t row_bytes) {
  flat_job j = {.y = y, .x = x, .idx = idx, .row_bytes = row_bytes};
  int64_t grain = (int64_t)(65536 / (row_bytes + 1)) + 1;
  lunet_cpu_parallel(be, (int64_t)n, grain, gather_task, &j);
  return 0;
}

/* Columns [begin, end) of every row: threads split the columns, so no two
 * write one element and repeated indices add up in order. */
typedef struct scatter_job {
  float *y;
  const float *x;
  const int64_t *idx;
  size_t n, cols;
} scatter_job;

static void scatter_task(void *arg, int64_t begin, int64_t end, int chunk) {
  scatter_job *j = arg;
  for (size_t i = 0; i < j->n; i++) {
    float *restrict y = j->y + (size_t)j->idx[i] * j->cols;
    const float *restrict x = j->x + i * j->cols;
    for (int64_t c = begin; c < end; c++) y[c] += x[c];
  }
}

int lunet_cpu_scatter_add_rows(lunet_backend *be, lunet_buf y, lunet_cbuf x, const int64_t *idx, size_t n,
                               size_t cols) {
  scatter_job j = {.y = y, .x = x, .idx = idx, .n = n, .cols = cols};
  int64_t grain = (int64_t)(16384 / (n + 1)) + 16;
  lunet_cpu_parallel(be, (int64_t)cols, grain, scatter_task, &j);
  return 0;
}

/* ---- optimizers (Keras's formulas; see backend.h and the brief in each) ---- */

static void sgd_task(void *arg, int64_t begin, int64_t end, int chunk) {
  flat_job *j = arg;
  float *restrict p = j->p, *restrict v = j->s1;
  const float *restrict g = j->g;
  float lr = j->lr, mom = j->a;
  if (j->wd > 0.0f)
    for (int64_t i = begin; i < end; i++) p[i] -= lr * j->wd * p[i];
  if (!v) {
    for (int64_t i = begin; i < end; i++) p[i] -= lr * g[i];
  } else if (j->flag) {
    for (int64_t i = begin; i < end; i++) {
      v[i] = mom * v[i] - lr * g[i];
      p[i] += mom * v[i] - lr * g[i];
    }
  } else {
    for (int64_t i = begin; i < end; i++) {
      v[i] = mom * v[i] - lr * g[i];
      p[i] += v[i];
    }
  }
}

int lunet_cpu_sgd_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf velocity, size_t n,
                         float lr, float momentum, bool nesterov, float weight_decay) {
  if (!velocity && momentum != 0.0f)
    return lunet_cpu_error(LUNET_ERR_ARG, "sgd_update: momentum %g needs a velocity buffer",
                           (double)momentum);
  flat_job j = {.p = p,
                .g = g,
                .s1 = velocity,
                .lr = lr,
                .a = momentum,
                .flag = nesterov,
                .wd = weight_decay};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, sgd_task, &j);
  return 0;
}

static inline __attribute__((always_inline)) void adam_range_body(const flat_job *j, int64_t begin,
                                                                   int64_t end) {
  float *restrict p = j->p, *restrict m = j->s1, *restrict v = j->s2;
  const float *restrict g = j->g;
  float b1 = j->a, b2 = j->b, alpha = j->alpha, eps = j->eps;
  if (j->wd > 0.0f)
    for (int64_t i = begin; i < end; i++) p[i] -= j->lr * j->wd * p[i];
  for (int64_t i = begin; i < end; i++) {
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    p[i] -= alpha * m[i] / (sqrtf(v[i]) + eps);
  }
}
LUNET_CPU_ISA_DISPATCH(adam_range, (const flat_job *j, int64_t begin, int64_t end), (j, begin, end))

static void adam_task(void *arg, int64_t begin, int64_t end, int chunk) { adam_range(arg, begin, end); }

int lunet_cpu_adam_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf m, lunet_buf v,
                          size_t n, float lr, float beta1, float beta2, float epsilon,
                          float weight_decay, int64_t step) {
  float alpha;
  int rc = lunet_cpu_adam_alpha(lr, beta1, beta2, step, &alpha);
  if (rc) return rc;
  flat_job j = {.p = p,
                .g = g,
                .s1 = m,
                .s2 = v,
                .lr = lr,
                .a = beta1,
                .b = beta2,
                .eps = epsilon,
                .wd = weight_decay,
                .alpha = alpha};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, adam_task, &j);
  return 0;
}

static void rmsprop_task(void *arg, int64_t begin, int64_t end, int chunk) {
  flat_job *j = arg;
  float *restrict p = j->p, *restrict ms = j->s1, *restrict mom = j->s2;
  const float *restrict g = j->g;
  float rho = j->a, lr = j->lr, eps = j->eps;
  for (int64_t i = begin; i < end; i++) {
    ms[i] = rho * ms[i] + (1.0f - rho) * g[i] * g[i];
    float inc = lr * g[i] / sqrtf(ms[i] + eps);
    if (mom) {
      mom[i] = j->b * mom[i] + inc;
      p[i] -= mom[i];
    } else {
      p[i] -= inc;
    }
  }
}

int lunet_cpu_rmsprop_update(lunet_backend *be, lunet_buf p, lunet_cbuf g, lunet_buf ms,
                             lunet_buf mom, size_t n, float lr, float rho, float momentum,
                             float epsilon) {
  flat_job j = {.p = p,
                .g = g,
                .s1 = ms,
                .s2 = momentum > 0.0f ? mom : NULL,
                .lr = lr,
                .a = rho,
                .b = momentum,
                .eps = epsilon};
  lunet_cpu_parallel(be, (int64_t)n, GRAIN, rmsprop_task, &j);
  return 0;
}

/* update_multi: one parallel region over the tensors' elements laid end
 * to end, each piece run by its tensor's single-op body (the same bits). */
typedef struct multi_job {
  const flat_job *jobs;
  const int64_t *start; /* count + 1 offsets */
  int count;
  lunet_update_kind kind;
} multi_job;

static void multi_task(void *arg, int64_t begin, int64_t end, int chunk) {
  const multi_job *m = arg;
  int lo = 0, hi = m->count - 1; /* the last tensor starting at or before begin */
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (m->start[mid] <= begin) lo = mid;
    else hi = mid - 1;
  }
  for (int t = lo; t < m->count && m->start[t] < end; t++) {
    int64_t b = (begin > m->start[t] ? begin : m->start[t]) - m->start[t];
    int64_t e = (end < m->start[t + 1] ? end : m->start[t + 1]) - m->start[t];
    if (b >= e) continue;
    flat_job *j = (flat_job *)&m->jobs[t];
    if (m->kind == LUNET_UPDATE_ADAM) adam_range(j, b, e);
    else if (m->kind == LUNET_UPDATE_SGD) sgd_task(j, b, e, chunk);
    else rmsprop_task(j, b, e, chunk);
  }
}

int lunet_cpu_update_multi(lunet_backend *be, const lunet_update_desc *u, int count, const lunet_buf *p,
                           const lunet_cbuf *g, const lunet_buf *s1, const lunet_buf *s2, const size_t *n) {
  if (count <= 0) return 0;
  float alpha = 0.0f;
  if (u->kind == LUNET_UPDATE_ADAM) {
    int rc = lunet_cpu_adam_alpha(u->lr, u->beta1, u->beta2, u->step, &alpha);
    if (rc) return rc;
    if (!s1 || !s2) return lunet_cpu_error(LUNET_ERR_ARG, "update_multi: Adam needs its m and v states");
  } else if (u->kind == LUNET_UPDATE_SGD && !s1 && u->momentum != 0.0f) {
    return lunet_cpu_error(LUNET_ERR_ARG, "sgd_update: momentum %g needs a velocity buffer", (double)u->momentum);
  } else if (u->kind == LUNET_UPDATE_RMSPROP && !s1) {
    return lunet_cpu_error(LUNET_ERR_ARG, "update_multi: RMSprop needs its mean-square state");
  }
  enum { ON_STACK = 32 }; /* a model's weights, most often: no allocation a step */
  flat_job stack_jobs[ON_STACK];
  int64_t stack_start[ON_STACK + 1];
  bool heap = count > ON_STACK;
  flat_job *jobs = heap ? malloc((size_t)count * sizeof *jobs) : stack_jobs;
  int64_t *start = heap ? malloc(((size_t)count + 1) * sizeof *start) : stack_start;
  if (!jobs || !start) {
    if (heap) free(jobs), free(start);
    return lunet_cpu_error(LUNET_ERR_NOMEM, "update_multi: out of host memory for %d tensors", count);
  }
  start[0] = 0;
  for (int t = 0; t < count; t++) {
    flat_job *j = &jobs[t];
    *j = (flat_job){.p = p[t], .g = g[t], .s1 = s1 ? s1[t] : NULL, .s2 = s2 ? s2[t] : NULL, .lr = u->lr,
                    .eps = u->epsilon, .wd = u->weight_decay, .alpha = alpha};
    if (u->kind == LUNET_UPDATE_SGD) j->a = u->momentum, j->flag = u->nesterov;
    else if (u->kind == LUNET_UPDATE_ADAM) j->a = u->beta1, j->b = u->beta2;
    else j->a = u->rho, j->b = u->momentum, j->wd = 0.0f, j->s2 = u->momentum > 0.0f ? j->s2 : NULL;
    start[t + 1] = start[t] + (int64_t)n[t];
  }
  multi_job m = {jobs, start, count, u->kind};
  lunet_cpu_parallel(be, start[count], GRAIN, multi_task, &m);
  if (heap) free(jobs), free(start);
  return 0;
}

/* ---- affine resample: one sample per item ---- */

typedef struct resample_job {
  float *y;
  const float *x, *mats;
  size_t h, w, c, oh, ow;
  lunet_fill_mode mode;
  float fill;
} resample_job;

static void resample_task(void *arg, int64_t begin, int64_t end, int chunk) {
  resample_job *j = arg;
  for (int64_t i = begin; i < end; i++)
    lunet_resample_one(j->y + (size_t)i * j->oh * j->ow * j->c,
                       j->x + (size_t)i * j->h * j->w * j->c, j->mats + 6 * i, j->h, j->w, j->c,
                       j->oh, j->ow, j->mode, j->fill);
}

int lunet_cpu_affine_resample(lunet_backend *be, lunet_buf y, lunet_cbuf x, const float *mats,
                              size_t n, size_t h, size_t w, size_t c, size_t oh, size_t ow,
                              lunet_fill_mode mode, float fill) {
  resample_job j = {y, x, mats, h, w, c, oh, ow, mode, fill};
  lunet_cpu_parallel(be, (int64_t)n, 1, resample_task, &j);
  return 0;
}

/* ---- the fused LSTM cell (backend.h) ---- */

/* act(x) for the cell's activations (AFFINE is the identity here). */
static inline float cell_act(lunet_unary_op op, float x) {
  return op == LUNET_UNARY_AFFINE ? x : lunet_cpu_unary_one(op, 0.0f, 0.0f, x);
}

/* act'(x) from y = act(x). */
static inline float cell_grad(lunet_unary_op op, float y) {
  switch (op) {
  case LUNET_UNARY_SIGMOID:
    return y * (1.0f - y);
  case LUNET_UNARY_TANH:
    return 1.0f - y * y;
  case LUNET_UNARY_RELU:
    return y > 0.0f ? 1.0f : 0.0f;
  default:
    return 1.0f;
  }
}

typedef struct cell_job {
  float *hc, *gates, *dz, *dcp;
  const float *z, *cp, *dhc, *chc, *cgates;
  size_t u;
  lunet_unary_op act, rec;
} cell_job;

static void lstm_cell_task(void *arg, int64_t begin, int64_t end, int chunk) {
  cell_job *j = arg;
  size_t u = j->u;
  for (int64_t r = begin; r < end; r++) {
    const float *z = j->z + (size_t)r * 4 * u, *cp = j->cp ? j->cp + (size_t)r * u : NULL;
    float *g = j->gates + (size_t)r * 4 * u, *h = j->hc + (size_t)r * 2 * u, *c = h + u;
    for (size_t k = 0; k < u; k++) {
      float i = cell_act(j->rec, z[k]), f = cell_act(j->rec, z[u + k]);
      float gg = cell_act(j->act, z[2 * u + k]), o = cell_act(j->rec, z[3 * u + k]);
      float cn = i * gg + (cp ? f * cp[k] : 0.0f);
      g[k] = i, g[u + k] = f, g[2 * u + k] = gg, g[3 * u + k] = o;
      c[k] = cn;
      h[k] = o * cell_act(j->act, cn);
    }
  }
}

int lunet_cpu_lstm_cell(lunet_backend *be, lunet_buf hc, lunet_buf gates, lunet_cbuf z, lunet_cbuf cp, size_t n,
                        size_t u, lunet_unary_op act, lunet_unary_op rec) {
  cell_job j = {.hc = hc, .gates = gates, .z = z, .cp = cp, .u = u, .act = act, .rec = rec};
  lunet_cpu_parallel(be, (int64_t)n, (int64_t)(4096 / (u + 1)) + 1, lstm_cell_task, &j);
  return 0;
}

static void lstm_cell_backward_task(void *arg, int64_t begin, int64_t end, int chunk) {
  cell_job *j = arg;
  size_t u = j->u;
  for (int64_t r = begin; r < end; r++) {
    const float *g = j->cgates + (size_t)r * 4 * u, *c = j->chc + (size_t)r * 2 * u + u;
    const float *dh = j->dhc + (size_t)r * 2 * u, *dc = dh + u, *cp = j->cp ? j->cp + (size_t)r * u : NULL;
    float *dz = j->dz + (size_t)r * 4 * u, *dcp = j->dcp ? j->dcp + (size_t)r * u : NULL;
    for (size_t k = 0; k < u; k++) {
      float i = g[k], f = g[u + k], gg = g[2 * u + k], o = g[3 * u + k];
      float a = cell_act(j->act, c[k]);
      float dct = dc[k] + dh[k] * o * cell_grad(j->act, a);
      dz[k] = dct * gg * cell_grad(j->rec, i);
      dz[u + k] = (cp ? dct * cp[k] : 0.0f) * cell_grad(j->rec, f);
      dz[2 * u + k] = dct * i * cell_grad(j->act, gg);
      dz[3 * u + k] = dh[k] * a * cell_grad(j->rec, o);
      if (dcp) dcp[k] = dct * f;
    }
  }
}

int lunet_cpu_lstm_cell_backward(lunet_backend *be, lunet_buf dz, lunet_buf dcp, lunet_cbuf dhc, lunet_cbuf hc,
                                 lunet_cbuf gates, lunet_cbuf cp, size_t n, size_t u, lunet_unary_op act,
                                 lunet_unary_op rec) {
  cell_job j = {.dz = dz, .dcp = dcp, .dhc = dhc, .chc = hc, .cgates = gates, .cp = cp, .u = u, .act = act, .rec = rec};
  lunet_cpu_parallel(be, (int64_t)n, (int64_t)(4096 / (u + 1)) + 1, lstm_cell_backward_task, &j);
  return 0;
}

/* ---- layer normalization (backend.h) ---- */

typedef struct ln_job {
  float *y, *mean, *rstd, *dx, *dgamma, *dbeta;
  const float *x, *gamma, *beta, *dy, *cmean, *crstd;
  size_t rows, cols;
  float eps;
} ln_job;

static void layernorm_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ln_job *j = arg;
  size_t c = j->cols;
  for (int64_t r = begin; r < end; r++) {
    const float *x = j->x + (size_t)r * c;
    float *y = j->y + (size_t)r * c;
    double s = 0, q = 0;
    for (size_t k = 0; k < c; k++) s += x[k];
    float m = (float)(s / (double)c);
    for (size_t k = 0; k < c; k++) q += (double)(x[k] - m) * (x[k] - m);
    float rs = 1.0f / sqrtf((float)(q / (double)c) + j->eps);
    j->mean[r] = m, j->rstd[r] = rs;
    for (size_t k = 0; k < c; k++) y[k] = (x[k] - m) * rs * j->gamma[k] + j->beta[k];
  }
}

int lunet_cpu_layernorm(lunet_backend *be, lunet_buf y, lunet_buf mean, lunet_buf rstd, lunet_cbuf x,
                        lunet_cbuf gamma, lunet_cbuf beta, size_t rows, size_t cols, float eps) {
  ln_job j = {.y = y, .mean = mean, .rstd = rstd, .x = x, .gamma = gamma, .beta = beta, .cols = cols, .eps = eps};
  lunet_cpu_parallel(be, (int64_t)rows, (int64_t)(8192 / (cols + 1)) + 1, layernorm_task, &j);
  return 0;
}

/* dx per row: rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma. */
static void layernorm_dx_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ln_job *j = arg;
  size_t c = j->cols;
  for (int64_t r = begin; r < end; r++) {
    const float *x = j->x + (size_t)r * c, *dy = j->dy + (size_t)r * c;
    float m = j->cmean[r], rs = j->crstd[r], *dx = j->dx + (size_t)r * c;
    double sg = 0, sgx = 0;
    for (size_t k = 0; k < c; k++) {
      float g = dy[k] * j->gamma[k];
      sg += g;
      sgx += (double)g * (x[k] - m) * rs;
    }
    float mg = (float)(sg / (double)c), mgx = (float)(sgx / (double)c);
    for (size_t k = 0; k < c; k++) dx[k] = rs * (dy[k] * j->gamma[k] - mg - (x[k] - m) * rs * mgx);
  }
}

/* dgamma and dbeta per column, over every row (threads split the columns). */
static void layernorm_dw_task(void *arg, int64_t begin, int64_t end, int chunk) {
  ln_job *j = arg;
  size_t c = j->cols, rows = j->rows;
  for (int64_t k = begin; k < end; k++) {
    double dg = 0, db = 0;
    for (size_t r = 0; r < rows; r++) {
      float dy = j->dy[r * c + (size_t)k];
      dg += (double)dy * (j->x[r * c + (size_t)k] - j->cmean[r]) * j->crstd[r];
      db += dy;
    }
    if (j->dgamma) j->dgamma[k] = (float)dg;
    if (j->dbeta) j->dbeta[k] = (float)db;
  }
}

int lunet_cpu_layernorm_backward(lunet_backend *be, lunet_buf dx, lunet_buf dgamma, lunet_buf dbeta, lunet_cbuf dy,
                                 lunet_cbuf x, lunet_cbuf gamma, lunet_cbuf mean, lunet_cbuf rstd, size_t rows,
                                 size_t cols) {
  ln_job j = {.dx = dx, .dgamma = dgamma, .dbeta = dbeta, .dy = dy, .x = x, .gamma = gamma, .cmean = mean,
              .crstd = rstd, .rows = rows, .cols = cols};
  if (dx) lunet_cpu_parallel(be, (int64_t)rows, (int64_t)(8192 / (cols + 1)) + 1, layernorm_dx_task, &j);
  if (dgamma || dbeta) lunet_cpu_parallel(be, (int64_t)cols, (int64_t)(8192 / (rows + 1)) + 1, layernorm_dw_task, &j);
  return 0;
}

/* ---- the fused GRU cell (backend.h) ---- */

typedef struct gru_job {
  float *hn, *gates, *dxs, *dhs, *dh;
  const float *xs, *hs, *h, *dhn, *cgates;
  size_t u;
  lunet_unary_op act, rec;
} gru_job;

static void gru_cell_task(void *arg, int64_t begin, int64_t end, int chunk) {
  gru_job *j = arg;
  size_t u = j->u;
  for (int64_t r = begin; r < end; r++) {
    const float *x = j->xs + (size_t)r * 3 * u, *hs = j->hs + (size_t)r * 3 * u, *h = j->h + (size_t)r * u;
    float *g = j->gates + (size_t)r * 3 * u, *hn = j->hn + (size_t)r * u;
    for (size_t k = 0; k < u; k++) {
      float z = cell_act(j->rec, x[k] + hs[k]), rr = cell_act(j->rec, x[u + k] + hs[u + k]);
      float c = cell_act(j->act, x[2 * u + k] + rr * hs[2 * u + k]);
      g[k] = z, g[u + k] = rr, g[2 * u + k] = c;
      hn[k] = c + z * (h[k] - c);
    }
  }
}

int lunet_cpu_gru_cell(lunet_backend *be, lunet_buf hn, lunet_buf gates, lunet_cbuf xs, lunet_cbuf hs, lunet_cbuf h,
                       size_t n, size_t u, lunet_unary_op act, lunet_unary_op rec) {
  gru_job j = {.hn = hn, .gates = gates, .xs = xs, .hs = hs, .h = h, .u = u, .act = act, .rec = rec};
  lunet_cpu_parallel(be, (int64_t)n, (int64_t)(4096 / (u + 1)) + 1, gru_cell_task, &j);
  return 0;
}

static void gru_cell_backward_task(void *arg, int64_t begin, int64_t end, int chunk) {
  gru_job *j = arg;
  size_t u = j->u;
  for (int64_t r = begin; r < end; r++) {
    const float *g = j->cgates + (size_t)r * 3 * u, *hs = j->hs + (size_t)r * 3 * u, *h = j->h + (size_t)r * u;
    const float *dhn = j->dhn + (size_t)r * u;
    float *dxs = j->dxs ? j->dxs + (size_t)r * 3 * u : NULL, *dhs = j->dhs ? j->dhs + (size_t)r * 3 * u : NULL;
    float *dh = j->dh ? j->dh + (size_t)r * u : NULL;
    for (size_t k = 0; k < u; k++) {
      float z = g[k], rr = g[u + k], c = g[2 * u + k], d = dhn[k];
      float dz = d * (h[k] - c) * cell_grad(j->rec, z);
      float dc = d * (1.0f - z) * cell_grad(j->act, c);
      float dr = dc * hs[2 * u + k] * cell_grad(j->rec, rr);
      if (dxs) dxs[k] = dz, dxs[u + k] = dr, dxs[2 * u + k] = dc;
      if (dhs) dhs[k] = dz, dhs[u + k] = dr, dhs[2 * u + k] = dc * rr;
      if (dh) dh[k] = d * z;
    }
  }
}

int lunet_cpu_gru_cell_backward(lunet_backend *be, lunet_buf dxs, lunet_buf dhs, lunet_buf dh, lunet_cbuf dhn,
                                lunet_cbuf gates, lunet_cbuf hs, lunet_cbuf h, size_t n, size_t u, lunet_unary_op act,
                                lunet_unary_op rec) {
  gru_job j = {.dxs = dxs, .dhs = dhs, .dh = dh, .dhn = dhn, .cgates = gates, .hs = hs, .h = h, .u = u,
               .act = act, .rec = rec};
  lunet_cpu_parallel(be, (int64_t)n, (int64_t)(4096 / (u + 1)) + 1, gru_cell_backward_task, &j);
  return 0;
}
