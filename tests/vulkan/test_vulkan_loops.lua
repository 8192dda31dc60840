-- Sums longer than one shader loop may run on lavapipe, on Vulkan against
-- the CPU or exact values.
-- Without the validation layer (tests/vulkan/test_vulkan.lua runs under it):
-- its synchronization checks over these 80,000-row batches take minutes.
-- Exits 77 (skipped) where no Vulkan device exists.
package.path = arg[0]:gsub("[^/]+$", "") .. "../lua/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

check.require_vulkan()

local T = {}

-- Sums longer than one shader loop may run on lavapipe (65,535 iterations,
-- after which it ends the loop without an error): an Embedding's gradient
-- where one id comes 71,112 times (a padding id in a batch of tokens) and
-- LayerNormalization's beta and gamma gradients over 70,000 rows are split
-- into several dispatches and equal the CPU's (they came out 65,535/71,112
-- of it).
function T.long_sums_are_whole_on_vulkan()
  local function emb_step(dev)
    nn.seed(1)
    local m = nn.Sequential{nn.Embedding{3, 2, input_shape = {1}}, nn.Flatten()}:to(dev)
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "mse"}
    local w0 = m:get_weights()[1]:to("cpu"):totable()
    local rows = {}
    for i = 1, 80000 do rows[i] = {i % 9 == 0 and 1 or 0} end
    local ids = nn.tensor(rows)
    m:train_on_batch(ids:to(dev), nn.ones(80000, 2):to(dev))
    local w = m:get_weights()[1]:to("cpu"):totable()
    return {w[1][1] - w0[1][1], w[2][2] - w0[2][2]}
  end
  -- (float sums of 71,112 terms in another order: 1e-4 apart; a sum cut short is 8% off)
  check.same_table(emb_step("vulkan"), emb_step("cpu"), 1e-3, "Embedding's step from 71,112 and 8,888 uses of ids")
  local function ln_step(dev)
    nn.seed(2)
    local m = nn.Sequential{nn.LayerNormalization{input_shape = {4}}}:to(dev)
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "mse"}
    local x = nn.randn(70000, 4)
    m:train_on_batch(x:to(dev), (x * 0.5 + 1):to(dev))
    local w = m:get_weights()
    return {w[1]:to("cpu"):totable()[1], w[2]:to("cpu"):totable()[1]}
  end
  check.same_table(ln_step("vulkan"), ln_step("cpu"), 1e-5, "LayerNormalization's gamma and beta over 70,000 rows")
end

-- A reduction of one output over more than 256 x 32,768 elements (each of a
-- workgroup's invocations would loop past lavapipe's limit) goes in parts:
-- nn.ones(2^24):sum() was 1,048,560.
function T.long_reductions_are_whole_on_vulkan()
  local n = 2 ^ 24 + 6
  local x = nn.ones(n):to("vulkan")
  check.eq(x:sum():item(), 16777222, "the sum of 2^24 + 6 ones")
  check.eq(x:mean():item(), 1, "their mean")
  local rows = (nn.ones(2, 9000000) * nn.tensor{{1}, {-2}}):to("vulkan")
  check.same_table(rows:sum(2):to("cpu"):totable(), {9000000, -18000000}, 0, "row sums")
  check.same_table(rows:max(2):to("cpu"):totable(), {1, -2}, 0, "row maxima")
end

check.run(T)
