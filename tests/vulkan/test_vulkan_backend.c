/*
 * The Vulkan backend against the CPU backend's naive reference: every op of
 * lunet_backend_i on random data over several shapes, odd sizes that do not
 * fill a workgroup included, with per-op tolerances; the ops the Vulkan
 * backend leaves NULL are printed as "unsupported: <op>".  The validation
 * layer is on (LUNET_VULKAN_VALIDATION=1) and must report nothing.
 *
 * Usage: test_vulkan_backend path/to/cpu.so path/to/vulkan.so
 * Exits 77 (ctest's skip) when there is no Vulkan device.
 */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lunet/backend.h"
#include "../update_cases.h"

#define SKIP_CODE 77

static const lunet_backend_desc *cdesc, *vdesc;
static lunet_backend *cbe, *vbe;
static const lunet_backend_i *C; /* the CPU's naive reference */
static const lunet_backend_i *V;
static int (*validation_count)(lunet_backend *);

/* ---- helpers ---- */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

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

static void *zalloc(size_t bytes) { return calloc(bytes ? bytes : 1, 1); }

static void vok(int rc, const char *what) {
  if (rc) ck_abort_msg("%s: status %d: %s", what, rc, V->last_error(vbe));
}

/* A device buffer holding `bytes` of p (or zeros). */
static lunet_buf vup(const void *p, size_t bytes) {
  lunet_buf b = V->buffer_alloc(vbe, bytes ? bytes : 4);
  ck_assert_msg(b != NULL, "buffer_alloc(%zu): %s", bytes, V->last_error(vbe));
  if (!p) {
    void *z = zalloc(bytes);
    vok(V->buffer_upload(vbe, b, 0, z, bytes), "upload");
    free(z);
  } else if (bytes) {
    vok(V->buffer_upload(vbe, b, 0, p, bytes), "upload");
  }
  return b;
}

static void *vdown(lunet_cbuf b, size_t bytes) {
  void *p = zalloc(bytes);
  vok(V->synchronize(vbe), "synchronize");
  if (bytes) vok(V->buffer_download(vbe, b, 0, p, bytes), "download");
  return p;
}

static void vfree(lunet_buf b) { V->buffer_free(vbe, b); }

/* |got - want| <= atol + rtol*|want| everywhere; names the first miss. */
static void expect_close(const float *got, const float *want, size_t n, float atol,
                         float rtol, const char *what) {
  for (size_t i = 0; i < n; i++) {
    float diff = fabsf(got[i] - want[i]);
    if (got[i] == want[i] || diff <= atol + rtol * fabsf(want[i]) || (isnan(got[i]) && isnan(want[i]))) continue;
    ck_abort_msg("%s: element %zu of %zu is %.9g, expected %.9g", what, i, n,
                 (double)got[i], (double)want[i]);
  }
}

/* The device's copy of `n` floats in b, held against want. */
static void expect_dev(lunet_cbuf b, const float *want, size_t n, float atol, float rtol,
                       const char *what) {
  float *got = vdown(b, n * sizeof(float));
  expect_close(got, want, n, atol, rtol, what);
  free(got);
}

static void expect_bytes(lunet_cbuf b, const void *want, size_t bytes, const char *what) {
  unsigned char *got = vdown(b, bytes);
  for (size_t i = 0; i < bytes; i++)
    if (got[i] != ((const unsigned char *)want)[i])
      ck_abort_msg("%s: byte %zu is %u, expected %u", what, i, got[i],
                   ((const unsigned char *)want)[i]);
  free(got);
}

static const size_t odd_sizes[] = {1, 3, 17, 65, 257, 4099};
#define NODD (sizeof odd_sizes / sizeof odd_sizes[0])

/* ---- the op list: every member of lunet_backend_i ---- */

typedef struct op_entry {
  const char *name;
  size_t offset;
} op_entry;

#define OP(name) {#name, offsetof(lunet_backend_i, name)}
static const op_entry all_ops[] = {
    OP(last_error),     OP(describe),        OP(set_threads),
    OP(buffer_alloc),   OP(buffer_free),     OP(buffer_upload),
    OP(buffer_download), OP(buffer_copy),    OP(synchronize),
    OP(fill),           OP(cast),            OP(strided_copy),
    OP(unary),          OP(unary_backward),  OP(binary),
    OP(reduce),         OP(argmax),          OP(gemm),
    OP(conv2d),         OP(conv2d_backward_data), OP(conv2d_backward_filter),
    OP(pool2d),         OP(pool2d_backward), OP(softmax),
    OP(softmax_backward), OP(softmax_xent),  OP(batchnorm),
    OP(batchnorm_backward), OP(dropout_mask), OP(gather_rows),
    OP(sgd_update),     OP(adam_update),     OP(rmsprop_update),
    OP(affine_resample), OP(bf16_native),  OP(gemm_bf16),
    OP(conv2d_bf16),    OP(conv2d_backward_data_bf16), OP(conv2d_backward_filter_bf16),
    OP(max_pool2d_relu), OP(max_pool2d_relu_backward), OP(linear),
    OP(update_multi), OP(gemm_relu_mask),
};
#undef OP
#define NOPS (sizeof all_ops / sizeof all_ops[0])

static bool has_op(const char *name) {
  for (size_t i = 0; i < NOPS; i++)
    if (strcmp(all_ops[i].name, name) == 0)
      return *(void *const *)((const char *)V + all_ops[i].offset) != NULL;
  return false;
}

/* ---- memory ---- */

START_TEST(test_buffers) {
  /* Offsets, a copy, and an upload larger than one staging piece. */
  size_t n = 5 << 20; /* 20 MiB of floats */
  float *x = rnd(n, -1, 1);
  lunet_buf a = vup(x, n * 4), b = vup(NULL, n * 4);
  vok(V->buffer_copy(vbe, b, 12, a, 4, (n - 4) * 4), "copy");
  float *got = vdown(b, n * 4);
  ck_assert(memcmp(got + 3, x + 1, (n - 4) * 4) == 0);
  ck_assert(got[0] == 0.0f && got[1] == 0.0f && got[2] == 0.0f);
  float part[3];
  vok(V->buffer_download(vbe, a, 400, part, sizeof part), "download at an offset");
  ck_assert(memcmp(part, x + 100, sizeof part) == 0);
  vok(V->buffer_upload(vbe, a, 8, part, sizeof part), "upload at an offset");
  vok(V->buffer_download(vbe, a, 0, got, 5 * 4), "download");
  ck_assert(got[2] == part[0] && got[4] == part[2] && got[1] == x[1]);
  free(got);
  free(x);
  /* The pool hands a freed buffer back for the same size. */
  vfree(a);
  lunet_buf c = V->buffer_alloc(vbe, n * 4);
  ck_assert_ptr_eq(c, a);
  ck_assert_int_ne(V->buffer_copy(vbe, b, 0, b, 4, 8), 0);
  ck_assert_str_eq(V->last_error(vbe), "copy: overlapping ranges in one buffer");
  vfree(c);
  vfree(b);
  /* Out of device memory is NULL with a message, not a crash. */
  ck_assert_ptr_null(V->buffer_alloc(vbe, (size_t)1 << 44));
  ck_assert_msg(strstr(V->last_error(vbe), "out of device memory") != NULL, "%s",
                V->last_error(vbe));
}
END_TEST

START_TEST(test_transfer_batches) {
  /* 9000 uploads and copies with no sync between: ~19000 transfer commands,
   * more than one batch holds, so batches flip on the command count alone
   * (no descriptor sets, little staging).  Slot i of `out` gets i through
   * `t`, which needs the batches kept in order across those flips. */
  enum { N = 9000 };
  float *want = malloc(N * sizeof *want);
  lunet_buf t = vup(NULL, 4 * sizeof(float)), out = vup(NULL, N * sizeof(float));
  for (int i = 0; i < N; i++) {
    float v = (float)i;
    vok(V->buffer_upload(vbe, t, 0, &v, sizeof v), "upload in the loop");
    /* A second copy now and then shifts where in an iteration a batch ends. */
    for (int k = 0; k < 1 + (i % 7 == 0); k++)
      vok(V->buffer_copy(vbe, out, (size_t)i * sizeof v, t, 0, sizeof v), "copy");
    want[i] = v;
  }
  expect_dev(out, want, N, 0, 0, "transfers over many batches");
  free(want);
  vfree(t), vfree(out);
}
END_TEST

START_TEST(test_fill) {
  for (size_t s = 0; s < NODD; s++) {
    size_t n = odd_sizes[s];
    float *want = malloc(n * 4);
    for (size_t i = 0; i < n; i++) want[i] = -2.5f;
    lunet_buf y = vup(NULL, n * 4 + 4);
    vok(V->fill(vbe, y, -2.5f, n), "fill");
    float *got = vdown(y, n * 4 + 4);
    expect_close(got, want, n, 0, 0, "fill");
    ck_assert(got[n] == 0.0f);
    free(got);
    free(want);
    vfree(y);
  }
}
END_TEST

START_TEST(test_cast) {
  static const lunet_dtype dts[] = {LUNET_F32, LUNET_U8, LUNET_I32};
  for (size_t s = 0; s < NODD; s++) {
    size_t n = odd_sizes[s];
    float *f = rnd(n, -300, 300);
    for (size_t i = 0; i < n; i += 5) f[i] = roundf(f[i]) + 0.5f; /* ties */
    if (n > 2) f[1] = NAN, f[2] = 3e9f;
    unsigned char *u8 = malloc(n);
    int32_t *i32 = malloc(n * 4);
    for (size_t i = 0; i < n; i++) u8[i] = (unsigned char)frand(0, 256), i32[i] = (int32_t)frand(-1000, 1000);
    const void *src[3] = {f, u8, i32};
    for (int a = 0; a < 3; a++)
      for (int b = 0; b < 3; b++) {
        size_t xs = dts[a] == LUNET_U8 ? 1 : 4, ys = dts[b] == LUNET_U8 ? 1 : 4;
        unsigned char *want = malloc(n * ys + 3);
        memset(want, 0xab, n * ys + 3);
        C->cast(cbe, want, dts[b], src[a], dts[a], n);
        lunet_buf x = vup(src[a], n * xs), y = vup(want, n * ys + 3);
        vok(V->cast(vbe, y, dts[b], x, dts[a], n), "cast");
        char what[64];
        snprintf(what, sizeof what, "cast %d->%d n=%zu", (int)dts[a], (int)dts[b], n);
        /* The bytes past n stay as they were. */
        expect_bytes(y, want, n * ys + 3, what);
        free(want);
        vfree(x);
        vfree(y);
      }
    free(f);
    free(u8);
    free(i32);
  }
}
END_TEST

/* A permute (2,0,1) of a (d0,d1,d2) array, then a strided slice with offsets. */
static void strided_case(size_t es, int64_t d0, int64_t d1, int64_t d2) {
  size_t n = (size_t)(d0 * d1 * d2), xbytes = (n + 1) * es; /* the slice reads one more */
  unsigned char *x = malloc(xbytes);
  for (size_t i = 0; i < xbytes; i++) x[i] = (unsigned char)frand(0, 256);
  lunet_strided_desc d = {.ndim = 3, .elem_size = es, .shape = {d2, d0, d1},
                          .x_strides = {1, d1 * d2, d2}, .y_strides = {d0 * d1, d1, 1}};
  lunet_strided_desc s = {.ndim = 2, .elem_size = es, .shape = {d0, (d1 + 1) / 2},
                          .x_strides = {d1 * d2, 2 * d2}, .y_strides = {(d1 + 1) / 2 + 1, 1},
                          .x_offset = 1, .y_offset = 2};
  const lunet_strided_desc *descs[2] = {&d, &s};
  for (int k = 0; k < 2; k++) {
    size_t ybytes = (n + 64) * es;
    unsigned char *want = zalloc(ybytes);
    C->strided_copy(cbe, want, x, descs[k]);
    lunet_buf vx = vup(x, xbytes), vy = vup(NULL, ybytes);
    vok(V->strided_copy(vbe, vy, vx, descs[k]), "strided_copy");
    char what[96];
    snprintf(what, sizeof what, "strided_copy %s elem %zu (%lld,%lld,%lld)",
             k ? "slice" : "permute", es, (long long)d0, (long long)d1, (long long)d2);
    expect_bytes(vy, want, ybytes, what);
    free(want);
    vfree(vx);
    vfree(vy);
  }
  free(x);
}

START_TEST(test_strided_copy) {
  static const size_t sizes[] = {1, 4, 8};
  for (int i = 0; i < 3; i++) {
    strided_case(sizes[i], 1, 1, 1);
    strided_case(sizes[i], 3, 17, 5);
    strided_case(sizes[i], 2, 65, 3);
  }
}
END_TEST

static const char *unary_names[LUNET_UNARY_COUNT] = {
    "neg", "exp", "log", "sqrt", "abs", "square", "relu", "sigmoid", "tanh", "gelu",
    "leaky_relu", "affine", "clip", "recip", "sign"};

static bool positive_domain(int op) {
  return op == LUNET_UNARY_LOG || op == LUNET_UNARY_SQRT || op == LUNET_UNARY_RECIP;
}

START_TEST(test_unary) {
  for (int op = 0; op < LUNET_UNARY_COUNT; op++)
    for (size_t s = 0; s < NODD; s++) {
      size_t n = odd_sizes[s];
      float *x = positive_domain(op) ? rnd(n, 0.1f, 3) : rnd(n, -4, 4);
      if (n > 3 && !positive_domain(op)) x[3] = 0.0f;
      float *want = malloc(n * 4);
      C->unary(cbe, op, 0.2f, 0.7f, want, x, n);
      lunet_buf vx = vup(x, n * 4), vy = vup(NULL, n * 4);
      vok(V->unary(vbe, op, 0.2f, 0.7f, vy, vx, n), "unary");
      char what[64];
      snprintf(what, sizeof what, "unary %s n=%zu", unary_names[op], n);
      expect_dev(vy, want, n, 2e-6f, 2e-6f, what);
      free(x);
      free(want);
      vfree(vx);
      vfree(vy);
    }
}
END_TEST

START_TEST(test_unary_backward) {
  for (int op = 0; op < LUNET_UNARY_COUNT; op++)
    for (size_t s = 0; s < NODD; s++) {
      size_t n = odd_sizes[s];
      float *x = positive_domain(op) ? rnd(n, 0.1f, 3) : rnd(n, -4, 4);
      float *dy = rnd(n, -1, 1), *y = malloc(n * 4), *want = malloc(n * 4);
      C->unary(cbe, op, -0.5f, 0.5f, y, x, n);
      C->unary_backward(cbe, op, -0.5f, 0.5f, want, dy, x, y, n);
      lunet_buf vx = vup(x, n * 4), vy = vup(y, n * 4), vdy = vup(dy, n * 4),
                vdx = vup(NULL, n * 4);
      vok(V->unary_backward(vbe, op, -0.5f, 0.5f, vdx, vdy, vx, vy, n), "unary_backward");
      char what[64];
      snprintf(what, sizeof what, "unary_backward %s n=%zu", unary_names[op], n);
      expect_dev(vdx, want, n, 2e-6f, 2e-6f, what);
      free(x), free(dy), free(y), free(want);
      vfree(vx), vfree(vy), vfree(vdy), vfree(vdx);
    }
}
END_TEST

/* numpy broadcasting of a (na dims) and b (nb dims) into d. */
static size_t bcast(lunet_bcast_desc *d, int na, const int64_t *sa, int nb, const int64_t *sb,
                    size_t *numa, size_t *numb) {
  int nd = na > nb ? na : nb;
  int64_t as = 1, bs = 1;
  size_t total = 1;
  d->ndim = nd;
  for (int i = nd - 1; i >= 0; i--) {
    int ia = i - (nd - na), ib = i - (nd - nb);
    int64_t da = ia >= 0 ? sa[ia] : 1, db = ib >= 0 ? sb[ib] : 1;
    d->shape[i] = da > db ? da : db;
    d->a_strides[i] = da == 1 ? 0 : as;
    d->b_strides[i] = db == 1 ? 0 : bs;
    as *= da;
    bs *= db;
    total *= (size_t)d->shape[i];
  }
  *numa = (size_t)as;
  *numb = (size_t)bs;
  return total;
}

START_TEST(test_binary) {
  static const struct {
    int na, nb;
    int64_t a[8], b[8];
  } cases[] = {
      {1, 1, {1}, {1}},
      {1, 1, {257}, {257}},
      {1, 0, {65}, {0}},
      {3, 3, {3, 1, 5}, {1, 17, 5}},
      {2, 1, {65, 3}, {3}},
      {4, 2, {2, 3, 17, 1}, {17, 4}},
      {8, 8, {2, 1, 3, 1, 2, 3, 1, 2}, {1, 2, 1, 3, 2, 1, 5, 2}},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int op = 0; op < LUNET_BINARY_COUNT; op++) {
      lunet_bcast_desc d;
      size_t na, nb, n = bcast(&d, cases[c].na, cases[c].a, cases[c].nb, cases[c].b, &na, &nb);
      bool pw = op == LUNET_BINARY_POW;
      float *a = rnd(na, pw ? -2 : -3, 3), *b = rnd(nb, pw ? -2 : -3, 3);
      for (size_t i = 0; pw && i < nb; i++)
        if (i % 2) b[i] = roundf(b[i]); /* negative bases need integer powers */
      for (size_t i = 0; i < na && i < nb; i += 3) a[i] = b[i]; /* equal pairs for eq */
      for (size_t i = 0; pw && i < na; i++)
        if (a[i] < 0 && (i % 2 == 0 || nb != na)) a[i] = -a[i];
      float *want = malloc(n * 4);
      C->binary(cbe, op, want, a, b, &d);
      lunet_buf va = vup(a, na * 4), vb = vup(b, nb * 4), vy = vup(NULL, n * 4);
      vok(V->binary(vbe, op, vy, va, vb, &d), "binary");
      char what[64];
      snprintf(what, sizeof what, "binary op %d case %zu", op, c);
      expect_dev(vy, want, n, 1e-6f, pw ? 2e-5f : 1e-6f, what);
      free(a), free(b), free(want);
      vfree(va), vfree(vb), vfree(vy);
    }
}
END_TEST

START_TEST(test_reduce) {
  static const size_t shapes[][3] = {{1, 1, 1},  {3, 17, 5},  {1, 1000, 1}, {65, 3, 1},
                                     {2, 257, 3}, {1, 5, 20000}, {1, 0, 3}, {4, 100, 65}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int op = 0; op < LUNET_REDUCE_COUNT; op++) {
      size_t o = shapes[s][0], l = shapes[s][1], in = shapes[s][2], n = o * l * in;
      float *x = rnd(n, -1, 1), *want = malloc(o * in * 4);
      C->reduce(cbe, op, want, x, o, l, in);
      lunet_buf vx = vup(x, n * 4), vy = vup(NULL, o * in * 4);
      vok(V->reduce(vbe, op, vy, vx, o, l, in), "reduce");
      char what[64];
      snprintf(what, sizeof what, "reduce op %d (%zu,%zu,%zu)", op, o, l, in);
      expect_dev(vy, want, o * in, 2e-5f, 1e-5f, what);
      free(x), free(want);
      vfree(vx), vfree(vy);
    }
}
END_TEST

START_TEST(test_argmax) {
  static const size_t shapes[][2] = {{1, 1}, {3, 17}, {65, 257}, {2, 1000}, {300, 3}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t r = shapes[s][0], c = shapes[s][1];
    float *x = rnd(r * c, -1, 1), *want = malloc(r * 4);
    /* Ties: row 0 has its maximum twice; the first one wins. */
    if (c > 5) x[1] = x[4] = 2.0f;
    C->argmax(cbe, want, x, r, c);
    lunet_buf vx = vup(x, r * c * 4), vy = vup(NULL, r * 4);
    vok(V->argmax(vbe, vy, vx, r, c), "argmax");
    expect_dev(vy, want, r, 0, 0, "argmax");
    free(x), free(want);
    vfree(vx), vfree(vy);
  }
}
END_TEST

/* The products under test: float32, or with bf16 set the mixed-precision
 * ones (ABI 2.3: operands rounded to bfloat16) on both sides. */
static bool bf16;
#define PRODUCT(i, name) (bf16 ? (i)->name##_bf16 : (i)->name)

static void gemm_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                      bool share_b, float beta, float alpha) {
  int64_t sa = m * k, sb = share_b ? 0 : k * n, sc = m * n;
  size_t na = (size_t)(sa * batch), nb = (size_t)(share_b ? k * n : sb * batch),
         nc = (size_t)(sc * batch);
  float *a = rnd(na, -1, 1), *b = rnd(nb, -1, 1), *c = rnd(nc, -1, 1);
  float *want = malloc(nc * 4);
  memcpy(want, c, nc * 4);
  PRODUCT(C, gemm)(cbe, ta, tb, m, n, k, alpha, a, sa, b, sb, beta, want, sc, batch);
  lunet_buf va = vup(a, na * 4), vb = vup(b, nb * 4), vc = vup(c, nc * 4);
  vok(PRODUCT(V, gemm)(vbe, ta, tb, m, n, k, alpha, va, sa, vb, sb, beta, vc, sc, batch), "gemm");
  char what[96];
  snprintf(what, sizeof what, "gemm%s ta=%d tb=%d m=%lld n=%lld k=%lld batch=%lld beta=%g", bf16 ? " bf16" : "",
           ta, tb, (long long)m, (long long)n, (long long)k, (long long)batch, (double)beta);
  expect_dev(vc, want, nc, 1e-5f * (float)(k + 1), 1e-5f, what);
  free(a), free(b), free(c), free(want);
  vfree(va), vfree(vb), vfree(vc);
}

static void gemm_cases(void) {
  static const int64_t shapes[][3] = {{1, 1, 1}, {3, 17, 5}, {65, 33, 257}, {17, 65, 3},
                                      {16, 16, 16}, {1, 257, 17}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 4; t++) {
      gemm_case(t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 1, false, 0.0f, 1.5f);
      gemm_case(t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 3, t == 1, 0.5f, 1.5f);
    }
  /* long K, few output tiles, alpha 1, beta 0: split-K (11, 4 and 2 slices) */
  static const int64_t split[][3] = {{20, 24, 3000}, {33, 17, 1100}, {5, 300, 700}};
  for (size_t s = 0; s < sizeof split / sizeof split[0]; s++)
    for (int t = 0; t < 4; t++) gemm_case(t & 1, t & 2, split[s][0], split[s][1], split[s][2], 1, false, 0.0f, 1.0f);
  /* big enough for register blocking: 64 x 64 blocks, 4 x 4 per invocation
   * (18 x 17 blocks), then 32 x 32, 2 x 2 (22 x 13); edges in both.  The
   * first two have some extents that are not multiples of R (the fetches
   * R scalar loads there), the next two none (every operand's R elements
   * one vector load, in each transpose).  Then rectangular blocks: 64 x 32
   * (4 x 2 per invocation), 16 x 32 and 32 x 16 */
  static const int64_t blocked[][3] = {{1100, 1030, 37}, {700, 400, 45}, {1024, 1036, 40},
                                       {704, 398, 46},   {300, 2050, 24}, {2100, 36, 21},
                                       {36, 2100, 40}};
  for (size_t s = 0; s < sizeof blocked / sizeof blocked[0]; s++)
    for (int t = 0; t < 4; t++)
      gemm_case(t & 1, t & 2, blocked[s][0], blocked[s][1], blocked[s][2], 1, t == 3, 0.5f, 1.5f);
}

START_TEST(test_gemm) {
  bf16 = false;
  gemm_cases();
}
END_TEST

/* Mixed precision: the same cases with bfloat16 operands, against the
 * CPU's naive reference, which rounds each operand as it reads it; the
 * backend says they are emulated (float32 storage and arithmetic). */
START_TEST(test_gemm_bf16) {
  lunet_backend_info info;
  V->describe(vbe, &info);
  ck_assert_msg(strstr(info.detail, ", bfloat16 emulated") != NULL, "describe: %s", info.detail);
  bf16 = true;
  gemm_cases();
  bf16 = false;
}
END_TEST

/* Keras geometry: "same" pads to ceil(in/stride), the odd pixel at the end. */
static lunet_conv2d_desc conv_geom(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f,
                                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, bool same) {
  lunet_conv2d_desc d = {.n = n, .h = h, .w = w, .c = c, .f = f, .kh = kh, .kw = kw,
                         .sh = sh, .sw = sw};
  if (same) {
    d.oh = (h + sh - 1) / sh;
    d.ow = (w + sw - 1) / sw;
    int64_t ph = (d.oh - 1) * sh + kh - h, pw = (d.ow - 1) * sw + kw - w;
    d.pad_top = ph > 0 ? ph / 2 : 0;
    d.pad_left = pw > 0 ? pw / 2 : 0;
  } else {
    d.oh = (h - kh) / sh + 1;
    d.ow = (w - kw) / sw + 1;
  }
  return d;
}

static const lunet_conv2d_desc *conv_cases(size_t *count) {
  static lunet_conv2d_desc cs[17];
  cs[0] = conv_geom(2, 5, 7, 3, 4, 3, 3, 1, 1, true);
  cs[1] = conv_geom(2, 8, 9, 3, 5, 3, 3, 2, 2, false);
  cs[2] = conv_geom(1, 1, 1, 1, 1, 1, 1, 1, 1, false);
  cs[3] = conv_geom(3, 9, 8, 5, 17, 3, 2, 2, 1, true);
  cs[4] = conv_geom(2, 12, 12, 16, 33, 5, 5, 1, 1, true);
  cs[5] = conv_geom(4, 7, 7, 1, 3, 2, 2, 2, 2, true);
  /* long K, few workgroups: the filter gradient's split-K (2, 3 and 16
   * slices, the last one shorter) */
  cs[6] = conv_geom(6, 25, 23, 2, 5, 3, 3, 1, 1, false);
  cs[7] = conv_geom(8, 20, 20, 3, 8, 3, 3, 1, 1, true);
  cs[8] = conv_geom(16, 32, 32, 3, 4, 3, 3, 1, 1, true);
  /* register blocking: the forward in 64 x 64 blocks (4 x 4 per invocation)
   * and the data gradient in 32 x 32 (2 x 2); the filter gradient in 32 x 32,
   * then in 64 x 64; the forward in 32 x 32 and the data gradient in 64 x 64 */
  cs[9] = conv_geom(8, 40, 40, 5, 130, 3, 3, 1, 1, false);
  cs[10] = conv_geom(1, 6, 6, 256, 128, 3, 3, 1, 1, true);
  cs[11] = conv_geom(1, 4, 4, 512, 256, 3, 3, 1, 1, true);
  cs[12] = conv_geom(8, 40, 40, 130, 5, 3, 3, 1, 1, false);
  /* C and F multiples of 4: the forward (64 x 64, padded) and the strided data
   * gradient (64 x 64) fetch x, w and dy four at a time, one vec4 load (the
   * cases above have C or F odd, or run at R = 1; 10 and 11 run the filter
   * gradient's vector loads at R = 2 and 4) */
  cs[13] = conv_geom(8, 40, 40, 8, 132, 3, 3, 1, 1, true);
  cs[14] = conv_geom(8, 40, 40, 132, 8, 3, 3, 2, 2, true);
  /* the filter gradient in 64 x 64 with C odd: each of an invocation's 4
   * rows its own tap */
  cs[15] = conv_geom(1, 4, 4, 511, 260, 3, 3, 1, 1, true);
  /* and in 32 x 16 blocks (2 x 1 per invocation), C odd */
  cs[16] = conv_geom(1, 4, 4, 601, 20, 3, 3, 1, 1, true);
  *count = 17;
  return cs;
}

static void conv_products(void) {
  size_t nc;
  const lunet_conv2d_desc *cs = conv_cases(&nc);
  for (size_t i = 0; i < nc; i++) {
    const lunet_conv2d_desc *d = &cs[i];
    size_t nx = (size_t)(d->n * d->h * d->w * d->c), nw = (size_t)(d->kh * d->kw * d->c * d->f),
           ny = (size_t)(d->n * d->oh * d->ow * d->f);
    float *x = rnd(nx, -1, 1), *w = rnd(nw, -1, 1), *bias = rnd((size_t)d->f, -1, 1);
    float *dy = rnd(ny, -1, 1), *y = malloc(ny * 4), *dx = malloc(nx * 4);
    float *dw = malloc(nw * 4), *db = malloc((size_t)d->f * 4);
    float tol = 1e-5f * (float)(d->kh * d->kw * (d->c + d->f) + d->n * d->oh * d->ow);
    lunet_buf vx = vup(x, nx * 4), vw = vup(w, nw * 4), vb = vup(bias, (size_t)d->f * 4),
              vdy = vup(dy, ny * 4), vy = vup(NULL, ny * 4), vdx = vup(NULL, nx * 4),
              vdw = vup(NULL, nw * 4), vdb = vup(NULL, (size_t)d->f * 4);
    char what[64];
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      PRODUCT(C, conv2d)(cbe, y, x, w, with_bias ? bias : NULL, d);
      vok(PRODUCT(V, conv2d)(vbe, vy, vx, vw, with_bias ? vb : NULL, d), "conv2d");
      snprintf(what, sizeof what, "conv2d%s case %zu bias %d", bf16 ? " bf16" : "", i, with_bias);
      expect_dev(vy, y, ny, tol, 1e-5f, what);
    }
    if (has_op("conv2d_backward_data")) {
      PRODUCT(C, conv2d_backward_data)(cbe, dx, dy, w, d);
      vok(PRODUCT(V, conv2d_backward_data)(vbe, vdx, vdy, vw, d), "conv2d_backward_data");
      snprintf(what, sizeof what, "conv2d_backward_data%s case %zu", bf16 ? " bf16" : "", i);
      expect_dev(vdx, dx, nx, tol, 1e-5f, what);
    }
    if (has_op("conv2d_backward_filter")) {
      PRODUCT(C, conv2d_backward_filter)(cbe, dw, db, dy, x, d);
      vok(PRODUCT(V, conv2d_backward_filter)(vbe, vdw, vdb, vdy, vx, d), "conv2d_backward_filter");
      snprintf(what, sizeof what, "conv2d_backward_filter%s dw case %zu", bf16 ? " bf16" : "", i);
      expect_dev(vdw, dw, nw, tol, 1e-5f, what);
      snprintf(what, sizeof what, "conv2d_backward_filter%s db case %zu", bf16 ? " bf16" : "", i);
      expect_dev(vdb, db, (size_t)d->f, tol, 1e-5f, what);
      vok(PRODUCT(V, conv2d_backward_filter)(vbe, vdw, NULL, vdy, vx, d), "without db");
      expect_dev(vdw, dw, nw, tol, 1e-5f, what);
    }
    free(x), free(w), free(bias), free(dy), free(y), free(dx), free(dw), free(db);
    vfree(vx), vfree(vw), vfree(vb), vfree(vdy), vfree(vy), vfree(vdx), vfree(vdw), vfree(vdb);
  }
}

START_TEST(test_conv2d_bf16) {
  bf16 = true;
  conv_products();
  bf16 = false;
}
END_TEST

START_TEST(test_conv2d) {
  bf16 = false;
  conv_products();
  size_t nc;
  const lunet_conv2d_desc *cs = conv_cases(&nc);
  lunet_conv2d_desc bad = cs[0];
  bad.sh = 0;
  ck_assert_int_eq(V->conv2d(vbe, NULL, NULL, NULL, NULL, &bad), LUNET_ERR_SHAPE);
  ck_assert_str_eq(V->last_error(vbe),
                   "conv2d: bad geometry n=2 h=5 w=7 c=3 f=4 kernel 3x3 stride 0x1 out 5x7 "
                   "(fill it with lunet_conv2d_geometry)");
}
END_TEST

START_TEST(test_pool) {
  static const int64_t g[][8] = {
      /* n, h, w, c, k, stride, same, (unused) */
      {2, 4, 4, 3, 2, 2, 0, 0}, {1, 5, 7, 2, 3, 2, 1, 0}, {3, 9, 8, 17, 3, 1, 1, 0},
      {1, 1, 1, 1, 1, 1, 0, 0}, {2, 6, 5, 4, 2, 1, 0, 0}};
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
    for (int mode = 0; mode < 3; mode++) { /* max, average, max with the ReLU after it (ABI 2.4) */
      lunet_conv2d_desc cd = conv_geom(g[i][0], g[i][1], g[i][2], g[i][3], 1, g[i][4], g[i][4],
                                       g[i][5], g[i][5], g[i][6]);
      lunet_pool2d_desc d = {.n = cd.n, .h = cd.h, .w = cd.w, .c = cd.c, .kh = cd.kh,
                             .kw = cd.kw, .sh = cd.sh, .sw = cd.sw, .pad_top = cd.pad_top,
                             .pad_left = cd.pad_left, .oh = cd.oh, .ow = cd.ow};
      size_t nx = (size_t)(d.n * d.h * d.w * d.c), ny = (size_t)(d.n * d.oh * d.ow * d.c);
      float *x = rnd(nx, -1, 1), *dy = rnd(ny, -1, 1), *y = malloc(ny * 4), *dx = malloc(nx * 4);
      if (nx > 4) x[1] = x[0]; /* a tie inside a window */
      lunet_buf vx = vup(x, nx * 4), vy = vup(NULL, ny * 4), vdy = vup(dy, ny * 4),
                vdx = vup(NULL, nx * 4);
      char what[64];
      bool relu = mode == 2;
      if (relu) {
        C->max_pool2d_relu(cbe, y, x, &d);
        vok(V->max_pool2d_relu(vbe, vy, vx, &d), "max_pool2d_relu");
      } else {
        C->pool2d(cbe, mode, y, x, &d);
        vok(V->pool2d(vbe, mode, vy, vx, &d), "pool2d");
      }
      snprintf(what, sizeof what, "pool2d mode %d case %zu", mode, i);
      expect_dev(vy, y, ny, 1e-6f, 1e-6f, what);
      if (has_op("pool2d_backward")) {
        if (relu) {
          C->max_pool2d_relu_backward(cbe, dx, dy, x, y, &d);
          vok(V->max_pool2d_relu_backward(vbe, vdx, vdy, vx, vy, &d), "max_pool2d_relu_backward");
        } else {
          C->pool2d_backward(cbe, mode, dx, dy, x, y, &d);
          vok(V->pool2d_backward(vbe, mode, vdx, vdy, vx, vy, &d), "pool2d_backward");
        }
        snprintf(what, sizeof what, "pool2d_backward mode %d case %zu", mode, i);
        expect_dev(vdx, dx, nx, 1e-6f, 1e-6f, what);
      }
      free(x), free(dy), free(y), free(dx);
      vfree(vx), vfree(vy), vfree(vdy), vfree(vdx);
    }
}
END_TEST

static const size_t sm_shapes[][2] = {{1, 1}, {3, 17}, {65, 257}, {2, 1000}, {300, 10}};
#define NSM (sizeof sm_shapes / sizeof sm_shapes[0])

START_TEST(test_softmax) {
  for (size_t s = 0; s < NSM; s++)
    for (int log = 0; log < 2; log++) {
      size_t r = sm_shapes[s][0], c = sm_shapes[s][1], n = r * c;
      float *x = rnd(n, -5, 5), *dy = rnd(n, -1, 1), *y = malloc(n * 4), *dx = malloc(n * 4);
      C->softmax(cbe, log, y, x, r, c);
      lunet_buf vx = vup(x, n * 4), vy = vup(NULL, n * 4), vdy = vup(dy, n * 4),
                vdx = vup(NULL, n * 4);
      vok(V->softmax(vbe, log, vy, vx, r, c), "softmax");
      char what[64];
      snprintf(what, sizeof what, "softmax log=%d (%zu,%zu)", log, r, c);
      expect_dev(vy, y, n, 2e-6f, 1e-5f, what);
      if (has_op("softmax_backward")) {
        C->softmax_backward(cbe, log, dx, dy, y, r, c);
        vok(V->softmax_backward(vbe, log, vdx, vdy, vy, r, c), "softmax_backward");
        snprintf(what, sizeof what, "softmax_backward log=%d (%zu,%zu)", log, r, c);
        expect_dev(vdx, dx, n, 1e-5f, 1e-5f, what);
      }
      free(x), free(dy), free(y), free(dx);
      vfree(vx), vfree(vy), vfree(vdy), vfree(vdx);
    }
}
END_TEST

/* oom_first: an allocation that runs out of memory (and waits for the device
 * before its retry) comes between the kernel and the synchronize; the flag
 * must survive it. */
static void xent_bad_label(float label, size_t row, const char *message, bool oom_first) {
  size_t r = 5, c = 10;
  float *x = rnd(r * c, -1, 1), labels[5] = {1, 2, 3, 4, 5};
  labels[row] = label;
  lunet_buf vx = vup(x, r * c * 4), vl = vup(labels, sizeof labels), vloss = vup(NULL, r * 4);
  vok(V->softmax_xent(vbe, vloss, NULL, vx, vl, r, c), "softmax_xent (recorded)");
  if (oom_first) {
    ck_assert_ptr_null(V->buffer_alloc(vbe, (size_t)1 << 44));
    ck_assert_msg(strstr(V->last_error(vbe), "out of device memory") != NULL, "%s",
                  V->last_error(vbe));
  }
  ck_assert_int_eq(V->synchronize(vbe), LUNET_ERR_ARG);
  ck_assert_str_eq(V->last_error(vbe), message);
  vok(V->synchronize(vbe), "the flag is cleared once reported");
  free(x);
  vfree(vx), vfree(vl), vfree(vloss);
}

START_TEST(test_softmax_xent) {
  for (size_t s = 0; s < NSM; s++) {
    size_t r = sm_shapes[s][0], c = sm_shapes[s][1], n = r * c;
    float *x = rnd(n, -5, 5), *labels = malloc(r * 4), *loss = malloc(r * 4), *d = malloc(n * 4);
    for (size_t i = 0; i < r; i++) labels[i] = (float)(size_t)frand(0, (float)c);
    C->softmax_xent(cbe, loss, d, x, labels, r, c);
    lunet_buf vx = vup(x, n * 4), vl = vup(labels, r * 4), vloss = vup(NULL, r * 4),
              vd = vup(NULL, n * 4);
    vok(V->softmax_xent(vbe, vloss, vd, vx, vl, r, c), "softmax_xent");
    char what[64];
    snprintf(what, sizeof what, "softmax_xent (%zu,%zu)", r, c);
    expect_dev(vloss, loss, r, 1e-5f, 1e-5f, what);
    expect_dev(vd, d, n, 1e-6f, 1e-5f, what);
    vok(V->softmax_xent(vbe, vloss, NULL, vx, vl, r, c), "softmax_xent without dlogits");
    expect_dev(vloss, loss, r, 1e-5f, 1e-5f, what);
    free(x), free(labels), free(loss), free(d);
    vfree(vx), vfree(vl), vfree(vloss), vfree(vd);
  }
  xent_bad_label(12, 3, "softmax_xent: label 12 at row 3 is outside [0, 10)", false);
  xent_bad_label(-1, 0, "softmax_xent: label -1 at row 0 is outside [0, 10)", false);
  xent_bad_label(2.5f, 4, "softmax_xent: label 2.5 at row 4 is not an integer class id in "
                          "[0, 10)", false);
  xent_bad_label(-3, 1, "softmax_xent: label -3 at row 1 is outside [0, 10)", true);
}
END_TEST

START_TEST(test_batchnorm) {
  static const size_t shapes[][2] = {{1, 1}, {17, 3}, {257, 65}, {1000, 5}, {2, 300}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int variant = 0; variant < 3; variant++) {
      /* 0: everything; 1: no gamma/beta, no saved stats; 2: inference */
      size_t r = shapes[s][0], c = shapes[s][1], n = r * c;
      bool affine = variant != 1, training = variant != 2;
      float *x = rnd(n, -2, 3), *g = rnd(c, 0.5f, 1.5f), *b = rnd(c, -1, 1);
      float *rm = rnd(c, -0.5f, 0.5f), *rv = rnd(c, 0.5f, 2), *y = malloc(n * 4);
      float *sm = malloc(c * 4), *si = malloc(c * 4);
      lunet_buf vx = vup(x, n * 4), vg = vup(g, c * 4), vb = vup(b, c * 4), vrm = vup(rm, c * 4),
                vrv = vup(rv, c * 4), vy = vup(NULL, n * 4), vsm = vup(NULL, c * 4),
                vsi = vup(NULL, c * 4);
      C->batchnorm(cbe, training, y, variant == 0 ? sm : NULL, variant == 0 ? si : NULL, rm,
                   rv, x, affine ? g : NULL, affine ? b : NULL, r, c, 0.9f, 1e-3f);
      vok(V->batchnorm(vbe, training, vy, variant == 0 ? vsm : NULL, variant == 0 ? vsi : NULL,
                       vrm, vrv, vx, affine ? vg : NULL, affine ? vb : NULL, r, c, 0.9f, 1e-3f),
          "batchnorm");
      char what[64];
      snprintf(what, sizeof what, "batchnorm variant %d (%zu,%zu)", variant, r, c);
      expect_dev(vy, y, n, 2e-5f, 2e-5f, what);
      expect_dev(vrm, rm, c, 1e-6f, 1e-5f, what);
      expect_dev(vrv, rv, c, 1e-6f, 1e-5f, what);
      if (variant == 0) {
        expect_dev(vsm, sm, c, 1e-6f, 1e-5f, what);
        expect_dev(vsi, si, c, 1e-6f, 1e-4f, what);
        if (has_op("batchnorm_backward")) {
          float *dy = rnd(n, -1, 1), *dx = malloc(n * 4), *dg = malloc(c * 4), *db = malloc(c * 4);
          lunet_buf vdy = vup(dy, n * 4), vdx = vup(NULL, n * 4), vdg = vup(NULL, c * 4),
                    vdb = vup(NULL, c * 4);
          C->batchnorm_backward(cbe, dx, dg, db, dy, x, g, sm, si, r, c);
          vok(V->batchnorm_backward(vbe, vdx, vdg, vdb, vdy, vx, vg, vsm, vsi, r, c),
              "batchnorm_backward");
          snprintf(what, sizeof what, "batchnorm_backward (%zu,%zu)", r, c);
          expect_dev(vdx, dx, n, 1e-4f, 1e-4f, what);
          expect_dev(vdg, dg, c, 1e-4f * (float)r, 1e-4f, what);
          expect_dev(vdb, db, c, 1e-5f * (float)r, 1e-5f, what);
          vok(V->batchnorm_backward(vbe, vdx, NULL, NULL, vdy, vx, vg, vsm, vsi, r, c),
              "batchnorm_backward without dgamma, dbeta");
          expect_dev(vdx, dx, n, 1e-4f, 1e-4f, what);
          free(dy), free(dx), free(dg), free(db);
          vfree(vdy), vfree(vdx), vfree(vdg), vfree(vdb);
        }
      }
      free(x), free(g), free(b), free(rm), free(rv), free(y), free(sm), free(si);
      vfree(vx), vfree(vg), vfree(vb), vfree(vrm), vfree(vrv), vfree(vy), vfree(vsm), vfree(vsi);
    }
}
END_TEST

START_TEST(test_dropout_mask) {
  static const float rates[] = {0.0f, 0.3f, 0.5f, 1.0f};
  for (size_t s = 0; s < NODD; s++)
    for (int k = 0; k < 4; k++) {
      size_t n = odd_sizes[s];
      /* The counter crosses 2^32 inside the mask: the carry must match. */
      uint64_t seed = 0x0123456789ABCDEFull, counter = 0xFFFFFFF0ull + s;
      float *want = malloc(n * 4);
      C->dropout_mask(cbe, want, n, rates[k], seed, counter);
      lunet_buf vm = vup(NULL, n * 4);
      vok(V->dropout_mask(vbe, vm, n, rates[k], seed, counter), "dropout_mask");
      expect_bytes(vm, want, n * 4, "dropout_mask (bit for bit)");
      free(want);
      vfree(vm);
    }
  ck_assert_int_eq(V->dropout_mask(vbe, NULL, 4, 1.5f, 1, 0), LUNET_ERR_ARG);
  ck_assert_str_eq(V->last_error(vbe), "dropout_mask: rate 1.5 is outside [0, 1]");
}
END_TEST

START_TEST(test_gather_rows) {
  size_t rows = 50, rb = 12, n = 37;
  unsigned char *x = malloc(rows * rb), *want = malloc(n * rb);
  for (size_t i = 0; i < rows * rb; i++) x[i] = (unsigned char)frand(0, 256);
  int64_t idx[37];
  for (size_t i = 0; i < n; i++) idx[i] = i < 10 ? (int64_t)i + 5 : (int64_t)frand(0, 50);
  C->gather_rows(cbe, want, x, idx, n, rb);
  lunet_buf vx = vup(x, rows * rb), vy = vup(NULL, n * rb);
  vok(V->gather_rows(vbe, vy, vx, idx, n, rb), "gather_rows");
  expect_bytes(vy, want, n * rb, "gather_rows");
  free(x), free(want);
  vfree(vx), vfree(vy);
}
END_TEST

/* Runs `steps` updates of one optimizer on both backends and compares p and
 * the state. kind: 0 sgd, 1 adam, 2 rmsprop. */
static void optim_case(int kind, size_t n, int variant) {
  float *p = rnd(n, -1, 1), *s1 = rnd(n, 0, 0.1f), *s2 = rnd(n, 0, 0.1f);
  lunet_buf vp = vup(p, n * 4), v1 = vup(s1, n * 4), v2 = vup(s2, n * 4);
  bool state = variant != 0;
  for (int step = 1; step <= 3; step++) {
    float *g = rnd(n, -1, 1);
    lunet_buf vg = vup(g, n * 4);
    if (kind == 0) {
      float mom = state ? 0.9f : 0.0f, wd = variant == 2 ? 0.01f : 0.0f;
      C->sgd_update(cbe, p, g, state ? s1 : NULL, n, 0.1f, mom, variant == 2, wd);
      vok(V->sgd_update(vbe, vp, vg, state ? v1 : NULL, n, 0.1f, mom, variant == 2, wd), "sgd");
    } else if (kind == 1) {
      float wd = variant == 2 ? 0.01f : 0.0f;
      C->adam_update(cbe, p, g, s1, s2, n, 0.01f, 0.9f, 0.999f, 1e-7f, wd, step);
      vok(V->adam_update(vbe, vp, vg, v1, v2, n, 0.01f, 0.9f, 0.999f, 1e-7f, wd, step), "adam");
    } else {
      float mom = state ? 0.9f : 0.0f;
      C->rmsprop_update(cbe, p, g, s1, state ? s2 : NULL, n, 0.01f, 0.9f, mom, 1e-7f);
      vok(V->rmsprop_update(vbe, vp, vg, v1, state ? v2 : NULL, n, 0.01f, 0.9f, mom, 1e-7f),
          "rmsprop");
    }
    free(g);
    vfree(vg);
  }
  char what[64];
  snprintf(what, sizeof what, "optimizer %d variant %d n=%zu", kind, variant, n);
  expect_dev(vp, p, n, 1e-6f, 1e-5f, what);
  expect_dev(v1, s1, n, 1e-6f, 1e-5f, what);
  expect_dev(v2, s2, n, 1e-6f, 1e-5f, what);
  free(p), free(s1), free(s2);
  vfree(vp), vfree(v1), vfree(v2);
}

START_TEST(test_optimizers) {
  static const char *names[3] = {"sgd_update", "adam_update", "rmsprop_update"};
  for (int kind = 0; kind < 3; kind++) {
    if (!has_op(names[kind])) continue;
    for (size_t s = 0; s < NODD; s++)
      for (int variant = 0; variant < 3; variant++) optim_case(kind, odd_sizes[s], variant);
  }
  if (has_op("adam_update")) {
    ck_assert_int_eq(V->adam_update(vbe, NULL, NULL, NULL, NULL, 1, 0.1f, 0.9f, 0.99f, 1e-7f,
                                    0, 0),
                     LUNET_ERR_ARG);
    ck_assert_str_eq(V->last_error(vbe), "adam_update: step is 0, expected 1 or more (the "
                                         "count of updates including this one)");
  }
}
END_TEST

/* ABI 2.6 update_multi over 11 tensors (one empty; one past the 4096
 * workgroups a tensor gets, so they stride), each optimizer configuration:
 * the same bits as the single Vulkan ops tensor by tensor, the CPU's naive
 * reference within rounding, and, where the device runs it as one dispatch
 * for up to 8 tensors (describe: "multi-tensor updates"), 2 dispatches for
 * the 10 non-empty tensors. */
START_TEST(test_update_multi) {
  enum { T = 11 };
  const size_t n[T] = {3, 0, 257, 1, 5000, 1100000, 64, 7, 300, 2, 1024};
  lunet_backend_info info;
  V->describe(vbe, &info);
  bool one = strstr(info.detail, "multi-tensor updates") != NULL;
  for (size_t c = 0; c < NUPDATE_CASES; c++) {
    const lunet_update_desc *u = &update_cases[c];
    bool has1 = u->kind != LUNET_UPDATE_SGD || u->momentum > 0, has2 = u->kind != LUNET_UPDATE_SGD;
    float *h[4][T]; /* p, g, s1, s2 on the host: the reference's */
    lunet_buf d[2][4][T]; /* [multi][p, g, s1, s2]: the device's */
    for (int t = 0; t < T; t++)
      for (int w = 0; w < 4; w++) {
        h[w][t] = w == 0 || w == 1 ? rnd(n[t], -1, 1) : rnd(n[t], 0, 0.1f);
        for (int m = 0; m < 2; m++) d[m][w][t] = vup(h[w][t], n[t] * 4);
      }
    ck_assert_int_eq(C->update_multi(cbe, u, T, (lunet_buf *)h[0], (const lunet_cbuf *)h[1], has1 ? (lunet_buf *)h[2] : NULL,
                                     has2 ? (lunet_buf *)h[3] : NULL, n), 0);
    lunet_backend_stats a, b;
    vok(V->synchronize(vbe), "synchronize");
    V->stats(vbe, &a);
    vok(V->update_multi(vbe, u, T, d[1][0], (const lunet_cbuf *)d[1][1], has1 ? d[1][2] : NULL,
                        has2 ? d[1][3] : NULL, n), "update_multi");
    vok(V->synchronize(vbe), "synchronize");
    V->stats(vbe, &b);
    ck_assert_uint_eq(b.dispatches - a.dispatches, one ? 2 : 10);
    for (int t = 0; t < T; t++) {
      lunet_buf p = d[0][0][t], g = d[0][1][t], s1 = has1 ? d[0][2][t] : NULL, s2 = has2 ? d[0][3][t] : NULL;
      int rc = u->kind == LUNET_UPDATE_SGD
                   ? V->sgd_update(vbe, p, g, s1, n[t], u->lr, u->momentum, u->nesterov, u->weight_decay)
               : u->kind == LUNET_UPDATE_ADAM
                   ? V->adam_update(vbe, p, g, s1, s2, n[t], u->lr, u->beta1, u->beta2, u->epsilon,
                                    u->weight_decay, u->step)
                   : V->rmsprop_update(vbe, p, g, s1, s2, n[t], u->lr, u->rho, u->momentum, u->epsilon);
      vok(rc, "single update");
    }
    for (int t = 0; t < T; t++)
      for (int w = 0; w < 4; w++) {
        if (w == 1) continue;
        char what[96];
        snprintf(what, sizeof what, "update_multi case %zu, tensor %d (%zu), %s", c, t, n[t],
                 w == 0 ? "weights" : w == 2 ? "first state" : "second state");
        float *multi = vdown(d[1][w][t], n[t] * 4), *single = vdown(d[0][w][t], n[t] * 4);
        ck_assert_msg(!memcmp(multi, single, n[t] * 4), "%s: not the single op's bits", what);
        expect_close(multi, h[w][t], n[t], 1e-6f, 1e-5f, what);
        free(multi), free(single);
      }
    for (int t = 0; t < T; t++)
      for (int w = 0; w < 4; w++) {
        free(h[w][t]);
        for (int m = 0; m < 2; m++) vfree(d[m][w][t]);
      }
  }
}
END_TEST

START_TEST(test_affine_resample) {
  size_t n = 4, h = 7, w = 9, c = 3, oh = 5, ow = 6;
  float *x = rnd(n * h * w * c, 0, 1), mats[24];
  for (size_t i = 0; i < n; i++) {
    float a = frand(-0.6f, 0.6f), sc = frand(0.7f, 1.6f);
    float m[6] = {sc * cosf(a), -sc * sinf(a), frand(-4, 4), sc * sinf(a), sc * cosf(a),
                  frand(-4, 4)};
    memcpy(mats + 6 * i, m, sizeof m);
  }
  mats[0] = 1, mats[1] = 0, mats[2] = 0, mats[3] = 0, mats[4] = 1, mats[5] = 0; /* identity */
  for (int mode = 0; mode < 4; mode++) {
    float *want = malloc(n * oh * ow * c * 4);
    C->affine_resample(cbe, want, x, mats, n, h, w, c, oh, ow, mode, 0.25f);
    lunet_buf vx = vup(x, n * h * w * c * 4), vy = vup(NULL, n * oh * ow * c * 4);
    vok(V->affine_resample(vbe, vy, vx, mats, n, h, w, c, oh, ow, mode, 0.25f),
        "affine_resample");
    char what[64];
    snprintf(what, sizeof what, "affine_resample fill mode %d", mode);
    expect_dev(vy, want, n * oh * ow * c, 1e-5f, 1e-5f, what);
    free(want);
    vfree(vx), vfree(vy);
  }
  free(x);
}
END_TEST

/* ABI 2.5's linear against the CPU's naive one: shapes that run the
 * product in one pass (the bias and the ReLU in gemm.comp's store) and one
 * that splits K (64 x 512 over K = 2048, the CIFAR CNN's Dense layer: the
 * bias and the ReLU in the reduction of the slices), with and without
 * each. */
START_TEST(test_linear) {
  static const int64_t cases[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {70, 300, 40}, {64, 512, 2048}};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    int64_t m = cases[ci][0], n = cases[ci][1], k = cases[ci][2];
    size_t na = (size_t)(m * k), nb = (size_t)(k * n), nc = (size_t)(m * n);
    float *a = rnd(na, -1, 1), *b = rnd(nb, -1, 1), *bias = rnd((size_t)n, -0.5f, 0.5f);
    lunet_buf da = vup(a, na * 4), db = vup(b, nb * 4), dbias = vup(bias, (size_t)n * 4);
    for (int variant = 0; variant < 4; variant++) {
      bool relu = variant & 1, with_bias = variant & 2;
      float *want = zalloc(nc * 4);
      ck_assert_int_eq(C->linear(cbe, m, n, k, a, b, with_bias ? bias : NULL, relu, want), 0);
      lunet_buf dc = vup(NULL, nc * 4);
      vok(V->linear(vbe, m, n, k, da, db, with_bias ? dbias : NULL, relu, dc), "linear");
      char what[96];
      snprintf(what, sizeof what, "linear %lldx%lldx%lld%s%s", (long long)m, (long long)n, (long long)k,
               with_bias ? " +bias" : "", relu ? " relu" : "");
      expect_dev(dc, want, nc, 1e-4f, 1e-4f, what);
      vfree(dc);
      free(want);
    }
    vfree(da), vfree(db), vfree(dbias);
    free(a), free(b), free(bias);
  }
}
END_TEST

/* ABI 2.6 gemm_relu_mask in each transpose, direct and split-K (64 x 10
 * over K = 2048, the Dense data gradient's shape turned around): the bits
 * of the device's own gemm and ReLU gradient, and the CPU's naive
 * reference within rounding; zeros, negative zeros and a NaN in the mask
 * block the gradient. */
START_TEST(test_gemm_relu_mask) {
  static const int64_t cases[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {70, 300, 40}, {64, 10, 2048}};
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    int64_t m = cases[ci][0], n = cases[ci][1], k = cases[ci][2];
    size_t na = (size_t)(m * k), nb = (size_t)(k * n), nc = (size_t)(m * n);
    float *a = rnd(na, -1, 1), *b = rnd(nb, -1, 1), *mask = rnd(nc, -1, 1);
    for (size_t i = 0; i < nc; i += 7) mask[i] = i % 2 ? 0.0f : -0.0f;
    mask[nc / 2] = NAN;
    lunet_buf da = vup(a, na * 4), db = vup(b, nb * 4), dmask = vup(mask, nc * 4);
    for (int t = 0; t < 4; t++) {
      bool ta = t & 1, tb = t & 2;
      float *want = zalloc(nc * 4);
      ck_assert_int_eq(C->gemm_relu_mask(cbe, ta, tb, m, n, k, a, b, mask, want), 0);
      lunet_buf dc = vup(NULL, nc * 4), dprod = vup(NULL, nc * 4), dplain = vup(NULL, nc * 4);
      vok(V->gemm_relu_mask(vbe, ta, tb, m, n, k, da, db, dmask, dc), "gemm_relu_mask");
      vok(V->gemm(vbe, ta, tb, m, n, k, 1.0f, da, 0, db, 0, 0.0f, dprod, m * n, 1), "gemm");
      vok(V->unary_backward(vbe, LUNET_UNARY_RELU, 0.0f, 0.0f, dplain, dprod, dmask, dmask, nc), "relu grad");
      char what[96];
      snprintf(what, sizeof what, "gemm_relu_mask %lldx%lldx%lld ta=%d tb=%d", (long long)m, (long long)n,
               (long long)k, ta, tb);
      float *got = vdown(dc, nc * 4), *plain = vdown(dplain, nc * 4);
      ck_assert_msg(!memcmp(got, plain, nc * 4), "%s: not the bits of gemm and the ReLU's gradient", what);
      expect_close(got, want, nc, 1e-4f, 1e-4f, what);
      free(got), free(plain), free(want);
      vfree(dc), vfree(dprod), vfree(dplain);
    }
    vfree(da), vfree(db), vfree(dmask);
    free(a), free(b), free(mask);
  }
}
END_TEST

/* Barriers the backend records for what `run` records, up to a synchronize. */
static uint64_t barriers_of(void (*run)(void *), void *arg) {
  lunet_backend_stats a, b;
  vok(V->synchronize(vbe), "synchronize");
  V->stats(vbe, &a);
  run(arg);
  vok(V->synchronize(vbe), "synchronize");
  V->stats(vbe, &b);
  return b.barriers - a.barriers;
}

enum { LV_N = 1000, LV_LEN = 3, LV_CHAINS = 4 };
typedef struct chains {
  lunet_buf b[LV_CHAINS][LV_LEN + 1];
  int nchains;
} chains;

/* Chain c: b[c][k + 1] = 2 b[c][k] + c, each chain written whole before the next. */
static void run_chains(void *arg) {
  chains *ch = arg;
  for (int c = 0; c < ch->nchains; c++)
    for (int k = 0; k < LV_LEN; k++)
      vok(V->unary(vbe, LUNET_UNARY_AFFINE, 2.0f, (float)c, ch->b[c][k + 1], ch->b[c][k], LV_N),
          "unary");
}

START_TEST(test_levelled_barriers) {
  /* Commands that depend on none of each other share a barrier: four chains
   * of three dependent dispatches, written one after the other, cost the
   * barriers of one chain (recorded in the order written, each chain adds
   * two). */
  float *x = rnd(LV_N, -1, 1), *want = malloc(LV_N * sizeof *want);
  chains ch = {.nchains = 1};
  for (int c = 0; c < LV_CHAINS; c++) {
    ch.b[c][0] = vup(x, LV_N * sizeof(float));
    for (int k = 1; k <= LV_LEN; k++) ch.b[c][k] = vup(NULL, LV_N * sizeof(float));
  }
  uint64_t one = barriers_of(run_chains, &ch);
  ch.nchains = LV_CHAINS;
  uint64_t all = barriers_of(run_chains, &ch);
  ck_assert_msg(one >= LV_LEN - 1, "one chain of %d dispatches took %llu barriers", LV_LEN,
                (unsigned long long)one);
  ck_assert_msg(all == one, "%d independent chains took %llu barriers, one chain %llu", LV_CHAINS,
                (unsigned long long)all, (unsigned long long)one);
  for (int c = 0; c < LV_CHAINS; c++) {
    for (int i = 0; i < LV_N; i++) want[i] = 8.0f * x[i] + 7.0f * (float)c;
    expect_dev(ch.b[c][LV_LEN], want, LV_N, 1e-5f, 1e-6f, "chain after levelling");
    for (int k = 0; k <= LV_LEN; k++) vfree(ch.b[c][k]);
  }
  free(x), free(want);
}
END_TEST

START_TEST(test_levels_keep_write_after_read) {
  /* A write to a buffer that a held-back command still has to read is
   * recorded after that reader, whatever level the buffer's last writer
   * had: t = 2a, v = t + 1, w = v + t read t; then t is overwritten (a
   * fill, then a copy) and w must still see 2a.  Levelled by the last write
   * alone, the fill would land before w's read. */
  float *x = rnd(LV_N, -1, 1), *want = malloc(LV_N * sizeof *want);
  lunet_buf a = vup(x, LV_N * sizeof(float)), t = vup(NULL, LV_N * sizeof(float)),
            v = vup(NULL, LV_N * sizeof(float)), w = vup(NULL, LV_N * sizeof(float)),
            z = vup(NULL, LV_N * sizeof(float));
  vok(V->synchronize(vbe), "synchronize");
  lunet_bcast_desc d = {.ndim = 1, .shape = {LV_N}, .a_strides = {1}, .b_strides = {1}};
  vok(V->unary(vbe, LUNET_UNARY_AFFINE, 2.0f, 0.0f, t, a, LV_N), "t = 2a");
  vok(V->unary(vbe, LUNET_UNARY_AFFINE, 1.0f, 1.0f, v, t, LV_N), "v = t + 1");
  vok(V->binary(vbe, LUNET_BINARY_ADD, w, v, t, &d), "w = v + t");
  vok(V->fill(vbe, t, 7.0f, LV_N), "t = 7");
  vok(V->buffer_copy(vbe, t, 0, z, 0, LV_N * sizeof(float)), "t = 0");
  for (int i = 0; i < LV_N; i++) want[i] = (2.0f * x[i] + 1.0f) + 2.0f * x[i];
  expect_dev(w, want, LV_N, 1e-6f, 1e-6f, "w read t before it was overwritten");
  for (int i = 0; i < LV_N; i++) want[i] = 0.0f;
  expect_dev(t, want, LV_N, 0, 0, "t after both writes, in order");
  vfree(a), vfree(t), vfree(v), vfree(w), vfree(z);
  free(x), free(want);
}
END_TEST

typedef struct reuse {
  lunet_buf a, t, u, t2;
  bool again; /* free t and write a new buffer of its size from a */
} reuse;

static void run_reuse(void *arg) {
  reuse *r = arg;
  r->t = V->buffer_alloc(vbe, LV_N * sizeof(float));
  ck_assert(r->t != NULL);
  vok(V->unary(vbe, LUNET_UNARY_AFFINE, 2.0f, 0.0f, r->t, r->a, LV_N), "t = 2a");
  vok(V->unary(vbe, LUNET_UNARY_AFFINE, 1.0f, 1.0f, r->u, r->t, LV_N), "u = t + 1");
  V->buffer_free(vbe, r->t);
  if (r->again) {
    r->t2 = V->buffer_alloc(vbe, LV_N * sizeof(float));
    ck_assert(r->t2 != NULL);
    vok(V->unary(vbe, LUNET_UNARY_AFFINE, 3.0f, 0.0f, r->t2, r->a, LV_N), "t2 = 3a");
  }
}

START_TEST(test_pool_reuse_levels) {
  /* A buffer freed while a held-back command still reads it is not handed
   * to the next allocation of its size while another is free: the new
   * buffer's writer would otherwise wait behind that reader. */
  float *x = rnd(LV_N, -1, 1), *want = malloc(LV_N * sizeof *want);
  reuse r = {.a = vup(x, LV_N * sizeof(float)), .u = vup(NULL, LV_N * sizeof(float))};
  lunet_buf spare[2] = {V->buffer_alloc(vbe, LV_N * sizeof(float)),
                        V->buffer_alloc(vbe, LV_N * sizeof(float))}; /* two free ones */
  V->buffer_free(vbe, spare[0]), V->buffer_free(vbe, spare[1]);
  uint64_t without = barriers_of(run_reuse, &r);
  r.again = true;
  uint64_t with = barriers_of(run_reuse, &r);
  ck_assert_msg(with == without,
                "an independent write into a new buffer took the barriers to %llu, from %llu",
                (unsigned long long)with, (unsigned long long)without);
  for (int i = 0; i < LV_N; i++) want[i] = 3.0f * x[i];
  expect_dev(r.t2, want, LV_N, 1e-6f, 1e-6f, "the new buffer");
  for (int i = 0; i < LV_N; i++) want[i] = 2.0f * x[i] + 1.0f;
  expect_dev(r.u, want, LV_N, 1e-6f, 1e-6f, "the reader of the freed buffer");
  vfree(r.a), vfree(r.u), vfree(r.t2);
  free(x), free(want);
}
END_TEST

START_TEST(test_validation_clean) {
  vok(V->synchronize(vbe), "synchronize");
  int count = validation_count ? validation_count(vbe) : 0;
  ck_assert_msg(count == 0, "the validation layer reported %d messages (see stderr)", count);
}
END_TEST

/* ---- driver ---- */

typedef struct op_test {
  const char *op; /* the vtable member it needs */
  const TTest *test;
} op_test;

static Suite *vulkan_suite(void) {
  Suite *s = suite_create("vulkan_backend");
  TCase *tc = tcase_create("vs_cpu");
  tcase_set_timeout(tc, 600);
  const op_test tests[] = {
      {"buffer_copy", test_buffers},       {"buffer_copy", test_transfer_batches},
      {"fill", test_fill},
      {"cast", test_cast},                 {"strided_copy", test_strided_copy},
      {"unary", test_unary},               {"unary_backward", test_unary_backward},
      {"binary", test_binary},             {"reduce", test_reduce},
      {"argmax", test_argmax},             {"gemm", test_gemm},
      {"gemm_bf16", test_gemm_bf16},       {"conv2d_bf16", test_conv2d_bf16},
      {"conv2d", test_conv2d},             {"pool2d", test_pool},
      {"softmax", test_softmax},           {"softmax_xent", test_softmax_xent},
      {"batchnorm", test_batchnorm},       {"dropout_mask", test_dropout_mask},
      {"gather_rows", test_gather_rows},   {"sgd_update", test_optimizers},
      {"affine_resample", test_affine_resample},
      {"unary", test_levelled_barriers},   {"unary", test_pool_reuse_levels},
      {"linear", test_linear},            {"binary", test_levels_keep_write_after_read},
      {"update_multi", test_update_multi},   {"gemm_relu_mask", test_gemm_relu_mask},
  };
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
    if (has_op(tests[i].op)) tcase_add_test(tc, tests[i].test);
  tcase_add_test(tc, test_validation_clean);
  suite_add_tcase(s, tc);
  return s;
}

static const lunet_backend_desc *load(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
    return NULL;
  }
  lunet_backend_entry_fn entry = (lunet_backend_entry_fn)dlsym(h, LUNET_BACKEND_ENTRY_NAME);
  if (!entry) {
    fprintf(stderr, "%s lacks %s\n", path, LUNET_BACKEND_ENTRY_NAME);
    return NULL;
  }
  if (strstr(path, "cpu")) {
    const lunet_backend_i *(*naive)(void) =
        (const lunet_backend_i *(*)(void))dlsym(h, "lunet_cpu_naive_iface");
    C = naive ? naive() : entry()->iface;
  } else {
    validation_count = (int (*)(lunet_backend *))dlsym(h, "lunet_vk_validation_count");
  }
  return entry();
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s path/to/cpu.so path/to/vulkan.so\n", argv[0]);
    return 2;
  }
  setenv("LUNET_VULKAN_VALIDATION", "1", 0);
  if (!(cdesc = load(argv[1])) || !(vdesc = load(argv[2]))) return 1;
  char why[256] = "";
  if (vdesc->probe(why, sizeof why) <= 0) {
    printf("SKIP: %s\n", why);
    return SKIP_CODE;
  }
  cbe = cdesc->init(1, -1, why, sizeof why);
  if (!cbe) {
    fprintf(stderr, "cpu backend: %s\n", why);
    return 1;
  }
  vbe = vdesc->init(0, -1, why, sizeof why);
  if (!vbe) {
    fprintf(stderr, "vulkan backend init failed: %s\n", why);
    return 1;
  }
  V = vdesc->iface;
  lunet_backend_info info;
  V->describe(vbe, &info);
  printf("vulkan device: %s\n  %s\n", info.device, info.detail);
  /* The reductions in subgroup arithmetic: off when asked, and on lavapipe
   * (which has it) otherwise, so that both paths run under ctest. */
  const char *sg = getenv("LUNET_VULKAN_SUBGROUPS");
  bool sg_off = sg && !strcmp(sg, "0"), sg_used = strstr(info.detail, "subgroup reductions") != NULL;
  /* (lavapipe has them since Vulkan 1.2, where the backend can ask) */
  bool vk12 = strstr(info.detail, "Vulkan 1.0") == NULL && strstr(info.detail, "Vulkan 1.1") == NULL;
  if ((sg_off && sg_used) || (!sg_off && vk12 && strstr(info.device, "llvmpipe") && !sg_used)) {
    fprintf(stderr, "subgroup reductions %s with LUNET_VULKAN_SUBGROUPS=%s\n", sg_used ? "used" : "not used",
            sg ? sg : "(unset)");
    return 1;
  }
  int unsupported = 0;
  for (size_t i = 0; i < NOPS; i++)
    if (!has_op(all_ops[i].name)) {
      printf("unsupported: %s\n", all_ops[i].name);
      unsupported++;
    }
  printf("%d of %zu vtable members unsupported\n", unsupported, NOPS);
  SRunner *sr = srunner_create(vulkan_suite());
  /* One process: the device is opened once, and a fork would inherit the
   * driver's threads in an undefined state. */
  srunner_set_fork_status(sr, CK_NOFORK);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  int msgs = validation_count ? validation_count(vbe) : 0;
  vdesc->shutdown(vbe);
  cdesc->shutdown(cbe);
  if (msgs) fprintf(stderr, "the Vulkan validation layer reported %d messages\n", msgs);
  return failed || msgs ? 1 : 0;
}
