/* The prefetching batch loader: one worker thread fills a ring of
 * preallocated slots (batch k goes to slot k % depth) while the caller
 * computes on the previous batch.  Nothing is allocated per batch. */
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lunet/augment.h"

typedef struct slot {
  float *x, *y; /* (batch, x_numel), (batch, y_numel) */
  int64_t count;
} slot;

struct lunet_batches {
  lunet_ctx *ctx;  /* the caller's: errors from next() */
  lunet_ctx *wctx; /* the worker's own, for lunet_augment_apply */
  const float *x, *y;
  const uint8_t *x_u8;
  float *scratch; /* one sample as float, for 8-bit samples going through augmentation */
  int64_t sample_numel, x_numel, y_numel, h, w, c;
  int64_t batch, order_len, nbatches;
  int64_t *order;
  const lunet_augment *aug;
  uint64_t seed, epoch;
  int depth;
  slot *slots;

  pthread_t thread;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t produced, consumed; /* batches filled / handed out, under mu */
  bool stop;                  /* free() asks the worker to quit */
  lunet_status err;           /* the worker's failure, under mu */
  char msg[1024];
};

/* Fills slot s with batch k.  Runs on the worker without the lock: the
 * consumer does not read this slot until `produced` passes k. */
static lunet_status fill(lunet_batches *b, slot *s, int64_t k) {
  int64_t first = k * b->batch;
  int64_t count = b->order_len - first < b->batch ? b->order_len - first : b->batch;
  for (int64_t j = 0; j < count; j++) {
    int64_t idx = b->order[first + j];
    const float *src = b->x ? b->x + idx * b->sample_numel : NULL;
    float *dst = s->x + j * b->x_numel;
    if (b->x_u8) { /* to float: into the batch, or into the scratch sample the augmentation reads */
      const uint8_t *u = b->x_u8 + idx * b->sample_numel;
      float *f = b->aug ? b->scratch : dst;
      for (int64_t i = 0; i < b->sample_numel; i++) f[i] = (float)u[i];
      src = f;
    }
    if (b->aug) {
      lunet_status st = lunet_augment_apply(b->wctx, b->aug, dst, src, 1, b->h, b->w, b->c, &idx,
                                            b->seed, b->epoch);
      if (st != LUNET_OK) return st;
    } else if (src != dst) {
      memcpy(dst, src, (size_t)b->sample_numel * sizeof(float));
    }
    if (b->y)
      memcpy(s->y + j * b->y_numel, b->y + idx * b->y_numel, (size_t)b->y_numel * sizeof(float));
  }
  s->count = count;
  return LUNET_OK;
}

static void *worker(void *arg) {
  lunet_batches *b = arg;
  for (int64_t k = 0; k < b->nbatches; k++) {
    pthread_mutex_lock(&b->mu);
    while (!b->stop && k - b->consumed >= b->depth) pthread_cond_wait(&b->cv, &b->mu);
    bool stop = b->stop;
    pthread_mutex_unlock(&b->mu);
    if (stop) break;
    lunet_status st = fill(b, &b->slots[k % b->depth], k);
    pthread_mutex_lock(&b->mu);
    if (st != LUNET_OK) {
      b->err = st;
      snprintf(b->msg, sizeof b->msg, "%s", lunet_ctx_error(b->wctx));
    } else {
      b->produced = k + 1;
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (st != LUNET_OK) break;
  }
  return NULL;
}

static lunet_status check_opts(lunet_ctx *ctx, const lunet_batches_opts *o) {
  if (!o || (!o->x == !o->x_u8) || o->n <= 0 || o->batch_size <= 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "batches: need one of x and x_u8, n > 0 and batch_size > 0 (got n %lld, "
                       "batch_size %lld)",
                       o ? (long long)o->n : 0LL, o ? (long long)o->batch_size : 0LL);
  if (o->y && o->y_numel <= 0)
    return lunet_error(ctx, LUNET_ERR_ARG, "batches: y_numel must be positive, got %lld",
                       (long long)o->y_numel);
  if (o->order_len < 0 || (o->order_len > 0 && !o->order))
    return lunet_error(ctx, LUNET_ERR_ARG, "batches: order_len %lld without an order",
                       (long long)o->order_len);
  if (o->aug) return lunet_augment_check(ctx, o->aug, o->h, o->w, o->c);
  if (o->sample_numel <= 0 && o->h * o->w * o->c <= 0)
    return lunet_error(ctx, LUNET_ERR_ARG,
                       "batches: give sample_numel or a positive sample shape (h, w, c)");
  return LUNET_OK;
}

/* Copies the order (or makes 0..n-1) and checks every index. */
static lunet_status copy_order(lunet_ctx *ctx, lunet_batches *b, const lunet_batches_opts *o) {
  b->order_len = o->order_len > 0 ? o->order_len : o->n;
  b->order = malloc((size_t)b->order_len * sizeof *b->order);
  if (!b->order) return lunet_error(ctx, LUNET_ERR_NOMEM, "batches: out of memory");
  for (int64_t i = 0; i < b->order_len; i++) {
    int64_t idx = o->order ? o->order[i] : i;
    if (idx < 0 || idx >= o->n)
      return lunet_error(ctx, LUNET_ERR_ARG,
                         "batches: order[%lld] = %lld is not a sample index in [0, %lld)",
                         (long long)i, (long long)idx, (long long)o->n);
    b->order[i] = idx;
  }
  return LUNET_OK;
}

static lunet_status alloc_slots(lunet_ctx *ctx, lunet_batches *b) {
  b->slots = calloc((size_t)b->depth, sizeof *b->slots);
  if (!b->slots) return lunet_error(ctx, LUNET_ERR_NOMEM, "batches: out of memory");
  for (int i = 0; i < b->depth; i++) {
    b->slots[i].x = malloc((size_t)(b->batch * b->x_numel) * sizeof(float));
    if (b->y) b->slots[i].y = malloc((size_t)(b->batch * b->y_numel) * sizeof(float));
    if (!b->slots[i].x || (b->y && !b->slots[i].y))
      return lunet_error(ctx, LUNET_ERR_NOMEM,
                         "batches: out of memory for %d batches of %lld samples", b->depth,
                         (long long)b->batch);
  }
  return LUNET_OK;
}

static lunet_status setup(lunet_ctx *ctx, lunet_batches *b, const lunet_batches_opts *o) {
  b->x = o->x;
  b->x_u8 = o->x_u8;
  b->y = o->y;
  b->y_numel = o->y ? o->y_numel : 0;
  b->h = o->h;
  b->w = o->w;
  b->c = o->c;
  b->sample_numel = o->sample_numel > 0 ? o->sample_numel : o->h * o->w * o->c;
  b->x_numel = b->sample_numel;
  if (o->aug) {
    int64_t oh, ow, oc;
    lunet_augment_output_shape(o->aug, o->h, o->w, o->c, &oh, &ow, &oc);
    b->x_numel = oh * ow * oc;
    if (b->sample_numel != o->h * o->w * o->c)
      return lunet_error(ctx, LUNET_ERR_SHAPE,
                         "batches: sample_numel %lld does not match the sample shape "
                         "(%lld, %lld, %lld) the augmentation needs",
                         (long long)b->sample_numel, (long long)o->h, (long long)o->w,
                         (long long)o->c);
  }
  /* A batch larger than the epoch is the epoch (Keras does the same). */
  int64_t len = o->order_len ? o->order_len : o->n;
  b->batch = o->batch_size < len ? o->batch_size : len;
  int64_t widest = b->sample_numel > o->y_numel ? b->sample_numel : o->y_numel;
  if (widest > 0 && b->batch > INT64_MAX / (int64_t)sizeof(float) / widest)
    return lunet_error(ctx, LUNET_ERR_ARG, "batches: a batch of %lld samples of %lld values is too "
                       "large", (long long)b->batch, (long long)widest);
  b->aug = o->aug;
  b->seed = o->seed;
  b->epoch = o->epoch;
  b->depth = o->queue_depth > 0 ? o->queue_depth : 2;
  lunet_status st = copy_order(ctx, b, o);
  if (st != LUNET_OK) return st;
  b->nbatches = (b->order_len + b->batch - 1) / b->batch;
  st = alloc_slots(ctx, b);
  if (st != LUNET_OK) return st;
  b->wctx = lunet_ctx_new();
  if (b->x_u8 && b->aug) b->scratch = malloc(sizeof(float) * (size_t)b->sample_numel);
  if (!b->wctx || (b->x_u8 && b->aug && !b->scratch))
    return lunet_error(ctx, LUNET_ERR_NOMEM, "batches: out of memory");
  return LUNET_OK;
}

lunet_batches *lunet_batches_new(lunet_ctx *ctx, const lunet_batches_opts *o) {
  if (check_opts(ctx, o) != LUNET_OK) return NULL;
  lunet_batches *b = calloc(1, sizeof *b);
  if (!b) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "batches: out of memory");
    return NULL;
  }
  b->ctx = ctx;
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  if (setup(ctx, b, o) != LUNET_OK) {
    lunet_batches_free(b);
    return NULL;
  }
  if (pthread_create(&b->thread, NULL, worker, b) != 0) {
    lunet_error(ctx, LUNET_ERR_NOMEM, "batches: cannot start the prefetch thread");
    lunet_batches_free(b);
    return NULL;
  }
  b->started = true;
  return b;
}

int64_t lunet_batches_x_numel(const lunet_batches *b) { return b->x_numel; }
int64_t lunet_batches_y_numel(const lunet_batches *b) { return b->y_numel; }
int64_t lunet_batches_count(const lunet_batches *b) { return b->nbatches; }

lunet_status lunet_batches_next(lunet_batches *b, float *x_out, float *y_out, int64_t *count) {
  *count = 0;
  pthread_mutex_lock(&b->mu);
  int64_t k = b->consumed;
  while (k < b->nbatches && b->produced <= k && b->err == LUNET_OK)
    pthread_cond_wait(&b->cv, &b->mu);
  bool ready = k < b->nbatches && b->produced > k;
  lunet_status err = b->err;
  pthread_mutex_unlock(&b->mu);
  if (k >= b->nbatches) return LUNET_OK;
  if (!ready) return lunet_error(b->ctx, err, "%s", b->msg);
  /* The worker leaves slot k % depth alone until `consumed` passes k. */
  const slot *s = &b->slots[k % b->depth];
  memcpy(x_out, s->x, (size_t)(s->count * b->x_numel) * sizeof(float));
  if (y_out && b->y) memcpy(y_out, s->y, (size_t)(s->count * b->y_numel) * sizeof(float));
  *count = s->count;
  pthread_mutex_lock(&b->mu);
  b->consumed = k + 1;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  return LUNET_OK;
}

void lunet_batches_free(lunet_batches *b) {
  if (!b) return;
  if (b->started) {
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
  }
  for (int i = 0; b->slots && i < b->depth; i++) {
    free(b->slots[i].x);
    free(b->slots[i].y);
  }
  free(b->slots);
  free(b->order);
  free(b->scratch);
  if (b->wctx) lunet_ctx_free(b->wctx);
  pthread_cond_destroy(&b->cv);
  pthread_mutex_destroy(&b->mu);
  free(b);
}
