/* File checksums through OpenSSL's EVP digests, for downloads and caches. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "lunet/data.h"

static void to_hex(const unsigned char *md, unsigned n, char *hex) {
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    hex[2 * i] = digits[md[i] >> 4];
    hex[2 * i + 1] = digits[md[i] & 15];
  }
  hex[2 * n] = '\0';
}

/* hex must hold 2 * digest size + 1 chars. */
static lunet_status file_digest(lunet_ctx *ctx, const char *path, const EVP_MD *type, char *hex) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return lunet_error(ctx, errno == ENOENT ? LUNET_ERR_NOTFOUND : LUNET_ERR_IO,
                       "%s: cannot open for hashing: %s", path, strerror(errno));
  enum { BUF = 1 << 16 };
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned char *buf = malloc(BUF);
  if (!md || !buf || !EVP_DigestInit_ex(md, type, NULL)) {
    fclose(f);
    EVP_MD_CTX_free(md);
    free(buf);
    return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: cannot start a digest", path);
  }
  size_t n;
  while ((n = fread(buf, 1, BUF, f)) > 0) EVP_DigestUpdate(md, buf, n);
  int failed = ferror(f);
  fclose(f);
  free(buf);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(md, out, &len);
  EVP_MD_CTX_free(md);
  if (failed) return lunet_error(ctx, LUNET_ERR_IO, "%s: read error while hashing", path);
  to_hex(out, len, hex);
  return LUNET_OK;
}

lunet_status lunet_file_sha256(lunet_ctx *ctx, const char *path, char hex[65]) {
  return file_digest(ctx, path, EVP_sha256(), hex);
}

lunet_status lunet_file_md5(lunet_ctx *ctx, const char *path, char hex[33]) {
  return file_digest(ctx, path, EVP_md5(), hex);
}
