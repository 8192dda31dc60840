/*
 * MultiHeadAttention (Keras's): query (N, T, Dq), value (N, S, Dv) and key
 * (N, S, Dk, the value when not given) are projected per head, the scaled
 * dot products softmaxed over S under the attention mask, and the heads'
 * weighted values projected to the output (N, T, Dout).  A second output
 * is the attention scores (N, H, T, S), the softmax before dropout, as
 * Keras's return_attention_scores gives them.
 *
 * Weights in Keras's layouts and order: query/kernel (Dq, H, key_dim),
 * query/bias (H, key_dim), key/kernel (Dk, H, key_dim), key/bias, value/
 * kernel (Dv, H, value_dim), value/bias, attention_output/kernel (H,
 * value_dim, Dout), attention_output/bias (Dout); without use_bias, only
 * the kernels.  PyTorch's nn.MultiheadAttention holds the same numbers as
 * in_proj_weight rows [h*key_dim + j] = query_kernel[:, h, j] (then key's,
 * then value's) and out_proj.weight[o, h*value_dim + j] =
 * output_kernel[h, j, o].
 *
 * The mask (N, T, S), true meaning "may attend", is the product of the
 * attention_mask input, the query's and the value's (and key's) padding
 * masks and, with use_causal_mask, the lower triangle (t >= s); masked
 * scores get -1e9 added before the softmax, and the softmax is multiplied
 * by the mask after, as in Keras 3: a query row whose every key is masked
 * (a padded query) attends to nothing (zeros, so its output is the output
 * bias) rather than to every key alike.  Elsewhere the product changes
 * nothing (exp(-1e9) is 0 in float32), so a causal mask alone, which
 * leaves every row a key, skips it.
 *
 * Forward is a graph of the core's differentiable ops (layers_graph);
 * layers_attention_graph is shared with the Transformer blocks.
 */
#include <math.h>
#include <stdlib.h>

#include "layers.h"

/* The weight slots of one attention block, in Keras's order. */
enum { QK = 0, QB, KK, KB, VK, VB, OK, OB, NSLOTS };

static const char *const slot_names[NSLOTS] = {"query_kernel", "query_bias", "key_kernel", "key_bias",
                                               "value_kernel", "value_bias", "output_kernel", "output_bias"};

int layers_attention_add_weights(lunet_layer *l, const char *prefix, const layers_attention_dims *a,
                                 const char *kinit, const char *binit) {
  int first = -1;
  for (int s = 0; s < NSLOTS; s++) {
    bool bias = s % 2 == 1;
    if (bias && !a->use_bias) continue;
    int64_t shape[3];
    int nd;
    if (s == OK) {
      shape[0] = a->heads, shape[1] = a->value_dim, shape[2] = a->dout, nd = 3;
    } else if (s == OB) {
      shape[0] = a->dout, nd = 1;
    } else {
      int64_t in = s < KK ? a->dq : s < VK ? a->dk : a->dv;
      int64_t per = s < VK ? a->key_dim : a->value_dim;
      if (bias)
        shape[0] = a->heads, shape[1] = per, nd = 2;
      else
        shape[0] = in, shape[1] = a->heads, shape[2] = per, nd = 3;
    }
    char name[64];
    snprintf(name, sizeof name, "%s%s", prefix, slot_names[s]);
    int i = lunet_layer_add_weight(l, name, nd, shape, bias ? binit : kinit, true);
    if (i < 0) return -1;
    if (first < 0) first = i;
  }
  return first;
}

int layers_attention_weight_count(bool use_bias) { return use_bias ? NSLOTS : NSLOTS / 2; }

void layers_attention_views(layers_attention *a, lunet_tensor *const *w) {
  for (int s = 0, i = 0; s < NSLOTS; s++) {
    bool bias = s % 2 == 1;
    a->w[s] = bias && !a->dims.use_bias ? NULL : w[i++];
  }
}

lunet_tensor *layers_dense_graph(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *kernel, lunet_tensor *bias) {
  int64_t d = lunet_tensor_dim(x, -1), e = lunet_tensor_numel(kernel) / (d ? d : 1), flat[2] = {d, e};
  lunet_tensor *k2 = lunet_reshape(ctx, kernel, 2, flat);
  lunet_tensor *y = k2 ? lunet_matmul(ctx, x, k2) : NULL;
  layers_release(k2);
  if (!y || !bias) return y;
  int64_t be[1] = {e};
  lunet_tensor *b1 = lunet_reshape(ctx, bias, 1, be), *yb = b1 ? lunet_add(ctx, y, b1) : NULL;
  layers_release(b1);
  layers_release(y);
  return yb;
}

/* x (N, T, D) projected to heads: (N, H, T, per), on the tape. */
static lunet_tensor *project(lunet_ctx *ctx, lunet_tensor *x, lunet_tensor *kernel, lunet_tensor *bias,
                             int64_t heads, int64_t per) {
  lunet_tensor *p = layers_dense_graph(ctx, x, kernel, bias);
  int64_t shape[4] = {lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1), heads, per};
  lunet_tensor *r = p ? lunet_reshape(ctx, p, 4, shape) : NULL;
  static const int perm[4] = {0, 2, 1, 3};
  lunet_tensor *h = r ? lunet_permute(ctx, r, perm) : NULL;
  layers_release(p);
  layers_release(r);
  return h;
}

/* mask (N, T, S) viewed as (N, 1, T, S), broadcast over the heads; off the tape. */
static lunet_tensor *mask_heads(lunet_ctx *ctx, lunet_tensor *mask) {
  int64_t shape[4] = {lunet_tensor_dim(mask, 0), 1, lunet_tensor_dim(mask, 1), lunet_tensor_dim(mask, 2)};
  return lunet_op_reshape(ctx, mask, 4, shape);
}

/* -1e9 where the mask is 0, as (N, 1, T, S); off the tape. */
static lunet_tensor *mask_adder(lunet_ctx *ctx, lunet_tensor *mask) {
  lunet_tensor *a = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, mask, 1e9f, -1e9f);
  lunet_tensor *r = a ? mask_heads(ctx, a) : NULL;
  layers_release(a);
  return r;
}

/* cache->t (N, H, past, d) followed by the new steps' t_new, kept in the
 * cache; a new reference to the whole (or NULL on error). */
static lunet_tensor *extend(lunet_ctx *ctx, lunet_tensor **cached, lunet_tensor *t_new) {
  if (!t_new) return NULL;
  lunet_tensor *all = *cached ? lunet_op_concat(ctx, (lunet_tensor *[]){*cached, t_new}, 2, 2) : lunet_tensor_retain(t_new);
  layers_release(t_new);
  if (!all) return NULL;
  layers_set(cached, lunet_tensor_retain(all));
  return all;
}

lunet_tensor *layers_attention_graph(lunet_ctx *ctx, const layers_attention *a, lunet_tensor *query,
                                     lunet_tensor *value, lunet_tensor *key, lunet_tensor *mask,
                                     lunet_tensor **scores_out, layers_kv_cache *cache) {
  const layers_attention_dims *d = &a->dims;
  lunet_tensor *q = project(ctx, query, a->w[QK], a->w[QB], d->heads, d->key_dim);
  lunet_tensor *k = q ? project(ctx, key, a->w[KK], a->w[KB], d->heads, d->key_dim) : NULL;
  lunet_tensor *v = k ? project(ctx, value, a->w[VK], a->w[VB], d->heads, d->value_dim) : NULL;
  if (cache && v) { /* step by step: the keys and values of earlier steps come first */
    k = extend(ctx, &cache->k, k);
    v = k ? extend(ctx, &cache->v, v) : (layers_release(v), NULL);
    if (v && cache->pending) { /* their mask with them */
      layers_set(&cache->mask, cache->pending);
      cache->pending = NULL;
    }
  }
  /* Keras scales the query before the product */
  lunet_tensor *qs = v ? lunet_unary(ctx, LUNET_UNARY_AFFINE, q, (float)(1.0 / sqrt((double)d->key_dim)), 0)
                       : NULL;
  static const int kt_perm[4] = {0, 1, 3, 2};
  lunet_tensor *kt = qs ? lunet_permute(ctx, k, kt_perm) : NULL;
  lunet_tensor *sc = kt ? lunet_matmul(ctx, qs, kt) : NULL; /* (N, H, T, S) */
  lunet_tensor *adder = sc && mask ? mask_adder(ctx, mask) : NULL;
  lunet_tensor *masked = adder ? lunet_add(ctx, sc, adder) : sc ? lunet_tensor_retain(sc) : NULL;
  lunet_tensor *soft = masked ? lunet_softmax(ctx, masked, false) : NULL;
  bool zero_rows = mask && a->whole_rows;
  lunet_tensor *m4 = soft && zero_rows ? mask_heads(ctx, mask) : NULL;
  lunet_tensor *probs = m4 ? lunet_mul(ctx, soft, m4) : soft && !zero_rows ? lunet_tensor_retain(soft) : NULL;
  lunet_tensor *keep = probs && a->training && d->dropout > 0 ? lunet_op_dropout_mask(ctx, probs, d->dropout) : NULL;
  lunet_tensor *dropped = keep ? lunet_mul(ctx, probs, keep) : probs ? lunet_tensor_retain(probs) : NULL;
  lunet_tensor *heads = dropped ? lunet_matmul(ctx, dropped, v) : NULL; /* (N, H, T, dv) */
  static const int back[4] = {0, 2, 1, 3};
  lunet_tensor *th = heads ? lunet_permute(ctx, heads, back) : NULL; /* (N, T, H, dv) */
  /* (N, T, H * dv): the output kernel (H, dv, Dout) reads both axes together */
  int64_t joined[3] = {lunet_tensor_dim(query, 0), lunet_tensor_dim(query, 1), d->heads * d->value_dim};
  lunet_tensor *flat = th ? lunet_reshape(ctx, th, 3, joined) : NULL;
  lunet_tensor *out = flat ? layers_dense_graph(ctx, flat, a->w[OK], a->w[OB]) : NULL;
  if (scores_out) *scores_out = out ? lunet_tensor_retain(probs) : NULL;
  lunet_tensor *tmp[] = {q, k, v, qs, kt, sc, adder, masked, soft, m4, probs, keep, dropped, heads, th, flat};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) layers_release(tmp[i]);
  return out;
}

/* A padding mask (N, L) as float32 reshaped to `shape` (4 dims at most),
 * off the tape; NULL with the error set. */
static lunet_tensor *mask_as(lunet_call *c, lunet_tensor *m, int nd, const int64_t *shape) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= shape[i];
  if (lunet_tensor_numel(m) != n) {
    char a[64], b[64];
    lunet_call_error(c, LUNET_ERR_SHAPE, "a mask of shape %s where %s is needed",
                     lunet_shape_str(lunet_tensor_ndim(m), lunet_tensor_shape(m), a, sizeof a),
                     lunet_shape_str(nd, shape, b, sizeof b));
    return NULL;
  }
  lunet_tensor *f = lunet_tensor_dtype(m) == LUNET_F32 ? lunet_tensor_retain(m) : lunet_op_cast(ctx, m, LUNET_F32);
  lunet_tensor *r = f ? lunet_op_reshape(ctx, f, nd, shape) : NULL;
  layers_release(f);
  if (!r) layers_call_failed(c);
  return r;
}

/* m *= part (broadcasting); m NULL takes part. */
static lunet_tensor *and_mask(lunet_ctx *ctx, lunet_tensor *m, lunet_tensor *part) {
  if (!m) return part;
  lunet_tensor *r = lunet_op_binary(ctx, LUNET_BINARY_MUL, m, part);
  layers_release(m);
  layers_release(part);
  return r;
}

lunet_status layers_attention_mask(lunet_call *c, lunet_tensor *query, lunet_tensor *value,
                                   lunet_tensor *attention_mask, lunet_tensor *query_mask,
                                   lunet_tensor *value_mask, lunet_tensor *key_mask, bool causal,
                                   int64_t past, lunet_tensor **out) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t n = lunet_tensor_dim(query, 0), t = lunet_tensor_dim(query, 1), s = past + lunet_tensor_dim(value, 1);
  int64_t full[3] = {n, t, s}, rows[3] = {n, t, 1}, cols[3] = {n, 1, s};
  lunet_tensor *m = NULL;
  *out = NULL;
  if (attention_mask) {
    if (lunet_tensor_ndim(attention_mask) != 3 || lunet_tensor_dim(attention_mask, 0) != n ||
        lunet_tensor_dim(attention_mask, 1) != t || lunet_tensor_dim(attention_mask, 2) != s) {
      char a[64];
      return lunet_call_error(
          c, LUNET_ERR_SHAPE, "attention_mask has shape %s; for query (%lld, %lld, ...) and value (%lld, %lld, ...) it must be (%lld, %lld, %lld) (batch, query steps, value steps)",
          lunet_shape_str(lunet_tensor_ndim(attention_mask), lunet_tensor_shape(attention_mask), a, sizeof a),
          (long long)n, (long long)t, (long long)lunet_tensor_dim(value, 0), (long long)s, (long long)n,
          (long long)t, (long long)s);
    }
    if (!(m = mask_as(c, attention_mask, 3, full))) return lunet_ctx_status(ctx);
  }
  lunet_tensor *parts[3] = {query_mask, value_mask, key_mask};
  const int64_t *shapes[3] = {rows, cols, cols};
  for (int i = 0; i < 3; i++) {
    if (!parts[i]) continue;
    lunet_tensor *p = mask_as(c, parts[i], 3, shapes[i]);
    if (!p || !(m = and_mask(ctx, m, p))) {
      layers_release(m);
      return lunet_ctx_status(ctx);
    }
  }
  if (causal) {
    float *v = malloc(sizeof *v * (size_t)(t * s > 0 ? t * s : 1));
    if (!v) {
      layers_release(m);
      return lunet_call_error(c, LUNET_ERR_NOMEM, "out of host memory for a causal mask");
    }
    for (int64_t i = 0; i < t; i++)
      for (int64_t j = 0; j < s; j++) v[i * s + j] = past + i >= j ? 1.0f : 0.0f;
    int64_t shape[3] = {1, t, s};
    lunet_tensor *tri = lunet_op_new(ctx, query, LUNET_F32, 3, shape);
    lunet_status st = tri ? lunet_tensor_write(ctx, tri, v, sizeof *v * (size_t)(t * s)) : LUNET_ERR_NOMEM;
    free(v);
    if (st) {
      layers_release(tri);
      layers_release(m);
      return layers_call_failed(c);
    }
    if (!(m = and_mask(ctx, m, tri))) return layers_call_failed(c);
  }
  if (m && (lunet_tensor_dim(m, 0) != n || lunet_tensor_dim(m, 1) != t || lunet_tensor_dim(m, 2) != s)) {
    /* parts that broadcast (a query mask alone, the causal triangle): made whole */
    lunet_tensor *ones = lunet_op_new(ctx, query, LUNET_F32, 3, full);
    if (!ones || lunet_op_fill(ctx, ones, 1.0f)) {
      layers_release(ones);
      layers_release(m);
      return layers_call_failed(c);
    }
    if (!(m = and_mask(ctx, ones, m))) return layers_call_failed(c);
  }
  *out = m;
  return LUNET_OK;
}

/* ---- the layer ---- */

static const lunet_arg_schema mha_args[] = {
    {"num_heads", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the number of attention heads"},
    {"key_dim", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "the size of each head for query and key"},
    {"value_dim", LUNET_ARG_INT, LUNET_ARG_NIL, .doc = "the size of each head for value (default key_dim)"},
    {"dropout", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0}, .doc = "dropout on the attention weights, in [0, 1)"},
    {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "biases in the four projections"},
    {"output_shape", LUNET_ARG_INT, LUNET_ARG_NIL, .doc = "the output's last axis (default the query's)"},
    {"use_causal_mask", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "let query step t attend to value steps <= t only (also a call option)"},
    {"kernel_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the kernels", .choices = LAYERS_INITIALIZERS},
    {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},
     .doc = "initializer of the biases", .choices = LAYERS_INITIALIZERS},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

lunet_status layers_attention_check(lunet_layer *l, int64_t heads, int64_t key_dim, int64_t value_dim,
                                    double dropout) {
  if (heads < 1) return lunet_layer_error(l, LUNET_ERR_ARG, "num_heads must be positive, got %lld", (long long)heads);
  if (key_dim < 1) return lunet_layer_error(l, LUNET_ERR_ARG, "key_dim must be positive, got %lld", (long long)key_dim);
  if (value_dim < 1)
    return lunet_layer_error(l, LUNET_ERR_ARG, "value_dim must be positive, got %lld", (long long)value_dim);
  if (!(dropout >= 0 && dropout < 1))
    return lunet_layer_error(l, LUNET_ERR_ARG, "dropout must be in [0, 1), got %g", dropout);
  return LUNET_OK;
}

static layers_attention_dims mha_dims(const lunet_layer *l, int nin, const lunet_shape *in) {
  layers_attention_dims d = {0};
  d.heads = lunet_layer_get_int(l, "num_heads");
  d.key_dim = lunet_layer_get_int(l, "key_dim");
  d.value_dim = lunet_layer_arg_is_set(l, "value_dim") ? lunet_layer_get_int(l, "value_dim") : d.key_dim;
  d.dropout = (float)lunet_layer_get_float(l, "dropout");
  d.use_bias = lunet_layer_get_bool(l, "use_bias");
  if (in) {
    d.dq = in[0].dims[1];
    d.dv = in[1].dims[1];
    d.dk = nin > 2 ? in[2].dims[1] : d.dv;
    d.dout = lunet_layer_arg_is_set(l, "output_shape") ? lunet_layer_get_int(l, "output_shape") : d.dq;
  }
  return d;
}

static lunet_status mha_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  static const char *const names[3] = {"query", "value", "key"};
  for (int i = 0; i < nin && i < 3; i++)
    if (in[i].ndim != 2) {
      char buf[128];
      return lunet_layer_error(l, LUNET_ERR_SHAPE, "expects %s of rank 2 (steps, features) per sample, got shape %s",
                               names[i], layers_sample_str(&in[i], buf, sizeof buf));
    }
  if (nin > 2 && in[2].dims[0] != in[1].dims[0])
    return lunet_layer_error(l, LUNET_ERR_SHAPE, "key has %lld steps but value has %lld: they must be equal",
                             (long long)in[2].dims[0], (long long)in[1].dims[0]);
  if (nin > 3 && (in[3].ndim != 2 || in[3].dims[0] != in[0].dims[0] || in[3].dims[1] != in[1].dims[0])) {
    char buf[128];
    return lunet_layer_error(l, LUNET_ERR_SHAPE, "attention_mask must be (None, %lld, %lld) (query steps, value steps), got %s",
                             (long long)in[0].dims[0], (long long)in[1].dims[0], layers_sample_str(&in[3], buf, sizeof buf));
  }
  layers_attention_dims d = mha_dims(l, nin, in);
  lunet_status s = layers_attention_check(l, d.heads, d.key_dim, d.value_dim, d.dropout);
  if (s) return s;
  if (d.dout < 1) return lunet_layer_error(l, LUNET_ERR_ARG, "output_shape must be positive, got %lld", (long long)d.dout);
  if (layers_attention_add_weights(l, "", &d, layers_initializer(l, "kernel_initializer", "glorot_uniform"),
                                   layers_initializer(l, "bias_initializer", "zeros")) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){2, {in[0].dims[0], d.dout}};
  out[1] = (lunet_shape){3, {d.heads, in[0].dims[0], in[1].dims[0]}};
  return LUNET_OK;
}


lunet_status layers_kv_cache_start(lunet_call *c, layers_kv_cache *cache, layers_kv_cache **use, int64_t *past) {
  int64_t offset = lunet_call_step_offset(c);
  *use = NULL;
  *past = 0;
  if (offset < 0) return LUNET_OK;
  if (offset == 0) { /* a new sequence */
    layers_set(&cache->k, NULL);
    layers_set(&cache->v, NULL);
    layers_set(&cache->mask, NULL);
  }
  layers_set(&cache->pending, NULL); /* a failed call's */
  int64_t have = cache->k ? lunet_tensor_dim(cache->k, 2) : 0;
  if (have != offset)
    return lunet_call_error(c, LUNET_ERR_ARG, "the key/value cache holds %lld steps but this part starts at step %lld",
                            (long long)have, (long long)offset);
  *use = cache;
  *past = have;
  return LUNET_OK;
}

lunet_status layers_kv_cache_mask(lunet_call *c, layers_kv_cache *cache, const lunet_tensor *x, lunet_tensor *mask,
                                  int64_t past, lunet_tensor **out) {
  *out = NULL;
  if (!cache || (!mask && !cache->mask)) {
    *out = mask ? lunet_tensor_retain(mask) : NULL;
    return LUNET_OK;
  }
  lunet_ctx *ctx = lunet_call_ctx(c);
  int64_t now[2] = {lunet_tensor_dim(x, 0), lunet_tensor_dim(x, 1)}, before[2] = {now[0], past};
  lunet_tensor *cur = mask ? mask_as(c, mask, 2, now) : layers_filled(c, x, 2, now, 1.0f);
  lunet_tensor *prev = cache->mask ? lunet_tensor_retain(cache->mask)
                       : past > 0  ? layers_filled(c, x, 2, before, 1.0f)
                                   : NULL;
  lunet_tensor *all = !cur || (past > 0 && !prev) ? NULL
                      : prev                      ? lunet_op_concat(ctx, (lunet_tensor *[]){prev, cur}, 2, 1)
                                                  : lunet_tensor_retain(cur);
  layers_release(cur);
  layers_release(prev);
  if (!all) return layers_call_failed(c);
  layers_set(&cache->pending, lunet_tensor_retain(all));
  *out = all;
  return LUNET_OK;
}

static lunet_status mha_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  layers_cached_graph *ms = lunet_call_state(c);
  layers_graph *st = &ms->g;
  layers_graph_release(st);
  int nqvk = nin < 3 ? nin : 3;
  lunet_status s;
  bool causal = lunet_layer_get_bool(l, "use_causal_mask");
  if (lunet_call_step_offset(c) >= 0 && (!causal || nin > 3 || x[1] != x[0] || (nin > 2 && x[2] != x[0])))
    return lunet_call_error(c, LUNET_ERR_ARG,
                            "runs step by step only as causal self-attention (use_causal_mask, the query as value "
                            "and key, no attention_mask)");
  layers_kv_cache *cache;
  int64_t past;
  if ((s = layers_kv_cache_start(c, &ms->cache, &cache, &past))) return s;
  lunet_tensor *mask = NULL, *value_mask = NULL;
  /* step by step the query is the value and the key: one mask, of every step so far */
  if ((s = layers_kv_cache_mask(c, cache, x[1], lunet_call_mask(c, 1), past, &value_mask))) return s;
  lunet_tensor *key_mask = nin > 2 && !cache ? lunet_call_mask(c, 2) : NULL;
  s = layers_attention_mask(c, x[0], x[1], nin > 3 ? x[3] : NULL, lunet_call_mask(c, 0), value_mask, key_mask, causal,
                            past, &mask);
  bool whole_rows = nin > 3 || lunet_call_mask(c, 0) || value_mask || key_mask;
  layers_release(value_mask);
  if (s) return s;
  layers_attention a = {.dims = mha_dims(l, 0, NULL), .training = training, .whole_rows = whole_rows};
  s = layers_graph_begin_many(c, l, st, nqvk, x, layers_attention_weight_count(a.dims.use_bias));
  if (s) {
    layers_release(mask);
    return s;
  }
  layers_attention_views(&a, st->w);
  lunet_tensor *outs[2] = {NULL, NULL};
  outs[0] = layers_attention_graph(ctx, &a, st->x[0], st->x[1], nqvk > 2 ? st->x[2] : st->x[1], mask, &outs[1], cache);
  layers_release(mask);
  return layers_graph_end_many(c, st, 2, outs, y);
}

/* The output keeps the query's mask; the scores have none. */
static lunet_status mha_mask(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **mask_out) {
  lunet_tensor *m = lunet_call_mask(c, 0);
  mask_out[0] = m ? lunet_tensor_retain(m) : NULL;
  mask_out[1] = NULL;
  return LUNET_OK;
}

static const lunet_layer_test mha_tests[] = {
    {LAYERS_ARGS({"num_heads", {.i = 2}}, {"key_dim", {.i = 3}}), LAYERS_INPUTS({2, {4, 5}}, {2, {3, 6}}), 2, 2e-2f},
    {LAYERS_ARGS({"num_heads", {.i = 1}}, {"key_dim", {.i = 2}}, {"value_dim", {.i = 3}}, {"use_causal_mask", {.b = true}},
                 {"output_shape", {.i = 4}}),
     LAYERS_INPUTS({2, {3, 4}}, {2, {3, 5}}, {2, {3, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"num_heads", {.i = 2}}, {"key_dim", {.i = 2}}, {"use_bias", {.b = false}}),
     LAYERS_INPUTS({2, {3, 4}}, {2, {2, 4}}), 1, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_multi_head_attention = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "MultiHeadAttention",
    .flags = LUNET_LAYER_STEPWISE,
    .doc = "Attention of a query sequence over a value sequence with several heads (Keras's)",
    .args = mha_args,
    .nargs = sizeof mha_args / sizeof mha_args[0],
    .positional = 2, /* MultiHeadAttention{num_heads, key_dim}, as Keras's */
    .min_inputs = 2,
    .max_inputs = 4,
    .noutputs = 2,
    .call_state_size = sizeof(layers_cached_graph),
    .build = mha_build,
    .forward = mha_forward,
    .backward = layers_graph_backward_member,
    .release = layers_cached_graph_release_member,
    .compute_mask = mha_mask,
    .tests = mha_tests,
    .ntests = sizeof mha_tests / sizeof mha_tests[0],
};
