/*
 * Random augmentation as model layers (Keras's RandomFlip, RandomRotation,
 * RandomTranslation, RandomZoom, RandomCrop) and Resizing.
 *
 * The random layers act only in training; at inference they pass images
 * through, except RandomCrop, which (as Keras) resizes the largest centred
 * window of its aspect ratio to height x width, so the shape a model sees
 * is the same in both modes.  They draw with the core's
 * augmentation pipeline (lunet/augment.h) and resample on the model's device
 * (lunet_op_affine_resample), so
 *   nn.RandomFlip{"horizontal", seed = 7}  inside model:fit
 * gives, sample for sample, the images that
 *   fit{augment = nn.augment.Sequential{nn.augment.RandomFlip("horizontal"), seed = 7}}
 * gives: the keys are the same (seed, epoch, dataset index of each sample),
 * which fit hands the layers through lunet_set_sample_keys.  Outside fit (a
 * model called with training = true) no keys are set: the layer keys by the
 * position in the batch and a fresh counter of the context's RNG, so each
 * call draws anew and lunet.seed(n) repeats a run.
 *
 * Without a seed argument a layer keys by the context's seed mixed with its
 * name, so two layers of one model draw independently.
 *
 * Resizing{height, width} is Keras's bilinear resize with half-pixel centres
 * (tf.image.resize): output pixel i reads input (i + 0.5) * H / height - 0.5,
 * edges clamped; crop_to_aspect_ratio first cuts the largest centred window
 * of the target's aspect ratio (Keras's crop, then resize).
 *
 * None of these passes a gradient to its input (the bilinear resample has no
 * transposed kernel yet): put them first in the model, as Keras's examples
 * do; a layer with trainable layers before it is an error at backward.
 */
#include <math.h>
#include <stdlib.h>

#include "layers.h"
#include "lunet/augment.h"
#include "lunet/image.h"

#define FILL_MODES "reflect|constant|nearest|wrap"

/* Argument rows the random layers share. */
#define ARG_FILL_MODE                                                                              \
  {"fill_mode", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "reflect"},                      \
   .doc = "how points outside the image are filled", .choices = FILL_MODES}
#define ARG_FILL_VALUE                                                                             \
  {"fill_value", LUNET_ARG_FLOAT, LUNET_ARG_DEFAULT, .def = {.f = 0},                              \
   .doc = "the value outside the image with fill_mode = \"constant\""}
#define ARG_INTERPOLATION                                                                          \
  {"interpolation", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "bilinear"},                 \
   .doc = "bilinear (the only one so far)", .choices = "bilinear"}
#define ARG_SEED                                                                                   \
  {"seed", LUNET_ARG_INT, LUNET_ARG_NIL,                                                           \
   .doc = "keys the draws, as fit{augment}'s seed does; nil: lunet.seed mixed with the name"}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static uint64_t layer_seed(const lunet_layer *l, lunet_ctx *ctx) {
  if (lunet_layer_arg_is_set(l, "seed")) return (uint64_t)lunet_layer_get_int(l, "seed");
  uint64_t h = UINT64_C(1469598103934665603); /* FNV-1a of the name */
  for (const char *p = lunet_layer_name(l); *p; p++) h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
  return mix64(lunet_seed_get(ctx) ^ h);
}

static lunet_fill_mode fill_mode(const lunet_layer *l) {
  const char *m = lunet_layer_get_string(l, "fill_mode");
  return !strcmp(m, "constant") ? LUNET_FILL_CONSTANT
         : !strcmp(m, "nearest")  ? LUNET_FILL_NEAREST
         : !strcmp(m, "wrap")     ? LUNET_FILL_WRAP
                                  : LUNET_FILL_REFLECT;
}

/* A factor as Keras reads it: a number f >= 0 is [-f, f] (a negative one
 * is an error, as in Keras and nn.augment; it was taken as |f|). */
static lunet_status factor(lunet_ctx *ctx, const lunet_layer *l, const char *arg, double *lo, double *hi) {
  double r[2];
  if (lunet_layer_get_range(l, arg, r) == 1) {
    if (r[0] < 0)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "%s: %s must be >= 0 when a number (f means [-f, f]; a pair {lo, hi} gives another "
                         "range), got %g",
                         lunet_layer_type_name((lunet_layer *)l), arg, r[0]);
    *lo = -r[0];
    *hi = r[0];
  } else {
    *lo = r[0];
    *hi = r[1];
  }
  return LUNET_OK;
}

/* The layer's one-step pipeline (the same C step fit{augment} runs). */
static lunet_status add_step(lunet_ctx *ctx, const lunet_layer *l, lunet_augment *a) {
  const char *t = lunet_layer_type_name((lunet_layer *)l);
  lunet_fill_mode mode = lunet_layer_arg_is_set(l, "fill_mode") ? fill_mode(l) : LUNET_FILL_REFLECT;
  float fill = (float)lunet_layer_get_float(l, "fill_value");
  double lo, hi, wlo = 0, whi = 0;
  if (!strcmp(t, "RandomFlip")) {
    const char *m = lunet_layer_get_string(l, "mode");
    return lunet_augment_add_flip(ctx, a, !strcmp(m, "horizontal") ? LUNET_FLIP_HORIZONTAL
                                          : !strcmp(m, "vertical") ? LUNET_FLIP_VERTICAL
                                                                   : LUNET_FLIP_HORIZONTAL_AND_VERTICAL);
  }
  if (!strcmp(t, "RandomRotation")) {
    if (factor(ctx, l, "factor", &lo, &hi)) return lunet_ctx_status(ctx);
    return lunet_augment_add_rotation(ctx, a, lo, hi, mode, fill);
  }
  if (!strcmp(t, "RandomTranslation")) {
    if (factor(ctx, l, "height_factor", &lo, &hi) || factor(ctx, l, "width_factor", &wlo, &whi))
      return lunet_ctx_status(ctx);
    return lunet_augment_add_translation(ctx, a, lo, hi, wlo, whi, mode, fill);
  }
  if (!strcmp(t, "RandomZoom")) {
    bool same = !lunet_layer_arg_is_set(l, "width_factor");
    if (factor(ctx, l, "height_factor", &lo, &hi) || (!same && factor(ctx, l, "width_factor", &wlo, &whi)))
      return lunet_ctx_status(ctx);
    return lunet_augment_add_zoom(ctx, a, lo, hi, same, wlo, whi, mode, fill);
  }
  return lunet_augment_add_crop(ctx, a, lunet_layer_get_int(l, "height"), lunet_layer_get_int(l, "width"),
                                lunet_layer_get_int(l, "padding"));
}

static lunet_augment *pipeline(lunet_ctx *ctx, const lunet_layer *l) {
  lunet_augment *a = lunet_augment_new(ctx);
  if (a && add_step(ctx, l, a) != LUNET_OK) {
    lunet_augment_free(a);
    return NULL;
  }
  return a;
}

/* ---- resizing (Resizing, and RandomCrop at inference) ---- */

/* x (N,H,W,C) -> (N,oh,ow,C) float32: the window is cut first (edges clamp
 * at the window, as Keras's crop then resize), then each axis maps output
 * pixel i to (i + 0.5) * in / out - 0.5.  A new tensor or NULL. */
lunet_tensor *layers_resize_images(lunet_ctx *ctx, lunet_tensor *x, int64_t oh, int64_t ow, bool crop) {
  int64_t n = lunet_tensor_dim(x, 0), b[4] = {0, 0, lunet_tensor_dim(x, 1), lunet_tensor_dim(x, 2)};
  if (crop) lunet_aspect_window(b[2], b[3], oh, ow, b);
  int64_t start[4] = {0, b[0], b[1], 0}, stop[4] = {n, b[0] + b[2], b[1] + b[3], lunet_tensor_dim(x, 3)};
  int64_t step[4] = {1, 1, 1, 1};
  lunet_tensor *f = layers_as_f32(ctx, x);
  lunet_tensor *win = f ? lunet_op_slice(ctx, f, start, stop, step) : NULL, *y = NULL;
  layers_release(f);
  if (!win) return NULL;
  double sy = (double)b[2] / (double)oh, sx = (double)b[3] / (double)ow;
  float m[6] = {(float)sx, 0, (float)(0.5 * sx - 0.5), 0, (float)sy, (float)(0.5 * sy - 0.5)};
  float *mats = malloc(sizeof(float) * 6 * (size_t)(n ? n : 1));
  for (int64_t i = 0; mats && i < n; i++) memcpy(mats + 6 * i, m, sizeof m);
  if (!mats)
    lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  else if (oh == b[2] && ow == b[3])
    y = layers_reshape_like(ctx, win, win);
  else
    y = lunet_op_affine_resample(ctx, win, mats, oh, ow, LUNET_FILL_NEAREST, 0);
  free(mats);
  layers_release(win);
  return y;
}

/* Builds the pipeline once to check the arguments the way fit{augment}
 * does (ranges, fills), and the image size against a crop. */
static lunet_status random_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  lunet_ctx *ctx = lunet_layer_ctx(l);
  if (in[0].ndim != 3) return layers_rank_error(l, "3 (height, width, channels)", &in[0]);
  lunet_augment *a = pipeline(ctx, l);
  lunet_status st = a ? lunet_augment_check(ctx, a, in[0].dims[0], in[0].dims[1], in[0].dims[2]) : lunet_ctx_status(ctx);
  int64_t oh = in[0].dims[0], ow = in[0].dims[1], oc = in[0].dims[2];
  if (a) lunet_augment_output_shape(a, oh, ow, oc, &oh, &ow, &oc);
  lunet_augment_free(a);
  if (st != LUNET_OK) return lunet_layer_error(l, st, "%s", lunet_ctx_error(ctx));
  out[0] = (lunet_shape){3, {oh, ow, oc}};
  return LUNET_OK;
}

static bool is_identity(const float *m) {
  return m[0] == 1 && m[1] == 0 && m[2] == 0 && m[3] == 0 && m[4] == 1 && m[5] == 0;
}

/* Inference: the image as it is, or (RandomCrop) Keras's rule: the largest
 * centred window of the crop's aspect ratio, resized to height x width. */
static lunet_tensor *centre(lunet_ctx *ctx, const lunet_layer *l, lunet_tensor *x) {
  if (strcmp(lunet_layer_type_name((lunet_layer *)l), "RandomCrop") != 0) return layers_reshape_like(ctx, x, x);
  return layers_resize_images(ctx, x, lunet_layer_get_int(l, "height"), lunet_layer_get_int(l, "width"), true);
}

static lunet_status random_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                   bool training) {
  lunet_ctx *ctx = lunet_call_ctx(c);
  y[0] = NULL;
  lunet_tensor *f = layers_as_f32(ctx, x[0]);
  if (!f) return layers_call_failed(c);
  if (!training) {
    y[0] = centre(ctx, l, f);
    layers_release(f);
    return y[0] ? LUNET_OK : layers_call_failed(c);
  }
  int64_t n = lunet_tensor_dim(f, 0), h = lunet_tensor_dim(f, 1), w = lunet_tensor_dim(f, 2), ch = lunet_tensor_dim(f, 3);
  uint64_t epoch, seed = layer_seed(l, ctx);
  int64_t nkeys;
  const int64_t *keys = lunet_sample_keys(ctx, &epoch, &nkeys);
  if (!keys || nkeys != n) { /* not inside fit: the batch position and a fresh counter */
    keys = NULL;
    epoch = 0;
    seed = mix64(seed ^ mix64(lunet_rng_take(ctx, 1) + 1));
  }
  lunet_augment *a = pipeline(ctx, l);
  float *mats = malloc(sizeof(float) * 6 * (size_t)(n ? n : 1));
  lunet_fill_mode mode;
  float fill;
  int64_t oh = h, ow = w, oc;
  lunet_status st = !a ? lunet_ctx_status(ctx)
                    : !mats ? lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory")
                            : lunet_augment_matrices(ctx, a, mats, n, h, w, ch, keys, seed, epoch, &mode, &fill);
  if (a) lunet_augment_output_shape(a, h, w, ch, &oh, &ow, &oc);
  bool identity = oh == h && ow == w;
  for (int64_t i = 0; st == LUNET_OK && identity && i < n; i++) identity = is_identity(mats + 6 * i);
  if (st == LUNET_OK)
    y[0] = identity ? layers_reshape_like(ctx, f, f) : lunet_op_affine_resample(ctx, f, mats, oh, ow, mode, fill);
  free(mats);
  lunet_augment_free(a);
  layers_release(f);
  if (st != LUNET_OK) return lunet_call_error(c, st, "%s", lunet_ctx_error(ctx));
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

/* Only what comes before the layer could want a gradient: refuse it. */
lunet_status layers_no_input_gradient(lunet_layer *l, lunet_call *c, lunet_tensor *const *dy, lunet_tensor **dx) {
  dx[0] = NULL;
  if (!lunet_call_needs_dx(c, 0)) return LUNET_OK;
  return lunet_call_error(c, LUNET_ERR_UNSUPPORTED,
                          "passes no gradient to the layers before it (its resample has no backward yet); put the "
                          "preprocessing layers first in the model, right after the input");
}

static const lunet_arg_schema flip_args[] = {
    {"mode", LUNET_ARG_STRING, LUNET_ARG_DEFAULT, .def = {.s = "horizontal_and_vertical"},
     .doc = "which flips may happen, each with probability 0.5", .choices = "horizontal|vertical|horizontal_and_vertical"},
    ARG_SEED,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema rotation_args[] = {
    {"factor", LUNET_ARG_RANGE, LUNET_ARG_REQUIRED,
     .doc = "fraction of a full turn: f means [-f, f], or a pair {lo, hi}; positive turns counter-clockwise"},
    ARG_FILL_MODE, ARG_FILL_VALUE, ARG_INTERPOLATION, ARG_SEED,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema translation_args[] = {
    {"height_factor", LUNET_ARG_RANGE, LUNET_ARG_REQUIRED,
     .doc = "shift as a fraction of the height: f means [-f, f], or {lo, hi}; positive moves down"},
    {"width_factor", LUNET_ARG_RANGE, LUNET_ARG_REQUIRED,
     .doc = "shift as a fraction of the width: f means [-f, f], or {lo, hi}; positive moves right"},
    ARG_FILL_MODE, ARG_FILL_VALUE, ARG_INTERPOLATION, ARG_SEED,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema zoom_args[] = {
    {"height_factor", LUNET_ARG_RANGE, LUNET_ARG_REQUIRED,
     .doc = "zoom 1 + a draw from [-f, f] (or {lo, hi}); positive zooms out"},
    {"width_factor", LUNET_ARG_RANGE, LUNET_ARG_NIL, .doc = "nil: the width zooms as the height does"},
    ARG_FILL_MODE, ARG_FILL_VALUE, ARG_INTERPOLATION, ARG_SEED,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static const lunet_arg_schema crop_args[] = {
    {"height", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "rows of the window"},
    {"width", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "columns of the window"},
    {"padding", LUNET_ARG_INT, LUNET_ARG_DEFAULT, .def = {.i = 0},
     .doc = "zeros added on every side before the random window (torchvision); none at inference"},
    ARG_SEED,
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

#define RANDOM_LAYER(var, tname, argv, npos, what)                                                 \
  LAYERS_HIDDEN const lunet_layer_type var = {                                                     \
      .struct_size = sizeof(lunet_layer_type),                                                     \
      .name = tname,                                                                               \
      .doc = what,                                                                                 \
      .args = argv,                                                                                \
      .nargs = sizeof argv / sizeof argv[0],                                                       \
      .positional = npos,                                                                          \
      .build = random_build,                                                                       \
      .forward = random_forward,                                                                   \
      .backward = layers_no_input_gradient,                                                               \
  }

RANDOM_LAYER(layers_random_flip, "RandomFlip", flip_args, 1,
             "Flips images at random in training (keys shared with fit{augment}); unchanged at inference");
RANDOM_LAYER(layers_random_rotation, "RandomRotation", rotation_args, 1,
             "Rotates images by a random angle in training; unchanged at inference");
RANDOM_LAYER(layers_random_translation, "RandomTranslation", translation_args, 2,
             "Shifts images at random in training; unchanged at inference");
RANDOM_LAYER(layers_random_zoom, "RandomZoom", zoom_args, 2,
             "Zooms images at random in training; unchanged at inference");
RANDOM_LAYER(layers_random_crop, "RandomCrop", crop_args, 2,
             "A random height x width window in training; at inference the largest centred window of its aspect, "
             "resized (Keras's smart_resize)");

/* ---- Resizing ---- */

static const lunet_arg_schema resizing_args[] = {
    {"height", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "rows out"},
    {"width", LUNET_ARG_INT, LUNET_ARG_REQUIRED, .doc = "columns out"},
    ARG_INTERPOLATION,
    {"crop_to_aspect_ratio", LUNET_ARG_BOOL, LUNET_ARG_DEFAULT, .def = {.b = false},
     .doc = "first take the largest centred window with the output's aspect ratio"},
    LAYERS_ARG_INPUT_SHAPE,
    LAYERS_ARG_NAME,
};

static lunet_status resizing_build(lunet_layer *l, int nin, const lunet_shape *in, lunet_shape *out) {
  if (in[0].ndim != 3) return layers_rank_error(l, "3 (height, width, channels)", &in[0]);
  out[0] = (lunet_shape){3, {lunet_layer_get_int(l, "height"), lunet_layer_get_int(l, "width"), in[0].dims[2]}};
  return LUNET_OK;
}

/* Resizing's forward: the layer's height, width and crop_to_aspect_ratio. */
static lunet_status resizing_forward(lunet_layer *l, lunet_call *c, int nin, lunet_tensor *const *x, lunet_tensor **y,
                                     bool training) {
  y[0] = layers_resize_images(lunet_call_ctx(c), x[0], lunet_layer_get_int(l, "height"), lunet_layer_get_int(l, "width"),
                       lunet_layer_get_bool(l, "crop_to_aspect_ratio"));
  return y[0] ? LUNET_OK : layers_call_failed(c);
}

LAYERS_HIDDEN const lunet_layer_type layers_resizing = {
    .struct_size = sizeof(lunet_layer_type),
    .name = "Resizing",
    .doc = "Resizes images (N, H, W, C) to height x width, bilinear with half-pixel centres (Keras)",
    .args = resizing_args,
    .nargs = sizeof resizing_args / sizeof resizing_args[0],
    .positional = 2,
    .build = resizing_build,
    .forward = resizing_forward,
    .backward = layers_no_input_gradient,
    .compute_mask = layers_drop_mask,
};
