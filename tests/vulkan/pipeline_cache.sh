#!/bin/sh
# The Vulkan pipeline cache kept between runs: a first run writes it at
# exit, a second reads it (nn.backend_stats().pipeline_cache_bytes > 0; on
# lavapipe only the 32-byte header: it caches no binaries), a damaged file is ignored (the run works and
# writes a good one back).  Skipped, saying so, without a Vulkan device.
#   pipeline_cache.sh LUNET WORK_DIR
set -eu
lunet=$1 work=$2
rm -rf "$work" && mkdir -p "$work"
export LUNET_VULKAN_PIPELINE_CACHE="$work/cache.bin"
cat > "$work/step.lua" <<'LUA'
local nn = require "lunet"
local ok = false
for _, b in ipairs(nn.backends()) do if b.name == "vulkan" and b.available then ok = true end end
if not ok then print("no vulkan") os.exit(0) end
nn.use("vulkan")
local t0 = require("lunet.core").now()
local m = nn.Sequential{nn.Conv2D{4, 3, activation = "relu", input_shape = {8, 8, 2}}, nn.Flatten(), nn.Dense{3}}
m:compile{optimizer = "adam", loss = "mse"}
m:train_on_batch(nn.randn(4, 8, 8, 2), nn.randn(4, 3))
local s = nn.backend_stats("vulkan")
print(string.format("loaded %d built %d in %.2f s", s.pipeline_cache_bytes, s.pipelines, require("lunet.core").now() - t0))
LUA
first=$("$lunet" "$work/step.lua")
echo "first run: $first"
if [ "$first" = "no vulkan" ]; then echo "pipeline cache: ok (no Vulkan device: skipped)"; exit 0; fi
case "$first" in "loaded 0 "*) ;; *) echo "the first run found a cache"; exit 1 ;; esac
[ -s "$work/cache.bin" ] || { echo "no cache written at exit"; exit 1; }
second=$("$lunet" "$work/step.lua")
echo "second run: $second"
case "$second" in "loaded 0 "*) echo "the second run did not read the cache"; exit 1 ;; esac
printf 'not a pipeline cache, just bytes ........................................' > "$work/cache.bin"
third=$("$lunet" "$work/step.lua")
echo "damaged file: $third"
case "$third" in "loaded 0 "*) ;; *) echo "a damaged cache was used"; exit 1 ;; esac
fourth=$("$lunet" "$work/step.lua")
case "$fourth" in "loaded 0 "*) echo "the damaged cache was not written back whole"; exit 1 ;; esac
echo "pipeline cache: ok"
