/* Model files: the safetensors container, then the graph config (JSON,
 * every layer's arguments checked against its schema), the compile
 * settings, the optimizer and the weights.  A model that loads is run once
 * on zeros when its inputs are small, so that a config the reader accepted
 * but the layers cannot run shows up as a crash here rather than in a
 * user's predict. */
#include <string.h>

#include "fuzz.h"
#include "lunet/model.h"

#define MAX_SAMPLE 4096 /* elements per sample beyond which the run is skipped */

static void run_once(lunet_ctx *ctx, lunet_model *m) {
  int nx = lunet_model_input_count(m);
  lunet_tensor *x[8] = {0}, *out[8] = {0};
  if (nx < 1 || nx > 8 || lunet_model_output_count(m) > 8) return;
  for (int i = 0; i < nx; i++) {
    int64_t shape[LUNET_MAX_DIMS + 1] = {2};
    int nd = lunet_model_value_shape(m, lunet_model_input_id(m, i), shape + 1);
    int64_t numel = 2;
    for (int d = 1; d <= nd && numel <= 2 * MAX_SAMPLE; d++) numel = shape[d] > 0 ? numel * shape[d] : 0;
    if (nd < 0 || numel == 0 || numel > 2 * MAX_SAMPLE) goto done;
    static float zeros[2 * MAX_SAMPLE];
    x[i] = lunet_tensor_from_data(ctx, LUNET_F32, nd + 1, shape, zeros);
    if (x[i] == NULL) goto done;
  }
  if (lunet_model_predict(ctx, m, nx, x, out) == LUNET_OK)
    for (int j = 0; j < lunet_model_output_count(m); j++)
      if (out[j] == NULL) abort();
done:
  for (int i = 0; i < 8; i++) {
    if (x[i]) lunet_tensor_release(x[i]);
    if (out[i]) lunet_tensor_release(out[i]);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lunet_ctx *ctx = fuzz_ctx();
  const char *path = fuzz_file(data, size, ".safetensors");
  lunet_model *m = lunet_model_load(ctx, path);
  if (m == NULL) return 0;
  fuzz_sink += strlen(lunet_model_name(m));
  run_once(ctx, m);
  lunet_model_release(m);
  return 0;
}
