/*
 * Model files: safetensors with the graph as JSON in the metadata.
 *
 * config (format_version 2):
 *   {"format_version": 2, "class": "Functional" | "Sequential", "name": "...",
 *    "layers": [{"type": "Dense", "args": {"units": 10, ...}, "trainable": false (frozen only)}, ...],
 *      (a layer made under the mixed_bfloat16 policy adds
 *      "dtype_policy": "mixed_bfloat16"; without it a layer is float32,
 *      whatever the policy when the file is read)
 *    "inputs": [{"name": "image", "shape": [28, 28, 1]}, ...],
 *    "nodes": [{"layer": 0, "inputs": [["input", 0]]}, ...],
 *    "outputs": [["node", 3, 0]]}
 * A tensor is ["input", i] or ["node", k, j] (output j of node k), all
 * 0-based; a node reads only inputs and earlier nodes, so a file cannot
 * describe a cycle.  "Sequential" marks a chain, for the Lua shell.
 * compile: {"losses": [{"loss": "...", "from_logits": false, "weight": 1}],
 *           "metrics": ["accuracy"]}
 * optimizer: {"kind": "adam", "learning_rate": ..., ..., "iterations": n}
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/checkpoint.h"
#include "lunet/json_number.h"
#include "lunet/model.h"

/* model.c: 0 when json is a class_names value a model file may hold (a JSON
 * list of strings), else the error. */
LUNET_HIDDEN lunet_status lunet_model_check_class_names(lunet_ctx *ctx, const lunet_model *m, const char *json);

#define CONFIG_FORMAT 2
#define MAX_DEPTH 32
#define MAX_ENTRIES 10000 /* layers or calls in one config */


/* ---- writing ---- */

/* A float value that reads back bit for bit (cJSON's own printer rounds by
 * an ulp); NULL for a value JSON cannot hold. */
static cJSON *number(double v) {
  if (!isfinite(v)) return cJSON_CreateNull();
  char text[LUNET_JSON_NUMBER_MAX];
  lunet_json_number(v, text);
  return cJSON_CreateRaw(text);
}

static cJSON *arg_json(const lunet_arg_schema *s, const lunet_arg_value *v) {
  switch (s->type) {
  case LUNET_ARG_INT:
    return cJSON_CreateNumber((double)v->i);
  case LUNET_ARG_FLOAT:
    return number(v->f);
  case LUNET_ARG_BOOL:
    return cJSON_CreateBool(v->b);
  case LUNET_ARG_STRING:
    return cJSON_CreateString(v->s ? v->s : "");
  case LUNET_ARG_SIDES:
    if (v->n == 4) { /* Keras's [[top, bottom], [left, right]] */
      cJSON *a = cJSON_CreateArray();
      for (int k = 0; a && k < 2; k++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(a, pair);
        for (int i = 0; pair && i < 2; i++) cJSON_AddItemToArray(pair, cJSON_CreateNumber((double)v->v[2 * k + i]));
      }
      return a;
    }
    __attribute__((fallthrough));
  case LUNET_ARG_INT2:
    if (v->n == 1) return cJSON_CreateNumber((double)v->v[0]);
    __attribute__((fallthrough));
  case LUNET_ARG_SHAPE: {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < v->n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)v->v[i]));
    return a;
  }
  case LUNET_ARG_RANGE: {
    if (v->n == 1) return number(v->f);
    cJSON *a = cJSON_CreateArray();
    if (a) {
      cJSON_AddItemToArray(a, number(v->f));
      cJSON_AddItemToArray(a, number(v->f2));
    }
    return a;
  }
  case LUNET_ARG_REGULARIZER: {
    cJSON *o = cJSON_CreateObject();
    if (o) {
      cJSON_AddItemToObject(o, "l1", number(v->f));
      cJSON_AddItemToObject(o, "l2", number(v->f2));
    }
    return o;
  }
  }
  return NULL;
}

static cJSON *layer_json(const lunet_layer *l) {
  const lunet_layer_type *t = lunet_layer_type_get(l);
  cJSON *o = cJSON_CreateObject(), *args = o ? cJSON_AddObjectToObject(o, "args") : NULL;
  if (!args) {
    cJSON_Delete(o);
    return NULL;
  }
  cJSON_AddStringToObject(o, "type", t->name);
  /* a plugin's type names its plugin, so that a reader without it can say
   * which to load (readers before this ignore the key) */
  const char *plugin = lunet_registry_plugin_name(t);
  if (plugin && strcmp(plugin, "layers") != 0) cJSON_AddStringToObject(o, "plugin", plugin);
  for (int i = 0; i < t->nargs; i++) {
    lunet_arg_value v;
    if (!lunet_layer_arg_value(l, i, &v)) continue;
    cJSON_AddItemToObject(args, t->args[i].name, arg_json(&t->args[i], &v));
  }
  if (!cJSON_GetObjectItemCaseSensitive(args, "name"))
    cJSON_AddStringToObject(args, "name", lunet_layer_name(l));
  if (lunet_layer_precision(l) != LUNET_PRECISION_FLOAT32)
    cJSON_AddStringToObject(o, "dtype_policy", lunet_precision_policy_name(lunet_layer_precision(l)));
  if (!lunet_layer_trainable(l)) cJSON_AddBoolToObject(o, "trainable", false); /* Keras's config keeps it */
  return o;
}

static cJSON *ref_json(const lunet_model *m, int id, const int *node_of_call) {
  cJSON *r = cJSON_CreateArray();
  if (!r) return NULL;
  for (int i = 0; i < lunet_model_input_count(m); i++)
    if (lunet_model_input_id(m, i) == id) {
      cJSON_AddItemToArray(r, cJSON_CreateString("input"));
      cJSON_AddItemToArray(r, cJSON_CreateNumber(i));
      return r;
    }
  for (int c = 0; c < lunet_model_call_count(m); c++) {
    int first = lunet_model_call_output(m, c), n = lunet_model_call_output_count(m, c);
    if (id >= first && id < first + n) {
      cJSON_AddItemToArray(r, cJSON_CreateString("node"));
      cJSON_AddItemToArray(r, cJSON_CreateNumber(node_of_call[c]));
      cJSON_AddItemToArray(r, cJSON_CreateNumber(id - first));
      return r;
    }
  }
  cJSON_Delete(r);
  return NULL;
}

static int layer_index(const lunet_model *m, const lunet_layer *l) {
  for (int i = 0; i < lunet_model_layer_count(m); i++)
    if (lunet_model_layer(m, i) == l) return i;
  return -1;
}

/* A chain: one input, each call reads the previous value, one output. */
static bool is_chain(const lunet_model *m) {
  if (lunet_model_input_count(m) != 1 || lunet_model_output_count(m) != 1) return false;
  int prev = lunet_model_input_id(m, 0), ids[16];
  for (int c = 0; c < lunet_model_call_count(m); c++) {
    if (!lunet_model_call_live(m, c)) continue;
    if (lunet_model_call_inputs(m, c, ids, 16) != 1 || ids[0] != prev ||
        lunet_model_call_output_count(m, c) != 1)
      return false;
    prev = lunet_model_call_output(m, c);
  }
  return prev == lunet_model_output_id(m, 0);
}

static cJSON *config_json(const lunet_model *m) {
  cJSON *root = cJSON_CreateObject();
  int ncalls = lunet_model_call_count(m);
  int *node_of_call = calloc((size_t)(ncalls ? ncalls : 1), sizeof *node_of_call);
  if (!root || !node_of_call) goto fail;
  cJSON_AddNumberToObject(root, "format_version", CONFIG_FORMAT);
  cJSON_AddStringToObject(root, "class", is_chain(m) ? "Sequential" : "Functional");
  cJSON_AddStringToObject(root, "name", lunet_model_name(m));
  cJSON *layers = cJSON_AddArrayToObject(root, "layers"), *inputs = cJSON_AddArrayToObject(root, "inputs");
  cJSON *nodes = cJSON_AddArrayToObject(root, "nodes"), *outputs = cJSON_AddArrayToObject(root, "outputs");
  if (!layers || !inputs || !nodes || !outputs) goto fail;
  for (int i = 0; i < lunet_model_layer_count(m); i++)
    cJSON_AddItemToArray(layers, layer_json(lunet_model_layer(m, i)));
  for (int i = 0; i < lunet_model_input_count(m); i++) {
    int id = lunet_model_input_id(m, i);
    int64_t shape[LUNET_MAX_DIMS];
    int nd = lunet_model_value_shape(m, id, shape);
    cJSON *in = cJSON_CreateObject();
    cJSON_AddItemToArray(inputs, in);
    cJSON_AddStringToObject(in, "name", lunet_model_value_name(m, id));
    cJSON *s = cJSON_AddArrayToObject(in, "shape");
    for (int d = 0; s && d < nd; d++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[d]));
  }
  int k = 0;
  for (int c = 0; c < ncalls; c++) {
    if (!lunet_model_call_live(m, c)) continue;
    node_of_call[c] = k++;
    cJSON *n = cJSON_CreateObject();
    cJSON_AddItemToArray(nodes, n);
    cJSON_AddNumberToObject(n, "layer", layer_index(m, lunet_model_call_layer(m, c)));
    cJSON *ins = cJSON_AddArrayToObject(n, "inputs");
    int ids[16], nin = lunet_model_call_inputs(m, c, ids, 16);
    for (int i = 0; ins && i < nin; i++) cJSON_AddItemToArray(ins, ref_json(m, ids[i], node_of_call));
  }
  for (int j = 0; j < lunet_model_output_count(m); j++)
    cJSON_AddItemToArray(outputs, ref_json(m, lunet_model_output_id(m, j), node_of_call));
  free(node_of_call);
  return root;
fail:
  free(node_of_call);
  cJSON_Delete(root);
  return NULL;
}

static cJSON *compile_json(const lunet_model *m) {
  cJSON *o = cJSON_CreateObject(), *losses = o ? cJSON_AddArrayToObject(o, "losses") : NULL;
  cJSON *metrics = o ? cJSON_AddArrayToObject(o, "metrics") : NULL;
  for (int j = 0; losses && j < lunet_model_output_count(m); j++) {
    lunet_loss_spec s = lunet_model_loss(m, j);
    cJSON *l = cJSON_CreateObject();
    cJSON_AddItemToArray(losses, l);
    cJSON_AddStringToObject(l, "loss", lunet_loss_name(s.kind));
    cJSON_AddBoolToObject(l, "from_logits", s.from_logits);
    cJSON_AddItemToObject(l, "weight", number(s.weight));
    if (s.delta > 0) cJSON_AddItemToObject(l, "delta", number(s.delta));
    if (s.label_smoothing > 0) cJSON_AddItemToObject(l, "label_smoothing", number(s.label_smoothing));
  }
  for (int k = 0; metrics && k < lunet_model_compiled_metric_count(m); k++)
    cJSON_AddItemToArray(metrics, cJSON_CreateString(lunet_model_compiled_metric(m, k)));
  int nw = lunet_model_compiled_weighted_metric_count(m);
  cJSON *weighted = o && nw ? cJSON_AddArrayToObject(o, "weighted_metrics") : NULL;
  for (int k = 0; weighted && k < nw; k++)
    cJSON_AddItemToArray(weighted, cJSON_CreateString(lunet_model_compiled_weighted_metric(m, k)));
  return o;
}

static cJSON *optimizer_json(const lunet_optimizer *opt) {
  const lunet_optimizer_config *c = lunet_optimizer_config_get(opt);
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "kind", lunet_optimizer_kind_name(c->kind));
  cJSON_AddItemToObject(o, "learning_rate", number(c->learning_rate));
  cJSON_AddItemToObject(o, "momentum", number(c->momentum));
  cJSON_AddBoolToObject(o, "nesterov", c->nesterov);
  cJSON_AddItemToObject(o, "beta_1", number(c->beta_1));
  cJSON_AddItemToObject(o, "beta_2", number(c->beta_2));
  cJSON_AddItemToObject(o, "rho", number(c->rho));
  cJSON_AddItemToObject(o, "epsilon", number(c->epsilon));
  cJSON_AddItemToObject(o, "weight_decay", number(c->weight_decay));
  cJSON_AddItemToObject(o, "clipvalue", number(c->clipvalue));
  cJSON_AddItemToObject(o, "clipnorm", number(c->clipnorm));
  cJSON_AddItemToObject(o, "global_clipnorm", number(c->global_clipnorm));
  cJSON_AddItemToObject(o, "initial_accumulator_value", number(c->initial_accumulator_value));
  if (c->amsgrad) cJSON_AddBoolToObject(o, "amsgrad", true);
  if (c->centered) cJSON_AddBoolToObject(o, "centered", true);
  cJSON_AddNumberToObject(o, "iterations", (double)lunet_optimizer_iterations(opt));
  return o;
}

/* Weights and slots with their file names (names are malloc'ed). */
typedef struct entries {
  int n, cap;
  char **names;
  lunet_tensor **ts;
} entries;

static bool add_entry(entries *e, lunet_tensor *t, const char *fmt, int a, const char *b, int c) {
  if (e->n == e->cap) {
    int cap = e->cap ? 2 * e->cap : 64;
    char **names = realloc(e->names, sizeof *names * (size_t)cap);
    if (names) e->names = names;
    lunet_tensor **ts = realloc(e->ts, sizeof *ts * (size_t)cap);
    if (ts) e->ts = ts;
    if (!names || !ts) return false;
    e->cap = cap;
  }
  char buf[128];
  if (b)
    snprintf(buf, sizeof buf, fmt, a, b);
  else
    snprintf(buf, sizeof buf, fmt, a, c);
  if (!(e->names[e->n] = strdup(buf))) return false;
  e->ts[e->n++] = t;
  return true;
}

static void free_entries(entries *e) {
  for (int i = 0; i < e->n; i++) free(e->names[i]);
  free(e->names);
  free(e->ts);
}

static const char *const reserved[] = {"format", "lunet_version", "config", "compile", "optimizer"};

/* The layer and weight that parameter p is (by identity); false if none. */
static bool param_home(lunet_model *m, int p, int *layer, int *weight) {
  lunet_tensor *t = lunet_model_param(m, p);
  for (int i = 0; i < lunet_model_layer_count(m); i++) {
    lunet_layer *l = lunet_model_layer(m, i);
    for (int w = 0; w < lunet_layer_weight_count(l); w++)
      if (lunet_layer_weight(l, w) == t) {
        *layer = i, *weight = w;
        return true;
      }
  }
  return false;
}

lunet_status lunet_model_save(lunet_ctx *ctx, lunet_model *m, const char *path, int nmeta,
                              const char *const *meta_keys, const char *const *meta_values) {
  if (lunet_model_output_count(m) == 0)
    return lunet_error(ctx, LUNET_ERR_ARG, "model '%s' has no outputs yet", lunet_model_name(m));
  for (int i = 0; i < nmeta; i++) {
    for (size_t r = 0; r < sizeof reserved / sizeof reserved[0]; r++)
      if (!strcmp(meta_keys[i], reserved[r]))
        return lunet_error(ctx, LUNET_ERR_ARG, "save: the metadata key '%s' is lunet's own",
                           meta_keys[i]);
    /* what load would refuse is not written */
    if (!strcmp(meta_keys[i], "class_names") && lunet_model_check_class_names(ctx, m, meta_values[i]))
      return ctx->status;
  }
  for (int j = 0; lunet_model_compiled(m) && j < lunet_model_output_count(m); j++)
    if (lunet_model_loss(m, j).fn)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "cannot save model '%s': its loss is a function of the program (Lua), which a file "
                         "cannot hold; save the weights alone (save_weights) or compile with a named loss",
                         lunet_model_name(m));
  for (int i = 0; i < lunet_model_layer_count(m); i++) {
    lunet_layer *l = lunet_model_layer(m, i);
    if (lunet_layer_type_get(l)->flags & LUNET_LAYER_HOST_CODE)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "cannot save model '%s': layer '%s' (%s) runs host-language code, which a "
                         "file cannot hold (write it as a layer plugin, or save the weights alone "
                         "and rebuild the model in code)",
                         lunet_model_name(m), lunet_layer_name(l), lunet_layer_type_get(l)->name);
  }
  entries e = {0};
  bool ok = true;
  for (int i = 0; ok && i < lunet_model_layer_count(m); i++) {
    lunet_layer *l = lunet_model_layer(m, i);
    for (int w = 0; ok && w < lunet_layer_weight_count(l); w++)
      ok = add_entry(&e, lunet_layer_weight(l, w), "layers.%d.%s", i, lunet_layer_weight_name(l, w), 0);
  }
  lunet_optimizer *opt = lunet_model_optimizer(m);
  int nslots = opt ? lunet_optimizer_slot_count(opt) : 0;
  /* optimizer state by the weight it belongs to (optimizer.layers.<i>.<w>.<k>),
   * so a file saved after a trainable change still gives each weight its own */
  for (int p = 0; ok && p < lunet_model_param_count(m); p++) {
    int li, wi;
    if (!param_home(m, p, &li, &wi)) continue;
    for (int k = 0; ok && k < nslots; k++)
      if (lunet_optimizer_slot(opt, p, k)) {
        char wk[96];
        snprintf(wk, sizeof wk, "%s.%d", lunet_layer_weight_name(lunet_model_layer(m, li), wi), k + 1);
        ok = add_entry(&e, lunet_optimizer_slot(opt, p, k), "optimizer.layers.%d.%s", li, wk, 0);
      }
  }
  cJSON *cfg = ok ? config_json(m) : NULL;
  cJSON *comp = cfg && lunet_model_compiled(m) ? compile_json(m) : NULL;
  cJSON *oj = comp && opt ? optimizer_json(opt) : NULL;
  char *texts[3] = {cfg ? cJSON_PrintUnformatted(cfg) : NULL,
                    comp ? cJSON_PrintUnformatted(comp) : NULL, oj ? cJSON_PrintUnformatted(oj) : NULL};
  int total = 3 + (texts[1] ? 2 : 0) + nmeta;
  const char **keys = calloc((size_t)total, sizeof *keys), **values = calloc((size_t)total, sizeof *values);
  lunet_status s;
  if (!ok || !texts[0] || !keys || !values || (comp && !texts[1]) || (oj && !texts[2])) {
    s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory saving model '%s'", lunet_model_name(m));
  } else {
    int k = 0;
    keys[k] = "format", values[k++] = "lunet";
    keys[k] = "lunet_version", values[k++] = LUNET_VERSION_STRING;
    keys[k] = "config", values[k++] = texts[0];
    if (texts[1]) keys[k] = "compile", values[k++] = texts[1];
    if (texts[2]) keys[k] = "optimizer", values[k++] = texts[2];
    for (int i = 0; i < nmeta; i++) keys[k] = meta_keys[i], values[k++] = meta_values[i];
    s = lunet_safetensors_save(ctx, path, e.n, (const char *const *)e.names, e.ts, k, keys, values);
  }
  for (int i = 0; i < 3; i++) cJSON_free(texts[i]);
  cJSON_Delete(cfg);
  cJSON_Delete(comp);
  cJSON_Delete(oj);
  free(keys);
  free(values);
  free_entries(&e);
  return s;
}

/* ---- reading: every field is checked, nothing is run ---- */

typedef struct reader {
  lunet_ctx *ctx;
  const char *path;
} reader;

static lunet_status bad(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static lunet_status bad(reader *r, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return lunet_error(r->ctx, LUNET_ERR_FORMAT, "%s: %s", r->path, msg);
}

static int depth(const cJSON *j) {
  int d = 0;
  for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
    int k = depth(c);
    if (k > d) d = k;
    if (d > MAX_DEPTH) break;
  }
  return d + 1;
}

static cJSON *parse(reader *r, const char *text, const char *what) {
  size_t n = strlen(text);
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(text, n, &end, false);
  while (j && end < text + n && strchr(" \t\r\n", *end)) end++;
  if (!j || end != text + n) {
    cJSON_Delete(j);
    bad(r, "the %s is not valid JSON, or nested too deeply (at byte %ld of %zu)", what,
        end ? (long)(end - text) : -1L, n);
    return NULL;
  }
  if (depth(j) > MAX_DEPTH) {
    cJSON_Delete(j);
    bad(r, "the %s is nested deeper than %d levels", what, MAX_DEPTH);
    return NULL;
  }
  return j;
}

static bool get_int(const cJSON *j, int64_t lo, int64_t hi, int64_t *out) {
  if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble != floor(j->valuedouble) ||
      j->valuedouble < (double)lo || j->valuedouble > (double)hi)
    return false;
  *out = (int64_t)j->valuedouble;
  return true;
}

/* A list of at most `max` entries under `key`. */
static const cJSON *list(reader *r, const cJSON *o, const char *key, int max) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(a)) {
    bad(r, "the config's '%s' must be a list", key);
    return NULL;
  }
  if (cJSON_GetArraySize(a) > max) {
    bad(r, "the config's '%s' has more than %d entries", key, max);
    return NULL;
  }
  return a;
}

/* Sets argument `s` of layer l from JSON value j, checked against its type. */
static lunet_status set_arg(reader *r, lunet_layer *l, int idx, const lunet_arg_schema *s,
                            const cJSON *j) {
  lunet_arg_value v = {0};
  bool ok = true;
  switch (s->type) {
  case LUNET_ARG_INT:
    ok = get_int(j, INT32_MIN, INT32_MAX, &v.i);
    break;
  case LUNET_ARG_FLOAT:
    ok = cJSON_IsNumber(j) && isfinite(j->valuedouble);
    v.f = ok ? j->valuedouble : 0;
    break;
  case LUNET_ARG_BOOL:
    ok = cJSON_IsBool(j);
    v.b = cJSON_IsTrue(j);
    break;
  case LUNET_ARG_STRING:
    ok = cJSON_IsString(j) && strlen(j->valuestring) < 256;
    v.s = ok ? j->valuestring : NULL;
    break;
  case LUNET_ARG_INT2:
  case LUNET_ARG_SHAPE:
  case LUNET_ARG_SIDES:
    if (s->type != LUNET_ARG_SHAPE && cJSON_IsNumber(j)) {
      v.n = 1;
      ok = get_int(j, INT32_MIN, INT32_MAX, &v.v[0]);
      break;
    }
    ok = cJSON_IsArray(j) && cJSON_GetArraySize(j) <= (s->type == LUNET_ARG_SHAPE ? LUNET_MAX_DIMS : 2);
    if (ok && s->type == LUNET_ARG_SIDES && cJSON_IsArray(j->child)) { /* [[top, bottom], [left, right]] */
      ok = cJSON_GetArraySize(j) == 2;
      for (const cJSON *pair = ok ? j->child : NULL; ok && pair; pair = pair->next) {
        ok = cJSON_IsArray(pair) && cJSON_GetArraySize(pair) == 2;
        for (const cJSON *c = ok ? pair->child : NULL; ok && c; c = c->next)
          ok = get_int(c, INT32_MIN, INT32_MAX, &v.v[v.n++]);
      }
      break;
    }
    for (const cJSON *c = ok ? j->child : NULL; ok && c; c = c->next)
      ok = get_int(c, INT32_MIN, INT32_MAX, &v.v[v.n++]);
    break;
  case LUNET_ARG_REGULARIZER: {
    const cJSON *l1 = cJSON_GetObjectItemCaseSensitive(j, "l1"), *l2 = cJSON_GetObjectItemCaseSensitive(j, "l2");
    ok = cJSON_IsObject(j) && (!l1 || cJSON_IsNumber(l1)) && (!l2 || cJSON_IsNumber(l2));
    v.f = l1 && ok ? l1->valuedouble : 0;
    v.f2 = l2 && ok ? l2->valuedouble : 0;
    ok = ok && isfinite(v.f) && isfinite(v.f2);
    break;
  }
  case LUNET_ARG_RANGE:
    if (cJSON_IsNumber(j)) {
      v.n = 1;
      v.f = j->valuedouble;
    } else if (cJSON_IsArray(j) && cJSON_GetArraySize(j) == 2 && cJSON_IsNumber(j->child) &&
               cJSON_IsNumber(j->child->next)) {
      v.n = 2;
      v.f = j->child->valuedouble;
      v.f2 = j->child->next->valuedouble;
    }
    ok = v.n && isfinite(v.f) && isfinite(v.f2) && (v.n == 1 || v.f <= v.f2);
    break;
  }
  if (!ok)
    return bad(r, "layers[%d] (%s): argument '%s' has the wrong type or is out of range", idx,
               lunet_layer_type_get(l)->name, s->name);
  if (s->type == LUNET_ARG_STRING && s->choices && !lunet_arg_choice_ok(s->choices, v.s))
    return bad(r, "layers[%d] (%s): '%s' must be one of %s, got '%s'", idx, lunet_layer_type_get(l)->name, s->name,
               s->choices, v.s);
  return lunet_layer_set_value(l, s->name, &v) ? r->ctx->status : LUNET_OK;
}

static lunet_layer *read_layer(reader *r, const cJSON *j, int idx) {
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(j, "args");
  if (!cJSON_IsString(type) || !cJSON_IsObject(args)) {
    bad(r, "layers[%d] needs a \"type\" string and an \"args\" object", idx);
    return NULL;
  }
  const lunet_layer_type *t = lunet_layer_type_find(r->ctx, type->valuestring);
  if (!t) { /* named by the file's index from 0 and the layer's name (Lua's model.layers counts from 1) */
    const cJSON *plugin = cJSON_GetObjectItemCaseSensitive(j, "plugin");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(args, "name");
    const char *n = cJSON_IsString(name) ? name->valuestring : "?";
    if (cJSON_IsString(plugin))
      bad(r, "layers[%d] ('%.64s') has the type '%.64s' of plugin '%.64s', which is not loaded: load it first "
             "(nn.load_plugin(path), or put it in LUNET_PLUGIN_PATH)", idx, n, type->valuestring, plugin->valuestring);
    else
      bad(r, "layers[%d] ('%.64s') has the unknown type '%.64s' (a plugin not loaded? load it first)", idx, n,
          type->valuestring);
    return NULL;
  }
  if (t->flags & LUNET_LAYER_HOST_CODE) {
    bad(r, "layers[%d] is a %s, which runs host-language code and cannot come from a file", idx, t->name);
    return NULL;
  }
  const cJSON *policy = cJSON_GetObjectItemCaseSensitive(j, "dtype_policy");
  lunet_precision prec = LUNET_PRECISION_FLOAT32;
  if (policy && !(cJSON_IsString(policy) &&
                  (!strcmp(policy->valuestring, "mixed_bfloat16") || !strcmp(policy->valuestring, "float32")))) {
    bad(r, "layers[%d] (%s): \"dtype_policy\" must be \"float32\" or \"mixed_bfloat16\"", idx, t->name);
    return NULL;
  }
  if (policy && !strcmp(policy->valuestring, "mixed_bfloat16")) prec = LUNET_PRECISION_BFLOAT16;
  const cJSON *trainable = cJSON_GetObjectItemCaseSensitive(j, "trainable");
  if (trainable && !cJSON_IsBool(trainable)) {
    bad(r, "layers[%d] (%s): \"trainable\" must be true or false", idx, t->name);
    return NULL;
  }
  lunet_layer *l = lunet_layer_new(r->ctx, t);
  if (l) lunet_layer_set_precision(l, prec);
  if (l && cJSON_IsFalse(trainable)) lunet_layer_set_trainable(l, false); /* a frozen layer stays frozen */
  for (const cJSON *a = l ? args->child : NULL; a; a = a->next) {
    int k = 0;
    while (k < t->nargs && strcmp(t->args[k].name, a->string)) k++;
    lunet_status s = k == t->nargs ? bad(r, "layers[%d] (%s): unknown argument '%.64s'", idx, t->name,
                                         a->string)
                                   : set_arg(r, l, idx, &t->args[k], a);
    if (s) {
      lunet_layer_release(l);
      return NULL;
    }
  }
  return l;
}

/* The value id a tensor reference names; -1 with the error set. */
static int resolve(reader *r, const cJSON *ref, const int *inputs, int ninputs, const int *firsts,
                   const int *counts, int before, const char *where) {
  const cJSON *kind = cJSON_GetArrayItem(ref, 0);
  int64_t a, b;
  if (!cJSON_IsArray(ref) || !cJSON_IsString(kind)) {
    bad(r, "%s is not a tensor reference ([\"input\", i] or [\"node\", k, j])", where);
    return -1;
  }
  if (!strcmp(kind->valuestring, "input") && cJSON_GetArraySize(ref) == 2) {
    if (!get_int(cJSON_GetArrayItem(ref, 1), 0, ninputs - 1, &a)) {
      bad(r, "%s names an input the config does not have (it has %d)", where, ninputs);
      return -1;
    }
    return inputs[a];
  }
  if (!strcmp(kind->valuestring, "node") && cJSON_GetArraySize(ref) == 3 &&
      get_int(cJSON_GetArrayItem(ref, 1), 0, MAX_ENTRIES, &a) &&
      get_int(cJSON_GetArrayItem(ref, 2), 0, LUNET_LAYER_MAX_OUTPUTS, &b)) {
    if (a >= before) {
      bad(r, "%s refers to node %lld, which does not come before it (a cycle, or a dangling "
             "reference)", where, (long long)a);
      return -1;
    }
    if (b >= counts[a]) {
      bad(r, "%s names output %lld of node %lld, which has %d", where, (long long)b, (long long)a,
          counts[a]);
      return -1;
    }
    return firsts[a] + (int)b;
  }
  bad(r, "%s is not a tensor reference ([\"input\", i] or [\"node\", k, j])", where);
  return -1;
}

static lunet_status read_graph(reader *r, lunet_model *m, const cJSON *cfg, lunet_layer **layers,
                               int nlayers) {
  const cJSON *ins = list(r, cfg, "inputs", 16), *nodes = ins ? list(r, cfg, "nodes", MAX_ENTRIES) : NULL;
  const cJSON *outs = nodes ? list(r, cfg, "outputs", 16) : NULL;
  if (!outs) return r->ctx->status;
  int nnodes = cJSON_GetArraySize(nodes), inputs[16], ninputs = 0;
  int *firsts = calloc((size_t)(nnodes ? nnodes : 1), sizeof *firsts);
  int *counts = calloc((size_t)(nnodes ? nnodes : 1), sizeof *counts);
  lunet_status s = firsts && counts ? LUNET_OK : lunet_error(r->ctx, LUNET_ERR_NOMEM, "out of memory");
  for (const cJSON *in = ins->child; !s && in; in = in->next, ninputs++) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(in, "name");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(in, "shape");
    int64_t dims[LUNET_MAX_DIMS];
    int nd = 0;
    bool ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) < LUNET_MAX_DIMS &&
              (!name || cJSON_IsString(name));
    for (const cJSON *d = ok ? shape->child : NULL; ok && d; d = d->next)
      ok = get_int(d, 1, INT32_MAX, &dims[nd++]);
    if (!ok) {
      s = bad(r, "inputs[%d] needs a shape of positive sizes (and a name string)", ninputs);
      break;
    }
    inputs[ninputs] = lunet_model_input(r->ctx, m, name ? name->valuestring : NULL, nd, dims);
    if (inputs[ninputs] < 0) s = r->ctx->status;
  }
  int k = 0;
  for (const cJSON *n = nodes->child; !s && n; n = n->next, k++) {
    char where[64];
    int64_t li;
    const cJSON *nin = cJSON_GetObjectItemCaseSensitive(n, "inputs");
    if (!get_int(cJSON_GetObjectItemCaseSensitive(n, "layer"), 0, nlayers - 1, &li)) {
      s = bad(r, "nodes[%d] names no layer of the config (it has %d)", k, nlayers);
      break;
    }
    if (!cJSON_IsArray(nin) || cJSON_GetArraySize(nin) < 1 || cJSON_GetArraySize(nin) > 16) {
      s = bad(r, "nodes[%d] needs 1 to 16 inputs", k);
      break;
    }
    int ids[16], ni = 0;
    for (const cJSON *ref = nin->child; !s && ref; ref = ref->next, ni++) {
      snprintf(where, sizeof where, "nodes[%d].inputs[%d]", k, ni);
      if ((ids[ni] = resolve(r, ref, inputs, ninputs, firsts, counts, k, where)) < 0) s = r->ctx->status;
    }
    if (s) break;
    firsts[k] = lunet_model_add(r->ctx, m, layers[li], ni, ids);
    counts[k] = lunet_layer_output_count(layers[li]);
    if (firsts[k] < 0) {
      char msg[sizeof r->ctx->msg];
      snprintf(msg, sizeof msg, "%s", r->ctx->msg);
      s = bad(r, "nodes[%d]: %s", k, msg);
    }
  }
  int ids[16], no = 0;
  for (const cJSON *ref = outs->child; !s && ref; ref = ref->next, no++) {
    char where[32];
    snprintf(where, sizeof where, "outputs[%d]", no);
    if ((ids[no] = resolve(r, ref, inputs, ninputs, firsts, counts, nnodes, where)) < 0) s = r->ctx->status;
  }
  if (!s) s = lunet_model_set_outputs(r->ctx, m, no, ids);
  free(firsts);
  free(counts);
  return s;
}

/* Copies the file's tensor `name` into t, checking its shape. */
static lunet_status fill_from(reader *r, const lunet_safetensors *st, const char *name, lunet_tensor *t) {
  for (int i = 0; i < lunet_safetensors_count(st); i++) {
    if (strcmp(lunet_safetensors_name(st, i), name)) continue;
    lunet_tensor *src = lunet_safetensors_tensor(st, i);
    if (!lunet_shape_equal(src, t) || src->dtype != t->dtype) {
      char a[128], b[128];
      return bad(r, "'%s' is %s %s in the file, the model expects %s %s", name, lunet_dtype_name(src->dtype),
                 lunet_shape_str(src->ndim, src->shape, a, sizeof a), lunet_dtype_name(t->dtype),
                 lunet_shape_str(t->ndim, t->shape, b, sizeof b));
    }
    size_t nb = (size_t)t->numel * lunet_dtype_size(t->dtype);
    void *buf = malloc(nb ? nb : 1);
    lunet_status s = buf ? lunet_tensor_read(r->ctx, src, buf, nb)
                         : lunet_error(r->ctx, LUNET_ERR_NOMEM, "out of host memory");
    if (!s) s = lunet_tensor_write(r->ctx, t, buf, nb);
    free(buf);
    return s;
  }
  return bad(r, "the file has no tensor '%s' (does it belong to another model?)", name);
}

static lunet_optimizer *read_optimizer(reader *r, const cJSON *o) {
  const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
  int k = cJSON_IsString(kind) ? lunet_optimizer_kind_find(kind->valuestring) : -1;
  if (k < 0) {
    bad(r, "the optimizer's kind must be sgd, adam, rmsprop, adagrad, adadelta, adamax, nadam or lion");
    return NULL;
  }
  lunet_optimizer_config c = lunet_optimizer_defaults((lunet_optimizer_kind)k);
  struct {
    const char *name;
    double *field;
  } nums[] = {{"learning_rate", &c.learning_rate}, {"momentum", &c.momentum}, {"beta_1", &c.beta_1},
              {"beta_2", &c.beta_2},               {"rho", &c.rho},           {"epsilon", &c.epsilon},
              {"weight_decay", &c.weight_decay},   {"clipvalue", &c.clipvalue}, {"clipnorm", &c.clipnorm},
              {"global_clipnorm", &c.global_clipnorm}, {"initial_accumulator_value", &c.initial_accumulator_value}};
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, nums[i].name);
    if (!v) continue;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
      bad(r, "the optimizer's %s must be a number", nums[i].name);
      return NULL;
    }
    *nums[i].field = v->valuedouble;
  }
  /* files of lunet 0.2 may set several clipping options (they were chained);
   * Keras, and lunet since, take one: keep the first of global_clipnorm,
   * clipnorm, clipvalue and say so (the Lua side keeps the same one) */
  if ((c.clipvalue > 0) + (c.clipnorm > 0) + (c.global_clipnorm > 0) > 1) {
    const char *kept = c.global_clipnorm > 0 ? "global_clipnorm" : "clipnorm";
    fprintf(stderr,
            "lunet: the model file's optimizer sets clipnorm = %g, clipvalue = %g, global_clipnorm = %g; one "
            "clipping option is allowed (as Keras's): keeping %s\n",
            c.clipnorm, c.clipvalue, c.global_clipnorm, kept);
    if (c.global_clipnorm > 0) c.clipnorm = 0;
    c.clipvalue = 0;
  }
  c.nesterov = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "nesterov"));
  c.amsgrad = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "amsgrad"));
  c.centered = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "centered"));
  int64_t it = 0;
  const cJSON *iters = cJSON_GetObjectItemCaseSensitive(o, "iterations");
  if (iters && !get_int(iters, 0, INT64_C(1) << 52, &it)) {
    bad(r, "the optimizer's iterations must be a count");
    return NULL;
  }
  lunet_optimizer *opt = lunet_optimizer_new(r->ctx, &c);
  if (opt) lunet_optimizer_set_iterations(opt, it);
  return opt;
}

static lunet_status read_compile(reader *r, lunet_model *m, const lunet_safetensors *st,
                                 const cJSON *comp, const cJSON *oj) {
  const cJSON *losses = list(r, comp, "losses", 16), *metrics = losses ? list(r, comp, "metrics", 16) : NULL;
  if (!metrics) return r->ctx->status;
  lunet_loss_spec specs[16];
  const char *names[16], *wnames[16];
  int nl = 0, nm = 0, nw = 0;
  const cJSON *weighted = cJSON_GetObjectItemCaseSensitive(comp, "weighted_metrics");
  if (weighted && !(weighted = list(r, comp, "weighted_metrics", 16))) return r->ctx->status;
  for (const cJSON *l = losses->child; l; l = l->next, nl++) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(l, "loss");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(l, "weight");
    int k = cJSON_IsString(name) ? lunet_loss_find(name->valuestring) : -1;
    if (k < 0 || (w && (!cJSON_IsNumber(w) || !isfinite(w->valuedouble))))
      return bad(r, "losses[%d] needs a known loss name and a numeric weight", nl);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(l, "delta");
    const cJSON *ls = cJSON_GetObjectItemCaseSensitive(l, "label_smoothing");
    if ((d && (!cJSON_IsNumber(d) || !(d->valuedouble > 0) || !isfinite(d->valuedouble))) ||
        (ls && (!cJSON_IsNumber(ls) || !(ls->valuedouble >= 0 && ls->valuedouble <= 1))))
      return bad(r, "losses[%d]: delta must be a number > 0 and label_smoothing one in [0, 1]", nl);
    specs[nl] = (lunet_loss_spec){.kind = (lunet_loss_kind)k,
                                  .from_logits = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "from_logits")),
                                  .weight = w ? w->valuedouble : 1,
                                  .delta = d ? d->valuedouble : 0,
                                  .label_smoothing = ls ? ls->valuedouble : 0};
  }
  for (const cJSON *x = metrics->child; x; x = x->next, nm++) {
    if (!cJSON_IsString(x)) return bad(r, "metrics[%d] must be a name", nm);
    names[nm] = x->valuestring;
  }
  for (const cJSON *x = weighted ? weighted->child : NULL; x; x = x->next, nw++) {
    if (!cJSON_IsString(x)) return bad(r, "weighted_metrics[%d] must be a name", nw);
    wnames[nw] = x->valuestring;
  }
  lunet_optimizer *opt = read_optimizer(r, oj);
  if (!opt) return r->ctx->status;
  lunet_compile_opts co = {.nlosses = nl, .losses = specs, .optimizer = opt, .nmetrics = nm, .metrics = names,
                           .nweighted_metrics = nw, .weighted_metrics = wnames};
  lunet_status s = lunet_model_compile(r->ctx, m, &co);
  /* each weight's state by its name; files before 0.3 number the
   * parameters instead (optimizer.<p>.<k>) */
  bool by_name = false;
  for (int i = 0; i < lunet_safetensors_count(st); i++)
    by_name = by_name || !strncmp(lunet_safetensors_name(st, i), "optimizer.layers.", 17);
  for (int p = 0; !s && p < lunet_model_param_count(m); p++)
    for (int k = 0; !s && k < lunet_optimizer_slot_count(opt); k++) {
      char name[160];
      int li, wi;
      if (!by_name)
        snprintf(name, sizeof name, "optimizer.%d.%d", p + 1, k + 1);
      else if (param_home(m, p, &li, &wi))
        snprintf(name, sizeof name, "optimizer.layers.%d.%s.%d", li,
                 lunet_layer_weight_name(lunet_model_layer(m, li), wi), k + 1);
      else
        continue;
      for (int i = 0; i < lunet_safetensors_count(st); i++)
        if (!strcmp(lunet_safetensors_name(st, i), name)) {
          if (!lunet_shape_equal(lunet_safetensors_tensor(st, i), lunet_model_param(m, p)) ||
              lunet_safetensors_tensor(st, i)->dtype != LUNET_F32)
            s = bad(r, "'%s' does not have the shape (or float32 type) of parameter %d", name, p + 1);
          else
            s = lunet_optimizer_set_slot(r->ctx, opt, p, k, lunet_safetensors_tensor(st, i));
        }
    }
  lunet_optimizer_release(opt);
  return s;
}

static const char *meta_get(const lunet_safetensors *st, const char *key) {
  for (int i = 0; i < lunet_safetensors_meta_count(st); i++)
    if (!strcmp(lunet_safetensors_meta_key(st, i), key)) return lunet_safetensors_meta_value(st, i);
  return NULL;
}

/* The model of a parsed config, its weights from the file. */
static lunet_model *read_model(reader *r, const lunet_safetensors *st, const cJSON *cfg) {
  const cJSON *fv = cJSON_GetObjectItemCaseSensitive(cfg, "format_version");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(cfg, "name");
  if (!cJSON_IsObject(cfg) || !cJSON_IsNumber(fv)) {
    bad(r, "the config has no format_version");
    return NULL;
  }
  if (fv->valuedouble != CONFIG_FORMAT) {
    bad(r, "config format_version %g, this lunet reads %d", fv->valuedouble, CONFIG_FORMAT);
    return NULL;
  }
  const cJSON *lj = list(r, cfg, "layers", MAX_ENTRIES);
  if (!lj) return NULL;
  int nlayers = cJSON_GetArraySize(lj), made = 0;
  lunet_layer **layers = calloc((size_t)(nlayers ? nlayers : 1), sizeof *layers);
  lunet_model *m = layers ? lunet_model_new(r->ctx, cJSON_IsString(name) ? name->valuestring : "model") : NULL;
  lunet_status s = m ? LUNET_OK : r->ctx->status;
  for (const cJSON *l = lj->child; !s && l; l = l->next, made++)
    if (!(layers[made] = read_layer(r, l, made))) s = r->ctx->status;
  if (!s) s = read_graph(r, m, cfg, layers, made);
  for (int i = 0; i < made; i++) lunet_layer_release(layers[i]);
  free(layers);
  for (int i = 0; !s && i < lunet_model_layer_count(m); i++) {
    lunet_layer *l = lunet_model_layer(m, i);
    for (int w = 0; !s && w < lunet_layer_weight_count(l); w++) {
      char wn[96];
      snprintf(wn, sizeof wn, "layers.%d.%s", i, lunet_layer_weight_name(l, w));
      s = fill_from(r, st, wn, lunet_layer_weight(l, w));
    }
  }
  if (s) {
    lunet_model_release(m);
    return NULL;
  }
  return m;
}

static int64_t file_bytes(const lunet_safetensors *st) {
  int64_t total = 0;
  for (int i = 0; i < lunet_safetensors_count(st); i++) {
    const lunet_tensor *t = lunet_safetensors_tensor(st, i);
    total += t->numel * (int64_t)lunet_dtype_size(t->dtype);
  }
  return total;
}

lunet_model *lunet_model_load(lunet_ctx *ctx, const char *path) {
  reader r = {ctx, path};
  lunet_safetensors *st = lunet_safetensors_load(ctx, path);
  if (!st) return NULL;
  const char *format = meta_get(st, "format"), *config = meta_get(st, "config");
  const char *version = meta_get(st, "lunet_version");
  lunet_model *m = NULL;
  cJSON *cfg = NULL, *comp = NULL, *oj = NULL;
  if (format && !strcmp(format, "lunet_weights")) {
    bad(&r, "a weights file (model:save_weights): it holds no model; build the model in code and call "
            "model:load_weights(path), or save it with model:save(path)");
  } else if (!format || strcmp(format, "lunet") || !config) {
    bad(&r, "the file holds no lunet model config (was it saved by model:save?)");
  } else if (config[0] == '{' && (config[1] == '[' || config[1] == '}')) {
    bad(&r, "saved by lunet %s with a model config in Lua source (config format 1), which this "
            "lunet does not read: load it with lunet %s and save it again",
        version ? version : "0.1", version ? version : "0.1");
  } else if ((cfg = parse(&r, config, "model config"))) {
    int64_t prev = ctx->weight_budget;
    ctx->weight_budget = file_bytes(st);
    m = read_model(&r, st, cfg);
    ctx->weight_budget = prev;
  }
  const char *cj = meta_get(st, "compile"), *ojs = meta_get(st, "optimizer");
  if (m && cj && ojs) {
    lunet_status s = (comp = parse(&r, cj, "compile config")) && (oj = parse(&r, ojs, "optimizer config"))
                         ? read_compile(&r, m, st, comp, oj)
                         : ctx->status;
    if (s) {
      lunet_model_release(m);
      m = NULL;
    }
  }
  for (int i = 0; m && i < lunet_safetensors_meta_count(st); i++)
    if (lunet_model_set_meta(ctx, m, lunet_safetensors_meta_key(st, i), lunet_safetensors_meta_value(st, i))) {
      lunet_model_release(m);
      m = NULL;
    }
  cJSON_Delete(cfg);
  cJSON_Delete(comp);
  cJSON_Delete(oj);
  lunet_safetensors_free(st);
  return m;
}
