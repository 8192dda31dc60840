/* Check tests of the core's model API (lunet/model.h) from C alone: graph
 * construction and its errors, the training step and its hooks, metrics. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lunet/backend.h"
#include "lunet/image.h"
#include "lunet/model.h"
#include "lunet/ops.h"

static lunet_ctx *ctx;

static void setup(void) {
  ctx = lunet_ctx_new();
  lunet_seed(ctx, 7);
}

static void teardown(void) { lunet_ctx_free(ctx); }

static lunet_layer *dense(int64_t units, const char *activation) {
  const lunet_layer_type *t = lunet_layer_type_find(ctx, "Dense");
  ck_assert_msg(t != NULL, "%s", lunet_ctx_error(ctx));
  lunet_layer *l = lunet_layer_new(ctx, t);
  ck_assert_int_eq(lunet_layer_set_int(l, "units", units), LUNET_OK);
  ck_assert_int_eq(lunet_layer_set_bool(l, "use_bias", true), LUNET_OK);
  if (activation) ck_assert_int_eq(lunet_layer_set_string(l, "activation", activation), LUNET_OK);
  return l;
}

/* input (3) -> Dense 8 relu -> Dense 1: the model holds the layers. */
static lunet_model *mlp(void) {
  lunet_model *m = lunet_model_new(ctx, "mlp");
  int64_t shape = 3;
  int v = lunet_model_input(ctx, m, "x", 1, &shape);
  lunet_layer *a = dense(8, "relu"), *b = dense(1, NULL);
  v = lunet_model_add(ctx, m, a, 1, &v);
  v = lunet_model_add(ctx, m, b, 1, &v);
  ck_assert_int_ge(v, 0);
  lunet_layer_release(a);
  lunet_layer_release(b);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &v), LUNET_OK);
  return m;
}

static void compile(lunet_model *m, lunet_optimizer_kind kind, double lr) {
  lunet_optimizer_config c = lunet_optimizer_defaults(kind);
  c.learning_rate = lr;
  lunet_optimizer *o = lunet_optimizer_new(ctx, &c);
  lunet_loss_spec loss = {.kind = LUNET_LOSS_MSE, .weight = 1};
  lunet_compile_opts co = {.nlosses = 1, .losses = &loss, .optimizer = o};
  ck_assert_int_eq(lunet_model_compile(ctx, m, &co), LUNET_OK);
  lunet_optimizer_release(o);
}

/* x (n, 3) uniform in [-1, 1), y = x . (1, -2, 0.5) + 0.3 */
static void linear_data(int n, lunet_tensor **x, lunet_tensor **y) {
  float *xs = malloc(sizeof(float) * 3 * (size_t)n), *ys = malloc(sizeof(float) * (size_t)n);
  uint64_t c = lunet_rng_take(ctx, (uint64_t)n * 3);
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < 3; k++) xs[i * 3 + k] = 2 * lunet_philox_uniform(99, c + i * 3 + k) - 1;
    ys[i] = xs[i * 3] - 2 * xs[i * 3 + 1] + 0.5f * xs[i * 3 + 2] + 0.3f;
  }
  int64_t xshape[2] = {n, 3}, yshape[2] = {n, 1};
  *x = lunet_tensor_from_data(ctx, LUNET_F32, 2, xshape, xs);
  *y = lunet_tensor_from_data(ctx, LUNET_F32, 2, yshape, ys);
  free(xs);
  free(ys);
}

START_TEST(test_train_step_learns) {
  lunet_model *m = mlp();
  compile(m, LUNET_OPT_ADAM, 0.02);
  lunet_tensor *x, *y;
  linear_data(64, &x, &y);
  double first = 0, loss = 0, eval = 0;
  for (int s = 0; s < 300; s++) {
    ck_assert_msg(lunet_model_train_step(ctx, m, 1, &x, 1, &y, &loss) == LUNET_OK, "%s",
                  lunet_ctx_error(ctx));
    if (s == 0) first = loss;
  }
  /* the metrics run until reset: after a reset, one test step's mean loss is its loss */
  ck_assert_double_gt(lunet_metric_result(lunet_model_metric(m, 0)), first / 300);
  lunet_model_reset_metrics(m);
  ck_assert_int_eq(lunet_model_test_step(ctx, m, 1, &x, 1, &y, &eval), LUNET_OK);
  ck_assert_msg(eval < 0.02 * first, "loss %g after 300 steps, %g at first", eval, first);
  ck_assert_int_eq(lunet_optimizer_iterations(lunet_model_optimizer(m)), 300);
  ck_assert_str_eq(lunet_metric_name(lunet_model_metric(m, 0)), "loss");
  ck_assert_double_eq_tol(lunet_metric_result(lunet_model_metric(m, 0)), eval, 1e-7 * (1 + eval));
  /* predict agrees with the mean squared error the test step reported */
  lunet_tensor *p = NULL;
  ck_assert_int_eq(lunet_model_predict(ctx, m, 1, &x, &p), LUNET_OK);
  float pv[64], yv[64];
  lunet_tensor_read(ctx, p, pv, sizeof pv);
  lunet_tensor_read(ctx, y, yv, sizeof yv);
  double mse = 0;
  for (int i = 0; i < 64; i++) mse += (pv[i] - yv[i]) * (double)(pv[i] - yv[i]) / 64;
  ck_assert_double_eq_tol(mse, eval, 1e-5 * (1 + eval));
  lunet_tensor_release(p);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_model_release(m);
}
END_TEST

/* grad_ready: each parameter once, with its complete gradient, the output
 * layer's first (backward runs from the loss). */
typedef struct ready_log {
  int order[8], n;
  float sum[8];
} ready_log;

static float tensor_sum(lunet_tensor *t) {
  int64_t n = lunet_tensor_numel(t);
  float *v = malloc(sizeof(float) * (size_t)n), s = 0;
  lunet_tensor_read(ctx, t, v, sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) s += v[i];
  free(v);
  return s;
}

static void on_ready(void *user, int param, lunet_tensor *grad) {
  ready_log *r = user;
  r->order[r->n] = param;
  r->sum[r->n++] = tensor_sum(grad);
}

START_TEST(test_grad_ready_gives_complete_gradients) {
  lunet_model *m = mlp();
  compile(m, LUNET_OPT_SGD, 0.0); /* rate 0: the weights stay as they are */
  lunet_tensor *x, *y;
  linear_data(16, &x, &y);
  ready_log r = {0};
  lunet_model_set_grad_ready(m, on_ready, &r);
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &x, 1, &y, NULL), LUNET_OK);
  ck_assert_int_eq(r.n, lunet_model_param_count(m));
  ck_assert_int_eq(r.n, 4);
  ck_assert_msg(r.order[0] >= 2, "the output layer's gradients come first, got param %d", r.order[0]);
  /* the same gradients from the tape by hand */
  lunet_tensor *out = NULL;
  ck_assert_int_eq(lunet_model_forward(ctx, m, 1, &x, true, &out), LUNET_OK);
  lunet_tensor *loss = lunet_loss(ctx, LUNET_LOSS_MSE, out, y, false);
  ck_assert_int_eq(lunet_backward(ctx, loss, NULL), LUNET_OK);
  for (int k = 0; k < r.n; k++) {
    lunet_tensor *g = lunet_tensor_grad_get(lunet_model_param(m, r.order[k]));
    ck_assert_ptr_nonnull(g);
    float want = tensor_sum(g);
    ck_assert_msg(fabsf(want - r.sum[k]) <= 1e-5f * (1 + fabsf(want)), "param %d: %g vs %g",
                  r.order[k], r.sum[k], want);
  }
  lunet_tensor_release(loss);
  lunet_tensor_release(out);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_model_release(m);
}
END_TEST

static lunet_status zero_grads(void *user, lunet_ctx *c, int n, lunet_tensor *const *params,
                               lunet_tensor *const *grads) {
  int *calls = user;
  ++*calls;
  for (int i = 0; i < n; i++)
    if (grads[i] && lunet_op_fill(c, grads[i], 0.0f)) return lunet_ctx_status(c);
  return LUNET_OK;
}

static lunet_status refuse(void *user, lunet_ctx *c, int n, lunet_tensor *const *params,
                           lunet_tensor *const *grads) {
  return lunet_error(c, LUNET_ERR_NET, "peer 3 did not answer");
}

START_TEST(test_grad_transform_runs_before_the_update) {
  lunet_model *m = mlp();
  compile(m, LUNET_OPT_SGD, 0.5);
  lunet_tensor *x, *y;
  linear_data(16, &x, &y);
  float before = tensor_sum(lunet_model_param(m, 0));
  int calls = 0;
  lunet_model_set_grad_transform(m, zero_grads, &calls);
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &x, 1, &y, NULL), LUNET_OK);
  ck_assert_int_eq(calls, 1);
  ck_assert_float_eq(tensor_sum(lunet_model_param(m, 0)), before);
  lunet_model_set_grad_transform(m, refuse, NULL);
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &x, 1, &y, NULL), LUNET_ERR_NET);
  ck_assert_str_eq(lunet_ctx_error(ctx), "peer 3 did not answer");
  ck_assert_float_eq(tensor_sum(lunet_model_param(m, 0)), before);
  ck_assert_int_eq(lunet_optimizer_iterations(lunet_model_optimizer(m)), 1);
  lunet_model_set_grad_transform(m, NULL, NULL);
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &x, 1, &y, NULL), LUNET_OK);
  ck_assert_float_ne(tensor_sum(lunet_model_param(m, 0)), before);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_model_release(m);
}
END_TEST

START_TEST(test_metrics_update_merge_reset) {
  lunet_metric *a = lunet_metric_new(ctx, "accuracy", LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY, 0);
  lunet_metric *b = lunet_metric_new(ctx, "accuracy", LUNET_METRIC_SPARSE_CATEGORICAL_ACCURACY, 0);
  lunet_metric *mean = lunet_metric_new(ctx, "loss", LUNET_METRIC_MEAN, 0);
  float probs[] = {0.1f, 0.9f, 0.8f, 0.2f, 0.3f, 0.7f}, labels[] = {1, 1, 1};
  int64_t ps[2] = {3, 2}, ls = 3;
  lunet_tensor *p = lunet_tensor_from_data(ctx, LUNET_F32, 2, ps, probs);
  lunet_tensor *l = lunet_tensor_from_data(ctx, LUNET_F32, 1, &ls, labels);
  ck_assert_int_eq(lunet_metric_update(ctx, a, p, l), LUNET_OK);
  ck_assert_double_eq_tol(lunet_metric_result(a), 2.0 / 3.0, 1e-12);
  lunet_metric_add(b, 1, 1); /* one more sample, correct */
  ck_assert_int_eq(lunet_metric_merge(ctx, a, b), LUNET_OK);
  ck_assert_double_eq_tol(lunet_metric_result(a), 3.0 / 4.0, 1e-12);
  double total, count;
  lunet_metric_state(a, &total, &count);
  ck_assert_double_eq(total, 3);
  ck_assert_double_eq(count, 4);
  ck_assert_int_eq(lunet_metric_merge(ctx, a, mean), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "metric: cannot merge 'loss' into 'accuracy' (another kind or options)");
  lunet_metric_reset(a);
  ck_assert_double_eq(lunet_metric_result(a), 0);
  /* a config made in C has the limits of a parsed spec (MeanIoU over 65536
   * classes overflowed its state's size and crashed in result) */
  lunet_metric_config c = lunet_metric_config_defaults(LUNET_METRIC_MEAN_IOU);
  c.num_classes = 65536;
  ck_assert_ptr_null(lunet_metric_new_config(ctx, "iou", &c));
  ck_assert_str_eq(lunet_ctx_error(ctx), "metric 'iou': num_classes must be 1 to 4096");
  c = lunet_metric_config_defaults(LUNET_METRIC_AUC);
  c.num_thresholds = 1;
  ck_assert_ptr_null(lunet_metric_new_config(ctx, "auc", &c));
  c = lunet_metric_config_defaults(LUNET_METRIC_TOP_K_CATEGORICAL_ACCURACY);
  c.top_k = 0;
  ck_assert_ptr_null(lunet_metric_new_config(ctx, "top", &c));
  /* metrics of logits and of probabilities do not merge */
  c = lunet_metric_config_defaults(LUNET_METRIC_PRECISION);
  lunet_metric *probs_m = lunet_metric_new_config(ctx, "p", &c);
  c.logits = 1;
  lunet_metric *logits_m = lunet_metric_new_config(ctx, "p", &c);
  ck_assert_int_eq(lunet_metric_merge(ctx, probs_m, logits_m), LUNET_ERR_ARG);
  lunet_metric_free(probs_m);
  lunet_metric_free(logits_m);
  lunet_tensor_release(p);
  lunet_tensor_release(l);
  lunet_metric_free(a);
  lunet_metric_free(b);
  lunet_metric_free(mean);
}
END_TEST

/* Specs as compile and the Lua objects write them; the additive state of a
 * metric sized by its data survives a round trip through a plain vector
 * (what a reduction across processes does). */
/* Keras's FBetaScore (beta 1) from counts: true, predicted and actual positives. */
static double f1_keras(double tp, double pp, double ap) {
  double p = tp / (pp + 1e-7), r = tp / (ap + 1e-7);
  return 2 * p * r / (p + r + 1e-7);
}

START_TEST(test_metric_specs_and_state_vectors) {
  lunet_metric_config c;
  char name[64];
  ck_assert_int_eq(lunet_metric_parse(ctx, "AUC( curve=PR , num_thresholds=50, name=pr )", &c, name, sizeof name),
                   LUNET_OK);
  ck_assert_int_eq(c.kind, LUNET_METRIC_AUC);
  ck_assert(c.pr_curve);
  ck_assert_int_eq(c.num_thresholds, 50);
  ck_assert_str_eq(name, "pr");
  ck_assert_int_eq(lunet_metric_parse(ctx, "mae", &c, name, sizeof name), LUNET_OK);
  ck_assert_str_eq(name, "mae");
  ck_assert_int_eq(lunet_metric_parse(ctx, "MeanIoU", &c, name, sizeof name), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "metric 'MeanIoU': MeanIoU needs num_classes (the number of classes, "
                                         "e.g. MeanIoU(num_classes=21))");
  ck_assert_int_eq(lunet_metric_parse(ctx, "Precision(threshold=2)", &c, name, sizeof name), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "metric 'Precision(threshold=2)': bad value '2' for threshold");
  ck_assert_int_eq(lunet_metric_parse(ctx, "F1Score(average=micro", &c, name, sizeof name), LUNET_ERR_ARG);

  c = lunet_metric_config_defaults(LUNET_METRIC_F1);
  c.average = LUNET_AVERAGE_NONE;
  lunet_metric *f = lunet_metric_new_config(ctx, "f1", &c), *g = lunet_metric_new_config(ctx, "f1", &c);
  float probs[] = {0.9f, 0.1f, 0.2f, 0.8f, 0.6f, 0.4f}, hot[] = {1, 0, 0, 1, 0, 1};
  int64_t shape[2] = {3, 2};
  lunet_tensor *p = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, probs);
  lunet_tensor *y = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, hot);
  ck_assert_int_eq(lunet_metric_update(ctx, f, p, y), LUNET_OK);
  /* class 0: tp 1, predicted 2, actual 1 -> p 1/2, r 1, F1 2/3; class 1: tp 1, 1, 2 -> 2/3 (with Keras's
   * epsilons of 1e-7 in p, r and F1: f1_keras) */
  double v[2], state[16];
  ck_assert_int_eq(lunet_metric_results(f, v, 2), 2);
  ck_assert_double_eq_tol(v[0], f1_keras(1, 2, 1), 1e-12);
  ck_assert_double_eq_tol(v[1], f1_keras(1, 1, 2), 1e-12);
  ck_assert_double_eq_tol(v[0], 2.0 / 3.0, 1e-6);
  ck_assert_int_eq(lunet_metric_state_vector(g, state, 16), 0); /* not sized yet */
  int n = lunet_metric_state_vector(f, state, 16);
  ck_assert_int_eq(n, 7); /* tp, predicted, actual for 2 classes, then the count */
  ck_assert_double_eq(state[6], 3);
  ck_assert_int_eq(lunet_metric_set_state_vector(ctx, g, state, n), LUNET_OK);
  ck_assert_int_eq(lunet_metric_results(g, v, 2), 2);
  ck_assert_double_eq_tol(v[1], f1_keras(1, 1, 2), 1e-12);
  ck_assert_int_eq(lunet_metric_set_state_vector(ctx, g, state, 4), LUNET_ERR_ARG);
  lunet_tensor_release(p);
  lunet_tensor_release(y);
  lunet_metric_free(f);
  lunet_metric_free(g);
}
END_TEST

START_TEST(test_graph_errors_are_clear) {
  lunet_model *m = lunet_model_new(ctx, "g");
  int64_t s3 = 3, s5 = 5;
  int x = lunet_model_input(ctx, m, "x", 1, &s3);
  int unused = lunet_model_input(ctx, m, "extra", 1, &s5);
  ck_assert_int_ge(unused, 0);
  lunet_layer *d = dense(2, NULL);
  int v = lunet_model_add(ctx, m, d, 1, &x);
  /* the same layer again, on a value of another shape */
  ck_assert_int_eq(lunet_model_add(ctx, m, d, 1, &unused), -1);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "Dense expects input of shape (None, 3), but extra gives (None, 5)");
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &v), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "model 'g': input 'extra' is not used by any output (remove it from the "
                   "inputs, or connect it)");
  lunet_model_release(m);
  lunet_layer_release(d);

  m = mlp();
  lunet_tensor *xt, *yt;
  linear_data(4, &xt, &yt);
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &xt, 1, &yt, NULL), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'mlp' is not compiled (compile it first)");
  compile(m, LUNET_OPT_SGD, 0.1);
  lunet_tensor *two[2] = {xt, xt};
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 2, two, 1, &yt, NULL), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'mlp' takes 1 input, got 2");
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &xt, 2, two, NULL), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'mlp' has 1 output but got 2 targets");
  ck_assert_int_eq(lunet_model_train_step(ctx, m, 1, &yt, 1, &yt, NULL), LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx), "mlp: expected input of shape (None, 3), got (4, 1)");
  int out = lunet_model_output_id(m, 0);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &out), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "model 'mlp': its outputs are set; the graph cannot grow any more");
  lunet_tensor_release(xt);
  lunet_tensor_release(yt);
  lunet_model_release(m);
}
END_TEST

/* Sizes that overflow and arguments changed after a build are errors (a
 * tensor of 2^62 elements reported 64 bytes and was read past its end; a
 * model file's input of 2^31 x 2^31 x 3 loaded and crashed predict; an
 * activation set after the build was saved but not run). */
START_TEST(test_sizes_and_built_layers_are_checked) {
  int64_t huge[2] = {4, (INT64_C(1) << 60) + 4};
  ck_assert_ptr_null(lunet_tensor_new(ctx, LUNET_F32, 2, huge));
  ck_assert_int_eq(lunet_ctx_status(ctx), LUNET_ERR_NOMEM);
  ck_assert_str_eq(lunet_ctx_error(ctx),
                   "a float32 tensor of shape (4, 1152921504606846980) has more bytes than any memory holds");
  lunet_model *m = lunet_model_new(ctx, "big");
  int64_t wide[3] = {INT32_MAX, INT32_MAX, 3}, over = INT64_C(1) << 31;
  ck_assert_int_eq(lunet_model_input(ctx, m, "x", 3, wide), -1);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'big': an input of shape (2147483647, 2147483647, 3) has more "
                                         "than 1099511627776 elements a sample");
  ck_assert_int_eq(lunet_model_input(ctx, m, "x", 1, &over), -1);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'big': input sizes must be 1 to 2147483647, got 2147483648");
  lunet_model_release(m);
  m = mlp();
  lunet_layer *first = lunet_model_layer(m, 0);
  ck_assert_ptr_nonnull(first);
  ck_assert_int_eq(lunet_layer_set_string(first, "activation", "linear"), LUNET_ERR_ARG);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "'activation' cannot change once the layer is built"), "%s",
                lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_layer_set_int(first, "units", 4), LUNET_ERR_ARG);
  /* a setter of another type than the argument's is an error (units = "12"
   * became 0, units = 3.7 became 3, a count of -1 crashed in memcpy) */
  lunet_layer *fresh = dense(4, NULL);
  ck_assert_int_eq(lunet_layer_set_string(fresh, "units", "12"), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "Dense: units takes an integer, got the string \"12\"");
  ck_assert_int_eq(lunet_layer_set_float(fresh, "units", 3.7), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "Dense: units takes an integer, got 3.7");
  ck_assert_int_eq(lunet_layer_set_float(fresh, "units", 6), LUNET_OK);
  ck_assert_int_eq(lunet_layer_get_int(fresh, "units"), 6);
  ck_assert_int_eq(lunet_layer_set_bool(fresh, "units", true), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_layer_set_ints(fresh, "units", -1, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_layer_set_string(fresh, "activation", NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_layer_set_int(fresh, "use_bias", 1), LUNET_ERR_ARG);
  lunet_layer_release(fresh);
  /* NULL where a model, options, inputs or a place for outputs go: errors */
  lunet_tensor *none = NULL;
  ck_assert_int_eq(lunet_model_predict(ctx, NULL, 1, &none, &none), LUNET_ERR_ARG);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "no model (NULL"), "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_model_train_step(ctx, NULL, 1, &none, 1, &none, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_model_compile(ctx, m, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_model_predict(ctx, m, 1, NULL, &none), LUNET_ERR_ARG);
  int64_t three = 3;
  float zeros[3] = {0};
  lunet_tensor *x3 = lunet_tensor_from_data(ctx, LUNET_F32, 2, (int64_t[]){1, three}, zeros);
  ck_assert_int_eq(lunet_model_predict(ctx, m, 1, &x3, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_model_forward(ctx, m, 1, &x3, false, NULL), LUNET_ERR_ARG); /* it crashed */
  /* compile's arrays as their counts promise (NULL ones crashed) */
  lunet_optimizer_config oc = lunet_optimizer_defaults(LUNET_OPT_SGD);
  lunet_optimizer *opt = lunet_optimizer_new(ctx, &oc);
  lunet_loss_spec mse = {.kind = LUNET_LOSS_MSE, .weight = 1};
  lunet_compile_opts co = {.nlosses = 1, .losses = NULL, .optimizer = opt};
  ck_assert_int_eq(lunet_model_compile(ctx, m, &co), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "compile: losses is NULL");
  co = (lunet_compile_opts){.nlosses = 1, .losses = &mse, .optimizer = opt, .nmetrics = 2};
  ck_assert_int_eq(lunet_model_compile(ctx, m, &co), LUNET_ERR_ARG);
  co = (lunet_compile_opts){.nlosses = 1, .losses = &mse, .optimizer = opt, .nmetrics = -4};
  ck_assert_int_eq(lunet_model_compile(ctx, m, &co), LUNET_ERR_ARG);
  co = (lunet_compile_opts){.nlosses = 1, .losses = &mse, .optimizer = opt, .nmetrics = 1,
                            .metrics = (const char *const[]){NULL}};
  ck_assert_int_eq(lunet_model_compile(ctx, m, &co), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "compile: metric 0 is NULL");
  lunet_optimizer_release(opt);
  /* a weight index past the layer's weights: NULL (it read past them) */
  lunet_layer *d0 = lunet_model_layer(m, 0);
  ck_assert_int_eq(lunet_layer_weight_count(d0), 2);
  ck_assert_ptr_nonnull(lunet_layer_weight_name(d0, 1));
  ck_assert_ptr_null(lunet_layer_weight_name(d0, 2));
  ck_assert_ptr_null(lunet_layer_weight_name(d0, -1));
  ck_assert(!lunet_layer_weight_trainable(d0, 100000));
  /* an unknown dtype, a missing shape, a sum_to target the shape does not
   * broadcast to: errors (they made unreadable tensors, crashed, or gave
   * the input back with status OK) */
  ck_assert_ptr_null(lunet_tensor_new(ctx, (lunet_dtype)7, 1, &three));
  ck_assert_str_eq(lunet_ctx_error(ctx), "unknown dtype 7 (LUNET_F32, LUNET_U8 or LUNET_I32)");
  ck_assert_ptr_null(lunet_tensor_new(ctx, LUNET_F32, 2, NULL));
  ck_assert_ptr_null(lunet_op_sum_to(ctx, x3, 2, (int64_t[]){5, 5}));
  ck_assert_str_eq(lunet_ctx_error(ctx), "sum_to: (1, 3) does not broadcast to (5, 5)");
  lunet_tensor *col = lunet_op_sum_to(ctx, x3, 2, (int64_t[]){1, 1});
  ck_assert_msg(col != NULL, "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_tensor_ndim(col), 2);
  lunet_tensor_release(col);
  lunet_tensor_release(x3);
  /* the README's idiom with a misspelt type: an error, not a crash */
  ck_assert_ptr_null(lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Conv2d")));
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "Conv2d"), "%s", lunet_ctx_error(ctx));
  /* save writes no class_names that load would refuse */
  char path[] = "/tmp/lunet_meta_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  const char *keys[1] = {"class_names"}, *bad[1] = {"[1,2]"}, *good[1] = {"[\"a\",\"b\"]"};
  ck_assert_int_eq(lunet_model_save(ctx, m, path, 1, keys, bad), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'mlp': class_names must be a JSON list of strings, got [1,2]");
  ck_assert_int_eq(lunet_model_save(ctx, m, path, 1, keys, good), LUNET_OK);
  lunet_model *back = lunet_model_load(ctx, path);
  ck_assert_msg(back != NULL, "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_model_class_count(back), 2);
  lunet_model_release(back);
  unlink(path);
  lunet_model_release(m);
}
END_TEST

/* NULL pointers and counts out of range in the rest of the C API: errors
 * that say so (each crashed, or read as something else, before). */
START_TEST(test_null_and_out_of_range_arguments) {
  ck_assert_msg(strstr(lunet_ctx_error(NULL), "lunet_ctx_new returned NULL"), "%s", lunet_ctx_error(NULL));
  ck_assert_int_eq(lunet_ctx_status(NULL), LUNET_ERR_NOMEM);
  int64_t keys[2] = {4, 5};
  ck_assert_int_eq(lunet_set_sample_keys(ctx, 1, keys, -1), LUNET_ERR_ARG); /* cleared them silently */
  ck_assert_int_eq(lunet_set_sample_keys(ctx, 1, NULL, 2), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_set_sample_keys(ctx, 1, keys, 2), LUNET_OK);
  ck_assert_int_eq(lunet_set_sample_keys(ctx, 1, NULL, 0), LUNET_OK);
  float v[3] = {1, 2, 3};
  int64_t three = 3;
  lunet_tensor *t = lunet_tensor_from_data(ctx, LUNET_F32, 1, &three, v);
  ck_assert_int_eq(lunet_tensor_read(ctx, NULL, v, sizeof v), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_tensor_read(ctx, t, NULL, sizeof v), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "no host buffer (NULL) for 12 bytes");
  ck_assert_int_eq(lunet_tensor_write(ctx, t, NULL, sizeof v), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_use(ctx, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_use_device(ctx, "cpu", -2), LUNET_ERR_ARG); /* was the default device */
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "device -2"), "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_use_device(ctx, "cpu", -1), LUNET_OK);
  /* a step past the axis takes its first element (the length overflowed) */
  int64_t start = 1, stop = 3, huge = INT64_MAX;
  lunet_tensor *one = lunet_op_slice(ctx, t, &start, &stop, &huge);
  ck_assert_msg(one != NULL, "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_tensor_numel(one), 1);
  float got = 0;
  ck_assert_int_eq(lunet_tensor_read(ctx, one, &got, sizeof got), LUNET_OK);
  ck_assert(got == 2.0f);
  lunet_tensor_release(one);
  start = 0;
  int64_t two = 2;
  lunet_tensor *pair = lunet_op_slice(ctx, t, &start, &stop, &two);
  ck_assert_int_eq(lunet_tensor_numel(pair), 2);
  float gp[2];
  ck_assert_int_eq(lunet_tensor_read(ctx, pair, gp, sizeof gp), LUNET_OK);
  ck_assert(gp[0] == 1.0f && gp[1] == 3.0f);
  lunet_tensor_release(pair);
  lunet_tensor_release(t);
  /* graph building */
  ck_assert_int_eq(lunet_model_input(ctx, NULL, "x", 1, &three), -1);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "no model (NULL"), "%s", lunet_ctx_error(ctx));
  lunet_model *m = lunet_model_new(ctx, "g");
  ck_assert_int_eq(lunet_model_input(ctx, m, "x", 1, NULL), -1);
  int x = lunet_model_input(ctx, m, "x", 1, &three);
  ck_assert_int_ge(x, 0);
  lunet_layer *d = dense(2, NULL);
  ck_assert_int_eq(lunet_model_add(ctx, m, NULL, 1, &x), -1);
  ck_assert_int_eq(lunet_model_add(ctx, m, d, 1, NULL), -1);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, NULL), LUNET_ERR_ARG);
  int y = lunet_model_add(ctx, m, d, 1, &x);
  ck_assert_msg(y >= 0, "%s", lunet_ctx_error(ctx));
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &y), LUNET_OK);
  lunet_layer_release(d);
  lunet_model_release(m);
  /* the image readers and writer */
  float px[4 * 4 * 3] = {0};
  lunet_image_info info;
  ck_assert_int_eq(lunet_image_info_read(ctx, NULL, &info), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_image_info_read(ctx, "x.png", NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_image_load(ctx, NULL, 4, 4, 3, false, px), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_image_save(ctx, NULL, px, 4, 4, 3, 90), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_image_save(ctx, "/tmp/big.png", px, INT64_MAX / 2, 4, 3, 90), LUNET_ERR_ARG);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "more than memory holds"), "%s", lunet_ctx_error(ctx));
  char path[] = "/tmp/lunet_img_XXXXXX.png";
  int fd = mkstemps(path, 4);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_int_eq(lunet_image_save(ctx, path, px, 4, 4, 3, 90), LUNET_OK);
  ck_assert_int_eq(lunet_image_load(ctx, path, 4, 4, 3, false, NULL), LUNET_ERR_ARG);
  const char *paths[1] = {path};
  ck_assert_int_eq(lunet_images_load(ctx, paths, -1, 4, 4, 3, false, 1, px), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_images_load(ctx, NULL, 1, 4, 4, 3, false, 1, px), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_images_load(ctx, paths, 1, 4, 4, 3, false, 1, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_images_load(ctx, paths, 1, 4, 4, 3, false, 1, px), LUNET_OK);
  unlink(path);
}
END_TEST

/* A session's feed is checked whole before any layer runs (a wrong width
 * failed half way, leaving the layers' caches a step ahead and the session
 * unusable), and keeps the session's number of samples. */
START_TEST(test_session_feeds_are_checked_first) {
  lunet_model *m = lunet_model_new(ctx, "dec");
  int64_t st = 4, se[2] = {4, 2};
  int tok = lunet_model_input(ctx, m, "tok", 1, &st), extra = lunet_model_input(ctx, m, "extra", 2, se);
  lunet_layer *emb = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Embedding"));
  lunet_layer_set_int(emb, "input_dim", 5);
  lunet_layer_set_int(emb, "output_dim", 2);
  lunet_layer *add = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Add"));
  int e = lunet_model_add(ctx, m, emb, 1, &tok);
  int h = lunet_model_add(ctx, m, add, 2, (int[]){e, extra});
  ck_assert_int_ge(h, 0);
  lunet_layer_release(emb);
  lunet_layer_release(add);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &h), LUNET_OK);
  lunet_model_session *ss = lunet_model_session_new(ctx, m);
  float ids[2] = {1, 2}, ex[6] = {0};
  int64_t s1[2] = {2, 1}, s2[3] = {2, 1, 2}, wide[3] = {2, 1, 3}, one[3] = {1, 1, 2};
  lunet_tensor *t = lunet_tensor_from_data(ctx, LUNET_F32, 2, s1, ids);
  lunet_tensor *x = lunet_tensor_from_data(ctx, LUNET_F32, 3, s2, ex);
  lunet_tensor *bad = lunet_tensor_from_data(ctx, LUNET_F32, 3, wide, ex);
  lunet_tensor *y = NULL;
  ck_assert_int_eq(lunet_model_session_feed(ctx, ss, 2, (lunet_tensor *[]){t, bad}, &y), LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'dec': a session's input 'extra' is (N, steps, 2) with one N and "
                                         "one number of steps for all inputs, got (2, 1, 3)");
  ck_assert_int_eq(lunet_model_session_length(ss), 0);
  /* NULL inputs or out: errors, as predict's (they crashed) */
  ck_assert_int_eq(lunet_model_session_feed(ctx, ss, 2, NULL, &y), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_model_session_feed(ctx, ss, 2, (lunet_tensor *[]){t, x}, NULL), LUNET_ERR_ARG);
  ck_assert_int_eq(lunet_model_session_feed(ctx, ss, 2, (lunet_tensor *[]){t, x}, &y), LUNET_OK);
  ck_assert_int_eq(lunet_model_session_length(ss), 1);
  lunet_tensor_release(y);
  lunet_tensor *x1 = lunet_tensor_from_data(ctx, LUNET_F32, 3, one, ex), *t1 = lunet_tensor_from_data(ctx, LUNET_F32, 2, (int64_t[]){1, 1}, ids);
  ck_assert_int_eq(lunet_model_session_feed(ctx, ss, 2, (lunet_tensor *[]){t1, x1}, &y), LUNET_ERR_SHAPE);
  ck_assert_str_eq(lunet_ctx_error(ctx), "model 'dec': the session runs 2 samples, this feed has 1 (one session per batch)");
  for (lunet_tensor **p = (lunet_tensor *[]){t, x, bad, x1, t1, NULL}; *p; p++) lunet_tensor_release(*p);
  lunet_model_session_free(ss);
  lunet_model_release(m);
}
END_TEST

/* Two threads, each with its own context, predict with one model at the
 * same time: they must meet inside the Barrier layer's forward, which a
 * model-wide or layer-wide lock would prevent. */
typedef struct predictor {
  lunet_model *m;
  lunet_tensor *x;
  float out[8];
  lunet_status s;
  char error[256];
} predictor;

static void *predict_thread(void *arg) {
  predictor *p = arg;
  lunet_ctx *c = lunet_ctx_new();
  lunet_tensor *y = NULL;
  p->s = lunet_model_predict(c, p->m, 1, &p->x, &y);
  if (!p->s) p->s = lunet_tensor_read(c, y, p->out, sizeof p->out);
  snprintf(p->error, sizeof p->error, "%s", lunet_ctx_error(c));
  lunet_tensor_release(y);
  lunet_ctx_free(c);
  return NULL;
}

START_TEST(test_two_threads_run_one_model_at_once) {
  ck_assert_msg(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_barrier_plugin.so") == LUNET_OK, "%s",
                lunet_ctx_error(ctx));
  lunet_model *m = lunet_model_new(ctx, "threads");
  int64_t shape = 3;
  int v = lunet_model_input(ctx, m, "x", 1, &shape);
  lunet_layer *b = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Barrier")), *d = dense(2, "tanh");
  v = lunet_model_add(ctx, m, b, 1, &v);
  v = lunet_model_add(ctx, m, d, 1, &v);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &v), LUNET_OK);
  lunet_tensor *x1, *y1, *x2, *y2;
  linear_data(4, &x1, &y1);
  linear_data(4, &x2, &y2);
  predictor p[2] = {{.m = m, .x = x1}, {.m = m, .x = x2}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, predict_thread, &p[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) ck_assert_msg(p[i].s == LUNET_OK, "thread %d: %s", i, p[i].error);
  /* each thread got its own input's result: tanh(x W + b) by hand */
  float xs[12], w[6], bias[2];
  lunet_tensor_read(ctx, x2, xs, sizeof xs);
  lunet_tensor_read(ctx, lunet_model_param(m, 0), w, sizeof w);
  lunet_tensor_read(ctx, lunet_model_param(m, 1), bias, sizeof bias);
  for (int r = 0; r < 4; r++)
    for (int k = 0; k < 2; k++) {
      float s = bias[k];
      for (int j = 0; j < 3; j++) s += xs[r * 3 + j] * w[j * 2 + k];
      ck_assert_float_eq_tol(p[1].out[r * 2 + k], tanhf(s), 1e-5f);
    }
  lunet_tensor_release(x1);
  lunet_tensor_release(y1);
  lunet_tensor_release(x2);
  lunet_tensor_release(y2);
  lunet_layer_release(b);
  lunet_layer_release(d);
  lunet_model_release(m);
}
END_TEST

/* A layer of host-language code (SerialBarrier, like nn.Lambda) runs one
 * call at a time: of two threads, one is refused naming the layer; and a
 * model holding it is not saved. */
START_TEST(test_host_code_layers_run_one_call_at_a_time) {
  ck_assert_msg(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_barrier_plugin.so") == LUNET_OK, "%s",
                lunet_ctx_error(ctx));
  lunet_model *m = lunet_model_new(ctx, "serial");
  int64_t shape = 3;
  int v = lunet_model_input(ctx, m, "x", 1, &shape);
  lunet_layer *b = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "SerialBarrier"));
  lunet_layer_set_string(b, "name", "gate");
  v = lunet_model_add(ctx, m, b, 1, &v);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &v), LUNET_OK);
  lunet_tensor *x, *y;
  linear_data(4, &x, &y);
  predictor p[2] = {{.m = m, .x = x}, {.m = m, .x = x}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, predict_thread, &p[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  int refused = 0;
  for (int i = 0; i < 2; i++)
    refused += p[i].s != LUNET_OK &&
               strstr(p[i].error, "gate (SerialBarrier) runs host-language code, which cannot run on "
                                  "two threads at once") != NULL;
  ck_assert_msg(refused == 1, "one call refused: '%s' / '%s'", p[0].error, p[1].error);
  ck_assert_int_eq(lunet_model_save(ctx, m, "/tmp/lunet_serial.safetensors", 0, NULL, NULL), LUNET_ERR_ARG);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "layer 'gate' (SerialBarrier) runs host-language code"), "%s",
                lunet_ctx_error(ctx));
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_layer_release(b);
  lunet_model_release(m);
}
END_TEST

/* A call record the caller keeps carries state from one forward to the
 * next; a fresh record per call does not. */
START_TEST(test_a_kept_call_record_persists) {
  ck_assert_int_eq(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_barrier_plugin.so"), LUNET_OK);
  lunet_layer *l = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Count"));
  float zero[2] = {0, 0}, out[2];
  int64_t shape[2] = {2, 1};
  lunet_tensor *x = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, zero), *y[1];
  lunet_call *keep = lunet_call_new(ctx, l);
  for (int k = 1; k <= 3; k++) {
    ck_assert_int_eq(lunet_layer_apply(ctx, l, keep, 1, &x, NULL, false, false, y, NULL), LUNET_OK);
    lunet_tensor_read(ctx, y[0], out, sizeof out);
    ck_assert_float_eq(out[1], (float)k);
    lunet_tensor_release(y[0]);
  }
  ck_assert_int_eq(lunet_layer_apply(ctx, l, NULL, 1, &x, NULL, false, false, y, NULL), LUNET_OK);
  lunet_tensor_read(ctx, y[0], out, sizeof out);
  ck_assert_float_eq(out[0], 1.0f);
  lunet_tensor_release(y[0]);
  lunet_call_release(keep);
  lunet_tensor_release(x);
  lunet_layer_release(l);
}
END_TEST

/* Masks travel with the values through a model: MaskNonzero makes one,
 * Dense passes it on (no compute_mask: the first input's mask), ApplyMask
 * zeroes what it marks.  Dense's kernel is set to the identity. */
START_TEST(test_masks_flow_through_the_graph) {
  ck_assert_int_eq(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_barrier_plugin.so"), LUNET_OK);
  lunet_model *m = lunet_model_new(ctx, "masks");
  int64_t shape = 2;
  int v = lunet_model_input(ctx, m, "x", 1, &shape);
  lunet_layer *mk = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "MaskNonzero"));
  lunet_layer *d = dense(2, NULL), *ap = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "ApplyMask"));
  v = lunet_model_add(ctx, m, mk, 1, &v);
  v = lunet_model_add(ctx, m, d, 1, &v);
  v = lunet_model_add(ctx, m, ap, 1, &v);
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 1, &v), LUNET_OK);
  float w[4] = {0, 1, 1, 0}, b[2] = {5, 5}; /* swaps the two features, adds 5 */
  lunet_tensor_write(ctx, lunet_layer_weight(d, 0), w, sizeof w);
  lunet_tensor_write(ctx, lunet_layer_weight(d, 1), b, sizeof b);
  float xs[4] = {0, 3, 2, 0}, out[4];
  int64_t xshape[2] = {2, 2};
  lunet_tensor *x = lunet_tensor_from_data(ctx, LUNET_F32, 2, xshape, xs), *y = NULL;
  ck_assert_int_eq(lunet_model_predict(ctx, m, 1, &x, &y), LUNET_OK);
  lunet_tensor_read(ctx, y, out, sizeof out);
  /* dense gives {8, 5}, {5, 7}; the mask of x, {0, 1}, {1, 0}, keeps 5 and 5 */
  float want[4] = {0, 5, 5, 0};
  for (int i = 0; i < 4; i++) ck_assert_float_eq(out[i], want[i]);
  lunet_tensor_release(x);
  lunet_tensor_release(y);
  lunet_layer_release(mk);
  lunet_layer_release(d);
  lunet_layer_release(ap);
  lunet_model_release(m);
}
END_TEST

/* A layer with two outputs on the tape: y1 = x, y2 = 3x; the loss
 * sum(a * y1) + sum(b * y2) has dx = a + 3b; with only y2 in the loss the
 * unused output's gradient is zero, dx = 3b.  Through a model too. */
static float read0(lunet_tensor *t, int i) {
  float v[8];
  lunet_tensor_read(ctx, t, v, sizeof(float) * (size_t)lunet_tensor_numel(t));
  return v[i];
}

START_TEST(test_layers_with_two_outputs) {
  ck_assert_int_eq(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_barrier_plugin.so"), LUNET_OK);
  lunet_layer *l = lunet_layer_new(ctx, lunet_layer_type_find(ctx, "Twins"));
  float xv[4] = {1, 2, 3, 4}, av[4] = {1, 0, -1, 2}, bv[4] = {0.5f, 1, 2, -1};
  int64_t shape[2] = {2, 2};
  lunet_tensor *x = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, xv);
  lunet_tensor *a = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, av);
  lunet_tensor *b = lunet_tensor_from_data(ctx, LUNET_F32, 2, shape, bv);
  lunet_tensor_set_requires_grad(x, true);
  for (int both = 1; both >= 0; both--) {
    lunet_tensor *y[2];
    ck_assert_int_eq(lunet_layer_apply(ctx, l, NULL, 1, &x, NULL, true, false, y, NULL), LUNET_OK);
    ck_assert_float_eq(read0(y[1], 3), 12.0f);
    lunet_tensor *t2 = lunet_mul(ctx, y[1], b), *s2 = lunet_reduce(ctx, LUNET_REDUCE_SUM, t2, LUNET_ALL_AXES, false);
    lunet_tensor *loss = s2;
    if (both) {
      lunet_tensor *t1 = lunet_mul(ctx, y[0], a), *s1 = lunet_reduce(ctx, LUNET_REDUCE_SUM, t1, LUNET_ALL_AXES, false);
      loss = lunet_add(ctx, s1, s2);
      lunet_tensor_release(t1);
      lunet_tensor_release(s1);
      lunet_tensor_release(s2);
    }
    lunet_tensor_zero_grad(x);
    ck_assert_msg(lunet_backward(ctx, loss, NULL) == LUNET_OK, "%s", lunet_ctx_error(ctx));
    for (int i = 0; i < 4; i++)
      ck_assert_float_eq_tol(read0(lunet_tensor_grad_get(x), i), (both ? av[i] : 0) + 3 * bv[i], 1e-6f);
    lunet_tensor_release(loss);
    lunet_tensor_release(t2);
    lunet_tensor_release(y[0]);
    lunet_tensor_release(y[1]);
  }
  /* in a model: both outputs are values, ids first and first + 1 */
  lunet_model *m = lunet_model_new(ctx, "twins");
  int64_t two = 2;
  int v = lunet_model_input(ctx, m, "x", 1, &two);
  int first = lunet_model_add(ctx, m, l, 1, &v);
  int outs[2] = {first, first + 1};
  ck_assert_int_eq(lunet_model_set_outputs(ctx, m, 2, outs), LUNET_OK);
  lunet_tensor *p[2];
  ck_assert_int_eq(lunet_model_predict(ctx, m, 1, &x, p), LUNET_OK);
  ck_assert_float_eq(read0(p[0], 2), 3.0f);
  ck_assert_float_eq(read0(p[1], 2), 9.0f);
  lunet_tensor_release(p[0]);
  lunet_tensor_release(p[1]);
  lunet_model_release(m);
  lunet_tensor_release(x);
  lunet_tensor_release(a);
  lunet_tensor_release(b);
  lunet_layer_release(l);
}
END_TEST

START_TEST(test_plugins_of_other_abis_are_refused) {
  char ours[64], next[64];
  snprintf(ours, sizeof ours, "this lunet has plugin ABI %d.%d", LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR);
  snprintf(next, sizeof next, "was built for plugin ABI %d.%d", LUNET_PLUGIN_ABI_MAJOR, LUNET_PLUGIN_ABI_MINOR + 1);
  ck_assert_int_eq(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_abi_plugin_1_0.so"), LUNET_ERR_ABI);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "was built for plugin ABI 1.0") && strstr(lunet_ctx_error(ctx), ours),
                "%s", lunet_ctx_error(ctx));
  /* a newer minor version may use members this core does not know */
  ck_assert_int_eq(lunet_load_plugin(ctx, TEST_PLUGIN_DIR "/test_abi_plugin_next.so"), LUNET_ERR_ABI);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), next), "%s", lunet_ctx_error(ctx));
}
END_TEST

/* The self-test is a core function a C program can call. */
START_TEST(test_check_layer_type_from_c) {
  lunet_check_result r[16];
  int n = lunet_check_layer_type(ctx, "Dense", r, 16);
  ck_assert_int_ge(n, 2);
  bool inference = false, training = false;
  for (int i = 0; i < n && i < 16; i++) {
    ck_assert_msg(r[i].ok, "case %d (%s): error %g, diff %g %s", r[i].test, r[i].backend, r[i].max_error,
                  r[i].max_diff, r[i].error);
    if (!r[i].backend[0]) {
      inference |= !r[i].training;
      training |= r[i].training;
    }
  }
  ck_assert(inference && training);
  ck_assert_int_eq(lunet_check_layer_type(ctx, "Teleport", r, 16), -1);
}
END_TEST

static Suite *model_suite(void) {
  Suite *s = suite_create("model");
  TCase *tc = tcase_create("api");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_train_step_learns);
  tcase_add_test(tc, test_metric_specs_and_state_vectors);
  tcase_add_test(tc, test_grad_ready_gives_complete_gradients);
  tcase_add_test(tc, test_grad_transform_runs_before_the_update);
  tcase_add_test(tc, test_metrics_update_merge_reset);
  tcase_add_test(tc, test_graph_errors_are_clear);
  tcase_add_test(tc, test_sizes_and_built_layers_are_checked);
  tcase_add_test(tc, test_null_and_out_of_range_arguments);
  tcase_add_test(tc, test_session_feeds_are_checked_first);
  tcase_add_test(tc, test_two_threads_run_one_model_at_once);
  tcase_add_test(tc, test_plugins_of_other_abis_are_refused);
  tcase_add_test(tc, test_host_code_layers_run_one_call_at_a_time);
  tcase_add_test(tc, test_a_kept_call_record_persists);
  tcase_add_test(tc, test_masks_flow_through_the_graph);
  tcase_add_test(tc, test_layers_with_two_outputs);
  tcase_add_test(tc, test_check_layer_type_from_c);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(model_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
