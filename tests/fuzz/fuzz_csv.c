/* CSV files (libcsv, strict RFC 4180), with and without a header line:
 * a file that reads is a rectangle, every field readable. */
#include <string.h>

#include "fuzz.h"
#include "lunet/csv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".csv");
  for (int header = 0; header < 2; header++) {
    char delim = size > 0 && (data[0] & 1) ? ';' : ',';
    lunet_csv *c = lunet_csv_read(ctx, path, delim, header);
    if (c == NULL) {
      lunet_clear_error(ctx);
      continue;
    }
    int64_t rows = lunet_csv_rows(c), cols = lunet_csv_cols(c);
    if (rows < 0 || cols < 0) abort();
    for (int64_t j = 0; j < cols; j++) {
      const char *name = lunet_csv_name(c, j);
      if (name) fuzz_sink += strlen(name);
    }
    for (int64_t i = 0; i < rows; i++)
      for (int64_t j = 0; j < cols; j++) {
        const char *f = lunet_csv_field(c, i, j);
        if (f == NULL) abort(); /* a hole in the rectangle */
        fuzz_sink += strlen(f);
      }
    lunet_csv_free(c);
  }
  return 0;
}
