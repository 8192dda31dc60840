/*
 * CSV files for nn.utils.read_csv: the file through lunet_csv_read, each
 * column as a float32 tensor when every field is a number (an empty field
 * is NaN) and as a list of strings otherwise.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lunet/csv.h"
#include "lunet_lua.h"

/* pandas's missing-value words (STR_NA_VALUES), read as NaN as pandas does;
 * "nan", "NaN" and their signs strtod takes. */
static const char *const na_words[] = {"NA",   "N/A",  "n/a",      "NULL",     "null",    "None",    "#N/A",
                                       "<NA>", "#NA",  "#N/A N/A", "-1.#IND",  "1.#IND",  "-1.#QNAN", "1.#QNAN",
                                       "-NaN", "-nan", NULL};

/* The whole of s as a decimal number (spaces around allowed); "" and
 * pandas's missing-value words are NaN; hexadecimal is text, as pandas's
 * decimal-only parser leaves it. */
static bool number(const char *s, double *v) {
  while (*s == ' ' || *s == '\t') s++;
  if (!*s) {
    *v = NAN;
    return true;
  }
  size_t len = strlen(s);
  while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r')) len--;
  for (int i = 0; na_words[i]; i++)
    if (strlen(na_words[i]) == len && !strncmp(s, na_words[i], len)) {
      *v = NAN;
      return true;
    }
  const char *digits = s + (*s == '-' || *s == '+');
  if (digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) return false;
  char *end;
  errno = 0;
  *v = strtod(s, &end);
  if (end == s) return false;
  while (*end == ' ' || *end == '\t' || *end == '\r') end++;
  return *end == '\0';
}

/* C.read_csv(path, delimiter, header) -> {columns = {...}, n = rows,
 * data = {[name] = tensor or {strings}}, exact = {[name] = {numbers}}}:
 * exact holds, for a numeric column that float32 does not hold exactly
 * (ids above 2^24, many digits), its values as read (doubles). */
static int l_read_csv(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *delim = luaL_optstring(L, 2, ",");
  luaL_argcheck(L, delim[0] && !delim[1] && delim[0] != '"', 2, "the delimiter is one character, not a quote");
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_csv *c = lunet_csv_read(ctx, path, delim[0], lua_toboolean(L, 3));
  if (!c) return lunetL_error(L, NULL);
  int64_t rows = lunet_csv_rows(c), cols = lunet_csv_cols(c);
  float *v = malloc(sizeof(float) * (size_t)(rows ? rows : 1));
  double *dv = malloc(sizeof(double) * (size_t)(rows ? rows : 1));
  if (!v || !dv) {
    free(v);
    free(dv);
    lunet_csv_free(c);
    return luaL_error(L, "%s: out of memory", path);
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, rows);
  lua_setfield(L, -2, "n");
  lua_newtable(L); /* exact */
  lua_setfield(L, -2, "exact");
  lua_createtable(L, (int)cols, 0); /* columns */
  lua_createtable(L, 0, (int)cols); /* data */
  for (int64_t j = 0; j < cols; j++) {
    const char *name = lunet_csv_name(c, j);
    if (lua_getfield(L, -1, name) != LUA_TNIL) {
      lua_pushfstring(L, "%s: the header names column '%s' twice; rename one (or read with header = false)", path,
                      name); /* before the free: name lives in c */
      free(v);
      free(dv);
      lunet_csv_free(c);
      return lua_error(L);
    }
    lua_pop(L, 1);
    lua_pushstring(L, name);
    lua_rawseti(L, -3, j + 1);
    bool numeric = rows > 0, any = false, exact = true;
    for (int64_t i = 0; numeric && i < rows; i++) {
      numeric = number(lunet_csv_field(c, i, j), &dv[i]);
      v[i] = (float)dv[i];
      any = any || !isnan(dv[i]);
      exact = exact && ((double)v[i] == dv[i] || isnan(dv[i]));
    }
    if (numeric && any) {
      int64_t shape[1] = {rows};
      lunet_tensor *t = lunet_tensor_from_data_on(ctx, "cpu", LUNET_F32, 1, shape, v);
      if (!t) {
        free(v);
        free(dv);
        lunet_csv_free(c);
        return lunetL_error(L, NULL);
      }
      if (!exact) { /* the doubles into result.exact (the stack: result, columns, data) */
        lua_getfield(L, -3, "exact");
        lua_createtable(L, (int)rows, 0);
        for (int64_t i = 0; i < rows; i++) {
          lua_pushnumber(L, dv[i]);
          lua_rawseti(L, -2, i + 1);
        }
        lua_setfield(L, -2, name);
        lua_pop(L, 1);
      }
      lunetL_pushtensor(L, t);
    } else {
      lua_createtable(L, (int)rows, 0);
      for (int64_t i = 0; i < rows; i++) {
        lua_pushstring(L, lunet_csv_field(c, i, j));
        lua_rawseti(L, -2, i + 1);
      }
    }
    lua_setfield(L, -2, name);
  }
  free(v);
  free(dv);
  lunet_csv_free(c);
  lua_setfield(L, -3, "data");
  lua_setfield(L, -2, "columns");
  return 1;
}

/* csv_missing(s): whether a field is empty or a missing-value word
 * ("NA", "nan", ...: pandas's NaN), in a text column too, where encode
 * refuses it rather than make it a class. */
static int l_csv_missing(lua_State *L) {
  double v;
  const char *s = luaL_checkstring(L, 1);
  lua_pushboolean(L, number(s, &v) && v != v);
  return 1;
}

static const luaL_Reg functions[] = {{"read_csv", l_read_csv}, {"csv_missing", l_csv_missing}, {NULL, NULL}};

void lunetL_open_csv(lua_State *L) { luaL_setfuncs(L, functions, 0); }
