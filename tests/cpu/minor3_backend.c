/* The CPU backend as an ABI 2.3 backend would present it (tests/cpu/
 * fallback.lua): the real cpu.so (CPU_BACKEND, its path at build time)
 * with descriptor minor 3, the 2.3 size of the vtable and no 2.4 to 2.6
 * members, named "cpu23".  The core must then run what 2.4 and 2.5 fuse (a
 * max pooling's moved ReLU; a Dense layer's bias and ReLU) as before. */
#include <dlfcn.h>
#include "lunet/backend.h"

static lunet_backend_i iface;
static lunet_backend_desc desc;

__attribute__((visibility("default"))) const lunet_backend_desc *lunet_backend_entry(void) {
  void *h = dlopen(CPU_BACKEND, RTLD_NOW | RTLD_LOCAL);
  lunet_backend_entry_fn entry = h ? (lunet_backend_entry_fn)dlsym(h, LUNET_BACKEND_ENTRY_NAME) : NULL;
  const lunet_backend_desc *cpu = entry ? entry() : NULL;
  if (!cpu) return NULL;
  iface = *cpu->iface;
  iface.max_pool2d_relu = NULL;
  iface.max_pool2d_relu_backward = NULL;
  iface.linear = NULL;       /* 2.5 */
  iface.update_multi = NULL; /* 2.6 */
  iface.gemm_relu_mask = NULL;
  desc = *cpu;
  desc.abi_minor = 3;
  desc.iface_size = LUNET_BACKEND_I_SIZE_2_3;
  desc.name = "cpu23";
  desc.iface = &iface;
  return &desc;
}
