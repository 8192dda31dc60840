/*
 * Layers, training steps, optimizer updates and checkpoints for lunet's Lua
 * side.  A training step runs entirely in C (forward, loss, backward), so a
 * Sequential model creates no Lua objects per step.
 */
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"
#include "lunet/checkpoint.h"
#include "lunet/layer.h"

#define LAYER_MT "lunet.Layer"

static lunet_layer *check_layer(lua_State *L, int arg) {
  lunet_layer **p = luaL_checkudata(L, arg, LAYER_MT);
  if (!*p) luaL_argerror(L, arg, "layer was freed");
  return *p;
}

static int layer_gc(lua_State *L) {
  lunet_layer **p = luaL_checkudata(L, 1, LAYER_MT);
  lunet_layer_release(*p);
  *p = NULL;
  return 0;
}

static const char *arg_type_name(lunet_arg_type t) {
  static const char *const names[] = {"int",  "float", "bool",       "string",
                                      "int2", "shape", "regularizer"};
  return (unsigned)t < 7 ? names[t] : "?";
}

/* C.layer_types() -> { {name=, doc=, plugin=, positional=, args={...}}, ... } */
static int l_layer_types(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  const lunet_layer_type *t;
  const char *plugin;
  lua_newtable(L);
  for (int i = 0; (t = lunet_layer_type_at(ctx, i, &plugin)); i++) {
    lua_createtable(L, 0, 6);
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, t->doc ? t->doc : "");
    lua_setfield(L, -2, "doc");
    lua_pushstring(L, plugin);
    lua_setfield(L, -2, "plugin");
    lua_pushinteger(L, t->positional);
    lua_setfield(L, -2, "positional");
    lua_pushinteger(L, t->ntests);
    lua_setfield(L, -2, "ntests");
    lua_createtable(L, t->nargs, 0);
    for (int a = 0; a < t->nargs; a++) {
      const lunet_arg_schema *s = &t->args[a];
      lua_createtable(L, 0, 5);
      lua_pushstring(L, s->name);
      lua_setfield(L, -2, "name");
      lua_pushstring(L, arg_type_name(s->type));
      lua_setfield(L, -2, "type");
      if (s->default_value) {
        lua_pushstring(L, s->default_value);
        lua_setfield(L, -2, "default");
      } else {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "required");
      }
      lua_pushstring(L, s->doc ? s->doc : "");
      lua_setfield(L, -2, "doc");
      if (s->choices) {
        lua_pushstring(L, s->choices);
        lua_setfield(L, -2, "choices");
      }
      lua_rawseti(L, -2, a + 1);
    }
    lua_setfield(L, -2, "args");
    lua_setfield(L, -2, t->name);
  }
  return 1;
}

/* C.layer_tests(type) -> { {args=, shape=, batch=, tolerance=}, ... } */
static int l_layer_tests(lua_State *L) {
  const lunet_layer_type *t = lunet_layer_type_find(lunetL_ctx(L), luaL_checkstring(L, 1));
  if (!t) lunetL_error(L, NULL);
  lua_createtable(L, t->ntests, 0);
  for (int i = 0; i < t->ntests; i++) {
    const lunet_layer_test *c = &t->tests[i];
    lua_createtable(L, 0, 4);
    lua_pushstring(L, c->args);
    lua_setfield(L, -2, "args");
    lua_createtable(L, c->ndim, 0);
    for (int d = 0; d < c->ndim; d++) {
      lua_pushinteger(L, c->input_shape[d]);
      lua_rawseti(L, -2, d + 1);
    }
    lua_setfield(L, -2, "shape");
    lua_pushinteger(L, c->batch);
    lua_setfield(L, -2, "batch");
    lua_pushnumber(L, c->tolerance);
    lua_setfield(L, -2, "tolerance");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int read_ints(lua_State *L, int idx, int64_t *out, const char *tname, const char *aname) {
  if (lua_isinteger(L, idx)) {
    out[0] = lua_tointeger(L, idx);
    return 1;
  }
  int n = (int)luaL_len(L, idx);
  if (n > LUNET_MAX_DIMS) luaL_error(L, "%s: %s has too many values", tname, aname);
  for (int i = 0; i < n; i++) {
    lua_geti(L, idx, i + 1);
    int ok;
    out[i] = lua_tointegerx(L, -1, &ok);
    if (!ok) luaL_error(L, "%s: %s must hold integers", tname, aname);
    lua_pop(L, 1);
  }
  return n;
}

/* Sets one argument from the Lua value on the top of the stack (already
 * checked by the Lua side against the schema). */
static lunet_status set_arg(lua_State *L, lunet_layer *l, const lunet_arg_schema *s) {
  const char *tn = lunet_layer_type_get(l)->name;
  if (lua_isnil(L, -1)) return lunet_layer_set_nil(l, s->name);
  switch (s->type) {
  case LUNET_ARG_INT:
    return lunet_layer_set_int(l, s->name, lua_tointeger(L, -1));
  case LUNET_ARG_FLOAT:
    return lunet_layer_set_float(l, s->name, lua_tonumber(L, -1));
  case LUNET_ARG_BOOL:
    return lunet_layer_set_bool(l, s->name, lua_toboolean(L, -1));
  case LUNET_ARG_STRING:
    return lunet_layer_set_string(l, s->name, lua_tostring(L, -1));
  case LUNET_ARG_INT2:
  case LUNET_ARG_SHAPE: {
    int64_t v[LUNET_MAX_DIMS];
    int n = read_ints(L, lua_gettop(L), v, tn, s->name);
    return lunet_layer_set_ints(l, s->name, n, v);
  }
  case LUNET_ARG_REGULARIZER: {
    lua_getfield(L, -1, "l1");
    lua_getfield(L, -2, "l2");
    lunet_status st =
        lunet_layer_set_regularizer(l, s->name, luaL_optnumber(L, -2, 0), luaL_optnumber(L, -1, 0));
    lua_pop(L, 2);
    return st;
  }
  }
  return LUNET_OK;
}

/* C.layer_new(type, args) with args keyed by name, defaults filled in. */
static int l_layer_new(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  const lunet_layer_type *t = lunet_layer_type_find(ctx, luaL_checkstring(L, 1));
  if (!t) lunetL_error(L, NULL);
  luaL_checktype(L, 2, LUA_TTABLE);
  lunet_layer **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = lunet_layer_new(ctx, t);
  if (!*p) lunetL_error(L, NULL);
  luaL_setmetatable(L, LAYER_MT);
  for (int a = 0; a < t->nargs; a++) {
    lua_getfield(L, 2, t->args[a].name);
    if (set_arg(L, *p, &t->args[a])) lunetL_error(L, NULL);
    lua_pop(L, 1);
  }
  return 1;
}

static void push_shape(lua_State *L, int nd, const int64_t *s) {
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, s[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

/* C.layer_build(layer, shape) -> output shape */
static int l_layer_build(lua_State *L) {
  lunet_layer *l = check_layer(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int64_t in[LUNET_MAX_DIMS], out[LUNET_MAX_DIMS];
  int n = read_ints(L, 2, in, lunet_layer_type_get(l)->name, "input shape");
  if (lunet_layer_build(l, n, in)) lunetL_error(L, NULL);
  push_shape(L, lunet_layer_output_shape(l, out), out);
  return 1;
}

static int l_layer_shapes(lua_State *L) {
  lunet_layer *l = check_layer(L, 1);
  if (!lunet_layer_built(l)) return 0;
  int64_t s[LUNET_MAX_DIMS];
  push_shape(L, lunet_layer_input_shape(l, s), s);
  push_shape(L, lunet_layer_output_shape(l, s), s);
  return 2;
}

static int l_layer_call(lua_State *L) {
  lunet_layer *l = check_layer(L, 1);
  lunet_tensor *x = lunetL_checktensor(L, 2);
  lunetL_pushtensor(
      L, lunet_layer_call(lunetL_ctx(L), l, x, lua_toboolean(L, 3), lua_toboolean(L, 4)));
  return 1;
}

/* C.layer_weights(layer) -> { {name=, tensor=, trainable=}, ... } */
static int l_layer_weights(lua_State *L) {
  lunet_layer *l = check_layer(L, 1);
  int n = lunet_layer_weight_count(l);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, lunet_layer_weight_name(l, i));
    lua_setfield(L, -2, "name");
    lunetL_pushtensor(L, lunet_tensor_retain(lunet_layer_weight(l, i)));
    lua_setfield(L, -2, "tensor");
    lua_pushboolean(L, lunet_layer_weight_trainable(l, i));
    lua_setfield(L, -2, "trainable");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_layer_to(lua_State *L) {
  if (lunet_layer_to(lunetL_ctx(L), check_layer(L, 1), luaL_checkstring(L, 2)))
    lunetL_error(L, NULL);
  return 0;
}

static int l_layer_activation(lua_State *L) {
  const char *a = lunet_layer_activation(check_layer(L, 1));
  if (a)
    lua_pushstring(L, a);
  else
    lua_pushnil(L);
  return 1;
}

/* ---- training steps ---- */

typedef struct step_opts {
  lunet_loss_kind loss;
  bool from_logits, fuse, training;
  int metric; /* 0 none, 1 sparse accuracy, 2 categorical, 3 binary */
} step_opts;

static void read_opts(lua_State *L, int idx, step_opts *o) {
  static const char *const losses[] = {"mean_squared_error", "categorical_crossentropy",
                                       "sparse_categorical_crossentropy", "binary_crossentropy",
                                       NULL};
  static const char *const metrics[] = {"none", "sparse", "categorical", "binary", NULL};
  lua_getfield(L, idx, "loss");
  o->loss = (lunet_loss_kind)luaL_checkoption(L, -1, NULL, losses);
  lua_getfield(L, idx, "from_logits");
  o->from_logits = lua_toboolean(L, -1);
  lua_getfield(L, idx, "metric");
  o->metric = luaL_checkoption(L, -1, "none", metrics);
  lua_getfield(L, idx, "training");
  o->training = lua_toboolean(L, -1);
  lua_pop(L, 4);
  o->fuse = false;
}

/* Forward through the layers; fuses a final softmax into a cross-entropy. */
static lunet_tensor *forward(lunet_ctx *ctx, lunet_layer **layers, int n, lunet_tensor *x,
                             step_opts *o) {
  const char *last = n ? lunet_layer_activation(layers[n - 1]) : NULL;
  o->fuse = !o->from_logits && last && !strcmp(last, "softmax") &&
            (o->loss == LUNET_LOSS_SPARSE_CATEGORICAL_CE || o->loss == LUNET_LOSS_CATEGORICAL_CE);
  lunet_tensor *h = lunet_tensor_retain(x);
  for (int i = 0; h && i < n; i++) {
    lunet_tensor *next = lunet_layer_call(ctx, layers[i], h, o->training, o->fuse && i == n - 1);
    lunet_tensor_release(h);
    h = next;
  }
  return h;
}

static bool same_shape(const lunet_tensor *a, const lunet_tensor *b) {
  if (lunet_tensor_ndim(a) != lunet_tensor_ndim(b)) return false;
  for (int i = 0; i < lunet_tensor_ndim(a); i++)
    if (lunet_tensor_dim(a, i) != lunet_tensor_dim(b, i)) return false;
  return true;
}

/* The number of correct predictions in the batch as a scalar on the device
 * (the accuracy metric); NULL with no error when there is no metric. */
static lunet_tensor *count_correct(lunet_ctx *ctx, lunet_tensor *pred, lunet_tensor *y,
                                   const step_opts *o) {
  if (o->metric == 0) return NULL;
  lunet_tensor *a = NULL, *b = NULL, *eq = NULL, *s = NULL;
  if (o->metric == 3) { /* binary: threshold 0.5 (0 on logits) */
    lunet_tensor *th = lunet_op_new(ctx, pred, LUNET_F32, 0, NULL);
    if (th && !lunet_op_fill(ctx, th, o->from_logits || o->fuse ? 0.0f : 0.5f))
      a = lunet_op_binary(ctx, LUNET_BINARY_GT, pred, th);
    lunet_tensor_release(th);
  } else {
    a = lunet_op_argmax(ctx, pred);
  }
  b = o->metric == 2                       ? lunet_op_argmax(ctx, y)
      : lunet_tensor_dtype(y) == LUNET_F32 ? lunet_tensor_retain(y)
                                           : lunet_op_cast(ctx, y, LUNET_F32);
  if (a && b && !same_shape(a, b)) {
    lunet_tensor *r = lunet_op_reshape(ctx, b, lunet_tensor_ndim(a), lunet_tensor_shape(a));
    lunet_tensor_release(b);
    b = r;
  }
  if (a && b) eq = lunet_op_binary(ctx, LUNET_BINARY_EQ, a, b);
  if (eq) s = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, eq, LUNET_ALL_AXES, false);
  lunet_tensor_release(a);
  lunet_tensor_release(b);
  lunet_tensor_release(eq);
  return s;
}

/* The loss and the correct count in one download: the only data that leaves
 * the device in a training step. */
static lunet_status read_scalars(lunet_ctx *ctx, lunet_tensor *loss, lunet_tensor *correct,
                                 double *value, double *count) {
  *count = 0;
  if (!correct) return lunet_tensor_item(ctx, loss, 0, value);
  int64_t one = 1;
  lunet_tensor *parts[2] = {lunet_op_reshape(ctx, loss, 1, &one),
                            lunet_op_reshape(ctx, correct, 1, &one)};
  lunet_tensor *both = parts[0] && parts[1] ? lunet_op_concat(ctx, parts, 2, 0) : NULL;
  float v[2];
  lunet_status s = both ? lunet_tensor_read(ctx, both, v, sizeof v) : lunet_ctx_status(ctx);
  if (!s) {
    *value = v[0];
    *count = v[1];
  }
  lunet_tensor_release(parts[0]);
  lunet_tensor_release(parts[1]);
  lunet_tensor_release(both);
  return s;
}

static int read_layers(lua_State *L, int idx, lunet_layer **out, int max) {
  int n = (int)luaL_len(L, idx);
  if (n > max) luaL_error(L, "at most %d layers", max);
  for (int i = 0; i < n; i++) {
    lua_geti(L, idx, i + 1);
    out[i] = check_layer(L, -1);
    lua_pop(L, 1);
  }
  return n;
}

/* Adds every layer's regularization penalty to the loss. */
static lunet_tensor *add_penalties(lunet_ctx *ctx, lunet_layer **layers, int n,
                                   lunet_tensor *loss) {
  for (int i = 0; loss && i < n; i++) {
    lunet_tensor *p = lunet_layer_penalty(ctx, layers[i]);
    if (!p) {
      if (lunet_ctx_status(ctx)) {
        lunet_tensor_release(loss);
        return NULL;
      }
      continue;
    }
    lunet_tensor *sum = lunet_add(ctx, loss, p);
    lunet_tensor_release(p);
    lunet_tensor_release(loss);
    loss = sum;
  }
  return loss;
}

/* C.step(layers, x, y, opts) -> loss, correct.  With opts.training the
 * weights' .grad accumulate the batch's gradients. */
static int l_step(lua_State *L) {
  lunet_layer *layers[256];
  int n = read_layers(L, 1, layers, 256);
  lunet_tensor *x = lunetL_checktensor(L, 2), *y = lunetL_checktensor(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  step_opts o;
  read_opts(L, 4, &o);
  lunet_ctx *ctx = lunetL_ctx(L);
  bool prev = lunet_set_grad_enabled(ctx, o.training);
  lunet_tensor *pred = forward(ctx, layers, n, x, &o);
  lunet_tensor *loss = pred ? lunet_loss(ctx, o.loss, pred, y, o.from_logits || o.fuse) : NULL;
  double value = 0, correct = 0;
  if (loss) loss = add_penalties(ctx, layers, n, loss);
  lunet_status s = loss ? LUNET_OK : lunet_ctx_status(ctx);
  if (!s && o.training) s = lunet_backward(ctx, loss, NULL);
  lunet_tensor *hits = s ? NULL : count_correct(ctx, pred, y, &o);
  if (!s && o.metric && !hits) s = lunet_ctx_status(ctx);
  if (!s) s = read_scalars(ctx, loss, hits, &value, &correct);
  lunet_set_grad_enabled(ctx, prev);
  lunet_tensor_release(pred);
  lunet_tensor_release(loss);
  lunet_tensor_release(hits);
  if (s) lunetL_error(L, NULL);
  lua_pushnumber(L, value);
  lua_pushnumber(L, correct);
  return 2;
}

/* C.predict(layers, x) -> y, inference mode, no tape. */
static int l_predict(lua_State *L) {
  lunet_layer *layers[256];
  int n = read_layers(L, 1, layers, 256);
  lunet_tensor *x = lunetL_checktensor(L, 2);
  lunet_ctx *ctx = lunetL_ctx(L);
  bool prev = lunet_set_grad_enabled(ctx, lua_toboolean(L, 3));
  step_opts o = {.loss = LUNET_LOSS_MSE, .training = false};
  lunet_tensor *y = forward(ctx, layers, n, x, &o);
  lunet_set_grad_enabled(ctx, prev);
  lunetL_pushtensor(L, y);
  return 1;
}

/* ---- optimizer updates (grad taken from p.grad) ---- */

static lunet_tensor *opt_tensor(lua_State *L, int arg) {
  return lua_isnoneornil(L, arg) ? NULL : lunetL_checktensor(L, arg);
}

static int l_sgd_update(lua_State *L) {
  lunet_tensor *p = lunetL_checktensor(L, 1), *g = lunetL_checktensor(L, 2);
  if (lunet_op_sgd_update(lunetL_ctx(L), p, g, opt_tensor(L, 3), (float)luaL_checknumber(L, 4),
                          (float)luaL_optnumber(L, 5, 0), lua_toboolean(L, 6),
                          (float)luaL_optnumber(L, 7, 0)))
    lunetL_error(L, "SGD");
  return 0;
}

static int l_adam_update(lua_State *L) {
  lunet_tensor *p = lunetL_checktensor(L, 1), *g = lunetL_checktensor(L, 2);
  if (lunet_op_adam_update(lunetL_ctx(L), p, g, lunetL_checktensor(L, 3), lunetL_checktensor(L, 4),
                           (float)luaL_checknumber(L, 5), (float)luaL_checknumber(L, 6),
                           (float)luaL_checknumber(L, 7), (float)luaL_checknumber(L, 8),
                           (float)luaL_optnumber(L, 9, 0), luaL_checkinteger(L, 10)))
    lunetL_error(L, "Adam");
  return 0;
}

static int l_rmsprop_update(lua_State *L) {
  lunet_tensor *p = lunetL_checktensor(L, 1), *g = lunetL_checktensor(L, 2);
  if (lunet_op_rmsprop_update(lunetL_ctx(L), p, g, lunetL_checktensor(L, 3), opt_tensor(L, 4),
                              (float)luaL_checknumber(L, 5), (float)luaL_checknumber(L, 6),
                              (float)luaL_optnumber(L, 7, 0), (float)luaL_checknumber(L, 8)))
    lunetL_error(L, "RMSprop");
  return 0;
}

/* C.apply_updates(kind, params, states, hyper, step): one optimizer step on
 * every parameter that has a gradient, then its gradient is cleared.
 * states[i] holds the per-parameter slots (m, v / velocity / ms, mom). */
static int l_apply_updates(lua_State *L) {
  static const char *const kinds[] = {"sgd", "adam", "rmsprop", NULL};
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TTABLE);
  int64_t step = luaL_checkinteger(L, 5);
  float h[6];
  static const char *const names[] = {"lr", "a", "b", "c", "wd", "flag"};
  for (int i = 0; i < 6; i++) {
    lua_getfield(L, 4, names[i]);
    h[i] = (float)(lua_isboolean(L, -1) ? lua_toboolean(L, -1) : luaL_optnumber(L, -1, 0));
    lua_pop(L, 1);
  }
  lunet_ctx *ctx = lunetL_ctx(L);
  int n = (int)luaL_len(L, 2);
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 2, i);
    lunet_tensor *p = lunetL_checktensor(L, -1);
    lunet_tensor *g = lunet_tensor_grad_get(p);
    lua_geti(L, 3, i);
    lunet_tensor *s1 = NULL, *s2 = NULL;
    if (lua_istable(L, -1)) {
      lua_geti(L, -1, 1);
      lua_geti(L, -2, 2);
      s1 = lunetL_totensor(L, -2);
      s2 = lunetL_totensor(L, -1);
      lua_pop(L, 2);
    }
    lua_pop(L, 2);
    if (!g) continue;
    lunet_status s = LUNET_OK;
    if (kind == 0)
      s = lunet_op_sgd_update(ctx, p, g, s1, h[0], h[1], h[5] != 0, h[4]);
    else if (kind == 1)
      s = lunet_op_adam_update(ctx, p, g, s1, s2, h[0], h[1], h[2], h[3], h[4], step);
    else
      s = lunet_op_rmsprop_update(ctx, p, g, s1, s2, h[0], h[1], h[2], h[3]);
    lunet_tensor_zero_grad(p);
    if (s) lunetL_error(L, NULL);
  }
  return 0;
}

/* t:assign(src): copies src's values into t (same element count). */
static int l_assign(lua_State *L) {
  lunet_tensor *dst = lunetL_checktensor(L, 1), *src = lunetL_checktensor(L, 2);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_tensor_numel(dst) != lunet_tensor_numel(src) ||
      lunet_tensor_dtype(dst) != lunet_tensor_dtype(src)) {
    char a[128], b[128];
    return luaL_error(L, "cannot assign a %s %s tensor to a %s %s one",
                      lunet_shape_str(lunet_tensor_ndim(src), lunet_tensor_shape(src), a, sizeof a),
                      lunet_dtype_name(lunet_tensor_dtype(src)),
                      lunet_shape_str(lunet_tensor_ndim(dst), lunet_tensor_shape(dst), b, sizeof b),
                      lunet_dtype_name(lunet_tensor_dtype(dst)));
  }
  size_t nb = (size_t)lunet_tensor_numel(src) * lunet_dtype_size(lunet_tensor_dtype(src));
  void *buf = malloc(nb ? nb : 1);
  if (!buf) return luaL_error(L, "out of host memory");
  lunet_status s = lunet_tensor_read(ctx, src, buf, nb);
  if (!s) s = lunet_tensor_write(ctx, dst, buf, nb);
  free(buf);
  if (s) lunetL_error(L, NULL);
  return 0;
}

/* C.take_rows(x, idx_table or start, count) */
static int l_take_rows(lua_State *L) {
  lunet_tensor *x = lunetL_checktensor(L, 1);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lua_isinteger(L, 2)) {
    lunetL_pushtensor(
        L, lunet_op_slice_rows(ctx, x, lua_tointeger(L, 2) - 1, luaL_checkinteger(L, 3)));
    return 1;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  int64_t first = luaL_optinteger(L, 3, 1),
          count = luaL_optinteger(L, 4, (lua_Integer)luaL_len(L, 2) - first + 1);
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)(count > 0 ? count : 1));
  if (!idx) return luaL_error(L, "out of host memory");
  for (int64_t i = 0; i < count; i++) {
    lua_geti(L, 2, first + i);
    idx[i] = lua_tointeger(L, -1) - 1;
    lua_pop(L, 1);
  }
  lunet_tensor *y = lunet_op_gather_rows(ctx, x, idx, count);
  free(idx);
  lunetL_pushtensor(L, y);
  return 1;
}

/* ---- checkpoints ---- */

static int l_save_safetensors(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)luaL_len(L, 2);
  const char **names = calloc((size_t)n + 1, sizeof *names);
  lunet_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
  const char *keys[256], *values[256];
  int nmeta = 0;
  if (!names || !ts) {
    free(names);
    free(ts);
    return luaL_error(L, "out of host memory");
  }
  for (int i = 0; i < n; i++) {
    lua_geti(L, 2, i + 1);
    lua_getfield(L, -1, "name");
    names[i] = lua_tostring(L, -1);
    lua_getfield(L, -2, "tensor");
    ts[i] = lunetL_totensor(L, -1);
    lua_pop(L, 3); /* the table in arg 2 keeps them alive */
    if (!names[i] || !ts[i]) {
      free(names);
      free(ts);
      return luaL_error(L, "entry %d needs a name and a tensor", i + 1);
    }
  }
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3) && nmeta < 256) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
        keys[nmeta] = lua_tostring(L, -2);
        values[nmeta++] = lua_tostring(L, -1);
      }
      lua_pop(L, 1);
    }
  }
  lunet_status s = lunet_safetensors_save(lunetL_ctx(L), path, n, names, ts, nmeta, keys, values);
  free(names);
  free(ts);
  if (s) lunetL_error(L, NULL);
  return 0;
}

/* C.load_safetensors(path) -> { {name=, tensor=}, ... }, metadata */
static int l_load_safetensors(lua_State *L) {
  lunet_safetensors *st = lunet_safetensors_load(lunetL_ctx(L), luaL_checkstring(L, 1));
  if (!st) lunetL_error(L, NULL);
  int n = lunet_safetensors_count(st);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, lunet_safetensors_name(st, i));
    lua_setfield(L, -2, "name");
    lunet_tensor **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = lunet_tensor_retain(lunet_safetensors_tensor(st, i));
    luaL_setmetatable(L, LUNETL_TENSOR);
    lua_setfield(L, -2, "tensor");
    lua_rawseti(L, -2, i + 1);
  }
  lua_newtable(L);
  for (int i = 0; i < lunet_safetensors_meta_count(st); i++) {
    lua_pushstring(L, lunet_safetensors_meta_value(st, i));
    lua_setfield(L, -2, lunet_safetensors_meta_key(st, i));
  }
  lunet_safetensors_free(st);
  return 2;
}

static int l_load_plugin(lua_State *L) {
  if (lunet_load_plugin(lunetL_ctx(L), luaL_checkstring(L, 1))) lunetL_error(L, "load_plugin");
  return 0;
}

static const luaL_Reg functions[] = {{"layer_types", l_layer_types},
                                     {"layer_tests", l_layer_tests},
                                     {"layer_new", l_layer_new},
                                     {"layer_build", l_layer_build},
                                     {"layer_shapes", l_layer_shapes},
                                     {"layer_call", l_layer_call},
                                     {"layer_weights", l_layer_weights},
                                     {"layer_activation", l_layer_activation},
                                     {"layer_to", l_layer_to},
                                     {"step", l_step},
                                     {"predict", l_predict},
                                     {"sgd_update", l_sgd_update},
                                     {"adam_update", l_adam_update},
                                     {"rmsprop_update", l_rmsprop_update},
                                     {"assign", l_assign},
                                     {"apply_updates", l_apply_updates},
                                     {"take_rows", l_take_rows},
                                     {"save_safetensors", l_save_safetensors},
                                     {"load_safetensors", l_load_safetensors},
                                     {"load_plugin", l_load_plugin},
                                     {NULL, NULL}};

void lunetL_open_model(lua_State *L) {
  if (luaL_newmetatable(L, LAYER_MT)) {
    lua_pushcfunction(L, layer_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
}
