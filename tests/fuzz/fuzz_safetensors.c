/* The safetensors reader (a JSON header, then raw tensors): a file that
 * reads gives names, tensors that fit in the file, and metadata strings. */
#include <string.h>

#include "fuzz.h"
#include "lunet/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".safetensors");
  lunet_safetensors *st = lunet_safetensors_load(ctx, path);
  if (st == NULL) return 0;
  for (int i = 0; i < lunet_safetensors_count(st); i++) {
    fuzz_sink += strlen(lunet_safetensors_name(st, i));
    if (lunet_safetensors_tensor(st, i) == NULL) abort();
  }
  for (int i = 0; i < lunet_safetensors_meta_count(st); i++)
    fuzz_sink += strlen(lunet_safetensors_meta_key(st, i)) + strlen(lunet_safetensors_meta_value(st, i));
  lunet_safetensors_free(st);
  return 0;
}
