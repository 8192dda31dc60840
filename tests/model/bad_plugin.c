/* Plugins the registry must refuse whole, one fault per build (CMake
 * defines one BAD_* for each; none: the control, a layer type "Echo"),
 * each an error naming the plugin and the fault, never a crash or a
 * built-in layer type silently replaced (bad_plugins.lua loads them). */
#include <stddef.h>

#include "lunet/ops.h"
#include "lunet/plugin.h"

static lunet_status echo_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  out[0] = in[0];
  return LUNET_OK;
}

__attribute__((unused)) static lunet_status echo_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                 bool training) {
  *y = lunet_op_copy(lunet_call_ctx(c), x[0]);
  return *y ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

static lunet_status echo_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = lunet_op_copy(lunet_call_ctx(c), dy[0]);
  return dx[0] ? LUNET_OK : lunet_ctx_status(lunet_call_ctx(c));
}

static const lunet_arg_schema args[] = {
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name", NULL},
#if defined(BAD_ARG_TWICE)
    {"name", LUNET_ARG_STRING, LUNET_ARG_NIL, {0}, "the layer's name again", NULL},
#elif defined(BAD_DEFAULT_CHOICE)
    {"mode", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, {.s = "zz"}, "a default outside its choices", "a|b"},
#endif
};

#if defined(BAD_BUILTIN_NAME)
#define NAME "Dense" /* the built-in's */
#elif defined(BAD_NO_NAME)
#define NAME NULL
#elif defined(BAD_NN_NAME)
#define NAME "Sequential" /* nn.Sequential, not a layer type */
#else
#define NAME "Echo"
#endif

static const lunet_layer_type echo_type = {
    .struct_size = sizeof(lunet_layer_type),
    .name = NAME,
    .doc = "y = x",
    .args = args,
    .nargs = sizeof args / sizeof args[0],
#if defined(BAD_INPUTS)
    .min_inputs = 3,
    .max_inputs = 2,
#endif
    .build = echo_build,
#if !defined(BAD_NO_FORWARD)
    .forward = echo_forward,
#endif
    .backward = echo_backward,
};

#if defined(BAD_TWICE)
static const lunet_layer_type *const types[] = {&echo_type, &echo_type};
#else
static const lunet_layer_type *const types[] = {&echo_type};
#endif

#if defined(BAD_NEGATIVE_COUNT)
#define NTYPES -1
#else
#define NTYPES (int)(sizeof types / sizeof types[0])
#endif

__attribute__((unused)) static const lunet_plugin_desc desc = {LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR, sizeof(lunet_plugin_desc),
                                       "bad", "1", types, NTYPES};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
#if defined(BAD_NULL_ENTRY)
  return NULL;
#else
  return &desc;
#endif
}
