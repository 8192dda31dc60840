/*
 * Tab completion in the REPL.  The word before the cursor is a name path,
 * `a.b.c` or `a.b:c`; the part before the last separator is looked up
 * without running any code (raw table reads, and __index only when it is a
 * table: no function is called, so completing has no side effects), and the
 * last part is completed from the keys of that value, its __index chain
 * (or, where __index is a function, the metatable's __methods table), and
 * for `:` only keys holding functions.  A single word completes from
 * the globals and the keywords.
 *
 * One match is inserted; several insert their common prefix, or are listed
 * when that adds nothing.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <histedit.h>
#include <lauxlib.h>
#include <lua.h>

#include "shell.h"

#define MAX_CHAIN 16 /* __index links followed, against cycles */
#define MAX_LISTED 200

static const char *const keywords[] = {"and",   "break", "do",       "else",  "elseif", "end",
                                       "false", "for",   "function", "goto",  "if",     "in",
                                       "local", "nil",   "not",      "or",    "repeat", "return",
                                       "then",  "true",  "until",    "while", NULL};

static int is_word_char(char c) {
  return isalnum((unsigned char)c) || c == '_' || c == '.' || c == ':';
}

static int is_keyword(const char *s, size_t len) {
  for (int i = 0; keywords[i]; i++)
    if (strlen(keywords[i]) == len && memcmp(keywords[i], s, len) == 0) return 1;
  return 0;
}

/* A name usable after `.` or `:`. */
static int is_name(const char *s, size_t len) {
  if (len == 0 || isdigit((unsigned char)s[0])) return 0;
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '_') return 0;
  return !is_keyword(s, len);
}

/* Replaces the value on top by the next table of its __index chain, or
 * pops it and returns 0 when there is none (a function __index included). */
static int next_index_table(lua_State *L) {
  if (!lua_getmetatable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushliteral(L, "__index");
  lua_rawget(L, -2);
  lua_remove(L, -2); /* the metatable */
  lua_remove(L, -2); /* the value */
  if (lua_istable(L, -1)) return 1;
  lua_pop(L, 1);
  return 0;
}

/* Replaces the value on top by value[key], read as Lua would but calling
 * nothing: raw fields, then the tables on the __index chain. */
static void lookup(lua_State *L, const char *key, size_t len) {
  for (int depth = 0; depth < MAX_CHAIN; depth++) {
    if (lua_istable(L, -1)) {
      lua_pushlstring(L, key, len);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    if (!next_index_table(L)) {
      lua_pushnil(L);
      return;
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* set[k] = true for each name key k of the table at `t` that starts with
 * `part`; with `methods`, only keys holding functions; `skip_meta` leaves
 * out the "__" metamethod names. */
static void add_keys(lua_State *L, int t, int set, const char *part, int methods, int skip_meta) {
  size_t plen = strlen(part);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    size_t len;
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
    if (k && len >= plen && memcmp(k, part, plen) == 0 && is_name(k, len) &&
        (!methods || lua_isfunction(L, -1)) &&
        !(skip_meta && len >= 2 && k[0] == '_' && k[1] == '_')) {
      lua_pushvalue(L, -2);
      lua_pushboolean(L, 1);
      lua_rawset(L, set);
    }
    lua_pop(L, 1);
  }
}

/* Where __index is a function (the tensor's: it also serves properties),
 * the methods sit in the metatable's __methods table, or in the metatable
 * itself; both are offered.  The metatable is on top. */
static void add_hidden_methods(lua_State *L, int set, const char *part, int methods) {
  add_keys(L, lua_gettop(L), set, part, methods, 1);
  lua_pushliteral(L, "__methods");
  if (lua_rawget(L, -2) == LUA_TTABLE) add_keys(L, lua_gettop(L), set, part, methods, 0);
  lua_pop(L, 1);
}

/* Adds the candidates from the value on top (popped): its own keys and
 * those of its __index tables. */
static void add_candidates(lua_State *L, int set, const char *part, int methods) {
  for (int depth = 0; depth < MAX_CHAIN; depth++) {
    if (lua_istable(L, -1)) add_keys(L, lua_gettop(L), set, part, methods, 0);
    if (!lua_getmetatable(L, -1)) break;
    lua_pushliteral(L, "__index");
    int kind = lua_rawget(L, -2);
    if (kind == LUA_TFUNCTION) {
      lua_pop(L, 1);
      add_hidden_methods(L, set, part, methods);
      lua_pushnil(L); /* in place of __index */
    }
    lua_remove(L, -2); /* the metatable */
    lua_remove(L, -2); /* the value */
    if (kind != LUA_TTABLE) break;
  }
  lua_pop(L, 1);
}

static int compare(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int terminal_width(void) {
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

/* Prints the matches in columns under the line. */
static void list_matches(const char **m, size_t n) {
  size_t width = 0;
  for (size_t i = 0; i < n; i++)
    if (strlen(m[i]) > width) width = strlen(m[i]);
  width += 2;
  size_t cols = (size_t)terminal_width() / width;
  if (cols == 0) cols = 1;
  size_t shown = n < MAX_LISTED ? n : MAX_LISTED;
  size_t rows = (shown + cols - 1) / cols;
  fputc('\n', stdout);
  for (size_t r = 0; r < rows; r++) {
    for (size_t c = 0; c < cols; c++) {
      size_t i = c * rows + r;
      if (i >= shown) break;
      int last = c + 1 == cols || i + rows >= shown;
      printf("%-*s", last ? 0 : (int)width, m[i]);
    }
    fputc('\n', stdout);
  }
  if (shown < n) printf("(%zu more)\n", n - shown);
  fflush(stdout);
}

/* Finds the candidates for `word` (the text before the cursor); leaves the
 * set of matches on top and returns the length of the part being
 * completed, or -1 when the word is no name path. */
static int find_matches(lua_State *L, const char *word, size_t wlen) {
  const char *sep = NULL;
  for (size_t i = 0; i < wlen; i++)
    if (word[i] == '.' || word[i] == ':') {
      if (sep && *sep == ':') return -1; /* a.b:c.d is no name path */
      sep = word + i;
    }
  if (sep == word) return -1; /* ("abc"):, t[1]. or f(). -- no name path before the separator */
  const char *part = sep ? sep + 1 : word;
  size_t plen = wlen - (size_t)(part - word);
  lua_newtable(L);
  int set = lua_gettop(L);
  lua_pushlstring(L, part, plen);
  const char *partz = lua_tostring(L, -1);
  lua_pushglobaltable(L);
  if (sep == NULL) {
    for (int i = 0; keywords[i]; i++)
      if (strncmp(keywords[i], partz, plen) == 0) {
        lua_pushboolean(L, 1);
        lua_setfield(L, set, keywords[i]);
      }
  } else {
    const char *p = word;
    while (p < sep) {
      const char *dot = memchr(p, '.', (size_t)(sep - p));
      const char *end = dot ? dot : sep;
      if (!is_name(p, (size_t)(end - p))) return -1;
      lookup(L, p, (size_t)(end - p));
      p = end + 1;
    }
    if (lua_isnil(L, -1)) return -1;
  }
  add_candidates(L, set, partz, sep && *sep == ':');
  lua_pop(L, 1); /* part */
  return (int)plen;
}

/* Runs protected (a memory error must not end the REPL): argument 1 is
 * the EditLine; returns the libedit status code. */
static int complete_protected(lua_State *L) {
  EditLine *el = lua_touserdata(L, 1);
  const LineInfo *li = el_line(el);
  const char *start = li->cursor;
  while (start > li->buffer && is_word_char(start[-1])) start--;
  int plen = find_matches(L, start, (size_t)(li->cursor - start));
  if (plen < 0) {
    lua_pushinteger(L, CC_ERROR);
    return 1;
  }
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    n++;
  }
  if (n == 0) {
    lua_pushinteger(L, CC_ERROR);
    return 1;
  }
  const char **m = lua_newuserdatauv(L, n * sizeof *m, 0);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, -3)) { /* the keys stay alive in the set below */
    lua_pop(L, 1);
    m[i++] = lua_tostring(L, -1);
  }
  qsort(m, n, sizeof *m, compare);
  size_t common = strlen(m[0]);
  for (i = 1; i < n; i++) {
    size_t j = 0;
    while (j < common && m[i][j] == m[0][j]) j++;
    common = j;
  }
  int code = CC_REFRESH;
  if (common > (size_t)plen) {
    lua_pushlstring(L, m[0] + plen, common - (size_t)plen);
    if (el_insertstr(el, lua_tostring(L, -1)) != 0) code = CC_ERROR;
  } else if (n > 1) {
    list_matches(m, n);
    code = CC_REDISPLAY;
  } else {
    code = CC_NORM; /* already complete */
  }
  lua_pushinteger(L, code);
  return 1;
}

unsigned char shell_complete(EditLine *el, int ch) {
  (void)ch;
  shell_client *client;
  if (el_get(el, EL_CLIENTDATA, &client) != 0 || client == NULL) return CC_ERROR;
  lua_State *L = client->L;
  int top = lua_gettop(L);
  unsigned char code = CC_ERROR;
  lua_pushcfunction(L, complete_protected);
  lua_pushlightuserdata(L, el);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) code = (unsigned char)lua_tointeger(L, -1);
  lua_settop(L, top);
  return code;
}
