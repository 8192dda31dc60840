/*
 * The Lua face of augmentation (lua/lunet/augment.lua builds on it).  Adds to
 * the module table:
 *   augment_new(steps) -> pipeline     steps: list of step tables, see below
 *   augment_apply(pipeline, x, seed, epoch, first_index [, count]) -> tensor
 *     (the first min(count, N) samples; sample i keys its draws by first_index + i)
 *   augment_output_shape(pipeline, h, w, c) -> oh, ow, oc
 *   png_grid(path, x [, cols])
 * A step table has `kind` (the Keras layer name) and, by kind:
 *   RandomFlip        mode = "horizontal" | "vertical" | "horizontal_and_vertical"
 *   RandomRotation    factor = {lo, hi}, fill_mode, fill_value
 *   RandomTranslation height_factor = {lo, hi}, width_factor = {lo, hi}, fill_mode, fill_value
 *   RandomCrop        height, width, padding
 *   RandomZoom        height_factor = {lo, hi}, width_factor = {lo, hi} or nil, fill_mode,
 * fill_value Rescaling         scale, offset Normalization     mean = {...}, std = {...} (numbers)
 * The pipeline userdata ("lunet.Augment") wraps a lunet_augment *; other
 * parts of the binding get it with lunetL_checkaugment() below.
 */
#include <stdlib.h>
#include <string.h>

#include "lunet/augment.h"
#include "lunet_lua.h"

#define AUGMENT_MT "lunet.Augment"

typedef struct pipeline {
  lunet_augment *a;
  int nsteps;
} pipeline;

lunet_augment *lunetL_checkaugment(lua_State *L, int arg) {
  pipeline *p = luaL_checkudata(L, arg, AUGMENT_MT);
  if (!p->a) luaL_argerror(L, arg, "the augment pipeline is closed");
  return p->a;
}

/* ---- reading step tables (the table is on the top of the stack) ---- */

static int step_error(lua_State *L, int i, const char *kind, const char *msg) {
  return luaL_error(L, "augment: step %d (%s): %s", i, kind, msg);
}

static double num_field(lua_State *L, int i, const char *kind, const char *key, double dflt) {
  lua_getfield(L, -1, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  int ok;
  double v = lua_tonumberx(L, -1, &ok);
  if (!ok) step_error(L, i, kind, lua_pushfstring(L, "%s must be a number", key));
  lua_pop(L, 1);
  return v;
}

/* key = {lo, hi}; returns false when absent. */
static bool range_field(lua_State *L, int i, const char *kind, const char *key, double r[2]) {
  lua_getfield(L, -1, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return false;
  }
  if (!lua_istable(L, -1))
    step_error(L, i, kind, lua_pushfstring(L, "%s must be a {lo, hi} pair", key));
  for (int j = 0; j < 2; j++) {
    int ok;
    lua_geti(L, -1, j + 1);
    r[j] = lua_tonumberx(L, -1, &ok);
    if (!ok) step_error(L, i, kind, lua_pushfstring(L, "%s must be a {lo, hi} pair", key));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return true;
}

static lunet_fill_mode fill_field(lua_State *L, int i, const char *kind) {
  static const char *const names[] = {"reflect", "constant", "nearest", "wrap", NULL};
  lua_getfield(L, -1, "fill_mode");
  const char *s = luaL_optstring(L, -1, "reflect");
  int k = 0;
  while (names[k] && strcmp(names[k], s) != 0) k++;
  if (!names[k])
    step_error(L, i, kind,
               lua_pushfstring(L,
                               "fill_mode must be one of reflect, constant, nearest, "
                               "wrap, got '%s'",
                               s));
  lua_pop(L, 1);
  return (lunet_fill_mode)k;
}

/* Length of t.key, a number counting as a list of one. */
static int64_t list_len(lua_State *L, int i, const char *kind, const char *key) {
  lua_getfield(L, -1, key);
  int64_t n = lua_isnumber(L, -1) ? 1 : lua_istable(L, -1) ? (int64_t)luaL_len(L, -1) : 0;
  lua_pop(L, 1);
  if (n <= 0)
    step_error(L, i, kind,
               lua_pushfstring(L, "%s must be a number or a non-empty list of numbers", key));
  return n;
}

/* v (n) = t.key, a single value repeated n times. */
static void read_list(lua_State *L, int i, const char *kind, const char *key, float *v, int64_t n) {
  lua_getfield(L, -1, key);
  bool one = lua_isnumber(L, -1);
  int64_t len = one ? 1 : (int64_t)luaL_len(L, -1);
  for (int64_t k = 0; k < n; k++) {
    int ok;
    if (!one) lua_geti(L, -1, len == 1 ? 1 : k + 1);
    v[k] = (float)lua_tonumberx(L, -1, &ok);
    if (!ok) step_error(L, i, kind, lua_pushfstring(L, "%s must hold numbers", key));
    if (!one) lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static lunet_status add_flip(lua_State *L, lunet_ctx *ctx, lunet_augment *a, int i) {
  static const char *const names[] = {"horizontal", "vertical", "horizontal_and_vertical", NULL};
  lua_getfield(L, -1, "mode");
  const char *s = luaL_optstring(L, -1, "horizontal_and_vertical");
  int k = 0;
  while (names[k] && strcmp(names[k], s) != 0) k++;
  if (!names[k])
    step_error(L, i, "RandomFlip",
               lua_pushfstring(L,
                               "mode must be one of horizontal, vertical, "
                               "horizontal_and_vertical, got '%s'",
                               s));
  lua_pop(L, 1);
  return lunet_augment_add_flip(ctx, a, (lunet_flip_mode)(k + 1));
}

static lunet_status add_geometric(lua_State *L, lunet_ctx *ctx, lunet_augment *a, int i,
                                  const char *kind) {
  double hr[2] = {0, 0}, wr[2] = {0, 0};
  float fill = (float)num_field(L, i, kind, "fill_value", 0);
  lunet_fill_mode mode = fill_field(L, i, kind);
  if (strcmp(kind, "RandomRotation") == 0) {
    if (!range_field(L, i, kind, "factor", hr)) step_error(L, i, kind, "factor is required");
    return lunet_augment_add_rotation(ctx, a, hr[0], hr[1], mode, fill);
  }
  if (!range_field(L, i, kind, "height_factor", hr))
    step_error(L, i, kind, "height_factor is required");
  bool has_w = range_field(L, i, kind, "width_factor", wr);
  if (strcmp(kind, "RandomZoom") == 0)
    return lunet_augment_add_zoom(ctx, a, hr[0], hr[1], !has_w, wr[0], wr[1], mode, fill);
  if (!has_w) step_error(L, i, kind, "width_factor is required");
  return lunet_augment_add_translation(ctx, a, hr[0], hr[1], wr[0], wr[1], mode, fill);
}

static lunet_status add_normalization(lua_State *L, lunet_ctx *ctx, lunet_augment *a, int i) {
  const char *kind = "Normalization";
  int64_t nm = list_len(L, i, kind, "mean"), ns = list_len(L, i, kind, "std");
  if (nm != ns && nm != 1 && ns != 1)
    step_error(L, i, kind,
               lua_pushfstring(L, "mean has %d values but std has %d", (int)nm, (int)ns));
  int64_t n = nm > ns ? nm : ns;
  /* a userdata, so an error below frees it; moved under the step table */
  float *mean = lua_newuserdatauv(L, (size_t)n * 2 * sizeof(float), 0), *std = mean + n;
  lua_insert(L, -2);
  read_list(L, i, kind, "mean", mean, n);
  read_list(L, i, kind, "std", std, n);
  lunet_status st = lunet_augment_add_normalization(ctx, a, mean, std, n);
  lua_remove(L, -2);
  return st;
}

static lunet_status add_step(lua_State *L, lunet_ctx *ctx, lunet_augment *a, int i) {
  if (lua_getfield(L, -1, "kind") != LUA_TSTRING)
    step_error(L, i, "?", "the step table has no kind string");
  const char *kind = lua_tostring(L, -1);
  lua_pop(L, 1); /* kind stays valid: the step table holds the string */
  if (strcmp(kind, "RandomFlip") == 0) return add_flip(L, ctx, a, i);
  if (strcmp(kind, "RandomRotation") == 0 || strcmp(kind, "RandomTranslation") == 0 ||
      strcmp(kind, "RandomZoom") == 0)
    return add_geometric(L, ctx, a, i, kind);
  if (strcmp(kind, "RandomCrop") == 0)
    return lunet_augment_add_crop(ctx, a, (int64_t)num_field(L, i, kind, "height", 0),
                                  (int64_t)num_field(L, i, kind, "width", 0),
                                  (int64_t)num_field(L, i, kind, "padding", 0));
  if (strcmp(kind, "Rescaling") == 0)
    return lunet_augment_add_rescaling(ctx, a, (float)num_field(L, i, kind, "scale", 1),
                                       (float)num_field(L, i, kind, "offset", 0));
  if (strcmp(kind, "Normalization") == 0) return add_normalization(L, ctx, a, i);
  return step_error(L, i, kind, "unknown step kind");
}

static int augment_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lunet_ctx *ctx = lunetL_ctx(L);
  /* the userdata owns the pipeline from here on, so errors below free it */
  pipeline *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->a = NULL;
  p->nsteps = 0;
  luaL_setmetatable(L, AUGMENT_MT);
  p->a = lunet_augment_new(ctx);
  if (!p->a) return lunetL_error(L, "augment");
  int n = (int)luaL_len(L, 1);
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (!lua_istable(L, -1)) return luaL_error(L, "augment: step %d is not a table", i);
    if (add_step(L, ctx, p->a, i) != LUNET_OK) return lunetL_error(L, NULL);
    lua_pop(L, 1);
    p->nsteps++;
  }
  return 1;
}

static int augment_gc(lua_State *L) {
  pipeline *p = luaL_checkudata(L, 1, AUGMENT_MT);
  lunet_augment_free(p->a);
  p->a = NULL;
  return 0;
}

static int augment_tostring(lua_State *L) {
  pipeline *p = luaL_checkudata(L, 1, AUGMENT_MT);
  if (!p->a)
    lua_pushliteral(L, "lunet.Augment (closed)");
  else
    lua_pushfstring(L, "lunet.Augment (%d steps)", p->nsteps);
  return 1;
}

/* ---- tensors to host floats ---- */

/* A malloc'd float copy of t (F32 or U8); NULL with the ctx error set. */
static float *host_floats(lunet_ctx *ctx, const lunet_tensor *t) {
  int64_t numel = lunet_tensor_numel(t);
  lunet_dtype dt = lunet_tensor_dtype(t);
  if (dt != LUNET_F32 && dt != LUNET_U8) {
    lunet_error(ctx, LUNET_ERR_ARG, "images must be float32 or uint8, got %s",
                lunet_dtype_name(dt));
    return NULL;
  }
  float *f = malloc((size_t)(numel > 0 ? numel : 1) * sizeof *f);
  if (!f) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory for %lld floats", (long long)numel);
    return NULL;
  }
  /* uint8 is read into the back of the float buffer, then widened front to
   * back: element i's float never overwrites a byte not yet read. */
  void *dst = dt == LUNET_F32 ? (void *)f : (void *)((unsigned char *)f + 3 * numel);
  if (lunet_tensor_read(ctx, t, dst, (size_t)numel * lunet_dtype_size(dt)) != LUNET_OK) {
    free(f);
    return NULL;
  }
  if (dt == LUNET_U8) {
    const unsigned char *b = dst;
    for (int64_t i = 0; i < numel; i++) f[i] = (float)b[i];
  }
  return f;
}

static int augment_apply(lua_State *L) {
  lunet_augment *a = lunetL_checkaugment(L, 1);
  lunet_tensor *x = lunetL_checktensor(L, 2);
  uint64_t seed = (uint64_t)luaL_optinteger(L, 3, 0);
  lua_Integer epoch = luaL_optinteger(L, 4, 0);
  /* arg 5: the first sample's index, or a table of every sample's index */
  bool listed = lua_istable(L, 5);
  lua_Integer first = listed ? 0 : luaL_optinteger(L, 5, 0);
  int nd = lunet_tensor_ndim(x);
  luaL_argcheck(L, nd == 3 || nd == 4, 2, "images must be (N, H, W, C) or (H, W, C)");
  luaL_argcheck(L, epoch >= 0, 4, "epoch must be >= 0");
  luaL_argcheck(L, first >= 0, 5, "first_index must be >= 0");
  const int64_t *s = lunet_tensor_shape(x);
  int64_t n = nd == 4 ? s[0] : 1, h = s[nd - 3], w = s[nd - 2], c = s[nd - 1];
  lua_Integer count = luaL_optinteger(L, 6, n);
  luaL_argcheck(L, count >= 0, 6, "count must be >= 0");
  if (count > n) count = n; /* "at most count samples" */
  if (listed && (lua_Integer)luaL_len(L, 5) < count)
    return luaL_argerror(L, 5, "fewer sample indices than samples");
  for (int64_t i = 0; listed && i < count; i++) { /* before anything is allocated */
    lua_geti(L, 5, i + 1);
    int whole;
    lua_Integer v = lua_tointegerx(L, -1, &whole);
    if (!whole || v < 0)
      return luaL_argerror(L, 5, lua_pushfstring(L, "sample index %d is %s (indices are whole numbers >= 0)",
                                                 (int)i + 1, luaL_tolstring(L, -1, NULL)));
    lua_pop(L, 1);
  }
  lunet_ctx *ctx = lunetL_ctx(L);
  int64_t oh, ow, oc;
  lunet_augment_output_shape(a, h, w, c, &oh, &ow, &oc);
  float *in = host_floats(ctx, x);
  if (!in) return lunetL_error(L, "augment");
  float *out = malloc((size_t)(count * oh * ow * oc > 0 ? count * oh * ow * oc : 1) * sizeof *out);
  int64_t *idx = malloc((size_t)(count > 0 ? count : 1) * sizeof *idx);
  lunet_tensor *y = NULL;
  if (!out || !idx) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "augment: out of memory");
  } else {
    for (int64_t i = 0; i < count; i++) {
      if (listed) {
        lua_geti(L, 5, i + 1);
        idx[i] = lua_tointeger(L, -1);
        lua_pop(L, 1);
      } else {
        idx[i] = first + i;
      }
    }
    if (lunet_augment_apply(ctx, a, out, in, count, h, w, c, idx, seed, (uint64_t)epoch) ==
        LUNET_OK) {
      int64_t shape[4] = {count, oh, ow, oc};
      y = nd == 4
              ? lunet_tensor_from_data_on(ctx, lunet_tensor_backend(x), LUNET_F32, 4, shape, out)
              : lunet_tensor_from_data_on(ctx, lunet_tensor_backend(x), LUNET_F32, 3, shape + 1,
                                          out);
    }
  }
  free(in);
  free(out);
  free(idx);
  if (!y) return lunetL_error(L, NULL);
  lunetL_pushtensor(L, y);
  return 1;
}

static int augment_output_shape(lua_State *L) {
  lunet_augment *a = lunetL_checkaugment(L, 1);
  int64_t oh, ow, oc;
  lunet_augment_output_shape(a, luaL_checkinteger(L, 2), luaL_checkinteger(L, 3),
                             luaL_checkinteger(L, 4), &oh, &ow, &oc);
  lua_pushinteger(L, oh);
  lua_pushinteger(L, ow);
  lua_pushinteger(L, oc);
  return 3;
}

/* png_grid(path, x, cols): x (N,H,W,C), (H,W,C) with C = 1 or 3, (N,H,W) or (H,W). */
static int png_grid(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lunet_tensor *x = lunetL_checktensor(L, 2);
  lua_Integer cols = luaL_optinteger(L, 3, 0);
  int nd = lunet_tensor_ndim(x);
  const int64_t *s = lunet_tensor_shape(x);
  int64_t n = 1, h, w, c = 1;
  if (nd == 4) {
    n = s[0], h = s[1], w = s[2], c = s[3];
  } else if (nd == 3 && (s[2] == 1 || s[2] == 3)) {
    h = s[0], w = s[1], c = s[2];
  } else if (nd == 3) {
    n = s[0], h = s[1], w = s[2];
  } else if (nd == 2) {
    h = s[0], w = s[1];
  } else {
    return luaL_argerror(L, 2, "images must be (N, H, W, C), (H, W, C), (N, H, W) or (H, W)");
  }
  lunet_ctx *ctx = lunetL_ctx(L);
  float *f = host_floats(ctx, x);
  if (!f) return lunetL_error(L, "png_grid");
  lunet_status st = lunet_png_grid(ctx, path, f, n, h, w, c, cols);
  free(f);
  if (st != LUNET_OK) return lunetL_error(L, NULL);
  return 0;
}

static const luaL_Reg augment_methods[] = {
    {"__gc", augment_gc}, {"__close", augment_gc}, {"__tostring", augment_tostring}, {NULL, NULL}};

static const luaL_Reg augment_funcs[] = {{"augment_new", augment_new},
                                         {"augment_apply", augment_apply},
                                         {"augment_output_shape", augment_output_shape},
                                         {"png_grid", png_grid},
                                         {NULL, NULL}};

void lunetL_open_augment(lua_State *L) {
  if (luaL_newmetatable(L, AUGMENT_MT)) {
    luaL_setfuncs(L, augment_methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, augment_funcs, 0);
}
