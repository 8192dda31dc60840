/*
 * Weight constraints (Keras's keras.constraints), applied in place after
 * every optimizer update of a model: a layer's weight w is constrained by
 * its STRING argument "<w>_constraint" (kernel_constraint,
 * bias_constraint), written as nn.constraints makes it:
 *
 *   non_neg()                                   w = max(w, 0)
 *   max_norm(max_value=2,axis=0)                w *= clip(n, 0, max) / (eps + n)
 *   unit_norm(axis=0)                           w /= eps + n
 *   min_max_norm(min_value=0,max_value=1,rate=1,axis=0)
 *       w *= (rate * clip(n, min, max) + (1 - rate) * n) / (eps + n)
 *
 * n the L2 norm over the axes (a space-separated list, "axis=0 1 2"),
 * eps = 1e-7 as Keras's backend epsilon.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lunet/layer.h"

typedef enum kind { NON_NEG, MAX_NORM, UNIT_NORM, MIN_MAX_NORM } kind;

typedef struct constraint {
  kind k;
  double max_value, min_value, rate;
  int axes[LUNET_MAX_DIMS], naxes;
} constraint;

/* Parses spec; false with *why set on a malformed one. */
static bool parse(const char *spec, constraint *c, const char **why) {
  static const char *const names[] = {"non_neg", "max_norm", "unit_norm", "min_max_norm"};
  *c = (constraint){.max_value = 2, .min_value = 0, .rate = 1, .naxes = 1};
  size_t len = strcspn(spec, "(");
  int k = -1;
  for (int i = 0; i < 4; i++)
    if (strlen(names[i]) == len && !strncmp(spec, names[i], len)) k = i;
  if (k < 0 || spec[len] != '(' || spec[strlen(spec) - 1] != ')') {
    *why = "expected non_neg(), max_norm(...), unit_norm(...) or min_max_norm(...) (nn.constraints makes them)";
    return false;
  }
  c->k = (kind)k;
  if (k == MIN_MAX_NORM) c->max_value = 1;
  char body[256];
  size_t blen = strlen(spec) - len - 2;
  if (blen >= sizeof body) {
    *why = "too long";
    return false;
  }
  memcpy(body, spec + len + 1, blen);
  body[blen] = '\0';
  for (char *save = NULL, *kv = strtok_r(body, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq) {
      *why = "arguments are key=value";
      return false;
    }
    *eq = '\0';
    const char *key = kv, *val = eq + 1;
    char *end;
    if (!strcmp(key, "axis")) {
      c->naxes = 0;
      for (const char *p = val; *p;) {
        long a = strtol(p, &end, 10);
        if (end == p || c->naxes == LUNET_MAX_DIMS || a < 0) {
          *why = "axis must be axes >= 0, separated by spaces";
          return false;
        }
        c->axes[c->naxes++] = (int)a;
        p = end;
        while (*p == ' ') p++;
      }
      continue;
    }
    double v = strtod(val, &end);
    if (end == val || *end || !isfinite(v)) {
      *why = "a value is not a number";
      return false;
    }
    if (!strcmp(key, "max_value") && (k == MAX_NORM || k == MIN_MAX_NORM)) c->max_value = v;
    else if (!strcmp(key, "min_value") && k == MIN_MAX_NORM) c->min_value = v;
    else if (!strcmp(key, "rate") && k == MIN_MAX_NORM) c->rate = v;
    else {
      *why = "an argument this constraint does not take";
      return false;
    }
  }
  if (c->max_value < 0 || c->min_value < 0 || c->min_value > c->max_value || c->rate < 0 || c->rate > 1) {
    *why = "needs 0 <= min_value <= max_value and rate in [0, 1]";
    return false;
  }
  return true;
}

lunet_status lunet_constraint_check(lunet_ctx *ctx, const char *layer, const char *arg, const char *spec) {
  constraint c;
  const char *why;
  if (!parse(spec, &c, &why))
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: %s '%s': %s", layer, arg, spec, why);
  return LUNET_OK;
}

/* The L2 norms of w over c's axes, kept as size-1 axes. */
static lunet_tensor *norms(lunet_ctx *ctx, const lunet_tensor *w, const constraint *c) {
  lunet_tensor *t = lunet_op_unary(ctx, LUNET_UNARY_SQUARE, w, 0, 0);
  for (int i = 0; t && i < c->naxes; i++) {
    if (c->axes[i] >= w->ndim) {
      lunet_error(ctx, LUNET_ERR_ARG, "constraint: axis %d, but the weight has %d axes", c->axes[i], w->ndim);
      lunet_tensor_release(t);
      return NULL;
    }
    lunet_tensor *r = lunet_op_reduce(ctx, LUNET_REDUCE_SUM, t, c->axes[i], true);
    lunet_tensor_release(t);
    t = r;
  }
  lunet_tensor *n = t ? lunet_op_unary(ctx, LUNET_UNARY_SQRT, t, 0, 0) : NULL;
  lunet_tensor_release(t);
  return n;
}

/* w's constrained values (a new tensor), or NULL with the error set. */
static lunet_tensor *constrained(lunet_ctx *ctx, const lunet_tensor *w, const constraint *c) {
  if (c->k == NON_NEG) return lunet_op_unary(ctx, LUNET_UNARY_RELU, w, 0, 0);
  lunet_tensor *n = norms(ctx, w, c);
  lunet_tensor *den = n ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, n, 1, 1e-7f) : NULL, *desired = NULL;
  if (n && c->k == UNIT_NORM) {
    desired = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, n, 0, 1);
  } else if (n) {
    lunet_tensor *clip = lunet_op_unary(ctx, LUNET_UNARY_CLIP, n, (float)c->min_value, (float)c->max_value);
    lunet_tensor *a = clip ? lunet_op_unary(ctx, LUNET_UNARY_AFFINE, clip, (float)c->rate, 0) : NULL;
    lunet_tensor *b = lunet_op_unary(ctx, LUNET_UNARY_AFFINE, n, (float)(1 - c->rate), 0);
    desired = a && b ? lunet_op_binary(ctx, LUNET_BINARY_ADD, a, b) : NULL;
    lunet_tensor_release(clip);
    lunet_tensor_release(a);
    lunet_tensor_release(b);
  }
  lunet_tensor *scale = desired && den ? lunet_op_binary(ctx, LUNET_BINARY_DIV, desired, den) : NULL;
  lunet_tensor *y = scale ? lunet_op_binary(ctx, LUNET_BINARY_MUL, w, scale) : NULL;
  lunet_tensor_release(n);
  lunet_tensor_release(den);
  lunet_tensor_release(desired);
  lunet_tensor_release(scale);
  return y;
}

lunet_status lunet_layer_constrain(lunet_ctx *ctx, lunet_layer *l) {
  for (int i = 0; i < lunet_layer_weight_count(l); i++) {
    char arg[64];
    lunet_weight_arg(l, i, "_constraint", arg, sizeof arg);
    const char *spec = lunet_layer_arg_is_set(l, arg) ? lunet_layer_get_string(l, arg) : NULL;
    if (!spec) continue;
    constraint c;
    const char *why;
    if (!parse(spec, &c, &why))
      return lunet_error(ctx, LUNET_ERR_ARG, "%s: %s '%s': %s", lunet_layer_name(l), arg, spec, why);
    lunet_tensor *w = lunet_layer_weight(l, i), *y = constrained(ctx, w, &c);
    int64_t start[LUNET_MAX_DIMS] = {0}, step[LUNET_MAX_DIMS];
    for (int d = 0; d < LUNET_MAX_DIMS; d++) step[d] = 1;
    lunet_status s = y ? lunet_op_assign_slice(ctx, w, start, w->shape, step, y) : ctx->status;
    lunet_tensor_release(y);
    if (s) return s;
  }
  return LUNET_OK;
}
