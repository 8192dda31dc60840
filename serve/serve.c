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
  unsigned long reloads, reload_failures;
  int nin, nout;
  io_spec in[MAX_IO], out[MAX_IO];
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

/* Walks one instance (nested lists of numbers) of shape dims[0..nd) into
 * out; the path (e.g. "instances[3][0][1]") names where it went wrong. */
static int read_values(const cJSON *v, const int64_t *dims, int nd, float **out, char *why, size_t n,
                       const char *path) {
  if (nd == 0) {
    if (!cJSON_IsNumber(v)) {
      snprintf(why, n, "%s is %s, not a number", path, cJSON_IsString(v) ? "a string" : cJSON_IsArray(v) ? "a list"
                                                                                       : "not a number");
      return -1;
    }
    *(*out)++ = (float)v->valuedouble;
    return 0;
  }
  if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != dims[0]) {
    snprintf(why, n, "%s should be a list of %lld, got %s%d", path, (long long)dims[0],
             cJSON_IsArray(v) ? "a list of " : "no list: ", cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0);
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

static cJSON *write_values(const float **v, const int64_t *dims, int nd) {
  if (nd == 0) return cJSON_CreateNumber((double)*(*v)++);
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
static const cJSON *member(const served *m, const cJSON *o, int k, const char *where, char *why, size_t n) {
  for (const cJSON *e = o->child; e; e = e->next) {
    bool known = false;
    for (int i = 0; i < m->nin; i++) known = known || (e->string && !strcmp(e->string, m->in[i].name));
    if (!known) {
      char names[512];
      snprintf(why, n, "%s has '%s', which is not an input of model '%s' (its inputs: %s)", where,
               e->string ? e->string : "?", m->name, io_names(m->in, m->nin, names, sizeof names));
      return NULL;
    }
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, m->in[k].name);
  if (!v) snprintf(why, n, "%s has no input '%s'", where, m->in[k].name);
  return v;
}

/* The request's samples into j->x (one buffer per input); 0, or -1 with
 * `why` set.  Rows: instances[i] is the sample (one input) or {name:
 * sample}.  Columns: inputs is the list of samples (one input) or {name:
 * list}. */
static int read_request(served *m, const cJSON *inst, const cJSON *inputs, job *j, char *why, size_t n) {
  const cJSON *lists[MAX_IO] = {0};
  int64_t count = -1;
  if (inst) {
    if (!cJSON_IsArray(inst) || cJSON_GetArraySize(inst) == 0) {
      snprintf(why, n, "\"instances\" must be a non-empty list");
      return -1;
    }
    count = cJSON_GetArraySize(inst);
  } else if (cJSON_IsArray(inputs)) {
    if (m->nin != 1) {
      snprintf(why, n, "model '%s' has %d inputs: give \"inputs\" as an object {\"%s\": [...], ...}", m->name, m->nin,
               m->in[0].name);
      return -1;
    }
    lists[0] = inputs;
  } else if (cJSON_IsObject(inputs)) {
    for (int k = 0; k < m->nin; k++)
      if (!(lists[k] = member(m, inputs, k, "\"inputs\"", why, n))) return -1;
  } else {
    snprintf(why, n, "\"inputs\" must be a list of samples or an object of lists");
    return -1;
  }
  for (int k = 0; !inst && k < m->nin; k++) {
    int64_t c = cJSON_IsArray(lists[k]) ? cJSON_GetArraySize(lists[k]) : -1;
    if (c < 1) {
      snprintf(why, n, "\"inputs\"%s%s must be a non-empty list of samples", m->nin > 1 ? "." : "",
               m->nin > 1 ? m->in[k].name : "");
      return -1;
    }
    if (count >= 0 && c != count) {
      snprintf(why, n, "\"inputs\".%s has %lld samples, \"inputs\".%s %lld: every input needs one per sample",
               m->in[k].name, (long long)c, m->in[0].name, (long long)count);
      return -1;
    }
    count = c;
  }
  j->n = count;
  float *w[MAX_IO];
  for (int k = 0; k < m->nin; k++) {
    if (!(w[k] = j->x[k] = malloc(sizeof(float) * (size_t)(count * m->in[k].per)))) {
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
        if (m->nin != 1) {
          snprintf(why, n, "%s: model '%s' has %d inputs: give each instance as {\"%s\": ..., ...}", path, m->name,
                   m->nin, m->in[0].name);
          return -1;
        }
        if (read_values(e, m->in[0].shape, m->in[0].ndim, &w[0], why, n, path)) return -1;
        continue;
      }
      for (int k = 0; k < m->nin; k++) {
        const cJSON *v = member(m, e, k, path, why, n);
        char sub[224];
        snprintf(sub, sizeof sub, "%s.%s", path, m->in[k].name);
        if (!v || read_values(v, m->in[k].shape, m->in[k].ndim, &w[k], why, n, sub)) return -1;
      }
    }
    return 0;
  }
  for (int k = 0; k < m->nin; k++) {
    int i = 0;
    for (const cJSON *e = lists[k]->child; e; e = e->next, i++) {
      if (m->nin > 1) snprintf(path, sizeof path, "inputs.%s[%d]", m->in[k].name, i);
      else snprintf(path, sizeof path, "inputs[%d]", i);
      if (read_values(e, m->in[k].shape, m->in[k].ndim, &w[k], why, n, path)) return -1;
    }
  }
  return 0;
}

/* The answer: "predictions" (rows) or "outputs" (columns), one output as
 * it is, several by name. */
static cJSON *answer(const served *m, const job *j, bool rows) {
  cJSON *resp = cJSON_CreateObject();
  if (m->nout == 1 || !rows) {
    cJSON *holder = m->nout == 1 ? NULL : cJSON_CreateObject();
    for (int k = 0; k < m->nout; k++) {
      int64_t shape[LUNET_MAX_DIMS + 1] = {j->n};
      memcpy(shape + 1, m->out[k].shape, sizeof *shape * (size_t)m->out[k].ndim);
      const float *r = j->y[k];
      cJSON *v = write_values(&r, shape, m->out[k].ndim + 1);
      if (holder) cJSON_AddItemToObject(holder, m->out[k].name, v);
      else cJSON_AddItemToObject(resp, rows ? "predictions" : "outputs", v);
    }
    if (holder) cJSON_AddItemToObject(resp, "outputs", holder);
    return resp;
  }
  cJSON *list = cJSON_CreateArray();
  for (int64_t i = 0; i < j->n; i++) {
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; k < m->nout; k++) {
      const float *r = j->y[k] + i * m->out[k].per;
      cJSON_AddItemToObject(o, m->out[k].name, write_values(&r, m->out[k].shape, m->out[k].ndim));
    }
    cJSON_AddItemToArray(list, o);
  }
  cJSON_AddItemToObject(resp, "predictions", list);
  return resp;
}

/* POST /v1/models/NAME:predict */
static enum MHD_Result predict(struct MHD_Connection *c, served *m, const char *body, size_t len) {
  cJSON *req = cJSON_ParseWithLength(body, len);
  if (!req || !cJSON_IsObject(req)) {
    cJSON_Delete(req);
    return send_error(c, 400, "the body is not a JSON object (send {\"instances\": [...]} or {\"inputs\": [...]})");
  }
  const cJSON *inst = cJSON_GetObjectItemCaseSensitive(req, "instances");
  const cJSON *inputs = inst ? NULL : cJSON_GetObjectItemCaseSensitive(req, "inputs");
  char names[512], why[512];
  if (!inst && !inputs) {
    cJSON_Delete(req);
    return send_error(c, 400, "no \"instances\" (or \"inputs\"): a non-empty list of samples expected (model '%s' "
                      "takes %s)", m->name, io_names(m->in, m->nin, names, sizeof names));
  }
  job j = {0};
  int bad = read_request(m, inst, inputs, &j, why, sizeof why);
  cJSON_Delete(req);
  if (bad) {
    free_job(&j);
    if (bad == -2) return send_error(c, 503, "%s", why);
    return send_error(c, 400, "%s (model '%s' takes %s)", why, m->name, io_names(m->in, m->nin, names, sizeof names));
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
    return send_error(c, j.status == LUNET_ERR_NOMEM ? 503 : 500, "model '%s': %s", m->name, j.err);
  }
  cJSON *resp = answer(m, &j, inst != NULL);
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

/* Runs the jobs batch[0..n) as one model call and fills their outputs.
 * The batch is padded with zero rows to a power of two (up to
 * --max-batch; a larger single request runs as it is), as TF Serving's
 * allowed_batch_sizes: a handful of shapes, whose buffers the backend's
 * pool reuses, instead of fresh memory (page faults) for every size. */
static void run_batch(served *m, job **batch, int n, int64_t total) {
  int64_t rows = 1;
  while (rows < total) rows *= 2;
  if (rows > max_batch) rows = total > max_batch ? total : max_batch;
  lunet_tensor *t[MAX_IO] = {0}, *y[MAX_IO] = {0};
  float *out[MAX_IO] = {0};
  lunet_status st = LUNET_OK;
  for (int k = 0; k < m->nin && !st; k++) {
    const io_spec *in = &m->in[k];
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
  pthread_mutex_lock(&m->mu); /* the model pointer (a reload swaps it) */
  lunet_model *model = lunet_model_retain(m->model);
  pthread_mutex_unlock(&m->mu);
  if (!st) st = lunet_model_predict(m->ctx, model, m->nin, t, y);
  for (int k = 0; k < m->nout && !st; k++) {
    size_t bytes = sizeof(float) * (size_t)(rows * m->out[k].per);
    if (!(out[k] = malloc(bytes))) st = LUNET_ERR_NOMEM;
    else st = lunet_tensor_read(m->ctx, y[k], out[k], bytes);
  }
  char err[512];
  snprintf(err, sizeof err, "%s", st == LUNET_ERR_NOMEM && !lunet_ctx_error(m->ctx)[0] ? "out of memory" : lunet_ctx_error(m->ctx));
  lunet_clear_error(m->ctx);
  for (int k = 0; k < MAX_IO; k++) {
    lunet_tensor_release(t[k]);
    lunet_tensor_release(y[k]);
  }
  lunet_model_release(model);
  pthread_mutex_lock(&m->mu);
  for (int i = 0, at = 0; i < n; at += (int)batch[i]->n, i++) {
    job *j = batch[i];
    j->status = st;
    for (int k = 0; k < m->nout && !j->status; k++) {
      size_t bytes = sizeof(float) * (size_t)(j->n * m->out[k].per);
      if ((j->y[k] = malloc(bytes))) memcpy(j->y[k], out[k] + (int64_t)at * m->out[k].per, bytes);
      else j->status = LUNET_ERR_NOMEM;
    }
    snprintf(j->err, sizeof j->err, "%s", j->status && !st ? "out of memory" : err);
    j->done = true;
  }
  m->batches++;
  int b = 0;
  for (int64_t v = total; v > 1 && b < 7; v = (v + 1) / 2) b++;
  m->batch_sizes[b]++;
  pthread_cond_broadcast(&m->done);
  pthread_mutex_unlock(&m->mu);
  for (int k = 0; k < MAX_IO; k++) free(out[k]);
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
  cJSON *o = cJSON_CreateObject(), *spec = cJSON_CreateObject();
  cJSON_AddStringToObject(spec, "name", m->name);
  cJSON_AddStringToObject(spec, "signature_name", "");
  cJSON_AddStringToObject(spec, "version", "1");
  cJSON_AddItemToObject(o, "model_spec", spec);
  cJSON *sig = cJSON_CreateObject(), *inputs = cJSON_CreateObject(), *outputs = cJSON_CreateObject();
  for (int k = 0; k < m->nin; k++)
    cJSON_AddItemToObject(inputs, m->in[k].name, tensor_info(m->in[k].name, m->in[k].ndim, m->in[k].shape));
  for (int k = 0; k < m->nout; k++)
    cJSON_AddItemToObject(outputs, m->out[k].name, tensor_info(m->out[k].name, m->out[k].ndim, m->out[k].shape));
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
    OUT("lunet_batch_size_bucket{model=\"%s\",le=\"+Inf\"} %lu\nlunet_batch_size_count{model=\"%s\"} %lu\n",
        m->name, sum, m->name, m->batches);
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
  for (int i = 0; i < nmodels; i++)
    OUT("lunet_model_reloads_total{model=\"%s\",result=\"ok\"} %lu\n"
        "lunet_model_reloads_total{model=\"%s\",result=\"failed\"} %lu\n",
        models[i].name, models[i].reloads, models[i].name, models[i].reload_failures);
#undef OUT
  if (len >= cap) len = cap - 1;
  struct MHD_Response *r = MHD_create_response_from_buffer(len, t, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4");
  enum MHD_Result ok = MHD_queue_response(c, 200, r);
  MHD_destroy_response(r);
  return ok;
}

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
  const char *prefix = "/v1/models/";
  if (strncmp(url, prefix, strlen(prefix)))
    return send_error(c, 404, "no such path: %s (try /v1/models/NAME:predict, /v1/models/NAME, /healthz)", url);
  const char *name = url + strlen(prefix);
  size_t n = strcspn(name, ":/");
  served *m = find_model(name, n);
  if (!m) {
    char list[512] = "";
    for (int i = 0; i < nmodels; i++) {
      strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
      strncat(list, models[i].name, sizeof list - strlen(list) - 1);
    }
    return send_error(c, 404, "no model '%.*s' (served: %s)", (int)n, name, list);
  }
  const char *rest = name + n;
  if (!strcmp(rest, ":predict")) {
    if (!post) return send_error(c, 405, "%s %s: use POST", method, url);
    enum MHD_Result r = b->too_big ? send_error(c, 413, "the body is over %zu bytes (--max-body)", max_body)
                                   : predict(c, m, b->data ? b->data : "", b->len);
    uncount(b);
    count_request(m, last_status, now_s() - b->start);
    return r;
  }
  if (!get) return send_error(c, 405, "%s %s: use GET", method, url);
  if (!*rest) return status_of(c, m);
  if (!strcmp(rest, "/metadata")) return metadata(c, m);
  return send_error(c, 404, "no such path: %s", url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state) {
  (void)cls, (void)version;
  body *b = *state;
  if (!b) { /* the headers: make the body's buffer, answer on a later call */
    if (!(b = calloc(1, sizeof *b))) return MHD_NO;
    b->start = now_s();
    *state = b;
    const char *prefix = "/v1/models/", *colon = strstr(url, ":predict");
    served *m = !strcmp(method, "POST") && colon && !strncmp(url, prefix, strlen(prefix))
                    ? find_model(url + strlen(prefix), (size_t)(colon - url - strlen(prefix)))
                    : NULL;
    if (m) { /* on its way: the batching worker may wait for it */
      pthread_mutex_lock(&m->mu);
      m->pending++;
      pthread_mutex_unlock(&m->mu);
      b->counted = m;
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

/* The inputs and outputs of model `model` into m; 0, or -1 with `why`. */
static int signature(lunet_model *model, served *m, char *why, size_t n) {
  m->nin = lunet_model_input_count(model);
  m->nout = lunet_model_output_count(model);
  if (m->nin > MAX_IO || m->nout > MAX_IO) {
    snprintf(why, n, "the model has %d inputs and %d outputs; lunet serve serves at most %d of each", m->nin, m->nout,
             MAX_IO);
    return -1;
  }
  for (int k = 0; k < m->nin + m->nout; k++) {
    io_spec *io = k < m->nin ? &m->in[k] : &m->out[k - m->nin];
    int id = k < m->nin ? lunet_model_input_id(model, k) : lunet_model_output_id(model, k - m->nin);
    io->ndim = lunet_model_value_shape(model, id, io->shape);
    snprintf(io->name, sizeof io->name, "%s", lunet_model_value_name(model, id));
    io->per = 1;
    for (int d = 0; d < io->ndim; d++) io->per *= io->shape[d];
  }
  return 0;
}

/* Whether a reloaded model answers the requests the served one did: the
 * same shapes, and the same names where requests or answers use them
 * (several inputs, several outputs; a lone one's name may change, as
 * lunet's automatic names do from one script to the next). */
static bool same_signature(const served *a, const served *b) {
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
  if (ctx && backend_name && lunet_use(ctx, backend_name)) snprintf(why, sizeof why, "%s", lunet_ctx_error(ctx));
  else if (ctx && !(fresh = lunet_model_load(ctx, m->path))) snprintf(why, sizeof why, "%s", lunet_ctx_error(ctx));
  if (fresh) {
    served now;
    if (signature(fresh, &now, why, sizeof why)) {
      lunet_model_release(fresh);
      fresh = NULL;
    } else if (!same_signature(&now, m)) {
      snprintf(why, sizeof why, "its inputs or outputs (names, shapes) differ from the model being served");
      lunet_model_release(fresh);
      fresh = NULL;
    }
  }
  pthread_mutex_lock(&m->mu);
  lunet_model *old = fresh ? m->model : NULL;
  if (fresh) {
    m->model = fresh;
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

static int usage(const char *why) {
  if (why) fprintf(stderr, "lunet serve: %s\n", why);
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
  if (signature(m->model, m, why, sizeof why)) {
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
  fprintf(stderr, "lunet serve: model '%s' from %s, input%s %s\n", m->name, m->path, m->nin > 1 ? "s" : "",
          io_names(m->in, m->nin, names, sizeof names));
  return 0;
}

static int serve_main(int argc, char **argv) {
  const char *host = "127.0.0.1", *backend = NULL;
  int port = 8501, threads = 256;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(NULL), 0;
    if (!v) return usage("an option without its value");
    if (!strcmp(a, "--model")) {
      if (nmodels == MAX_MODELS) return usage("too many models");
      if (load(&models[nmodels], v, backend)) return 1;
      nmodels++;
    } else if (!strcmp(a, "--port")) {
      port = atoi(v);
      if (port < 0 || port > 65535) return usage("--port takes 0 to 65535");
    } else if (!strcmp(a, "--host")) {
      host = v;
    } else if (!strcmp(a, "--threads")) {
      threads = atoi(v);
      if (threads < 1 || threads > 1024) return usage("--threads takes 1 to 1024");
    } else if (!strcmp(a, "--max-body")) {
      if (!(max_body = parse_size(v))) return usage("--max-body takes a size such as 16MB");
    } else if (!strcmp(a, "--backend")) {
      backend = backend_name = v;
    } else if (!strcmp(a, "--max-batch")) {
      max_batch = atoi(v);
      if (max_batch < 1 || max_batch > 1 << 20) return usage("--max-batch takes 1 or more (1: no merging)");
    } else if (!strcmp(a, "--batch-timeout-ms")) {
      batch_timeout_ms = atoi(v);
      if (batch_timeout_ms < 0 || batch_timeout_ms > 60000) return usage("--batch-timeout-ms takes 0 to 60000");
    } else if (!strcmp(a, "--max-queue")) {
      max_queue = atoi(v);
      if (max_queue < 1) return usage("--max-queue takes 1 or more");
    } else {
      return usage("unknown option");
    }
    i++;
  }
  if (!nmodels) return usage("no --model given");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return usage("--host takes an IPv4 address");
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
  MHD_quiesce_daemon(d);
  MHD_stop_daemon(d); /* waits for the connections' threads, so every request is answered */
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
