/* Text: the tokenizers of nn.text as a model file's metadata restores them
 * (a JSON config with a vocabulary, decoded by the binding's JSON reader),
 * and the C text helpers on arbitrary bytes (UTF-8 or not): a tokenizer
 * adapted to the input encodes it and decodes the ids back, and language-
 * modelling windows are cut from the ids.  Lua errors are refusals; only
 * a crash or a sanitizer report is a finding. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "fuzz.h"

int luaopen_lunet_core(lua_State *L);

static const char *const script =
    "local C = require 'lunet.core'\n"
    "local text = require 'lunet.text'\n"
    "local s, fail = ...\n"
    "pcall(function()\n"
    "  local tok = text.from_config(C.json_decode(s, 'the fuzz input'))\n"
    "  if tok.encode then tok:encode('abc ' .. s) else tok({'a b c', 'hello world', s}) end\n"
    "end)\n"
    "pcall(function()\n"
    "  local tok = text.CharTokenizer_new{}\n"
    "  tok:adapt(s)\n"
    "  local ids = tok:encode(s)\n"
    "  if utf8.len(s) and tok:decode(ids) ~= s then fail('CharTokenizer: decode(encode(s)) ~= s') end\n"
    "  text.windows(ids, 1 + #s % 7, 1 + #s % 3)\n"
    "end)\n"
    "pcall(function()\n"
    "  local tv = text.TextVectorization_new{max_tokens = 50, output_sequence_length = 6}\n"
    "  tv:adapt({s, s:upper()})\n"
    "  tv({s})\n"
    "end)\n";

/* A property broken (not a refusal): the harness stops with the message. */
static int fail(lua_State *L) {
  fprintf(stderr, "fuzz_text: %s\n", luaL_checkstring(L, 1));
  abort();
}

static lua_State *state(void) {
  static lua_State *L;
  if (L) return L;
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lunet.core", luaopen_lunet_core, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushstring(L, LUNET_LUA_DIR "/?.lua");
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  if (luaL_loadstring(L, script) != LUA_OK) {
    fprintf(stderr, "fuzz_text: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_text");
  return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = state();
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_text");
  lua_pushlstring(L, (const char *)data, size);
  lua_pushcfunction(L, fail);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_text: the harness itself failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
