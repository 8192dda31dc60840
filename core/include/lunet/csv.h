/*
 * lunet CSV files: RFC 4180 through Debian's libcsv (quoted fields with
 * delimiters, doubled quotes and line breaks inside them; CRLF or LF), read
 * whole into memory as strings.  Hostile input is an error naming the file
 * and the line: a malformed quote (strict mode), a row with another number
 * of fields than the first, a NUL byte, more than LUNET_CSV_MAX_FIELDS
 * fields in a row.
 */
#ifndef LUNET_CSV_H
#define LUNET_CSV_H

#include "lunet/lunet.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LUNET_CSV_MAX_FIELDS 100000

typedef struct lunet_csv lunet_csv;

/* Reads path; header: the first row names the columns (else they are named
 * "1", "2", ...).  Blank lines are skipped.  NULL with ctx's error set. */
LUNET_API lunet_csv *lunet_csv_read(lunet_ctx *ctx, const char *path, char delimiter, bool header);
LUNET_API void lunet_csv_free(lunet_csv *c);
/* Data rows (the header not counted) and columns. */
LUNET_API int64_t lunet_csv_rows(const lunet_csv *c);
LUNET_API int64_t lunet_csv_cols(const lunet_csv *c);
LUNET_API const char *lunet_csv_name(const lunet_csv *c, int64_t col);
/* The field's text ("" for an empty field), 0-based row and column. */
LUNET_API const char *lunet_csv_field(const lunet_csv *c, int64_t row, int64_t col);

#ifdef __cplusplus
}
#endif

#endif
