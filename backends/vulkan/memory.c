/*
 * Device memory and command batches.
 *
 * Buffers are device-local storage buffers; freed ones wait in a pool of size
 * classes, so that steady-state training allocates nothing.  Reusing a
 * freed buffer while earlier commands still read it is safe because the
 * hazards are tracked by VkBuffer (lunet_vk_access: writing a buffer that a
 * command since the last barrier read takes a barrier first), across
 * batches too: a barrier orders everything before it in submission order.
 *
 * Commands are not recorded as they come: each is held back with the
 * buffers it reads and writes and given a level, one more than the highest
 * level of an earlier held-back command it depends on (it reads what that
 * one writes, or writes what it reads or writes; commands recorded since
 * the last barrier are level 0).  At a submit, a download or when the list
 * is full, they are recorded level by level: the commands of one level
 * depend on none of each other, so they share one barrier, and a step costs
 * as many barriers as its longest chain of dependent commands rather than
 * one per place where the order it was written in meets a dependency.
 *
 * Commands are recorded into one of two frames: while one batch runs on the
 * device the other is recorded; a batch is submitted when its descriptor
 * sets, commands or staging space run out, and at synchronize() or a
 * download.
 * Uploads are copied into the frame's host-visible staging buffer and
 * recorded as transfers, so they stay ordered with the kernels around them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "vk.h"

#define STAGING_MAX ((size_t)16 << 20) /* per frame; bigger uploads go in pieces */
#define STAGING_MIN ((size_t)1 << 20)
#define FRESH_MAX ((size_t)64 << 10) /* buffers made anew rather than reused under a hazard */
#define WAIT_NS (600ull * 1000000000ull) /* a batch taking longer is an error */

static void destroy(lunet_backend *be, lunet_vk_buffer *b);

/* ---- raw buffers ---- */

int lunet_vk_memory_type(lunet_backend *be, uint32_t bits, VkMemoryPropertyFlags want,
                         VkMemoryPropertyFlags avoid) {
  for (int pass = 0; pass < 2; pass++)
    for (uint32_t i = 0; i < be->memprops.memoryTypeCount; i++) {
      VkMemoryPropertyFlags f = be->memprops.memoryTypes[i].propertyFlags;
      if (!(bits & (1u << i)) || (f & want) != want) continue;
      if (pass == 0 && (f & avoid)) continue;
      return (int)i;
    }
  return -1;
}

/* A buffer of `size` bytes in memory type `mem_type` (UINT32_MAX: device-local). */
int lunet_vk_raw_buffer(lunet_backend *be, lunet_vk_buffer *b, size_t size, uint32_t mem_type,
                        VkBufferUsageFlags usage) {
  memset(b, 0, sizeof *b);
  VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                           .size = size,
                           .usage = usage,
                           .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
  VkResult r = vkCreateBuffer(be->dev, &bi, NULL, &b->buf);
  if (r != VK_SUCCESS) return lunet_vk_check(be, r, "vkCreateBuffer");
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(be->dev, b->buf, &req);
  if (mem_type == UINT32_MAX || !(req.memoryTypeBits & (1u << mem_type))) {
    int t = lunet_vk_memory_type(be, req.memoryTypeBits,
                                 mem_type == UINT32_MAX
                                     ? VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
                                     : be->memprops.memoryTypes[mem_type].propertyFlags,
                                 0);
    if (t < 0) t = lunet_vk_memory_type(be, req.memoryTypeBits, 0, 0);
    mem_type = (uint32_t)t;
  }
  VkDeviceSize heap = be->memprops.memoryHeaps[be->memprops.memoryTypes[mem_type].heapIndex].size;
  if (req.size > heap) {
    lunet_vk_raw_free(be, b);
    return lunet_vk_error(LUNET_ERR_NOMEM,
                          "out of device memory: %zu bytes asked, the memory heap of %s "
                          "holds %llu",
                          size, be->props.deviceName, (unsigned long long)heap);
  }
  VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                             .allocationSize = req.size,
                             .memoryTypeIndex = mem_type};
  r = vkAllocateMemory(be->dev, &ai, NULL, &b->mem);
  if (!r) be->stats.allocations++;
  if (r == VK_SUCCESS) r = vkBindBufferMemory(be->dev, b->buf, b->mem, 0);
  if (r == VK_SUCCESS &&
      (be->memprops.memoryTypes[mem_type].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT))
    r = vkMapMemory(be->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map);
  if (r != VK_SUCCESS) {
    lunet_vk_raw_free(be, b);
    return lunet_vk_check(be, r, "allocating a Vulkan buffer");
  }
  b->size = size;
  return 0;
}

void lunet_vk_raw_free(lunet_backend *be, lunet_vk_buffer *b) {
  if (b->buf) vkDestroyBuffer(be->dev, b->buf, NULL);
  if (b->mem) vkFreeMemory(be->dev, b->mem, NULL);
  memset(b, 0, sizeof *b);
}

/* ---- frames ---- */

#define FLUSH_CMDS 32 /* LUNET_VULKAN_FLUSH's default */

int lunet_vk_frames_init(lunet_backend *be) {
  const char *flush = getenv("LUNET_VULKAN_FLUSH"), *levels = getenv("LUNET_VULKAN_LEVELS");
  be->level_order = !(levels && !strcmp(levels, "0"));
  be->flush_cmds = flush && *flush ? atoi(flush) : FLUSH_CMDS;
  if (be->flush_cmds < 0) be->flush_cmds = 0;
  VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                .queueFamilyIndex = be->qfamily};
  VkResult r = vkCreateCommandPool(be->dev, &pi, NULL, &be->cmdpool);
  if (r) return lunet_vk_check(be, r, "vkCreateCommandPool");
  VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                             LUNET_VK_SETS_PER_FRAME * LUNET_VK_BINDINGS};
  VkDescriptorPoolCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                   .maxSets = LUNET_VK_SETS_PER_FRAME,
                                   .poolSizeCount = 1,
                                   .pPoolSizes = &ps};
  VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  for (int i = 0; i < 2; i++) {
    lunet_vk_frame *f = &be->frames[i];
    VkCommandBufferAllocateInfo ci = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                      .commandPool = be->cmdpool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                      .commandBufferCount = 1};
    if ((r = vkAllocateCommandBuffers(be->dev, &ci, &f->cmd)) ||
        (r = vkCreateFence(be->dev, &fi, NULL, &f->fence)) ||
        (r = vkCreateDescriptorPool(be->dev, &di, NULL, &f->dpool)))
      return lunet_vk_check(be, r, "creating a command batch");
  }
  /* Staging and readback: host-visible; readback prefers cached memory. */
  VkMemoryPropertyFlags hv =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  int up = lunet_vk_memory_type(be, ~0u, hv, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  int down = lunet_vk_memory_type(be, ~0u, hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT, 0);
  if (down < 0) down = up;
  if (up < 0)
    return lunet_vk_error(LUNET_ERR_DEVICE, "%s has no host-visible coherent memory",
                          be->props.deviceName);
  be->type_upload = (uint32_t)up;
  be->type_readback = (uint32_t)down;
  be->pool_cap = (size_t)1 << 30;
  VkBufferUsageFlags st = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                          VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  int rc = lunet_vk_raw_buffer(be, &be->dummy, 256, UINT32_MAX, st);
  if (!rc) rc = lunet_vk_raw_buffer(be, &be->errbuf, 256, be->type_readback, st);
  if (rc) return rc;
  memset(be->errbuf.map, 0xff, 16);
  return 0;
}

void lunet_vk_frames_free(lunet_backend *be) {
  for (int i = 0; i < 2; i++) {
    lunet_vk_frame *f = &be->frames[i];
    if (f->fence) vkDestroyFence(be->dev, f->fence, NULL);
    if (f->dpool) vkDestroyDescriptorPool(be->dev, f->dpool, NULL);
    lunet_vk_raw_free(be, &f->staging);
  }
  lunet_vk_pool_drain(be);
  /* Buffers the caller never freed die with the device. */
  while (be->live) destroy(be, be->live);
  free(be->doomed);
  free(be->bins);
  free(be->regions);
  lunet_vk_raw_free(be, &be->dummy);
  lunet_vk_raw_free(be, &be->errbuf);
  lunet_vk_raw_free(be, &be->readback);
  if (be->cmdpool) vkDestroyCommandPool(be->dev, be->cmdpool, NULL);
}

static bool holds(const VkBuffer *set, int n, VkBuffer b) {
  for (int i = 0; i < n; i++)
    if (set[i] == b) return true;
  return false;
}

void lunet_vk_access(lunet_backend *be, VkCommandBuffer cmd, const VkBuffer *reads, int nr,
                     const VkBuffer *writes, int nw) {
  bool hazard = be->hz_nr + nr > LUNET_VK_HAZARD_MAX || be->hz_nw + nw > LUNET_VK_HAZARD_MAX;
  for (int i = 0; i < nr && !hazard; i++) hazard = holds(be->hz_written, be->hz_nw, reads[i]);
  for (int i = 0; i < nw && !hazard; i++)
    hazard = holds(be->hz_written, be->hz_nw, writes[i]) || holds(be->hz_read, be->hz_nr, writes[i]);
  if (hazard) lunet_vk_barrier(be, cmd);
  for (int i = 0; i < nr; i++)
    if (!holds(be->hz_read, be->hz_nr, reads[i])) be->hz_read[be->hz_nr++] = reads[i];
  for (int i = 0; i < nw; i++)
    if (!holds(be->hz_written, be->hz_nw, writes[i])) be->hz_written[be->hz_nw++] = writes[i];
}

void lunet_vk_barrier(lunet_backend *be, VkCommandBuffer cmd) {
  be->hz_nw = be->hz_nr = 0;
  be->stats.barriers++;
  VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT |
                                         VK_ACCESS_HOST_WRITE_BIT,
                        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                         VK_ACCESS_TRANSFER_READ_BIT |
                                         VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_HOST_READ_BIT};
  /* The host stage on the right: kernels' flags (errbuf) are read after
   * the fence. */
  vkCmdPipelineBarrier(cmd,
                       VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT |
                           VK_PIPELINE_STAGE_HOST_BIT,
                       VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT |
                           VK_PIPELINE_STAGE_HOST_BIT,
                       0, 1, &mb, 0, NULL, 0, NULL);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void lunet_vk_record_begin(lunet_backend *be) {
  if (be->rec_depth++ == 0) {
    be->rec_t0 = now_ns();
    be->rec_w0 = be->stats.wait_ns;
  }
}

void lunet_vk_record_end(lunet_backend *be) {
  if (--be->rec_depth == 0)
    be->stats.record_ns += now_ns() - be->rec_t0 - (be->stats.wait_ns - be->rec_w0);
}

/* Waits for frame f's batch and makes it recordable again. */
static int frame_wait(lunet_backend *be, lunet_vk_frame *f) {
  if (f->state != FRAME_SUBMITTED) return 0;
  be->stats.waits++;
  if (be->wait_cause == 1) be->stats.waits_read++;
  if (be->wait_cause == 2) be->stats.waits_sync++;
  uint64_t t0 = now_ns();
  VkResult r = vkWaitForFences(be->dev, 1, &f->fence, VK_TRUE, WAIT_NS);
  be->stats.wait_ns += now_ns() - t0;
  if (r == VK_TIMEOUT)
    return lunet_vk_error(LUNET_ERR_DEVICE,
                          "vulkan: a command batch did not finish within %llu s (the device "
                          "hangs or the work is far too large)",
                          WAIT_NS / 1000000000ull);
  if (r) return lunet_vk_check(be, r, "waiting for the device");
  vkResetFences(be->dev, 1, &f->fence);
  f->state = FRAME_IDLE;
  return 0;
}

/* Whether frame f can be recorded again without waiting: idle, or its
 * batch finished (then it is made idle; no wait is counted). */
static bool frame_done(lunet_backend *be, lunet_vk_frame *f) {
  if (f->state == FRAME_IDLE) return true;
  if (f->state != FRAME_SUBMITTED || vkGetFenceStatus(be->dev, f->fence) != VK_SUCCESS) return false;
  vkResetFences(be->dev, 1, &f->fence);
  f->state = FRAME_IDLE;
  return true;
}

/* Submits frame f; `host_reads`: the host waits for it next and then reads
 * what the device wrote (kernels' flags in errbuf), so it ends with a
 * barrier behind every command since the last one (host stage included),
 * this batch's and an earlier one's: when its fence signals, everything
 * submitted before has finished and its writes are visible to the host.  A
 * batch submitted early needs none: the host waits only for a later one. */
static int frame_submit(lunet_backend *be, lunet_vk_frame *f, bool host_reads) {
  if (f->state != FRAME_RECORDING) return 0;
  lunet_vk_emit(be);
  if (host_reads && (be->hz_nw || be->hz_nr)) lunet_vk_barrier(be, f->cmd);
  VkResult r = vkEndCommandBuffer(f->cmd);
  if (r) {
    /* The buffer is invalid now: frame_begin resets it, as after a failed
     * submit; the batch's commands are lost with the error, and with them
     * the barriers the hazard sets count on. */
    f->state = FRAME_IDLE;
    be->barrier_lost = true;
    return lunet_vk_check(be, r, "vkEndCommandBuffer");
  }
  VkSubmitInfo si = {
      .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &f->cmd};
  r = ++be->submits == be->fault_submit ? be->fault_result : vkQueueSubmit(be->queue, 1, &si, f->fence);
  f->state = r ? FRAME_IDLE : FRAME_SUBMITTED;
  if (r) be->barrier_lost = true;
  if (!r) be->stats.submits++;
  return r ? lunet_vk_check(be, r, "vkQueueSubmit") : 0;
}

static int frame_begin(lunet_backend *be, lunet_vk_frame *f) {
  int rc = frame_wait(be, f);
  if (rc) return rc;
  vkResetDescriptorPool(be->dev, f->dpool, 0);
  vkResetCommandBuffer(f->cmd, 0);
  VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                 .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
  VkResult r = vkBeginCommandBuffer(f->cmd, &bi);
  if (r) return lunet_vk_check(be, r, "vkBeginCommandBuffer");
  /* No barrier here: the hazard sets run on from the batches before (a
   * barrier orders everything earlier in submission order, other batches
   * included, before everything later), so a command of this batch waits
   * only when it touches what one since the last barrier touched.  But
   * when a batch failed to submit, the barriers it held never ran (the
   * other batch may still run): a full one first. */
  if (be->barrier_lost) lunet_vk_barrier(be, f->cmd);
  be->barrier_lost = false;
  f->state = FRAME_RECORDING;
  f->nsets = f->ncmds = 0;
  f->staging_used = 0;
  return 0;
}

/* Submits the frame being recorded and starts recording the other. */
static int frame_flip(lunet_backend *be) {
  int rc = frame_submit(be, &be->frames[be->cur], false);
  if (rc) return rc;
  be->cur ^= 1;
  return frame_begin(be, &be->frames[be->cur]);
}

VkCommandBuffer lunet_vk_cmd(lunet_backend *be, int sets) {
  if (be->lost) {
    lunet_vk_error(LUNET_ERR_DEVICE, "the Vulkan device was lost earlier: restart lunet "
                                     "to use it again, or lunet.use(\"cpu\")");
    return NULL;
  }
  lunet_vk_frame *f = &be->frames[be->cur];
  int rc = 0;
  if (f->state != FRAME_RECORDING)
    rc = frame_begin(be, f);
  else if (f->nsets + sets > LUNET_VK_SETS_PER_FRAME || f->ncmds >= LUNET_VK_CMDS_PER_FRAME ||
           (be->flush_cmds > 0 && f->ncmds % be->flush_cmds == 0 && f->ncmds > 0 &&
            frame_done(be, &be->frames[1 - be->cur])))
    rc = frame_flip(be);
  if (rc) return NULL;
  f = &be->frames[be->cur];
  f->nsets += sets;
  f->ncmds++;
  return f->cmd;
}

/* ---- levelling ---- */

static lunet_vk_level *level_of(lunet_backend *be, VkBuffer b, bool add) {
  for (int i = 0; i < be->nlevels; i++)
    if (be->levels[i].buf == b) return &be->levels[i];
  if (!add || be->nlevels == LUNET_VK_LEVEL_MAX) return NULL;
  be->levels[be->nlevels] = (lunet_vk_level){b, -1, -1};
  return &be->levels[be->nlevels++];
}

/* Whether a command since the last barrier, recorded or held back, reads
 * or writes b. */
static bool touched(lunet_backend *be, VkBuffer b) {
  if (be->npending) return level_of(be, b, false) != NULL;
  return holds(be->hz_written, be->hz_nw, b) || holds(be->hz_read, be->hz_nr, b);
}

/* The next free slot, recording the held-back commands first when the list
 * is full (into the same batch: a staging offset taken stays valid). */
static lunet_vk_pending *slot(lunet_backend *be) {
  if (be->npending == LUNET_VK_PENDING_MAX) lunet_vk_emit(be);
  lunet_vk_pending *p = &be->pending[be->npending];
  memset(p, 0, offsetof(lunet_vk_pending, dispatch));
  return p;
}

lunet_vk_pending *lunet_vk_defer(lunet_backend *be, int sets) {
  return lunet_vk_cmd(be, sets) ? slot(be) : NULL;
}

int lunet_vk_commit(lunet_backend *be, lunet_vk_pending *p, const VkBufferCopy *regions,
                    size_t nregions) {
  if (p->kind == VK_PENDING_COPY) {
    if (be->nregions + nregions > be->regions_cap) {
      size_t cap = be->regions_cap ? be->regions_cap : 64;
      while (cap < be->nregions + nregions) cap *= 2;
      VkBufferCopy *r = realloc(be->regions, cap * sizeof *r);
      if (!r) return lunet_vk_error(LUNET_ERR_NOMEM, "vulkan: out of host memory for a copy");
      be->regions = r;
      be->regions_cap = cap;
    }
    memcpy(be->regions + be->nregions, regions, nregions * sizeof *regions);
    p->copy.first = be->nregions;
    p->copy.count = nregions;
    be->nregions += nregions;
  }
  if (be->npending == 0) {
    /* What was recorded since the last barrier is level 0. */
    be->nlevels = 0;
    for (int i = 0; i < be->hz_nw; i++) level_of(be, be->hz_written[i], true)->written = 0;
    for (int i = 0; i < be->hz_nr; i++) level_of(be, be->hz_read[i], true)->read = 0;
  }
  /* levels has room for every buffer: LUNET_VK_LEVEL_MAX counts the
   * hazard sets and LUNET_VK_DESCRIPTORS buffers for each held-back command. */
  int level = 0;
  for (int i = 0; i < p->nr; i++) {
    lunet_vk_level *l = level_of(be, p->reads[i], false);
    if (l && l->written + 1 > level) level = l->written + 1;
  }
  for (int i = 0; i < p->nw; i++) {
    lunet_vk_level *l = level_of(be, p->writes[i], false);
    int after = l ? (l->written > l->read ? l->written : l->read) + 1 : 0;
    if (after > level) level = after;
  }
  if (!be->level_order) level = be->npending; /* the order written: one level each */
  p->level = level;
  for (int i = 0; i < p->nr; i++) {
    lunet_vk_level *l = level_of(be, p->reads[i], true);
    if (level > l->read) l->read = level;
  }
  for (int i = 0; i < p->nw; i++) {
    lunet_vk_level *l = level_of(be, p->writes[i], true);
    if (level > l->written) l->written = level;
  }
  be->npending++;
  return 0;
}

static void record(lunet_backend *be, VkCommandBuffer cmd, const lunet_vk_pending *p) {
  lunet_vk_access(be, cmd, p->reads, p->nr, p->writes, p->nw);
  switch (p->kind) {
  case VK_PENDING_DISPATCH:
  {
    VkPipelineLayout layout = p->dispatch.multi ? be->layout_multi : be->layout;
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p->dispatch.pipe);
    if (p->dispatch.set) {
      vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, &p->dispatch.set, 0, NULL);
    } else {
      /* the bindings go into the command buffer: no set to allocate and write */
      VkDescriptorBufferInfo info[LUNET_VK_DESCRIPTORS];
      VkWriteDescriptorSet w[LUNET_VK_BINDINGS];
      uint32_t nw = lunet_vk_binding_writes(p->dispatch.binds, p->dispatch.multi, VK_NULL_HANDLE, info, w);
      vkCmdPushDescriptorSetKHR(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, nw, w);
    }
    vkCmdPushConstants(cmd, layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, LUNET_VK_PUSH_BYTES, p->dispatch.push);
    vkCmdDispatch(cmd, p->dispatch.groups[0], p->dispatch.groups[1], p->dispatch.groups[2]);
    break;
  }
  case VK_PENDING_COPY:
    vkCmdCopyBuffer(cmd, p->copy.src, p->copy.dst, (uint32_t)p->copy.count,
                    be->regions + p->copy.first);
    break;
  case VK_PENDING_FILL:
    vkCmdFillBuffer(cmd, p->fill.dst, 0, p->fill.bytes, p->fill.bits);
    break;
  }
}

void lunet_vk_emit(lunet_backend *be) {
  int n = be->npending, top = 0;
  if (n == 0) return;
  VkCommandBuffer cmd = be->frames[be->cur].cmd;
  for (int i = 0; i < n; i++)
    if (be->pending[i].level > top) top = be->pending[i].level;
  /* Level by level, each in the order written (a level's commands are
   * independent of each other; the order only keeps runs reproducible). */
  for (int level = 0; level <= top; level++)
    for (int i = 0; i < n; i++)
      if (be->pending[i].level == level) record(be, cmd, &be->pending[i]);
  be->npending = 0;
  be->nregions = 0;
}

/* Raised by kernels (softmax_xent labels) into errbuf; reported and cleared. */
static int check_flags(lunet_backend *be) {
  uint32_t *e = be->errbuf.map;
  if (e[0] == UINT32_MAX) return 0;
  float label;
  memcpy(&label, &e[1], sizeof label);
  uint32_t row = e[0], cols = e[2];
  memset(e, 0xff, 16);
  if (label == (float)(int64_t)label)
    return lunet_vk_error(LUNET_ERR_ARG, "softmax_xent: label %g at row %u is outside [0, %u)",
                          (double)label, row, cols);
  return lunet_vk_error(LUNET_ERR_ARG,
                        "softmax_xent: label %g at row %u is not an integer class id in "
                        "[0, %u)",
                        (double)label, row, cols);
}

/* Runs every recorded batch to the end and destroys the doomed buffers.
 * Kernels' flags stay pending: only synchronize() reports them, so an
 * internal wait (alloc's retry) cannot swallow one. */
static int wait_all(lunet_backend *be) {
  int rc = frame_submit(be, &be->frames[be->cur], true);
  /* The newest batch first: it ends with a barrier behind everything
   * submitted before it, so the older one (flushed early) has finished by
   * then and its fence is only read, not waited on again. */
  if (!rc) rc = frame_wait(be, &be->frames[be->cur]);
  lunet_vk_frame *older = &be->frames[1 - be->cur];
  if (!rc && !frame_done(be, older)) rc = frame_wait(be, older);
  if (rc) return rc;
  for (size_t i = 0; i < be->ndoomed; i++) destroy(be, be->doomed[i]);
  be->ndoomed = 0;
  return 0;
}

/* Waits for everything recorded; `cause` labels the waits (stats). */
static int synchronize_for(lunet_backend *be, int cause) {
  if (be->lost) return lunet_vk_error(LUNET_ERR_DEVICE, "the Vulkan device was lost");
  be->wait_cause = cause;
  lunet_vk_record_begin(be);
  int rc = wait_all(be);
  lunet_vk_record_end(be);
  be->wait_cause = 0;
  return rc ? rc : check_flags(be);
}

int lunet_vk_synchronize(lunet_backend *be) { return synchronize_for(be, 2); }

void lunet_vk_stats(lunet_backend *be, lunet_backend_stats *out) { *out = be->stats; }

/* ---- the buffer pool ---- */

static void destroy(lunet_backend *be, lunet_vk_buffer *b) {
  if (b->prev)
    b->prev->next = b->next;
  else
    be->live = b->next;
  if (b->next) b->next->prev = b->prev;
  lunet_vk_raw_free(be, b);
  free(b);
}

/* Size classes: 256-byte steps up to 4 KiB, then eighths of a power of two,
 * so a pooled buffer wastes at most an eighth. */
static size_t size_class(size_t n) {
  if (n <= 4096) return (n + 255) & ~(size_t)255;
  size_t p = 4096;
  while (p * 2 < n) p *= 2;
  size_t step = p / 8;
  return (n + step - 1) / step * step;
}

static lunet_vk_bin *find_bin(lunet_backend *be, size_t size, bool create) {
  for (size_t i = 0; i < be->nbins; i++)
    if (be->bins[i].size == size) return &be->bins[i];
  if (!create) return NULL;
  if (be->nbins == be->bins_cap) {
    size_t cap = be->bins_cap ? 2 * be->bins_cap : 32;
    lunet_vk_bin *nb = realloc(be->bins, cap * sizeof *nb);
    if (!nb) return NULL;
    be->bins = nb;
    be->bins_cap = cap;
  }
  lunet_vk_bin *b = &be->bins[be->nbins++];
  memset(b, 0, sizeof *b);
  b->size = size;
  return b;
}

void lunet_vk_pool_drain(lunet_backend *be) {
  for (size_t i = 0; i < be->nbins; i++) {
    for (size_t j = 0; j < be->bins[i].count; j++) destroy(be, be->bins[i].bufs[j]);
    free(be->bins[i].bufs);
  }
  be->nbins = 0;
  be->idle_bytes = 0;
}

static lunet_vk_buffer *new_buffer(lunet_backend *be, size_t size) {
  lunet_vk_buffer *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                             VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  if (lunet_vk_raw_buffer(be, b, size, UINT32_MAX, usage)) {
    free(b);
    return NULL;
  }
  b->next = be->live;
  if (be->live) be->live->prev = b;
  be->live = b;
  return b;
}

lunet_buf lunet_vk_buffer_alloc(lunet_backend *be, size_t nbytes) {
  if (be->lost) {
    lunet_vk_error(LUNET_ERR_DEVICE, "buffer_alloc: the Vulkan device was lost: restart lunet "
                                     "to use it again, or lunet.use(\"cpu\")");
    return NULL;
  }
  size_t size = size_class(nbytes ? nbytes : 4);
  lunet_vk_bin *bin = find_bin(be, size, false);
  /* The most recently freed buffer that no command since the last barrier
   * touches: reusing one that a held-back command reads would order this
   * buffer's new writer after that reader for nothing.  When all are, a
   * small one is made anew (the pool keeps it: the next step finds it
   * free) and a big one is reused all the same (memory before barriers). */
  size_t pick = SIZE_MAX;
  for (size_t i = bin ? bin->count : 0; i-- > 0;)
    if (!touched(be, bin->bufs[i]->buf)) {
      pick = i;
      break;
    }
  if (bin && bin->count && pick == SIZE_MAX && size > FRESH_MAX) pick = bin->count - 1;
  if (pick != SIZE_MAX) {
    lunet_vk_buffer *b = bin->bufs[pick];
    bin->bufs[pick] = bin->bufs[--bin->count];
    be->idle_bytes -= size;
    return b;
  }
  lunet_vk_buffer *b = new_buffer(be, size);
  if (!b && !be->lost && wait_all(be) == 0) {
    /* Out of memory: give the idle pool back and try once more. */
    lunet_vk_pool_drain(be);
    b = new_buffer(be, size);
  }
  return b;
}

void lunet_vk_buffer_free(lunet_backend *be, lunet_buf buf) {
  lunet_vk_buffer *b = buf;
  if (!b) return;
  lunet_vk_bin *bin = be->idle_bytes + b->size <= be->pool_cap ? find_bin(be, b->size, true) : NULL;
  lunet_vk_buffer ***list = bin ? &bin->bufs : &be->doomed;
  size_t *count = bin ? &bin->count : &be->ndoomed, *cap = bin ? &bin->cap : &be->doomed_cap;
  if (*count == *cap) {
    size_t ncap = *cap ? 2 * *cap : 8;
    lunet_vk_buffer **nl = realloc(*list, ncap * sizeof *nl);
    if (!nl) return; /* leaks one buffer rather than destroying it while in use */
    *list = nl;
    *cap = ncap;
  }
  (*list)[(*count)++] = b;
  if (bin) be->idle_bytes += b->size;
}

/* ---- transfers ---- */

/* Holds back a copy into slot p (taken for this command). */
static int copy_into(lunet_backend *be, lunet_vk_pending *p, VkBuffer src, VkBuffer dst,
                     const VkBufferCopy *r, size_t nr) {
  p->kind = VK_PENDING_COPY;
  p->reads[p->nr++] = src;
  p->writes[p->nw++] = dst;
  p->copy.src = src;
  p->copy.dst = dst;
  return lunet_vk_commit(be, p, r, nr);
}

int lunet_vk_copy_regions(lunet_backend *be, lunet_vk_buffer *dst, const lunet_vk_buffer *src,
                          const VkBufferCopy *r, size_t nr) {
  lunet_vk_record_begin(be);
  lunet_vk_pending *p = lunet_vk_defer(be, 0);
  int rc = p ? copy_into(be, p, src->buf, dst->buf, r, nr) : LUNET_ERR_DEVICE;
  lunet_vk_record_end(be);
  return rc;
}

static int record_copy(lunet_backend *be, lunet_vk_pending *p, VkBuffer src, size_t soff,
                       VkBuffer dst, size_t doff, size_t n) {
  VkBufferCopy c = {.srcOffset = soff, .dstOffset = doff, .size = n};
  return copy_into(be, p, src, dst, &c, 1);
}

static int check_range(lunet_vk_buffer *b, size_t off, size_t n, const char *what) {
  if (off + n <= b->size && off + n >= off) return 0;
  return lunet_vk_error(LUNET_ERR_ARG, "%s: bytes [%zu, %zu) are outside a buffer of %zu", what,
                        off, off + n, b->size);
}

/* Room for n staging bytes in the current frame: flips to a fresh frame and
 * grows its staging buffer when needed.  Returns the offset, or -1. */
static int64_t staging_reserve(lunet_backend *be, size_t n) {
  if (!lunet_vk_cmd(be, 0)) return -1;
  lunet_vk_frame *f = &be->frames[be->cur];
  if (f->staging_used + n > f->staging.size) {
    if (f->staging_used && frame_flip(be)) return -1;
    f = &be->frames[be->cur];
    if (n > f->staging.size) {
      /* The fresh frame's previous batch finished: its staging is free. */
      size_t size = f->staging.size ? f->staging.size : STAGING_MIN;
      while (size < n) size *= 2;
      lunet_vk_raw_free(be, &f->staging);
      if (lunet_vk_raw_buffer(be, &f->staging, size, be->type_upload,
                              VK_BUFFER_USAGE_TRANSFER_SRC_BIT))
        return -1;
    }
  }
  int64_t off = (int64_t)f->staging_used;
  f->staging_used += (n + 15) & ~(size_t)15;
  return off;
}

static int upload(lunet_backend *be, lunet_buf dst, size_t off, const void *src, size_t nbytes) {
  lunet_vk_buffer *d = dst;
  int rc = check_range(d, off, nbytes, "upload");
  for (size_t done = 0; !rc && done < nbytes;) {
    size_t n = nbytes - done < STAGING_MAX ? nbytes - done : STAGING_MAX;
    int64_t so = staging_reserve(be, n);
    if (so < 0) return LUNET_ERR_DEVICE;
    lunet_vk_frame *f = &be->frames[be->cur];
    memcpy((char *)f->staging.map + so, (const char *)src + done, n);
    /* staging_reserve counted this command; another lunet_vk_cmd could
     * flip to a frame whose staging does not hold the data. */
    rc = record_copy(be, slot(be), f->staging.buf, (size_t)so, d->buf, off + done, n);
    done += n;
  }
  if (!rc) be->stats.bytes_up += nbytes;
  return rc;
}

static int download(lunet_backend *be, lunet_cbuf src, size_t off, void *dst, size_t nbytes) {
  const lunet_vk_buffer *s = src;
  int rc = check_range((lunet_vk_buffer *)s, off, nbytes, "download");
  if (!rc && be->readback.size < nbytes && be->readback.size < STAGING_MAX) {
    if ((rc = synchronize_for(be, 1))) return rc;
    size_t size = STAGING_MIN;
    while (size < nbytes && size < STAGING_MAX) size *= 2;
    lunet_vk_raw_free(be, &be->readback);
    rc = lunet_vk_raw_buffer(be, &be->readback, size, be->type_readback,
                             VK_BUFFER_USAGE_TRANSFER_DST_BIT);
  }
  for (size_t done = 0; !rc && done < nbytes;) {
    size_t n = nbytes - done < be->readback.size ? nbytes - done : be->readback.size;
    lunet_vk_pending *p = lunet_vk_defer(be, 0);
    if (!p) return LUNET_ERR_DEVICE;
    if ((rc = record_copy(be, p, s->buf, off + done, be->readback.buf, 0, n))) return rc;
    lunet_vk_emit(be);
    /* the full barrier: host stage and reads included */
    lunet_vk_barrier(be, be->frames[be->cur].cmd);
    if ((rc = synchronize_for(be, 1))) return rc;
    memcpy((char *)dst + done, be->readback.map, n);
    done += n;
  }
  if (!rc) be->stats.bytes_down += nbytes;
  return rc;
}

static int copy(lunet_backend *be, lunet_buf dst, size_t doff, lunet_cbuf src, size_t soff, size_t nbytes) {
  lunet_vk_buffer *d = dst;
  const lunet_vk_buffer *s = src;
  int rc = check_range(d, doff, nbytes, "copy");
  if (!rc) rc = check_range((lunet_vk_buffer *)s, soff, nbytes, "copy");
  if (rc || nbytes == 0) return rc;
  if (s == d && soff < doff + nbytes && doff < soff + nbytes)
    return lunet_vk_error(LUNET_ERR_ARG, "copy: overlapping ranges in one buffer");
  lunet_vk_pending *p = lunet_vk_defer(be, 0);
  if (!p) return LUNET_ERR_DEVICE;
  if ((rc = record_copy(be, p, s->buf, soff, d->buf, doff, nbytes))) return rc;
  be->stats.bytes_copied += nbytes;
  return 0;
}

/* The transfers as the backend's ops: their host time counts as recording. */
int lunet_vk_buffer_upload(lunet_backend *be, lunet_buf dst, size_t off, const void *src,
                           size_t nbytes) {
  lunet_vk_record_begin(be);
  int rc = upload(be, dst, off, src, nbytes);
  lunet_vk_record_end(be);
  return rc;
}

int lunet_vk_buffer_download(lunet_backend *be, lunet_cbuf src, size_t off, void *dst,
                             size_t nbytes) {
  lunet_vk_record_begin(be);
  int rc = download(be, src, off, dst, nbytes);
  lunet_vk_record_end(be);
  return rc;
}

int lunet_vk_buffer_copy(lunet_backend *be, lunet_buf dst, size_t doff, lunet_cbuf src, size_t soff,
                         size_t nbytes) {
  lunet_vk_record_begin(be);
  int rc = copy(be, dst, doff, src, soff, nbytes);
  lunet_vk_record_end(be);
  return rc;
}
