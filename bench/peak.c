/*
 * This machine's ceilings for the roofline (bench/roofline.lua): the
 * single-precision FMA throughput and the memory bandwidth, on one core
 * and on all of them at once.
 *
 *   FMA: each thread runs 16 independent chains of fused multiply-adds on
 *   whole vector registers (AVX-512: 16 floats, else AVX2: 8), so that the
 *   FMA units' latency is hidden; GFLOP/s = 2 * lanes * chains * iterations
 *   / seconds.  The best of 5 runs counts.
 *   Memory: each thread runs STREAM's triad, a[i] = b[i] + s * c[i], over
 *   arrays far larger than the caches (64 MB each per thread); bytes = 3 *
 *   4 * n (two reads, one write; write-allocate traffic not counted, as
 *   STREAM does).  The best of 5 runs counts.
 *
 *   cc -O2 -pthread bench/peak.c -o peak && ./peak [THREADS]
 * prints "key value" lines: isa, fma_gflops_1, fma_gflops_all, triad_gbs_1,
 * triad_gbs_all, threads.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHAINS 16
#define FMA_ITERS 20000000L
#define TRIAD_FLOATS (16L << 20) /* 64 MB per array */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int use_avx512;
static volatile float sink;

__attribute__((target("avx512f"))) static double fma_avx512(long iters) {
  __m512 acc[CHAINS], x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
  for (long k = 0; k < iters; k++)
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  float s = 0;
  for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
  sink = s;
  return 2.0 * 16 * CHAINS * (double)iters;
}

__attribute__((target("avx2,fma"))) static double fma_avx2(long iters) {
  __m256 acc[CHAINS], x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < iters; k++)
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  float v[8], s = 0;
  for (int i = 0; i < CHAINS; i++) {
    _mm256_storeu_ps(v, acc[i]);
    for (int j = 0; j < 8; j++) s += v[j];
  }
  sink = s;
  return 2.0 * 8 * CHAINS * (double)iters;
}

typedef struct job {
  int kind; /* 0: FMA, 1: triad */
  double work, seconds;
  float *a, *b, *c;
  pthread_barrier_t *start;
} job;

static void *run(void *arg) {
  job *j = arg;
  pthread_barrier_wait(j->start);
  double t0 = now();
  if (j->kind == 0) {
    j->work = use_avx512 ? fma_avx512(FMA_ITERS) : fma_avx2(FMA_ITERS);
  } else {
    for (long i = 0; i < TRIAD_FLOATS; i++) j->a[i] = j->b[i] + 3.0f * j->c[i];
    j->work = 3.0 * sizeof(float) * (double)TRIAD_FLOATS;
  }
  j->seconds = now() - t0;
  return NULL;
}

/* The best rate over 5 runs of `threads` threads at once (work over the
 * slowest thread's time). */
static double measure(int kind, int threads, job *jobs) {
  double best = 0;
  for (int rep = 0; rep < 5; rep++) {
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    pthread_t tid[256];
    for (int t = 0; t < threads; t++) {
      jobs[t].kind = kind;
      jobs[t].start = &start;
      pthread_create(&tid[t], NULL, run, &jobs[t]);
    }
    double work = 0, slowest = 0;
    for (int t = 0; t < threads; t++) {
      pthread_join(tid[t], NULL);
      work += jobs[t].work;
      if (jobs[t].seconds > slowest) slowest = jobs[t].seconds;
    }
    pthread_barrier_destroy(&start);
    if (work / slowest > best) best = work / slowest;
  }
  return best / 1e9;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (threads < 1 || threads > 256) {
    fprintf(stderr, "usage: peak [THREADS (1 to 256)]\n");
    return 2;
  }
  __builtin_cpu_init();
  use_avx512 = __builtin_cpu_supports("avx512f");
  if (!use_avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
    fprintf(stderr, "peak: this CPU has neither AVX-512 nor AVX2 with FMA\n");
    return 1;
  }
  job *jobs = calloc((size_t)threads, sizeof *jobs);
  for (int t = 0; t < threads; t++) {
    jobs[t].a = malloc(sizeof(float) * TRIAD_FLOATS);
    jobs[t].b = malloc(sizeof(float) * TRIAD_FLOATS);
    jobs[t].c = malloc(sizeof(float) * TRIAD_FLOATS);
    if (!jobs[t].a || !jobs[t].b || !jobs[t].c) {
      fprintf(stderr, "peak: out of memory for the triad arrays\n");
      return 1;
    }
    for (long i = 0; i < TRIAD_FLOATS; i++) jobs[t].a[i] = 0, jobs[t].b[i] = 1, jobs[t].c[i] = 2;
  }
  printf("isa %s\n", use_avx512 ? "avx512" : "avx2");
  printf("threads %d\n", threads);
  printf("fma_gflops_1 %.1f\n", measure(0, 1, jobs));
  printf("fma_gflops_all %.1f\n", measure(0, threads, jobs));
  printf("triad_gbs_1 %.1f\n", measure(1, 1, jobs));
  printf("triad_gbs_all %.1f\n", measure(1, threads, jobs));
  return 0;
}
