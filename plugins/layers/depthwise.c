/*
 * DepthwiseConv2D and SeparableConv2D (Keras).
 *
 * Depthwise: each input channel c convolved alone with its own
 * depth_multiplier (m) filters, kernel (KH, KW, C, m), output channel
 * c * m + j (Keras's order).  Separable: that, then a 1x1 convolution
 * (pointwise kernel (1, 1, C * m, filters)) and the bias.
 *
 * The depthwise part runs one convolution per channel on the backends'
 * convolution kernels (slice, convolve, concatenate), so it is exact and
 * runs on every backend, but it is not fast for many channels: a fused
 * depthwise kernel is future work.  A dilation_rate above 1 (strides 1)
 * runs it on the input's sub-grids (atrous.c), as Conv2D does.  The same
 * per-group loop serves Conv2D's `groups` (layers_grouped_conv).
 */
#include <stdlib.h>

#include "layers.h"

#define MAX_CHANNELS 4096

/* ---- the depthwise part ---- */

/* The per-channel convolution's geometry for a batch (n, h, w, *): d has
 * the padding and output of the kernel's extent r (k - 1) + 1 (r the
 * dilation) and the kernel's own kh, kw; dilated, `a` runs it. */
typedef struct channel_geom {
  lunet_conv2d_desc d;
  layers_atrous a;
  bool dilated;
} channel_geom;

static lunet_status channel_desc(const lunet_layer *l, lunet_ctx *ctx, int64_t n, int64_t h, int64_t w,
                                 channel_geom *g) {
  int64_t k[2], s[2], r[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "strides", s);
  lunet_layer_get_int2(l, "dilation_rate", r);
  lunet_conv2d_desc *d = &g->d;
  *d = (lunet_conv2d_desc){.n = n, .h = h, .w = w, .c = 1, .f = lunet_layer_get_int(l, "depth_multiplier"),
                           .kh = r[0] * (k[0] - 1) + 1, .kw = r[1] * (k[1] - 1) + 1, .sh = s[0], .sw = s[1]};
  lunet_status st = lunet_conv2d_geometry(ctx, d, layers_padding(l));
  d->kh = k[0], d->kw = k[1];
  g->dilated = r[0] > 1 || r[1] > 1;
  if (!st && g->dilated) st = layers_atrous_plan(ctx, d, r[0], r[1], &g->a);
  return st;
}

/* Axis `axis` of t, [from, from + count): a new tensor. */
static lunet_tensor *part(lunet_ctx *ctx, const lunet_tensor *t, int axis, int64_t from, int64_t count) {
  int64_t start[4] = {0}, stop[4], step[4] = {1, 1, 1, 1};
  for (int i = 0; i < 4; i++) stop[i] = lunet_tensor_dim(t, i);
  start[axis] = from;
  stop[axis] = from + count;
  return lunet_op_slice(ctx, t, start, stop, step);
}

static void release_list(lunet_tensor **t, int64_t n) {
  for (int64_t i = 0; i < n; i++) layers_release(t[i]);
  free(t);
}

lunet_tensor *layers_grouped_conv(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *k,
                                  const lunet_conv2d_desc *d, int64_t groups, int kaxis) {
  int64_t cg = lunet_tensor_dim(x, 3) / groups, ks = lunet_tensor_dim(k, kaxis) / groups;
  lunet_tensor **ys = calloc((size_t)groups, sizeof *ys), *y = NULL;
  bool ok = ys != NULL;
  if (!ok) lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  for (int64_t i = 0; ok && i < groups; i++) {
    lunet_tensor *xc = part(ctx, x, 3, i * cg, cg), *kc = part(ctx, k, kaxis, i * ks, ks);
    ys[i] = xc && kc ? lunet_op_conv2d(ctx, xc, kc, NULL, d) : NULL;
    ok = ys[i] != NULL;
    layers_release(xc);
    layers_release(kc);
  }
  if (ok) y = lunet_op_concat(ctx, ys, (int)groups, 3);
  if (ys) release_list(ys, groups);
  return y;
}

lunet_status layers_grouped_conv_backward(lunet_ctx *ctx, const lunet_tensor *dy, const lunet_tensor *x,
                                          const lunet_tensor *k, const lunet_conv2d_desc *d, int64_t groups,
                                          int kaxis, lunet_tensor **dk, lunet_tensor **dx) {
  int64_t cg = lunet_tensor_dim(x, 3) / groups, ks = lunet_tensor_dim(k, kaxis) / groups, m = d->f;
  lunet_tensor **dks = calloc((size_t)groups, sizeof *dks), **dxs = calloc((size_t)groups, sizeof *dxs);
  bool ok = dks && dxs;
  if (!ok) lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  for (int64_t i = 0; ok && i < groups; i++) {
    lunet_tensor *dyc = part(ctx, dy, 3, i * m, m), *xc = part(ctx, x, 3, i * cg, cg);
    dks[i] = dyc && xc ? lunet_op_conv2d_backward_filter(ctx, dyc, xc, d, NULL) : NULL;
    ok = dks[i] != NULL;
    if (ok && dx) {
      lunet_tensor *kc = part(ctx, k, kaxis, i * ks, ks);
      dxs[i] = kc ? lunet_op_conv2d_backward_data(ctx, dyc, kc, d) : NULL;
      ok = dxs[i] != NULL;
      layers_release(kc);
    }
    layers_release(dyc);
    layers_release(xc);
  }
  *dk = ok ? lunet_op_concat(ctx, dks, (int)groups, kaxis) : NULL;
  if (dx) *dx = ok && *dk ? lunet_op_concat(ctx, dxs, (int)groups, 3) : NULL;
  ok = *dk && (!dx || *dx);
  if (dks) release_list(dks, groups);
  if (dxs) release_list(dxs, groups);
  return ok ? LUNET_OK : lunet_ctx_status(ctx);
}

/* x (N,H,W,C), k (KH,KW,C,m) -> (N,OH,OW,C*m), or NULL with the error set. */
static lunet_tensor *depthwise(lunet_ctx *ctx, const lunet_tensor *x, const lunet_tensor *k,
                               const lunet_conv2d_desc *d) {
  return layers_grouped_conv(ctx, x, k, d, lunet_tensor_dim(x, 3), 2);
}

/* dy (N,OH,OW,C*m) -> *dk (KH,KW,C,m) and, when dx is not NULL, *dx (N,H,W,C). */
static lunet_status depthwise_backward(lunet_ctx *ctx, const lunet_tensor *dy, const lunet_tensor *x,
                                       const lunet_tensor *k, const lunet_conv2d_desc *d, lunet_tensor **dk,
                                       lunet_tensor **dx) {
  return layers_grouped_conv_backward(ctx, dy, x, k, d, lunet_tensor_dim(x, 3), 2, dk, dx);
}

/* The depthwise output of x; *kept gets what the gradient needs (x, or
 * its sub-grids when dilated). */
static lunet_tensor *channel_apply(lunet_ctx *ctx, const channel_geom *g, lunet_tensor *x, const lunet_tensor *k,
                                   lunet_tensor **kept) {
  *kept = NULL;
  if (!g->dilated) {
    lunet_tensor *y = depthwise(ctx, x, k, &g->d);
    if (y) *kept = lunet_tensor_retain(x);
    return y;
  }
  lunet_tensor *xs = layers_atrous_input(ctx, &g->a, x);
  lunet_tensor *ys = xs ? depthwise(ctx, xs, k, &g->a.inner) : NULL;
  lunet_tensor *y = ys ? layers_atrous_output(ctx, &g->a, ys) : NULL;
  layers_release(ys);
  if (y) *kept = xs;
  else layers_release(xs);
  return y;
}

/* channel_apply's gradients: *dk and, when dx is not NULL, *dx. */
static lunet_status channel_grad(lunet_ctx *ctx, const channel_geom *g, lunet_tensor *dy, const lunet_tensor *kept,
                                 const lunet_tensor *k, lunet_tensor **dk, lunet_tensor **dx) {
  if (!g->dilated) return depthwise_backward(ctx, dy, kept, k, &g->d, dk, dx);
  lunet_tensor *dys = layers_atrous_output_grad(ctx, &g->a, dy), *dxs = NULL;
  lunet_status s = dys ? depthwise_backward(ctx, dys, kept, k, &g->a.inner, dk, dx ? &dxs : NULL)
                       : lunet_ctx_status(ctx);
  if (!s && dx && !(*dx = layers_atrous_input_grad(ctx, &g->a, dxs))) {
    s = lunet_ctx_status(ctx);
    layers_set(dk, NULL);
  }
  layers_release(dys);
  layers_release(dxs);
  return s;
}

/* Checks the shared arguments against a sample (H, W, C). */
static lunet_status check_args(lunet_layer *l, const lunet_shape *in) {
  int64_t m = lunet_layer_get_int(l, "depth_multiplier");
  if (in->ndim != 3) return layers_rank_error(l, "3 (H, W, C)", in);
  if (in->dims[2] > MAX_CHANNELS)
    return lunet_layer_error(l, LUNET_ERR_ARG, "at most %d channels, got %lld", MAX_CHANNELS, (long long)in->dims[2]);
  if (m < 1) return lunet_layer_error(l, LUNET_ERR_ARG, "depth_multiplier must be positive, got %lld", (long long)m);
  return layers_check_window(l, in);
}

#define SHARED_ARGS(kernel_doc)                                                                    \
  {"kernel_size", LUNET_ARG_INT2, LUNET_ARG_REQUIRED, .doc = "window size: k or {kh, kw}"},        \
      {"strides", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},                    \
       .doc = "step of the window: s or {sh, sw}"},                                                \
      {"padding", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "valid"},                      \
       .doc = "\"valid\" or \"same\" (out = ceil(in / stride))", .choices = "valid|same"},         \
      {"depth_multiplier", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 1},                      \
       .doc = "filters per input channel"},                                                        \
      {"dilation_rate", LUNET_ARG_INT2, LUNET_ARG_DEFAULT, .def = {.n = 1, .v = {1}},              \
       .doc = "spacing of the kernel's taps: d or {dh, dw}; above 1 needs strides 1"},             \
      {"activation", LUNET_ARG_STRING, LUNET_ARG_NIL, .doc = "activation applied to the output"},  \
      {"use_bias", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = true}, .doc = "add a bias"},    \
      {"depthwise_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"}, \
       .doc = kernel_doc, .choices = LAYERS_INITIALIZERS},                                         \
      {"bias_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "zeros"},             \
       .doc = "initializer of the bias", .choices = LAYERS_INITIALIZERS},                          \
      {"depthwise_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL,                              \
       .doc = "penalty on the depthwise kernel"},                                                  \
      LAYERS_ARG_BIAS_REGULARIZER, LAYERS_ARG_ACTIVITY_REGULARIZER, LAYERS_ARG_CONSTRAINT("depthwise"), \
      LAYERS_ARG_CONSTRAINT("bias")

/* ---- DepthwiseConv2D ---- */

enum { DW_KERNEL = 0, DW_BIAS = 1 };

typedef struct dw_state {
  lunet_tensor *x; /* the input (dilated: its sub-grids) */
  channel_geom g;
} dw_state;

static const lunet_arg_schema depthwise_args[] = {
    SHARED_ARGS("initializer of the depthwise kernel (KH, KW, C, depth_multiplier)"),
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status dw_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_status st = check_args(l, &in[0]);
  if (st) return st;
  channel_geom g;
  if (channel_desc(l, lunet_layer_ctx(l), 1, in[0].dims[0], in[0].dims[1], &g)) return layers_failed(l);
  const lunet_conv2d_desc d = g.d;
  int64_t kshape[4] = {d.kh, d.kw, in[0].dims[2], d.f}, nout = in[0].dims[2] * d.f;
  if (lunet_layer_add_weight(l, "depthwise_kernel", 4, kshape,
                             layers_initializer(l, "depthwise_initializer", "glorot_uniform"), true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &nout, layers_initializer(l, "bias_initializer", "zeros"), true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.oh, d.ow, nout}};
  return LUNET_OK;
}

static lunet_status dw_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                               bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dw_state *st = lunet_call_state(c);
  lunet_tensor *k = lunet_layer_weight(l, DW_KERNEL);
  if (layers_check_images(c, x[0], lunet_tensor_dim(k, 2))) return LUNET_ERR_SHAPE;
  channel_geom g;
  if (channel_desc(l, ctx, lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1), lunet_tensor_dim(x[0], 2), &g))
    return layers_call_failed(c);
  lunet_tensor *kept, *z = channel_apply(ctx, &g, x[0], k, &kept);
  y[0] = z && lunet_layer_get_bool(l, "use_bias") ? lunet_op_binary(ctx, LUNET_BINARY_ADD, z, lunet_layer_weight(l, DW_BIAS))
                                                 : (z ? lunet_tensor_retain(z) : NULL);
  layers_release(z);
  if (!y[0]) {
    layers_release(kept);
    return layers_call_failed(c);
  }
  layers_set(&st->x, kept);
  st->g = g;
  return LUNET_OK;
}

static lunet_status dw_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  dw_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  lunet_tensor *dk = NULL, *db = NULL;
  lunet_status s = channel_grad(ctx, &st->g, dy[0], st->x, lunet_layer_weight(l, DW_KERNEL), &dk,
                                lunet_call_needs_dx(c, 0) ? dx : NULL);
  if (!s) s = lunet_call_accumulate_grad(c, DW_KERNEL, dk);
  if (!s && lunet_layer_get_bool(l, "use_bias")) {
    int64_t nout = lunet_tensor_dim(dy[0], 3);
    s = (db = lunet_op_sum_to(ctx, dy[0], 1, &nout)) ? lunet_call_accumulate_grad(c, DW_BIAS, db) : lunet_ctx_status(ctx);
  }
  layers_release(dk);
  layers_release(db);
  layers_set(&st->x, NULL);
  return s ? layers_call_failed(c) : LUNET_OK;
}

static void dw_release(lunet_layer *l, lunet_call *c) {
  dw_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
}

static const lunet_layer_test dw_tests[] = {
    {LAYERS_ARGS({"kernel_size", {.n = 1, .v = {3}}}), LAYERS_INPUTS({3, {4, 4, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"kernel_size", {.n = 2, .v = {2, 3}}}, {"strides", {.n = 1, .v = {2}}}, {"padding", {.s = "same"}},
                 {"depth_multiplier", {.i = 2}}),
     LAYERS_INPUTS({3, {5, 4, 3}}), 2, 2e-2f},
    {LAYERS_ARGS({"kernel_size", {.n = 2, .v = {3, 2}}}, {"dilation_rate", {.n = 2, .v = {2, 3}}},
                 {"padding", {.s = "same"}}, {"depth_multiplier", {.i = 2}}),
     LAYERS_INPUTS({3, {6, 7, 2}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_depthwise_conv2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "DepthwiseConv2D",
    .doc = "Each channel convolved alone with depth_multiplier filters: (H, W, C) -> (OH, OW, C * m)",
    .args = depthwise_args,
    .nargs = sizeof depthwise_args / sizeof depthwise_args[0],
    .positional = 1,
    .call_state_size = sizeof(dw_state),
    .build = dw_build,
    .forward = dw_forward,
    .backward = dw_backward,
    .release = dw_release,
    .tests = dw_tests,
    .ntests = sizeof dw_tests / sizeof dw_tests[0],
    .compute_mask = layers_drop_mask,
};

/* ---- SeparableConv2D ---- */

enum { SEP_DEPTHWISE = 0, SEP_POINTWISE = 1, SEP_BIAS = 2 };

typedef struct sep_state {
  lunet_tensor *x, *z; /* the input (dilated: its sub-grids) and the depthwise output */
  channel_geom g;      /* the per-channel geometry */
  lunet_conv2d_desc p; /* the pointwise one */
} sep_state;

static const lunet_arg_schema separable_args[] = {
    {"filters", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "output channels of the pointwise step"},
    SHARED_ARGS("initializer of the depthwise kernel (KH, KW, C, depth_multiplier)"),
    {"pointwise_initializer", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "glorot_uniform"},
     .doc = "initializer of the pointwise kernel (1, 1, C * m, filters)", .choices = LAYERS_INITIALIZERS},
    {"pointwise_regularizer", LUNET_ARG_REGULARIZER, LUNET_ARG_NIL, .doc = "penalty on the pointwise kernel"},
    LAYERS_ARG_CONSTRAINT("pointwise"),
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status pointwise_desc(lunet_ctx *ctx, int64_t n, int64_t h, int64_t w, int64_t c, int64_t f,
                                   lunet_conv2d_desc *p) {
  *p = (lunet_conv2d_desc){.n = n, .h = h, .w = w, .c = c, .f = f, .kh = 1, .kw = 1, .sh = 1, .sw = 1};
  return lunet_conv2d_geometry(ctx, p, LUNET_PAD_VALID);
}

static lunet_status sep_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_status st = check_args(l, &in[0]);
  int64_t f = lunet_layer_get_int(l, "filters");
  if (!st && f < 1) st = lunet_layer_error(l, LUNET_ERR_ARG, "filters must be positive, got %lld", (long long)f);
  if (st) return st;
  channel_geom g;
  if (channel_desc(l, lunet_layer_ctx(l), 1, in[0].dims[0], in[0].dims[1], &g)) return layers_failed(l);
  const lunet_conv2d_desc d = g.d;
  int64_t cm = in[0].dims[2] * d.f;
  int64_t dshape[4] = {d.kh, d.kw, in[0].dims[2], d.f}, pshape[4] = {1, 1, cm, f};
  if (lunet_layer_add_weight(l, "depthwise_kernel", 4, dshape,
                             layers_initializer(l, "depthwise_initializer", "glorot_uniform"), true) < 0 ||
      lunet_layer_add_weight(l, "pointwise_kernel", 4, pshape,
                             layers_initializer(l, "pointwise_initializer", "glorot_uniform"), true) < 0)
    return layers_failed(l);
  if (lunet_layer_get_bool(l, "use_bias") &&
      lunet_layer_add_weight(l, "bias", 1, &f, layers_initializer(l, "bias_initializer", "zeros"), true) < 0)
    return layers_failed(l);
  out[0] = (lunet_shape){3, {d.oh, d.ow, f}};
  return LUNET_OK;
}

static lunet_status sep_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  sep_state *st = lunet_call_state(c);
  lunet_tensor *k = lunet_layer_weight(l, SEP_DEPTHWISE), *pk = lunet_layer_weight(l, SEP_POINTWISE);
  if (layers_check_images(c, x[0], lunet_tensor_dim(k, 2))) return LUNET_ERR_SHAPE;
  channel_geom g;
  lunet_conv2d_desc p;
  if (channel_desc(l, ctx, lunet_tensor_dim(x[0], 0), lunet_tensor_dim(x[0], 1), lunet_tensor_dim(x[0], 2), &g) ||
      pointwise_desc(ctx, g.d.n, g.d.oh, g.d.ow, lunet_tensor_dim(pk, 2), lunet_tensor_dim(pk, 3), &p))
    return layers_call_failed(c);
  lunet_tensor *kept, *z = channel_apply(ctx, &g, x[0], k, &kept);
  lunet_tensor *b = lunet_layer_get_bool(l, "use_bias") ? lunet_layer_weight(l, SEP_BIAS) : NULL;
  y[0] = z ? lunet_op_conv2d(ctx, z, pk, b, &p) : NULL;
  if (!y[0]) {
    layers_release(z);
    layers_release(kept);
    return layers_call_failed(c);
  }
  layers_set(&st->x, kept);
  layers_set(&st->z, z);
  st->g = g;
  st->p = p;
  return LUNET_OK;
}

static lunet_status sep_backward(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  sep_state *st = lunet_call_state(c);
  dx[0] = NULL;
  if (!st->x) return layers_no_forward(c);
  bool bias = lunet_layer_get_bool(l, "use_bias");
  lunet_tensor *db = NULL, *dpk = lunet_op_conv2d_backward_filter(ctx, dy[0], st->z, &st->p, bias ? &db : NULL);
  lunet_tensor *dz = dpk ? lunet_op_conv2d_backward_data(ctx, dy[0], lunet_layer_weight(l, SEP_POINTWISE), &st->p) : NULL;
  lunet_tensor *dk = NULL;
  lunet_status s = dz ? channel_grad(ctx, &st->g, dz, st->x, lunet_layer_weight(l, SEP_DEPTHWISE), &dk,
                                     lunet_call_needs_dx(c, 0) ? dx : NULL)
                      : lunet_ctx_status(ctx);
  if (!s) s = lunet_call_accumulate_grad(c, SEP_DEPTHWISE, dk);
  if (!s) s = lunet_call_accumulate_grad(c, SEP_POINTWISE, dpk);
  if (!s && bias) s = lunet_call_accumulate_grad(c, SEP_BIAS, db);
  layers_release(db);
  layers_release(dpk);
  layers_release(dz);
  layers_release(dk);
  layers_set(&st->x, NULL);
  layers_set(&st->z, NULL);
  return s ? layers_call_failed(c) : LUNET_OK;
}

static void sep_release(lunet_layer *l, lunet_call *c) {
  sep_state *st = lunet_call_state(c);
  layers_set(&st->x, NULL);
  layers_set(&st->z, NULL);
}

static const lunet_layer_test sep_tests[] = {
    {LAYERS_ARGS({"filters", {.i = 3}}, {"kernel_size", {.n = 1, .v = {3}}}), LAYERS_INPUTS({3, {4, 4, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {2}}}, {"strides", {.n = 1, .v = {2}}},
                 {"padding", {.s = "same"}}, {"depth_multiplier", {.i = 2}}, {"use_bias", {.b = false}}),
     LAYERS_INPUTS({3, {5, 5, 2}}), 2, 2e-2f},
    {LAYERS_ARGS({"filters", {.i = 2}}, {"kernel_size", {.n = 1, .v = {2}}}, {"dilation_rate", {.n = 1, .v = {2}}}),
     LAYERS_INPUTS({3, {5, 6, 2}}), 2, 2e-2f},
};

LAYERS_HIDDEN const lunet_layer_type layers_separable_conv2d = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "SeparableConv2D",
    .doc = "Depthwise convolution, then a 1x1 convolution to `filters` channels, plus the bias",
    .args = separable_args,
    .nargs = sizeof separable_args / sizeof separable_args[0],
    .positional = 2,
    .call_state_size = sizeof(sep_state),
    .build = sep_build,
    .forward = sep_forward,
    .backward = sep_backward,
    .release = sep_release,
    .tests = sep_tests,
    .ntests = sizeof sep_tests / sizeof sep_tests[0],
    .compute_mask = layers_drop_mask,
};
