/* Models: a graph of layer calls, and the training step over it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/model.h"

#define MAX_IO 16
#define MAX_CALL_INPUTS 16

typedef struct value {
  int ndim;
  int64_t shape[LUNET_MAX_DIMS];
  int call;  /* the call that makes it, -1 for a model input */
  int index; /* the input's index among the model's inputs, or the call's output index */
  int uses;  /* live calls and outputs that read it */
  char name[64];
} value;

typedef struct call {
  lunet_layer *layer;
  int nin;
  int in[MAX_CALL_INPUTS];
  int out, nout; /* its outputs are values out .. out + nout - 1 */
  bool live; /* some output depends on it */
} call;

typedef struct param {
  lunet_layer *layer;
  int weight;
} param;

struct lunet_model {
  int refcount;
  char name[64];
  value *values;
  int nvalues, cap_values;
  call *calls;
  int ncalls, cap_calls;
  int inputs[MAX_IO], ninputs;
  int outputs[MAX_IO], noutputs;
  char output_names[MAX_IO][80]; /* the logs' prefixes: unique (the values' names may repeat) */
  bool sealed;
  param *params;
  int nparams;
  lunet_layer **layers; /* each live layer once, in call order */
  int nlayers;
  /* compile */
  bool compiled;
  lunet_loss_spec losses[MAX_IO];
  lunet_optimizer *opt;
  lunet_metric **metrics; /* loss, per-output losses, then accuracies */
  int nmetrics, nloss_metrics;
  int *metric_output; /* the output each accuracy reads */
  bool *metric_weighted; /* compiled as a weighted metric: sample weights reach it */
  lunet_grad_ready_fn grad_ready;
  void *grad_ready_user;
  lunet_grad_transform_fn transform;
  void *transform_user;
  char **metric_names; /* as compiled ("accuracy", ...) */
  int ncompiled_metrics;
  char **weighted_names; /* compile's weighted_metrics */
  int ncompiled_weighted;
  char **meta; /* key, value, key, value, ...: a loaded file's metadata */
  int nmeta;
  char **class_names; /* from the "class_names" metadata (a JSON list of strings) */
  int nclasses;
};

lunet_model *lunet_model_new(lunet_ctx *ctx, const char *name) {
  lunet_model *m = calloc(1, sizeof *m);
  if (!m) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a model");
    return NULL;
  }
  m->refcount = 1;
  snprintf(m->name, sizeof m->name, "%s", name && *name ? name : "model");
  return m;
}

lunet_model *lunet_model_retain(lunet_model *m) {
  if (m) __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED);
  return m;
}

static void free_metrics(lunet_model *m) {
  for (int i = 0; i < m->nmetrics; i++) lunet_metric_free(m->metrics[i]);
  free(m->metrics);
  free(m->metric_output);
  free(m->metric_weighted);
  m->metrics = NULL;
  m->metric_output = NULL;
  m->metric_weighted = NULL;
  m->nmetrics = m->nloss_metrics = 0;
}

static void free_strings(char **v, int n) {
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

void lunet_model_release(lunet_model *m) {
  if (!m || __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  free_strings(m->metric_names, m->ncompiled_metrics);
  free_strings(m->weighted_names, m->ncompiled_weighted);
  free_strings(m->meta, 2 * m->nmeta);
  free_strings(m->class_names, m->nclasses);
  for (int i = 0; i < m->ncalls; i++) lunet_layer_release(m->calls[i].layer);
  free_metrics(m);
  lunet_optimizer_release(m->opt);
  free(m->values);
  free(m->calls);
  free(m->params);
  free(m->layers);
  free(m);
}

const char *lunet_model_name(const lunet_model *m) { return m->name; }

/* ---- construction ---- */

static lunet_status check_open(lunet_ctx *ctx, const lunet_model *m) {
  if (!m) return lunet_error(ctx, LUNET_ERR_ARG, "no model (NULL: did lunet_model_new fail?)");
  if (m->sealed)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "model '%s': its outputs are set; the graph cannot grow any more", m->name);
  return LUNET_OK;
}

static value *new_value(lunet_ctx *ctx, lunet_model *m) {
  if (m->nvalues == m->cap_values) {
    int cap = m->cap_values ? 2 * m->cap_values : 16;
    value *v = realloc(m->values, sizeof *v * (size_t)cap);
    if (!v) {
      lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a model");
      return NULL;
    }
    m->values = v;
    m->cap_values = cap;
  }
  value *v = &m->values[m->nvalues];
  memset(v, 0, sizeof *v);
  return v;
}

int lunet_model_input(lunet_ctx *ctx, lunet_model *m, const char *name, int ndim,
                      const int64_t *shape) {
  if (check_open(ctx, m)) return -1;
  if (m->ninputs == MAX_IO) {
    lunet_error(ctx, LUNET_ERR_ARG, "model '%s': at most %d inputs", m->name, MAX_IO);
    return -1;
  }
  if (ndim < 0 || ndim >= LUNET_MAX_DIMS) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "model '%s': an input has %d dimensions (at most %d besides the batch)",
                m->name, ndim, LUNET_MAX_DIMS - 1);
    return -1;
  }
  if (!shape && ndim > 0) {
    lunet_error(ctx, LUNET_ERR_ARG, "model '%s': an input of %d dimensions with no shape (NULL)", m->name, ndim);
    return -1;
  }
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 1 || shape[i] > INT32_MAX) { /* a model file holds sizes up to INT32_MAX */
      lunet_error(ctx, LUNET_ERR_SHAPE, "model '%s': input sizes must be 1 to %d, got %lld", m->name, INT32_MAX,
                  (long long)shape[i]);
      return -1;
    }
  if (!lunet_sample_shape_ok(ndim, shape)) {
    char s[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "model '%s': an input of shape %s has more than %lld elements a sample",
                m->name, lunet_shape_str(ndim, shape, s, sizeof s), (long long)LUNET_MAX_SAMPLE_ELEMENTS);
    return -1;
  }
  value *v = new_value(ctx, m);
  if (!v) return -1;
  v->ndim = ndim;
  memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
  v->call = -1;
  v->index = m->ninputs;
  if (name && *name)
    snprintf(v->name, sizeof v->name, "%s", name);
  else
    snprintf(v->name, sizeof v->name, "input_%d", m->ninputs + 1);
  m->inputs[m->ninputs++] = m->nvalues;
  return m->nvalues++;
}

/* The name of what makes value v, for errors: the layer or the input. */
static const char *producer(const lunet_model *m, const value *v) {
  return v->call < 0 ? v->name : lunet_layer_name(m->calls[v->call].layer);
}

/* Builds l for the shapes of values in[], or checks them against the
 * shapes it was built for (a shared layer). */
static lunet_status build_for(lunet_ctx *ctx, lunet_model *m, lunet_layer *l, int nin,
                              const int *in) {
  lunet_shape shapes[MAX_CALL_INPUTS];
  for (int i = 0; i < nin; i++) {
    const value *v = &m->values[in[i]];
    shapes[i].ndim = v->ndim;
    memcpy(shapes[i].dims, v->shape, sizeof(int64_t) * (size_t)v->ndim);
  }
  if (lunet_layer_built(l)) {
    if (nin != lunet_layer_input_count(l))
      return lunet_error(ctx, LUNET_ERR_ARG, "%s was built for %d inputs, got %d", lunet_layer_name(l),
                         lunet_layer_input_count(l), nin);
    for (int i = 0; i < nin; i++) {
      lunet_shape want = lunet_layer_input_shape(l, i);
      bool same = want.ndim == shapes[i].ndim;
      for (int d = 0; same && d < want.ndim; d++) same = want.dims[d] == shapes[i].dims[d];
      if (!same) {
        char a[128], b[128], which[16] = "";
        if (nin > 1) snprintf(which, sizeof which, " %d", i + 1);
        return lunet_error(ctx, LUNET_ERR_SHAPE, "%s expects input%s of shape %s, but %s gives %s",
                           lunet_layer_name(l), which,
                           lunet_batch_shape_str(want.ndim, want.dims, a, sizeof a),
                           producer(m, &m->values[in[i]]),
                           lunet_batch_shape_str(shapes[i].ndim, shapes[i].dims, b, sizeof b));
      }
    }
    return LUNET_OK;
  }
  if (!lunet_layer_build(ctx, l, nin, shapes)) return LUNET_OK;
  /* say where the inputs came from */
  char where[512] = "", b[128], msg[sizeof ctx->msg + 512];
  size_t len = 0;
  for (int i = 0; i < nin && len < sizeof where; i++)
    len += (size_t)snprintf(where + len, sizeof where - len, "%s%s with shape %s", i ? ", " : "",
                            producer(m, &m->values[in[i]]),
                            lunet_batch_shape_str(shapes[i].ndim, shapes[i].dims, b, sizeof b));
  snprintf(msg, sizeof msg, "%s (input%s from %s)", ctx->msg, nin > 1 ? "s" : "", where);
  return lunet_error(ctx, ctx->status, "%s", msg);
}

static lunet_status grow_calls(lunet_ctx *ctx, lunet_model *m) {
  if (m->ncalls < m->cap_calls) return LUNET_OK;
  int cap = m->cap_calls ? 2 * m->cap_calls : 16;
  call *c = realloc(m->calls, sizeof *c * (size_t)cap);
  if (!c) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a model");
  m->calls = c;
  m->cap_calls = cap;
  return LUNET_OK;
}

int lunet_model_add(lunet_ctx *ctx, lunet_model *m, lunet_layer *l, int nin, const int *in) {
  if (check_open(ctx, m)) return -1;
  if (nin < 1 || nin > MAX_CALL_INPUTS || !in || !l) {
    lunet_error(ctx, LUNET_ERR_ARG, "model '%s': a layer call takes a layer and 1 to %d inputs, got %s and %d%s",
                m->name, MAX_CALL_INPUTS, l ? "a layer" : "no layer (NULL)", nin, in ? "" : " (NULL)");
    return -1;
  }
  for (int i = 0; i < nin; i++)
    if (in[i] < 0 || in[i] >= m->nvalues) {
      lunet_error(ctx, LUNET_ERR_ARG, "model '%s': %s: input %d is not a value of this model",
                  m->name, lunet_layer_name(l), i + 1);
      return -1;
    }
  if (build_for(ctx, m, l, nin, in) || grow_calls(ctx, m)) return -1;
  int first = m->nvalues, nout = lunet_layer_output_count(l);
  for (int j = 0; j < nout; j++) {
    value *v = new_value(ctx, m);
    if (!v) {
      m->nvalues = first;
      return -1;
    }
    lunet_shape o = lunet_layer_output_shape(l, j);
    v->ndim = o.ndim;
    memcpy(v->shape, o.dims, sizeof(int64_t) * (size_t)o.ndim);
    v->call = m->ncalls;
    v->index = j;
    if (nout == 1)
      snprintf(v->name, sizeof v->name, "%s", lunet_layer_name(l));
    else
      snprintf(v->name, sizeof v->name, "%s_%d", lunet_layer_name(l), j + 1);
    m->nvalues++;
  }
  call *c = &m->calls[m->ncalls++];
  memset(c, 0, sizeof *c);
  c->layer = lunet_layer_retain(l);
  c->nin = nin;
  memcpy(c->in, in, sizeof(int) * (size_t)nin);
  c->out = first;
  c->nout = nout;
  return first;
}

/* The trainable weights of the model's layers now (layer.trainable may
 * change them); out has room for every weight. */
static void list_params(const lunet_model *m, param *out, int *n) {
  *n = 0;
  for (int i = 0; i < m->nlayers; i++)
    for (int w = 0; w < lunet_layer_weight_count(m->layers[i]); w++)
      if (lunet_layer_weight_trainable(m->layers[i], w)) out[(*n)++] = (param){m->layers[i], w};
}

/* Whether the trainable weights are still those of the last compile. */
static bool params_current(const lunet_model *m) {
  int n = 0;
  for (int i = 0; i < m->nlayers; i++)
    for (int w = 0; w < lunet_layer_weight_count(m->layers[i]); w++)
      if (lunet_layer_weight_trainable(m->layers[i], w)) {
        if (n >= m->nparams || m->params[n].layer != m->layers[i] || m->params[n].weight != w)
          return false;
        n++;
      }
  return n == m->nparams;
}

/* Marks the calls the outputs depend on, counts each value's readers and
 * lists the layers and trainable weights. */
static lunet_status seal(lunet_ctx *ctx, lunet_model *m) {
  for (int i = 0; i < m->nvalues; i++) m->values[i].uses = 0;
  bool *needed = calloc((size_t)m->nvalues, sizeof *needed);
  if (!needed) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a model");
  for (int j = 0; j < m->noutputs; j++) {
    needed[m->outputs[j]] = true;
    m->values[m->outputs[j]].uses++;
  }
  /* values only ever read earlier values, so one backward sweep suffices */
  for (int c = m->ncalls - 1; c >= 0; c--) {
    call *k = &m->calls[c];
    k->live = false;
    for (int j = 0; j < k->nout; j++) k->live |= needed[k->out + j];
    if (!k->live) continue;
    for (int i = 0; i < k->nin; i++) {
      needed[k->in[i]] = true;
      m->values[k->in[i]].uses++;
    }
  }
  lunet_status s = LUNET_OK;
  for (int i = 0; i < m->ninputs && !s; i++)
    if (!needed[m->inputs[i]])
      s = lunet_error(ctx, LUNET_ERR_ARG,
                      "model '%s': input '%s' is not used by any output (remove it from the "
                      "inputs, or connect it)",
                      m->name, m->values[m->inputs[i]].name);
  free(needed);
  if (s) return s;
  m->layers = calloc((size_t)(m->ncalls ? m->ncalls : 1), sizeof *m->layers);
  int nw = 0;
  for (int c = 0; c < m->ncalls; c++) nw += lunet_layer_weight_count(m->calls[c].layer);
  m->params = calloc((size_t)(nw ? nw : 1), sizeof *m->params);
  if (!m->layers || !m->params) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  for (int c = 0; c < m->ncalls; c++) {
    lunet_layer *l = m->calls[c].layer;
    bool seen = !m->calls[c].live;
    for (int k = 0; !seen && k < m->nlayers; k++) seen = m->layers[k] == l;
    if (seen) continue;
    m->layers[m->nlayers++] = l;
  }
  list_params(m, m->params, &m->nparams);
  return LUNET_OK;
}

/* The outputs' names in the logs ("<name>_loss"): their values' names,
 * made unique as tf.keras's _set_output_names does (a shared layer's two
 * calls "sh" and "sh_1", a second LSTM "lstm_1" beside the first one's
 * output "lstm_1" as "lstm_1_1"), or one output's loss would overwrite
 * another's. */
static void name_outputs(lunet_model *m) {
  int count[MAX_IO] = {0}; /* per output whose name was proposed again */
  for (int j = 0; j < m->noutputs; j++) {
    const char *base = m->values[m->outputs[j]].name;
    char *name = m->output_names[j];
    snprintf(name, sizeof m->output_names[j], "%s", base);
    for (bool taken = true; taken;) {
      taken = false;
      for (int k = 0; k < j && !taken; k++) taken = !strcmp(m->output_names[k], name);
      if (taken) snprintf(name, sizeof m->output_names[j], "%s_%d", base, ++count[j]);
    }
  }
}

lunet_status lunet_model_set_outputs(lunet_ctx *ctx, lunet_model *m, int n, const int *ids) {
  if (check_open(ctx, m)) return ctx->status;
  if (n < 1 || n > MAX_IO || !ids)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s': 1 to %d outputs, got %d%s", m->name, MAX_IO, n,
                       ids ? "" : " (NULL)");
  if (m->ninputs == 0)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' has no inputs", m->name);
  for (int j = 0; j < n; j++) {
    if (ids[j] < 0 || ids[j] >= m->nvalues)
      return lunet_error(ctx, LUNET_ERR_ARG, "model '%s': output %d is not a value of this model",
                         m->name, j + 1);
    for (int k = 0; k < j; k++)
      if (ids[k] == ids[j])
        return lunet_error(ctx, LUNET_ERR_ARG, "model '%s': outputs %d and %d are the same value",
                           m->name, k + 1, j + 1);
  }
  memcpy(m->outputs, ids, sizeof(int) * (size_t)n);
  m->noutputs = n;
  name_outputs(m);
  lunet_status s = seal(ctx, m);
  if (s) {
    m->noutputs = m->nlayers = m->nparams = 0;
    free(m->layers);
    free(m->params);
    m->layers = NULL;
    m->params = NULL;
    return s;
  }
  m->sealed = true;
  return LUNET_OK;
}

int lunet_model_input_count(const lunet_model *m) { return m->ninputs; }
int lunet_model_output_count(const lunet_model *m) { return m->noutputs; }
int lunet_model_input_id(const lunet_model *m, int i) {
  return i >= 0 && i < m->ninputs ? m->inputs[i] : -1;
}
int lunet_model_output_id(const lunet_model *m, int i) {
  return i >= 0 && i < m->noutputs ? m->outputs[i] : -1;
}

int lunet_model_value_shape(const lunet_model *m, int id, int64_t *shape) {
  if (id < 0 || id >= m->nvalues) return -1;
  memcpy(shape, m->values[id].shape, sizeof(int64_t) * (size_t)m->values[id].ndim);
  return m->values[id].ndim;
}

int lunet_model_call_count(const lunet_model *m) { return m->ncalls; }
lunet_layer *lunet_model_call_layer(const lunet_model *m, int i) {
  return i >= 0 && i < m->ncalls ? m->calls[i].layer : NULL;
}
int lunet_model_call_inputs(const lunet_model *m, int i, int *ids, int max) {
  if (i < 0 || i >= m->ncalls) return 0;
  for (int k = 0; k < m->calls[i].nin && k < max; k++) ids[k] = m->calls[i].in[k];
  return m->calls[i].nin;
}
int lunet_model_call_output(const lunet_model *m, int i) {
  return i >= 0 && i < m->ncalls ? m->calls[i].out : -1;
}
int lunet_model_call_output_count(const lunet_model *m, int i) {
  return i >= 0 && i < m->ncalls ? m->calls[i].nout : 0;
}

int lunet_model_layer_count(const lunet_model *m) { return m->nlayers; }
lunet_layer *lunet_model_layer(const lunet_model *m, int i) {
  return i >= 0 && i < m->nlayers ? m->layers[i] : NULL;
}
bool lunet_model_call_live(const lunet_model *m, int i) {
  return i >= 0 && i < m->ncalls && m->calls[i].live;
}
const char *lunet_model_value_name(const lunet_model *m, int id) {
  return id >= 0 && id < m->nvalues ? m->values[id].name : NULL;
}

int lunet_model_param_count(const lunet_model *m) { return m->nparams; }
lunet_tensor *lunet_model_param(const lunet_model *m, int i) {
  return i >= 0 && i < m->nparams ? lunet_layer_weight(m->params[i].layer, m->params[i].weight)
                                  : NULL;
}

/* ---- compile ---- */

static lunet_status check_sealed(lunet_ctx *ctx, const lunet_model *m) {
  if (!m) return lunet_error(ctx, LUNET_ERR_ARG, "no model (NULL: did lunet_model_new or lunet_model_load fail?)");
  if (!m->sealed)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "model '%s' has no outputs yet (lunet_model_set_outputs)", m->name);
  return LUNET_OK;
}

/* Keras's choice for "accuracy": from the loss, else from the output's
 * last axis (one unit: binary). */
static lunet_metric_kind accuracy_kind(const lunet_model *m, int out, const char *name,
                                       bool *known) {
  *known = true;
  if (!strcmp(name, "sparse_categorical_accuracy")) return LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY;
  if (!strcmp(name, "categorical_accuracy")) return LUNET_METRIC_CATEGORICAL_ACCURACY;
  if (!strcmp(name, "binary_accuracy")) return LUNET_METRIC_BINARY_ACCURACY;
  if (strcmp(name, "accuracy") && strcmp(name, "acc")) {
    *known = false;
    return LUNET_METRIC_MEAN;
  }
  switch (m->losses[out].kind) {
  case LUNET_LOSS_SPARSE_CATEGORICAL_CE:
    return LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY;
  case LUNET_LOSS_CATEGORICAL_CE:
    return LUNET_METRIC_CATEGORICAL_ACCURACY;
  case LUNET_LOSS_BINARY_CE:
    return LUNET_METRIC_BINARY_ACCURACY;
  default: {
    const value *v = &m->values[m->outputs[out]];
    return v->ndim && v->shape[v->ndim - 1] > 1 ? LUNET_METRIC_CATEGORICAL_ACCURACY
                                                : LUNET_METRIC_BINARY_ACCURACY;
  }
  }
}

static lunet_status add_metric(lunet_ctx *ctx, lunet_model *m, const char *name,
                               const lunet_metric_config *cfg, int out, bool weighted) {
  lunet_metric *x = lunet_metric_new_config(ctx, name, cfg);
  if (!x) return ctx->status;
  m->metrics[m->nmetrics] = x;
  m->metric_weighted[m->nmetrics] = weighted;
  m->metric_output[m->nmetrics++] = out;
  return LUNET_OK;
}

/* A compiled metric of output `out` from its spec: "accuracy" resolved as
 * Keras does, predictions that are logits (the output's loss says so) turned
 * into probabilities where the metric reads them. */
static lunet_status metric_config(lunet_ctx *ctx, const lunet_model *m, int out, const char *spec,
                                  lunet_metric_config *cfg, char *name, size_t name_len) {
  bool known;
  lunet_metric_kind kind = accuracy_kind(m, out, spec, &known);
  if (known) {
    *cfg = lunet_metric_config_defaults(kind);
    snprintf(name, name_len, "%s", spec);
  } else {
    lunet_status s = lunet_metric_parse(ctx, spec, cfg, name, name_len);
    if (s) return s;
  }
  if ((cfg->kind == LUNET_METRIC_F1 || cfg->kind == LUNET_METRIC_R2) && cfg->average == LUNET_AVERAGE_NONE)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "metric '%s' gives one value per class, and a log holds one number: use another "
                       "average (macro, micro, weighted), or run the metric on model:predict's output",
                       spec);
  const value *v = &m->values[m->outputs[out]];
  int64_t classes = v->ndim ? v->shape[v->ndim - 1] : 1;
  if (cfg->class_id >= 0 && cfg->class_id >= classes) /* it failed at the first step of fit */
    return lunet_error(ctx, LUNET_ERR_ARG, "metric '%s': class_id %d, but output '%s' has %lld class%s (ids 0 to %lld)",
                       spec, cfg->class_id, m->output_names[out], (long long)classes, classes == 1 ? "" : "es",
                       (long long)classes - 1);
  const lunet_loss_spec *ls = &m->losses[out];
  if (cfg->kind == LUNET_METRIC_BINARY_ACCURACY) {
    /* sigmoid(x) > t where x > log(t / (1 - t)): 0 for Keras's 0.5 */
    if (ls->from_logits) cfg->threshold = cfg->threshold == 0.5f ? 0.0f : logf(cfg->threshold / (1.0f - cfg->threshold));
  } else if (ls->from_logits) {
    cfg->logits = ls->kind == LUNET_LOSS_BINARY_CE ? 1 : 2;
  }
  return LUNET_OK;
}

/* "accuracy" or "<output>_accuracy" when the model has several outputs. */
static void metric_name(const lunet_model *m, int out, const char *what, char *buf, size_t n) {
  if (m->noutputs == 1)
    snprintf(buf, n, "%s", what);
  else
    snprintf(buf, n, "%s_%s", m->output_names[out], what);
}

static bool metric_named(const lunet_model *m, const char *name) {
  for (int i = 0; i < m->nmetrics; i++)
    if (!strcmp(lunet_metric_name(m->metrics[i]), name)) return true;
  return false;
}

/* Compile's metrics (weighted: its weighted_metrics) for every output.  A
 * weighted metric whose name an unweighted one took logs as "weighted_"
 * and its name (Keras 3's CompileMetrics.result). */
static lunet_status add_compiled_metrics(lunet_ctx *ctx, lunet_model *m, int n, const char *const *specs,
                                         bool weighted) {
  lunet_status s = LUNET_OK;
  char name[160];
  for (int k = 0; !s && k < n; k++)
    for (int j = 0; !s && j < m->noutputs; j++) {
      lunet_metric_config cfg;
      char base[64], prefixed[80];
      s = metric_config(ctx, m, j, specs[k], &cfg, base, sizeof base);
      if (s) {
        char why[512];
        snprintf(why, sizeof why, "%s", lunet_ctx_error(ctx));
        return lunet_error(ctx, s, "compile: %s", why);
      }
      /* logged under the name the user wrote ("acc" stays "acc", as in Keras) */
      metric_name(m, j, base, name, sizeof name);
      if (weighted && metric_named(m, name)) {
        snprintf(prefixed, sizeof prefixed, "weighted_%s", base);
        metric_name(m, j, prefixed, name, sizeof name);
      }
      if (metric_named(m, name))
        return lunet_error(ctx, LUNET_ERR_ARG, "compile: two metrics log as '%s' (give one a name: %s(name=...))",
                           name, specs[k]);
      s = add_metric(ctx, m, name, &cfg, j, weighted);
    }
  return s;
}

/* A copy of n strings, NULL when out of memory. */
static char **copy_strings(int n, const char *const *v) {
  char **out = calloc((size_t)(n ? n : 1), sizeof *out);
  for (int k = 0; out && k < n; k++)
    if (!(out[k] = strdup(v[k]))) {
      free_strings(out, k);
      out = NULL;
    }
  return out;
}

lunet_status lunet_model_compile(lunet_ctx *ctx, lunet_model *m, const lunet_compile_opts *o) {
  if (check_sealed(ctx, m)) return ctx->status;
  if (!o) return lunet_error(ctx, LUNET_ERR_ARG, "compile: no options (NULL)");
  if (!o->optimizer) return lunet_error(ctx, LUNET_ERR_ARG, "compile: an optimizer is required");
  /* the arrays their counts promise, each name given (NULL crashed) */
  if (!o->losses) return lunet_error(ctx, LUNET_ERR_ARG, "compile: losses is NULL");
  if (o->nmetrics < 0 || o->nweighted_metrics < 0 || (o->nmetrics > 0 && !o->metrics) ||
      (o->nweighted_metrics > 0 && !o->weighted_metrics))
    return lunet_error(ctx, LUNET_ERR_ARG, "compile: %d metrics and %d weighted_metrics, with %s and %s arrays",
                       o->nmetrics, o->nweighted_metrics, o->metrics ? "non-NULL" : "NULL",
                       o->weighted_metrics ? "non-NULL" : "NULL");
  for (int k = 0; k < o->nmetrics + o->nweighted_metrics; k++)
    if (!(k < o->nmetrics ? o->metrics[k] : o->weighted_metrics[k - o->nmetrics]))
      return lunet_error(ctx, LUNET_ERR_ARG, "compile: %s %d is NULL", k < o->nmetrics ? "metric" : "weighted metric",
                         k < o->nmetrics ? k : k - o->nmetrics);
  if (o->nlosses != 1 && o->nlosses != m->noutputs)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "compile: %d losses for a model with %d outputs (give one loss, or one per "
                       "output)",
                       o->nlosses, m->noutputs);
  for (int j = 0; j < o->nlosses; j++) {
    const lunet_loss_spec *ls = &o->losses[j];
    if ((unsigned)ls->kind >= LUNET_LOSS_COUNT)
      return lunet_error(ctx, LUNET_ERR_ARG, "compile: unknown loss kind %d", (int)ls->kind);
    if (!(ls->weight >= 0) || ls->weight > 1e30)
      return lunet_error(ctx, LUNET_ERR_ARG, "compile: loss weight %g (it must be a number >= 0)",
                         ls->weight);
  }
  for (int j = 0; j < m->noutputs; j++) m->losses[j] = o->losses[o->nlosses == 1 ? 0 : j];
  free_metrics(m);
  int nweighted = o->nweighted_metrics > 0 ? o->nweighted_metrics : 0;
  int cap = 1 + m->noutputs + (o->nmetrics + nweighted) * m->noutputs;
  m->metrics = calloc((size_t)cap, sizeof *m->metrics);
  m->metric_output = calloc((size_t)cap, sizeof *m->metric_output);
  m->metric_weighted = calloc((size_t)cap, sizeof *m->metric_weighted);
  if (!m->metrics || !m->metric_output || !m->metric_weighted) {
    free_metrics(m);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  }
  char name[160];
  lunet_metric_config mean = lunet_metric_config_defaults(LUNET_METRIC_MEAN);
  lunet_status s = add_metric(ctx, m, "loss", &mean, -1, false);
  for (int j = 0; !s && m->noutputs > 1 && j < m->noutputs; j++) {
    metric_name(m, j, "loss", name, sizeof name);
    s = add_metric(ctx, m, name, &mean, j, false);
  }
  m->nloss_metrics = m->nmetrics;
  if (!s) s = add_compiled_metrics(ctx, m, o->nmetrics, o->metrics, false);
  if (!s) s = add_compiled_metrics(ctx, m, nweighted, o->weighted_metrics, true);
  if (s) {
    free_metrics(m);
    m->compiled = false;
    return s;
  }
  char **names = copy_strings(o->nmetrics, o->metrics), **wnames = copy_strings(nweighted, o->weighted_metrics);
  if (!names || !wnames) {
    if (names) free_strings(names, o->nmetrics);
    if (wnames) free_strings(wnames, nweighted);
    free_metrics(m);
    m->compiled = false;
    return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  }
  free_strings(m->metric_names, m->ncompiled_metrics);
  free_strings(m->weighted_names, m->ncompiled_weighted);
  m->metric_names = names;
  m->ncompiled_metrics = o->nmetrics;
  m->weighted_names = wnames;
  m->ncompiled_weighted = nweighted;
  /* the trainable weights as they are now; an optimizer that has state for
   * another set of weights starts afresh, as Keras's does on recompile */
  if (!params_current(m)) {
    list_params(m, m->params, &m->nparams);
    lunet_optimizer_reset(o->optimizer);
  }
  lunet_optimizer_retain(o->optimizer);
  lunet_optimizer_release(m->opt);
  m->opt = o->optimizer;
  m->compiled = true;
  return LUNET_OK;
}

lunet_optimizer *lunet_model_optimizer(const lunet_model *m) { return m->opt; }
bool lunet_model_compiled(const lunet_model *m) { return m->compiled; }
lunet_loss_spec lunet_model_loss(const lunet_model *m, int j) {
  lunet_loss_spec none = {0};
  return m->compiled && j >= 0 && j < m->noutputs ? m->losses[j] : none;
}
int lunet_model_compiled_metric_count(const lunet_model *m) { return m->ncompiled_metrics; }
int lunet_model_compiled_weighted_metric_count(const lunet_model *m) { return m->ncompiled_weighted; }
const char *lunet_model_compiled_weighted_metric(const lunet_model *m, int k) {
  return k >= 0 && k < m->ncompiled_weighted ? m->weighted_names[k] : NULL;
}
const char *lunet_model_compiled_metric(const lunet_model *m, int k) {
  return k >= 0 && k < m->ncompiled_metrics ? m->metric_names[k] : NULL;
}

const char *lunet_model_meta(const lunet_model *m, const char *key) {
  for (int i = 0; i < m->nmeta; i++)
    if (!strcmp(m->meta[2 * i], key)) return m->meta[2 * i + 1];
  return NULL;
}

int lunet_model_class_count(const lunet_model *m) { return m->nclasses; }

const char *lunet_model_class_name(const lunet_model *m, int i) {
  return i >= 0 && i < m->nclasses ? m->class_names[i] : NULL;
}

/* "class_names" parsed: a JSON list of strings, one per class of the
 * output; NULL with the error set when it is not. */
static cJSON *class_names_json(lunet_ctx *ctx, const lunet_model *m, const char *json, int *count) {
  cJSON *a = cJSON_Parse(json);
  int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
  for (cJSON *e = a ? a->child : NULL; n > 0 && e; e = e->next)
    if (!cJSON_IsString(e)) n = -1;
  if (n < 1) {
    cJSON_Delete(a);
    lunet_error(ctx, LUNET_ERR_ARG, "model '%s': class_names must be a JSON list of strings, got %.60s", m->name,
                json);
    return NULL;
  }
  *count = n;
  return a;
}

LUNET_HIDDEN lunet_status lunet_model_check_class_names(lunet_ctx *ctx, const lunet_model *m, const char *json) {
  int n;
  cJSON *a = class_names_json(ctx, m, json, &n);
  cJSON_Delete(a);
  return a ? LUNET_OK : ctx->status;
}

static lunet_status set_class_names(lunet_ctx *ctx, lunet_model *m, const char *json) {
  int n;
  cJSON *a = class_names_json(ctx, m, json, &n);
  if (!a) return ctx->status;
  char **names = calloc((size_t)n, sizeof *names);
  int k = 0;
  for (cJSON *e = a->child; names && e && (names[k] = strdup(e->valuestring)); e = e->next) k++;
  cJSON_Delete(a);
  if (k < n) {
    free_strings(names, k);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  }
  free_strings(m->class_names, m->nclasses);
  m->class_names = names;
  m->nclasses = n;
  return LUNET_OK;
}

lunet_status lunet_model_set_meta(lunet_ctx *ctx, lunet_model *m, const char *key,
                                  const char *value) {
  if (!strcmp(key, "class_names")) {
    lunet_status s = set_class_names(ctx, m, value);
    if (s) return s;
  }
  for (int i = 0; i < m->nmeta; i++)
    if (!strcmp(m->meta[2 * i], key)) {
      char *v = strdup(value);
      if (!v) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
      free(m->meta[2 * i + 1]);
      m->meta[2 * i + 1] = v;
      return LUNET_OK;
    }
  char **meta = realloc(m->meta, sizeof *meta * (size_t)(2 * m->nmeta + 2));
  if (!meta) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  m->meta = meta;
  meta[2 * m->nmeta] = strdup(key);
  meta[2 * m->nmeta + 1] = strdup(value);
  if (!meta[2 * m->nmeta] || !meta[2 * m->nmeta + 1]) {
    free(meta[2 * m->nmeta]);
    free(meta[2 * m->nmeta + 1]);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  }
  m->nmeta++;
  return LUNET_OK;
}

void lunet_model_set_grad_ready(lunet_model *m, lunet_grad_ready_fn fn, void *user) {
  m->grad_ready = fn;
  m->grad_ready_user = user;
}

void lunet_model_set_grad_transform(lunet_model *m, lunet_grad_transform_fn fn, void *user) {
  m->transform = fn;
  m->transform_user = user;
}

int lunet_model_metric_count(const lunet_model *m) { return m->nmetrics; }
lunet_metric *lunet_model_metric(const lunet_model *m, int i) {
  return i >= 0 && i < m->nmetrics ? m->metrics[i] : NULL;
}
void lunet_model_reset_metrics(lunet_model *m) {
  for (int i = 0; i < m->nmetrics; i++) lunet_metric_reset(m->metrics[i]);
}

/* ---- running the graph ---- */

/* Every entry point that runs the graph starts here: a stale error from an
 * earlier call must not look like a failure of this one (some helpers
 * return NULL without an error, e.g. a layer with no penalty). */
static lunet_status check_inputs(lunet_ctx *ctx, const lunet_model *m, int nx,
                                 lunet_tensor *const *x) {
  lunet_clear_error(ctx);
  if (check_sealed(ctx, m)) return ctx->status;
  if (nx != m->ninputs || (nx > 0 && !x))
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' takes %d input%s, got %d%s", m->name,
                       m->ninputs, m->ninputs == 1 ? "" : "s", nx, nx > 0 && !x ? " and no array" : "");
  for (int i = 0; i < nx; i++) {
    const value *v = &m->values[m->inputs[i]];
    bool ok = x[i] && x[i]->ndim == v->ndim + 1;
    for (int d = 0; ok && d < v->ndim; d++) ok = x[i]->shape[d + 1] == v->shape[d];
    if (ok && i > 0) ok = x[i]->shape[0] == x[0]->shape[0];
    if (!ok) {
      char a[128], b[128];
      if (!x[i]) return lunet_error(ctx, LUNET_ERR_ARG, "model '%s': input %d is missing", m->name, i + 1);
      if (m->ninputs == 1)
        return lunet_error(ctx, LUNET_ERR_SHAPE, "%s: expected input of shape %s, got %s", m->name,
                           lunet_batch_shape_str(v->ndim, v->shape, a, sizeof a),
                           lunet_shape_str(x[i]->ndim, x[i]->shape, b, sizeof b));
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "model '%s': input '%s' expects shape %s, got %s%s", m->name, v->name,
                         lunet_batch_shape_str(v->ndim, v->shape, a, sizeof a),
                         lunet_shape_str(x[i]->ndim, x[i]->shape, b, sizeof b),
                         i > 0 && x[i]->ndim == v->ndim + 1 ? " (every input needs the same batch size)"
                                                            : "");
    }
  }
  return LUNET_OK;
}

/* The activation a loss can take over from call c: the layer's own
 * `activation` argument, or the whole layer when it is an Activation or
 * Softmax layer (*whole then set).  NULL: none. */
static const char *final_activation(const lunet_model *m, int c, bool *whole) {
  lunet_layer *l = m->calls[c].layer;
  const char *t = lunet_layer_type_name(l);
  *whole = false;
  if (!strcmp(t, "Softmax")) {
    *whole = true;
    return "softmax"; /* its build allows the last axis only */
  }
  if (!strcmp(t, "Activation")) {
    *whole = true;
    return lunet_layer_get_string(l, "activation");
  }
  return lunet_layer_activation(l);
}

/* Whether call c is fused away whole (an Activation or Softmax layer that
 * the loss of an output takes over). */
static bool fused_whole(const lunet_model *m, const bool *fused, int c) {
  bool whole = false;
  for (int j = 0; fused && j < m->noutputs; j++)
    if (fused[j] && m->outputs[j] == m->calls[c].out) {
      final_activation(m, c, &whole);
      return whole;
    }
  return false;
}

/* A call whose only reader is output j with a cross-entropy on a softmax,
 * or a binary cross-entropy on a sigmoid (Keras on TensorFlow: the loss
 * reads the activation's _keras_logits): the activation is left out and
 * the loss takes logits (one fused, stable op), also when it is a layer of
 * its own (Activation, Softmax). */
static bool fuses(const lunet_model *m, int j) {
  const value *v = &m->values[m->outputs[j]];
  const lunet_loss_spec *ls = &m->losses[j];
  if (v->call < 0 || m->calls[v->call].nout != 1 || v->uses != 1 || ls->from_logits || ls->fn) return false;
  const char *want = ls->kind == LUNET_LOSS_SPARSE_CATEGORICAL_CE || ls->kind == LUNET_LOSS_CATEGORICAL_CE ? "softmax"
                     : ls->kind == LUNET_LOSS_BINARY_CE                                                     ? "sigmoid"
                                                                                                            : NULL;
  if (!want) return false;
  /* an activity regularizer sees the activation's output, which fusion skips */
  if (lunet_layer_arg_is_set(m->calls[v->call].layer, "activity_regularizer")) return false;
  bool whole;
  const char *act = final_activation(m, v->call, &whole);
  return act && !strcmp(act, want);
}

/* The call that applies call c's ReLU instead of c, or -1.  max(relu(a),
 * relu(b)) = relu(max(a, b)) exactly, values and gradients (relu'(max) is
 * the gradient of whichever element max routes to, and ties below zero
 * get zero either way), so a convolution's ReLU before a max pooling can
 * run after it, on a quarter of the elements (2x2 windows), forward and
 * backward.  Only where nothing else sees the value between them: c has
 * one output with the plain "relu" activation and no activity
 * regularizer, read by nothing but a max pooling of one input (not a
 * model output). */
static int relu_moves_to(const lunet_model *m, int c) {
  const call *k = &m->calls[c];
  const char *act = lunet_layer_activation(k->layer);
  if (k->nout != 1 || !act || strcmp(act, "relu") || m->values[k->out].uses != 1 ||
      lunet_layer_arg_is_set(k->layer, "activity_regularizer"))
    return -1;
  for (int j = 0; j < m->noutputs; j++)
    if (m->outputs[j] == k->out) return -1;
  for (int r = c + 1; r < m->ncalls; r++) {
    const call *q = &m->calls[r];
    if (!q->live || q->nin != 1 || q->in[0] != k->out) continue;
    const char *t = lunet_layer_type_name(q->layer);
    return q->nout == 1 && (!strcmp(t, "MaxPooling2D") || !strcmp(t, "MaxPooling1D")) ? r : -1;
  }
  return -1;
}

/* A step-by-step run (generation): one kept record per call. */
struct lunet_model_session {
  lunet_model *m;
  lunet_call **calls;
  int64_t length;
  int64_t n; /* the samples of the first feed, which every later feed keeps */
};

static lunet_tensor *add_scalar(lunet_ctx *ctx, lunet_tensor *total, lunet_tensor *t);

/* Runs the live calls; out[j] receives output j and, when out_masks is
 * not NULL, out_masks[j] its padding mask (NULL: none).  fused[j] (may be
 * NULL) leaves out output j's softmax.  Masks travel with the values.  With
 * a session, each call runs as its next step (lunet_layer_step). */
static lunet_status run(lunet_ctx *ctx, lunet_model *m, lunet_tensor *const *x, bool training,
                        const bool *fused, lunet_tensor **out, lunet_tensor **out_masks, lunet_model_session *ss,
                        lunet_tensor **activity) {
  lunet_tensor **vals = calloc((size_t)m->nvalues * 2, sizeof *vals), **masks = vals + m->nvalues;
  /* left[v]: readers of value v still to run; relu_after[r] (after them):
   * call r applies the ReLU of the call before its pooling */
  int *left = calloc((size_t)(m->nvalues + m->ncalls + 1), sizeof *left), *relu_after = left + m->nvalues;
  if (!vals || !left) {
    free(vals);
    free(left);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory running model '%s'", m->name);
  }
  for (int i = 0; i < m->nvalues; i++) left[i] = m->values[i].uses;
  lunet_status s = LUNET_OK;
  /* 8-bit images compute in float32, as Keras's inputs do: 0..255 as they are */
  for (int i = 0; i < m->ninputs; i++) {
    vals[m->inputs[i]] = x[i]->dtype == LUNET_U8 ? lunet_op_cast(ctx, x[i], LUNET_F32) : lunet_tensor_retain(x[i]);
    if (!vals[m->inputs[i]]) s = ctx->status;
  }
  for (int c = 0; !s && c < m->ncalls; c++) {
    call *k = &m->calls[c];
    if (!k->live) continue;
    bool skip_act = false;
    for (int j = 0; fused && j < m->noutputs; j++) skip_act |= fused[j] && m->outputs[j] == k->out;
    if (skip_act && !ss && fused_whole(m, fused, c)) { /* an Activation or Softmax layer the loss takes over */
      vals[k->out] = lunet_tensor_retain(vals[k->in[0]]);
      masks[k->out] = masks[k->in[0]] ? lunet_tensor_retain(masks[k->in[0]]) : NULL;
      if (--left[k->in[0]] == 0) {
        lunet_tensor_release(vals[k->in[0]]);
        lunet_tensor_release(masks[k->in[0]]);
        vals[k->in[0]] = masks[k->in[0]] = NULL;
      }
      continue;
    }
    int later = k->live && !ss ? relu_moves_to(m, c) : -1;
    if (later >= 0) {
      skip_act = true;
      relu_after[later] = 1;
    }
    lunet_tensor *xs[MAX_CALL_INPUTS], *ms[MAX_CALL_INPUTS];
    for (int i = 0; i < k->nin; i++) {
      xs[i] = vals[k->in[i]];
      ms[i] = masks[k->in[i]];
    }
    s = ss ? lunet_layer_step_masked(ctx, k->layer, ss->calls[c], ss->length, k->nin, xs, ms, vals + k->out,
                                     masks + k->out)
           : lunet_layer_apply_relu(ctx, k->layer, NULL, k->nin, xs, ms, training, skip_act, relu_after[c] != 0,
                                    vals + k->out, masks + k->out);
    /* activity regularizers: a penalty on each output, into the step's loss */
    for (int o = 0; !s && activity && o < lunet_layer_output_count(k->layer); o++) {
      lunet_tensor *p = lunet_layer_activity_penalty(ctx, k->layer, vals[k->out + o]);
      if (!p && ctx->status) s = ctx->status;
      if (p && !(*activity = add_scalar(ctx, *activity, p))) s = ctx->status;
    }
    for (int i = 0; !s && i < k->nin; i++)
      if (--left[k->in[i]] == 0) {
        lunet_tensor_release(vals[k->in[i]]);
        lunet_tensor_release(masks[k->in[i]]);
        vals[k->in[i]] = masks[k->in[i]] = NULL;
      }
  }
  for (int j = 0; j < m->noutputs; j++) {
    out[j] = s ? NULL : lunet_tensor_retain(vals[m->outputs[j]]);
    if (out_masks) out_masks[j] = s ? NULL : lunet_tensor_retain(masks[m->outputs[j]]);
  }
  for (int i = 0; i < 2 * m->nvalues; i++) lunet_tensor_release(vals[i]);
  free(vals);
  free(left);
  return s;
}

/* ---- step-by-step sessions ---- */

lunet_model_session *lunet_model_session_new(lunet_ctx *ctx, lunet_model *m) {
  if (!m->sealed) {
    lunet_error(ctx, LUNET_ERR_ARG, "model '%s' is not finished (set its outputs first)", m->name);
    return NULL;
  }
  for (int c = 0; c < m->ncalls; c++) {
    const lunet_layer_type *t = lunet_layer_type_get(m->calls[c].layer);
    if (m->calls[c].live && !(t->flags & LUNET_LAYER_STEPWISE)) {
      lunet_error(ctx, LUNET_ERR_ARG, "%s (%s) cannot run step by step", lunet_layer_name(m->calls[c].layer), t->name);
      return NULL;
    }
  }
  lunet_model_session *s = calloc(1, sizeof *s);
  lunet_call **calls = calloc((size_t)(m->ncalls ? m->ncalls : 1), sizeof *calls);
  if (!s || !calls) {
    free(s);
    free(calls);
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a session of model '%s'", m->name);
    return NULL;
  }
  s->m = lunet_model_retain(m);
  s->calls = calls;
  for (int c = 0; c < m->ncalls; c++)
    if (m->calls[c].live && !(calls[c] = lunet_call_new(ctx, m->calls[c].layer))) {
      lunet_model_session_free(s);
      return NULL;
    }
  return s;
}

lunet_status lunet_model_session_feed(lunet_ctx *ctx, lunet_model_session *ss, int nx, lunet_tensor *const *x,
                                      lunet_tensor **out) {
  lunet_model *m = ss->m;
  lunet_clear_error(ctx);
  if (nx != m->ninputs)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' takes %d inputs, got %d", m->name, m->ninputs, nx);
  if (!x || !out) /* as predict's checks (they crashed here) */
    return lunet_error(ctx, LUNET_ERR_ARG, "session feed: %s is NULL", !x ? "the inputs array" : "out");
  /* checked whole before any layer runs: a feed that failed half way would
   * leave some layers' caches a step ahead of the others */
  for (int i = 0; i < nx; i++) {
    const value *v = &m->values[m->inputs[i]];
    bool ok = x[i] && x[i]->ndim == v->ndim + 1 && x[i]->ndim >= 2;
    for (int d = 1; ok && d < v->ndim; d++) ok = x[i]->shape[d + 1] == v->shape[d];
    if (!ok || x[i]->shape[0] != x[0]->shape[0] || x[i]->shape[1] != x[0]->shape[1]) {
      char a[128], b[128];
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "model '%s': a session's input '%s' is (N, steps%s with one N and one number of steps "
                         "for all inputs, got %s",
                         m->name, v->name, /* "(None, 4)" past its "(None": ", 4)" */
                         v->ndim > 1 ? lunet_batch_shape_str(v->ndim - 1, v->shape + 1, a, sizeof a) + 5 : ")",
                         x[i] ? lunet_shape_str(x[i]->ndim, x[i]->shape, b, sizeof b) : "nothing");
    }
  }
  if (x[0]->shape[1] < 1)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "model '%s': a session's feed needs at least one step", m->name);
  if (ss->length > 0 && x[0]->shape[0] != ss->n)
    return lunet_error(ctx, LUNET_ERR_SHAPE, "model '%s': the session runs %lld samples, this feed has %lld (one "
                       "session per batch)", m->name, (long long)ss->n, (long long)x[0]->shape[0]);
  lunet_status s = run(ctx, m, x, false, NULL, out, NULL, ss, NULL);
  if (!s) {
    ss->n = x[0]->shape[0];
    ss->length += x[0]->shape[1];
  }
  return s;
}

int64_t lunet_model_session_length(const lunet_model_session *s) { return s->length; }

void lunet_model_session_free(lunet_model_session *s) {
  if (!s) return;
  for (int c = 0; c < s->m->ncalls; c++) lunet_call_release(s->calls[c]);
  free(s->calls);
  lunet_model_release(s->m);
  free(s);
}

lunet_status lunet_model_forward(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                 bool training, lunet_tensor **out) {
  if (check_inputs(ctx, m, nx, x)) return ctx->status;
  if (!out) return lunet_error(ctx, LUNET_ERR_ARG, "forward: no place for the outputs (out is NULL)");
  return run(ctx, m, x, training, NULL, out, NULL, NULL, NULL);
}

lunet_status lunet_model_predict(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                 lunet_tensor **out) {
  if (check_inputs(ctx, m, nx, x)) return ctx->status;
  if (!out) return lunet_error(ctx, LUNET_ERR_ARG, "predict: no place for the outputs (out is NULL)");
  bool prev = lunet_set_grad_enabled(ctx, false);
  lunet_status s = run(ctx, m, x, false, NULL, out, NULL, NULL, NULL);
  lunet_set_grad_enabled(ctx, prev);
  return s;
}

/* ---- the step ---- */

/* total += t (scalars), taking t's reference. */
static lunet_tensor *add_scalar(lunet_ctx *ctx, lunet_tensor *total, lunet_tensor *t) {
  if (!t || !total) {
    lunet_tensor_release(total);
    return t;
  }
  lunet_tensor *sum = lunet_add(ctx, total, t);
  lunet_tensor_release(total);
  lunet_tensor_release(t);
  return sum;
}

/* The weighted sum of the outputs' losses plus every layer's penalty;
 * parts[j] receives output j's own loss (a new reference). */
/* A caller's loss: its scalar, or the (weighted) mean of its per-sample
 * or per-row values. */
static lunet_tensor *function_loss(lunet_ctx *ctx, const lunet_loss_spec *ls, lunet_tensor *pred, lunet_tensor *y,
                                   const lunet_tensor *sw, const lunet_tensor *masked) {
  lunet_tensor *r = ls->fn(ls->fn_user, ctx, y, pred);
  /* a padding mask's weights (masked) apply to one value per position; a
   * per-sample or scalar result takes the caller's weights alone */
  if (r && masked && masked != sw && r->numel == masked->numel && r->ndim >= 2) sw = masked;
  if (!r) {
    if (!ctx->status) lunet_error(ctx, LUNET_ERR_ARG, "the loss function gave no tensor");
    return NULL;
  }
  int64_t n = pred->ndim ? pred->shape[0] : 1;
  bool scalar = r->ndim == 0;
  if (scalar && sw) {
    lunet_tensor_release(r);
    lunet_error(ctx, LUNET_ERR_ARG, "the loss function returned one number, which sample weights cannot weigh: "
                                    "return one loss per sample (shape (N)) instead");
    return NULL;
  }
  if (scalar) return r;
  if (r->ndim < 1 || r->shape[0] != n) {
    char a[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "the loss function returned shape %s: give one number, or one loss per "
                "sample (%lld, ...)", lunet_shape_str(r->ndim, r->shape, a, sizeof a), (long long)n);
    lunet_tensor_release(r);
    return NULL;
  }
  lunet_tensor *loss = lunet_loss_mean_rows(ctx, r, sw);
  lunet_tensor_release(r);
  return loss;
}

/* Whether output pred's padding mask covers its positions (N, ..., the
 * prediction's shape without its last axis): a sequence output. */
static bool mask_fits(const lunet_tensor *pred, const lunet_tensor *mask) {
  return mask && pred->ndim >= 2 && mask->ndim >= 1 && mask->shape[0] == pred->shape[0] &&
         mask->numel == lunet_tensor_positions(pred);
}

/* mask (N, ...) as float32 of n elements, times `scale` (a scalar tensor,
 * or NULL), times the sample weights sw (one per sample, or NULL), flat. */
static lunet_tensor *masked_weights(lunet_ctx *ctx, const lunet_tensor *mask, const lunet_tensor *scale,
                                    const lunet_tensor *sw) {
  int64_t n = mask->numel, rows[2] = {mask->shape[0], mask->numel / mask->shape[0]}, col[2] = {mask->shape[0], 1};
  lunet_tensor *f = mask->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)mask) : lunet_op_cast(ctx, mask, LUNET_F32);
  lunet_tensor *w = f ? lunet_op_reshape(ctx, f, 2, rows) : NULL;
  lunet_tensor_release(f);
  if (w && scale) {
    lunet_tensor *t = lunet_op_binary(ctx, LUNET_BINARY_MUL, w, scale);
    lunet_tensor_release(w);
    w = t;
  }
  if (w && sw) { /* one weight per sample (a column), or per position (the mask's shape) */
    lunet_tensor *swf = sw->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)sw) : lunet_op_cast(ctx, sw, LUNET_F32);
    lunet_tensor *c = swf && swf->numel == col[0]   ? lunet_op_reshape(ctx, swf, 2, col)
                      : swf && swf->numel == n && n != col[0] ? lunet_op_reshape(ctx, swf, 2, rows)
                                                              : NULL;
    if (swf && !c)
      lunet_error(ctx, LUNET_ERR_SHAPE, "sample_weight has %lld values for %lld samples: give one weight per sample",
                  (long long)swf->numel, (long long)col[0]);
    lunet_tensor *t = c ? lunet_op_binary(ctx, LUNET_BINARY_MUL, w, c) : NULL;
    lunet_tensor_release(swf);
    lunet_tensor_release(c);
    lunet_tensor_release(w);
    w = t;
  }
  lunet_tensor *flat = w ? lunet_op_reshape(ctx, w, 1, &n) : NULL;
  lunet_tensor_release(w);
  return flat;
}

/* The weights of output j's loss, as Keras 3 merges a padding mask on the
 * prediction into the sample weights (losses.loss.apply_mask): each valid
 * position weighs total / valid (so that the mean over all positions is the
 * mean over the valid ones), a masked one 0, times its sample's weight; a
 * new reference, or sw itself (retained, may be NULL) without a mask that
 * covers the output's positions.  *failed on an op's failure. */
static lunet_tensor *loss_weights(lunet_ctx *ctx, const lunet_tensor *pred, const lunet_tensor *mask,
                                  const lunet_tensor *sw, bool *failed) {
  if (!mask_fits(pred, mask)) return lunet_tensor_retain((lunet_tensor *)sw);
  lunet_tensor *f = mask->dtype == LUNET_F32 ? lunet_tensor_retain((lunet_tensor *)mask) : lunet_op_cast(ctx, mask, LUNET_F32);
  lunet_tensor *valid = f ? lunet_op_reduce(ctx, LUNET_REDUCE_SUM, f, LUNET_ALL_AXES, false) : NULL;
  lunet_tensor *den = valid ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, valid, 1.0f, 1e-7f) : NULL; /* Keras's epsilon */
  lunet_tensor *total = den ? lunet_scalar_like(ctx, den, (float)mask->numel) : NULL;
  lunet_tensor *scale = total ? lunet_op_binary(ctx, LUNET_BINARY_DIV, total, den) : NULL;
  lunet_tensor *w = scale ? masked_weights(ctx, f, scale, sw) : NULL;
  lunet_tensor_release(f);
  lunet_tensor_release(valid);
  lunet_tensor_release(den);
  lunet_tensor_release(total);
  lunet_tensor_release(scale);
  if (!w) *failed = true;
  return w;
}

static lunet_tensor *total_loss(lunet_ctx *ctx, lunet_model *m, lunet_tensor **pred,
                                lunet_tensor *const *y, const bool *fused, const lunet_tensor *sw,
                                lunet_tensor *const *lw, lunet_tensor **parts) {
  lunet_tensor *total = NULL;
  for (int j = 0; j < m->noutputs; j++) {
    const lunet_loss_spec *ls = &m->losses[j];
    lunet_loss_options lo = {ls->from_logits || fused[j], ls->delta, ls->label_smoothing, lw[j]};
    parts[j] = ls->fn ? function_loss(ctx, ls, pred[j], y[j], sw, lw[j]) : lunet_loss_ex(ctx, ls->kind, pred[j], y[j], &lo);
    if (!parts[j]) goto fail;
    lunet_tensor *w = lunet_tensor_retain(parts[j]);
    if (ls->weight != 1) {
      lunet_tensor *scaled = lunet_unary(ctx, LUNET_UNARY_AFFINE, w, (float)ls->weight, 0);
      lunet_tensor_release(w);
      w = scaled;
    }
    if (!w) goto fail;
    total = total ? add_scalar(ctx, total, w) : w;
    if (!total) goto fail;
  }
  for (int i = 0; i < m->nlayers; i++) {
    lunet_tensor *p = lunet_layer_penalty(ctx, m->layers[i]);
    if (!p && ctx->status) goto fail;
    if (p && !(total = add_scalar(ctx, total, p))) goto fail;
  }
  return total;
fail:
  lunet_tensor_release(total);
  return NULL;
}

static void leaf_done(void *user, lunet_tensor *leaf) {
  lunet_model *m = user;
  for (int i = 0; i < m->nparams; i++)
    if (lunet_model_param(m, i) == leaf) {
      m->grad_ready(m->grad_ready_user, i, leaf->grad);
      return;
    }
}

/* The loss, each output's loss and each metric's batch statistics, read
 * in one download, then added to the metrics. */
/* Output j as metric i reads it: a fused output's logits go through the
 * softmax for a metric that reads probabilities (a threshold, an AUC), made
 * once into probs[j]; argmax and ranks read the logits as they are.  So
 * the metrics never decide whether the loss takes logits. */
static lunet_tensor *metric_input(lunet_ctx *ctx, lunet_model *m, int i, lunet_tensor **pred, const bool *fused,
                                  lunet_tensor **probs) {
  int j = m->metric_output[i];
  if (!fused[j] || !lunet_metric_needs_probabilities(m->metrics[i])) return pred[j];
  if (!probs[j])
    probs[j] = m->losses[j].kind == LUNET_LOSS_BINARY_CE ? lunet_op_unary(ctx, LUNET_UNARY_SIGMOID, pred[j], 0, 0)
                                                         : lunet_op_softmax(ctx, pred[j], false);
  return probs[j];
}

/* Whether Keras 3 applies a prediction's padding mask to a metric of this
 * kind: its MeanMetricWrapper ones (the accuracies, top-k, MAE); the
 * confusion-matrix metrics, RMSE and R2 count every position. */
static bool metric_masked(lunet_metric_kind k) {
  switch (k) {
  case LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_BINARY_ACCURACY:
  case LUNET_METRIC_ACCURACY:
  case LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_SPARSE_TOP_K_CATEGORICAL_ACCURACY:
  case LUNET_METRIC_MEAN_ABSOLUTE_ERROR: return true;
  default: return false;
  }
}

/* Metric i's weights (a new reference, or NULL: unweighted): the sample
 * weights for a weighted metric, the output's padding mask (unscaled, Keras's
 * apply_mask with reduction "sum") for a masked kind, or their product --
 * made once per output and step in cache[weighted] and shared by the
 * metrics that read it. */
static lunet_tensor *metric_weights(lunet_ctx *ctx, const lunet_model *m, int i, const lunet_tensor *pred,
                                    const lunet_tensor *mask, const lunet_tensor *sw, lunet_tensor **cache,
                                    bool *failed) {
  bool weighted = m->metric_weighted[i];
  if (!mask_fits(pred, mask) || !metric_masked(lunet_metric_kind_get(m->metrics[i])))
    return lunet_tensor_retain(weighted ? (lunet_tensor *)sw : NULL);
  if (!cache[weighted] && !(cache[weighted] = masked_weights(ctx, mask, NULL, weighted ? sw : NULL))) *failed = true;
  return lunet_tensor_retain(cache[weighted]);
}

static lunet_status update_metrics(lunet_ctx *ctx, lunet_model *m, lunet_tensor *loss,
                                   lunet_tensor **parts, lunet_tensor **pred, const bool *fused,
                                   lunet_tensor *const *y, lunet_tensor *const *masks, const lunet_tensor *sw,
                                   double *loss_out) {
  int n = m->nmetrics;
  lunet_tensor **vecs = calloc((size_t)n, sizeof *vecs), *probs[MAX_IO] = {0}, *masked[MAX_IO][2] = {{0}};
  int64_t *len = calloc((size_t)n * 2, sizeof *len), *nw = len ? len + n : NULL, total = 0;
  lunet_status s = vecs && len ? LUNET_OK : lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  for (int i = 0; !s && i < n; i++) {
    int j = m->metric_output[i];
    lunet_tensor *p = i < m->nloss_metrics ? NULL : metric_input(ctx, m, i, pred, fused, probs);
    if (i >= m->nloss_metrics && !p) {
      s = ctx->status;
      break;
    }
    bool failed = false;
    lunet_tensor *w = i < m->nloss_metrics ? NULL : metric_weights(ctx, m, i, pred[j], masks[j], sw, masked[j], &failed);
    if (failed) {
      s = ctx->status ? ctx->status : lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory weighing a metric");
      break;
    }
    nw[i] = w ? w->numel : 0;
    lunet_tensor *t = i == 0                   ? lunet_tensor_retain(loss)
                      : i < m->nloss_metrics ? lunet_tensor_retain(parts[j])
                                               : lunet_metric_batch(ctx, m->metrics[i], p, y[j], w);
    lunet_tensor_release(w);
    if (t) len[i] = t->numel, total += t->numel;
    vecs[i] = t ? lunet_op_reshape(ctx, t, 1, &len[i]) : NULL;
    lunet_tensor_release(t);
    if (!vecs[i]) s = ctx->status;
  }
  lunet_tensor *all = NULL;
  float *v = s ? NULL : malloc(sizeof *v * (size_t)total);
  if (!s && !v) s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  if (!s) all = n == 1 ? lunet_tensor_retain(vecs[0]) : lunet_op_concat(ctx, vecs, n, 0);
  if (!s) s = all ? lunet_tensor_read(ctx, all, v, sizeof(float) * (size_t)total) : ctx->status;
  lunet_tensor_release(all);
  double batch = pred[0]->ndim ? (double)pred[0]->shape[0] : 1;
  int64_t at = 0;
  for (int i = 0; !s && i < n; i++) {
    if (i < m->nloss_metrics)
      lunet_metric_add(m->metrics[i], v[at] * batch, batch);
    else
      s = lunet_metric_absorb(ctx, m->metrics[i], v + at, len[i], metric_input(ctx, m, i, pred, fused, probs), nw[i]);
    at += len[i];
  }
  if (!s) *loss_out = v[0];
  for (int j = 0; j < MAX_IO; j++) {
    lunet_tensor_release(probs[j]);
    lunet_tensor_release(masked[j][0]);
    lunet_tensor_release(masked[j][1]);
  }
  for (int i = 0; vecs && i < n; i++) lunet_tensor_release(vecs[i]);
  free(vecs);
  free(len);
  free(v);
  return s;
}

static lunet_status update(lunet_ctx *ctx, lunet_model *m) {
  int n = m->nparams;
  lunet_tensor **ps = malloc(sizeof *ps * (size_t)(n ? n : 1));
  lunet_tensor **gs = malloc(sizeof *gs * (size_t)(n ? n : 1));
  lunet_status s = ps && gs ? LUNET_OK : lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
  for (int i = 0; !s && i < n; i++) {
    ps[i] = lunet_model_param(m, i);
    gs[i] = ps[i]->grad;
  }
  if (!s && m->transform) s = m->transform(m->transform_user, ctx, n, ps, gs);
  if (!s) s = lunet_optimizer_apply(ctx, m->opt, n, ps, gs);
  for (int i = 0; !s && i < m->nlayers; i++) /* the weights the optimizer updated, as Keras */
    if (lunet_layer_trainable(m->layers[i])) s = lunet_layer_constrain(ctx, m->layers[i]);
  free(ps);
  free(gs);
  return s;
}

static void zero_grads(lunet_model *m) {
  for (int i = 0; i < m->nparams; i++) lunet_tensor_zero_grad(lunet_model_param(m, i));
}

static lunet_status step(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x, int ny,
                         lunet_tensor *const *y, const lunet_tensor *sw, bool training, double *loss_value) {
  double unused, *loss_out = loss_value ? loss_value : &unused;
  if (check_inputs(ctx, m, nx, x)) return ctx->status;
  if (!m->compiled)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' is not compiled (compile it first)", m->name);
  if (training && !params_current(m))
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "model '%s': a layer's trainable flag changed since compile; compile the "
                       "model again to train the new set of weights",
                       m->name);
  if (ny != m->noutputs)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' has %d output%s but got %d target%s", m->name,
                       m->noutputs, m->noutputs == 1 ? "" : "s", ny, ny == 1 ? "" : "s");
  for (int j = 0; j < ny; j++)
    if (!y[j] || y[j]->ndim < 1 || y[j]->shape[0] != x[0]->shape[0])
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "model '%s': target %d has %lld samples but the inputs have %lld", m->name,
                         j + 1, y[j] && y[j]->ndim ? (long long)y[j]->shape[0] : 0LL,
                         (long long)x[0]->shape[0]);
  bool fused[MAX_IO];
  for (int j = 0; j < m->noutputs; j++) fused[j] = fuses(m, j);
  lunet_tensor *pred[MAX_IO] = {0}, *parts[MAX_IO] = {0}, *masks[MAX_IO] = {0}, *lw[MAX_IO] = {0}, *loss = NULL;
  bool prev = lunet_set_grad_enabled(ctx, training);
  if (training) zero_grads(m);
  lunet_tensor *activity = NULL;
  lunet_status s = run(ctx, m, x, training, fused, pred, masks, NULL, &activity);
  bool failed = false;
  lunet_set_grad_enabled(ctx, false);
  for (int j = 0; !s && j < m->noutputs; j++) lw[j] = loss_weights(ctx, pred[j], masks[j], sw, &failed);
  lunet_set_grad_enabled(ctx, training);
  if (!s && failed) s = ctx->status ? ctx->status : lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory weighing the loss");
  if (!s) s = (loss = total_loss(ctx, m, pred, y, fused, sw, lw, parts)) ? LUNET_OK : ctx->status;
  if (!s && activity) s = (loss = add_scalar(ctx, loss, activity)) ? LUNET_OK : ctx->status;
  else lunet_tensor_release(activity);
  bool function_loss = false;
  for (int j = 0; j < m->noutputs; j++) function_loss |= m->losses[j].fn != NULL;
  if (!s && training && !loss->grad_fn && function_loss && m->nparams > 0)
    s = lunet_error(ctx, LUNET_ERR_ARG,
                    "the loss function's result does not depend on the model's outputs through lunet's tensor ops "
                    "(:item() or a new tensor cuts the tape), so no weight would train");
  /* with every layer frozen nothing needs a gradient: the step only measures */
  if (!s && training && loss->grad_fn)
    s = m->grad_ready ? lunet_backward_hooked(ctx, loss, leaf_done, m) : lunet_backward(ctx, loss, NULL);
  lunet_set_grad_enabled(ctx, false);
  if (!s) s = update_metrics(ctx, m, loss, parts, pred, fused, y, masks, sw, loss_out);
  if (!s && training && !isfinite(*loss_out))
    s = lunet_error(ctx, LUNET_ERR_ARG,
                    "the loss became NaN or infinite (%s loss; lower the learning rate?); the weights were not updated",
                    isnan(*loss_out) ? "a NaN" : "an infinite");
  if (!s && training) s = update(ctx, m);
  if (training) zero_grads(m);
  lunet_set_grad_enabled(ctx, prev);
  lunet_tensor_release(loss);
  for (int j = 0; j < m->noutputs; j++) {
    lunet_tensor_release(pred[j]);
    lunet_tensor_release(parts[j]);
    lunet_tensor_release(masks[j]);
    lunet_tensor_release(lw[j]);
  }
  return s;
}

lunet_status lunet_model_train_step(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                    int ny, lunet_tensor *const *y, double *loss) {
  return step(ctx, m, nx, x, ny, y, NULL, true, loss);
}

lunet_status lunet_model_test_step(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                   int ny, lunet_tensor *const *y, double *loss) {
  return step(ctx, m, nx, x, ny, y, NULL, false, loss);
}

lunet_status lunet_model_train_step_weighted(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                             int ny, lunet_tensor *const *y, const lunet_tensor *sample_weight,
                                             double *loss) {
  return step(ctx, m, nx, x, ny, y, sample_weight, true, loss);
}

lunet_status lunet_model_test_step_weighted(lunet_ctx *ctx, lunet_model *m, int nx, lunet_tensor *const *x,
                                            int ny, lunet_tensor *const *y, const lunet_tensor *sample_weight,
                                            double *loss) {
  return step(ctx, m, nx, x, ny, y, sample_weight, false, loss);
}
