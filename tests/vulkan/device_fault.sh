#!/bin/sh
# Faults injected into the Vulkan backend mid-fit (device_fault.lua): the
# number of queue submits of one and of two epochs is counted first
# (LUNET_VULKAN_FAULT=count), then the submit in the middle of epoch 2
# fails as a lost device, then as device memory running out; then the last
# of epoch 2 (its host copy); last, one in the middle of epoch 2's
# validation.
# Usage: device_fault.sh LUNET
set -eu
lunet=$1
script=$(dirname "$0")/device_fault.lua
submits() {
  out=$(LUNET_VULKAN_FAULT=count "$lunet" "$script" "$@" 2>&1) || { st=$?; echo "$out"; exit $st; }
  n=$(echo "$out" | sed -n 's/^lunet: vulkan: \([0-9]*\) submits$/\1/p')
  [ -n "$n" ] || { echo "could not count the submits: $out"; exit 1; }
  echo "$n"
}
one=$(submits 1)
two=$(submits 2)
# an epoch: its 6 steps (a submit each, at least), then the host copy
# (a download a weight and an optimizer slot): submit one + 3 is a step
mid=$((one + 3))
for kind in lost oom; do
  LUNET_VULKAN_FAULT=submit:$mid:$kind "$lunet" "$script" fail "$kind"
done
# the last submit of two epochs is epoch 2's host copy (reading the model
# back): the model comes back from epoch 1's
LUNET_VULKAN_FAULT=submit:$two:lost "$lunet" "$script" fail lost copy
# with validation data: epoch 2 ends with its validation, then the host
# copy (a few downloads); from the end of the two-epoch run backwards, the
# first submit whose failure is not in the copy is in the validation
two_val=$(submits 2 val)
n=$((two_val + 1))
while :; do
  n=$((n - 1))
  [ "$n" -gt "$((two_val - 40))" ] || { echo "no submit of epoch 2's validation found"; exit 1; }
  st=0
  LUNET_VULKAN_FAULT=submit:$n:lost "$lunet" "$script" fail lost val || st=$?
  [ "$st" -eq 3 ] || break
done
[ "$st" -eq 0 ] || exit "$st"
echo "device faults: ok (training: submit $mid, whose first epoch ends at submit $one; validation: submit $n)"
