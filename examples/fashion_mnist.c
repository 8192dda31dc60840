/*
 * Trains the seed CNN (Conv2D 32/64/128 + MaxPooling2D, Dense 512, Dense 10
 * softmax; Adam, sparse categorical cross-entropy) on Fashion-MNIST with
 * lunet's C API alone, saves it, loads it back and checks that both give
 * the same predictions.
 *
 *   cc -std=gnu11 -O2 fashion_mnist.c $(pkg-config --cflags --libs lunet) -o fashion_mnist
 *   ./fashion_mnist [--data DIR] [--epochs N] [--save PATH] [--min-accuracy A]
 *
 * DIR holds the four IDX files (default: Debian's dataset-fashion-mnist,
 * /usr/share/datasets/fashion-mnist).  Exit status 0 when the test accuracy
 * reaches --min-accuracy (default 0) and the reloaded model agrees.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lunet/data.h>
#include <lunet/model.h>

/* Every lunet call returns a status and leaves a message in the context. */
#define CHECK(ctx, call)                                                                           \
  do {                                                                                             \
    if ((call) != LUNET_OK) {                                                                      \
      fprintf(stderr, "fashion_mnist: %s\n", lunet_ctx_error(ctx));                                \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static void *must(lunet_ctx *ctx, void *p) {
  if (!p) {
    fprintf(stderr, "fashion_mnist: %s\n", lunet_ctx_error(ctx));
    exit(1);
  }
  return p;
}

/* Images (N, 28, 28, 1) scaled to [0, 1], labels (N) as float class ids. */
static void load(lunet_ctx *ctx, const char *dir, const char *images, const char *labels,
                 lunet_tensor **x, lunet_tensor **y) {
  char path[1024];
  lunet_array xi = {0}, yi = {0};
  snprintf(path, sizeof path, "%s/%s", dir, images);
  CHECK(ctx, lunet_read_idx(ctx, path, &xi));
  snprintf(path, sizeof path, "%s/%s", dir, labels);
  CHECK(ctx, lunet_read_idx_labels(ctx, path, 9, &yi));
  int64_t n = xi.shape[0], numel = lunet_array_numel(&xi);
  float *xf = must(ctx, malloc(sizeof(float) * (size_t)numel));
  float *yf = must(ctx, malloc(sizeof(float) * (size_t)n));
  for (int64_t i = 0; i < numel; i++) xf[i] = xi.data[i] / 255.0f;
  for (int64_t i = 0; i < n; i++) yf[i] = yi.data[i];
  int64_t xshape[4] = {n, xi.shape[1], xi.shape[2], 1};
  *x = must(ctx, lunet_tensor_from_data(ctx, LUNET_F32, 4, xshape, xf));
  *y = must(ctx, lunet_tensor_from_data(ctx, LUNET_F32, 1, &n, yf));
  free(xf);
  free(yf);
  lunet_array_free(&xi);
  lunet_array_free(&yi);
}

/* A layer of a registered type; the schema's defaults apply to the rest. */
static lunet_layer *layer(lunet_ctx *ctx, const char *type) {
  const lunet_layer_type *t = must(ctx, (void *)lunet_layer_type_find(ctx, type));
  return must(ctx, lunet_layer_new(ctx, t));
}

/* Adds l after value v and drops the caller's reference (the model holds one). */
static int add(lunet_ctx *ctx, lunet_model *m, lunet_layer *l, int v) {
  int out = lunet_model_add(ctx, m, l, 1, &v);
  lunet_layer_release(l);
  if (out < 0) CHECK(ctx, lunet_ctx_status(ctx));
  return out;
}

static int conv(lunet_ctx *ctx, lunet_model *m, int v, int filters) {
  lunet_layer *l = layer(ctx, "Conv2D");
  CHECK(ctx, lunet_layer_set_int(l, "filters", filters));
  CHECK(ctx, lunet_layer_set_int(l, "kernel_size", 3));
  CHECK(ctx, lunet_layer_set_string(l, "activation", "relu"));
  v = add(ctx, m, l, v);
  l = layer(ctx, "MaxPooling2D");
  return add(ctx, m, l, v);
}

static int dense(lunet_ctx *ctx, lunet_model *m, int v, int units, const char *activation) {
  lunet_layer *l = layer(ctx, "Dense");
  CHECK(ctx, lunet_layer_set_int(l, "units", units));
  CHECK(ctx, lunet_layer_set_string(l, "activation", activation));
  return add(ctx, m, l, v);
}

static lunet_model *seed_cnn(lunet_ctx *ctx) {
  lunet_model *m = must(ctx, lunet_model_new(ctx, "seed_cnn"));
  int64_t shape[3] = {28, 28, 1};
  int v = lunet_model_input(ctx, m, "image", 3, shape);
  v = conv(ctx, m, conv(ctx, m, conv(ctx, m, v, 32), 64), 128);
  v = add(ctx, m, layer(ctx, "Flatten"), v);
  v = dense(ctx, m, dense(ctx, m, v, 512, "relu"), 10, "softmax");
  CHECK(ctx, lunet_model_set_outputs(ctx, m, 1, &v));
  lunet_optimizer_config oc = lunet_optimizer_defaults(LUNET_OPT_ADAM); /* Keras's: lr 1e-3 */
  lunet_optimizer *opt = must(ctx, lunet_optimizer_new(ctx, &oc));
  lunet_loss_spec loss = {.kind = LUNET_LOSS_SPARSE_CATEGORICAL_CE, .weight = 1};
  const char *metrics[] = {"accuracy"};
  lunet_compile_opts co = {.nlosses = 1, .losses = &loss, .optimizer = opt, .nmetrics = 1, .metrics = metrics};
  CHECK(ctx, lunet_model_compile(ctx, m, &co));
  lunet_optimizer_release(opt); /* the model holds it */
  return m;
}

/* A permutation of 0..n-1 from lunet's counter-based RNG (seeded). */
static int64_t *shuffled(lunet_ctx *ctx, int64_t n) {
  int64_t *p = must(ctx, malloc(sizeof *p * (size_t)n));
  for (int64_t i = 0; i < n; i++) p[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(lunet_rng_uniform(ctx) * (double)(i + 1));
    int64_t t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

/* The running value of metric `name`. */
static double metric(const lunet_model *m, const char *name) {
  for (int i = 0; i < lunet_model_metric_count(m); i++)
    if (!strcmp(lunet_metric_name(lunet_model_metric(m, i)), name))
      return lunet_metric_result(lunet_model_metric(m, i));
  return 0;
}

static void fit(lunet_ctx *ctx, lunet_model *m, lunet_tensor *x, lunet_tensor *y, int epochs, int64_t bs) {
  int64_t n = lunet_tensor_dim(x, 0);
  for (int e = 1; e <= epochs; e++) {
    int64_t *order = shuffled(ctx, n);
    lunet_model_reset_metrics(m);
    for (int64_t first = 0; first < n; first += bs) {
      int64_t count = n - first < bs ? n - first : bs;
      lunet_tensor *xb = must(ctx, lunet_op_gather_rows(ctx, x, order + first, count));
      lunet_tensor *yb = must(ctx, lunet_op_gather_rows(ctx, y, order + first, count));
      CHECK(ctx, lunet_model_train_step(ctx, m, 1, &xb, 1, &yb, NULL));
      lunet_tensor_release(xb);
      lunet_tensor_release(yb);
    }
    free(order);
    printf("epoch %d/%d - loss: %.4f - accuracy: %.4f\n", e, epochs, metric(m, "loss"), metric(m, "accuracy"));
    fflush(stdout);
  }
}

static double evaluate(lunet_ctx *ctx, lunet_model *m, lunet_tensor *x, lunet_tensor *y) {
  int64_t n = lunet_tensor_dim(x, 0), bs = 256;
  lunet_model_reset_metrics(m);
  for (int64_t first = 0; first < n; first += bs) {
    int64_t count = n - first < bs ? n - first : bs;
    lunet_tensor *xb = must(ctx, lunet_op_slice_rows(ctx, x, first, count));
    lunet_tensor *yb = must(ctx, lunet_op_slice_rows(ctx, y, first, count));
    CHECK(ctx, lunet_model_test_step(ctx, m, 1, &xb, 1, &yb, NULL));
    lunet_tensor_release(xb);
    lunet_tensor_release(yb);
  }
  return metric(m, "accuracy");
}

/* The largest difference between the two models' outputs on x. */
static double disagreement(lunet_ctx *ctx, lunet_model *a, lunet_model *b, lunet_tensor *x) {
  lunet_tensor *pa = NULL, *pb = NULL;
  CHECK(ctx, lunet_model_predict(ctx, a, 1, &x, &pa));
  CHECK(ctx, lunet_model_predict(ctx, b, 1, &x, &pb));
  int64_t n = lunet_tensor_numel(pa);
  float *va = must(ctx, malloc(sizeof(float) * (size_t)n)), *vb = must(ctx, malloc(sizeof(float) * (size_t)n));
  CHECK(ctx, lunet_tensor_read(ctx, pa, va, sizeof(float) * (size_t)n));
  CHECK(ctx, lunet_tensor_read(ctx, pb, vb, sizeof(float) * (size_t)n));
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = va[i] > vb[i] ? va[i] - vb[i] : vb[i] - va[i];
    if (d > worst) worst = d;
  }
  free(va);
  free(vb);
  lunet_tensor_release(pa);
  lunet_tensor_release(pb);
  return worst;
}

int main(int argc, char **argv) {
  const char *dir = "/usr/share/datasets/fashion-mnist", *save = "fashion_mnist_cnn.safetensors";
  int epochs = 2;
  double min_accuracy = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--data") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--save") && i + 1 < argc) save = argv[++i];
    else if (!strcmp(argv[i], "--min-accuracy") && i + 1 < argc) min_accuracy = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--data DIR] [--epochs N] [--save PATH] [--min-accuracy A]\n", argv[0]);
      return 2;
    }
  }
  lunet_ctx *ctx = must(NULL, lunet_ctx_new());
  lunet_seed(ctx, 1);
  lunet_tensor *x_train, *y_train, *x_test, *y_test;
  load(ctx, dir, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", &x_train, &y_train);
  load(ctx, dir, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", &x_test, &y_test);
  lunet_model *m = seed_cnn(ctx);
  fit(ctx, m, x_train, y_train, epochs, 32);
  double acc = evaluate(ctx, m, x_test, y_test);
  printf("test accuracy: %.4f\n", acc);
  CHECK(ctx, lunet_model_save(ctx, m, save, 0, NULL, NULL));
  lunet_model *back = must(ctx, lunet_model_load(ctx, save));
  lunet_tensor *probe = must(ctx, lunet_op_slice_rows(ctx, x_test, 0, 1000));
  double diff = disagreement(ctx, m, back, probe);
  double acc_back = evaluate(ctx, back, x_test, y_test);
  printf("saved to %s; the reloaded model: test accuracy %.4f, predictions differ by at most %g\n", save,
         acc_back, diff);
  int status = acc >= min_accuracy && diff == 0 && acc_back == acc ? 0 : 1;
  lunet_tensor_release(probe);
  lunet_tensor_release(x_train);
  lunet_tensor_release(y_train);
  lunet_tensor_release(x_test);
  lunet_tensor_release(y_test);
  lunet_model_release(m);
  lunet_model_release(back);
  lunet_ctx_free(ctx);
  return status;
}
