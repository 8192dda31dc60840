/*
 * Allocation failure at every allocation of a training step, in turn.
 *
 * This program replaces malloc, calloc, realloc, aligned_alloc and
 * posix_memalign for the whole process (the executable's definitions
 * interpose on every library's calls, glibc's own included) with thin
 * wrappers around glibc's allocator that count calls and can make the k-th
 * call from now fail.  A small CNN (Conv2D, MaxPooling2D, BatchNormalization,
 * Dropout, Flatten, Dense; Adam, sparse categorical cross-entropy) is
 * made in a fresh context, the allocations of its first training step are
 * counted (N; later steps allocate nothing: the CPU backend pools its
 * buffers), and then for k = 1..N the same round runs with the step's k-th
 * allocation failing.  Each must return an error status with a message (or
 * succeed, where the code has a way around the failure), never crash; the
 * step after it must succeed with a finite loss; and the same round run
 * twice must leave the count of live allocations where the first left it
 * (a failure path that leaks shows here, without a leak checker, which
 * could not share the process with these wrappers).
 *
 * Not built with the sanitizers (their own malloc would be bypassed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <unistd.h>
#include <math.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lunet/model.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long calls;      /* allocation calls since the start */
static atomic_long live;       /* successful allocations minus frees */
static atomic_long fail_at = -1; /* the call number that fails, or -1 */

/* Whether this call is the one to fail. */
static int must_fail(void) {
  long n = atomic_fetch_add(&calls, 1);
  long at = atomic_load(&fail_at);
  if (at >= 0 && n == at) {
    if (getenv("ALLOC_FAULTS_TRACE")) { /* where the failing call came from, for addr2line */
      void *frames[16];
      backtrace_symbols_fd(frames, backtrace(frames, 16), 2);
      write(2, "--\n", 3);
    }
    errno = ENOMEM;
    return 1;
  }
  return 0;
}

/* ALLOC_FAULTS_LEAKS=k (debugging): round k is run twice and the blocks
 * the second run leaves behind are printed with their callers. */
#define TRACKED 65536
static struct {
  void *p;
  void *frames[24];
  int n;
} tracked[TRACKED];
static atomic_int tracking;

static void *counted(void *p) {
  if (p) atomic_fetch_add(&live, 1);
  if (p && atomic_load(&tracking)) {
    atomic_store(&tracking, 0); /* backtrace() must not recurse into this */
    for (int i = 0; i < TRACKED; i++)
      if (!tracked[i].p) {
        tracked[i].p = p;
        tracked[i].n = backtrace(tracked[i].frames, 24);
        break;
      }
    atomic_store(&tracking, 1);
  }
  return p;
}

static void untrack(void *p) {
  for (int i = 0; p && i < TRACKED; i++)
    if (tracked[i].p == p) tracked[i].p = NULL;
}

static void print_tracked(void) {
  for (int i = 0; i < TRACKED; i++)
    if (tracked[i].p) {
      backtrace_symbols_fd(tracked[i].frames, tracked[i].n, 2);
      write(2, "--\n", 3);
    }
}

/* Exported (the project builds with hidden visibility), so that they
 * interpose. */
#define EXPORT __attribute__((visibility("default")))

EXPORT void *malloc(size_t n) { return must_fail() ? NULL : counted(__libc_malloc(n)); }
EXPORT void *calloc(size_t a, size_t b) { return must_fail() ? NULL : counted(__libc_calloc(a, b)); }
EXPORT void *realloc(void *p, size_t n) {
  if (p == NULL) return malloc(n);
  if (n == 0) {
    free(p);
    return NULL;
  }
  if (must_fail()) return NULL;
  void *q = __libc_realloc(p, n); /* the same block, moved or not: live unchanged */
  if (q && q != p && atomic_load(&tracking)) {
    untrack(p);
    atomic_fetch_sub(&live, 1);
    counted(q);
  }
  return q;
}
EXPORT void *aligned_alloc(size_t a, size_t n) { return must_fail() ? NULL : counted(__libc_memalign(a, n)); }
EXPORT int posix_memalign(void **out, size_t a, size_t n) {
  if (must_fail()) return ENOMEM;
  *out = counted(__libc_memalign(a, n));
  return *out ? 0 : ENOMEM;
}
EXPORT void free(void *p) {
  if (p) atomic_fetch_sub(&live, 1);
  if (p && atomic_load(&tracking)) untrack(p);
  __libc_free(p);
}

/* ---- the model ---- */

#define FAIL(...) (fprintf(stderr, "alloc_faults: " __VA_ARGS__), exit(1))

static lunet_layer *layer(lunet_ctx *ctx, const char *type) {
  const lunet_layer_type *t = lunet_layer_type_find(ctx, type);
  lunet_layer *l = t ? lunet_layer_new(ctx, t) : NULL;
  if (!l) FAIL("%s: %s\n", type, lunet_ctx_error(ctx));
  return l;
}

static int add(lunet_ctx *ctx, lunet_model *m, lunet_layer *l, int v) {
  int out = lunet_model_add(ctx, m, l, 1, &v);
  lunet_layer_release(l);
  if (out < 0) FAIL("%s\n", lunet_ctx_error(ctx));
  return out;
}

static lunet_model *small_cnn(lunet_ctx *ctx) {
  lunet_model *m = lunet_model_new(ctx, "small_cnn");
  int64_t shape[3] = {8, 8, 1};
  int v = lunet_model_input(ctx, m, "image", 3, shape);
  lunet_layer *l = layer(ctx, "Conv2D");
  lunet_layer_set_int(l, "filters", 4);
  lunet_layer_set_int(l, "kernel_size", 3);
  lunet_layer_set_string(l, "activation", "relu");
  v = add(ctx, m, l, v);
  v = add(ctx, m, layer(ctx, "MaxPooling2D"), v);
  v = add(ctx, m, layer(ctx, "BatchNormalization"), v);
  l = layer(ctx, "Dropout");
  lunet_layer_set_float(l, "rate", 0.25);
  v = add(ctx, m, l, v);
  v = add(ctx, m, layer(ctx, "Flatten"), v);
  l = layer(ctx, "Dense");
  lunet_layer_set_int(l, "units", 3);
  lunet_layer_set_string(l, "activation", "softmax");
  v = add(ctx, m, l, v);
  if (lunet_model_set_outputs(ctx, m, 1, &v)) FAIL("%s\n", lunet_ctx_error(ctx));
  lunet_optimizer_config oc = lunet_optimizer_defaults(LUNET_OPT_ADAM);
  lunet_optimizer *opt = lunet_optimizer_new(ctx, &oc);
  lunet_loss_spec loss = {.kind = LUNET_LOSS_SPARSE_CATEGORICAL_CE, .weight = 1};
  const char *metrics[] = {"accuracy"};
  lunet_compile_opts co = {.nlosses = 1, .losses = &loss, .optimizer = opt, .nmetrics = 1, .metrics = metrics};
  if (!opt || lunet_model_compile(ctx, m, &co)) FAIL("compile: %s\n", lunet_ctx_error(ctx));
  lunet_optimizer_release(opt);
  return m;
}

static lunet_status step(lunet_ctx *ctx, lunet_model *m, lunet_tensor *x, lunet_tensor *y, double *loss) {
  return lunet_model_train_step(ctx, m, 1, &x, 1, &y, loss);
}

/* One round in a context of its own (so the CPU backend's buffer pool
 * starts empty and the first step allocates the same way every time): a
 * model, then its first training step with allocation call `fail` (counted
 * from the step's start; -1: none) failing, then a second step that must
 * succeed.  Returns the first step's allocation count; *failed tells
 * whether the first step returned an error. */
static long round_trip(long fail, bool *failed) {
  lunet_ctx *ctx = lunet_ctx_new();
  if (!ctx) FAIL("no context\n");
  lunet_seed(ctx, 3);
  lunet_model *m = small_cnn(ctx);
  float xs[16 * 64], ys[16];
  for (int i = 0; i < 16 * 64; i++) xs[i] = (float)((i * 37) % 101) / 101.0f;
  for (int i = 0; i < 16; i++) ys[i] = (float)(i % 3);
  int64_t xshape[4] = {16, 8, 8, 1}, yshape[1] = {16};
  lunet_tensor *x = lunet_tensor_from_data(ctx, LUNET_F32, 4, xshape, xs);
  lunet_tensor *y = lunet_tensor_from_data(ctx, LUNET_F32, 1, yshape, ys);
  if (!x || !y) FAIL("data: %s\n", lunet_ctx_error(ctx));
  double loss = NAN;
  long start = atomic_load(&calls);
  if (fail >= 0) atomic_store(&fail_at, start + fail);
  lunet_status s = step(ctx, m, x, y, &loss);
  atomic_store(&fail_at, -1);
  long count = atomic_load(&calls) - start;
  *failed = s != LUNET_OK;
  if (s != LUNET_OK && (lunet_ctx_error(ctx) == NULL || lunet_ctx_error(ctx)[0] == '\0'))
    FAIL("allocation %ld failed: status %d without a message\n", fail + 1, (int)s);
  if (fail < 0 && s != LUNET_OK) FAIL("a step without faults: %s\n", lunet_ctx_error(ctx));
  lunet_clear_error(ctx);
  if (step(ctx, m, x, y, &loss) || !isfinite(loss))
    FAIL("the step after failing allocation %ld: %s (loss %g)\n", fail + 1, lunet_ctx_error(ctx), loss);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_model_release(m);
  lunet_ctx_free(ctx);
  return count;
}

int main(void) {
  bool failed;
  void *frame;
  backtrace(&frame, 1); /* loads libgcc_s now, not inside a counted step */
  round_trip(-1, &failed); /* plugins and backends loaded once, for good */
  long live0 = atomic_load(&live);
  long per_step = round_trip(-1, &failed);
  if (atomic_load(&live) != live0)
    FAIL("a round without faults changes the live allocations by %+ld: the baseline is not steady\n",
         atomic_load(&live) - live0);
  if (per_step <= 0) FAIL("no allocation counted in a first step: the wrappers are not in use\n");
  if (getenv("ALLOC_FAULTS_LEAKS")) {
    long k = atol(getenv("ALLOC_FAULTS_LEAKS")) - 1;
    round_trip(k, &failed);
    atomic_store(&tracking, 1);
    round_trip(k, &failed);
    atomic_store(&tracking, 0);
    print_tracked();
    return 0;
  }
  int errors = 0, passed = 0;
  for (long k = 0; k < per_step; k++) {
    /* The CPU backend outlives contexts, and its pool keeps freed buffers
     * for reuse, so a round with a failure may leave the pool fuller than
     * before; the same round run again finds those buffers and must leave
     * the count where the first left it, or the failure path leaks. */
    round_trip(k, &failed);
    long after_first = atomic_load(&live);
    bool again;
    round_trip(k, &again);
    if (again != failed) FAIL("allocation %ld: the same fault gave an error once and not the next time\n", k + 1);
    failed ? errors++ : passed++;
    if (atomic_load(&live) != after_first)
      FAIL("failing allocation %ld of %ld leaks %+ld allocations each time\n", k + 1, per_step,
           atomic_load(&live) - after_first);
  }
  printf("alloc faults: %ld allocations in a first training step, each failed in turn: %d errors, "
         "%d steps got around the failure; no leak, and every next step trained\n", per_step, errors, passed);
  printf("alloc faults: ok\n");
  return 0;
}
