/*
 * JSON for model configs, through cJSON: C.json_encode(value) and
 * C.json_decode(text, what).  Decoding never runs code and bounds what it
 * builds (text size, nesting depth, no nulls); a hostile config is an error
 * that names what is wrong.  The cJSON tree being built or read sits in a
 * userdata box on the Lua stack, so a Lua error midway frees it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lunet/json_number.h"
#include "lunet_lua.h"

#define JSON_BOX "lunet.JSON"
#define MAX_DEPTH 32
#define MAX_TEXT ((size_t)64 << 20) /* bytes */

static int box_gc(lua_State *L) {
  cJSON **p = luaL_checkudata(L, 1, JSON_BOX);
  cJSON_Delete(*p);
  *p = NULL;
  return 0;
}

static cJSON **new_box(lua_State *L) {
  cJSON **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = NULL;
  if (luaL_newmetatable(L, JSON_BOX)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return p;
}

/* Pushes the Lua value of JSON item j, `depth` levels down. */
static void push_json(lua_State *L, const cJSON *j, int depth, const char *what) {
  if (depth > MAX_DEPTH) luaL_error(L, "%s: nested deeper than %d levels", what, MAX_DEPTH);
  luaL_checkstack(L, 4, "model config");
  if (cJSON_IsBool(j)) {
    lua_pushboolean(L, cJSON_IsTrue(j));
  } else if (cJSON_IsNumber(j)) {
    double v = j->valuedouble;
    if (!isfinite(v)) luaL_error(L, "%s: a number is out of range", what);
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
      lua_pushinteger(L, (lua_Integer)v);
    else
      lua_pushnumber(L, v);
  } else if (cJSON_IsString(j)) {
    lua_pushstring(L, j->valuestring);
  } else if (cJSON_IsArray(j)) {
    lua_createtable(L, cJSON_GetArraySize(j), 0);
    lua_Integer i = 0;
    for (const cJSON *c = j->child; c; c = c->next) {
      push_json(L, c, depth + 1, what);
      lua_rawseti(L, -2, ++i);
    }
  } else if (cJSON_IsObject(j)) {
    lua_newtable(L);
    for (const cJSON *c = j->child; c; c = c->next) {
      push_json(L, c, depth + 1, what);
      lua_setfield(L, -2, c->string);
    }
  } else {
    luaL_error(L, "%s: null is not allowed", what);
  }
}

/* C.json_decode(text, what) -> value; errors begin with `what`. */
static int l_json_decode(lua_State *L) {
  size_t n;
  const char *text = luaL_checklstring(L, 1, &n);
  const char *what = luaL_optstring(L, 2, "JSON");
  if (n > MAX_TEXT) return luaL_error(L, "%s: the text is larger than 64 MiB", what);
  cJSON **box = new_box(L);
  const char *end = NULL;
  *box = cJSON_ParseWithLengthOpts(text, n, &end, false);
  while (*box && end < text + n && strchr(" \t\r\n", *end)) end++;
  if (!*box || end != text + n)
    return luaL_error(L, "%s: not valid JSON, or nested too deeply (at byte %d of %d)", what,
                      end ? (int)(end - text) : -1, (int)n);
  push_json(L, *box, 0, what);
  return 1;
}

/* A table is a JSON array when its keys are exactly 1..n (n >= 1). */
static bool is_array(lua_State *L, int idx, lua_Integer n) {
  if (n < 1) return false;
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      return false;
    }
    count++;
  }
  return count == n;
}

static bool is_empty(lua_State *L, int idx) {
  lua_pushnil(L);
  if (!lua_next(L, idx)) return true;
  lua_pop(L, 2);
  return false;
}

/* The JSON of the Lua value at idx, attached to `parent` (under `key` for
 * an object) as soon as it exists, so the box frees it on an error. */
static void add_json(lua_State *L, int idx, cJSON *parent, const char *key, int depth) {
  if (depth > MAX_DEPTH) luaL_error(L, "a model config nested deeper than %d levels", MAX_DEPTH);
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, "model config");
  cJSON *item = NULL;
  switch (lua_type(L, idx)) {
  case LUA_TBOOLEAN:
    item = cJSON_CreateBool(lua_toboolean(L, idx));
    break;
  case LUA_TNUMBER: {
    double v = lua_tonumber(L, idx);
    if (!isfinite(v)) luaL_error(L, "cannot save the number %f in a model config", v);
    char text[LUNET_JSON_NUMBER_MAX]; /* exact: cJSON's printer rounds by an ulp */
    lunet_json_number(v, text);
    item = cJSON_CreateRaw(text);
    break;
  }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (strlen(s) != len) /* JSON text here ends a string at its NUL: the rest was lost on save */
      luaL_error(L, "cannot save the string \"%s\\0...\" in a model config: it holds a NUL character", s);
    item = cJSON_CreateString(s);
    break;
  }
  case LUA_TTABLE: {
    lua_Integer n = luaL_len(L, idx);
    bool array = is_array(L, idx, n) || (n == 0 && is_empty(L, idx));
    item = array ? cJSON_CreateArray() : cJSON_CreateObject();
    break;
  }
  default:
    luaL_error(L, "cannot save a %s in a model config", luaL_typename(L, idx));
  }
  if (!item) luaL_error(L, "out of memory writing a model config");
  if (key)
    cJSON_AddItemToObject(parent, key, item);
  else
    cJSON_AddItemToArray(parent, item);
  if (!lua_istable(L, idx)) return;
  if (cJSON_IsArray(item)) {
    lua_Integer n = luaL_len(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      add_json(L, -1, item, NULL, depth + 1);
      lua_pop(L, 1);
    }
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "a model config's keys must be strings");
    add_json(L, -1, item, lua_tostring(L, -2), depth + 1);
    lua_pop(L, 1);
  }
}

/* C.json_encode(value) -> compact JSON text */
static int l_json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  cJSON **box = new_box(L);
  if (!(*box = cJSON_CreateArray())) return luaL_error(L, "out of memory writing a model config");
  add_json(L, 1, *box, NULL, 0);
  char *text = cJSON_PrintUnformatted(cJSON_GetArrayItem(*box, 0));
  if (!text) return luaL_error(L, "out of memory writing a model config");
  lua_pushstring(L, text);
  cJSON_free(text);
  return 1;
}

static const luaL_Reg functions[] = {
    {"json_decode", l_json_decode}, {"json_encode", l_json_encode}, {NULL, NULL}};

void lunetL_open_json(lua_State *L) { luaL_setfuncs(L, functions, 0); }
