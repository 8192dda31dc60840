/* A test plugin: "Barrier", the identity, whose forward waits until two
 * calls are inside it at once (or 10 s pass).  Two threads predicting with
 * one model meet there only if nothing serializes their calls. */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "lunet/plugin.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int inside, generation;

/* Waits for a second caller; false after 10 s alone. */
static bool meet(void) {
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
  until.tv_sec += 10;
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
  if (!meet())
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

static const lunet_layer_type *const types[] = {&barrier};
static const lunet_plugin_desc desc = {LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR,
                                       sizeof(lunet_plugin_desc), "barrier", "1", types, 1};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
  return &desc;
}
