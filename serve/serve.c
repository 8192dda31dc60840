/*
 * lunet serve: HTTP inference for saved models, with TensorFlow Serving's
 * REST shapes, on libmicrohttpd (first slice: one input and one output per
 * model, requests answered one model call each).
 *
 *   lunet serve --model NAME=PATH [--model ...] [--port 8501] [--host 127.0.0.1]
 *               [--threads N] [--max-body 16MB] [--backend NAME]
 *
 *   POST /v1/models/NAME:predict   {"instances": [...]} -> {"predictions": [...]}
 *                                  {"inputs": [...]}    -> {"outputs": [...]}
 *   GET  /v1/models/NAME           model_version_status
 *   GET  /v1/models/NAME/metadata  signature_def (input and output names, shapes, dtypes)
 *   GET  /healthz
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

#include "lunet/lunet.h"
#include "lunet/model.h"

#define MAX_MODELS 16

typedef struct served {
  char name[64];
  char path[1024];
  lunet_model *model;
  lunet_ctx *ctx;        /* one context per model: a model call at a time */
  pthread_mutex_t mu;
  int ndim;              /* the input's sample shape */
  int64_t shape[LUNET_MAX_DIMS];
  int out_ndim;
  int64_t out_shape[LUNET_MAX_DIMS];
  char in_name[64], out_name[64];
} served;

static served models[MAX_MODELS];
static int nmodels;
static size_t max_body = 16u << 20;

/* ---- responses ---- */

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *body) {
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  if (!text) return MHD_NO;
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(r, "Content-Type", "application/json");
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

static char *shape_text(int nd, const int64_t *s, char *buf, size_t n) {
  return lunet_shape_str(nd, s, buf, n);
}

/* POST /v1/models/NAME:predict */
static enum MHD_Result predict(struct MHD_Connection *c, served *m, const char *body, size_t len) {
  cJSON *req = cJSON_ParseWithLength(body, len);
  if (!req || !cJSON_IsObject(req)) {
    cJSON_Delete(req);
    return send_error(c, 400, "the body is not a JSON object (send {\"instances\": [...]} or {\"inputs\": [...]})");
  }
  const cJSON *inst = cJSON_GetObjectItemCaseSensitive(req, "instances");
  const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(req, "inputs");
  const cJSON *list = inst ? inst : inputs;
  if (!list || !cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0) {
    cJSON_Delete(req);
    return send_error(c, 400, "no \"instances\" (or \"inputs\"): a non-empty list of inputs of shape %s expected",
                      shape_text(m->ndim, m->shape, (char[128]){0}, 128));
  }
  int64_t nsamples = cJSON_GetArraySize(list), per = 1;
  for (int i = 0; i < m->ndim; i++) per *= m->shape[i];
  float *data = malloc(sizeof *data * (size_t)(nsamples * per));
  if (!data) {
    cJSON_Delete(req);
    return send_error(c, 503, "out of memory for %lld inputs", (long long)nsamples);
  }
  char why[512];
  float *w = data;
  int i = 0;
  for (const cJSON *e = list->child; e; e = e->next, i++) {
    char path[64];
    snprintf(path, sizeof path, "%s[%d]", inst ? "instances" : "inputs", i);
    if (read_values(e, m->shape, m->ndim, &w, why, sizeof why, path)) {
      free(data);
      cJSON_Delete(req);
      char s[128];
      return send_error(c, 400, "%s (model '%s' takes inputs of shape %s)", why, m->name,
                        shape_text(m->ndim, m->shape, s, sizeof s));
    }
  }
  cJSON_Delete(req);
  int64_t shape[LUNET_MAX_DIMS + 1] = {nsamples};
  memcpy(shape + 1, m->shape, sizeof *shape * (size_t)m->ndim);
  pthread_mutex_lock(&m->mu);
  lunet_tensor *x = lunet_tensor_from_data(m->ctx, LUNET_F32, m->ndim + 1, shape, data);
  lunet_tensor *y = NULL;
  lunet_status s = x ? lunet_model_predict(m->ctx, m->model, 1, &x, &y) : lunet_ctx_status(m->ctx);
  int64_t out_shape[LUNET_MAX_DIMS + 1];
  int out_nd = 0;
  float *out = NULL;
  if (!s) {
    out_nd = lunet_tensor_ndim(y);
    memcpy(out_shape, lunet_tensor_shape(y), sizeof *out_shape * (size_t)out_nd);
    out = malloc(sizeof *out * (size_t)lunet_tensor_numel(y));
    s = out ? lunet_tensor_read(m->ctx, y, out, sizeof *out * (size_t)lunet_tensor_numel(y)) : LUNET_ERR_NOMEM;
  }
  char err[512];
  snprintf(err, sizeof err, "%s", s ? lunet_ctx_error(m->ctx) : "");
  lunet_clear_error(m->ctx);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  pthread_mutex_unlock(&m->mu);
  free(data);
  if (s) {
    free(out);
    return send_error(c, s == LUNET_ERR_NOMEM ? 503 : 500, "model '%s': %s", m->name, err[0] ? err : "out of memory");
  }
  cJSON *resp = cJSON_CreateObject();
  const float *r = out;
  cJSON_AddItemToObject(resp, inst ? "predictions" : "outputs", write_values(&r, out_shape, out_nd));
  free(out);
  return send_json(c, 200, resp);
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
  cJSON_AddItemToObject(inputs, m->in_name, tensor_info(m->in_name, m->ndim, m->shape));
  cJSON_AddItemToObject(outputs, m->out_name, tensor_info(m->out_name, m->out_ndim, m->out_shape));
  cJSON_AddItemToObject(sig, "inputs", inputs);
  cJSON_AddItemToObject(sig, "outputs", outputs);
  cJSON_AddStringToObject(sig, "method_name", "tensorflow/serving/predict");
  cJSON *defs = cJSON_CreateObject(), *wrap = cJSON_CreateObject(), *meta = cJSON_CreateObject();
  cJSON_AddItemToObject(defs, "serving_default", sig);
  cJSON_AddItemToObject(wrap, "signature_def", defs);
  cJSON_AddItemToObject(meta, "signature_def", wrap);
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
} body;

static enum MHD_Result route(struct MHD_Connection *c, const char *url, const char *method, body *b) {
  bool post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
  if (!strcmp(url, "/healthz")) {
    if (!get) return send_error(c, 405, "%s /healthz: use GET", method);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return send_json(c, 200, o);
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
    if (b->too_big) return send_error(c, 413, "the body is over %zu bytes (--max-body)", max_body);
    return predict(c, m, b->data ? b->data : "", b->len);
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
    *state = b;
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
    free(b->data);
    free(b);
  }
  *state = NULL;
}

/* ---- start ---- */

static int usage(const char *why) {
  if (why) fprintf(stderr, "lunet serve: %s\n", why);
  fprintf(stderr, "usage: lunet serve --model NAME=PATH [--model NAME=PATH ...] [--port 8501] [--host 127.0.0.1]\n"
                  "                   [--threads N] [--max-body 16MB] [--backend NAME]\n");
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
  if (lunet_model_input_count(m->model) != 1 || lunet_model_output_count(m->model) != 1) {
    fprintf(stderr, "lunet serve: %s: a model of one input and one output is served so far (this one has %d and %d)\n",
            m->path, lunet_model_input_count(m->model), lunet_model_output_count(m->model));
    return -1;
  }
  int in = lunet_model_input_id(m->model, 0), out = lunet_model_output_id(m->model, 0);
  m->ndim = lunet_model_value_shape(m->model, in, m->shape);
  m->out_ndim = lunet_model_value_shape(m->model, out, m->out_shape);
  snprintf(m->in_name, sizeof m->in_name, "%s", lunet_model_value_name(m->model, in));
  snprintf(m->out_name, sizeof m->out_name, "%s", lunet_model_value_name(m->model, out));
  pthread_mutex_init(&m->mu, NULL);
  char s[128];
  fprintf(stderr, "lunet serve: model '%s' from %s, input %s %s\n", m->name, m->path, m->in_name,
          shape_text(m->ndim, m->shape, s, sizeof s));
  return 0;
}

static int serve_main(int argc, char **argv) {
  const char *host = "127.0.0.1", *backend = NULL;
  int port = 8501, threads = 4;
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
      backend = v;
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
  pthread_sigmask(SIG_BLOCK, &stop, NULL); /* every thread; the main one waits for them */
  signal(SIGPIPE, SIG_IGN);
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)port, NULL, NULL, on_request, NULL,
      MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads, MHD_OPTION_CONNECTION_TIMEOUT,
      30u, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "lunet serve: cannot listen on %s:%d (%s)\n", host, port, strerror(errno));
    return 1;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  printf("lunet serve: listening on http://%s:%u (%d threads)\n", host, info ? info->port : (unsigned)port, threads);
  fflush(stdout);
  int sig;
  sigwait(&stop, &sig);
  fprintf(stderr, "lunet serve: %s: finishing the requests in flight\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  MHD_quiesce_daemon(d);
  MHD_stop_daemon(d); /* waits for the connections' threads */
  for (int i = 0; i < nmodels; i++) {
    lunet_model_release(models[i].model);
    lunet_ctx_free(models[i].ctx);
  }
  return 0;
}

int main(int argc, char **argv) { return serve_main(argc, argv); }
