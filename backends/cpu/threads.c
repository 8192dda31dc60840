/*
 * The backend's thread pool: n-1 workers plus the calling thread.
 *
 * A parallel region publishes (fn, arg, n) and bumps a generation counter;
 * workers spin briefly on it (regions come back to back inside a training
 * step) and then sleep on a condition variable, so an idle backend costs no
 * CPU.  Every worker acknowledges every generation, which keeps a slow
 * worker from confusing two regions.
 */
#include <stdlib.h>
#include "cpu.h"

#define SPIN_ROUNDS 20000

typedef struct lunet_cpu_worker {
  lunet_cpu_pool *pool;
  int index;
} lunet_cpu_worker;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void run_chunk(lunet_cpu_pool *p, int chunk) {
  if (chunk >= p->chunks) return;
  int64_t begin = p->total * chunk / p->chunks;
  int64_t end = p->total * (chunk + 1) / p->chunks;
  if (begin < end) p->fn(p->arg, begin, end, chunk);
}

static uint64_t wait_generation(lunet_cpu_pool *p, uint64_t seen) {
  uint64_t g;
  for (int i = 0; i < SPIN_ROUNDS; i++) {
    g = atomic_load_explicit(&p->gen, memory_order_acquire);
    if (g != seen) return g;
    cpu_relax();
  }
  pthread_mutex_lock(&p->mu);
  while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
    pthread_cond_wait(&p->start_cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return g;
}

static void *worker_main(void *arg) {
  lunet_cpu_worker *w = arg;
  lunet_cpu_pool *p = w->pool;
  uint64_t seen = 0;
  for (;;) {
    seen = wait_generation(p, seen);
    if (p->stop) return NULL;
    run_chunk(p, w->index);
    if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_broadcast(&p->done_cv);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

/* Starts n-1 workers; 0 on success. */
int lunet_cpu_pool_start(lunet_cpu_pool *p, int n) {
  if (n < 1) n = 1;
  p->n = 1;
  p->stop = false;
  atomic_init(&p->gen, 0);
  atomic_init(&p->pending, 0);
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
  if (grain < 1) grain = 1;
  int64_t chunks = n / grain;
  if (chunks > be->pool.n) chunks = be->pool.n;
  return chunks < 1 ? 1 : (int)chunks;
}

void lunet_cpu_parallel(lunet_backend *be, int64_t n, int64_t grain, lunet_cpu_task fn,
                        void *arg) {
  lunet_cpu_pool *p = &be->pool;
  if (n <= 0) return;
  int chunks = lunet_cpu_chunks(be, n, grain);
  if (chunks <= 1) {
    fn(arg, 0, n, 0);
    return;
  }
  /* Regions from two host threads (e.g. a prefetch thread) take turns. */
  pthread_mutex_lock(&p->run_mu);
  p->fn = fn;
  p->arg = arg;
  p->total = n;
  p->chunks = chunks;
  atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
  pthread_cond_broadcast(&p->start_cv);
  pthread_mutex_unlock(&p->mu);
  run_chunk(p, 0);
  int spins = 0;
  while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 &&
         spins++ < SPIN_ROUNDS)
    cpu_relax();
  if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
      pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&p->run_mu);
}
