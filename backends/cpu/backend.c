/*
 * The CPU backend's entry point: descriptor, init/shutdown, describe and
 * thread control, the error slot, and the two vtables (fast and naive).
 *
 * Threads: the backend's own pool owns the cores.  OpenBLAS is kept at one
 * thread and every GEMM is split across the pool, because OpenBLAS's idle
 * threads busy-wait after a call and would fight the pool's threads (im2col,
 * pooling, elementwise) for the same cores.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cpu.h"
#include "lunet/env.h"

#define CPU_EXPORT __attribute__((visibility("default")))

static __thread char error_msg[512];

int lunet_cpu_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_msg, sizeof error_msg, fmt, ap);
  va_end(ap);
  return status;
}

const char *lunet_cpu_last_error(lunet_backend *be) {
  (void)be;
  return error_msg;
}

/* LUNET_THREADS, else every core; 0 (with the message in err) when
 * LUNET_THREADS is not a whole number from 1 to 1024 (it was ignored). */
static int default_threads(char *err, size_t err_len) {
  const char *env = getenv("LUNET_THREADS");
  long long v;
  if (env && *env) {
    if (!lunet_env_whole(env, 1, LUNET_MAX_THREADS, &v)) {
      snprintf(err, err_len, "cpu: LUNET_THREADS=%.40s: expected a whole number from 1 to %d (or unset it for "
               "every core)", env, LUNET_MAX_THREADS);
      return 0;
    }
    return (int)v;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)(n > LUNET_MAX_THREADS ? LUNET_MAX_THREADS : n) : 1;
}

/* "AMD EPYC" from /proc/cpuinfo's first "model name" line. */
static void cpu_model(char *out, size_t len) {
  snprintf(out, len, "CPU");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    char *colon = strchr(line, ':');
    if (!colon) continue;
    char *s = colon + 1;
    while (*s == ' ' || *s == '\t') s++;
    s[strcspn(s, "\n")] = '\0';
    if (*s) snprintf(out, len, "%s", s);
    break;
  }
  fclose(f);
}

static void cpu_describe(lunet_backend *be, lunet_backend_info *info) {
  char model[96];
  int threads = lunet_cpu_threads(be);
  memset(info, 0, sizeof *info);
  snprintf(info->name, sizeof info->name, "cpu");
  cpu_model(model, sizeof model);
  snprintf(info->device, sizeof info->device, "%s (%d thread%s)", model, threads,
           threads == 1 ? "" : "s");
  /* lunet_cpu_blas.get_config() already starts with "OpenBLAS <version>". */
  const char *cfg = lunet_cpu_blas.get_config();
  snprintf(info->detail, sizeof info->detail, "%s%s, kernel %s, lunet kernels %s, bfloat16 %s",
           strncmp(cfg, "OpenBLAS", 8) == 0 ? "" : "OpenBLAS ", cfg, lunet_cpu_blas.get_corename(),
           lunet_cpu_isa_name(lunet_cpu_isa_in_use), lunet_cpu_bf16 ? "AVX512-BF16" : "emulated");
  info->threads = threads;
  info->available = true;
  info->ndevices = 1;
  info->device_index = 0;
  snprintf(info->devices[0].name, sizeof info->devices[0].name, "%s", model);
  snprintf(info->devices[0].type, sizeof info->devices[0].type, "CPU");
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  info->devices[0].memory = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

static int cpu_set_threads(lunet_backend *be, int n) {
  char why[160];
  if (n <= 0 && !(n = default_threads(why, sizeof why))) return lunet_cpu_error(LUNET_ERR_ARG, "%s", why);
  if (n > LUNET_MAX_THREADS)
    return lunet_cpu_error(LUNET_ERR_ARG, "cpu: %d threads requested, at most %d", n, LUNET_MAX_THREADS);
  if (n == be->pool.n) return 0;
  lunet_cpu_pool_stop(&be->pool);
  if (lunet_cpu_pool_start(&be->pool, n) != 0) {
    lunet_cpu_pool_start(&be->pool, 1);
    return lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: could not start %d threads (running on 1 thread)",
                           n);
  }
  lunet_cpu_blas.set_num_threads(1);
  return 0;
}

static int cpu_probe(char *why, size_t why_len) {
  if (why && why_len) why[0] = '\0';
  return 1;
}

static lunet_backend *cpu_init(int threads, int device, char *err, size_t err_len) {
  if (device > 0) {
    snprintf(err, err_len, "cpu: there is one device, 0; got %d", device);
    return NULL;
  }
  if (lunet_cpu_blas_load(err, err_len) || lunet_cpu_isa_choose(err, err_len)) return NULL;
  lunet_backend *be = calloc(1, sizeof *be);
  if (!be) {
    snprintf(err, err_len, "cpu: out of memory allocating the backend state");
    return NULL;
  }
  pthread_mutex_init(&be->mem_mu, NULL);
  if (threads <= 0 && !(threads = default_threads(err, err_len))) {
    pthread_mutex_destroy(&be->mem_mu);
    free(be);
    return NULL;
  }
  if (threads > LUNET_MAX_THREADS) {
    snprintf(err, err_len, "cpu: %d threads requested, at most %d", threads, LUNET_MAX_THREADS);
    pthread_mutex_destroy(&be->mem_mu);
    free(be);
    return NULL;
  }
  if (lunet_cpu_pool_start(&be->pool, threads) != 0) {
    snprintf(err, err_len, "cpu: could not start %d threads", threads);
    pthread_mutex_destroy(&be->mem_mu);
    free(be);
    return NULL;
  }
  lunet_cpu_blas.set_num_threads(1);
  return be;
}

static void cpu_shutdown(lunet_backend *be) {
  if (!be) return;
  lunet_cpu_pool_stop(&be->pool);
  lunet_cpu_pool_drain(be);
  free(be->bins);
  pthread_mutex_destroy(&be->mem_mu);
  free(be);
}

static const lunet_backend_i fast_vtable = {
    .last_error = lunet_cpu_last_error,
    .describe = cpu_describe,
    .set_threads = cpu_set_threads,
    .buffer_alloc = lunet_cpu_buffer_alloc,
    .buffer_free = lunet_cpu_buffer_free,
    .buffer_upload = lunet_cpu_buffer_upload,
    .buffer_download = lunet_cpu_buffer_download,
    .buffer_copy = lunet_cpu_buffer_copy,
    .synchronize = lunet_cpu_synchronize,
    .stats = lunet_cpu_stats,
    .fill = lunet_cpu_fill,
    .cast = lunet_cpu_cast,
    .strided_copy = lunet_cpu_strided_copy,
    .unary = lunet_cpu_unary,
    .unary_backward = lunet_cpu_unary_backward,
    .binary = lunet_cpu_binary,
    .reduce = lunet_cpu_reduce,
    .argmax = lunet_cpu_argmax,
    .gemm = lunet_cpu_gemm,
    .conv2d = lunet_cpu_conv2d,
    .conv2d_backward_data = lunet_cpu_conv2d_backward_data,
    .conv2d_backward_filter = lunet_cpu_conv2d_backward_filter,
    .pool2d = lunet_cpu_pool2d,
    .pool2d_backward = lunet_cpu_pool2d_backward,
    .softmax = lunet_cpu_softmax,
    .softmax_backward = lunet_cpu_softmax_backward,
    .softmax_xent = lunet_cpu_softmax_xent,
    .batchnorm = lunet_cpu_batchnorm,
    .batchnorm_backward = lunet_cpu_batchnorm_backward,
    .dropout_mask = lunet_cpu_dropout_mask,
    .gather_rows = lunet_cpu_gather_rows,
    .scatter_add_rows = lunet_cpu_scatter_add_rows,
    .lstm_cell = lunet_cpu_lstm_cell,
    .lstm_cell_backward = lunet_cpu_lstm_cell_backward,
    .gru_cell = lunet_cpu_gru_cell,
    .gru_cell_backward = lunet_cpu_gru_cell_backward,
    .layernorm = lunet_cpu_layernorm,
    .layernorm_backward = lunet_cpu_layernorm_backward,
    .sgd_update = lunet_cpu_sgd_update,
    .adam_update = lunet_cpu_adam_update,
    .rmsprop_update = lunet_cpu_rmsprop_update,
    .affine_resample = lunet_cpu_affine_resample,
    .bf16_native = lunet_cpu_bf16_native,
    .gemm_bf16 = lunet_cpu_gemm_bf16,
    .conv2d_bf16 = lunet_cpu_conv2d_bf16,
    .conv2d_backward_data_bf16 = lunet_cpu_conv2d_backward_data_bf16,
    .conv2d_backward_filter_bf16 = lunet_cpu_conv2d_backward_filter_bf16,
    .max_pool2d_relu = lunet_cpu_max_pool2d_relu,
    .max_pool2d_relu_backward = lunet_cpu_max_pool2d_relu_backward,
    .linear = lunet_cpu_linear,
    .update_multi = lunet_cpu_update_multi,
    .gemm_relu_mask = lunet_cpu_gemm_relu_mask,
};

/* The naive vtable shares the memory and control members of the fast one. */
static lunet_backend_i naive_vtable;
static pthread_once_t naive_once = PTHREAD_ONCE_INIT;

static void naive_build(void) {
  naive_vtable = lunet_cpu_naive_vtable;
  naive_vtable.last_error = fast_vtable.last_error;
  naive_vtable.describe = fast_vtable.describe;
  naive_vtable.set_threads = fast_vtable.set_threads;
  naive_vtable.buffer_alloc = fast_vtable.buffer_alloc;
  naive_vtable.buffer_free = fast_vtable.buffer_free;
  naive_vtable.buffer_upload = fast_vtable.buffer_upload;
  naive_vtable.buffer_download = fast_vtable.buffer_download;
  naive_vtable.buffer_copy = fast_vtable.buffer_copy;
  naive_vtable.synchronize = fast_vtable.synchronize;
  naive_vtable.stats = fast_vtable.stats;
}

/* The reference ops: plain single-threaded loops the fast ones are tested
 * against.  Use it with a backend from the descriptor's init(). */
CPU_EXPORT const lunet_backend_i *lunet_cpu_naive_iface(void) {
  pthread_once(&naive_once, naive_build);
  return &naive_vtable;
}

static const lunet_backend_desc cpu_desc = {
    .abi_major = LUNET_BACKEND_ABI_MAJOR,
    .abi_minor = LUNET_BACKEND_ABI_MINOR,
    .struct_size = sizeof(lunet_backend_desc),
    .iface_size = sizeof(lunet_backend_i),
    .name = "cpu",
    .version = LUNET_VERSION_STRING,
    .probe = cpu_probe,
    .init = cpu_init,
    .caps = LUNET_BACKEND_HOST_VISIBLE,
    .shutdown = cpu_shutdown,
    .iface = &fast_vtable,
};

CPU_EXPORT const lunet_backend_desc *lunet_backend_entry(void) { return &cpu_desc; }
