/* A test backend that claims the ABI version given at build time
 * (-DABI_MAJOR=2 -DABI_MINOR=1: newer than the core), so the loader's
 * refusal and its message can be checked.  Its probe and init are never
 * called. */
#include "lunet/backend.h"

static const lunet_backend_desc desc = {
    .abi_major = ABI_MAJOR,
    .abi_minor = ABI_MINOR,
    .struct_size = sizeof(lunet_backend_desc),
    .iface_size = sizeof(lunet_backend_i),
    .name = "future",
    .version = "1",
};

__attribute__((visibility("default"))) const lunet_backend_desc *lunet_backend_entry(void) {
  return &desc;
}
