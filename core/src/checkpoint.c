/* safetensors read and write, with cJSON for the header. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "lunet/checkpoint.h"

static const char *st_dtype(lunet_dtype dt) {
  return dt == LUNET_F32 ? "F32" : dt == LUNET_U8 ? "U8" : "I32";
}

static cJSON *header_json(int n, const char *const *names, lunet_tensor *const *ts, int nmeta,
                          const char *const *keys, const char *const *values) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  if (nmeta) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; m && i < nmeta; i++) cJSON_AddStringToObject(m, keys[i], values[i]);
  }
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    cJSON *e = cJSON_AddObjectToObject(root, names[i]);
    if (!e) break;
    cJSON_AddStringToObject(e, "dtype", st_dtype(ts[i]->dtype));
    cJSON *shape = cJSON_AddArrayToObject(e, "shape");
    for (int d = 0; d < ts[i]->ndim; d++)
      cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i]->shape[d]));
    size_t nb = (size_t)ts[i]->numel * lunet_dtype_size(ts[i]->dtype);
    cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
    off += nb;
  }
  return root;
}

/* Makes a rename in path's folder durable (best effort: some file systems
 * refuse fsync on a directory, and the rename itself is already atomic). */
static void sync_parent_dir(const char *path) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == dir) slash[1] = '\0';
  else if (slash) *slash = '\0';
  else snprintf(dir, sizeof dir, ".");
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

lunet_status lunet_safetensors_save(lunet_ctx *ctx, const char *path, int n,
                                    const char *const *names, lunet_tensor *const *ts, int nmeta,
                                    const char *const *keys, const char *const *values) {
  cJSON *root = header_json(n, names, ts, nmeta, keys, values);
  char *json = root ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  if (!json) return lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory writing the header", path);
  /* The header is padded with spaces to 8 bytes, as the format recommends. */
  size_t hlen = strlen(json), padded = (hlen + 7) / 8 * 8;
  /* A name of this writer's own (two processes saving to one path never
   * write into the same temporary file), created with the user's umask. */
  static _Atomic unsigned serial;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), serial++);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  lunet_status s = LUNET_OK;
  if (!f) {
    int e = errno;
    if (fd >= 0) close(fd);
    free(json);
    return lunet_error(ctx, LUNET_ERR_IO, "cannot write %s: %s", tmp, strerror(e));
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  bool ok = fwrite(len8, 1, 8, f) == 8 && fwrite(json, 1, hlen, f) == hlen;
  for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
  free(json);
  for (int i = 0; ok && i < n; i++) {
    size_t nb = (size_t)ts[i]->numel * lunet_dtype_size(ts[i]->dtype);
    void *buf = malloc(nb ? nb : 1);
    if (!buf) {
      s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory");
      ok = false;
      break;
    }
    if ((s = lunet_tensor_read(ctx, ts[i], buf, nb)))
      ok = false;
    else
      ok = fwrite(buf, 1, nb, f) == nb;
    free(buf);
  }
  /* On the disk before the rename, so that even a power cut leaves the old
   * file or the whole new one under `path`. */
  int e = ok ? 0 : errno;
  if (ok && (fflush(f) != 0 || fsync(fileno(f)) != 0)) ok = false, e = errno;
  if (fclose(f) != 0 && ok) ok = false, e = errno;
  if (!ok) {
    remove(tmp);
    return s ? s : lunet_error(ctx, LUNET_ERR_IO, "cannot write %s: %s", path, strerror(e));
  }
  if (rename(tmp, path) != 0) {
    e = errno;
    remove(tmp);
    return lunet_error(ctx, LUNET_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(e));
  }
  sync_parent_dir(path);
  return LUNET_OK;
}

struct lunet_safetensors {
  int n, nmeta;
  char **names, **keys, **values;
  lunet_tensor **tensors;
};

void lunet_safetensors_free(lunet_safetensors *st) {
  if (!st) return;
  for (int i = 0; i < st->n; i++) {
    free(st->names[i]);
    lunet_tensor_release(st->tensors[i]);
  }
  for (int i = 0; i < st->nmeta; i++) {
    free(st->keys[i]);
    free(st->values[i]);
  }
  free(st->names);
  free(st->tensors);
  free(st->keys);
  free(st->values);
  free(st);
}

static lunet_status bad(lunet_ctx *ctx, const char *path, const char *why) {
  return lunet_error(ctx, LUNET_ERR_FORMAT, "%s is not a valid safetensors file: %s", path, why);
}

/* *used counts the data bytes the entries so far claim: together they may
 * not exceed the file's, so overlapping entries cannot multiply what a
 * small file makes us allocate. */
/* A JSON number that is a whole count from 0 to max. */
static bool file_size_value(const cJSON *j, size_t max, size_t *out) {
  if (!cJSON_IsNumber(j) || !(j->valuedouble >= 0) || j->valuedouble > (double)max ||
      j->valuedouble != floor(j->valuedouble))
    return false;
  *out = (size_t)j->valuedouble;
  return true;
}

static lunet_status read_entry(lunet_ctx *ctx, const char *path, cJSON *e,
                               const unsigned char *data, size_t dlen, size_t *used,
                               lunet_tensor **out, size_t range[2]) {
  cJSON *dt = cJSON_GetObjectItem(e, "dtype"), *shape = cJSON_GetObjectItem(e, "shape");
  cJSON *offs = cJSON_GetObjectItem(e, "data_offsets");
  if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || cJSON_GetArraySize(offs) != 2)
    return bad(ctx, path, "an entry lacks dtype, shape or data_offsets");
  lunet_dtype t = !strcmp(dt->valuestring, "F32")   ? LUNET_F32
                  : !strcmp(dt->valuestring, "U8")  ? LUNET_U8
                  : !strcmp(dt->valuestring, "I32") ? LUNET_I32
                                                    : (lunet_dtype)-1;
  if ((int)t < 0)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: tensor '%s' has dtype %s; lunet reads F32, U8 "
                       "and I32",
                       path, e->string, dt->valuestring);
  int nd = cJSON_GetArraySize(shape);
  if (nd > LUNET_MAX_DIMS) return bad(ctx, path, "too many dimensions");
  int64_t sh[LUNET_MAX_DIMS];
  size_t numel = 1, a, b;
  for (int d = 0; d < nd; d++) {
    size_t v;
    if (!file_size_value(cJSON_GetArrayItem(shape, d), dlen, &v))
      return bad(ctx, path, "a dimension is not a whole number within the file's size");
    sh[d] = (int64_t)v;
    /* checked before the product, which could overflow */
    if (v != 0 && numel > dlen / v) return bad(ctx, path, "a tensor is larger than the file");
    numel *= v;
  }
  size_t nb = numel * lunet_dtype_size(t);
  if (!file_size_value(cJSON_GetArrayItem(offs, 0), dlen, &a) ||
      !file_size_value(cJSON_GetArrayItem(offs, 1), dlen, &b) || b < a || b - a != nb)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: tensor '%s' lies outside the file or does not match its shape (data_offsets "
                       "against %zu data bytes): the file is truncated or corrupt",
                       path, e->string, dlen);
  if (nb > dlen - *used)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: the tensors claim more bytes than the file holds (overlapping "
                       "entries); the file is corrupt",
                       path);
  *used += nb;
  range[0] = a, range[1] = b;
  *out = lunet_tensor_from_data(ctx, t, nd, sh, data + a);
  return *out ? LUNET_OK : ctx->status;
}

static unsigned char *slurp(lunet_ctx *ctx, const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    lunet_error(ctx, LUNET_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
  if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
    lunet_error(ctx, LUNET_ERR_IO, "cannot read %s", path);
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static int cmp_ranges(const void *a, const void *b) {
  const size_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1];
}

/* safetensors' rule: the entries' byte ranges tile the data exactly, from
 * 0 to its end, with no gap, overlap or trailing bytes; anything else is a
 * corrupt file (a header length off by one would otherwise read every
 * tensor shifted, an entry pointing at another's bytes load its values). */
static lunet_status tiled(lunet_ctx *ctx, const char *path, size_t (*r)[2], int n, size_t dlen) {
  qsort(r, (size_t)n, sizeof *r, cmp_ranges);
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    if (r[i][0] != at)
      return lunet_error(ctx, LUNET_ERR_FORMAT,
                         "%s: the tensors' data %s at byte %zu (safetensors entries must cover the data exactly, "
                         "in order): the file is corrupt",
                         path, r[i][0] > at ? "has a gap" : "overlaps", at);
    at = r[i][1];
  }
  if (at != dlen)
    return lunet_error(ctx, LUNET_ERR_FORMAT,
                       "%s: %zu bytes after the last tensor's data (the header's length or offsets are wrong): the "
                       "file is corrupt",
                       path, dlen - at);
  return LUNET_OK;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* An error when the header's object names an entry twice (JSON allows it;
 * which tensor is meant would then depend on the reader). */
static lunet_status unique_names(lunet_ctx *ctx, const char *path, const cJSON *root, int count) {
  const char **names = malloc(((size_t)count + 1) * sizeof *names);
  if (!names) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  int n = 0;
  for (const cJSON *e = root->child; e && n < count; e = e->next) names[n++] = e->string;
  qsort(names, (size_t)n, sizeof *names, cmp_names);
  lunet_status s = LUNET_OK;
  for (int i = 1; i < n && !s; i++)
    if (!strcmp(names[i - 1], names[i]))
      s = lunet_error(ctx, LUNET_ERR_FORMAT, "%s: the header names '%s' twice; the file is corrupt", path,
                      names[i]);
  free(names);
  return s;
}

static lunet_status parse(lunet_ctx *ctx, const char *path, const unsigned char *buf, size_t len,
                          lunet_safetensors *st) {
  if (len < 8) return bad(ctx, path, "shorter than its 8-byte header length");
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
  /* a header is JSON, "{" first: anything else is another kind of file (an
   * ONNX file, an image), not a damaged one */
  if (len > 8 && buf[8] != '{')
    return bad(ctx, path, "not a safetensors file (as model:save and save_weights write: an 8-byte header length, "
                          "then a JSON header); is it another kind of file?");
  if (hlen > len - 8) return bad(ctx, path, "the header runs past the end (truncated?)");
  cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return bad(ctx, path, "the header is not a JSON object");
  }
  int count = cJSON_GetArraySize(root);
  cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
  int nmeta = cJSON_GetArraySize(meta);
  st->names = calloc((size_t)count + 1, sizeof *st->names);
  st->tensors = calloc((size_t)count + 1, sizeof *st->tensors);
  st->keys = calloc((size_t)nmeta + 1, sizeof *st->keys);
  st->values = calloc((size_t)nmeta + 1, sizeof *st->values);
  lunet_status s = st->names && st->tensors && st->keys && st->values
                       ? LUNET_OK
                       : lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  if (!s) s = unique_names(ctx, path, root, count);
  cJSON *e;
  size_t used = 0, (*ranges)[2] = s ? NULL : calloc((size_t)count + 1, sizeof *ranges);
  if (!s && !ranges) s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  cJSON_ArrayForEach(e, root) {
    if (s) break;
    if (!strcmp(e->string, "__metadata__")) {
      if (!cJSON_IsObject(e)) {
        s = bad(ctx, path, "__metadata__ is not an object of strings");
        break;
      }
      cJSON *m;
      cJSON_ArrayForEach(m, e) {
        if (!cJSON_IsString(m)) {
          s = lunet_error(ctx, LUNET_ERR_FORMAT, "%s: metadata '%s' is not a string (safetensors metadata "
                          "maps strings to strings)", path, m->string);
          break;
        }
        int k = st->nmeta++; /* counted at once: free releases what the strdups made */
        st->keys[k] = strdup(m->string);
        st->values[k] = strdup(m->valuestring);
        if (!st->keys[k] || !st->values[k]) {
          s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
          break;
        }
      }
      continue;
    }
    s = read_entry(ctx, path, e, buf + 8 + hlen, len - 8 - hlen, &used, &st->tensors[st->n], ranges[st->n]);
    if (!s && !(st->names[st->n++] = strdup(e->string))) s = lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  }
  if (!s) s = tiled(ctx, path, ranges, st->n, len - 8 - hlen);
  free(ranges);
  cJSON_Delete(root);
  return s;
}

lunet_safetensors *lunet_safetensors_load(lunet_ctx *ctx, const char *path) {
  size_t len;
  unsigned char *buf = slurp(ctx, path, &len);
  if (!buf) return NULL;
  lunet_safetensors *st = calloc(1, sizeof *st);
  lunet_status s =
      st ? parse(ctx, path, buf, len, st) : lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  free(buf);
  if (s) {
    lunet_safetensors_free(st);
    return NULL;
  }
  return st;
}

int lunet_safetensors_count(const lunet_safetensors *st) { return st->n; }
const char *lunet_safetensors_name(const lunet_safetensors *st, int i) { return st->names[i]; }
lunet_tensor *lunet_safetensors_tensor(const lunet_safetensors *st, int i) {
  return st->tensors[i];
}
int lunet_safetensors_meta_count(const lunet_safetensors *st) { return st->nmeta; }
const char *lunet_safetensors_meta_key(const lunet_safetensors *st, int i) { return st->keys[i]; }
const char *lunet_safetensors_meta_value(const lunet_safetensors *st, int i) {
  return st->values[i];
}
