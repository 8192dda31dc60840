/*
 * lunet models: a graph of layer calls owned by the core, with the whole
 * training step (forward, losses, penalties, backward, gradient transforms,
 * optimizer update, metrics) in C, so the Lua shell, a C program and any
 * server share one step.
 *
 * A model is built from values: model inputs (one sample's shape each) and
 * the outputs of layer calls.  lunet_model_input() and lunet_model_add()
 * return value ids; the layer is built for its inputs' shapes when it is
 * added, so shape errors appear at construction.  Sequential is the chain
 * input -> layer 1 -> ... -> layer n.  A layer added twice shares its
 * weights.
 *
 * Ownership: _new returns one reference (drop with _release); the model
 * retains the layers and the optimizer given to it; _get and accessors
 * borrow.  Every function taking a lunet_ctx reports errors there.
 *
 * Threads: construction, compile and training steps use the model from one
 * thread at a time.
 */
#ifndef LUNET_MODEL_H
#define LUNET_MODEL_H

#include "lunet/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimizers ---- */

typedef enum lunet_optimizer_kind {
  LUNET_OPT_SGD = 0,  /* slots: velocity (when momentum > 0) */
  LUNET_OPT_ADAM,     /* slots: m, v; AdamW is Adam with weight_decay > 0 */
  LUNET_OPT_RMSPROP,  /* slots: mean square, momentum buffer (when momentum > 0) */
  LUNET_OPT_ADAGRAD,  /* slots: accumulator (starts at initial_accumulator_value) */
  LUNET_OPT_ADADELTA, /* slots: accumulated gradient, accumulated delta */
  LUNET_OPT_ADAMAX,   /* slots: m, u (the infinity norm) */
  LUNET_OPT_NADAM,    /* slots: m, v */
  LUNET_OPT_LION,     /* slots: m */
  LUNET_OPT_COUNT
} lunet_optimizer_kind;

/* "sgd", "adam", ... (Keras's lower-case names); NULL for no kind. */
LUNET_API const char *lunet_optimizer_kind_name(lunet_optimizer_kind kind);
/* The kind named `name`, or -1. */
LUNET_API int lunet_optimizer_kind_find(const char *name);

/* Keras's hyperparameters; lunet_optimizer_defaults() fills Keras's
 * defaults for a kind.  Clipping, in the order applied to the gradients of
 * one update: clipvalue (each element to [-v, v]), clipnorm (each
 * gradient's L2 norm), global_clipnorm (all gradients together); 0 is off. */
typedef struct lunet_optimizer_config {
  lunet_optimizer_kind kind;
  double learning_rate;
  double momentum;      /* SGD, RMSprop */
  bool nesterov;        /* SGD */
  double beta_1, beta_2; /* Adam */
  double rho;           /* RMSprop */
  double epsilon;       /* Adam, RMSprop */
  double weight_decay;  /* decoupled: p -= lr * weight_decay * p (all but RMSprop) */
  double clipvalue, clipnorm, global_clipnorm;
  double initial_accumulator_value; /* Adagrad */
  bool amsgrad;  /* Adam: divide by the largest second moment seen so far */
  bool centered; /* RMSprop: divide by the variance, not the second moment */
} lunet_optimizer_config;

typedef struct lunet_optimizer lunet_optimizer;

LUNET_API lunet_optimizer_config lunet_optimizer_defaults(lunet_optimizer_kind kind);
LUNET_API lunet_optimizer *lunet_optimizer_new(lunet_ctx *ctx, const lunet_optimizer_config *cfg);
LUNET_API lunet_optimizer *lunet_optimizer_retain(lunet_optimizer *o);
LUNET_API void lunet_optimizer_release(lunet_optimizer *o);
LUNET_API const lunet_optimizer_config *lunet_optimizer_config_get(const lunet_optimizer *o);
/* Replaces the hyperparameters (a schedule sets the learning rate before
 * each update); the kind cannot change. */
LUNET_API lunet_status lunet_optimizer_configure(lunet_ctx *ctx, lunet_optimizer *o,
                                                 const lunet_optimizer_config *cfg);
/* One update of params[i] from grads[i] (NULL: that one is skipped).  The
 * optimizer keeps per-parameter slots by position, so every call passes the
 * same parameters in the same order. */
LUNET_API lunet_status lunet_optimizer_apply(lunet_ctx *ctx, lunet_optimizer *o, int n,
                                             lunet_tensor *const *params,
                                             lunet_tensor *const *grads);
/* Drops every slot and the update count (a fresh start). */
LUNET_API void lunet_optimizer_reset(lunet_optimizer *o);
/* Updates done so far (Adam's bias correction counts from it). */
LUNET_API int64_t lunet_optimizer_iterations(const lunet_optimizer *o);
LUNET_API void lunet_optimizer_set_iterations(lunet_optimizer *o, int64_t n);
/* Slots per parameter for this configuration (0 to 3). */
LUNET_API int lunet_optimizer_slot_count(const lunet_optimizer *o);
/* Slot k of parameter i, NULL before its first update; borrowed. */
LUNET_API lunet_tensor *lunet_optimizer_slot(const lunet_optimizer *o, int i, int k);
/* Sets slot k of parameter i (retains t), e.g. from a checkpoint. */
LUNET_API lunet_status lunet_optimizer_set_slot(lunet_ctx *ctx, lunet_optimizer *o, int i, int k,
                                                lunet_tensor *t);
/* Moves every slot to another backend. */
LUNET_API lunet_status lunet_optimizer_to(lunet_ctx *ctx, lunet_optimizer *o, const char *backend);

/* ---- metrics: objects with update, result, reset and merge ---- */

typedef enum lunet_metric_kind {
  LUNET_METRIC_MEAN = 0,                 /* the mean of the values given */
  LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY, /* argmax(pred) == label */
  LUNET_METRIC_CATEGORICAL_ACCURACY,     /* argmax(pred) == argmax(one-hot) */
  LUNET_METRIC_BINARY_ACCURACY,          /* (pred > threshold) == target, per element */
  LUNET_METRIC_PRECISION,                /* tp / (tp + fp), every element (or one class) */
  LUNET_METRIC_RECALL,                   /* tp / (tp + fn) */
  LUNET_METRIC_AUC,                      /* ROC or PR area from counts at fixed thresholds */
  LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY, /* the true class among the k best scores */
  LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY,
  LUNET_METRIC_F1,                       /* per-class F1 from tp, fp, fn; averaged */
  LUNET_METRIC_MEAN_IOU,                 /* confusion matrix, IoU per class, mean */
  LUNET_METRIC_MEAN_ABSOLUTE_ERROR,
  LUNET_METRIC_ROOT_MEAN_SQUARED_ERROR,
  LUNET_METRIC_R2,                       /* coefficient of determination per column */
  LUNET_METRIC_ACCURACY,                 /* pred == target exactly, per element (Keras's Accuracy) */
  LUNET_METRIC_KIND_COUNT
} lunet_metric_kind;

/* How F1 and R2 combine their per-class (per-column) values. */
typedef enum lunet_metric_average {
  LUNET_AVERAGE_NONE = 0, /* one value per class */
  LUNET_AVERAGE_MICRO,    /* F1: from the counts summed over classes */
  LUNET_AVERAGE_MACRO,    /* the plain mean (R2: "uniform_average") */
  LUNET_AVERAGE_WEIGHTED  /* F1: by support; R2: by variance ("variance_weighted_average") */
} lunet_metric_average;

/* What a metric computes and its options; lunet_metric_config_defaults
 * fills in Keras's defaults for a kind. */
typedef struct lunet_metric_config {
  lunet_metric_kind kind;
  float threshold;     /* binary accuracy, precision, recall, F1 (NaN: F1 takes each row's maximum) */
  int top_k;           /* top-k accuracies: k (5) */
  int num_classes;     /* MeanIoU (required) */
  int num_thresholds;  /* AUC (200) */
  int class_id;        /* precision, recall: one column of (..., K); -1: every element */
  bool pr_curve;       /* AUC: the precision-recall curve instead of ROC */
  lunet_metric_average average; /* F1 (macro here; Keras's default is none), R2 (macro) */
  int sparse_y_true;   /* MeanIoU: 1 class ids, 0 one-hot/scores, -1 from the shapes */
  int sparse_y_pred;
  int logits;          /* 0: predictions are probabilities; 1: sigmoid first; 2: softmax first */
} lunet_metric_config;

typedef struct lunet_metric lunet_metric;

LUNET_API lunet_metric_config lunet_metric_config_defaults(lunet_metric_kind kind);
/* Parses "precision", "auc", "AUC(curve=PR, num_thresholds=500)",
 * "F1Score(average=micro, name=f1_micro)", ... (Keras's class and string
 * names); the name to log goes to name (the kind's Keras name unless the
 * spec gives one). */
LUNET_API lunet_status lunet_metric_parse(lunet_ctx *ctx, const char *spec, lunet_metric_config *out,
                                          char *name, size_t name_len);
/* threshold: binary accuracy's (0.5 on probabilities, 0 on logits). */
LUNET_API lunet_metric *lunet_metric_new(lunet_ctx *ctx, const char *name, lunet_metric_kind kind,
                                         float threshold);
LUNET_API lunet_metric *lunet_metric_new_config(lunet_ctx *ctx, const char *name,
                                                const lunet_metric_config *cfg);
LUNET_API void lunet_metric_free(lunet_metric *m);
LUNET_API const char *lunet_metric_name(const lunet_metric *m);
LUNET_API lunet_metric_kind lunet_metric_kind_get(const lunet_metric *m);
LUNET_API const lunet_metric_config *lunet_metric_config_get(const lunet_metric *m);
/* Every kind but the mean: adds one batch, computed on the tensors' device
 * (one download).  y_pred (N, ...), y_true as the kind expects. */
LUNET_API lunet_status lunet_metric_update(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred,
                                           lunet_tensor *y_true);
/* The same with Keras's sample_weight: one weight per sample, or per
 * position (y_pred's shape without its last axis); every count and sum is
 * weighted, a mean becomes sum(w v) / sum(w).  NULL: unweighted. */
LUNET_API lunet_status lunet_metric_update_weighted(lunet_ctx *ctx, lunet_metric *m, lunet_tensor *y_pred,
                                                    lunet_tensor *y_true, const lunet_tensor *sample_weight);
/* The mean and the accuracies: adds `total` over `count` samples (a mean
 * adds value * count). */
LUNET_API void lunet_metric_add(lunet_metric *m, double total, double count);
LUNET_API double lunet_metric_result(const lunet_metric *m); /* 0 before any update */
/* The per-class values of an F1 or R2 without averaging (or the one
 * result): writes up to n, returns how many there are. */
LUNET_API int lunet_metric_results(const lunet_metric *m, double *out, int n);
LUNET_API void lunet_metric_reset(lunet_metric *m);
/* Adds src's state into dst (the same kind and options): partial results
 * from several processes or threads. */
LUNET_API lunet_status lunet_metric_merge(lunet_ctx *ctx, lunet_metric *dst,
                                          const lunet_metric *src);
/* The mean and the accuracies: the state as (total, count). */
LUNET_API void lunet_metric_state(const lunet_metric *m, double *total, double *count);
/* Any kind: the additive state (counts and sums; count last), for a
 * reduction across processes: writes up to n values, returns how many
 * there are (0 before the first update of a kind sized by its data). */
LUNET_API int lunet_metric_state_vector(const lunet_metric *m, double *out, int n);
/* Replaces the state with one of the same size (a reduced one). */
LUNET_API lunet_status lunet_metric_set_state_vector(lunet_ctx *ctx, lunet_metric *m,
                                                     const double *v, int n);

/* ---- graphs ---- */

typedef struct lunet_model lunet_model;

LUNET_API lunet_model *lunet_model_new(lunet_ctx *ctx, const char *name);
LUNET_API lunet_model *lunet_model_retain(lunet_model *m);
LUNET_API void lunet_model_release(lunet_model *m);
LUNET_API const char *lunet_model_name(const lunet_model *m);

/* A model input for samples of `shape` (no batch axis); returns its value id
 * or -1.  name may be NULL ("input_1", ...). */
LUNET_API int lunet_model_input(lunet_ctx *ctx, lunet_model *m, const char *name, int ndim,
                                const int64_t *shape);
/* A call of layer `l` on values in[0..nin): builds the layer for their
 * shapes and returns the id of its first output (a layer of M outputs
 * makes the values id .. id + M - 1), or -1. */
LUNET_API int lunet_model_add(lunet_ctx *ctx, lunet_model *m, lunet_layer *l, int nin,
                              const int *in);
/* Declares the model's outputs; every output must depend on an input, and
 * every input must be used.  The graph is fixed from then on. */
LUNET_API lunet_status lunet_model_set_outputs(lunet_ctx *ctx, lunet_model *m, int n,
                                               const int *ids);

LUNET_API int lunet_model_input_count(const lunet_model *m);
LUNET_API int lunet_model_output_count(const lunet_model *m);
/* One sample's shape of value `id`; returns ndim (-1: no such value). */
LUNET_API int lunet_model_value_shape(const lunet_model *m, int id, int64_t *shape);
LUNET_API int lunet_model_input_id(const lunet_model *m, int i);
LUNET_API int lunet_model_output_id(const lunet_model *m, int i);
/* Layer calls in execution order: the layer of call i (borrowed), and its
 * input value ids (returns the count, writes up to max). */
LUNET_API int lunet_model_call_count(const lunet_model *m);
LUNET_API lunet_layer *lunet_model_call_layer(const lunet_model *m, int i);
LUNET_API int lunet_model_call_inputs(const lunet_model *m, int i, int *ids, int max);
/* Call i's outputs are the values call_output(i) .. + call_output_count(i) - 1. */
LUNET_API int lunet_model_call_output(const lunet_model *m, int i);
LUNET_API int lunet_model_call_output_count(const lunet_model *m, int i);

/* The layers of the calls the outputs depend on, each once, in call order
 * (the order of a file's "layers.i.*" weights); borrowed. */
LUNET_API int lunet_model_layer_count(const lunet_model *m);
LUNET_API lunet_layer *lunet_model_layer(const lunet_model *m, int i);
/* Whether some output depends on call i (calls no output needs are not run). */
LUNET_API bool lunet_model_call_live(const lunet_model *m, int i);
/* An input's name, or the name of the layer that makes a value. */
LUNET_API const char *lunet_model_value_name(const lunet_model *m, int id);

/* Trainable weights, each layer once, in call order then weight order: the
 * order of the optimizer's slots and of get_weights.  Borrowed; valid until
 * a layer moves to another backend. */
LUNET_API int lunet_model_param_count(const lunet_model *m);
LUNET_API lunet_tensor *lunet_model_param(const lunet_model *m, int i);

/* ---- compile, train, evaluate, predict ---- */

/* A loss written by the caller (a Lua function): the batch's loss as a
 * scalar on the tape, or one loss per sample (N), or per row (N, ...), that
 * the core averages (with sample weights as Keras: sum(w * loss) / rows);
 * NULL with ctx's error set on failure. */
typedef lunet_tensor *(*lunet_loss_fn)(void *user, lunet_ctx *ctx, lunet_tensor *y_true, lunet_tensor *y_pred);

typedef struct lunet_loss_spec {
  lunet_loss_kind kind; /* with fn: ignored, except that "accuracy" then goes by the output's shape */
  bool from_logits;
  double weight; /* loss_weights: this output's factor in the total (1 for
                  * Keras's default; 0 switches the output's loss off) */
  double delta;           /* Huber's (<= 0: 1.0) */
  double label_smoothing; /* categorical and binary cross-entropy */
  lunet_loss_fn fn;       /* a caller's loss instead of kind (NULL: kind); never saved */
  void *fn_user;          /* borrowed: alive while the model is compiled with it */
} lunet_loss_spec;

/* nlosses is 1 (the same loss on every output) or the output count.
 * metrics: names ("accuracy", "acc", "sparse_categorical_accuracy",
 * "categorical_accuracy", "binary_accuracy"), computed on every output;
 * "accuracy" picks the kind from the loss as Keras does.  The model retains
 * the optimizer. */
typedef struct lunet_compile_opts {
  int nlosses;
  const lunet_loss_spec *losses;
  lunet_optimizer *optimizer;
  int nmetrics;
  const char *const *metrics;
  /* Keras's weighted_metrics: metrics that sample_weight (and class_weight)
   * reach; logged under their names, or "weighted_" and the name when an
   * unweighted one has it. */
  int nweighted_metrics;
  const char *const *weighted_metrics;
} lunet_compile_opts;

LUNET_API lunet_status lunet_model_compile(lunet_ctx *ctx, lunet_model *m,
                                           const lunet_compile_opts *o);
LUNET_API lunet_optimizer *lunet_model_optimizer(const lunet_model *m); /* borrowed */
LUNET_API bool lunet_model_compiled(const lunet_model *m);
/* Output j's loss as compiled (a zeroed spec before compile). */
LUNET_API lunet_loss_spec lunet_model_loss(const lunet_model *m, int j);
/* The metric names given to compile. */
LUNET_API int lunet_model_compiled_metric_count(const lunet_model *m);
LUNET_API const char *lunet_model_compiled_metric(const lunet_model *m, int k);
LUNET_API int lunet_model_compiled_weighted_metric_count(const lunet_model *m);
LUNET_API const char *lunet_model_compiled_weighted_metric(const lunet_model *m, int k);

/* Hooks of the training step, called on the calling thread:
 * grad_ready(user, i, grad) as soon as parameter i's gradient is complete
 * during backward (an allreduce can start while backward goes on);
 * transform(user, n, params, grads) after backward and before clipping and
 * the update, and may change the gradients in place (averaging across
 * processes); a status other than LUNET_OK skips the update and fails the
 * step.  NULL removes a hook. */
typedef void (*lunet_grad_ready_fn)(void *user, int param, lunet_tensor *grad);
typedef lunet_status (*lunet_grad_transform_fn)(void *user, lunet_ctx *ctx, int n,
                                                lunet_tensor *const *params,
                                                lunet_tensor *const *grads);
LUNET_API void lunet_model_set_grad_ready(lunet_model *m, lunet_grad_ready_fn fn, void *user);
LUNET_API void lunet_model_set_grad_transform(lunet_model *m, lunet_grad_transform_fn fn,
                                              void *user);

/* One training step on a batch: x[i] (N, input i's shape), y[j] the targets
 * of output j.  Updates the weights and the model's metrics; *loss (may be
 * NULL) receives the batch's loss, penalties included.  Nothing but the
 * loss and the metrics' counts leaves the device. */
LUNET_API lunet_status lunet_model_train_step(lunet_ctx *ctx, lunet_model *m, int nx,
                                              lunet_tensor *const *x, int ny,
                                              lunet_tensor *const *y, double *loss);
/* The same in inference mode, without the update (evaluate's step). */
LUNET_API lunet_status lunet_model_test_step(lunet_ctx *ctx, lunet_model *m, int nx,
                                             lunet_tensor *const *x, int ny,
                                             lunet_tensor *const *y, double *loss);
/* Both with one weight per sample, (N) or (N, 1), for every output's loss,
 * reduced as Keras does: sum(w_i * loss_i) / N (lunet_loss_weighted);
 * sample_weight NULL is the plain step.  Metrics stay unweighted. */
LUNET_API lunet_status lunet_model_train_step_weighted(lunet_ctx *ctx, lunet_model *m, int nx,
                                                       lunet_tensor *const *x, int ny,
                                                       lunet_tensor *const *y,
                                                       const lunet_tensor *sample_weight, double *loss);
LUNET_API lunet_status lunet_model_test_step_weighted(lunet_ctx *ctx, lunet_model *m, int nx,
                                                      lunet_tensor *const *x, int ny,
                                                      lunet_tensor *const *y,
                                                      const lunet_tensor *sample_weight, double *loss);
/* Outputs for one batch, inference mode, nothing recorded: out[j] receives
 * a new reference for each output. */
LUNET_API lunet_status lunet_model_predict(lunet_ctx *ctx, lunet_model *m, int nx,
                                           lunet_tensor *const *x, lunet_tensor **out);
/* The model as a function of tensors, recorded on the tape when grad is on
 * (a model inside a bigger computation). */
LUNET_API lunet_status lunet_model_forward(lunet_ctx *ctx, lunet_model *m, int nx,
                                           lunet_tensor *const *x, bool training,
                                           lunet_tensor **out);

/* A step-by-step run (generation with a key/value cache): the model runs
 * on successive parts of its input sequences, x[i] (N, t, ...) with t new
 * steps, in inference mode; each call keeps its record, so attention
 * layers keep their keys and values and a new token costs one step.  Every
 * live layer must be LUNET_LAYER_STEPWISE (new: an error names the first
 * that is not).  feed: out[j] (N, t, ...) receives each output for the new
 * steps. */
typedef struct lunet_model_session lunet_model_session;
LUNET_API lunet_model_session *lunet_model_session_new(lunet_ctx *ctx, lunet_model *m);
LUNET_API lunet_status lunet_model_session_feed(lunet_ctx *ctx, lunet_model_session *s, int nx,
                                                lunet_tensor *const *x, lunet_tensor **out);
/* Steps fed so far. */
LUNET_API int64_t lunet_model_session_length(const lunet_model_session *s);
LUNET_API void lunet_model_session_free(lunet_model_session *s);

/* The running metrics since the last reset: "loss", then "<output>_loss"
 * for each output when there are several, then each compiled metric
 * ("accuracy", or "<output>_accuracy" with several outputs). */
LUNET_API int lunet_model_metric_count(const lunet_model *m);
LUNET_API lunet_metric *lunet_model_metric(const lunet_model *m, int i); /* borrowed */
LUNET_API void lunet_model_reset_metrics(lunet_model *m);

/* ---- files ---- */

/* Writes the model to a safetensors file: every layer's weights
 * ("layers.<i>.<weight>"), the optimizer's slots ("optimizer.<param>.<slot>",
 * from 1), and metadata: the graph as JSON ("config", format_version 2),
 * the compile settings and optimizer ("compile", "optimizer", JSON), plus
 * the caller's own keys (meta_keys may not reuse those names).  The file is
 * written to a temporary name and renamed, so a crash leaves the old one. */
LUNET_API lunet_status lunet_model_save(lunet_ctx *ctx, lunet_model *m, const char *path, int nmeta,
                                        const char *const *meta_keys,
                                        const char *const *meta_values);
/* Reads a model back: graph, layers, weights, and the compile settings and
 * optimizer state when the file has them.  Nothing in the file is
 * executed; the config is checked field by field, and the weights it
 * declares may not exceed what the file holds.  The file's metadata stays
 * readable with lunet_model_meta.  NULL on error. */
LUNET_API lunet_model *lunet_model_load(lunet_ctx *ctx, const char *path);
/* A metadata value of the file the model was loaded from (borrowed), or
 * NULL. */
LUNET_API const char *lunet_model_meta(const lunet_model *m, const char *key);
LUNET_API lunet_status lunet_model_set_meta(lunet_ctx *ctx, lunet_model *m, const char *key,
                                            const char *value);
/* The names of the output's classes, from the file's "class_names"
 * metadata (a JSON list of strings, which lunet_model_set_meta checks):
 * their count (0 when the model has none) and name i (borrowed; NULL out
 * of range).  Lua: model.class_names = {...} before model:save. */
LUNET_API int lunet_model_class_count(const lunet_model *m);
LUNET_API const char *lunet_model_class_name(const lunet_model *m, int i);

#ifdef __cplusplus
}
#endif

#endif
