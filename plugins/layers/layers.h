/*
 * Private header of the built-in layers plugin (every .c file in plugins/layers): the
 * layer types each file defines, and small helpers for the state every
 * layer keeps between forward and backward.
 *
 * Written only against lunet's public headers (lunet/plugin.h, lunet/ops.h,
 * lunet/augment.h, lunet/image.h), as a third party's plugin would be: the
 * built-in layers prove the ABI.
 */
#ifndef LUNET_LAYERS_H
#define LUNET_LAYERS_H

#include <stdio.h>

#include <string.h>

#include "lunet/lunet.h"
#include "lunet/plugin.h"

#define LAYERS_HIDDEN __attribute__((visibility("hidden")))

/* Initializers lunet_layer_add_weight() knows, as a schema's choices. */
#define LAYERS_INITIALIZERS                                                                        \
  "glorot_uniform|glorot_normal|he_uniform|he_normal|lecun_normal|zeros|ones"

/* Schema rows every layer type shares; the core handles both itself. */
#define LAYERS_ARG_INPUT_SHAPE                                                                     \
  {                                                                                                \
    "input_shape", LUNET_ARG_SHAPE, LUNET_ARG_NIL,                                                 \
        .doc = "shape of one sample, without the batch axis (first layer only)"                    \
  }
#define LAYERS_ARG_NAME                                                                            \
  { "name", LUNET_ARG_STRING, LUNET_ARG_NIL, .doc = "the layer's name in summary()" }

/* Regularizer rows (the core reads "<weight>_regularizer" and
 * "activity_regularizer" itself; nn.regularizers.l1/l2/l1_l2 in Lua). */
#define LAYERS_ARG_BIAS_REGULARIZER                                                                \
  { "bias_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL, .doc = "penalty on the bias added to the loss" }
#define LAYERS_ARG_ACTIVITY_REGULARIZER                                                            \
  {                                                                                                \
    "activity_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL,                                  \
        .doc = "penalty on the output added to the loss (l1 sum|y| + l2 sum y^2 over the batch)"  \
  }

/* Constraint rows (the core projects the weight after every update). */
#define LAYERS_ARG_CONSTRAINT(w)                                                                   \
  { w "_constraint", LUNET_ARG_STRING, LUNET_ARG_NIL, .doc = "nn.constraints.max_norm(2), non_neg(), ..." }

/* A test case's arguments as the pair (args, nargs) of lunet_layer_test:
 * LAYERS_ARGS({"filters", {.i = 2}}, {"padding", {.s = "same"}}).  The
 * array is a file-scope compound literal (static storage); counting it here
 * keeps nargs from drifting from the list. */
#define LAYERS_ARGS(...)                                                                           \
  (const lunet_arg_setting[]){__VA_ARGS__},                                                        \
      (int)(sizeof((const lunet_arg_setting[]){__VA_ARGS__}) / sizeof(lunet_arg_setting))

/* A test case's inputs as the pair (ninputs, inputs): one sample's shape per
 * input, LAYERS_INPUTS({2, {3, 4}}, {2, {3, 4}}). */
#define LAYERS_INPUTS(...)                                                                         \
  (int)(sizeof((const lunet_shape[]){__VA_ARGS__}) / sizeof(lunet_shape)),                         \
      ((const lunet_shape[]){__VA_ARGS__})

extern LAYERS_HIDDEN const lunet_layer_type layers_dense;
extern LAYERS_HIDDEN const lunet_layer_type layers_random_flip;
extern LAYERS_HIDDEN const lunet_layer_type layers_random_rotation;
extern LAYERS_HIDDEN const lunet_layer_type layers_random_translation;
extern LAYERS_HIDDEN const lunet_layer_type layers_random_zoom;
extern LAYERS_HIDDEN const lunet_layer_type layers_random_crop;
extern LAYERS_HIDDEN const lunet_layer_type layers_resizing;
extern LAYERS_HIDDEN const lunet_layer_type layers_gaussian_noise;
extern LAYERS_HIDDEN const lunet_layer_type layers_gaussian_dropout;
extern LAYERS_HIDDEN const lunet_layer_type layers_conv2d_transpose;
extern LAYERS_HIDDEN const lunet_layer_type layers_activity_regularization;
extern LAYERS_HIDDEN const lunet_layer_type layers_depthwise_conv2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_separable_conv2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_conv2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_max_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_average_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_flatten;
extern LAYERS_HIDDEN const lunet_layer_type layers_dropout;
extern LAYERS_HIDDEN const lunet_layer_type layers_batch_normalization;
extern LAYERS_HIDDEN const lunet_layer_type layers_activation;
extern LAYERS_HIDDEN const lunet_layer_type layers_add;
extern LAYERS_HIDDEN const lunet_layer_type layers_subtract;
extern LAYERS_HIDDEN const lunet_layer_type layers_multiply;
extern LAYERS_HIDDEN const lunet_layer_type layers_average;
extern LAYERS_HIDDEN const lunet_layer_type layers_maximum;
extern LAYERS_HIDDEN const lunet_layer_type layers_minimum;
extern LAYERS_HIDDEN const lunet_layer_type layers_concatenate;
extern LAYERS_HIDDEN const lunet_layer_type layers_reshape;
extern LAYERS_HIDDEN const lunet_layer_type layers_permute;
extern LAYERS_HIDDEN const lunet_layer_type layers_lstm;
extern LAYERS_HIDDEN const lunet_layer_type layers_embedding;
extern LAYERS_HIDDEN const lunet_layer_type layers_gru;
extern LAYERS_HIDDEN const lunet_layer_type layers_layer_normalization;
extern LAYERS_HIDDEN const lunet_layer_type layers_simple_rnn;
extern LAYERS_HIDDEN const lunet_layer_type layers_global_average_pooling1d;
extern LAYERS_HIDDEN const lunet_layer_type layers_global_max_pooling1d;
extern LAYERS_HIDDEN const lunet_layer_type layers_conv1d;
extern LAYERS_HIDDEN const lunet_layer_type layers_max_pooling1d;
extern LAYERS_HIDDEN const lunet_layer_type layers_position_embedding;
extern LAYERS_HIDDEN const lunet_layer_type layers_sine_position_encoding;
extern LAYERS_HIDDEN const lunet_layer_type layers_multi_head_attention;
extern LAYERS_HIDDEN const lunet_layer_type layers_reverse;
extern LAYERS_HIDDEN const lunet_layer_type layers_rescaling;
extern LAYERS_HIDDEN const lunet_layer_type layers_normalization;
extern LAYERS_HIDDEN const lunet_layer_type layers_center_crop;
extern LAYERS_HIDDEN const lunet_layer_type layers_global_max_pooling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_leaky_relu;
extern LAYERS_HIDDEN const lunet_layer_type layers_relu;
extern LAYERS_HIDDEN const lunet_layer_type layers_softmax;
extern LAYERS_HIDDEN const lunet_layer_type layers_masking;
extern LAYERS_HIDDEN const lunet_layer_type layers_zero_padding2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_cropping2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_up_sampling2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_prelu;
extern LAYERS_HIDDEN const lunet_layer_type layers_spatial_dropout2d;
extern LAYERS_HIDDEN const lunet_layer_type layers_transformer_encoder;
extern LAYERS_HIDDEN const lunet_layer_type layers_transformer_decoder;

/* Drops one reference; NULL is allowed, so cleanup paths need no checks. */
static inline void layers_release(lunet_tensor *t) {
  if (t) lunet_tensor_release(t);
}

/* Stores `t` (a reference the caller hands over, or NULL) in a state slot,
 * releasing what the slot held: forward() replaces what the previous
 * forward() kept when a caller reuses the call record. */
static inline void layers_set(lunet_tensor **slot, lunet_tensor *t) {
  layers_release(*slot);
  *slot = t;
}

/* The status to return after an op failed in build().  The op has set the
 * message; should one ever fail silently, say so rather than return
 * LUNET_OK. */
static inline lunet_status layers_failed(lunet_layer *l) {
  lunet_status s = lunet_ctx_status(lunet_layer_ctx(l));
  if (s != LUNET_OK) return s;
  return lunet_layer_error(l, LUNET_ERR_DEVICE,
                           "a tensor op failed without a message (a core bug; please report it)");
}

/* The same after an op failed in forward() or backward(): a call has its
 * own context. */
static inline lunet_status layers_call_failed(lunet_call *c) {
  lunet_status s = lunet_ctx_status(lunet_call_ctx(c));
  if (s != LUNET_OK) return s;
  return lunet_call_error(c, LUNET_ERR_DEVICE,
                          "a tensor op failed without a message (a core bug; please report it)");
}

/* A normalization's gamma and beta, Keras's: weights only while `scale`
 * and `center` are on (then first, gamma before beta).  Their indices, -1
 * for a switched-off one; returns how many there are. */
static inline int layers_norm_affine(lunet_layer *l, int *gamma, int *beta) {
  bool scale = lunet_layer_get_bool(l, "scale"), center = lunet_layer_get_bool(l, "center");
  *gamma = scale ? 0 : -1;
  *beta = center ? (scale ? 1 : 0) : -1;
  return scale + center;
}

/* A float32 tensor of `shape` full of `value` on like's backend, off the
 * tape (a switched-off gamma's ones, beta's zeros); NULL with the call's
 * error set. */
static inline lunet_tensor *layers_filled(lunet_call *c, const lunet_tensor *like, int ndim, const int64_t *shape,
                                          float value) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *t = lunet_op_new(ctx, like, LUNET_F32, ndim, shape);
  if (t && lunet_op_fill(ctx, t, value)) layers_set(&t, NULL);
  if (!t) layers_call_failed(c);
  return t;
}

/* Images x (N, H, W, C) resized to (N, oh, ow, C), bilinear with half-pixel
 * centres, after cutting the largest centred window of that aspect when
 * crop (Keras's smart_resize); a new float32 tensor or NULL. */
LAYERS_HIDDEN lunet_tensor *layers_resize_images(lunet_ctx *ctx, lunet_tensor *x, int64_t oh, int64_t ow, bool crop);
/* The backward of a layer whose resample has none: an error when an
 * earlier layer wants the gradient. */
LAYERS_HIDDEN lunet_status layers_no_input_gradient(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy,
                                                    lunet_tensor **dx);

/* A (n) constant of `value` kept in a call's state slot: the one made by an
 * earlier forward while it has n elements on like's backend, else a new
 * one (no allocation a step for a switched-off gamma or beta).  Borrowed;
 * NULL with the call's error set. */
static inline lunet_tensor *layers_constant(lunet_call *c, lunet_tensor **slot, const lunet_tensor *like, int64_t n,
                                            float value) {
  if (!*slot || lunet_tensor_numel(*slot) != n || strcmp(lunet_tensor_backend(*slot), lunet_tensor_backend(like)))
    layers_set(slot, layers_filled(c, like, 1, &n, value));
  return *slot;
}

/* backward() found nothing saved: the core called it without a forward. */
static inline lunet_status layers_no_forward(lunet_call *c) {
  return lunet_call_error(c, LUNET_ERR_ARG, "backward called before forward");
}

/* A view of x (N, d1, ..., C) as (N*d1*..., C): Dense and friends work on
 * the last axis whatever the rank.  A new reference, or NULL on error. */
static inline lunet_tensor *layers_as_2d(lunet_ctx *ctx, lunet_tensor *x) {
  int64_t c = lunet_tensor_dim(x, -1);
  int64_t shape[2] = {c > 0 ? lunet_tensor_numel(x) / c : 0, c};
  return lunet_op_reshape(ctx, x, 2, shape);
}

/* A view of t with the shape of `like` (same element count). */
static inline lunet_tensor *layers_reshape_like(lunet_ctx *ctx, lunet_tensor *t,
                                                const lunet_tensor *like) {
  return lunet_op_reshape(ctx, t, lunet_tensor_ndim(like), lunet_tensor_shape(like));
}

/* x as float32: a new reference to x itself, or a cast of 8-bit or integer
 * input (Keras: arithmetic on uint8 images promotes to float32). */
static inline lunet_tensor *layers_as_f32(lunet_ctx *ctx, lunet_tensor *x) {
  return lunet_tensor_dtype(x) == LUNET_F32 ? lunet_tensor_retain(x) : lunet_op_cast(ctx, x, LUNET_F32);
}

/* One sample's shape with Keras's batch placeholder: "(None, 28, 28, 1)". */
static inline const char *layers_sample_str(const lunet_shape *s, char *buf, size_t n) {
  size_t len = (size_t)snprintf(buf, n, "(None");
  for (int i = 0; i < s->ndim && len < n; i++)
    len += (size_t)snprintf(buf + len, n - len, ", %lld", (long long)s->dims[i]);
  if (len < n) snprintf(buf + len, n - len, ")");
  return buf;
}

/* A list argument as the user wrote it: "{2, -1}". */
static inline const char *layers_list_str(int n, const int64_t *v, char *buf, size_t size) {
  size_t len = (size_t)snprintf(buf, size, "{");
  for (int i = 0; i < n && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)v[i]);
  if (len < size) snprintf(buf + len, size - len, "}");
  return buf;
}

/* Error for a sample of the wrong rank: "expects input of rank 3 (H, W, C),
 * got shape (None, 784)". */
static inline lunet_status layers_rank_error(lunet_layer *l, const char *want,
                                             const lunet_shape *in) {
  char buf[128];
  return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects input of rank %s, got shape %s", want,
                           layers_sample_str(in, buf, sizeof buf));
}

/* Error for a batch of the wrong shape in forward(): "expects a batch
 * (N, H, W, C), got shape (2, 784)". */
static inline lunet_status layers_batch_error(lunet_call *c, const char *want,
                                              const lunet_tensor *x) {
  char buf[128];
  return lunet_call_error(
      c, LUNET_ERR_SHAPE, "expects a batch %s, got shape %s", want,
      lunet_shape_str(lunet_tensor_ndim(x), lunet_tensor_shape(x), buf, sizeof buf));
}

/* Error unless x is a batch of images (N, H, W, channels). */
static inline lunet_status layers_check_images(lunet_call *c, const lunet_tensor *x, int64_t channels) {
  if (lunet_tensor_ndim(x) == 4 && lunet_tensor_dim(x, 3) == channels) return LUNET_OK;
  char want[64];
  snprintf(want, sizeof want, "(N, H, W, %lld)", (long long)channels);
  return layers_batch_error(c, want, x);
}

/* The batch shape of one sample's shape `s` with n samples: (n, s...). */
static inline int layers_batch_shape(int64_t n, const lunet_shape *s, int64_t *out) {
  out[0] = n;
  for (int i = 0; i < s->ndim; i++) out[i + 1] = s->dims[i];
  return s->ndim + 1;
}

/* Reads an INT2 argument whose default is nil; false when it is nil. */
static inline bool layers_get_int2_opt(const lunet_layer *l, const char *arg, int64_t out[2]) {
  if (!lunet_layer_arg_is_set(l, arg)) return false;
  lunet_layer_get_int2(l, arg, out);
  return true;
}

/* An initializer argument.  The core fills the schema's default; `dflt`
 * (the same default) covers a user who passed nil explicitly. */
static inline const char *layers_initializer(const lunet_layer *l, const char *arg,
                                             const char *dflt) {
  return lunet_layer_arg_is_set(l, arg) ? lunet_layer_get_string(l, arg) : dflt;
}

/* "valid" or "same" (the schema restricts the choices). */
static inline lunet_padding layers_padding(const lunet_layer *l) {
  const char *p = lunet_layer_get_string(l, "padding");
  return p && p[0] == 's' ? LUNET_PAD_SAME : LUNET_PAD_VALID;
}

/* Checks that both values of an INT2 argument are positive. */
static inline lunet_status layers_check_pair(lunet_layer *l, const char *arg, const int64_t v[2]) {
  if (v[0] > 0 && v[1] > 0) return LUNET_OK;
  if (v[0] == v[1])
    return lunet_layer_error(l, LUNET_ERR_ARG, "%s must be positive, got %lld", arg,
                             (long long)v[0]);
  return lunet_layer_error(l, LUNET_ERR_ARG, "%s must be positive, got {%lld, %lld}", arg,
                           (long long)v[0], (long long)v[1]);
}

/* ---- recurrent layers (lstm.c, gru.c): helpers on the tape ---- */

/* An activation argument ("tanh", "sigmoid", "relu", "gelu", "linear") as
 * an op. */
static inline lunet_unary_op layers_act_op(const char *name) {
  return !strcmp(name, "sigmoid") ? LUNET_UNARY_SIGMOID
         : !strcmp(name, "relu")  ? LUNET_UNARY_RELU
         : !strcmp(name, "gelu")  ? LUNET_UNARY_GELU
         : !strcmp(name, "linear") ? LUNET_UNARY_AFFINE
                                   : LUNET_UNARY_TANH;
}

/* act(x) on the tape ("linear" is 1 * x + 0). */
static inline lunet_tensor *layers_act(lunet_ctx *ctx, lunet_unary_op op, lunet_tensor *x) {
  return lunet_unary(ctx, op, x, op == LUNET_UNARY_AFFINE ? 1.0f : 0.0f, 0.0f);
}

/* new * m + old * (1 - m) on the tape: a masked step keeps the old state
 * (m (N, 1); old NULL is zero). */
static inline lunet_tensor *layers_keep_masked(lunet_ctx *ctx, lunet_tensor *new_, lunet_tensor *old,
                                               lunet_tensor *m) {
  lunet_tensor *kept = lunet_mul(ctx, new_, m);
  if (!kept || !old) return kept;
  lunet_tensor *inv = lunet_unary(ctx, LUNET_UNARY_AFFINE, m, -1.0f, 1.0f);
  lunet_tensor *o = inv ? lunet_mul(ctx, old, inv) : NULL, *sum = o ? lunet_add(ctx, kept, o) : NULL;
  layers_release(kept);
  layers_release(inv);
  layers_release(o);
  return sum;
}

/* The input mask of a recurrent layer's call as (N, T) float32, checked
 * against x (N, T, ...); NULL with the error set. */
static inline lunet_tensor *layers_step_mask(lunet_call *c, lunet_tensor *x) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_tensor *mask = lunet_call_mask(c, 0);
  int64_t n = lunet_tensor_dim(x, 0), t = lunet_tensor_dim(x, 1), want[2] = {n, t};
  if (lunet_tensor_numel(mask) != n * t || lunet_tensor_ndim(mask) < 2 || lunet_tensor_dim(mask, 0) != n ||
      lunet_tensor_dim(mask, 1) != t) {
    char a[64];
    lunet_call_error(c, LUNET_ERR_SHAPE, "a mask of shape %s for input (%lld, %lld, ...): it must be (N, T)",
                     lunet_shape_str(lunet_tensor_ndim(mask), lunet_tensor_shape(mask), a, sizeof a),
                     (long long)n, (long long)t);
    return NULL;
  }
  lunet_tensor *mf = lunet_tensor_dtype(mask) == LUNET_F32 ? lunet_tensor_retain(mask)
                                                           : lunet_op_cast(ctx, mask, LUNET_F32);
  lunet_tensor *m = mf ? lunet_op_reshape(ctx, mf, 2, want) : NULL;
  layers_release(mf);
  if (!m) layers_call_failed(c);
  return m;
}

/* ---- layers whose forward is a graph of the core's differentiable ops ----
 * (LSTM, GRU, LayerNormalization).  Forward records the graph over
 * detached views of the input and weights when the core records the call,
 * keeps it in the call's state and hands the caller a view off it; backward
 * runs it from dy and passes on what reached the views. */
#define LAYERS_GRAPH_MAX_WEIGHTS 32
#define LAYERS_GRAPH_MAX_IO 4

typedef struct layers_graph {
  lunet_tensor *x[LAYERS_GRAPH_MAX_IO];        /* views of the inputs the graph starts from */
  lunet_tensor *w[LAYERS_GRAPH_MAX_WEIGHTS];   /* and of the weights */
  lunet_tensor *y[LAYERS_GRAPH_MAX_IO];        /* its outputs, on the tape */
  lunet_tensor *mask;                          /* a recurrent layer's (N, T) mask, or NULL */
  lunet_tensor *rec_mask;                      /* its recurrent dropout mask (N, units), or NULL */
  int nx, nw, ny;
  bool prev; /* grad mode before begin */
} layers_graph;

static inline void layers_graph_release(layers_graph *g) {
  for (int i = 0; i < LAYERS_GRAPH_MAX_IO; i++) {
    layers_set(&g->x[i], NULL);
    layers_set(&g->y[i], NULL);
  }
  for (int i = 0; i < LAYERS_GRAPH_MAX_WEIGHTS; i++) layers_set(&g->w[i], NULL);
  layers_set(&g->mask, NULL);
  layers_set(&g->rec_mask, NULL);
}

/* Views of the nx inputs (a NULL input stays NULL: an optional one) and of
 * the layer's first nw weights; the tape is on while the core records this
 * call.  Pair with layers_graph_end_many. */
static inline lunet_status layers_graph_begin_many(lunet_call *c, lunet_layer *l, layers_graph *g,
                                                   int nx, lunet_tensor *const *x, int nw) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  bool record = lunet_call_recording(c);
  g->nx = nx;
  g->nw = nw;
  for (int i = 0; i < nx; i++) {
    if (!x[i]) continue;
    if (!(g->x[i] = lunet_detach(ctx, x[i]))) return layers_call_failed(c);
    lunet_tensor_set_requires_grad(g->x[i], record && lunet_tensor_dtype(x[i]) == LUNET_F32);
  }
  for (int i = 0; i < nw; i++) {
    if (!(g->w[i] = lunet_detach(ctx, lunet_layer_weight(l, i)))) return layers_call_failed(c);
    lunet_tensor_set_requires_grad(g->w[i], record);
  }
  g->prev = lunet_set_grad_enabled(ctx, record);
  return LUNET_OK;
}

/* The same with one input. */
static inline lunet_status layers_graph_begin(lunet_call *c, lunet_layer *l, layers_graph *g,
                                              lunet_tensor *x, int nw) {
  return layers_graph_begin_many(c, l, g, 1, &x, nw);
}

/* Keeps the graph's ny outputs ys (new references, any NULL on error: the
 * others are released) and gives the caller views y[i] off the tape. */
static inline lunet_status layers_graph_end_many(lunet_call *c, layers_graph *g, int ny,
                                                 lunet_tensor **ys, lunet_tensor **y) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  lunet_set_grad_enabled(ctx, g->prev);
  bool ok = true;
  for (int i = 0; i < ny; i++) ok &= ys[i] != NULL;
  g->ny = ny;
  for (int i = 0; i < ny; i++) g->y[i] = ok ? ys[i] : (layers_release(ys[i]), NULL);
  if (!ok) return layers_call_failed(c);
  for (int i = 0; i < ny; i++)
    if (!(y[i] = lunet_detach(ctx, g->y[i]))) {
      for (int k = 0; k < i; k++) layers_set(&y[k], NULL);
      return layers_call_failed(c);
    }
  if (!lunet_call_recording(c))
    for (int i = 0; i < ny; i++) layers_set(&g->y[i], NULL);
  return LUNET_OK;
}

/* The same with one output (y_graph: a new reference, NULL on error). */
static inline lunet_status layers_graph_end(lunet_call *c, layers_graph *g, lunet_tensor *y_graph,
                                            lunet_tensor **y) {
  return layers_graph_end_many(c, g, 1, &y_graph, y);
}

/* Backward through the kept graph from every output's dy: weight gradients
 * to the call, dx[i] where wanted; the graph is released. */
static inline lunet_status layers_graph_backward(lunet_call *c, layers_graph *g,
                                                 lunet_tensor *const *dy, lunet_tensor **dx) {
  if (!g->y[0]) return layers_no_forward(c);
  /* an output that depends on nothing differentiable gives no gradients */
  lunet_status s = lunet_backward_many(lunet_call_ctx(c), g->ny, g->y, dy);
  for (int i = 0; !s && i < g->nw; i++) {
    lunet_tensor *w = lunet_tensor_grad_get(g->w[i]);
    if (w) s = lunet_call_accumulate_grad(c, i, w);
  }
  for (int i = 0; !s && i < g->nx; i++) {
    if (!g->x[i] || !lunet_call_needs_dx(c, i)) continue;
    lunet_tensor *gx = lunet_tensor_grad_get(g->x[i]);
    if (gx) {
      dx[i] = lunet_tensor_retain(gx);
      continue;
    }
    /* the output does not depend on this input's values (a position
     * embedding reads only its shape): its gradient is zero, said so */
    lunet_ctx *ctx = lunet_call_ctx(c);
    dx[i] = lunet_op_new(ctx, g->x[i], LUNET_F32, lunet_tensor_ndim(g->x[i]), lunet_tensor_shape(g->x[i]));
    if (!dx[i] || lunet_op_fill(ctx, dx[i], 0.0f)) s = lunet_ctx_status(ctx);
  }
  layers_graph_release(g);
  return s;
}

/* A graph-built layer type's backward and release members. */
static inline lunet_status layers_graph_backward_member(lunet_layer *l, lunet_call *c,
                                                        lunet_tensor *const *dy, lunet_tensor **dx) {
  return layers_graph_backward(c, lunet_call_state(c), dy, dx);
}

static inline void layers_graph_release_member(lunet_layer *l, lunet_call *c) {
  layers_graph_release(lunet_call_state(c));
}

/* ---- what the recurrent layers (LSTM, GRU, SimpleRNN) share ---- */

/* kernel, recurrent_kernel and, with use_bias, bias. */
static inline int layers_rnn_nweights(const lunet_layer *l) {
  return lunet_layer_get_bool(l, "use_bias") ? 3 : 2;
}

/* Step s of the (N, T) mask as (N, 1), on the tape; NULL with no mask (or
 * an error, which the caller's next op reports). */
static inline lunet_tensor *layers_rnn_mask_at(lunet_ctx *ctx, lunet_tensor *mask, int64_t s) {
  if (!mask) return NULL;
  int64_t start[2] = {0, s}, stop[2] = {lunet_tensor_dim(mask, 0), s + 1}, step[2] = {1, 1};
  return lunet_slice(ctx, mask, start, stop, step);
}

/* The weight slots of every recurrent layer. */
enum { LAYERS_RNN_KERNEL = 0, LAYERS_RNN_RECURRENT = 1, LAYERS_RNN_BIAS = 2 };
#define LAYERS_RNN_MAX_STATES 2

/* Schema rows of every recurrent layer (rnn.c implements them). */
#define LAYERS_RNN_ARGS                                                                            \
  {"return_sequences", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},                     \
   .doc = "return h of every step (N, T, units), not only the last (N, units)"},                  \
      {"return_state", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},                     \
       .doc = "also return the final states (h, and c for the LSTM) as outputs"},                 \
      {"go_backwards", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},                     \
       .doc = "run from the last step to the first (the sequence output comes out reversed)"},    \
      {"dropout", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0},                             \
       .doc = "in training, drop this fraction of the input features (one mask for all steps)"},  \
      {"recurrent_dropout", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0},                   \
       .doc = "in training, drop this fraction of h in the recurrent product (one mask for all "  \
               "steps)"},                                                                          \
      {"zero_output_for_mask", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},             \
       .doc = "with return_sequences and a mask, a masked step outputs zeros (its state is "      \
               "still kept), as Keras's; Bidirectional sets it"}

/* A recurrent layer's kind: its states, the width of its step projection
 * (gates x units), the input bias (a new reference, or NULL) and one step
 * of the cell, which replaces states[] (states[0] is h; NULL before the
 * first step without an initial state).  mask_t (N, 1) or NULL: a masked
 * step keeps the states. */
typedef struct layers_rnn_kind {
  int nstates, gates;
  lunet_tensor *(*input_bias)(lunet_ctx *ctx, layers_graph *st);
  lunet_status (*cell)(lunet_layer *l, lunet_ctx *ctx, layers_graph *st, lunet_tensor *zt, lunet_tensor **states,
                       lunet_tensor *mask_t);
} layers_rnn_kind;

/* 1, or 1 + nstates with return_state. */
LAYERS_HIDDEN int layers_rnn_output_count(const lunet_layer *l, int nstates);
/* Checks the sequence and the initial states, declares the outputs. */
LAYERS_HIDDEN lunet_status layers_rnn_build_io(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out,
                                               int nstates);
/* x[0] the sequence, x[1..] the initial states -> the output, then the
 * final states with return_state; dropout and recurrent_dropout in
 * training. */
LAYERS_HIDDEN lunet_status layers_rnn_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                              lunet_tensor **y, bool training, const layers_rnn_kind *k);
/* With return_sequences the output keeps the input's mask. */
LAYERS_HIDDEN lunet_status layers_rnn_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                           lunet_tensor **mask_out);

/* The bias weight's view (or NULL), as the input bias of every step. */
static inline lunet_tensor *layers_rnn_plain_bias(lunet_ctx *ctx, layers_graph *st) {
  return st->w[LAYERS_RNN_BIAS] ? lunet_tensor_retain(st->w[LAYERS_RNN_BIAS]) : NULL;
}

/* h @ recurrent_kernel, h under the recurrent dropout mask when there is
 * one; on the tape, a new reference. */
static inline lunet_tensor *layers_rnn_recurrent_product(lunet_ctx *ctx, layers_graph *st, lunet_tensor *h) {
  if (!st->rec_mask) return lunet_matmul(ctx, h, st->w[LAYERS_RNN_RECURRENT]);
  lunet_tensor *hm = lunet_mul(ctx, h, st->rec_mask), *p = hm ? lunet_matmul(ctx, hm, st->w[LAYERS_RNN_RECURRENT]) : NULL;
  layers_release(hm);
  return p;
}

/* zt + h recurrent_kernel (zt itself before the first state), on the tape;
 * a new reference. */
static inline lunet_tensor *layers_rnn_add_recurrent(lunet_ctx *ctx, layers_graph *st, lunet_tensor *zt,
                                                     lunet_tensor *h) {
  if (!h) return lunet_tensor_retain(zt);
  lunet_tensor *hr = layers_rnn_recurrent_product(ctx, st, h);
  lunet_tensor *z = hr ? lunet_add(ctx, zt, hr) : NULL;
  layers_release(hr);
  return z;
}

/* ---- attention (attention.c), shared with the Transformer blocks ---- */

/* The sizes of one attention block: heads, per-head sizes, the query's,
 * value's and key's feature sizes and the output's. */
typedef struct layers_attention_dims {
  int64_t heads, key_dim, value_dim, dq, dv, dk, dout;
  float dropout;
  bool use_bias;
} layers_attention_dims;

/* An attention block's weight views (biases NULL without use_bias). */
typedef struct layers_attention {
  layers_attention_dims dims;
  bool training;
  /* the mask may leave a query row nothing (an attention_mask or padding
   * made it, not only the causal triangle): the softmax is then multiplied
   * by it, so that such a row attends to nothing */
  bool whole_rows;
  lunet_tensor *w[8];
} layers_attention;

/* Declares the block's weights in Keras's order (query, key, value,
 * output; kernel then bias), their names after `prefix` ("" for
 * MultiHeadAttention's own: "query_kernel"); the first one's index, or -1. */
LAYERS_HIDDEN int layers_attention_add_weights(lunet_layer *l, const char *prefix,
                                               const layers_attention_dims *a, const char *kinit,
                                               const char *binit);
LAYERS_HIDDEN int layers_attention_weight_count(bool use_bias);
/* Fills a->w from the block's weight views w[0..count). */
LAYERS_HIDDEN void layers_attention_views(layers_attention *a, lunet_tensor *const *w);
LAYERS_HIDDEN lunet_status layers_attention_check(lunet_layer *l, int64_t heads, int64_t key_dim,
                                                  int64_t value_dim, double dropout);
/* Keys and values (N, H, steps, d) of the steps a step-by-step call has
 * seen so far, and their padding mask (N, steps) float32 once a step had
 * one (NULL before); `pending`, this call's mask of every step, joins them
 * when the keys and values are extended (a failure in between leaves the
 * three alike). */
typedef struct layers_kv_cache {
  lunet_tensor *k, *v, *mask, *pending;
} layers_kv_cache;

/* The call state of an attention layer: its graph and, step by step, its
 * key/value cache.  The graph comes first, so layers_graph_backward_member
 * reads the state as a layers_graph. */
typedef struct layers_cached_graph {
  layers_graph g;
  layers_kv_cache cache;
} layers_cached_graph;

static inline void layers_cached_graph_release_member(lunet_layer *l, lunet_call *c) {
  layers_cached_graph *st = lunet_call_state(c);
  layers_graph_release(&st->g);
  layers_set(&st->cache.k, NULL);
  layers_set(&st->cache.v, NULL);
  layers_set(&st->cache.mask, NULL);
  layers_set(&st->cache.pending, NULL);
}

/* In a lunet_layer_step (offset >= 0): *use = cache (emptied at offset 0),
 * *past = the steps it holds; otherwise *use = NULL, *past = 0. */
LAYERS_HIDDEN lunet_status layers_kv_cache_start(lunet_call *c, layers_kv_cache *cache, layers_kv_cache **use,
                                                 int64_t *past);
/* The keys' padding mask for this call: without a cache, `mask` (N, T) of
 * the keys x (N, T, ...), or NULL; with one, the mask of every step so far
 * (N, past + T), the cache's followed by `mask` (ones stand for steps
 * without one), the cache's once layers_attention_graph extends its keys,
 * and NULL while no step had one.  A new reference in *out. */
LAYERS_HIDDEN lunet_status layers_kv_cache_mask(lunet_call *c, layers_kv_cache *cache, const lunet_tensor *x,
                                                lunet_tensor *mask, int64_t past, lunet_tensor **out);
/* The block's output (N, T, Dout) on the tape; *scores (N, H, T, S) too
 * when scores is not NULL.  mask (N, T, S) float32, 1 = may attend, or
 * NULL.  With a cache, the keys and values of earlier steps come before
 * this call's (S = past + steps) and the cache keeps them all. */
LAYERS_HIDDEN lunet_tensor *layers_attention_graph(lunet_ctx *ctx, const layers_attention *a,
                                                   lunet_tensor *query, lunet_tensor *value,
                                                   lunet_tensor *key, lunet_tensor *mask,
                                                   lunet_tensor **scores, layers_kv_cache *cache);
/* The (N, T, S) mask from an attention_mask (N, T, S), padding masks of
 * the query (N, T), value and key (N, S) and the causal triangle; any may
 * be absent; *out NULL when nothing masks.  With `past` cached key steps
 * (step by step), S = past + value steps and query step i sits at
 * position past + i.  Off the tape. */
LAYERS_HIDDEN lunet_status layers_attention_mask(lunet_call *c, lunet_tensor *query, lunet_tensor *value,
                                                 lunet_tensor *attention_mask, lunet_tensor *query_mask,
                                                 lunet_tensor *value_mask, lunet_tensor *key_mask,
                                                 bool causal, int64_t past, lunet_tensor **out);
/* x (..., D) @ kernel (D x E elements, any shape) + bias (E elements) as
 * (..., E), on the tape. */
LAYERS_HIDDEN lunet_tensor *layers_dense_graph(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *kernel,
                                               lunet_tensor *bias);
/* Layer normalization of x over its last axis, on the tape (layernorm.c). */
LAYERS_HIDDEN lunet_tensor *layers_layernorm_graph(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *gamma,
                                                   lunet_tensor *beta, float epsilon);

/* ---- grouped convolutions (depthwise.c): x's channels in `groups`
 * equal parts, part i convolved with the kernel's part i along axis
 * `kaxis` (DepthwiseConv2D: groups = C, kaxis 2, kernel (KH,KW,C,m);
 * Conv2D's groups: kaxis 3, kernel (KH,KW,C/G,F)); d is one part's
 * convolution (c and f per part); the parts' outputs concatenated. ---- */
LAYERS_HIDDEN lunet_tensor *layers_grouped_conv(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *k,
                                                const lunet_conv2d_desc *d, int64_t groups, int kaxis);
/* Its gradients: *dk and, when dx is not NULL, *dx. */
LAYERS_HIDDEN lunet_status layers_grouped_conv_backward(lunet_ctx *ctx, const lunet_tensor *dy,
                                                        const lunet_tensor *x, const lunet_tensor *k,
                                                        const lunet_conv2d_desc *d, int64_t groups, int kaxis,
                                                        lunet_tensor **dk, lunet_tensor **dx);

/* ---- dilated convolutions (atrous.c): Conv2D's and Conv1D's
 * dilation_rate, as an undilated convolution over the dh x dw sub-grids
 * stacked on the batch axis ---- */

typedef struct layers_atrous {
  int64_t dh, dw;              /* the dilation */
  int64_t top, left, h, w;     /* the input's padding and size */
  int64_t oh, ow;              /* the output's size */
  lunet_conv2d_desc inner;     /* the convolution run on the sub-grids */
} layers_atrous;

/* From the geometry of the dilated convolution (kh, kw the kernel's own
 * size; pad_top, pad_left, oh, ow those of the dilated extent d (k - 1) + 1;
 * strides 1). */
LAYERS_HIDDEN lunet_status layers_atrous_plan(lunet_ctx *ctx, const lunet_conv2d_desc *outer, int64_t dh,
                                              int64_t dw, layers_atrous *a);
/* Checks a 2-D window's kernel_size, strides and dilation_rate against a
 * sample (H, W, C): positive pairs, strides 1 when dilated (Keras's rule),
 * and a "valid" window's dilated extent within the image. */
LAYERS_HIDDEN lunet_status layers_check_window(lunet_layer *l, const lunet_shape *in);
/* The same without the image: the pairs and the strides-1 rule (instead:
 * what to do otherwise, for the message). */
LAYERS_HIDDEN lunet_status layers_check_window_args(lunet_layer *l, const char *instead);
/* The four maps, for a layer that runs its own op on the sub-grids
 * (DepthwiseConv2D): the input x (N, h, w, C) as the padded sub-grids
 * (dh dw N, inner.h, inner.w, C); the op's output on them back as
 * (N, oh, ow, F); and their adjoints, the output's gradient to the
 * sub-grids' and the sub-grids' input gradient to the input's. */
LAYERS_HIDDEN lunet_tensor *layers_atrous_input(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *x);
LAYERS_HIDDEN lunet_tensor *layers_atrous_output(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *ys);
LAYERS_HIDDEN lunet_tensor *layers_atrous_output_grad(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dy);
LAYERS_HIDDEN lunet_tensor *layers_atrous_input_grad(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dxs);
/* y (N, oh, ow, F) from x (N, h, w, C); *xs gets the sub-grids, kept for
 * the kernel's gradient.  NULL on error. */
LAYERS_HIDDEN lunet_tensor *layers_atrous_forward(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *x,
                                                  lunet_tensor *w, lunet_tensor *b, lunet_tensor **xs);
/* The kernel's gradient (*db the bias's when db is not NULL) and, when dx
 * is not NULL, the input's. */
LAYERS_HIDDEN lunet_status layers_atrous_backward(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dy,
                                                  lunet_tensor *xs, lunet_tensor *w, lunet_tensor **dw,
                                                  lunet_tensor **db, lunet_tensor **dx);

/* ---- masks (plugin.c) ---- */

/* compute_mask of a layer that does not carry a padding mask on (Keras's
 * supports_masking = False: convolutions, poolings, Flatten, Reshape, ...):
 * its outputs have none, as Keras drops it there. */
LAYERS_HIDDEN lunet_status layers_drop_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                            lunet_tensor **mask_out);

#endif
