/*
 * lunet serve: HTTP inference for saved models, with TensorFlow Serving's
 * REST shapes, on libmicrohttpd.
 *
 *   lunet serve --model NAME=PATH [--model ...] [--port 8501] [--host 127.0.0.1]
 *               [--threads N] [--max-body 16MB] [--backend NAME]
 *               [--max-batch 64] [--batch-timeout-ms 2] [--max-queue 1024]
 *
 *   POST /v1/models/NAME:predict   {"instances": [...]} -> {"predictions": [...]}
 *                                  {"inputs": [...]}    -> {"outputs": [...]}
 * A model of several inputs takes each instance as an object {"a": ..., "b":
 * ...} (row format) or "inputs" as {"a": [...], "b": [...]} (columnar);
 * several outputs answer each prediction as {"y1": ..., "y2": ...}, or
 * "outputs" as {"y1": [...], "y2": [...]}: TF Serving's REST API.
 *   GET  /v1/models/NAME           model_version_status
 *   GET  /v1/models/NAME/metadata  signature_def (input and output names, shapes, dtypes)
 *   GET  /healthz
 *   GET  /metrics                  Prometheus's text format
 * Dynamic batching: each model has one worker thread that takes the
 * requests waiting in its queue, up to --max-batch samples or until
 * --batch-timeout-ms has passed since the first, runs them as one batch
 * and hands each request its rows; the request threads wait for theirs.
 * A full queue (--max-queue requests) answers 503 with Retry-After.
 * SIGHUP reloads every model from its file: the old one answers until the
 * new one is ready, and a file that fails to load keeps the old one.
 * Errors are {"error": "..."} with the status that fits (400 bad request,
 * 404 no such model or path, 405 method, 413 body over --max-body); the
 * server does no preprocessing: the model carries its own layers.
 * SIGTERM or SIGINT stops accepting, finishes what is in flight and exits 0.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <strings.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lunet/env.h"
#include "lunet/lunet.h"
#include "lunet/model.h"

#define MAX_MODELS 16
#define MAX_IO 8 /* inputs, and outputs, of one served model */

/* A request's inputs waiting for the model, and then its outputs. */
typedef struct job {
  float *x[MAX_IO]; /* n samples of each input */
  int64_t n;
  float *y[MAX_IO]; /* n samples of each output, filled by the worker */
  lunet_status status;
  char err[512];
  bool done;
  struct job *next;
} job;

/* One input or output: its name and one sample's shape. */
typedef struct io_spec {
  char name[64];
  int ndim;
  int64_t shape[LUNET_MAX_DIMS];
  int64_t per; /* values per sample */
} io_spec;

/* What a model takes and gives.  A reload may rename a lone input or
 * output, so the request threads and the worker read it under the model's
 * lock, into a copy of their own. */
typedef struct signature {
  int nin, nout;
  io_spec in[MAX_IO], out[MAX_IO];
} signature;

#define NBUCKETS 12
static const double latency_bounds[NBUCKETS] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                                0.05,   0.1,   0.2,   0.5,   1,    5};

typedef struct served {
  char name[64];
  char path[1024];
  lunet_model *model;
  lunet_ctx *ctx; /* used by the worker alone */
  pthread_mutex_t mu; /* the queue, the model pointer and the statistics */
  pthread_cond_t work, done;
  job *head, *tail;
  int queued;
  int pending; /* predict requests from their arrival to their answer */
  bool stop;
  pthread_t worker;
  /* statistics for /metrics */
  unsigned long requests[6]; /* 200, 400, 413, 500, 503, other */
  unsigned long latency[NBUCKETS + 1];
  double latency_sum;
  unsigned long batches, batch_sizes[8]; /* <=1, 2, 4, 8, 16, 32, 64, more */
  unsigned long long batch_samples;
  unsigned long reloads, reload_failures;
  signature sig; /* under mu */
} served;

static served models[MAX_MODELS];
static int nmodels;
static size_t max_body = 16u << 20;
static int max_batch = 64, batch_timeout_ms = 2, max_queue = 1024;
static const char *backend_name;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void count_request(served *m, unsigned status, double seconds) {
  int k = status == 200 ? 0 : status == 400 ? 1 : status == 413 ? 2 : status == 500 ? 3 : status == 503 ? 4 : 5;
  pthread_mutex_lock(&m->mu);
  m->requests[k]++;
  int b = 0;
  while (b < NBUCKETS && seconds > latency_bounds[b]) b++;
  m->latency[b]++;
  m->latency_sum += seconds;
  pthread_mutex_unlock(&m->mu);
}

/* ---- responses ---- */

static __thread unsigned last_status; /* what this thread last answered, for /metrics */
static __thread bool retry_later;     /* the next answer says Retry-After */

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *body) {
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  if (!text) return MHD_NO;
  last_status = status;
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", "application/json");
  if (retry_later) MHD_add_response_header(r, "Retry-After", "1");
  retry_later = false;
  enum MHD_Result ok = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "error", msg);
  return send_json(c, status, o);
}

static served *find_model(const char *name, size_t n) {
  for (int i = 0; i < nmodels; i++)
    if (strlen(models[i].name) == n && !strncmp(models[i].name, name, n)) return &models[i];
  return NULL;
}

/* ---- JSON <-> tensors ---- */

/* What a JSON value is, for errors: "a string", "true", "an object"... */
static const char *json_kind(const cJSON *v) {
  return cJSON_IsString(v) ? "a string"
         : cJSON_IsArray(v) ? "a list"
         : cJSON_IsObject(v) ? "an object"
         : cJSON_IsTrue(v) ? "true"
         : cJSON_IsFalse(v) ? "false"
         : cJSON_IsNull(v) ? "null"
                            : "a number";
}

/* Walks one instance (nested lists of numbers) of shape dims[0..nd) into
 * out; the path (e.g. "instances[3][0][1]") names where it went wrong.  A
 * number float32 cannot hold is an error, as in TF Serving: beyond its
 * range, or a whole number of int64's range that it would round (above
 * 2^24: token ids). */
static int read_values(const cJSON *v, const int64_t *dims, int nd, float **out, char *why, size_t n,
                       const char *path) {
  if (nd == 0) {
    if (!cJSON_IsNumber(v)) {
      snprintf(why, n, "%s is %s, not a number", path, json_kind(v));
      return -1;
    }
    double d = v->valuedouble;
    if (!(fabs(d) <= FLT_MAX)) {
      snprintf(why, n, "%s is %g, beyond float32's range (the model's inputs are float32)", path, d);
      return -1;
    }
    if (d == floor(d) && fabs(d) < 0x1p63 && (double)(float)d != d) { /* TF's rule for int64 literals */
      snprintf(why, n, "%s is %.17g, a whole number float32 cannot hold exactly (the nearest is %.9g)", path, d,
               (double)(float)d);
      return -1;
    }
    *(*out)++ = (float)d;
    return 0;
  }
  if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != dims[0]) {
    char got[32];
    if (cJSON_IsArray(v)) snprintf(got, sizeof got, "a list of %d", cJSON_GetArraySize(v));
    snprintf(why, n, "%s should be a list of %lld, got %s", path, (long long)dims[0],
             cJSON_IsArray(v) ? got : json_kind(v));
    return -1;
  }
  int i = 0;
  for (const cJSON *e = v->child; e; e = e->next, i++) {
    char sub[256];
    snprintf(sub, sizeof sub, "%s[%d]", path, i);
    if (read_values(e, dims + 1, nd - 1, out, why, n, sub)) return -1;
  }
  return 0;
}

/* An output value: a number, or TF Serving's NaN, Infinity and -Infinity
 * (which cJSON would write as null). */
static cJSON *json_number(float x) {
  if (isnan(x)) return cJSON_CreateRaw("NaN");
  if (isinf(x)) return cJSON_CreateRaw(x > 0 ? "Infinity" : "-Infinity");
  return cJSON_CreateNumber((double)x);
}

static cJSON *write_values(const float **v, const int64_t *dims, int nd) {
  if (nd == 0) return json_number(*(*v)++);
  cJSON *a = cJSON_CreateArray();
  for (int64_t i = 0; i < dims[0]; i++) cJSON_AddItemToArray(a, write_values(v, dims + 1, nd - 1));
  return a;
}

static void free_job(job *j) {
  for (int k = 0; k < MAX_IO; k++) {
    free(j->x[k]);
    free(j->y[k]);
    j->x[k] = j->y[k] = NULL;
  }
}

/* The model's inputs (or outputs), named, for errors. */
static const char *io_names(const io_spec *io, int n, char *buf, size_t len) {
  buf[0] = '\0';
  for (int k = 0; k < n; k++) {
    char s[128];
    snprintf(buf + strlen(buf), len - strlen(buf), "%s'%s' %s", k ? ", " : "", io[k].name,
             lunet_shape_str(io[k].ndim, io[k].shape, s, sizeof s));
  }
  return buf;
}

/* Input k of the model in the JSON object o, or NULL with `why` set;
 * members that name no input are an error too. */
static const cJSON *member(const char *model, const signature *s, const cJSON *o, int k, const char *where, char *why, size_t n) {
  for (const cJSON *e = o->child; e; e = e->next) {
    bool known = false;
    for (int i = 0; i < s->nin; i++) known = known || (e->string && !strcmp(e->string, s->in[i].name));
    if (!known) {
      snprintf(why, n, "%s has '%s', which is not an input of model '%s'", where, e->string ? e->string : "?",
               model);
      return NULL;
    }
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, s->in[k].name);
  if (!v) snprintf(why, n, "%s has no input '%s'", where, s->in[k].name);
  return v;
}

/* The request's samples into j->x (one buffer per input); 0, or -1 with
 * `why` set.  Rows: instances[i] is the sample (one input) or {name:
 * sample}.  Columns: inputs is the list of samples (one input) or {name:
 * list}. */
static int read_request(const char *model, const signature *s, const cJSON *inst, const cJSON *inputs, job *j, char *why, size_t n) {
  const cJSON *lists[MAX_IO] = {0};
  int64_t count = -1;
  if (inst) {
    if (!cJSON_IsArray(inst) || cJSON_GetArraySize(inst) == 0) {
      snprintf(why, n, "\"instances\" must be a non-empty list");
      return -1;
    }
    count = cJSON_GetArraySize(inst);
  } else if (cJSON_IsArray(inputs)) {
    if (s->nin != 1) {
      snprintf(why, n, "model '%s' has %d inputs: give \"inputs\" as an object {\"%s\": [...], ...}", model, s->nin,
               s->in[0].name);
      return -1;
    }
    lists[0] = inputs;
  } else if (cJSON_IsObject(inputs)) {
    for (int k = 0; k < s->nin; k++)
      if (!(lists[k] = member(model, s, inputs, k, "\"inputs\"", why, n))) return -1;
  } else {
    snprintf(why, n, "\"inputs\" must be a list of samples or an object of lists");
    return -1;
  }
  for (int k = 0; !inst && k < s->nin; k++) {
    int64_t c = cJSON_IsArray(lists[k]) ? cJSON_GetArraySize(lists[k]) : -1;
    if (c < 1) {
      snprintf(why, n, "\"inputs\"%s%s must be a non-empty list of samples", s->nin > 1 ? "." : "",
               s->nin > 1 ? s->in[k].name : "");
      return -1;
    }
    if (count >= 0 && c != count) {
      snprintf(why, n, "\"inputs\".%s has %lld samples, \"inputs\".%s %lld: every input needs one per sample",
               s->in[k].name, (long long)c, s->in[0].name, (long long)count);
      return -1;
    }
    count = c;
  }
  j->n = count;
  float *w[MAX_IO];
  for (int k = 0; k < s->nin; k++) {
    if (!(w[k] = j->x[k] = malloc(sizeof(float) * (size_t)(count * s->in[k].per)))) {
      snprintf(why, n, "out of memory for %lld samples", (long long)count);
      return -2;
    }
  }
  char path[160];
  if (inst) {
    int i = 0;
    for (const cJSON *e = inst->child; e; e = e->next, i++) {
      snprintf(path, sizeof path, "instances[%d]", i);
      if (!cJSON_IsObject(e)) {
        if (s->nin != 1) {
          snprintf(why, n, "%s: model '%s' has %d inputs: give each instance as {\"%s\": ..., ...}", path, model,
                   s->nin, s->in[0].name);
          return -1;
        }
        if (read_values(e, s->in[0].shape, s->in[0].ndim, &w[0], why, n, path)) return -1;
        continue;
      }
      for (int k = 0; k < s->nin; k++) {
        const cJSON *v = member(model, s, e, k, path, why, n);
        char sub[224];
        snprintf(sub, sizeof sub, "%s.%s", path, s->in[k].name);
        if (!v || read_values(v, s->in[k].shape, s->in[k].ndim, &w[k], why, n, sub)) return -1;
      }
    }
    return 0;
  }
  for (int k = 0; k < s->nin; k++) {
    int i = 0;
    for (const cJSON *e = lists[k]->child; e; e = e->next, i++) {
      if (s->nin > 1) snprintf(path, sizeof path, "inputs.%s[%d]", s->in[k].name, i);
      else snprintf(path, sizeof path, "inputs[%d]", i);
      if (read_values(e, s->in[k].shape, s->in[k].ndim, &w[k], why, n, path)) return -1;
    }
  }
  return 0;
}

/* The answer: "predictions" (rows) or "outputs" (columns), one output as
 * it is, several by name. */
static cJSON *answer(const signature *s, const job *j, bool rows) {
  cJSON *resp = cJSON_CreateObject();
  if (s->nout == 1 || !rows) {
    cJSON *holder = s->nout == 1 ? NULL : cJSON_CreateObject();
    for (int k = 0; k < s->nout; k++) {
      int64_t shape[LUNET_MAX_DIMS + 1] = {j->n};
      memcpy(shape + 1, s->out[k].shape, sizeof *shape * (size_t)s->out[k].ndim);
      const float *r = j->y[k];
      cJSON *v = write_values(&r, shape, s->out[k].ndim + 1);
      if (holder) cJSON_AddItemToObject(holder, s->out[k].name, v);
      else cJSON_AddItemToObject(resp, rows ? "predictions" : "outputs", v);
    }
    if (holder) cJSON_AddItemToObject(resp, "outputs", holder);
    return resp;
  }
  cJSON *list = cJSON_CreateArray();
  for (int64_t i = 0; i < j->n; i++) {
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; k < s->nout; k++) {
      const float *r = j->y[k] + i * s->out[k].per;
      cJSON_AddItemToObject(o, s->out[k].name, write_values(&r, s->out[k].shape, s->out[k].ndim));
    }
    cJSON_AddItemToArray(list, o);
  }
  cJSON_AddItemToObject(resp, "predictions", list);
  return resp;
}

/* The status a failed model call answers: the request's values (an id
 * outside an Embedding's table) 400, memory 503, the rest 500. */
static unsigned model_error_status(lunet_status st) {
  return st == LUNET_ERR_ARG || st == LUNET_ERR_SHAPE ? 400 : st == LUNET_ERR_NOMEM ? 503 : 500;
}

/* The request key ("instances", "inputs", "signature_name") that obj
 * names more than once, or NULL: JSON readers differ on which of two
 * counts, and cJSON's lookup took the first.  One pass, whatever the body. */
static const char *key_twice(const cJSON *obj) {
  static const char *const keys[] = {"instances", "inputs", "signature_name"};
  int seen[3] = {0};
  for (const cJSON *a = obj->child; a; a = a->next)
    for (int k = 0; k < 3; k++)
      if (a->string && !strcmp(a->string, keys[k]) && ++seen[k] > 1) return keys[k];
  return NULL;
}

/* POST /v1/models/NAME:predict */
static enum MHD_Result predict(struct MHD_Connection *c, served *m, const char *body, size_t len) {
  const char *end = NULL;
  cJSON *req = cJSON_ParseWithLengthOpts(body, len, &end, false);
  size_t at = end ? (size_t)(end - body) : 0;
  if (req) /* rapidjson's rule: nothing but spaces after the value */
    while (at < len && (body[at] == ' ' || body[at] == '\t' || body[at] == '\r' || body[at] == '\n')) at++;
  if (!req || at < len) {
    cJSON_Delete(req);
    /* the bytes there, printable ASCII as it is and the rest as \xNN (raw
     * bytes made the error itself invalid JSON) */
    char near[64] = "";
    if (at < len) {
      size_t k = (size_t)snprintf(near, sizeof near, ", near '");
      for (size_t i = at; i < len && i < at + 12; i++) {
        unsigned char b = (unsigned char)body[i];
        k += (size_t)snprintf(near + k, sizeof near - k, b >= 32 && b < 127 && b != '\\' ? "%c" : "\\x%02x", b);
      }
      snprintf(near + k, sizeof near - k, "'");
    }
    return send_error(c, 400, "the body is not %s (at byte %zu of %zu%s); send {\"instances\": [...]} or "
                      "{\"inputs\": [...]}", req ? "one JSON value: more follows it" : "valid JSON", at, len, near);
  }
  if (!cJSON_IsObject(req)) {
    cJSON_Delete(req);
    return send_error(c, 400, "the body is JSON but not an object (send {\"instances\": [...]} or "
                      "{\"inputs\": [...]})");
  }
  signature s;
  pthread_mutex_lock(&m->mu);
  s = m->sig;
  pthread_mutex_unlock(&m->mu);
  const cJSON *inst = cJSON_GetObjectItemCaseSensitive(req, "instances");
  const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(req, "inputs");
  const cJSON *sig = cJSON_GetObjectItemCaseSensitive(req, "signature_name");
  char names[512], why[512] = "";
  const char *dup = key_twice(req);
  if (dup)
    snprintf(why, sizeof why, "the body names \"%s\" twice; give it once", dup);
  else if (sig && !(cJSON_IsString(sig) && (!*sig->valuestring || !strcmp(sig->valuestring, "serving_default"))))
    snprintf(why, sizeof why, "model '%s' has one signature, \"serving_default\"; \"signature_name\" is %s%s%s",
             m->name, cJSON_IsString(sig) ? "\"" : "", cJSON_IsString(sig) ? sig->valuestring : json_kind(sig),
             cJSON_IsString(sig) ? "\"" : "");
  else if (inst && inputs)
    snprintf(why, sizeof why, "give one of \"instances\" (rows) and \"inputs\" (columns), not both");
  else if (!inst && !inputs)
    snprintf(why, sizeof why, "no \"instances\" (or \"inputs\"): a non-empty list of samples expected (model '%s' "
             "takes %s)", m->name, io_names(s.in, s.nin, names, sizeof names));
  if (*why) {
    cJSON_Delete(req);
    return send_error(c, 400, "%s", why);
  }
  job j = {0};
  int bad = read_request(m->name, &s, inst, inputs, &j, why, sizeof why);
  cJSON_Delete(req);
  if (bad) {
    free_job(&j);
    if (bad == -2) return send_error(c, 503, "%s", why);
    return send_error(c, 400, "%s (model '%s' takes %s)", why, m->name, io_names(s.in, s.nin, names, sizeof names));
  }
  pthread_mutex_lock(&m->mu);
  if (m->queued >= max_queue) {
    pthread_mutex_unlock(&m->mu);
    free_job(&j);
    retry_later = true;
    return send_error(c, 503, "model '%s' has %d requests waiting (--max-queue): retry shortly", m->name, max_queue);
  }
  if (m->tail) m->tail->next = &j;
  else m->head = &j;
  m->tail = &j;
  m->queued++;
  pthread_cond_signal(&m->work);
  while (!j.done) pthread_cond_wait(&m->done, &m->mu);
  pthread_mutex_unlock(&m->mu);
  if (j.status) {
    free_job(&j);
    return send_error(c, model_error_status(j.status), "model '%s': %s", m->name, j.err);
  }
  cJSON *resp = answer(&s, &j, inst != NULL);
  free_job(&j);
  return send_json(c, 200, resp);
}

/* ---- the batching worker ---- */

static void timeout_at(struct timespec *t, double seconds) {
  clock_gettime(CLOCK_REALTIME, t);
  long ns = t->tv_nsec + (long)(seconds * 1e9);
  t->tv_sec += ns / 1000000000L;
  t->tv_nsec = ns % 1000000000L;
}

/* Runs the jobs batch[0..n) as one model call and fills their outputs (or
 * their status and error).  The batch is padded with zero rows to a power
 * of two (up to --max-batch; a larger single request runs as it is), as TF
 * Serving's allowed_batch_sizes: a handful of shapes, whose buffers the
 * backend's pool reuses, instead of fresh memory (page faults) for every
 * size. */
static void call_model(served *m, job **batch, int n, int64_t total) {
  int64_t rows = 1;
  while (rows < total) rows *= 2;
  if (rows > max_batch) rows = total > max_batch ? total : max_batch;
  lunet_tensor *t[MAX_IO] = {0}, *y[MAX_IO] = {0};
  float *out[MAX_IO] = {0};
  lunet_status st = LUNET_OK;
  pthread_mutex_lock(&m->mu); /* the model pointer (a reload swaps it) and what it takes */
  lunet_model *model = lunet_model_retain(m->model);
  const signature s = m->sig;
  pthread_mutex_unlock(&m->mu);
  for (int k = 0; k < s.nin && !st; k++) {
    const io_spec *in = &s.in[k];
    float *x = calloc((size_t)(rows * in->per), sizeof *x);
    if (!x) {
      st = LUNET_ERR_NOMEM;
      break;
    }
    for (int i = 0, at = 0; i < n; at += (int)batch[i]->n, i++)
      memcpy(x + (int64_t)at * in->per, batch[i]->x[k], sizeof *x * (size_t)(batch[i]->n * in->per));
    int64_t shape[LUNET_MAX_DIMS + 1] = {rows};
    memcpy(shape + 1, in->shape, sizeof *shape * (size_t)in->ndim);
    if (!(t[k] = lunet_tensor_from_data(m->ctx, LUNET_F32, in->ndim + 1, shape, x))) st = lunet_ctx_status(m->ctx);
    free(x);
  }
  if (!st) st = lunet_model_predict(m->ctx, model, s.nin, t, y);
  for (int k = 0; k < s.nout && !st; k++) {
    size_t bytes = sizeof(float) * (size_t)(rows * s.out[k].per);
    if (!(out[k] = malloc(bytes))) st = LUNET_ERR_NOMEM;
    else st = lunet_tensor_read(m->ctx, y[k], out[k], bytes);
  }
  char err[512];
  snprintf(err, sizeof err, "%s",
           st == LUNET_ERR_NOMEM && !lunet_ctx_error(m->ctx)[0] ? "out of memory" : lunet_ctx_error(m->ctx));
  lunet_clear_error(m->ctx);
  for (int k = 0; k < MAX_IO; k++) {
    lunet_tensor_release(t[k]);
    lunet_tensor_release(y[k]);
  }
  lunet_model_release(model);
  for (int i = 0, at = 0; i < n; at += (int)batch[i]->n, i++) {
    job *j = batch[i];
    j->status = st;
    for (int k = 0; k < s.nout && !j->status; k++) {
      size_t bytes = sizeof(float) * (size_t)(j->n * s.out[k].per);
      if ((j->y[k] = malloc(bytes))) memcpy(j->y[k], out[k] + (int64_t)at * s.out[k].per, bytes);
      else j->status = LUNET_ERR_NOMEM;
    }
    snprintf(j->err, sizeof j->err, "%s", j->status && !st ? "out of memory" : err);
  }
  for (int k = 0; k < MAX_IO; k++) free(out[k]);
  pthread_mutex_lock(&m->mu);
  m->batches++;
  m->batch_samples += (unsigned long long)total;
  int b = 0;
  for (int64_t v = total; v > 1 && b < 7; v = (v + 1) / 2) b++;
  m->batch_sizes[b]++;
  pthread_mutex_unlock(&m->mu);
}

/* The jobs batch[0..n) answered.  A merged call that fails for the values
 * of one request (an Embedding's id out of range) runs each request again
 * alone, so that only that one fails, with its own error. */
static void run_batch(served *m, job **batch, int n, int64_t total) {
  call_model(m, batch, n, total);
  if (n > 1 && batch[0]->status && batch[0]->status != LUNET_ERR_NOMEM)
    for (int i = 0; i < n; i++) call_model(m, batch + i, 1, batch[i]->n);
  pthread_mutex_lock(&m->mu);
  for (int i = 0; i < n; i++) batch[i]->done = true;
  pthread_cond_broadcast(&m->done);
  pthread_mutex_unlock(&m->mu);
}

static void *worker_main(void *arg) {
  served *m = arg;
  job **batch = malloc(sizeof *batch * (size_t)(max_batch + 1));
  pthread_mutex_lock(&m->mu);
  for (;;) {
    while (!m->stop && !m->head) pthread_cond_wait(&m->work, &m->mu);
    if (!m->head) break; /* stopping, nothing left */
    /* the first request, then whatever comes before the timeout, up to
     * max_batch samples (a request is never split) */
    struct timespec until;
    timeout_at(&until, batch_timeout_ms / 1000.0);
    int n = 0;
    int64_t total = 0;
    for (;;) {
      while (m->head && n <= max_batch && (n == 0 || total + m->head->n <= max_batch)) {
        job *j = m->head;
        m->head = j->next;
        if (!m->head) m->tail = NULL;
        m->queued--;
        batch[n++] = j;
        total += j->n;
      }
      if (total >= max_batch || m->head || m->stop || batch_timeout_ms == 0) break;
      /* wait only for requests already on their way (arrived, still being
       * read or parsed): a lone client is never kept waiting */
      if (m->pending <= n + m->queued) break;
      if (pthread_cond_timedwait(&m->work, &m->mu, &until) == ETIMEDOUT) {
        if (!m->head) break;
      }
    }
    pthread_mutex_unlock(&m->mu);
    run_batch(m, batch, n, total);
    pthread_mutex_lock(&m->mu);
  }
  pthread_mutex_unlock(&m->mu);
  free(batch);
  return NULL;
}

static cJSON *dims_json(int nd, const int64_t *s) {
  cJSON *shape = cJSON_CreateObject(), *dims = cJSON_CreateArray();
  cJSON *batch = cJSON_CreateObject();
  cJSON_AddStringToObject(batch, "size", "-1");
  cJSON_AddItemToArray(dims, batch);
  for (int i = 0; i < nd; i++) {
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)s[i]);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "size", v);
    cJSON_AddItemToArray(dims, d);
  }
  cJSON_AddItemToObject(shape, "dim", dims);
  return shape;
}

static cJSON *tensor_info(const char *name, int nd, const int64_t *s) {
  cJSON *t = cJSON_CreateObject();
  cJSON_AddStringToObject(t, "dtype", "DT_FLOAT");
  cJSON_AddItemToObject(t, "tensor_shape", dims_json(nd, s));
  cJSON_AddStringToObject(t, "name", name);
  return t;
}

static enum MHD_Result metadata(struct MHD_Connection *c, served *m) {
  pthread_mutex_lock(&m->mu);
  const signature s = m->sig;
  pthread_mutex_unlock(&m->mu);
  cJSON *o = cJSON_CreateObject(), *spec = cJSON_CreateObject();
  cJSON_AddStringToObject(spec, "name", m->name);
  cJSON_AddStringToObject(spec, "signature_name", "");
  cJSON_AddStringToObject(spec, "version", "1");
  cJSON_AddItemToObject(o, "model_spec", spec);
  cJSON *sig = cJSON_CreateObject(), *inputs = cJSON_CreateObject(), *outputs = cJSON_CreateObject();
  for (int k = 0; k < s.nin; k++)
    cJSON_AddItemToObject(inputs, s.in[k].name, tensor_info(s.in[k].name, s.in[k].ndim, s.in[k].shape));
  for (int k = 0; k < s.nout; k++)
    cJSON_AddItemToObject(outputs, s.out[k].name, tensor_info(s.out[k].name, s.out[k].ndim, s.out[k].shape));
  cJSON_AddItemToObject(sig, "inputs", inputs);
  cJSON_AddItemToObject(sig, "outputs", outputs);
  cJSON_AddStringToObject(sig, "method_name", "tensorflow/serving/predict");
  cJSON *defs = cJSON_CreateObject(), *wrap = cJSON_CreateObject(), *meta = cJSON_CreateObject();
  cJSON_AddItemToObject(defs, "serving_default", sig);
  cJSON_AddItemToObject(wrap, "signature_def", defs);
  cJSON_AddItemToObject(meta, "signature_def", wrap);
  pthread_mutex_lock(&m->mu); /* the model pointer (a reload swaps it) */
  int nclasses = lunet_model_class_count(m->model);
  if (nclasses > 0) { /* the model's own class names (model.class_names in Lua) */
    cJSON *names = cJSON_CreateArray();
    for (int k = 0; k < nclasses; k++) cJSON_AddItemToArray(names, cJSON_CreateString(lunet_model_class_name(m->model, k)));
    cJSON_AddItemToObject(meta, "class_names", names);
  }
  pthread_mutex_unlock(&m->mu);
  cJSON_AddItemToObject(o, "metadata", meta);
  return send_json(c, 200, o);
}

static enum MHD_Result status_of(struct MHD_Connection *c, served *m) {
  (void)m;
  cJSON *o = cJSON_CreateObject(), *list = cJSON_CreateArray(), *v = cJSON_CreateObject();
  cJSON *st = cJSON_CreateObject();
  cJSON_AddStringToObject(v, "version", "1");
  cJSON_AddStringToObject(v, "state", "AVAILABLE");
  cJSON_AddStringToObject(st, "error_code", "OK");
  cJSON_AddStringToObject(st, "error_message", "");
  cJSON_AddItemToObject(v, "status", st);
  cJSON_AddItemToArray(list, v);
  cJSON_AddItemToObject(o, "model_version_status", list);
  return send_json(c, 200, o);
}

/* ---- requests ---- */

typedef struct body {
  char *data;
  size_t len, cap;
  bool too_big;
  double start;    /* the request's arrival */
  served *counted; /* the model whose pending count includes this request */
} body;

static void uncount(body *b) {
  if (!b->counted) return;
  pthread_mutex_lock(&b->counted->mu);
  b->counted->pending--;
  pthread_mutex_unlock(&b->counted->mu);
  b->counted = NULL;
}

/* GET /metrics: Prometheus's text format. */
static enum MHD_Result metrics(struct MHD_Connection *c) {
  static const char *codes[6] = {"200", "400", "413", "500", "503", "other"};
  size_t cap = 8192 + (size_t)nmodels * 4096, len = 0;
  char *t = malloc(cap);
  if (!t) return MHD_NO;
#define OUT(...) (len += (size_t)snprintf(t + len, len < cap ? cap - len : 0, __VA_ARGS__))
  OUT("# HELP lunet_requests_total Predict requests answered, by model and status.\n"
      "# TYPE lunet_requests_total counter\n");
  for (int i = 0; i < nmodels; i++) {
    served *m = &models[i];
    pthread_mutex_lock(&m->mu);
    for (int k = 0; k < 6; k++)
      OUT("lunet_requests_total{model=\"%s\",code=\"%s\"} %lu\n", m->name, codes[k], m->requests[k]);
    pthread_mutex_unlock(&m->mu);
  }
  OUT("# HELP lunet_request_seconds Time from a predict request's arrival to its answer.\n"
      "# TYPE lunet_request_seconds histogram\n");
  for (int i = 0; i < nmodels; i++) {
    served *m = &models[i];
    pthread_mutex_lock(&m->mu);
    unsigned long sum = 0;
    for (int b = 0; b < NBUCKETS; b++) {
      sum += m->latency[b];
      OUT("lunet_request_seconds_bucket{model=\"%s\",le=\"%g\"} %lu\n", m->name, latency_bounds[b], sum);
    }
    sum += m->latency[NBUCKETS];
    OUT("lunet_request_seconds_bucket{model=\"%s\",le=\"+Inf\"} %lu\n", m->name, sum);
    OUT("lunet_request_seconds_sum{model=\"%s\"} %.6f\nlunet_request_seconds_count{model=\"%s\"} %lu\n", m->name,
        m->latency_sum, m->name, sum);
    pthread_mutex_unlock(&m->mu);
  }
  OUT("# HELP lunet_batch_size Samples per model call (dynamic batching).\n# TYPE lunet_batch_size histogram\n");
  for (int i = 0; i < nmodels; i++) {
    served *m = &models[i];
    pthread_mutex_lock(&m->mu);
    unsigned long sum = 0;
    for (int b = 0; b < 7; b++) {
      sum += m->batch_sizes[b];
      OUT("lunet_batch_size_bucket{model=\"%s\",le=\"%d\"} %lu\n", m->name, 1 << b, sum);
    }
    sum += m->batch_sizes[7];
    OUT("lunet_batch_size_bucket{model=\"%s\",le=\"+Inf\"} %lu\nlunet_batch_size_sum{model=\"%s\"} %llu\n"
        "lunet_batch_size_count{model=\"%s\"} %lu\n",
        m->name, sum, m->name, m->batch_samples, m->name, m->batches);
    pthread_mutex_unlock(&m->mu);
  }
  OUT("# HELP lunet_queue_depth Requests waiting for their model.\n# TYPE lunet_queue_depth gauge\n");
  for (int i = 0; i < nmodels; i++) {
    pthread_mutex_lock(&models[i].mu);
    OUT("lunet_queue_depth{model=\"%s\"} %d\n", models[i].name, models[i].queued);
    pthread_mutex_unlock(&models[i].mu);
  }
  OUT("# HELP lunet_model_reloads_total Reloads on SIGHUP, and those that failed (the old model kept).\n"
      "# TYPE lunet_model_reloads_total counter\n");
  for (int i = 0; i < nmodels; i++) {
    pthread_mutex_lock(&models[i].mu);
    OUT("lunet_model_reloads_total{model=\"%s\",result=\"ok\"} %lu\n"
        "lunet_model_reloads_total{model=\"%s\",result=\"failed\"} %lu\n",
        models[i].name, models[i].reloads, models[i].name, models[i].reload_failures);
    pthread_mutex_unlock(&models[i].mu);
  }
#undef OUT
  if (len >= cap) len = cap - 1;
  struct MHD_Response *r = MHD_create_response_from_buffer(len, t, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
  enum MHD_Result ok = MHD_queue_response(c, 200, r);
  MHD_destroy_response(r);
  return ok;
}

/* A model's URL taken apart: /v1/models/NAME[/versions/N|/labels/L][REST],
 * REST being "", "/metadata" or ":VERB" (TF Serving's paths). */
typedef struct model_url {
  served *m;           /* NULL: no model of that name */
  const char *name;    /* and its length */
  size_t n;
  const char *version; /* N or L, or NULL; and its length */
  size_t vn;
  bool label;
  const char *rest;
} model_url;

static bool parse_model_url(const char *url, model_url *u) {
  const char *prefix = "/v1/models/";
  if (strncmp(url, prefix, strlen(prefix))) return false;
  *u = (model_url){.name = url + strlen(prefix)};
  u->n = strcspn(u->name, ":/");
  u->m = find_model(u->name, u->n);
  u->rest = u->name + u->n;
  const char *kinds[2] = {"/versions/", "/labels/"};
  for (int k = 0; k < 2; k++)
    if (!strncmp(u->rest, kinds[k], strlen(kinds[k]))) {
      u->version = u->rest + strlen(kinds[k]);
      u->vn = strcspn(u->version, ":/");
      u->label = k == 1;
      u->rest = u->version + u->vn;
    }
  return true;
}

/* Open requests (headers read, answer not yet sent), and whether SIGTERM
 * came: the server stops once the open ones are answered. */
static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static int open_requests;
static bool stopping;

static enum MHD_Result route(struct MHD_Connection *c, const char *url, const char *method, body *b) {
  bool post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
  if (!strcmp(url, "/healthz")) {
    if (!get) return send_error(c, 405, "%s /healthz: use GET", method);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return send_json(c, 200, o);
  }
  if (!strcmp(url, "/metrics")) {
    if (!get) return send_error(c, 405, "%s /metrics: use GET", method);
    return metrics(c);
  }
  model_url u;
  if (!parse_model_url(url, &u))
    return send_error(c, 404, "no such path: %s (try /v1/models/NAME:predict, /v1/models/NAME, /healthz)", url);
  served *m = u.m;
  if (!m) {
    char list[512] = "";
    for (int i = 0; i < nmodels; i++) {
      strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
      strncat(list, models[i].name, sizeof list - strlen(list) - 1);
    }
    return send_error(c, 404, "no model '%.*s' (served: %s)", (int)u.n, u.name, list);
  }
  if (u.version && (u.label || u.vn != 1 || *u.version != '1'))
    return send_error(c, 404, "model '%s' has no %s '%.*s': lunet serve serves one version of each model, "
                      "version 1 (/v1/models/%s or /v1/models/%s/versions/1)", m->name, u.label ? "label" : "version",
                      (int)u.vn, u.version, m->name, m->name);
  const char *rest = u.rest;
  if (!strcmp(rest, ":predict")) {
    if (!post) return send_error(c, 405, "%s %s: use POST", method, url);
    enum MHD_Result r = b->too_big ? send_error(c, 413, "the body is over %zu bytes (--max-body)", max_body)
                                   : predict(c, m, b->data ? b->data : "", b->len);
    uncount(b);
    count_request(m, last_status, now_s() - b->start);
    return r;
  }
  if (!strcmp(rest, ":classify") || !strcmp(rest, ":regress"))
    return send_error(c, 501, "%s: lunet serve answers :predict only (TF Serving's %s takes tf.Example inputs); "
                      "POST /v1/models/%s:predict", url, rest, m->name);
  if (*rest && strcmp(rest, "/metadata")) return send_error(c, 404, "no such path: %s", url);
  if (!get) return send_error(c, 405, "%s %s: use GET", method, url);
  return *rest ? metadata(c, m) : status_of(c, m);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state) {
  (void)cls, (void)version;
  body *b = *state;
  if (!b) { /* the headers: make the body's buffer, answer on a later call */
    if (!(b = calloc(1, sizeof *b))) return MHD_NO;
    b->start = now_s();
    *state = b;
    pthread_mutex_lock(&open_mu);
    open_requests++;
    bool late = stopping;
    pthread_mutex_unlock(&open_mu);
    if (late) /* a keep-alive connection's next request, after SIGTERM (MHD closes it after) */
      return send_error(c, 503, "the server is stopping");
    model_url u;
    served *m = !strcmp(method, "POST") && parse_model_url(url, &u) && !strcmp(u.rest, ":predict") ? u.m : NULL;
    if (m) { /* on its way: the batching worker may wait for it */
      pthread_mutex_lock(&m->mu);
      m->pending++;
      pthread_mutex_unlock(&m->mu);
      b->counted = m;
    }
    /* a body declared over the limit is refused now, before the client
     * sends it (no "100 Continue") */
    const char *declared = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (declared && strtoull(declared, NULL, 10) > max_body) {
      b->too_big = true;
      return route(c, url, method, b);
    }
    return MHD_YES;
  }
  if (*upload_size) {
    if (!b->too_big && b->len + *upload_size > max_body) b->too_big = true;
    if (!b->too_big) {
      if (b->len + *upload_size + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + *upload_size + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return MHD_NO;
        b->data = d;
        b->cap = cap;
      }
      memcpy(b->data + b->len, upload, *upload_size);
      b->len += *upload_size;
      b->data[b->len] = '\0';
    }
    *upload_size = 0; /* consumed (or dropped, when over the limit) */
    return MHD_YES;
  }
  return route(c, url, method, b);
}

static void on_done(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode code) {
  (void)cls, (void)c, (void)code;
  body *b = *state;
  if (b) {
    uncount(b); /* a client that left before its request was read */
    free(b->data);
    free(b);
    pthread_mutex_lock(&open_mu);
    open_requests--;
    pthread_mutex_unlock(&open_mu);
  }
  *state = NULL;
}

/* ---- start ---- */

/* Contexts of replaced models: kept to the end (a batch in flight may still
 * use the model a context made). */
typedef struct retired {
  lunet_ctx *ctx;
  struct retired *next;
} retired;
static retired *retired_ctxs;

/* The inputs and outputs of model `model` into s; 0, or -1 with `why`. */
static int read_signature(lunet_model *model, signature *s, char *why, size_t n) {
  s->nin = lunet_model_input_count(model);
  s->nout = lunet_model_output_count(model);
  if (s->nin > MAX_IO || s->nout > MAX_IO) {
    snprintf(why, n, "the model has %d inputs and %d outputs; lunet serve serves at most %d of each", s->nin, s->nout,
             MAX_IO);
    return -1;
  }
  for (int k = 0; k < s->nin + s->nout; k++) {
    io_spec *io = k < s->nin ? &s->in[k] : &s->out[k - s->nin];
    int id = k < s->nin ? lunet_model_input_id(model, k) : lunet_model_output_id(model, k - s->nin);
    io->ndim = lunet_model_value_shape(model, id, io->shape);
    snprintf(io->name, sizeof io->name, "%s", lunet_model_value_name(model, id));
    io->per = 1;
    for (int d = 0; d < io->ndim; d++) io->per *= io->shape[d];
  }
  return 0;
}

/* One sample of zeros through the model (the zero rows serve pads batches
 * with): a model that cannot predict at all (a Normalization never
 * adapted) is refused at load, not answered with a 400 that blames every
 * client. */
static int trial_predict(lunet_ctx *ctx, lunet_model *model, const signature *s, char *why, size_t n) {
  lunet_tensor *t[MAX_IO] = {0}, *y[MAX_IO] = {0};
  lunet_status st = LUNET_OK;
  for (int k = 0; k < s->nin && !st; k++) {
    int64_t shape[LUNET_MAX_DIMS + 1] = {1};
    memcpy(shape + 1, s->in[k].shape, sizeof *shape * (size_t)s->in[k].ndim);
    float *zeros = calloc((size_t)s->in[k].per, sizeof *zeros);
    if (!zeros) st = LUNET_ERR_NOMEM;
    else if (!(t[k] = lunet_tensor_from_data(ctx, LUNET_F32, s->in[k].ndim + 1, shape, zeros))) st = lunet_ctx_status(ctx);
    free(zeros);
  }
  if (!st) st = lunet_model_predict(ctx, model, s->nin, t, y);
  if (st) snprintf(why, n, "the model cannot predict (tried on one sample of zeros): %s", lunet_ctx_error(ctx));
  lunet_clear_error(ctx);
  for (int k = 0; k < MAX_IO; k++) {
    lunet_tensor_release(t[k]);
    lunet_tensor_release(y[k]);
  }
  return st ? -1 : 0;
}

/* Whether a reloaded model answers the requests the served one did: the
 * same shapes, and the same names where requests or answers use them
 * (several inputs, several outputs; a lone one's name may change, as
 * lunet's automatic names do from one script to the next). */
static bool same_signature(const signature *a, const signature *b) {
  if (a->nin != b->nin || a->nout != b->nout) return false;
  for (int k = 0; k < a->nin + a->nout; k++) {
    bool in = k < a->nin;
    const io_spec *x = in ? &a->in[k] : &a->out[k - a->nin], *y = in ? &b->in[k] : &b->out[k - a->nin];
    bool named = in ? a->nin > 1 : a->nout > 1;
    if ((named && strcmp(x->name, y->name)) || x->ndim != y->ndim ||
        memcmp(x->shape, y->shape, sizeof *x->shape * (size_t)x->ndim))
      return false;
  }
  return true;
}

/* SIGHUP: the model again from its file, swapped in once loaded; the old
 * one answers meanwhile, and stays if the new file fails. */
static void reload(served *m) {
  lunet_ctx *ctx = lunet_ctx_new();
  lunet_model *fresh = NULL;
  char why[512] = "no context";
  signature now;
  if (ctx && backend_name && lunet_use(ctx, backend_name)) snprintf(why, sizeof why, "%s", lunet_ctx_error(ctx));
  else if (ctx && !(fresh = lunet_model_load(ctx, m->path))) snprintf(why, sizeof why, "%s", lunet_ctx_error(ctx));
  if (fresh) {
    if (read_signature(fresh, &now, why, sizeof why) || trial_predict(ctx, fresh, &now, why, sizeof why)) {
      lunet_model_release(fresh);
      fresh = NULL;
    } else if (!same_signature(&now, &m->sig)) {
      snprintf(why, sizeof why, "its inputs or outputs (names, shapes) differ from the model being served");
      lunet_model_release(fresh);
      fresh = NULL;
    }
  }
  pthread_mutex_lock(&m->mu);
  lunet_model *old = fresh ? m->model : NULL;
  if (fresh) {
    m->model = fresh;
    m->sig = now; /* a lone input's or output's new name */
    m->reloads++;
  } else {
    m->reload_failures++;
  }
  pthread_mutex_unlock(&m->mu);
  if (fresh) {
    lunet_model_release(old); /* a batch that holds it keeps it to its end */
    retired *r = malloc(sizeof *r);
    if (r) *r = (retired){.ctx = ctx, .next = retired_ctxs}, retired_ctxs = r;
    fprintf(stderr, "lunet serve: model '%s' reloaded from %s\n", m->name, m->path);
  } else {
    lunet_ctx_free(ctx);
    fprintf(stderr, "lunet serve: model '%s' not reloaded from %s (%s); the old one goes on\n", m->name, m->path, why);
  }
}

static int usage(const char *why, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *why, ...) {
  if (why) {
    va_list ap;
    va_start(ap, why);
    fprintf(stderr, "lunet serve: ");
    vfprintf(stderr, why, ap);
    fprintf(stderr, "\n");
    va_end(ap);
  }
  fprintf(stderr, "usage: lunet serve --model NAME=PATH [--model NAME=PATH ...] [--port 8501] [--host 127.0.0.1]\n"
                  "                   [--threads N] [--max-body 16MB] [--backend NAME]\n"
                  "                   [--max-batch 64] [--batch-timeout-ms 2] [--max-queue 1024]\n");
  return 2;
}

static size_t parse_size(const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || v <= 0) return 0;
  if (!strcasecmp(end, "k") || !strcasecmp(end, "kb")) v *= 1024;
  else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb")) v *= 1024 * 1024;
  else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb")) v *= 1024.0 * 1024 * 1024;
  else if (*end) return 0;
  return (size_t)v;
}

static int load(served *m, const char *spec, const char *backend) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || !eq[1] || (size_t)(eq - spec) >= sizeof m->name) {
    fprintf(stderr, "lunet serve: --model %s: give NAME=PATH\n", spec);
    return -1;
  }
  snprintf(m->name, sizeof m->name, "%.*s", (int)(eq - spec), spec);
  for (const char *p = m->name; *p; p++)
    if (strchr(":/\"\\", *p) || (unsigned char)*p < 32) {
      fprintf(stderr, "lunet serve: --model %s: a model's name may not hold ':', '/', '\"', '\\' or control "
              "characters (they end it in a URL or a metric's label)\n", spec);
      return -1;
    }
  snprintf(m->path, sizeof m->path, "%s", eq + 1);
  if (find_model(m->name, strlen(m->name))) { /* the models loaded before this one */
    fprintf(stderr, "lunet serve: two models named '%s'\n", m->name);
    return -1;
  }
  if (!(m->ctx = lunet_ctx_new())) return -1;
  if (backend && lunet_use(m->ctx, backend)) {
    fprintf(stderr, "lunet serve: %s\n", lunet_ctx_error(m->ctx));
    return -1;
  }
  if (!(m->model = lunet_model_load(m->ctx, m->path))) {
    fprintf(stderr, "lunet serve: %s: %s\n", m->path, lunet_ctx_error(m->ctx));
    return -1;
  }
  char why[256];
  if (read_signature(m->model, &m->sig, why, sizeof why) || trial_predict(m->ctx, m->model, &m->sig, why, sizeof why)) {
    fprintf(stderr, "lunet serve: %s: %s\n", m->path, why);
    return -1;
  }
  pthread_mutex_init(&m->mu, NULL);
  pthread_cond_init(&m->work, NULL);
  pthread_cond_init(&m->done, NULL);
  if (pthread_create(&m->worker, NULL, worker_main, m)) {
    fprintf(stderr, "lunet serve: cannot start a thread for model '%s'\n", m->name);
    return -1;
  }
  char names[512];
  fprintf(stderr, "lunet serve: model '%s' from %s, input%s %s\n", m->name, m->path, m->sig.nin > 1 ? "s" : "",
          io_names(m->sig.in, m->sig.nin, names, sizeof names));
  return 0;
}

/* A whole-number option's value, from lo to hi (digits only: "8x01" was
 * port 8, "abc" port 0). */
static bool whole(const char *v, long long lo, long long hi, int *out) {
  long long x;
  if (!lunet_env_whole(v, lo, hi, &x)) return false;
  *out = (int)x;
  return true;
}

static const char *const options[] = {"--model",     "--port",      "--host",             "--threads",   "--max-body",
                                      "--backend",   "--max-batch", "--batch-timeout-ms", "--max-queue", NULL};

static int serve_main(int argc, char **argv) {
  const char *host = "127.0.0.1", *specs[MAX_MODELS];
  int port = 8501, threads = 256, nspecs = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(NULL), 0;
    bool known = false;
    for (int k = 0; options[k] && !known; k++) {
      size_t n = strlen(options[k]);
      known = !strcmp(a, options[k]);
      if (!strncmp(a, options[k], n) && a[n] == '=')
        return usage("write '%s %s' (the value after a space), not '%s'", options[k], a + n + 1, a);
    }
    if (!known) return usage("unknown option '%s'", a);
    if (!v) return usage("%s needs a value", a);
    if (!strcmp(a, "--model")) {
      if (nspecs == MAX_MODELS) return usage("too many models");
      specs[nspecs++] = v;
    } else if (!strcmp(a, "--port")) {
      if (!whole(v, 0, 65535, &port)) return usage("--port takes a whole number from 0 to 65535, got '%s'", v);
    } else if (!strcmp(a, "--host")) {
      host = !strcmp(v, "localhost") ? "127.0.0.1" : v;
    } else if (!strcmp(a, "--threads")) {
      if (!whole(v, 1, 1024, &threads)) return usage("--threads takes a whole number from 1 to 1024, got '%s'", v);
    } else if (!strcmp(a, "--max-body")) {
      if (!(max_body = parse_size(v))) return usage("--max-body takes a size such as 16MB, got '%s'", v);
    } else if (!strcmp(a, "--backend")) {
      backend_name = v;
    } else if (!strcmp(a, "--max-batch")) {
      if (!whole(v, 1, 1 << 20, &max_batch))
        return usage("--max-batch takes a whole number from 1 (no merging) to %d, got '%s'", 1 << 20, v);
    } else if (!strcmp(a, "--batch-timeout-ms")) {
      if (!whole(v, 0, 60000, &batch_timeout_ms))
        return usage("--batch-timeout-ms takes a whole number from 0 to 60000, got '%s'", v);
    } else if (!strcmp(a, "--max-queue")) {
      if (!whole(v, 1, 1 << 30, &max_queue)) return usage("--max-queue takes a whole number from 1, got '%s'", v);
    }
    i++;
  }
  if (!nspecs) return usage("no --model given");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  /* before the models load (a typo waited for every model) */
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
    return usage("--host takes an IPv4 address (127.0.0.1, 0.0.0.0) or localhost, got '%s'", host);
  for (int i = 0; i < nspecs; i++) { /* after every option: --backend applies wherever it stands */
    if (load(&models[nmodels], specs[i], backend_name)) return 1;
    nmodels++;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop, NULL); /* every thread; the main one waits for them */
  signal(SIGPIPE, SIG_IGN);
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, (uint16_t)port, NULL, NULL,
      on_request, NULL, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)threads,
      MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "lunet serve: cannot listen on %s:%d (%s)\n", host, port, strerror(errno));
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  printf("lunet serve: listening on http://%s:%u (up to %d connections, a thread each)\n", host,
         info ? info->port : (unsigned)port, threads);
  fflush(stdout);
  int sig;
  while (sigwait(&stop, &sig) == 0 && sig == SIGHUP)
    for (int i = 0; i < nmodels; i++) reload(&models[i]);
  fprintf(stderr, "lunet serve: %s: finishing the requests in flight\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  MHD_quiesce_daemon(d); /* no new connections */
  /* the open requests answered (queued ones included) before the daemon
   * stops: stopping closes every connection, answered or not.  A client
   * that sends nothing is timed out after 30 s (MHD's connection timeout). */
  pthread_mutex_lock(&open_mu);
  stopping = true;
  for (int waited = 0; open_requests > 0 && waited < 40000; waited += 5) {
    pthread_mutex_unlock(&open_mu);
    nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
    pthread_mutex_lock(&open_mu);
  }
  pthread_mutex_unlock(&open_mu);
  MHD_stop_daemon(d);
  for (int i = 0; i < nmodels; i++) {
    served *m = &models[i];
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_broadcast(&m->work);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->worker, NULL);
    lunet_model_release(m->model);
    lunet_ctx_free(m->ctx);
  }
  while (retired_ctxs) {
    retired *r = retired_ctxs;
    retired_ctxs = r->next;
    lunet_ctx_free(r->ctx);
    free(r);
  }
  return 0;
}

int main(int argc, char **argv) { return serve_main(argc, argv); }
