/*
 * Text helpers of nn.text where a Lua loop would be slow on a text of
 * megabytes: the characters of a UTF-8 text, a text as character ids, and
 * language-modelling windows over an id sequence.
 *
 * Characters are Unicode code points of UTF-8; a byte that does not start
 * a valid sequence counts as the code point of its value (Latin-1), so any
 * file can be read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"

/* The code point at s[*i] (advancing *i); Latin-1 for an invalid byte. */
static uint32_t next_char(const unsigned char *s, size_t n, size_t *i) {
  unsigned char c = s[*i];
  int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
  uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
  bool ok = len > 0 && *i + (size_t)len <= n;
  for (int k = 1; ok && k < len; k++) {
    ok = (s[*i + (size_t)k] & 0xC0) == 0x80;
    cp = (cp << 6) | (s[*i + (size_t)k] & 0x3F);
  }
  /* overlong forms and surrogates are invalid too */
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (ok && (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
  if (!ok) {
    (*i)++;
    return c;
  }
  *i += (size_t)len;
  return cp;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* A character's code point and id, sorted by code point for bsearch. */
typedef struct code_id {
  uint32_t code;
  int32_t id;
} code_id;

/* C.text_chars(text) -> sorted list of its distinct code points */
static int l_text_chars(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  /* a bitmap over the whole code space: 136 KB */
  unsigned char *seen = calloc(0x110000 / 8 + 1, 1);
  if (!seen) return luaL_error(L, "out of memory reading the characters of a text");
  for (size_t i = 0; i < n;) {
    uint32_t cp = next_char(s, n, &i);
    seen[cp >> 3] |= (unsigned char)(1u << (cp & 7));
  }
  lua_newtable(L);
  lua_Integer k = 0;
  for (uint32_t cp = 0; cp < 0x110000; cp++)
    if (seen[cp >> 3] & (1u << (cp & 7))) {
      lua_pushinteger(L, cp);
      lua_rawseti(L, -2, ++k);
    }
  free(seen);
  return 1;
}

/* C.text_encode(text, codes, ids, unknown_id) -> int32 tensor of ids on
 * the CPU: the character codes[k] becomes ids[k]; a character not in codes
 * becomes unknown_id, or is an error naming it when that is nil. */
static int l_text_encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  bool has_unknown = !lua_isnoneornil(L, 4);
  lua_Integer unknown = has_unknown ? luaL_checkinteger(L, 4) : 0;
  size_t nc = (size_t)luaL_len(L, 2);
  if ((size_t)luaL_len(L, 3) != nc) return luaL_error(L, "text_encode: codes and ids differ in length");
  /* scratch as userdata: the collector frees it if an error is raised */
  code_id *map = lua_newuserdatauv(L, sizeof *map * (nc ? nc : 1), 0);
  int32_t *ids = lua_newuserdatauv(L, sizeof *ids * (n ? n : 1), 0);
  for (size_t k = 0; k < nc; k++) {
    lua_geti(L, 2, (lua_Integer)k + 1);
    lua_geti(L, 3, (lua_Integer)k + 1);
    map[k].code = (uint32_t)lua_tointeger(L, -2);
    map[k].id = (int32_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
  }
  qsort(map, nc, sizeof *map, cmp_u32);
  int64_t count = 0;
  for (size_t i = 0; i < n;) {
    size_t at = i;
    code_id key = {next_char(s, n, &i), 0};
    const code_id *hit = nc ? bsearch(&key, map, nc, sizeof *map, cmp_u32) : NULL;
    if (!hit && !has_unknown) {
      char msg[192];
      snprintf(msg, sizeof msg,
               "the character U+%04X at byte %zu is not in the vocabulary (adapt the tokenizer to this text, "
               "or give it an `unknown` character)",
               (unsigned)key.code, at + 1);
      return luaL_error(L, "%s", msg);
    }
    ids[count++] = hit ? hit->id : (int32_t)unknown;
  }
  int64_t shape[1] = {count};
  lunetL_pushtensor(L, lunet_tensor_from_data_on(lunetL_ctx(L), "cpu", LUNET_I32, 1, shape, ids));
  return 1;
}

/* C.text_windows(ids, seq_len, stride) -> x, y (N, seq_len) int32: window
 * w starts at w * stride; y is x one step later (the next token at every
 * position), so the last window ends one before the text does. */
static int l_text_windows(lua_State *L) {
  lunet_tensor *ids = lunetL_checktensor(L, 1);
  lua_Integer len = luaL_checkinteger(L, 2), stride = luaL_checkinteger(L, 3);
  if (len < 1) return luaL_error(L, "windows: seq_len must be positive, got %I", len);
  if (stride < 1) return luaL_error(L, "windows: stride must be positive, got %I", stride);
  if (lunet_tensor_ndim(ids) != 1 || lunet_tensor_dtype(ids) != LUNET_I32)
    return luaL_error(L, "windows: ids must be a 1-D int32 tensor (a tokenizer's output)");
  const int32_t *v = lunet_tensor_host_data(ids);
  if (!v) return luaL_error(L, "windows: ids must be on the CPU (ids:to(\"cpu\"))");
  int64_t n = lunet_tensor_numel(ids);
  if (n < len + 1)
    return luaL_error(L, "windows: a sequence of %I tokens is too short for windows of %I (it needs %I)",
                      (lua_Integer)n, len, len + 1);
  int64_t count = (n - len - 1) / stride + 1;
  int32_t *x = malloc(sizeof *x * (size_t)(count * len)), *y = malloc(sizeof *y * (size_t)(count * len));
  if (!x || !y) {
    free(x);
    free(y);
    return luaL_error(L, "out of memory for %I windows of %I", (lua_Integer)count, len);
  }
  for (int64_t w = 0; w < count; w++) {
    memcpy(x + w * len, v + w * stride, sizeof *x * (size_t)len);
    memcpy(y + w * len, v + w * stride + 1, sizeof *y * (size_t)len);
  }
  int64_t shape[2] = {count, len};
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *tx = lunet_tensor_from_data_on(ctx, "cpu", LUNET_I32, 2, shape, x);
  free(x);
  if (!tx) {
    free(y);
    return lunetL_error(L, NULL);
  }
  lunetL_pushtensor(L, tx);
  lunet_tensor *ty = lunet_tensor_from_data_on(ctx, "cpu", LUNET_I32, 2, shape, y);
  free(y);
  lunetL_pushtensor(L, ty);
  return 2;
}

static const luaL_Reg functions[] = {
    {"text_chars", l_text_chars}, {"text_encode", l_text_encode}, {"text_windows", l_text_windows}, {NULL, NULL}};

void lunetL_open_text(lua_State *L) { luaL_setfuncs(L, functions, 0); }
