/*
 * Dilated ("atrous") convolutions of stride 1, run as undilated ones on a
 * batch of sub-grids, as TensorFlow's atrous_conv2d does: with dilation
 * (dh, dw), output pixel (i dh + a, j dw + b) reads only input pixels whose
 * row is = a (mod dh) and column = b (mod dw), at consecutive positions of
 * that sub-grid.  So the padded input, cut into its dh x dw sub-grids and
 * those stacked on the batch axis, convolved with the kernel itself, and
 * the results interleaved back, is the dilated convolution: every backend's
 * convolution runs it, forward and backward, with two copies more.
 *
 *   split: t (N, A, B, C) placed at (top, left) in zeros (N, hq dh, wq dw, C),
 *          viewed (N, hq, dh, wq, dw, C), permuted to (dh, dw, N, hq, wq, C)
 *          and viewed (dh dw N, hq, wq, C)
 *   merge: the inverse walk, then rows [top, top + A) and columns
 *          [left, left + B) cut out
 *
 * The two are each other's adjoint, so the backward pass splits dy and
 * merges the data gradient.
 */
#include "layers.h"

#include "lunet/ops.h"

lunet_status layers_atrous_plan(lunet_ctx *ctx, const lunet_conv2d_desc *outer, int64_t dh, int64_t dw,
                                layers_atrous *a) {
  if (outer->sh != 1 || outer->sw != 1 || dh < 1 || dw < 1)
    return lunet_error(ctx, LUNET_ERR_ARG, "a dilated convolution needs strides 1 and dilation >= 1");
  int64_t hq = (outer->oh + dh * (outer->kh - 1) + dh - 1) / dh;
  int64_t wq = (outer->ow + dw * (outer->kw - 1) + dw - 1) / dw;
  *a = (layers_atrous){.dh = dh, .dw = dw, .top = outer->pad_top, .left = outer->pad_left,
                       .h = outer->h, .w = outer->w, .oh = outer->oh, .ow = outer->ow,
                       .inner = {.n = outer->n * dh * dw, .h = hq, .w = wq, .c = outer->c, .f = outer->f,
                                 .kh = outer->kh, .kw = outer->kw, .sh = 1, .sw = 1,
                                 .oh = hq - outer->kh + 1, .ow = wq - outer->kw + 1}};
  return LUNET_OK;
}

/* t (N, A, B, C) -> (dh dw N, hq, wq, C), t at (top, left) of the padded grid. */
static lunet_tensor *split(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *t, int64_t top, int64_t left,
                           int64_t hq, int64_t wq) {
  int64_t n = lunet_tensor_dim(t, 0), c = lunet_tensor_dim(t, 3);
  int64_t rows = lunet_tensor_dim(t, 1), cols = lunet_tensor_dim(t, 2);
  int64_t grid[4] = {n, hq * a->dh, wq * a->dw, c};
  lunet_tensor *padded = NULL;
  if (top == 0 && left == 0 && rows == grid[1] && cols == grid[2]) {
    padded = lunet_tensor_retain(t);
  } else {
    int64_t start[4] = {0, top, left, 0}, stop[4] = {n, top + rows, left + cols, c}, step[4] = {1, 1, 1, 1};
    padded = lunet_op_new(ctx, t, LUNET_F32, 4, grid);
    if (padded && (lunet_op_fill(ctx, padded, 0) || lunet_op_assign_slice(ctx, padded, start, stop, step, t))) {
      lunet_tensor_release(padded);
      padded = NULL;
    }
  }
  int64_t six[6] = {n, hq, a->dh, wq, a->dw, c}, out[4] = {a->dh * a->dw * n, hq, wq, c};
  static const int perm[6] = {2, 4, 0, 1, 3, 5};
  lunet_tensor *v = padded ? lunet_op_reshape(ctx, padded, 6, six) : NULL;
  lunet_tensor *p = v ? lunet_op_permute(ctx, v, perm) : NULL;
  lunet_tensor *y = p ? lunet_op_reshape(ctx, p, 4, out) : NULL;
  lunet_tensor_release(padded);
  lunet_tensor_release(v);
  lunet_tensor_release(p);
  return y;
}

/* t (dh dw N, hq, wq, C) -> (N, rows, cols, C), cut at (top, left). */
static lunet_tensor *merge(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *t, int64_t top, int64_t left,
                           int64_t rows, int64_t cols) {
  int64_t hq = lunet_tensor_dim(t, 1), wq = lunet_tensor_dim(t, 2), c = lunet_tensor_dim(t, 3);
  int64_t n = lunet_tensor_dim(t, 0) / (a->dh * a->dw);
  int64_t six[6] = {a->dh, a->dw, n, hq, wq, c}, grid[4] = {n, hq * a->dh, wq * a->dw, c};
  static const int perm[6] = {2, 3, 0, 4, 1, 5};
  lunet_tensor *v = lunet_op_reshape(ctx, t, 6, six);
  lunet_tensor *p = v ? lunet_op_permute(ctx, v, perm) : NULL;
  lunet_tensor *g = p ? lunet_op_reshape(ctx, p, 4, grid) : NULL, *y = NULL;
  if (g && top == 0 && left == 0 && rows == grid[1] && cols == grid[2]) {
    y = lunet_tensor_retain(g);
  } else if (g) {
    int64_t start[4] = {0, top, left, 0}, stop[4] = {n, top + rows, left + cols, c}, step[4] = {1, 1, 1, 1};
    y = lunet_op_slice(ctx, g, start, stop, step);
  }
  lunet_tensor_release(v);
  lunet_tensor_release(p);
  lunet_tensor_release(g);
  return y;
}

lunet_tensor *layers_atrous_input(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *x) {
  return split(ctx, a, x, a->top, a->left, a->inner.h, a->inner.w);
}

lunet_tensor *layers_atrous_output(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *ys) {
  return merge(ctx, a, ys, 0, 0, a->oh, a->ow);
}

lunet_tensor *layers_atrous_output_grad(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dy) {
  return split(ctx, a, dy, 0, 0, a->inner.oh, a->inner.ow);
}

lunet_tensor *layers_atrous_input_grad(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dxs) {
  return merge(ctx, a, dxs, a->top, a->left, a->h, a->w);
}

lunet_tensor *layers_atrous_forward(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *x, lunet_tensor *w,
                                    lunet_tensor *b, lunet_tensor **xs) {
  *xs = layers_atrous_input(ctx, a, x);
  lunet_tensor *ys = *xs ? lunet_op_conv2d(ctx, *xs, w, b, &a->inner) : NULL;
  lunet_tensor *y = ys ? layers_atrous_output(ctx, a, ys) : NULL;
  lunet_tensor_release(ys);
  if (!y) {
    lunet_tensor_release(*xs);
    *xs = NULL;
  }
  return y;
}

lunet_status layers_atrous_backward(lunet_ctx *ctx, const layers_atrous *a, lunet_tensor *dy, lunet_tensor *xs,
                                    lunet_tensor *w, lunet_tensor **dw, lunet_tensor **db, lunet_tensor **dx) {
  lunet_tensor *dys = layers_atrous_output_grad(ctx, a, dy), *dxs = NULL;
  *dw = dys ? lunet_op_conv2d_backward_filter(ctx, dys, xs, &a->inner, db) : NULL;
  if (*dw && dx) {
    dxs = lunet_op_conv2d_backward_data(ctx, dys, w, &a->inner);
    *dx = dxs ? layers_atrous_input_grad(ctx, a, dxs) : NULL;
  }
  bool ok = *dw && (!dx || *dx);
  lunet_tensor_release(dys);
  lunet_tensor_release(dxs);
  if (ok) return LUNET_OK;
  lunet_tensor_release(*dw);
  *dw = NULL;
  if (db) {
    lunet_tensor_release(*db);
    *db = NULL;
  }
  return lunet_ctx_status(ctx) ? lunet_ctx_status(ctx)
                                : lunet_error(ctx, LUNET_ERR_DEVICE, "dilated convolution: an op failed without a message");
}

lunet_status layers_check_window_args(lunet_layer *l, const char *instead) {
  int64_t k[2], s[2], r[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "strides", s);
  lunet_layer_get_int2(l, "dilation_rate", r);
  lunet_status st = layers_check_pair(l, "kernel_size", k);
  if (st == LUNET_OK) st = layers_check_pair(l, "strides", s);
  if (st == LUNET_OK) st = layers_check_pair(l, "dilation_rate", r);
  if (st != LUNET_OK) return st;
  if ((r[0] > 1 || r[1] > 1) && (s[0] > 1 || s[1] > 1))
    return lunet_layer_error(l, LUNET_ERR_ARG,
                             "dilation_rate {%lld, %lld} with strides {%lld, %lld}: a dilated "
                             "convolution takes strides 1 (as Keras's); %s",
                             (long long)r[0], (long long)r[1], (long long)s[0], (long long)s[1], instead);
  return LUNET_OK;
}

lunet_status layers_check_window(lunet_layer *l, const lunet_shape *in) {
  lunet_status st = layers_check_window_args(l, "follow it with a pooling layer to shrink the image");
  if (st != LUNET_OK) return st;
  int64_t k[2], r[2];
  lunet_layer_get_int2(l, "kernel_size", k);
  lunet_layer_get_int2(l, "dilation_rate", r);
  bool dil = r[0] > 1 || r[1] > 1;
  int64_t ek[2] = {r[0] * (k[0] - 1) + 1, r[1] * (k[1] - 1) + 1};
  if (layers_padding(l) == LUNET_PAD_VALID && (ek[0] > in->dims[0] || ek[1] > in->dims[1]))
    return lunet_layer_error(l, LUNET_ERR_SHAPE,
                             "kernel_size {%lld, %lld}%s spans {%lld, %lld}, larger than the input "
                             "(%lld, %lld) with padding \"valid\"; use padding = \"same\" or a "
                             "smaller kernel",
                             (long long)k[0], (long long)k[1], dil ? " dilated" : "", (long long)ek[0],
                             (long long)ek[1], (long long)in->dims[0], (long long)in->dims[1]);
  return LUNET_OK;
}
