/*
 * Tensor methods that pick, order and accumulate: sin, cos, index_select,
 * gather, triu, tril, topk, argsort, cumsum, and nn.where.  Axes are
 * 1-based as everywhere in Lua (negative from the end); ids and indices
 * are 0-based, as class labels and torch's are, and ops that return
 * indices give int32.
 */
#include <math.h>
#include <stdlib.h>

#include "lunet_lua.h"
#include "lunet/ops.h"

/* A 1-based (or negative) axis argument as a 0-based axis; `dflt` (0-based
 * or negative) when absent. */
static int axis_arg(lua_State *L, int arg, const lunet_tensor *t, int dflt) {
  int nd = lunet_tensor_ndim(t);
  if (lua_isnoneornil(L, arg)) return dflt < 0 ? dflt + nd : dflt;
  lua_Integer a = luaL_checkinteger(L, arg);
  if (a == 0 || a > nd || a < -nd)
    luaL_argerror(L, arg, lua_pushfstring(L, "axis %d is out of range for a tensor of rank %d", (int)a, nd));
  return a > 0 ? (int)a - 1 : (int)a + nd;
}

static int unary(lua_State *L, lunet_unary_op op) {
  lunetL_pushtensor(L, lunet_unary(lunetL_ctx(L), op, lunetL_checktensor(L, 1), 0, 0));
  return 1;
}

static int t_sin(lua_State *L) { return unary(L, LUNET_UNARY_SIN); }
static int t_cos(lua_State *L) { return unary(L, LUNET_UNARY_COS); }

/* Ids from a Lua list or a tensor (int32, or float32 whole numbers), into a
 * userdata array on the stack; returns the count. */
static int64_t read_ids(lua_State *L, int arg, int64_t **out) {
  lunet_tensor *t = lunetL_totensor(L, arg);
  int64_t n;
  if (t) {
    if (lunet_tensor_ndim(t) != 1) luaL_argerror(L, arg, "ids must be a 1-D tensor or a list");
    n = lunet_tensor_numel(t);
  } else {
    luaL_checktype(L, arg, LUA_TTABLE);
    n = (int64_t)luaL_len(L, arg);
  }
  int64_t *ids = lua_newuserdatauv(L, sizeof *ids * (size_t)(n > 0 ? n : 1), 0);
  if (t) {
    float *v = malloc(sizeof *v * (size_t)(n > 0 ? n : 1));
    lunet_ctx *ctx = lunetL_ctx(L);
    lunet_tensor *f = lunet_tensor_dtype(t) == LUNET_F32 ? lunet_tensor_retain(t) : lunet_op_cast(ctx, t, LUNET_F32);
    lunet_status s = !v ? LUNET_ERR_NOMEM : !f ? lunet_ctx_status(ctx) : lunet_tensor_read(ctx, f, v, sizeof *v * (size_t)n);
    lunet_tensor_release(f);
    for (int64_t i = 0; !s && i < n; i++) {
      if (v[i] != floorf(v[i])) {
        double bad = v[i];
        free(v);
        return luaL_error(L, "ids must be whole numbers; entry %d is %f", (int)i + 1, bad);
      }
      ids[i] = (int64_t)v[i];
    }
    free(v);
    if (s == LUNET_ERR_NOMEM) return luaL_error(L, "out of host memory reading ids");
    if (s) lunetL_error(L, NULL);
  } else {
    for (int64_t i = 0; i < n; i++) {
      lua_geti(L, arg, (lua_Integer)i + 1);
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      if (!ok) return luaL_error(L, "ids must be whole numbers; entry %d is %s", (int)i + 1, luaL_typename(L, -1));
      ids[i] = v;
      lua_pop(L, 1);
    }
  }
  *out = ids;
  return n;
}

/* t:index_select(axis, ids) */
static int t_index_select(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int axis = axis_arg(L, 2, t, 0);
  int64_t *ids = NULL;
  int64_t n = read_ids(L, 3, &ids);
  lunetL_pushtensor(L, lunet_index_select(lunetL_ctx(L), t, axis, ids, n));
  return 1;
}

/* t:gather(axis, index) */
static int t_gather(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int axis = axis_arg(L, 2, t, 0);
  lunetL_pushtensor(L, lunet_gather(lunetL_ctx(L), t, axis, lunetL_checktensor(L, 3)));
  return 1;
}

static int triangle(lua_State *L, bool upper) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lunetL_pushtensor(L, lunet_triangle(lunetL_ctx(L), t, luaL_optinteger(L, 2, 0), upper));
  return 1;
}

static int t_triu(lua_State *L) { return triangle(L, true); }
static int t_tril(lua_State *L) { return triangle(L, false); }

/* t:topk(k, axis = -1, largest = true) -> values, indices */
static int t_topk(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lua_Integer k = luaL_checkinteger(L, 2);
  int axis = axis_arg(L, 3, t, -1);
  bool largest = lua_isnoneornil(L, 4) ? true : lua_toboolean(L, 4);
  lunet_tensor *v, *i;
  if (lunet_topk(lunetL_ctx(L), t, k, axis, largest, &v, &i)) lunetL_error(L, NULL);
  lunetL_pushtensor(L, v);
  lunetL_pushtensor(L, i);
  return 2;
}

/* t:argsort(axis = -1, descending = false) */
static int t_argsort(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int axis = axis_arg(L, 2, t, -1);
  lunetL_pushtensor(L, lunet_argsort(lunetL_ctx(L), t, axis, lua_toboolean(L, 3)));
  return 1;
}

/* t:cumsum(axis = 1) */
static int t_cumsum(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lunetL_pushtensor(L, lunet_cumsum(lunetL_ctx(L), t, axis_arg(L, 2, t, 0)));
  return 1;
}

/* A tensor argument, or a number as a scalar tensor on `like`'s backend
 * (kept on the stack in place of the number). */
static lunet_tensor *value_arg(lua_State *L, int arg, const lunet_tensor *like) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lunet_ctx *ctx = lunetL_ctx(L);
    lunet_tensor *s = lunet_op_new(ctx, like, LUNET_F32, 0, NULL);
    if (!s || lunet_op_fill(ctx, s, (float)lua_tonumber(L, arg))) {
      if (s) lunet_tensor_release(s);
      lunetL_error(L, NULL);
    }
    lunetL_pushtensor(L, s);
    lua_replace(L, arg);
  }
  return lunetL_checktensor(L, arg);
}

/* nn.where(cond, a, b): a (a tensor or a number) where cond is nonzero,
 * else b */
static int l_where(lua_State *L) {
  lunet_tensor *c = lunetL_checktensor(L, 1);
  lunet_tensor *a = value_arg(L, 2, c), *b = value_arg(L, 3, c);
  lunetL_pushtensor(L, lunet_where(lunetL_ctx(L), c, a, b));
  return 1;
}

static const luaL_Reg methods[] = {{"sin", t_sin},       {"cos", t_cos},         {"index_select", t_index_select},
                                   {"gather", t_gather}, {"triu", t_triu},       {"tril", t_tril},
                                   {"topk", t_topk},     {"argsort", t_argsort}, {"cumsum", t_cumsum},
                                   {NULL, NULL}};

void lunetL_open_select(lua_State *L) {
  luaL_getmetatable(L, LUNETL_TENSOR);
  lua_getfield(L, -1, "__methods");
  luaL_setfuncs(L, methods, 0);
  lua_pop(L, 2);
  lua_pushcfunction(L, l_where);
  lua_setfield(L, -2, "where");
}
