/*
 * Layers, row gathering and checkpoints for lunet's Lua side (models and
 * optimizers are in lunet_train_lua.c).
 */
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"
#include "lunet/checkpoint.h"
#include "lunet/layer.h"

#define LAYER_MT "lunet.Layer"

lunet_layer *lunetL_checklayer(lua_State *L, int arg) {
  lunet_layer **p = luaL_checkudata(L, arg, LAYER_MT);
  if (!*p) luaL_argerror(L, arg, "layer was freed");
  return *p;
}

static void push_value(lua_State *L, lunet_arg_type t, const lunet_arg_value *v);

void lunetL_pushlayer(lua_State *L, lunet_layer *l) {
  lunet_layer **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = lunet_layer_retain(l);
  luaL_setmetatable(L, LAYER_MT);
}

/* C.layer_args(layer) -> {name = value, ...} (the arguments that are set), type name */
static int l_layer_args(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  const lunet_layer_type *t = lunet_layer_type_get(l);
  lua_createtable(L, 0, t->nargs);
  for (int i = 0; i < t->nargs; i++) {
    lunet_arg_value v;
    if (!lunet_layer_arg_value(l, i, &v)) continue;
    push_value(L, t->args[i].type, &v);
    lua_setfield(L, -2, t->args[i].name);
  }
  lua_pushstring(L, t->name);
  return 2;
}

static int layer_gc(lua_State *L) {
  lunet_layer **p = luaL_checkudata(L, 1, LAYER_MT);
  lunet_layer_release(*p);
  *p = NULL;
  return 0;
}

static const char *arg_type_name(lunet_arg_type t) {
  static const char *const names[] = {"int",  "float", "bool",        "string",
                                      "int2", "shape", "regularizer", "range", "sides"};
  return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* A typed argument value as the Lua value a user would write. */
static void push_value(lua_State *L, lunet_arg_type t, const lunet_arg_value *v) {
  switch (t) {
  case LUNET_ARG_INT:
    lua_pushinteger(L, v->i);
    return;
  case LUNET_ARG_FLOAT:
    lua_pushnumber(L, v->f);
    return;
  case LUNET_ARG_BOOL:
    lua_pushboolean(L, v->b);
    return;
  case LUNET_ARG_STRING:
    if (v->s)
      lua_pushstring(L, v->s);
    else
      lua_pushnil(L);
    return;
  case LUNET_ARG_SIDES:
    if (v->n == 4) { /* {{top, bottom}, {left, right}} */
      lua_createtable(L, 2, 0);
      for (int k = 0; k < 2; k++) {
        lua_createtable(L, 2, 0);
        for (int i = 0; i < 2; i++) {
          lua_pushinteger(L, v->v[2 * k + i]);
          lua_rawseti(L, -2, i + 1);
        }
        lua_rawseti(L, -2, k + 1);
      }
      return;
    }
    __attribute__((fallthrough));
  case LUNET_ARG_INT2:
    if (v->n == 1) {
      lua_pushinteger(L, v->v[0]);
      return;
    }
    __attribute__((fallthrough)); /* a pair is a list */
  case LUNET_ARG_SHAPE:
    lua_createtable(L, v->n, 0);
    for (int i = 0; i < v->n && i < LUNET_MAX_DIMS; i++) {
      lua_pushinteger(L, v->v[i]);
      lua_rawseti(L, -2, i + 1);
    }
    return;
  case LUNET_ARG_REGULARIZER:
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, v->f);
    lua_setfield(L, -2, "l1");
    lua_pushnumber(L, v->f2);
    lua_setfield(L, -2, "l2");
    return;
  case LUNET_ARG_RANGE:
    if (v->n == 1) {
      lua_pushnumber(L, v->f);
      return;
    }
    lua_createtable(L, 2, 0);
    lua_pushnumber(L, v->f);
    lua_rawseti(L, -2, 1);
    lua_pushnumber(L, v->f2);
    lua_rawseti(L, -2, 2);
    return;
  }
  lua_pushnil(L);
}

/* How help() shows a default: "3", "true", "\"valid\"", "{2, 2}", "nil". */
static void push_default_text(lua_State *L, const lunet_arg_schema *s) {
  const lunet_arg_value *v = &s->def;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (s->presence == LUNET_ARG_NIL || (s->type == LUNET_ARG_STRING && !v->s)) {
    luaL_addstring(&b, "nil");
  } else if (s->type == LUNET_ARG_STRING) {
    luaL_addchar(&b, '"');
    luaL_addstring(&b, v->s);
    luaL_addchar(&b, '"');
  } else if (s->type == LUNET_ARG_FLOAT) {
    lua_pushnumber(L, v->f);
    luaL_addvalue(&b); /* Lua's own number format */
  } else if (s->type == LUNET_ARG_INT) {
    lua_pushinteger(L, v->i);
    luaL_addvalue(&b);
  } else if (s->type == LUNET_ARG_BOOL) {
    luaL_addstring(&b, v->b ? "true" : "false");
  } else if (((s->type == LUNET_ARG_INT2 || s->type == LUNET_ARG_SIDES) && v->n != 1) ||
             s->type == LUNET_ARG_SHAPE) { /* a SIDES default of four shows flat */
    luaL_addchar(&b, '{');
    for (int i = 0; i < v->n && i < LUNET_MAX_DIMS; i++) {
      if (i) luaL_addstring(&b, ", ");
      lua_pushinteger(L, v->v[i]);
      luaL_addvalue(&b);
    }
    luaL_addchar(&b, '}');
  } else if (s->type == LUNET_ARG_INT2 || s->type == LUNET_ARG_SIDES) {
    lua_pushinteger(L, v->v[0]);
    luaL_addvalue(&b);
  } else if (s->type == LUNET_ARG_RANGE) {
    lua_pushnumber(L, v->f);
    luaL_addvalue(&b);
  } else {
    luaL_addstring(&b, "l1_l2(...)");
  }
  luaL_pushresult(&b);
}

/* C.layer_types() -> { name = {name=, doc=, plugin=, positional=, min_inputs=, max_inputs=,
 * noutputs=, args={ {name=, type=, default=, default_text=, required=, doc=, choices=} }} } */
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
    lua_pushinteger(L, t->min_inputs > 0 ? t->min_inputs : 1);
    lua_setfield(L, -2, "min_inputs");
    lua_pushinteger(L, t->max_inputs > 0 ? t->max_inputs : (t->min_inputs > 0 ? t->min_inputs : 1));
    lua_setfield(L, -2, "max_inputs");
    lua_pushinteger(L, t->noutputs > 0 ? t->noutputs : 1);
    lua_setfield(L, -2, "noutputs");
    lua_createtable(L, t->nargs, 0);
    for (int a = 0; a < t->nargs; a++) {
      const lunet_arg_schema *s = &t->args[a];
      lua_createtable(L, 0, 5);
      lua_pushstring(L, s->name);
      lua_setfield(L, -2, "name");
      lua_pushstring(L, arg_type_name(s->type));
      lua_setfield(L, -2, "type");
      if (s->presence == LUNET_ARG_REQUIRED) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "required");
      } else {
        if (s->presence == LUNET_ARG_DEFAULT) {
          push_value(L, s->type, &s->def);
          lua_setfield(L, -2, "default");
        }
        push_default_text(L, s);
        lua_setfield(L, -2, "default_text");
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
  case LUNET_ARG_SHAPE:
  case LUNET_ARG_SIDES: {
    int64_t v[LUNET_MAX_DIMS];
    int top = lua_gettop(L), n = 0;
    if (s->type == LUNET_ARG_SIDES && lua_istable(L, top) && lua_geti(L, top, 1) == LUA_TTABLE) {
      lua_pop(L, 1); /* {{top, bottom}, {left, right}} */
      for (int k = 1; k <= 2; k++) {
        lua_geti(L, top, k);
        if (!lua_istable(L, -1) || read_ints(L, lua_gettop(L), v + n, tn, s->name) != 2)
          luaL_error(L, "%s: %s takes {{top, bottom}, {left, right}}", tn, s->name);
        lua_pop(L, 1);
        n += 2;
      }
    } else {
      if (s->type == LUNET_ARG_SIDES && lua_istable(L, top)) lua_pop(L, 1);
      n = read_ints(L, top, v, tn, s->name);
    }
    return lunet_layer_set_ints(l, s->name, n, v);
  }
  case LUNET_ARG_RANGE:
    if (lua_isnumber(L, -1)) return lunet_layer_set_range(l, s->name, 1, lua_tonumber(L, -1), 0);
    lua_geti(L, -1, 1);
    lua_geti(L, -2, 2);
    {
      lunet_status st = lunet_layer_set_range(l, s->name, 2, lua_tonumber(L, -2), lua_tonumber(L, -1));
      lua_pop(L, 2);
      return st;
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

static void push_shape(lua_State *L, const lunet_shape *s) {
  lua_createtable(L, s->ndim, 0);
  for (int i = 0; i < s->ndim; i++) {
    lua_pushinteger(L, s->dims[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static void read_shape(lua_State *L, int idx, lunet_shape *s, const char *tname) {
  s->ndim = read_ints(L, idx, s->dims, tname, "input shape");
}

/* C.layer_build(layer, shape) -> output shape, or C.layer_build(layer,
 * {shape1, shape2, ...}) for several inputs -> list of output shapes. */
static int l_layer_build(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *tn = lunet_layer_type_get(l)->name;
  lunet_shape in[LUNET_LAYER_MAX_INPUTS];
  lua_geti(L, 2, 1);
  bool several = lua_istable(L, -1);
  lua_pop(L, 1);
  int nin = 1;
  if (several) {
    nin = (int)luaL_len(L, 2);
    if (nin > LUNET_LAYER_MAX_INPUTS) luaL_error(L, "%s: at most %d inputs", tn, LUNET_LAYER_MAX_INPUTS);
    for (int i = 0; i < nin; i++) {
      lua_geti(L, 2, i + 1);
      read_shape(L, lua_gettop(L), &in[i], tn);
      lua_pop(L, 1);
    }
  } else {
    read_shape(L, 2, &in[0], tn);
  }
  if (lunet_layer_build(lunetL_ctx(L), l, nin, in)) lunetL_error(L, NULL);
  int nout = lunet_layer_output_count(l);
  if (!several && nout == 1) {
    lunet_shape o = lunet_layer_output_shape(l, 0);
    push_shape(L, &o);
    return 1;
  }
  lua_createtable(L, nout, 0);
  for (int j = 0; j < nout; j++) {
    lunet_shape o = lunet_layer_output_shape(l, j);
    push_shape(L, &o);
    lua_rawseti(L, -2, j + 1);
  }
  return 1;
}

/* C.layer_set_arg(layer, name, value): changes an argument before the layer
 * is built (a call option that Keras takes per call, fixed at the first). */
static int l_layer_set_arg(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const lunet_layer_type *t = lunet_layer_type_get(l);
  const lunet_arg_schema *s = NULL;
  for (int i = 0; i < t->nargs && !s; i++)
    if (!strcmp(t->args[i].name, name)) s = &t->args[i];
  if (!s) return luaL_error(L, "%s has no argument '%s'", t->name, name);
  if (lunet_layer_built(l)) return luaL_error(L, "%s: '%s' cannot change once the layer is built", lunet_layer_name(l), name);
  lua_settop(L, 3);
  if (set_arg(L, l, s)) lunetL_error(L, NULL);
  return 0;
}

static int l_layer_built(lua_State *L) {
  lua_pushboolean(L, lunet_layer_built(lunetL_checklayer(L, 1)));
  return 1;
}

static int l_layer_input_count(lua_State *L) {
  lua_pushinteger(L, lunet_layer_input_count(lunetL_checklayer(L, 1)));
  return 1;
}

/* A layer call's inputs at argument 2: a tensor or a list of them (which
 * keeps them alive); their count. */
static int layer_inputs(lua_State *L, lunet_tensor **x) {
  if ((x[0] = lunetL_totensor(L, 2)) != NULL) return 1;
  luaL_checktype(L, 2, LUA_TTABLE);
  int nin = (int)luaL_len(L, 2);
  if (nin > LUNET_LAYER_MAX_INPUTS) luaL_error(L, "at most %d inputs", LUNET_LAYER_MAX_INPUTS);
  for (int i = 0; i < nin; i++) {
    lua_geti(L, 2, i + 1);
    x[i] = lunetL_checktensor(L, -1);
    lua_pop(L, 1);
  }
  return nin;
}

/* C.layer_call(layer, x or {x1, x2, ...}, training, skip_activation) -> outputs */
static int l_layer_call(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS], *y[LUNET_LAYER_MAX_OUTPUTS];
  int nin = layer_inputs(L, x);
  if (lunet_layer_apply(lunetL_ctx(L), l, NULL, nin, x, NULL, lua_toboolean(L, 3), lua_toboolean(L, 4),
                        y, NULL))
    lunetL_error(L, NULL);
  int nout = lunet_layer_output_count(l);
  for (int j = 0; j < nout; j++) {
    lunet_tensor **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = y[j];
    luaL_setmetatable(L, LUNETL_TENSOR);
  }
  return nout;
}

/* C.layer_call_masked(layer, x or {x1, ...}, training, skip_activation,
 * {mask1 or false, ...}) -> {outputs}, {output masks or false}: a direct
 * call that takes its inputs' padding masks and gives its outputs' (what
 * a model's graph passes between layers; Keras's eager _keras_mask). */
static int l_layer_call_masked(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS], *y[LUNET_LAYER_MAX_OUTPUTS];
  lunet_tensor *m[LUNET_LAYER_MAX_INPUTS] = {0}, *mo[LUNET_LAYER_MAX_OUTPUTS] = {0};
  int nin = layer_inputs(L, x);
  luaL_checktype(L, 5, LUA_TTABLE);
  bool any = false;
  for (int i = 0; i < nin; i++) {
    lua_geti(L, 5, i + 1);
    m[i] = lua_toboolean(L, -1) ? lunetL_checktensor(L, -1) : NULL;
    any |= m[i] != NULL;
    lua_pop(L, 1); /* the table keeps it alive */
  }
  if (lunet_layer_apply(lunetL_ctx(L), l, NULL, nin, x, any ? m : NULL, lua_toboolean(L, 3), lua_toboolean(L, 4),
                        y, mo))
    lunetL_error(L, NULL);
  int nout = lunet_layer_output_count(l);
  lua_createtable(L, nout, 0);
  for (int j = 0; j < nout; j++) {
    lunetL_pushtensor(L, y[j]);
    lua_rawseti(L, -2, j + 1);
  }
  lua_createtable(L, nout, 0);
  for (int j = 0; j < nout; j++) {
    if (mo[j]) lunetL_pushtensor(L, mo[j]);
    else lua_pushboolean(L, 0);
    lua_rawseti(L, -2, j + 1);
  }
  return 2;
}

/* C.layer_weights(layer) -> { {name=, tensor=, trainable=}, ... } */
static int l_layer_weights(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
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

static int l_layer_trainable(lua_State *L) {
  lua_pushboolean(L, lunet_layer_trainable(lunetL_checklayer(L, 1)));
  return 1;
}

static int l_layer_set_trainable(lua_State *L) {
  luaL_checktype(L, 2, LUA_TBOOLEAN);
  lunet_layer_set_trainable(lunetL_checklayer(L, 1), lua_toboolean(L, 2));
  return 0;
}

/* C.layer_policy(layer) -> "float32" | "mixed_bfloat16" */
static int l_layer_policy(lua_State *L) {
  lua_pushstring(L, lunet_precision_policy_name(lunet_layer_precision(lunetL_checklayer(L, 1))));
  return 1;
}

/* C.layer_set_policy(layer, name): Keras's dtype= argument. */
static int l_layer_set_policy(lua_State *L) {
  lunet_layer *l = lunetL_checklayer(L, 1);
  const char *name = luaL_checkstring(L, 2);
  if (!strcmp(name, "float32") || !strcmp(name, "mixed_bfloat16"))
    lunet_layer_set_precision(l, name[0] == 'm' ? LUNET_PRECISION_BFLOAT16 : LUNET_PRECISION_FLOAT32);
  else
    return luaL_error(L, "%s: unknown dtype '%s' (valid: float32, mixed_bfloat16)", lunet_layer_name(l), name);
  return 0;
}

/* C.set_policy(name), C.policy() -> name: the policy new layers take. */
static int l_set_policy(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_set_policy(ctx, luaL_checkstring(L, 1))) lunetL_error(L, NULL);
  return 0;
}
static int l_policy(lua_State *L) {
  lua_pushstring(L, lunet_get_policy(lunetL_ctx(L)));
  return 1;
}

/* C.backend_bf16(name) -> 1 native, 0 emulated, -1 none */
static int l_backend_bf16(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  int r = lunet_backend_bf16(ctx, luaL_checkstring(L, 1));
  if (r < 0 && lunet_ctx_status(ctx)) lunetL_error(L, NULL);
  lua_pushinteger(L, r);
  return 1;
}

/* C.layer_set_weight(layer, i, t), 1-based i: t becomes weight i. */
static int l_layer_set_weight(lua_State *L) {
  if (lunet_layer_set_weight_tensor(lunetL_ctx(L), lunetL_checklayer(L, 1), (int)luaL_checkinteger(L, 2) - 1,
                                    lunetL_checktensor(L, 3)))
    return lunetL_error(L, NULL);
  return 0;
}

static int l_layer_to(lua_State *L) {
  if (lunet_layer_to(lunetL_ctx(L), lunetL_checklayer(L, 1), luaL_checkstring(L, 2)))
    lunetL_error(L, NULL);
  return 0;
}

static int l_layer_activation(lua_State *L) {
  const char *a = lunet_layer_activation(lunetL_checklayer(L, 1));
  if (a)
    lua_pushstring(L, a);
  else
    lua_pushnil(L);
  return 1;
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

/* "units = 3, padding = \"same\"": a test case's arguments as Lua text. */
static void push_case_args(lua_State *L, const lunet_layer_type *t, const lunet_layer_test *c) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int a = 0; a < c->nargs; a++) {
    const lunet_arg_schema *s = NULL;
    for (int k = 0; k < t->nargs; k++)
      if (!strcmp(t->args[k].name, c->args[a].name)) s = &t->args[k];
    if (a) luaL_addstring(&b, ", ");
    luaL_addstring(&b, c->args[a].name);
    luaL_addstring(&b, " = ");
    if (!s) {
      luaL_addstring(&b, "?");
      continue;
    }
    lunet_arg_schema shown = *s;
    shown.presence = LUNET_ARG_DEFAULT;
    shown.def = c->args[a].value;
    push_default_text(L, &shown);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* C.check_layer(type) -> { {test=, args=, training=, max_error=, tolerance=, ok=, error=,
 * backends = {name = {max_diff=, ok=, error=}}}, ... }: lunet_check_layer_type's results,
 * one entry per test case and mode. */
static int l_check_layer(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  const char *name = luaL_checkstring(L, 1);
  const lunet_layer_type *t = lunet_layer_type_find(ctx, name);
  if (!t) lunetL_error(L, NULL);
  int max = 2 * t->ntests * (1 + LUNET_MAX_DEVICES);
  lunet_check_result *r = lua_newuserdatauv(L, sizeof *r * (size_t)(max ? max : 1), 0);
  int n = lunet_check_layer_type(ctx, name, r, max);
  if (n < 0) lunetL_error(L, NULL);
  lua_newtable(L);
  int entry = 0;
  for (int k = 0; k < n && k < max; k++) {
    if (r[k].backend[0] == '\0') {
      lua_createtable(L, 0, 9);
      lua_pushinteger(L, r[k].test + 1);
      lua_setfield(L, -2, "test");
      push_case_args(L, t, &t->tests[r[k].test]);
      lua_setfield(L, -2, "args");
      lua_pushboolean(L, r[k].training);
      lua_setfield(L, -2, "training");
      lua_pushnumber(L, r[k].max_error);
      lua_setfield(L, -2, "max_error");
      lua_pushnumber(L, r[k].tolerance);
      lua_setfield(L, -2, "tolerance");
      lua_pushboolean(L, r[k].ok);
      lua_setfield(L, -2, "ok");
      if (r[k].error[0]) {
        lua_pushstring(L, r[k].error);
        lua_setfield(L, -2, "error");
      }
      lua_newtable(L);
      lua_setfield(L, -2, "backends");
      lua_rawseti(L, -2, ++entry);
      continue;
    }
    lua_geti(L, -1, entry); /* the case this comparison belongs to */
    lua_getfield(L, -1, "backends");
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, r[k].max_diff);
    lua_setfield(L, -2, "max_diff");
    lua_pushboolean(L, r[k].ok);
    lua_setfield(L, -2, "ok");
    if (r[k].error[0]) {
      lua_pushstring(L, r[k].error);
      lua_setfield(L, -2, "error");
    }
    lua_setfield(L, -2, r[k].backend);
    lua_pop(L, 1);
    if (!r[k].ok) {
      lua_pushboolean(L, 0);
      lua_setfield(L, -2, "ok");
    }
    lua_pop(L, 1);
  }
  return 1;
}

static const luaL_Reg functions[] = {{"check_layer", l_check_layer},
                                     {"layer_args", l_layer_args},
                                     {"layer_trainable", l_layer_trainable},
                                     {"layer_set_trainable", l_layer_set_trainable},
                                     {"layer_policy", l_layer_policy},
                                     {"layer_set_policy", l_layer_set_policy},
                                     {"set_policy", l_set_policy},
                                     {"policy", l_policy},
                                     {"backend_bf16", l_backend_bf16},
                                     {"layer_types", l_layer_types},
                                     {"layer_new", l_layer_new},
                                     {"layer_build", l_layer_build},
                                     {"layer_call", l_layer_call},
                                     {"layer_set_arg", l_layer_set_arg},
                                     {"layer_call_masked", l_layer_call_masked},
                                     {"layer_built", l_layer_built},
                                     {"layer_input_count", l_layer_input_count},
                                     {"layer_weights", l_layer_weights},
                                     {"layer_activation", l_layer_activation},
                                     {"layer_to", l_layer_to},
                                     {"layer_set_weight", l_layer_set_weight},
                                     {"assign", l_assign},
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
