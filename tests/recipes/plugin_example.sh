#!/bin/sh
# Builds plugins/example out of tree against lunet installed into a scratch
# prefix (with pkg-config lunet, and with CMake's find_package(lunet)), loads
# it from Lua and trains it; a copy built for another ABI version must be
# refused with both versions named.
set -eu
build=$1 src=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cp -r "$src/plugins/example" "$work/example"
libdir=$(ls -d "$work"/prefix/lib*/pkgconfig | head -n 1)
export PKG_CONFIG_PATH="$libdir"
make -s -C "$work/example" example.so
# the same plugin through CMake's find_package(lunet)
cmake -S "$work/example" -B "$work/example-cmake" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/example-cmake" >/dev/null
sed 's/LUNET_PLUGIN_ABI_MAJOR,/LUNET_PLUGIN_ABI_MAJOR + 1,/' "$work/example/example.c" > "$work/example/future.c"
cc -std=gnu11 -fPIC -shared $(pkg-config --cflags lunet) -o "$work/example/future.so" \
  "$work/example/future.c" $(pkg-config --libs lunet)
cat > "$work/train.lua" <<LUA
local nn = require "lunet"
local ok, err = pcall(nn.load_plugin, "$work/example/future.so")
assert(not ok and tostring(err):find("built for plugin ABI 3.", 1, true)
  and tostring(err):find("this lunet has plugin ABI 2.", 1, true), tostring(err))
local plugin = arg[1]
nn.load_plugin(plugin)
nn.load_plugin(plugin) -- again: already loaded, nothing happens
-- the other build defines Scale too: refused whole (a plugin cannot replace a type)
local other = plugin:find("cmake", 1, true) and "$work/example/example.so" or "$work/example-cmake/example.so"
ok, err = pcall(nn.load_plugin, other)
assert(not ok and tostring(err):find("layer type 'Scale' is already defined by plugin 'example' (", 1, true), tostring(err))
nn.seed(1)
local x = nn.randn(64, 3)
local y = x * nn.tensor{2, -1, 0.5} + 1
local m = nn.Sequential{nn.Scale{input_shape = {3}}}
m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.2}, loss = "mse"}
local h = m:fit(x, y, {epochs = 40, batch_size = 16, verbose = 0})
assert(h.loss[#h.loss] < 1e-3, "loss " .. h.loss[#h.loss])
m:save("$work/scale.safetensors")
assert(nn.load_model("$work/scale.safetensors"):predict(x):totable()[1][1] == m:predict(x):totable()[1][1], "reloaded")
print("example plugin trained, final loss " .. h.loss[#h.loss])
LUA
"$build/bin/lunet" "$work/train.lua" "$work/example/example.so"
"$build/bin/lunet" "$work/train.lua" "$work/example-cmake/example.so" # the CMake build
# a model file names the plugin of its types: a process without it says which to load
"$build/bin/lunet" -e "local nn = require 'lunet'
local ok, err = pcall(nn.load_model, '$work/scale.safetensors')
assert(not ok and tostring(err):find(\"layers[0] ('scale') has the type 'Scale' of plugin 'example', which is not loaded\", 1, true), tostring(err))"
