/*
 * Models and optimizers for lunet's Lua side: thin wrappers over the core's
 * model API (lunet/model.h).  A training step is one C call, so fit creates
 * no Lua objects per step beyond the batch.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"
#include "lunet/model.h"

#define MODEL_MT "lunet.Model"
#define OPT_MT "lunet.Optimizer"
#define SESSION_MT "lunet.Session"
#define MAX_IO 16

static lunet_model *check_model(lua_State *L, int arg) {
  lunet_model **p = luaL_checkudata(L, arg, MODEL_MT);
  if (!*p) luaL_argerror(L, arg, "model was freed");
  return *p;
}

static lunet_optimizer *check_opt(lua_State *L, int arg) {
  lunet_optimizer **p = luaL_checkudata(L, arg, OPT_MT);
  if (!*p) luaL_argerror(L, arg, "optimizer was freed");
  return *p;
}

static int model_gc(lua_State *L) {
  lunet_model **p = luaL_checkudata(L, 1, MODEL_MT);
  lunet_model_release(*p);
  *p = NULL;
  return 0;
}

static int opt_gc(lua_State *L) {
  lunet_optimizer **p = luaL_checkudata(L, 1, OPT_MT);
  lunet_optimizer_release(*p);
  *p = NULL;
  return 0;
}

/* ---- optimizers ---- */

static double field(lua_State *L, int idx, const char *k, double def) {
  lua_getfield(L, idx, k);
  double v = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : luaL_optnumber(L, -1, def);
  lua_pop(L, 1);
  return v;
}

/* The configuration in the table at idx: kind and Keras's argument names. */
static lunet_optimizer_config read_config(lua_State *L, int idx) {
  lua_getfield(L, idx, "kind");
  int kind = lunet_optimizer_kind_find(lua_tostring(L, -1));
  if (kind < 0) luaL_error(L, "unknown optimizer kind '%s'", luaL_optstring(L, -1, "nil"));
  lunet_optimizer_config c = lunet_optimizer_defaults((lunet_optimizer_kind)kind);
  lua_pop(L, 1);
  c.learning_rate = field(L, idx, "learning_rate", c.learning_rate);
  c.momentum = field(L, idx, "momentum", c.momentum);
  c.nesterov = field(L, idx, "nesterov", 0) != 0;
  c.amsgrad = field(L, idx, "amsgrad", 0) != 0;
  c.centered = field(L, idx, "centered", 0) != 0;
  c.beta_1 = field(L, idx, "beta_1", c.beta_1);
  c.beta_2 = field(L, idx, "beta_2", c.beta_2);
  c.rho = field(L, idx, "rho", c.rho);
  c.epsilon = field(L, idx, "epsilon", c.epsilon);
  c.weight_decay = field(L, idx, "weight_decay", c.weight_decay);
  c.clipvalue = field(L, idx, "clipvalue", 0);
  c.clipnorm = field(L, idx, "clipnorm", 0);
  c.global_clipnorm = field(L, idx, "global_clipnorm", 0);
  c.initial_accumulator_value = field(L, idx, "initial_accumulator_value", c.initial_accumulator_value);
  return c;
}

/* C.optimizer_new{kind = "adam", learning_rate = ..., ...} */
static int l_optimizer_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lunet_optimizer_config c = read_config(L, 1);
  lunet_optimizer **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, OPT_MT);
  if (!(*p = lunet_optimizer_new(lunetL_ctx(L), &c))) lunetL_error(L, NULL);
  return 1;
}

static int l_optimizer_configure(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lunet_optimizer_config c = read_config(L, 2);
  if (lunet_optimizer_configure(lunetL_ctx(L), o, &c)) lunetL_error(L, NULL);
  return 0;
}

/* C.optimizer_set_lr(o, lr): the one hyperparameter a schedule changes. */
static int l_optimizer_set_lr(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  lunet_optimizer_config c = *lunet_optimizer_config_get(o);
  c.learning_rate = luaL_checknumber(L, 2);
  if (lunet_optimizer_configure(lunetL_ctx(L), o, &c)) lunetL_error(L, NULL);
  return 0;
}

/* C.optimizer_apply(o, params): one update from each p.grad, which is then
 * cleared (a custom training loop's step). */
static int l_optimizer_apply(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)luaL_len(L, 2);
  lunet_tensor **ps = lua_newuserdatauv(L, sizeof *ps * (size_t)(2 * n + 1), 0);
  lunet_tensor **gs = ps + n;
  for (int i = 0; i < n; i++) {
    lua_geti(L, 2, i + 1);
    ps[i] = lunetL_checktensor(L, -1);
    gs[i] = lunet_tensor_grad_get(ps[i]);
    lua_pop(L, 1); /* the table keeps it alive */
  }
  lunet_status s = lunet_optimizer_apply(lunetL_ctx(L), o, n, ps, gs);
  for (int i = 0; i < n; i++) lunet_tensor_zero_grad(ps[i]);
  if (s) lunetL_error(L, NULL);
  return 0;
}

/* C.optimizer_iterations(o [, n]) -> updates done (sets it with n). */
static int l_optimizer_iterations(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  if (!lua_isnoneornil(L, 2)) lunet_optimizer_set_iterations(o, luaL_checkinteger(L, 2));
  lua_pushinteger(L, lunet_optimizer_iterations(o));
  return 1;
}

/* C.optimizer_slots(o, nparams) -> { {slot1, slot2} or {}, ... } */
static int l_optimizer_slots(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  int n = (int)luaL_checkinteger(L, 2), k = lunet_optimizer_slot_count(o);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, k, 0);
    for (int j = 0; j < k; j++) {
      lunet_tensor *t = lunet_optimizer_slot(o, i, j);
      if (!t) continue;
      lunetL_pushtensor(L, lunet_tensor_retain(t));
      lua_rawseti(L, -2, j + 1);
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* C.optimizer_reset(o): no slots, no updates counted (a fresh optimizer) */
static int l_optimizer_reset(lua_State *L) {
  lunet_optimizer_reset(check_opt(L, 1));
  return 0;
}

/* C.optimizer_set_slot(o, i, k, t), 1-based i and k */
static int l_optimizer_set_slot(lua_State *L) {
  lunet_optimizer *o = check_opt(L, 1);
  int i = (int)luaL_checkinteger(L, 2), k = (int)luaL_checkinteger(L, 3);
  if (lunet_optimizer_set_slot(lunetL_ctx(L), o, i - 1, k - 1, lunetL_checktensor(L, 4)))
    lunetL_error(L, NULL);
  return 0;
}

static int l_optimizer_to(lua_State *L) {
  if (lunet_optimizer_to(lunetL_ctx(L), check_opt(L, 1), luaL_checkstring(L, 2)))
    lunetL_error(L, NULL);
  return 0;
}

/* ---- models ---- */

static int l_model_new(lua_State *L) {
  const char *name = luaL_optstring(L, 1, NULL);
  lunet_model **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, MODEL_MT);
  if (!(*p = lunet_model_new(lunetL_ctx(L), name))) lunetL_error(L, NULL);
  return 1;
}

static int read_ids(lua_State *L, int idx, int *ids, int max, const char *what) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)luaL_len(L, idx);
  if (n > max) luaL_error(L, "at most %d %s", max, what);
  for (int i = 0; i < n; i++) {
    lua_geti(L, idx, i + 1);
    ids[i] = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  return n;
}

/* C.model_input(m, shape, name) -> value id */
static int l_model_input(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)luaL_len(L, 2);
  if (n >= LUNET_MAX_DIMS) luaL_error(L, "an input shape has at most %d sizes", LUNET_MAX_DIMS - 1);
  int64_t shape[LUNET_MAX_DIMS];
  for (int i = 0; i < n; i++) {
    lua_geti(L, 2, i + 1);
    shape[i] = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  int id = lunet_model_input(lunetL_ctx(L), m, luaL_optstring(L, 3, NULL), n, shape);
  if (id < 0) lunetL_error(L, NULL);
  lua_pushinteger(L, id);
  return 1;
}

/* C.model_add(m, layer, {ids}) -> value id */
static int l_model_add(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  lunet_layer *l = lunetL_checklayer(L, 2);
  int ids[MAX_IO];
  int n = read_ids(L, 3, ids, MAX_IO, "inputs to a layer");
  int id = lunet_model_add(lunetL_ctx(L), m, l, n, ids);
  if (id < 0) lunetL_error(L, NULL);
  lua_pushinteger(L, id);
  return 1;
}

static int l_model_outputs(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  int ids[MAX_IO];
  int n = read_ids(L, 2, ids, MAX_IO, "outputs");
  if (lunet_model_set_outputs(lunetL_ctx(L), m, n, ids)) lunetL_error(L, NULL);
  return 0;
}

/* ---- a Lua function as a loss ---- */

#define LOSSFN_MT "lunet.LossFunction"

/* The function runs on a Lua thread of its own, on the thread of its Lua
 * state only (as nn.Lambda's). */
typedef struct loss_fn {
  lua_State *T;
  int thread_ref, fn_ref;
  pthread_t owner;
} loss_fn;

static int loss_fn_gc(lua_State *L) {
  loss_fn *f = luaL_checkudata(L, 1, LOSSFN_MT);
  if (f->T) {
    luaL_unref(L, LUA_REGISTRYINDEX, f->fn_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, f->thread_ref);
    f->T = NULL;
  }
  return 0;
}

/* fn(y_true, y_pred) -> a tensor (a new reference), or NULL with ctx's error. */
static lunet_tensor *call_loss_fn(void *user, lunet_ctx *ctx, lunet_tensor *y_true, lunet_tensor *y_pred) {
  loss_fn *f = user;
  if (!f->T || !pthread_equal(f->owner, pthread_self())) {
    lunet_error(ctx, LUNET_ERR_ARG, "a Lua loss function runs only on the thread of its Lua state");
    return NULL;
  }
  lua_State *T = f->T;
  int top = lua_gettop(T);
  lua_rawgeti(T, LUA_REGISTRYINDEX, f->fn_ref);
  lunetL_pushtensor(T, lunet_tensor_retain(y_true));
  lunetL_pushtensor(T, lunet_tensor_retain(y_pred));
  lunet_tensor *y = NULL;
  if (lua_pcall(T, 2, 1, 0) != LUA_OK)
    lunet_error(ctx, LUNET_ERR_ARG, "the loss function failed: %s", lua_tostring(T, -1));
  else if (!(y = lunetL_totensor(T, -1)))
    lunet_error(ctx, LUNET_ERR_ARG, "the loss function returned a %s, not a tensor", luaL_typename(T, -1));
  else
    lunet_tensor_retain(y);
  lua_settop(T, top);
  return y;
}

/* C.loss_function(f) -> a handle the core calls as the loss */
static int l_loss_function(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  loss_fn *f = lua_newuserdatauv(L, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, LOSSFN_MT);
  f->T = lua_newthread(L);
  f->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 1);
  f->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  f->owner = pthread_self();
  return 1;
}

/* C.model_compile(m, { {loss=, from_logits=, weight=, delta=, label_smoothing=, fn=}, ... },
 * {metric names}, optimizer [, {weighted metric names}]); fn: a C.loss_function
 * handle (loss is then ignored) */
static int l_model_compile(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  lunet_optimizer *opt = check_opt(L, 4);
  lunet_loss_spec specs[MAX_IO];
  const char *metrics[MAX_IO], *weighted[MAX_IO];
  int nl = (int)luaL_len(L, 2), nm = (int)luaL_len(L, 3), nw = 0;
  if (!lua_isnoneornil(L, 5)) {
    luaL_checktype(L, 5, LUA_TTABLE);
    nw = (int)luaL_len(L, 5);
  }
  if (nl > MAX_IO || nm > MAX_IO || nw > MAX_IO)
    luaL_error(L, "at most %d losses, %d metrics and %d weighted metrics", MAX_IO, MAX_IO, MAX_IO);
  for (int i = 0; i < nl; i++) {
    lua_geti(L, 2, i + 1);
    lua_getfield(L, -1, "fn");
    specs[i].fn = lua_isnil(L, -1) ? NULL : call_loss_fn;
    specs[i].fn_user = lua_isnil(L, -1) ? NULL : luaL_checkudata(L, -1, LOSSFN_MT);
    lua_pop(L, 1);
    lua_getfield(L, -1, "loss");
    int kind = specs[i].fn ? LUNET_LOSS_MSE : lunet_loss_find(luaL_checkstring(L, -1));
    if (kind < 0) luaL_error(L, "unknown loss '%s'", lua_tostring(L, -1));
    specs[i].kind = (lunet_loss_kind)kind;
    lua_getfield(L, -2, "from_logits");
    specs[i].from_logits = lua_toboolean(L, -1);
    lua_getfield(L, -3, "weight");
    specs[i].weight = luaL_optnumber(L, -1, 1);
    lua_getfield(L, -4, "delta");
    specs[i].delta = luaL_optnumber(L, -1, 0);
    lua_getfield(L, -5, "label_smoothing");
    specs[i].label_smoothing = luaL_optnumber(L, -1, 0);
    lua_pop(L, 6);
  }
  for (int i = 0; i < nm + nw; i++) {
    lua_geti(L, i < nm ? 3 : 5, (i < nm ? i : i - nm) + 1);
    *(i < nm ? &metrics[i] : &weighted[i - nm]) = luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the table keeps the string */
  }
  lunet_compile_opts o = {.nlosses = nl, .losses = specs, .optimizer = opt, .nmetrics = nm, .metrics = metrics,
                          .nweighted_metrics = nw, .weighted_metrics = weighted};
  if (lunet_model_compile(lunetL_ctx(L), m, &o)) lunetL_error(L, NULL);
  return 0;
}

/* A tensor or a list of tensors at idx; returns the count. */
static int read_tensors(lua_State *L, int idx, lunet_tensor **out, const char *what) {
  lunet_tensor *t = lunetL_totensor(L, idx);
  if (t) {
    out[0] = t;
    return 1;
  }
  if (!lua_istable(L, idx))
    return luaL_error(L, "%s: a tensor or a list of tensors expected, got %s", what,
                      luaL_typename(L, idx));
  int n = (int)luaL_len(L, idx);
  if (n > MAX_IO) luaL_error(L, "%s: at most %d tensors", what, MAX_IO);
  for (int i = 0; i < n; i++) {
    lua_geti(L, idx, i + 1);
    out[i] = lunetL_totensor(L, -1);
    if (!out[i]) luaL_error(L, "%s: entry %d is a %s, not a tensor", what, i + 1, luaL_typename(L, -1));
    lua_pop(L, 1); /* the list keeps it alive */
  }
  return n;
}

/* The keys fit gives a training step (epoch at 4, the epoch's order at 5 or
 * nil for 1..n, the batch's first position in it at 6): each sample's
 * 0-based dataset index, for the random preprocessing layers. */
static lunet_status set_keys(lua_State *L, lunet_ctx *ctx, int64_t n) {
  if (lua_isnoneornil(L, 4)) return lunet_set_sample_keys(ctx, 0, NULL, 0);
  lua_Integer epoch = luaL_checkinteger(L, 4), first = luaL_checkinteger(L, 6);
  bool ordered = !lua_isnil(L, 5);
  if (n <= 0) return lunet_set_sample_keys(ctx, 0, NULL, 0);
  int64_t *keys = lunet_sample_keys_buffer(ctx, (uint64_t)epoch, n); /* the context's: no allocation per step */
  if (!keys) return lunet_ctx_status(ctx);
  for (int64_t i = 0; i < n; i++) {
    if (ordered) {
      lua_geti(L, 5, first + i);
      int ok;
      keys[i] = (int64_t)lua_tointegerx(L, -1, &ok) - 1;
      lua_pop(L, 1);
      if (!ok) {
        lunet_set_sample_keys(ctx, 0, NULL, 0);
        return luaL_error(L, "the epoch's order holds a non-integer at %d", (int)(first + i));
      }
    } else {
      keys[i] = first + i - 1;
    }
  }
  return LUNET_OK;
}

static int step(lua_State *L, bool training) {
  lunet_model *m = check_model(L, 1);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *x[MAX_IO], *y[MAX_IO];
  int nx = read_tensors(L, 2, x, "x"), ny = read_tensors(L, 3, y, "y");
  double loss = 0;
  lunet_tensor *w = lua_isnoneornil(L, 7) ? NULL : lunetL_checktensor(L, 7);
  lunet_status s = training ? set_keys(L, ctx, lunet_tensor_dim(x[0], 0)) : LUNET_OK;
  if (!s)
    s = training ? lunet_model_train_step_weighted(ctx, m, nx, x, ny, y, w, &loss)
                 : lunet_model_test_step_weighted(ctx, m, nx, x, ny, y, w, &loss);
  lunet_set_sample_keys(ctx, 0, NULL, 0);
  if (s) lunetL_error(L, NULL);
  lua_pushnumber(L, loss);
  return 1;
}

/* C.model_train_step(m, x, y [, epoch, order, first [, sample_weight]]) ->
 * the batch's loss; x and y a tensor or a list; epoch, order, first:
 * set_keys (training only); sample_weight (N) or nil.  C.model_test_step
 * takes the same (its keys nil). */
static int l_model_train_step(lua_State *L) { return step(L, true); }
static int l_model_test_step(lua_State *L) { return step(L, false); }

/* C.model_logs(m [, logs]) -> logs with each metric's running result */
static int l_model_logs(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    lua_createtable(L, 0, lunet_model_metric_count(m));
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  for (int i = 0; i < lunet_model_metric_count(m); i++) {
    lunet_metric *x = lunet_model_metric(m, i);
    lua_pushnumber(L, lunet_metric_result(x));
    lua_setfield(L, 2, lunet_metric_name(x));
  }
  lua_settop(L, 2);
  return 1;
}

/* C.model_metric_states(m) -> one flat list of every metric's additive
 * state (sums and counts), and the list of their lengths: what a reduction
 * across processes adds up. */
static int l_model_metric_states(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  int n = lunet_model_metric_count(m), at = 0;
  lua_newtable(L);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lunet_metric *x = lunet_model_metric(m, i);
    int k = lunet_metric_state_vector(x, NULL, 0);
    double *v = malloc(sizeof *v * (size_t)(k ? k : 1));
    if (!v) return luaL_error(L, "out of host memory");
    lunet_metric_state_vector(x, v, k);
    for (int j = 0; j < k; j++) {
      lua_pushnumber(L, v[j]);
      lua_rawseti(L, -3, ++at);
    }
    free(v);
    lua_pushinteger(L, k);
    lua_rawseti(L, -2, i + 1);
  }
  return 2;
}

/* C.model_set_metric_states(m, flat, lengths) */
static int l_model_set_metric_states(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  int n = lunet_model_metric_count(m), at = 0;
  if ((int)luaL_len(L, 3) != n) return luaL_argerror(L, 3, "one length per metric expected");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 3, i + 1);
    int k = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    double *v = malloc(sizeof *v * (size_t)(k ? k : 1));
    if (!v) return luaL_error(L, "out of host memory");
    for (int j = 0; j < k; j++) {
      lua_rawgeti(L, 2, ++at);
      v[j] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
    lunet_status s = k ? lunet_metric_set_state_vector(lunetL_ctx(L), lunet_model_metric(m, i), v, k) : LUNET_OK;
    free(v);
    if (s) return lunetL_error(L, NULL);
  }
  return 0;
}

/* C.model_metric_names(m) -> {"loss", "accuracy", ...} */
static int l_model_metric_names(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  int n = lunet_model_metric_count(m);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, lunet_metric_name(lunet_model_metric(m, i)));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* C.model_metric_modes(m) -> {name = "max" | "min"}: the way each compiled
 * metric improves (Keras's _direction: up for the accuracies, precision,
 * recall, AUC, F1, IoU and R2, down for the errors), for the callbacks'
 * mode "auto"; the loss trackers are left out. */
static int l_model_metric_modes(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  int n = lunet_model_metric_count(m);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    const lunet_metric *x = lunet_model_metric(m, i);
    lunet_metric_kind k = lunet_metric_kind_get(x);
    if (k == LUNET_METRIC_MEAN) continue;
    bool down = k == LUNET_METRIC_MEAN_ABSOLUTE_ERROR || k == LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR;
    lua_pushstring(L, down ? "min" : "max");
    lua_setfield(L, -2, lunet_metric_name(x));
  }
  return 1;
}

static int l_model_reset_metrics(lua_State *L) {
  lunet_model_reset_metrics(check_model(L, 1));
  return 0;
}

static int push_outputs(lua_State *L, lunet_model *m, lunet_tensor **out) {
  int n = lunet_model_output_count(m);
  luaL_checkstack(L, n, "too many outputs");
  for (int j = 0; j < n; j++) {
    lunet_tensor **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = out[j];
    luaL_setmetatable(L, LUNETL_TENSOR);
  }
  return n;
}

/* C.model_predict(m, x) -> one tensor per output (inference, no tape) */
static int l_model_predict(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  lunet_tensor *x[MAX_IO], *out[MAX_IO];
  int nx = read_tensors(L, 2, x, "x");
  if (lunet_model_predict(lunetL_ctx(L), m, nx, x, out)) lunetL_error(L, NULL);
  return push_outputs(L, m, out);
}

/* C.model_forward(m, x, training) -> outputs, recorded on the tape */
static int l_model_forward(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  lunet_tensor *x[MAX_IO], *out[MAX_IO];
  int nx = read_tensors(L, 2, x, "x");
  lunet_ctx *ctx = lunetL_ctx(L);
  bool training = lua_toboolean(L, 3);
  lunet_status s = training ? set_keys(L, ctx, lunet_tensor_dim(x[0], 0)) : LUNET_OK;
  if (!s) s = lunet_model_forward(ctx, m, nx, x, training, out);
  lunet_set_sample_keys(ctx, 0, NULL, 0);
  if (s) lunetL_error(L, NULL);
  return push_outputs(L, m, out);
}

/* ---- step-by-step sessions (generation with a key/value cache) ---- */

static lunet_model_session **check_session(lua_State *L, int arg) {
  lunet_model_session **p = luaL_checkudata(L, arg, SESSION_MT);
  if (!*p) luaL_argerror(L, arg, "the session is closed");
  return p;
}

static int session_gc(lua_State *L) {
  lunet_model_session **p = luaL_checkudata(L, 1, SESSION_MT);
  lunet_model_session_free(*p);
  *p = NULL;
  return 0;
}

/* C.session_new(m) -> session (an error names a layer that cannot step) */
static int l_session_new(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  lunet_model_session **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, SESSION_MT);
  if (!(*p = lunet_model_session_new(lunetL_ctx(L), m))) lunetL_error(L, NULL);
  return 1;
}

/* C.session_feed(s, x) -> the first output for x's steps */
static int l_session_feed(lua_State *L) {
  lunet_model_session **p = check_session(L, 1);
  lunet_tensor *x = lunetL_checktensor(L, 2), *out[MAX_IO] = {0};
  if (lunet_model_session_feed(lunetL_ctx(L), *p, 1, &x, out)) lunetL_error(L, NULL);
  for (int j = 1; j < MAX_IO; j++) lunet_tensor_release(out[j]);
  lunetL_pushtensor(L, out[0]);
  return 1;
}

static int l_session_length(lua_State *L) {
  lua_pushinteger(L, lunet_model_session_length(*check_session(L, 1)));
  return 1;
}

/* C.model_params(m) -> the trainable weights in the optimizer's order */
static int l_model_params(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  int n = lunet_model_param_count(m);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lunetL_pushtensor(L, lunet_tensor_retain(lunet_model_param(m, i)));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* ---- files ---- */

/* C.model_save(m, path, {key = "value", ...}): the extra metadata strings */
static int l_model_save(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  const char *path = luaL_checkstring(L, 2);
  const char *keys[32], *values[32];
  int n = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (n == 32) luaL_error(L, "save: at most 32 metadata entries");
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "save: metadata keys and values must be strings");
      keys[n] = lua_tostring(L, -2);
      values[n++] = lua_tostring(L, -1);
      lua_pop(L, 1); /* the table keeps both */
    }
  }
  if (lunet_model_save(lunetL_ctx(L), m, path, n, keys, values)) lunetL_error(L, NULL);
  return 0;
}

static int l_model_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lunet_model **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, MODEL_MT);
  if (!(*p = lunet_model_load(lunetL_ctx(L), path))) lunetL_error(L, NULL);
  return 1;
}

static void push_ids(lua_State *L, const int *ids, int n) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

/* C.model_describe(m) -> {name, layers = {layer...}, inputs = {{name, shape, id}},
 * calls = {{layer = i, inputs = {ids}, out = id, nout = n}}, outputs = {ids},
 * compiled, losses = {{loss, from_logits, weight}}, metrics = {...}}: the graph
 * the Lua shell rebuilds its objects from (live calls only; 1-based layer indices). */
static int l_model_describe(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, lunet_model_name(m));
  lua_setfield(L, -2, "name");
  int nl = lunet_model_layer_count(m);
  lua_createtable(L, nl, 0);
  for (int i = 0; i < nl; i++) {
    lunetL_pushlayer(L, lunet_model_layer(m, i));
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "layers");
  lua_createtable(L, lunet_model_input_count(m), 0);
  for (int i = 0; i < lunet_model_input_count(m); i++) {
    int id = lunet_model_input_id(m, i);
    int64_t shape[LUNET_MAX_DIMS];
    int nd = lunet_model_value_shape(m, id, shape);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, lunet_model_value_name(m, id));
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, id);
    lua_setfield(L, -2, "id");
    lua_createtable(L, nd, 0);
    for (int d = 0; d < nd; d++) {
      lua_pushinteger(L, shape[d]);
      lua_rawseti(L, -2, d + 1);
    }
    lua_setfield(L, -2, "shape");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "inputs");
  lua_newtable(L);
  for (int c = 0, k = 0; c < lunet_model_call_count(m); c++) {
    if (!lunet_model_call_live(m, c)) continue;
    lunet_layer *l = lunet_model_call_layer(m, c);
    int li = 0;
    while (li < nl && lunet_model_layer(m, li) != l) li++;
    int ids[MAX_IO], n = lunet_model_call_inputs(m, c, ids, MAX_IO);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, li + 1);
    lua_setfield(L, -2, "layer");
    push_ids(L, ids, n);
    lua_setfield(L, -2, "inputs");
    lua_pushinteger(L, lunet_model_call_output(m, c));
    lua_setfield(L, -2, "out");
    lua_pushinteger(L, lunet_model_call_output_count(m, c));
    lua_setfield(L, -2, "nout");
    lua_rawseti(L, -2, ++k);
  }
  lua_setfield(L, -2, "calls");
  int outs[MAX_IO], no = lunet_model_output_count(m);
  for (int j = 0; j < no; j++) outs[j] = lunet_model_output_id(m, j);
  push_ids(L, outs, no);
  lua_setfield(L, -2, "outputs");
  lua_pushboolean(L, lunet_model_compiled(m));
  lua_setfield(L, -2, "compiled");
  if (lunet_model_compiled(m)) {
    lua_createtable(L, no, 0);
    for (int j = 0; j < no; j++) {
      lunet_loss_spec ls = lunet_model_loss(m, j);
      lua_createtable(L, 0, 3);
      lua_pushstring(L, lunet_loss_name(ls.kind));
      lua_setfield(L, -2, "loss");
      lua_pushboolean(L, ls.from_logits);
      lua_setfield(L, -2, "from_logits");
      lua_pushnumber(L, ls.weight);
      lua_setfield(L, -2, "weight");
      if (ls.delta > 0) {
        lua_pushnumber(L, ls.delta);
        lua_setfield(L, -2, "delta");
      }
      if (ls.label_smoothing > 0) {
        lua_pushnumber(L, ls.label_smoothing);
        lua_setfield(L, -2, "label_smoothing");
      }
      lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "losses");
    lua_createtable(L, lunet_model_compiled_metric_count(m), 0);
    for (int k = 0; k < lunet_model_compiled_metric_count(m); k++) {
      lua_pushstring(L, lunet_model_compiled_metric(m, k));
      lua_rawseti(L, -2, k + 1);
    }
    lua_setfield(L, -2, "metrics");
    lua_createtable(L, lunet_model_compiled_weighted_metric_count(m), 0);
    for (int k = 0; k < lunet_model_compiled_weighted_metric_count(m); k++) {
      lua_pushstring(L, lunet_model_compiled_weighted_metric(m, k));
      lua_rawseti(L, -2, k + 1);
    }
    lua_setfield(L, -2, "weighted_metrics");
  }
  return 1;
}

/* C.model_meta(m, key) -> the loaded file's metadata value, or nil */
static int l_model_meta(lua_State *L) {
  const char *v = lunet_model_meta(check_model(L, 1), luaL_checkstring(L, 2));
  if (v)
    lua_pushstring(L, v);
  else
    lua_pushnil(L);
  return 1;
}

/* C.model_optimizer(m) -> the compiled optimizer (a new reference), or nil */
static int l_model_optimizer(lua_State *L) {
  lunet_optimizer *o = lunet_model_optimizer(check_model(L, 1));
  if (!o) return 0;
  lunet_optimizer **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = lunet_optimizer_retain(o);
  luaL_setmetatable(L, OPT_MT);
  return 1;
}

/* C.loss(name, y_true, y_pred, from_logits [, sample_weight, delta,
 * label_smoothing]) -> the batch's loss, recorded on the tape (a loss
 * object's call). */
static int l_loss(lua_State *L) {
  int kind = lunet_loss_find(luaL_checkstring(L, 1));
  if (kind < 0) return luaL_error(L, "unknown loss '%s'", lua_tostring(L, 1));
  lunet_tensor *t = lunetL_checktensor(L, 2), *p = lunetL_checktensor(L, 3);
  lunet_tensor *w = lua_isnoneornil(L, 5) ? NULL : lunetL_checktensor(L, 5);
  lunet_loss_options o = {lua_toboolean(L, 4), luaL_optnumber(L, 6, 0), luaL_optnumber(L, 7, 0), w};
  lunet_tensor *l = lunet_loss_ex(lunetL_ctx(L), (lunet_loss_kind)kind, p, t, &o);
  if (!l) lunetL_error(L, NULL);
  lunetL_pushtensor(L, l);
  return 1;
}

static const luaL_Reg functions[] = {{"optimizer_new", l_optimizer_new},
                                     {"loss", l_loss},
                                     {"loss_function", l_loss_function},
                                     {"model_save", l_model_save},
                                     {"model_load", l_model_load},
                                     {"model_describe", l_model_describe},
                                     {"model_meta", l_model_meta},
                                     {"model_optimizer", l_model_optimizer},
                                     {"optimizer_configure", l_optimizer_configure},
                                     {"optimizer_set_lr", l_optimizer_set_lr},
                                     {"optimizer_apply", l_optimizer_apply},
                                     {"optimizer_iterations", l_optimizer_iterations},
                                     {"optimizer_slots", l_optimizer_slots},
                                     {"optimizer_set_slot", l_optimizer_set_slot},
                                     {"optimizer_reset", l_optimizer_reset},
                                     {"optimizer_to", l_optimizer_to},
                                     {"model_new", l_model_new},
                                     {"model_input", l_model_input},
                                     {"model_add", l_model_add},
                                     {"model_outputs", l_model_outputs},
                                     {"model_compile", l_model_compile},
                                     {"model_train_step", l_model_train_step},
                                     {"model_test_step", l_model_test_step},
                                     {"model_logs", l_model_logs},
                                     {"model_metric_names", l_model_metric_names},
                                     {"model_metric_modes", l_model_metric_modes},
                                     {"model_metric_states", l_model_metric_states},
                                     {"model_set_metric_states", l_model_set_metric_states},
                                     {"model_reset_metrics", l_model_reset_metrics},
                                     {"model_predict", l_model_predict},
                                     {"session_new", l_session_new},
                                     {"session_feed", l_session_feed},
                                     {"session_length", l_session_length},
                                     {"session_close", session_gc},
                                     {"model_forward", l_model_forward},
                                     {"model_params", l_model_params},
                                     {NULL, NULL}};

void lunetL_open_train(lua_State *L) {
  if (luaL_newmetatable(L, LOSSFN_MT)) {
    lua_pushcfunction(L, loss_fn_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, MODEL_MT)) {
    lua_pushcfunction(L, model_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, SESSION_MT)) {
    lua_pushcfunction(L, session_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, OPT_MT)) {
    lua_pushcfunction(L, opt_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
}
