/* Layer instances: arguments, weights, and one tape node per call. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/layer.h"

#define MAX_WEIGHTS 16

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
typedef enum act_kind { ACT_NONE, ACT_UNARY, ACT_SOFTMAX } act_kind;

struct lunet_layer {
  int refcount;
  lunet_ctx *ctx;
  const lunet_layer_type *type;
  arg_value *args;
  void *state; /* the running call's state (each call gets its own block) */
  weight w[MAX_WEIGHTS];
  int nweights;
  lunet_tensor *pending[MAX_WEIGHTS]; /* weight grads of the running backward */
  bool built;
  int in_ndim, out_ndim;
  int64_t in[LUNET_MAX_DIMS], out[LUNET_MAX_DIMS];
  act_kind act;
  lunet_unary_op act_op;
  float act_alpha;
  const char *act_name;
};

static int arg_index(const lunet_layer *l, const char *name) {
  for (int i = 0; i < l->type->nargs; i++)
    if (strcmp(l->type->args[i].name, name) == 0) return i;
  return -1;
}

lunet_layer *lunet_layer_new(lunet_ctx *ctx, const lunet_layer_type *t) {
  lunet_layer *l = calloc(1, sizeof *l);
  if (l) l->args = calloc((size_t)(t->nargs ? t->nargs : 1), sizeof *l->args);
  if (l && t->state_size) l->state = calloc(1, t->state_size);
  if (!l || !l->args || (t->state_size && !l->state)) {
    if (l) {
      free(l->args);
      free(l);
    }
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a %s layer", t->name);
    return NULL;
  }
  l->refcount = 1;
  l->ctx = ctx;
  l->type = t;
  return l;
}

lunet_layer *lunet_layer_retain(lunet_layer *l) {
  if (l) l->refcount++;
  return l;
}

void lunet_layer_release(lunet_layer *l) {
  if (!l || --l->refcount > 0) return;
  if (l->type->destroy) l->type->destroy(l);
  for (int i = 0; i < l->nweights; i++) lunet_tensor_release(l->w[i].t);
  for (int i = 0; i < l->type->nargs; i++) free(l->args[i].s);
  free(l->args);
  free(l->state);
  free(l);
}

const lunet_layer_type *lunet_layer_type_get(const lunet_layer *l) { return l->type; }
lunet_ctx *lunet_layer_ctx(lunet_layer *l) { return l->ctx; }
void *lunet_layer_state(lunet_layer *l) { return l->state; }
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

/* ---- arguments ---- */

static arg_value *slot(lunet_layer *l, const char *arg, lunet_status *s) {
  int i = arg_index(l, arg);
  if (i < 0) {
    *s = lunet_error(l->ctx, LUNET_ERR_ARG, "%s has no argument '%s'", l->type->name, arg);
    return NULL;
  }
  *s = LUNET_OK;
  arg_value *v = &l->args[i];
  free(v->s);
  memset(v, 0, sizeof *v);
  v->set = true;
  return v;
}

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
  lunet_status s;
  arg_value *v = slot(l, arg, &s);
  if (v) v->f = x;
  return s;
}

lunet_status lunet_layer_set_bool(lunet_layer *l, const char *arg, bool x) {
  lunet_status s;
  arg_value *v = slot(l, arg, &s);
  if (v) v->b = x;
  return s;
}

lunet_status lunet_layer_set_string(lunet_layer *l, const char *arg, const char *x) {
  lunet_status s;
  arg_value *v = slot(l, arg, &s);
  if (v && !(v->s = strdup(x))) return lunet_error(l->ctx, LUNET_ERR_NOMEM, "out of memory");
  return s;
}

lunet_status lunet_layer_set_ints(lunet_layer *l, const char *arg, int n, const int64_t *x) {
  lunet_status s;
  if (n > LUNET_MAX_DIMS)
    return lunet_error(l->ctx, LUNET_ERR_ARG, "%s: %s has more than %d values", l->type->name, arg,
                       LUNET_MAX_DIMS);
  arg_value *v = slot(l, arg, &s);
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

int lunet_layer_get_shape(const lunet_layer *l, const char *arg, int64_t *out, int max) {
  const arg_value *v = get(l, arg);
  if (!v) return 0;
  for (int i = 0; i < v->n && i < max; i++) out[i] = v->ints[i];
  return v->n;
}

/* ---- weights ---- */

static float normal(uint64_t seed, uint64_t c) {
  float u1 = lunet_philox_uniform(seed, 2 * c), u2 = lunet_philox_uniform(seed, 2 * c + 1);
  return sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.28318530718f * u2);
}

/* Keras's truncated normal: redraw beyond two standard deviations. */
static float truncated_normal(uint64_t seed, uint64_t *c) {
  for (;;) {
    float z = normal(seed, (*c)++);
    if (fabsf(z) <= 2.0f) return z;
  }
}

static lunet_status init_values(lunet_layer *l, const char *init, float *v, int ndim,
                                const int64_t *shape, int64_t n) {
  int64_t rec = 1;
  for (int i = 0; i + 2 < ndim; i++) rec *= shape[i];
  double fan_in = ndim >= 2 ? (double)(shape[ndim - 2] * rec) : (double)(ndim ? shape[0] : 1);
  double fan_out = ndim >= 2 ? (double)(shape[ndim - 1] * rec) : fan_in;
  uint64_t seed = l->ctx->seed, c = lunet_rng_take(l->ctx, (uint64_t)n * 4);
  if (!strcmp(init, "zeros") || !strcmp(init, "ones")) {
    for (int64_t i = 0; i < n; i++) v[i] = init[0] == 'o' ? 1.0f : 0.0f;
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
    for (int64_t i = 0; i < n; i++) v[i] = sd * truncated_normal(seed, &c);
  } else {
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "unknown initializer '%s' (valid: glorot_uniform, glorot_normal, "
                             "he_uniform, he_normal, lecun_uniform, lecun_normal, zeros, ones)",
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
  lunet_tensor *t = lunet_tensor_new(l->ctx, LUNET_F32, ndim, shape);
  if (!t) return -1;
  float *v = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
  lunet_status s = v ? init_values(l, init, v, ndim, shape, t->numel)
                     : lunet_error(l->ctx, LUNET_ERR_NOMEM, "out of host memory");
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
    moved[i]->requires_grad = l->w[i].trainable;
    lunet_tensor_release(l->w[i].t);
    l->w[i].t = moved[i];
  }
  return LUNET_OK;
}

lunet_tensor *lunet_layer_weight(lunet_layer *l, int i) {
  return i >= 0 && i < l->nweights ? l->w[i].t : NULL;
}
int lunet_layer_weight_count(const lunet_layer *l) { return l->nweights; }
const char *lunet_layer_weight_name(const lunet_layer *l, int i) { return l->w[i].name; }
bool lunet_layer_weight_trainable(const lunet_layer *l, int i) { return l->w[i].trainable; }

lunet_status lunet_layer_accumulate_grad(lunet_layer *l, int i, lunet_tensor *g) {
  if (i < 0 || i >= l->nweights)
    return lunet_layer_error(l, LUNET_ERR_ARG, "gradient for weight %d of %d", i, l->nweights);
  if (!l->pending[i]) {
    l->pending[i] = lunet_tensor_retain(g);
    return LUNET_OK;
  }
  return lunet_op_accumulate(l->ctx, l->pending[i], g);
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

static lunet_status parse_activation(lunet_layer *l) {
  static const struct {
    const char *name;
    act_kind kind;
    lunet_unary_op op;
    float alpha;
  } acts[] = {{"linear", ACT_NONE, 0, 0},
              {"relu", ACT_UNARY, LUNET_UNARY_RELU, 0},
              {"sigmoid", ACT_UNARY, LUNET_UNARY_SIGMOID, 0},
              {"tanh", ACT_UNARY, LUNET_UNARY_TANH, 0},
              {"gelu", ACT_UNARY, LUNET_UNARY_GELU, 0},
              {"leaky_relu", ACT_UNARY, LUNET_UNARY_LEAKY_RELU, 0.2f},
              {"softmax", ACT_SOFTMAX, 0, 0}};
  l->act = ACT_NONE;
  l->act_name = NULL;
  /* The Activation layer applies its own argument itself. */
  if (!strcmp(l->type->name, "Activation")) return LUNET_OK;
  const char *a = lunet_layer_get_string(l, "activation");
  if (!a) return LUNET_OK;
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
    if (!strcmp(a, acts[i].name)) {
      l->act = acts[i].kind;
      l->act_op = acts[i].op;
      l->act_alpha = acts[i].alpha;
      l->act_name = acts[i].kind == ACT_NONE ? NULL : acts[i].name;
      return LUNET_OK;
    }
  return lunet_layer_error(l, LUNET_ERR_ARG,
                           "unknown activation '%s' (valid: linear, relu, "
                           "sigmoid, tanh, gelu, leaky_relu, softmax)",
                           a);
}

lunet_status lunet_layer_build(lunet_layer *l, int in_ndim, const int64_t *in) {
  if (l->built) {
    bool same = in_ndim == l->in_ndim;
    for (int i = 0; same && i < in_ndim; i++) same = in[i] == l->in[i];
    if (same) return LUNET_OK;
    char a[128], b[128];
    return lunet_layer_error(l, LUNET_ERR_SHAPE, "built for input %s but got %s",
                             lunet_batch_shape_str(l->in_ndim, l->in, a, sizeof a),
                             lunet_batch_shape_str(in_ndim, in, b, sizeof b));
  }
  if (parse_activation(l)) return l->ctx->status;
  lunet_status s = l->type->build(l, in_ndim, in, &l->out_ndim, l->out);
  if (s) {
    for (int i = 0; i < l->nweights; i++) lunet_tensor_release(l->w[i].t);
    l->nweights = 0;
    return s;
  }
  l->in_ndim = in_ndim;
  memcpy(l->in, in, sizeof(int64_t) * (size_t)in_ndim);
  l->built = true;
  return LUNET_OK;
}

bool lunet_layer_built(const lunet_layer *l) { return l->built; }

int lunet_layer_output_shape(const lunet_layer *l, int64_t *out) {
  memcpy(out, l->out, sizeof(int64_t) * (size_t)l->out_ndim);
  return l->out_ndim;
}

int lunet_layer_input_shape(const lunet_layer *l, int64_t *in) {
  memcpy(in, l->in, sizeof(int64_t) * (size_t)l->in_ndim);
  return l->in_ndim;
}

const char *lunet_layer_activation(const lunet_layer *l) { return l->act_name; }

static void release_pending(lunet_layer *l) {
  for (int i = 0; i < l->nweights; i++) {
    lunet_tensor_release(l->pending[i]);
    l->pending[i] = NULL;
  }
}

/* Node inputs: x, then the trainable weights in order; n->extra is the
 * call's own state block, so calling a layer again before backward (a
 * shared layer, d(d(x))) keeps each call's saved tensors apart. */
static lunet_status layer_backward(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy,
                                   lunet_tensor **dx) {
  lunet_layer *l = n->data;
  if (n->iparams[0])
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "backward through the same call a second time: the "
                             "layer released what it saved after the first backward (run the "
                             "forward pass again)");
  lunet_tensor *x = n->inputs[0];
  bool need_dx = x->requires_grad || x->grad_fn;
  lunet_tensor *g = NULL;
  void *prev = l->state;
  l->state = n->extra;
  release_pending(l);
  lunet_status s = l->type->backward(l, dy, &g, need_dx);
  l->state = prev;
  if (s == LUNET_OK) {
    n->iparams[0] = 1;
    dx[0] = g;
    for (int i = 0, k = 1; i < l->nweights; i++)
      if (l->w[i].trainable) {
        dx[k++] = l->pending[i];
        l->pending[i] = NULL;
      }
  } else {
    lunet_tensor_release(g);
  }
  release_pending(l);
  return s;
}

/* Frees one call's state block: the plugin releases what it holds. */
static void drop_state(lunet_layer *l, void *state) {
  if (!state) return;
  void *prev = l->state;
  l->state = state;
  if (l->type->destroy) l->type->destroy(l);
  l->state = prev;
  free(state);
}

static void layer_node_release(lunet_node *n) {
  lunet_layer *l = n->data;
  drop_state(l, n->extra);
  lunet_layer_release(l);
}

static bool input_fits(lunet_layer *l, const lunet_tensor *x) {
  bool ok = x->ndim == l->in_ndim + 1;
  for (int i = 0; ok && i < l->in_ndim; i++) ok = x->shape[i + 1] == l->in[i];
  if (!ok) {
    char a[128], b[128];
    lunet_layer_error(l, LUNET_ERR_SHAPE, "expected input of shape %s, got %s",
                      lunet_batch_shape_str(l->in_ndim, l->in, a, sizeof a),
                      lunet_shape_str(x->ndim, x->shape, b, sizeof b));
  }
  return ok;
}

lunet_tensor *lunet_layer_call(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *x, bool training,
                               bool skip_activation) {
  l->ctx = ctx;
  if (!l->built && x->ndim >= 1 && lunet_layer_build(l, x->ndim - 1, x->shape + 1)) return NULL;
  if (!input_fits(l, x)) return NULL;
  lunet_tensor *inputs[LUNET_NODE_MAX_INPUTS] = {x};
  int ninputs = 1;
  for (int i = 0; i < l->nweights && ninputs < LUNET_NODE_MAX_INPUTS; i++)
    if (l->w[i].trainable) inputs[ninputs++] = l->w[i].t;
  bool grad = lunet_needs_grad(ctx, ninputs, inputs);
  void *state = l->type->state_size ? calloc(1, l->type->state_size) : NULL;
  if (l->type->state_size && !state) {
    lunet_layer_error(l, LUNET_ERR_NOMEM, "out of host memory for the layer's state");
    return NULL;
  }
  void *prev_state = l->state;
  l->state = state;
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *y = NULL;
  lunet_status s = l->type->forward(l, x, &y, training);
  lunet_set_grad_enabled(ctx, prev);
  l->state = prev_state;
  if (s != LUNET_OK || !y) {
    lunet_tensor_release(y);
    drop_state(l, state);
    if (ctx->status == LUNET_OK) lunet_layer_error(l, LUNET_ERR_ARG, "forward produced no output");
    return NULL;
  }
  lunet_node *n = grad ? lunet_node_new(ctx, l->type->name, ninputs, inputs) : NULL;
  if (!n) { /* inference, or no memory to record: nothing will need the state */
    drop_state(l, state);
    if (grad) {
      lunet_tensor_release(y);
      return NULL;
    }
  } else {
    n->data = lunet_layer_retain(l);
    n->extra = state;
    n->backward = layer_backward;
    n->release = layer_node_release;
    y->grad_fn = n;
  }
  if (skip_activation || l->act == ACT_NONE) return y;
  lunet_tensor *a = l->act == ACT_SOFTMAX ? lunet_softmax(ctx, y, false)
                                          : lunet_unary(ctx, l->act_op, y, l->act_alpha, 0);
  lunet_tensor_release(y);
  return a;
}

lunet_tensor *lunet_layer_penalty(lunet_ctx *ctx, lunet_layer *l) {
  const arg_value *r = get(l, "kernel_regularizer");
  int k = -1;
  for (int i = 0; i < l->nweights; i++)
    if (!strcmp(l->w[i].name, "kernel")) k = i;
  if (!r || k < 0 || (r->l1 == 0 && r->l2 == 0)) return NULL;
  lunet_tensor *w = l->w[k].t, *total = NULL;
  for (int p = 0; p < 2; p++) {
    double coef = p ? r->l2 : r->l1;
    if (coef == 0) continue;
    lunet_tensor *f = lunet_unary(ctx, p ? LUNET_UNARY_SQUARE : LUNET_UNARY_ABS, w, 0, 0);
    lunet_tensor *s = f ? lunet_reduce(ctx, LUNET_REDUCE_SUM, f, LUNET_ALL_AXES, false) : NULL;
    lunet_tensor *t = s ? lunet_unary(ctx, LUNET_UNARY_AFFINE, s, (float)coef, 0) : NULL;
    lunet_tensor_release(f);
    lunet_tensor_release(s);
    if (!t) {
      lunet_tensor_release(total);
      return NULL;
    }
    if (total) {
      lunet_tensor *sum = lunet_add(ctx, total, t);
      lunet_tensor_release(total);
      lunet_tensor_release(t);
      total = sum;
      if (!total) return NULL;
    } else {
      total = t;
    }
  }
  return total;
}
