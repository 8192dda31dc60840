/* IDX files (MNIST, Fashion-MNIST), raw or gzip: zlib's gzread reads both. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "lunet/data.h"
#include "internal.h"

/* A header may not promise more than this (a corrupt one would ask for TBs). */
#define IDX_MAX_BYTES ((int64_t)1 << 34)
#define IDX_FIRST_BYTES ((int64_t)1 << 20) /* the body's first buffer; doubled as data arrives */

int64_t lunet_array_numel(const lunet_array *a) {
  int64_t n = 1;
  for (int i = 0; i < a->ndim; i++) n *= a->shape[i];
  return n;
}

void lunet_array_free(lunet_array *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

/* Reads up to n bytes; returns the count, or -1 on a gzip error. */
static int64_t gz_read_all(gzFile g, uint8_t *buf, int64_t n) {
  int64_t got = 0;
  while (got < n) {
    unsigned chunk = n - got > (1 << 30) ? (1u << 30) : (unsigned)(n - got);
    int r = gzread(g, buf + got, chunk);
    if (r < 0) return -1;
    if (r == 0) break;
    got += r;
  }
  return got;
}

const char *lunet_gz_message(gzFile g, const char *path, int *err) {
  const char *msg = gzerror(g, err);
  size_t plen = strlen(path); /* zlib puts the path in front; we already do */
  if (strncmp(msg, path, plen) == 0 && strncmp(msg + plen, ": ", 2) == 0) msg += plen + 2;
  return msg;
}

/* After a short read: a gzip error (corrupt or cut stream) or a plain EOF. */
static lunet_status short_read(lunet_ctx *ctx, gzFile g, const char *path, const char *what,
                               int64_t want, int64_t got) {
  int err = Z_OK;
  const char *msg = lunet_gz_message(g, path, &err);
  if (err != Z_OK && err != Z_STREAM_END)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: corrupt or truncated gzip data (%s); delete the file and download "
                       "it again",
                       path, msg);
  return lunet_error(ctx, LUNET_ERR_FORMAT,
                     "%s: truncated: %s needs %lld bytes, the file holds %lld", path, what,
                     (long long)want, (long long)(got < 0 ? 0 : got));
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Validates magic and dims; fills out->ndim/shape. */
static lunet_status read_header(lunet_ctx *ctx, gzFile g, const char *path, lunet_array *out) {
  uint8_t h[4 + 4 * 4];
  int64_t got = gz_read_all(g, h, 4);
  if (got != 4) return short_read(ctx, g, path, "the IDX magic", 4, got);
  uint32_t magic = be32(h);
  int ndim = h[3];
  if (h[0] != 0 || h[1] != 0 || h[2] != 0x08 || ndim < 1 || ndim > 4)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: bad magic 0x%08x, expected 0x00000803 (images) or 0x00000801 "
                       "(labels) — not an IDX file of uint8 with 1 to 4 dims",
                       path, magic);
  got = gz_read_all(g, h + 4, 4 * ndim);
  if (got != 4 * ndim) return short_read(ctx, g, path, "the IDX header", 4 * ndim, got);
  out->ndim = ndim;
  int64_t total = 1;
  for (int i = 0; i < ndim; i++) {
    out->shape[i] = be32(h + 4 + 4 * i);
    /* checked before the product, which could overflow */
    if (out->shape[i] > 0 && total > IDX_MAX_BYTES / out->shape[i])
      return lunet_error(ctx, LUNET_ERR_FORMAT,
                         "%s: the header declares more than %lld bytes of data (corrupt header)",
                         path, (long long)IDX_MAX_BYTES);
    total *= out->shape[i];
  }
  return LUNET_OK;
}

/* "(60000, 28, 28)"; our own so messages do not depend on the core's format. */
static void shape_text(const lunet_array *a, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "(");
  for (int i = 0; i < a->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)a->shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
}

static lunet_status read_body(lunet_ctx *ctx, gzFile g, const char *path, lunet_array *out) {
  int64_t n = lunet_array_numel(out);
  char shape[96], what[160];
  shape_text(out, shape, sizeof shape);
  snprintf(what, sizeof what, "the data of shape %s", shape);
  /* The buffer grows with the data that arrives, so a header that claims
   * gigabytes in a file of a few bytes costs nothing. */
  int64_t cap = n < IDX_FIRST_BYTES ? (n > 0 ? n : 1) : IDX_FIRST_BYTES, got = 0;
  out->data = malloc((size_t)cap);
  for (;;) {
    if (!out->data)
      return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: cannot allocate %lld bytes", path, (long long)cap);
    int64_t r = gz_read_all(g, out->data + got, (n < cap ? n : cap) - got);
    if (r < 0) return short_read(ctx, g, path, what, n, r);
    got += r;
    if (got == n || got < cap) break; /* all of it, or the end of the file */
    cap = cap > n / 2 ? n : 2 * cap;
    uint8_t *more = realloc(out->data, (size_t)cap);
    if (!more) free(out->data);
    out->data = more;
  }
  if (got != n) return short_read(ctx, g, path, what, n, got);
  uint8_t extra;
  int64_t more = gz_read_all(g, &extra, 1);
  if (more < 0) return short_read(ctx, g, path, what, n, n);
  if (more > 0)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: trailing bytes after %s (%lld bytes); not a valid IDX file", path, what,
                       (long long)n);
  return LUNET_OK;
}

lunet_status lunet_read_idx(lunet_ctx *ctx, const char *path, lunet_array *out) {
  memset(out, 0, sizeof *out);
  gzFile g = gzopen(path, "rb");
  if (!g)
    return lunet_error(ctx, errno == ENOENT ? LUNET_ERR_NOTFOUND : LUNET_ERR_IO,
                       "%s: cannot open: %s", path, strerror(errno));
  gzbuffer(g, 1 << 17);
  lunet_status st = read_header(ctx, g, path, out);
  if (st == LUNET_OK) st = read_body(ctx, g, path, out);
  gzclose(g);
  if (st != LUNET_OK) lunet_array_free(out);
  return st;
}

/* The first label outside 0..max_label, as an error naming file, record
 * and value; labels feed one-hot targets, where a bad one fails far later. */
static lunet_status check_labels(lunet_ctx *ctx, const char *path, const lunet_array *a,
                                 int max_label) {
  if (a->ndim != 1) {
    char shape[96];
    shape_text(a, shape, sizeof shape);
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: expected a labels file (1 dim), got data of shape %s (images and "
                       "labels swapped?)",
                       path, shape);
  }
  for (int64_t i = 0; i < a->shape[0]; i++)
    if (a->data[i] > max_label)
      return lunet_error(ctx, LUNET_ERR_FORMAT,
                         "%s: label %d at record %lld is outside 0..%d (the file is corrupt; "
                         "delete it or pass path=)",
                         path, a->data[i], (long long)i, max_label);
  return LUNET_OK;
}

lunet_status lunet_read_idx_labels(lunet_ctx *ctx, const char *path, int max_label,
                                   lunet_array *out) {
  lunet_status st = lunet_read_idx(ctx, path, out);
  if (st == LUNET_OK) st = check_labels(ctx, path, out, max_label);
  if (st != LUNET_OK) lunet_array_free(out);
  return st;
}
