/*
 * lunet: the public C API of liblunet.
 *
 * Every function that can fail returns a status (or NULL) and leaves a
 * message in the context: lunet_ctx_error().  Nothing here aborts on input a
 * user or a file can cause.
 *
 * Ownership: functions named _new, and every op that returns a tensor, hand
 * the caller one reference, to be dropped with lunet_tensor_release().
 * Functions named _get borrow.
 *
 * Threads: a lunet_ctx is used by one thread at a time.  The registry of
 * backends and plugins is process-wide and guarded by a mutex.
 */
#ifndef LUNET_LUNET_H
#define LUNET_LUNET_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#if defined(LUNET_BUILDING)
#define LUNET_API __attribute__((visibility("default")))
#else
#define LUNET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_VERSION_STRING "0.2.0"
#define LUNET_MAX_DIMS 8

typedef enum lunet_status {
  LUNET_OK = 0,
  LUNET_ERR_ARG,         /* a bad argument value */
  LUNET_ERR_SHAPE,       /* shapes do not fit together */
  LUNET_ERR_NOMEM,       /* host or device out of memory */
  LUNET_ERR_IO,          /* a file could not be read or written */
  LUNET_ERR_FORMAT,      /* a file is not what it claims to be */
  LUNET_ERR_CHECKSUM,    /* bytes do not match the published checksum */
  LUNET_ERR_NET,         /* a download failed */
  LUNET_ERR_NOTFOUND,    /* no such backend, plugin, layer or file */
  LUNET_ERR_ABI,         /* a shared object built for another ABI */
  LUNET_ERR_UNSUPPORTED, /* the backend cannot run this op */
  LUNET_ERR_INTERRUPTED, /* the user pressed Ctrl-C */
  LUNET_ERR_DEVICE       /* the device failed (lost, driver error) */
} lunet_status;

typedef enum lunet_dtype {
  LUNET_F32 = 0, /* the compute type */
  LUNET_U8 = 1,  /* image data */
  LUNET_I32 = 2  /* indices, labels */
} lunet_dtype;

typedef struct lunet_ctx lunet_ctx;
typedef struct lunet_tensor lunet_tensor;
typedef struct lunet_layer lunet_layer;

/* ---- context and errors ---- */

LUNET_API lunet_ctx *lunet_ctx_new(void);
LUNET_API void lunet_ctx_free(lunet_ctx *ctx);
LUNET_API const char *lunet_ctx_error(const lunet_ctx *ctx);
LUNET_API lunet_status lunet_ctx_status(const lunet_ctx *ctx);
/* Sets the context's error and returns `status`, for `return lunet_error(...)`. */
LUNET_API lunet_status lunet_error(lunet_ctx *ctx, lunet_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
LUNET_API void lunet_clear_error(lunet_ctx *ctx);
LUNET_API const char *lunet_status_name(lunet_status s);

/* Seeds the context's counter-based RNG (initializers, dropout, shuffles). */
LUNET_API void lunet_seed(lunet_ctx *ctx, uint64_t seed);
LUNET_API uint64_t lunet_seed_get(const lunet_ctx *ctx);
/* Reserves `n` counters from the context's stream and returns the first:
 * every random draw is keyed by (seed, counter), so results do not depend on
 * thread count. */
LUNET_API uint64_t lunet_rng_take(lunet_ctx *ctx, uint64_t n);
/* The next number of the context's stream, uniform in [0, 1). */
LUNET_API double lunet_rng_uniform(lunet_ctx *ctx);

/* The dataset keys of the batch about to be trained on: Model:fit sets each
 * sample's dataset index (0-based) and the epoch before every step, so that
 * random preprocessing layers (nn.RandomFlip ...) draw exactly what
 * fit{augment = ...} would draw for the same samples.  Copies the indices;
 * n 0 clears them (indices may then be NULL); n < 0, or NULL indices with
 * n > 0, is an error. */
LUNET_API lunet_status lunet_set_sample_keys(lunet_ctx *ctx, uint64_t epoch, const int64_t *indices,
                                             int64_t n);
/* Room for n keys, filled by the caller, that become the batch's keys (no
 * copy: fit's step writes them here); NULL with the error set on out of
 * memory.  n > 0. */
LUNET_API int64_t *lunet_sample_keys_buffer(lunet_ctx *ctx, uint64_t epoch, int64_t n);
/* The keys set above, or NULL (*n 0) when none are set. */
LUNET_API const int64_t *lunet_sample_keys(const lunet_ctx *ctx, uint64_t *epoch, int64_t *n);

/* Ctrl-C: the REPL sets this flag from its signal handler; long loops poll it. */
LUNET_API void lunet_interrupt(void);
LUNET_API bool lunet_interrupted(void);
LUNET_API void lunet_interrupt_clear(void);

/* ---- backends ---- */

#define LUNET_MAX_DEVICES 8

/* One device a backend can run on (backend ABI 1.1). */
typedef struct lunet_device_info {
  char name[128];  /* "NVIDIA H200" */
  char type[16];   /* "discrete GPU", "integrated GPU", "virtual GPU", "CPU" */
  uint64_t memory; /* bytes */
} lunet_device_info;

typedef struct lunet_backend_info {
  char name[32];
  char device[128]; /* e.g. "AMD EPYC (2 threads)" */
  char detail[256]; /* e.g. "OpenBLAS 0.3.21, kernel SkylakeX" */
  int threads;
  bool available; /* false: detail says why */
  bool is_default;
  /* Appended in backend ABI 1.1; zero from 1.0 backends. */
  int ndevices;     /* entries of devices[] */
  int device_index; /* the one in use */
  lunet_device_info devices[LUNET_MAX_DEVICES];
} lunet_backend_info;

/* Loads every backend found (idempotent).  Fills up to `max` infos and
 * returns how many backends are known. */
LUNET_API int lunet_backends(lunet_ctx *ctx, lunet_backend_info *out, int max);
/* Makes `name` the default backend of new tensors in this context. */
LUNET_API lunet_status lunet_use(lunet_ctx *ctx, const char *name);
/* Same, on device `device` of that backend (-1: its choice; below -1 an
 * error).  The backend
 * restarts on that device when no tensor lives on it yet; otherwise asking
 * for another device is an error. */
LUNET_API lunet_status lunet_use_device(lunet_ctx *ctx, const char *name, int device);
LUNET_API const char *lunet_default_backend(lunet_ctx *ctx);
#define LUNET_MAX_THREADS 1024
/* 1 to LUNET_MAX_THREADS CPU threads (an error names the backend's
 * refusal); lunet_get_threads: the CPU's count once it runs, else the
 * default backend's. */
LUNET_API lunet_status lunet_set_threads(lunet_ctx *ctx, int n);
LUNET_API int lunet_get_threads(lunet_ctx *ctx);
/* Operations run on the CPU because the tensor's backend lacks them. */
LUNET_API uint64_t lunet_fallback_count(lunet_ctx *ctx);

/* The counters of backend `name` since it started (dispatches, barriers,
 * submits, waits, bytes moved, the recent products...): see
 * lunet/backend.h's lunet_backend_stats. */
struct lunet_backend_stats;
LUNET_API lunet_status lunet_get_backend_stats(lunet_ctx *ctx, const char *name, struct lunet_backend_stats *out);

/* ---- profiling ---- */

/* One recorded event: an op (a backend call; kind "op", named after the
 * backend function or its op: "gemm", "conv2d", "relu", "add", ...) or a
 * layer's pass (kind "forward", "backward" or "activation_backward", the
 * gradient of the layer's own activation, named after the layer).  Times in
 * microseconds from lunet_profile_start; flops where the core counts them
 * (matrix products and convolutions), else 0. */
typedef struct lunet_profile_event {
  const char *name, *kind;
  double start_us, duration_us, flops;
} lunet_profile_event;

/* Records this context's ops and layer passes until lunet_profile_stop.
 * On an asynchronous backend each op then waits for the device. */
LUNET_API lunet_status lunet_profile_start(lunet_ctx *ctx);
/* The events so far, in the order they ended (borrowed, valid until stop),
 * and those beyond the cap that were counted but not kept. */
LUNET_API int64_t lunet_profile_count(const lunet_ctx *ctx);
LUNET_API const lunet_profile_event *lunet_profile_events(const lunet_ctx *ctx);
LUNET_API uint64_t lunet_profile_dropped(const lunet_ctx *ctx);
LUNET_API void lunet_profile_stop(lunet_ctx *ctx);

/* ---- plugins ---- */

/* Loads a layer plugin .so (built-in plugins load on first use). */
LUNET_API lunet_status lunet_load_plugin(lunet_ctx *ctx, const char *path);
/* The i-th known layer type (0-based) or NULL past the end; loads the
 * built-in plugins first.  *plugin receives the plugin's name. */
LUNET_API const struct lunet_layer_type *lunet_layer_type_at(lunet_ctx *ctx, int i,
                                                             const char **plugin);
LUNET_API const struct lunet_layer_type *lunet_layer_type_find(lunet_ctx *ctx, const char *name);

/* ---- tensors ---- */

/* A new tensor on the default backend; contents undefined. */
LUNET_API lunet_tensor *lunet_tensor_new(lunet_ctx *ctx, lunet_dtype dt, int ndim,
                                         const int64_t *shape);
/* Same, on the named backend (NULL: the default). */
LUNET_API lunet_tensor *lunet_tensor_new_on(lunet_ctx *ctx, const char *backend, lunet_dtype dt,
                                            int ndim, const int64_t *shape);
LUNET_API lunet_tensor *lunet_tensor_from_data(lunet_ctx *ctx, lunet_dtype dt, int ndim,
                                               const int64_t *shape, const void *data);
/* Same, on the named backend (NULL: the default). */
LUNET_API lunet_tensor *lunet_tensor_from_data_on(lunet_ctx *ctx, const char *backend,
                                                  lunet_dtype dt, int ndim, const int64_t *shape,
                                                  const void *data);
LUNET_API lunet_tensor *lunet_tensor_retain(lunet_tensor *t);
LUNET_API void lunet_tensor_release(lunet_tensor *t);

LUNET_API int lunet_tensor_ndim(const lunet_tensor *t);
LUNET_API int64_t lunet_tensor_dim(const lunet_tensor *t, int i); /* i<0 from the end */
LUNET_API const int64_t *lunet_tensor_shape(const lunet_tensor *t);
LUNET_API int64_t lunet_tensor_numel(const lunet_tensor *t);
LUNET_API lunet_dtype lunet_tensor_dtype(const lunet_tensor *t);
LUNET_API const char *lunet_tensor_backend(const lunet_tensor *t);
LUNET_API size_t lunet_dtype_size(lunet_dtype dt);
LUNET_API const char *lunet_dtype_name(lunet_dtype dt);
/* "(2, 3)" into buf; returns buf. */
LUNET_API char *lunet_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);

LUNET_API lunet_status lunet_tensor_read(lunet_ctx *ctx, const lunet_tensor *t, void *dst,
                                         size_t nbytes);
LUNET_API lunet_status lunet_tensor_write(lunet_ctx *ctx, lunet_tensor *t, const void *src,
                                          size_t nbytes);
/* Reads one element (any dtype) as a double. */
LUNET_API lunet_status lunet_tensor_item(lunet_ctx *ctx, const lunet_tensor *t, int64_t flat_index,
                                         double *out);
/* The host address of a tensor's data when its backend keeps data in host
 * memory (the CPU), else NULL.  Valid while the tensor lives. */
LUNET_API const void *lunet_tensor_host_data(const lunet_tensor *t);
/* A copy on another backend (recorded on the tape: gradients move back). */
LUNET_API lunet_tensor *lunet_tensor_to(lunet_ctx *ctx, lunet_tensor *t, const char *backend);

/* Autograd flags.  A tensor that requires grad collects .grad in backward. */
LUNET_API void lunet_tensor_set_requires_grad(lunet_tensor *t, bool on);
LUNET_API bool lunet_tensor_requires_grad(const lunet_tensor *t);
LUNET_API lunet_tensor *lunet_tensor_grad_get(lunet_tensor *t); /* borrowed, may be NULL */
/* Whether an op recorded t (backward from it reaches something). */
LUNET_API bool lunet_tensor_on_tape(const lunet_tensor *t);
LUNET_API void lunet_tensor_zero_grad(lunet_tensor *t);
/* Runs the tape backward from `t` (a scalar, or any tensor with `grad_out`). */
LUNET_API lunet_status lunet_backward(lunet_ctx *ctx, lunet_tensor *t, lunet_tensor *grad_out);
/* Runs the tape backward from n tensors at once, roots[i] with gradient
 * grads[i] (same shape): what a graph with several outputs needs, since
 * their shared part runs once.  A root nothing differentiable reaches is
 * skipped. */
LUNET_API lunet_status lunet_backward_many(lunet_ctx *ctx, int n, lunet_tensor *const *roots,
                                           lunet_tensor *const *grads);
/* Grad mode: while off, ops record nothing (inference, optimizer steps). */
LUNET_API bool lunet_grad_enabled(lunet_ctx *ctx);
LUNET_API bool lunet_set_grad_enabled(lunet_ctx *ctx, bool on); /* returns previous */

/* Mixed precision.  The precision of the matrix products and convolutions
 * (forward and gradients) run from a context, as torch.autocast sets it:
 * with LUNET_PRECISION_BFLOAT16 their operands are rounded to bfloat16
 * (lunet_bf16_round in lunet/backend.h) and the products summed in
 * float32; every tensor, weight and other op stays float32.  A layer's
 * calls run at the layer's precision (lunet_layer_precision), which it
 * takes from the context's policy when it is made, as Keras's layers take
 * the global dtype policy. */
typedef enum lunet_precision { LUNET_PRECISION_FLOAT32 = 0, LUNET_PRECISION_BFLOAT16 = 1 } lunet_precision;
LUNET_API lunet_precision lunet_set_precision(lunet_ctx *ctx, lunet_precision p); /* returns previous */
LUNET_API lunet_precision lunet_get_precision(lunet_ctx *ctx);
/* The policy new layers take: "float32" or "mixed_bfloat16" (an error
 * names both for anything else). */
LUNET_API lunet_status lunet_set_policy(lunet_ctx *ctx, const char *policy);
LUNET_API const char *lunet_get_policy(lunet_ctx *ctx);
/* "float32" or "mixed_bfloat16"; NULL for an unknown name. */
LUNET_API const char *lunet_precision_policy_name(lunet_precision p);
/* How backend `name` runs bfloat16 products: 1 natively (faster than
 * float32), 0 emulated (rounded operands, float32 kernels), -1 not at all
 * (or no such backend: the context's error says which). */
LUNET_API int lunet_backend_bf16(lunet_ctx *ctx, const char *name);
/* A tensor sharing t's data, cut from the tape. */
LUNET_API lunet_tensor *lunet_detach(lunet_ctx *ctx, lunet_tensor *t);

#ifdef __cplusplus
}
#endif

#include "lunet/ops.h"

#endif
