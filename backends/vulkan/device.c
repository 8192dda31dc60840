/*
 * The Vulkan backend's device side: loading libvulkan, the instance (with the
 * validation layer when LUNET_VULKAN_VALIDATION=1), choosing a physical
 * device, the logical device and queue, probe/init/shutdown/describe, and
 * the error slot.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lunet/env.h"
#include "vk.h"

#define LUNET_VK_DEFINE(name) PFN_##name name;
LUNET_VK_GLOBAL_FUNCS(LUNET_VK_DEFINE)
LUNET_VK_INSTANCE_FUNCS(LUNET_VK_DEFINE)
#undef LUNET_VK_DEFINE

static PFN_vkGetInstanceProcAddr get_proc;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_why[256];
static __thread char error_msg[512];

/* ---- errors ---- */

int lunet_vk_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_msg, sizeof error_msg, fmt, ap);
  va_end(ap);
  return status;
}

const char *lunet_vk_last_error(lunet_backend *be) {
  (void)be;
  return error_msg;
}

const char *lunet_vk_result_name(VkResult r) {
  switch (r) {
  case VK_SUCCESS:
    return "VK_SUCCESS";
  case VK_TIMEOUT:
    return "VK_TIMEOUT";
  case VK_ERROR_OUT_OF_HOST_MEMORY:
    return "VK_ERROR_OUT_OF_HOST_MEMORY";
  case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
  case VK_ERROR_INITIALIZATION_FAILED:
    return "VK_ERROR_INITIALIZATION_FAILED";
  case VK_ERROR_DEVICE_LOST:
    return "VK_ERROR_DEVICE_LOST";
  case VK_ERROR_LAYER_NOT_PRESENT:
    return "VK_ERROR_LAYER_NOT_PRESENT";
  case VK_ERROR_EXTENSION_NOT_PRESENT:
    return "VK_ERROR_EXTENSION_NOT_PRESENT";
  case VK_ERROR_FEATURE_NOT_PRESENT:
    return "VK_ERROR_FEATURE_NOT_PRESENT";
  case VK_ERROR_INCOMPATIBLE_DRIVER:
    return "VK_ERROR_INCOMPATIBLE_DRIVER";
  case VK_ERROR_TOO_MANY_OBJECTS:
    return "VK_ERROR_TOO_MANY_OBJECTS";
  case VK_ERROR_OUT_OF_POOL_MEMORY:
    return "VK_ERROR_OUT_OF_POOL_MEMORY";
  case VK_ERROR_INVALID_SHADER_NV:
    return "VK_ERROR_INVALID_SHADER_NV";
  default:
    return "VK_ERROR (unknown code)";
  }
}

int lunet_vk_check(lunet_backend *be, VkResult r, const char *what) {
  if (r == VK_SUCCESS) return 0;
  if (r == VK_ERROR_DEVICE_LOST) {
    be->lost = true;
    return lunet_vk_error(LUNET_ERR_DEVICE,
                          "%s: the Vulkan device was lost (VK_ERROR_DEVICE_LOST; a driver "
                          "reset or a kernel that ran too long): restart lunet to use "
                          "the device again, or move on with lunet.use(\"cpu\")",
                          what);
  }
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    return lunet_vk_error(LUNET_ERR_NOMEM, "%s: out of %s memory (%s)", what,
                          r == VK_ERROR_OUT_OF_DEVICE_MEMORY ? "device" : "host",
                          lunet_vk_result_name(r));
  return lunet_vk_error(LUNET_ERR_DEVICE, "%s failed: %s (%d)", what, lunet_vk_result_name(r),
                        (int)r);
}

/* ---- loading libvulkan ---- */

static void load(void) {
  void *h = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) h = dlopen("libvulkan.so", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(load_why, sizeof load_why,
             "no Vulkan loader: libvulkan.so.1 cannot be opened (install libvulkan1 "
             "and a driver such as mesa-vulkan-drivers)");
    return;
  }
  get_proc = (PFN_vkGetInstanceProcAddr)dlsym(h, "vkGetInstanceProcAddr");
  if (!get_proc) {
    snprintf(load_why, sizeof load_why, "libvulkan.so.1 has no vkGetInstanceProcAddr");
    return;
  }
#define LUNET_VK_LOAD(name) name = (PFN_##name)get_proc(NULL, #name);
  LUNET_VK_GLOBAL_FUNCS(LUNET_VK_LOAD)
#undef LUNET_VK_LOAD
  if (!vkCreateInstance || !vkEnumerateInstanceLayerProperties)
    snprintf(load_why, sizeof load_why, "the Vulkan loader lacks vkCreateInstance");
}

int lunet_vk_load(char *why, size_t why_len) {
  pthread_once(&load_once, load);
  if (load_why[0]) {
    snprintf(why, why_len, "%s", load_why);
    return -1;
  }
  return 0;
}

int lunet_vk_load_instance(VkInstance inst, char *why, size_t why_len) {
#define LUNET_VK_LOAD(name) name = (PFN_##name)get_proc(inst, #name);
  LUNET_VK_INSTANCE_FUNCS(LUNET_VK_LOAD)
#undef LUNET_VK_LOAD
  if (!vkEnumeratePhysicalDevices || !vkCreateDevice || !vkCmdDispatch) {
    snprintf(why, why_len, "the Vulkan loader lacks core 1.0 entry points");
    return -1;
  }
  return 0;
}

/* ---- instance ---- */

static bool env_on(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

static bool have_layer(const char *name) {
  uint32_t n = 0;
  if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0) return false;
  VkLayerProperties *p = calloc(n, sizeof *p);
  bool found = false;
  if (p && vkEnumerateInstanceLayerProperties(&n, p) == VK_SUCCESS)
    for (uint32_t i = 0; i < n; i++)
      if (strcmp(p[i].layerName, name) == 0) found = true;
  free(p);
  return found;
}

/* Validation messages go to stderr and are counted: the tests fail on any. */
static VKAPI_ATTR VkBool32 VKAPI_CALL on_message(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                                 VkDebugUtilsMessageTypeFlagsEXT type,
                                                 const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                 void *user) {
  lunet_backend *be = user;
  bool error = sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
  if (error)
    be->validation_errors++;
  else
    be->validation_warnings++;
  fprintf(stderr, "lunet vulkan validation %s: %s\n", error ? "error" : "warning",
          data && data->pMessage ? data->pMessage : "(no message)");
  return VK_FALSE;
}

static VkDebugUtilsMessengerCreateInfoEXT messenger_info(lunet_backend *be) {
  return (VkDebugUtilsMessengerCreateInfoEXT){
      .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
      .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                         VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
      .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
      .pfnUserCallback = on_message,
      .pUserData = be};
}

/* be may be NULL (probe): no validation then. */
static VkResult make_instance(lunet_backend *be, VkInstance *inst, bool *validation) {
  uint32_t version = VK_API_VERSION_1_0;
  if (vkEnumerateInstanceVersion) vkEnumerateInstanceVersion(&version);
  VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                           .pApplicationName = "lunet",
                           .pEngineName = "lunet",
                           .apiVersion =
                               version >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : version};
  const char *layer = "VK_LAYER_KHRONOS_validation";
  const char *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
  *validation = be && env_on("LUNET_VULKAN_VALIDATION") && have_layer(layer);
  VkDebugUtilsMessengerCreateInfoEXT dbg =
      be ? messenger_info(be) : (VkDebugUtilsMessengerCreateInfoEXT){0};
  /* Synchronization validation too: a missing barrier is the bug to catch. */
  VkValidationFeatureEnableEXT sync = VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
  VkValidationFeaturesEXT features = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                                      .pNext = &dbg,
                                      .enabledValidationFeatureCount = 1,
                                      .pEnabledValidationFeatures = &sync};
  VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                             .pNext = *validation ? &features : NULL,
                             .pApplicationInfo = &app,
                             .enabledLayerCount = *validation ? 1 : 0,
                             .ppEnabledLayerNames = &layer,
                             .enabledExtensionCount = *validation ? 1 : 0,
                             .ppEnabledExtensionNames = &ext};
  return vkCreateInstance(&ci, NULL, inst);
}

/* ---- physical devices ---- */

static const char *type_name(VkPhysicalDeviceType t) {
  switch (t) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
    return "discrete GPU";
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
    return "integrated GPU";
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
    return "virtual GPU";
  case VK_PHYSICAL_DEVICE_TYPE_CPU:
    return "CPU";
  default:
    return "other";
  }
}

/* Discrete > integrated > virtual > CPU; 0 for a device without compute. */
static int device_score(VkPhysicalDevice pd) {
  VkPhysicalDeviceProperties p;
  vkGetPhysicalDeviceProperties(pd, &p);
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
  VkQueueFamilyProperties q[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q);
  bool compute = false;
  for (uint32_t i = 0; i < nq; i++)
    if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) compute = true;
  if (!compute || p.apiVersion < VK_API_VERSION_1_1) return 0;
  switch (p.deviceType) {
  case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
    return 40;
  case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
    return 30;
  case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
    return 20;
  case VK_PHYSICAL_DEVICE_TYPE_CPU:
    return 10;
  default:
    return 5;
  }
}

static uint64_t device_memory(VkPhysicalDevice pd) {
  VkPhysicalDeviceMemoryProperties m;
  vkGetPhysicalDeviceMemoryProperties(pd, &m);
  uint64_t best = 0;
  for (uint32_t i = 0; i < m.memoryHeapCount; i++)
    if ((m.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && m.memoryHeaps[i].size > best)
      best = m.memoryHeaps[i].size;
  return best;
}

/* The chosen device's index: `requested` (init's argument, >= 0), else the
 * user's LUNET_VULKAN_DEVICE, else the best score; -1 with the reason in
 * why. */
static int choose_device(VkPhysicalDevice *pds, uint32_t n, int requested, char *why,
                         size_t why_len) {
  const char *env = getenv("LUNET_VULKAN_DEVICE");
  if (requested >= 0 || (env && *env)) {
    char *end = "", label[64];
    long v = requested >= 0 ? requested : strtol(env, &end, 10);
    if (requested >= 0)
      snprintf(label, sizeof label, "device %ld", v);
    else
      snprintf(label, sizeof label, "LUNET_VULKAN_DEVICE=%.40s", env);
    if (*end || v < 0 || v >= (long)n) {
      snprintf(why, why_len, "%s is not a device index (found %u device%s: use 0 to %u)", label, n,
               n == 1 ? "" : "s", n - 1);
      return -1;
    }
    if (device_score(pds[v]) == 0) {
      snprintf(why, why_len, "%s has no compute queue or is below Vulkan 1.1", label);
      return -1;
    }
    return (int)v;
  }
  int best = -1, best_score = 0;
  for (uint32_t i = 0; i < n; i++) {
    int s = device_score(pds[i]);
    if (s > best_score) best = (int)i, best_score = s;
  }
  if (best < 0)
    snprintf(why, why_len, "no Vulkan device with a compute queue and Vulkan 1.1 or later");
  return best;
}

/* Enumerates the devices of inst into pds (at most LUNET_VK_MAX_DEVICES). */
static uint32_t list_devices(VkInstance inst, VkPhysicalDevice *pds, char *why, size_t why_len) {
  uint32_t n = LUNET_VK_MAX_DEVICES;
  VkResult r = vkEnumeratePhysicalDevices(inst, &n, pds);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    snprintf(why, why_len, "no Vulkan device: vkEnumeratePhysicalDevices failed (%s)",
             lunet_vk_result_name(r));
    return 0;
  }
  if (n == 0) snprintf(why, why_len, "no Vulkan device: vkEnumeratePhysicalDevices found none");
  return n;
}

int lunet_vk_probe(char *why, size_t why_len) {
  if (why && why_len) why[0] = '\0';
  if (lunet_vk_load(why, why_len)) return 0;
  VkInstance inst;
  bool validation;
  VkResult r = make_instance(NULL, &inst, &validation);
  if (r != VK_SUCCESS) {
    snprintf(why, why_len,
             "no Vulkan device: vkCreateInstance failed (%s; is a driver "
             "such as mesa-vulkan-drivers installed?)",
             lunet_vk_result_name(r));
    return 0;
  }
  int score = 0;
  VkPhysicalDevice pds[LUNET_VK_MAX_DEVICES];
  if (lunet_vk_load_instance(inst, why, why_len) == 0) {
    uint32_t n = list_devices(inst, pds, why, why_len);
    int i = n ? choose_device(pds, n, -1, why, why_len) : -1;
    if (i >= 0) score = device_score(pds[i]);
  }
  if (vkDestroyInstance) vkDestroyInstance(inst, NULL);
  return score;
}

/* "0: llvmpipe (CPU, 2.0 GiB, in use); 1: ..." and the device list of
 * lunet_backend_info. */
static void describe_devices(lunet_backend *be, VkPhysicalDevice *pds, uint32_t n) {
  size_t len = 0;
  be->devices[0] = '\0';
  be->ndevices = 0;
  for (uint32_t i = 0; i < n && len < sizeof be->devices; i++) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(pds[i], &p);
    if (be->ndevices < LUNET_MAX_DEVICES) {
      lunet_device_info *d = &be->device_list[be->ndevices++];
      snprintf(d->name, sizeof d->name, "%.127s", p.deviceName);
      snprintf(d->type, sizeof d->type, "%s", type_name(p.deviceType));
      d->memory = device_memory(pds[i]);
    }
    len += (size_t)snprintf(be->devices + len, sizeof be->devices - len,
                            "%s%u: %s (%s, %.1f GiB%s)", i ? "; " : "", i, p.deviceName,
                            type_name(p.deviceType), (double)device_memory(pds[i]) / (1 << 30),
                            (int)i == be->device_index ? ", in use" : "");
  }
}

/* The driver's name, and whether compute shaders have subgroup arithmetic. */
static void driver_info(lunet_backend *be) {
  VkPhysicalDeviceDriverProperties drv = {.sType =
                                              VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES,
                                           .pNext = &drv};
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                    .pNext = &sg};
  snprintf(be->driver, sizeof be->driver, "driver %u", be->props.driverVersion);
  if (be->props.apiVersion >= VK_API_VERSION_1_2 && vkGetPhysicalDeviceProperties2) {
    vkGetPhysicalDeviceProperties2(be->phys, &p2);
    snprintf(be->driver, sizeof be->driver, "%.40s %.80s", drv.driverName, drv.driverInfo);
    const char *want = getenv("LUNET_VULKAN_SUBGROUPS");
    be->subgroup_size = sg.subgroupSize;
    be->subgroups = !(want && !strcmp(want, "0")) && (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                    (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) && sg.subgroupSize > 0;
  }
}

/* ---- logical device ---- */

static bool has_device_extension(VkPhysicalDevice pd, const char *name) {
  uint32_t n = 0;
  if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS || n == 0) return false;
  VkExtensionProperties *e = malloc(n * sizeof *e);
  bool found = false;
  if (e && vkEnumerateDeviceExtensionProperties(pd, NULL, &n, e) == VK_SUCCESS)
    for (uint32_t i = 0; i < n && !found; i++) found = !strcmp(e[i].extensionName, name);
  free(e);
  return found;
}

/* Whether update_multi runs as one dispatch for LUNET_VK_MULTI tensors:
 * arrays of storage buffers indexed by a dynamically uniform value, and
 * LUNET_VK_DESCRIPTORS of them in one shader and one set (pushed: within
 * maxPushDescriptors, which Vulkan guarantees to be 32 or more).  Set
 * before the device is made (the feature is enabled then). */
static void multi_tensor(lunet_backend *be) {
  const char *want = getenv("LUNET_VULKAN_MULTI_TENSOR");
  VkPhysicalDeviceFeatures f = {0};
  vkGetPhysicalDeviceFeatures(be->phys, &f);
  uint32_t push_max = UINT32_MAX;
  if (be->push_descriptors) {
    VkPhysicalDevicePushDescriptorPropertiesKHR pd = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PUSH_DESCRIPTOR_PROPERTIES_KHR};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &pd};
    push_max = 0;
    if (vkGetPhysicalDeviceProperties2) {
      vkGetPhysicalDeviceProperties2(be->phys, &p2);
      push_max = pd.maxPushDescriptors;
    }
  }
  const VkPhysicalDeviceLimits *l = &be->props.limits;
  be->multi_tensor = !(want && !strcmp(want, "0")) && f.shaderStorageBufferArrayDynamicIndexing &&
                     l->maxPerStageDescriptorStorageBuffers >= LUNET_VK_DESCRIPTORS &&
                     l->maxDescriptorSetStorageBuffers >= LUNET_VK_DESCRIPTORS && push_max >= LUNET_VK_DESCRIPTORS;
}

static int make_device(lunet_backend *be, char *err, size_t err_len) {
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(be->phys, &nq, NULL);
  VkQueueFamilyProperties q[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(be->phys, &nq, q);
  /* A compute queue without graphics is the dedicated (async) one. */
  int pick = -1;
  for (uint32_t i = 0; i < nq; i++)
    if ((q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) &&
        (pick < 0 || !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)))
      pick = (int)i;
  be->qfamily = (uint32_t)pick;
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                .queueFamilyIndex = be->qfamily,
                                .queueCount = 1,
                                .pQueuePriorities = &prio};
  const char *push = VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME;
  const char *want = getenv("LUNET_VULKAN_PUSH_DESCRIPTORS");
  be->push_descriptors = !(want && !strcmp(want, "0")) && vkCmdPushDescriptorSetKHR &&
                         has_device_extension(be->phys, push);
  multi_tensor(be);
  /* Reported, not used: this build's shaders (Debian 12's glslang) cannot
   * be compiled for cooperative matrices, so bfloat16 stays emulated. */
  be->coop_matrix = has_device_extension(be->phys, "VK_KHR_cooperative_matrix") ||
                    has_device_extension(be->phys, "VK_NV_cooperative_matrix");
  VkPhysicalDeviceFeatures features = {.shaderStorageBufferArrayDynamicIndexing = be->multi_tensor};
  VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                           .queueCreateInfoCount = 1,
                           .pQueueCreateInfos = &qi,
                           .enabledExtensionCount = be->push_descriptors ? 1 : 0,
                           .ppEnabledExtensionNames = &push,
                           .pEnabledFeatures = &features};
  VkResult r = vkCreateDevice(be->phys, &di, NULL, &be->dev);
  if (r != VK_SUCCESS) {
    snprintf(err, err_len, "vulkan: vkCreateDevice failed on %s (%s)", be->props.deviceName,
             lunet_vk_result_name(r));
    return -1;
  }
  vkGetDeviceQueue(be->dev, be->qfamily, 0, &be->queue);
  return 0;
}

static int check_limits(lunet_backend *be, char *err, size_t err_len) {
  const VkPhysicalDeviceLimits *l = &be->props.limits;
  if (l->maxPerStageDescriptorStorageBuffers < LUNET_VK_BINDINGS ||
      l->maxPushConstantsSize < LUNET_VK_PUSH_BYTES) {
    snprintf(err, err_len,
             "vulkan: %s allows %u storage buffers per shader and %u bytes of push "
             "constants; lunet needs %d and %d",
             be->props.deviceName, l->maxPerStageDescriptorStorageBuffers, l->maxPushConstantsSize,
             LUNET_VK_BINDINGS, LUNET_VK_PUSH_BYTES);
    return -1;
  }
  be->wg =
      l->maxComputeWorkGroupInvocations >= 256 && l->maxComputeWorkGroupSize[0] >= 256 ? 256 : 128;
  be->tile = l->maxComputeWorkGroupInvocations >= 256 ? 16 : 8;
  /* a device's 8 x 8 workgroups where it has 16 x 16 (a test of that path) */
  const char *tile = getenv("LUNET_VULKAN_TILE");
  if (tile && strcmp(tile, "8") == 0) be->tile = 8;
  return 0;
}

static int open_device(lunet_backend *be, int device, char *err, size_t err_len) {
  VkPhysicalDevice pds[LUNET_VK_MAX_DEVICES];
  char why[256] = "";
  uint32_t n = list_devices(be->inst, pds, why, sizeof why);
  be->device_index = n ? choose_device(pds, n, device, why, sizeof why) : -1;
  if (be->device_index < 0) {
    snprintf(err, err_len, "%s", why);
    return -1;
  }
  be->phys = pds[be->device_index];
  vkGetPhysicalDeviceProperties(be->phys, &be->props);
  vkGetPhysicalDeviceMemoryProperties(be->phys, &be->memprops);
  describe_devices(be, pds, n);
  driver_info(be);
  if (check_limits(be, err, err_len)) return -1;
  return make_device(be, err, err_len);
}

/* LUNET_VULKAN_FAULT=count: the number of submits, printed at exit (a
 * test finds where to inject from it). */
static const long *counted_submits;
static void print_submits(void) { fprintf(stderr, "lunet: vulkan: %ld submits\n", *counted_submits); }

/* LUNET_VULKAN_FAULT's value v: "count" (*count), or submit:N[:lost|oom]
 * (N >= 1, lost by default: *n and *result); false when it is neither. */
static bool read_fault(const char *v, bool *count, long *n, VkResult *result) {
  char kind[8] = "lost", extra;
  if ((*count = strcmp(v, "count") == 0)) return true;
  int got = sscanf(v, "submit:%ld:%7[a-z]%c", n, kind, &extra);
  if (got < 1 || got > 2 || *n < 1 || (strcmp(kind, "lost") != 0 && strcmp(kind, "oom") != 0) ||
      (got == 1 && strspn(v + 7, "0123456789") != strlen(v + 7)))
    return false;
  *result = strcmp(kind, "oom") == 0 ? VK_ERROR_OUT_OF_DEVICE_MEMORY : VK_ERROR_DEVICE_LOST;
  return true;
}

/* LUNET_VULKAN_FAULT=submit:N[:lost|oom]: the fault a test injects
 * (check_env refused a malformed value before). */
static void parse_fault(lunet_backend *be) {
  const char *v = getenv("LUNET_VULKAN_FAULT");
  bool count;
  long n;
  VkResult result;
  if (!v || !*v || !read_fault(v, &count, &n, &result)) return;
  if (count) {
    if (!counted_submits) {
      counted_submits = &be->submits;
      atexit(print_submits);
    }
    return;
  }
  be->fault_submit = n;
  be->fault_result = result;
  fprintf(stderr, "lunet: vulkan: LUNET_VULKAN_FAULT: submit %ld will fail with %s\n", n,
          lunet_vk_result_name(be->fault_result));
}

/* The LUNET_VULKAN_* switches hold one of their values or are unset: a
 * typo (LUNET_VULKAN_FLUSH=eight, LUNET_VULKAN_TILE=4) was read as a
 * default or as 0 and changed the backend without a word.  0 with the
 * message in err when one is wrong. */
static int check_env(char *err, size_t err_len) {
  static const char *const switches[] = {"LUNET_VULKAN_VALIDATION", "LUNET_VULKAN_SUBGROUPS",
                                         "LUNET_VULKAN_MULTI_TENSOR", "LUNET_VULKAN_LEVELS",
                                         "LUNET_VULKAN_PUSH_DESCRIPTORS"};
  for (size_t i = 0; i < sizeof switches / sizeof *switches; i++) {
    const char *v = getenv(switches[i]);
    if (v && *v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0) {
      snprintf(err, err_len, "vulkan: %s=%.40s: expected 0 or 1 (or unset it)", switches[i], v);
      return -1;
    }
  }
  const char *tile = getenv("LUNET_VULKAN_TILE");
  if (tile && *tile && strcmp(tile, "8") != 0 && strcmp(tile, "16") != 0) {
    snprintf(err, err_len, "vulkan: LUNET_VULKAN_TILE=%.40s: expected 8 or 16 (or unset it)", tile);
    return -1;
  }
  const char *flush = getenv("LUNET_VULKAN_FLUSH");
  long long cmds;
  if (flush && *flush) {
    if (!lunet_env_whole(flush, 0, 1000000, &cmds)) {
      snprintf(err, err_len,
               "vulkan: LUNET_VULKAN_FLUSH=%.40s: expected a whole number of commands from 0 to 1000000 (or unset "
               "it for 32)", flush);
      return -1;
    }
  }
  const char *fault = getenv("LUNET_VULKAN_FAULT");
  bool count;
  long n;
  VkResult result;
  if (fault && *fault && !read_fault(fault, &count, &n, &result)) {
    snprintf(err, err_len, "vulkan: LUNET_VULKAN_FAULT=%.40s: expected count or submit:N[:lost|oom] (tests only)",
             fault);
    return -1;
  }
  return 0;
}

lunet_backend *lunet_vk_init(int threads, int device, char *err, size_t err_len) {
  (void)threads;
  if (check_env(err, err_len)) return NULL;
  if (lunet_vk_load(err, err_len)) return NULL;
  lunet_backend *be = calloc(1, sizeof *be);
  if (!be) {
    snprintf(err, err_len, "vulkan: out of memory allocating the backend state");
    return NULL;
  }
  bool validation;
  VkResult r = make_instance(be, &be->inst, &validation);
  if (r != VK_SUCCESS) {
    snprintf(err, err_len, "vulkan: vkCreateInstance failed (%s)", lunet_vk_result_name(r));
    free(be);
    return NULL;
  }
  if (lunet_vk_load_instance(be->inst, err, err_len)) goto fail;
  be->validation = validation;
  if (validation) {
    VkDebugUtilsMessengerCreateInfoEXT mi = messenger_info(be);
    if (vkCreateDebugUtilsMessengerEXT)
      vkCreateDebugUtilsMessengerEXT(be->inst, &mi, NULL, &be->messenger);
  }
  parse_fault(be);
  if (open_device(be, device, err, err_len)) goto fail;
  if (lunet_vk_frames_init(be) || lunet_vk_kernels_init(be)) {
    snprintf(err, err_len, "vulkan: %s", lunet_vk_last_error(be));
    goto fail;
  }
  return be;
fail:
  lunet_vk_shutdown(be);
  return NULL;
}

void lunet_vk_shutdown(lunet_backend *be) {
  if (!be) return;
  if (be->dev) {
    vkDeviceWaitIdle(be->dev);
    lunet_vk_kernels_free(be);
    lunet_vk_frames_free(be);
    vkDestroyDevice(be->dev, NULL);
  }
  if (be->messenger) vkDestroyDebugUtilsMessengerEXT(be->inst, be->messenger, NULL);
  if (be->inst) vkDestroyInstance(be->inst, NULL);
  free(be);
}

void lunet_vk_describe(lunet_backend *be, lunet_backend_info *info) {
  memset(info, 0, sizeof *info);
  snprintf(info->name, sizeof info->name, "vulkan");
  snprintf(info->device, sizeof info->device, "%.96s (%s, %.1f GiB)", be->props.deviceName,
           type_name(be->props.deviceType), (double)device_memory(be->phys) / (1 << 30));
  char sg[48] = "";
  if (be->subgroups) snprintf(sg, sizeof sg, ", subgroup reductions (%u wide)", be->subgroup_size);
  int used = snprintf(info->detail, sizeof info->detail, "%.80s, Vulkan %u.%u.%u%s%s%s%s, bfloat16 emulated%s",
                      be->driver, VK_API_VERSION_MAJOR(be->props.apiVersion),
                      VK_API_VERSION_MINOR(be->props.apiVersion), VK_API_VERSION_PATCH(be->props.apiVersion),
                      be->validation ? ", validation on" : "", be->push_descriptors ? ", push descriptors" : "", sg,
                      be->multi_tensor ? ", multi-tensor updates" : "",
                      be->coop_matrix ? " (cooperative matrices on the device, unused)" : "");
  if (used > 0 && (size_t)used < sizeof info->detail) /* the device list, as much as fits */
    snprintf(info->detail + used, sizeof info->detail - (size_t)used, "; devices: %.*s",
             (int)(sizeof info->detail - (size_t)used), be->devices);
  info->threads = 1;
  info->available = !be->lost;
  info->device_index = be->device_index;
  info->ndevices = be->ndevices < LUNET_MAX_DEVICES ? be->ndevices : LUNET_MAX_DEVICES;
  for (int i = 0; i < info->ndevices; i++) info->devices[i] = be->device_list[i];
}

/* For the tests: the validation layer's error and warning counts so far. */
__attribute__((visibility("default"))) int lunet_vk_validation_count(lunet_backend *be) {
  return be ? be->validation_errors + be->validation_warnings : 0;
}
