/* The per-context state: error message, RNG stream, grad mode, default backend. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

lunet_ctx *lunet_ctx_new(void) {
  lunet_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->grad_enabled = true;
  ctx->seed = 0x5eed;
  ctx->backend = -1;
  ctx->weight_budget = -1;
  return ctx;
}

void lunet_ctx_free(lunet_ctx *ctx) {
  if (ctx) lunet_profile_stop(ctx);
  if (ctx) free(ctx->keys);
  free(ctx);
}

/* A NULL context is lunet_ctx_new's failure: out of host memory. */
const char *lunet_ctx_error(const lunet_ctx *ctx) {
  if (!ctx) return "no context (NULL): lunet_ctx_new returned NULL, out of host memory";
  return ctx->status == LUNET_OK ? "no error" : ctx->msg;
}

lunet_status lunet_ctx_status(const lunet_ctx *ctx) { return ctx ? ctx->status : LUNET_ERR_NOMEM; }

lunet_status lunet_error(lunet_ctx *ctx, lunet_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
  va_end(ap);
  ctx->status = status;
  return status;
}

void lunet_clear_error(lunet_ctx *ctx) {
  ctx->status = LUNET_OK;
  ctx->msg[0] = '\0';
}

const char *lunet_status_name(lunet_status s) {
  static const char *const names[] = {
      "ok",          "bad argument",      "shape mismatch",  "out of memory", "I/O error",
      "bad format",  "checksum mismatch", "download failed", "not found",     "ABI mismatch",
      "unsupported", "interrupted",       "device error"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown error";
}

void lunet_seed(lunet_ctx *ctx, uint64_t seed) {
  ctx->seed = seed;
  ctx->rng_counter = 0;
}

uint64_t lunet_seed_get(const lunet_ctx *ctx) { return ctx->seed; }

uint64_t lunet_rng_take(lunet_ctx *ctx, uint64_t n) {
  uint64_t first = ctx->rng_counter;
  ctx->rng_counter += n;
  return first;
}

int64_t *lunet_sample_keys_buffer(lunet_ctx *ctx, uint64_t epoch, int64_t n) {
  if (n > ctx->keys_cap) { /* grows once; the steps after reuse it */
    int64_t *k = realloc(ctx->keys, sizeof *k * (size_t)n);
    if (!k) {
      lunet_error(ctx, LUNET_ERR_NOMEM, "sample keys: out of memory");
      return NULL;
    }
    ctx->keys = k;
    ctx->keys_cap = n;
  }
  ctx->nkeys = n;
  ctx->keys_epoch = epoch;
  return ctx->keys;
}

lunet_status lunet_set_sample_keys(lunet_ctx *ctx, uint64_t epoch, const int64_t *indices, int64_t n) {
  if (n < 0 || (!indices && n > 0))
    return lunet_error(ctx, LUNET_ERR_ARG, "sample keys: %lld indices at %s (n 0 clears them)", (long long)n,
                       indices ? "an array" : "NULL");
  if (n == 0) {
    ctx->nkeys = 0;
    return LUNET_OK;
  }
  int64_t *k = lunet_sample_keys_buffer(ctx, epoch, n);
  if (!k) return ctx->status;
  memcpy(k, indices, sizeof *indices * (size_t)n);
  return LUNET_OK;
}

const int64_t *lunet_sample_keys(const lunet_ctx *ctx, uint64_t *epoch, int64_t *n) {
  *epoch = ctx->keys_epoch;
  *n = ctx->nkeys;
  return ctx->nkeys ? ctx->keys : NULL;
}

/* The one flag a signal handler may touch. */
static volatile sig_atomic_t interrupt_flag;

void lunet_interrupt(void) { interrupt_flag = 1; }
bool lunet_interrupted(void) { return interrupt_flag != 0; }
void lunet_interrupt_clear(void) { interrupt_flag = 0; }

bool lunet_grad_enabled(lunet_ctx *ctx) { return ctx->grad_enabled; }

bool lunet_set_grad_enabled(lunet_ctx *ctx, bool on) {
  bool prev = ctx->grad_enabled;
  ctx->grad_enabled = on;
  return prev;
}

lunet_precision lunet_get_precision(lunet_ctx *ctx) { return ctx->precision; }

lunet_precision lunet_set_precision(lunet_ctx *ctx, lunet_precision p) {
  lunet_precision prev = ctx->precision;
  ctx->precision = p == LUNET_PRECISION_BFLOAT16 ? p : LUNET_PRECISION_FLOAT32;
  return prev;
}

const char *lunet_precision_policy_name(lunet_precision p) {
  return p == LUNET_PRECISION_FLOAT32 ? "float32" : p == LUNET_PRECISION_BFLOAT16 ? "mixed_bfloat16" : NULL;
}

lunet_status lunet_set_policy(lunet_ctx *ctx, const char *policy) {
  if (policy && !strcmp(policy, "float32")) ctx->policy = LUNET_PRECISION_FLOAT32;
  else if (policy && !strcmp(policy, "mixed_bfloat16")) ctx->policy = LUNET_PRECISION_BFLOAT16;
  else
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "unknown dtype policy '%s' (valid: float32, mixed_bfloat16; mixed_float16 is not "
                       "supported: lunet has no float16 kernels)",
                       policy ? policy : "(null)");
  return LUNET_OK;
}

const char *lunet_get_policy(lunet_ctx *ctx) { return lunet_precision_policy_name(ctx->policy); }

double lunet_rng_uniform(lunet_ctx *ctx) {
  return lunet_philox_uniform(ctx->seed, lunet_rng_take(ctx, 1));
}
