/*
 * The Vulkan backend's private header: its state, the Vulkan entry points it
 * loads at run time, buffers and their pool, command batching and kernels.
 *
 * libvulkan is opened with dlopen rather than linked, so that a machine
 * without the loader still loads this module and gets a clear "unavailable"
 * reason from probe() instead of a dlopen failure.  The entry points are
 * process-wide (the loader's own are too); everything else hangs off the
 * backend state.  One thread at a time uses a backend (as a lunet_ctx).
 */
#ifndef LUNET_VK_H
#define LUNET_VK_H

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>
#include "lunet/backend.h"

/* ---- entry points (loaded by lunet_vk_load) ---- */
#define LUNET_VK_GLOBAL_FUNCS(X)                                                                   \
  X(vkCreateInstance)                                                                              \
  X(vkEnumerateInstanceLayerProperties)                                                            \
  X(vkEnumerateInstanceVersion)
#define LUNET_VK_INSTANCE_FUNCS(X)                                                                 \
  X(vkDestroyInstance)                                                                             \
  X(vkEnumeratePhysicalDevices)                                                                    \
  X(vkGetPhysicalDeviceProperties)                                                                 \
  X(vkGetPhysicalDeviceProperties2)                                                                \
  X(vkGetPhysicalDeviceFeatures)                                                                   \
  X(vkGetPhysicalDeviceMemoryProperties)                                                           \
  X(vkGetPhysicalDeviceQueueFamilyProperties)                                                      \
  X(vkEnumerateDeviceExtensionProperties)                                                          \
  X(vkCreateDevice)                                                                                \
  X(vkDestroyDevice)                                                                               \
  X(vkGetDeviceQueue)                                                                              \
  X(vkCreateDebugUtilsMessengerEXT)                                                                \
  X(vkDestroyDebugUtilsMessengerEXT)                                                               \
  X(vkCreateBuffer)                                                                                \
  X(vkDestroyBuffer)                                                                               \
  X(vkGetBufferMemoryRequirements)                                                                 \
  X(vkAllocateMemory)                                                                              \
  X(vkFreeMemory)                                                                                  \
  X(vkBindBufferMemory)                                                                            \
  X(vkMapMemory)                                                                                   \
  X(vkUnmapMemory)                                                                                 \
  X(vkCreateCommandPool)                                                                           \
  X(vkDestroyCommandPool)                                                                          \
  X(vkAllocateCommandBuffers)                                                                      \
  X(vkBeginCommandBuffer)                                                                          \
  X(vkEndCommandBuffer)                                                                            \
  X(vkResetCommandBuffer)                                                                          \
  X(vkCreateFence)                                                                                 \
  X(vkDestroyFence)                                                                                \
  X(vkWaitForFences)                                                                               \
  X(vkGetFenceStatus)                                                                              \
  X(vkResetFences)                                                                                 \
  X(vkQueueSubmit)                                                                                 \
  X(vkDeviceWaitIdle)                                                                              \
  X(vkCreateDescriptorSetLayout)                                                                   \
  X(vkDestroyDescriptorSetLayout)                                                                  \
  X(vkCreateDescriptorPool)                                                                        \
  X(vkDestroyDescriptorPool)                                                                       \
  X(vkResetDescriptorPool)                                                                         \
  X(vkAllocateDescriptorSets)                                                                      \
  X(vkUpdateDescriptorSets)                                                                        \
  X(vkCreatePipelineLayout)                                                                        \
  X(vkDestroyPipelineLayout)                                                                       \
  X(vkCreateShaderModule)                                                                          \
  X(vkDestroyShaderModule)                                                                         \
  X(vkCreateComputePipelines)                                                                      \
  X(vkCreatePipelineCache)                                                                         \
  X(vkDestroyPipelineCache)                                                                        \
  X(vkGetPipelineCacheData)                                                                        \
  X(vkDestroyPipeline)                                                                             \
  X(vkCmdBindPipeline)                                                                             \
  X(vkCmdBindDescriptorSets)                                                                       \
  X(vkCmdPushDescriptorSetKHR)                                                                     \
  X(vkCmdPushConstants)                                                                            \
  X(vkCmdDispatch)                                                                                 \
  X(vkCmdPipelineBarrier)                                                                          \
  X(vkCmdCopyBuffer)                                                                               \
  X(vkCmdFillBuffer)

#define LUNET_VK_DECLARE(name) extern PFN_##name name;
LUNET_VK_GLOBAL_FUNCS(LUNET_VK_DECLARE)
LUNET_VK_INSTANCE_FUNCS(LUNET_VK_DECLARE)
#undef LUNET_VK_DECLARE

/* Opens libvulkan and the global entry points; 0 or -1 with the reason. */
int lunet_vk_load(char *why, size_t why_len);
/* The instance-level entry points (all of them, through the instance). */
int lunet_vk_load_instance(VkInstance inst, char *why, size_t why_len);

/* ---- kernels: one pipeline per (shader, mode) ---- */
typedef enum lunet_vk_shader {
  VK_SH_CAST,
  VK_SH_COPY,
  VK_SH_UNARY,
  VK_SH_BINARY,
  VK_SH_REDUCE,
  VK_SH_GEMM,
  VK_SH_SOFTMAX,
  VK_SH_OPTIM,
  VK_SH_DROPOUT,
  VK_SH_POOL,
  VK_SH_BATCHNORM,
  VK_SH_RESAMPLE,
  VK_SH_SCATTER,
  VK_SH_LSTM,
  VK_SH_LAYERNORM,
  VK_SH_GRU,
  /* group.glsl's reductions in subgroup arithmetic (be->subgroups) */
  VK_SH_REDUCE_SG,
  VK_SH_SOFTMAX_SG,
  VK_SH_BATCHNORM_SG,
  /* update_multi: arrays of buffers, its own layout (be->multi_tensor) */
  VK_SH_OPTIM_MULTI,
  VK_SH_COUNT
} lunet_vk_shader;

#define LUNET_VK_MAX_MODES 256 /* gemm.comp: op + 4 row blockings (3) + 16 column blockings (3) + 64 vector loads (4) */
#define LUNET_VK_BINDINGS 8
/* optim_multi.comp: tensors a dispatch, and its four arrays of them */
#define LUNET_VK_MULTI 8
#define LUNET_VK_DESCRIPTORS (4 * LUNET_VK_MULTI) /* the most buffers one dispatch binds */
#define LUNET_VK_PUSH_BYTES 128

/* The SPIR-V embedded at build time (shaders.c, generated). */
typedef struct lunet_vk_spirv {
  const char *name;
  const uint32_t *code;
  size_t bytes;
} lunet_vk_spirv;
extern const lunet_vk_spirv lunet_vk_shaders[VK_SH_COUNT];

/* ---- buffers ---- */
typedef struct lunet_vk_buffer {
  VkBuffer buf;
  VkDeviceMemory mem;
  size_t size; /* bytes allocated (the pool's size class) */
  void *map;   /* host address for host-visible buffers (staging), else NULL */
  struct lunet_vk_buffer *prev, *next; /* the live list (pool buffers only) */
} lunet_vk_buffer;

/* Freed device buffers of one size class, ready for reuse. */
typedef struct lunet_vk_bin {
  size_t size;
  lunet_vk_buffer **bufs;
  size_t count, cap;
} lunet_vk_bin;

/* One command batch: recorded while the other may run on the device. */
typedef enum { FRAME_IDLE, FRAME_RECORDING, FRAME_SUBMITTED } lunet_vk_frame_state;
typedef struct lunet_vk_frame {
  VkCommandBuffer cmd;
  VkFence fence;
  VkDescriptorPool dpool;
  lunet_vk_frame_state state;
  int nsets, ncmds;
  lunet_vk_buffer staging; /* uploads of this batch */
  size_t staging_used;
} lunet_vk_frame;

#define LUNET_VK_MAX_DEVICES 16
#define LUNET_VK_HAZARD_MAX 256 /* buffers tracked between barriers (more: a barrier) */
#define LUNET_VK_PENDING_MAX 128 /* commands held back for levelling (more: emitted) */
#define LUNET_VK_LEVEL_MAX (LUNET_VK_PENDING_MAX * LUNET_VK_DESCRIPTORS + 2 * LUNET_VK_HAZARD_MAX)
#define LUNET_VK_SETS_PER_FRAME 256
/* Transfers take no descriptor sets: this bounds a batch of them. */
#define LUNET_VK_CMDS_PER_FRAME 4096

/* A command held back until the batch's commands are levelled (memory.c):
 * a dispatch, a buffer copy (its regions in the backend's region list) or
 * a fill, with the buffers it reads and writes and its level (one more than
 * the highest level of an earlier command it depends on). */
typedef enum { VK_PENDING_DISPATCH, VK_PENDING_COPY, VK_PENDING_FILL } lunet_vk_pending_kind;
typedef struct lunet_vk_pending {
  lunet_vk_pending_kind kind;
  int level, nr, nw;
  VkBuffer reads[LUNET_VK_DESCRIPTORS], writes[LUNET_VK_DESCRIPTORS];
  union {
    struct {
      VkPipeline pipe;
      VkDescriptorSet set; /* VK_NULL_HANDLE: bindings pushed */
      bool multi;          /* optim_multi's layout: binds[0 .. LUNET_VK_DESCRIPTORS) */
      VkBuffer binds[LUNET_VK_DESCRIPTORS];
      uint32_t groups[3];
      uint8_t push[LUNET_VK_PUSH_BYTES];
    } dispatch;
    struct {
      VkBuffer src, dst;
      size_t first, count; /* regions[first .. first + count) */
    } copy;
    struct {
      VkBuffer dst;
      VkDeviceSize bytes;
      uint32_t bits;
    } fill;
  };
} lunet_vk_pending;

/* The last level at which a buffer is written and read among the held-back
 * commands (-1: not). */
typedef struct lunet_vk_level {
  VkBuffer buf;
  int written, read;
} lunet_vk_level;

struct lunet_backend {
  VkInstance inst;
  VkDebugUtilsMessengerEXT messenger;
  bool validation; /* the Khronos validation layer is on */
  int validation_errors, validation_warnings;
  VkPhysicalDevice phys;
  VkPhysicalDeviceProperties props;
  VkPhysicalDeviceMemoryProperties memprops;
  char driver[128];
  char devices[256]; /* "0: llvmpipe (cpu, in use); 1: ..." */
  lunet_device_info device_list[LUNET_MAX_DEVICES];
  int ndevices;
  int device_index;
  VkDevice dev;
  VkQueue queue;
  uint32_t qfamily;
  uint32_t type_device, type_upload, type_readback; /* memory type indices */
  VkCommandPool cmdpool;
  lunet_vk_frame frames[2];
  int cur;
  VkDescriptorSetLayout dsl;
  VkPipelineLayout layout;
  /* update_multi in one dispatch for up to LUNET_VK_MULTI tensors: the
   * device indexes arrays of storage buffers (dynamically uniform) and binds
   * LUNET_VK_DESCRIPTORS of them (pushed or in a set); its layout has four
   * arrays of LUNET_VK_MULTI (off with LUNET_VULKAN_MULTI_TENSOR=0). */
  bool multi_tensor;
  bool coop_matrix; /* the device has VK_KHR/NV_cooperative_matrix (describe says so; unused) */
  VkDescriptorSetLayout dsl_multi;
  VkPipelineLayout layout_multi;
  VkShaderModule modules[VK_SH_COUNT];
  VkPipeline pipes[VK_SH_COUNT][LUNET_VK_MAX_MODES];
  VkPipelineCache pcache; /* kept between runs in pcache_path (kernels.c) */
  char pcache_path[1024];
  bool pcache_loaded;     /* the file's data was this device's and was used */
  uint32_t wg;              /* 1-D workgroup size */
  uint32_t tile;            /* GEMM tile edge */
  lunet_vk_buffer dummy;    /* bound to unused bindings */
  lunet_vk_buffer errbuf;   /* host-visible flags kernels raise (bad labels) */
  lunet_vk_buffer readback; /* downloads */
  lunet_vk_buffer *live;    /* every pool buffer, freed or not: destroyed at shutdown */
  lunet_vk_bin *bins;
  size_t nbins, bins_cap, idle_bytes, pool_cap;
  lunet_vk_buffer **doomed; /* freed past the pool cap, destroyed at the next wait */
  size_t ndoomed, doomed_cap;
  bool lost; /* the device was lost: every call fails */
  /* LUNET_VULKAN_FAULT=submit:N[:lost|oom] (tests): submit N (from 1)
   * fails as if the driver had answered VK_ERROR_DEVICE_LOST or
   * VK_ERROR_OUT_OF_DEVICE_MEMORY, since lavapipe never does. */
  long fault_submit, submits;
  VkResult fault_result;
  lunet_backend_stats stats; /* nn.backend_stats (one thread at a time uses a backend) */
  int wait_cause;            /* what a wait is for: 0 other (a full frame ring), 1 a read, 2 synchronize */
  /* Hazards (lunet_vk_access): the buffers the commands recorded since the
   * last barrier wrote and read. */
  VkBuffer hz_written[LUNET_VK_HAZARD_MAX], hz_read[LUNET_VK_HAZARD_MAX];
  int hz_nw, hz_nr;
  uint32_t write_mask[VK_SH_COUNT];    /* the bindings each shader writes, from its SPIR-V */
  uint32_t declared_mask[VK_SH_COUNT]; /* and those it declares (the others are never read) */
  uint32_t write_mask_known;        /* bit per shader */
  /* VK_KHR_push_descriptor: each dispatch pushes its bindings into the
   * command buffer (no descriptor set allocated and written per dispatch);
   * off with LUNET_VULKAN_PUSH_DESCRIPTORS=0 or on a device without it. */
  bool push_descriptors;
  /* The device's compute shaders have subgroup arithmetic: the shaders
   * with a _SG variant run it (off with LUNET_VULKAN_SUBGROUPS=0). */
  bool subgroups;
  uint32_t subgroup_size;
  /* Commands after which the batch being recorded is submitted early, when
   * the other batch has finished (looked at every flush_cmds commands, not
   * on each), so the device starts while the host records the rest
   * (LUNET_VULKAN_FLUSH; 0: only when a read or a full batch needs it). */
  int flush_cmds;
  /* The commands of the batch being recorded, held back (memory.c,
   * lunet_vk_emit) so that independent ones share a barrier: recorded
   * level by level at a submit, a download or when the list is full. */
  lunet_vk_pending pending[LUNET_VK_PENDING_MAX];
  int npending;
  VkBufferCopy *regions;
  size_t nregions, regions_cap;
  lunet_vk_level levels[LUNET_VK_LEVEL_MAX];
  int nlevels;
  bool level_order; /* LUNET_VULKAN_LEVELS=0 turns the reordering off (comparisons) */
  /* stats.record_ns: the outermost recording call's start and the waits
   * counted by then (nested calls and waits inside are not counted twice). */
  int rec_depth;
  uint64_t rec_t0, rec_w0;
  bool barrier_lost; /* a batch failed to submit: the next one begins with a barrier */
};

void lunet_vk_stats(lunet_backend *be, lunet_backend_stats *out);

/* ---- errors (thread-local message) ---- */
int lunet_vk_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A VkResult as a status with "what: VK_ERROR_..." (marks a lost device). */
int lunet_vk_check(lunet_backend *be, VkResult r, const char *what);
const char *lunet_vk_result_name(VkResult r);
const char *lunet_vk_last_error(lunet_backend *be);

/* ---- device (device.c) ---- */
int lunet_vk_probe(char *why, size_t why_len);
lunet_backend *lunet_vk_init(int threads, int device, char *err, size_t err_len);
void lunet_vk_shutdown(lunet_backend *be);
void lunet_vk_describe(lunet_backend *be, lunet_backend_info *info);

/* ---- memory and batches (memory.c) ---- */
int lunet_vk_raw_buffer(lunet_backend *be, lunet_vk_buffer *b, size_t size, uint32_t mem_type,
                        VkBufferUsageFlags usage);
void lunet_vk_raw_free(lunet_backend *be, lunet_vk_buffer *b);
int lunet_vk_memory_type(lunet_backend *be, uint32_t bits, VkMemoryPropertyFlags want,
                         VkMemoryPropertyFlags avoid);
lunet_buf lunet_vk_buffer_alloc(lunet_backend *be, size_t nbytes);
void lunet_vk_buffer_free(lunet_backend *be, lunet_buf buf);
int lunet_vk_buffer_upload(lunet_backend *be, lunet_buf dst, size_t off, const void *src,
                           size_t nbytes);
int lunet_vk_buffer_download(lunet_backend *be, lunet_cbuf src, size_t off, void *dst,
                             size_t nbytes);
int lunet_vk_buffer_copy(lunet_backend *be, lunet_buf dst, size_t doff, lunet_cbuf src, size_t soff,
                         size_t nbytes);
int lunet_vk_synchronize(lunet_backend *be);
void lunet_vk_pool_drain(lunet_backend *be);
/* The command buffer of the batch being recorded (starting one if needed);
 * `sets` descriptor sets are reserved in it.  NULL on error. */
VkCommandBuffer lunet_vk_cmd(lunet_backend *be, int sets);
/* A slot for one command in the batch being recorded (lunet_vk_cmd's
 * reservation of `sets` descriptor sets included), to fill and pass to
 * lunet_vk_commit; NULL on error. */
lunet_vk_pending *lunet_vk_defer(lunet_backend *be, int sets);
/* Holds back the command filled in `p` (from lunet_vk_defer), with `regions`
 * for a copy; -1 when the regions find no memory. */
int lunet_vk_commit(lunet_backend *be, lunet_vk_pending *p, const VkBufferCopy *regions,
                    size_t nregions);
/* Holds back a copy of regions r[0..nr) from src to dst. */
int lunet_vk_copy_regions(lunet_backend *be, lunet_vk_buffer *dst, const lunet_vk_buffer *src,
                          const VkBufferCopy *r, size_t nr);
/* Brackets host work that records commands, for stats.record_ns (nests;
 * waits on the device inside are left out). */
void lunet_vk_record_begin(lunet_backend *be);
void lunet_vk_record_end(lunet_backend *be);
/* Records the held-back commands into the batch, level by level. */
void lunet_vk_emit(lunet_backend *be);
/* Orders everything recorded so far before everything recorded next. */
void lunet_vk_barrier(lunet_backend *be, VkCommandBuffer cmd);
/* Called before recording a command into cmd that reads `reads` and writes
 * `writes`: records a barrier first when the command would read or write a
 * buffer that a command since the last barrier wrote, or write one that it
 * read (so independent commands run without one between them). */
void lunet_vk_access(lunet_backend *be, VkCommandBuffer cmd, const VkBuffer *reads, int nr,
                     const VkBuffer *writes, int nw);
int lunet_vk_frames_init(lunet_backend *be);
void lunet_vk_frames_free(lunet_backend *be);

/* ---- kernels (kernels.c) ---- */
int lunet_vk_kernels_init(lunet_backend *be);
void lunet_vk_kernels_free(lunet_backend *be);
/* Records one dispatch of shader `sh` in mode `mode` over groups (gx, gy, gz),
 * buffers bound at 0..nbufs-1 (NULL: a dummy), push constants `pc`. */
int lunet_vk_dispatch(lunet_backend *be, lunet_vk_shader sh, int mode, lunet_cbuf const *bufs,
                      int nbufs, const void *pc, size_t pc_bytes, uint32_t gx, uint32_t gy,
                      uint32_t gz);
/* The writes binding binds[0..LUNET_VK_BINDINGS) (multi: optim_multi's
 * four arrays, binds[0..LUNET_VK_DESCRIPTORS)) to set (VK_NULL_HANDLE:
 * pushed), info their storage (LUNET_VK_DESCRIPTORS entries); returns the
 * number of writes. */
uint32_t lunet_vk_binding_writes(const VkBuffer *binds, bool multi, VkDescriptorSet set, VkDescriptorBufferInfo *info,
                                 VkWriteDescriptorSet *w);
/* Records one dispatch of optim_multi.comp in mode `mode`: bufs[0..32) the
 * tensors' p, g, s1, s2 arrays of LUNET_VK_MULTI (NULL: the placeholder). */
int lunet_vk_dispatch_multi(lunet_backend *be, int mode, lunet_cbuf const *bufs, const void *pc,
                            size_t pc_bytes, uint32_t groups);
/* Workgroups covering n items at the 1-D size, capped for a grid-stride loop. */
uint32_t lunet_vk_groups(lunet_backend *be, size_t n);

/* ---- ops (ops.c, nn.c) ---- */
extern const lunet_backend_i lunet_vk_vtable;

#endif
