/*
 * Metric objects for nn.metrics (Precision, AUC, ...): a userdata holding a
 * core lunet_metric, made from its spec string ("AUC(curve=PR)"), so the
 * stand-alone object and compile's metric are the same computation.
 */
#include <stdlib.h>

#include "lunet_lua.h"
#include "lunet/model.h"

#define METRIC_MT "lunet.Metric"

static lunet_metric *check_metric(lua_State *L, int arg) {
  lunet_metric **p = luaL_checkudata(L, arg, METRIC_MT);
  if (!*p) luaL_argerror(L, arg, "metric was freed");
  return *p;
}

static int metric_gc(lua_State *L) {
  lunet_metric **p = luaL_checkudata(L, 1, METRIC_MT);
  lunet_metric_free(*p);
  *p = NULL;
  return 0;
}

static void push_list(lua_State *L, const double *v, int n) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

/* C.metric_new(spec) -> metric, its logged name */
static int l_metric_new(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  const char *spec = luaL_checkstring(L, 1);
  lunet_metric_config cfg;
  char name[64];
  if (lunet_metric_parse(ctx, spec, &cfg, name, sizeof name)) return lunetL_error(L, NULL);
  lunet_metric **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  luaL_setmetatable(L, METRIC_MT);
  if (!(*p = lunet_metric_new_config(ctx, name, &cfg))) return lunetL_error(L, NULL);
  lua_pushstring(L, name);
  return 2;
}

/* C.metric_update(m, y_true, y_pred [, sample_weight]) */
static int l_metric_update(lua_State *L) {
  lunet_metric *m = check_metric(L, 1);
  lunet_tensor *y = lunetL_checktensor(L, 2), *p = lunetL_checktensor(L, 3);
  lunet_tensor *w = lua_isnoneornil(L, 4) ? NULL : lunetL_checktensor(L, 4);
  if (lunet_metric_update_weighted(lunetL_ctx(L), m, p, y, w)) return lunetL_error(L, NULL);
  return 0;
}

/* C.metric_result(m) -> a number, or a list of per-class values */
static int l_metric_result(lua_State *L) {
  lunet_metric *m = check_metric(L, 1);
  double one;
  int n = lunet_metric_results(m, &one, 1);
  if (n == 1 && (lunet_metric_config_get(m)->average != LUNET_AVERAGE_NONE ||
                 (lunet_metric_kind_get(m) != LUNET_METRIC_F1 && lunet_metric_kind_get(m) != LUNET_METRIC_R2))) {
    lua_pushnumber(L, one);
    return 1;
  }
  double *v = malloc(sizeof *v * (size_t)n);
  if (!v) return luaL_error(L, "out of host memory");
  lunet_metric_results(m, v, n);
  push_list(L, v, n);
  free(v);
  return 1;
}

static int l_metric_reset(lua_State *L) {
  lunet_metric_reset(check_metric(L, 1));
  return 0;
}

/* C.metric_state(m) -> {sums and counts..., count} */
static int l_metric_state(lua_State *L) {
  lunet_metric *m = check_metric(L, 1);
  int n = lunet_metric_state_vector(m, NULL, 0);
  double *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "out of host memory");
  lunet_metric_state_vector(m, v, n);
  push_list(L, v, n);
  free(v);
  return 1;
}

/* C.metric_set_state(m, {...}) */
static int l_metric_set_state(lua_State *L) {
  lunet_metric *m = check_metric(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)luaL_len(L, 2);
  double *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "out of host memory");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1);
    int ok;
    v[i] = lua_tonumberx(L, -1, &ok);
    lua_pop(L, 1);
    if (!ok) {
      free(v);
      return luaL_argerror(L, 2, "a list of numbers expected");
    }
  }
  lunet_status s = lunet_metric_set_state_vector(lunetL_ctx(L), m, v, n);
  free(v);
  if (s) return lunetL_error(L, NULL);
  return 0;
}

/* C.metric_merge(dst, src) */
static int l_metric_merge(lua_State *L) {
  if (lunet_metric_merge(lunetL_ctx(L), check_metric(L, 1), check_metric(L, 2))) return lunetL_error(L, NULL);
  return 0;
}

static const luaL_Reg functions[] = {{"metric_new", l_metric_new},       {"metric_update", l_metric_update},
                                     {"metric_result", l_metric_result}, {"metric_reset", l_metric_reset},
                                     {"metric_state", l_metric_state},   {"metric_set_state", l_metric_set_state},
                                     {"metric_merge", l_metric_merge},   {NULL, NULL}};

void lunetL_open_metric(lua_State *L) {
  if (luaL_newmetatable(L, METRIC_MT)) {
    lua_pushcfunction(L, metric_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
}
