-- The hostile plugin (hostile_plugin.c): every fault is an error naming the
-- layer and the plugin, raised where it happens (build, forward, backward),
-- and the control layer of the same plugin trains.  Usage:
--   lunet hostile_plugin.lua PATH/test_hostile_plugin.so
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "../lua/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

nn.load_plugin(arg[1])
local BLAME = "(a bug in plugin 'hostile' (" .. arg[1] .. "))"

-- Input (3) -> [Dense 3 ->] the layer -> Dense 2, compiled.
local function model(type_name, dense_first)
  local x = nn.Input{shape = {3}}
  local h = dense_first and nn.Dense{3}(x) or x
  local m = nn.Model{inputs = x, outputs = nn.Dense{2}(nn[type_name]{}(h))}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  return m
end

local x, y = nn.randn(4, 3), nn.randn(4, 2)
local function fit(m) return m:fit(x, y, {epochs = 1, batch_size = 4, verbose = 0}) end

local T = {}

function T.build_faults()
  check.fails(function() model("RefusingBuild") end, "refusing_build: refuses to build, as a test")
  check.fails(function() model("SilentBuild") end, "build failed without a message " .. BLAME)
  -- in a Sequential: the layer's position and the plugin's words, no position in lunet's Lua
  local ok, err = pcall(function() return nn.Sequential{nn.Dense{3, input_shape = {3}}, nn.SilentBuild{}} end)
  assert(not ok and err:find("^layer 2 %(silent_build[_%d]*%): silent_build[_%d]*: build failed without a message"), err)
  check.fails(function() model("HugeOutput") end, "build declared output 1 with 3 dimensions, a size below 1 or more than")
  check.fails(function() model("NegativeOutput") end, "a size below 1")
  check.fails(function() model("ManyDims") end, "build declared output 1 with 99 dimensions")
  check.fails(function() model("BadWeight") end, "bad_weight: add_weight 'w': a name, fewer than 8 axes, sizes of at least 1")
end

function T.forward_faults()
  check.fails(function() model("WideForward"):predict(x) end,
    "forward returned output 1 of shape (4, 6), but build declared (None, 3) for a batch of 4 " .. BLAME)
  check.fails(function() model("NullForward"):predict(x) end, "forward returned no output 1 " .. BLAME)
  check.fails(function() model("IntForward"):predict(x) end,
    "forward returned output 1 as int32, but layers return float32 " .. BLAME)
  check.fails(function() model("SilentForward"):predict(x) end, "forward failed without a message")
end

-- Backward faults only show when a gradient flows through the layer: a
-- trainable layer before it needs the input gradient.
function T.backward_faults()
  local function deep(type_name) return model(type_name, true) end
  check.fails(function() fit(deep("NullBackward")) end,
    "backward returned no gradient for input 1, which needs one " .. BLAME)
  check.fails(function() fit(deep("WideBackward")) end,
    "backward returned the gradient of input 1 with shape (4, 6) (float32), the input has (4, 3) (float32) " .. BLAME)
  check.fails(function() fit(deep("SilentBackward")) end, "backward failed without a message " .. BLAME)
  check.fails(function() fit(model("BadWeightGrad")) end, "the gradient of 'w' has shape (4, 3), the weight (3,) " .. BLAME)
end

-- After all that, the same process still trains, with the plugin's honest
-- layer among the built-in ones.
function T.control_trains()
  nn.seed(1)
  local m = model("Honest", true)
  local h = m:fit(x, y, {epochs = 20, batch_size = 4, verbose = 0})
  assert(h.loss[20] < h.loss[1], string.format("loss %g -> %g", h.loss[1], h.loss[20]))
end

-- nn.check_plugin runs each type's shipped case: a broken type is a
-- failed result (or an error naming the fault), never a crash.
function T.check_plugin_reports()
  for _, r in ipairs(nn.check_plugin("Honest")) do assert(r.ok, "Honest: " .. tostring(r.error)) end
  for _, name in ipairs({"WideForward", "IntForward", "NullForward", "SilentForward", "NullBackward", "WideBackward",
                         "SilentBackward", "BadWeightGrad", "SilentBuild", "HugeOutput"}) do
    local ok, results = pcall(nn.check_plugin, name)
    if ok then
      local any_failed = false
      for _, r in ipairs(results) do any_failed = any_failed or not r.ok end
      assert(any_failed, name .. ": nn.check_plugin found nothing wrong")
    else
      assert(tostring(results):find(name, 1, true) or tostring(results):find("hostile", 1, true),
        name .. ": the error does not name the layer: " .. tostring(results))
    end
  end
end

-- Gradients of the right shape but wrong, each a failed result with what
-- was wrong: a NaN (its error was NaN, which no comparison rejected); twice
-- the true gradient where it is 0.003 x (the error was measured against 1,
-- so 0.003 passed a tolerance of 0.01); one column of a (32, 24) weight
-- zeroed (a probe every numel / 48 elements met columns 0, 8 and 16 alone).
-- The control of the same shape passes.
function T.check_plugin_finds_wrong_gradients()
  for _, r in ipairs(nn.check_plugin("HonestGrid")) do
    assert(r.ok, "HonestGrid: " .. tostring(r.error) .. " " .. tostring(r.max_error))
  end
  local function cpu_results(name)
    local out = {}
    for _, r in ipairs(nn.check_plugin(name)) do if r.backend == nil or r.backend == "" then out[#out + 1] = r end end
    check.eq(#out, 2, name .. ": inference and training")
    return out
  end
  check.fails(function() nn.check_plugin("Embedding") end,
    "check_plugin: layer type 'Embedding' ships no test cases (its lunet_layer_type has ntests = 0), so nothing was checked")
  for _, r in ipairs(cpu_results("NaNGradient")) do
    check.eq(r.ok, false, "NaNGradient passed")
    check.fails(function() error(r.error) end, "a non-finite gradient at element 0 (nan)")
  end
  for _, name in ipairs{"SmallDoubled", "ColumnGradient"} do
    for _, r in ipairs(cpu_results(name)) do
      check.eq(r.ok, false, name .. " passed with error " .. tostring(r.max_error))
      assert(r.max_error > 0.3, name .. ": max error " .. r.max_error)
    end
  end
end

check.run(T)
