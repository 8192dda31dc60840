/* The CIFAR-10 archive reader (libarchive: tar, gzip or not): a file that
 * reads gives 50,000-style shapes consistent with its labels. */
#include "fuzz.h"
#include "lunet/data.h"

static void check(const lunet_array *x, const lunet_array *y) {
  if (x->ndim != 4 || y->ndim != 1 || x->shape[0] != y->shape[0] || x->shape[1] != 32 || x->shape[2] != 32 ||
      x->shape[3] != 3)
    abort();
  for (int64_t i = 0; i < y->shape[0]; i++)
    if (y->data[i] > 9) abort();
  for (int64_t i = 0; i < lunet_array_numel(x); i++) fuzz_sink += x->data[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".tar.gz");
  lunet_array xtr = {0}, ytr = {0}, xte = {0}, yte = {0};
  if (lunet_read_cifar10(ctx, path, &xtr, &ytr, &xte, &yte) == LUNET_OK) {
    check(&xtr, &ytr);
    check(&xte, &yte);
  } else if (xtr.data || ytr.data || xte.data || yte.data) {
    abort(); /* documented: all four left zeroed on error */
  }
  lunet_array_free(&xtr);
  lunet_array_free(&ytr);
  lunet_array_free(&xte);
  lunet_array_free(&yte);
  return 0;
}
