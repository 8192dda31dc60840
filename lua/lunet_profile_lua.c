/*
 * The profiler's binding (nn.profile is lua/lunet/profile.lua):
 * profile_start(), profile_events() -> {{name, kind, ts, dur, flops}, ...}
 * (microseconds from the start) and the count of events not kept,
 * profile_stop(); backend_stats(name), nn.backend_stats.
 */
#include "lunet_lua.h"
#include "lunet/backend.h"

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

/* backend_stats(name) -> {dispatches =, barriers =, ..., gemm = {{op, m, n, k,
 * workgroups, flops}, ...} (the most recent, oldest first), gemm_total}. */
static int l_backend_stats(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lunet_backend_stats *st = lua_newuserdatauv(L, sizeof *st, 0); /* 12 KB: not on the C stack */
  if (lunet_get_backend_stats(lunetL_ctx(L), name, st)) return lunetL_error(L, NULL);
  lua_createtable(L, 0, 16);
  const struct {
    const char *key;
    uint64_t v;
  } fields[] = {{"dispatches", st->dispatches},   {"barriers", st->barriers},
                {"submits", st->submits},         {"waits", st->waits},
                {"waits_read", st->waits_read},   {"waits_sync", st->waits_sync},
                {"descriptor_writes", st->descriptor_writes}, {"pipelines", st->pipelines},
                {"allocations", st->allocations}, {"bytes_up", st->bytes_up},
                {"bytes_down", st->bytes_down},   {"bytes_copied", st->bytes_copied},
                {"pipeline_cache_bytes", st->pipeline_cache_bytes},
                {"gemm_total", st->gemm_total},   {"record_ns", st->record_ns},
                {"wait_ns", st->wait_ns}};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    lua_pushinteger(L, (lua_Integer)fields[i].v);
    lua_setfield(L, -2, fields[i].key);
  }
  lua_createtable(L, st->ngemm, 0);
  uint64_t first = st->gemm_total - (uint64_t)st->ngemm;
  for (int i = 0; i < st->ngemm; i++) {
    const lunet_backend_gemm *g = &st->gemm[(first + (uint64_t)i) % LUNET_BACKEND_GEMM_LOG];
    lua_createtable(L, 0, 6);
    lua_pushstring(L, g->op);
    lua_setfield(L, -2, "op");
    lua_pushinteger(L, (lua_Integer)g->m);
    lua_setfield(L, -2, "m");
    lua_pushinteger(L, (lua_Integer)g->n);
    lua_setfield(L, -2, "n");
    lua_pushinteger(L, (lua_Integer)g->k);
    lua_setfield(L, -2, "k");
    lua_pushinteger(L, (lua_Integer)g->workgroups);
    lua_setfield(L, -2, "workgroups");
    lua_pushnumber(L, g->flops);
    lua_setfield(L, -2, "flops");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "gemm");
  return 1;
}

void lunetL_open_profile(lua_State *L) {
  static const luaL_Reg fns[] = {{"backend_stats", l_backend_stats},
                                 {"profile_start", l_profile_start},
                                 {"profile_events", l_profile_events},
                                 {"profile_stop", l_profile_stop},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
