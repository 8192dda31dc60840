/*
 * The CPU backend module: every fast op against the naive reference on
 * random data and odd shapes, the naive reference against hand-computed
 * values and finite differences, optimizer steps against scalar formulas,
 * determinism and error messages.
 *
 * Usage: test_cpu_backend path/to/cpu.so
 */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lunet/backend.h"
#include "../update_cases.h"
#include "lunet/resample.h"

static const char *module_path;
static const lunet_backend_desc *desc;
static const lunet_backend_i *naive_iface;
static lunet_backend *be;
static const lunet_backend_i *F; /* fast */
static const lunet_backend_i *N; /* naive */

static void setup(void) {
  char err[256] = "";
  be = desc->init(2, -1, err, sizeof err);
  ck_assert_msg(be != NULL, "init failed: %s", err);
  F = desc->iface;
  N = naive_iface;
}

static void teardown(void) {
  desc->shutdown(be);
  be = NULL;
}

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float frand(float lo, float hi) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return lo + (hi - lo) * (float)(rng_state >> 40) * (1.0f / 16777216.0f);
}

static float *rnd(size_t n, float lo, float hi) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  for (size_t i = 0; i < n; i++) p[i] = frand(lo, hi);
  return p;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static float *dup(const float *x, size_t n) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  memcpy(p, x, n * sizeof *p);
  return p;
}

/* |got - want| <= atol + rtol*|want| everywhere; names the first miss.
 * (Check reports every passing assertion through a pipe, so loops assert
 * only on a miss.) */
static void expect_close(const float *got, const float *want, size_t n, float atol,
                         float rtol, const char *what) {
  for (size_t i = 0; i < n; i++) {
    float diff = fabsf(got[i] - want[i]);
    if (diff <= atol + rtol * fabsf(want[i]) || (isnan(got[i]) && isnan(want[i]))) continue;
    ck_abort_msg("%s: element %zu is %.9g, expected %.9g", what, i, (double)got[i],
                 (double)want[i]);
  }
}

#define expect_true(cond, ...)                                                             \
  do {                                                                                     \
    if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                \
  } while (0)

static double dot(const float *a, const float *b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* ---- geometry as Keras computes it ---- */

typedef struct conv_case {
  int64_t n, h, w, c, f, kh, kw, sh, sw;
  int same;
} conv_case;

static lunet_conv2d_desc conv_desc(conv_case k) {
  lunet_conv2d_desc d = {k.n, k.h, k.w, k.c, k.f, k.kh, k.kw, k.sh, k.sw, 0, 0, 0, 0};
  if (k.same) {
    d.oh = (k.h + k.sh - 1) / k.sh;
    d.ow = (k.w + k.sw - 1) / k.sw;
    int64_t ph = (d.oh - 1) * k.sh + k.kh - k.h, pw = (d.ow - 1) * k.sw + k.kw - k.w;
    d.pad_top = ph > 0 ? ph / 2 : 0;
    d.pad_left = pw > 0 ? pw / 2 : 0;
  } else {
    d.oh = (k.h - k.kh) / k.sh + 1;
    d.ow = (k.w - k.kw) / k.sw + 1;
  }
  return d;
}

static lunet_pool2d_desc pool_desc(conv_case k) {
  lunet_conv2d_desc c = conv_desc(k);
  lunet_pool2d_desc d = {c.n, c.h, c.w, c.c, c.kh, c.kw, c.sh, c.sw, c.pad_top,
                         c.pad_left, c.oh, c.ow};
  return d;
}

static const conv_case conv_cases[] = {
    {1, 3, 3, 1, 1, 3, 3, 1, 1, 0},   {2, 5, 7, 3, 4, 3, 3, 1, 1, 0},
    {2, 5, 7, 3, 4, 3, 3, 1, 1, 1},   {3, 7, 6, 2, 5, 3, 3, 2, 2, 1},
    {1, 8, 9, 5, 3, 2, 3, 2, 1, 1},   {2, 6, 6, 7, 33, 1, 1, 1, 1, 0},
    {2, 7, 7, 4, 3, 1, 1, 2, 2, 0},   {1, 33, 9, 3, 2, 5, 5, 1, 2, 1},
    {2, 16, 16, 64, 8, 3, 3, 1, 1, 1}, {5, 12, 12, 3, 32, 3, 3, 1, 1, 0},
    /* the small-k kernels (KH*KW*C <= 32, F a multiple of 32): odd row counts, k = 9 and k = 32 */
    {3, 9, 11, 1, 64, 3, 3, 1, 1, 1},  {2, 7, 9, 2, 32, 4, 4, 2, 1, 1},
    /* the AVX-512 tiles (F a multiple of 32; the data gradient's when KH*KW*C
     * is too): 64 + 32 columns, k = 288 and 576, row counts not multiples of
     * 6, k = 45 (data gradient through OpenBLAS), 1x1, and enough rows that
     * a thread's filter gradient adds several sub-chunks */
    {3, 7, 9, 32, 96, 3, 3, 1, 1, 1},  {2, 9, 7, 5, 64, 3, 3, 2, 2, 0},
    {1, 5, 5, 7, 32, 1, 1, 1, 1, 0},   {2, 6, 5, 64, 128, 3, 3, 1, 1, 1},
    {8, 16, 16, 64, 32, 3, 3, 1, 1, 1},
    /* the forward without im2col (no padding): stride 1 with 64 + 32 columns
     * and a 1-row remainder, a 5x3 kernel at stride 2 x 3 */
    {3, 9, 15, 16, 96, 3, 3, 1, 1, 0}, {2, 13, 17, 6, 64, 5, 3, 2, 3, 0},
    /* ... with w small enough that the kernel rows are summed in one pass:
     * 64 columns, a 3x2 kernel at stride 2 x 1; 64 + 32 columns, 2x3 */
    {2, 11, 13, 4, 64, 3, 2, 2, 1, 0}, {3, 10, 9, 2, 96, 2, 3, 1, 1, 0},
    /* the filter gradient reading x in place (64+ output pixels a sample):
     * 3 samples over 2 threads, stride 2 x 1, a 3x2 kernel; one sample,
     * stride 1 x 2, 2x3 */
    {3, 17, 19, 4, 64, 3, 2, 2, 1, 0}, {1, 12, 20, 3, 32, 2, 3, 1, 2, 0},
};
#define NCONV (sizeof conv_cases / sizeof conv_cases[0])

/* ---- descriptor, memory, control ---- */

START_TEST(test_descriptor) {
  ck_assert_uint_eq(desc->abi_major, LUNET_BACKEND_ABI_MAJOR);
  ck_assert_uint_eq(desc->abi_minor, LUNET_BACKEND_ABI_MINOR);
  ck_assert_uint_eq(desc->struct_size, sizeof(lunet_backend_desc));
  ck_assert_uint_eq(desc->iface_size, sizeof(lunet_backend_i));
  ck_assert_str_eq(desc->name, "cpu");
  char why[64] = "x";
  ck_assert_int_eq(desc->probe(why, sizeof why), 1);
  ck_assert_str_eq(why, "");
  /* Every member of both vtables is filled. */
  const void *const *fp = (const void *const *)F, *const *np = (const void *const *)N;
  for (size_t i = 0; i < sizeof(lunet_backend_i) / sizeof(void *); i++) {
    expect_true(fp[i] != NULL, "fast vtable member %zu is NULL", i);
    expect_true(np[i] != NULL, "naive vtable member %zu is NULL", i);
  }
  ck_assert_ptr_eq(N->buffer_alloc, F->buffer_alloc);
  ck_assert_ptr_ne(N->conv2d, F->conv2d);
}
END_TEST

START_TEST(test_describe_and_threads) {
  lunet_backend_info info;
  F->describe(be, &info);
  ck_assert_str_eq(info.name, "cpu");
  ck_assert_int_eq(info.threads, 2);
  ck_assert(info.available);
  ck_assert_msg(strstr(info.device, "(2 threads)") != NULL, "device: %s", info.device);
  ck_assert_msg(strncmp(info.detail, "OpenBLAS ", 9) == 0 && strstr(info.detail, ", kernel "),
                "detail: %s", info.detail);
  ck_assert_int_eq(F->set_threads(be, 3), 0);
  F->describe(be, &info);
  ck_assert_int_eq(info.threads, 3);
  ck_assert_msg(strstr(info.device, "(3 threads)") != NULL, "device: %s", info.device);
  /* The pool still works after resizing. */
  float *y = zeros(100000);
  ck_assert_int_eq(F->fill(be, y, 2.5f, 100000), 0);
  ck_assert(y[0] == 2.5f && y[99999] == 2.5f && y[50000] == 2.5f);
  free(y);
}
END_TEST

START_TEST(test_memory) {
  float *a = F->buffer_alloc(be, 1000 * sizeof(float));
  ck_assert_ptr_nonnull(a);
  ck_assert_uint_eq((uintptr_t)a % 64, 0);
  float src[1000], back[1000];
  for (int i = 0; i < 1000; i++) src[i] = (float)i;
  ck_assert_int_eq(F->buffer_upload(be, a, 0, src, sizeof src), 0);
  ck_assert_int_eq(F->buffer_download(be, a, 40, back, 16), 0);
  ck_assert(back[0] == 10.0f && back[3] == 13.0f);
  ck_assert_int_eq(F->buffer_copy(be, a, 0, a, 400, 400), 0); /* a[0..99] = a[100..199] */
  ck_assert(a[0] == 100.0f && a[99] == 199.0f && a[100] == 100.0f);
  ck_assert_int_eq(F->synchronize(be), 0);
  F->buffer_free(be, a);
  /* A freed buffer is reused for the same size. */
  float *b = F->buffer_alloc(be, 1000 * sizeof(float));
  ck_assert_ptr_eq(b, a);
  float *c = F->buffer_alloc(be, 1000 * sizeof(float));
  ck_assert_ptr_ne(c, b);
  void *z = F->buffer_alloc(be, 0);
  ck_assert_ptr_nonnull(z);
  F->buffer_free(be, z);
  F->buffer_free(be, b);
  F->buffer_free(be, c);
  F->buffer_free(be, NULL);
}
END_TEST

/* ---- hand-computed values (the naive reference checked) ---- */

START_TEST(test_conv_known) {
  /* x 3x3 = 1..9, one channel; kernel = the identity diagonal, bias 0.5. */
  float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  float w[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, bias = 0.5f;
  lunet_conv2d_desc valid = conv_desc((conv_case){1, 3, 3, 1, 1, 3, 3, 1, 1, 0});
  lunet_conv2d_desc same = conv_desc((conv_case){1, 3, 3, 1, 1, 3, 3, 1, 1, 1});
  float same_want[9] = {6.5f, 8.5f, 3.5f, 12.5f, 15.5f, 8.5f, 7.5f, 12.5f, 14.5f};
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    float y1 = 0, y9[9];
    ck_assert_int_eq(ifs[k]->conv2d(be, &y1, x, w, &bias, &valid), 0);
    ck_assert_float_eq(y1, 15.5f);
    ck_assert_int_eq(ifs[k]->conv2d(be, y9, x, w, &bias, &same), 0);
    expect_close(y9, same_want, 9, 0, 0, k ? "fast same conv" : "naive same conv");
    /* backward data of the valid conv: dx = dy * w */
    float dy = 2.0f, dx[9], dw[9], db;
    ck_assert_int_eq(ifs[k]->conv2d_backward_data(be, dx, &dy, w, &valid), 0);
    float dx_want[9] = {2, 0, 0, 0, 2, 0, 0, 0, 2};
    expect_close(dx, dx_want, 9, 0, 0, "valid conv dx");
    ck_assert_int_eq(ifs[k]->conv2d_backward_filter(be, dw, &db, &dy, x, &valid), 0);
    float dw_want[9] = {2, 4, 6, 8, 10, 12, 14, 16, 18};
    expect_close(dw, dw_want, 9, 0, 0, "valid conv dw");
    ck_assert_float_eq(db, 2.0f);
  }
}
END_TEST

START_TEST(test_pool_known) {
  /* 4x4, one channel; the top-left window has a tie (3, 3). */
  float x[16] = {3, 3, 0, 1, 1, 2, 5, 4, 9, 8, 6, 6, 7, 9, 6, 7};
  lunet_pool2d_desc d = pool_desc((conv_case){1, 4, 4, 1, 1, 2, 2, 2, 2, 0});
  float want[4] = {3, 5, 9, 7}, avg_want[4] = {2.25f, 2.5f, 8.25f, 6.25f};
  float dy[4] = {1, 2, 3, 4};
  float dx_want[16] = {1, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 0, 0, 4};
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    float y[4], dx[16];
    ck_assert_int_eq(ifs[k]->pool2d(be, LUNET_POOL_MAX, y, x, &d), 0);
    expect_close(y, want, 4, 0, 0, "max pool");
    ck_assert_int_eq(ifs[k]->pool2d_backward(be, LUNET_POOL_MAX, dx, dy, x, y, &d), 0);
    expect_close(dx, dx_want, 16, 0, 0, "max pool backward");
    ck_assert_int_eq(ifs[k]->pool2d(be, LUNET_POOL_AVG, y, x, &d), 0);
    expect_close(y, avg_want, 4, 0, 0, "avg pool");
  }
  /* "same" 2x2/2 on 3x3 pads bottom/right; padding is not counted. */
  float x9[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  lunet_pool2d_desc s = pool_desc((conv_case){1, 3, 3, 1, 1, 2, 2, 2, 2, 1});
  ck_assert_int_eq(s.oh, 2);
  ck_assert_int_eq(s.pad_top, 0);
  float avg9[4] = {3.0f, 4.5f, 7.5f, 9.0f}, dx9_want[9] = {0.25f, 0.25f, 0.5f, 0.25f, 0.25f,
                                                          0.5f, 0.5f, 0.5f, 1.0f};
  for (int k = 0; k < 2; k++) {
    float y[4], ones[4] = {1, 1, 1, 1}, dx[9];
    ck_assert_int_eq(ifs[k]->pool2d(be, LUNET_POOL_AVG, y, x9, &s), 0);
    expect_close(y, avg9, 4, 1e-6f, 0, "same avg pool");
    ck_assert_int_eq(ifs[k]->pool2d_backward(be, LUNET_POOL_AVG, dx, ones, x9, y, &s), 0);
    expect_close(dx, dx9_want, 9, 1e-6f, 0, "same avg pool backward");
  }
}
END_TEST

START_TEST(test_softmax_known) {
  float x[2] = {0.0f, logf(2.0f)}, label = 1.0f;
  float want[2] = {1.0f / 3, 2.0f / 3}, lwant[2] = {logf(1.0f / 3), logf(2.0f / 3)};
  float dwant[2] = {1.0f / 3, -1.0f / 3};
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    float y[2], loss, d[2];
    ck_assert_int_eq(ifs[k]->softmax(be, false, y, x, 1, 2), 0);
    expect_close(y, want, 2, 1e-7f, 1e-6f, "softmax");
    ck_assert_int_eq(ifs[k]->softmax(be, true, y, x, 1, 2), 0);
    expect_close(y, lwant, 2, 1e-7f, 1e-6f, "log softmax");
    ck_assert_int_eq(ifs[k]->softmax_xent(be, &loss, d, x, &label, 1, 2), 0);
    ck_assert_float_eq_tol(loss, logf(1.5f), 1e-6f);
    expect_close(d, dwant, 2, 1e-7f, 1e-6f, "xent dlogits");
  }
}
END_TEST

START_TEST(test_adam_known) {
  /* p 1, g 0.5, lr 0.1, step 1: m 0.05, v 0.00025, alpha = 0.1*sqrt(0.001)/0.1. */
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;
    ck_assert_int_eq(ifs[k]->adam_update(be, &p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-7f,
                                         0.0f, 1),
                     0);
    ck_assert_float_eq_tol(m, 0.05f, 1e-7f);
    ck_assert_float_eq_tol(v, 0.00025f, 1e-8f);
    double alpha = sqrt(0.001), want = 1.0 - alpha * 0.05 / (sqrt(0.00025) + 1e-7);
    ck_assert_double_eq_tol(p, want, 1e-6);
    ck_assert_double_eq_tol(p, 0.9000000632, 1e-6); /* ~1 - lr */
  }
  float p = 1, g = 1, m = 0, v = 0;
  ck_assert_int_eq(F->adam_update(be, &p, &g, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-7f, 0, 0),
                   LUNET_ERR_ARG);
}
END_TEST

/* ---- fast vs naive ---- */

START_TEST(test_conv_fast_vs_naive) {
  for (size_t i = 0; i < NCONV; i++) {
    lunet_conv2d_desc d = conv_desc(conv_cases[i]);
    size_t nx = d.n * d.h * d.w * d.c, nw = d.kh * d.kw * d.c * d.f,
           ny = d.n * d.oh * d.ow * d.f;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *b = rnd(d.f, -1, 1);
    float *y1 = zeros(ny), *y2 = zeros(ny), *dy = rnd(ny, -1, 1);
    float *dx1 = rnd(nx, 5, 6), *dx2 = rnd(nx, 5, 6), *dw1 = zeros(nw), *dw2 = rnd(nw, 5, 6);
    float *db1 = zeros(d.f), *db2 = rnd(d.f, 5, 6);
    char what[64];
    snprintf(what, sizeof what, "conv case %zu", i);
    float tol = 2e-5f * (float)(d.kh * d.kw * d.c);
    ck_assert_int_eq(N->conv2d(be, y1, x, w, b, &d), 0);
    ck_assert_int_eq(F->conv2d(be, y2, x, w, b, &d), 0);
    expect_close(y2, y1, ny, tol, 1e-5f, what);
    ck_assert_int_eq(F->conv2d(be, y2, x, w, NULL, &d), 0);
    for (size_t k = 0; k < ny; k++) y2[k] += b[k % d.f];
    expect_close(y2, y1, ny, tol, 1e-5f, what);
    ck_assert_int_eq(N->conv2d_backward_data(be, dx1, dy, w, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_data(be, dx2, dy, w, &d), 0);
    expect_close(dx2, dx1, nx, 2e-5f * (float)(d.f * d.kh * d.kw), 1e-5f, what);
    ck_assert_int_eq(N->conv2d_backward_filter(be, dw1, db1, dy, x, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_filter(be, dw2, db2, dy, x, &d), 0);
    expect_close(dw2, dw1, nw, 2e-5f * (float)(d.n * d.oh * d.ow), 1e-5f, what);
    expect_close(db2, db1, d.f, 2e-5f * (float)(d.n * d.oh * d.ow), 1e-5f, what);
    ck_assert_int_eq(F->conv2d_backward_filter(be, dw2, NULL, dy, x, &d), 0);
    expect_close(dw2, dw1, nw, 2e-5f * (float)(d.n * d.oh * d.ow), 1e-5f, what);
    free(x), free(w), free(b), free(y1), free(y2), free(dy), free(dx1), free(dx2);
    free(dw1), free(dw2), free(db1), free(db2);
  }
}
END_TEST

static const conv_case pool_cases[] = {
    {2, 7, 7, 3, 0, 2, 2, 2, 2, 0},  {2, 6, 8, 33, 0, 2, 2, 2, 2, 0},
    {1, 7, 5, 4, 0, 2, 2, 2, 2, 1},  {2, 9, 7, 5, 0, 3, 3, 2, 2, 1},
    {1, 6, 6, 3, 0, 3, 3, 1, 1, 1},  {3, 5, 5, 1, 0, 3, 2, 1, 2, 0},
    {1, 4, 4, 7, 0, 1, 1, 1, 1, 0},  {1, 13, 13, 64, 0, 2, 2, 2, 2, 0},
};
#define NPOOL (sizeof pool_cases / sizeof pool_cases[0])

/* x with distinct values 0.01 apart, so maxima are unique and stay so under
 * a 1e-3 nudge. */
static float *distinct(size_t n) {
  float *x = malloc(n * sizeof *x);
  for (size_t i = 0; i < n; i++) x[i] = 0.01f * (float)i - 0.005f * (float)n;
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(frand(0, 1) * (float)i) % i;
    float t = x[i - 1];
    x[i - 1] = x[j];
    x[j] = t;
  }
  return x;
}

START_TEST(test_pool_fast_vs_naive) {
  for (size_t i = 0; i < NPOOL; i++) {
    lunet_pool2d_desc d = pool_desc(pool_cases[i]);
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.oh * d.ow * d.c;
    float *x = rnd(nx, -1, 1), *dy = rnd(ny, -1, 1);
    if (i % 2) { /* ties in half the cases */
      for (size_t k = 0; k < nx; k++) x[k] = roundf(x[k] * 2.0f);
    }
    for (int mode = 0; mode < 2; mode++) {
      float *y1 = zeros(ny), *y2 = zeros(ny), *dx1 = zeros(nx), *dx2 = rnd(nx, 5, 6);
      char what[64];
      snprintf(what, sizeof what, "pool case %zu mode %d", i, mode);
      ck_assert_int_eq(N->pool2d(be, mode, y1, x, &d), 0);
      ck_assert_int_eq(F->pool2d(be, mode, y2, x, &d), 0);
      expect_close(y2, y1, ny, 1e-6f, 1e-6f, what);
      ck_assert_int_eq(N->pool2d_backward(be, mode, dx1, dy, x, y1, &d), 0);
      ck_assert_int_eq(F->pool2d_backward(be, mode, dx2, dy, x, y2, &d), 0);
      expect_close(dx2, dx1, nx, 1e-6f, 1e-6f, what);
      free(y1), free(y2), free(dx1), free(dx2);
    }
    free(x), free(dy);
  }
}
END_TEST

/* ABI 2.4's max pooling with the ReLU after it, fast and naive: the same
 * bits as a max pooling, then the ReLU (forward), and as the ReLU's gradient
 * (dy where the window's maximum is > 0), then the pooling's (backward);
 * windows wholly below zero, at zero (-0 too) and ties included. */
/* ABI 2.5's linear: c = a b + bias, then the ReLU.  Fast: the same bits as
 * the fast gemm followed by the add and the ReLU in turn (the documented
 * contract, so fusing it changes no result), also when the product is split
 * over threads by rows or by columns; naive against fast within rounding;
 * with and without the bias and the ReLU. */
START_TEST(test_linear) {
  static const int64_t cases[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {130, 40, 70}, {12, 300, 50}, {64, 512, 96}};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    int64_t m = cases[ci][0], n = cases[ci][1], k = cases[ci][2];
    float *a = rnd((size_t)(m * k), -1, 1), *b = rnd((size_t)(k * n), -1, 1), *bias = rnd((size_t)n, -0.5f, 0.5f);
    for (int variant = 0; variant < 4; variant++) {
      bool relu = variant & 1, with_bias = variant & 2;
      size_t nc = (size_t)(m * n);
      float *c = rnd(nc, 5, 6), *cn = rnd(nc, 5, 6), *want = zeros(nc);
      char what[96];
      snprintf(what, sizeof what, "linear %lldx%lldx%lld%s%s", (long long)m, (long long)n, (long long)k,
               with_bias ? " +bias" : "", relu ? " relu" : "");
      ck_assert_int_eq(F->gemm(be, false, false, m, n, k, 1.0f, a, 0, b, 0, 0.0f, want, m * n, 1), 0);
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
          float *v = &want[i * n + j];
          if (with_bias) *v = *v + bias[j];
          if (relu) *v = *v > 0.0f ? *v : 0.0f;
        }
      ck_assert_int_eq(F->linear(be, m, n, k, a, b, with_bias ? bias : NULL, relu, c), 0);
      ck_assert_int_eq(N->linear(be, m, n, k, a, b, with_bias ? bias : NULL, relu, cn), 0);
      expect_true(memcmp(c, want, nc * sizeof *c) == 0, "%s: fast differs from gemm, add, relu", what);
      expect_close(cn, c, nc, 1e-5f, 1e-5f, what);
      free(c), free(cn), free(want);
    }
    free(a), free(b), free(bias);
  }
}
END_TEST

/* ABI 2.6 gemm_relu_mask: the same bits as gemm then the RELU
 * unary_backward with the mask as x, fast (threads split by rows or by
 * columns; each transpose) and naive; masks with zeros, negative zeros and
 * a NaN, which all block the gradient as the ReLU's does. */
START_TEST(test_gemm_relu_mask) {
  static const int64_t cases[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {130, 40, 70}, {12, 300, 50}, {64, 512, 10}};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    int64_t m = cases[ci][0], n = cases[ci][1], k = cases[ci][2];
    size_t nc = (size_t)(m * n);
    float *a = rnd((size_t)(m * k), -1, 1), *b = rnd((size_t)(k * n), -1, 1), *mask = rnd(nc, -1, 1);
    for (size_t i = 0; i < nc; i += 7) mask[i] = i % 2 ? 0.0f : -0.0f;
    mask[nc / 2] = NAN;
    for (int t = 0; t < 4; t++) {
      bool ta = t & 1, tb = t & 2;
      float *c = rnd(nc, 5, 6), *cn = rnd(nc, 5, 6), *prod = zeros(nc), *want = zeros(nc);
      char what[96];
      snprintf(what, sizeof what, "gemm_relu_mask %lldx%lldx%lld ta=%d tb=%d", (long long)m, (long long)n,
               (long long)k, ta, tb);
      ck_assert_int_eq(F->gemm(be, ta, tb, m, n, k, 1.0f, a, 0, b, 0, 0.0f, prod, m * n, 1), 0);
      ck_assert_int_eq(F->unary_backward(be, LUNET_UNARY_RELU, 0.0f, 0.0f, want, prod, mask, mask, nc), 0);
      ck_assert_int_eq(F->gemm_relu_mask(be, ta, tb, m, n, k, a, b, mask, c), 0);
      ck_assert_int_eq(N->gemm_relu_mask(be, ta, tb, m, n, k, a, b, mask, cn), 0);
      expect_true(memcmp(c, want, nc * sizeof *c) == 0, "%s: fast differs from gemm and the ReLU's gradient", what);
      expect_close(cn, c, nc, 1e-5f, 1e-5f, what);
      for (size_t i = 0; i < nc; i++)
        if (!(mask[i] > 0.0f)) expect_true(c[i] == 0.0f, "%s: element %zu passes a mask of %g", what, i, mask[i]);
      free(c), free(cn), free(prod), free(want);
    }
    free(a), free(b), free(mask);
  }
}
END_TEST

START_TEST(test_max_pool_relu) {
  for (size_t i = 0; i < NPOOL; i++) {
    lunet_pool2d_desc d = pool_desc(pool_cases[i]);
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.oh * d.ow * d.c;
    float *x = rnd(nx, -1, 1), *dy = rnd(ny, -1, 1);
    if (i % 2)
      for (size_t k = 0; k < nx; k++) x[k] = roundf(x[k] * 2.0f);
    for (size_t k = 0; k < nx / 3; k++) x[k] = -fabsf(x[k]) - 0.5f; /* the first rows: below zero */
    for (size_t k = nx / 3; k < nx / 3 + d.w * d.c; k++) x[k] = k % 2 ? 0.0f : -0.0f;
    const lunet_backend_i *ifs[2] = {N, F};
    float *fused[2][2];
    for (int b = 0; b < 2; b++) {
      char what[64];
      snprintf(what, sizeof what, "pool case %zu, %s", i, b ? "fast" : "naive");
      const lunet_backend_i *I = ifs[b];
      float *y = zeros(ny), *yr = zeros(ny), *g = zeros(ny), *dx = rnd(nx, 5, 6), *dxr = rnd(nx, 5, 6);
      ck_assert_int_eq(I->pool2d(be, LUNET_POOL_MAX, y, x, &d), 0);
      ck_assert_int_eq(I->max_pool2d_relu(be, yr, x, &d), 0);
      size_t below = 0;
      for (size_t k = 0; k < ny; k++) {
        float want = y[k] > 0.0f ? y[k] : 0.0f;
        expect_true(memcmp(&yr[k], &want, sizeof want) == 0, "%s: y[%zu] = %g, relu(max) = %g", what, k, yr[k], want);
        g[k] = y[k] > 0.0f ? dy[k] : 0.0f;
        below += !(y[k] > 0.0f);
      }
      expect_true(below > 0 && below < ny, "%s: %zu of %zu windows at or below zero (the case must mix both)", what,
                  below, ny);
      ck_assert_int_eq(I->pool2d_backward(be, LUNET_POOL_MAX, dx, g, x, y, &d), 0);
      ck_assert_int_eq(I->max_pool2d_relu_backward(be, dxr, dy, x, yr, &d), 0);
      expect_true(memcmp(dx, dxr, nx * sizeof *dx) == 0, "%s: the backward differs from the ReLU's then the pooling's",
                  what);
      fused[b][0] = yr;
      fused[b][1] = dxr;
      free(y), free(g), free(dx);
    }
    expect_close(fused[1][0], fused[0][0], ny, 0, 0, "fused forward, fast against naive");
    expect_close(fused[1][1], fused[0][1], nx, 1e-6f, 1e-6f, "fused backward, fast against naive");
    for (int b = 0; b < 2; b++) free(fused[b][0]), free(fused[b][1]);
    free(x), free(dy);
  }
}
END_TEST

START_TEST(test_gemm_fast_vs_naive) {
  /* the last five take the AVX-512 tiles with alpha 1 and beta 0 or 1 and
   * b not transposed (n a multiple of 32; split by rows and by columns) */
  static const int64_t sizes[][4] = {{1, 1, 1, 1},     {7, 3, 33, 1},     {3, 7, 5, 3},
                                     {130, 90, 40, 1}, {17, 300, 65, 1},  {64, 33, 70, 2},
                                     {70, 96, 37, 1},  {13, 64, 200, 2},  {200, 512, 64, 1},
                                     {300, 32, 50, 1}, {5, 160, 7, 1}};
  static const float scales[][2] = {{0.5f, 0.25f}, {1.0f, 0.0f}, {1.0f, 1.0f}};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    int64_t m = sizes[s][0], n = sizes[s][1], k = sizes[s][2], batch = sizes[s][3];
    for (int t = 0; t < 24; t++) {
      float alpha = scales[t / 8][0], beta = scales[t / 8][1];
      bool ta = t & 1, tb = t & 2, shared_b = t & 4;
      int64_t sb = shared_b ? 0 : k * n;
      float *a = rnd(batch * m * k, -1, 1), *b = rnd(batch * k * n, -1, 1);
      float *c1 = rnd(batch * m * n, -1, 1), *c2 = dup(c1, batch * m * n);
      char what[96];
      snprintf(what, sizeof what, "gemm %zu ta=%d tb=%d sb=%lld alpha=%g beta=%g", s, ta, tb, (long long)sb,
               (double)alpha, (double)beta);
      ck_assert_int_eq(N->gemm(be, ta, tb, m, n, k, alpha, a, m * k, b, sb, beta, c1, m * n, batch), 0);
      ck_assert_int_eq(F->gemm(be, ta, tb, m, n, k, alpha, a, m * k, b, sb, beta, c2, m * n, batch), 0);
      expect_close(c2, c1, batch * m * n, 1e-5f * (float)k, 1e-5f, what);
      free(a), free(b), free(c1), free(c2);
    }
  }
}
END_TEST

/* ---- bfloat16 products (ABI 2.3) ---- */

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* The rounding itself, on values worked out by hand. */
START_TEST(test_bf16_round) {
  ck_assert_uint_eq(bits(lunet_bf16_round(1.0f)), 0x3f800000u);
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x3f808000u))), 0x3f800000u); /* tie: to even (down) */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x3f818000u))), 0x3f820000u); /* tie: to even (up) */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x3f808001u))), 0x3f810000u); /* above the tie */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0xbf807fffu))), 0xbf800000u); /* below it, negative */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x7f7fffffu))), 0x7f800000u); /* FLT_MAX: inf */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x00400000u))), 0x00000000u); /* subnormal: zero */
  ck_assert_uint_eq(bits(lunet_bf16_round(from_bits(0x80000001u))), 0x80000000u);
  ck_assert(isnan(lunet_bf16_round(from_bits(0x7f800001u)))); /* a NaN whose payload would round away */
  ck_assert_uint_eq(bits(lunet_bf16_round(INFINITY)), 0x7f800000u);
}
END_TEST

/* Operands in [-1, 1) with an eighth of them exactly halfway between two
 * bfloat16 values, where the rounding's tie rule decides. */
static float *rnd_ties(size_t n) {
  float *p = rnd(n, -1, 1);
  for (size_t i = 0; i < n; i += 8) p[i] = from_bits((bits(p[i]) & 0xffff0000u) | 0x8000u);
  return p;
}

/* Beyond conv_cases: the bfloat16 tiles with an odd k = 81 (F = 64), and
 * an odd F = 65 in the data gradient's sum (k = 288 columns). */
static const conv_case bf16_cases[] = {{2, 7, 8, 9, 64, 3, 3, 1, 1, 1}, {2, 6, 7, 32, 65, 3, 3, 1, 1, 1}};

/* The fast bfloat16 products (AVX512-BF16 tiles here, or the emulation
 * under LUNET_CPU_ISA=avx2/scalar) against the naive reference, which
 * rounds each operand as it reads it: equal up to float32 summation order.
 * Then the rounding is seen to happen: the result moves away from the
 * float32 product, by no more than the operands' rounding allows. */
START_TEST(test_conv_bf16_fast_vs_naive) {
  size_t nextra = sizeof bf16_cases / sizeof bf16_cases[0];
  for (size_t i = 0; i < NCONV + nextra; i++) {
    lunet_conv2d_desc d = conv_desc(i < NCONV ? conv_cases[i] : bf16_cases[i - NCONV]);
    size_t nx = d.n * d.h * d.w * d.c, nw = d.kh * d.kw * d.c * d.f, ny = d.n * d.oh * d.ow * d.f;
    float *x = rnd_ties(nx), *w = rnd_ties(nw), *b = rnd(d.f, -1, 1), *dy = rnd_ties(ny);
    float *y1 = zeros(ny), *y2 = rnd(ny, 5, 6), *dx1 = zeros(nx), *dx2 = rnd(nx, 5, 6);
    float *dw1 = zeros(nw), *dw2 = rnd(nw, 5, 6), *db1 = zeros(d.f), *db2 = rnd(d.f, 5, 6);
    char what[64];
    snprintf(what, sizeof what, "bf16 conv case %zu", i);
    float tol = 2e-5f * (float)(d.kh * d.kw * d.c);
    ck_assert_int_eq(N->conv2d_bf16(be, y1, x, w, b, &d), 0);
    ck_assert_int_eq(F->conv2d_bf16(be, y2, x, w, b, &d), 0);
    expect_close(y2, y1, ny, tol, 1e-5f, what);
    ck_assert_int_eq(N->conv2d_backward_data_bf16(be, dx1, dy, w, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_data_bf16(be, dx2, dy, w, &d), 0);
    expect_close(dx2, dx1, nx, 2e-5f * (float)(d.f * d.kh * d.kw), 1e-5f, what);
    ck_assert_int_eq(N->conv2d_backward_filter_bf16(be, dw1, db1, dy, x, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_filter_bf16(be, dw2, db2, dy, x, &d), 0);
    expect_close(dw2, dw1, nw, 2e-5f * (float)(d.n * d.oh * d.ow), 1e-5f, what);
    /* the bias gradient sums dy as it is: the float32 one */
    ck_assert_int_eq(N->conv2d_backward_filter(be, dw1, db1, dy, x, &d), 0);
    expect_close(db2, db1, d.f, 2e-5f * (float)(d.n * d.oh * d.ow), 1e-5f, what);
    free(x), free(w), free(b), free(dy), free(y1), free(y2), free(dx1), free(dx2);
    free(dw1), free(dw2), free(db1), free(db2);
  }
}
END_TEST

START_TEST(test_gemm_bf16_fast_vs_naive) {
  /* the tiles: n a multiple of 32, k >= 64 (odd too),
   * alpha 1, beta 0 or 1, a transposed or not, b not transposed, shared b
   * or not; the rest emulated */
  static const int64_t sizes[][4] = {{1, 1, 1, 1},      {7, 3, 33, 1},    {130, 64, 41, 1}, {17, 96, 300, 2},
                                     {64, 512, 75, 1},  {5, 32, 7, 3},    {600, 64, 75, 1}, {520, 96, 128, 2},
                                     {513, 160, 64, 1}};
  static const float scales[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, 0.25f}};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    int64_t m = sizes[s][0], n = sizes[s][1], k = sizes[s][2], batch = sizes[s][3];
    for (int t = 0; t < 24; t++) {
      float alpha = scales[t / 8][0], beta = scales[t / 8][1];
      bool ta = t & 1, tb = t & 2, shared_b = t & 4;
      int64_t sb = shared_b ? 0 : k * n;
      float *a = rnd_ties(batch * m * k), *b = rnd_ties(batch * k * n);
      float *c1 = rnd(batch * m * n, -1, 1), *c2 = dup(c1, batch * m * n), *c3 = dup(c1, batch * m * n);
      char what[96];
      snprintf(what, sizeof what, "bf16 gemm %zu ta=%d tb=%d sb=%lld alpha=%g beta=%g", s, ta, tb, (long long)sb,
               (double)alpha, (double)beta);
      ck_assert_int_eq(N->gemm_bf16(be, ta, tb, m, n, k, alpha, a, m * k, b, sb, beta, c1, m * n, batch), 0);
      ck_assert_int_eq(F->gemm_bf16(be, ta, tb, m, n, k, alpha, a, m * k, b, sb, beta, c2, m * n, batch), 0);
      expect_close(c2, c1, batch * m * n, 1e-5f * (float)k, 1e-5f, what);
      /* against float32: each operand within 2^-9 relative, so each
       * product within 2^-8 (+ a square), and some element visibly moved */
      ck_assert_int_eq(N->gemm(be, ta, tb, m, n, k, alpha, a, m * k, b, sb, beta, c3, m * n, batch), 0);
      float moved = 0.0f;
      for (int64_t e = 0; e < batch * m * n; e++) {
        float diff = fabsf(c1[e] - c3[e]);
        moved = diff > moved ? diff : moved;
        expect_true(diff <= fabsf(alpha) * (float)k * 0.0040f + 1e-6f, "%s: element %lld moved %g from float32",
                    what, (long long)e, (double)diff);
      }
      if (k >= 7) expect_true(moved > 1e-4f, "%s: no element differs from float32 (max %g)", what, (double)moved);
      free(a), free(b), free(c1), free(c2), free(c3);
    }
  }
}
END_TEST

START_TEST(test_bf16_native_flag) {
  /* LUNET_CPU_ISA below avx512 emulates; the describe() text says which */
  const char *cap = getenv("LUNET_CPU_ISA");
  lunet_backend_info info;
  F->describe(be, &info);
  int native = F->bf16_native(be);
  if (cap && strcmp(cap, "avx512") != 0) ck_assert_int_eq(native, 0);
  ck_assert_int_eq(N->bf16_native(be), 0);
  ck_assert_ptr_nonnull(strstr(info.detail, native ? "bfloat16 AVX512-BF16" : "bfloat16 emulated"));
}
END_TEST

static const float unary_params[LUNET_UNARY_COUNT][2] = {
    [LUNET_UNARY_LEAKY_RELU] = {0.2f, 0}, [LUNET_UNARY_AFFINE] = {1.5f, -0.25f},
    [LUNET_UNARY_CLIP] = {-0.5f, 0.75f}};

/* Inputs away from each op's kinks and outside its domain's edge. */
static float unary_input(lunet_unary_op op) {
  float v = frand(-2, 2);
  if (op == LUNET_UNARY_LOG || op == LUNET_UNARY_SQRT) return frand(0.2f, 3);
  if (op == LUNET_UNARY_RECIP) return (v < 0 ? -1 : 1) * frand(0.3f, 2);
  if (op == LUNET_UNARY_CLIP && fabsf(v + 0.5f) < 0.05f) v += 0.1f;
  if (op == LUNET_UNARY_CLIP && fabsf(v - 0.75f) < 0.05f) v += 0.1f;
  if (fabsf(v) < 0.05f) v += 0.1f;
  return v;
}

START_TEST(test_unary_fast_vs_naive_and_fd) {
  const size_t n = 40007;
  for (int op = 0; op < LUNET_UNARY_COUNT; op++) {
    float a = unary_params[op][0], b = unary_params[op][1];
    float *x = malloc(n * sizeof *x), *dy = rnd(n, -1, 1);
    for (size_t i = 0; i < n; i++) x[i] = unary_input(op);
    float *y1 = zeros(n), *y2 = zeros(n), *dx1 = zeros(n), *dx2 = zeros(n);
    char what[64];
    snprintf(what, sizeof what, "unary op %d", op);
    ck_assert_int_eq(N->unary(be, op, a, b, y1, x, n), 0);
    ck_assert_int_eq(F->unary(be, op, a, b, y2, x, n), 0);
    expect_close(y2, y1, n, 0, 1e-6f, what);
    ck_assert_int_eq(N->unary_backward(be, op, a, b, dx1, dy, x, y1, n), 0);
    ck_assert_int_eq(F->unary_backward(be, op, a, b, dx2, dy, x, y2, n), 0);
    expect_close(dx2, dx1, n, 1e-7f, 1e-6f, what);
    /* central differences on the first 200 elements */
    const float eps = 1e-3f;
    for (size_t i = 0; i < 200; i++) {
      float xp = x[i] + eps, xm = x[i] - eps, fp, fm;
      N->unary(be, op, a, b, &fp, &xp, 1);
      N->unary(be, op, a, b, &fm, &xm, 1);
      float fd = (float)(((double)fp - fm) / (2.0 * eps)) * dy[i];
      expect_true(fabsf(fd - dx1[i]) <= 2e-3f + 2e-3f * fabsf(fd),
                    "%s: at x=%g analytic %g, finite difference %g", what, (double)x[i],
                    (double)dx1[i], (double)fd);
    }
    free(x), free(dy), free(y1), free(y2), free(dx1), free(dx2);
  }
}
END_TEST

/* lunet's own tanh (the CPU backend skips libm's slow path) stays within 3
 * ulp of the double-precision tanh, from 0 to saturation. */
START_TEST(test_tanh_accuracy) {
  const size_t n = 200001;
  float *x = malloc(n * sizeof *x), *y = zeros(n);
  for (size_t i = 0; i < n; i++) x[i] = -10.0f + 20.0f * (float)i / (float)(n - 1);
  ck_assert_int_eq(F->unary(be, LUNET_UNARY_TANH, 0, 0, y, x, n), 0);
  for (size_t i = 0; i < n; i++) {
    double want = tanh((double)x[i]);
    expect_true(fabs(y[i] - want) <= 3.0 * 5.97e-8 * fabs(want) + 1e-30, "tanh(%.9g) = %.9g, expected %.9g",
                (double)x[i], (double)y[i], want);
  }
  free(x), free(y);
}
END_TEST

/* The fused LSTM cell: fast against naive, forward and backward, with and
 * without a previous cell, and its gradient against central differences
 * of h + 2c through the naive forward. */
START_TEST(test_lstm_cell_fast_vs_naive_and_fd) {
  const size_t n = 37, u = 29;
  for (int with_cp = 0; with_cp < 2; with_cp++) {
    float *z = rnd(n * 4 * u, -2, 2), *cp = with_cp ? rnd(n * u, -1, 1) : NULL, *dhc = rnd(n * 2 * u, -1, 1);
    float *hc1 = zeros(n * 2 * u), *hc2 = zeros(n * 2 * u), *g1 = zeros(n * 4 * u), *g2 = zeros(n * 4 * u);
    float *dz1 = zeros(n * 4 * u), *dz2 = zeros(n * 4 * u), *dc1 = zeros(n * u), *dc2 = zeros(n * u);
    lunet_unary_op act = LUNET_UNARY_TANH, rec = LUNET_UNARY_SIGMOID;
    ck_assert_int_eq(N->lstm_cell(be, hc1, g1, z, cp, n, u, act, rec), 0);
    ck_assert_int_eq(F->lstm_cell(be, hc2, g2, z, cp, n, u, act, rec), 0);
    expect_close(hc2, hc1, n * 2 * u, 1e-7f, 1e-6f, "lstm_cell [h, c]");
    expect_close(g2, g1, n * 4 * u, 1e-7f, 1e-6f, "lstm_cell gates");
    ck_assert_int_eq(N->lstm_cell_backward(be, dz1, cp ? dc1 : NULL, dhc, hc1, g1, cp, n, u, act, rec), 0);
    ck_assert_int_eq(F->lstm_cell_backward(be, dz2, cp ? dc2 : NULL, dhc, hc2, g2, cp, n, u, act, rec), 0);
    expect_close(dz2, dz1, n * 4 * u, 1e-7f, 1e-5f, "lstm_cell dz");
    if (cp) expect_close(dc2, dc1, n * u, 1e-7f, 1e-5f, "lstm_cell dc_prev");
    /* d(sum(hc * dhc))/dz by central differences, row 0 */
    const float eps = 1e-3f;
    for (size_t k = 0; k < 4 * u; k++) {
      float *hp = zeros(2 * u), *hm = zeros(2 * u), *gp = zeros(4 * u), zs = z[k];
      z[k] = zs + eps;
      N->lstm_cell(be, hp, gp, z, cp, 1, u, act, rec);
      z[k] = zs - eps;
      N->lstm_cell(be, hm, gp, z, cp, 1, u, act, rec);
      z[k] = zs;
      double fd = (dot(hp, dhc, 2 * u) - dot(hm, dhc, 2 * u)) / (2.0 * eps);
      expect_true(fabs(fd - dz1[k]) <= 2e-3 + 2e-3 * fabs(fd), "dz[%zu]: analytic %g, finite difference %g", k,
                  (double)dz1[k], fd);
      free(hp), free(hm), free(gp);
    }
    free(z), free(cp), free(dhc), free(hc1), free(hc2), free(g1), free(g2), free(dz1), free(dz2), free(dc1),
        free(dc2);
  }
}
END_TEST

/* The fused GRU cell: fast against naive, and dxs, dhs, dh against central
 * differences of sum(h' * dhn) through the naive forward. */
START_TEST(test_gru_cell_fast_vs_naive_and_fd) {
  const size_t n = 23, u = 17;
  lunet_unary_op act = LUNET_UNARY_TANH, rec = LUNET_UNARY_SIGMOID;
  float *xs = rnd(n * 3 * u, -2, 2), *hs = rnd(n * 3 * u, -2, 2), *h = rnd(n * u, -1, 1), *dhn = rnd(n * u, -1, 1);
  float *o1 = zeros(n * u), *o2 = zeros(n * u), *g1 = zeros(n * 3 * u), *g2 = zeros(n * 3 * u);
  ck_assert_int_eq(N->gru_cell(be, o1, g1, xs, hs, h, n, u, act, rec), 0);
  ck_assert_int_eq(F->gru_cell(be, o2, g2, xs, hs, h, n, u, act, rec), 0);
  expect_close(o2, o1, n * u, 1e-7f, 1e-6f, "gru_cell h'");
  expect_close(g2, g1, n * 3 * u, 1e-7f, 1e-6f, "gru_cell gates");
  float *dx1 = zeros(n * 3 * u), *dx2 = zeros(n * 3 * u), *dq1 = zeros(n * 3 * u), *dq2 = zeros(n * 3 * u);
  float *dh1 = zeros(n * u), *dh2 = zeros(n * u);
  ck_assert_int_eq(N->gru_cell_backward(be, dx1, dq1, dh1, dhn, g1, hs, h, n, u, act, rec), 0);
  ck_assert_int_eq(F->gru_cell_backward(be, dx2, dq2, dh2, dhn, g2, hs, h, n, u, act, rec), 0);
  expect_close(dx2, dx1, n * 3 * u, 1e-7f, 1e-5f, "gru_cell dxs");
  expect_close(dq2, dq1, n * 3 * u, 1e-7f, 1e-5f, "gru_cell dhs");
  expect_close(dh2, dh1, n * u, 1e-7f, 1e-5f, "gru_cell dh");
  const float eps = 1e-3f;
  float *op = zeros(u), *om = zeros(u), *gg = zeros(3 * u);
  float *ins[3] = {xs, hs, h}, *grads[3] = {dx1, dq1, dh1};
  size_t widths[3] = {3 * u, 3 * u, u};
  for (int which = 0; which < 3; which++)
    for (size_t k = 0; k < widths[which]; k++) { /* row 0 */
      float keep = ins[which][k];
      ins[which][k] = keep + eps;
      N->gru_cell(be, op, gg, xs, hs, h, 1, u, act, rec);
      ins[which][k] = keep - eps;
      N->gru_cell(be, om, gg, xs, hs, h, 1, u, act, rec);
      ins[which][k] = keep;
      double fd = (dot(op, dhn, u) - dot(om, dhn, u)) / (2.0 * eps);
      expect_true(fabs(fd - grads[which][k]) <= 2e-3 + 2e-3 * fabs(fd), "input %d [%zu]: analytic %g, finite difference %g",
                  which, k, (double)grads[which][k], fd);
    }
  float *ptrs[] = {xs, hs, h, dhn, o1, o2, g1, g2, dx1, dx2, dq1, dq2, dh1, dh2, op, om, gg};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
}
END_TEST

/* Layer normalization: fast against naive (which writes the chain rule out
 * term by term), and dx, dgamma against central differences. */
START_TEST(test_layernorm_fast_vs_naive_and_fd) {
  const size_t rows = 53, cols = 37;
  const float eps = 1e-5f;
  float *x = rnd(rows * cols, -2, 3), *g = rnd(cols, 0.5f, 1.5f), *b = rnd(cols, -1, 1), *dy = rnd(rows * cols, -1, 1);
  float *y1 = zeros(rows * cols), *y2 = zeros(rows * cols), *m1 = zeros(rows), *m2 = zeros(rows);
  float *r1 = zeros(rows), *r2 = zeros(rows);
  ck_assert_int_eq(N->layernorm(be, y1, m1, r1, x, g, b, rows, cols, eps), 0);
  ck_assert_int_eq(F->layernorm(be, y2, m2, r2, x, g, b, rows, cols, eps), 0);
  expect_close(y2, y1, rows * cols, 1e-6f, 1e-5f, "layernorm y");
  float *dx1 = zeros(rows * cols), *dx2 = zeros(rows * cols), *dg1 = zeros(cols), *dg2 = zeros(cols);
  float *db1 = zeros(cols), *db2 = zeros(cols);
  ck_assert_int_eq(N->layernorm_backward(be, dx1, dg1, db1, dy, x, g, m1, r1, rows, cols), 0);
  ck_assert_int_eq(F->layernorm_backward(be, dx2, dg2, db2, dy, x, g, m2, r2, rows, cols), 0);
  expect_close(dx2, dx1, rows * cols, 1e-5f, 1e-4f, "layernorm dx");
  expect_close(dg2, dg1, cols, 1e-4f, 1e-4f, "layernorm dgamma");
  expect_close(db2, db1, cols, 1e-4f, 1e-4f, "layernorm dbeta");
  /* central differences of sum(y * dy) */
  const float h = 1e-2f;
  float *yp = zeros(rows * cols), *ym = zeros(rows * cols), *mm = zeros(rows), *rr = zeros(rows);
  for (size_t i = 0; i < 40; i++) {
    float keep = x[i * 7];
    x[i * 7] = keep + h;
    F->layernorm(be, yp, mm, rr, x, g, b, rows, cols, eps);
    x[i * 7] = keep - h;
    F->layernorm(be, ym, mm, rr, x, g, b, rows, cols, eps);
    x[i * 7] = keep;
    double fd = (dot(yp, dy, rows * cols) - dot(ym, dy, rows * cols)) / (2.0 * h);
    expect_true(fabs(fd - dx2[i * 7]) <= 2e-3 + 2e-3 * fabs(fd), "dx[%zu]: analytic %g, finite difference %g", i * 7,
                (double)dx2[i * 7], fd);
  }
  for (size_t k = 0; k < cols; k++) {
    float keep = g[k];
    g[k] = keep + h;
    F->layernorm(be, yp, mm, rr, x, g, b, rows, cols, eps);
    g[k] = keep - h;
    F->layernorm(be, ym, mm, rr, x, g, b, rows, cols, eps);
    g[k] = keep;
    double fd = (dot(yp, dy, rows * cols) - dot(ym, dy, rows * cols)) / (2.0 * h);
    expect_true(fabs(fd - dg2[k]) <= 2e-3 + 2e-3 * fabs(fd), "dgamma[%zu]: analytic %g, finite difference %g", k,
                (double)dg2[k], fd);
  }
  float *ptrs[] = {x, g, b, dy, y1, y2, m1, m2, r1, r2, dx1, dx2, dg1, dg2, db1, db2, yp, ym, mm, rr};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
}
END_TEST

static lunet_bcast_desc bcast(int nd, const int64_t *ys, const int64_t *as,
                              const int64_t *bs) {
  lunet_bcast_desc d = {.ndim = nd};
  int64_t sa = 1, sb = 1;
  for (int i = nd - 1; i >= 0; i--) {
    d.shape[i] = ys[i];
    d.a_strides[i] = as[i] == 1 && ys[i] != 1 ? 0 : sa;
    d.b_strides[i] = bs[i] == 1 && ys[i] != 1 ? 0 : sb;
    sa *= as[i];
    sb *= bs[i];
  }
  return d;
}

START_TEST(test_binary_fast_vs_naive) {
  static const int64_t shapes[][3][3] = {
      {{3, 33, 7}, {3, 33, 7}, {3, 33, 7}},     /* same shape */
      {{64, 8, 512}, {64, 8, 512}, {1, 1, 512}}, /* bias row */
      {{5, 1, 7}, {5, 1, 7}, {1, 1, 1}},         /* scalar b */
      {{3, 4, 5}, {1, 1, 1}, {3, 4, 5}},         /* scalar a */
      {{3, 4, 5}, {3, 1, 5}, {1, 4, 5}},         /* both broadcast */
      {{6, 9, 3}, {6, 9, 1}, {6, 9, 3}},         /* column a */
      {{1, 1, 100003}, {1, 1, 100003}, {1, 1, 100003}},
  };
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    lunet_bcast_desc d = bcast(3, shapes[s][0], shapes[s][1], shapes[s][2]);
    size_t ny = shapes[s][0][0] * shapes[s][0][1] * shapes[s][0][2];
    size_t na = shapes[s][1][0] * shapes[s][1][1] * shapes[s][1][2];
    size_t nb = shapes[s][2][0] * shapes[s][2][1] * shapes[s][2][2];
    float *a = rnd(na, 0.1f, 2), *b = rnd(nb, 0.1f, 2);
    for (size_t i = 0; i < nb; i += 3) b[i] = a[i % na]; /* some equal pairs for EQ */
    for (int op = 0; op < LUNET_BINARY_COUNT; op++) {
      float *y1 = zeros(ny), *y2 = zeros(ny);
      char what[64];
      snprintf(what, sizeof what, "binary shape %zu op %d", s, op);
      ck_assert_int_eq(N->binary(be, op, y1, a, b, &d), 0);
      ck_assert_int_eq(F->binary(be, op, y2, a, b, &d), 0);
      expect_close(y2, y1, ny, 0, 0, what);
      free(y1), free(y2);
    }
    free(a), free(b);
  }
  /* the naive reference itself: (2,1) + (1,3) */
  float a[2] = {1, 2}, b[3] = {10, 20, 30}, y[6];
  lunet_bcast_desc d = bcast(2, (int64_t[]){2, 3}, (int64_t[]){2, 1}, (int64_t[]){1, 3});
  float want[6] = {11, 21, 31, 12, 22, 32};
  N->binary(be, LUNET_BINARY_ADD, y, a, b, &d);
  expect_close(y, want, 6, 0, 0, "naive broadcast add");
  F->binary(be, LUNET_BINARY_ADD, y, a, b, &d);
  expect_close(y, want, 6, 0, 0, "fast broadcast add");
}
END_TEST

START_TEST(test_reduce_and_argmax) {
  static const size_t shapes[][3] = {{1, 1, 1},   {7, 33, 1}, {3, 5, 300},
                                     {1, 100003, 1}, {64, 10, 3}, {2, 64, 512}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t o = shapes[s][0], l = shapes[s][1], in = shapes[s][2];
    float *x = rnd(o * l * in, -1, 1);
    for (int op = 0; op < LUNET_REDUCE_COUNT; op++) {
      float *y1 = zeros(o * in), *y2 = zeros(o * in);
      char what[64];
      snprintf(what, sizeof what, "reduce shape %zu op %d", s, op);
      ck_assert_int_eq(N->reduce(be, op, y1, x, o, l, in), 0);
      ck_assert_int_eq(F->reduce(be, op, y2, x, o, l, in), 0);
      expect_close(y2, y1, o * in, 1e-6f, 1e-6f, what);
      free(y1), free(y2);
    }
    float *i1 = zeros(o * l), *i2 = zeros(o * l);
    ck_assert_int_eq(N->argmax(be, i1, x, o * l, in), 0);
    ck_assert_int_eq(F->argmax(be, i2, x, o * l, in), 0);
    expect_close(i2, i1, o * l, 0, 0, "argmax");
    free(i1), free(i2), free(x);
  }
  float x[6] = {1, 5, 5, 2, -1, -3}, y[2], idx[2];
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    ifs[k]->reduce(be, LUNET_REDUCE_MEAN, y, x, 1, 3, 2); /* columns (1,5,-1), (5,2,-3) */
    ck_assert_float_eq_tol(y[0], 5.0f / 3, 1e-6f);
    ck_assert_float_eq_tol(y[1], 4.0f / 3, 1e-6f);
    ifs[k]->argmax(be, idx, x, 2, 3);
    ck_assert(idx[0] == 1.0f && idx[1] == 0.0f); /* first maximum on ties */
  }
}
END_TEST

START_TEST(test_softmax_fast_vs_naive_and_fd) {
  static const size_t shapes[][2] = {{1, 1}, {3, 7}, {64, 10}, {5, 1000}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t r = shapes[s][0], c = shapes[s][1], n = r * c;
    float *x = rnd(n, -5, 5), *dy = rnd(n, -1, 1), *labels = malloc(r * sizeof(float));
    for (size_t i = 0; i < r; i++) labels[i] = (float)((i * 7) % c);
    for (int lg = 0; lg < 2; lg++) {
      float *y1 = zeros(n), *y2 = zeros(n), *d1 = zeros(n), *d2 = zeros(n);
      ck_assert_int_eq(N->softmax(be, lg, y1, x, r, c), 0);
      ck_assert_int_eq(F->softmax(be, lg, y2, x, r, c), 0);
      expect_close(y2, y1, n, 1e-6f, 1e-5f, "softmax");
      ck_assert_int_eq(N->softmax_backward(be, lg, d1, dy, y1, r, c), 0);
      ck_assert_int_eq(F->softmax_backward(be, lg, d2, dy, y2, r, c), 0);
      expect_close(d2, d1, n, 1e-5f, 1e-4f, "softmax backward");
      /* finite differences of L = sum(softmax(x) * dy) on row 0 */
      for (size_t j = 0; j < c && j < 12; j++) {
        float *xp = dup(x, c), *yp = zeros(c);
        double lp, lm;
        xp[j] += 1e-2f;
        N->softmax(be, lg, yp, xp, 1, c);
        lp = dot(yp, dy, c);
        xp[j] -= 2e-2f;
        N->softmax(be, lg, yp, xp, 1, c);
        lm = dot(yp, dy, c);
        float fd = (float)((lp - lm) / 2e-2);
        expect_true(fabsf(fd - d1[j]) <= 2e-3f + 1e-2f * fabsf(fd),
                      "softmax log=%d fd %g analytic %g", lg, (double)fd, (double)d1[j]);
        free(xp), free(yp);
      }
      free(y1), free(y2), free(d1), free(d2);
    }
    float *l1 = zeros(r), *l2 = zeros(r), *g1 = zeros(n), *g2 = zeros(n);
    ck_assert_int_eq(N->softmax_xent(be, l1, g1, x, labels, r, c), 0);
    ck_assert_int_eq(F->softmax_xent(be, l2, g2, x, labels, r, c), 0);
    expect_close(l2, l1, r, 1e-5f, 1e-5f, "xent loss");
    expect_close(g2, g1, n, 1e-6f, 1e-5f, "xent dlogits");
    ck_assert_int_eq(F->softmax_xent(be, l2, NULL, x, labels, r, c), 0);
    expect_close(l2, l1, r, 1e-5f, 1e-5f, "xent loss without dlogits");
    free(l1), free(l2), free(g1), free(g2), free(x), free(dy), free(labels);
  }
}
END_TEST

START_TEST(test_xent_label_errors) {
  float x[40] = {0}, loss[4], labels[4] = {0, 9, 3, 12};
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    ck_assert_int_eq(ifs[k]->softmax_xent(be, loss, NULL, x, labels, 4, 10), LUNET_ERR_ARG);
    ck_assert_str_eq(ifs[k]->last_error(be),
                     "softmax_xent: label 12 at row 3 is outside [0, 10)");
    float frac[4] = {0, 2.5f, 0, 0};
    ck_assert_int_eq(ifs[k]->softmax_xent(be, loss, NULL, x, frac, 4, 10), LUNET_ERR_ARG);
    ck_assert_str_eq(ifs[k]->last_error(be),
                     "softmax_xent: label 2.5 at row 1 is not an integer class id in [0, 10)");
    float neg[1] = {-1};
    ck_assert_int_eq(ifs[k]->softmax_xent(be, loss, NULL, x, neg, 1, 10), LUNET_ERR_ARG);
    ck_assert_str_eq(ifs[k]->last_error(be),
                     "softmax_xent: label -1 at row 0 is outside [0, 10)");
  }
}
END_TEST

START_TEST(test_batchnorm) {
  static const size_t shapes[][2] = {{1, 3}, {7, 3}, {64, 33}, {300, 16}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t r = shapes[s][0], c = shapes[s][1], n = r * c;
    float *x = rnd(n, -2, 3), *g = rnd(c, 0.5f, 1.5f), *b = rnd(c, -1, 1), *dy = rnd(n, -1, 1);
    float *y1 = zeros(n), *y2 = zeros(n), *m1 = zeros(c), *m2 = zeros(c), *i1 = zeros(c),
          *i2 = zeros(c);
    float *rm1 = rnd(c, -1, 1), *rv1 = rnd(c, 0.5f, 2), *rm2 = dup(rm1, c), *rv2 = dup(rv1, c);
    float *rm0 = dup(rm1, c), *rv0 = dup(rv1, c);
    ck_assert_int_eq(N->batchnorm(be, true, y1, m1, i1, rm1, rv1, x, g, b, r, c, 0.99f, 1e-3f), 0);
    ck_assert_int_eq(F->batchnorm(be, true, y2, m2, i2, rm2, rv2, x, g, b, r, c, 0.99f, 1e-3f), 0);
    expect_close(y2, y1, n, 1e-5f, 1e-5f, "batchnorm y");
    expect_close(m2, m1, c, 1e-6f, 1e-5f, "batchnorm mean");
    expect_close(i2, i1, c, 1e-6f, 1e-5f, "batchnorm invstd");
    expect_close(rm2, rm1, c, 1e-6f, 1e-5f, "batchnorm running mean");
    expect_close(rv2, rv1, c, 1e-6f, 1e-5f, "batchnorm running var");
    /* the reference's statistics from scratch, channel 0 */
    double mu = 0, var = 0;
    for (size_t k = 0; k < r; k++) mu += x[k * c];
    mu /= (double)r;
    for (size_t k = 0; k < r; k++) var += (x[k * c] - mu) * (x[k * c] - mu);
    var /= (double)r;
    ck_assert_double_eq_tol(m1[0], mu, 1e-5);
    ck_assert_double_eq_tol(i1[0], 1.0 / sqrt(var + 1e-3), 1e-4);
    ck_assert_double_eq_tol(rm1[0], rm0[0] * 0.99 + mu * 0.01, 1e-5);
    ck_assert_double_eq_tol(rv1[0], rv0[0] * 0.99 + var * 0.01, 1e-5);
    /* inference uses the running stats */
    ck_assert_int_eq(N->batchnorm(be, false, y1, NULL, NULL, rm1, rv1, x, g, b, r, c, 0.99f, 1e-3f), 0);
    ck_assert_int_eq(F->batchnorm(be, false, y2, NULL, NULL, rm1, rv1, x, g, b, r, c, 0.99f, 1e-3f), 0);
    expect_close(y2, y1, n, 1e-5f, 1e-5f, "batchnorm inference");
    ck_assert_float_eq_tol(y1[0], g[0] * (x[0] - rm1[0]) / sqrtf(rv1[0] + 1e-3f) + b[0], 1e-5f);
    /* backward */
    float *dx1 = zeros(n), *dx2 = zeros(n), *dg1 = zeros(c), *dg2 = zeros(c), *db1 = zeros(c),
          *db2 = zeros(c);
    ck_assert_int_eq(N->batchnorm_backward(be, dx1, dg1, db1, dy, x, g, m1, i1, r, c), 0);
    ck_assert_int_eq(F->batchnorm_backward(be, dx2, dg2, db2, dy, x, g, m1, i1, r, c), 0);
    expect_close(dx2, dx1, n, 1e-5f, 1e-4f, "batchnorm dx");
    expect_close(dg2, dg1, c, 1e-5f, 1e-5f, "batchnorm dgamma");
    expect_close(db2, db1, c, 1e-5f, 1e-5f, "batchnorm dbeta");
    if (r > 1) { /* finite differences of L = sum(bn(x) * dy) */
      float *yy = zeros(n), *sm = zeros(c), *si = zeros(c);
      for (size_t t = 0; t < 10; t++) {
        size_t k = (t * 37) % n;
        float keep = x[k];
        double lp, lm;
        x[k] = keep + 1e-2f;
        N->batchnorm(be, true, yy, sm, si, NULL, NULL, x, g, b, r, c, 0.99f, 1e-3f);
        lp = dot(yy, dy, n);
        x[k] = keep - 1e-2f;
        N->batchnorm(be, true, yy, sm, si, NULL, NULL, x, g, b, r, c, 0.99f, 1e-3f);
        lm = dot(yy, dy, n);
        x[k] = keep;
        float fd = (float)((lp - lm) / 2e-2);
        expect_true(fabsf(fd - dx1[k]) <= 5e-3f + 1e-2f * fabsf(fd),
                      "batchnorm dx[%zu] fd %g analytic %g", k, (double)fd, (double)dx1[k]);
      }
      float keep = g[0];
      double lp, lm;
      g[0] = keep + 1e-2f;
      N->batchnorm(be, true, yy, sm, si, NULL, NULL, x, g, b, r, c, 0.99f, 1e-3f);
      lp = dot(yy, dy, n);
      g[0] = keep - 1e-2f;
      N->batchnorm(be, true, yy, sm, si, NULL, NULL, x, g, b, r, c, 0.99f, 1e-3f);
      lm = dot(yy, dy, n);
      g[0] = keep;
      ck_assert_double_eq_tol((lp - lm) / 2e-2, dg1[0], 5e-3 + 1e-2 * fabs(dg1[0]));
      double sdy = 0;
      for (size_t k = 0; k < r; k++) sdy += dy[k * c];
      ck_assert_double_eq_tol(db1[0], sdy, 1e-5);
      free(yy), free(sm), free(si);
    }
    free(x), free(g), free(b), free(dy), free(y1), free(y2), free(m1), free(m2), free(i1);
    free(i2), free(rm1), free(rv1), free(rm2), free(rv2), free(rm0), free(rv0);
    free(dx1), free(dx2), free(dg1), free(dg2), free(db1), free(db2);
  }
}
END_TEST

/* L(x) = sum(conv(x, w) * r) for the finite differences; naive forward. */
static double conv_loss(const float *x, const float *w, const float *r,
                        const lunet_conv2d_desc *d) {
  size_t ny = d->n * d->oh * d->ow * d->f;
  float *y = zeros(ny);
  N->conv2d(be, y, x, w, NULL, d);
  double l = dot(y, r, ny);
  free(y);
  return l;
}

START_TEST(test_conv_gradients_fd) {
  static const size_t picks[] = {1, 2, 3, 4, 7};
  for (size_t p = 0; p < sizeof picks / sizeof picks[0]; p++) {
    lunet_conv2d_desc d = conv_desc(conv_cases[picks[p]]);
    size_t nx = d.n * d.h * d.w * d.c, nw = d.kh * d.kw * d.c * d.f,
           ny = d.n * d.oh * d.ow * d.f;
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *r = rnd(ny, -1, 1);
    float *dx = zeros(nx), *dw = zeros(nw), *db = zeros(d.f);
    ck_assert_int_eq(N->conv2d_backward_data(be, dx, r, w, &d), 0);
    ck_assert_int_eq(N->conv2d_backward_filter(be, dw, db, r, x, &d), 0);
    const float eps = 1e-2f;
    for (size_t t = 0; t < 25; t++) {
      size_t k = (t * 7919) % nx;
      float keep = x[k];
      x[k] = keep + eps;
      double lp = conv_loss(x, w, r, &d);
      x[k] = keep - eps;
      double lm = conv_loss(x, w, r, &d);
      x[k] = keep;
      float fd = (float)((lp - lm) / (2 * eps));
      expect_true(fabsf(fd - dx[k]) <= 2e-3f + 2e-3f * fabsf(fd),
                    "conv case %zu dx[%zu]: fd %g analytic %g", picks[p], k, (double)fd,
                    (double)dx[k]);
      size_t q = (t * 104729) % nw;
      keep = w[q];
      w[q] = keep + eps;
      lp = conv_loss(x, w, r, &d);
      w[q] = keep - eps;
      lm = conv_loss(x, w, r, &d);
      w[q] = keep;
      fd = (float)((lp - lm) / (2 * eps));
      expect_true(fabsf(fd - dw[q]) <= 2e-3f + 2e-3f * fabsf(fd),
                    "conv case %zu dw[%zu]: fd %g analytic %g", picks[p], q, (double)fd,
                    (double)dw[q]);
    }
    double sr = 0; /* dL/db = sum of r over each filter */
    for (size_t i = 0; i < ny; i += d.f) sr += r[i];
    ck_assert_double_eq_tol(db[0], sr, 1e-4);
    free(x), free(w), free(r), free(dx), free(dw), free(db);
  }
}
END_TEST

START_TEST(test_pool_gradients_fd) {
  for (size_t i = 0; i < NPOOL; i++) {
    lunet_pool2d_desc d = pool_desc(pool_cases[i]);
    size_t nx = d.n * d.h * d.w * d.c, ny = d.n * d.oh * d.ow * d.c;
    float *x = distinct(nx), *r = rnd(ny, -1, 1), *y = zeros(ny), *dx = zeros(nx);
    for (int mode = 0; mode < 2; mode++) {
      N->pool2d(be, mode, y, x, &d);
      ck_assert_int_eq(N->pool2d_backward(be, mode, dx, r, x, y, &d), 0);
      for (size_t t = 0; t < 30; t++) {
        size_t k = (t * 7919) % nx;
        float keep = x[k];
        x[k] = keep + 1e-3f;
        N->pool2d(be, mode, y, x, &d);
        double lp = dot(y, r, ny);
        x[k] = keep - 1e-3f;
        N->pool2d(be, mode, y, x, &d);
        double lm = dot(y, r, ny);
        x[k] = keep;
        float fd = (float)((lp - lm) / 2e-3);
        expect_true(fabsf(fd - dx[k]) <= 5e-3f + 5e-3f * fabsf(fd),
                      "pool case %zu mode %d dx[%zu]: fd %g analytic %g", i, mode, k,
                      (double)fd, (double)dx[k]);
      }
    }
    free(x), free(r), free(y), free(dx);
  }
}
END_TEST

/* ---- optimizers against the scalar formulas ---- */

START_TEST(test_optimizers) {
  const size_t n = 50001;
  float *p0 = rnd(n, -1, 1), *g = rnd(n, -1, 1), *s10 = rnd(n, -0.1f, 0.1f),
        *s20 = rnd(n, 0, 0.1f);
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    for (int variant = 0; variant < 4; variant++) {
      /* SGD: plain, momentum, nesterov, nesterov + weight decay */
      float *p = dup(p0, n), *v = dup(s10, n);
      float lr = 0.05f, mom = variant ? 0.9f : 0.0f, wd = variant == 3 ? 0.01f : 0.0f;
      bool nest = variant >= 2;
      ck_assert_int_eq(ifs[k]->sgd_update(be, p, g, variant ? v : NULL, n, lr, mom, nest, wd), 0);
      for (size_t i = 0; i < n; i += 97) {
        double pp = p0[i], vv = s10[i];
        if (wd > 0) pp -= (double)lr * wd * pp;
        if (!variant) pp -= (double)lr * g[i];
        else {
          vv = mom * vv - (double)lr * g[i];
          pp += nest ? mom * vv - (double)lr * g[i] : vv;
          expect_true(fabs(v[i] - vv) < 1e-6, "sgd %d velocity[%zu]", variant, i);
        }
        expect_true(fabs(p[i] - pp) < 1e-6, "sgd %d p[%zu] %g want %g", variant, i, p[i], pp);
      }
      free(p), free(v);
    }
    for (int wdv = 0; wdv < 2; wdv++) { /* Adam and AdamW at step 3 */
      float *p = dup(p0, n), *m = dup(s10, n), *v = dup(s20, n);
      float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-7f, wd = wdv ? 0.004f : 0.0f;
      ck_assert_int_eq(ifs[k]->adam_update(be, p, g, m, v, n, lr, b1, b2, eps, wd, 3), 0);
      double alpha = lr * sqrt(1 - pow(b2, 3)) / (1 - pow(b1, 3));
      for (size_t i = 0; i < n; i += 97) {
        double pp = p0[i], mm = b1 * (double)s10[i] + (1 - b1) * (double)g[i];
        double vv = b2 * (double)s20[i] + (1 - b2) * (double)g[i] * g[i];
        if (wd > 0) pp -= (double)lr * wd * pp;
        pp -= alpha * mm / (sqrt(vv) + eps);
        expect_true(fabs(m[i] - mm) < 1e-6 && fabs(v[i] - vv) < 1e-6, "adam m/v[%zu]", i);
        expect_true(fabs(p[i] - pp) < 1e-5, "adam wd=%d p[%zu] %g want %g", wdv, i, p[i], pp);
      }
      free(p), free(m), free(v);
    }
    for (int mv = 0; mv < 2; mv++) { /* RMSprop with and without momentum */
      float *p = dup(p0, n), *ms = dup(s20, n), *mo = dup(s10, n);
      float lr = 0.001f, rho = 0.9f, mom = mv ? 0.5f : 0.0f, eps = 1e-7f;
      ck_assert_int_eq(ifs[k]->rmsprop_update(be, p, g, ms, mv ? mo : NULL, n, lr, rho, mom, eps), 0);
      for (size_t i = 0; i < n; i += 97) {
        double s = rho * (double)s20[i] + (1 - rho) * (double)g[i] * g[i];
        double inc = lr * (double)g[i] / sqrt(s + eps), pp = p0[i];
        if (mv) {
          double o = mom * (double)s10[i] + inc;
          expect_true(fabs(mo[i] - o) < 1e-6, "rmsprop momentum[%zu]", i);
          pp -= o;
        } else {
          pp -= inc;
        }
        expect_true(fabs(ms[i] - s) < 1e-6, "rmsprop ms[%zu]", i);
        expect_true(fabs(p[i] - pp) < 1e-5, "rmsprop mom=%d p[%zu] %g want %g", mv, i, p[i], pp);
      }
      free(p), free(ms), free(mo);
    }
  }
  free(p0), free(g), free(s10), free(s20);
}
END_TEST

/* ABI 2.6 update_multi: each configuration of test_optimizers over tensors
 * whose run crosses the thread chunks' edges (2 threads): the same bits as
 * the single op on each tensor, fast and naive (the naive one's is a loop
 * over its single ops), and fast within rounding of naive. */
START_TEST(test_update_multi) {
  enum { T = 6 };
  const size_t n[T] = {1, 16390, 5, 0, 40000, 3};
  size_t total = 0;
  for (int t = 0; t < T; t++) total += n[t];
  float *p0 = rnd(total, -1, 1), *g0 = rnd(total, -1, 1), *a0 = rnd(total, -0.1f, 0.1f), *b0 = rnd(total, 0, 0.1f);
  const lunet_backend_i *ifs[2] = {N, F};
  for (size_t c = 0; c < NUPDATE_CASES; c++) {
    const lunet_update_desc *u = &update_cases[c];
    bool has1 = u->kind != LUNET_UPDATE_SGD || u->momentum > 0, has2 = u->kind != LUNET_UPDATE_SGD;
    float *res[2][2][3]; /* [backend][multi][p, s1, s2] */
    for (int k = 0; k < 2; k++)
      for (int multi = 0; multi < 2; multi++) {
        float *p = dup(p0, total), *s1 = dup(a0, total), *s2 = dup(b0, total);
        lunet_buf hp[T], hs1[T], hs2[T];
        lunet_cbuf hg[T];
        size_t at = 0;
        for (int t = 0; t < T; t++) {
          hp[t] = p + at, hg[t] = g0 + at, hs1[t] = s1 + at, hs2[t] = s2 + at;
          at += n[t];
        }
        if (multi) {
          ck_assert_int_eq(ifs[k]->update_multi(be, u, T, hp, hg, has1 ? hs1 : NULL, has2 ? hs2 : NULL, n), 0);
        } else {
          for (int t = 0; t < T; t++) {
            lunet_buf a = has1 ? hs1[t] : NULL, b = has2 ? hs2[t] : NULL;
            int rc = u->kind == LUNET_UPDATE_SGD
                         ? ifs[k]->sgd_update(be, hp[t], hg[t], a, n[t], u->lr, u->momentum, u->nesterov,
                                              u->weight_decay)
                     : u->kind == LUNET_UPDATE_ADAM
                         ? ifs[k]->adam_update(be, hp[t], hg[t], a, b, n[t], u->lr, u->beta1, u->beta2,
                                               u->epsilon, u->weight_decay, u->step)
                         : ifs[k]->rmsprop_update(be, hp[t], hg[t], a, b, n[t], u->lr, u->rho, u->momentum,
                                                  u->epsilon);
            ck_assert_int_eq(rc, 0);
          }
        }
        res[k][multi][0] = p, res[k][multi][1] = s1, res[k][multi][2] = s2;
      }
    for (int k = 0; k < 2; k++)
      for (int w = 0; w < 3; w++)
        expect_true(!memcmp(res[k][1][w], res[k][0][w], total * sizeof(float)),
                    "case %zu, %s: update_multi's %s differs from the single op's", c, k ? "fast" : "naive",
                    w == 0 ? "weights" : w == 1 ? "first state" : "second state");
    expect_close(res[1][1][0], res[0][0][0], total, 1e-6f, 1e-6f, "update_multi fast against naive");
    expect_true(memcmp(res[1][1][0], p0, total * sizeof(float)) != 0, "case %zu changed the weights", c);
    for (int k = 0; k < 2; k++)
      for (int m = 0; m < 2; m++)
        for (int w = 0; w < 3; w++) free(res[k][m][w]);
  }
  /* Adam without its states, and step 0, are errors naming the op */
  const lunet_update_desc adam = {.kind = LUNET_UPDATE_ADAM, .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .step = 0};
  lunet_buf hp = p0;
  lunet_cbuf hg = g0;
  ck_assert_int_ne(F->update_multi(be, &adam, 1, &hp, &hg, &hp, &hp, n), 0);
  ck_assert_ptr_nonnull(strstr(F->last_error(be), "step is 0"));
  free(p0), free(g0), free(a0), free(b0);
}
END_TEST

/* ---- data movement ---- */

START_TEST(test_cast_fill_copy_gather) {
  float fx[6] = {-3.7f, 0.4f, 0.5f, 254.6f, 300.0f, NAN};
  uint8_t u8[6];
  int32_t i32[6];
  uint8_t u8_want[6] = {0, 0, 1, 255, 255, 0};
  int32_t i32_want[6] = {-3, 0, 0, 254, 300, 0};
  const lunet_backend_i *ifs[2] = {N, F};
  for (int k = 0; k < 2; k++) {
    ck_assert_int_eq(ifs[k]->cast(be, u8, LUNET_U8, fx, LUNET_F32, 6), 0);
    ck_assert_mem_eq(u8, u8_want, 6);
    ck_assert_int_eq(ifs[k]->cast(be, i32, LUNET_I32, fx, LUNET_F32, 6), 0);
    ck_assert_mem_eq(i32, i32_want, sizeof i32_want);
    float back[6];
    ck_assert_int_eq(ifs[k]->cast(be, back, LUNET_F32, u8, LUNET_U8, 6), 0);
    ck_assert(back[2] == 1.0f && back[3] == 255.0f);
    int32_t wide[3] = {-5, 77, 1000};
    ck_assert_int_eq(ifs[k]->cast(be, u8, LUNET_U8, wide, LUNET_I32, 3), 0);
    ck_assert(u8[0] == 0 && u8[1] == 77 && u8[2] == 255);
    ck_assert_int_eq(ifs[k]->cast(be, i32, LUNET_I32, u8, LUNET_U8, 3), 0);
    ck_assert(i32[0] == 0 && i32[1] == 77 && i32[2] == 255);
    ck_assert_int_eq(ifs[k]->cast(be, back, LUNET_F32, wide, LUNET_I32, 3), 0);
    ck_assert(back[0] == -5.0f && back[2] == 1000.0f);
  }
  /* large cast, fast vs naive */
  size_t n = 70001;
  float *big = rnd(n, -20, 300);
  uint8_t *b1 = malloc(n), *b2 = malloc(n);
  N->cast(be, b1, LUNET_U8, big, LUNET_F32, n);
  F->cast(be, b2, LUNET_U8, big, LUNET_F32, n);
  ck_assert_mem_eq(b1, b2, n);
  free(b1), free(b2);
  /* fill */
  float *y1 = zeros(n), *y2 = zeros(n);
  N->fill(be, y1, -1.5f, n);
  F->fill(be, y2, -1.5f, n);
  expect_close(y2, y1, n, 0, 0, "fill");
  ck_assert(y2[n - 1] == -1.5f);
  /* strided copy: permute (2,3,4) -> (4,2,3), and a slice with offset */
  float x[24], p1[24], p2[24];
  for (int i = 0; i < 24; i++) x[i] = (float)i;
  lunet_strided_desc d = {.ndim = 3, .elem_size = 4, .shape = {4, 2, 3},
                          .x_strides = {1, 12, 4}, .y_strides = {6, 3, 1}};
  ck_assert_int_eq(N->strided_copy(be, p1, x, &d), 0);
  ck_assert_int_eq(F->strided_copy(be, p2, x, &d), 0);
  ck_assert_mem_eq(p1, p2, sizeof p1);
  ck_assert(p1[1] == 4.0f && p1[3] == 12.0f && p1[6] == 1.0f); /* y[0,0,1]=x[0,1,0] */
  lunet_strided_desc sl = {.ndim = 2, .elem_size = 4, .shape = {2, 2},
                           .x_strides = {4, 2}, .y_strides = {2, 1}, .x_offset = 5,
                           .y_offset = 1};
  memset(p1, 0, sizeof p1);
  memset(p2, 0, sizeof p2);
  N->strided_copy(be, p1, x, &sl);
  F->strided_copy(be, p2, x, &sl);
  float sl_want[5] = {0, 5, 7, 9, 11};
  expect_close(p1, sl_want, 5, 0, 0, "naive slice");
  expect_close(p2, sl_want, 5, 0, 0, "fast slice");
  /* bytes: reverse 7 bytes; and a big contiguous copy */
  uint8_t bx[7] = {1, 2, 3, 4, 5, 6, 7}, by1[7], by2[7];
  lunet_strided_desc rv = {.ndim = 1, .elem_size = 1, .shape = {7}, .x_strides = {-1},
                           .y_strides = {1}, .x_offset = 6};
  N->strided_copy(be, by1, bx, &rv);
  F->strided_copy(be, by2, bx, &rv);
  ck_assert(by1[0] == 7 && by1[6] == 1);
  ck_assert_mem_eq(by1, by2, 7);
  float *src = rnd(n, -1, 1);
  lunet_strided_desc flat = {.ndim = 2, .elem_size = 4, .shape = {7, 10000},
                             .x_strides = {10000, 1}, .y_strides = {10000, 1}};
  F->strided_copy(be, y2, src, &flat);
  ck_assert_mem_eq(y2, src, 70000 * sizeof(float));
  /* gather rows */
  int64_t idx[5] = {3, 0, 3, 6, 1};
  float g1[5 * 10000], g2[5 * 10000];
  N->gather_rows(be, g1, src, idx, 5, 10000 * sizeof(float));
  F->gather_rows(be, g2, src, idx, 5, 10000 * sizeof(float));
  ck_assert_mem_eq(g1, g2, sizeof g1);
  ck_assert(g1[10000] == src[0] && g1[3 * 10000 + 5] == src[6 * 10000 + 5]);
  free(big), free(y1), free(y2), free(src);
}
END_TEST

START_TEST(test_dropout_and_resample) {
  size_t n = 100003;
  float *m1 = zeros(n), *m2 = zeros(n);
  ck_assert_int_eq(N->dropout_mask(be, m1, n, 0.25f, 42, 1000), 0);
  ck_assert_int_eq(F->dropout_mask(be, m2, n, 0.25f, 42, 1000), 0);
  ck_assert_mem_eq(m1, m2, n * sizeof(float));
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    expect_true(m1[i] == 0.0f || m1[i] == 1.0f / 0.75f, "mask[%zu] = %g", i, (double)m1[i]);
    kept += m1[i] != 0.0f;
    bool keep = lunet_philox_uniform(42, 1000 + i) >= 0.25f;
    expect_true(keep == (m1[i] != 0.0f), "mask[%zu] disagrees with philox", i);
  }
  ck_assert_msg(kept > 73000 && kept < 77000, "kept %zu of %zu at rate 0.25", kept, n);
  ck_assert_int_eq(F->dropout_mask(be, m1, 10, 1.5f, 1, 0), LUNET_ERR_ARG);
  ck_assert_str_eq(F->last_error(be), "dropout_mask: rate 1.5 is outside [0, 1]");
  free(m1), free(m2);
  /* resample: 3 samples 9x7x3 -> 8x8, against lunet_resample_one */
  size_t h = 9, w = 7, c = 3, oh = 8, ow = 8;
  float *x = rnd(3 * h * w * c, 0, 1), *y1 = zeros(3 * oh * ow * c),
        *y2 = zeros(3 * oh * ow * c), *y3 = zeros(3 * oh * ow * c);
  float mats[18] = {1, 0, 0.5f, 0, 1, -0.25f, -1, 0, 6, 0, 1, 0, 0.9f, 0.2f, -1, -0.1f, 1.1f, 2};
  for (int mode = 0; mode < 4; mode++) {
    N->affine_resample(be, y1, x, mats, 3, h, w, c, oh, ow, mode, 0.5f);
    F->affine_resample(be, y2, x, mats, 3, h, w, c, oh, ow, mode, 0.5f);
    for (int i = 0; i < 3; i++)
      lunet_resample_one(y3 + i * oh * ow * c, x + i * h * w * c, mats + 6 * i, h, w, c, oh,
                         ow, mode, 0.5f);
    ck_assert_mem_eq(y1, y3, 3 * oh * ow * c * sizeof(float));
    ck_assert_mem_eq(y2, y3, 3 * oh * ow * c * sizeof(float));
  }
  free(x), free(y1), free(y2), free(y3);
}
END_TEST

/* ---- determinism ---- */

START_TEST(test_determinism) {
  lunet_conv2d_desc d = conv_desc((conv_case){8, 15, 15, 32, 64, 3, 3, 1, 1, 0});
  size_t nx = d.n * d.h * d.w * d.c, nw = d.kh * d.kw * d.c * d.f,
         ny = d.n * d.oh * d.ow * d.f;
  float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *dy = rnd(ny, -1, 1);
  float *outs[2][4];
  for (int run = 0; run < 2; run++) {
    float *y = zeros(ny), *dx = zeros(nx), *dw = zeros(nw), *db = zeros(d.f);
    ck_assert_int_eq(F->conv2d(be, y, x, w, NULL, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_data(be, dx, dy, w, &d), 0);
    ck_assert_int_eq(F->conv2d_backward_filter(be, dw, db, dy, x, &d), 0);
    outs[run][0] = y, outs[run][1] = dx, outs[run][2] = dw, outs[run][3] = db;
  }
  ck_assert_mem_eq(outs[0][0], outs[1][0], ny * sizeof(float));
  ck_assert_mem_eq(outs[0][1], outs[1][1], nx * sizeof(float));
  ck_assert_mem_eq(outs[0][2], outs[1][2], nw * sizeof(float));
  ck_assert_mem_eq(outs[0][3], outs[1][3], d.f * sizeof(float));
  float r1[64], r2[64];
  F->reduce(be, LUNET_REDUCE_SUM, r1, dy, 1, ny / 64, 64);
  F->reduce(be, LUNET_REDUCE_SUM, r2, dy, 1, ny / 64, 64);
  ck_assert_mem_eq(r1, r2, sizeof r1);
  for (int run = 0; run < 2; run++)
    for (int k = 0; k < 4; k++) free(outs[run][k]);
  free(x), free(w), free(dy);
}
END_TEST

/* Many short regions back to back, with thread-count changes in between:
 * the pool must neither lose nor repeat a chunk. */
START_TEST(test_pool_stress) {
  const size_t rows = 64, cols = 512;
  float *x = rnd(rows * cols, -1, 1), want[512], got[512];
  N->reduce(be, LUNET_REDUCE_SUM, want, x, 1, rows, cols);
  for (int round = 0; round < 3000; round++) {
    if (round % 1000 == 999) ck_assert_int_eq(F->set_threads(be, 1 + round / 1000), 0);
    memset(got, 0, sizeof got);
    F->reduce(be, LUNET_REDUCE_SUM, got, x, 1, rows, cols);
    if (memcmp(got, want, sizeof got) != 0) {
      expect_close(got, want, cols, 1e-5f, 1e-5f, "stress reduce");
    }
  }
  float *y = zeros(200000);
  for (int round = 0; round < 500; round++) {
    F->fill(be, y, (float)round, 200000);
    expect_true(y[0] == (float)round && y[199999] == (float)round && y[100000] == (float)round,
                "fill round %d", round);
  }
  free(x), free(y);
}
END_TEST

START_TEST(test_bad_geometry) {
  lunet_conv2d_desc d = conv_desc((conv_case){1, 3, 3, 1, 1, 3, 3, 1, 1, 0});
  d.sh = 0;
  float x[9] = {0}, w[9] = {0}, y[9];
  ck_assert_int_eq(F->conv2d(be, y, x, w, NULL, &d), LUNET_ERR_SHAPE);
  ck_assert_msg(strstr(F->last_error(be), "conv2d: bad geometry") == F->last_error(be),
                "message: %s", F->last_error(be));
  ck_assert_int_eq(N->conv2d(be, y, x, w, NULL, &d), LUNET_ERR_SHAPE);
  ck_assert_int_eq(F->unary(be, LUNET_UNARY_COUNT, 0, 0, y, x, 1), LUNET_ERR_ARG);
  char want[64];
  snprintf(want, sizeof want, "unary: unknown op %d", (int)LUNET_UNARY_COUNT);
  ck_assert_str_eq(F->last_error(be), want);
}
END_TEST

static Suite *cpu_suite(void) {
  Suite *s = suite_create("cpu_backend");
  TCase *tc = tcase_create("ops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_descriptor);
  tcase_add_test(tc, test_tanh_accuracy);
  tcase_add_test(tc, test_lstm_cell_fast_vs_naive_and_fd);
  tcase_add_test(tc, test_layernorm_fast_vs_naive_and_fd);
  tcase_add_test(tc, test_gru_cell_fast_vs_naive_and_fd);
  tcase_add_test(tc, test_describe_and_threads);
  tcase_add_test(tc, test_memory);
  tcase_add_test(tc, test_conv_known);
  tcase_add_test(tc, test_pool_known);
  tcase_add_test(tc, test_softmax_known);
  tcase_add_test(tc, test_adam_known);
  tcase_add_test(tc, test_update_multi);
  tcase_add_test(tc, test_gemm_relu_mask);
  tcase_add_test(tc, test_conv_fast_vs_naive);
  tcase_add_test(tc, test_pool_fast_vs_naive);
  tcase_add_test(tc, test_max_pool_relu);
  tcase_add_test(tc, test_linear);
  tcase_add_test(tc, test_gemm_fast_vs_naive);
  tcase_add_test(tc, test_bf16_round);
  tcase_add_test(tc, test_conv_bf16_fast_vs_naive);
  tcase_add_test(tc, test_gemm_bf16_fast_vs_naive);
  tcase_add_test(tc, test_bf16_native_flag);
  tcase_add_test(tc, test_unary_fast_vs_naive_and_fd);
  tcase_add_test(tc, test_binary_fast_vs_naive);
  tcase_add_test(tc, test_reduce_and_argmax);
  tcase_add_test(tc, test_softmax_fast_vs_naive_and_fd);
  tcase_add_test(tc, test_xent_label_errors);
  tcase_add_test(tc, test_batchnorm);
  tcase_add_test(tc, test_conv_gradients_fd);
  tcase_add_test(tc, test_pool_gradients_fd);
  tcase_add_test(tc, test_optimizers);
  tcase_add_test(tc, test_cast_fill_copy_gather);
  tcase_add_test(tc, test_dropout_and_resample);
  tcase_add_test(tc, test_determinism);
  tcase_add_test(tc, test_pool_stress);
  tcase_add_test(tc, test_bad_geometry);
  suite_add_tcase(s, tc);
  return s;
}

int main(int argc, char **argv) {
#ifdef LUNET_CPU_MODULE
  module_path = LUNET_CPU_MODULE;
#endif
  if (argc > 1) module_path = argv[1];
  if (!module_path) {
    fprintf(stderr, "usage: %s path/to/cpu.so\n", argv[0]);
    return 2;
  }
  void *h = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "cannot load %s: %s\n", module_path, dlerror());
    return 1;
  }
  lunet_backend_entry_fn entry = (lunet_backend_entry_fn)dlsym(h, LUNET_BACKEND_ENTRY_NAME);
  const lunet_backend_i *(*naive)(void) =
      (const lunet_backend_i *(*)(void))dlsym(h, "lunet_cpu_naive_iface");
  if (!entry || !naive) {
    fprintf(stderr, "%s lacks lunet_backend_entry or lunet_cpu_naive_iface\n", module_path);
    return 1;
  }
  desc = entry();
  naive_iface = naive();
  SRunner *sr = srunner_create(cpu_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
