/*
 * TransformerEncoder and TransformerDecoder, with KerasHub's arguments,
 * defaults and computation (keras_hub.layers.TransformerEncoder/Decoder):
 *
 *   encoder, normalize_first = false (PyTorch's TransformerEncoderLayer
 *   with norm_first = False computes the same):
 *     x = LN1(x + dropout(attention(x, x)))
 *     y = LN2(x + dropout(dense2(act(dense1(x)))))
 *   normalize_first = true moves each LN to the branch's input:
 *     x = x + dropout(attention(LN1(x), LN1(x))), and so on.
 *   decoder: the same with causal self-attention, and with an encoder
 *   sequence (a second input) a cross-attention block between the two.
 *
 * Each attention has num_heads heads of key_dim = hidden_dim / num_heads
 * (rounded down, as in KerasHub) and the attention dropout `dropout`.  A
 * padding mask on an input (Embedding{mask_zero}) masks the keys of the
 * attention that reads that input, as KerasHub's padding_mask does.
 *
 * Weights in KerasHub's order.  Encoder: self_attention_* (query, key,
 * value, output; kernel and bias), self_attention_norm_{gamma,beta},
 * feedforward_norm_{gamma,beta}, feedforward_intermediate_{kernel,bias},
 * feedforward_output_{kernel,bias}.  Decoder: self_attention_*,
 * self_attention_norm_*, with an encoder sequence cross_attention_* and
 * cross_attention_norm_*, then feedforward_intermediate_*,
 * feedforward_output_*, feedforward_norm_*.
 *
 * Forward is a graph of the core's differentiable ops (layers_graph).
 */
#include <string.h>

#include "layers.h"

#define ACTIVATIONS "relu|gelu|tanh|sigmoid|linear"

#define TRANSFORMER_ARGS                                                                                          \
  {"intermediate_dim", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the width of the feedforward network's hidden layer"}, \
      {"num_heads", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the number of attention heads"},                  \
      {"dropout", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0},                                           \
       .doc = "dropout after each block and on the attention weights, in [0, 1)"},                              \
      {"activation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "relu"},                                  \
       .doc = "the feedforward network's activation", .choices = ACTIVATIONS},                                  \
      {"layer_norm_epsilon", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 1e-5},                             \
       .doc = "epsilon of the layer normalizations"},                                                           \
      {"normalize_first", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},                                \
       .doc = "normalize each block's input (pre-LN, as GPT-2) rather than its output"},                        \
      {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},                \
       .doc = "initializer of the kernels", .choices = LAYERS_INITIALIZERS},                                    \
      {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},                           \
       .doc = "initializer of the biases", .choices = LAYERS_INITIALIZERS}

static const lunet_arg_schema encoder_args[] = {
    TRANSFORMER_ARGS,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema decoder_args[] = {
    TRANSFORMER_ARGS,
    {"use_causal_mask", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true},
     .doc = "let step t attend to steps <= t only (also a call option)"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

/* Where a block's weights start, from its kind and whether it has the
 * cross-attention block. */
typedef struct layout {
  int self, self_norm, cross, cross_norm, ff_norm, inter, out, count;
} layout;

static layout layout_of(bool decoder, bool cross) {
  layout w = {.self = 0, .self_norm = 8, .cross = -1, .cross_norm = -1};
  if (!decoder) {
    w.ff_norm = 10, w.inter = 12, w.out = 14, w.count = 16;
    return w;
  }
  int next = 10;
  if (cross) w.cross = 10, w.cross_norm = 18, next = 20;
  w.inter = next, w.out = next + 2, w.ff_norm = next + 4, w.count = next + 6;
  return w;
}

static bool is_decoder(const lunet_layer *l) { return strcmp(lunet_layer_type_name(l), "TransformerDecoder") == 0; }

static layers_attention_dims block_dims(const lunet_layer *l, int64_t hidden, int64_t kv) {
  int64_t heads = lunet_layer_get_int(l, "num_heads");
  return (layers_attention_dims){.heads = heads,
                                 .key_dim = heads > 0 ? hidden / heads : 0,
                                 .value_dim = heads > 0 ? hidden / heads : 0,
                                 .dq = hidden,
                                 .dv = kv,
                                 .dk = kv,
                                 .dout = hidden,
                                 .dropout = (float)lunet_layer_get_float(l, "dropout"),
                                 .use_bias = true};
}

static int add_norm(lunet_layer *l, const char *prefix, int64_t c) {
  char g[48], b[48];
  snprintf(g, sizeof g, "%s_gamma", prefix);
  snprintf(b, sizeof b, "%s_beta", prefix);
  int i = lunet_layer_add_weight(l, g, 1, &c, "ones", true);
  return i < 0 ? i : lunet_layer_add_weight(l, b, 1, &c, "zeros", true);
}

static int add_dense(lunet_layer *l, const char *prefix, int64_t in, int64_t out, const char *kinit,
                     const char *binit) {
  char k[48], b[48];
  int64_t shape[2] = {in, out};
  snprintf(k, sizeof k, "%s_kernel", prefix);
  snprintf(b, sizeof b, "%s_bias", prefix);
  int i = lunet_layer_add_weight(l, k, 2, shape, kinit, true);
  return i < 0 ? i : lunet_layer_add_weight(l, b, 1, &out, binit, true);
}

static lunet_status transformer_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  bool decoder = is_decoder(l);
  static const char *const names[2] = {"the sequence", "the encoder sequence"};
  for (int i = 0; i < nin; i++)
    if (in[i].ndim != 2) {
      char buf[128];
      return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects %s of rank 2 (steps, features) per sample, got shape %s",
                               names[i], layers_sample_str(&in[i], buf, sizeof buf));
    }
  int64_t hidden = in[0].dims[1], inter = lunet_layer_get_int(l, "intermediate_dim");
  int64_t heads = lunet_layer_get_int(l, "num_heads");
  if (heads < 1) return lunet_layer_error(l, LUNET_ERR_ARG, "num_heads must be positive, got %lld", (long long)heads);
  if (heads > hidden)
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "num_heads %lld is more than the input's %lld features: each head gets hidden_dim / "
                             "num_heads of them",
                             (long long)heads, (long long)hidden);
  if (inter < 1)
    return lunet_layer_error(l, LUNET_ERR_ARG, "intermediate_dim must be positive, got %lld", (long long)inter);
  if (lunet_layer_get_float(l, "layer_norm_epsilon") <= 0)
    return lunet_layer_error(l, LUNET_ERR_ARG, "layer_norm_epsilon must be positive");
  layers_attention_dims self = block_dims(l, hidden, hidden);
  lunet_status s = layers_attention_check(l, self.heads, self.key_dim, self.value_dim, self.dropout);
  if (s) return s;
  const char *kinit = layers_initializer(l, "kernel_initializer", "glorot_uniform");
  const char *binit = layers_initializer(l, "bias_initializer", "zeros");
  bool ok = layers_attention_add_weights(l, "self_attention_", &self, kinit, binit) >= 0 &&
            add_norm(l, "self_attention_norm", hidden) >= 0;
  if (decoder && nin > 1) {
    layers_attention_dims cross = block_dims(l, hidden, in[1].dims[1]);
    ok = ok && layers_attention_add_weights(l, "cross_attention_", &cross, kinit, binit) >= 0 &&
         add_norm(l, "cross_attention_norm", hidden) >= 0;
  }
  if (!decoder) ok = ok && add_norm(l, "feedforward_norm", hidden) >= 0;
  ok = ok && add_dense(l, "feedforward_intermediate", hidden, inter, kinit, binit) >= 0 &&
       add_dense(l, "feedforward_output", inter, hidden, kinit, binit) >= 0;
  if (decoder) ok = ok && add_norm(l, "feedforward_norm", hidden) >= 0;
  if (!ok) return layers_failed(l);
  out[0] = in[0];
  return LUNET_OK;
}

/* x * dropout mask in training (rate > 0), else x itself; on the tape. */
static lunet_tensor *dropout_graph(lunet_ctx *ctx, lunet_tensor *x, float rate, bool training) {
  if (!x || !training || rate <= 0) return x ? lunet_tensor_retain(x) : NULL;
  lunet_tensor *keep = lunet_op_dropout_mask(ctx, x, rate), *y = keep ? lunet_mul(ctx, x, keep) : NULL;
  layers_release(keep);
  return y;
}

/* One residual block: LN(x + dropout(f(x))) or x + dropout(f(LN(x))). */
typedef struct block_ctx {
  lunet_ctx *ctx;
  bool normalize_first, training;
  float dropout, epsilon;
} block_ctx;

typedef lunet_tensor *(*branch_fn)(const block_ctx *b, lunet_tensor *x, void *arg);

static lunet_tensor *residual(const block_ctx *b, lunet_tensor *x, lunet_tensor *gamma, lunet_tensor *beta,
                              branch_fn f, void *arg) {
  lunet_tensor *in = b->normalize_first ? layers_layernorm_graph(b->ctx, x, gamma, beta, b->epsilon)
                                        : lunet_tensor_retain(x);
  lunet_tensor *fx = in ? f(b, in, arg) : NULL;
  lunet_tensor *d = dropout_graph(b->ctx, fx, b->dropout, b->training);
  lunet_tensor *sum = d ? lunet_add(b->ctx, d, x) : NULL;
  lunet_tensor *y = sum && !b->normalize_first ? layers_layernorm_graph(b->ctx, sum, gamma, beta, b->epsilon)
                                               : sum ? lunet_tensor_retain(sum) : NULL;
  layers_release(in);
  layers_release(fx);
  layers_release(d);
  layers_release(sum);
  return y;
}

typedef struct attend_arg {
  const layers_attention *a;
  lunet_tensor *memory; /* cross-attention: the encoder sequence; NULL: self */
  lunet_tensor *mask;
  layers_kv_cache *cache; /* step by step: the self-attention's keys and values */
} attend_arg;

static lunet_tensor *attend(const block_ctx *b, lunet_tensor *x, void *arg) {
  attend_arg *t = arg;
  lunet_tensor *kv = t->memory ? t->memory : x;
  return layers_attention_graph(b->ctx, t->a, x, kv, kv, t->mask, NULL, t->cache);
}


typedef struct ff_arg {
  lunet_tensor *const *w; /* intermediate kernel, bias; output kernel, bias */
  lunet_unary_op act;
} ff_arg;

static lunet_tensor *feedforward(const block_ctx *b, lunet_tensor *x, void *arg) {
  ff_arg *f = arg;
  lunet_tensor *h = layers_dense_graph(b->ctx, x, f->w[0], f->w[1]);
  lunet_tensor *a = h ? layers_act(b->ctx, f->act, h) : NULL;
  lunet_tensor *y = a ? layers_dense_graph(b->ctx, a, f->w[2], f->w[3]) : NULL;
  layers_release(h);
  layers_release(a);
  return y;
}

static lunet_status transformer_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                        lunet_tensor **y, bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_cached_graph *ts = lunet_call_state(c);
  layers_graph *st = &ts->g;
  layers_graph_release(st);
  bool decoder = is_decoder(l), cross = decoder && nin > 1;
  bool causal = decoder && lunet_layer_get_bool(l, "use_causal_mask");
  layout w = layout_of(decoder, cross);
  if (lunet_call_step_offset(c) >= 0 && (cross || !causal))
    return lunet_call_error(c, LUNET_ERR_ARG, "runs step by step only as a causal decoder without an encoder sequence");
  layers_kv_cache *cache;
  int64_t past;
  lunet_status s = layers_kv_cache_start(c, &ts->cache, &cache, &past);
  lunet_tensor *self_mask = NULL, *cross_mask = NULL, *keys_mask = NULL;
  /* padding masks the keys, as KerasHub's padding_mask (step by step: every step's so far) */
  if (!s) s = layers_kv_cache_mask(c, cache, x[0], lunet_call_mask(c, 0), past, &keys_mask);
  if (!s) s = layers_attention_mask(c, x[0], x[0], NULL, NULL, keys_mask, NULL, causal, past, &self_mask);
  bool self_whole_rows = keys_mask != NULL;
  layers_release(keys_mask);
  if (!s && cross && lunet_call_mask(c, 1))
    s = layers_attention_mask(c, x[0], x[1], NULL, NULL, lunet_call_mask(c, 1), NULL, false, 0, &cross_mask);
  if (!s) s = layers_graph_begin_many(c, l, st, nin, x, w.count);
  if (s) {
    layers_release(self_mask);
    layers_release(cross_mask);
    return s;
  }
  int64_t hidden = lunet_tensor_dim(x[0], 2);
  block_ctx b = {ctx, lunet_layer_get_bool(l, "normalize_first"), training,
                 (float)lunet_layer_get_float(l, "dropout"), (float)lunet_layer_get_float(l, "layer_norm_epsilon")};
  layers_attention self = {.dims = block_dims(l, hidden, hidden), .training = training,
                           .whole_rows = self_whole_rows};
  layers_attention_views(&self, st->w + w.self);
  attend_arg sa = {&self, NULL, self_mask, cache};
  lunet_tensor *h = residual(&b, st->x[0], st->w[w.self_norm], st->w[w.self_norm + 1], attend, &sa);
  if (h && cross) {
    layers_attention ca = {.dims = block_dims(l, hidden, lunet_tensor_dim(x[1], 2)), .training = training,
                           .whole_rows = cross_mask != NULL};
    layers_attention_views(&ca, st->w + w.cross);
    attend_arg xa = {&ca, st->x[1], cross_mask, NULL};
    lunet_tensor *h2 = residual(&b, h, st->w[w.cross_norm], st->w[w.cross_norm + 1], attend, &xa);
    layers_release(h);
    h = h2;
  }
  lunet_tensor *ffw[4] = {st->w[w.inter], st->w[w.inter + 1], st->w[w.out], st->w[w.out + 1]};
  ff_arg fa = {ffw, layers_act_op(lunet_layer_get_string(l, "activation"))};
  lunet_tensor *out = h ? residual(&b, h, st->w[w.ff_norm], st->w[w.ff_norm + 1], feedforward, &fa) : NULL;
  layers_release(h);
  layers_release(self_mask);
  layers_release(cross_mask);
  return layers_graph_end(c, st, out, y);
}

/* The output keeps the sequence's padding mask. */
static lunet_status transformer_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x,
                                     lunet_tensor **mask_out) {
  lunet_tensor *m = lunet_call_mask(c, 0);
  mask_out[0] = m ? lunet_tensor_retain(m) : NULL;
  return LUNET_OK;
}

static const lunet_layer_test encoder_tests[] = {
    {LAYERS_ARGS({"intermediate_dim", {.i = 6}}, {"num_heads", {.i = 2}}), LAYERS_INPUTS({2, {3, 4}}), 2, 2e-2f},
    {LAYERS_ARGS({"intermediate_dim", {.i = 5}}, {"num_heads", {.i = 1}}, {"normalize_first", {.b = true}},
                 {"activation", {.s = "gelu"}}),
     LAYERS_INPUTS({2, {3, 4}}), 2, 2e-2f},
};

static const lunet_layer_test decoder_tests[] = {
    {LAYERS_ARGS({"intermediate_dim", {.i = 6}}, {"num_heads", {.i = 2}}), LAYERS_INPUTS({2, {3, 4}}), 2, 2e-2f},
    {LAYERS_ARGS({"intermediate_dim", {.i = 5}}, {"num_heads", {.i = 2}}, {"normalize_first", {.b = true}}),
     LAYERS_INPUTS({2, {3, 4}}, {2, {2, 6}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_transformer_encoder = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "TransformerEncoder",
    .doc = "A Transformer encoder block: self-attention and a feedforward network, each with a residual "
           "and layer normalization (KerasHub's)",
    .args = encoder_args,
    .nargs = sizeof encoder_args / sizeof encoder_args[0],
    .positional = 2,
    .flags = LUNET_LAYER_OWNS_ACTIVATION, /* "activation" is the feedforward network's */
    .call_state_size = sizeof(layers_cached_graph),
    .build = transformer_build,
    .forward = transformer_forward,
    .backward = layers_graph_backward_member,
    .release = layers_cached_graph_release_member,
    .compute_mask = transformer_mask,
    .tests = encoder_tests,
    .ntests = sizeof encoder_tests / sizeof encoder_tests[0],
};

LAYERS_HIDDEN const lunet_layer_type layers_transformer_decoder = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "TransformerDecoder",
    .doc = "A Transformer decoder block: causal self-attention, cross-attention over an encoder sequence "
           "when one is given, and a feedforward network (KerasHub's)",
    .args = decoder_args,
    .nargs = sizeof decoder_args / sizeof decoder_args[0],
    .positional = 2,
    .max_inputs = 2,
    .flags = LUNET_LAYER_OWNS_ACTIVATION | LUNET_LAYER_STEPWISE,
    .call_state_size = sizeof(layers_cached_graph),
    .build = transformer_build,
    .forward = transformer_forward,
    .backward = layers_graph_backward_member,
    .release = layers_cached_graph_release_member,
    .compute_mask = transformer_mask,
    .tests = decoder_tests,
    .ntests = sizeof decoder_tests / sizeof decoder_tests[0],
};
