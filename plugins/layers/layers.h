/*
 * Private header of the built-in layers plugin (every .c file in plugins/layers): the
 * layer types each file defines, and small helpers for the state every
 * layer keeps between forward and backward.
 *
 * Written only against lunet/plugin.h and lunet/ops.h, as a third party's
 * plugin would be: the built-in layers prove the ABI.
 */
#ifndef LUNET_LAYERS_H
#define LUNET_LAYERS_H

#include "lunet/lunet.h"
#include "lunet/plugin.h"

#define LAYERS_HIDDEN __attribute__((visibility("hidden")))

/* Initializers lunet_layer_add_weight() knows, as a schema's choices. */
#define LAYERS_INITIALIZERS                                                                        \
  "glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal|zeros|ones"

/* Schema rows every layer type shares; the core handles both itself. */
#define LAYERS_ARG_INPUT_SHAPE                                                                     \
  {                                                                                                \
    "input_shape", LUNET_ARG_SHAPE, "nil",                                                         \
        "shape of one sample, without the batch axis (first layer only)", NULL                     \
  }
#define LAYERS_ARG_NAME                                                                            \
  { "name", LUNET_ARG_STRING, "nil", "the layer's name in summary()", NULL }

extern LAYERS_HIDDEN const lunet_layer_type layers_dense;
extern LAYERS_HIDDEN const lunet_layer_type layers_conv2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_max_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_average_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_flatten;
extern LAYERS_HIDDEN const lunet_layer_type layers_dropout;
extern LAYERS_HIDDEN const lunet_layer_type layers_batch_normalization;
extern LAYERS_HIDDEN const lunet_layer_type layers_activation;

/* Drops one reference; NULL is allowed, so cleanup paths need no checks. */
static inline void layers_release(lunet_tensor *t) {
  if (t) lunet_tensor_release(t);
}

/* Stores `t` (a reference the caller hands over, or NULL) in a state slot,
 * releasing what the slot held: forward() replaces what the previous
 * forward() kept. */
static inline void layers_set(lunet_tensor **slot, lunet_tensor *t) {
  layers_release(*slot);
  *slot = t;
}

/* The status to return after an op failed.  The op has set the message;
 * should one ever fail silently, say so rather than return LUNET_OK. */
static inline lunet_status layers_failed(lunet_layer *l) {
  lunet_status s = lunet_ctx_status(lunet_layer_ctx(l));
  if (s != LUNET_OK) return s;
  return lunet_layer_error(l, LUNET_ERR_DEVICE,
                           "a tensor op failed without a message (a core bug; please report it)");
}

/* A view of x (N, d1, ..., C) as (N*d1*..., C): Dense and friends work on
 * the last axis whatever the rank.  A new reference, or NULL on error. */
static inline lunet_tensor *layers_as_2d(lunet_ctx *ctx, lunet_tensor *x) {
  int64_t c = lunet_tensor_dim(x, -1);
  int64_t shape[2] = {c > 0 ? lunet_tensor_numel(x) / c : 0, c};
  return lunet_op_reshape(ctx, x, 2, shape);
}

/* A view of t with the shape of `like` (same element count). */
static inline lunet_tensor *layers_reshape_like(lunet_ctx *ctx, lunet_tensor *t,
                                                const lunet_tensor *like) {
  return lunet_op_reshape(ctx, t, lunet_tensor_ndim(like), lunet_tensor_shape(like));
}

/* Error for a sample of the wrong rank: "expects input of rank 3 (H, W, C),
 * got shape (784)". */
static inline lunet_status layers_rank_error(lunet_layer *l, const char *want, int ndim,
                                             const int64_t *shape) {
  char buf[128];
  return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects input of rank %s, got shape %s", want,
                           lunet_shape_str(ndim, shape, buf, sizeof buf));
}

/* Reads an INT2 argument whose default is nil; false when it is nil.  The
 * ABI gives no "is nil" query: a core that leaves `out` alone on nil is
 * told apart from an explicit 0 (which then fails validation); one that
 * writes {0, 0} on nil makes an explicit 0 read as nil too. */
static inline bool layers_get_int2_opt(const lunet_layer *l, const char *arg, int64_t out[2]) {
  out[0] = out[1] = INT64_MIN;
  lunet_layer_get_int2(l, arg, out);
  return !(out[0] == INT64_MIN || (out[0] == 0 && out[1] == 0));
}

/* An initializer argument, or `dflt` when the user passed nil. */
static inline const char *layers_initializer(const lunet_layer *l, const char *arg,
                                             const char *dflt) {
  const char *s = lunet_layer_get_string(l, arg);
  return s ? s : dflt;
}

/* "valid" or "same" (the schema restricts the choices). */
static inline lunet_padding layers_padding(const lunet_layer *l) {
  const char *p = lunet_layer_get_string(l, "padding");
  return p && p[0] == 's' ? LUNET_PAD_SAME : LUNET_PAD_VALID;
}

/* Checks that both values of an INT2 argument are positive. */
static inline lunet_status layers_check_pair(lunet_layer *l, const char *arg, const int64_t v[2]) {
  if (v[0] > 0 && v[1] > 0) return LUNET_OK;
  if (v[0] == v[1])
    return lunet_layer_error(l, LUNET_ERR_ARG, "%s must be positive, got %lld", arg,
                             (long long)v[0]);
  return lunet_layer_error(l, LUNET_ERR_ARG, "%s must be positive, got {%lld, %lld}", arg,
                           (long long)v[0], (long long)v[1]);
}

#endif
