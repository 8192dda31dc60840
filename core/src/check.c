/* The plugin self-test: a layer type's shipped cases, checked by finite
 * differences on the CPU and against the CPU on every other backend. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/layer.h"

#define AGREEMENT 1e-3 /* relative, another backend against the CPU */
#define EPS 5e-3       /* finite-difference step */
#define ALL_BELOW 512  /* a tensor of at most this many elements: every one probed */
#define PROBES 96      /* else at least this many, and as many as its largest dimension, */
#define MAX_PROBES 2048 /* up to this */
#define NOISE_ULPS 4   /* the float32 rounding of the loss, in ulps of its partial sums */

typedef struct probe {
  lunet_layer *layer;
  int nin, nout;
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS], *r[LUNET_LAYER_MAX_OUTPUTS];
  bool training;
  uint64_t seed, counter; /* the RNG state every forward starts from */
} probe;

static void release_all(lunet_tensor **t, int n) {
  for (int i = 0; i < n; i++) {
    lunet_tensor_release(t[i]);
    t[i] = NULL;
  }
}

/* A standard normal tensor (N, shape...) from the context's stream. */
static lunet_tensor *randn(lunet_ctx *ctx, const char *backend, int64_t batch,
                           const lunet_shape *s) {
  int64_t shape[LUNET_MAX_DIMS] = {batch};
  memcpy(shape + 1, s->dims, sizeof(int64_t) * (size_t)s->ndim);
  int64_t n = lunet_shape_numel(s->ndim + 1, shape);
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!v) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
    return NULL;
  }
  uint64_t c = lunet_rng_take(ctx, (uint64_t)n * 2);
  for (int64_t i = 0; i < n; i++) {
    float u1 = lunet_philox_uniform(ctx->seed, c + 2 * i),
          u2 = lunet_philox_uniform(ctx->seed, c + 2 * i + 1);
    v[i] = sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.28318530718f * u2);
  }
  lunet_tensor *t = lunet_tensor_from_data_on(ctx, backend, LUNET_F32, s->ndim + 1, shape, v);
  free(v);
  return t;
}

/* loss = sum_j sum(y_j * r_j), from the probe's fixed RNG state. */
static lunet_tensor *probe_loss(lunet_ctx *ctx, probe *p) {
  ctx->seed = p->seed;
  ctx->rng_counter = p->counter;
  lunet_tensor *y[LUNET_LAYER_MAX_OUTPUTS] = {0}, *total = NULL;
  if (lunet_layer_apply(ctx, p->layer, NULL, p->nin, p->x, NULL, p->training, false, y, NULL))
    return NULL;
  for (int j = 0; j < p->nout; j++) {
    lunet_tensor *yr = lunet_mul(ctx, y[j], p->r[j]);
    lunet_tensor *s = yr ? lunet_reduce(ctx, LUNET_REDUCE_SUM, yr, LUNET_ALL_AXES, false) : NULL;
    lunet_tensor_release(yr);
    if (s && total) {
      lunet_tensor *sum = lunet_add(ctx, total, s);
      lunet_tensor_release(s);
      s = sum;
    }
    lunet_tensor_release(total);
    if (!(total = s)) break;
  }
  release_all(y, p->nout);
  return total;
}

static float *read_all(lunet_ctx *ctx, const lunet_tensor *t) {
  float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
  if (v && lunet_tensor_read(ctx, t, v, sizeof(float) * (size_t)t->numel)) {
    free(v);
    return NULL;
  }
  return v;
}

/* The loss with element k of t (host copy v) set to `value`. */
static bool loss_at(lunet_ctx *ctx, probe *p, lunet_tensor *t, float *v, int64_t k, float value,
                    double *out) {
  float orig = v[k];
  v[k] = value;
  lunet_tensor *loss = lunet_tensor_write(ctx, t, v, sizeof(float) * (size_t)t->numel)
                           ? NULL
                           : probe_loss(ctx, p);
  bool ok = loss && !lunet_tensor_item(ctx, loss, 0, out);
  lunet_tensor_release(loss);
  v[k] = orig;
  return ok;
}

/* Element `i` of a probe sweep over tensor t: along axis a of size d,
 * index (i + c * (a + 1)) mod d, c = i / d.  Every run of
 * dims[a] probes takes each index of axis a once, so `count` >= the largest
 * dimension reaches every row and every column (a gradient wrong in one
 * column cannot fall between probes), and the shifts between runs reach
 * entries off the diagonal (a transposed gradient shows). */
static int64_t sweep_index(const lunet_tensor *t, int64_t i) {
  int64_t k = 0;
  for (int a = 0; a < t->ndim; a++) {
    int64_t d = t->shape[a];
    k = k * d + (i + i / d * (a + 1)) % d;
  }
  return k;
}

/* The largest error of backward's gradient of t against central
 * differences, over every element of a small tensor and a sweep that
 * reaches every index of every axis of a larger one; -1 on error.  The
 * error of an element is |numeric - analytic| / max(|numeric|, |analytic|,
 * a tenth of the largest gradient of t, floor): relative, except where the
 * gradient is small next to the tensor's own (a zero where 0.01 belongs is
 * an error of 1 there, whatever the scale), or below `floor`, where float32
 * differences of the loss no longer resolve it (noise_floor).  A non-finite
 * loss or gradient is an error.  An element where the loss has a kink
 * within the step (two max-pool candidates closer than it, a ReLU at 0) has
 * no derivative to compare: the two one-sided differences disagree there,
 * and it is skipped; if every element is skipped, that is an error. */
static double fd_error(lunet_ctx *ctx, probe *p, lunet_tensor *t, double floor) {
  float *v = read_all(ctx, t), *g = t->grad ? read_all(ctx, t->grad) : NULL;
  bool ok = v && (g || !t->grad);
  int64_t maxdim = 1;
  for (int a = 0; a < t->ndim; a++) maxdim = t->shape[a] > maxdim ? t->shape[a] : maxdim;
  int64_t count = t->numel <= ALL_BELOW ? t->numel : maxdim > PROBES ? maxdim : PROBES;
  if (count > MAX_PROBES) count = MAX_PROBES;
  double *num = malloc(sizeof(double) * (size_t)(count ? count : 1)),
         *ana = malloc(sizeof(double) * (size_t)(count ? count : 1));
  if (ok && (!num || !ana)) ok = !lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  double worst = 0, base = 0, largest = 0;
  int64_t compared = 0;
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *l0 = ok ? probe_loss(ctx, p) : NULL;
  ok = l0 && !lunet_tensor_item(ctx, l0, 0, &base);
  lunet_tensor_release(l0);
  if (ok && !isfinite(base))
    ok = !lunet_error(ctx, LUNET_ERR_ARG, "the forward gives a non-finite output (the loss is %g)", base);
  for (int64_t i = 0; ok && i < count; i++) {
    int64_t k = t->numel <= ALL_BELOW ? i : sweep_index(t, i);
    double up, down;
    ok = loss_at(ctx, p, t, v, k, v[k] + (float)EPS, &up) &&
         loss_at(ctx, p, t, v, k, v[k] - (float)EPS, &down);
    if (!ok) break;
    double a = g ? g[k] : 0;
    if (!isfinite(a) || !isfinite(up) || !isfinite(down)) {
      ok = !lunet_error(ctx, LUNET_ERR_ARG, "a non-finite %s at element %lld (%g)",
                        isfinite(a) ? "output near the inputs" : "gradient", (long long)k,
                        isfinite(a) ? (isfinite(up) ? down : up) : a);
      break;
    }
    double right = up - base, left = base - down;
    if (fabs(right - left) > 0.5 * fmax(fabs(right), fabs(left)) + 1e-4) continue;
    num[compared] = (up - down) / (2 * EPS);
    ana[compared] = a;
    largest = fmax(largest, fmax(fabs(num[compared]), fabs(a)));
    compared++;
  }
  for (int64_t i = 0; ok && i < compared; i++) {
    double scale = fmax(fmax(fabs(num[i]), fabs(ana[i])), fmax(0.1 * largest, floor));
    worst = fmax(worst, fabs(num[i] - ana[i]) / scale);
  }
  ok = ok && !lunet_tensor_write(ctx, t, v, sizeof(float) * (size_t)t->numel);
  if (ok && compared == 0) {
    lunet_error(ctx, LUNET_ERR_ARG, "no element of a %lld-element tensor is smooth enough to check",
                (long long)t->numel);
    ok = false;
  }
  lunet_set_grad_enabled(ctx, prev);
  free(v);
  free(g);
  free(num);
  free(ana);
  return ok ? worst : -1;
}

/* The gradient size below which differences are noise, for a case of
 * `tolerance`: the loss sum(y * r) is rounded to float32 at the size of its
 * partial sums, at most |sum| + sqrt(sum (y r)^2) (the sum, and the random
 * walk of its terms) = M, so a difference over 2 EPS carries an error of
 * about NOISE_ULPS * FLT_EPSILON * M / (2 EPS); the floor is where that
 * error is `tolerance` of the gradient.  -1 on error. */
static double noise_floor(lunet_ctx *ctx, probe *p, double tolerance) {
  ctx->seed = p->seed;
  ctx->rng_counter = p->counter;
  lunet_tensor *y[LUNET_LAYER_MAX_OUTPUTS] = {0};
  bool prev = lunet_set_grad_enabled(ctx, false);
  double sum = 0, squares = 0;
  bool ok = !lunet_layer_apply(ctx, p->layer, NULL, p->nin, p->x, NULL, p->training, false, y, NULL);
  for (int j = 0; ok && j < p->nout; j++) {
    float *vy = read_all(ctx, y[j]), *vr = read_all(ctx, p->r[j]);
    ok = vy && vr;
    for (int64_t k = 0; ok && k < y[j]->numel; k++) {
      double term = (double)vy[k] * vr[k];
      sum += term;
      squares += term * term;
    }
    free(vy);
    free(vr);
  }
  release_all(y, p->nout);
  lunet_set_grad_enabled(ctx, prev);
  if (!(tolerance > 0)) tolerance = 1e-2; /* a case of tolerance 0 would make every difference noise */
  return ok ? NOISE_ULPS * FLT_EPSILON * (fabs(sum) + sqrt(squares)) / (2 * EPS * tolerance) : -1;
}

static double max_diff(lunet_ctx *ctx, const lunet_tensor *a, const lunet_tensor *b) {
  if (!a || !b) return a == b ? 0 : INFINITY;
  if (a->numel != b->numel) return INFINITY;
  float *va = read_all(ctx, a), *vb = read_all(ctx, b);
  double worst = va && vb ? 0 : INFINITY;
  for (int64_t k = 0; va && vb && k < a->numel; k++) {
    double d = fabs((double)va[k] - vb[k]) / fmax(1.0, fmax(fabs(va[k]), fabs(vb[k])));
    if (d > worst || d != d) worst = d != d ? INFINITY : d;
  }
  free(va);
  free(vb);
  return worst;
}

static lunet_layer *make_layer(lunet_ctx *ctx, const lunet_layer_type *t,
                               const lunet_layer_test *c) {
  lunet_layer *l = lunet_layer_new(ctx, t);
  for (int a = 0; l && a < c->nargs; a++)
    if (lunet_layer_set_value(l, c->args[a].name, &c->args[a].value)) {
      lunet_layer_release(l);
      return NULL;
    }
  if (l && lunet_layer_build(ctx, l, c->ninputs, c->inputs)) {
    lunet_layer_release(l);
    return NULL;
  }
  return l;
}

static void zero_grads(probe *p) {
  for (int i = 0; i < p->nin; i++) lunet_tensor_zero_grad(p->x[i]);
  for (int w = 0; w < lunet_layer_weight_count(p->layer); w++)
    lunet_tensor_zero_grad(lunet_layer_weight(p->layer, w));
}

/* Forward and backward of the probe: outputs in y, gradients in .grad. */
static lunet_status run_probe(lunet_ctx *ctx, probe *p, lunet_tensor **y) {
  zero_grads(p);
  ctx->seed = p->seed;
  ctx->rng_counter = p->counter;
  bool prev = lunet_set_grad_enabled(ctx, true);
  lunet_status s =
      lunet_layer_apply(ctx, p->layer, NULL, p->nin, p->x, NULL, p->training, false, y, NULL);
  lunet_tensor *loss = s ? NULL : probe_loss(ctx, p);
  if (!s) s = loss ? lunet_backward(ctx, loss, NULL) : ctx->status;
  lunet_tensor_release(loss);
  lunet_set_grad_enabled(ctx, prev);
  return s;
}

/* The same case on `backend`, from the CPU layer's weights and inputs. */
static double agreement(lunet_ctx *ctx, const lunet_layer_type *t, const lunet_layer_test *c,
                        probe *cpu, lunet_tensor **ycpu, const char *backend, char *why,
                        size_t nwhy) {
  const char *prev_default = lunet_default_backend(ctx);
  char prev[32];
  snprintf(prev, sizeof prev, "%s", prev_default ? prev_default : "cpu");
  double worst = INFINITY;
  probe p = *cpu;
  p.layer = NULL; /* this backend's own layer; the CPU's stays the caller's */
  memset(p.x, 0, sizeof p.x);
  memset(p.r, 0, sizeof p.r);
  lunet_tensor *y[LUNET_LAYER_MAX_OUTPUTS] = {0};
  bool ok = !lunet_use(ctx, backend) && (p.layer = make_layer(ctx, t, c));
  for (int w = 0; ok && w < lunet_layer_weight_count(p.layer); w++) {
    float *v = read_all(ctx, lunet_layer_weight(cpu->layer, w));
    ok = v && !lunet_tensor_write(ctx, lunet_layer_weight(p.layer, w), v,
                                  sizeof(float) * (size_t)lunet_layer_weight(p.layer, w)->numel);
    free(v);
  }
  for (int i = 0; ok && i < p.nin; i++) {
    lunet_tensor *d = lunet_detach(ctx, cpu->x[i]);
    ok = d && (p.x[i] = lunet_tensor_to(ctx, d, backend)) != NULL;
    lunet_tensor_release(d);
    if (ok) p.x[i]->requires_grad = true;
  }
  for (int j = 0; ok && j < p.nout; j++) ok = (p.r[j] = lunet_tensor_to(ctx, cpu->r[j], backend)) != NULL;
  if (ok && !run_probe(ctx, &p, y)) {
    worst = 0;
    for (int j = 0; j < p.nout; j++) worst = fmax(worst, max_diff(ctx, y[j], ycpu[j]));
    for (int i = 0; i < p.nin; i++) worst = fmax(worst, max_diff(ctx, p.x[i]->grad, cpu->x[i]->grad));
    for (int w = 0; w < lunet_layer_weight_count(p.layer); w++)
      if (lunet_layer_weight_trainable(p.layer, w))
        worst = fmax(worst, max_diff(ctx, lunet_layer_weight(p.layer, w)->grad,
                                     lunet_layer_weight(cpu->layer, w)->grad));
  } else {
    snprintf(why, nwhy, "%s", lunet_ctx_error(ctx));
  }
  release_all(y, LUNET_LAYER_MAX_OUTPUTS);
  release_all(p.x, LUNET_LAYER_MAX_INPUTS);
  release_all(p.r, LUNET_LAYER_MAX_OUTPUTS);
  lunet_layer_release(p.layer);
  lunet_use(ctx, prev);
  return worst;
}

static void add_result(lunet_check_result *out, int max, int *n, const lunet_check_result *r) {
  if (*n < max) out[*n] = *r;
  (*n)++;
}

/* One case in one mode: the gradient check, then every other backend. */
static void check_case(lunet_ctx *ctx, const lunet_layer_type *t, int i, bool training,
                       lunet_check_result *out, int max, int *n) {
  const lunet_layer_test *c = &t->tests[i];
  lunet_check_result r = {.test = i, .training = training, .tolerance = c->tolerance};
  probe p = {.training = training};
  lunet_tensor *y[LUNET_LAYER_MAX_OUTPUTS] = {0};
  lunet_use(ctx, "cpu");
  lunet_seed(ctx, 1000 + (uint64_t)i);
  bool ok = (p.layer = make_layer(ctx, t, c)) != NULL;
  p.nin = c->ninputs;
  p.nout = ok ? lunet_layer_output_count(p.layer) : 0;
  for (int k = 0; ok && k < p.nin; k++) {
    ok = (p.x[k] = randn(ctx, "cpu", c->batch, &c->inputs[k])) != NULL;
    if (ok) p.x[k]->requires_grad = true;
  }
  for (int j = 0; ok && j < p.nout; j++) {
    lunet_shape o = lunet_layer_output_shape(p.layer, j);
    ok = (p.r[j] = randn(ctx, "cpu", c->batch, &o)) != NULL;
  }
  p.seed = ctx->seed;
  p.counter = ctx->rng_counter;
  ok = ok && !run_probe(ctx, &p, y);
  double floor = ok ? noise_floor(ctx, &p, c->tolerance) : -1;
  ok = floor >= 0;
  for (int k = 0; ok && k < p.nin; k++) {
    double e = fd_error(ctx, &p, p.x[k], floor);
    ok = e >= 0;
    r.max_error = fmax(r.max_error, e);
  }
  for (int w = 0; ok && w < lunet_layer_weight_count(p.layer); w++) {
    if (!lunet_layer_weight_trainable(p.layer, w)) continue;
    double e = fd_error(ctx, &p, lunet_layer_weight(p.layer, w), floor);
    ok = e >= 0;
    r.max_error = fmax(r.max_error, e);
  }
  if (!ok) snprintf(r.error, sizeof r.error, "%s", lunet_ctx_error(ctx));
  r.ok = ok && r.max_error <= c->tolerance;
  add_result(out, max, n, &r);
  /* the CPU's outputs and gradients once more (the probes left the
   * weights as they were), then every other available backend against them */
  release_all(y, LUNET_LAYER_MAX_OUTPUTS);
  ok = ok && !run_probe(ctx, &p, y);
  lunet_backend_info infos[8];
  int nb = ok ? lunet_backends(ctx, infos, 8) : 0;
  for (int b = 0; b < nb && b < 8; b++) {
    if (!infos[b].available || !strcmp(infos[b].name, "cpu")) continue;
    lunet_check_result a = {.test = i, .training = training, .tolerance = AGREEMENT};
    memcpy(a.backend, infos[b].name, sizeof a.backend); /* both char[32] */
    a.backend[sizeof a.backend - 1] = '\0';
    a.max_diff = agreement(ctx, t, c, &p, y, infos[b].name, a.error, sizeof a.error);
    a.ok = a.max_diff <= AGREEMENT;
    add_result(out, max, n, &a);
  }
  release_all(y, LUNET_LAYER_MAX_OUTPUTS);
  release_all(p.x, LUNET_LAYER_MAX_INPUTS);
  release_all(p.r, LUNET_LAYER_MAX_OUTPUTS);
  lunet_layer_release(p.layer);
}

int lunet_check_layer_type(lunet_ctx *ctx, const char *type, lunet_check_result *out, int max) {
  const lunet_layer_type *t = lunet_layer_type_find(ctx, type);
  if (!t) return -1;
  char prev[32];
  const char *d = lunet_default_backend(ctx);
  snprintf(prev, sizeof prev, "%s", d ? d : "cpu");
  uint64_t seed = ctx->seed, counter = ctx->rng_counter;
  int n = 0;
  for (int i = 0; i < t->ntests; i++)
    for (int mode = 0; mode < 2; mode++) check_case(ctx, t, i, mode == 1, out, max, &n);
  lunet_use(ctx, prev);
  ctx->seed = seed;
  ctx->rng_counter = counter;
  lunet_clear_error(ctx);
  return n;
}
