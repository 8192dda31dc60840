/*
 * The Lua binding's entry (luaopen_lunet_core) and the tensor userdata.
 * Lua errors are raised only here, after releasing what the call holds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lunet_lua.h"
#include "lunet/backend.h"
#include "lunet/plugin.h"

#define CTX_KEY "lunet.ctx"

/* ---- context ---- */

static int ctx_gc(lua_State *L) {
  lunet_ctx **p = luaL_checkudata(L, 1, CTX_KEY);
  if (*p) lunet_ctx_free(*p);
  *p = NULL;
  return 0;
}

lunet_ctx *lunetL_ctx(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, CTX_KEY "_v") == LUA_TUSERDATA) {
    lunet_ctx *ctx = *(lunet_ctx **)lua_touserdata(L, -1);
    lua_pop(L, 1);
    return ctx;
  }
  lua_pop(L, 1);
  lunet_ctx **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = lunet_ctx_new();
  if (!*p) luaL_error(L, "lunet: out of memory creating a context");
  if (luaL_newmetatable(L, CTX_KEY)) {
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, CTX_KEY "_v");
  return *p;
}

/* The status of the last error raised to Lua (C.last_error_status()): fit
 * tells a device failure from others by it. */
static lunet_status last_status;

int lunetL_error(lua_State *L, const char *what) {
  lunet_ctx *ctx = lunetL_ctx(L);
  const char *msg = lunet_ctx_error(ctx);
  last_status = lunet_ctx_status(ctx);
  /* an error that reports the Ctrl-C takes it: the shell's hook then lets
   * this message through instead of its plain "interrupted" */
  if (last_status == LUNET_ERR_INTERRUPTED) lunet_interrupt_clear();
  if (what)
    lua_pushfstring(L, "%s: %s", what, msg);
  else
    lua_pushstring(L, msg);
  lunet_clear_error(ctx);
  return lua_error(L);
}

/* ---- tensor userdata ---- */

lunet_tensor *lunetL_totensor(lua_State *L, int arg) {
  lunet_tensor **p = luaL_testudata(L, arg, LUNETL_TENSOR);
  return p ? *p : NULL;
}

lunet_tensor *lunetL_checktensor(lua_State *L, int arg) {
  lunet_tensor **p = luaL_testudata(L, arg, LUNETL_TENSOR);
  if (!p) luaL_typeerror(L, arg, "tensor");
  if (!*p) luaL_argerror(L, arg, "tensor was freed");
  return *p;
}

static int new_tensor_userdata(lua_State *L) {
  lunet_tensor **p = lua_newuserdatauv(L, sizeof *p, 0);
  *p = lua_touserdata(L, 1);
  luaL_setmetatable(L, LUNETL_TENSOR);
  return 1;
}

/* Takes t's reference; if the userdata cannot be made (out of memory), t
 * is released before the error propagates, not lost. */
void lunetL_pushtensor(lua_State *L, lunet_tensor *t) {
  if (!t) lunetL_error(L, NULL);
  lua_pushcfunction(L, new_tensor_userdata); /* a light C function and a light userdata: no allocation */
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lunet_tensor_release(t);
    lua_error(L);
  }
}

/* A number argument becomes a scalar tensor on the other operand's backend. */
/* NULL with the context's error set when the scalar cannot be made; the
 * caller raises after releasing what it holds. */
static lunet_tensor *operand(lua_State *L, int arg, const lunet_tensor *like) {
  lunet_tensor *t = lunetL_totensor(L, arg);
  if (t) return lunet_tensor_retain(t);
  float v = (float)lua_tonumber(L, arg);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *s = lunet_op_new(ctx, like, LUNET_F32, 0, NULL);
  if (s && lunet_op_fill(ctx, s, v)) {
    lunet_tensor_release(s);
    s = NULL;
  }
  return s;
}

static int arith(lua_State *L, lunet_tensor *(*fn)(lunet_ctx *, lunet_tensor *, lunet_tensor *)) {
  lunet_tensor *like = lunetL_totensor(L, 1);
  if (!like) like = lunetL_checktensor(L, 2);
  /* Type errors first: nothing is held yet when they raise. */
  for (int arg = 1; arg <= 2; arg++)
    if (!lunetL_totensor(L, arg) && !lua_isnumber(L, arg))
      luaL_typeerror(L, arg, "tensor or number");
  lunet_tensor *a = operand(L, 1, like), *b = a ? operand(L, 2, like) : NULL;
  lunet_tensor *y = a && b ? fn(lunetL_ctx(L), a, b) : NULL;
  lunet_tensor_release(a);
  lunet_tensor_release(b);
  lunetL_pushtensor(L, y);
  return 1;
}

static int t_add(lua_State *L) { return arith(L, lunet_add); }
static int t_sub(lua_State *L) { return arith(L, lunet_sub); }
static int t_mul(lua_State *L) { return arith(L, lunet_mul); }
static int t_div(lua_State *L) { return arith(L, lunet_div); }
static int t_pow(lua_State *L) { return arith(L, lunet_pow); }
static int t_maximum(lua_State *L) { return arith(L, lunet_maximum); }

static int t_unm(lua_State *L) {
  lunetL_pushtensor(L, lunet_unary(lunetL_ctx(L), LUNET_UNARY_NEG, lunetL_checktensor(L, 1), 0, 0));
  return 1;
}

static int unary(lua_State *L, lunet_unary_op op, float alpha, float beta) {
  lunetL_pushtensor(L, lunet_unary(lunetL_ctx(L), op, lunetL_checktensor(L, 1), alpha, beta));
  return 1;
}

static int t_exp(lua_State *L) { return unary(L, LUNET_UNARY_EXP, 0, 0); }
static int t_log(lua_State *L) { return unary(L, LUNET_UNARY_LOG, 0, 0); }
static int t_sqrt(lua_State *L) { return unary(L, LUNET_UNARY_SQRT, 0, 0); }
static int t_abs(lua_State *L) { return unary(L, LUNET_UNARY_ABS, 0, 0); }
static int t_relu(lua_State *L) { return unary(L, LUNET_UNARY_RELU, 0, 0); }
static int t_sigmoid(lua_State *L) { return unary(L, LUNET_UNARY_SIGMOID, 0, 0); }
static int t_tanh(lua_State *L) { return unary(L, LUNET_UNARY_TANH, 0, 0); }
static int t_gelu(lua_State *L) { return unary(L, LUNET_UNARY_GELU, 0, 0); }
static int t_square(lua_State *L) { return unary(L, LUNET_UNARY_SQUARE, 0, 0); }
static int t_leaky_relu(lua_State *L) {
  return unary(L, LUNET_UNARY_LEAKY_RELU, (float)luaL_optnumber(L, 2, 0.2), 0);
}
static int t_clip(lua_State *L) {
  return unary(L, LUNET_UNARY_CLIP, (float)luaL_checknumber(L, 2), (float)luaL_checknumber(L, 3));
}

/* t:softmax([axis]): the last axis only (-1, or its number counted from 1) */
static int softmax_on(lua_State *L, bool log) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lua_Integer axis = luaL_optinteger(L, 2, -1);
  if (axis != -1 && axis != lunet_tensor_ndim(t))
    return luaL_error(L, "%s: over the last axis only (-1 or %d), got axis %d; permute the axis last first",
                      log ? "log_softmax" : "softmax", lunet_tensor_ndim(t), (int)axis);
  lunetL_pushtensor(L, lunet_softmax(lunetL_ctx(L), t, log));
  return 1;
}
static int t_softmax(lua_State *L) { return softmax_on(L, false); }
static int t_log_softmax(lua_State *L) { return softmax_on(L, true); }

static int t_matmul(lua_State *L) {
  lunetL_pushtensor(
      L, lunet_matmul(lunetL_ctx(L), lunetL_checktensor(L, 1), lunetL_checktensor(L, 2)));
  return 1;
}

/* Lua axes are 1-based (negative from the end); nil means all. */
static int check_axis(lua_State *L, int arg, const lunet_tensor *t) {
  if (lua_isnoneornil(L, arg)) return LUNET_ALL_AXES;
  lua_Integer a = luaL_checkinteger(L, arg);
  int nd = lunet_tensor_ndim(t);
  if (a == 0 || a > nd || a < -nd)
    luaL_argerror(
        L, arg, lua_pushfstring(L, "axis %d is out of range for a tensor of rank %d", (int)a, nd));
  return a > 0 ? (int)a - 1 : (int)a + nd;
}

static int reduce(lua_State *L, lunet_reduce_op op) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int axis = check_axis(L, 2, t);
  lunetL_pushtensor(L, lunet_reduce(lunetL_ctx(L), op, t, axis, lua_toboolean(L, 3)));
  return 1;
}

static int t_sum(lua_State *L) { return reduce(L, LUNET_REDUCE_SUM); }
static int t_mean(lua_State *L) { return reduce(L, LUNET_REDUCE_MEAN); }
static int t_max(lua_State *L) { return reduce(L, LUNET_REDUCE_MAX); }
static int t_min(lua_State *L) { return reduce(L, LUNET_REDUCE_MIN); }

static int t_argmax(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lua_isnoneornil(L, 2) && lunet_tensor_ndim(t) != 1) {
    /* no axis: index into the flattened tensor, like numpy */
    int64_t n = lunet_tensor_numel(t);
    lunet_tensor *flat = lunet_op_reshape(ctx, t, 1, &n);
    lunet_tensor *y = flat ? lunet_op_argmax(ctx, flat) : NULL;
    lunet_tensor_release(flat);
    lunetL_pushtensor(L, y);
    return 1;
  }
  int axis = lua_isnoneornil(L, 2) ? 0 : check_axis(L, 2, t);
  if (axis != lunet_tensor_ndim(t) - 1) luaL_argerror(L, 2, "argmax supports the last axis (-1)");
  lunetL_pushtensor(L, lunet_op_argmax(ctx, t));
  return 1;
}

/* Shape from varargs or one table, starting at `arg`; -1 infers one size. */
static int read_shape(lua_State *L, int arg, int64_t *shape) {
  int n = 0;
  if (lua_istable(L, arg)) {
    n = (int)luaL_len(L, arg);
    if (n > LUNET_MAX_DIMS) luaL_argerror(L, arg, "too many dimensions");
    for (int i = 0; i < n; i++) {
      lua_geti(L, arg, i + 1);
      int ok;
      shape[i] = lua_tointegerx(L, -1, &ok);
      if (!ok) luaL_argerror(L, arg, "shape entries must be integers");
      lua_pop(L, 1);
    }
    return n;
  }
  for (int a = arg; !lua_isnoneornil(L, a); a++) {
    if (n == LUNET_MAX_DIMS) luaL_argerror(L, a, "too many dimensions");
    shape[n++] = luaL_checkinteger(L, a);
  }
  return n;
}

static int t_reshape(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int64_t shape[LUNET_MAX_DIMS];
  int n = read_shape(L, 2, shape), infer = -1;
  int64_t known = 1;
  for (int i = 0; i < n; i++) {
    if (shape[i] == -1) {
      if (infer >= 0) luaL_argerror(L, 2, "only one dimension can be -1");
      infer = i;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) shape[infer] = known ? lunet_tensor_numel(t) / known : 0;
  lunetL_pushtensor(L, lunet_reshape(lunetL_ctx(L), t, n, shape));
  return 1;
}

static int t_permute(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int64_t p[LUNET_MAX_DIMS];
  int n = read_shape(L, 2, p), perm[LUNET_MAX_DIMS];
  if (n != lunet_tensor_ndim(t))
    luaL_argerror(L, 2, lua_pushfstring(L, "need %d axes, got %d", lunet_tensor_ndim(t), n));
  for (int i = 0; i < n; i++) perm[i] = (int)p[i] - 1;
  lunetL_pushtensor(L, lunet_permute(lunetL_ctx(L), t, perm));
  return 1;
}

static int t_transpose(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int nd = lunet_tensor_ndim(t), perm[LUNET_MAX_DIMS];
  if (nd < 2) luaL_argerror(L, 1, "transpose needs at least 2 dimensions");
  int a = lua_isnoneornil(L, 2) ? nd - 2 : check_axis(L, 2, t);
  int b = lua_isnoneornil(L, 3) ? nd - 1 : check_axis(L, 3, t);
  for (int i = 0; i < nd; i++) perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  lunetL_pushtensor(L, lunet_permute(lunetL_ctx(L), t, perm));
  return 1;
}

static int t_shape(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  int nd = lunet_tensor_ndim(t);
  if (!lua_isnoneornil(L, 2)) {
    int a = check_axis(L, 2, t);
    lua_pushinteger(L, lunet_tensor_dim(t, a));
    return 1;
  }
  lua_createtable(L, nd, 0);
  for (int i = 0; i < nd; i++) {
    lua_pushinteger(L, lunet_tensor_dim(t, i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int t_numel(lua_State *L) {
  lua_pushinteger(L, lunet_tensor_numel(lunetL_checktensor(L, 1)));
  return 1;
}

static int t_dim(lua_State *L) {
  lua_pushinteger(L, lunet_tensor_ndim(lunetL_checktensor(L, 1)));
  return 1;
}

static int t_dtype(lua_State *L) {
  lua_pushstring(L, lunet_dtype_name(lunet_tensor_dtype(lunetL_checktensor(L, 1))));
  return 1;
}

static int t_device(lua_State *L) {
  lua_pushstring(L, lunet_tensor_backend(lunetL_checktensor(L, 1)));
  return 1;
}

/* t:on_host(): whether the tensor's backend keeps its data in host memory. */
static int t_on_host(lua_State *L) {
  lua_pushboolean(L, lunet_tensor_host_data(lunetL_checktensor(L, 1)) != NULL);
  return 1;
}

/* The tensor's elements as doubles on the host (caller frees); int32 read
 * as they are (through float32 they would round above 2^24), the other
 * types through float32.  Both are 4 bytes an element. */
static double *host_values(lua_State *L, lunet_tensor *t) {
  lunet_ctx *ctx = lunetL_ctx(L);
  int64_t n = lunet_tensor_numel(t);
  bool i32 = lunet_tensor_dtype(t) == LUNET_I32;
  lunet_tensor *f = i32 || lunet_tensor_dtype(t) == LUNET_F32 ? lunet_tensor_retain(t)
                                                              : lunet_op_cast(ctx, t, LUNET_F32);
  void *buf = malloc(4 * (size_t)(n ? n : 1));
  double *out = malloc(sizeof(double) * (size_t)(n ? n : 1));
  if (!f || !buf || !out || lunet_tensor_read(ctx, f, buf, 4 * (size_t)n)) {
    lunet_tensor_release(f);
    free(buf);
    free(out);
    if (lunet_ctx_status(ctx) == LUNET_OK) luaL_error(L, "out of host memory");
    lunetL_error(L, NULL);
  }
  /* two loops: one ?: of int32 and float would make both float */
  if (i32)
    for (int64_t i = 0; i < n; i++) out[i] = ((const int32_t *)buf)[i];
  else
    for (int64_t i = 0; i < n; i++) out[i] = ((const float *)buf)[i];
  lunet_tensor_release(f);
  free(buf);
  return out;
}

static void push_nested(lua_State *L, const double *v, const int64_t *shape, int nd, int64_t *pos) {
  if (nd == 0) {
    lua_pushnumber(L, v[(*pos)++]);
    return;
  }
  lua_createtable(L, (int)shape[0], 0);
  for (int64_t i = 0; i < shape[0]; i++) {
    push_nested(L, v, shape + 1, nd - 1, pos);
    lua_rawseti(L, -2, i + 1);
  }
}

static int t_totable(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  double *v = host_values(L, t);
  int64_t pos = 0;
  push_nested(L, v, lunet_tensor_shape(t), lunet_tensor_ndim(t), &pos);
  free(v);
  return 1;
}

static int t_item(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  if (lunet_tensor_numel(t) != 1)
    luaL_argerror(L, 1,
                  lua_pushfstring(L, "item() needs a tensor of one element, this one has %d",
                                  (int)lunet_tensor_numel(t)));
  double v;
  if (lunet_tensor_item(lunetL_ctx(L), t, 0, &v)) lunetL_error(L, NULL);
  lua_pushnumber(L, v);
  return 1;
}

/* ---- printing ---- */

typedef struct printer {
  luaL_Buffer *b;
  const double *v;
  const int64_t *shape;
  int nd;
  bool ints, sci;
} printer;

static void put_value(printer *p, double x) {
  char s[64];
  if (p->ints)
    snprintf(s, sizeof s, "%.0f", x);
  else if (p->sci)
    snprintf(s, sizeof s, "%.4e", x);
  else
    snprintf(s, sizeof s, "%.4f", x);
  luaL_addstring(p->b, s);
}

/* numpy-style: more than 1000 elements shows 3 at each end of every axis. */
static void put_dim(printer *p, int d, int64_t off, int64_t stride, bool abridge, int indent) {
  int64_t n = p->shape[d], inner = stride / (n ? n : 1);
  luaL_addchar(p->b, '[');
  for (int64_t i = 0; i < n; i++) {
    if (abridge && n > 6 && i == 3) {
      luaL_addstring(p->b, d == p->nd - 1 ? "..., " : "...,\n");
      if (d != p->nd - 1)
        for (int k = 0; k < indent + 1; k++) luaL_addchar(p->b, ' ');
      i = n - 3;
    }
    if (d == p->nd - 1)
      put_value(p, p->v[off + i]);
    else
      put_dim(p, d + 1, off + i * inner, inner, abridge, indent + 1);
    if (i + 1 < n) {
      luaL_addchar(p->b, ',');
      if (d == p->nd - 1) {
        luaL_addchar(p->b, ' ');
      } else {
        for (int k = d; k < p->nd - 1; k++) luaL_addchar(p->b, '\n');
        for (int k = 0; k < indent + 1; k++) luaL_addchar(p->b, ' ');
      }
    }
  }
  luaL_addchar(p->b, ']');
}

static int t_tostring(lua_State *L) {
  lunet_tensor **ud = luaL_checkudata(L, 1, LUNETL_TENSOR);
  if (!*ud) {
    lua_pushliteral(L, "tensor(freed)");
    return 1;
  }
  lunet_tensor *t = *ud;
  int64_t n = lunet_tensor_numel(t);
  double *v = host_values(L, t);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "tensor(");
  printer p = {&b, v, lunet_tensor_shape(t), lunet_tensor_ndim(t), true, false};
  double amax = 0;
  for (int64_t i = 0; i < n; i++) {
    if (v[i] != floor(v[i]) || fabs(v[i]) > 1e15) p.ints = false;
    if (fabs(v[i]) > amax) amax = fabs(v[i]);
  }
  if (lunet_tensor_dtype(t) != LUNET_F32) p.ints = true;
  p.sci = !p.ints && (amax >= 1e5 || (amax > 0 && amax < 1e-3));
  if (p.nd == 0)
    put_value(&p, n ? v[0] : 0);
  else
    put_dim(&p, 0, 0, n, n > 1000, 7);
  free(v);
  char shape[160];
  lunet_shape_str(p.nd, p.shape, shape, sizeof shape);
  lua_pushfstring(L, ", shape=%s, dtype=%s, device=%s", shape,
                  lunet_dtype_name(lunet_tensor_dtype(t)), lunet_tensor_backend(t));
  luaL_addvalue(&b);
  if (lunet_tensor_requires_grad(t)) luaL_addstring(&b, ", requires_grad=true");
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}

static int t_gc(lua_State *L) {
  lunet_tensor **p = luaL_checkudata(L, 1, LUNETL_TENSOR);
  lunet_tensor_release(*p);
  *p = NULL;
  return 0;
}

/* ---- autograd ---- */

static int t_requires_grad(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  if (lua_isnone(L, 2)) {
    lua_pushboolean(L, lunet_tensor_requires_grad(t));
    return 1;
  }
  lunet_tensor_set_requires_grad(t, lua_toboolean(L, 2));
  lua_settop(L, 1);
  return 1;
}

static int t_backward(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lunet_tensor *g = lua_isnoneornil(L, 2) ? NULL : lunetL_checktensor(L, 2);
  if (lunet_backward(lunetL_ctx(L), t, g)) lunetL_error(L, NULL);
  return 0;
}

static int t_zero_grad(lua_State *L) {
  lunet_tensor_zero_grad(lunetL_checktensor(L, 1));
  return 0;
}

static int t_detach(lua_State *L) {
  lunetL_pushtensor(L, lunet_detach(lunetL_ctx(L), lunetL_checktensor(L, 1)));
  return 1;
}

static int t_to(lua_State *L) {
  lunetL_pushtensor(
      L, lunet_tensor_to(lunetL_ctx(L), lunetL_checktensor(L, 1), luaL_checkstring(L, 2)));
  return 1;
}

static int t_clone(lua_State *L) {
  lunetL_pushtensor(L, lunet_copy(lunetL_ctx(L), lunetL_checktensor(L, 1)));
  return 1;
}

static int t_float(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lunetL_pushtensor(L, lunet_tensor_dtype(t) == LUNET_F32
                           ? lunet_tensor_retain(t)
                           : lunet_op_cast(lunetL_ctx(L), t, LUNET_F32));
  return 1;
}

static int t_fill(lua_State *L) {
  if (lunet_op_fill(lunetL_ctx(L), lunetL_checktensor(L, 1), (float)luaL_checknumber(L, 2)))
    lunetL_error(L, "fill");
  lua_settop(L, 1);
  return 1;
}

static int t_eq(lua_State *L) {
  lunet_tensor *like = lunetL_checktensor(L, 1);
  if (!lunetL_totensor(L, 2)) luaL_checknumber(L, 2);
  lunet_tensor *b = operand(L, 2, like);
  lunet_tensor *y = b ? lunet_compare(lunetL_ctx(L), LUNET_BINARY_EQ, like, b) : NULL;
  lunet_tensor_release(b);
  lunetL_pushtensor(L, y);
  return 1;
}

/* ---- indexing: t[i] (1-based), t[{spec, ...}] with spec i, {a, b},
 * {a, b, step = s}, {} ---- */

static int64_t norm_index(lua_State *L, lua_Integer i, int64_t n) {
  if (i < 0) i += n + 1;
  if (i < 1 || i > n)
    luaL_error(L, "index %d is out of range for a dimension of size %d", (int)i, (int)n);
  return i - 1;
}

/* A slice spec {i, {a, b}, {}, ...} read against t's shape; keep/shape: the
 * axes a range kept (integer indices drop theirs). */
typedef struct slice_spec {
  int64_t start[LUNET_MAX_DIMS], stop[LUNET_MAX_DIMS], step[LUNET_MAX_DIMS];
  int64_t shape[LUNET_MAX_DIMS];
  int keep;
} slice_spec;

/* Index d's range at idx: {} (everything), {first, last} or {first, last,
 * step = s}, 1-based and inclusive, negative from the end.  Anything else
 * (a list of indices, one number, other keys) is an error naming the forms,
 * never a silent guess. */
static void read_range(lua_State *L, int idx, int d, int64_t n, slice_spec *sl) {
  lua_Integer len = luaL_len(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    bool ok = (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= 2) ||
              (lua_type(L, -2) == LUA_TSTRING && !strcmp(lua_tostring(L, -2), "step"));
    if (!ok || len > 2 || len == 1) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (lua_Integer k = 1; k <= len && k <= 8; k++) {
        lua_geti(L, idx, k);
        if (k > 1) luaL_addstring(&b, ", ");
        luaL_addstring(&b, luaL_tolstring(L, -1, NULL));
        lua_pop(L, 2);
      }
      luaL_pushresult(&b);
      luaL_error(L,
                 "index %d: {%s} is not a range; a range is {first, last} or {first, last, step = s} (1-based, "
                 "inclusive), {} is everything, and picking entries is t:index_select(%d, ids) (0-based ids)",
                 d + 1, lua_tostring(L, -1), d + 1);
    }
    lua_pop(L, 1);
  }
  lua_geti(L, idx, 1);
  lua_geti(L, idx, 2);
  lua_getfield(L, idx, "step");
  if (!lua_isnil(L, -3)) {
    if (!lua_isinteger(L, -3)) luaL_error(L, "index %d: the range's first must be an integer", d + 1);
    sl->start[d] = norm_index(L, lua_tointeger(L, -3), n);
  }
  if (!lua_isnil(L, -2)) {
    if (!lua_isinteger(L, -2)) luaL_error(L, "index %d: the range's last must be an integer", d + 1);
    sl->stop[d] = norm_index(L, lua_tointeger(L, -2), n) + 1;
  }
  if (!lua_isnil(L, -1)) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1)
      luaL_error(L, "index %d: step must be a positive integer", d + 1);
    sl->step[d] = lua_tointeger(L, -1);
  }
  lua_pop(L, 3);
}

static void read_spec(lua_State *L, const lunet_tensor *t, int spec, slice_spec *sl) {
  int nd = lunet_tensor_ndim(t);
  int nspec = (int)luaL_len(L, spec);
  if (nspec > nd) luaL_error(L, "%d indices for a tensor of rank %d", nspec, nd);
  sl->keep = 0;
  for (int d = 0; d < nd; d++) {
    int64_t n = lunet_tensor_dim(t, d);
    sl->start[d] = 0;
    sl->stop[d] = n;
    sl->step[d] = 1;
    lua_geti(L, spec, d + 1);
    if (lua_isinteger(L, -1)) {
      sl->start[d] = norm_index(L, lua_tointeger(L, -1), n);
      sl->stop[d] = sl->start[d] + 1;
    } else if (lua_istable(L, -1)) {
      read_range(L, lua_gettop(L), d, n, sl);
      if (sl->stop[d] < sl->start[d]) sl->stop[d] = sl->start[d];
      sl->shape[sl->keep++] = (sl->stop[d] - sl->start[d] + sl->step[d] - 1) / sl->step[d];
    } else if (lua_isnil(L, -1)) {
      sl->shape[sl->keep++] = n;
    } else {
      luaL_error(L, "index %d must be an integer, a range {first, last} (or {first, last, step = s}) or {}", d + 1);
    }
    lua_pop(L, 1);
  }
}

static int t_slice_spec(lua_State *L, lunet_tensor *t, int spec) {
  slice_spec sl;
  read_spec(L, t, spec, &sl);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *s = lunet_slice(ctx, t, sl.start, sl.stop, sl.step);
  if (!s) lunetL_error(L, NULL);
  lunet_tensor *r = lunet_reshape(ctx, s, sl.keep, sl.shape);
  lunet_tensor_release(s);
  lunetL_pushtensor(L, r);
  return 1;
}

/* t[i] = v, t[{spec}] = v: v a number (filled in) or a tensor of the
 * slice's element count. */
static int t_newindex(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  slice_spec sl;
  if (lua_isinteger(L, 2)) {
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    lua_replace(L, 2);
  } else if (!lua_istable(L, 2)) {
    return luaL_error(L, "tensors are assigned by integer index or a table of ranges");
  }
  read_spec(L, t, 2, &sl);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *src = lunetL_totensor(L, 3), *tmp = NULL;
  if (!src) {
    float v = (float)luaL_checknumber(L, 3);
    tmp = lunet_op_new(ctx, t, lunet_tensor_dtype(t), sl.keep, sl.shape);
    if (!tmp || lunet_op_fill(ctx, tmp, v)) {
      lunet_tensor_release(tmp);
      return lunetL_error(L, NULL);
    }
    src = tmp;
  }
  lunet_status s = lunet_op_assign_slice(ctx, t, sl.start, sl.stop, sl.step, src);
  lunet_tensor_release(tmp);
  if (s) lunetL_error(L, NULL);
  return 0;
}

static int t_index(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (!strcmp(k, "grad")) {
      lunet_tensor *g = lunet_tensor_grad_get(t);
      if (!g)
        lua_pushnil(L);
      else
        lunetL_pushtensor(L, lunet_tensor_retain(g));
      return 1;
    }
    luaL_getmetafield(L, 1, "__methods");
    lua_getfield(L, -1, k);
    return 1;
  }
  if (lua_isinteger(L, 2)) {
    if (lunet_tensor_ndim(t) == 0) luaL_error(L, "cannot index a scalar tensor (use t:item())");
    if (lunet_tensor_ndim(t) == 1) {
      double v;
      int64_t i = norm_index(L, lua_tointeger(L, 2), lunet_tensor_dim(t, 0));
      if (lunet_tensor_item(lunetL_ctx(L), t, i, &v)) lunetL_error(L, NULL);
      lua_pushnumber(L, v);
      return 1;
    }
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    return t_slice_spec(L, t, lua_gettop(L));
  }
  if (lua_istable(L, 2)) return t_slice_spec(L, t, 2);
  return luaL_error(L, "tensors are indexed by integers, tables of ranges, or method names");
}

static int t_len(lua_State *L) {
  lunet_tensor *t = lunetL_checktensor(L, 1);
  lua_pushinteger(L, lunet_tensor_ndim(t) ? lunet_tensor_dim(t, 0) : 0);
  return 1;
}

static const luaL_Reg tensor_methods[] = {{"shape", t_shape},
                                          {"size", t_shape},
                                          {"numel", t_numel},
                                          {"dim", t_dim},
                                          {"dtype", t_dtype},
                                          {"device", t_device},
                                          {"on_host", t_on_host},
                                          {"totable", t_totable},
                                          {"item", t_item},
                                          {"reshape", t_reshape},
                                          {"view", t_reshape},
                                          {"permute", t_permute},
                                          {"transpose", t_transpose},
                                          {"matmul", t_matmul},
                                          {"sum", t_sum},
                                          {"mean", t_mean},
                                          {"max", t_max},
                                          {"min", t_min},
                                          {"argmax", t_argmax},
                                          {"exp", t_exp},
                                          {"log", t_log},
                                          {"sqrt", t_sqrt},
                                          {"abs", t_abs},
                                          {"relu", t_relu},
                                          {"sigmoid", t_sigmoid},
                                          {"tanh", t_tanh},
                                          {"gelu", t_gelu},
                                          {"leaky_relu", t_leaky_relu},
                                          {"square", t_square},
                                          {"clip", t_clip},
                                          {"softmax", t_softmax},
                                          {"log_softmax", t_log_softmax},
                                          {"maximum", t_maximum},
                                          {"pow", t_pow},
                                          {"eq", t_eq},
                                          {"requires_grad", t_requires_grad},
                                          {"backward", t_backward},
                                          {"zero_grad", t_zero_grad},
                                          {"detach", t_detach},
                                          {"to", t_to},
                                          {"clone", t_clone},
                                          {"float", t_float},
                                          {"fill", t_fill},
                                          {"free", t_gc},
                                          {NULL, NULL}};

static const luaL_Reg tensor_meta[] = {
    {"__add", t_add},  {"__sub", t_sub},     {"__mul", t_mul},           {"__div", t_div},
    {"__pow", t_pow},  {"__unm", t_unm},     {"__tostring", t_tostring}, {"__gc", t_gc},
    {"__close", t_gc}, {"__index", t_index}, {"__len", t_len},           {"__newindex", t_newindex},
    {NULL, NULL}};

/* ---- constructors ---- */

static void nested_shape(lua_State *L, int idx, int64_t *shape, int *nd) {
  *nd = 0;
  lua_pushvalue(L, idx);
  while (lua_istable(L, -1)) {
    if (*nd == LUNET_MAX_DIMS) luaL_error(L, "tensor: too many dimensions");
    shape[(*nd)++] = (int64_t)luaL_len(L, -1);
    lua_geti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
}

/* out: float32 values, or int32 ones when i32 (exact for every int32: a
 * fraction is cut toward zero, as the cast; outside int32 is an error) */
static void fill_nested(lua_State *L, int idx, const int64_t *shape, int nd, int d, void *out, bool i32,
                        int64_t *pos) {
  if ((int64_t)luaL_len(L, idx) != shape[d])
    luaL_error(L, "tensor: ragged nested table (axis %d has lengths %d and %d)", d + 1,
               (int)shape[d], (int)luaL_len(L, idx));
  for (int64_t i = 1; i <= shape[d]; i++) {
    lua_geti(L, idx, i);
    if (d + 1 < nd) {
      if (!lua_istable(L, -1)) luaL_error(L, "tensor: ragged nested table at axis %d", d + 2);
      fill_nested(L, lua_gettop(L), shape, nd, d + 1, out, i32, pos);
    } else {
      int ok;
      lua_Number v = lua_tonumberx(L, -1, &ok);
      if (!ok)
        luaL_error(L, "tensor: element %d is a %s, not a number", (int)(*pos + 1),
                   luaL_typename(L, -1));
      if (!i32) {
        ((float *)out)[(*pos)++] = (float)v;
      } else {
        if (!(v > -2147483649.0 && v < 2147483648.0))
          luaL_error(L, "tensor: element %d (%f) does not fit int32", (int)(*pos + 1), (double)v);
        ((int32_t *)out)[(*pos)++] = (int32_t)v;
      }
    }
    lua_pop(L, 1);
  }
}

static lunet_dtype check_dtype(lua_State *L, int arg) {
  static const char *const names[] = {"float32", "uint8", "int32", NULL};
  return (lunet_dtype)luaL_checkoption(L, arg, "float32", names);
}

static int l_tensor(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lua_isnumber(L, 1)) {
    float v = (float)lua_tonumber(L, 1);
    lunetL_pushtensor(L, lunet_tensor_from_data(ctx, LUNET_F32, 0, NULL, &v));
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lunet_dtype dt = check_dtype(L, 2);
  int64_t shape[LUNET_MAX_DIMS], pos = 0;
  int nd;
  nested_shape(L, 1, shape, &nd);
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  /* Scratch as a userdata: the collector frees it if fill_nested raises.
   * int32 is filled as it is (through float32 it would round above 2^24);
   * uint8 through float32 and the cast (exact: 0..255). */
  bool i32 = dt == LUNET_I32;
  void *data = lua_newuserdatauv(L, 4 * (size_t)(n ? n : 1), 0);
  if (n) fill_nested(L, 1, shape, nd, 0, data, i32, &pos);
  lunet_tensor *t = lunet_tensor_from_data(ctx, i32 ? LUNET_I32 : LUNET_F32, nd, shape, data);
  lua_pop(L, 1);
  if (t && dt != LUNET_F32 && !i32) {
    lunet_tensor *c = lunet_op_cast(ctx, t, dt);
    lunet_tensor_release(t);
    t = c;
  }
  lunetL_pushtensor(L, t);
  return 1;
}

static int filled(lua_State *L, float v) {
  int64_t shape[LUNET_MAX_DIMS];
  int nd = read_shape(L, 1, shape);
  lunet_ctx *ctx = lunetL_ctx(L);
  lunet_tensor *t = lunet_tensor_new(ctx, LUNET_F32, nd, shape);
  if (t && lunet_op_fill(ctx, t, v)) {
    lunet_tensor_release(t);
    t = NULL;
  }
  lunetL_pushtensor(L, t);
  return 1;
}

static int l_zeros(lua_State *L) { return filled(L, 0); }
static int l_ones(lua_State *L) { return filled(L, 1); }
static int l_full(lua_State *L) {
  float v = (float)luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return filled(L, v);
}

/* Random tensors from the context's counter-based stream. */
static int random_tensor(lua_State *L, bool normal) {
  int64_t shape[LUNET_MAX_DIMS];
  int nd = read_shape(L, 1, shape);
  lunet_ctx *ctx = lunetL_ctx(L);
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "out of host memory");
  uint64_t seed = lunet_seed_get(ctx), c = lunet_rng_take(ctx, (uint64_t)n * 2);
  for (int64_t i = 0; i < n; i++) {
    float u = lunet_philox_uniform(seed, c + 2 * (uint64_t)i);
    if (normal) {
      float u2 = lunet_philox_uniform(seed, c + 2 * (uint64_t)i + 1);
      v[i] = sqrtf(-2.0f * logf(1.0f - u)) * cosf(6.28318530718f * u2);
    } else {
      v[i] = u;
    }
  }
  lunet_tensor *t = lunet_tensor_from_data(ctx, LUNET_F32, nd, shape, v);
  free(v);
  lunetL_pushtensor(L, t);
  return 1;
}

static int l_rand(lua_State *L) { return random_tensor(L, false); }
static int l_randn(lua_State *L) { return random_tensor(L, true); }

static int l_arange(lua_State *L) {
  double start = 0, stop, step = luaL_optnumber(L, 3, 1);
  if (lua_isnoneornil(L, 2))
    stop = luaL_checknumber(L, 1);
  else {
    start = luaL_checknumber(L, 1);
    stop = luaL_checknumber(L, 2);
  }
  if (step == 0) luaL_argerror(L, 3, "step must not be zero");
  double count = ceil((stop - start) / step);
  int64_t n = count > 0 ? (int64_t)count : 0;
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "out of host memory");
  for (int64_t i = 0; i < n; i++) v[i] = (float)(start + (double)i * step);
  lunet_tensor *t = lunet_tensor_from_data(lunetL_ctx(L), LUNET_F32, 1, &n, v);
  free(v);
  lunetL_pushtensor(L, t);
  return 1;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, lunetL_totensor(L, 1) != NULL);
  return 1;
}

static int l_cat(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, 1);
  if (n < 1 || n > (1 << 24)) luaL_argerror(L, 1, "a list of 1 or more tensors expected");
  /* a userdata, so that an error below frees it */
  lunet_tensor **xs = lua_newuserdatauv(L, sizeof *xs * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    xs[i] = lunetL_checktensor(L, -1);
    lua_pop(L, 1);
  }
  lunet_tensor *t = xs[0];
  int axis = lua_isnoneornil(L, 2) ? 0 : check_axis(L, 2, t);
  lunetL_pushtensor(L, lunet_concat(lunetL_ctx(L), xs, (int)n, axis));
  return 1;
}

/* ---- library state ---- */

static int l_seed(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (!lua_isnoneornil(L, 1)) lunet_seed(ctx, (uint64_t)luaL_checkinteger(L, 1));
  lua_pushinteger(L, (lua_Integer)lunet_seed_get(ctx));
  return 1;
}

static int l_rng_take(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lunet_rng_take(lunetL_ctx(L), (uint64_t)luaL_checkinteger(L, 1)));
  return 1;
}

static int l_philox(lua_State *L) {
  lua_pushnumber(L, lunet_philox_uniform((uint64_t)luaL_checkinteger(L, 1),
                                         (uint64_t)luaL_checkinteger(L, 2)));
  return 1;
}

static int l_threads(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer n = luaL_checkinteger(L, 1); /* checked before the cast: 2^32 + 3 was 3 */
    if (n < 1 || n > LUNET_MAX_THREADS)
      return luaL_error(L, "threads must be from 1 to %d, got %I", LUNET_MAX_THREADS, n);
    if (lunet_set_threads(ctx, (int)n)) lunetL_error(L, "threads");
  }
  lua_pushinteger(L, lunet_get_threads(ctx));
  return 1;
}

static int l_backends(lua_State *L) {
  lunet_backend_info info[8];
  int n = lunet_backends(lunetL_ctx(L), info, 8);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n && i < 8; i++) {
    lua_createtable(L, 0, 6);
    lua_pushstring(L, info[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, info[i].device);
    lua_setfield(L, -2, "device");
    lua_pushstring(L, info[i].detail);
    lua_setfield(L, -2, "detail");
    lua_pushinteger(L, info[i].threads);
    lua_setfield(L, -2, "threads");
    lua_pushboolean(L, info[i].available);
    lua_setfield(L, -2, "available");
    lua_pushboolean(L, info[i].is_default);
    lua_setfield(L, -2, "default");
    lua_createtable(L, info[i].ndevices, 0);
    for (int d = 0; d < info[i].ndevices && d < LUNET_MAX_DEVICES; d++) {
      lua_createtable(L, 0, 5);
      lua_pushinteger(L, d);
      lua_setfield(L, -2, "index");
      lua_pushstring(L, info[i].devices[d].name);
      lua_setfield(L, -2, "name");
      lua_pushstring(L, info[i].devices[d].type);
      lua_setfield(L, -2, "type");
      lua_pushinteger(L, (lua_Integer)info[i].devices[d].memory);
      lua_setfield(L, -2, "memory");
      lua_pushboolean(L, d == info[i].device_index);
      lua_setfield(L, -2, "in_use");
      lua_rawseti(L, -2, d + 1);
    }
    lua_setfield(L, -2, "devices");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* C.use(name [, device]) */
static int l_use(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_use_device(ctx, luaL_checkstring(L, 1), (int)luaL_optinteger(L, 2, -1)))
    lunetL_error(L, "use");
  lua_pushstring(L, lunet_default_backend(ctx));
  return 1;
}

static int l_default_backend(lua_State *L) {
  lua_pushstring(L, lunet_default_backend(lunetL_ctx(L)));
  return 1;
}

static int l_no_grad(lua_State *L) {
  lunet_ctx *ctx = lunetL_ctx(L);
  bool prev = lunet_set_grad_enabled(ctx, !lua_toboolean(L, 1));
  lua_pushboolean(L, !prev);
  return 1;
}

static int l_interrupted(lua_State *L) {
  lua_pushboolean(L, lunet_interrupted());
  return 1;
}

/* Monotonic seconds, for progress bars and timing. */
static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)));
  return 1;
}

/* C.last_error_status() -> "device error", "out of memory", ... */
static int l_last_error_status(lua_State *L) {
  lua_pushstring(L, lunet_status_name(last_status));
  return 1;
}

static const luaL_Reg functions[] = {{"now", l_now},
                                     {"isatty", l_isatty},
                                     {"last_error_status", l_last_error_status},
                                     {"tensor", l_tensor},
                                     {"zeros", l_zeros},
                                     {"ones", l_ones},
                                     {"full", l_full},
                                     {"rand", l_rand},
                                     {"randn", l_randn},
                                     {"arange", l_arange},
                                     {"is_tensor", l_is_tensor},
                                     {"cat", l_cat},
                                     {"seed", l_seed},
                                     {"rng_take", l_rng_take},
                                     {"philox", l_philox},
                                     {"threads", l_threads},
                                     {"backends", l_backends},
                                     {"use", l_use},
                                     {"default_backend", l_default_backend},
                                     {"set_no_grad", l_no_grad},
                                     {"interrupted", l_interrupted},
                                     {NULL, NULL}};

void lunetL_open_tensor(lua_State *L) {
  luaL_newmetatable(L, LUNETL_TENSOR);
  luaL_setfuncs(L, tensor_meta, 0);
  luaL_newlib(L, tensor_methods);
  lua_setfield(L, -2, "__methods");
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
  luaL_getmetatable(L, LUNETL_TENSOR);
  lua_getfield(L, -1, "__methods");
  lua_setfield(L, -3, "tensor_methods");
  lua_pop(L, 1);
}

__attribute__((visibility("default"))) int luaopen_lunet_core(lua_State *L) {
  lunetL_ctx(L);
  lua_newtable(L);
  lunetL_open_tensor(L);
  lunetL_open_model(L);
  lunetL_open_data(L);
  lunetL_open_augment(L);
  lunetL_open_batches(L);
  lunetL_open_train(L);
  lunetL_open_json(L);
  lunetL_open_lambda(L);
  lunetL_open_text(L);
  lunetL_open_image(L);
  lunetL_open_csv(L);
  lunetL_open_select(L);
  lunetL_open_metric(L);
  lunetL_open_plot(L);
  lunetL_open_profile(L);
  lua_pushstring(L, LUNET_VERSION_STRING);
  lua_setfield(L, -2, "version");
  /* the ABI versions this lunet implements: {backend = "2.1", plugin = "2.1"} */
  lua_createtable(L, 0, 2);
  lua_pushfstring(L, "%d.%d", LUNET_BACKEND_ABI_MAJOR, LUNET_BACKEND_ABI_MINOR);
  lua_setfield(L, -2, "backend");
  lua_pushfstring(L, "%d.%d", LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR);
  lua_setfield(L, -2, "plugin");
  lua_setfield(L, -2, "abi");
  return 1;
}
