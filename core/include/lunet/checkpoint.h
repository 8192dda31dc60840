/*
 * safetensors files: an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range, then the raw data.
 * Free-form string metadata goes under "__metadata__".
 */
#ifndef LUNET_CHECKPOINT_H
#define LUNET_CHECKPOINT_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes atomically (a temporary file renamed over `path`). */
LUNET_API lunet_status lunet_safetensors_save(lunet_ctx *ctx, const char *path, int n,
                                              const char *const *names,
                                              lunet_tensor *const *tensors, int nmeta,
                                              const char *const *meta_keys,
                                              const char *const *meta_values);

typedef struct lunet_safetensors lunet_safetensors;
/* Reads and validates the whole file; tensors are made on the default backend. */
LUNET_API lunet_safetensors *lunet_safetensors_load(lunet_ctx *ctx, const char *path);
LUNET_API void lunet_safetensors_free(lunet_safetensors *st);
LUNET_API int lunet_safetensors_count(const lunet_safetensors *st);
LUNET_API const char *lunet_safetensors_name(const lunet_safetensors *st, int i);
/* Borrowed; retain to keep it beyond lunet_safetensors_free. */
LUNET_API lunet_tensor *lunet_safetensors_tensor(const lunet_safetensors *st, int i);
LUNET_API int lunet_safetensors_meta_count(const lunet_safetensors *st);
LUNET_API const char *lunet_safetensors_meta_key(const lunet_safetensors *st, int i);
LUNET_API const char *lunet_safetensors_meta_value(const lunet_safetensors *st, int i);

#ifdef __cplusplus
}
#endif

#endif
