/* A test plugin: "Barrier", the identity, whose forward waits until two
 * calls are inside it at once (or 10 s pass).  Two threads predicting with
 * one model meet there only if nothing serializes their calls.
 * "SerialBarrier" is the same flagged LUNET_LAYER_HOST_CODE (as nn.Lambda
 * is), waiting at most 2 s: the core must refuse the second call. */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "lunet/plugin.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int inside, generation;

/* Waits for a second caller; false after `seconds` alone. */
static bool meet(int seconds) {
  pthread_mutex_lock(&mu);
  int gen = generation;
  if (++inside == 2) {
    inside = 0;
    generation++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return true;
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += seconds;
  int rc = 0;
  while (gen == generation && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&cv, &mu, &until);
  bool met = gen != generation;
  if (!met) inside--;
  pthread_mutex_unlock(&mu);
  return met;
}

static lunet_status barrier_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = in[0];
  return LUNET_OK;
}

static lunet_status barrier_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  bool serial = lunet_layer_type_name(l)[0] == 'S';
  if (!meet(serial ? 2 : 10))
    return lunet_call_error(c, LUNET_ERR_ARG, "no second call arrived within 10 s: calls are serialized");
  *y = lunet_tensor_retain(x[0]);
  return LUNET_OK;
}

static lunet_status barrier_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  dx[0] = lunet_tensor_retain(dy[0]);
  return LUNET_OK;
}

static const lunet_arg_schema barrier_args[] = {
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name", NULL},
};

static const lunet_layer_type barrier = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Barrier",
    .doc = "identity that waits for a second concurrent call (a test of thread safety)",
    .args = barrier_args,
    .nargs = 1,
    .build = barrier_build,
    .forward = barrier_forward,
    .backward = barrier_backward,
};

static const lunet_layer_type serial_barrier = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SerialBarrier",
    .doc = "Barrier flagged as host-language code (one thread at a time)",
    .args = barrier_args,
    .nargs = 1,
    .flags = LUNET_LAYER_HOST_CODE,
    .build = barrier_build,
    .forward = barrier_forward,
    .backward = barrier_backward,
};

/* "Count": y = x + (the number of forwards this call record has seen), so
 * a record a caller keeps across calls (a decoder's cache) shows. */
typedef struct count_state {
  float calls;
} count_state;

static lunet_status count_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                  lunet_tensor **y, bool training) {
  count_state *st = lunet_call_state(c);
  st->calls += 1;
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *k = lunet_op_new(ctx, x[0], LUNET_F32, 0, NULL);
  if (!k || lunet_op_fill(ctx, k, st->calls)) {
    lunet_tensor_release(k);
    return lunet_ctx_status(ctx);
  }
  *y = lunet_op_binary(ctx, LUNET_BINARY_ADD, x[0], k);
  lunet_tensor_release(k);
  return *y ? LUNET_OK : lunet_ctx_status(ctx);
}

static const lunet_layer_type count = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Count",
    .doc = "x + the number of forwards of this call record (a test of kept records)",
    .args = barrier_args,
    .nargs = 1,
    .call_state_size = sizeof(count_state),
    .build = barrier_build,
    .forward = count_forward,
    .backward = barrier_backward,
};

/* "MaskNonzero": the identity, whose output mask marks x != 0 (as an
 * Embedding with mask_zero marks padding); "ApplyMask": y = x * mask of its
 * input (1 where there is no mask), so a mask's way through a graph shows. */
static lunet_status mask_nonzero(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                 lunet_tensor **mask_out) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *zero = lunet_op_new(ctx, x[0], LUNET_F32, 0, NULL);
  if (!zero || lunet_op_fill(ctx, zero, 0.0f)) {
    lunet_tensor_release(zero);
    return lunet_ctx_status(ctx);
  }
  lunet_tensor *eq = lunet_op_binary(ctx, LUNET_BINARY_EQ, x[0], zero);
  lunet_tensor_release(zero);
  mask_out[0] = eq ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, eq, -1.0f, 1.0f) : NULL; /* 1 - (x == 0) */
  lunet_tensor_release(eq);
  return mask_out[0] ? LUNET_OK : lunet_ctx_status(ctx);
}

static lunet_status identity_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                     lunet_tensor **y, bool training) {
  *y = lunet_tensor_retain(x[0]);
  return LUNET_OK;
}

static lunet_status apply_mask_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                       lunet_tensor **y, bool training) {
  lunet_tensor *m = lunet_call_mask(c, 0);
  *y = m ? lunet_op_binary(lunet_call_ctx(c), LUNET_BINARY_MUL, x[0], m) : lunet_tensor_retain(x[0]);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

static const lunet_layer_type mask_nonzero_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "MaskNonzero",
    .doc = "identity whose output mask marks nonzero inputs (a test of masks)",
    .args = barrier_args,
    .nargs = 1,
    .build = barrier_build,
    .forward = identity_forward,
    .backward = barrier_backward,
    .compute_mask = mask_nonzero,
};

static const lunet_layer_type apply_mask_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "ApplyMask",
    .doc = "x times its input's mask (a test of masks)",
    .args = barrier_args,
    .nargs = 1,
    .build = barrier_build,
    .forward = apply_mask_forward,
    .backward = barrier_backward,
};

/* "Twins": two outputs, y1 = x and y2 = 3 x, so dx = dy1 + 3 dy2 (a test
 * of layers with several outputs on the tape). */
static lunet_status twins_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = out[1] = in[0];
  return LUNET_OK;
}

static lunet_status twins_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                  lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  y[0] = lunet_op_copy(ctx, x[0]);
  y[1] = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, x[0], 3.0f, 0.0f);
  return y[0] && y[1] ? LUNET_OK : lunet_ctx_status(ctx);
}

static lunet_status twins_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                   lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *d2 = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, dy[1], 3.0f, 0.0f);
  dx[0] = d2 ? lunet_op_binary(ctx, LUNET_BINARY_ADD, dy[0], d2) : NULL;
  lunet_tensor_release(d2);
  return dx[0] ? LUNET_OK : lunet_ctx_status(ctx);
}

static const lunet_layer_type twins = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Twins",
    .doc = "two outputs: x and 3 x (a test of several outputs)",
    .args = barrier_args,
    .nargs = 1,
    .noutputs = 2,
    .build = twins_build,
    .forward = twins_forward,
    .backward = twins_backward,
};

static const lunet_layer_type *const types[] = {&barrier, &serial_barrier, &count, &mask_nonzero_type,
                                                &apply_mask_type, &twins};
static const lunet_plugin_desc desc = {LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR,
                                       sizeof(lunet_plugin_desc), "barrier", "1", types, 6};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
  return &desc;
}
