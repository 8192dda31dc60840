/*
 * Layer instances, as the Lua binding and C programs use them.  A layer is
 * made from a registered type (its arguments start at the type's defaults),
 * given arguments, built for its inputs' shapes, and called on tensors (one
 * tape node per call).
 *
 * Threads: making, configuring and building a layer is for one thread; a
 * built layer may be called from several threads at once, each with its
 * own context (per-call state lives in a call record, never in the layer).
 */
#ifndef LUNET_LAYER_H
#define LUNET_LAYER_H

#include "lunet/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A new layer of type `t` (one reference), its arguments at the schema's
 * defaults.  Tape nodes of the layer's calls hold references too, so a
 * layer lives until the graphs that used it are gone. */
LUNET_API lunet_layer *lunet_layer_new(lunet_ctx *ctx, const lunet_layer_type *t);
LUNET_API lunet_layer *lunet_layer_retain(lunet_layer *l);
LUNET_API void lunet_layer_release(lunet_layer *l);
LUNET_API const lunet_layer_type *lunet_layer_type_get(const lunet_layer *l);

/* Argument setters (before build).  Errors go to the layer's context. */
LUNET_API lunet_status lunet_layer_set_nil(lunet_layer *l, const char *arg);
LUNET_API lunet_status lunet_layer_set_int(lunet_layer *l, const char *arg, int64_t v);
LUNET_API lunet_status lunet_layer_set_float(lunet_layer *l, const char *arg, double v);
LUNET_API lunet_status lunet_layer_set_bool(lunet_layer *l, const char *arg, bool v);
LUNET_API lunet_status lunet_layer_set_string(lunet_layer *l, const char *arg, const char *v);
/* INT, INT2, SHAPE and SIDES arguments (SIDES: n 1, 2 or 4, the four as
 * top, bottom, left, right). */
LUNET_API lunet_status lunet_layer_set_ints(lunet_layer *l, const char *arg, int n,
                                            const int64_t *v);
LUNET_API lunet_status lunet_layer_set_regularizer(lunet_layer *l, const char *arg, double l1,
                                                   double l2);
/* A RANGE argument: n 1 (a number, lo) or 2 (the pair {lo, hi}). */
LUNET_API lunet_status lunet_layer_set_range(lunet_layer *l, const char *arg, int n, double lo,
                                             double hi);
/* Sets an argument from a typed value of the schema's type. */
LUNET_API lunet_status lunet_layer_set_value(lunet_layer *l, const char *arg,
                                             const lunet_arg_value *v);

/* Argument i of the type's schema as a typed value (strings borrowed from
 * the layer); false when it is unset or nil. */
LUNET_API bool lunet_layer_arg_value(const lunet_layer *l, int i, lunet_arg_value *out);

/* Builds for its inputs' shapes (one sample each); idempotent for the same
 * shapes, an error naming both for others. */
LUNET_API lunet_status lunet_layer_build(lunet_ctx *ctx, lunet_layer *l, int nin,
                                         const lunet_shape *in);
LUNET_API bool lunet_layer_built(const lunet_layer *l);
LUNET_API int lunet_layer_input_count(const lunet_layer *l);
LUNET_API int lunet_layer_output_count(const lunet_layer *l); /* the type's, before build too */
/* Shapes after build (zero dims before). */
LUNET_API lunet_shape lunet_layer_input_shape(const lunet_layer *l, int i);
LUNET_API lunet_shape lunet_layer_output_shape(const lunet_layer *l, int j);

/* Moves every weight to another backend (copies; the old ones are released). */
LUNET_API lunet_status lunet_layer_to(lunet_ctx *ctx, lunet_layer *l, const char *backend);
/* Makes tensor t (weight i's shape, float32, on any backend) weight i of
 * the layer, sharing its data: a layer brought back from a host copy when
 * its device failed and lunet_layer_to cannot read the old weights. */
LUNET_API lunet_status lunet_layer_set_weight_tensor(lunet_ctx *ctx, lunet_layer *l, int i, lunet_tensor *t);

LUNET_API int lunet_layer_weight_count(const lunet_layer *l);
LUNET_API const char *lunet_layer_weight_name(const lunet_layer *l, int i);
/* Trainable: declared so, and the layer not frozen. */
LUNET_API bool lunet_layer_weight_trainable(const lunet_layer *l, int i);
/* Keras's layer.trainable: false freezes every weight (no gradients, not
 * updated); a layer type with LUNET_LAYER_FROZEN_INFERENCE then runs in
 * inference mode.  A model takes the change at its next compile. */
LUNET_API void lunet_layer_set_trainable(lunet_layer *l, bool on);
LUNET_API bool lunet_layer_trainable(const lunet_layer *l);
/* The precision of the layer's products (its dtype policy: float32, or
 * bfloat16 for mixed_bfloat16), taken from the context's policy when the
 * layer is made (lunet_set_policy); its forward and backward run at it. */
LUNET_API lunet_precision lunet_layer_precision(const lunet_layer *l);
LUNET_API void lunet_layer_set_precision(lunet_layer *l, lunet_precision p);

/* A call record a caller keeps across calls (a decoder's cache): pass it to
 * lunet_layer_apply and its state persists from one forward to the next.
 * Released with lunet_call_release (tape nodes hold references too). */
LUNET_API lunet_call *lunet_call_new(lunet_ctx *ctx, lunet_layer *l);
LUNET_API void lunet_call_release(lunet_call *c);

/* y[0..noutputs) = layer(x[0..nin)), recorded on the tape when grad is on.
 * masks (may be NULL, or hold NULLs): the inputs' masks; mask_out (may be
 * NULL) receives the outputs' masks (new references or NULL).  keep: a
 * record of lunet_call_new, or NULL for a fresh one.  skip_activation:
 * leave out the layer's `activation` (the caller fuses it into the loss).
 * The layer is built on first use. */
LUNET_API lunet_status lunet_layer_apply(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int nin,
                                         lunet_tensor *const *x, lunet_tensor *const *masks,
                                         bool training, bool skip_activation, lunet_tensor **y,
                                         lunet_tensor **mask_out);
/* The one-input, one-output case: y = layer(x), a new reference or NULL. */
/* Runs a LUNET_LAYER_STEPWISE layer on the next part of a sequence in
 * inference mode: x[i] as built but for the steps axis, the first step at
 * position `offset`; `keep` (the layer's own record, lunet_call_new) holds
 * what earlier parts left.  Nothing is recorded; no masks (see
 * lunet_layer_step_masked). */
LUNET_API lunet_status lunet_layer_step(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int64_t offset, int nin,
                                        lunet_tensor *const *x, lunet_tensor **y);
/* The same with the inputs' padding masks of these steps (masks NULL, or
 * masks[i] NULL: none) and, when mask_out is not NULL, the outputs' masks
 * of these steps (NULL: none), as lunet_layer_apply carries them.  An
 * attention layer keeps the masks of earlier steps with their keys. */
LUNET_API lunet_status lunet_layer_step_masked(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int64_t offset,
                                               int nin, lunet_tensor *const *x, lunet_tensor *const *masks,
                                               lunet_tensor **y, lunet_tensor **mask_out);
LUNET_API lunet_tensor *lunet_layer_call(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *x,
                                         bool training, bool skip_activation);
/* The activation name ("softmax", ...) or NULL. */
LUNET_API const char *lunet_layer_activation(const lunet_layer *l);
/* The weight regularizers' penalty (each weight w with a "<w>_regularizer"
 * argument: kernel, bias, ...) as a scalar on the tape, or NULL with no
 * error when the layer has none. */
LUNET_API lunet_tensor *lunet_layer_penalty(lunet_ctx *ctx, lunet_layer *l);
/* The penalty of one output y of the layer (its activity_regularizer, or
 * the l1/l2 arguments of a LUNET_LAYER_ACTIVITY_L1L2 layer):
 * l1 * sum|y| + l2 * sum(y^2) over the batch, as Keras 3 adds it; NULL
 * when there is none (or on error, with ctx's status set). */
LUNET_API lunet_tensor *lunet_layer_activity_penalty(lunet_ctx *ctx, lunet_layer *l, lunet_tensor *y);

/* ---- layer types of the host program (nn.Lambda) ---- */

/* Registers a layer type defined by the program itself rather than a
 * plugin file (it must outlive every layer of it); `origin` names it in
 * listings ("lua").  A later type of the same name replaces it. */
LUNET_API lunet_status lunet_register_layer_type(lunet_ctx *ctx, const lunet_layer_type *t,
                                                 const char *origin);
/* Data the host attaches to one layer (a Lua function); `release` runs when
 * the layer is freed. */
LUNET_API void lunet_layer_set_host_data(lunet_layer *l, void *data, void (*release)(void *));
LUNET_API void *lunet_layer_host_data(const lunet_layer *l);

/* ---- the plugin self-test (nn.check_plugin wraps it) ---- */

typedef struct lunet_check_result {
  int test;            /* the type's test case (0-based) */
  bool training;       /* the mode the case ran in */
  double max_error;    /* finite differences against backward, relative */
  double tolerance;
  char backend[32];    /* "" for the gradient check on the CPU; else the backend compared */
  double max_diff;     /* that backend's outputs and gradients against the CPU's */
  bool ok;
  char error[256];     /* why it could not run, or "" */
} lunet_check_result;

/* Runs layer type `type`'s shipped test cases: finite-difference gradients
 * of the inputs and trainable weights on the CPU in inference and in
 * training mode, then the same call's outputs and gradients on every other
 * available backend against the CPU (1e-3 relative).  Writes up to `max`
 * results and returns how many there are (-1: error, e.g. no such type). */
LUNET_API int lunet_check_layer_type(lunet_ctx *ctx, const char *type, lunet_check_result *out,
                                     int max);

#ifdef __cplusplus
}
#endif

#endif
