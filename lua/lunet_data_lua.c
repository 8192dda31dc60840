/*
 * Lua binding of lunet/data.h, used by lua/lunet/datasets.lua:
 *   download{url=, dest=, mirrors=, size=, md5=, sha256=, retries=, backoff=,
 *            connect_timeout=, stall_timeout=, stall_speed=, progress=, label=}
 *   sha256(path), md5(path) -> hex
 *   read_idx(path [, limit [, add_channel [, max_label]]]) -> float32 tensor,
 *            rows in the file; max_label: a labels file with values 0..max_label
 *   read_cifar10(path [, limit]) -> x_train, y_train, x_test, y_test
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lunet_lua.h"
#include "lunet/data.h"

/* ---- download ---- */

static const char *opt_string(lua_State *L, int t, const char *key) {
  int type = lua_getfield(L, t, key);
  const char *s = NULL;
  if (type == LUA_TSTRING)
    s = lua_tostring(L, -1); /* stays valid: the table holds the string */
  else if (type != LUA_TNIL)
    luaL_error(L, "bad argument #1 to 'download' (field '%s' must be a string, got %s)", key,
               luaL_typename(L, -1));
  lua_pop(L, 1);
  return s;
}

static lua_Number opt_number(lua_State *L, int t, const char *key, lua_Number def) {
  int type = lua_getfield(L, t, key);
  lua_Number v = def;
  if (type == LUA_TNUMBER)
    v = lua_tonumber(L, -1);
  else if (type != LUA_TNIL)
    luaL_error(L, "bad argument #1 to 'download' (field '%s' must be a number, got %s)", key,
               luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

/* A number field within [lo, hi] (NaN is not), else an error naming it:
 * a fraction of a second given to an int field would truncate, and 0.5 s
 * of stall_timeout became 0, which libcurl takes as no limit at all. */
static lua_Number opt_bounded(lua_State *L, int t, const char *key, lua_Number def, lua_Number lo, lua_Number hi,
                              const char *unit) {
  lua_Number v = opt_number(L, t, key, def);
  if (!(v >= lo && v <= hi)) {
    char msg[256]; /* lua_pushfstring has no %g */
    snprintf(msg, sizeof msg, "bad argument #1 to 'download' (field '%s' must be %g to %g%s, got %g)", key, lo, hi,
             unit, v);
    luaL_error(L, "%s", msg);
  }
  return v;
}

static lunet_progress_mode opt_progress(lua_State *L, int t) {
  static const char *const names[] = {"auto", "quiet", "none", NULL};
  const char *s = opt_string(L, t, "progress");
  if (!s) return LUNET_PROGRESS_AUTO;
  for (int i = 0; names[i]; i++)
    if (strcmp(s, names[i]) == 0) return (lunet_progress_mode)i;
  luaL_error(L,
             "bad argument #1 to 'download' (progress must be 'auto', 'quiet' or 'none', "
             "got '%s')",
             s);
  return LUNET_PROGRESS_AUTO;
}

/* mirrors = {"https://...", ...} into a NULL-terminated array.  The table
 * and the array (a userdata) stay on the stack until l_download returns, so
 * the strings live and a Lua error on the way frees everything. */
static const char **opt_mirrors(lua_State *L, int t) {
  if (lua_getfield(L, t, "mirrors") == LUA_TNIL) return NULL;
  luaL_argexpected(L, lua_istable(L, -1), 1, "table of strings in field 'mirrors'");
  int mt = lua_gettop(L);
  lua_Integer n = luaL_len(L, mt);
  if (n < 0 || n > 32) luaL_error(L, "bad argument #1 to 'download' (at most 32 mirrors)");
  const char **m = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *m, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_geti(L, mt, i) != LUA_TSTRING)
      luaL_error(L, "bad argument #1 to 'download' (mirrors[%d] must be a string)", (int)i);
    m[i - 1] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  m[n] = NULL;
  return m;
}

static int l_download(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lunet_download_opts o = lunet_download_opts_default();
  o.url = opt_string(L, 1, "url");
  o.dest = opt_string(L, 1, "dest");
  if (!o.url) return luaL_error(L, "bad argument #1 to 'download' (field 'url' is required)");
  if (!o.dest) return luaL_error(L, "bad argument #1 to 'download' (field 'dest' is required)");
  o.md5 = opt_string(L, 1, "md5");
  o.sha256 = opt_string(L, 1, "sha256");
  o.label = opt_string(L, 1, "label");
  o.size = (int64_t)opt_bounded(L, 1, "size", 0, 0, 0x1p53, " bytes");
  o.retries = (int)opt_bounded(L, 1, "retries", o.retries, 0, 1000, "");
  o.backoff_ms = (int)(opt_bounded(L, 1, "backoff", o.backoff_ms / 1000.0, 0, 3600, " seconds") * 1000);
  /* whole seconds for libcurl: a fraction rounds up */
  o.connect_timeout_s = (int)ceil(opt_bounded(L, 1, "connect_timeout", o.connect_timeout_s, 0.001, 3600, " seconds"));
  o.stall_timeout_s = (int)ceil(opt_bounded(L, 1, "stall_timeout", o.stall_timeout_s, 0.001, 86400, " seconds"));
  o.stall_bytes_per_s = (int)opt_bounded(L, 1, "stall_speed", o.stall_bytes_per_s, 0, 1e9, " bytes per second");
  o.progress = opt_progress(L, 1);
  o.mirrors = opt_mirrors(L, 1);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_download(ctx, &o) != LUNET_OK) return lunetL_error(L, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- checksums ---- */

static int l_sha256(lua_State *L) {
  char hex[65];
  if (lunet_file_sha256(lunetL_ctx(L), luaL_checkstring(L, 1), hex) != LUNET_OK)
    return lunetL_error(L, NULL);
  lua_pushstring(L, hex);
  return 1;
}

static int l_md5(lua_State *L) {
  char hex[33];
  if (lunet_file_md5(lunetL_ctx(L), luaL_checkstring(L, 1), hex) != LUNET_OK)
    return lunetL_error(L, NULL);
  lua_pushstring(L, hex);
  return 1;
}

/* ---- arrays to tensors ---- */

/* Copies n bytes from src to dst a slice at a time and hands each copied
 * slice's pages of src back to the system (src is freed next and never read
 * again), so turning CIFAR-10's 150 MB into a tensor never holds it twice. */
static void move_pages(uint8_t *dst, uint8_t *src, size_t n) {
  const size_t slice = (size_t)16 << 20;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  for (size_t at = 0; at < n; at += slice) {
    size_t len = n - at < slice ? n - at : slice;
    memcpy(dst + at, src + at, len);
    uintptr_t lo = ((uintptr_t)(src + at) + page - 1) & ~(page - 1);
    uintptr_t hi = (uintptr_t)(src + at + len) & ~(page - 1); /* whole pages inside src only */
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
  }
}

/* A tensor of a's first `rows` rows (all when rows < 0), with a trailing
 * axis of 1 when add_channel: uint8 as read (images, as Keras returns
 * them: a quarter of float32's memory) or float32 (labels); frees a either
 * way.  NULL on error (the context has the message). */
static lunet_tensor *array_to_tensor(lunet_ctx *ctx, lunet_array *a, int64_t rows, bool add_channel, bool as_f32) {
  int64_t shape[5];
  int ndim = a->ndim;
  memcpy(shape, a->shape, sizeof a->shape);
  if (rows >= 0 && rows < shape[0]) shape[0] = rows;
  if (add_channel) shape[ndim++] = 1;
  /* Data sets live in host memory; fit moves each batch to the model's device. */
  lunet_tensor *u8 = lunet_tensor_new_on(ctx, "cpu", LUNET_U8, ndim, shape);
  uint8_t *host = u8 ? (uint8_t *)lunet_tensor_host_data(u8) : NULL; /* the CPU's: never NULL */
  if (host) move_pages(host, a->data, (size_t)lunet_tensor_numel(u8));
  lunet_array_free(a);
  if (!u8 || !as_f32) return u8;
  lunet_tensor *f = lunet_op_cast(ctx, u8, LUNET_F32);
  lunet_tensor_release(u8);
  return f;
}

static int64_t opt_limit(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return -1;
  lua_Integer n = luaL_checkinteger(L, arg);
  luaL_argcheck(L, n >= 0, arg, "limit must be >= 0");
  return (int64_t)n;
}

static int l_read_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int64_t limit = opt_limit(L, 2);
  bool add_channel = lua_toboolean(L, 3);
  bool labels = !lua_isnoneornil(L, 4);
  lua_Integer max_label = labels ? luaL_checkinteger(L, 4) : 0;
  luaL_argcheck(L, max_label >= 0 && max_label <= 255, 4, "max_label must be in 0..255");
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_array a;
  lunet_status st =
      labels ? lunet_read_idx_labels(ctx, path, (int)max_label, &a) : lunet_read_idx(ctx, path, &a);
  if (st != LUNET_OK) return lunetL_error(L, NULL);
  lua_Integer rows = (lua_Integer)a.shape[0];
  lunetL_pushtensor(L, array_to_tensor(ctx, &a, limit, add_channel, labels));
  lua_pushinteger(L, rows);
  return 2;
}

static int l_read_cifar10(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int64_t limit = opt_limit(L, 2);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_array arr[4];
  if (lunet_read_cifar10(ctx, path, &arr[0], &arr[1], &arr[2], &arr[3]) != LUNET_OK)
    return lunetL_error(L, NULL);
  lunet_tensor *t[4] = {NULL};
  bool ok = true;
  for (int i = 0; i < 4; i++) {
    t[i] = ok ? array_to_tensor(ctx, &arr[i], i < 2 ? limit : -1, false, i % 2 == 1) : NULL;
    if (!t[i]) {
      lunet_array_free(&arr[i]);
      ok = false;
    }
  }
  if (!ok) {
    for (int i = 0; i < 4; i++)
      if (t[i]) lunet_tensor_release(t[i]);
    return lunetL_error(L, "cifar10");
  }
  for (int i = 0; i < 4; i++) lunetL_pushtensor(L, t[i]);
  return 4;
}

static const luaL_Reg data_funcs[] = {{"download", l_download},
                                      {"sha256", l_sha256},
                                      {"md5", l_md5},
                                      {"read_idx", l_read_idx},
                                      {"read_cifar10", l_read_cifar10},
                                      {NULL, NULL}};

void lunetL_open_data(lua_State *L) { luaL_setfuncs(L, data_funcs, 0); }
