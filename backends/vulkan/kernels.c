/*
 * Kernels: the embedded SPIR-V modules, one pipeline per (shader, mode)
 * created on first use, and the dispatch that binds buffers and push
 * constants into the current batch.
 *
 * Every pipeline shares one layout: LUNET_VK_BINDINGS storage buffers and
 * LUNET_VK_PUSH_BYTES of push constants.  Specialization constants: 0 and 1
 * the workgroup size, 2 the mode (which op of the family), 3 the GEMM tile.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vk.h"

/* ---- the pipeline cache, kept between runs ----
 * Building the compute pipelines (the driver compiling SPIR-V to the
 * device's code) is a run's first cost; the driver's cache of them is
 * saved at shutdown to $LUNET_VULKAN_PIPELINE_CACHE, else
 * $XDG_CACHE_HOME/lunet (or ~/.cache/lunet)/vulkan-<vendor>-<device>-<driver>.bin,
 * written to a temporary name and renamed, and read at init.  A file made
 * by another device or driver (its header says so) or damaged is ignored:
 * the cache starts empty. */
#define PCACHE_MAX ((size_t)64 << 20)

static void pcache_path(lunet_backend *be) {
  const char *set = getenv("LUNET_VULKAN_PIPELINE_CACHE"), *xdg = getenv("XDG_CACHE_HOME"),
             *home = getenv("HOME");
  if (set && *set) {
    snprintf(be->pcache_path, sizeof be->pcache_path, "%s", set);
    return;
  }
  char dir[900];
  if (xdg && *xdg) snprintf(dir, sizeof dir, "%s/lunet", xdg);
  else if (home && *home) snprintf(dir, sizeof dir, "%s/.cache/lunet", home);
  else return; /* nowhere to keep it */
  snprintf(be->pcache_path, sizeof be->pcache_path, "%s/vulkan-%04x-%04x-%08x.bin", dir, be->props.vendorID,
           be->props.deviceID, be->props.driverVersion);
}

/* Whether data is a pipeline cache of this device (Vulkan's header, version one). */
static bool pcache_ours(const lunet_backend *be, const uint8_t *data, size_t n) {
  uint32_t h[4];
  if (n < 32) return false;
  memcpy(h, data, sizeof h);
  return h[0] >= 32 && h[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE && h[2] == be->props.vendorID &&
         h[3] == be->props.deviceID && !memcmp(data + 16, be->props.pipelineCacheUUID, VK_UUID_SIZE);
}

static void pcache_open(lunet_backend *be) {
  pcache_path(be);
  uint8_t *data = NULL;
  size_t n = 0;
  FILE *f = be->pcache_path[0] ? fopen(be->pcache_path, "rb") : NULL;
  if (f) {
    if (fseek(f, 0, SEEK_END) == 0) {
      long len = ftell(f);
      if (len > 0 && (size_t)len <= PCACHE_MAX && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)len)) &&
          fread(data, 1, (size_t)len, f) == (size_t)len)
        n = (size_t)len;
    }
    fclose(f);
  }
  be->pcache_loaded = n > 0 && pcache_ours(be, data, n);
  if (be->pcache_loaded) be->stats.pipeline_cache_bytes = n;
  VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
                                  .initialDataSize = be->pcache_loaded ? n : 0,
                                  .pInitialData = be->pcache_loaded ? data : NULL};
  if (vkCreatePipelineCache(be->dev, &ci, NULL, &be->pcache) != VK_SUCCESS) be->pcache = VK_NULL_HANDLE;
  free(data);
}

/* Saves the cache when this run built pipelines (nothing new otherwise). */
static void pcache_save(lunet_backend *be) {
  if (!be->pcache || !be->pcache_path[0] || be->stats.pipelines == 0) return;
  size_t n = 0;
  if (vkGetPipelineCacheData(be->dev, be->pcache, &n, NULL) != VK_SUCCESS || n == 0 || n > PCACHE_MAX) return;
  uint8_t *data = malloc(n);
  if (!data || vkGetPipelineCacheData(be->dev, be->pcache, &n, data) != VK_SUCCESS) {
    free(data);
    return;
  }
  char dir[1024], tmp[1100];
  snprintf(dir, sizeof dir, "%s", be->pcache_path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    mkdir(dir, 0755); /* its parent (~/.cache) is the user's; an error shows at fopen */
  }
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", be->pcache_path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fwrite(data, 1, n, f) == n;
  if (f && fclose(f) != 0) ok = false;
  if (!ok || rename(tmp, be->pcache_path) != 0) remove(tmp); /* a cache: losing it costs time only */
  free(data);
}

/* The backend whose cache is saved at exit (the core shuts a backend down
 * only to change its device, so most runs end without a shutdown). */
static lunet_backend *pcache_owner;

static void pcache_at_exit(void) {
  if (pcache_owner) pcache_save(pcache_owner);
}

/* A descriptor set layout of `count` storage-buffer bindings of `each`
 * descriptors (pushed where the device pushes them) and its pipeline layout
 * with LUNET_VK_PUSH_BYTES of push constants. */
static int make_layout(lunet_backend *be, uint32_t count, uint32_t each, VkDescriptorSetLayout *dsl,
                       VkPipelineLayout *layout) {
  VkDescriptorSetLayoutBinding b[LUNET_VK_BINDINGS];
  for (uint32_t i = 0; i < count; i++)
    b[i] = (VkDescriptorSetLayoutBinding){.binding = i,
                                          .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                          .descriptorCount = each,
                                          .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
  VkDescriptorSetLayoutCreateInfo li = {
      .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
      .flags = be->push_descriptors ? VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR : 0,
      .bindingCount = count,
      .pBindings = b};
  VkResult r = vkCreateDescriptorSetLayout(be->dev, &li, NULL, dsl);
  if (r) return lunet_vk_check(be, r, "vkCreateDescriptorSetLayout");
  VkPushConstantRange pr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, LUNET_VK_PUSH_BYTES};
  VkPipelineLayoutCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                   .setLayoutCount = 1,
                                   .pSetLayouts = dsl,
                                   .pushConstantRangeCount = 1,
                                   .pPushConstantRanges = &pr};
  r = vkCreatePipelineLayout(be->dev, &pi, NULL, layout);
  return r ? lunet_vk_check(be, r, "vkCreatePipelineLayout") : 0;
}

int lunet_vk_kernels_init(lunet_backend *be) {
  static bool registered;
  pcache_open(be);
  pcache_owner = be;
  if (!registered) registered = atexit(pcache_at_exit) == 0;
  int rc = make_layout(be, LUNET_VK_BINDINGS, 1, &be->dsl, &be->layout);
  if (!rc && be->multi_tensor) rc = make_layout(be, 4, LUNET_VK_MULTI, &be->dsl_multi, &be->layout_multi);
  return rc;
}

void lunet_vk_kernels_free(lunet_backend *be) {
  if (be->pcache) {
    pcache_save(be);
    vkDestroyPipelineCache(be->dev, be->pcache, NULL);
    be->pcache = VK_NULL_HANDLE;
  }
  if (pcache_owner == be) pcache_owner = NULL;
  for (int s = 0; s < VK_SH_COUNT; s++) {
    for (int m = 0; m < LUNET_VK_MAX_MODES; m++)
      if (be->pipes[s][m]) vkDestroyPipeline(be->dev, be->pipes[s][m], NULL);
    if (be->modules[s]) vkDestroyShaderModule(be->dev, be->modules[s], NULL);
  }
  if (be->layout) vkDestroyPipelineLayout(be->dev, be->layout, NULL);
  if (be->dsl) vkDestroyDescriptorSetLayout(be->dev, be->dsl, NULL);
  if (be->layout_multi) vkDestroyPipelineLayout(be->dev, be->layout_multi, NULL);
  if (be->dsl_multi) vkDestroyDescriptorSetLayout(be->dev, be->dsl_multi, NULL);
}

static int make_pipeline(lunet_backend *be, lunet_vk_shader sh, int mode) {
  const lunet_vk_spirv *sp = &lunet_vk_shaders[sh];
  VkResult r;
  if (!be->modules[sh]) {
    VkShaderModuleCreateInfo mi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                   .codeSize = sp->bytes,
                                   .pCode = sp->code};
    r = vkCreateShaderModule(be->dev, &mi, NULL, &be->modules[sh]);
    if (r)
      return lunet_vk_error(LUNET_ERR_DEVICE, "vulkan: shader %s.comp does not load (%s)", sp->name,
                            lunet_vk_result_name(r));
  }
  bool tiled = sh == VK_SH_GEMM;
  uint32_t spec[4] = {tiled ? be->tile : be->wg, tiled ? be->tile : 1, (uint32_t)mode, be->tile};
  VkSpecializationMapEntry me[4];
  for (uint32_t i = 0; i < 4; i++) me[i] = (VkSpecializationMapEntry){i, 4 * i, 4};
  VkSpecializationInfo si = {4, me, sizeof spec, spec};
  VkComputePipelineCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                .module = be->modules[sh],
                .pName = "main",
                .pSpecializationInfo = &si},
      .layout = sh == VK_SH_OPTIM_MULTI ? be->layout_multi : be->layout};
  r = vkCreateComputePipelines(be->dev, be->pcache, 1, &ci, NULL, &be->pipes[sh][mode]);
  if (!r) be->stats.pipelines++;
  if (r == VK_ERROR_DEVICE_LOST) return lunet_vk_check(be, r, "vkCreateComputePipelines");
  if (r)
    return lunet_vk_error(LUNET_ERR_DEVICE,
                          "vulkan: shader %s.comp (mode %d) does not build into a pipeline "
                          "on %s (%s)",
                          sp->name, mode, be->props.deviceName, lunet_vk_result_name(r));
  return 0;
}

/* The bindings a shader declares (*declared) and writes (returned): those
 * of its storage buffers, and of them those not decorated NonWritable
 * (GLSL's readonly) on the variable or on every member of its block, read
 * from the SPIR-V.  An unparsable module counts as declaring and writing
 * every binding (barriers then as before). */
enum { OP_DECORATE = 71, OP_MEMBER_DECORATE = 72, OP_VARIABLE = 59, OP_TYPE_POINTER = 32,
       OP_TYPE_STRUCT = 30, DEC_NONWRITABLE = 24, DEC_BINDING = 33 };

static uint32_t spirv_write_mask(const uint32_t *code, size_t words, uint32_t *declared) {
  *declared = UINT32_MAX;
  if (words < 5 || code[0] != 0x07230203u || code[3] > (1u << 20)) return UINT32_MAX;
  uint32_t bound = code[3];
  int32_t *binding = malloc(bound * sizeof *binding);
  uint32_t *info = calloc(bound, sizeof *info); /* bit 0 nonwritable var; bits 8..: struct members */
  uint32_t *members = calloc(bound, sizeof *members), *ro_members = calloc(bound, sizeof *ro_members);
  uint32_t *pointee = calloc(bound, sizeof *pointee), *var_type = calloc(bound, sizeof *var_type);
  uint32_t mask = UINT32_MAX;
  if (!binding || !info || !members || !ro_members || !pointee || !var_type) goto done;
  for (uint32_t i = 0; i < bound; i++) binding[i] = -1;
  for (size_t at = 5; at < words;) {
    uint32_t n = code[at] >> 16, op = code[at] & 0xffffu;
    const uint32_t *w = code + at;
    if (n == 0 || at + n > words) goto done;
    if (op == OP_DECORATE && n >= 3 && w[1] < bound) {
      if (w[2] == DEC_BINDING && n >= 4) binding[w[1]] = (int32_t)w[3];
      if (w[2] == DEC_NONWRITABLE) info[w[1]] |= 1;
    } else if (op == OP_MEMBER_DECORATE && n >= 4 && w[1] < bound && w[3] == DEC_NONWRITABLE) {
      ro_members[w[1]]++;
    } else if (op == OP_TYPE_STRUCT && n >= 2 && w[1] < bound) {
      members[w[1]] = n - 2;
    } else if (op == OP_TYPE_POINTER && n >= 4 && w[1] < bound) {
      pointee[w[1]] = w[3];
    } else if (op == OP_VARIABLE && n >= 4 && w[2] < bound) {
      var_type[w[2]] = w[1];
    }
    at += n;
  }
  mask = 0;
  *declared = 0;
  for (uint32_t v = 0; v < bound; v++) {
    if (binding[v] < 0 || binding[v] >= 32 || var_type[v] >= bound) continue;
    uint32_t t = pointee[var_type[v]];
    bool readonly = (info[v] & 1) || (t < bound && members[t] > 0 && ro_members[t] >= members[t]);
    *declared |= 1u << binding[v];
    if (!readonly) mask |= 1u << binding[v];
  }
done:
  free(binding), free(info), free(members), free(ro_members), free(pointee), free(var_type);
  return mask;
}

uint32_t lunet_vk_groups(lunet_backend *be, size_t n) {
  size_t g = (n + be->wg - 1) / be->wg;
  size_t cap = be->props.limits.maxComputeWorkGroupCount[0];
  if (cap > 65535) cap = 65535;
  return (uint32_t)(g == 0 ? 1 : g < cap ? g : cap);
}

uint32_t lunet_vk_binding_writes(const VkBuffer *binds, bool multi, VkDescriptorSet set, VkDescriptorBufferInfo *info,
                                 VkWriteDescriptorSet *w) {
  uint32_t nw = multi ? 4 : LUNET_VK_BINDINGS, each = multi ? LUNET_VK_MULTI : 1;
  for (uint32_t i = 0; i < nw * each; i++) info[i] = (VkDescriptorBufferInfo){binds[i], 0, VK_WHOLE_SIZE};
  for (uint32_t i = 0; i < nw; i++)
    w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                  .dstSet = set,
                                  .dstBinding = i,
                                  .descriptorCount = each,
                                  .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                  .pBufferInfo = &info[i * each]};
  return nw;
}

/* The shader that runs sh on this device: its subgroup variant where it has one. */
static lunet_vk_shader variant(const lunet_backend *be, lunet_vk_shader sh) {
  if (!be->subgroups) return sh;
  return sh == VK_SH_REDUCE ? VK_SH_REDUCE_SG : sh == VK_SH_SOFTMAX ? VK_SH_SOFTMAX_SG
       : sh == VK_SH_BATCHNORM ? VK_SH_BATCHNORM_SG : sh;
}

/* Adds b to the buffers p reads (write: writes), each buffer once, a
 * written one only among the writes. */
static void track(lunet_vk_pending *p, VkBuffer b, bool write) {
  for (int i = 0; i < p->nw; i++)
    if (p->writes[i] == b) return;
  for (int i = 0; i < p->nr; i++)
    if (p->reads[i] == b) {
      if (!write) return;
      p->reads[i] = p->reads[--p->nr];
      break;
    }
  if (write) p->writes[p->nw++] = b;
  else p->reads[p->nr++] = b;
}

/* nbinds buffers bound: LUNET_VK_BINDINGS, or optim_multi's
 * LUNET_VK_DESCRIPTORS (binding i / LUNET_VK_MULTI of its layout). */
static int dispatch(lunet_backend *be, lunet_vk_shader sh, int mode, lunet_cbuf const *bufs, int nbufs,
                    const void *pc, size_t pc_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
  sh = variant(be, sh);
  bool multi = sh == VK_SH_OPTIM_MULTI;
  int nbinds = multi ? LUNET_VK_DESCRIPTORS : LUNET_VK_BINDINGS, per = multi ? LUNET_VK_MULTI : 1;
  const VkPhysicalDeviceLimits *l = &be->props.limits;
  if (gx > l->maxComputeWorkGroupCount[0] || gy > l->maxComputeWorkGroupCount[1] ||
      gz > l->maxComputeWorkGroupCount[2])
    return lunet_vk_error(LUNET_ERR_ARG,
                          "vulkan: %s needs %u x %u x %u workgroups, more than the device's "
                          "%u x %u x %u",
                          lunet_vk_shaders[sh].name, gx, gy, gz, l->maxComputeWorkGroupCount[0],
                          l->maxComputeWorkGroupCount[1], l->maxComputeWorkGroupCount[2]);
  VkBuffer binds[LUNET_VK_DESCRIPTORS];
  for (int i = 0; i < nbinds; i++) {
    const lunet_vk_buffer *b = i < nbufs && bufs[i] ? bufs[i] : &be->dummy;
    if (b->size > l->maxStorageBufferRange)
      return lunet_vk_error(LUNET_ERR_ARG,
                            "vulkan: %s: a buffer of %zu bytes is more than this device "
                            "binds to a shader (maxStorageBufferRange %u)",
                            lunet_vk_shaders[sh].name, b->size, l->maxStorageBufferRange);
    binds[i] = b->buf;
  }
  if (!be->pipes[sh][mode]) {
    int rc = make_pipeline(be, sh, mode);
    if (rc) return rc;
  }
  if (!(be->write_mask_known & (1u << sh))) {
    be->write_mask[sh] =
        spirv_write_mask(lunet_vk_shaders[sh].code, lunet_vk_shaders[sh].bytes / 4, &be->declared_mask[sh]);
    be->write_mask_known |= 1u << sh;
  }
  /* a set of optim_multi's layout holds LUNET_VK_DESCRIPTORS descriptors:
   * the pool's share of that many one-binding sets */
  int sets = be->push_descriptors ? 0 : nbinds / LUNET_VK_BINDINGS;
  lunet_vk_pending *p = lunet_vk_defer(be, sets);
  if (!p) return LUNET_ERR_DEVICE;
  p->kind = VK_PENDING_DISPATCH;
  for (int i = 0; i < nbinds; i++) {
    uint32_t bit = 1u << (i / per);
    if (be->declared_mask[sh] & bit) track(p, binds[i], be->write_mask[sh] & bit); /* else never touched */
  }
  memcpy(p->dispatch.binds, binds, (size_t)nbinds * sizeof *binds);
  p->dispatch.multi = multi;
  p->dispatch.pipe = be->pipes[sh][mode];
  p->dispatch.set = VK_NULL_HANDLE;
  if (!be->push_descriptors) {
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorPool = be->frames[be->cur].dpool,
                                      .descriptorSetCount = 1,
                                      .pSetLayouts = multi ? &be->dsl_multi : &be->dsl};
    VkResult r = vkAllocateDescriptorSets(be->dev, &ai, &p->dispatch.set);
    if (r) return lunet_vk_check(be, r, "vkAllocateDescriptorSets");
    VkDescriptorBufferInfo info[LUNET_VK_DESCRIPTORS];
    VkWriteDescriptorSet w[LUNET_VK_BINDINGS];
    uint32_t nw = lunet_vk_binding_writes(binds, multi, p->dispatch.set, info, w);
    vkUpdateDescriptorSets(be->dev, nw, w, 0, NULL);
  }
  be->stats.descriptor_writes += (uint64_t)nbinds;
  memset(p->dispatch.push, 0, sizeof p->dispatch.push);
  memcpy(p->dispatch.push, pc, pc_bytes < sizeof p->dispatch.push ? pc_bytes : sizeof p->dispatch.push);
  p->dispatch.groups[0] = gx, p->dispatch.groups[1] = gy, p->dispatch.groups[2] = gz;
  lunet_vk_commit(be, p, NULL, 0);
  be->stats.dispatches++;
  return 0;
}

int lunet_vk_dispatch(lunet_backend *be, lunet_vk_shader sh, int mode, lunet_cbuf const *bufs,
                      int nbufs, const void *pc, size_t pc_bytes, uint32_t gx, uint32_t gy,
                      uint32_t gz) {
  lunet_vk_record_begin(be);
  int rc = dispatch(be, sh, mode, bufs, nbufs, pc, pc_bytes, gx, gy, gz);
  lunet_vk_record_end(be);
  return rc;
}

int lunet_vk_dispatch_multi(lunet_backend *be, int mode, lunet_cbuf const *bufs, const void *pc,
                            size_t pc_bytes, uint32_t groups) {
  return lunet_vk_dispatch(be, VK_SH_OPTIM_MULTI, mode, bufs, LUNET_VK_DESCRIPTORS, pc, pc_bytes, groups, 1, 1);
}
