/*
 * Classifies PNG or JPEG files with a saved lunet model, from C alone: the
 * images are decoded and resized to the model's input, run through
 * lunet_model_predict, and the three best classes printed for each.
 *
 *   cc -std=gnu11 -O2 classify.c $(pkg-config --cflags --libs lunet) -lpthread -o classify
 *   ./classify MODEL [--labels a,b,c,...] [--threads N] IMAGE...
 *
 * The class names come from --labels, else from the model itself (saved
 * with model.class_names in Lua), else the class numbers are printed.  A
 * model with one output (a sigmoid unit, Keras's binary classifier) reads
 * as two classes, {1 - p, p}; an output outside [0, 1] is an error there.
 *
 * The model takes 0..255 pixels (its own Rescaling layer does the rest, as
 * the recipes' models do).  --threads N classifies the files on N threads at
 * once, each with its own context, on the one loaded model (lunet_model_predict
 * may be called from several threads on one model); the output is the same.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lunet/image.h>
#include <lunet/model.h>

#define MAX_LABELS 1000

static lunet_model *model;
static int64_t height, width;
static int channels, classes, outputs; /* outputs 1: a sigmoid's p, classes 2 */
static char *labels[MAX_LABELS];
static int nlabels;

typedef struct work {
  char **files;
  int first, step, count;
  char **lines; /* one result line per file, printed in order at the end */
  int failed;
} work;

/* The best three classes of one file, as a line. */
static char *classify(lunet_ctx *ctx, const char *file) {
  char *line = malloc(512);
  float *pixels = malloc(sizeof *pixels * (size_t)(height * width * channels));
  float *probs = malloc(sizeof *probs * (size_t)classes);
  if (!line || !pixels || !probs) {
    free(pixels);
    free(probs);
    free(line);
    return NULL;
  }
  lunet_tensor *x = NULL, *y = NULL;
  int64_t shape[4] = {1, height, width, channels};
  lunet_status s = lunet_image_load(ctx, file, height, width, channels, false, pixels);
  if (!s) s = (x = lunet_tensor_from_data(ctx, LUNET_F32, 4, shape, pixels)) ? LUNET_OK : lunet_ctx_status(ctx);
  if (!s) s = lunet_model_predict(ctx, model, 1, &x, &y);
  if (!s) s = lunet_tensor_read(ctx, y, probs, sizeof *probs * (size_t)outputs);
  if (s) {
    snprintf(line, 512, "%s: error: %s", file, lunet_ctx_error(ctx));
  } else if (outputs == 1 && !(probs[0] >= 0 && probs[0] <= 1)) {
    snprintf(line, 512, "%s: error: the model's one output is %g, not a probability (give it a sigmoid)", file,
             probs[0]);
  } else {
    if (outputs == 1) { /* the sigmoid's p is class 1's */
      probs[1] = probs[0];
      probs[0] = 1 - probs[1];
    }
    int best[3] = {-1, -1, -1};
    for (int k = 0; k < 3 && k < classes; k++)
      for (int c = 0; c < classes; c++) {
        bool taken = false;
        for (int j = 0; j < k; j++) taken = taken || best[j] == c;
        if (!taken && (best[k] < 0 || probs[c] > probs[best[k]])) best[k] = c;
      }
    int n = snprintf(line, 512, "%s:", file);
    for (int k = 0; k < 3 && k < classes; k++) {
      char id[16];
      snprintf(id, sizeof id, "%d", best[k]);
      n += snprintf(line + n, (size_t)(512 - n), " %s %.4f", best[k] < nlabels ? labels[best[k]] : id,
                    probs[best[k]]);
    }
  }
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  free(pixels);
  free(probs);
  return line;
}

static void *run(void *arg) {
  work *w = arg;
  lunet_ctx *ctx = lunet_ctx_new(); /* a context per thread: errors and state are the thread's own */
  for (int i = w->first; ctx && i < w->count; i += w->step) {
    w->lines[i] = classify(ctx, w->files[i]);
    if (!w->lines[i] || strstr(w->lines[i], ": error: ")) w->failed = 1;
  }
  if (!ctx) w->failed = 1;
  lunet_ctx_free(ctx);
  return NULL;
}

int main(int argc, char **argv) {
  int threads = 1, first_file = 2;
  if (argc < 3) {
    fprintf(stderr, "usage: classify MODEL [--labels a,b,c] [--threads N] IMAGE...\n");
    return 2;
  }
  while (first_file + 1 < argc && argv[first_file][0] == '-') {
    if (!strcmp(argv[first_file], "--threads")) {
      threads = atoi(argv[first_file + 1]);
      if (threads < 1 || threads > 64) {
        fprintf(stderr, "classify: --threads takes 1 to 64\n");
        return 2;
      }
    } else if (!strcmp(argv[first_file], "--labels")) {
      for (char *t = strtok(argv[first_file + 1], ","); t && nlabels < MAX_LABELS; t = strtok(NULL, ","))
        labels[nlabels++] = t;
    } else {
      fprintf(stderr, "classify: unknown option %s\n", argv[first_file]);
      return 2;
    }
    first_file += 2;
  }
  lunet_ctx *ctx = lunet_ctx_new();
  if (!ctx || !(model = lunet_model_load(ctx, argv[1]))) {
    fprintf(stderr, "classify: %s\n", ctx ? lunet_ctx_error(ctx) : "no context");
    return 1;
  }
  int64_t in[LUNET_MAX_DIMS], out[LUNET_MAX_DIMS];
  int nin = lunet_model_value_shape(model, lunet_model_input_id(model, 0), in);
  int nout = lunet_model_value_shape(model, lunet_model_output_id(model, 0), out);
  if (lunet_model_input_count(model) != 1 || nin != 3 || (in[2] != 1 && in[2] != 3) || nout != 1) {
    fprintf(stderr, "classify: %s does not take one image (H, W, 1 or 3) to one score per class\n", argv[1]);
    return 1;
  }
  height = in[0], width = in[1], channels = (int)in[2], outputs = (int)out[0];
  classes = outputs == 1 ? 2 : outputs;
  for (int k = 0; !nlabels && k < lunet_model_class_count(model) && k < MAX_LABELS; k++)
    labels[k] = (char *)lunet_model_class_name(model, k);
  if (!nlabels) nlabels = lunet_model_class_count(model) < MAX_LABELS ? lunet_model_class_count(model) : MAX_LABELS;
  if (nlabels && nlabels != classes) {
    fprintf(stderr, "classify: %d labels for a model of %d classes\n", nlabels, classes);
    return 1;
  }
  int count = argc - first_file;
  char **lines = calloc((size_t)(count ? count : 1), sizeof *lines);
  pthread_t tid[64];
  work w[64];
  for (int t = 0; t < threads; t++) {
    w[t] = (work){.files = argv + first_file, .first = t, .step = threads, .count = count, .lines = lines};
    pthread_create(&tid[t], NULL, run, &w[t]);
  }
  int failed = 0;
  for (int t = 0; t < threads; t++) {
    pthread_join(tid[t], NULL);
    failed |= w[t].failed;
  }
  for (int i = 0; i < count; i++) {
    printf("%s\n", lines[i] ? lines[i] : "(out of memory)");
    free(lines[i]);
  }
  free(lines);
  lunet_model_release(model);
  lunet_ctx_free(ctx);
  return failed;
}
