/*
 * Which vector instructions lunet's own CPU kernels use (conv.c's small-k
 * GEMMs so far; OpenBLAS picks its own, see blas.c): the best the CPU and
 * the OS support (AVX-512 needs the OS to save the zmm registers, which
 * blas.c's check reads from xgetbv), capped by LUNET_CPU_ISA.  Each such
 * kernel is compiled three times (target attributes) from one body and
 * picked by this choice, so a machine with AVX-512 can test all three.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "cpu.h"

lunet_cpu_isa lunet_cpu_isa_in_use = LUNET_CPU_SCALAR;

const char *lunet_cpu_isa_name(lunet_cpu_isa isa) {
  return isa == LUNET_CPU_AVX512 ? "avx512" : isa == LUNET_CPU_AVX2 ? "avx2" : "scalar";
}

int lunet_cpu_isa_choose(char *err, size_t n) {
  const char *kernel = lunet_cpu_blas_kernel_for_cpu(); /* "SkylakeX", "Haswell" or NULL */
  lunet_cpu_isa best = !kernel ? LUNET_CPU_SCALAR : !strcmp(kernel, "SkylakeX") ? LUNET_CPU_AVX512 : LUNET_CPU_AVX2;
  const char *cap = getenv("LUNET_CPU_ISA");
  if (cap && *cap) {
    lunet_cpu_isa want;
    if (!strcmp(cap, "avx512")) want = LUNET_CPU_AVX512;
    else if (!strcmp(cap, "avx2")) want = LUNET_CPU_AVX2;
    else if (!strcmp(cap, "scalar")) want = LUNET_CPU_SCALAR;
    else {
      snprintf(err, n, "cpu: LUNET_CPU_ISA=%s: expected avx512, avx2 or scalar (the widest vector instructions "
               "lunet's kernels may use)", cap);
      return -1;
    }
    if (want < best) best = want;
  }
  lunet_cpu_isa_in_use = best;
  lunet_cpu_bf16 = best == LUNET_CPU_AVX512 && __builtin_cpu_supports("avx512bf16");
  return 0;
}
