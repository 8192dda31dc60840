/*
 * lunet layer-plugin ABI: what a layer plugin shared object implements.
 *
 * A plugin .so exports one symbol, LUNET_PLUGIN_ENTRY, returning a
 * lunet_plugin_desc.  The loader checks abi_major (equal), abi_minor (not
 * newer than the core's) and struct_size before reading anything else, and
 * names both versions on a mismatch.
 *
 * A layer type declares its arguments in a schema; the core parses the
 * user's arguments (Lua: positional in schema order up to `positional`, or
 * named), checks their types and fills defaults before build() runs, so a
 * plugin reads ready values with lunet_layer_get_*().
 *
 * Arguments the core handles itself for every layer type that declares them:
 *   "activation"         applied after forward (and its gradient before
 *                        backward); the core may fuse a final softmax with
 *                        the cross-entropy loss
 *   "kernel_regularizer" a penalty on the weight named "kernel"
 *   "input_shape"        the shape of one sample, for the first layer
 *   "name"               the layer's name in summary()
 *
 * Shapes passed to build() exclude the batch axis.  forward/backward see the
 * full batch.  forward() stores what backward() needs in the layer's state
 * (lunet_layer_state()), retaining tensors it keeps; the core calls
 * backward() at most once per forward().
 */
#ifndef LUNET_PLUGIN_H
#define LUNET_PLUGIN_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_PLUGIN_ABI_MAJOR 1
#define LUNET_PLUGIN_ABI_MINOR 0
#define LUNET_PLUGIN_ENTRY lunet_plugin_entry
#define LUNET_PLUGIN_ENTRY_NAME "lunet_plugin_entry"

typedef enum lunet_arg_type {
  LUNET_ARG_INT = 0, /* integer */
  LUNET_ARG_FLOAT,   /* number */
  LUNET_ARG_BOOL,
  LUNET_ARG_STRING,     /* one of `choices` when set ("valid|same") */
  LUNET_ARG_INT2,       /* an integer or a pair {h, w}: kernel_size, strides */
  LUNET_ARG_SHAPE,      /* a list of positive integers */
  LUNET_ARG_REGULARIZER /* nn.regularizers.l1/l2/l1_l2(...) or nil */
} lunet_arg_type;

typedef struct lunet_arg_schema {
  const char *name;
  lunet_arg_type type;
  const char *default_value; /* as Lua source ("3", "\"valid\"", "nil"); NULL: required */
  const char *doc;
  const char *choices; /* STRING only: "a|b|c", or NULL for any */
} lunet_arg_schema;

/* A finite-difference and backend-agreement case the core can run
 * (lunet.check_plugin). */
typedef struct lunet_layer_test {
  const char *args; /* Lua table constructor body: "4, 3, padding = \"same\"" */
  int ndim;         /* of one sample */
  int64_t input_shape[LUNET_MAX_DIMS];
  int batch;
  float tolerance; /* relative, for the gradient check */
} lunet_layer_test;

typedef struct lunet_layer_type {
  uint32_t struct_size; /* sizeof(lunet_layer_type) as the plugin was built */
  const char *name;     /* "Conv2D": nn.Conv2D in Lua */
  const char *doc;      /* one line for help() */
  const lunet_arg_schema *args;
  int nargs;
  int positional;    /* the first `positional` args may be given by position */
  size_t state_size; /* bytes of zeroed per-instance state */

  /* in (one sample) -> *out_ndim/out; declares weights with
   * lunet_layer_add_weight().  Errors via lunet_layer_error(). */
  lunet_status (*build)(lunet_layer *l, int in_ndim, const int64_t *in, int *out_ndim,
                        int64_t *out);
  /* x (N, in...) -> *y (N, out...), a new reference */
  lunet_status (*forward)(lunet_layer *l, lunet_tensor *x, lunet_tensor **y, bool training);
  /* dy (N, out...) -> *dx (N, in...), a new reference; with need_dx false the
   * layer may skip that work and leave *dx NULL (dx itself is never NULL).
   * Weight gradients go through lunet_layer_accumulate_grad(). */
  lunet_status (*backward)(lunet_layer *l, lunet_tensor *dy, lunet_tensor **dx, bool need_dx);
  /* Releases what the state holds (NULL: nothing to release). */
  void (*destroy)(lunet_layer *l);

  const lunet_layer_test *tests;
  int ntests;
} lunet_layer_type;

typedef struct lunet_plugin_desc {
  uint32_t abi_major, abi_minor;
  uint32_t struct_size; /* sizeof(lunet_plugin_desc) as the plugin was built */
  const char *name;     /* "layers" */
  const char *version;  /* the plugin's own version */
  const lunet_layer_type *const *types;
  int ntypes;
} lunet_plugin_desc;

typedef const lunet_plugin_desc *(*lunet_plugin_entry_fn)(void);

/* ---- what a layer reads and declares (implemented by the core) ---- */

LUNET_API lunet_ctx *lunet_layer_ctx(lunet_layer *l);
LUNET_API void *lunet_layer_state(lunet_layer *l);
LUNET_API const char *lunet_layer_name(const lunet_layer *l);
LUNET_API const char *lunet_layer_type_name(const lunet_layer *l);
/* Sets the context's error, prefixed with the layer's type name. */
LUNET_API lunet_status lunet_layer_error(lunet_layer *l, lunet_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

LUNET_API int64_t lunet_layer_get_int(const lunet_layer *l, const char *arg);
LUNET_API double lunet_layer_get_float(const lunet_layer *l, const char *arg);
LUNET_API bool lunet_layer_get_bool(const lunet_layer *l, const char *arg);
LUNET_API const char *lunet_layer_get_string(const lunet_layer *l,
                                             const char *arg); /* NULL if nil */
LUNET_API void lunet_layer_get_int2(const lunet_layer *l, const char *arg, int64_t out[2]);
/* Returns the count, writes up to max values. */
LUNET_API int lunet_layer_get_shape(const lunet_layer *l, const char *arg, int64_t *out, int max);

/* Declares a weight; initializer: "glorot_uniform", "glorot_normal",
 * "he_uniform", "he_normal", "lecun_normal", "zeros", "ones".  Returns its
 * index. */
LUNET_API int lunet_layer_add_weight(lunet_layer *l, const char *name, int ndim,
                                     const int64_t *shape, const char *initializer, bool trainable);
LUNET_API lunet_tensor *lunet_layer_weight(lunet_layer *l, int index); /* borrowed */
LUNET_API lunet_status lunet_layer_accumulate_grad(lunet_layer *l, int index, lunet_tensor *g);

#ifdef __cplusplus
}
#endif

#endif
