/*
 * Image files and folders for nn.utils.image_dataset_from_directory: a
 * folder's entries, an image's header, and a batch of files decoded and
 * resized in C on several threads (core/src/image.c).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lunet/image.h"
#include "lunet/ops.h"
#include "lunet_lua.h"

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* C.listdir(path) -> {{name =, dir = bool, link = bool}, ...} sorted by
 * name (bytes), without "." and "..", hidden entries included; dir follows
 * a symbolic link, link says it is one. */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) { /* no position: the caller reports it at the user's line */
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return lua_error(L);
  }
  size_t n = 0, cap = 64;
  char **names = malloc(cap * sizeof *names);
  struct dirent *e;
  while (names && (e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (n == cap) {
      char **more = realloc(names, 2 * cap * sizeof *names);
      if (!more) break;
      names = more;
      cap *= 2;
    }
    if (!(names[n] = strdup(e->d_name))) break;
    n++;
  }
  closedir(d);
  if (!names) return luaL_error(L, "%s: out of memory listing the folder", path);
  qsort(names, n, sizeof *names, by_name);
  lua_createtable(L, (int)n, 0);
  luaL_Buffer b;
  for (size_t i = 0; i < n; i++) {
    luaL_buffinit(L, &b);
    luaL_addstring(&b, path);
    luaL_addchar(&b, '/');
    luaL_addstring(&b, names[i]);
    luaL_pushresult(&b);
    struct stat st, lst;
    bool dir = stat(lua_tostring(L, -1), &st) == 0 && S_ISDIR(st.st_mode);
    bool link = lstat(lua_tostring(L, -1), &lst) == 0 && S_ISLNK(lst.st_mode);
    lua_pop(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, names[i]);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, dir);
    lua_setfield(L, -2, "dir");
    lua_pushboolean(L, link);
    lua_setfield(L, -2, "link");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    free(names[i]);
  }
  free(names);
  return 1;
}

/* C.image_info(path) -> {width =, height =, channels =, format =} */
static int l_image_info(lua_State *L) {
  lunet_image_info info;
  if (lunet_image_info_read(lunetL_ctx(L), luaL_checkstring(L, 1), &info)) return lunetL_error(L, NULL);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, info.width);
  lua_setfield(L, -2, "width");
  lua_pushinteger(L, info.height);
  lua_setfield(L, -2, "height");
  lua_pushinteger(L, info.channels);
  lua_setfield(L, -2, "channels");
  lua_pushstring(L, info.format);
  lua_setfield(L, -2, "format");
  return 1;
}

/* ---- a batch decoded in the background (the dataset's prefetch) ---- */

#define PENDING_MT "lunet.PendingImages"

typedef struct pending {
  char **paths;
  int64_t n, h, w;
  int c, threads;
  bool crop, started, joined;
  float *out;
  lunet_ctx *ctx; /* the worker's: its error comes back in wait */
  lunet_status status;
  pthread_t thread;
} pending;

static void *decode_batch(void *arg) {
  pending *p = arg;
  p->status = lunet_images_load(p->ctx, (const char *const *)p->paths, p->n, p->h, p->w, p->c, p->crop, p->threads,
                                p->out);
  return NULL;
}

static void pending_join(pending *p) {
  if (p->started && !p->joined) pthread_join(p->thread, NULL);
  p->joined = true;
}

static int pending_gc(lua_State *L) {
  pending *p = luaL_checkudata(L, 1, PENDING_MT);
  pending_join(p);
  for (int64_t i = 0; p->paths && i < p->n; i++) free(p->paths[i]);
  free(p->paths);
  free(p->out);
  if (p->ctx) lunet_ctx_free(p->ctx);
  memset(p, 0, sizeof *p);
  p->joined = true;
  return 0;
}

/* C.images_load_async(paths, height, width, channels, crop [, threads]) ->
 * a handle; C.images_wait(handle) -> float32 tensor (n, height, width,
 * channels), 0..255 (lunet_images_load on a thread of its own) */
static int l_images_load_async(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer h = luaL_checkinteger(L, 2), w = luaL_checkinteger(L, 3), c = luaL_checkinteger(L, 4);
  luaL_argcheck(L, h > 0 && w > 0 && h * w <= (INT64_C(1) << 28) && (c == 1 || c == 3 || c == 4), 2,
                "the size must be positive and channels 1, 3 or 4");
  lua_Integer n = luaL_len(L, 1);
  bool crop = lua_toboolean(L, 5);
  int threads = (int)luaL_optinteger(L, 6, 0);
  pending *p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = (pending){.n = n, .h = h, .w = w, .c = (int)c, .crop = crop, .threads = threads, .joined = true};
  luaL_setmetatable(L, PENDING_MT);
  p->paths = calloc((size_t)(n ? n : 1), sizeof *p->paths);
  size_t count = (size_t)(n * h * w * c);
  p->out = malloc(sizeof(float) * (count ? count : 1));
  p->ctx = lunet_ctx_new();
  if (!p->paths || !p->out || !p->ctx) return luaL_error(L, "out of memory for %d images", (int)n);
  for (lua_Integer i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    if (!(p->paths[i] = strdup(luaL_checkstring(L, -1)))) return luaL_error(L, "out of memory");
    lua_pop(L, 1);
  }
  p->joined = false;
  if (pthread_create(&p->thread, NULL, decode_batch, p) != 0) {
    decode_batch(p); /* no thread: decode now */
    p->joined = true;
  } else {
    p->started = true;
  }
  return 1;
}

/* C.images_wait(handle) -> float32 tensor (n, height, width, channels) */
static int l_images_wait(lua_State *L) {
  pending *p = luaL_checkudata(L, 1, PENDING_MT);
  if (!p->out) return luaL_error(L, "images_wait: the batch was already taken");
  pending_join(p);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (p->status) return luaL_error(L, "%s", lunet_ctx_error(p->ctx));
  int64_t shape[4] = {p->n, p->h, p->w, p->c};
  lunet_tensor *t = lunet_tensor_from_data_on(ctx, "cpu", LUNET_F32, 4, shape, p->out);
  free(p->out);
  p->out = NULL;
  if (!t) return lunetL_error(L, NULL);
  lunetL_pushtensor(L, t);
  return 1;
}

/* Keras's array_to_img then astype("uint8"): with scale, x - min(x)
 * stretched so its largest value is 255; every value then truncated to a
 * whole number (the saver clamps to 0..255). */
static void keras_pixels(float *px, size_t n, bool scale) {
  if (scale && n) {
    float lo = px[0], hi;
    for (size_t i = 1; i < n; i++) lo = px[i] < lo ? px[i] : lo;
    hi = 0;
    for (size_t i = 0; i < n; i++) hi = px[i] - lo > hi ? px[i] - lo : hi;
    for (size_t i = 0; i < n; i++) px[i] = hi > 0 ? (px[i] - lo) / hi * 255.0f : px[i] - lo;
  }
  for (size_t i = 0; i < n; i++) px[i] = truncf(px[i]);
}

/* C.image_save(path, t (H, W, C), quality, scale) */
static int l_image_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lunet_tensor *t = lunetL_checktensor(L, 2);
  int quality = (int)luaL_optinteger(L, 3, 95);
  bool scale = lua_toboolean(L, 4);
  if (lunet_tensor_ndim(t) != 3) return luaL_error(L, "save_img: expected an image (height, width, channels)");
  lunet_ctx *ctx = lunetL_ctx(L);
  size_t count = (size_t)lunet_tensor_numel(t);
  float *px = malloc(sizeof(float) * (count ? count : 1));
  lunet_tensor *f = lunet_tensor_dtype(t) == LUNET_F32 ? lunet_tensor_retain(t) : lunet_op_cast(ctx, t, LUNET_F32);
  lunet_status st = !px ? lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory")
                    : !f ? lunet_ctx_status(ctx) : lunet_tensor_read(ctx, f, px, sizeof(float) * count);
  if (!st) {
    keras_pixels(px, count, scale);
    st = lunet_image_save(ctx, path, px, lunet_tensor_dim(t, 0), lunet_tensor_dim(t, 1), (int)lunet_tensor_dim(t, 2),
                          quality);
  }
  free(px);
  lunet_tensor_release(f);
  if (st) return lunetL_error(L, NULL);
  return 0;
}

static const luaL_Reg functions[] = {{"listdir", l_listdir},
                                     {"image_info", l_image_info},
                                     {"images_load_async", l_images_load_async},
                                     {"images_wait", l_images_wait},
                                     {"image_save", l_image_save},
                                     {NULL, NULL}};

void lunetL_open_image(lua_State *L) {
  if (luaL_newmetatable(L, PENDING_MT)) {
    lua_pushcfunction(L, pending_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
}
