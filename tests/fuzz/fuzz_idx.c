/* IDX files (MNIST / Fashion-MNIST), raw or gzip: as images, then as
 * labels with classes 0..9.  A file that reads must hold exactly what its
 * header says. */
#include "fuzz.h"
#include "lunet/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".idx");
  lunet_array a = {0};
  if (lunet_read_idx(ctx, path, &a) == LUNET_OK) {
    int64_t n = lunet_array_numel(&a);
    if (a.ndim < 1 || a.ndim > 4 || n < 0) abort();
    for (int64_t i = 0; i < n; i++) fuzz_sink += a.data[i]; /* every byte it claims is there */
  }
  lunet_array_free(&a);
  lunet_clear_error(ctx);
  lunet_array y = {0};
  if (lunet_read_idx_labels(ctx, path, 9, &y) == LUNET_OK) {
    for (int64_t i = 0; i < lunet_array_numel(&y); i++)
      if (y.data[i] > 9) abort(); /* a label out of range got through */
  }
  lunet_array_free(&y);
  return 0;
}
