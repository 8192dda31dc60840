/*
 * OpenBLAS, loaded by the backend itself.  Debian's OpenBLAS 0.3.21 does not
 * know recent CPUs and falls back to slow generic kernels; it reads
 * OPENBLAS_CORETYPE only when it loads.  So the backend picks the best
 * kernel family this CPU and OS can run, sets the variable unless the user
 * did (we never override it), and only then loads the library.  Nothing
 * links OpenBLAS at build time, so no one loads it earlier by accident.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "cpu.h"

lunet_cpu_blas_fns lunet_cpu_blas;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

/* The kernel family for this CPU and OS: "SkylakeX" (AVX-512 with the OS
 * saving zmm state), "Haswell" (AVX2 and FMA), or NULL (OpenBLAS's own
 * choice). */
const char *lunet_cpu_blas_kernel_for_cpu(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return NULL;
  bool osxsave = c & bit_OSXSAVE, fma = c & bit_FMA, avx = c & bit_AVX;
  if (!osxsave || !avx) return NULL;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  bool ymm = (lo & 0x6) == 0x6, zmm = (lo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return NULL;
  bool avx2 = b & bit_AVX2;
  bool avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512DQ) && (b & bit_AVX512VL);
  if (avx512 && zmm && fma) return "SkylakeX";
  if (avx2 && fma && ymm) return "Haswell";
  return NULL;
}

static void load(void) {
  const char *kernel = lunet_cpu_blas_kernel_for_cpu();
  /* setenv before the library reads it; the 0 keeps a user's choice */
  if (kernel) setenv("OPENBLAS_CORETYPE", kernel, 0);
  void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(load_error, sizeof load_error, "cannot load OpenBLAS (libopenblas.so.0: %s; apt-get install "
             "libopenblas0)", dlerror());
    return;
  }
  lunet_cpu_blas.sgemm = (lunet_cpu_sgemm_fn)dlsym(h, "cblas_sgemm");
  lunet_cpu_blas.set_num_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
  lunet_cpu_blas.get_config = (char *(*)(void))dlsym(h, "openblas_get_config");
  lunet_cpu_blas.get_corename = (char *(*)(void))dlsym(h, "openblas_get_corename");
  if (!lunet_cpu_blas.sgemm || !lunet_cpu_blas.set_num_threads || !lunet_cpu_blas.get_config ||
      !lunet_cpu_blas.get_corename) {
    snprintf(load_error, sizeof load_error, "libopenblas.so.0 lacks cblas_sgemm or openblas_* (is it "
             "OpenBLAS?)");
    lunet_cpu_blas.sgemm = NULL;
  }
}

int lunet_cpu_blas_load(char *err, size_t n) {
  pthread_once(&once, load);
  if (lunet_cpu_blas.sgemm) return 0;
  snprintf(err, n, "cpu: %s", load_error);
  return -1;
}
