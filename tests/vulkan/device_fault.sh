#!/bin/sh
# Faults injected into the Vulkan backend mid-fit (device_fault.lua): the
# number of queue submits of one and of two epochs is counted first
# (LUNET_VULKAN_FAULT=count), then the submit in the middle of epoch 2
# fails as a lost device, then as device memory running out.
# Usage: device_fault.sh LUNET
set -eu
lunet=$1
script=$(dirname "$0")/device_fault.lua
submits() {
  out=$(LUNET_VULKAN_FAULT=count "$lunet" "$script" "$1" 2>&1) || { st=$?; echo "$out"; exit $st; }
  echo "$out" | sed -n 's/^lunet: vulkan: \([0-9]*\) submits$/\1/p'
}
one=$(submits 1)
two=$(submits 2)
[ -n "$one" ] && [ -n "$two" ] && [ "$two" -gt "$one" ] || { echo "could not count the submits ($one, $two)"; exit 1; }
mid=$((one + (two - one) / 2))
for kind in lost oom; do
  LUNET_VULKAN_FAULT=submit:$mid:$kind "$lunet" "$script" fail "$kind"
done
echo "device faults: ok (submit $mid of a run whose first epoch ends at submit $one)"
