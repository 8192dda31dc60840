/* Layer instances: arguments, weights, and one tape node per call. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/layer.h"

#define MAX_WEIGHTS 64

typedef struct arg_value {
  bool set, nil;
  int64_t ints[LUNET_MAX_DIMS];
  int n;
  double f, l1, l2;
  bool b;
  char *s;
} arg_value;

typedef struct weight {
  char name[32];
  lunet_tensor *t;
  bool trainable;
} weight;

/* Activation applied by the core after forward. */
typedef enum act_kind { ACT_NONE, ACT_UNARY, ACT_SOFTMAX, ACT_LOG_SOFTMAX, ACT_ELU, ACT_SILU } act_kind;

struct lunet_layer {
  int refcount;
  lunet_ctx *ctx; /* the context of construction and build */
  const lunet_layer_type *type;
  arg_value *args;
  weight w[MAX_WEIGHTS];
  int nweights;
  bool built;
  bool frozen; /* trainable = false: no weight gradients */
  int busy;    /* a HOST_CODE layer's call in progress */
  void *host_data;
  void (*host_release)(void *);
  int nin, nout;
  lunet_shape in[LUNET_LAYER_MAX_INPUTS], out[LUNET_LAYER_MAX_OUTPUTS];
  act_kind act;
  lunet_unary_op act_op;
  float act_alpha;
  const char *act_name;
  lunet_precision precision; /* of its products (the context's policy when made) */
};

/* One call: the plugin's state and what the core keeps for backward. */
struct lunet_call {
  int refcount;
  lunet_layer *layer;
  lunet_ctx *ctx; /* the caller's, during forward and backward */
  void *state;
  int nin, nout;
  int64_t batch;
  lunet_tensor *mask[LUNET_LAYER_MAX_INPUTS];
  bool need_dx[LUNET_LAYER_MAX_INPUTS];
  lunet_tensor *pending[MAX_WEIGHTS];      /* weight gradients of the running backward */
  lunet_tensor *dys[LUNET_LAYER_MAX_OUTPUTS]; /* several outputs: their gradients */
  bool wgrad[MAX_WEIGHTS]; /* the weights whose gradients this call's node gives */
  bool recording;          /* the core records this call */
  bool relu_fused;         /* a ReLU ran in the layer's op (ctx->pool_relu): backward too */
  bool relu_own;           /* that op was the layer's own (Dense's linear), not a pooling's */
  bool relu_folded;        /* this backward: the output's consumer took the ReLU's gradient */
  bool backward_done;
  int64_t step_offset; /* lunet_layer_step's position of the first step; -1 outside it */
};

static int arg_index(const lunet_layer *l, const char *name) {
  for (int i = 0; i < l->type->nargs; i++)
    if (strcmp(l->type->args[i].name, name) == 0) return i;
  return -1;
}

static void set_default(arg_value *v, const lunet_arg_schema *a) {
  memset(v, 0, sizeof *v);
  if (a->presence == LUNET_ARG_REQUIRED) return;
  v->set = true;
  if (a->presence == LUNET_ARG_NIL) {
    v->nil = true;
    return;
  }
  const lunet_arg_value *d = &a->def;
  switch (a->type) {
  case LUNET_ARG_INT:
    v->n = 1;
    v->ints[0] = d->i;
    v->f = (double)d->i;
    break;
  case LUNET_ARG_FLOAT:
    v->f = d->f;
    break;
  case LUNET_ARG_BOOL:
    v->b = d->b;
    break;
  case LUNET_ARG_STRING:
    v->nil = d->s == NULL;
    v->s = d->s ? strdup(d->s) : NULL;
    break;
  case LUNET_ARG_INT2:
  case LUNET_ARG_SHAPE:
  case LUNET_ARG_SIDES:
    v->n = d->n < 0 ? 0 : d->n > LUNET_MAX_DIMS ? LUNET_MAX_DIMS : d->n;
    memcpy(v->ints, d->v, sizeof(int64_t) * (size_t)v->n);
    v->f = v->n ? (double)v->ints[0] : 0;
    break;
  case LUNET_ARG_REGULARIZER:
    v->l1 = d->f;
    v->l2 = d->f2;
    break;
  case LUNET_ARG_RANGE:
    v->n = d->n == 2 ? 2 : 1;
    v->f = d->f;
    v->l2 = d->n == 2 ? d->f2 : d->f;
    break;
  }
}

static void free_args(lunet_layer *l) {
  for (int i = 0; i < l->type->nargs; i++) free(l->args[i].s);
  free(l->args);
}

lunet_layer *lunet_layer_new(lunet_ctx *ctx, const lunet_layer_type *t) {
  if (!t) { /* lunet_layer_type_find's NULL passed on: its error (a misspelt name) stays the message */
    if (!ctx->status) lunet_error(ctx, LUNET_ERR_ARG, "lunet_layer_new: no layer type (NULL)");
    return NULL;
  }
  lunet_layer *l = calloc(1, sizeof *l);
  if (l) l->args = calloc((size_t)(t->nargs ? t->nargs : 1), sizeof *l->args);
  if (!l || !l->args) {
    free(l);
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a %s layer", t->name);
    return NULL;
  }
  l->refcount = 1;
  l->ctx = ctx;
  l->type = t;
  l->precision = ctx->policy;
  for (int i = 0; i < t->nargs; i++) {
    set_default(&l->args[i], &t->args[i]);
    if (t->args[i].type == LUNET_ARG_STRING && t->args[i].presence == LUNET_ARG_DEFAULT &&
        t->args[i].def.s && !l->args[i].s) {
      free_args(l);
      free(l);
      lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a %s layer", t->name);
      return NULL;
    }
  }
  return l;
}

lunet_layer *lunet_layer_retain(lunet_layer *l) {
  if (l) __atomic_add_fetch(&l->refcount, 1, __ATOMIC_RELAXED);
  return l;
}

void lunet_layer_set_host_data(lunet_layer *l, void *data, void (*release)(void *)) {
  if (l->host_release) l->host_release(l->host_data);
  l->host_data = data;
  l->host_release = release;
}

void *lunet_layer_host_data(const lunet_layer *l) { return l->host_data; }

/* A HOST_CODE layer runs one call at a time: false (with the error set)
 * when another is under way. */
static bool enter(lunet_ctx *ctx, lunet_layer *l) {
  if (!(l->type->flags & LUNET_LAYER_HOST_CODE)) return true;
  if (__atomic_exchange_n(&l->busy, 1, __ATOMIC_ACQUIRE) == 0) return true;
  lunet_error(ctx, LUNET_ERR_ARG,
              "%s (%s) runs host-language code, which cannot run on two threads at once (or "
              "call itself)",
              lunet_layer_name(l), l->type->name);
  return false;
}

static void leave(lunet_layer *l) {
  if (l->type->flags & LUNET_LAYER_HOST_CODE) __atomic_store_n(&l->busy, 0, __ATOMIC_RELEASE);
}

void lunet_layer_release(lunet_layer *l) {
  if (!l || __atomic_sub_fetch(&l->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  if (l->host_release) l->host_release(l->host_data);
  for (int i = 0; i < l->nweights; i++) lunet_tensor_release(l->w[i].t);
  free_args(l);
  free(l);
}

const lunet_layer_type *lunet_layer_type_get(const lunet_layer *l) { return l->type; }
lunet_ctx *lunet_layer_ctx(lunet_layer *l) { return l->ctx; }
const char *lunet_layer_type_name(const lunet_layer *l) { return l->type->name; }

const char *lunet_layer_name(const lunet_layer *l) {
  const char *n = lunet_layer_get_string(l, "name");
  return n ? n : l->type->name;
}

lunet_status lunet_layer_error(lunet_layer *l, lunet_status s, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return lunet_error(l->ctx, s, "%s: %s", lunet_layer_name(l), msg);
}

/* Whether sizes make a sample shape (a plugin's output, a model's input):
 * fewer than LUNET_MAX_DIMS axes, each at least 1, at most
 * LUNET_MAX_SAMPLE_ELEMENTS in all (the product checked as it grows, before
 * it could overflow). */
bool lunet_sample_shape_ok(int ndim, const int64_t *dims) {
  if (ndim < 0 || ndim >= LUNET_MAX_DIMS || (ndim > 0 && !dims)) return false;
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    if (dims[d] < 1 || dims[d] > LUNET_MAX_SAMPLE_ELEMENTS / numel) return false;
    numel *= dims[d];
  }
  return true;
}

/* An error for a broken contract between the core and a layer type: the
 * layer's name, what went wrong, and the plugin to blame. */
static lunet_status plugin_bug(lunet_ctx *ctx, const lunet_layer *l, lunet_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static lunet_status plugin_bug(lunet_ctx *ctx, const lunet_layer *l, lunet_status s, const char *fmt, ...) {
  char msg[512], who[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return lunet_error(ctx, s, "%s: %s (a bug in %s)", lunet_layer_name(l), msg,
                     lunet_registry_plugin_of(l->type, who, sizeof who));
}

/* ---- arguments ---- */

/* The argument types a setter takes (bits of lunet_arg_type). */
#define TAKES(t) (1u << (t))
#define TAKES_ANY 0xffffffffu

static const char *arg_type_name(lunet_arg_type t) {
  static const char *names[] = {"an integer", "a number", "a boolean", "a string", "an integer or a pair",
                                "a list of integers", "a regularizer", "a number or a pair {lo, hi}",
                                "a number, a pair {h, w} or {{top, bottom}, {left, right}}"};
  return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* Argument arg's value to set, cleared; NULL with *s set when the layer is
 * built, has no such argument, or the argument is of a type the setter
 * (what it takes: `takes`, named `given`) does not give. */
static arg_value *slot_of(lunet_layer *l, const char *arg, unsigned takes, const char *given, lunet_status *s) {
  if (l->built) { /* its weights and output shape come from the arguments it was built with */
    *s = lunet_error(l->ctx, LUNET_ERR_ARG, "%s: '%s' cannot change once the layer is built (make a new layer)",
                     lunet_layer_name(l), arg);
    return NULL;
  }
  int i = arg_index(l, arg);
  if (i < 0) {
    *s = lunet_error(l->ctx, LUNET_ERR_ARG, "%s has no argument '%s'", l->type->name, arg);
    return NULL;
  }
  lunet_arg_type t = l->type->args[i].type;
  if (!(takes & TAKES(t))) {
    *s = lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s takes %s, got %s", l->type->name, arg, arg_type_name(t), given);
    return NULL;
  }
  *s = LUNET_OK;
  arg_value *v = &l->args[i];
  free(v->s);
  memset(v, 0, sizeof *v);
  v->set = true;
  return v;
}

static arg_value *slot(lunet_layer *l, const char *arg, lunet_status *s) { return slot_of(l, arg, TAKES_ANY, "", s); }

lunet_status lunet_layer_set_nil(lunet_layer *l, const char *arg) {
  lunet_status s;
  arg_value *v = slot(l, arg, &s);
  if (v) v->nil = true;
  return s;
}

lunet_status lunet_layer_set_int(lunet_layer *l, const char *arg, int64_t x) {
  return lunet_layer_set_ints(l, arg, 1, &x);
}

lunet_status lunet_layer_set_float(lunet_layer *l, const char *arg, double x) {
  int i = arg_index(l, arg);
  lunet_arg_type t = i >= 0 ? l->type->args[i].type : LUNET_ARG_FLOAT;
  if (t == LUNET_ARG_INT || t == LUNET_ARG_INT2 || t == LUNET_ARG_SHAPE || t == LUNET_ARG_SIDES) { /* a whole number serves */
    if (!(x == floor(x) && fabs(x) < 0x1p62))
      return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s takes %s, got %g", l->type->name, arg, arg_type_name(t), x);
    return lunet_layer_set_int(l, arg, (int64_t)x);
  }
  if (!isfinite(x)) /* Rescaling{nan} made every output NaN; no argument means anything by one */
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s must be a finite number, got %s", l->type->name, arg,
                       isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
  lunet_status s;
  char given[48];
  snprintf(given, sizeof given, "the number %g", x);
  arg_value *v = slot_of(l, arg, TAKES(LUNET_ARG_FLOAT) | TAKES(LUNET_ARG_RANGE), given, &s);
  if (v) v->f = x;
  return s;
}

lunet_status lunet_layer_set_bool(lunet_layer *l, const char *arg, bool x) {
  lunet_status s;
  arg_value *v = slot_of(l, arg, TAKES(LUNET_ARG_BOOL), "a boolean", &s);
  if (v) v->b = x;
  return s;
}

struct activation_def;
static const struct activation_def *find_activation(const char *a);
static lunet_status unknown_activation(lunet_ctx *ctx, const lunet_layer *l, const char *a);

lunet_status lunet_layer_set_string(lunet_layer *l, const char *arg, const char *x) {
  lunet_status s;
  /* an unknown activation is an error when the layer is made, not at its first build */
  if (!strcmp(arg, "activation") && !(l->type->flags & LUNET_LAYER_OWNS_ACTIVATION) && x && !find_activation(x))
    return unknown_activation(l->ctx, l, x);
  size_t n = strlen(arg);
  if (x && n > 11 && !strcmp(arg + n - 11, "_constraint") && lunet_constraint_check(l->ctx, l->type->name, arg, x))
    return l->ctx->status;
  if (!x) return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s given NULL (lunet_layer_set_nil unsets it)", l->type->name, arg);
  char given[96];
  snprintf(given, sizeof given, "the string \"%.60s\"", x);
  arg_value *v = slot_of(l, arg, TAKES(LUNET_ARG_STRING), given, &s);
  if (v && !(v->s = strdup(x))) return lunet_error(l->ctx, LUNET_ERR_NOMEM, "out of memory");
  return s;
}

lunet_status lunet_layer_set_ints(lunet_layer *l, const char *arg, int n, const int64_t *x) {
  lunet_status s;
  if (n < 0 || n > LUNET_MAX_DIMS || (n > 0 && !x))
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s takes 0 to %d values, got %d%s", l->type->name, arg,
                       LUNET_MAX_DIMS, n, n > 0 && !x ? " and no array" : "");
  int i = arg_index(l, arg);
  if (i >= 0 && l->type->args[i].type == LUNET_ARG_SIDES && n != 1 && n != 2 && n != 4)
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s takes %s, got %d values", l->type->name, arg,
                       arg_type_name(LUNET_ARG_SIDES), n);
  arg_value *v = slot_of(l, arg,
                         TAKES(LUNET_ARG_INT) | TAKES(LUNET_ARG_INT2) | TAKES(LUNET_ARG_SHAPE) | TAKES(LUNET_ARG_SIDES) |
                             (n == 1 ? TAKES(LUNET_ARG_FLOAT) | TAKES(LUNET_ARG_RANGE) : 0),
                         n == 1 ? "an integer" : "a list of integers", &s);
  if (v) {
    v->n = n;
    memcpy(v->ints, x, sizeof(int64_t) * (size_t)n);
    v->f = n ? (double)x[0] : 0;
  }
  return s;
}

lunet_status lunet_layer_set_regularizer(lunet_layer *l, const char *arg, double l1, double l2) {
  lunet_status s;
  arg_value *v = slot(l, arg, &s);
  if (v) {
    v->l1 = l1;
    v->l2 = l2;
  }
  return s;
}

lunet_status lunet_layer_set_range(lunet_layer *l, const char *arg, int n, double lo, double hi) {
  lunet_status s;
  if (n != 1 && n != 2)
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s must be a number or a pair {lo, hi}", l->type->name, arg);
  if (!isfinite(lo) || (n == 2 && !isfinite(hi)))
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s must be finite", l->type->name, arg);
  if (n == 2 && lo > hi)
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s pair {%g, %g} is reversed (lower must be <= upper)",
                       l->type->name, arg, lo, hi);
  arg_value *v = slot(l, arg, &s);
  if (v) {
    v->n = n;
    v->f = lo;
    v->l2 = n == 2 ? hi : lo;
  }
  return s;
}

lunet_status lunet_layer_set_value(lunet_layer *l, const char *arg, const lunet_arg_value *v) {
  int i = arg_index(l, arg);
  if (i < 0) return lunet_error(l->ctx, LUNET_ERR_ARG, "%s has no argument '%s'", l->type->name, arg);
  switch (l->type->args[i].type) {
  case LUNET_ARG_INT:
    return lunet_layer_set_int(l, arg, v->i);
  case LUNET_ARG_FLOAT:
    return lunet_layer_set_float(l, arg, v->f);
  case LUNET_ARG_BOOL:
    return lunet_layer_set_bool(l, arg, v->b);
  case LUNET_ARG_STRING:
    return v->s ? lunet_layer_set_string(l, arg, v->s) : lunet_layer_set_nil(l, arg);
  case LUNET_ARG_INT2:
  case LUNET_ARG_SHAPE:
  case LUNET_ARG_SIDES:
    return lunet_layer_set_ints(l, arg, v->n, v->v);
  case LUNET_ARG_REGULARIZER:
    return lunet_layer_set_regularizer(l, arg, v->f, v->f2);
  case LUNET_ARG_RANGE:
    return lunet_layer_set_range(l, arg, v->n, v->f, v->f2);
  }
  return LUNET_OK;
}

bool lunet_layer_arg_value(const lunet_layer *l, int i, lunet_arg_value *out) {
  memset(out, 0, sizeof *out);
  if (i < 0 || i >= l->type->nargs || !l->args[i].set || l->args[i].nil) return false;
  const arg_value *v = &l->args[i];
  out->i = v->n ? v->ints[0] : (int64_t)v->f;
  out->f = l->type->args[i].type == LUNET_ARG_REGULARIZER ? v->l1 : v->f;
  /* f2: a regularizer's l2, a range's upper end */
  out->f2 = v->l2;
  out->b = v->b;
  out->s = v->s;
  out->n = v->n;
  memcpy(out->v, v->ints, sizeof out->v);
  return true;
}

bool lunet_layer_arg_is_set(const lunet_layer *l, const char *arg) {
  int i = arg_index(l, arg);
  return i >= 0 && l->args[i].set && !l->args[i].nil;
}

static const arg_value *get(const lunet_layer *l, const char *arg) {
  int i = arg_index(l, arg);
  return i >= 0 && l->args[i].set && !l->args[i].nil ? &l->args[i] : NULL;
}

int64_t lunet_layer_get_int(const lunet_layer *l, const char *arg) {
  const arg_value *v = get(l, arg);
  return v ? (v->n ? v->ints[0] : (int64_t)v->f) : 0;
}

double lunet_layer_get_float(const lunet_layer *l, const char *arg) {
  const arg_value *v = get(l, arg);
  return v ? v->f : 0.0;
}

bool lunet_layer_get_bool(const lunet_layer *l, const char *arg) {
  const arg_value *v = get(l, arg);
  return v && v->b;
}

const char *lunet_layer_get_string(const lunet_layer *l, const char *arg) {
  const arg_value *v = get(l, arg);
  return v ? v->s : NULL;
}

void lunet_layer_get_int2(const lunet_layer *l, const char *arg, int64_t out[2]) {
  const arg_value *v = get(l, arg);
  out[0] = v && v->n ? v->ints[0] : 0;
  out[1] = v && v->n > 1 ? v->ints[1] : out[0];
}

void lunet_layer_get_sides(const lunet_layer *l, const char *arg, int64_t out[4]) {
  const arg_value *v = get(l, arg);
  int n = v ? v->n : 0;
  for (int i = 0; i < 4; i++) out[i] = n == 4 ? v->ints[i] : n == 2 ? v->ints[i / 2] : n ? v->ints[0] : 0;
}

int lunet_layer_get_range(const lunet_layer *l, const char *arg, double out[2]) {
  const arg_value *v = get(l, arg);
  out[0] = v ? v->f : 0;
  out[1] = v ? v->l2 : 0;
  return v ? v->n : 0;
}

int lunet_layer_get_shape(const lunet_layer *l, const char *arg, int64_t *out, int max) {
  const arg_value *v = get(l, arg);
  if (!v) return 0;
  for (int i = 0; i < v->n && i < max; i++) out[i] = v->ints[i];
  return v->n;
}

/* ---- weights ---- */

/* A standard normal from the counters c and c + 1 (Box-Muller). */
static float normal(uint64_t seed, uint64_t c) {
  float u1 = lunet_philox_uniform(seed, c), u2 = lunet_philox_uniform(seed, c + 1);
  return sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.28318530718f * u2);
}

/* Counters a weight of n values reserves: 4 each (a uniform takes one, an
 * orthogonal matrix's normals two), 8 for the truncated normals (4 draws of
 * two), so that every value has its own and no weight's draws reach into
 * the next one's. */
#define INIT_COUNTERS 8
#define UNIFORM_COUNTERS 4

/* Keras's truncated normal for value i of a weight whose counters start at
 * c: redraw beyond two standard deviations, up to 4 draws in the value's own
 * counters (all 4 beyond: p = 4e-6, the last one clipped). */
static float truncated_normal(uint64_t seed, uint64_t c, int64_t i) {
  float z = 0;
  for (int j = 0; j < INIT_COUNTERS / 2; j++) {
    z = normal(seed, c + (uint64_t)i * INIT_COUNTERS + 2 * (uint64_t)j);
    if (fabsf(z) <= 2.0f) return z;
  }
  return z > 0 ? 2.0f : -2.0f;
}

/* Keras's Orthogonal (gain 1): the weight seen as (rows, cols) = (all but
 * the last axis, the last axis) gets orthonormal rows or columns, whichever
 * are fewer: Gram-Schmidt on a standard normal (max, min) matrix, its
 * orthonormal columns transposed when rows < cols. */
static bool orthogonal(float *v, int ndim, const int64_t *shape, uint64_t seed, uint64_t c) {
  int64_t cols = ndim ? shape[ndim - 1] : 1, rows = 1;
  for (int i = 0; i + 1 < ndim; i++) rows *= shape[i];
  int64_t n = rows > cols ? rows : cols, k = rows > cols ? cols : rows;
  double *q = malloc(sizeof(double) * (size_t)(n * k));
  if (!q) return false;
  for (int64_t i = 0; i < n * k; i++) q[i] = normal(seed, c + 2 * (uint64_t)i); /* q[r * k + j] */
  for (int64_t j = 0; j < k; j++) {
    for (int64_t p = 0; p < j; p++) {
      double dot = 0;
      for (int64_t r = 0; r < n; r++) dot += q[r * k + j] * q[r * k + p];
      for (int64_t r = 0; r < n; r++) q[r * k + j] -= dot * q[r * k + p];
    }
    double norm = 0;
    for (int64_t r = 0; r < n; r++) norm += q[r * k + j] * q[r * k + j];
    norm = sqrt(norm) > 1e-12 ? sqrt(norm) : 1;
    for (int64_t r = 0; r < n; r++) q[r * k + j] /= norm;
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t col = 0; col < cols; col++)
      v[r * cols + col] = (float)(rows >= cols ? q[r * k + col] : q[col * k + r]);
  free(q);
  return true;
}

static lunet_status init_values(lunet_layer *l, const char *init, float *v, int ndim,
                                const int64_t *shape, int64_t n) {
  int64_t rec = 1;
  for (int i = 0; i + 2 < ndim; i++) rec *= shape[i];
  double fan_in = ndim >= 2 ? (double)(shape[ndim - 2] * rec) : (double)(ndim ? shape[0] : 1);
  double fan_out = ndim >= 2 ? (double)(shape[ndim - 1] * rec) : fan_in;
  bool truncated = strstr(init, "_normal") != NULL;
  uint64_t seed = l->ctx->seed, c = lunet_rng_take(l->ctx, (uint64_t)n * (truncated ? INIT_COUNTERS : UNIFORM_COUNTERS));
  if (!strcmp(init, "zeros") || !strcmp(init, "ones")) {
    for (int64_t i = 0; i < n; i++) v[i] = init[0] == 'o' ? 1.0f : 0.0f;
  } else if (!strcmp(init, "uniform")) { /* Keras's "uniform": U(-0.05, 0.05) */
    for (int64_t i = 0; i < n; i++) v[i] = 0.05f * (2.0f * lunet_philox_uniform(seed, c + i) - 1.0f);
  } else if (!strcmp(init, "glorot_uniform") || !strcmp(init, "he_uniform") ||
             !strcmp(init, "lecun_uniform")) {
    double scale = init[0] == 'g'   ? 6.0 / (fan_in + fan_out)
                   : init[0] == 'h' ? 6.0 / fan_in
                                    : 3.0 / fan_in;
    float limit = (float)sqrt(scale);
    for (int64_t i = 0; i < n; i++)
      v[i] = limit * (2.0f * lunet_philox_uniform(seed, c + i) - 1.0f);
  } else if (!strcmp(init, "glorot_normal") || !strcmp(init, "he_normal") ||
             !strcmp(init, "lecun_normal")) {
    double var = init[0] == 'g'   ? 2.0 / (fan_in + fan_out)
                 : init[0] == 'h' ? 2.0 / fan_in
                                  : 1.0 / fan_in;
    float sd = (float)(sqrt(var) / 0.87962566103423978);
    for (int64_t i = 0; i < n; i++) v[i] = sd * truncated_normal(seed, c, i);
  } else if (!strcmp(init, "orthogonal")) {
    if (!orthogonal(v, ndim, shape, seed, c))
      return lunet_layer_error(l, LUNET_ERR_NOMEM, "out of host memory initializing a weight");
  } else {
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "unknown initializer '%s' (valid: glorot_uniform, glorot_normal, "
                             "he_uniform, he_normal, lecun_uniform, lecun_normal, orthogonal, uniform, "
                             "zeros, ones)",
                             init);
  }
  return LUNET_OK;
}

int lunet_layer_add_weight(lunet_layer *l, const char *name, int ndim, const int64_t *shape,
                           const char *init, bool trainable) {
  if (l->nweights == MAX_WEIGHTS) {
    lunet_layer_error(l, LUNET_ERR_ARG, "at most %d weights per layer", MAX_WEIGHTS);
    return -1;
  }
  if (!name || !name[0] || !lunet_sample_shape_ok(ndim, shape)) {
    plugin_bug(l->ctx, l, LUNET_ERR_SHAPE, "add_weight '%s': a name, fewer than %d axes, sizes of at least 1 and at "
               "most %lld elements are required", name ? name : "(null)", LUNET_MAX_DIMS, (long long)LUNET_MAX_SAMPLE_ELEMENTS);
    return -1;
  }
  int64_t numel = lunet_shape_numel(ndim, shape), bytes = 4 * numel;
  if (l->ctx->weight_budget >= 0) {
    if (bytes > l->ctx->weight_budget) {
      lunet_layer_error(l, LUNET_ERR_FORMAT,
                        "weight '%s' needs %lld bytes, more than the file holds (the config does not "
                        "match the weights)",
                        name, (long long)bytes);
      return -1;
    }
    l->ctx->weight_budget -= bytes;
  }
  lunet_tensor *t = lunet_tensor_new(l->ctx, LUNET_F32, ndim, shape);
  if (!t) return -1;
  float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
  /* a model being read from a file gets its weights from the file: no
   * initializer (the orthogonal one is costly) */
  bool loading = l->ctx->weight_budget >= 0;
  if (v && loading) memset(v, 0, sizeof(float) * (size_t)t->numel);
  lunet_status s = !v        ? lunet_error(l->ctx, LUNET_ERR_NOMEM, "out of host memory")
                   : loading ? LUNET_OK
                             : init_values(l, init, v, ndim, shape, t->numel);
  if (!s) s = lunet_tensor_write(l->ctx, t, v, sizeof(float) * (size_t)t->numel);
  free(v);
  if (s) {
    lunet_tensor_release(t);
    return -1;
  }
  t->requires_grad = trainable;
  weight *w = &l->w[l->nweights];
  snprintf(w->name, sizeof w->name, "%s", name);
  w->t = t;
  w->trainable = trainable;
  return l->nweights++;
}

lunet_status lunet_layer_to(lunet_ctx *ctx, lunet_layer *l, const char *backend) {
  lunet_tensor *moved[MAX_WEIGHTS] = {0};
  bool prev = lunet_set_grad_enabled(ctx, false);
  for (int i = 0; i < l->nweights; i++)
    if (!(moved[i] = lunet_tensor_to(ctx, l->w[i].t, backend))) {
      lunet_set_grad_enabled(ctx, prev);
      for (int k = 0; k < i; k++) lunet_tensor_release(moved[k]);
      return ctx->status;
    }
  lunet_set_grad_enabled(ctx, prev);
  for (int i = 0; i < l->nweights; i++) {
    moved[i]->requires_grad = l->w[i].trainable && !l->frozen;
    lunet_tensor_release(l->w[i].t);
    l->w[i].t = moved[i];
  }
  return LUNET_OK;
}

lunet_status lunet_layer_set_weight_tensor(lunet_ctx *ctx, lunet_layer *l, int i, lunet_tensor *t) {
  if (i < 0 || i >= l->nweights)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s has no weight %d (it has %d)", lunet_layer_name(l), i + 1, l->nweights);
  if (!t || !lunet_shape_equal(t, l->w[i].t) || t->dtype != LUNET_F32) {
    char a[128], b[128];
    return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: weight '%s' is %s (float32), not %s", lunet_layer_name(l),
                       l->w[i].name, lunet_shape_str(l->w[i].t->ndim, l->w[i].t->shape, a, sizeof a),
                       t ? lunet_shape_str(t->ndim, t->shape, b, sizeof b) : "nothing");
  }
  lunet_tensor *d = lunet_detach(ctx, t);
  if (!d) return ctx->status;
  d->requires_grad = l->w[i].trainable && !l->frozen;
  lunet_tensor_release(l->w[i].t);
  l->w[i].t = d;
  return LUNET_OK;
}

lunet_tensor *lunet_layer_weight(lunet_layer *l, int i) {
  return i >= 0 && i < l->nweights ? l->w[i].t : NULL;
}
int lunet_layer_weight_count(const lunet_layer *l) { return l->nweights; }
/* NULL and false past the weights (they read past them, or crashed) */
const char *lunet_layer_weight_name(const lunet_layer *l, int i) {
  return i >= 0 && i < l->nweights ? l->w[i].name : NULL;
}
bool lunet_layer_weight_trainable(const lunet_layer *l, int i) {
  return i >= 0 && i < l->nweights && l->w[i].trainable && !l->frozen;
}

void lunet_layer_set_trainable(lunet_layer *l, bool on) {
  l->frozen = !on;
  for (int i = 0; i < l->nweights; i++) l->w[i].t->requires_grad = l->w[i].trainable && on;
}

bool lunet_layer_trainable(const lunet_layer *l) { return !l->frozen; }

lunet_precision lunet_layer_precision(const lunet_layer *l) { return l->precision; }
void lunet_layer_set_precision(lunet_layer *l, lunet_precision p) {
  l->precision = p == LUNET_PRECISION_BFLOAT16 ? p : LUNET_PRECISION_FLOAT32;
}

/* ---- build and call ---- */

/* "(None, 28, 28, 1)": one sample's shape with Keras's batch placeholder. */
const char *lunet_batch_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t len = (size_t)snprintf(buf, n, "(None");
  for (int i = 0; i < ndim && len < n; i++)
    len += (size_t)snprintf(buf + len, n - len, ", %lld", (long long)shape[i]);
  if (len < n) snprintf(buf + len, n - len, ")");
  return buf;
}

/* The activations a layer's "activation" argument takes: nn.Activation's. */
static const struct activation_def {
  const char *name;
  act_kind kind;
  lunet_unary_op op;
  float alpha;
} activations[] = {{"linear", ACT_NONE, 0, 0},
                   {"relu", ACT_UNARY, LUNET_UNARY_RELU, 0},
                   {"sigmoid", ACT_UNARY, LUNET_UNARY_SIGMOID, 0},
                   {"tanh", ACT_UNARY, LUNET_UNARY_TANH, 0},
                   {"gelu", ACT_UNARY, LUNET_UNARY_GELU, 0},
                   {"leaky_relu", ACT_UNARY, LUNET_UNARY_LEAKY_RELU, 0.2f},
                   {"softmax", ACT_SOFTMAX, 0, 0},
                   {"log_softmax", ACT_LOG_SOFTMAX, 0, 0},
                   {"elu", ACT_ELU, 0, 0},
                   {"silu", ACT_SILU, 0, 0},
                   {"swish", ACT_SILU, 0, 0}};

static const struct activation_def *find_activation(const char *a) {
  for (size_t i = 0; a && i < sizeof activations / sizeof activations[0]; i++)
    if (!strcmp(a, activations[i].name)) return &activations[i];
  return NULL;
}

static lunet_status unknown_activation(lunet_ctx *ctx, const lunet_layer *l, const char *a) {
  return lunet_error(ctx, LUNET_ERR_ARG,
                     "bad argument 'activation' to '%s' (unknown activation '%s'; valid: linear, relu, sigmoid, "
                     "tanh, gelu, leaky_relu, softmax, log_softmax, elu, silu, swish)",
                     l->type->name, a);
}

static lunet_status parse_activation(lunet_layer *l) {
  l->act = ACT_NONE;
  l->act_name = NULL;
  if (l->type->flags & LUNET_LAYER_OWNS_ACTIVATION) return LUNET_OK;
  const char *a = lunet_layer_get_string(l, "activation");
  if (!a) return LUNET_OK;
  const struct activation_def *d = find_activation(a);
  if (!d) return unknown_activation(l->ctx, l, a);
  l->act = d->kind;
  l->act_op = d->op;
  l->act_alpha = d->alpha;
  l->act_name = d->kind == ACT_NONE ? NULL : d->name;
  return LUNET_OK;
}

bool lunet_arg_choice_ok(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *p = choices; *p;) {
    const char *e = strchr(p, '|');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && !strncmp(p, v, n)) return true;
    p += len + (e ? 1 : 0);
  }
  return false;
}

static int min_inputs(const lunet_layer_type *t) { return t->min_inputs > 0 ? t->min_inputs : 1; }
static int max_inputs(const lunet_layer_type *t) {
  int n = t->max_inputs > 0 ? t->max_inputs : min_inputs(t);
  return n > LUNET_LAYER_MAX_INPUTS ? LUNET_LAYER_MAX_INPUTS : n;
}

int lunet_layer_output_count(const lunet_layer *l) {
  const lunet_layer_type *t = l->type;
  bool v21 = t->struct_size >= offsetof(lunet_layer_type, output_count) + sizeof t->output_count;
  int n = v21 && t->output_count ? t->output_count(l) : t->noutputs > 0 ? t->noutputs : 1;
  if (n < 1) n = 1;
  return n > LUNET_LAYER_MAX_OUTPUTS ? LUNET_LAYER_MAX_OUTPUTS : n;
}

static bool same_shape(const lunet_shape *a, const lunet_shape *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->dims[i] != b->dims[i]) return false;
  return true;
}

static lunet_status check_input_count(lunet_ctx *ctx, const lunet_layer *l, int nin) {
  int lo = min_inputs(l->type), hi = max_inputs(l->type);
  if (nin >= lo && nin <= hi) return LUNET_OK;
  if (lo == hi)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s takes %d input%s, got %d", lunet_layer_name(l), lo,
                       lo == 1 ? "" : "s", nin);
  return lunet_error(ctx, LUNET_ERR_ARG, "%s takes %d to %d inputs, got %d", lunet_layer_name(l),
                     lo, hi, nin);
}

lunet_status lunet_layer_build(lunet_ctx *ctx, lunet_layer *l, int nin, const lunet_shape *in) {
  if (check_input_count(ctx, l, nin)) return ctx->status;
  for (int i = 0; i < nin; i++)
    if (in[i].ndim < 0 || in[i].ndim >= LUNET_MAX_DIMS)
      return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: input %d has %d dimensions (at most %d)",
                         lunet_layer_name(l), i + 1, in[i].ndim, LUNET_MAX_DIMS - 1);
  if (l->built) {
    if (nin != l->nin)
      return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: built for %d input%s, called with %d", lunet_layer_name(l),
                         l->nin, l->nin == 1 ? "" : "s", nin);
    for (int i = 0; i < nin; i++)
      if (!same_shape(&in[i], &l->in[i]) || nin != l->nin) {
        char a[128], b[128];
        return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: built for input %s but got %s",
                           lunet_layer_name(l),
                           lunet_batch_shape_str(l->in[i].ndim, l->in[i].dims, a, sizeof a),
                           lunet_batch_shape_str(in[i].ndim, in[i].dims, b, sizeof b));
      }
    return LUNET_OK;
  }
  l->ctx = ctx;
  for (int i = 0; i < l->type->nargs; i++)
    if (!l->args[i].set)
      return lunet_layer_error(l, LUNET_ERR_ARG, "%s is required", l->type->args[i].name);
  if (parse_activation(l)) return ctx->status;
  int nout = lunet_layer_output_count(l);
  lunet_shape out[LUNET_LAYER_MAX_OUTPUTS];
  memset(out, 0, sizeof out);
  lunet_status s = l->type->build(l, nin, in, out);
  if (s && ctx->status == LUNET_OK) s = plugin_bug(ctx, l, s, "build failed without a message");
  for (int j = 0; !s && j < nout; j++) {
    if (!lunet_sample_shape_ok(out[j].ndim, out[j].dims))
      s = plugin_bug(ctx, l, LUNET_ERR_SHAPE,
                     "build declared output %d with %d dimensions, a size below 1 or more than %lld elements per "
                     "sample", j + 1, out[j].ndim, (long long)LUNET_MAX_SAMPLE_ELEMENTS);
  }
  if (s) {
    for (int i = 0; i < l->nweights; i++) lunet_tensor_release(l->w[i].t);
    l->nweights = 0;
    return s;
  }
  l->nin = nin;
  l->nout = nout;
  memcpy(l->in, in, sizeof(lunet_shape) * (size_t)nin);
  memcpy(l->out, out, sizeof(lunet_shape) * (size_t)nout);
  l->built = true;
  return LUNET_OK;
}

bool lunet_layer_built(const lunet_layer *l) { return l->built; }
int lunet_layer_input_count(const lunet_layer *l) { return l->nin; }

lunet_shape lunet_layer_input_shape(const lunet_layer *l, int i) {
  lunet_shape s = {0};
  if (i >= 0 && i < l->nin) s = l->in[i];
  return s;
}

lunet_shape lunet_layer_output_shape(const lunet_layer *l, int j) {
  lunet_shape s = {0};
  if (j >= 0 && j < l->nout) s = l->out[j];
  return s;
}

const char *lunet_layer_activation(const lunet_layer *l) { return l->act_name; }

/* ---- call records ---- */

lunet_call *lunet_call_new(lunet_ctx *ctx, lunet_layer *l) {
  lunet_call *c = calloc(1, sizeof *c);
  size_t n = l->type->call_state_size;
  if (c && n && !(c->state = calloc(1, n))) {
    free(c);
    c = NULL;
  }
  if (!c) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a call of %s", lunet_layer_name(l));
    return NULL;
  }
  c->refcount = 1;
  c->layer = lunet_layer_retain(l);
  c->ctx = ctx;
  c->step_offset = -1;
  return c;
}

int64_t lunet_call_step_offset(const lunet_call *c) { return c->step_offset; }

static lunet_call *call_retain(lunet_call *c) {
  __atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
  return c;
}

static void release_all(lunet_tensor **t, int n) {
  for (int i = 0; i < n; i++) {
    lunet_tensor_release(t[i]);
    t[i] = NULL;
  }
}

void lunet_call_release(lunet_call *c) {
  if (!c || __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  lunet_layer *l = c->layer;
  if (c->state && l->type->release) l->type->release(l, c);
  release_all(c->mask, LUNET_LAYER_MAX_INPUTS);
  release_all(c->pending, MAX_WEIGHTS);
  release_all(c->dys, LUNET_LAYER_MAX_OUTPUTS);
  free(c->state);
  lunet_layer_release(l);
  free(c);
}

lunet_ctx *lunet_call_ctx(lunet_call *c) { return c->ctx; }
void *lunet_call_state(lunet_call *c) { return c->state; }
lunet_tensor *lunet_call_mask(lunet_call *c, int i) {
  return i >= 0 && i < LUNET_LAYER_MAX_INPUTS ? c->mask[i] : NULL;
}
int lunet_call_input_count(const lunet_call *c) { return c->nin; }
bool lunet_call_recording(const lunet_call *c) { return c->recording; }
bool lunet_call_needs_dx(const lunet_call *c, int i) {
  return i >= 0 && i < c->nin && c->need_dx[i];
}

lunet_status lunet_call_error(lunet_call *c, lunet_status s, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return lunet_error(c->ctx, s, "%s: %s", lunet_layer_name(c->layer), msg);
}

lunet_status lunet_call_accumulate_grad(lunet_call *c, int i, lunet_tensor *g) {
  lunet_layer *l = c->layer;
  if (i < 0 || i >= l->nweights)
    return lunet_call_error(c, LUNET_ERR_ARG, "gradient for weight %d of %d", i, l->nweights);
  if (!g || !lunet_shape_equal(g, l->w[i].t) || g->dtype != LUNET_F32) {
    char a[128], b[128];
    return plugin_bug(c->ctx, l, LUNET_ERR_SHAPE, "the gradient of '%s' has shape %s, the weight %s",
                      l->w[i].name, g ? lunet_shape_str(g->ndim, g->shape, a, sizeof a) : "(none)",
                      lunet_shape_str(l->w[i].t->ndim, l->w[i].t->shape, b, sizeof b));
  }
  if (!c->pending[i]) {
    c->pending[i] = lunet_tensor_retain(g);
    return LUNET_OK;
  }
  return lunet_op_accumulate(c->ctx, c->pending[i], g);
}

/* ---- the tape ---- */

/* A zero gradient for output j of a call whose output nothing used. */
static lunet_tensor *zeros_for(lunet_ctx *ctx, lunet_call *c, int j, const lunet_tensor *like) {
  const lunet_shape *o = &c->layer->out[j];
  int64_t shape[LUNET_MAX_DIMS] = {c->batch};
  memcpy(shape + 1, o->dims, sizeof(int64_t) * (size_t)o->ndim);
  lunet_tensor *z = lunet_op_new(ctx, like, LUNET_F32, o->ndim + 1, shape);
  if (z && lunet_op_fill(ctx, z, 0.0f)) {
    lunet_tensor_release(z);
    z = NULL;
  }
  return z;
}

static lunet_status call_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy, lunet_tensor **dx);

/* The call whose ReLU's gradient call c's backward may fold into its first
 * input's gradient (lunet_op_matmul_dx), or NULL: that input is the output
 * of a layer call whose own op ran its ReLU, whose backward has not run,
 * and which gets no gradient but c's in the backward running now (c's
 * node is its only user there, and no gradient was seeded into it). */
static lunet_call *relu_to_fold(lunet_ctx *ctx, const lunet_call *c, const lunet_node *n) {
  const lunet_tensor *in = c->nin >= 1 ? n->inputs[0] : NULL;
  if (!in || !c->need_dx[0] || !in->grad_fn || in->grad_fn->backward != call_backward) return NULL;
  lunet_call *p = in->grad_fn->data;
  bool once = in->uses == 1 && in->uses_gen == ctx->backward_gen && ctx->backward_gen != 0 && !in->acc;
  for (int i = 1; once && i < c->nin; i++) once = n->inputs[i] != in; /* c reads it once */
  return once && p->relu_own && p->nout == 1 && !p->backward_done ? p : NULL;
}

/* Node inputs: the call's inputs, then the layer's trainable weights.  dy
 * is the output's gradient (one output) or the token's (several: the part
 * nodes have gathered them in c->dys). */
static lunet_status call_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                  lunet_tensor **dx) {
  lunet_call *c = n->data;
  lunet_layer *l = c->layer;
  if (c->backward_done)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: backward through the same call a second time: the layer released what "
                       "it saved after the first backward (run the forward pass again)",
                       lunet_layer_name(l));
  lunet_tensor *dys[LUNET_LAYER_MAX_OUTPUTS] = {0}, *gx[LUNET_LAYER_MAX_INPUTS] = {0};
  lunet_status s = LUNET_OK;
  if (c->nout == 1) {
    dys[0] = lunet_tensor_retain(dy);
  } else {
    for (int j = 0; !s && j < c->nout; j++) {
      dys[j] = c->dys[j] ? lunet_tensor_retain(c->dys[j]) : zeros_for(ctx, c, j, n->inputs[0]);
      if (!dys[j]) s = ctx->status;
    }
  }
  for (int i = 0; i < c->nin; i++)
    c->need_dx[i] = n->inputs[i]->requires_grad || n->inputs[i]->grad_fn;
  c->ctx = ctx;
  release_all(c->pending, MAX_WEIGHTS);
  if (!s) s = enter(ctx, l) ? LUNET_OK : ctx->status;
  if (!s) {
    uint64_t t0 = lunet_prof_now(ctx);
    lunet_precision prec = lunet_set_precision(ctx, l->precision);
    if (c->relu_fused) ctx->pool_relu = c->relu_folded ? LUNET_POOL_RELU_FOLDED : LUNET_POOL_RELU_ASKED;
    lunet_call *producer = relu_to_fold(ctx, c, n);
    if (producer) ctx->input_relu = LUNET_POOL_RELU_ASKED, ctx->input_relu_mask = n->inputs[0];
    s = l->type->backward(l, c, dys, gx);
    if (producer && ctx->input_relu == LUNET_POOL_RELU_DONE) producer->relu_folded = true;
    ctx->input_relu = LUNET_POOL_RELU_NONE;
    ctx->input_relu_mask = NULL;
    /* the forward's op took the ReLU, so its backward must take the ReLU's
     * gradient: a layer that did not would return a wrong gradient */
    if (!s && c->relu_fused && ctx->pool_relu != LUNET_POOL_RELU_DONE &&
        (gx[0] || (l->type->flags & LUNET_LAYER_FUSES_RELU))) /* a pooling without dx runs nothing */
      s = lunet_error(ctx, LUNET_ERR_ARG, "%s: its forward ran the ReLU in its own op, its backward did not "
                      "take the ReLU's gradient (a bug of the layer's, or of lunet's: please report it)",
                      lunet_layer_name(l));
    ctx->pool_relu = LUNET_POOL_RELU_NONE;
    lunet_set_precision(ctx, prec);
    if (t0) lunet_prof_layer(ctx, lunet_layer_name(l), "backward", t0);
    leave(l);
    if (s && ctx->status == LUNET_OK) s = plugin_bug(ctx, l, s, "backward failed without a message");
  }
  /* what backward returned: a gradient of the input's shape wherever one
   * is needed (a missing one would train nothing, silently) */
  for (int i = 0; !s && i < c->nin; i++) {
    const lunet_tensor *in = n->inputs[i];
    char a[128], b[128];
    if (c->need_dx[i] && !gx[i])
      s = plugin_bug(ctx, l, LUNET_ERR_ARG, "backward returned no gradient for input %d, which needs one", i + 1);
    else if (gx[i] && (!lunet_shape_equal(gx[i], in) || gx[i]->dtype != LUNET_F32))
      s = plugin_bug(ctx, l, LUNET_ERR_SHAPE, "backward returned the gradient of input %d with shape %s (%s), the "
                     "input has %s (float32)", i + 1, lunet_shape_str(gx[i]->ndim, gx[i]->shape, a, sizeof a),
                     lunet_dtype_name(gx[i]->dtype), lunet_shape_str(in->ndim, in->shape, b, sizeof b));
  }
  release_all(dys, LUNET_LAYER_MAX_OUTPUTS);
  release_all(c->dys, LUNET_LAYER_MAX_OUTPUTS);
  if (s) {
    release_all(gx, LUNET_LAYER_MAX_INPUTS);
    release_all(c->pending, MAX_WEIGHTS);
    return s;
  }
  c->backward_done = true;
  for (int i = 0; i < c->nin; i++) dx[i] = gx[i];
  for (int i = 0, k = c->nin; i < l->nweights; i++)
    if (c->wgrad[i]) {
      dx[k++] = c->pending[i];
      c->pending[i] = NULL;
    }
  release_all(c->pending, MAX_WEIGHTS); /* frozen weights' gradients */
  return LUNET_OK;
}

/* Output j's part node of a call with several outputs: keeps dy for the
 * call's node, and hands the token a zero so that node runs after every
 * part (the tape orders nodes by their inputs). */
static lunet_status part_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                  lunet_tensor **dx) {
  lunet_call *c = n->data;
  int j = (int)n->iparams[0];
  if (c->dys[j]) {
    lunet_tensor *sum = lunet_op_binary(ctx, LUNET_BINARY_ADD, c->dys[j], dy);
    if (!sum) return ctx->status;
    lunet_tensor_release(c->dys[j]);
    c->dys[j] = sum;
  } else {
    c->dys[j] = lunet_tensor_retain(dy);
  }
  dx[0] = lunet_scalar_like(ctx, n->inputs[0], 0.0f);
  return dx[0] ? LUNET_OK : ctx->status;
}

static void call_node_release(lunet_node *n) { lunet_call_release(n->data); }

static lunet_node *call_node(lunet_ctx *ctx, lunet_call *c, int n, lunet_tensor *const *inputs,
                             lunet_status (*bw)(lunet_ctx *, lunet_node *, lunet_tensor *,
                                                lunet_tensor **)) {
  lunet_node *node = lunet_node_new(ctx, c->layer->type->name, n, inputs);
  if (!node) return NULL;
  node->data = call_retain(c);
  node->backward = bw;
  node->release = call_node_release;
  return node;
}

/* Records the call: one node for a single output; for several, the call's
 * node makes a token whose part nodes each output hangs from. */
static lunet_status record(lunet_ctx *ctx, lunet_call *c, int n, lunet_tensor *const *inputs,
                           lunet_tensor **y) {
  lunet_node *main = call_node(ctx, c, n, inputs, call_backward);
  if (!main) return ctx->status;
  if (c->nout == 1) {
    y[0]->grad_fn = main;
    return LUNET_OK;
  }
  lunet_tensor *token = lunet_scalar_like(ctx, y[0], 0.0f);
  if (!token) {
    lunet_node_release(main);
    return ctx->status;
  }
  token->grad_fn = main;
  lunet_status s = LUNET_OK;
  for (int j = 0; j < c->nout && !s; j++) {
    lunet_node *part = call_node(ctx, c, 1, &token, part_backward);
    if (!part) {
      s = ctx->status;
      break;
    }
    part->iparams[0] = j;
    y[j]->grad_fn = part;
  }
  lunet_tensor_release(token);
  return s;
}

/* Each input (N, in[i]...) with one batch size. */
static lunet_status inputs_fit(lunet_ctx *ctx, const lunet_layer *l, int nin,
                               lunet_tensor *const *x) {
  if (nin != l->nin)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: built for %d input%s, called with %d", lunet_layer_name(l),
                       l->nin, l->nin == 1 ? "" : "s", nin);
  for (int i = 0; i < nin; i++) {
    bool ok = x[i]->ndim == l->in[i].ndim + 1 && x[i]->shape[0] == x[0]->shape[0];
    for (int d = 0; ok && d < l->in[i].ndim; d++) ok = x[i]->shape[d + 1] == l->in[i].dims[d];
    if (!ok) {
      char a[128], b[128];
      lunet_batch_shape_str(l->in[i].ndim, l->in[i].dims, a, sizeof a);
      lunet_shape_str(x[i]->ndim, x[i]->shape, b, sizeof b);
      if (nin == 1)
        return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: expected input of shape %s, got %s",
                           lunet_layer_name(l), a, b);
      return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: expected input %d of shape %s, got %s%s",
                         lunet_layer_name(l), i + 1, a, b,
                         x[i]->ndim == l->in[i].ndim + 1 ? " (every input needs the same batch size)"
                                                         : "");
    }
  }
  return LUNET_OK;
}

/* An output that is one of the inputs (an identity) or already on a tape
 * becomes a view of its own, so recording the call cannot overwrite that
 * tensor's place on the tape (or make it its own input). */
static lunet_status fresh_outputs(lunet_ctx *ctx, int nin, lunet_tensor *const *x, int nout,
                                  lunet_tensor **y, bool recording) {
  for (int j = 0; j < nout; j++) {
    /* When the call is recorded, its node hangs from a tensor the layer
     * never saw: a layer that keeps its own output for backward (max
     * pooling does) would otherwise close a cycle output -> node -> call
     * -> state -> output, which only a backward breaks, so a forward
     * whose step failed, or that nobody differentiated, would never be
     * freed, nor anything it holds. */
    bool shared = recording || y[j]->grad_fn != NULL;
    for (int i = 0; !shared && i < nin; i++) shared = y[j] == x[i];
    if (!shared) continue;
    lunet_tensor *v = lunet_tensor_alias(ctx, y[j], y[j]->ndim, y[j]->shape);
    if (!v) return ctx->status;
    lunet_tensor_release(y[j]);
    y[j] = v;
  }
  return LUNET_OK;
}

/* What forward returned, against what build declared. */
static lunet_status outputs_fit(lunet_ctx *ctx, const lunet_layer *l, int64_t batch,
                                lunet_tensor **y) {
  for (int j = 0; j < l->nout; j++) {
    if (!y[j]) return plugin_bug(ctx, l, LUNET_ERR_ARG, "forward returned no output %d", j + 1);
    if (y[j]->dtype != LUNET_F32)
      return plugin_bug(ctx, l, LUNET_ERR_ARG, "forward returned output %d as %s, but layers return float32", j + 1,
                        lunet_dtype_name(y[j]->dtype));
    const lunet_shape *o = &l->out[j];
    bool ok = y[j]->ndim == o->ndim + 1 && y[j]->shape[0] == batch;
    for (int d = 0; ok && d < o->ndim; d++) ok = y[j]->shape[d + 1] == o->dims[d];
    if (!ok) {
      char a[128], b[128];
      return plugin_bug(ctx, l, LUNET_ERR_SHAPE,
                        "forward returned output %d of shape %s, but build declared %s for a batch of %lld", j + 1,
                        lunet_shape_str(y[j]->ndim, y[j]->shape, a, sizeof a),
                        lunet_batch_shape_str(o->ndim, o->dims, b, sizeof b), (long long)batch);
    }
  }
  return LUNET_OK;
}

static lunet_status output_masks(lunet_ctx *ctx, lunet_layer *l, lunet_call *c, int nin,
                                 lunet_tensor *const *x, lunet_tensor **mask_out) {
  for (int j = 0; j < c->nout; j++) mask_out[j] = NULL;
  if (!l->type->compute_mask) {
    for (int j = 0; j < c->nout; j++) mask_out[j] = lunet_tensor_retain(c->mask[0]);
    return LUNET_OK;
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_status s = l->type->compute_mask(l, c, nin, x, mask_out);
  lunet_set_grad_enabled(ctx, prev);
  if (s) release_all(mask_out, c->nout);
  return s;
}

/* y[0] through the layer's activation (one output only). */
/* elu(x) = relu(x) + exp(min(x, 0)) - 1 and silu(x) = x sigmoid(x), on the tape. */
static lunet_tensor *composite(lunet_ctx *ctx, act_kind kind, lunet_tensor *x) {
  if (kind == ACT_SILU) {
    lunet_tensor *sg = lunet_unary(ctx, LUNET_UNARY_SIGMOID, x, 0, 0), *y = sg ? lunet_mul(ctx, x, sg) : NULL;
    lunet_tensor_release(sg);
    return y;
  }
  lunet_tensor *neg = lunet_unary(ctx, LUNET_UNARY_CLIP, x, -3.4e38f, 0.0f);
  lunet_tensor *e = neg ? lunet_unary(ctx, LUNET_UNARY_EXP, neg, 0, 0) : NULL;
  lunet_tensor *em1 = e ? lunet_unary(ctx, LUNET_UNARY_AFFINE, e, 1.0f, -1.0f) : NULL;
  lunet_tensor *r = em1 ? lunet_unary(ctx, LUNET_UNARY_RELU, x, 0, 0) : NULL;
  lunet_tensor *y = r ? lunet_add(ctx, r, em1) : NULL;
  lunet_tensor *tmp[] = {neg, e, em1, r};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) lunet_tensor_release(tmp[i]);
  return y;
}

static lunet_status activate(lunet_ctx *ctx, const lunet_layer *l, lunet_tensor **y) {
  lunet_tensor *a = l->act == ACT_SOFTMAX       ? lunet_softmax(ctx, y[0], false)
                    : l->act == ACT_LOG_SOFTMAX ? lunet_softmax(ctx, y[0], true)
                    : l->act == ACT_ELU || l->act == ACT_SILU ? composite(ctx, l->act, y[0])
                                                              : lunet_unary(ctx, l->act_op, y[0], l->act_alpha, 0);
  lunet_tensor_release(y[0]);
  y[0] = a;
  /* profiled: the activation's gradient counts for the layer */
  if (a && a->grad_fn && ctx->prof && !a->grad_fn->prof_layer) a->grad_fn->prof_layer = strdup(lunet_layer_name(l));
  return a ? LUNET_OK : ctx->status;
}

lunet_status lunet_layer_apply(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int nin,
                               lunet_tensor *const *x, lunet_tensor *const *masks, bool training,
                               bool skip_activation, lunet_tensor **y, lunet_tensor **mask_out) {
  return lunet_layer_apply_relu(ctx, l, keep, nin, x, masks, training, skip_activation, false, y, mask_out);
}

lunet_status lunet_layer_apply_relu(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int nin,
                                    lunet_tensor *const *x, lunet_tensor *const *masks, bool training,
                                    bool skip_activation, bool relu_after, lunet_tensor **y,
                                    lunet_tensor **mask_out) {
  int nout = lunet_layer_output_count(l);
  for (int j = 0; j < nout; j++) {
    y[j] = NULL;
    if (mask_out) mask_out[j] = NULL;
  }
  if (check_input_count(ctx, l, nin)) return ctx->status;
  for (int i = 0; i < nin; i++)
    if (!x[i] || x[i]->ndim < 1)
      return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: input %d needs a batch axis", lunet_layer_name(l),
                         i + 1);
  if (!l->built) {
    lunet_shape in[LUNET_LAYER_MAX_INPUTS];
    for (int i = 0; i < nin; i++) {
      in[i].ndim = x[i]->ndim - 1;
      memcpy(in[i].dims, x[i]->shape + 1, sizeof(int64_t) * (size_t)in[i].ndim);
    }
    if (lunet_layer_build(ctx, l, nin, in)) return ctx->status;
  }
  if (inputs_fit(ctx, l, nin, x)) return ctx->status;
  lunet_call *c = keep ? call_retain(keep) : lunet_call_new(ctx, l);
  if (!c) return ctx->status;
  c->ctx = ctx;
  c->step_offset = -1;
  c->nin = nin;
  c->nout = nout;
  c->batch = x[0]->shape[0];
  c->backward_done = false;
  for (int i = 0; i < LUNET_LAYER_MAX_INPUTS; i++) {
    lunet_tensor *m = masks && i < nin ? lunet_tensor_retain(masks[i]) : NULL;
    lunet_tensor_release(c->mask[i]);
    c->mask[i] = m;
  }
  lunet_tensor *inputs[LUNET_NODE_MAX_INPUTS];
  int ninputs = 0;
  for (int i = 0; i < nin; i++) inputs[ninputs++] = x[i];
  for (int i = 0; i < l->nweights; i++)
    if ((c->wgrad[i] = lunet_layer_weight_trainable(l, i))) inputs[ninputs++] = l->w[i].t;
  bool grad = lunet_needs_grad(ctx, ninputs, inputs);
  c->recording = grad;
  /* a frozen BatchNormalization runs in inference mode, as in Keras */
  if (l->frozen && (l->type->flags & LUNET_LAYER_FROZEN_INFERENCE)) training = false;
  if (!enter(ctx, l)) {
    lunet_call_release(c);
    return ctx->status;
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  uint64_t t0 = lunet_prof_now(ctx);
  lunet_precision prec = lunet_set_precision(ctx, l->precision);
  /* a ReLU moved after this pooling: its pool2d op may run it fused; the
   * "relu" activation of a layer whose linear op can run it (Dense) */
  bool own_relu = l->act == ACT_UNARY && l->act_op == LUNET_UNARY_RELU && !skip_activation &&
                  (l->type->flags & LUNET_LAYER_FUSES_RELU);
  ctx->pool_relu = (relu_after || own_relu) && nout == 1 ? LUNET_POOL_RELU_ASKED : LUNET_POOL_RELU_NONE;
  lunet_status s = l->type->forward(l, c, nin, x, y, training);
  bool relu_fused = c->relu_fused = ctx->pool_relu == LUNET_POOL_RELU_DONE;
  c->relu_own = relu_fused && own_relu;
  ctx->pool_relu = LUNET_POOL_RELU_NONE;
  lunet_set_precision(ctx, prec);
  lunet_set_grad_enabled(ctx, prev);
  leave(l);
  if (!s) s = outputs_fit(ctx, l, c->batch, y);
  if (!s) s = fresh_outputs(ctx, nin, x, c->nout, y, grad);
  else if (ctx->status == LUNET_OK)
    s = plugin_bug(ctx, l, s, "forward failed without a message");
  if (!s && mask_out) s = output_masks(ctx, l, c, nin, x, mask_out);
  if (!s && grad) s = record(ctx, c, ninputs, inputs, y);
  lunet_call_release(c);
  if (!s && nout == 1 && l->act != ACT_NONE && !skip_activation && !(own_relu && relu_fused)) s = activate(ctx, l, y);
  if (!s && nout == 1 && relu_after && !relu_fused) { /* a ReLU moved after this pooling (model.c) */
    lunet_tensor *r = lunet_unary(ctx, LUNET_UNARY_RELU, y[0], 0.0f, 0.0f);
    lunet_tensor_release(y[0]);
    y[0] = r;
    if (!r) s = ctx->status;
    else if (r->grad_fn && ctx->prof && !r->grad_fn->prof_layer) r->grad_fn->prof_layer = strdup(lunet_layer_name(l));
  }
  if (t0) lunet_prof_layer(ctx, lunet_layer_name(l), "forward", t0); /* its activation included */
  if (s) {
    release_all(y, nout);
    if (mask_out) release_all(mask_out, nout);
  }
  return s;
}

/* Step mode: input i as built but for the steps axis (the first of a
 * sample) and the batch. */
static lunet_status step_inputs_fit(lunet_ctx *ctx, const lunet_layer *l, int nin, lunet_tensor *const *x) {
  if (nin != l->nin)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: built for %d input%s, called with %d", lunet_layer_name(l),
                       l->nin, l->nin == 1 ? "" : "s", nin);
  for (int i = 0; i < nin; i++) {
    bool ok = x[i]->ndim == l->in[i].ndim + 1 && x[i]->shape[0] == x[0]->shape[0];
    for (int d = 1; ok && d < l->in[i].ndim; d++) ok = x[i]->shape[d + 1] == l->in[i].dims[d];
    if (!ok) {
      char a[128], b[128];
      return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: input %d of shape %s does not fit %s step by step", lunet_layer_name(l),
                         i + 1, lunet_shape_str(x[i]->ndim, x[i]->shape, b, sizeof b),
                         lunet_batch_shape_str(l->in[i].ndim, l->in[i].dims, a, sizeof a));
    }
  }
  return LUNET_OK;
}

lunet_status lunet_layer_step(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int64_t offset, int nin,
                              lunet_tensor *const *x, lunet_tensor **y) {
  return lunet_layer_step_masked(ctx, l, keep, offset, nin, x, NULL, y, NULL);
}

lunet_status lunet_layer_step_masked(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int64_t offset, int nin,
                                     lunet_tensor *const *x, lunet_tensor *const *masks, lunet_tensor **y,
                                     lunet_tensor **mask_out) {
  int nout = lunet_layer_output_count(l);
  for (int j = 0; j < nout; j++) y[j] = NULL;
  for (int j = 0; mask_out && j < nout; j++) mask_out[j] = NULL;
  if (!keep || keep->layer != l)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: a step needs the layer's own kept call record", lunet_layer_name(l));
  if (!l->built) return lunet_error(ctx, LUNET_ERR_ARG, "%s: build the layer before running it step by step", lunet_layer_name(l));
  if (!(l->type->flags & LUNET_LAYER_STEPWISE))
    return lunet_error(ctx, LUNET_ERR_ARG, "%s (%s) cannot run step by step", lunet_layer_name(l), l->type->name);
  if (offset < 0) return lunet_error(ctx, LUNET_ERR_ARG, "%s: a negative step offset", lunet_layer_name(l));
  if (check_input_count(ctx, l, nin) || step_inputs_fit(ctx, l, nin, x)) return ctx->status;
  lunet_call *c = keep;
  c->ctx = ctx;
  c->step_offset = offset;
  c->nin = nin;
  c->nout = nout;
  c->batch = x[0]->shape[0];
  c->recording = false;
  for (int i = 0; i < LUNET_LAYER_MAX_INPUTS; i++) {
    lunet_tensor_release(c->mask[i]);
    c->mask[i] = masks && i < nin && masks[i] ? lunet_tensor_retain(masks[i]) : NULL;
  }
  if (!enter(ctx, l)) return ctx->status;
  bool prev = lunet_set_grad_enabled(ctx, false);
  uint64_t t0 = lunet_prof_now(ctx);
  lunet_precision prec = lunet_set_precision(ctx, l->precision);
  lunet_status s = l->type->forward(l, c, nin, x, y, false);
  lunet_set_precision(ctx, prec);
  leave(l);
  for (int j = 0; !s && j < nout; j++)
    if (!y[j] || y[j]->ndim != l->out[j].ndim + 1 || y[j]->shape[0] != c->batch)
      s = plugin_bug(ctx, l, LUNET_ERR_SHAPE, "a step returned output %d of the wrong rank or batch", j + 1);
    else if (y[j]->dtype != LUNET_F32)
      s = plugin_bug(ctx, l, LUNET_ERR_ARG, "a step returned output %d as %s, but layers return float32", j + 1,
                     lunet_dtype_name(y[j]->dtype));
  if (!s) s = fresh_outputs(ctx, nin, x, nout, y, false);
  if (!s && nout == 1 && l->act != ACT_NONE) s = activate(ctx, l, y);
  if (t0) lunet_prof_layer(ctx, lunet_layer_name(l), "forward", t0);
  lunet_set_grad_enabled(ctx, prev);
  if (!s && mask_out) s = output_masks(ctx, l, c, nin, x, mask_out);
  if (s) release_all(y, nout);
  return s;
}

lunet_tensor *lunet_layer_call(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *x, bool training,
                               bool skip_activation) {
  lunet_tensor *y[LUNET_LAYER_MAX_OUTPUTS] = {0};
  if (lunet_layer_output_count(l) != 1) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s has %d outputs: call it with lunet_layer_apply",
                lunet_layer_name(l), lunet_layer_output_count(l));
    return NULL;
  }
  if (lunet_layer_apply(ctx, l, NULL, 1, &x, NULL, training, skip_activation, y, NULL)) return NULL;
  return y[0];
}

const char *lunet_weight_arg(const lunet_layer *l, int i, const char *suffix, char *buf, size_t n) {
  const char *w = lunet_layer_weight_name(l, i);
  size_t len = strlen(w);
  if (len > 7 && !strcmp(w + len - 7, "_kernel")) {
    snprintf(buf, n, "%.*s%s", (int)(len - 7), w, suffix);
    if (arg_index(l, buf) >= 0) return buf;
  }
  snprintf(buf, n, "%s%s", w, suffix);
  return buf;
}

/* total + t, taking both references (either may be NULL: the other). */
static lunet_tensor *sum_into(lunet_ctx *ctx, lunet_tensor *total, lunet_tensor *t) {
  if (!total || !t) return total ? total : t;
  lunet_tensor *sum = lunet_add(ctx, total, t);
  lunet_tensor_release(total);
  lunet_tensor_release(t);
  return sum;
}

/* l1 * sum|t| + l2 * sum(t^2) on the tape; NULL when both are 0 or on error
 * (ctx's status tells which). */
static lunet_tensor *l1l2(lunet_ctx *ctx, lunet_tensor *t, double l1, double l2) {
  lunet_tensor *total = NULL;
  for (int p = 0; p < 2; p++) {
    double coef = p ? l2 : l1;
    if (coef == 0) continue;
    lunet_tensor *f = lunet_unary(ctx, p ? LUNET_UNARY_SQUARE : LUNET_UNARY_ABS, t, 0, 0);
    lunet_tensor *s = f ? lunet_reduce(ctx, LUNET_REDUCE_SUM, f, LUNET_ALL_AXES, false) : NULL;
    lunet_tensor *term = s ? lunet_unary(ctx, LUNET_UNARY_AFFINE, s, (float)coef, 0) : NULL;
    lunet_tensor_release(f);
    lunet_tensor_release(s);
    if (!term || !(total = sum_into(ctx, total, term))) {
      lunet_tensor_release(total);
      return NULL;
    }
  }
  return total;
}

/* Every weight w with a "<w>_regularizer" argument set (kernel, bias, ...;
 * "X_kernel" also by "X_regularizer", Keras's depthwise_regularizer). */
lunet_tensor *lunet_layer_penalty(lunet_ctx *ctx, lunet_layer *l) {
  lunet_tensor *total = NULL;
  for (int i = 0; i < l->nweights; i++) {
    char arg[64];
    lunet_weight_arg(l, i, "_regularizer", arg, sizeof arg);
    const arg_value *r = get(l, arg);
    if (!r || (r->l1 == 0 && r->l2 == 0)) continue;
    lunet_tensor *p = l1l2(ctx, l->w[i].t, r->l1, r->l2);
    if (!p || !(total = sum_into(ctx, total, p))) {
      lunet_tensor_release(total);
      return NULL;
    }
  }
  return total;
}

lunet_tensor *lunet_layer_activity_penalty(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *y) {
  if (l->type->flags & LUNET_LAYER_ACTIVITY_L1L2) {
    const arg_value *a = get(l, "l1"), *b = get(l, "l2");
    return l1l2(ctx, y, a ? a->f : 0, b ? b->f : 0);
  }
  const arg_value *r = get(l, "activity_regularizer");
  return r ? l1l2(ctx, y, r->l1, r->l2) : NULL;
}
