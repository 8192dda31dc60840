/*
 * lunet data: cached downloads (libcurl), checksums (libcrypto), and the
 * dataset file parsers (IDX, CIFAR-10 binary).
 *
 * Every function returns a status and leaves a message in the context.
 * Arrays returned here are malloc'd and owned by the caller:
 * lunet_array_free() releases them.
 */
#ifndef LUNET_DATA_H
#define LUNET_DATA_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- downloads ---- */

typedef enum lunet_progress_mode {
  LUNET_PROGRESS_AUTO = 0, /* a bar on a terminal, one final line otherwise */
  LUNET_PROGRESS_QUIET,    /* a bar on a terminal, nothing otherwise */
  LUNET_PROGRESS_NONE      /* nothing at all */
} lunet_progress_mode;

typedef struct lunet_download_opts {
  const char *url;            /* required */
  const char *const *mirrors; /* NULL-terminated, tried after url; may be NULL */
  const char *dest;           /* required; data goes to "<dest>.part" first */
  int64_t size;               /* expected bytes; <= 0: unknown */
  const char *md5;            /* hex; NULL or "": not checked */
  const char *sha256;         /* hex; NULL or "": not checked */
  int retries;                /* extra rounds over the urls after the first */
  int backoff_ms;             /* wait before retry k is backoff_ms << k */
  int connect_timeout_s;
  int stall_timeout_s; /* abort when under stall_bytes_per_s for this long */
  int stall_bytes_per_s;
  lunet_progress_mode progress;
  const char *label; /* name on the progress bar; NULL: dest's base name */
} lunet_download_opts;

/* The defaults: 3 retries, 1 s backoff base, 30 s connect timeout, abort
 * below 1 KiB/s for 30 s (curl measures speed over about 5 s), progress
 * AUTO.  Set url and dest afterwards. */
LUNET_API lunet_download_opts lunet_download_opts_default(void);

/* Fetches o->url (then each mirror) into o->dest: resumes a "<dest>.part"
 * left by an earlier attempt with a Range request, retries transient
 * failures with exponential backoff, checks size and checksums, then
 * renames atomically.  A complete file with a wrong checksum is moved to
 * "<dest>.corrupt"; when part of it came from an older .part, the same url
 * is fetched once more from byte 0, and only a mismatch of such a whole
 * transfer rules the url out.  Creates dest's directory.  Holds an flock on
 * "<dest>.lock" (left in place) for the whole download, so processes
 * sharing a cache take turns (waiting says so on stderr unless progress is
 * NONE); once locked, a dest that exists and passes the given checksums is
 * kept without a request.  Polls lunet_interrupted():
 * LUNET_ERR_INTERRUPTED keeps the .part for the next call. */
LUNET_API lunet_status lunet_download(lunet_ctx *ctx, const lunet_download_opts *o);

/* Lower-case hex digests of a whole file. */
LUNET_API lunet_status lunet_file_sha256(lunet_ctx *ctx, const char *path, char hex[65]);
LUNET_API lunet_status lunet_file_md5(lunet_ctx *ctx, const char *path, char hex[33]);

/* ---- parsers ---- */

/* A host array of bytes, row-major. */
typedef struct lunet_array {
  uint8_t *data;
  int ndim;
  int64_t shape[4];
} lunet_array;

LUNET_API int64_t lunet_array_numel(const lunet_array *a);
/* Frees a->data and zeroes *a; safe on a zeroed array. */
LUNET_API void lunet_array_free(lunet_array *a);

/* Reads an IDX file of uint8 (raw or gzip), 1 to 4 dims.  The data size
 * must match the header exactly. */
LUNET_API lunet_status lunet_read_idx(lunet_ctx *ctx, const char *path, lunet_array *out);

/* lunet_read_idx for a labels file: 1 dim, every value in 0..max_label
 * (an error names the file, the record and the value). */
LUNET_API lunet_status lunet_read_idx_labels(lunet_ctx *ctx, const char *path, int max_label,
                                             lunet_array *out);

/* Reads CIFAR-10 (binary version) from the official cifar-10-binary.tar.gz
 * without extracting it, or from a directory holding cifar-10-batches-bin/
 * or the .bin files.  x (N,32,32,3) HWC, y (N) with values 0..9.  On error
 * all four outputs are left zeroed. */
LUNET_API lunet_status lunet_read_cifar10(lunet_ctx *ctx, const char *path, lunet_array *x_train,
                                          lunet_array *y_train, lunet_array *x_test,
                                          lunet_array *y_test);

#ifdef __cplusplus
}
#endif

#endif
