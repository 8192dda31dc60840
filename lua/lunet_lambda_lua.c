/*
 * nn.Lambda(f): a layer whose forward is a Lua function of tensors.  It is
 * a layer type of the program itself (lunet_register_layer_type), flagged
 * LUNET_LAYER_HOST_CODE: the core refuses to save a model holding one and
 * runs it on one thread at a time.  Backward runs f again on the saved
 * inputs with the tape on and back-propagates through what f did, so any
 * function of lunet's tensor ops trains.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lunet_lua.h"
#include "lunet/layer.h"

/* The function runs on a Lua thread of its own: whatever coroutine is
 * running when the core calls the layer, that thread is free for it. */
typedef struct lambda_fn {
  lua_State *T;
  int thread_ref, fn_ref; /* in the registry */
  pthread_t owner;        /* the thread of the Lua state: the only one that may run f */
} lambda_fn;

typedef struct lambda_call {
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS];
  int n;
  bool training;
} lambda_call;

static void release_fn(void *p) {
  lambda_fn *f = p;
  luaL_unref(f->T, LUA_REGISTRYINDEX, f->fn_ref);
  luaL_unref(f->T, LUA_REGISTRYINDEX, f->thread_ref);
  free(f);
}

/* f(x, training) or f({x1, x2, ...}, training) -> one tensor (a new
 * reference), or NULL with the error set on ctx. */
static lunet_tensor *call_fn(lunet_ctx *ctx, lunet_layer *l, int n, lunet_tensor *const *x,
                             bool training) {
  lambda_fn *f = lunet_layer_host_data(l);
  if (!f) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: a Lambda has no Lua function (only nn.Lambda makes one)",
                lunet_layer_name(l));
    return NULL;
  }
  /* every Lambda of a Lua state shares its interpreter: one thread only */
  if (!pthread_equal(f->owner, pthread_self())) {
    lunet_error(ctx, LUNET_ERR_ARG,
                "%s (Lambda) runs Lua code and can run only on the thread of its Lua state",
                lunet_layer_name(l));
    return NULL;
  }
  lua_State *L = f->T;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, f->fn_ref);
  if (n == 1) {
    lunetL_pushtensor(L, lunet_tensor_retain(x[0]));
  } else {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
      lunetL_pushtensor(L, lunet_tensor_retain(x[i]));
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_pushboolean(L, training);
  lunet_tensor *y = NULL;
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: the function failed: %s", lunet_layer_name(l),
                lua_tostring(L, -1));
  } else if (!(y = lunetL_totensor(L, -1))) {
    lunet_error(ctx, LUNET_ERR_ARG, "%s: the function returned a %s, not a tensor",
                lunet_layer_name(l), luaL_typename(L, -1));
  } else {
    lunet_tensor_retain(y);
  }
  lua_settop(L, top);
  return y;
}

/* The output shape: output_shape when given, else f traced on zeros. */
static lunet_status lambda_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t given[LUNET_MAX_DIMS];
  int n = lunet_layer_get_shape(l, "output_shape", given, LUNET_MAX_DIMS);
  if (lunet_layer_arg_is_set(l, "output_shape")) {
    out[0].ndim = n;
    memcpy(out[0].dims, given, sizeof(int64_t) * (size_t)n);
    return LUNET_OK;
  }
  lunet_ctx *ctx = lunet_layer_ctx(l);
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS] = {0};
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < nin; i++) {
    int64_t shape[LUNET_MAX_DIMS] = {2};
    memcpy(shape + 1, in[i].dims, sizeof(int64_t) * (size_t)in[i].ndim);
    x[i] = lunet_tensor_new(ctx, LUNET_F32, in[i].ndim + 1, shape);
    s = x[i] ? lunet_op_fill(ctx, x[i], 0.0f) : lunet_ctx_status(ctx);
  }
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_tensor *y = s ? NULL : call_fn(ctx, l, nin, x, false);
  lunet_set_grad_enabled(ctx, prev);
  for (int i = 0; i < nin; i++) lunet_tensor_release(x[i]);
  if (!y) return lunet_ctx_status(ctx) ? lunet_ctx_status(ctx) : s;
  if (lunet_tensor_ndim(y) < 1 || lunet_tensor_dim(y, 0) != 2) {
    lunet_tensor_release(y);
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "the function must keep the batch axis first (give output_shape if it "
                             "cannot run on zeros)");
  }
  out[0].ndim = lunet_tensor_ndim(y) - 1;
  memcpy(out[0].dims, lunet_tensor_shape(y) + 1, sizeof(int64_t) * (size_t)out[0].ndim);
  lunet_tensor_release(y);
  return LUNET_OK;
}

static lunet_status lambda_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **y, bool training) {
  lambda_call *st = lunet_call_state(c);
  for (int i = 0; i < st->n; i++) lunet_tensor_release(st->x[i]);
  st->n = nin;
  st->training = training;
  for (int i = 0; i < nin; i++) st->x[i] = lunet_tensor_retain(x[i]);
  *y = call_fn(lunet_call_ctx(c), l, nin, x, training);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

/* f again on detached copies of the inputs, recorded, then backward from
 * dy: the inputs' gradients are what the tape gives them. */
static lunet_status lambda_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                    lunet_tensor **dx) {
  lambda_call *st = lunet_call_state(c);
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *xs[LUNET_LAYER_MAX_INPUTS] = {0};
  lunet_status s = LUNET_OK;
  for (int i = 0; !s && i < st->n; i++) {
    if (!(xs[i] = lunet_detach(ctx, st->x[i]))) s = lunet_ctx_status(ctx);
    else lunet_tensor_set_requires_grad(xs[i], true);
  }
  bool prev = lunet_set_grad_enabled(ctx, true);
  lunet_tensor *y = s ? NULL : call_fn(ctx, l, st->n, xs, st->training);
  if (!s && !y) s = lunet_ctx_status(ctx);
  /* f returned one of its inputs: the gradient passes straight through */
  int same = -1;
  for (int i = 0; !s && i < st->n; i++)
    if (y == xs[i]) same = i;
  /* a function that ignores its inputs gives them no gradient */
  if (!s && same < 0 && lunet_tensor_on_tape(y)) s = lunet_backward(ctx, y, dy[0]);
  lunet_set_grad_enabled(ctx, prev);
  for (int i = 0; !s && i < st->n; i++) {
    lunet_tensor *g = i == same ? dy[0] : lunet_tensor_grad_get(xs[i]);
    dx[i] = g ? lunet_tensor_retain(g) : NULL;
  }
  lunet_tensor_release(y);
  for (int i = 0; i < st->n; i++) lunet_tensor_release(xs[i]);
  return s;
}

static void lambda_release(lunet_layer *l, lunet_call *c) {
  lambda_call *st = lunet_call_state(c);
  for (int i = 0; i < st->n; i++) lunet_tensor_release(st->x[i]);
  st->n = 0;
}

static const lunet_arg_schema lambda_args[] = {
    {"output_shape", LUNET_ARG_SHAPE, LUNET_ARG_NIL, {0},
     "the output's sample shape; nil: found by running the function on zeros", NULL},
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name in summary()", NULL},
};

static const lunet_layer_type lambda_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Lambda",
    .doc = "A Lua function of tensors as a layer: nn.Lambda(function(x, training) ... end)",
    .args = lambda_args,
    .nargs = sizeof lambda_args / sizeof lambda_args[0],
    .min_inputs = 1,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .flags = LUNET_LAYER_HOST_CODE,
    .call_state_size = sizeof(lambda_call),
    .build = lambda_build,
    .forward = lambda_forward,
    .backward = lambda_backward,
    .release = lambda_release,
};

/* C.lambda_new(f, name, output_shape) -> layer */
static int l_lambda_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lunet_ctx *ctx = lunetL_ctx(L);
  if (lunet_register_layer_type(ctx, &lambda_type, "lua")) lunetL_error(L, NULL);
  lunet_layer *l = lunet_layer_new(ctx, &lambda_type);
  lambda_fn *f = l ? malloc(sizeof *f) : NULL;
  if (!f) {
    lunet_layer_release(l);
    return luaL_error(L, "out of host memory");
  }
  f->owner = pthread_self();
  f->T = lua_newthread(L);
  f->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 1);
  f->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lunet_layer_set_host_data(l, f, release_fn);
  if (!lua_isnoneornil(L, 2)) lunet_layer_set_string(l, "name", luaL_checkstring(L, 2));
  if (lua_istable(L, 3)) {
    int64_t v[LUNET_MAX_DIMS];
    int n = (int)luaL_len(L, 3);
    if (n >= LUNET_MAX_DIMS) luaL_error(L, "Lambda: output_shape has too many sizes");
    for (int i = 0; i < n; i++) {
      lua_geti(L, 3, i + 1);
      v[i] = luaL_checkinteger(L, -1);
      lua_pop(L, 1);
    }
    lunet_layer_set_ints(l, "output_shape", n, v);
  }
  lunetL_pushlayer(L, l);
  lunet_layer_release(l);
  return 1;
}

static const luaL_Reg functions[] = {{"lambda_new", l_lambda_new}, {NULL, NULL}};

void lunetL_open_lambda(lua_State *L) { luaL_setfuncs(L, functions, 0); }
