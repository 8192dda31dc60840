/* CSV files through libcsv into one arena of NUL-terminated fields; see
 * lunet/csv.h for the rules. */
#include <csv.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lunet/csv.h"

struct lunet_csv {
  char *text;       /* every field, each NUL-terminated */
  size_t used, cap;
  size_t *fields;   /* offsets into text: header fields first when there is one */
  int64_t nfields, fcap;
  int64_t cols, rows; /* data rows */
  bool header;
};

/* The parse in progress. */
typedef struct reader {
  lunet_csv *c;
  lunet_ctx *ctx;
  const char *path;
  int64_t in_row;  /* fields of the record being read */
  int64_t records; /* records finished, the header included */
  bool failed;
} reader;

static bool grow(reader *r, size_t need_text) {
  lunet_csv *c = r->c;
  if (c->used + need_text > c->cap) {
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->used + need_text) cap *= 2;
    char *t = realloc(c->text, cap);
    if (!t) return false;
    c->text = t;
    c->cap = cap;
  }
  if (c->nfields == c->fcap) {
    int64_t cap = c->fcap ? 2 * c->fcap : 1024;
    size_t *f = realloc(c->fields, sizeof *f * (size_t)cap);
    if (!f) return false;
    c->fields = f;
    c->fcap = cap;
  }
  return true;
}

static void on_field(void *s, size_t len, void *data) {
  reader *r = data;
  if (r->failed) return;
  if (r->in_row >= LUNET_CSV_MAX_FIELDS || (r->c->cols && r->in_row >= r->c->cols)) {
    r->failed = true;
    if (r->c->cols)
      lunet_error(r->ctx, LUNET_ERR_FORMAT, "%s: record %lld has more than the %lld fields of the first", r->path,
                  (long long)r->records + 1, (long long)r->c->cols);
    else
      lunet_error(r->ctx, LUNET_ERR_FORMAT, "%s: a record of more than %d fields", r->path, LUNET_CSV_MAX_FIELDS);
    return;
  }
  if (memchr(s ? s : "", '\0', s ? len : 0)) {
    r->failed = true;
    lunet_error(r->ctx, LUNET_ERR_FORMAT, "%s: record %lld holds a NUL byte (not a text file?)", r->path,
                (long long)r->records + 1);
    return;
  }
  if (!grow(r, len + 1)) {
    r->failed = true;
    lunet_error(r->ctx, LUNET_ERR_NOMEM, "%s: out of memory", r->path);
    return;
  }
  lunet_csv *c = r->c;
  if (len) memcpy(c->text + c->used, s, len);
  c->text[c->used + len] = '\0';
  c->fields[c->nfields++] = c->used;
  c->used += len + 1;
  r->in_row++;
}

static void on_record(int term, void *data) {
  (void)term;
  reader *r = data;
  if (r->failed) return;
  lunet_csv *c = r->c;
  if (!c->cols) {
    c->cols = r->in_row;
  } else if (r->in_row != c->cols) {
    r->failed = true;
    lunet_error(r->ctx, LUNET_ERR_FORMAT, "%s: record %lld has %lld fields, the first has %lld", r->path,
                (long long)r->records + 1, (long long)r->in_row, (long long)c->cols);
    return;
  }
  r->records++;
  r->in_row = 0;
}

lunet_csv *lunet_csv_read(lunet_ctx *ctx, const char *path, char delimiter, bool header) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  lunet_csv *c = calloc(1, sizeof *c);
  struct csv_parser p;
  if (!c || csv_init(&p, CSV_STRICT | CSV_STRICT_FINI) != 0) {
    free(c);
    fclose(f);
    lunet_error(ctx, LUNET_ERR_NOMEM, "%s: out of memory", path);
    return NULL;
  }
  csv_set_delim(&p, (unsigned char)delimiter);
  c->header = header;
  reader r = {c, ctx, path, 0, 0, false};
  char buf[65536];
  size_t n;
  bool first = true;
  while (!r.failed && (n = fread(buf, 1, sizeof buf, f)) > 0) {
    const char *at = buf;
    /* a UTF-8 byte-order mark (spreadsheets write one) is not part of the
     * first field, as pandas reads it */
    if (first && n >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) at += 3, n -= 3;
    first = false;
    if (csv_parse(&p, at, n, on_field, on_record, &r) != n && !r.failed) {
      r.failed = true;
      lunet_error(ctx, LUNET_ERR_FORMAT, "%s: record %lld: %s (a quote that does not open or close a field?)",
                  path, (long long)r.records + 1, csv_strerror(csv_error(&p)));
    }
  }
  if (!r.failed && ferror(f)) {
    r.failed = true;
    lunet_error(ctx, LUNET_ERR_IO, "%s: %s", path, strerror(errno));
  }
  if (!r.failed && csv_fini(&p, on_field, on_record, &r) != 0 && !r.failed) {
    r.failed = true;
    lunet_error(ctx, LUNET_ERR_FORMAT, "%s: record %lld: %s (a quoted field never closed?)", path,
                (long long)r.records + 1, csv_strerror(csv_error(&p)));
  }
  csv_free(&p);
  fclose(f);
  if (!r.failed && r.records == 0) {
    r.failed = true;
    lunet_error(ctx, LUNET_ERR_FORMAT, "%s: no records (an empty file)", path);
  }
  if (r.failed) {
    lunet_csv_free(c);
    return NULL;
  }
  c->rows = r.records - (header ? 1 : 0);
  return c;
}

void lunet_csv_free(lunet_csv *c) {
  if (!c) return;
  free(c->text);
  free(c->fields);
  free(c);
}

int64_t lunet_csv_rows(const lunet_csv *c) { return c->rows; }
int64_t lunet_csv_cols(const lunet_csv *c) { return c->cols; }

const char *lunet_csv_name(const lunet_csv *c, int64_t col) {
  static __thread char num[24];
  if (col < 0 || col >= c->cols) return NULL;
  if (c->header) return c->text + c->fields[col];
  snprintf(num, sizeof num, "%lld", (long long)col + 1);
  return num;
}

const char *lunet_csv_field(const lunet_csv *c, int64_t row, int64_t col) {
  if (row < 0 || row >= c->rows || col < 0 || col >= c->cols) return NULL;
  return c->text + c->fields[(row + (c->header ? 1 : 0)) * c->cols + col];
}
