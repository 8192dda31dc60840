/* The augmentation pipeline: steps -> one affine matrix per sample -> one
 * resample, then the pointwise steps.  See lunet/augment.h for the rules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lunet/augment.h"
#include "lunet/backend.h"
#include "lunet/resample.h"

#define MAX_DRAWS 256
#define MAX_SAMPLE_INDEX (INT64_C(1) << 36)
#define MAX_EPOCH (UINT64_C(1) << 20)

typedef enum step_kind {
  STEP_FLIP,
  STEP_ROTATION,
  STEP_TRANSLATION,
  STEP_CROP,
  STEP_ZOOM,
  STEP_RESCALING,
  STEP_NORMALIZATION
} step_kind;

typedef struct step {
  step_kind kind;
  int draw;            /* first draw number of this step */
  int flip;            /* lunet_flip_mode bits */
  double lo[2], hi[2]; /* [0]: height or angle, [1]: width */
  bool same;           /* zoom: width follows height */
  int64_t height, width, padding;
  float scale, offset;
  float *mean, *std; /* (nchan) */
  int64_t nchan;
} step;

struct lunet_augment {
  step *steps;
  int n, cap;
  int draws;
  bool geometric;       /* any geometric step: a resample is needed */
  bool fills;           /* some step reads outside the image */
  lunet_fill_mode mode; /* the one fill mode of the resample */
  float fill;
  const char *fill_owner;
};

static const char *const step_names[] = {"RandomFlip",   "RandomRotation", "RandomTranslation",
                                         "RandomCrop",   "RandomZoom",     "Rescaling",
                                         "Normalization"};
static const char *const mode_names[] = {"reflect", "constant", "nearest", "wrap"};

lunet_augment *lunet_augment_new(lunet_ctx *ctx) {
  lunet_augment *a = calloc(1, sizeof *a);
  if (!a) lunet_error(ctx, LUNET_ERR_NOMEM, "augment: out of memory");
  return a;
}

void lunet_augment_free(lunet_augment *a) {
  if (!a) return;
  for (int i = 0; i < a->n; i++) {
    free(a->steps[i].mean);
    free(a->steps[i].std);
  }
  free(a->steps);
  free(a);
}

int lunet_augment_size(const lunet_augment *a) { return a->n; }

/* Appends s, reserving `draws` random draws for it. */
static lunet_status push(lunet_ctx *ctx, lunet_augment *a, step s, int draws) {
  if (a->draws + draws > MAX_DRAWS)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: the pipeline has too many random steps (at most %d draws "
                       "per sample); split it in two",
                       step_names[s.kind], MAX_DRAWS);
  if (a->n == a->cap) {
    int cap = a->cap ? 2 * a->cap : 8;
    step *p = realloc(a->steps, (size_t)cap * sizeof *p);
    if (!p) return lunet_error(ctx, LUNET_ERR_NOMEM, "augment: out of memory");
    a->steps = p;
    a->cap = cap;
  }
  s.draw = a->draws;
  a->draws += draws;
  a->steps[a->n++] = s;
  if (s.kind <= STEP_ZOOM) a->geometric = true;
  return LUNET_OK;
}

/* One resample serves every geometric step, so they must agree on the fill. */
static lunet_status claim_fill(lunet_ctx *ctx, lunet_augment *a, const char *who,
                               lunet_fill_mode mode, float fill) {
  if ((unsigned)mode > LUNET_FILL_WRAP)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: unknown fill mode %d", who, (int)mode);
  if (mode != LUNET_FILL_CONSTANT) fill = 0.0f;
  if (a->fills && (a->mode != mode || a->fill != fill))
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: fill_mode '%s' (fill_value %g) differs from %s's '%s' "
                       "(fill_value %g); the geometric steps share one resample, so "
                       "give them the same fill",
                       who, mode_names[mode], fill, a->fill_owner, mode_names[a->mode], a->fill);
  a->fills = true;
  a->mode = mode;
  a->fill = fill;
  a->fill_owner = who;
  return LUNET_OK;
}

static lunet_status check_range(lunet_ctx *ctx, const char *who, const char *what, double lo,
                                double hi, double min, double max, bool open_min) {
  if (!isfinite(lo) || !isfinite(hi))
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: %s must be finite, got [%g, %g]", who, what, lo,
                       hi);
  if (lo > hi)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "%s: %s range [%g, %g] is reversed (lower must be <= upper)", who, what, lo,
                       hi);
  if ((open_min ? lo <= min : lo < min) || hi > max)
    return lunet_error(ctx, LUNET_ERR_ARG, "%s: %s must be in %s%g, %g], got [%g, %g]", who, what,
                       open_min ? "(" : "[", min, max, lo, hi);
  return LUNET_OK;
}

lunet_status lunet_augment_add_flip(lunet_ctx *ctx, lunet_augment *a, lunet_flip_mode mode) {
  if (mode < LUNET_FLIP_HORIZONTAL || mode > LUNET_FLIP_HORIZONTAL_AND_VERTICAL)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "RandomFlip: mode must be horizontal, vertical or "
                       "horizontal_and_vertical, got %d",
                       (int)mode);
  step s = {.kind = STEP_FLIP, .flip = (int)mode};
  return push(ctx, a, s, 2);
}

lunet_status lunet_augment_add_rotation(lunet_ctx *ctx, lunet_augment *a, double lo, double hi,
                                        lunet_fill_mode mode, float fill) {
  const char *who = "RandomRotation";
  lunet_status st = check_range(ctx, who, "factor", lo, hi, -1, 1, false);
  if (st == LUNET_OK) st = claim_fill(ctx, a, who, mode, fill);
  if (st != LUNET_OK) return st;
  step s = {.kind = STEP_ROTATION, .lo = {lo, 0}, .hi = {hi, 0}};
  return push(ctx, a, s, 1);
}

lunet_status lunet_augment_add_translation(lunet_ctx *ctx, lunet_augment *a, double h_lo,
                                           double h_hi, double w_lo, double w_hi,
                                           lunet_fill_mode mode, float fill) {
  const char *who = "RandomTranslation";
  lunet_status st = check_range(ctx, who, "height_factor", h_lo, h_hi, -1, 1, false);
  if (st == LUNET_OK) st = check_range(ctx, who, "width_factor", w_lo, w_hi, -1, 1, false);
  if (st == LUNET_OK) st = claim_fill(ctx, a, who, mode, fill);
  if (st != LUNET_OK) return st;
  step s = {.kind = STEP_TRANSLATION, .lo = {h_lo, w_lo}, .hi = {h_hi, w_hi}};
  return push(ctx, a, s, 2);
}

lunet_status lunet_augment_add_crop(lunet_ctx *ctx, lunet_augment *a, int64_t height, int64_t width,
                                    int64_t padding) {
  if (height <= 0 || width <= 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "RandomCrop: height and width must be positive, got %lld x %lld",
                       (long long)height, (long long)width);
  if (padding < 0)
    return lunet_error(ctx, LUNET_ERR_ARG, "RandomCrop: padding must be >= 0, got %lld",
                       (long long)padding);
  if (padding > 0) {
    lunet_status st = claim_fill(ctx, a, "RandomCrop", LUNET_FILL_CONSTANT, 0.0f);
    if (st != LUNET_OK) return st;
  }
  step s = {.kind = STEP_CROP, .height = height, .width = width, .padding = padding};
  return push(ctx, a, s, 2);
}

lunet_status lunet_augment_add_zoom(lunet_ctx *ctx, lunet_augment *a, double h_lo, double h_hi,
                                    bool same_as_height, double w_lo, double w_hi,
                                    lunet_fill_mode mode, float fill) {
  const char *who = "RandomZoom";
  lunet_status st = check_range(ctx, who, "height_factor", h_lo, h_hi, -1, HUGE_VAL, true);
  if (st == LUNET_OK && !same_as_height)
    st = check_range(ctx, who, "width_factor", w_lo, w_hi, -1, HUGE_VAL, true);
  if (st == LUNET_OK) st = claim_fill(ctx, a, who, mode, fill);
  if (st != LUNET_OK) return st;
  step s = {.kind = STEP_ZOOM, .lo = {h_lo, w_lo}, .hi = {h_hi, w_hi}, .same = same_as_height};
  return push(ctx, a, s, 2);
}

lunet_status lunet_augment_add_rescaling(lunet_ctx *ctx, lunet_augment *a, float scale,
                                         float offset) {
  if (!isfinite(scale) || !isfinite(offset))
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "Rescaling: scale and offset must be finite, got %g and %g", scale, offset);
  step s = {.kind = STEP_RESCALING, .scale = scale, .offset = offset};
  return push(ctx, a, s, 0);
}

lunet_status lunet_augment_add_normalization(lunet_ctx *ctx, lunet_augment *a, const float *mean,
                                             const float *std, int64_t nchan) {
  if (nchan <= 0 || !mean || !std)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "Normalization: mean and std need at least one value each");
  for (int64_t k = 0; k < nchan; k++) {
    if (!(std[k] > 0) || !isfinite(std[k]) || !isfinite(mean[k]))
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "Normalization: std must be > 0 and mean finite, got mean %g, "
                         "std %g for channel %lld",
                         mean[k], std[k], (long long)k + 1);
  }
  step s = {.kind = STEP_NORMALIZATION, .nchan = nchan};
  s.mean = malloc((size_t)nchan * sizeof(float));
  s.std = malloc((size_t)nchan * sizeof(float));
  lunet_status st = LUNET_OK;
  if (!s.mean || !s.std) {
    st = lunet_error(ctx, LUNET_ERR_NOMEM, "augment: out of memory");
  } else {
    memcpy(s.mean, mean, (size_t)nchan * sizeof(float));
    memcpy(s.std, std, (size_t)nchan * sizeof(float));
    st = push(ctx, a, s, 0);
  }
  if (st != LUNET_OK) {
    free(s.mean);
    free(s.std);
  }
  return st;
}

void lunet_augment_output_shape(const lunet_augment *a, int64_t h, int64_t w, int64_t c,
                                int64_t *oh, int64_t *ow, int64_t *oc) {
  for (int i = 0; i < a->n; i++) {
    if (a->steps[i].kind == STEP_CROP) {
      h = a->steps[i].height;
      w = a->steps[i].width;
    }
  }
  *oh = h;
  *ow = w;
  *oc = c;
}

lunet_status lunet_augment_check(lunet_ctx *ctx, const lunet_augment *a, int64_t h, int64_t w,
                                 int64_t c) {
  if (h <= 0 || w <= 0 || c <= 0)
    return lunet_error(ctx, LUNET_ERR_SHAPE,
                       "augment: samples must be (H, W, C) with positive sizes, got "
                       "(%lld, %lld, %lld)",
                       (long long)h, (long long)w, (long long)c);
  for (int i = 0; i < a->n; i++) {
    const step *s = &a->steps[i];
    if (s->kind == STEP_CROP) {
      int64_t ph = h + 2 * s->padding, pw = w + 2 * s->padding;
      if (s->height > ph || s->width > pw)
        return lunet_error(ctx, LUNET_ERR_SHAPE,
                           "RandomCrop: the %lld x %lld crop does not fit in the %lld x "
                           "%lld input padded by %lld; lower height/width or raise "
                           "padding",
                           (long long)s->height, (long long)s->width, (long long)h, (long long)w,
                           (long long)s->padding);
      h = s->height;
      w = s->width;
    } else if (s->kind == STEP_NORMALIZATION && s->nchan != 1 && s->nchan != c) {
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "Normalization: %lld mean/std values for images with %lld "
                         "channels; give one value or one per channel",
                         (long long)s->nchan, (long long)c);
    }
  }
  return LUNET_OK;
}

/* ---- per-sample matrices ---- */

/* m (2x3, implicit last row 0 0 1) = m * t: t acts first on output coords. */
static void compose(double m[6], const double t[6]) {
  double r[6] = {m[0] * t[0] + m[1] * t[3],        m[0] * t[1] + m[1] * t[4],
                 m[0] * t[2] + m[1] * t[5] + m[2], m[3] * t[0] + m[4] * t[3],
                 m[3] * t[1] + m[4] * t[4],        m[3] * t[2] + m[4] * t[5] + m[5]};
  memcpy(m, r, sizeof r);
}

typedef struct draws {
  uint64_t seed, base; /* base: the counter with draw number 0 */
} draws;

static double uniform(const draws *d, int draw, double lo, double hi) {
  double u = lunet_philox_uniform(d->seed, d->base | (uint64_t)draw);
  return lo + u * (hi - lo);
}

/* The output->input map of one geometric step whose input is (*h, *w);
 * updates (*h, *w) to its output size.  Formulas follow Keras's
 * get_rotation_matrix / get_translation_matrix / get_zoom_matrix. */
static void step_matrix(const step *s, const draws *d, int64_t *h, int64_t *w, double t[6]) {
  double cx = (double)(*w - 1) / 2, cy = (double)(*h - 1) / 2;
  double id[6] = {1, 0, 0, 0, 1, 0};
  memcpy(t, id, sizeof id);
  switch (s->kind) {
  case STEP_FLIP:
    if ((s->flip & LUNET_FLIP_HORIZONTAL) && uniform(d, s->draw, 0, 1) < 0.5) {
      t[0] = -1;
      t[2] = (double)(*w - 1);
    }
    if ((s->flip & LUNET_FLIP_VERTICAL) && uniform(d, s->draw + 1, 0, 1) < 0.5) {
      t[4] = -1;
      t[5] = (double)(*h - 1);
    }
    break;
  case STEP_ROTATION: {
    double angle = uniform(d, s->draw, s->lo[0], s->hi[0]) * 2 * M_PI;
    double co = cos(angle), si = sin(angle);
    double r[6] = {co, -si, cx - co * cx + si * cy, si, co, cy - si * cx - co * cy};
    memcpy(t, r, sizeof r);
    break;
  }
  case STEP_TRANSLATION:
    t[5] = -uniform(d, s->draw, s->lo[0], s->hi[0]) * (double)*h;
    t[2] = -uniform(d, s->draw + 1, s->lo[1], s->hi[1]) * (double)*w;
    break;
  case STEP_CROP: {
    int64_t rh = *h + 2 * s->padding - s->height, rw = *w + 2 * s->padding - s->width;
    int64_t top = (int64_t)floor(uniform(d, s->draw, 0, (double)(rh + 1)));
    int64_t left = (int64_t)floor(uniform(d, s->draw + 1, 0, (double)(rw + 1)));
    t[5] = (double)((top > rh ? rh : top) - s->padding);
    t[2] = (double)((left > rw ? rw : left) - s->padding);
    *h = s->height;
    *w = s->width;
    break;
  }
  case STEP_ZOOM: {
    double zy = 1 + uniform(d, s->draw, s->lo[0], s->hi[0]);
    double zx = s->same ? zy : 1 + uniform(d, s->draw + 1, s->lo[1], s->hi[1]);
    double z[6] = {zx, 0, cx * (1 - zx), 0, zy, cy * (1 - zy)};
    memcpy(t, z, sizeof z);
    break;
  }
  default:
    break;
  }
}

/* The whole pipeline's output->input matrix for one sample of (h, w). */
static void sample_matrix(const lunet_augment *a, const draws *d, int64_t h, int64_t w,
                          double m[6]) {
  double id[6] = {1, 0, 0, 0, 1, 0}, t[6];
  memcpy(m, id, sizeof id);
  for (int i = 0; i < a->n; i++) {
    if (a->steps[i].kind > STEP_ZOOM) continue;
    step_matrix(&a->steps[i], d, &h, &w, t);
    compose(m, t);
  }
}

/* y (hw, c) in place: the pointwise steps in order. */
static void pointwise(const lunet_augment *a, float *y, int64_t hw, int64_t c) {
  for (int i = 0; i < a->n; i++) {
    const step *s = &a->steps[i];
    if (s->kind == STEP_RESCALING) {
      for (int64_t j = 0; j < hw * c; j++) y[j] = y[j] * s->scale + s->offset;
    } else if (s->kind == STEP_NORMALIZATION) {
      for (int64_t j = 0; j < hw; j++) {
        for (int64_t k = 0; k < c; k++) {
          int64_t q = s->nchan == 1 ? 0 : k;
          y[j * c + k] = (y[j * c + k] - s->mean[q]) / s->std[q];
        }
      }
    }
  }
}

static bool is_identity(const double m[6]) {
  return m[0] == 1 && m[1] == 0 && m[2] == 0 && m[3] == 0 && m[4] == 1 && m[5] == 0;
}

/* in (h,w,c) -> out (oh,ow,c): one sample with output->input matrix m. */
static void apply_one(const lunet_augment *a, float *out, const float *in, int64_t h, int64_t w,
                      int64_t c, int64_t oh, int64_t ow, const double m[6]) {
  if (oh == h && ow == w && is_identity(m)) {
    memcpy(out, in, (size_t)(h * w * c) * sizeof(float));
  } else {
    float mf[6];
    for (int k = 0; k < 6; k++) mf[k] = (float)m[k];
    lunet_fill_mode mode = a->fills ? a->mode : LUNET_FILL_REFLECT;
    lunet_resample_one(out, in, mf, (size_t)h, (size_t)w, (size_t)c, (size_t)oh, (size_t)ow, mode,
                       a->fill);
  }
  pointwise(a, out, oh * ow, c);
}

/* The checks both entry points make, then each sample's matrix in turn:
 * each(i, m, arg) for sample i. */
static lunet_status for_each_sample(lunet_ctx *ctx, const lunet_augment *a, int64_t n, int64_t h,
                                    int64_t w, int64_t c, const int64_t *sample_index, uint64_t seed,
                                    uint64_t epoch, void (*each)(int64_t, const double *, void *),
                                    void *arg) {
  if (n < 0)
    return lunet_error(ctx, LUNET_ERR_ARG, "augment: sample count must be >= 0, got %lld",
                       (long long)n);
  lunet_status st = lunet_augment_check(ctx, a, h, w, c);
  if (st != LUNET_OK) return st;
  if (epoch >= MAX_EPOCH)
    return lunet_error(ctx, LUNET_ERR_ARG, "augment: epoch %llu is out of range [0, 2^20)",
                       (unsigned long long)epoch);
  for (int64_t i = 0; i < n; i++) {
    int64_t idx = sample_index ? sample_index[i] : i;
    if (idx < 0 || idx >= MAX_SAMPLE_INDEX)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "augment: sample index %lld (entry %lld) is out of range [0, "
                         "2^36)",
                         (long long)idx, (long long)i);
    draws d = {seed, (epoch << 44) | ((uint64_t)idx << 8)};
    double m[6];
    sample_matrix(a, &d, h, w, m);
    each(i, m, arg);
  }
  return LUNET_OK;
}

typedef struct apply_args {
  const lunet_augment *a;
  float *out;
  const float *in;
  int64_t h, w, c, oh, ow;
} apply_args;

static void apply_each(int64_t i, const double *m, void *arg) {
  const apply_args *p = arg;
  apply_one(p->a, p->out + i * p->oh * p->ow * p->c, p->in + i * p->h * p->w * p->c, p->h, p->w,
            p->c, p->oh, p->ow, m);
}

lunet_status lunet_augment_apply(lunet_ctx *ctx, const lunet_augment *a, float *out,
                                 const float *in, int64_t n, int64_t h, int64_t w, int64_t c,
                                 const int64_t *sample_index, uint64_t seed, uint64_t epoch) {
  apply_args p = {a, out, in, h, w, c, 0, 0};
  int64_t oc;
  lunet_augment_output_shape(a, h, w, c, &p.oh, &p.ow, &oc);
  return for_each_sample(ctx, a, n, h, w, c, sample_index, seed, epoch, apply_each, &p);
}

static void matrix_each(int64_t i, const double *m, void *arg) {
  float *mats = arg;
  for (int k = 0; k < 6; k++) mats[i * 6 + k] = (float)m[k];
}

lunet_status lunet_augment_matrices(lunet_ctx *ctx, const lunet_augment *a, float *mats,
                                    int64_t n, int64_t h, int64_t w, int64_t c,
                                    const int64_t *sample_index, uint64_t seed, uint64_t epoch,
                                    lunet_fill_mode *mode, float *fill) {
  *mode = a->fills ? a->mode : LUNET_FILL_REFLECT;
  *fill = a->fill;
  return for_each_sample(ctx, a, n, h, w, c, sample_index, seed, epoch, matrix_each, mats);
}
