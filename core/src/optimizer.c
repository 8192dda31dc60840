/* Optimizers: hyperparameters, per-parameter slots, clipping and the fused
 * update ops of the backends. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/model.h"

#define MAX_SLOTS 3

struct lunet_optimizer {
  int refcount;
  lunet_optimizer_config cfg;
  int64_t iterations;
  int nparams, cap;
  lunet_tensor *(*slots)[MAX_SLOTS];
};

lunet_optimizer_config lunet_optimizer_defaults(lunet_optimizer_kind kind) {
  lunet_optimizer_config c = {.kind = kind};
  switch (kind) {
  case LUNET_OPT_SGD:
    c.learning_rate = 0.01;
    break;
  case LUNET_OPT_ADAM:
    c.learning_rate = 0.001;
    c.beta_1 = 0.9;
    c.beta_2 = 0.999;
    c.epsilon = 1e-7;
    break;
  case LUNET_OPT_RMSPROP:
    c.learning_rate = 0.001;
    c.rho = 0.9;
    c.epsilon = 1e-7;
    break;
  case LUNET_OPT_ADAGRAD:
    c.learning_rate = 0.001;
    c.initial_accumulator_value = 0.1;
    c.epsilon = 1e-7;
    break;
  case LUNET_OPT_ADADELTA:
    c.learning_rate = 0.001;
    c.rho = 0.95;
    c.epsilon = 1e-7;
    break;
  case LUNET_OPT_ADAMAX:
  case LUNET_OPT_NADAM:
    c.learning_rate = 0.001;
    c.beta_1 = 0.9;
    c.beta_2 = 0.999;
    c.epsilon = 1e-7;
    break;
  case LUNET_OPT_LION:
    c.learning_rate = 0.001;
    c.beta_1 = 0.9;
    c.beta_2 = 0.99;
    break;
  default:
    break;
  }
  return c;
}

static const char *const kind_names[LUNET_OPT_COUNT] = {"sgd",      "adam",   "rmsprop", "adagrad",
                                                        "adadelta", "adamax", "nadam",   "lion"};

const char *lunet_optimizer_kind_name(lunet_optimizer_kind kind) {
  return (unsigned)kind < LUNET_OPT_COUNT ? kind_names[kind] : NULL;
}

int lunet_optimizer_kind_find(const char *name) {
  for (int k = 0; name && k < LUNET_OPT_COUNT; k++)
    if (!strcmp(kind_names[k], name)) return k;
  return -1;
}

static lunet_status check_config(lunet_ctx *ctx, const lunet_optimizer_config *c) {
  if ((unsigned)c->kind >= LUNET_OPT_COUNT)
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: unknown kind %d", (int)c->kind);
  if (!(c->epsilon >= 0) || !(c->weight_decay >= 0) || !(c->initial_accumulator_value >= 0))
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: epsilon, weight_decay and initial_accumulator_value must be >= 0");
  if (!(c->learning_rate >= 0) || !isfinite(c->learning_rate))
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: learning_rate must be >= 0, got %g",
                       c->learning_rate);
  if (c->clipvalue < 0 || c->clipnorm < 0 || c->global_clipnorm < 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: clipvalue, clipnorm and global_clipnorm must be >= 0 (0 is off)");
  if ((c->clipvalue > 0) + (c->clipnorm > 0) + (c->global_clipnorm > 0) > 1)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: only one of clipnorm, clipvalue and global_clipnorm can be set (as Keras's); "
                       "got clipnorm = %g, clipvalue = %g, global_clipnorm = %g",
                       c->clipnorm, c->clipvalue, c->global_clipnorm);
  if (c->momentum < 0 || c->momentum >= 1 || c->beta_1 < 0 || c->beta_1 >= 1 || c->beta_2 < 0 ||
      c->beta_2 >= 1 || c->rho < 0 || c->rho >= 1)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: momentum, beta_1, beta_2 and rho must be in [0, 1)");
  if (c->amsgrad && c->kind != LUNET_OPT_ADAM)
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: amsgrad is an argument of Adam and AdamW, not of %s",
                       lunet_optimizer_kind_name(c->kind));
  if (c->centered && c->kind != LUNET_OPT_RMSPROP)
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: centered is an argument of RMSprop, not of %s",
                       lunet_optimizer_kind_name(c->kind));
  return LUNET_OK;
}

lunet_optimizer *lunet_optimizer_new(lunet_ctx *ctx, const lunet_optimizer_config *cfg) {
  if (check_config(ctx, cfg)) return NULL;
  lunet_optimizer *o = calloc(1, sizeof *o);
  if (!o) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for an optimizer");
    return NULL;
  }
  o->refcount = 1;
  o->cfg = *cfg;
  return o;
}

lunet_optimizer *lunet_optimizer_retain(lunet_optimizer *o) {
  if (o) __atomic_add_fetch(&o->refcount, 1, __ATOMIC_RELAXED);
  return o;
}

void lunet_optimizer_release(lunet_optimizer *o) {
  if (!o || __atomic_sub_fetch(&o->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  for (int i = 0; i < o->nparams; i++)
    for (int k = 0; k < MAX_SLOTS; k++) lunet_tensor_release(o->slots[i][k]);
  free(o->slots);
  free(o);
}

const lunet_optimizer_config *lunet_optimizer_config_get(const lunet_optimizer *o) {
  return &o->cfg;
}

lunet_status lunet_optimizer_configure(lunet_ctx *ctx, lunet_optimizer *o,
                                       const lunet_optimizer_config *cfg) {
  if (cfg->kind != o->cfg.kind)
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: the kind of an optimizer cannot change");
  /* what decides the slots (amsgrad, centered, momentum on or off) stays once there are slots: a
   * slot would otherwise be read as another (the mean gradient as the momentum) */
  bool layout = cfg->amsgrad != o->cfg.amsgrad || cfg->centered != o->cfg.centered ||
                ((cfg->momentum > 0) != (o->cfg.momentum > 0) && cfg->kind != LUNET_OPT_ADAM);
  bool has_slots = false; /* (looked for only when the layout would change: set_lr calls this every step) */
  for (int i = 0; layout && i < o->nparams && !has_slots; i++)
    for (int k = 0; k < MAX_SLOTS; k++) has_slots |= o->slots[i][k] != NULL;
  if (layout && has_slots)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: amsgrad, centered and whether momentum is on cannot change once the optimizer has "
                       "state; make a new optimizer (and compile again)");
  lunet_status s = check_config(ctx, cfg);
  if (!s) o->cfg = *cfg;
  return s;
}

int64_t lunet_optimizer_iterations(const lunet_optimizer *o) { return o->iterations; }

void lunet_optimizer_reset(lunet_optimizer *o) {
  for (int i = 0; i < o->nparams; i++)
    for (int k = 0; k < MAX_SLOTS; k++) {
      lunet_tensor_release(o->slots[i][k]);
      o->slots[i][k] = NULL;
    }
  o->iterations = 0;
}
void lunet_optimizer_set_iterations(lunet_optimizer *o, int64_t n) { o->iterations = n; }

int lunet_optimizer_slot_count(const lunet_optimizer *o) {
  switch (o->cfg.kind) {
  case LUNET_OPT_SGD:
    return o->cfg.momentum > 0 ? 1 : 0;
  case LUNET_OPT_ADAM: /* m, v and, with amsgrad, the largest v */
    return o->cfg.amsgrad ? 3 : 2;
  case LUNET_OPT_RMSPROP: /* velocity, the momentum, the mean gradient when centered */
    return 1 + (o->cfg.momentum > 0) + o->cfg.centered;
  case LUNET_OPT_ADAGRAD:
  case LUNET_OPT_LION:
    return 1;
  case LUNET_OPT_ADADELTA:
  case LUNET_OPT_ADAMAX:
  case LUNET_OPT_NADAM:
    return 2;
  default:
    return 0;
  }
}

static lunet_status grow(lunet_ctx *ctx, lunet_optimizer *o, int n) {
  if (n <= o->cap) {
    if (n > o->nparams) o->nparams = n;
    return LUNET_OK;
  }
  int cap = n > 2 * o->cap ? n : 2 * o->cap;
  void *p = realloc(o->slots, sizeof *o->slots * (size_t)cap);
  if (!p) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for optimizer slots");
  o->slots = p;
  memset(o->slots + o->cap, 0, sizeof *o->slots * (size_t)(cap - o->cap));
  o->cap = cap;
  o->nparams = n;
  return LUNET_OK;
}

lunet_tensor *lunet_optimizer_slot(const lunet_optimizer *o, int i, int k) {
  return i >= 0 && i < o->nparams && k >= 0 && k < MAX_SLOTS ? o->slots[i][k] : NULL;
}

lunet_status lunet_optimizer_set_slot(lunet_ctx *ctx, lunet_optimizer *o, int i, int k,
                                      lunet_tensor *t) {
  if (i < 0 || k < 0 || k >= lunet_optimizer_slot_count(o))
    return lunet_error(ctx, LUNET_ERR_ARG, "optimizer: no slot %d of parameter %d (%d slots each)",
                       k, i, lunet_optimizer_slot_count(o));
  if (grow(ctx, o, i + 1)) return ctx->status;
  lunet_tensor *d = lunet_detach(ctx, t);
  if (!d) return ctx->status;
  lunet_tensor_release(o->slots[i][k]);
  o->slots[i][k] = d;
  return LUNET_OK;
}

lunet_status lunet_optimizer_to(lunet_ctx *ctx, lunet_optimizer *o, const char *backend) {
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < o->nparams; i++)
    for (int k = 0; !s && k < MAX_SLOTS; k++) {
      if (!o->slots[i][k]) continue;
      lunet_tensor *moved = lunet_tensor_to(ctx, o->slots[i][k], backend);
      if (!moved) {
        s = ctx->status;
        break;
      }
      lunet_tensor_release(o->slots[i][k]);
      o->slots[i][k] = moved;
    }
  lunet_set_grad_enabled(ctx, prev);
  return s;
}

/* A slot of p's shape on p's backend, zeroed, or the one already there
 * (checked against p, since a checkpoint may have set it). */
static lunet_tensor *slot_for(lunet_ctx *ctx, lunet_optimizer *o, int i, int k, lunet_tensor *p) {
  lunet_tensor *t = o->slots[i][k];
  if (t) {
    if (lunet_shape_equal(t, p) && t->buf->be == p->buf->be) return t;
    if (!lunet_shape_equal(t, p)) {
      char a[128], b[128];
      lunet_error(ctx, LUNET_ERR_SHAPE,
                  "optimizer: the state of parameter %d has shape %s, the parameter %s (does the "
                  "optimizer belong to another model?)",
                  i + 1, lunet_shape_str(t->ndim, t->shape, a, sizeof a),
                  lunet_shape_str(p->ndim, p->shape, b, sizeof b));
      return NULL;
    }
    lunet_tensor *moved = lunet_tensor_to(ctx, t, p->buf->be->name);
    if (!moved) return NULL;
    lunet_tensor_release(t);
    return o->slots[i][k] = moved;
  }
  t = lunet_op_new(ctx, p, LUNET_F32, p->ndim, p->shape);
  float init = o->cfg.kind == LUNET_OPT_ADAGRAD && k == 0 ? (float)o->cfg.initial_accumulator_value : 0.0f;
  if (t && lunet_op_fill(ctx, t, init)) {
    lunet_tensor_release(t);
    t = NULL;
  }
  return o->slots[i][k] = t;
}

/* Replaces *g by y (NULL: the op failed). */
static lunet_status replace(lunet_ctx *ctx, lunet_tensor **g, lunet_tensor *y) {
  if (!y) return ctx->status;
  lunet_tensor_release(*g);
  *g = y;
  return LUNET_OK;
}

/* *g * scale, scale a scalar tensor moved to g's backend when needed. */
static lunet_status scale_by(lunet_ctx *ctx, lunet_tensor **g, lunet_tensor *scale) {
  lunet_tensor *sc = scale->buf->be == (*g)->buf->be ? lunet_tensor_retain(scale)
                                                     : lunet_tensor_to(ctx, scale, (*g)->buf->be->name);
  lunet_status s = sc ? replace(ctx, g, lunet_op_binary(ctx, LUNET_BINARY_MUL, *g, sc)) : ctx->status;
  lunet_tensor_release(sc);
  return s;
}

/* sum(g^2) as a scalar tensor on g's backend. */
static lunet_tensor *sum_squares(lunet_ctx *ctx, lunet_tensor *g) {
  lunet_tensor *sq = lunet_op_unary(ctx, LUNET_UNARY_SQUARE, g, 0, 0);
  lunet_tensor *s = sq ? lunet_op_reduce(ctx, LUNET_REDUCE_SUM, sq, LUNET_ALL_AXES, false) : NULL;
  lunet_tensor_release(sq);
  return s;
}

/* min(1, limit / sqrt(sumsq)) on the device: no value leaves it. */
static lunet_tensor *clip_scale(lunet_ctx *ctx, lunet_tensor *sumsq, double limit) {
  lunet_tensor *norm = lunet_op_unary(ctx, LUNET_UNARY_SQRT, sumsq, 0, 0);
  lunet_tensor *lim = norm ? lunet_scalar_like(ctx, norm, (float)limit) : NULL;
  lunet_tensor *den = lim ? lunet_op_binary(ctx, LUNET_BINARY_MAX, norm, lim) : NULL;
  lunet_tensor *scale = den ? lunet_op_binary(ctx, LUNET_BINARY_DIV, lim, den) : NULL;
  lunet_tensor_release(norm);
  lunet_tensor_release(lim);
  lunet_tensor_release(den);
  return scale;
}

static lunet_status scale_to_norm(lunet_ctx *ctx, lunet_tensor **g, lunet_tensor *sumsq,
                                  double limit) {
  lunet_tensor *scale = sumsq ? clip_scale(ctx, sumsq, limit) : NULL;
  lunet_status s = scale ? scale_by(ctx, g, scale) : ctx->status;
  lunet_tensor_release(scale);
  return s;
}

static bool clips(const lunet_optimizer_config *c) {
  return c->clipvalue > 0 || c->clipnorm > 0 || c->global_clipnorm > 0;
}

/* g[i] clipped by the one clipping option set (configure refuses more, as
 * Keras does).  g holds references of the caller's that are replaced by
 * clipped ones. */
static lunet_status clip(lunet_ctx *ctx, const lunet_optimizer_config *c, int n,
                         lunet_tensor **g) {
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < n; i++) {
    if (!g[i]) continue;
    if (c->clipvalue > 0)
      s = replace(ctx, &g[i],
                  lunet_op_unary(ctx, LUNET_UNARY_CLIP, g[i], -(float)c->clipvalue,
                                 (float)c->clipvalue));
    if (!s && c->clipnorm > 0) {
      lunet_tensor *ss = sum_squares(ctx, g[i]);
      s = scale_to_norm(ctx, &g[i], ss, c->clipnorm);
      lunet_tensor_release(ss);
    }
  }
  if (s || c->global_clipnorm <= 0) return s;
  lunet_tensor *total = NULL;
  for (int i = 0; !s && i < n; i++) {
    if (!g[i]) continue;
    lunet_tensor *ss = sum_squares(ctx, g[i]);
    if (ss && total && total->buf->be != ss->buf->be) s = replace(ctx, &ss, lunet_tensor_to(ctx, ss, total->buf->be->name));
    if (!ss) s = ctx->status;
    else if (!s && total) s = replace(ctx, &total, lunet_op_binary(ctx, LUNET_BINARY_ADD, total, ss));
    else if (!s) total = lunet_tensor_retain(ss);
    lunet_tensor_release(ss);
  }
  if (total && !s) {
    lunet_tensor *scale = clip_scale(ctx, total, c->global_clipnorm);
    if (!scale) s = ctx->status;
    for (int i = 0; !s && i < n; i++)
      if (g[i]) s = scale_by(ctx, &g[i], scale);
    lunet_tensor_release(scale);
  }
  lunet_tensor_release(total);
  return s;
}

/* An optimizer the backends have no kernel for, on one weight: the core's ops. */
static lunet_status update_one(lunet_ctx *ctx, lunet_optimizer *o, int i, lunet_tensor *p,
                               lunet_tensor *g, int64_t step) {
  int nslots = lunet_optimizer_slot_count(o);
  lunet_tensor *slots[MAX_SLOTS] = {0};
  for (int k = 0; k < nslots; k++)
    if (!(slots[k] = slot_for(ctx, o, i, k, p))) return ctx->status;
  return lunet_optimizer_update_by_ops(ctx, &o->cfg, p, g, slots, step);
}

/* The backend's fused update for a configuration, -1 for one run by the
 * core's ops (amsgrad, centered and RMSprop's weight decay have no kernel). */
static int fused_kind(const lunet_optimizer_config *c) {
  if (c->amsgrad || c->centered || (c->kind == LUNET_OPT_RMSPROP && c->weight_decay > 0)) return -1;
  return c->kind == LUNET_OPT_SGD ? LUNET_UPDATE_SGD : c->kind == LUNET_OPT_ADAM ? LUNET_UPDATE_ADAM
       : c->kind == LUNET_OPT_RMSPROP ? LUNET_UPDATE_RMSPROP : -1;
}

/* Every parameter with a gradient in one lunet_op_update_multi (one
 * dispatch for many tensors on a device), the same bits as update_one. */
static lunet_status update_fused(lunet_ctx *ctx, lunet_optimizer *o, int n, lunet_tensor *const *params,
                                 lunet_tensor *const *g, int64_t step) {
  const lunet_optimizer_config *c = &o->cfg;
  lunet_update_desc u = {.kind = (lunet_update_kind)fused_kind(c), .lr = (float)c->learning_rate,
                         .beta1 = (float)c->beta_1, .beta2 = (float)c->beta_2, .rho = (float)c->rho,
                         .momentum = (float)c->momentum, .epsilon = (float)c->epsilon,
                         .weight_decay = (float)c->weight_decay, .nesterov = c->nesterov, .step = step};
  int nslots = lunet_optimizer_slot_count(o), count = 0;
  enum { ON_STACK = 64 }; /* a model's usual count: no allocation a step */
  lunet_tensor *stack[4 * ON_STACK] = {0};
  lunet_tensor **t = n > ON_STACK ? calloc((size_t)n * 4, sizeof *t) : stack;
  if (!t) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory updating %d weights", n);
  lunet_tensor **p = t, **gs = t + n, **s1 = t + 2 * n, **s2 = t + 3 * n;
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < n; i++) {
    if (!g[i]) continue;
    p[count] = params[i], gs[count] = g[i];
    if (nslots > 0 && !(s1[count] = slot_for(ctx, o, i, 0, params[i]))) s = ctx->status;
    if (!s && nslots > 1 && !(s2[count] = slot_for(ctx, o, i, 1, params[i]))) s = ctx->status;
    count++;
  }
  if (!s) s = lunet_op_update_multi(ctx, &u, count, p, (const lunet_tensor *const *)gs, s1, s2);
  if (t != stack) free(t);
  return s;
}

lunet_status lunet_optimizer_apply(lunet_ctx *ctx, lunet_optimizer *o, int n,
                                   lunet_tensor *const *params, lunet_tensor *const *grads) {
  if (grow(ctx, o, n)) return ctx->status;
  /* as Keras: a step with no gradient at all is an error, not an update
   * (it would count for the bias corrections and the schedule) */
  bool any = false;
  for (int i = 0; i < n && !any; i++) any = grads[i] != NULL;
  if (n > 0 && !any)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "optimizer: no gradients provided for any of the %d parameters (run backward on a loss that "
                       "depends on them first)",
                       n);
  lunet_tensor **g = (lunet_tensor **)grads;
  lunet_status s = LUNET_OK;
  bool prev = lunet_set_grad_enabled(ctx, false);
  if (clips(&o->cfg)) { /* clipped copies; the caller's gradients stay as they are */
    if (!(g = calloc((size_t)(n ? n : 1), sizeof *g)))
      s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory clipping gradients");
    for (int i = 0; !s && i < n; i++) g[i] = lunet_tensor_retain(grads[i]);
    if (!s) s = clip(ctx, &o->cfg, n, g);
  }
  int64_t step = o->iterations + 1;
  if (!s && fused_kind(&o->cfg) >= 0) s = update_fused(ctx, o, n, params, g, step);
  else
    for (int i = 0; !s && i < n; i++)
      if (g[i]) s = update_one(ctx, o, i, params[i], g[i], step);
  if (g != (lunet_tensor **)grads && g) {
    for (int i = 0; i < n; i++) lunet_tensor_release(g[i]);
    free(g);
  }
  lunet_set_grad_enabled(ctx, prev);
  if (!s) o->iterations = step;
  return s;
}
