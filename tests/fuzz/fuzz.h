/*
 * What every fuzz target shares.  The readers under test take paths (as
 * users hand them files), so each input is written to one file per process
 * and read back from there; the library's context is made once.
 *
 * A target fails only by a sanitizer report, a crash, a leak, a hang or an
 * allocation over libFuzzer's limit: a refused input (an error status)
 * is the expected outcome for almost all of them.
 */
#ifndef LUNET_FUZZ_H
#define LUNET_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "lunet/lunet.h"

/* Reads of every byte a reader claims to have filled land here, so that a
 * short buffer is an AddressSanitizer report, not a skipped loop. */
static volatile size_t fuzz_sink;

/* The input as a file named ...<suffix> (the suffix picks the reader where
 * the library goes by extension); the same path every call. */
static inline const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix) {
  static char path[256];
  const char *dir = getenv("TMPDIR");
  snprintf(path, sizeof path, "%s/lunet-fuzz-%ld%s", dir && dir[0] ? dir : "/tmp", (long)getpid(), suffix);
  FILE *f = fopen(path, "wb");
  if (f == NULL || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
    perror(path);
    abort(); /* the machine, not the input: stop rather than report nonsense */
  }
  return path;
}

/* One context for the whole run; errors are cleared between inputs. */
static inline lunet_ctx *fuzz_ctx(void) {
  static lunet_ctx *ctx;
  if (ctx == NULL && (ctx = lunet_ctx_new()) == NULL) abort();
  lunet_clear_error(ctx);
  return ctx;
}

#endif
