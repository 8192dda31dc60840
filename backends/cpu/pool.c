/*
 * Fast pooling in NHWC: every inner loop runs over the C contiguous
 * channels of a pixel.  Max-pool 2x2 stride 2 without padding (the Keras
 * default, 20%+ of a CNN step) has its own forward and backward; the
 * backward recomputes each window's maximum from x and writes all four
 * cells, so dx needs no zeroing pass and no scatter.  Max pooling with a
 * ReLU after it (ABI 2.4: the core moves a convolution's ReLU there) writes
 * max(m, 0) and routes the gradient only where m > 0, in the same passes.
 */
#include <stdint.h>
#include <string.h>
#include "cpu.h"

/* A float's bits, allowed to alias it (the gradient is moved by masks). */
typedef uint32_t cell_bits __attribute__((may_alias));

typedef struct pool_job {
  const lunet_pool2d_desc *d;
  lunet_pool_mode mode;
  bool relu; /* max pooling: y = max(m, 0); the gradient only where m > 0 */
  float *y, *dx;
  const float *x, *dy;
} pool_job;

static bool is_2x2(const lunet_pool2d_desc *d) {
  return d->kh == 2 && d->kw == 2 && d->sh == 2 && d->sw == 2 && d->pad_top == 0 &&
         d->pad_left == 0 && 2 * d->oh <= d->h && 2 * d->ow <= d->w;
}

/* One output row of a 2x2 stride-2 max pool from input rows r0, r1: ow
 * windows of c channels.  Compiled for each instruction set (the baseline
 * build is SSE2, 4 lanes; measured: the first pooling of the CIFAR CNN at
 * batch 256, 1.45 ms, was a quarter of the memory's bandwidth). */
/* All ones where v is a NaN. */
static inline __attribute__((always_inline)) uint32_t nan_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return -(uint32_t)((u & 0x7fffffffu) > 0x7f800000u);
}
/* The window's maximum, NaN when it holds one (lunet_cpu_pool_beats's
 * value): the ordered maximum with a NaN's bits ORed in, in integer ops the
 * vector code keeps (compares and selects for the NaN cost a third of the
 * speed, or the vector code altogether). */
static inline __attribute__((always_inline)) float max4(float a, float b, float e, float f) {
  float m0 = b > a ? b : a, m1 = f > e ? f : e, m = m1 > m0 ? m1 : m0;
  uint32_t bits;
  memcpy(&bits, &m, sizeof bits);
  bits |= nan_bits(a) | nan_bits(b) | nan_bits(e) | nan_bits(f);
  memcpy(&m, &bits, sizeof m);
  return m;
}
static inline __attribute__((always_inline)) void max2x2_any_body(int64_t ow, int64_t c, const float *restrict r0,
                                                                  const float *restrict r1, float *restrict yr,
                                                                  const bool relu) {
  for (int64_t ox = 0; ox < ow; ox++) {
    const float *restrict a = r0 + 2 * ox * c, *restrict b = a + c;
    const float *restrict e = r1 + 2 * ox * c, *restrict f = e + c;
    float *restrict o = yr + ox * c;
    for (int64_t k = 0; k < c; k++) {
      float m = max4(a[k], b[k], e[k], f[k]);
      o[k] = relu ? (!(m <= 0.0f) ? m : 0.0f) : m; /* the ReLU as lunet's: a NaN stays */
    }
  }
}
#define MAX_ROW_ARGS int64_t ow, int64_t c, const float *restrict r0, const float *restrict r1, float *restrict yr
static inline __attribute__((always_inline)) void max2x2_row_body(MAX_ROW_ARGS) {
  max2x2_any_body(ow, c, r0, r1, yr, false);
}
static inline __attribute__((always_inline)) void max2x2_relu_row_body(MAX_ROW_ARGS) {
  max2x2_any_body(ow, c, r0, r1, yr, true);
}
LUNET_CPU_ISA_DISPATCH(max2x2_row, (MAX_ROW_ARGS), (ow, c, r0, r1, yr))
LUNET_CPU_ISA_DISPATCH(max2x2_relu_row, (MAX_ROW_ARGS), (ow, c, r0, r1, yr))

/* Output rows (n, oy) [begin, end) of a 2x2 stride-2 max pool. */
static void max2x2_task(void *arg, int64_t begin, int64_t end, int chunk) {
  pool_job *j = arg;
  const lunet_pool2d_desc *d = j->d;
  int64_t c = d->c;
  for (int64_t t = begin; t < end; t++) {
    int64_t n = t / d->oh, oy = t % d->oh;
    const float *r0 = j->x + ((n * d->h + 2 * oy) * d->w) * c;
    (j->relu ? max2x2_relu_row : max2x2_row)(d->ow, c, r0, r0 + d->w * c, j->y + t * d->ow * c);
  }
}

/* One output row's windows: dx's two input rows q0, q1 from x's r0, r1 and
 * the row's gradient g, ow windows of c channels.  Branch-free: every value
 * loaded, the first maximum in scan order a b / e f found with ordered
 * comparisons, and the gradient's bits masked into the four cells (gcc
 * turned float selects here into a branch per cell, mispredicted on real
 * data: 10x slower); with the ReLU, masked off too where the maximum (as
 * the forward computed it) is not > 0.  Compiled for each instruction set
 * (the baseline build is SSE2, 4 lanes); isa.c's choice runs. */
#define ROW_ARGS                                                                                           \
  int64_t ow, int64_t c, const float *restrict r0, const float *restrict r1, const float *restrict g,      \
      float *restrict q0, float *restrict q1
static inline __attribute__((always_inline)) void max2x2_back_any_body(ROW_ARGS, const bool relu) {
  for (int64_t ox = 0; ox < ow; ox++) {
    int64_t o = 2 * ox * c;
    const float *restrict a = r0 + o, *restrict b = a + c, *restrict e = r1 + o, *restrict f = e + c;
    const cell_bits *restrict gb = (const cell_bits *)(g + ox * c);
    cell_bits *restrict oa = (cell_bits *)(q0 + o), *restrict ob = oa + c, *restrict oe = (cell_bits *)(q1 + o),
                       *restrict of = oe + c;
    for (int64_t k = 0; k < c; k++) {
      float va = a[k], vb = b[k], ve = e[k], vf = f[k];
      uint32_t gv = gb[k];
      if (relu) gv &= -(uint32_t)(max4(va, vb, ve, vf) > 0.0f);
      /* each where no later value beats it (max4's choice: a NaN wins),
       * in bitwise ops (a || here made branches: training at half speed) */
      uint32_t nb = -(uint32_t)(vb != vb), ne = -(uint32_t)(ve != ve), nf = -(uint32_t)(vf != vf);
      uint32_t b_a = -(uint32_t)(vb > va) | nb, e_a = -(uint32_t)(ve > va) | ne, f_a = -(uint32_t)(vf > va) | nf;
      uint32_t e_b = -(uint32_t)(ve > vb) | ne, f_b = -(uint32_t)(vf > vb) | nf, f_e = -(uint32_t)(vf > ve) | nf;
      uint32_t ta = ~(b_a | e_a | f_a);
      uint32_t tb = ~ta & ~(e_b | f_b);
      uint32_t te = ~ta & ~tb & ~f_e;
      oa[k] = gv & ta;
      ob[k] = gv & tb;
      oe[k] = gv & te;
      of[k] = gv & ~(ta | tb | te);
    }
  }
}
static inline __attribute__((always_inline)) void max2x2_back_row_body(ROW_ARGS) {
  max2x2_back_any_body(ow, c, r0, r1, g, q0, q1, false);
}
static inline __attribute__((always_inline)) void max2x2_relu_back_row_body(ROW_ARGS) {
  max2x2_back_any_body(ow, c, r0, r1, g, q0, q1, true);
}
LUNET_CPU_ISA_DISPATCH(max2x2_back_row, (ROW_ARGS), (ow, c, r0, r1, g, q0, q1))
LUNET_CPU_ISA_DISPATCH(max2x2_relu_back_row, (ROW_ARGS), (ow, c, r0, r1, g, q0, q1))

/* dx for output rows (n, oy) [begin, end): the gradient goes to the first
 * maximum in scan order a b / e f; input rows and columns no window covers
 * (odd sizes) are zeroed by the task that owns the sample's last row. */
static void max2x2_back_task(void *arg, int64_t begin, int64_t end, int chunk) {
  pool_job *j = arg;
  const lunet_pool2d_desc *d = j->d;
  int64_t c = d->c, row = d->w * c;
  for (int64_t t = begin; t < end; t++) {
    int64_t n = t / d->oh, oy = t % d->oh;
    int64_t off = ((n * d->h + 2 * oy) * d->w) * c;
    const float *r0 = j->x + off, *r1 = r0 + row;
    float *q0 = j->dx + off, *q1 = q0 + row;
    const float *g = j->dy + t * d->ow * c;
    (j->relu ? max2x2_relu_back_row : max2x2_back_row)(d->ow, c, r0, r1, g, q0, q1);
    for (int64_t ix = 2 * d->ow; ix < d->w; ix++) {
      memset(q0 + ix * c, 0, (size_t)c * sizeof(float));
      memset(q1 + ix * c, 0, (size_t)c * sizeof(float));
    }
    if (oy == d->oh - 1 && 2 * d->oh < d->h)
      memset(q1 + row, 0, (size_t)((d->h - 2 * d->oh) * row) * sizeof(float));
  }
}

/* The window of output (oy, ox) clipped to the image: rows [*y0, *y1),
 * columns [*x0, *x1). */
static void window(const lunet_pool2d_desc *d, int64_t oy, int64_t ox, int64_t *y0, int64_t *y1,
                   int64_t *x0, int64_t *x1) {
  int64_t sy = oy * d->sh - d->pad_top, sx = ox * d->sw - d->pad_left;
  *y0 = sy < 0 ? 0 : sy;
  *y1 = sy + d->kh > d->h ? d->h : sy + d->kh;
  *x0 = sx < 0 ? 0 : sx;
  *x1 = sx + d->kw > d->w ? d->w : sx + d->kw;
}

/* Output rows (n, oy) [begin, end) of any pool. */
static void pool_task(void *arg, int64_t begin, int64_t end, int chunk) {
  pool_job *j = arg;
  const lunet_pool2d_desc *d = j->d;
  int64_t c = d->c;
  for (int64_t t = begin; t < end; t++) {
    int64_t n = t / d->oh, oy = t % d->oh;
    const float *xn = j->x + n * d->h * d->w * c;
    for (int64_t ox = 0; ox < d->ow; ox++) {
      float *restrict o = j->y + (t * d->ow + ox) * c;
      int64_t y0, y1, x0, x1;
      window(d, oy, ox, &y0, &y1, &x0, &x1);
      int64_t count = (y1 - y0) * (x1 - x0);
      if (count <= 0) {
        memset(o, 0, (size_t)c * sizeof(float));
        continue;
      }
      memcpy(o, xn + (y0 * d->w + x0) * c, (size_t)c * sizeof(float));
      for (int64_t iy = y0; iy < y1; iy++)
        for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ix++) {
          const float *restrict v = xn + (iy * d->w + ix) * c;
          if (j->mode == LUNET_POOL_MAX)
            for (int64_t k = 0; k < c; k++) o[k] = lunet_cpu_pool_beats(v[k], o[k]) ? v[k] : o[k];
          else
            for (int64_t k = 0; k < c; k++) o[k] += v[k];
        }
      if (j->mode == LUNET_POOL_AVG) {
        float inv = 1.0f / (float)count;
        for (int64_t k = 0; k < c; k++) o[k] *= inv;
      }
      if (j->relu)
        for (int64_t k = 0; k < c; k++) o[k] = !(o[k] <= 0.0f) ? o[k] : 0.0f;
    }
  }
}

/* Samples [begin, end) of any pool's backward; windows may overlap, so one
 * thread owns a whole sample's dx. */
static void pool_back_task(void *arg, int64_t begin, int64_t end, int chunk) {
  pool_job *j = arg;
  const lunet_pool2d_desc *d = j->d;
  int64_t c = d->c;
  memset(j->dx + begin * d->h * d->w * c, 0,
         (size_t)((end - begin) * d->h * d->w * c) * sizeof(float));
  for (int64_t n = begin; n < end; n++) {
    const float *xn = j->x + n * d->h * d->w * c;
    float *dxn = j->dx + n * d->h * d->w * c;
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++) {
        const float *g = j->dy + ((n * d->oh + oy) * d->ow + ox) * c;
        int64_t y0, y1, x0, x1;
        window(d, oy, ox, &y0, &y1, &x0, &x1);
        int64_t count = (y1 - y0) * (x1 - x0);
        if (count <= 0) continue;
        if (j->mode == LUNET_POOL_AVG) {
          float inv = 1.0f / (float)count;
          for (int64_t iy = y0; iy < y1; iy++)
            for (int64_t ix = x0; ix < x1; ix++) {
              float *restrict o = dxn + (iy * d->w + ix) * c;
              for (int64_t k = 0; k < c; k++) o[k] += g[k] * inv;
            }
          continue;
        }
        for (int64_t k = 0; k < c; k++) {
          int64_t best = y0 * d->w + x0;
          for (int64_t iy = y0; iy < y1; iy++)
            for (int64_t ix = x0; ix < x1; ix++)
              if (lunet_cpu_pool_beats(xn[(iy * d->w + ix) * c + k], xn[best * c + k])) best = iy * d->w + ix;
          if (!j->relu || xn[best * c + k] > 0.0f) dxn[best * c + k] += g[k];
        }
      }
  }
}

static int pool2d(lunet_backend *be, lunet_pool_mode mode, bool relu, lunet_buf y, lunet_cbuf x,
                  const lunet_pool2d_desc *d) {
  int rc = lunet_cpu_check_pool(d, "pool2d");
  if (rc) return rc;
  pool_job j = {.d = d, .mode = mode, .relu = relu, .y = y, .x = x};
  int64_t rows = d->n * d->oh, grain = 16384 / (d->ow * d->c * d->kh * d->kw) + 1;
  lunet_cpu_parallel(be, rows, grain, mode == LUNET_POOL_MAX && is_2x2(d) ? max2x2_task : pool_task,
                     &j);
  return 0;
}

static int pool2d_backward(lunet_backend *be, lunet_pool_mode mode, bool relu, lunet_buf dx, lunet_cbuf dy,
                           lunet_cbuf x, const lunet_pool2d_desc *d) {
  int rc = lunet_cpu_check_pool(d, "pool2d_backward");
  if (rc) return rc;
  pool_job j = {.d = d, .mode = mode, .relu = relu, .dx = dx, .x = x, .dy = dy};
  if (mode == LUNET_POOL_MAX && is_2x2(d)) {
    int64_t grain = 16384 / (d->ow * d->c * 4) + 1;
    lunet_cpu_parallel(be, d->n * d->oh, grain, max2x2_back_task, &j);
  } else {
    int64_t grain = 16384 / (d->h * d->w * d->c) + 1;
    lunet_cpu_parallel(be, d->n, grain, pool_back_task, &j);
  }
  return 0;
}

int lunet_cpu_pool2d(lunet_backend *be, lunet_pool_mode mode, lunet_buf y, lunet_cbuf x,
                     const lunet_pool2d_desc *d) {
  return pool2d(be, mode, false, y, x, d);
}

int lunet_cpu_pool2d_backward(lunet_backend *be, lunet_pool_mode mode, lunet_buf dx, lunet_cbuf dy,
                              lunet_cbuf x, lunet_cbuf y, const lunet_pool2d_desc *d) {
  (void)y;
  return pool2d_backward(be, mode, false, dx, dy, x, d);
}

int lunet_cpu_max_pool2d_relu(lunet_backend *be, lunet_buf y, lunet_cbuf x, const lunet_pool2d_desc *d) {
  return pool2d(be, LUNET_POOL_MAX, true, y, x, d);
}

int lunet_cpu_max_pool2d_relu_backward(lunet_backend *be, lunet_buf dx, lunet_cbuf dy, lunet_cbuf x, lunet_cbuf y,
                                       const lunet_pool2d_desc *d) {
  (void)y;
  return pool2d_backward(be, LUNET_POOL_MAX, true, dx, dy, x, d);
}
