-- nn.tools: helpers around training.
--   lr_find(model, x, y, {...}): the learning-rate range test (Smith 2017,
--   as fastai's lr_find and Keras-tuner recipes run it).
local C = require "lunet.core"
local plot = require "lunet.plot"
local optim = require "lunet.optim"

local M = {}

-- All that a training step changes: the weights (BatchNormalization's
-- moving statistics included), the optimizer's slots and update count, and
-- its learning rate setting.
local function snapshot(model)
  local opt = model.optimizer
  local s = { weights = model:get_weights(), iterations = opt.iterations, learning_rate = opt.learning_rate,
    slots = {}, any_slot = false }
  for i, slots in ipairs(C.optimizer_slots(opt.handle, #model.params)) do
    s.slots[i] = {}
    for k, t in pairs(slots) do
      s.slots[i][k] = t:clone()
      s.any_slot = true
    end
  end
  return s
end

local function restore(model, s)
  local opt = model.optimizer
  model:set_weights(s.weights)
  if s.any_slot then
    for i, slots in ipairs(s.slots) do
      for k, t in pairs(slots) do C.optimizer_set_slot(opt.handle, i, k, t) end
    end
  else
    C.optimizer_reset(opt.handle) -- it had no state before the sweep
  end
  opt.iterations = s.iterations
  opt.learning_rate = s.learning_rate
end

-- The rate where the smoothed loss falls fastest per decade of rate, over
-- a window of 5 points, between the first 10 points (the average is still
-- settling there, as fastai skips them) and the loss's minimum.
local function steepest(lrs, losses)
  local best_i = 1
  for i, v in ipairs(losses) do if v < losses[best_i] then best_i = i end end
  local pick, slope = nil, math.huge
  for i = 12, best_i - 2 do
    local d = (losses[i + 2] - losses[i - 2]) / (math.log(lrs[i + 2], 10) - math.log(lrs[i - 2], 10))
    if d < slope then pick, slope = i, d end
  end
  return pick and lrs[pick] or lrs[best_i] / 10, lrs[best_i]
end

--- nn.tools.lr_find(model, x, y, {min_lr = 1e-7, max_lr = 10, steps = 100,
-- batch_size = 32, smoothing = 0.98, stop_factor = 4, seed = 0, path,
-- verbose = 1}) -> {lrs, losses (smoothed), raw, suggestion, min_loss_lr}
-- Trains a compiled model for up to `steps` batches with the learning rate
-- growing exponentially from min_lr to max_lr, and stops early when the
-- smoothed loss exceeds stop_factor times its best (or is not finite).
-- The suggestion is the rate where the loss falls fastest.  The weights and
-- the optimizer's state are restored afterwards, whatever happens.  With
-- `path`, the curve is plotted there (PNG or SVG) with the suggestion marked.
function M.lr_find(model, x, y, o)
  o = optim.check_fields("lr_find", o, { min_lr = true, max_lr = true, steps = true, batch_size = true,
    smoothing = true, stop_factor = true, seed = true, path = true, verbose = true }, "option", 4)
  if type(model) ~= "table" or not model.train_on_batch then error("lr_find: a model expected", 2) end
  if not model.optimizer then error("lr_find: call model:compile{optimizer = ..., loss = ...} first", 2) end
  if not C.is_tensor(x) or not C.is_tensor(y) then error("lr_find: x and y tensors expected", 2) end
  local min_lr, max_lr = o.min_lr or 1e-7, o.max_lr or 10
  local steps, bs = o.steps or 100, o.batch_size or 32
  if not (min_lr > 0 and max_lr > min_lr) then error("lr_find: 0 < min_lr < max_lr expected", 2) end
  if math.type(steps) ~= "integer" or steps < 5 then error("lr_find: steps must be an integer >= 5", 2) end
  local n = x:shape()[1]
  if y:shape()[1] ~= n then error(string.format("lr_find: %d samples in x but %d in y", n, y:shape()[1]), 2) end
  local beta, stop = o.smoothing or 0.98, o.stop_factor or 4
  if math.type(bs) ~= "integer" or bs < 1 then error("lr_find: batch_size must be a positive integer", 2) end
  -- one shuffled pass after another, never the same batch twice in a row,
  -- from a generator of its own (math.random and lunet's stay as they were)
  local state = (math.tointeger(o.seed or 0) or 0) * 2 + 1
  local function rng(k) -- 1..k, a 64-bit LCG's high bits
    state = state * 6364136223846793005 + 1442695040888963407
    return (state >> 33) % k + 1
  end
  local seed0, counter0 = C.seed(), C.rng_take(0) -- dropout draws in the steps: put back after
  local order, at = {}, n + 1
  local function next_batch()
    if at + math.min(bs, n) - 1 > n then
      for i = 1, n do order[i] = i - 1 end
      for i = n, 2, -1 do
        local j = rng(i)
        order[i], order[j] = order[j], order[i]
      end
      at = 1
    end
    local ids = {}
    for i = 1, math.min(bs, n) do ids[i] = order[at + i - 1] end
    at = at + #ids
    return x:index_select(1, ids), y:index_select(1, ids)
  end
  model:test_on_batch(next_batch()) -- builds and compiles the model, changes no weight
  local saved = snapshot(model)
  local result = { lrs = {}, losses = {}, raw = {} }
  local ok, err = pcall(function()
    local avg, best = 0, math.huge
    for i = 1, steps do
      local lr = min_lr * (max_lr / min_lr) ^ ((i - 1) / (steps - 1))
      model.optimizer.learning_rate = lr
      local loss = model:train_on_batch(next_batch())
      avg = beta * avg + (1 - beta) * loss
      local smooth = avg / (1 - beta ^ i)
      result.lrs[i], result.raw[i], result.losses[i] = lr, loss, smooth
      if o.verbose ~= 0 and (i % 10 == 0 or i == steps) then
        io.write(string.format("\rlr_find: %d/%d  lr %.2e  loss %.4f", i, steps, lr, smooth))
        io.flush()
      end
      if smooth == smooth and smooth < best then best = smooth end
      if not (smooth == smooth and smooth < math.huge) or smooth > stop * best then break end
      if C.interrupted() then error("interrupted", 0) end
    end
    if o.verbose ~= 0 then io.write("\n") end
  end)
  restore(model, saved)
  C.seed(seed0)
  C.rng_take(counter0)
  if not ok then error(err, 0) end
  if #result.lrs < 3 then error("lr_find: the loss diverged at once: lower min_lr", 2) end
  -- the last point is the one that diverged: leave it out of the choice
  local lrs, losses = {}, {}
  for i = 1, #result.lrs - (#result.lrs < steps and 1 or 0) do lrs[i], losses[i] = result.lrs[i], result.losses[i] end
  result.suggestion, result.min_loss_lr = steepest(lrs, losses)
  result.suggestion = math.max(result.suggestion, min_lr) -- the fallback, a tenth of the best, may fall below
  if o.verbose ~= 0 then
    print(string.format("lr_find: suggested learning rate %.2e (steepest fall; lowest loss at %.2e)",
      result.suggestion, result.min_loss_lr))
  end
  if o.path then
    plot.curve(lrs, losses, o.path, { log_x = true, title = "learning-rate finder", xlabel = "learning rate (log)",
      ylabel = "loss (smoothed)", mark = { x = result.suggestion, label = string.format("%.1e", result.suggestion) } })
    result.path = o.path
  end
  return result
end

return M
