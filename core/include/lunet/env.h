/*
 * An environment variable's number, read alike by the core and every
 * backend: the whole value, decimal digits only (no sign, no spaces, no
 * "0x4" or "1e6"), from lo to hi.
 */
#ifndef LUNET_ENV_H
#define LUNET_ENV_H

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

static inline bool lunet_env_whole(const char *s, long long lo, long long hi, long long *out) {
  if (!s || !(*s >= '0' && *s <= '9')) return false;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (*end || errno || v < lo || v > hi) return false;
  *out = v;
  return true;
}

#endif
