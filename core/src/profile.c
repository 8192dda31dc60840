/*
 * The profiler (lunet_profile_start/stop; nn.profile in Lua): while a
 * context profiles, every backend call the core makes for it (an "op") and
 * every layer's forward and backward pass is recorded as an event with its
 * start, duration and, where the core knows them, floating-point
 * operations.  On a backend that runs asynchronously (Vulkan) each op waits
 * for the device when it is profiled, so an op's time is the device's; the
 * profiled run is then slower than an unprofiled one.  Recording costs one
 * branch per op when the context does not profile.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define MAX_EVENTS (1 << 22) /* 4M events (about 130 MB) at most; later ones are counted, not kept */
#define MAX_NAMES 4096

struct lunet_profile {
  uint64_t origin; /* ns, when profiling started */
  lunet_profile_event *ev;
  size_t n, cap;
  uint64_t dropped;
  char *names[MAX_NAMES]; /* copies of layer names (layers may go before the profile is read) */
  int nnames;
};

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t lunet_prof_now(const lunet_ctx *ctx) { return ctx->prof ? now_ns() : 0; }

static const char *intern(lunet_profile *p, const char *name) {
  for (int i = p->nnames - 1; i >= 0; i--)
    if (!strcmp(p->names[i], name)) return p->names[i];
  if (p->nnames == MAX_NAMES) return "(another layer)";
  char *c = strdup(name);
  if (!c) return "(a layer)";
  return p->names[p->nnames++] = c;
}

static void add(lunet_profile *p, const char *name, const char *kind, uint64_t t0, uint64_t t1, double flops) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 4096;
    lunet_profile_event *ev = cap <= MAX_EVENTS ? realloc(p->ev, sizeof *ev * cap) : NULL;
    if (!ev) {
      p->dropped++;
      return;
    }
    p->ev = ev;
    p->cap = cap;
  }
  p->ev[p->n++] = (lunet_profile_event){.name = name, .kind = kind, .start_us = (double)(t0 - p->origin) / 1e3,
                                        .duration_us = (double)(t1 - t0) / 1e3, .flops = flops};
}

int lunet_prof_op(lunet_ctx *ctx, lunet_be *be, const char *op, double flops, uint64_t t0, int rc) {
  lunet_profile *p = ctx->prof;
  if (!p) return rc;
  if (rc == 0 && be->i->synchronize) rc = be->i->synchronize(be->state); /* the device's time, not the recording's */
  add(p, op, "op", t0, now_ns(), flops);
  return rc;
}

void lunet_prof_layer(lunet_ctx *ctx, const char *layer, const char *kind, uint64_t t0) {
  lunet_profile *p = ctx->prof;
  if (p) add(p, intern(p, layer), kind, t0, now_ns(), 0);
}

lunet_status lunet_profile_start(lunet_ctx *ctx) {
  if (ctx->prof) return lunet_error(ctx, LUNET_ERR_ARG, "profile: this context is profiling already");
  lunet_profile *p = calloc(1, sizeof *p);
  if (!p) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of host memory for the profile");
  p->origin = now_ns();
  ctx->prof = p;
  return LUNET_OK;
}

int64_t lunet_profile_count(const lunet_ctx *ctx) { return ctx->prof ? (int64_t)ctx->prof->n : 0; }

uint64_t lunet_profile_dropped(const lunet_ctx *ctx) { return ctx->prof ? ctx->prof->dropped : 0; }

const lunet_profile_event *lunet_profile_events(const lunet_ctx *ctx) { return ctx->prof ? ctx->prof->ev : NULL; }

void lunet_profile_stop(lunet_ctx *ctx) {
  lunet_profile *p = ctx->prof;
  if (!p) return;
  ctx->prof = NULL;
  for (int i = 0; i < p->nnames; i++) free(p->names[i]);
  free(p->ev);
  free(p);
}
