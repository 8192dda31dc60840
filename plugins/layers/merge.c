/* Keras's merge layers: Add, Subtract, Multiply, Average, Maximum and
 * Minimum combine inputs elementwise, broadcasting as Keras's do (the
 * sample shapes aligned at their last axes, a size of 1 stretching, a
 * shorter shape taking size-1 axes after the batch axis); Concatenate
 * joins inputs along one axis. */
#include "layers.h"

typedef enum merge_kind {
  MERGE_ADD,
  MERGE_SUB, /* x0 - x1 */
  MERGE_MUL,
  MERGE_AVG,
  MERGE_MAX,
  MERGE_MIN
} merge_kind;

typedef struct merge_state {
  int n;                                   /* inputs of the last forward */
  lunet_tensor *x[LUNET_LAYER_MAX_INPUTS]; /* each at the output's rank: Multiply, Maximum, Minimum */
  lunet_tensor *y;                         /* (N, ...): Maximum, Minimum */
  lunet_shape in[LUNET_LAYER_MAX_INPUTS];  /* each input's shape, batch axis included */
} merge_state;

static const lunet_arg_schema merge_args[] = {
    LAYERS_ARG_NAME,
};

/* Keras's _compute_elemwise_op_output_shape over every input. */
static lunet_status merge_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (nin < 2) return lunet_layer_error(l, LUNET_ERR_ARG, "needs 2 or more inputs, got %d", nin);
  lunet_shape o = in[0];
  for (int i = 1; i < nin; i++) {
    lunet_shape a = o.ndim >= in[i].ndim ? o : in[i];
    const lunet_shape *b = o.ndim >= in[i].ndim ? &in[i] : &o;
    int off = a.ndim - b->ndim;
    for (int d = 0; d < b->ndim; d++) {
      int64_t p = a.dims[off + d], q = b->dims[d];
      if (p != q && p != 1 && q != 1) {
        char s1[128], s2[128], which[32];
        snprintf(which, sizeof which, i == 1 ? "input 1's" : "inputs 1 to %d's", i);
        return lunet_layer_error(l, LUNET_ERR_SHAPE,
                                 "input %d has shape %s, which does not broadcast with %s %s: aligned at their last "
                                 "axes, sizes must match or be 1",
                                 i + 1, layers_sample_str(&in[i], s1, sizeof s1), which,
                                 layers_sample_str(&o, s2, sizeof s2));
      }
      a.dims[off + d] = p == 1 ? q : p;
    }
    o = a;
  }
  out[0] = o;
  return LUNET_OK;
}

/* Shape s (N, d...) at rank `nd` (batch included): size-1 axes after the
 * batch axis, as Keras's expand_dims(x, 1). */
static void at_rank(const lunet_shape *s, int nd, int64_t *out) {
  out[0] = s->dims[0];
  for (int i = 1; i < nd; i++) out[i] = i < nd - s->ndim + 1 ? 1 : s->dims[i - (nd - s->ndim)];
}

/* Drops what a forward kept (a kept call record brings the last one's). */
static void merge_clear(merge_state *st) {
  for (int i = 0; i < st->n; i++) layers_set(&st->x[i], NULL);
  layers_set(&st->y, NULL);
}

/* x[i] (N, ...) -> x0 op x1 op ... op x[n-1] (N, ...), n >= 2 */
static lunet_tensor *merge_fold(lunet_ctx *ctx, lunet_binary_op op, int n, lunet_tensor *const *x) {
  lunet_tensor *acc = lunet_op_binary(ctx, op, x[0], x[1]);
  for (int i = 2; acc && i < n; i++) {
    lunet_tensor *t = lunet_op_binary(ctx, op, acc, x[i]);
    lunet_tensor_release(acc);
    acc = t;
  }
  return acc;
}

/* x[i] (N, ...) -> y (N, ...) */
static lunet_status merge_forward(lunet_call *c, merge_kind k, int nin, lunet_tensor *const *x,
                                  lunet_tensor **y) {
  static const lunet_binary_op ops[] = {
      [MERGE_ADD] = LUNET_BINARY_ADD, [MERGE_SUB] = LUNET_BINARY_SUB,
      [MERGE_MUL] = LUNET_BINARY_MUL, [MERGE_AVG] = LUNET_BINARY_ADD,
      [MERGE_MAX] = LUNET_BINARY_MAX, [MERGE_MIN] = LUNET_BINARY_MIN,
  };
  lunet_ctx *ctx = lunet_call_ctx(c);
  merge_state *st = lunet_call_state(c);
  merge_clear(st);
  int nd = 0;
  for (int i = 0; i < nin; i++) nd = lunet_tensor_ndim(x[i]) > nd ? lunet_tensor_ndim(x[i]) : nd;
  lunet_tensor *xs[LUNET_LAYER_MAX_INPUTS] = {0};
  bool ok = true;
  for (int i = 0; i < nin; i++) {
    int64_t shape[LUNET_MAX_DIMS];
    st->in[i].ndim = lunet_tensor_ndim(x[i]);
    for (int d = 0; d < st->in[i].ndim; d++) st->in[i].dims[d] = lunet_tensor_dim(x[i], d);
    at_rank(&st->in[i], nd, shape);
    ok = ok && (xs[i] = lunet_op_reshape(ctx, x[i], nd, shape));
  }
  lunet_tensor *r = ok ? merge_fold(ctx, ops[k], nin, xs) : NULL;
  if (r && k == MERGE_AVG) {
    lunet_tensor *mean = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, r, 1.0f / (float)nin, 0.0f);
    lunet_tensor_release(r);
    r = mean;
  }
  if (r && (k == MERGE_MUL || k == MERGE_MAX || k == MERGE_MIN))
    for (int i = 0; i < nin; i++) st->x[i] = lunet_tensor_retain(xs[i]);
  for (int i = 0; i < nin; i++) layers_release(xs[i]);
  if (!r) return layers_call_failed(c);
  st->n = nin;
  if (k == MERGE_MAX || k == MERGE_MIN) st->y = lunet_tensor_retain(r);
  y[0] = r;
  return LUNET_OK;
}

static int64_t numel_of(const lunet_shape *s) {
  int64_t n = 1;
  for (int d = 0; d < s->ndim; d++) n *= s->dims[d];
  return n;
}

/* A gradient of the output's shape back to input i's (summed over the
 * axes it was stretched along); takes the reference. */
static lunet_tensor *to_input(lunet_ctx *ctx, const merge_state *st, lunet_tensor *g, int i) {
  if (!g || lunet_tensor_numel(g) == numel_of(&st->in[i])) {
    lunet_tensor *r = g ? lunet_op_reshape(ctx, g, st->in[i].ndim, st->in[i].dims) : NULL;
    layers_release(g);
    return r;
  }
  int nd = lunet_tensor_ndim(g);
  int64_t shape[LUNET_MAX_DIMS];
  at_rank(&st->in[i], nd, shape);
  lunet_tensor *s = lunet_op_sum_to(ctx, g, nd, shape);
  layers_release(g);
  lunet_tensor *r = s ? lunet_op_reshape(ctx, s, st->in[i].ndim, st->in[i].dims) : NULL;
  layers_release(s);
  return r;
}

/* dy (N, ...) times every input but x[skip] (n >= 2, so at least one). */
static lunet_tensor *product_but(lunet_ctx *ctx, lunet_tensor *dy, lunet_tensor *const *x, int n,
                                 int skip) {
  lunet_tensor *acc = NULL;
  for (int j = 0; j < n; j++) {
    if (j == skip) continue;
    lunet_tensor *t = lunet_op_binary(ctx, LUNET_BINARY_MUL, acc ? acc : dy, x[j]);
    layers_release(acc);
    if (!(acc = t)) return NULL;
  }
  return acc;
}

/* dy (N, ...) -> dx[i] (N, ...) for Add, Subtract, Multiply and Average:
 * a view of dy where the gradient is dy itself. */
static lunet_tensor *merge_dx(lunet_ctx *ctx, merge_kind k, const merge_state *st, lunet_tensor *dy,
                              int i) {
  switch (k) {
  case MERGE_ADD:
    return layers_reshape_like(ctx, dy, dy);
  case MERGE_SUB:
    return i == 0 ? layers_reshape_like(ctx, dy, dy)
                  : lunet_op_unary(ctx, LUNET_UNARY_NEG, dy, 0.0f, 0.0f);
  case MERGE_MUL:
    return product_but(ctx, dy, st->x, st->n, i);
  case MERGE_AVG:
    return lunet_op_unary(ctx, LUNET_UNARY_AFFINE, dy, 1.0f / (float)st->n, 0.0f);
  case MERGE_MAX:
  case MERGE_MIN:
    break; /* extreme_backward's */
  }
  return NULL;
}

/* Maximum and Minimum: dy goes to the first input that holds y, so the
 * inputs' gradients sum to dy exactly on ties.  mask (N, ...) is 1 where
 * input i gets dy; left (N, ...) is 1 where no earlier input held y. */
static lunet_status extreme_backward(lunet_call *c, const merge_state *st, lunet_tensor *dy,
                                     lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *left = NULL, *eq = NULL, *mask = NULL;
  for (int i = 0; i < st->n; i++) {
    if (!(eq = lunet_op_binary(ctx, LUNET_BINARY_EQ, st->x[i], st->y))) goto fail;
    if (!left) {
      mask = eq; /* the first input: no earlier one */
      eq = NULL;
    } else {
      if (!(mask = lunet_op_binary(ctx, LUNET_BINARY_MUL, eq, left))) goto fail;
      layers_set(&eq, NULL);
    }
    if (i + 1 < st->n) {
      lunet_tensor *rest = left ? lunet_op_binary(ctx, LUNET_BINARY_SUB, left, mask)
                                : lunet_op_unary(ctx, LUNET_UNARY_AFFINE, mask, -1.0f, 1.0f);
      if (!rest) goto fail;
      layers_set(&left, rest);
    }
    if (lunet_call_needs_dx(c, i) && !(dx[i] = to_input(ctx, st, lunet_op_binary(ctx, LUNET_BINARY_MUL, dy, mask), i)))
      goto fail;
    layers_set(&mask, NULL);
  }
  layers_release(left);
  return LUNET_OK;
fail:
  layers_release(left);
  layers_release(eq);
  layers_release(mask);
  return layers_call_failed(c);
}

/* dy (N, ...) -> dx[i] (N, ...) for every input that needs one */
static lunet_status merge_backward(lunet_call *c, merge_kind k, lunet_tensor *dy,
                                   lunet_tensor **dx) {
  merge_state *st = lunet_call_state(c);
  lunet_status s = LUNET_OK;
  for (int i = 0; i < st->n; i++) dx[i] = NULL;
  if (st->n == 0) return layers_no_forward(c);
  if (k == MERGE_MAX || k == MERGE_MIN) {
    s = extreme_backward(c, st, dy, dx);
  } else {
    for (int i = 0; s == LUNET_OK && i < st->n; i++)
      if (lunet_call_needs_dx(c, i) &&
          !(dx[i] = to_input(lunet_call_ctx(c), st, merge_dx(lunet_call_ctx(c), k, st, dy, i), i)))
        s = layers_call_failed(c);
  }
  if (s != LUNET_OK)
    for (int i = 0; i < st->n; i++) layers_set(&dx[i], NULL);
  merge_clear(st);
  return s;
}

static void merge_release(lunet_layer *l, lunet_call *c) { merge_clear(lunet_call_state(c)); }

/* Keras's Merge.compute_mask: the AND of the inputs' masks (those that
 * have one); no mask when none has.  Masks are 0/1 floats: AND is a
 * product. */
static lunet_status merge_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                               lunet_tensor **mask_out) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *m = NULL;
  for (int i = 0; i < nin; i++) {
    lunet_tensor *mi = lunet_call_mask(c, i);
    if (!mi) continue;
    lunet_tensor *next = m ? lunet_op_binary(ctx, LUNET_BINARY_MUL, m, mi) : lunet_tensor_retain(mi);
    layers_release(m);
    if (!(m = next)) return layers_call_failed(c);
  }
  mask_out[0] = m;
  return LUNET_OK;
}

/* Each type passes its kind down. */
static lunet_status add_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_ADD, nin, x, y);
}

static lunet_status add_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                 lunet_tensor **dx) {
  return merge_backward(c, MERGE_ADD, dy[0], dx);
}

static lunet_status subtract_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                     lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_SUB, nin, x, y);
}

static lunet_status subtract_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                      lunet_tensor **dx) {
  return merge_backward(c, MERGE_SUB, dy[0], dx);
}

static lunet_status multiply_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                     lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_MUL, nin, x, y);
}

static lunet_status multiply_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                      lunet_tensor **dx) {
  return merge_backward(c, MERGE_MUL, dy[0], dx);
}

static lunet_status average_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_AVG, nin, x, y);
}

static lunet_status average_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  return merge_backward(c, MERGE_AVG, dy[0], dx);
}

static lunet_status maximum_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_MAX, nin, x, y);
}

static lunet_status maximum_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  return merge_backward(c, MERGE_MAX, dy[0], dx);
}

static lunet_status minimum_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                    lunet_tensor **y, bool training) {
  return merge_forward(c, MERGE_MIN, nin, x, y);
}

static lunet_status minimum_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                     lunet_tensor **dx) {
  return merge_backward(c, MERGE_MIN, dy[0], dx);
}

/* Two and three inputs, rank 2 and rank 1, and broadcast ones (a size 1,
 * a shorter shape). */
static const lunet_layer_test merge_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {2, 3}}, {2, {2, 3}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({1, {4}}, {1, {4}}, {1, {4}}), 3, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({2, {2, 3}}, {2, {1, 3}}, {1, {3}}), 2, 1e-2f},
};

static const lunet_layer_test subtract_tests[] = {
    {NULL, 0, LAYERS_INPUTS({2, {2, 3}}, {2, {2, 3}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({1, {4}}, {1, {4}}), 3, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({1, {3}}, {2, {2, 3}}), 2, 1e-2f},
};

/* Few elements: the finite differences must not step across a tie (with
 * standard normal inputs, two values within the step are rare). */
static const lunet_layer_test extreme_tests[] = {
    {NULL, 0, LAYERS_INPUTS({1, {4}}, {1, {4}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({2, {1, 3}}, {2, {1, 3}}, {2, {1, 3}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({2, {2, 3}}, {1, {3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_add = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Add",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Sum of 2 or more inputs of one shape",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = add_forward,
    .backward = add_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = merge_tests,
    .ntests = sizeof merge_tests / sizeof merge_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_subtract = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Subtract",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Difference of 2 inputs of one shape: x0 - x1",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = 2,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = subtract_forward,
    .backward = subtract_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = subtract_tests,
    .ntests = sizeof subtract_tests / sizeof subtract_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_multiply = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Multiply",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Elementwise product of 2 or more inputs of one shape",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = multiply_forward,
    .backward = multiply_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = merge_tests,
    .ntests = sizeof merge_tests / sizeof merge_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_average = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Average",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Elementwise mean of 2 or more inputs of one shape",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = average_forward,
    .backward = average_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = merge_tests,
    .ntests = sizeof merge_tests / sizeof merge_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_maximum = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Maximum",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Elementwise maximum of 2 or more inputs of one shape",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = maximum_forward,
    .backward = maximum_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = extreme_tests,
    .ntests = sizeof extreme_tests / sizeof extreme_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_minimum = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Minimum",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Elementwise minimum of 2 or more inputs of one shape",
    .args = merge_args,
    .nargs = sizeof merge_args / sizeof merge_args[0],
    .positional = 0,
    .min_inputs = 2,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(merge_state),
    .build = merge_build,
    .forward = minimum_forward,
    .backward = minimum_backward,
    .release = merge_release,
    .compute_mask = merge_mask,
    .tests = extreme_tests,
    .ntests = sizeof extreme_tests / sizeof extreme_tests[0],
};

/* ---- Concatenate ---- */

typedef struct concat_state {
  int n, axis;                         /* inputs, and the axis of the batch tensors */
  int64_t len[LUNET_LAYER_MAX_INPUTS]; /* each input's size along it */
} concat_state;

static const lunet_arg_schema concat_args[] = {
    {"axis", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = -1},
     .doc = "the axis to join along, counting the batch axis as Keras does: 1 is the first axis of "
            "a sample, -1 the last"},
    LAYERS_ARG_NAME,
};

/* Keras's axis for samples of rank `rank` as an axis of the batch tensors
 * (1..rank), or -1 when it names none of them. */
static int concat_batch_axis(int64_t axis, int rank) {
  int64_t a = axis < 0 ? axis + rank + 1 : axis;
  return a >= 1 && a <= rank ? (int)a : -1;
}

static lunet_status concat_axis_error(lunet_layer *l, int64_t axis, int rank) {
  if (axis == 0 || axis == -(int64_t)rank - 1)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "cannot concatenate along the batch axis (axis = %lld); use 1 to %d "
                             "for the axes of a sample, or -1 for the last",
                             (long long)axis, rank);
  return lunet_layer_error(l, LUNET_ERR_ARG,
                           "axis = %lld is out of range for inputs of rank %d plus the batch "
                           "axis; use 1 to %d, or -%d to -1",
                           (long long)axis, rank, rank, rank);
}

/* Inputs agree on every axis but `a` (an axis of one sample, 0-based); the
 * output's size along it is the sum of theirs. */
static lunet_status concat_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  int64_t axis = lunet_layer_get_int(l, "axis");
  if (in[0].ndim < 1) return layers_rank_error(l, "1 or more", &in[0]);
  int ba = concat_batch_axis(axis, in[0].ndim);
  if (ba < 0) return concat_axis_error(l, axis, in[0].ndim);
  int a = ba - 1;
  out[0] = in[0];
  for (int i = 1; i < nin; i++) {
    bool fits = in[i].ndim == in[0].ndim;
    for (int j = 0; fits && j < in[0].ndim; j++) fits = j == a || in[i].dims[j] == in[0].dims[j];
    if (!fits) {
      char s1[128], s2[128];
      return lunet_layer_error(l, LUNET_ERR_SHAPE,
                               "input %d has shape %s but input 1 has %s; they must agree on "
                               "every axis but axis %lld, the one they are joined along",
                               i + 1, layers_sample_str(&in[i], s1, sizeof s1),
                               layers_sample_str(&in[0], s2, sizeof s2), (long long)axis);
    }
    out[0].dims[a] += in[i].dims[a];
  }
  return LUNET_OK;
}

/* x[i] (N, ..., Ki, ...) -> y (N, ..., sum Ki, ...) */
static lunet_status concat_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                   lunet_tensor **y, bool training) {
  concat_state *st = lunet_call_state(c);
  int axis = concat_batch_axis(lunet_layer_get_int(l, "axis"), lunet_tensor_ndim(x[0]) - 1);
  if (axis < 0) return lunet_call_error(c, LUNET_ERR_ARG, "axis names no axis of the inputs");
  if (!(y[0] = lunet_op_concat(lunet_call_ctx(c), x, nin, axis))) return layers_call_failed(c);
  st->n = nin;
  st->axis = axis;
  for (int i = 0; i < nin; i++) st->len[i] = lunet_tensor_dim(x[i], axis);
  return LUNET_OK;
}

/* dy (N, ..., sum Ki, ...) -> dx[i] (N, ..., Ki, ...): consecutive slices */
static lunet_status concat_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                    lunet_tensor **dx) {
  concat_state *st = lunet_call_state(c);
  int nd = lunet_tensor_ndim(dy[0]);
  int64_t start[LUNET_MAX_DIMS] = {0}, stop[LUNET_MAX_DIMS], step[LUNET_MAX_DIMS];
  for (int i = 0; i < st->n; i++) dx[i] = NULL;
  if (st->n == 0) return layers_no_forward(c);
  for (int j = 0; j < nd; j++) {
    stop[j] = lunet_tensor_dim(dy[0], j);
    step[j] = 1;
  }
  for (int i = 0; i < st->n; i++) {
    stop[st->axis] = start[st->axis] + st->len[i];
    if (lunet_call_needs_dx(c, i) &&
        !(dx[i] = lunet_op_slice(lunet_call_ctx(c), dy[0], start, stop, step))) {
      for (int k = 0; k < i; k++) layers_set(&dx[k], NULL);
      return layers_call_failed(c);
    }
    start[st->axis] = stop[st->axis];
  }
  return LUNET_OK;
}

/* Keras's Concatenate.compute_mask: an input without a mask counts as all
 * present.  Along the last (feature) axis the step is present when any
 * input has it (so one unmasked input leaves no mask); along another axis
 * the masks are joined along it. */
static lunet_status concat_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                lunet_tensor **mask_out) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int rank = lunet_tensor_ndim(x[0]) - 1, axis = concat_batch_axis(lunet_layer_get_int(l, "axis"), rank);
  bool any = false, all = true;
  for (int i = 0; i < nin; i++) {
    any |= lunet_call_mask(c, i) != NULL;
    all &= lunet_call_mask(c, i) != NULL;
  }
  if (!any || axis < 0) return LUNET_OK;
  if (axis == rank) { /* the feature axis: OR of the masks, none when one input has none */
    if (!all) return LUNET_OK;
    lunet_tensor *m = lunet_tensor_retain(lunet_call_mask(c, 0));
    for (int i = 1; m && i < nin; i++) {
      lunet_tensor *next = lunet_op_binary(ctx, LUNET_BINARY_MAX, m, lunet_call_mask(c, i));
      layers_release(m);
      m = next;
    }
    if (!m) return layers_call_failed(c);
    mask_out[0] = m;
    return LUNET_OK;
  }
  /* another axis (steps): the masks joined along it, ones for an input without */
  lunet_tensor *parts[LUNET_LAYER_MAX_INPUTS] = {0};
  lunet_status st = LUNET_OK;
  for (int i = 0; !st && i < nin; i++) {
    lunet_tensor *mi = lunet_call_mask(c, i);
    if (mi) {
      parts[i] = lunet_tensor_retain(mi);
      continue;
    }
    int64_t shape[LUNET_MAX_DIMS];
    for (int d = 0; d < rank; d++) shape[d] = lunet_tensor_dim(x[i], d); /* the input's shape but its last axis */
    parts[i] = lunet_op_new(ctx, x[i], LUNET_F32, rank, shape);
    if (!parts[i] || lunet_op_fill(ctx, parts[i], 1.0f)) st = layers_call_failed(c);
  }
  if (!st && !(mask_out[0] = lunet_op_concat(ctx, parts, nin, axis))) st = layers_call_failed(c);
  for (int i = 0; i < nin; i++) layers_release(parts[i]);
  return st;
}

static const lunet_layer_test concat_tests[] = {
    /* the last axis, by default */
    {NULL, 0, LAYERS_INPUTS({2, {2, 3}}, {2, {2, 1}}), 2, 1e-2f},
    {LAYERS_ARGS({"axis", {.i = 1}}), LAYERS_INPUTS({2, {2, 3}}, {2, {1, 3}}), 2, 1e-2f},
    {NULL, 0, LAYERS_INPUTS({1, {4}}, {1, {2}}, {1, {3}}), 2, 1e-2f},
    /* a middle axis, counted from the end */
    {LAYERS_ARGS({"axis", {.i = -2}}), LAYERS_INPUTS({3, {2, 2, 3}}, {3, {2, 1, 3}}), 2, 1e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_concatenate = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Concatenate",
    .doc = "Joins inputs along one axis; they must agree on every other axis",
    .args = concat_args,
    .nargs = sizeof concat_args / sizeof concat_args[0],
    .positional = 1,
    .min_inputs = 1,
    .max_inputs = LUNET_LAYER_MAX_INPUTS,
    .call_state_size = sizeof(concat_state),
    .build = concat_build,
    .forward = concat_forward,
    .backward = concat_backward,
    .release = NULL,
    .compute_mask = concat_mask,
    .tests = concat_tests,
    .ntests = sizeof concat_tests / sizeof concat_tests[0],
};
