/*
 * Host buffers: 64-byte aligned, the handle is the data's address.  Each
 * block carries its size in a 64-byte header just before the data, so a
 * freed block goes into the bin of its size and the next allocation of that
 * size reuses it: a training loop allocates nothing after its first step.
 * The bins are guarded by be->mem_mu.
 */
#include <stdlib.h>
#include <string.h>
#include "cpu.h"

/* The block size for nbytes; SIZE_MAX when rounding up would wrap (the
 * allocation below then refuses it). */
static size_t round_size(size_t nbytes) {
  if (nbytes == 0) nbytes = 1;
  if (nbytes > SIZE_MAX - LUNET_CPU_ALIGN) return SIZE_MAX;
  return (nbytes + LUNET_CPU_ALIGN - 1) & ~(size_t)(LUNET_CPU_ALIGN - 1);
}

static size_t *block_header(void *data) { return (size_t *)((char *)data - LUNET_CPU_ALIGN); }

static lunet_cpu_bin *find_bin(lunet_backend *be, size_t size) {
  for (size_t i = 0; i < be->nbins; i++)
    if (be->bins[i].size == size) return &be->bins[i];
  return NULL;
}

static lunet_cpu_bin *add_bin(lunet_backend *be, size_t size) {
  if (be->nbins == be->bins_cap) {
    size_t cap = be->bins_cap ? 2 * be->bins_cap : 16;
    lunet_cpu_bin *bins = realloc(be->bins, cap * sizeof *bins);
    if (!bins) return NULL;
    be->bins = bins;
    be->bins_cap = cap;
  }
  lunet_cpu_bin *b = &be->bins[be->nbins++];
  memset(b, 0, sizeof *b);
  b->size = size;
  return b;
}

lunet_buf lunet_cpu_buffer_alloc(lunet_backend *be, size_t nbytes) {
  size_t size = round_size(nbytes);
  pthread_mutex_lock(&be->mem_mu);
  lunet_cpu_bin *b = find_bin(be, size);
  if (b && b->count > 0) {
    void *p = b->ptrs[--b->count];
    be->idle_bytes -= size;
    pthread_mutex_unlock(&be->mem_mu);
    return p;
  }
  pthread_mutex_unlock(&be->mem_mu);
  if (size > SIZE_MAX - LUNET_CPU_ALIGN) {
    lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: cannot allocate %zu bytes", nbytes);
    return NULL;
  }
  char *block = aligned_alloc(LUNET_CPU_ALIGN, size + LUNET_CPU_ALIGN);
  LUNET_CPU_COUNT(be, allocations, 1);
  if (!block) {
    lunet_cpu_error(LUNET_ERR_NOMEM, "cpu: out of memory allocating %zu bytes", nbytes);
    return NULL;
  }
  *(size_t *)block = size;
  return block + LUNET_CPU_ALIGN;
}

static bool pool_put(lunet_backend *be, void *data, size_t size) {
  if (be->idle_bytes + size > LUNET_CPU_POOL_CAP) return false;
  lunet_cpu_bin *b = find_bin(be, size);
  if (!b && !(b = add_bin(be, size))) return false;
  if (b->count == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 4;
    void **ptrs = realloc(b->ptrs, cap * sizeof *ptrs);
    if (!ptrs) return false;
    b->ptrs = ptrs;
    b->cap = cap;
  }
  b->ptrs[b->count++] = data;
  be->idle_bytes += size;
  return true;
}

void lunet_cpu_buffer_free(lunet_backend *be, lunet_buf buf) {
  if (!buf) return;
  size_t size = *block_header(buf);
  pthread_mutex_lock(&be->mem_mu);
  bool kept = pool_put(be, buf, size);
  pthread_mutex_unlock(&be->mem_mu);
  if (!kept) free(block_header(buf));
}

/* Returns every idle block to the system (shutdown). */
void lunet_cpu_pool_drain(lunet_backend *be) {
  pthread_mutex_lock(&be->mem_mu);
  for (size_t i = 0; i < be->nbins; i++) {
    for (size_t j = 0; j < be->bins[i].count; j++) free(block_header(be->bins[i].ptrs[j]));
    free(be->bins[i].ptrs);
  }
  be->nbins = 0;
  be->idle_bytes = 0;
  pthread_mutex_unlock(&be->mem_mu);
}

int lunet_cpu_buffer_upload(lunet_backend *be, lunet_buf dst, size_t off, const void *src,
                            size_t nbytes) {
  LUNET_CPU_COUNT(be, bytes_up, nbytes);
  if (nbytes) memcpy((char *)dst + off, src, nbytes);
  return 0;
}

int lunet_cpu_buffer_download(lunet_backend *be, lunet_cbuf src, size_t off, void *dst,
                              size_t nbytes) {
  LUNET_CPU_COUNT(be, bytes_down, nbytes);
  if (nbytes) memcpy(dst, (const char *)src + off, nbytes);
  return 0;
}

int lunet_cpu_buffer_copy(lunet_backend *be, lunet_buf dst, size_t doff, lunet_cbuf src,
                          size_t soff, size_t nbytes) {
  LUNET_CPU_COUNT(be, bytes_copied, nbytes);
  if (nbytes) memmove((char *)dst + doff, (const char *)src + soff, nbytes);
  return 0;
}

void lunet_cpu_log_gemm(lunet_backend *be, const char *op, int64_t m, int64_t n, int64_t k, int64_t chunks) {
  pthread_mutex_lock(&be->mem_mu);
  lunet_backend_log_gemm(&be->stats, op, m, n, k, chunks);
  pthread_mutex_unlock(&be->mem_mu);
}

/* The counters: a copy taken under the lock (the atomics read as they stand). */
void lunet_cpu_stats(lunet_backend *be, lunet_backend_stats *out) {
  pthread_mutex_lock(&be->mem_mu);
  *out = be->stats;
  pthread_mutex_unlock(&be->mem_mu);
}

int lunet_cpu_synchronize(lunet_backend *be) {
  (void)be;
  return 0;
}
