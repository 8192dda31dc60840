/*
 * CIFAR-10, binary version: read straight from cifar-10-binary.tar.gz with
 * libarchive (nothing is extracted), or from a directory of .bin files.
 * Each record is 3073 bytes: a label, then the R, G and B planes (32x32,
 * row-major, so CHW); we return HWC like Keras.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>

#include "lunet/data.h"

#define REC_BYTES 3073
#define PIXELS 1024 /* 32 x 32 */
#define NFILES 6    /* five training batches, then the test batch */

static const char *const cifar_files[NFILES] = {"data_batch_1.bin", "data_batch_2.bin",
                                                "data_batch_3.bin", "data_batch_4.bin",
                                                "data_batch_5.bin", "test_batch.bin"};

/* One batch file, converted: x (n,32,32,3), y (n). */
struct batch {
  uint8_t *x, *y;
  int64_t n;
  bool seen;
};

static void batches_free(struct batch *b) {
  for (int i = 0; i < NFILES; i++) {
    free(b[i].x);
    free(b[i].y);
  }
  memset(b, 0, NFILES * sizeof *b);
}

static lunet_status check_size(lunet_ctx *ctx, const char *name, int64_t size) {
  if (size > 0 && size % REC_BYTES == 0) return LUNET_OK;
  return lunet_error(ctx, LUNET_ERR_FORMAT,
                     "cifar10: %s is %lld bytes, not a whole number of 3073-byte records "
                     "(the download is truncated or corrupt; delete it or pass --data)",
                     name, (long long)size);
}

/* raw (n,3073) records -> b->x (n,32,32,3) HWC and b->y (n). */
static lunet_status convert(lunet_ctx *ctx, const char *name, const uint8_t *raw, int64_t size,
                            struct batch *b) {
  int64_t n = size / REC_BYTES;
  b->x = malloc((size_t)n * 3 * PIXELS);
  b->y = malloc((size_t)n);
  if (!b->x || !b->y) return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: %s: out of memory", name);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *rec = raw + r * REC_BYTES;
    if (rec[0] > 9)
      return lunet_error(ctx, LUNET_ERR_FORMAT,
                         "cifar10: %s: record %lld has label %d, expected 0..9 (the file is "
                         "corrupt; delete it or pass --data)",
                         name, (long long)r, rec[0]);
    b->y[r] = rec[0];
    uint8_t *px = b->x + r * 3 * PIXELS;
    for (int p = 0; p < PIXELS; p++)
      for (int c = 0; c < 3; c++) px[3 * p + c] = rec[1 + c * PIXELS + p];
  }
  b->n = n;
  b->seen = true;
  return LUNET_OK;
}

static int file_index(const char *base) {
  for (int i = 0; i < NFILES; i++)
    if (strcmp(base, cifar_files[i]) == 0) return i;
  return -1;
}

/* ---- from the archive ---- */

/* An absolute path or a ".." component could point outside any folder. */
static bool unsafe_entry(const char *name) {
  if (name[0] == '/') return true;
  for (const char *p = name; *p;) {
    size_t len = strcspn(p, "/");
    if (len == 2 && p[0] == '.' && p[1] == '.') return true;
    p += len;
    while (*p == '/') p++;
  }
  return false;
}

/* The index of a batch file at the top or in cifar-10-batches-bin/, else -1. */
static int entry_index(const char *name) {
  while (name[0] == '.' && name[1] == '/') name += 2;
  const char *dir = "cifar-10-batches-bin/";
  if (strncmp(name, dir, strlen(dir)) == 0) name += strlen(dir);
  return strchr(name, '/') ? -1 : file_index(name);
}

static lunet_status archive_fail(lunet_ctx *ctx, struct archive *a, const char *path) {
  const char *msg = archive_error_string(a);
  return lunet_error(ctx, LUNET_ERR_FORMAT,
                     "cifar10: %s: corrupt archive (%s); delete it and download it again", path,
                     msg ? msg : "unknown error");
}

static lunet_status read_entry(lunet_ctx *ctx, struct archive *a, struct archive_entry *e,
                               const char *path, int idx, struct batch *b) {
  const char *name = cifar_files[idx];
  if (b[idx].seen)
    return lunet_error(ctx, LUNET_ERR_FORMAT, "cifar10: %s: %s appears twice in the archive", path,
                       name);
  int64_t size = archive_entry_size(e);
  if (check_size(ctx, name, size) != LUNET_OK) return LUNET_ERR_FORMAT;
  uint8_t *raw = malloc((size_t)size);
  if (!raw) return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: %s: out of memory", name);
  int64_t got = 0;
  while (got < size) {
    la_ssize_t r = archive_read_data(a, raw + got, (size_t)(size - got));
    if (r < 0) {
      free(raw);
      return archive_fail(ctx, a, path);
    }
    if (r == 0) break;
    got += r;
  }
  lunet_status st = got == size ? convert(ctx, name, raw, size, &b[idx])
                                : lunet_error(ctx, LUNET_ERR_FORMAT,
                                              "cifar10: %s: %s is cut short (%lld of %lld "
                                              "bytes); delete the archive and download it again",
                                              path, name, (long long)got, (long long)size);
  free(raw);
  return st;
}

static lunet_status read_archive(lunet_ctx *ctx, const char *path, struct batch *b) {
  struct archive *a = archive_read_new();
  if (!a) return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: out of memory");
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  lunet_status st = LUNET_OK;
  if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
    st = archive_fail(ctx, a, path);
    archive_read_free(a);
    return st;
  }
  struct archive_entry *e;
  int r;
  while (st == LUNET_OK && (r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    const char *name = archive_entry_pathname(e);
    if (!name) name = "";
    if (unsafe_entry(name)) {
      st = lunet_error(ctx, LUNET_ERR_FORMAT,
                       "cifar10: %s: refusing archive entry \"%s\" (an absolute path or a "
                       "\"..\" component; the archive is unsafe or corrupt)",
                       path, name);
      break;
    }
    int idx = entry_index(name);
    if (idx >= 0 && archive_entry_filetype(e) == AE_IFREG) st = read_entry(ctx, a, e, path, idx, b);
  }
  if (st == LUNET_OK && r != ARCHIVE_EOF) st = archive_fail(ctx, a, path);
  archive_read_free(a);
  return st;
}

/* ---- from a directory ---- */

static lunet_status read_bin_file(lunet_ctx *ctx, const char *file, int idx, struct batch *b) {
  const char *name = cifar_files[idx];
  FILE *f = fopen(file, "rb");
  if (!f) return lunet_error(ctx, LUNET_ERR_IO, "cifar10: %s: %s", file, strerror(errno));
  struct stat st;
  int64_t size = fstat(fileno(f), &st) == 0 ? (int64_t)st.st_size : -1;
  lunet_status s = check_size(ctx, name, size);
  uint8_t *raw = s == LUNET_OK ? malloc((size_t)size) : NULL;
  if (s == LUNET_OK && !raw) s = lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: out of memory");
  if (s == LUNET_OK && fread(raw, 1, (size_t)size, f) != (size_t)size)
    s = lunet_error(ctx, LUNET_ERR_IO, "cifar10: %s: read error", file);
  if (s == LUNET_OK) s = convert(ctx, name, raw, size, &b[idx]);
  free(raw);
  fclose(f);
  return s;
}

static lunet_status read_dir(lunet_ctx *ctx, const char *dir, struct batch *b) {
  for (int i = 0; i < NFILES; i++) {
    char file[4096];
    struct stat st;
    snprintf(file, sizeof file, "%s/cifar-10-batches-bin/%s", dir, cifar_files[i]);
    if (stat(file, &st) != 0) snprintf(file, sizeof file, "%s/%s", dir, cifar_files[i]);
    if (stat(file, &st) != 0) continue; /* reported as missing below */
    if (read_bin_file(ctx, file, i, b) != LUNET_OK) return lunet_ctx_status(ctx);
  }
  return LUNET_OK;
}

/* ---- assembly ---- */

static void set_array(lunet_array *a, uint8_t *data, int64_t n, bool images) {
  a->data = data;
  a->ndim = images ? 4 : 1;
  a->shape[0] = n;
  if (images) a->shape[1] = 32, a->shape[2] = 32, a->shape[3] = 3;
}

/* Concatenates the five training batches; hands the test batch over. */
static lunet_status assemble(lunet_ctx *ctx, struct batch *b, lunet_array *xtr, lunet_array *ytr,
                             lunet_array *xte, lunet_array *yte) {
  int64_t n = 0;
  for (int i = 0; i < 5; i++) n += b[i].n;
  uint8_t *x = malloc((size_t)n * 3 * PIXELS), *y = malloc((size_t)n);
  if (!x || !y) {
    free(x);
    free(y);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: out of memory for %lld images",
                       (long long)n);
  }
  int64_t at = 0;
  for (int i = 0; i < 5; i++) {
    memcpy(x + at * 3 * PIXELS, b[i].x, (size_t)b[i].n * 3 * PIXELS);
    memcpy(y + at, b[i].y, (size_t)b[i].n);
    at += b[i].n;
  }
  set_array(xtr, x, n, true);
  set_array(ytr, y, n, false);
  set_array(xte, b[5].x, b[5].n, true);
  set_array(yte, b[5].y, b[5].n, false);
  b[5].x = b[5].y = NULL;
  return LUNET_OK;
}

lunet_status lunet_read_cifar10(lunet_ctx *ctx, const char *path, lunet_array *x_train,
                                lunet_array *y_train, lunet_array *x_test, lunet_array *y_test) {
  lunet_array *outs[4] = {x_train, y_train, x_test, y_test};
  for (int i = 0; i < 4; i++) memset(outs[i], 0, sizeof *outs[i]);
  struct stat st;
  if (stat(path, &st) != 0)
    return lunet_error(ctx, LUNET_ERR_NOTFOUND,
                       "cifar10: %s: %s (pass cifar-10-binary.tar.gz or a directory holding "
                       "cifar-10-batches-bin/)",
                       path, strerror(errno));
  struct batch b[NFILES];
  memset(b, 0, sizeof b);
  lunet_status s = S_ISDIR(st.st_mode) ? read_dir(ctx, path, b) : read_archive(ctx, path, b);
  for (int i = 0; s == LUNET_OK && i < NFILES; i++)
    if (!b[i].seen)
      s = lunet_error(ctx, LUNET_ERR_FORMAT,
                      "cifar10: %s: %s not found (expected data_batch_1.bin .. "
                      "data_batch_5.bin and test_batch.bin, in cifar-10-batches-bin/ or at the "
                      "top)",
                      path, cifar_files[i]);
  if (s == LUNET_OK) s = assemble(ctx, b, x_train, y_train, x_test, y_test);
  batches_free(b);
  return s;
}
