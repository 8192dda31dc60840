/*
 * lunet layer-plugin ABI, version 2: what a layer plugin shared object
 * implements.
 *
 * A plugin .so exports one symbol, LUNET_PLUGIN_ENTRY, returning a
 * lunet_plugin_desc.  The loader checks, before it reads anything else:
 * abi_major equal to the core's, abi_minor not newer than the core's (a
 * minor version only appends members, so an older plugin works with a newer
 * core), and struct_size at least the size of the structs of the plugin's
 * minor version; it names both versions on a mismatch.  Backends follow the
 * same rule (lunet/backend.h).
 *
 * A layer type takes N input tensors (min_inputs..max_inputs) and returns
 * noutputs tensors.  It declares its arguments in a schema of typed C values;
 * the core fills the defaults when a layer is made (lunet_layer_new), checks
 * the user's values against the types and choices, and hands build() ready
 * values through lunet_layer_get_*().
 *
 * Arguments the core handles itself for every layer type that declares them:
 *   "activation"         applied to the (single) output after forward, and
 *                        its gradient before backward; the core may fuse a
 *                        final softmax with the cross-entropy loss
 *   "kernel_regularizer" a penalty on the weight named "kernel"
 *   "input_shape"        the shape of one sample, for the first layer
 *   "name"               the layer's name in summary() and in errors
 *
 * Calls.  Each forward gets a call record (lunet_call) with zeroed state of
 * call_state_size bytes: what backward needs is saved there, never in the
 * layer, so one layer may run on several threads at once and be called
 * several times before a backward.  backward() runs at most once per
 * forward() with the same record; release() then frees what the state holds.
 * A caller may keep a record across calls (lunet_layer_apply with a record
 * of its own): the state then persists from one forward to the next, which
 * is what a decoder's key/value cache needs.
 *
 * Shapes passed to build() exclude the batch axis; forward/backward see the
 * full batch.  The core checks every forward output against the shapes
 * build() declared.  dx may share dy's data (a view of it): the tape copies
 * a shared gradient before it accumulates into it.
 *
 * Arguments: a user's explicit nil makes an argument nil even when it has a
 * default (lunet_layer_arg_is_set is then false).
 *
 * Threads: forward and backward may run on several threads at once for one
 * layer, each with its own call record and context; the weights are only
 * read.  The exception is state a layer updates in training mode
 * (BatchNormalization's moving statistics): train one model from one
 * thread.
 */
#ifndef LUNET_PLUGIN_H
#define LUNET_PLUGIN_H

#include <stddef.h>

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_PLUGIN_ABI_MAJOR 2
#define LUNET_PLUGIN_ABI_MINOR 3
#define LUNET_PLUGIN_ENTRY lunet_plugin_entry
#define LUNET_PLUGIN_ENTRY_NAME "lunet_plugin_entry"

#define LUNET_LAYER_MAX_INPUTS 16
#define LUNET_LAYER_MAX_OUTPUTS 8

/* One sample's shape (no batch axis). */
typedef struct lunet_shape {
  int ndim;
  int64_t dims[LUNET_MAX_DIMS];
} lunet_shape;

typedef enum lunet_arg_type {
  LUNET_ARG_INT = 0, /* integer: value.i */
  LUNET_ARG_FLOAT,   /* number: value.f */
  LUNET_ARG_BOOL,    /* value.b */
  LUNET_ARG_STRING,  /* value.s, one of `choices` when set ("valid|same") */
  LUNET_ARG_INT2,    /* an integer or a pair {h, w}: value.n (1 or 2), value.v */
  LUNET_ARG_SHAPE,   /* a list of integers: value.n, value.v */
  LUNET_ARG_REGULARIZER, /* value.f (l1) and value.f2 (l2) */
  LUNET_ARG_RANGE,       /* (ABI 2.2) a number or a pair {lo, hi}: value.n (1 or 2), value.f
                          * (the number, or lo) and value.f2 (hi) */
  LUNET_ARG_SIDES        /* (ABI 2.3) counts per side of height and width, as Keras's
                          * padding and cropping: a number (every side), a pair {h, w}
                          * (both sides of each axis) or {{top, bottom}, {left, right}}:
                          * value.n 1, 2 or 4, value.v (n 4: top, bottom, left, right) */
} lunet_arg_type;

/* A typed argument value; the members of the argument's type are read. */
typedef struct lunet_arg_value {
  int64_t i;
  double f, f2;
  bool b;
  const char *s;
  int n;
  int64_t v[LUNET_MAX_DIMS];
} lunet_arg_value;

typedef enum lunet_arg_presence {
  LUNET_ARG_REQUIRED = 0, /* the user must give it */
  LUNET_ARG_NIL,          /* absent (nil) unless given */
  LUNET_ARG_DEFAULT       /* `def` unless given */
} lunet_arg_presence;

typedef struct lunet_arg_schema {
  const char *name;
  lunet_arg_type type;
  lunet_arg_presence presence;
  lunet_arg_value def; /* with LUNET_ARG_DEFAULT */
  const char *doc;
  const char *choices; /* STRING only: "a|b|c", or NULL for any */
} lunet_arg_schema;

/* One argument of a test case: {"padding", {.s = "same"}}. */
typedef struct lunet_arg_setting {
  const char *name;
  lunet_arg_value value;
} lunet_arg_setting;

/* A finite-difference and backend-agreement case the core runs
 * (lunet_check_layer_type, nn.check_plugin in Lua). */
typedef struct lunet_layer_test {
  const lunet_arg_setting *args;
  int nargs;
  int ninputs;
  const lunet_shape *inputs; /* one sample's shape per input */
  int batch;
  float tolerance; /* relative, for the gradient check */
} lunet_layer_test;

/* The layer applies its "activation" argument itself (the Activation
 * layer); without it the core applies a declared "activation". */
#define LUNET_LAYER_OWNS_ACTIVATION 1u
/* The layer runs in inference mode while frozen (trainable = false), as
 * Keras's BatchNormalization does. */
#define LUNET_LAYER_FROZEN_INFERENCE 2u
/* The layer runs code of the host language (nn.Lambda's Lua function): a
 * model holding it cannot be saved, and it runs on one thread at a time
 * (a second concurrent call is an error naming the layer). */
#define LUNET_LAYER_HOST_CODE 4u
/* (ABI 2.1) The layer runs step by step (lunet_layer_step: generation with
 * a key/value cache): on part of its sequence, the steps axis (the first
 * of a sample) shorter than built, positions starting at
 * lunet_call_step_offset(c).  Per-position layers qualify as they are;
 * layers that mix positions keep what earlier steps left in the call
 * record (attention's keys and values), and position embeddings read the
 * offset.  lunet_call_mask(c, i) is then the padding mask of this part's
 * steps only (a model session carries masks since 0.3): a layer that
 * mixes positions keeps the earlier steps' masks itself, as attention
 * keeps them beside its keys. */
#define LUNET_LAYER_STEPWISE 8u
/* (ABI 2.2) The layer's FLOAT arguments "l1" and "l2" regularize its output
 * (Keras's ActivityRegularization); any layer may instead declare a
 * REGULARIZER argument "activity_regularizer".  The core adds the penalty
 * to the loss; weights regularize through "<weight>_regularizer"
 * arguments (kernel_regularizer, bias_regularizer, ...). */
#define LUNET_LAYER_ACTIVITY_L1L2 16u
/* (ABI 2.2) The layer's forward ends with lunet_op_linear, which may run the
 * layer's "relu" activation in the product's epilogue; its backward then
 * passes the output's gradient through lunet_op_relu_grad first (Dense). */
#define LUNET_LAYER_FUSES_RELU 32u

/* One call of a layer: its saved state, its context, the gradients of its
 * weights.  Made and owned by the core. */
typedef struct lunet_call lunet_call;

typedef struct lunet_layer_type {
  uint32_t struct_size; /* sizeof(lunet_layer_type) as the plugin was built */
  const char *name;     /* "Conv2D": nn.Conv2D in Lua */
  const char *doc;      /* one line for help() */
  const lunet_arg_schema *args;
  int nargs;
  int positional; /* the first `positional` args may be given by position */
  int min_inputs, max_inputs; /* 0 means 1 */
  int noutputs;               /* 0 means 1 */
  unsigned flags;             /* LUNET_LAYER_* */
  size_t call_state_size;     /* bytes of zeroed state per call (lunet_call_state) */

  /* in[0..nin) (one sample each) -> out[0..noutputs); declares weights
   * with lunet_layer_add_weight().  Errors via lunet_layer_error(). */
  lunet_status (*build)(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out);
  /* x[i] (N, in[i]...) -> y[j] (N, out[j]...), new references. */
  lunet_status (*forward)(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                          lunet_tensor **y, bool training);
  /* dy[j] (N, out[j]...; zeros for an output nothing used) -> dx[i]
   * (N, in[i]...), new references; dx[i] may be left NULL where
   * lunet_call_needs_dx(c, i) is false and must be set where it is true
   * (zeros when the outputs do not depend on the input's values): a missing
   * gradient, or one of another shape, is an error naming the plugin.
   * Weight gradients go through lunet_call_accumulate_grad(). */
  lunet_status (*backward)(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                           lunet_tensor **dx);
  /* Releases what the call's state holds (NULL: nothing to release). */
  void (*release)(lunet_layer *l, lunet_call *c);
  /* The outputs' masks from the inputs' (lunet_call_mask); mask_out starts
   * all NULL (no mask), so a layer that drops masks (Keras's
   * supports_masking = False) sets nothing.  NULL: the first input's mask
   * passes to every output. */
  lunet_status (*compute_mask)(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **mask_out);

  const lunet_layer_test *tests;
  int ntests;

  /* ---- ABI 2.1: the core reads these only when struct_size covers them ---- */

  /* The number of outputs from the layer's arguments (an RNN's
   * return_state adds its final states); NULL: noutputs. */
  int (*output_count)(const lunet_layer *l);
} lunet_layer_type;

/* The size of lunet_layer_type in ABI 2.0: a 2.0 plugin's types are this
 * large, and load. */
#define LUNET_LAYER_TYPE_SIZE_2_0 offsetof(lunet_layer_type, output_count)

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

/* The context of the build() in progress (a call's is lunet_call_ctx). */
LUNET_API lunet_ctx *lunet_layer_ctx(lunet_layer *l);
LUNET_API const char *lunet_layer_name(const lunet_layer *l);
LUNET_API const char *lunet_layer_type_name(const lunet_layer *l);
/* Sets the build context's error, prefixed with the layer's name. */
LUNET_API lunet_status lunet_layer_error(lunet_layer *l, lunet_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Argument values (the defaults filled in); a nil argument reads as zero,
 * NULL or an empty list: lunet_layer_arg_is_set tells them apart. */
LUNET_API bool lunet_layer_arg_is_set(const lunet_layer *l, const char *arg);
LUNET_API int64_t lunet_layer_get_int(const lunet_layer *l, const char *arg);
LUNET_API double lunet_layer_get_float(const lunet_layer *l, const char *arg);
LUNET_API bool lunet_layer_get_bool(const lunet_layer *l, const char *arg);
LUNET_API const char *lunet_layer_get_string(const lunet_layer *l, const char *arg);
/* An INT2 as {h, w} (a single value is used for both). */
LUNET_API void lunet_layer_get_int2(const lunet_layer *l, const char *arg, int64_t out[2]);
/* (ABI 2.2) A RANGE: returns 1 for a number (out = {f, f}), 2 for a pair
 * (out = {lo, hi}), 0 when nil; the layer decides what a number means
 * (Keras: a factor f is the range [-f, f]). */
LUNET_API int lunet_layer_get_range(const lunet_layer *l, const char *arg, double out[2]);
/* (ABI 2.3) A SIDES argument as {top, bottom, left, right}. */
LUNET_API void lunet_layer_get_sides(const lunet_layer *l, const char *arg, int64_t out[4]);
/* Returns the count, writes up to max values. */
LUNET_API int lunet_layer_get_shape(const lunet_layer *l, const char *arg, int64_t *out, int max);

/* Declares a weight; initializer: "glorot_uniform", "glorot_normal",
 * "he_uniform", "he_normal", "lecun_uniform", "lecun_normal", "orthogonal",
 * "zeros", "ones".  Returns its index, or -1 with the error set. */
LUNET_API int lunet_layer_add_weight(lunet_layer *l, const char *name, int ndim,
                                     const int64_t *shape, const char *initializer, bool trainable);
LUNET_API lunet_tensor *lunet_layer_weight(lunet_layer *l, int index); /* borrowed */

/* ---- what a call reads and returns (implemented by the core) ---- */

LUNET_API lunet_ctx *lunet_call_ctx(lunet_call *c);
/* The call's zeroed state block of call_state_size bytes. */
LUNET_API void *lunet_call_state(lunet_call *c);
/* Input i's mask (N, ...), borrowed, or NULL when it has none. */
LUNET_API lunet_tensor *lunet_call_mask(lunet_call *c, int i);
/* The number of inputs of this call. */
LUNET_API int lunet_call_input_count(const lunet_call *c);
/* In forward: whether the core records this call on the tape (a backward
 * may follow); a layer that keeps a graph of its own for backward needs
 * one only then. */
LUNET_API bool lunet_call_recording(const lunet_call *c);
/* (ABI 2.1) In a lunet_layer_step: the position of this call's first step
 * in its sequence (0 for the first part), the record holding what earlier
 * parts left; -1 in an ordinary call. */
LUNET_API int64_t lunet_call_step_offset(const lunet_call *c);
/* In backward: whether input i needs its gradient. */
LUNET_API bool lunet_call_needs_dx(const lunet_call *c, int i);
/* In backward: adds g to weight `index`'s gradient of this call.  g is
 * borrowed (the core retains it, and may accumulate later gradients into
 * it in place: hand over a tensor nothing else will read). */
LUNET_API lunet_status lunet_call_accumulate_grad(lunet_call *c, int index, lunet_tensor *g);
/* Sets the call's context error, prefixed with the layer's name. */
LUNET_API lunet_status lunet_call_error(lunet_call *c, lunet_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif

#endif
