/*
 * A double as the shortest JSON number that reads back as the same double
 * (%.15g, %.16g or %.17g), for the configs lunet writes: cJSON's printer
 * accepts a text one unit in the last place off, so a saved epsilon of
 * 1.6094379124341003e-3 came back as ...1001.  v must be finite.
 */
#ifndef LUNET_JSON_NUMBER_H
#define LUNET_JSON_NUMBER_H

#include <stdio.h>
#include <stdlib.h>

#define LUNET_JSON_NUMBER_MAX 32

static inline void lunet_json_number(double v, char buf[LUNET_JSON_NUMBER_MAX]) {
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(buf, LUNET_JSON_NUMBER_MAX, "%.*g", digits, v);
    if (digits == 17 || strtod(buf, NULL) == v) return;
  }
}

#endif
