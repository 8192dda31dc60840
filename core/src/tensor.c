/* Tensors: a shape over a reference-counted backend buffer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

size_t lunet_dtype_size(lunet_dtype dt) { return dt == LUNET_U8 ? 1 : 4; }

const char *lunet_dtype_name(lunet_dtype dt) {
  switch (dt) {
  case LUNET_F32:
    return "float32";
  case LUNET_U8:
    return "uint8";
  case LUNET_I32:
    return "int32";
  }
  return "?";
}

/* The element count; INT64_MAX when it overflows (no allocation that
 * large succeeds, so a hostile shape becomes an out-of-memory error). */
int64_t lunet_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    if (__builtin_mul_overflow(n, shape[i], &n)) return INT64_MAX;
  return n;
}

bool lunet_shape_equal(const lunet_tensor *a, const lunet_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

int64_t lunet_tensor_positions(const lunet_tensor *t) {
  int64_t last = t->ndim >= 2 ? t->shape[t->ndim - 1] : 0;
  return last > 0 ? t->numel / last : t->ndim ? t->shape[0] : 1;
}

char *lunet_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t len = (size_t)snprintf(buf, n, "(");
  for (int i = 0; i < ndim && len < n; i++)
    len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (len < n) snprintf(buf + len, n - len, ndim == 1 ? ",)" : ")");
  return buf;
}

static lunet_tensor *header(lunet_ctx *ctx, lunet_dtype dt, int ndim, const int64_t *shape) {
  if ((unsigned)dt > LUNET_I32) { /* it made a tensor whose values nothing could read */
    lunet_error(ctx, LUNET_ERR_ARG, "unknown dtype %d (LUNET_F32, LUNET_U8 or LUNET_I32)", (int)dt);
    return NULL;
  }
  if (ndim > 0 && !shape) {
    lunet_error(ctx, LUNET_ERR_ARG, "a tensor of %d dimensions needs its shape (NULL given)", ndim);
    return NULL;
  }
  if (ndim < 0 || ndim > LUNET_MAX_DIMS) {
    lunet_error(ctx, LUNET_ERR_SHAPE, "tensors have at most %d dimensions, got %d", LUNET_MAX_DIMS,
                ndim);
    return NULL;
  }
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) {
      lunet_error(ctx, LUNET_ERR_SHAPE, "dimension %d is negative (%lld)", i + 1,
                  (long long)shape[i]);
      return NULL;
    }
  lunet_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for a tensor header");
    return NULL;
  }
  t->refcount = 1;
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim > 0) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  t->numel = lunet_shape_numel(ndim, shape);
  return t;
}

lunet_tensor *lunet_tensor_on(lunet_ctx *ctx, lunet_be *be, lunet_dtype dt, int ndim,
                              const int64_t *shape) {
  lunet_tensor *t = header(ctx, dt, ndim, shape);
  if (!t) return NULL;
  size_t nbytes;
  if (t->numel == INT64_MAX || __builtin_mul_overflow((size_t)t->numel, lunet_dtype_size(dt), &nbytes)) {
    char s[128];
    lunet_error(ctx, LUNET_ERR_NOMEM, "a %s tensor of shape %s has more bytes than any memory holds",
                lunet_dtype_name(dt), lunet_shape_str(ndim, shape, s, sizeof s));
    free(t);
    return NULL;
  }
  t->buf = calloc(1, sizeof *t->buf);
  if (t->buf) t->buf->handle = be->i->buffer_alloc(be->state, nbytes ? nbytes : 4);
  if (!t->buf || !t->buf->handle) {
    char s[128];
    /* a device that is lost (not out of memory) fails its synchronize and
     * says so: its words, not advice about batch sizes */
    if (t->buf && be->i->synchronize(be->state) != 0) {
      const char *why = be->i->last_error(be->state);
      lunet_error(ctx, LUNET_ERR_DEVICE, "backend '%s' could not allocate a %s tensor of shape %s: %s", be->name,
                  lunet_dtype_name(dt), lunet_shape_str(ndim, shape, s, sizeof s),
                  why && *why ? why : "its device failed");
      free(t->buf);
      free(t);
      return NULL;
    }
    lunet_error(ctx, LUNET_ERR_NOMEM,
                "out of memory on backend '%s' allocating %zu bytes for a %s tensor of "
                "shape %s (use a smaller batch size or model)",
                be->name, nbytes, lunet_dtype_name(dt), lunet_shape_str(ndim, shape, s, sizeof s));
    free(t->buf);
    free(t);
    return NULL;
  }
  t->buf->refcount = 1;
  t->buf->be = be;
  t->buf->nbytes = nbytes;
  __atomic_add_fetch(&be->live, 1, __ATOMIC_RELAXED);
  return t;
}

lunet_tensor *lunet_tensor_alias(lunet_ctx *ctx, lunet_tensor *src, int ndim,
                                 const int64_t *shape) {
  lunet_tensor *t = header(ctx, src->dtype, ndim, shape);
  if (!t) return NULL;
  if (t->numel != src->numel) {
    char a[128], b[128];
    lunet_error(ctx, LUNET_ERR_SHAPE, "cannot reshape %s (%lld elements) to %s (%lld elements)",
                lunet_shape_str(src->ndim, src->shape, a, sizeof a), (long long)src->numel,
                lunet_shape_str(ndim, shape, b, sizeof b), (long long)t->numel);
    free(t);
    return NULL;
  }
  t->buf = src->buf;
  __atomic_add_fetch(&t->buf->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

lunet_tensor *lunet_tensor_new_on(lunet_ctx *ctx, const char *backend, lunet_dtype dt, int ndim,
                                  const int64_t *shape) {
  lunet_be *be = backend ? lunet_registry_backend(ctx, backend) : lunet_registry_default(ctx);
  return be ? lunet_tensor_on(ctx, be, dt, ndim, shape) : NULL;
}

lunet_tensor *lunet_tensor_new(lunet_ctx *ctx, lunet_dtype dt, int ndim, const int64_t *shape) {
  return lunet_tensor_new_on(ctx, NULL, dt, ndim, shape);
}

lunet_tensor *lunet_tensor_from_data(lunet_ctx *ctx, lunet_dtype dt, int ndim, const int64_t *shape,
                                     const void *data) {
  return lunet_tensor_from_data_on(ctx, NULL, dt, ndim, shape, data);
}

lunet_tensor *lunet_tensor_from_data_on(lunet_ctx *ctx, const char *backend, lunet_dtype dt,
                                        int ndim, const int64_t *shape, const void *data) {
  lunet_tensor *t = lunet_tensor_new_on(ctx, backend, dt, ndim, shape);
  if (t && lunet_tensor_write(ctx, t, data, (size_t)t->numel * lunet_dtype_size(dt))) {
    lunet_tensor_release(t);
    return NULL;
  }
  return t;
}

lunet_tensor *lunet_tensor_retain(lunet_tensor *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

/* Tensors and tape nodes waiting to be freed.  Dropping the last
 * reference to a long graph frees the whole chain: a worklist instead of
 * recursion keeps a deep graph (a long unroll) off the C stack.  The list
 * starts on the stack (most releases free a handful of objects, with no
 * allocation) and moves to the heap when it outgrows it; when the heap
 * refuses, the object is freed at once, recursively, rather than lost. */
#define WORKLIST_INLINE 32

typedef struct worklist {
  lunet_tensor **t, *t_inline[WORKLIST_INLINE];
  lunet_node **n, *n_inline[WORKLIST_INLINE];
  size_t nt, ct, nn, cn;
} worklist;

static bool grow(void **items, void *inline_items, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return true;
  size_t cap2 = 2 * *cap;
  void *p = *items == inline_items ? malloc(cap2 * size) : realloc(*items, cap2 * size);
  if (!p) return false;
  if (*items == inline_items) memcpy(p, inline_items, *cap * size);
  *items = p;
  *cap = cap2;
  return true;
}

static void free_tensor(worklist *w, lunet_tensor *t);
static void free_node(worklist *w, lunet_node *n);

static void drop_tensor(worklist *w, lunet_tensor *t) {
  if (!t || __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (grow((void **)&w->t, w->t_inline, &w->ct, w->nt + 1, sizeof *w->t))
    w->t[w->nt++] = t;
  else
    free_tensor(w, t);
}

static void drop_node(worklist *w, lunet_node *n) {
  if (!n || --n->refcount != 0) return;
  if (grow((void **)&w->n, w->n_inline, &w->cn, w->nn + 1, sizeof *w->n))
    w->n[w->nn++] = n;
  else
    free_node(w, n);
}

static void free_tensor(worklist *w, lunet_tensor *t) {
  if (t->buf && __atomic_sub_fetch(&t->buf->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
    t->buf->be->i->buffer_free(t->buf->be->state, t->buf->handle);
    __atomic_sub_fetch(&t->buf->be->live, 1, __ATOMIC_RELAXED);
    free(t->buf);
  }
  drop_tensor(w, t->grad);
  drop_tensor(w, t->acc);
  drop_node(w, t->grad_fn);
  free(t);
}

static void free_node(worklist *w, lunet_node *n) {
  if (n->release) n->release(n);
  free(n->prof_layer);
  for (int i = 0; i < n->ninputs; i++) drop_tensor(w, n->inputs[i]);
  for (int i = 0; i < 4; i++) drop_tensor(w, n->saved[i]);
  free(n);
}

static void release(lunet_tensor *t, lunet_node *n) {
  worklist w;
  w.t = w.t_inline;
  w.n = w.n_inline;
  w.nt = w.nn = 0;
  w.ct = w.cn = WORKLIST_INLINE;
  drop_tensor(&w, t);
  drop_node(&w, n);
  while (w.nt || w.nn) {
    if (w.nt)
      free_tensor(&w, w.t[--w.nt]);
    else
      free_node(&w, w.n[--w.nn]);
  }
  if (w.t != w.t_inline) free(w.t);
  if (w.n != w.n_inline) free(w.n);
}

void lunet_tensor_release(lunet_tensor *t) { release(t, NULL); }
void lunet_node_release(lunet_node *n) { release(NULL, n); }

int lunet_tensor_ndim(const lunet_tensor *t) { return t->ndim; }
const int64_t *lunet_tensor_shape(const lunet_tensor *t) { return t->shape; }
int64_t lunet_tensor_numel(const lunet_tensor *t) { return t->numel; }
lunet_dtype lunet_tensor_dtype(const lunet_tensor *t) { return t->dtype; }
const char *lunet_tensor_backend(const lunet_tensor *t) { return t->buf->be->name; }

int64_t lunet_tensor_dim(const lunet_tensor *t, int i) {
  if (i < 0) i += t->ndim;
  return i >= 0 && i < t->ndim ? t->shape[i] : 0;
}

const void *lunet_tensor_host_data(const lunet_tensor *t) {
  return t->buf->be->desc->caps & LUNET_BACKEND_HOST_VISIBLE ? t->buf->handle : NULL;
}

static lunet_status check_size(lunet_ctx *ctx, const lunet_tensor *t, const void *host, size_t nbytes) {
  if (!t) return lunet_error(ctx, LUNET_ERR_ARG, "no tensor (NULL) to read or write");
  if (!host && nbytes) return lunet_error(ctx, LUNET_ERR_ARG, "no host buffer (NULL) for %zu bytes", nbytes);
  if (nbytes != t->buf->nbytes && !(t->numel == 0 && nbytes == 0))
    return lunet_error(ctx, LUNET_ERR_ARG, "tensor holds %zu bytes, got a buffer of %zu",
                       t->buf->nbytes, nbytes);
  return LUNET_OK;
}

/* Whether the backend's download waits for earlier work by itself. */
static bool download_waits(const lunet_be *be) { return be->desc && (be->desc->caps & LUNET_BACKEND_DOWNLOAD_WAITS); }

lunet_status lunet_tensor_read(lunet_ctx *ctx, const lunet_tensor *t, void *dst, size_t nbytes) {
  if (check_size(ctx, t, dst, nbytes)) return ctx->status;
  lunet_be *be = t->buf->be;
  int rc = nbytes && download_waits(be) ? 0 : PROFILED(ctx, be, "synchronize", 0, be->i->synchronize(be->state));
  if (!rc && nbytes) rc = PROFILED(ctx, be, "buffer_download", 0, be->i->buffer_download(be->state, t->buf->handle, 0, dst, nbytes));
  return lunet_be_check(ctx, be, rc, "download");
}

lunet_status lunet_tensor_write(lunet_ctx *ctx, lunet_tensor *t, const void *src, size_t nbytes) {
  if (check_size(ctx, t, src, nbytes)) return ctx->status;
  lunet_be *be = t->buf->be;
  int rc = nbytes ? PROFILED(ctx, be, "buffer_upload", 0, be->i->buffer_upload(be->state, t->buf->handle, 0, src, nbytes)) : 0;
  return lunet_be_check(ctx, be, rc, "upload");
}

lunet_status lunet_tensor_item(lunet_ctx *ctx, const lunet_tensor *t, int64_t i, double *out) {
  if (i < 0 || i >= t->numel)
    return lunet_error(ctx, LUNET_ERR_ARG, "index %lld is outside a tensor of %lld elements",
                       (long long)i, (long long)t->numel);
  lunet_be *be = t->buf->be;
  size_t es = lunet_dtype_size(t->dtype);
  union {
    float f;
    int32_t i;
    uint8_t u;
  } v;
  int rc = download_waits(be) ? 0 : PROFILED(ctx, be, "synchronize", 0, be->i->synchronize(be->state));
  if (!rc) rc = PROFILED(ctx, be, "buffer_download", 0, be->i->buffer_download(be->state, t->buf->handle, (size_t)i * es, &v, es));
  if (lunet_be_check(ctx, be, rc, "download")) return ctx->status;
  /* not one ?: chain: its float arm would turn the int32 into a float (16777217 -> 16777216) */
  if (t->dtype == LUNET_F32)
    *out = v.f;
  else if (t->dtype == LUNET_I32)
    *out = v.i;
  else
    *out = v.u;
  return LUNET_OK;
}

lunet_tensor *lunet_tensor_to(lunet_ctx *ctx, lunet_tensor *t, const char *backend) {
  lunet_be *be = lunet_registry_backend(ctx, backend);
  if (!be) return NULL;
  if (be == t->buf->be) return lunet_copy(ctx, t);
  size_t n = t->buf->nbytes;
  void *host = malloc(n ? n : 1);
  if (!host) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory moving %zu bytes", n);
    return NULL;
  }
  lunet_tensor *out = NULL;
  if (lunet_tensor_read(ctx, t, host, n) == LUNET_OK) {
    out = lunet_tensor_on(ctx, be, t->dtype, t->ndim, t->shape);
    if (out && lunet_tensor_write(ctx, out, host, n)) {
      lunet_tensor_release(out);
      out = NULL;
    }
  }
  free(host);
  return lunet_record_copy(ctx, out, t);
}

void lunet_tensor_set_requires_grad(lunet_tensor *t, bool on) { t->requires_grad = on; }
bool lunet_tensor_requires_grad(const lunet_tensor *t) { return t->requires_grad || t->grad_fn; }
lunet_tensor *lunet_tensor_grad_get(lunet_tensor *t) { return t->grad; }

void lunet_tensor_zero_grad(lunet_tensor *t) {
  lunet_tensor_release(t->grad);
  t->grad = NULL;
}

lunet_tensor *lunet_detach(lunet_ctx *ctx, lunet_tensor *t) {
  return lunet_tensor_alias(ctx, t, t->ndim, t->shape);
}

bool lunet_tensor_on_tape(const lunet_tensor *t) { return t->grad_fn != NULL; }
