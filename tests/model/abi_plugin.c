/* A test plugin that claims the ABI version given at build time
 * (-DABI_MAJOR=1 -DABI_MINOR=0: a plugin built for lunet 0.1), so the
 * loader's refusal and its message can be checked. */
#include "lunet/plugin.h"

static const lunet_plugin_desc desc = {ABI_MAJOR, ABI_MINOR, sizeof(lunet_plugin_desc), "old", "1",
                                       NULL, 0};

__attribute__((visibility("default"))) const lunet_plugin_desc *lunet_plugin_entry(void) {
  return &desc;
}
