/*
 * The Vulkan backend's entry point: the descriptor the core's loader reads.
 * Exported symbols: lunet_backend_entry() and, for the tests,
 * lunet_vk_validation_count().
 */
#include "vk.h"

static const lunet_backend_desc vk_desc = {
    .abi_major = LUNET_BACKEND_ABI_MAJOR,
    .abi_minor = LUNET_BACKEND_ABI_MINOR,
    .struct_size = sizeof(lunet_backend_desc),
    .iface_size = sizeof(lunet_backend_i),
    .name = "vulkan",
    .version = LUNET_VERSION_STRING,
    .probe = lunet_vk_probe,
    .init = lunet_vk_init,
    .shutdown = lunet_vk_shutdown,
    .iface = &lunet_vk_vtable,
    .caps = LUNET_BACKEND_DOWNLOAD_WAITS, /* lunet_vk_buffer_download waits for what came before */
};

__attribute__((visibility("default"))) const lunet_backend_desc *lunet_backend_entry(void) {
  return &vk_desc;
}
