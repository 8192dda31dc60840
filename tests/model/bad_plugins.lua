-- The registry refuses a plugin whole when one of its layer types is
-- incomplete or takes a name already registered (bad_plugin.c, one fault
-- per build): an error naming the plugin and the fault, nothing of it
-- registered, never a crash (a NULL forward or name crashed) and never a
-- built-in replaced (a plugin's "Dense" replaced nn.Dense silently).
-- Usage: lunet bad_plugins.lua DIR LUNET_SHELL
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "../lua/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local dir, shell = arg[1], arg[2]

local T = {}

local function refused(file, message)
  local path = dir .. "/" .. file .. ".so"
  check.fails(function() nn.load_plugin(path) end, "plugin " .. path .. message)
end

function T.faults_are_errors()
  refused("builtin_name", ": layer type 'Dense' is already defined by plugin 'layers' (")
  refused("no_name", ": layer type 1 has no name")
  refused("no_forward", ": layer type 1 ('Echo') has no forward function")
  refused("twice", " defines layer type 'Echo' twice")
  refused("null_entry", ": its lunet_plugin_entry() returned NULL (it must return its descriptor)")
  -- schemas the core would otherwise hold against every call, blaming the user
  refused("inputs", ": layer type 'Echo' has a bad schema: min_inputs 3 and max_inputs 2 (0 means 1; max_inputs must "
    .. "be at least min_inputs)")
  refused("arg_twice", ": layer type 'Echo' has a bad schema: argument 'name' declared twice")
  refused("default_choice", ": layer type 'Echo' has a bad schema: argument 'mode' defaulting to 'zz', not one of its "
    .. "choices a|b")
  refused("negative_count", " declares -1 layer types (a count from 0)")
  check.fails(function() return nn.Echo{} end, "lunet has no layer or class 'Echo'") -- nothing of them registered
  -- nn.Dense is still the built-in: 3 units, a kernel and a bias
  local d = nn.Dense{3}
  check.same_table(d(nn.ones(2, 4)):shape(), {2, 3}, 0, "Dense")
  check.eq(#d:get_weights(), 2, "the built-in's weights")
end

function T.the_control_loads_and_then_owns_its_name()
  nn.load_plugin(dir .. "/control.so")
  local e = nn.Echo{}
  check.same_table(e(nn.tensor{{1, 2}}):totable(), {{1, 2}}, 0, "Echo")
  -- the same file again is no conflict
  nn.load_plugin(dir .. "/control.so")
end

-- A type named as one of nn's functions: the function stays (nn.Sequential
-- was replaced by the type's constructor), and loading says so.
function T.nn_functions_stay()
  for _ = 1, 2 do -- loading it again says it again (the registry keeps the plugin)
    check.fails(function() nn.load_plugin(dir .. "/nn_name.so") end,
      "nn_name.so: the layer type Sequential has the name of nn.Sequential, which stays lunet's; rename the type")
  end
  local m = nn.Sequential{nn.Dense{2, input_shape = {3}}}
  check.same_table(m:predict(nn.ones(1, 3)):shape(), {1, 2}, 0, "nn.Sequential is lunet's")
  check.fails(function() nn.help(print) end, "a layer type's name, \"Dense\", or its constructor, nn.Dense")
  nn.help(nn.Dense) -- the constructor names its type
end

-- From LUNET_PLUGIN_PATH: the built-in layers load first and keep their
-- names; the plugin that takes one is skipped with a message, and the
-- others in the folder load.
function T.plugin_path_keeps_the_builtins()
  local cmd = string.format("LUNET_PLUGIN_PATH=%s %s -e %s 2>&1", dir, shell,
    "'local nn = require \"lunet\"; local d = nn.Dense{3}; d(nn.ones(1, 4)); print(#d:get_weights(), nn.Echo ~= nil)'")
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  check.fails(function() error(out) end, "lunet: skipping plugin: plugin " .. dir .. "/builtin_name.so: layer type 'Dense' is already defined by plugin 'layers' (")
  check.fails(function() error(out) end, "2\ttrue")
  -- an entry may be a .so file; one that is neither a folder nor a file is named (it was skipped silently)
  cmd = string.format("LUNET_PLUGIN_PATH=/nonexistent/plugins:%s/control.so %s -e %s 2>&1", dir, shell,
    "'local nn = require \"lunet\"; print(\"echo\", nn.Echo ~= nil)'")
  p = assert(io.popen(cmd))
  out = p:read("a")
  p:close()
  check.fails(function() error(out) end, "echo\ttrue")
  check.fails(function() error(out) end, "lunet: LUNET_PLUGIN_PATH names '/nonexistent/plugins': No such file or directory")
end

check.run(T)
