/*
 * The backend's thread pool: n-1 workers plus the calling thread.
 *
 * A region publishes (fn, arg, n, chunks), resets the claim counter (tagged
 * with the region's number) and bumps a generation counter.  Workers spin
 * briefly on the generation (regions come back to back inside a training
 * step), then sleep on a condition variable, so an idle backend costs no
 * CPU.  Everyone, the caller included, claims chunks until none is left;
 * the caller then waits for the chunks others are still running.  A claim
 * carries the region's number, so a worker that wakes late can never take
 * a chunk of the next region with the previous region's task.
 */
#include <stdlib.h>
#include "cpu.h"

#define SPIN_ROUNDS 20000

typedef struct lunet_cpu_worker {
  lunet_cpu_pool *pool;
  int index;
} lunet_cpu_worker;

static __thread int current_tid;

int lunet_cpu_tid(void) { return current_tid; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Claims and runs chunks of region `region` until none is left. */
static void run_claims(lunet_cpu_pool *p, uint64_t region) {
  for (;;) {
    uint64_t v = atomic_load_explicit(&p->claim, memory_order_acquire);
    if ((v >> 32) != (region & 0xffffffffu)) return;
    /* One word holds the region, its chunk count and the next chunk, so a
     * claim never mixes two regions. */
    int chunk = (int)(v & 0xffff), chunks = (int)((v >> 16) & 0xffff);
    if (chunk >= chunks) return;
    if (!atomic_compare_exchange_weak_explicit(&p->claim, &v, v + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;
    /* The region cannot end while our chunk is unfinished, so its fields
     * are stable from here. */
    int64_t begin = p->total * chunk / chunks;
    int64_t end = p->total * (chunk + 1) / chunks;
    if (begin < end) p->fn(p->arg, begin, end, chunk);
    if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == chunks) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_broadcast(&p->done_cv);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

static uint64_t wait_generation(lunet_cpu_pool *p, uint64_t seen) {
  uint64_t g;
  for (int i = 0; i < SPIN_ROUNDS; i++) {
    g = atomic_load_explicit(&p->gen, memory_order_acquire);
    if (g != seen) return g;
    cpu_relax();
  }
  pthread_mutex_lock(&p->mu);
  /* seq_cst pairs with the caller's store of gen and load of sleepers:
   * either it sees us asleep or we see its region. */
  atomic_fetch_add(&p->sleepers, 1);
  while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->start_cv, &p->mu);
  atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_relaxed);
  pthread_mutex_unlock(&p->mu);
  return g;
}

static void *worker_main(void *arg) {
  lunet_cpu_worker *w = arg;
  lunet_cpu_pool *p = w->pool;
  current_tid = w->index; /* the first touch of this thread's TLS allocates it */
  pthread_mutex_lock(&p->mu);
  p->started++;
  pthread_cond_broadcast(&p->done_cv);
  pthread_mutex_unlock(&p->mu);
  uint64_t seen = 0; /* gen at pool start, even if a region began before we ran */
  for (;;) {
    seen = wait_generation(p, seen);
    pthread_mutex_lock(&p->mu);
    bool stop = p->stop;
    pthread_mutex_unlock(&p->mu);
    if (stop) return NULL;
    run_claims(p, seen);
  }
}

/* Starts n-1 workers and waits until each is running, so that nothing of a
 * worker's start (its thread-local storage) happens later at a random
 * moment; 0 on success. */
int lunet_cpu_pool_start(lunet_cpu_pool *p, int n) {
  if (n < 1) n = 1;
  p->n = 1;
  p->stop = false;
  p->started = 0;
  atomic_init(&p->gen, 0);
  atomic_init(&p->claim, 0);
  atomic_init(&p->done, 0);
  atomic_init(&p->sleepers, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->run_mu, NULL);
  pthread_cond_init(&p->start_cv, NULL);
  pthread_cond_init(&p->done_cv, NULL);
  p->workers = calloc((size_t)n, sizeof *p->workers);
  p->wargs = calloc((size_t)n, sizeof *p->wargs);
  if (!p->workers || !p->wargs) {
    lunet_cpu_pool_stop(p);
    return -1;
  }
  for (int i = 1; i < n; i++) {
    p->wargs[i].pool = p;
    p->wargs[i].index = i;
    if (pthread_create(&p->workers[i], NULL, worker_main, &p->wargs[i]) != 0) {
      lunet_cpu_pool_stop(p);
      return -1;
    }
    p->n = i + 1;
  }
  pthread_mutex_lock(&p->mu);
  while (p->started < p->n - 1) pthread_cond_wait(&p->done_cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

void lunet_cpu_pool_stop(lunet_cpu_pool *p) {
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
  pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->workers[i], NULL);
  free(p->workers);
  free(p->wargs);
  p->workers = NULL;
  p->wargs = NULL;
  p->n = 1;
  pthread_cond_destroy(&p->start_cv);
  pthread_cond_destroy(&p->done_cv);
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->run_mu);
}

int lunet_cpu_threads(lunet_backend *be) { return be->pool.n; }

int lunet_cpu_chunks(lunet_backend *be, int64_t n, int64_t grain) {
  if (grain < 1) grain = 1; /* at most pool.n <= 1024 chunks: 16 bits of the claim */
  int64_t chunks = n / grain;
  if (chunks > be->pool.n) chunks = be->pool.n;
  return chunks < 1 ? 1 : (int)chunks;
}

void lunet_cpu_parallel(lunet_backend *be, int64_t n, int64_t grain, lunet_cpu_task fn, void *arg) {
  lunet_cpu_pool *p = &be->pool;
  if (n <= 0) return;
  LUNET_CPU_COUNT(be, dispatches, 1); /* the CPU's dispatch: one parallel region */
  int chunks = lunet_cpu_chunks(be, n, grain);
  if (chunks <= 1) {
    fn(arg, 0, n, 0);
    return;
  }
  /* Regions from two host threads (e.g. a prefetch thread) take turns. */
  pthread_mutex_lock(&p->run_mu);
  int saved_tid = current_tid;
  current_tid = 0;
  p->fn = fn;
  p->arg = arg;
  p->total = n;
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  uint64_t region = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
  atomic_store_explicit(&p->claim, (region & 0xffffffffu) << 32 | (uint64_t)chunks << 16,
                        memory_order_release);
  atomic_store(&p->gen, region);
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
  }
  run_claims(p, region);
  for (int i = 0; i < SPIN_ROUNDS; i++) {
    if (atomic_load_explicit(&p->done, memory_order_acquire) == chunks) break;
    cpu_relax();
  }
  if (atomic_load_explicit(&p->done, memory_order_acquire) != chunks) {
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->done, memory_order_acquire) != chunks)
      pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
  current_tid = saved_tid;
  pthread_mutex_unlock(&p->run_mu);
}
