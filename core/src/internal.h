/* liblunet's private structures, shared by core/src files only. */
#ifndef LUNET_INTERNAL_H
#define LUNET_INTERNAL_H

#include <pthread.h>
#include "lunet/backend.h"
#include "lunet/plugin.h"

#define LUNET_HIDDEN __attribute__((visibility("hidden")))

struct lunet_ctx {
  lunet_status status;
  char msg[1024];
  uint64_t seed, rng_counter;
  int64_t *keys, nkeys, keys_cap; /* lunet_set_sample_keys */
  uint64_t keys_epoch;
  bool grad_enabled;
  lunet_precision precision; /* of the products run now (a layer's, during its calls) */
  lunet_precision policy;    /* new layers' precision */
  int backend; /* registry index of the default backend; -1 until chosen */
  uint64_t fallbacks;
  uint64_t generation; /* visit mark of the current backward */
  int64_t weight_budget; /* bytes new layer weights may still take; -1: no limit (a file's
                          * size bounds them while a model loads) */
  struct lunet_profile *prof; /* profile.c: NULL unless profiling */
  /* A ReLU run inside a layer's op, asked by layer.c during the layer's
   * forward and backward (LUNET_POOL_RELU_ASKED): the ReLU moved after a
   * max pooling (model.c), of the pooling's pool2d ops; a Dense layer's
   * "relu" activation, of its lunet_op_linear and lunet_op_relu_grad.
   * ops.c answers LUNET_POOL_RELU_DONE when the op ran it.  In a backward,
   * LUNET_POOL_RELU_FOLDED: the consumer of the layer's output already
   * passed the gradient through the ReLU (input_relu below): the layer's
   * lunet_op_relu_grad takes dy as it is. */
  int pool_relu;
  /* The ReLU's gradient folded into a layer's input gradient (layer.c asks
   * during the consumer's backward, LUNET_POOL_RELU_ASKED, when its input
   * is the output of a layer whose own op ran its ReLU and nothing else
   * adds to that output's gradient; lunet_op_matmul_dx answers DONE):
   * input_relu_mask is that output (the ReLU's). */
  int input_relu;
  const lunet_tensor *input_relu_mask;
  uint64_t backward_gen; /* the generation of the backward running now (0: none) */
};
enum { LUNET_POOL_RELU_NONE, LUNET_POOL_RELU_ASKED, LUNET_POOL_RELU_DONE, LUNET_POOL_RELU_FOLDED };

/* A loaded backend (the registry owns it for the life of the process). */
typedef struct lunet_be {
  const lunet_backend_desc *desc;
  const lunet_backend_i *i;
  lunet_backend *state; /* NULL when unavailable */
  char name[32];
  char path[512];
  char why[256]; /* why it is unavailable */
  int score;
  int device; /* the device init() starts on; -1: the backend's choice */
  long live;  /* buffers allocated and not yet freed */
} lunet_be;

/* Device memory with a reference count; tensors and their aliases share it. */
typedef struct lunet_buffer {
  int refcount;
  lunet_be *be;
  lunet_buf handle;
  size_t nbytes;
} lunet_buffer;

typedef struct lunet_node lunet_node;

struct lunet_tensor {
  int refcount;
  lunet_dtype dtype;
  int ndim;
  int64_t shape[LUNET_MAX_DIMS];
  int64_t numel;
  lunet_buffer *buf;
  bool requires_grad;
  lunet_tensor *grad;  /* accumulated gradient (leaves) */
  lunet_node *grad_fn; /* the op that made it, when recorded */
  lunet_tensor *acc;   /* gradient being accumulated during one backward */
  int pending;         /* a leaf's uses not yet back-propagated (hooked backward) */
  /* A backward's seed of 1 (autograd.c) that nothing has added to since: a
   * node may take it as the number 1 without reading or multiplying by it. */
  bool unit;
  /* The nodes of the backward of generation uses_gen that take this tensor
   * as an input (autograd.c's topo): 1 means one gradient reaches it. */
  int uses;
  uint64_t uses_gen;
};

/* One recorded op: backward() receives dy and writes one gradient per input
 * (NULL where none is needed), each a new reference. */
#define LUNET_NODE_MAX_INPUTS 40 /* a layer call: 16 inputs and 16 weights */
struct lunet_node {
  int refcount;
  uint64_t mark; /* visit generation of the last backward */
  const char *name;
  int ninputs;
  lunet_tensor *inputs[LUNET_NODE_MAX_INPUTS];
  lunet_tensor *saved[4]; /* tensors backward needs (aliases, no grad_fn) */
  float fparams[4];
  int64_t iparams[LUNET_MAX_DIMS * 3];
  void *data;  /* op-specific (a layer for layer nodes) */
  void *extra; /* op-specific (a layer call's saved state) */
  char *prof_layer; /* while profiling: the layer whose activation this op is (its gradient is timed for it) */
  lunet_status (*backward)(lunet_ctx *ctx, lunet_node *n, lunet_tensor *dy, lunet_tensor **dx);
  void (*release)(lunet_node *n);
};

/* layer.c: lunet_layer_apply, then (relu_after, one output) a ReLU of the
 * output inside the call's profiled pass, its gradient counted for the
 * layer: the ReLU of the convolution before a max pooling (model.c). */
LUNET_HIDDEN lunet_status lunet_layer_apply_relu(lunet_ctx *ctx, lunet_layer *l, lunet_call *keep, int nin,
                                                 lunet_tensor *const *x, lunet_tensor *const *masks, bool training,
                                                 bool skip_activation, bool relu_after, lunet_tensor **y,
                                                 lunet_tensor **mask_out);

/* registry.c */
LUNET_HIDDEN lunet_be *lunet_registry_backend(lunet_ctx *ctx, const char *name);
/* Whether v is one of an argument's choices ("valid|same"). */
LUNET_HIDDEN bool lunet_arg_choice_ok(const char *choices, const char *v);
LUNET_HIDDEN lunet_be *lunet_registry_default(lunet_ctx *ctx);
/* "plugin 'NAME' (PATH)" of the plugin that registered t, into buf. */
LUNET_HIDDEN const char *lunet_registry_plugin_of(const lunet_layer_type *t, char *buf, size_t n);
/* The name of the plugin that registered t (its descriptor's), or NULL. */
LUNET_HIDDEN const char *lunet_registry_plugin_name(const lunet_layer_type *t);

/* tensor.c */
LUNET_HIDDEN lunet_tensor *lunet_tensor_on(lunet_ctx *ctx, lunet_be *be, lunet_dtype dt, int ndim,
                                           const int64_t *shape);
LUNET_HIDDEN lunet_tensor *lunet_tensor_alias(lunet_ctx *ctx, lunet_tensor *t, int ndim,
                                              const int64_t *shape);
LUNET_HIDDEN int64_t lunet_shape_numel(int ndim, const int64_t *shape);
/* Elements of one sample (a layer's output, a model's input), at most: more
 * is broken (sizes beyond this overflow once a batch multiplies them). */
#define LUNET_MAX_SAMPLE_ELEMENTS (INT64_C(1) << 40)
LUNET_HIDDEN bool lunet_sample_shape_ok(int ndim, const int64_t *dims);
LUNET_HIDDEN bool lunet_shape_equal(const lunet_tensor *a, const lunet_tensor *b);
/* A prediction's positions: its shape without the last (class or feature)
 * axis, (N, T, K) -> N T; a 1-D one has one per sample.  The count sample
 * weights, padding masks and metrics weigh by. */
LUNET_HIDDEN int64_t lunet_tensor_positions(const lunet_tensor *t);

/* layer.c: "(None, 28, 28, 1)", one sample's shape with Keras's batch
 * placeholder, into buf; returns buf. */
LUNET_HIDDEN const char *lunet_batch_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

/* profile.c: lunet_prof_now is 0 unless the context profiles; lunet_prof_op
 * records the op that started at t0 (waiting for the device first) and
 * passes its status through; lunet_prof_layer a layer's pass (kind
 * "forward", "backward", or "activation_backward": the gradient of the
 * layer's activation, a node of its own on the tape). */
typedef struct lunet_profile lunet_profile;
LUNET_HIDDEN uint64_t lunet_prof_now(const lunet_ctx *ctx);
LUNET_HIDDEN int lunet_prof_op(lunet_ctx *ctx, lunet_be *be, const char *op, double flops, uint64_t t0, int rc);
LUNET_HIDDEN void lunet_prof_layer(lunet_ctx *ctx, const char *layer, const char *kind, uint64_t t0);
/* A backend call, recorded when the context profiles:
 *   rc = PROFILED(ctx, be, "gemm", 2.0 * m * n * k, be->i->gemm(...)); */
#define PROFILED(ctx, be, op, flops, call)                           \
  __extension__({                                                    \
    uint64_t prof_t0_ = (ctx)->prof ? lunet_prof_now(ctx) : 0;       \
    int prof_rc_ = (call);                                           \
    prof_t0_ ? lunet_prof_op(ctx, be, op, flops, prof_t0_, prof_rc_) \
             : prof_rc_;                                             \
  })

/* ops.c: backend status -> context error */
LUNET_HIDDEN lunet_status lunet_be_check(lunet_ctx *ctx, lunet_be *be, int rc, const char *op);

/* autograd.c */
LUNET_HIDDEN lunet_tensor *lunet_scalar_like(lunet_ctx *ctx, const lunet_tensor *like, float v);
LUNET_HIDDEN lunet_node *lunet_node_new(lunet_ctx *ctx, const char *name, int ninputs,
                                        lunet_tensor *const *inputs);
LUNET_HIDDEN bool lunet_needs_grad(lunet_ctx *ctx, int n, lunet_tensor *const *ts);
LUNET_HIDDEN void lunet_node_attach(lunet_tensor *out, lunet_node *n);
LUNET_HIDDEN void lunet_node_release(lunet_node *n);
/* lunet_backward that calls done(user, leaf) as soon as a leaf's gradient
 * is complete (every node that uses it has run). */
typedef void (*lunet_leaf_done_fn)(void *user, lunet_tensor *leaf);
LUNET_HIDDEN lunet_status lunet_backward_hooked(lunet_ctx *ctx, lunet_tensor *root,
                                                lunet_leaf_done_fn done, void *user);
/* Records out = copy of in (any backends) when in needs grad. */
LUNET_HIDDEN lunet_tensor *lunet_record_copy(lunet_ctx *ctx, lunet_tensor *out, lunet_tensor *in);

/* metric.c: one batch's additive statistics (weighted by one weight per
 * sample or position when weights is not NULL) as a 1-D float tensor on the
 * predictions' device (NULL with an error), then added to the state once
 * read back; and whether the metric reads probabilities (so a softmax may
 * not be fused into the loss). */
struct lunet_metric;
LUNET_HIDDEN struct lunet_tensor *lunet_metric_batch(lunet_ctx *ctx, struct lunet_metric *m,
                                                     lunet_tensor *y_pred, lunet_tensor *y_true,
                                                     const lunet_tensor *weights);
/* nweights: the count of the weights the batch was computed with (0:
 * unweighted; its vector then lacks the weights' sum). */
LUNET_HIDDEN lunet_status lunet_metric_absorb(lunet_ctx *ctx, struct lunet_metric *m, const float *v,
                                              int64_t n, const lunet_tensor *y_pred, int64_t nweights);
LUNET_HIDDEN bool lunet_metric_needs_probabilities(const struct lunet_metric *m);

/* The optimizers built from the core's tensor ops (Adagrad, Adadelta,
 * Adamax, Nadam, Lion, Adam with amsgrad, centered RMSprop;
 * optimizer_ops.c): one update of p from g with the optimizer's slots of
 * p (as many as lunet_optimizer_slot_count) at 1-based step `step`. */
struct lunet_optimizer_config;
lunet_status lunet_optimizer_update_by_ops(lunet_ctx *ctx, const struct lunet_optimizer_config *c,
                                           lunet_tensor *p, const lunet_tensor *g,
                                           lunet_tensor *const *slots, int64_t step);

/* Weight constraints (constraints.c): a "<w>_constraint" spec checked
 * when set, and every constrained weight of a layer projected in place
 * after an update. */
LUNET_HIDDEN lunet_status lunet_constraint_check(lunet_ctx *ctx, const char *layer, const char *arg, const char *spec);
LUNET_HIDDEN lunet_status lunet_layer_constrain(lunet_ctx *ctx, lunet_layer *l);

/* The argument that regularizes or constrains weight i (suffix
 * "_regularizer" or "_constraint"): "<w><suffix>", or for a weight named
 * "X_kernel" other than "kernel" "X<suffix>" when the layer declares that
 * (Keras's depthwise_regularizer for depthwise_kernel).  Into buf. */
LUNET_HIDDEN const char *lunet_weight_arg(const lunet_layer *l, int i, const char *suffix, char *buf, size_t n);

/* Per-row losses (N, ...) reduced as the built-in losses are: their mean,
 * or with sample weights (N) Keras's sum(w * loss) / rows (losses.c). */
LUNET_HIDDEN lunet_tensor *lunet_loss_mean_rows(lunet_ctx *ctx, lunet_tensor *rows, const lunet_tensor *sample_weight);

/* zlib's message for gzFile g (a struct gzFile_s *) opened on path, without
 * the "path: " zlib puts in front (data_idx.c); *err gets zlib's code. */
struct gzFile_s;
LUNET_HIDDEN const char *lunet_gz_message(struct gzFile_s *g, const char *path, int *err);

#endif
