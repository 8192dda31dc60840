#!/bin/sh
# Runs a command with the Vulkan validation layer on (synchronization
# validation included) and fails when the layer reported an error: the Lua
# tests cannot read the layer's count, only its messages on stderr.
# Exit status 77 (no Vulkan device: skipped) passes through.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
LUNET_VULKAN_VALIDATION=1 "$@" 2>"$log"
rc=$?
cat "$log" >&2
errors=$(grep -c "lunet vulkan validation error" "$log")
if [ "$rc" -ne 77 ] && [ "$errors" -gt 0 ]; then
  echo "clean_validation.sh: the validation layer reported $errors error(s)" >&2
  exit 1
fi
exit "$rc"
