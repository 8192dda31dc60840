/*
 * The training batches of Model:fit, prepared (gathered and augmented) on a
 * prefetch thread while the current step computes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"
#include "lunet/augment.h"

#define BATCHES_MT "lunet.Batches"

typedef struct batches {
  lunet_batches *b;
  lunet_tensor *x, *y; /* held while the worker reads their host memory */
  float *xbuf, *ybuf;
  int x_ndim, y_ndim;
  int64_t x_shape[LUNET_MAX_DIMS], y_shape[LUNET_MAX_DIMS]; /* one sample */
  int64_t x_numel, y_numel;
  char device[32]; /* where the batches go: the model's backend */
} batches;

static void close_batches(batches *p) {
  lunet_batches_free(p->b); /* joins the worker before x and y go */
  lunet_tensor_release(p->x);
  lunet_tensor_release(p->y);
  p->x = p->y = NULL;
  free(p->xbuf);
  free(p->ybuf);
  p->b = NULL;
  p->xbuf = p->ybuf = NULL;
}

static int batches_gc(lua_State *L) {
  close_batches(luaL_checkudata(L, 1, BATCHES_MT));
  return 0;
}

static const float *host_f32(lua_State *L, int arg, const char *what) {
  lunet_tensor *t = lunetL_checktensor(L, arg);
  const void *p = lunet_tensor_host_data(t);
  if (!p || lunet_tensor_dtype(t) != LUNET_F32)
    luaL_argerror(L, arg,
                  lua_pushfstring(L, "%s must be a float32 tensor on the cpu backend", what));
  return p;
}

/* C.batches_new(x, y, order, batch_size, aug|nil, seed, epoch, device) */
static int l_batches_new(lua_State *L) {
  lunet_tensor *x = lunetL_checktensor(L, 1), *y = lunetL_checktensor(L, 2);
  const void *xd = lunet_tensor_host_data(x);
  bool u8 = lunet_tensor_dtype(x) == LUNET_U8;
  if (!xd || (!u8 && lunet_tensor_dtype(x) != LUNET_F32))
    luaL_argerror(L, 1, "x must be a float32 or uint8 tensor on the cpu backend");
  const float *yh = host_f32(L, 2, "y");
  luaL_checktype(L, 3, LUA_TTABLE);
  int64_t bs = luaL_checkinteger(L, 4);
  lunet_augment *aug = lua_isnoneornil(L, 5) ? NULL : lunetL_checkaugment(L, 5);
  int64_t n = lunet_tensor_dim(x, 0), len = (int64_t)luaL_len(L, 3);
  if (bs > len) bs = len; /* a batch larger than the epoch is the epoch */
  /* every argument read before the malloc below: a bad one must not leak it */
  uint64_t seed = (uint64_t)luaL_optinteger(L, 6, 0), epoch = (uint64_t)luaL_optinteger(L, 7, 0);
  const char *device = luaL_optstring(L, 8, "cpu");
  batches *p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, BATCHES_MT);
  p->x = lunet_tensor_retain(x); /* x:free() in Lua must not pull memory from the worker */
  p->y = lunet_tensor_retain(y);
  lua_pushvalue(L, 5); /* the augment pipeline, alive while the worker uses it */
  lua_setiuservalue(L, -2, 1);
  int64_t *order = malloc(sizeof(int64_t) * (size_t)(len ? len : 1));
  if (!order) return luaL_error(L, "out of host memory");
  for (int64_t i = 0; i < len; i++) {
    lua_geti(L, 3, i + 1);
    order[i] = lua_tointeger(L, -1) - 1;
    lua_pop(L, 1);
  }
  p->x_ndim = lunet_tensor_ndim(x) - 1;
  p->y_ndim = lunet_tensor_ndim(y) - 1;
  memcpy(p->x_shape, lunet_tensor_shape(x) + 1, sizeof(int64_t) * (size_t)p->x_ndim);
  memcpy(p->y_shape, lunet_tensor_shape(y) + 1, sizeof(int64_t) * (size_t)p->y_ndim);
  lunet_batches_opts o = {.x = u8 ? NULL : xd,
                          .x_u8 = u8 ? xd : NULL,
                          .y = yh,
                          .n = n,
                          .batch_size = bs,
                          .order = order,
                          .order_len = len,
                          .aug = aug,
                          .seed = seed,
                          .epoch = epoch};
  o.sample_numel = n ? lunet_tensor_numel(x) / n : 0;
  o.y_numel = n ? lunet_tensor_numel(y) / n : 0;
  if (aug) {
    if (p->x_ndim != 3) {
      free(order);
      return luaL_error(L, "augment needs images (N, H, W, C)");
    }
    o.h = p->x_shape[0];
    o.w = p->x_shape[1];
    o.c = p->x_shape[2];
    lunet_augment_output_shape(aug, o.h, o.w, o.c, &p->x_shape[0], &p->x_shape[1], &p->x_shape[2]);
  }
  snprintf(p->device, sizeof p->device, "%s", device);
  p->b = lunet_batches_new(lunetL_ctx(L), &o);
  free(order);
  if (!p->b) lunetL_error(L, "fit");
  p->x_numel = lunet_batches_x_numel(p->b);
  p->y_numel = lunet_batches_y_numel(p->b);
  p->xbuf = malloc(sizeof(float) * (size_t)(bs * p->x_numel + 1));
  p->ybuf = malloc(sizeof(float) * (size_t)(bs * p->y_numel + 1));
  if (!p->xbuf || !p->ybuf) return luaL_error(L, "out of host memory for batches");
  return 1;
}

static lunet_tensor *batch_tensor(lunet_ctx *ctx, const char *device, int64_t count, int nd,
                                  const int64_t *sample, const float *data) {
  int64_t shape[LUNET_MAX_DIMS] = {count};
  memcpy(shape + 1, sample, sizeof(int64_t) * (size_t)nd);
  return lunet_tensor_from_data_on(ctx, device, LUNET_F32, nd + 1, shape, data);
}

/* C.batches_next(b) -> xb, yb (on the default backend), or nil at the end */
static int l_batches_next(lua_State *L) {
  batches *p = luaL_checkudata(L, 1, BATCHES_MT);
  if (!p->b) return 0;
  lunet_ctx *ctx = lunetL_ctx(L);
  int64_t count = 0;
  if (lunet_batches_next(p->b, p->xbuf, p->ybuf, &count)) lunetL_error(L, "fit");
  if (count == 0) return 0;
  lunetL_pushtensor(L, batch_tensor(ctx, p->device, count, p->x_ndim, p->x_shape, p->xbuf));
  lunetL_pushtensor(L, batch_tensor(ctx, p->device, count, p->y_ndim, p->y_shape, p->ybuf));
  return 2;
}

static int l_batches_close(lua_State *L) {
  close_batches(luaL_checkudata(L, 1, BATCHES_MT));
  return 0;
}

static const luaL_Reg functions[] = {{"batches_new", l_batches_new},
                                     {"batches_next", l_batches_next},
                                     {"batches_close", l_batches_close},
                                     {NULL, NULL}};

void lunetL_open_batches(lua_State *L) {
  if (luaL_newmetatable(L, BATCHES_MT)) {
    lua_pushcfunction(L, batches_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, batches_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
}
