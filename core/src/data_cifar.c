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
#include <zlib.h>

#include "lunet/data.h"
#include "internal.h"

#define REC_BYTES 3073
#define PIXELS 1024 /* 32 x 32 */
#define NFILES 6    /* five training batches, then the test batch */

static const char *const cifar_files[NFILES] = {"data_batch_1.bin", "data_batch_2.bin",
                                                "data_batch_3.bin", "data_batch_4.bin",
                                                "data_batch_5.bin", "test_batch.bin"};

static lunet_status check_size(lunet_ctx *ctx, const char *name, int64_t size) {
  if (size > 0 && size % REC_BYTES == 0) return LUNET_OK;
  return lunet_error(ctx, LUNET_ERR_FORMAT,
                     "cifar10: %s is %lld bytes, not a whole number of 3073-byte records "
                     "(the download is truncated or corrupt; delete it or pass --data)",
                     name, (long long)size);
}

/* What has been read: the five training batches in one buffer, in file
 * order whatever order the archive holds them in (set 0), and the test
 * batch (set 1).  Each file is converted as it streams in, a chunk of
 * records at a time, so no file is ever held raw and no batch is copied
 * into the training set afterwards. */
struct cifar_set {
  uint8_t *x, *y; /* (n,32,32,3) HWC and (n) */
  int64_t n;
};
struct cifar_read {
  struct cifar_set set[2];
  int64_t count[NFILES]; /* records of each file; 0: not seen (a file holds at least one) */
};

static void cifar_read_free(struct cifar_read *r) {
  for (int i = 0; i < 2; i++) {
    free(r->set[i].x);
    free(r->set[i].y);
  }
  memset(r, 0, sizeof *r);
}

/* A source of bytes: the archive entry or the .bin file being read.  read
 * returns the bytes read, 0 at the end, < 0 on an error that fail reports. */
struct source {
  long long (*read)(void *handle, void *buf, size_t len);
  lunet_status (*fail)(lunet_ctx *ctx, const struct source *s);
  void *handle;
  const char *where; /* the archive or the file, for messages */
};

/* Makes room for file idx's n records at its place in its set; the first
 * one's index through *at. */
static lunet_status make_room(lunet_ctx *ctx, struct cifar_read *r, int idx, int64_t n,
                              int64_t *at) {
  struct cifar_set *s = &r->set[idx < 5 ? 0 : 1];
  int64_t pos = 0;
  for (int j = 0; j < idx && idx < 5; j++) pos += r->count[j];
  uint8_t *x = realloc(s->x, (size_t)(s->n + n) * 3 * PIXELS);
  if (x) s->x = x;
  uint8_t *y = x ? realloc(s->y, (size_t)(s->n + n)) : NULL;
  if (y) s->y = y;
  if (!x || !y)
    return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: out of memory for %lld images",
                       (long long)(s->n + n));
  memmove(s->x + (pos + n) * 3 * PIXELS, s->x + pos * 3 * PIXELS,
          (size_t)(s->n - pos) * 3 * PIXELS);
  memmove(s->y + pos + n, s->y + pos, (size_t)(s->n - pos));
  s->n += n;
  r->count[idx] = n;
  *at = pos;
  return LUNET_OK;
}

/* raw records -> x HWC and y, checking each label. */
static lunet_status convert(lunet_ctx *ctx, const char *name, const uint8_t *raw, int64_t n,
                            int64_t first, uint8_t *x, uint8_t *y) {
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *rec = raw + r * REC_BYTES;
    if (rec[0] > 9)
      return lunet_error(ctx, LUNET_ERR_FORMAT,
                         "cifar10: %s: record %lld has label %d, expected 0..9 (the file is "
                         "corrupt; delete it or pass --data)",
                         name, (long long)(first + r), rec[0]);
    y[r] = rec[0];
    uint8_t *px = x + r * 3 * PIXELS;
    for (int p = 0; p < PIXELS; p++)
      for (int c = 0; c < 3; c++) px[3 * p + c] = rec[1 + c * PIXELS + p];
  }
  return LUNET_OK;
}

#define CHUNK_RECORDS 256

/* Streams file idx (size bytes, whole records) from src into its place. */
static lunet_status read_records(lunet_ctx *ctx, const struct source *from, int idx, int64_t size,
                                 struct cifar_read *r) {
  const char *where = from->where;
  const char *name = cifar_files[idx];
  if (r->count[idx] > 0)
    return lunet_error(ctx, LUNET_ERR_FORMAT, "cifar10: %s: %s appears twice", where, name);
  int64_t n = size / REC_BYTES, at = 0;
  if (make_room(ctx, r, idx, n, &at) != LUNET_OK) return LUNET_ERR_NOMEM;
  struct cifar_set *s = &r->set[idx < 5 ? 0 : 1];
  uint8_t *chunk = malloc((size_t)CHUNK_RECORDS * REC_BYTES);
  if (!chunk) return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: %s: out of memory", name);
  lunet_status st = LUNET_OK;
  for (int64_t done = 0; st == LUNET_OK && done < n;) {
    int64_t k = n - done < CHUNK_RECORDS ? n - done : CHUNK_RECORDS;
    size_t want = (size_t)k * REC_BYTES, got = 0;
    long long m = 1;
    while (got < want && (m = from->read(from->handle, chunk + got, want - got)) > 0)
      got += (size_t)m;
    if (m < 0)
      st = from->fail(ctx, from);
    else if (got < want)
      st = lunet_error(ctx, LUNET_ERR_FORMAT,
                       "cifar10: %s: %s is cut short (%lld of %lld bytes); "
                       "delete it and download it again",
                       where, name, (long long)(done * REC_BYTES + (int64_t)got),
                       (long long)size);
    else
      st = convert(ctx, name, chunk, k, done, s->x + (at + done) * 3 * PIXELS, s->y + at + done);
    done += k;
  }
  free(chunk);
  return st;
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

/* The archive's bytes come through zlib's gzread, not libarchive's gzip
 * filter: libarchive never checks the gzip trailer's CRC and length, so a
 * corrupted download that still inflates would load as wrong pixels.
 * gzread checks them at the end of each member (drained after the tar's
 * end) and passes a file that is not gzip through unchanged, for
 * libarchive's other filters. */
struct gz_in {
  gzFile g;
  const char *path;
  unsigned char buf[1 << 16];
};

static la_ssize_t gz_in_read(struct archive *a, void *in, const void **buf) {
  struct gz_in *z = in;
  int n = gzread(z->g, z->buf, sizeof z->buf);
  if (n < 0) {
    int err;
    archive_set_error(a, EIO, "%s", lunet_gz_message(z->g, z->path, &err));
    return ARCHIVE_FATAL;
  }
  *buf = z->buf;
  return n;
}

static long long archive_source_read(void *a, void *buf, size_t len) {
  return (long long)archive_read_data(a, buf, len);
}

static lunet_status archive_source_fail(lunet_ctx *ctx, const struct source *s) {
  return archive_fail(ctx, s->handle, s->where);
}

static lunet_status read_archive(lunet_ctx *ctx, const char *path, struct cifar_read *rd) {
  struct archive *a = archive_read_new();
  if (!a) return lunet_error(ctx, LUNET_ERR_NOMEM, "cifar10: out of memory");
  struct gz_in *z = malloc(sizeof *z);
  if (z) {
    z->g = gzopen(path, "rb");
    z->path = path;
  }
  if (!z || !z->g) {
    free(z);
    archive_read_free(a);
    return lunet_error(ctx, z ? LUNET_ERR_IO : LUNET_ERR_NOMEM, "cifar10: %s: %s", path,
                       z ? strerror(errno) : "out of memory");
  }
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  lunet_status st = LUNET_OK;
  if (archive_read_open(a, z, NULL, gz_in_read, NULL) != ARCHIVE_OK) {
    st = archive_fail(ctx, a, path);
    archive_read_free(a);
    gzclose(z->g);
    free(z);
    return st;
  }
  struct source from = {archive_source_read, archive_source_fail, a, path};
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
    if (idx < 0 || archive_entry_filetype(e) != AE_IFREG) continue;
    int64_t size = archive_entry_size(e);
    st = check_size(ctx, cifar_files[idx], size);
    if (st == LUNET_OK) st = read_records(ctx, &from, idx, size, rd);
  }
  if (st == LUNET_OK && r != ARCHIVE_EOF) st = archive_fail(ctx, a, path);
  while (st == LUNET_OK) { /* past the tar's end, to the gzip trailer */
    int n = gzread(z->g, z->buf, sizeof z->buf);
    if (n > 0) continue;
    int err;
    if (n < 0)
      st = lunet_error(ctx, LUNET_ERR_FORMAT,
                       "cifar10: %s: corrupt archive (%s); delete it and download it again", path,
                       lunet_gz_message(z->g, path, &err));
    break;
  }
  archive_read_free(a);
  gzclose(z->g);
  free(z);
  return st;
}

/* ---- from a directory ---- */

static long long file_source_read(void *f, void *buf, size_t len) {
  size_t n = fread(buf, 1, len, f);
  return n == 0 && ferror(f) ? -1 : (long long)n;
}

static lunet_status file_source_fail(lunet_ctx *ctx, const struct source *s) {
  return lunet_error(ctx, LUNET_ERR_IO, "cifar10: %s: read error", s->where);
}

static lunet_status read_bin_file(lunet_ctx *ctx, const char *file, int idx, struct cifar_read *rd) {
  FILE *f = fopen(file, "rb");
  if (!f) return lunet_error(ctx, LUNET_ERR_IO, "cifar10: %s: %s", file, strerror(errno));
  struct stat st;
  int64_t size = fstat(fileno(f), &st) == 0 ? (int64_t)st.st_size : -1;
  struct source from = {file_source_read, file_source_fail, f, file};
  lunet_status s = check_size(ctx, cifar_files[idx], size);
  if (s == LUNET_OK) s = read_records(ctx, &from, idx, size, rd);
  fclose(f);
  return s;
}

static lunet_status read_dir(lunet_ctx *ctx, const char *dir, struct cifar_read *rd) {
  for (int i = 0; i < NFILES; i++) {
    char file[4096];
    struct stat st;
    snprintf(file, sizeof file, "%s/cifar-10-batches-bin/%s", dir, cifar_files[i]);
    if (stat(file, &st) != 0) snprintf(file, sizeof file, "%s/%s", dir, cifar_files[i]);
    if (stat(file, &st) != 0) continue; /* reported as missing below */
    if (read_bin_file(ctx, file, i, rd) != LUNET_OK) return lunet_ctx_status(ctx);
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
  struct cifar_read rd;
  memset(&rd, 0, sizeof rd);
  lunet_status s = S_ISDIR(st.st_mode) ? read_dir(ctx, path, &rd) : read_archive(ctx, path, &rd);
  for (int i = 0; s == LUNET_OK && i < NFILES; i++)
    if (rd.count[i] == 0)
      s = lunet_error(ctx, LUNET_ERR_FORMAT,
                      "cifar10: %s: %s not found (expected data_batch_1.bin .. "
                      "data_batch_5.bin and test_batch.bin, in cifar-10-batches-bin/ or at the "
                      "top)",
                      path, cifar_files[i]);
  if (s != LUNET_OK) {
    cifar_read_free(&rd);
    return s;
  }
  set_array(x_train, rd.set[0].x, rd.set[0].n, true);
  set_array(y_train, rd.set[0].y, rd.set[0].n, false);
  set_array(x_test, rd.set[1].x, rd.set[1].n, true);
  set_array(y_test, rd.set[1].y, rd.set[1].n, false);
  return LUNET_OK;
}
