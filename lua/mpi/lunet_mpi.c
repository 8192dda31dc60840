/*
 * lunet.mpi: data-parallel training over MPI (Open MPI), a Lua module of
 * its own so that neither the core nor the main binding links MPI.
 *
 * The training step's hooks (lunet_model_set_grad_ready/_transform) carry
 * the gradients: as backward completes each parameter's gradient, it is
 * copied to a host buffer, multiplied by the rank's share of the global
 * batch (its samples over the step's global count, known to every rank
 * from the epoch's shards), and once
 * a bucket of `bucket_bytes` has filled, a non-blocking MPI_Iallreduce
 * (sum) starts on it while backward goes on; between layers MPI_Testall
 * lets Open MPI progress them (its non-blocking collectives advance only
 * inside MPI calls).  The transform hook, after backward, sends the last
 * bucket with the rank's sample count appended (their sum must be the
 * global count: a failed rank sends -inf), waits for all and writes the
 * gradients back: each rank then holds the gradient of the mean loss over
 * the global batch, whatever its shard's size, and takes the same
 * optimizer step.  The non-trainable weights
 * (BatchNormalization's moving statistics) are averaged in the same hook,
 * weighted by the ranks' samples.
 *
 * All ranks run the same graph, so gradients complete in the same order on
 * each and the buckets (their sizes and order of collective calls) match.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "lunet/lunet.h"
#include "lunet/model.h"

#define TENSOR_MT "lunet.Tensor"
#define MODEL_MT "lunet.Model"
#define SYNC_MT "lunet.mpi.Sync"
#define MAX_BUCKETS 1024

static int rank = 0, size = 1;
static lunet_ctx *mctx; /* for tensor reads and writes outside a step */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static lunet_tensor *check_tensor(lua_State *L, int arg) {
  lunet_tensor **p = luaL_checkudata(L, arg, TENSOR_MT);
  if (!*p) luaL_argerror(L, arg, "tensor was freed");
  return *p;
}

static lunet_model *check_model(lua_State *L, int arg) {
  lunet_model **p = luaL_checkudata(L, arg, MODEL_MT);
  if (!*p) luaL_argerror(L, arg, "model was freed");
  return *p;
}

static int mpi_fail(lua_State *L, const char *what, int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, msg, &n);
  return luaL_error(L, "mpi: %s failed: %s", what, msg);
}

/* ---- set-up ---- */

/* mpi.init(version) -> rank, size, local_rank, local_size; every rank must
 * run the same lunet version (checked here, as a clear error). */
static int l_init(lua_State *L) {
  const char *version = luaL_checkstring(L, 1);
  int ready = 0;
  MPI_Initialized(&ready);
  if (!ready) {
    int provided;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(L, "MPI_Init_thread", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm local;
  int local_rank = 0, local_size = 1;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
  }
  char mine[64] = {0}, *all = calloc((size_t)size, sizeof mine);
  if (!all) return luaL_error(L, "mpi: out of memory");
  snprintf(mine, sizeof mine, "%s", version);
  int rc = MPI_Allgather(mine, sizeof mine, MPI_CHAR, all, sizeof mine, MPI_CHAR, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) {
    free(all);
    return mpi_fail(L, "MPI_Allgather", rc);
  }
  for (int r = 0; r < size; r++)
    if (strncmp(all + r * sizeof mine, mine, sizeof mine)) {
      lua_pushfstring(L, "mpi: rank %d runs lunet %s, rank %d runs %s: every rank needs the same lunet", rank, mine,
                      r, all + r * sizeof mine);
      free(all);
      return lua_error(L);
    }
  free(all);
  if (!mctx && !(mctx = lunet_ctx_new())) return luaL_error(L, "mpi: no lunet context");
  lua_pushinteger(L, rank);
  lua_pushinteger(L, size);
  lua_pushinteger(L, local_rank);
  lua_pushinteger(L, local_size);
  return 4;
}

static int l_finalize(lua_State *L) {
  (void)L;
  int ready = 0, done = 0;
  MPI_Initialized(&ready);
  MPI_Finalized(&done);
  if (ready && !done) MPI_Finalize();
  return 0;
}

/* mpi.abort(message): ends the whole job, saying which rank failed. */
static int l_abort(lua_State *L) {
  const char *msg = luaL_optstring(L, 1, "an error");
  fprintf(stderr, "lunet rank %d of %d: %s\n", rank, size, msg);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 0;
}

static int l_barrier(lua_State *L) {
  int rc = MPI_Barrier(MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) return mpi_fail(L, "MPI_Barrier", rc);
  return 0;
}

/* mpi.allreduce_sum({numbers}) -> {sums}: counts and metric states, in
 * double precision. */
static int l_allreduce_sum(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)luaL_len(L, 1);
  double *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "mpi: out of memory");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    v[i] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  int rc = n ? MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) : MPI_SUCCESS;
  if (rc != MPI_SUCCESS) {
    free(v);
    return mpi_fail(L, "MPI_Allreduce", rc);
  }
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  free(v);
  return 1;
}

/* mpi.bcast_ints({...} or n) -> the root's list (rank 0 gives it, the
 * others give its length): an epoch's shuffled order. */
static int l_bcast_ints(lua_State *L) {
  int n = lua_istable(L, 1) ? (int)luaL_len(L, 1) : (int)luaL_checkinteger(L, 1);
  int *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "mpi: out of memory");
  for (int i = 0; rank == 0 && i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    v[i] = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  int rc = MPI_Bcast(v, n, MPI_INT, 0, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) {
    free(v);
    return mpi_fail(L, "MPI_Bcast", rc);
  }
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  free(v);
  return 1;
}

/* mpi.bcast_tensor(t): rank 0's values into t on every rank (staged
 * through host memory, so any backend). */
static int l_bcast_tensor(lua_State *L) {
  lunet_tensor *t = check_tensor(L, 1);
  if (lunet_tensor_dtype(t) != LUNET_F32) return luaL_argerror(L, 1, "a float32 tensor expected");
  int64_t n = lunet_tensor_numel(t);
  float *v = malloc(sizeof *v * (size_t)(n ? n : 1));
  if (!v) return luaL_error(L, "mpi: out of memory");
  lunet_status s = rank == 0 ? lunet_tensor_read(mctx, t, v, sizeof *v * (size_t)n) : LUNET_OK;
  int ok = s == LUNET_OK;
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  int rc = ok ? MPI_Bcast(v, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD) : MPI_SUCCESS;
  if (ok && rc == MPI_SUCCESS && rank != 0) s = lunet_tensor_write(mctx, t, v, sizeof *v * (size_t)n);
  free(v);
  if (rc != MPI_SUCCESS) return mpi_fail(L, "MPI_Bcast", rc);
  if (!ok) return luaL_error(L, "mpi: rank 0 could not read a tensor to send");
  if (s) return luaL_error(L, "mpi: %s", lunet_ctx_error(mctx));
  return 0;
}

/* ---- the gradient hooks ---- */

typedef struct placed {
  int param;
  int64_t offset, n;
} placed;

typedef struct sync {
  lunet_model *model;
  bool overlap;
  size_t bucket;     /* elements per bucket */
  float *buf;        /* every gradient of a step, in the order they completed */
  int64_t cap, used; /* elements */
  int64_t sent;      /* elements already handed to MPI */
  placed *where;
  int nplaced, cap_placed;
  MPI_Request req[MAX_BUCKETS];
  int nreq;
  double local_count, global_count; /* samples in the step: this rank's, all ranks' */
  lunet_tensor **fixed; /* non-trainable weights, averaged */
  int nfixed;
  double *fsum; /* all of them in a row, for their exchange */
  int64_t nfsum;
  lunet_status failed; /* a copy that failed in grad_ready, reported by transform */
  char why[256];
  /* measurements */
  double wait_s, copy_s, step_s, issue_s;
  double work_s, last_end; /* from one exchange's end to the next one's start */
  double bytes;
  long steps, buckets;
} sync;

static sync *check_sync(lua_State *L, int arg) { return luaL_checkudata(L, arg, SYNC_MT); }

static int grow(sync *s, int64_t need) {
  if (need <= s->cap) return 0;
  if (s->nreq > 0) return -1; /* buffers in flight: never move them */
  int64_t cap = s->cap ? s->cap : 1 << 16;
  while (cap < need) cap *= 2;
  float *b = realloc(s->buf, sizeof *b * (size_t)cap);
  if (!b) return -1;
  s->buf = b;
  s->cap = cap;
  return 0;
}

/* Starts the allreduce of [sent, used). */
static void issue(sync *s) {
  int64_t n = s->used - s->sent;
  if (n <= 0 || s->nreq >= MAX_BUCKETS) return;
  double t0 = now();
  MPI_Iallreduce(MPI_IN_PLACE, s->buf + s->sent, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &s->req[s->nreq++]);
  s->issue_s += now() - t0;
  s->bytes += (double)n * sizeof(float);
  s->buckets++;
  s->sent = s->used;
}

/* Copies one gradient into the step's buffer, times the local count. */
static void place(sync *s, lunet_ctx *ctx, int param, lunet_tensor *g) {
  if (s->failed) return;
  for (int i = 0; i < s->nplaced; i++)
    if (s->where[i].param == param) return; /* already placed this step */
  int64_t n = lunet_tensor_numel(g);
  double t0 = now();
  if (s->nplaced == s->cap_placed) {
    int cap = s->cap_placed ? 2 * s->cap_placed : 64;
    placed *w = realloc(s->where, sizeof *w * (size_t)cap);
    if (!w) {
      s->failed = LUNET_ERR_NOMEM;
      snprintf(s->why, sizeof s->why, "mpi: out of host memory");
      return;
    }
    s->where = w;
    s->cap_placed = cap;
  }
  if (grow(s, s->used + n + 1)) {
    s->failed = LUNET_ERR_NOMEM;
    snprintf(s->why, sizeof s->why, "mpi: out of host memory for the gradients (or a step with new parameters)");
    return;
  }
  float *dst = s->buf + s->used;
  lunet_status st = lunet_tensor_read(ctx ? ctx : mctx, g, dst, sizeof *dst * (size_t)n);
  if (st) {
    s->failed = st;
    snprintf(s->why, sizeof s->why, "mpi: reading a gradient: %s", lunet_ctx_error(ctx ? ctx : mctx));
    return;
  }
  float k = (float)(s->local_count / s->global_count);
  for (int64_t i = 0; i < n; i++) dst[i] *= k;
  s->where[s->nplaced++] = (placed){.param = param, .offset = s->used, .n = n};
  s->used += n;
  s->copy_s += now() - t0;
}

static void on_grad_ready(void *user, int param, lunet_tensor *grad) {
  sync *s = user;
  if (!grad) return;
  place(s, NULL, param, grad);
  if (!s->overlap || s->failed) return;
  if (s->nreq < MAX_BUCKETS - 1 && s->used - s->sent >= (int64_t)s->bucket) issue(s);
  if (s->nreq) { /* let Open MPI move the buckets in flight along */
    int done;
    MPI_Testall(s->nreq, s->req, &done, MPI_STATUSES_IGNORE);
  }
}

static lunet_status on_transform(void *user, lunet_ctx *ctx, int n, lunet_tensor *const *params,
                                 lunet_tensor *const *grads) {
  sync *s = user;
  (void)params;
  for (int i = 0; i < n; i++) /* any gradient backward did not announce */
    if (grads[i]) place(s, ctx, i, grads[i]);
  lunet_status failed = s->failed;
  /* the global sample count rides in the last bucket; a rank that failed
   * still takes part (with a count of -inf) so that no rank hangs */
  if (!grow(s, s->used + 1)) {
    s->buf[s->used++] = failed ? -INFINITY : (float)s->local_count;
  } else {
    failed = LUNET_ERR_NOMEM;
  }
  double t0 = now();
  if (s->last_end > 0) s->work_s += t0 - s->last_end;
  if (s->overlap) {
    issue(s);
    MPI_Waitall(s->nreq, s->req, MPI_STATUSES_IGNORE);
  } else {
    MPI_Allreduce(MPI_IN_PLACE, s->buf, (int)s->used, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    s->bytes += (double)s->used * sizeof(float);
    s->buckets++;
  }
  s->wait_s += now() - t0;
  s->nreq = 0;
  float total = s->buf[s->used - 1]; /* the ranks' counts, summed */
  lunet_status st = LUNET_OK;
  if (failed) {
    st = lunet_error(ctx, failed, "%s", s->why[0] ? s->why : "mpi: out of host memory");
  } else if (!isfinite(total)) {
    st = lunet_error(ctx, LUNET_ERR_ARG, "mpi: another rank failed in this step");
  } else if (total != (float)s->global_count) {
    st = lunet_error(ctx, LUNET_ERR_ARG, "mpi: the ranks took %g samples in this step, this rank expected %g "
                     "(ranks on different data or batch sizes?)", total, s->global_count);
  }
  for (int i = 0; !st && i < s->nplaced; i++) {
    placed *p = &s->where[i];
    float *v = s->buf + p->offset;
    st = lunet_tensor_write(ctx, grads[p->param], v, sizeof *v * (size_t)p->n);
  }
  /* the moving statistics (they changed in this step's forward), averaged
   * with each rank weighted by its samples, as the gradients: summed in
   * double precision and rounded once, so that values alike on every rank
   * stay exactly what they are (fl(6/11 w) + fl(5/11 w) need not be w).
   * One exchange for all of them, made by every rank whatever failed
   * here, so that no rank waits for another (s->buf holds the largest). */
  for (int i = 0, at = 0; i < s->nfixed; at += (int)lunet_tensor_numel(s->fixed[i++])) {
    int64_t m = lunet_tensor_numel(s->fixed[i]);
    lunet_status r = lunet_tensor_read(ctx, s->fixed[i], s->buf, sizeof(float) * (size_t)m);
    if (!st) st = r;
    for (int64_t j = 0; j < m; j++) s->fsum[at + j] = (double)s->buf[j] * s->local_count;
  }
  if (s->nfixed) MPI_Allreduce(MPI_IN_PLACE, s->fsum, (int)s->nfsum, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  for (int i = 0, at = 0; !st && i < s->nfixed; at += (int)lunet_tensor_numel(s->fixed[i++])) {
    int64_t m = lunet_tensor_numel(s->fixed[i]);
    for (int64_t j = 0; j < m; j++) s->buf[j] = (float)(s->fsum[at + j] / s->global_count);
    st = lunet_tensor_write(ctx, s->fixed[i], s->buf, sizeof(float) * (size_t)m);
  }
  s->last_end = now();
  s->step_s += s->last_end - t0;
  s->used = s->sent = 0;
  s->nplaced = 0;
  s->failed = LUNET_OK;
  s->why[0] = '\0';
  s->steps++;
  return st;
}

static void release_fixed(sync *s) {
  for (int i = 0; i < s->nfixed; i++) lunet_tensor_release(s->fixed[i]);
  free(s->fixed);
  s->fixed = NULL;
  s->nfixed = 0;
}

static int sync_gc(lua_State *L) {
  sync *s = check_sync(L, 1);
  if (s->model) {
    lunet_model_set_grad_ready(s->model, NULL, NULL);
    lunet_model_set_grad_transform(s->model, NULL, NULL);
    lunet_model_release(s->model);
    s->model = NULL;
  }
  release_fixed(s);
  free(s->buf);
  free(s->where);
  free(s->fsum);
  s->fsum = NULL;
  s->buf = NULL;
  s->where = NULL;
  return 0;
}

/* mpi.attach(model, {non-trainable tensors}, overlap, bucket_bytes) ->
 * sync: the model's steps average their gradients across ranks while the
 * sync lives (sync:detach() or its collection ends it). */
static int l_attach(lua_State *L) {
  lunet_model *m = check_model(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  bool overlap = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
  lua_Integer bytes = luaL_optinteger(L, 4, 4 << 20);
  if (bytes < 1024) return luaL_argerror(L, 4, "a bucket of at least 1024 bytes");
  sync *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SYNC_MT);
  s->overlap = overlap;
  s->bucket = (size_t)bytes / sizeof(float);
  s->local_count = 1;
  s->global_count = size;
  int n = (int)luaL_len(L, 2);
  s->fixed = calloc((size_t)(n ? n : 1), sizeof *s->fixed);
  if (!s->fixed) return luaL_error(L, "mpi: out of memory");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1);
    lunet_tensor *t = check_tensor(L, -1);
    lua_pop(L, 1);
    if (lunet_tensor_dtype(t) != LUNET_F32) continue;
    s->fixed[s->nfixed++] = lunet_tensor_retain(t);
  }
  /* room for every gradient and the count, now: a buffer never moves while
   * buckets of it are in flight */
  int64_t total = 1;
  for (int i = 0; i < lunet_model_param_count(m); i++) total += lunet_tensor_numel(lunet_model_param(m, i));
  for (int i = 0; i < s->nfixed; i++) {
    if (lunet_tensor_numel(s->fixed[i]) > total) total = lunet_tensor_numel(s->fixed[i]);
    s->nfsum += lunet_tensor_numel(s->fixed[i]);
  }
  if (grow(s, total)) return luaL_error(L, "mpi: out of memory for %d gradients", (int)total);
  if (!(s->fsum = malloc(sizeof *s->fsum * (size_t)(s->nfsum ? s->nfsum : 1))))
    return luaL_error(L, "mpi: out of memory for the non-trainable weights");
  s->model = lunet_model_retain(m);
  lunet_model_set_grad_ready(m, on_grad_ready, s);
  lunet_model_set_grad_transform(m, on_transform, s);
  return 1;
}

static int s_detach(lua_State *L) { return sync_gc(L); }

/* sync:count(n, total): this rank's samples in the coming step, and all
 * ranks' together */
static int s_count(lua_State *L) {
  sync *s = check_sync(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2), total = luaL_checkinteger(L, 3);
  if (n < 1 || total < n) return luaL_error(L, "mpi: a step of %d samples on this rank, %d in all", (int)n, (int)total);
  s->local_count = (double)n;
  s->global_count = (double)total;
  return 0;
}

/* sync:stats() -> {steps, buckets, bytes, wait_s, copy_s, sync_s, issue_s,
 * work_s}: work_s is the time from one step's exchange to the next one's
 * (data, forward, backward, the optimizer), over the steps after the first */
static int s_stats(lua_State *L) {
  sync *s = check_sync(L, 1);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, s->steps);
  lua_setfield(L, -2, "steps");
  lua_pushinteger(L, s->buckets);
  lua_setfield(L, -2, "buckets");
  lua_pushnumber(L, s->bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushnumber(L, s->wait_s);
  lua_setfield(L, -2, "wait_s");
  lua_pushnumber(L, s->copy_s);
  lua_setfield(L, -2, "copy_s");
  lua_pushnumber(L, s->step_s);
  lua_setfield(L, -2, "sync_s");
  lua_pushnumber(L, s->issue_s);
  lua_setfield(L, -2, "issue_s");
  lua_pushnumber(L, s->work_s);
  lua_setfield(L, -2, "work_s");
  return 1;
}

static const luaL_Reg sync_methods[] = {{"detach", s_detach}, {"count", s_count}, {"stats", s_stats}, {NULL, NULL}};

static const luaL_Reg functions[] = {{"init", l_init},
                                     {"finalize", l_finalize},
                                     {"abort", l_abort},
                                     {"barrier", l_barrier},
                                     {"allreduce_sum", l_allreduce_sum},
                                     {"bcast_ints", l_bcast_ints},
                                     {"bcast_tensor", l_bcast_tensor},
                                     {"attach", l_attach},
                                     {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_lunet_mpi(lua_State *L) {
  if (luaL_newmetatable(L, SYNC_MT)) {
    lua_pushcfunction(L, sync_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, sync_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, functions);
  return 1;
}
