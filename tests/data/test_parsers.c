/*
 * The IDX and CIFAR-10 parsers on fixtures this test writes itself (zlib,
 * libarchive), and on corrupted copies: each error message is checked whole.
 * Pixel values follow closed formulas (idx_byte, cifar_px) so the expected
 * HWC values are computed independently of the parser's transpose.
 */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>
#include <zlib.h>

#include "lunet/data.h"

static char tmpdir[] = "/tmp/lunet_data_parse_XXXXXX";
static lunet_ctx *ctx;

static char *path_of(const char *name) {
  static char buf[4][512];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 512, "%s/%s", tmpdir, name);
  return p;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

static void make_tmp(void) {
  if (!mkdtemp(tmpdir)) abort();
}

static void remove_tmp(void) { nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void setup(void) { ctx = lunet_ctx_new(); }
static void teardown(void) { lunet_ctx_free(ctx); }

static void write_raw(const char *path, const uint8_t *b, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(b, 1, n, f), n);
  fclose(f);
}

static void write_gz(const char *path, const uint8_t *b, size_t n) {
  gzFile g = gzopen(path, "wb");
  ck_assert_ptr_nonnull(g);
  ck_assert_int_eq(gzwrite(g, b, (unsigned)n), (int)n);
  gzclose(g);
}

/* ---- IDX ---- */

static uint8_t idx_byte(int i) { return (uint8_t)(i * 37 + 5); }

/* An images file (2,3,4) with `extra` bytes of data added (negative: cut). */
static size_t idx_images(uint8_t *b, uint32_t magic, int extra) {
  uint8_t h[16] = {magic >> 24, magic >> 16, magic >> 8, magic, 0, 0, 0, 2, 0, 0, 0, 3,
                   0, 0, 0, 4};
  memcpy(b, h, 16);
  for (int i = 0; i < 24 + extra; i++) b[16 + i] = idx_byte(i);
  return (size_t)(16 + 24 + extra);
}

START_TEST(idx_labels_raw) {
  uint8_t b[] = {0, 0, 8, 1, 0, 0, 0, 5, 3, 1, 4, 1, 5};
  char *p = path_of("labels-idx1-ubyte");
  write_raw(p, b, sizeof b);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_OK);
  ck_assert_int_eq(a.ndim, 1);
  ck_assert_int_eq(a.shape[0], 5);
  ck_assert_mem_eq(a.data, b + 8, 5);
  lunet_array_free(&a);
  ck_assert_ptr_null(a.data);
}
END_TEST

/* A gzipped labels file of 20 records, label i % 10, with record 17 set to bad. */
static char *labels_with(const char *name, uint8_t bad) {
  uint8_t b[8 + 20] = {0, 0, 8, 1, 0, 0, 0, 20};
  for (int i = 0; i < 20; i++) b[8 + i] = (uint8_t)(i % 10);
  b[8 + 17] = bad;
  char *p = path_of(name);
  write_gz(p, b, sizeof b);
  return p;
}

START_TEST(idx_labels_in_range) {
  char *p = labels_with("ok-labels-idx1-ubyte.gz", 9);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx_labels(ctx, p, 9, &a), LUNET_OK);
  ck_assert_int_eq(a.ndim, 1);
  ck_assert_int_eq(a.shape[0], 20);
  ck_assert_uint_eq(a.data[17], 9);
  ck_assert_uint_eq(a.data[13], 3);
  lunet_array_free(&a);
}
END_TEST

START_TEST(idx_label_out_of_range) {
  char *p = labels_with("train-labels-idx1-ubyte.gz", 200);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx_labels(ctx, p, 9, &a), LUNET_ERR_FORMAT);
  ck_assert_ptr_null(a.data);
  char want[700];
  snprintf(want, sizeof want,
           "%s: label 200 at record 17 is outside 0..9 (the file is corrupt; delete it or pass "
           "path=)",
           p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  /* the same file with a wider range loads: the check is the only difference */
  ck_assert_int_eq(lunet_read_idx_labels(ctx, p, 255, &a), LUNET_OK);
  ck_assert_uint_eq(a.data[17], 200);
  lunet_array_free(&a);
}
END_TEST

START_TEST(idx_labels_from_images_file) {
  uint8_t b[64];
  size_t n = idx_images(b, 0x803, 0);
  char *p = path_of("swapped-idx3-ubyte.gz");
  write_gz(p, b, n);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx_labels(ctx, p, 9, &a), LUNET_ERR_FORMAT);
  ck_assert_ptr_null(a.data);
  char want[700];
  snprintf(want, sizeof want,
           "%s: expected a labels file (1 dim), got data of shape (2, 3, 4) (images and labels "
           "swapped?)",
           p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

START_TEST(idx_images_gz) {
  uint8_t b[64];
  size_t n = idx_images(b, 0x803, 0);
  char *p = path_of("images-idx3-ubyte.gz");
  write_gz(p, b, n);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_OK);
  ck_assert_int_eq(a.ndim, 3);
  ck_assert_int_eq(a.shape[0], 2);
  ck_assert_int_eq(a.shape[1], 3);
  ck_assert_int_eq(a.shape[2], 4);
  ck_assert_int_eq(lunet_array_numel(&a), 24);
  for (int i = 0; i < 24; i++) ck_assert_uint_eq(a.data[i], idx_byte(i));
  lunet_array_free(&a);
}
END_TEST

START_TEST(idx_bad_magic) {
  uint8_t b[64];
  size_t n = idx_images(b, 0x903, 0);
  char *p = path_of("badmagic-idx3-ubyte.gz");
  write_gz(p, b, n);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  ck_assert_ptr_null(a.data);
  char want[600];
  snprintf(want, sizeof want,
           "%s: bad magic 0x00000903, expected 0x00000803 (images) or 0x00000801 (labels) — "
           "not an IDX file of uint8 with 1 to 4 dims", p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

START_TEST(idx_truncated) {
  uint8_t b[64];
  size_t n = idx_images(b, 0x803, -10);
  char *p = path_of("short-idx3-ubyte.gz");
  write_gz(p, b, n);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  char want[600];
  snprintf(want, sizeof want,
           "%s: truncated: the data of shape (2, 3, 4) needs 24 bytes, the file holds 14", p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

START_TEST(idx_trailing_bytes) {
  uint8_t b[64];
  size_t n = idx_images(b, 0x803, 3);
  char *p = path_of("long-idx3-ubyte");
  write_raw(p, b, n);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  char want[600];
  snprintf(want, sizeof want,
           "%s: trailing bytes after the data of shape (2, 3, 4) (24 bytes); not a valid IDX "
           "file", p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

/* Headers from the fuzzer: dims whose product overflows 64 bits, and a
 * header claiming 5 GB in a file of 29 bytes (refused as truncated, read
 * without allocating the 5 GB first). */
START_TEST(idx_huge_headers) {
  static const uint8_t overflow[] = {0, 0, 8, 4, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                     0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  char *p = path_of("overflow-idx");
  write_raw(p, overflow, sizeof overflow);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  ck_assert_msg(strstr(lunet_ctx_error(ctx), "the header declares more than 17179869184 bytes of data"), "got: %s",
                lunet_ctx_error(ctx));
  static const uint8_t claims[] = {0, 0, 8, 2, 0, 0, 0, 2, 0x28, 0x4D, 0x72, 0x97, 1, 2, 3};
  p = path_of("claims-idx");
  write_raw(p, claims, sizeof claims);
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  char want[600];
  snprintf(want, sizeof want, "%s: truncated: the data of shape (2, 676164247) needs 1352328494 bytes, the file holds 3",
           p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

/* A gzip stream cut before its end (a partial download). */
START_TEST(idx_bad_gzip) {
  uint8_t b[4096];
  uint8_t h[16] = {0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 32, 0, 0, 0, 32};
  memcpy(b, h, 16);
  for (int i = 16; i < 4096; i++) b[i] = (uint8_t)(i * i >> 3);
  char *full = path_of("full.gz");
  write_gz(full, b, sizeof b);
  FILE *f = fopen(full, "rb");
  uint8_t gz[8192];
  size_t n = fread(gz, 1, sizeof gz, f);
  fclose(f);
  char *p = path_of("cut-idx3-ubyte.gz");
  write_raw(p, gz, n / 2);
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_FORMAT);
  char want[600];
  snprintf(want, sizeof want,
           "%s: corrupt or truncated gzip data (unexpected end of file); delete the file and "
           "download it again", p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

START_TEST(idx_missing_file) {
  char *p = path_of("nothing-here.gz");
  lunet_array a;
  ck_assert_int_eq(lunet_read_idx(ctx, p, &a), LUNET_ERR_NOTFOUND);
  char want[600];
  snprintf(want, sizeof want, "%s: cannot open: No such file or directory", p);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

/* ---- CIFAR-10 ---- */

#define REC 3073
#define PER_BATCH 3

static const char *const batch_names[6] = {"data_batch_1.bin", "data_batch_2.bin",
                                           "data_batch_3.bin", "data_batch_4.bin",
                                           "data_batch_5.bin", "test_batch.bin"};

static uint8_t cifar_label(int file, int r) { return (uint8_t)((file * PER_BATCH + r) % 10); }

/* Pixel (h, w) of channel c in record r of file `file`. */
static uint8_t cifar_px(int file, int r, int h, int w, int c) {
  return (uint8_t)(c * 80 + h * 7 + w * 3 + r * 11 + file * 29);
}

/* One batch file's bytes, in the official CHW record layout. */
static uint8_t *cifar_batch(int file, int n) {
  uint8_t *b = malloc((size_t)n * REC);
  for (int r = 0; r < n; r++) {
    uint8_t *rec = b + r * REC;
    rec[0] = cifar_label(file, r);
    for (int c = 0; c < 3; c++)
      for (int h = 0; h < 32; h++)
        for (int w = 0; w < 32; w++) rec[1 + c * 1024 + h * 32 + w] = cifar_px(file, r, h, w, c);
  }
  return b;
}

struct entry {
  const char *name;
  const uint8_t *data;
  size_t size;
};

static void add_entry(struct archive *a, const struct entry *e) {
  struct archive_entry *ae = archive_entry_new();
  archive_entry_set_pathname(ae, e->name);
  archive_entry_set_size(ae, (la_int64_t)e->size);
  archive_entry_set_filetype(ae, AE_IFREG);
  archive_entry_set_perm(ae, 0644);
  ck_assert_int_eq(archive_write_header(a, ae), ARCHIVE_OK);
  ck_assert_int_eq(archive_write_data(a, e->data, e->size), (la_ssize_t)e->size);
  archive_entry_free(ae);
}

/* The official layout: the six batches in cifar-10-batches-bin/ plus
 * batches.meta.txt.  `tweak(file, bytes, &size, &name)` may corrupt one. */
typedef void (*tweak_fn)(int file, uint8_t *b, size_t *size, const char **name);

static void write_cifar_tgz(const char *path, tweak_fn tweak, const char *extra_entry) {
  struct archive *a = archive_write_new();
  archive_write_add_filter_gzip(a);
  archive_write_set_format_pax_restricted(a);
  ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
  static const char meta[] = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
  struct entry m = {"cifar-10-batches-bin/batches.meta.txt", (const uint8_t *)meta,
                    sizeof meta - 1};
  add_entry(a, &m);
  if (extra_entry) {
    struct entry x = {extra_entry, (const uint8_t *)"x", 1};
    add_entry(a, &x);
  }
  for (int f = 0; f < 6; f++) {
    uint8_t *b = cifar_batch(f, PER_BATCH);
    size_t size = PER_BATCH * REC;
    char name[128];
    snprintf(name, sizeof name, "cifar-10-batches-bin/%s", batch_names[f]);
    const char *nm = name;
    if (tweak) tweak(f, b, &size, &nm);
    if (nm) {
      struct entry e = {nm, b, size};
      add_entry(a, &e);
    }
    free(b);
  }
  archive_write_close(a);
  archive_write_free(a);
}

static void write_cifar_dir(const char *dir) {
  mkdir(dir, 0755);
  for (int f = 0; f < 6; f++) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, batch_names[f]);
    uint8_t *b = cifar_batch(f, PER_BATCH);
    write_raw(p, b, PER_BATCH * REC);
    free(b);
  }
}

/* Checks every value of the four arrays against the formulas. */
static void assert_cifar(lunet_array *xtr, lunet_array *ytr, lunet_array *xte,
                         lunet_array *yte) {
  ck_assert_int_eq(xtr->ndim, 4);
  ck_assert_int_eq(xtr->shape[0], 5 * PER_BATCH);
  ck_assert_int_eq(xtr->shape[1], 32);
  ck_assert_int_eq(xtr->shape[2], 32);
  ck_assert_int_eq(xtr->shape[3], 3);
  ck_assert_int_eq(ytr->ndim, 1);
  ck_assert_int_eq(ytr->shape[0], 5 * PER_BATCH);
  ck_assert_int_eq(xte->shape[0], PER_BATCH);
  ck_assert_int_eq(yte->shape[0], PER_BATCH);
  for (int f = 0; f < 6; f++) {
    for (int r = 0; r < PER_BATCH; r++) {
      int n = f < 5 ? f * PER_BATCH + r : r;
      lunet_array *x = f < 5 ? xtr : xte, *y = f < 5 ? ytr : yte;
      ck_assert_uint_eq(y->data[n], cifar_label(f, r));
      for (int h = 0; h < 32; h++)
        for (int w = 0; w < 32; w++)
          for (int c = 0; c < 3; c++)
            ck_assert_uint_eq(x->data[((n * 32 + h) * 32 + w) * 3 + c],
                              cifar_px(f, r, h, w, c));
    }
  }
}

static void free4(lunet_array *a, lunet_array *b, lunet_array *c, lunet_array *d) {
  lunet_array_free(a);
  lunet_array_free(b);
  lunet_array_free(c);
  lunet_array_free(d);
}

/* Reads path expecting failure; returns the message. */
static const char *cifar_error(const char *path, lunet_status want) {
  lunet_array a, b, c, d;
  ck_assert_int_eq(lunet_read_cifar10(ctx, path, &a, &b, &c, &d), want);
  ck_assert_ptr_null(a.data);
  ck_assert_ptr_null(d.data);
  return lunet_ctx_error(ctx);
}

START_TEST(cifar_from_archive) {
  char *p = path_of("cifar-10-binary.tar.gz");
  write_cifar_tgz(p, NULL, NULL);
  lunet_array a, b, c, d;
  ck_assert_int_eq(lunet_read_cifar10(ctx, p, &a, &b, &c, &d), LUNET_OK);
  assert_cifar(&a, &b, &c, &d);
  free4(&a, &b, &c, &d);
}
END_TEST

START_TEST(cifar_from_directories) {
  char *top = path_of("cifar_dir");
  mkdir(top, 0755);
  char sub[600];
  snprintf(sub, sizeof sub, "%s/cifar-10-batches-bin", top);
  write_cifar_dir(sub);
  lunet_array a, b, c, d;
  ck_assert_int_eq(lunet_read_cifar10(ctx, top, &a, &b, &c, &d), LUNET_OK);
  assert_cifar(&a, &b, &c, &d);
  free4(&a, &b, &c, &d);
  ck_assert_int_eq(lunet_read_cifar10(ctx, sub, &a, &b, &c, &d), LUNET_OK);
  assert_cifar(&a, &b, &c, &d);
  free4(&a, &b, &c, &d);
}
END_TEST

/* The reader puts each batch in its place whatever order the archive holds
 * them in and whatever their sizes (batches of 1 to 300 records, crossing
 * the reader's chunks of 256 records). */
START_TEST(cifar_any_order_and_sizes) {
  static const int order[6] = {3, 5, 0, 4, 2, 1}, count[6] = {300, 1, 257, 2, 7, 260};
  char *p = path_of("shuffled.tar.gz");
  struct archive *w = archive_write_new();
  archive_write_add_filter_gzip(w);
  archive_write_set_format_pax_restricted(w);
  ck_assert_int_eq(archive_write_open_filename(w, p), ARCHIVE_OK);
  for (int i = 0; i < 6; i++) {
    int f = order[i];
    uint8_t *b = cifar_batch(f, count[f]);
    char name[128];
    snprintf(name, sizeof name, "cifar-10-batches-bin/%s", batch_names[f]);
    struct entry e = {name, b, (size_t)count[f] * REC};
    add_entry(w, &e);
    free(b);
  }
  archive_write_close(w);
  archive_write_free(w);
  lunet_array a[4];
  ck_assert_int_eq(lunet_read_cifar10(ctx, p, &a[0], &a[1], &a[2], &a[3]), LUNET_OK);
  ck_assert_int_eq(a[0].shape[0], 300 + 1 + 257 + 2 + 7);
  ck_assert_int_eq(a[3].shape[0], 260);
  int64_t n = 0;
  for (int f = 0; f < 6; f++) {
    if (f == 5) n = 0;
    lunet_array *x = &a[f < 5 ? 0 : 2], *y = &a[f < 5 ? 1 : 3];
    for (int r = 0; r < count[f]; r++, n++) {
      ck_assert_uint_eq(y->data[n], cifar_label(f, r));
      for (int h = 0; h < 32; h += 31)
        for (int w2 = 0; w2 < 32; w2 += 5)
          for (int c = 0; c < 3; c++)
            ck_assert_uint_eq(x->data[((n * 32 + h) * 32 + w2) * 3 + c], cifar_px(f, r, h, w2, c));
    }
  }
  free4(&a[0], &a[1], &a[2], &a[3]);
}
END_TEST

static void label_ten(int file, uint8_t *b, size_t *size, const char **name) {
  (void)size, (void)name;
  if (file == 1) b[1 * REC] = 10;
}

START_TEST(cifar_label_out_of_range) {
  char *p = path_of("label10.tar.gz");
  write_cifar_tgz(p, label_ten, NULL);
  ck_assert_str_eq(cifar_error(p, LUNET_ERR_FORMAT),
                   "cifar10: data_batch_2.bin: record 1 has label 10, expected 0..9 (the file "
                   "is corrupt; delete it or pass --data)");
}
END_TEST

static void cut_one_byte(int file, uint8_t *b, size_t *size, const char **name) {
  (void)b, (void)name;
  if (file == 2) *size -= 1;
}

START_TEST(cifar_wrong_record_size) {
  char *p = path_of("short.tar.gz");
  write_cifar_tgz(p, cut_one_byte, NULL);
  ck_assert_str_eq(cifar_error(p, LUNET_ERR_FORMAT),
                   "cifar10: data_batch_3.bin is 9218 bytes, not a whole number of 3073-byte "
                   "records (the download is truncated or corrupt; delete it or pass --data)");
}
END_TEST

static void drop_test(int file, uint8_t *b, size_t *size, const char **name) {
  (void)b, (void)size;
  if (file == 5) *name = NULL;
}

START_TEST(cifar_missing_batch) {
  char *p = path_of("missing.tar.gz");
  write_cifar_tgz(p, drop_test, NULL);
  char want[800];
  snprintf(want, sizeof want,
           "cifar10: %s: test_batch.bin not found (expected data_batch_1.bin .. "
           "data_batch_5.bin and test_batch.bin, in cifar-10-batches-bin/ or at the top)", p);
  ck_assert_str_eq(cifar_error(p, LUNET_ERR_FORMAT), want);
}
END_TEST

START_TEST(cifar_path_traversal) {
  const char *bad[] = {"cifar-10-batches-bin/../../evil.bin", "/etc/evil.bin"};
  for (int i = 0; i < 2; i++) {
    char *p = path_of(i ? "abs.tar.gz" : "dotdot.tar.gz");
    write_cifar_tgz(p, NULL, bad[i]);
    char want[800];
    snprintf(want, sizeof want,
             "cifar10: %s: refusing archive entry \"%s\" (an absolute path or a \"..\" "
             "component; the archive is unsafe or corrupt)", p, bad[i]);
    ck_assert_str_eq(cifar_error(p, LUNET_ERR_FORMAT), want);
  }
}
END_TEST

START_TEST(cifar_corrupt_gzip) {
  char *good = path_of("good.tar.gz");
  write_cifar_tgz(good, NULL, NULL);
  FILE *f = fopen(good, "rb");
  static uint8_t buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  char *p = path_of("cut.tar.gz");
  write_raw(p, buf, n / 2);
  char prefix[600];
  snprintf(prefix, sizeof prefix, "cifar10: %s: corrupt archive (", p);
  const char *msg = cifar_error(p, LUNET_ERR_FORMAT);
  ck_assert_msg(strncmp(msg, prefix, strlen(prefix)) == 0, "got: %s", msg);
  const char *tail = "); delete it and download it again";
  ck_assert_str_eq(msg + strlen(msg) - strlen(tail), tail);
  /* Not an archive at all. */
  p = path_of("garbage.tar.gz");
  write_raw(p, (const uint8_t *)"this is not a tar.gz file", 25);
  msg = cifar_error(p, LUNET_ERR_FORMAT);
  snprintf(prefix, sizeof prefix, "cifar10: %s: corrupt archive (", p);
  ck_assert_msg(strncmp(msg, prefix, strlen(prefix)) == 0, "got: %s", msg);
}
END_TEST

/* The bytes of `path`; *n gets their count. */
static uint8_t *slurp(const char *path, long *n) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  rewind(f);
  uint8_t *buf = malloc((size_t)*n);
  ck_assert_int_eq(fread(buf, 1, (size_t)*n, f), *n);
  fclose(f);
  return buf;
}

/* A download whose gzip trailer does not match its data (the CRC, then the
 * length) is refused, though every deflate block still inflates: the pixels
 * could be wrong.  libarchive alone skips the trailer.  Twice: as written,
 * and with 256 KiB of zeros after the tar's end (tar readers stop at its
 * end marker, so the trailer lies past what the tar reader asks for). */
START_TEST(cifar_gzip_trailer_checked) {
  char *good = path_of("trailer.tar.gz");
  write_cifar_tgz(good, NULL, NULL);
  for (int padded = 0; padded < 2; padded++) {
    if (padded) { /* the same tar and the zeros, gzipped again */
      gzFile in = gzopen(good, "rb");
      static uint8_t tar[1 << 22];
      int len = gzread(in, tar, sizeof tar);
      gzclose(in);
      ck_assert_int_gt(len, 0);
      ck_assert_int_lt(len + (1 << 18), (int)sizeof tar);
      memset(tar + len, 0, 1 << 18);
      gzFile out = gzopen(good, "wb");
      ck_assert_int_eq(gzwrite(out, tar, (unsigned)len + (1u << 18)), len + (1 << 18));
      gzclose(out);
      lunet_array a, b, c, d; /* still good */
      ck_assert_int_eq(lunet_read_cifar10(ctx, good, &a, &b, &c, &d), LUNET_OK);
      free4(&a, &b, &c, &d);
    }
    long n;
    uint8_t *buf = slurp(good, &n);
    static const char *const what[2] = {"incorrect data check", "incorrect length check"};
    for (int i = 0; i < 2; i++) {
      buf[n - 8 + 4 * i] ^= 0x01; /* the CRC-32's first byte, then ISIZE's */
      char name[64];
      snprintf(name, sizeof name, "bad_%s%s.tar.gz", i ? "length" : "crc", padded ? "_padded" : "");
      char *p = path_of(name);
      write_raw(p, buf, (size_t)n);
      buf[n - 8 + 4 * i] ^= 0x01;
      char want[800];
      snprintf(want, sizeof want,
               "cifar10: %s: corrupt archive (%s); delete it and download it again", p, what[i]);
      ck_assert_str_eq(cifar_error(p, LUNET_ERR_FORMAT), want);
    }
    free(buf);
  }
}
END_TEST

START_TEST(cifar_missing_path) {
  char *p = path_of("no-such.tar.gz");
  char want[800];
  snprintf(want, sizeof want,
           "cifar10: %s: No such file or directory (pass cifar-10-binary.tar.gz or a directory "
           "holding cifar-10-batches-bin/)", p);
  ck_assert_str_eq(cifar_error(p, LUNET_ERR_NOTFOUND), want);
}
END_TEST

int main(void) {
  Suite *s = suite_create("data_parsers");
  TCase *tc = tcase_create("parsers");
  tcase_add_unchecked_fixture(tc, make_tmp, remove_tmp);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, idx_labels_raw);
  tcase_add_test(tc, idx_images_gz);
  tcase_add_test(tc, idx_labels_in_range);
  tcase_add_test(tc, idx_label_out_of_range);
  tcase_add_test(tc, idx_labels_from_images_file);
  tcase_add_test(tc, idx_bad_magic);
  tcase_add_test(tc, idx_truncated);
  tcase_add_test(tc, idx_trailing_bytes);
  tcase_add_test(tc, idx_bad_gzip);
  tcase_add_test(tc, idx_missing_file);
  tcase_add_test(tc, idx_huge_headers);
  tcase_add_test(tc, cifar_from_archive);
  tcase_add_test(tc, cifar_from_directories);
  tcase_add_test(tc, cifar_any_order_and_sizes);
  tcase_add_test(tc, cifar_label_out_of_range);
  tcase_add_test(tc, cifar_wrong_record_size);
  tcase_add_test(tc, cifar_missing_batch);
  tcase_add_test(tc, cifar_path_traversal);
  tcase_add_test(tc, cifar_corrupt_gzip);
  tcase_add_test(tc, cifar_gzip_trailer_checked);
  tcase_add_test(tc, cifar_missing_path);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
