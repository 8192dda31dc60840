/*
 * The profiler's binding (nn.profile is lua/lunet/profile.lua):
 * profile_start(), profile_events() -> {{name, kind, ts, dur, flops}, ...}
 * (microseconds from the start) and the count of events not kept,
 * profile_stop().
 */
#include "lunet_lua.h"

static int l_profile_start(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_profile_start(ctx)) return lunetL_error(L, NULL);
  return 0;
}

static int l_profile_events(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  int64_t n = lunet_profile_count(ctx);
  const lunet_profile_event *ev = lunet_profile_events(ctx);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 5);
    lua_pushstring(L, ev[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, ev[i].kind);
    lua_setfield(L, -2, "kind");
    lua_pushnumber(L, ev[i].start_us);
    lua_setfield(L, -2, "ts");
    lua_pushnumber(L, ev[i].duration_us);
    lua_setfield(L, -2, "dur");
    lua_pushnumber(L, ev[i].flops);
    lua_setfield(L, -2, "flops");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_pushinteger(L, (lua_Integer)lunet_profile_dropped(ctx));
  return 2;
}

static int l_profile_stop(lua_State *L) {
  lunet_profile_stop(lunetL_ctx(L));
  return 0;
}

void lunetL_open_profile(lua_State *L) {
  static const luaL_Reg fns[] = {{"profile_start", l_profile_start},
                                 {"profile_events", l_profile_events},
                                 {"profile_stop", l_profile_stop},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
