-- A Vulkan device that fails in the middle of fit (device_fault.sh runs
-- this with LUNET_VULKAN_FAULT set): fit raises the device's error, and
-- the model is back on the CPU as it was at the end of the last whole
-- epoch (weights and optimizer state), and goes on training there.
--   lunet device_fault.lua EPOCHS [val]          train on Vulkan (no fault expected)
--   lunet device_fault.lua fail lost|oom [val]   expect the fault in epoch 2 (its
--                                                 validation, with val)
--   lunet device_fault.lua fail lost copy        expect it in epoch 2's host copy
package.path = arg[0]:gsub("[^/]+$", "") .. "../lua/?.lua;" .. package.path
local nn = require "lunet"
require("check").require_vulkan()

nn.seed(5)
local x_cpu, labels = nn.rand({96, 8, 8, 1}), {}
for i = 1, 96 do labels[i] = i % 3 end
local y_cpu = nn.tensor(labels)

nn.use("vulkan")
local model = nn.Sequential{
  nn.Conv2D{4, 3, activation = "relu", input_shape = {8, 8, 1}},
  nn.MaxPooling2D(2), nn.Flatten(), nn.Dense{3, activation = "softmax"}}
model:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-2}, loss = "sparse_categorical_crossentropy"}
local x, y = x_cpu:to("vulkan"), y_cpu:to("vulkan")

-- "val" as the last argument: with validation data (the fault lands in
-- epoch 2's validation then)
local val = arg[#arg] == "val" and {x, y} or nil
local in_copy = arg[#arg] == "copy"

-- the weights and Adam's slots at the end of epoch 1, on the CPU (in the
-- counting runs too, so that they count the same submits)
local at_epoch1
local keep = nn.callbacks.LambdaCallback{on_epoch_end = function(m, epoch)
  if epoch == 0 then -- the first, counted from 0
    at_epoch1 = {}
    for i, w in ipairs(m:get_weights()) do at_epoch1[i] = w:to("cpu"):totable() end
  end
end}
if arg[1] ~= "fail" then
  model:fit(x, y, {epochs = tonumber(arg[1]), batch_size = 16, verbose = 0, shuffle = false, validation_data = val,
    callbacks = {keep}})
  return
end
local ok, err = pcall(model.fit, model, x, y, {epochs = 3, batch_size = 16, verbose = 0, shuffle = false,
  callbacks = {keep}, validation_data = val})
assert(not ok, "fit should have failed")
if val and not tostring(err):find("(epoch 2, validation)", 1, true) and tostring(err):find("download", 1, true) then
  os.exit(3) -- the fault hit the epoch-end host copy, after validation: device_fault.sh tries an earlier submit
end
local want = arg[2] == "oom" and "out of device memory" or "the Vulkan device was lost"
assert(tostring(err):find(want, 1, true), "unexpected error: " .. tostring(err))
local where = val and "(epoch 2, validation)" or in_copy and "(reading the model back from vulkan)" or "(epoch 2, step"
assert(tostring(err):find(where, 1, true), "the fault was meant for " .. where .. ": " .. tostring(err))
assert(tostring(err):find("the model is back on the CPU as it was at the end of epoch 1", 1, true), tostring(err))
assert(model.device == "cpu", "model.device is " .. tostring(model.device))
assert(model.epoch == 1, "model.epoch is " .. tostring(model.epoch))
for i, w in ipairs(model:get_weights()) do
  assert(w:device() == "cpu", "weight " .. i .. " is on " .. w:device())
  local got, exp = w:totable(), at_epoch1[i]
  local function same(a, b)
    if type(a) == "number" then assert(a == b, string.format("weight %d differs from epoch 1's: %g vs %g", i, a, b)) return end
    for k = 1, #b do same(a[k], b[k]) end
  end
  same(got, exp)
end
-- a new tensor on the lost device names the loss (it said "out of memory ... use a smaller batch size")
if arg[2] == "lost" then
  local ok2, e2 = pcall(function() return nn.ones(4):to("vulkan") end)
  assert(not ok2 and tostring(e2):find("the Vulkan device was lost", 1, true), "a new vulkan tensor: " .. tostring(e2))
end
-- and it trains on the CPU from there
nn.use("cpu")
local p = model:predict(x_cpu)
assert(p:shape()[1] == 96)
local h = model:fit(x_cpu, y_cpu, {epochs = 2, initial_epoch = model.epoch, batch_size = 16, verbose = 0})
assert(h.loss[1] == h.loss[1] and h.loss[1] < 2, "loss after the restore: " .. tostring(h.loss[1]))
print("device fault: ok (" .. arg[2] .. (val and ", in validation" or in_copy and ", in the host copy" or "") .. ")")
