/*
 * Layer instances, as the Lua binding and C programs use them.  A layer is
 * made from a registered type, given its arguments, built for an input
 * shape, and called on tensors (one tape node per call).
 */
#ifndef LUNET_LAYER_H
#define LUNET_LAYER_H

#include "lunet/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A new layer of type `t` (one reference); every argument starts at
 * "unset" (the binding sets each one, defaults included, before build).
 * Tape nodes of the layer's calls hold references too, so a layer lives
 * until the graphs that used it are gone. */
LUNET_API lunet_layer *lunet_layer_new(lunet_ctx *ctx, const lunet_layer_type *t);
LUNET_API lunet_layer *lunet_layer_retain(lunet_layer *l);
LUNET_API void lunet_layer_release(lunet_layer *l);
LUNET_API const lunet_layer_type *lunet_layer_type_get(const lunet_layer *l);

LUNET_API lunet_status lunet_layer_set_nil(lunet_layer *l, const char *arg);
LUNET_API lunet_status lunet_layer_set_int(lunet_layer *l, const char *arg, int64_t v);
LUNET_API lunet_status lunet_layer_set_float(lunet_layer *l, const char *arg, double v);
LUNET_API lunet_status lunet_layer_set_bool(lunet_layer *l, const char *arg, bool v);
LUNET_API lunet_status lunet_layer_set_string(lunet_layer *l, const char *arg, const char *v);
LUNET_API lunet_status lunet_layer_set_ints(lunet_layer *l, const char *arg, int n,
                                            const int64_t *v);
LUNET_API lunet_status lunet_layer_set_regularizer(lunet_layer *l, const char *arg, double l1,
                                                   double l2);
LUNET_API bool lunet_layer_arg_is_set(const lunet_layer *l, const char *arg);

/* Builds for one sample's shape (idempotent for the same shape). */
LUNET_API lunet_status lunet_layer_build(lunet_layer *l, int in_ndim, const int64_t *in);
LUNET_API bool lunet_layer_built(const lunet_layer *l);
LUNET_API int lunet_layer_output_shape(const lunet_layer *l, int64_t *out); /* returns ndim */
LUNET_API int lunet_layer_input_shape(const lunet_layer *l, int64_t *in);

/* Moves every weight to another backend (copies; the old ones are released). */
LUNET_API lunet_status lunet_layer_to(lunet_ctx *ctx, lunet_layer *l, const char *backend);

LUNET_API int lunet_layer_weight_count(const lunet_layer *l);
LUNET_API const char *lunet_layer_weight_name(const lunet_layer *l, int i);
LUNET_API bool lunet_layer_weight_trainable(const lunet_layer *l, int i);

/* y = layer(x), recorded on the tape when grad is on.  skip_activation:
 * leave out the layer's `activation` (the caller fuses it into the loss). */
LUNET_API lunet_tensor *lunet_layer_call(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *x,
                                         bool training, bool skip_activation);
/* The activation name ("softmax", ...) or NULL. */
LUNET_API const char *lunet_layer_activation(const lunet_layer *l);
/* The kernel regularizer's penalty as a scalar on the tape, or NULL with no
 * error when the layer has none. */
LUNET_API lunet_tensor *lunet_layer_penalty(lunet_ctx *ctx, lunet_layer *l);

#ifdef __cplusplus
}
#endif

#endif
