/* PNG and JPEG files (libpng, libjpeg-turbo): the header reader, then a
 * decode resized to a small target in every channel mode, with and
 * without the aspect crop.  The pixel limit is lowered so that a header
 * claiming a huge image is refused before any decoding. */
#include <math.h>

#include "fuzz.h"
#include "lunet/image.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  setenv("LUNET_IMAGE_MAX_PIXELS", "1048576", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".img");
  lunet_image_info info;
  if (lunet_image_info_read(ctx, path, &info) != LUNET_OK) return 0;
  if (info.width <= 0 || info.height <= 0 || info.width * info.height > 1048576) abort();
  static const int modes[3] = {1, 3, 4};
  float out[7 * 5 * 4];
  for (int m = 0; m < 3; m++) {
    lunet_clear_error(ctx);
    if (lunet_image_load(ctx, path, 7, 5, modes[m], m == 1, out) != LUNET_OK) continue;
    for (int i = 0; i < 7 * 5 * modes[m]; i++)
      if (!(out[i] >= 0.0f && out[i] <= 255.0f)) abort(); /* pixels 0..255, no NaN */
  }
  return 0;
}
