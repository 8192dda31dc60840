-- lunet.dataset: data that streams in batches, read when needed, for
-- model:fit, evaluate and predict (Keras's tf.data datasets, simply).
--
--   local ds = dataset.new{n = 1000, batch_size = 32, shuffle = true, seed = 1,
--                          load = function(indices) return x, y end}
--   for step, x, y in ds:batches(epoch) do ... end
--   #ds                      -- batches per epoch
--
-- load(indices) gets the 1-based sample indices of one batch and returns
-- its inputs (a tensor, or a list for several inputs) and targets (or nil);
-- load_async(indices), when given, starts reading them in the background
-- and returns a function that waits and returns the same (fit reads the
-- next batch while the model trains on this one).
-- With shuffle the order is a permutation keyed by (seed, epoch): the same
-- seed gives the same batches on every run, and each epoch its own order.
-- fit hands the random preprocessing layers each sample's index, as it
-- does for tensors.
local core = require "lunet.core"

local M = {}

local Dataset = {}
Dataset.__index = Dataset
Dataset.__name = "lunet.Dataset"

local function fail(msg) error("dataset: " .. msg, 3) end

--- dataset.new{n, batch_size = 32, load, shuffle = false, seed = 0, ...}:
-- other fields (class_names, file_paths ...) are kept as they are.
function M.new(o)
  if type(o) ~= "table" then fail("expected a table of options") end
  if math.type(o.n) ~= "integer" or o.n < 0 then fail("n (the number of samples) must be an integer >= 0") end
  local bs = o.batch_size or 32
  if math.type(bs) ~= "integer" or bs < 1 then fail("batch_size must be a positive integer") end
  if type(o.load) ~= "function" then fail("load must be a function(indices) returning x, y") end
  if o.seed ~= nil and math.type(o.seed) ~= "integer" then fail("seed must be an integer") end
  -- "no" and 1 shuffled
  if o.shuffle ~= nil and type(o.shuffle) ~= "boolean" then fail("shuffle must be true or false") end
  local ds = {}
  for k, v in pairs(o) do ds[k] = v end
  ds.batch_size, ds.seed, ds.shuffle = bs, o.seed or 0, o.shuffle or false
  return setmetatable(ds, Dataset)
end

function M.is(v) return getmetatable(v) == Dataset end

function Dataset:__len() return (self.n + self.batch_size - 1) // self.batch_size end

function Dataset:__tostring()
  return string.format("Dataset(%d samples, batch_size %d, %d batches%s%s)", self.n, self.batch_size, #self,
    self.shuffle and ", shuffled" or "", self.class_names and (", classes: " .. table.concat(self.class_names, ", ")) or "")
end

--- permutation(n, seed, base) -> a permutation of 1..n (Fisher-Yates on
-- Philox draws keyed by seed and counters base + i): the one shuffle of
-- fit, the datasets and the image folders.
function M.permutation(n, seed, base)
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = 1 + math.floor(core.philox(seed, base + i) * i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end

--- ds:order(epoch) -> the epoch's sample indices (1-based): 1..n, or a
-- permutation keyed by (seed, epoch) when the dataset shuffles.
function Dataset:order(epoch)
  if self.shuffle then return M.permutation(self.n, self.seed, (epoch or 0) << 36) end
  local p = {}
  for i = 1, self.n do p[i] = i end
  return p
end

local function indices(self, step, order)
  local first = (step - 1) * self.batch_size + 1
  local idx = {}
  for i = first, math.min(first + self.batch_size - 1, self.n) do idx[#idx + 1] = order[i] end
  return idx
end

--- ds:batch(step, order) -> x, y, indices, sample_weight: batch `step`
-- (1-based) of an epoch's order (the one ds:prefetch started, when it
-- did); the weights are what the loader returns third (Keras's
-- (x, y, sample_weight) batches), or nil.
-- One row per index in each tensor a loader returned: more or fewer put
-- predictions beside the wrong samples (predict gave 9 rows for 5).
local function check_rows(idx, x, y, w)
  for _, part in ipairs{{"x", x}, {"y", y}, {"sample_weight", w}} do
    local v = part[2]
    local list = core.is_tensor(v) and { v } or type(v) == "table" and v or {}
    local rows = type(list[1]) == "number" and #list or nil -- weights as a list of numbers
    for _, t in ipairs(list) do
      if rows then break end
      if core.is_tensor(t) and t:shape()[1] ~= #idx then rows = t:shape()[1] end
    end
    if rows and rows ~= #idx then
      error(string.format("dataset: load returned %d rows of %s for the %d indices it was given (one row per index)",
        rows, part[1], #idx), 0)
    end
  end
  return x, y, idx, w
end

function Dataset:batch(step, order)
  local p = self.pending
  if p and p.step == step and p.order == order then
    self.pending = nil
    local x, y, w = p.finish()
    return check_rows(p.idx, x, y, w)
  end
  local idx = indices(self, step, order)
  local x, y, w = self.load(idx)
  return check_rows(idx, x, y, w)
end

--- ds:prefetch(step, order): starts reading batch `step` in the background
-- when the dataset can (a load_async(indices) returning a function that
-- waits and gives x, y: image folders decode on C threads); ds:batch then
-- takes it.  A no-op otherwise.
function Dataset:prefetch(step, order)
  if not self.load_async or step > #self then return end
  local idx = indices(self, step, order)
  if #idx == 0 then return end -- past the end of a shorter order (a rank's shard)
  self.pending = { step = step, order = order, idx = idx, finish = self.load_async(idx) }
end

--- for step, x, y in ds:batches(epoch) do ... end (the next batch is read
-- while the caller works on this one)
function Dataset:batches(epoch)
  local order, step, steps = self:order(epoch), 0, #self
  return function()
    step = step + 1
    if step > steps then return nil end
    local x, y = self:batch(step, order)
    self:prefetch(step + 1, order)
    return step, x, y
  end
end

--- from_tensor_slices(x, y, {batch_size = 32, shuffle = false, seed}) ->
-- a dataset of the rows of x (a tensor or a list) and y (or nil), as
-- tf.data.Dataset.from_tensor_slices((x, y)).batch(...): text windows,
-- arrays built in Lua, anything in memory that should go through fit as a
-- dataset.
function M.from_tensor_slices(x, y, o)
  o = o or {}
  if type(o) ~= "table" then fail("options must be a table {batch_size =, shuffle =, seed =}") end
  for k in pairs(o) do -- a misspelt shuffle did not shuffle
    if k ~= "batch_size" and k ~= "shuffle" and k ~= "seed" then
      fail(string.format("unknown option '%s' (valid: batch_size, shuffle, seed)", tostring(k)))
    end
  end
  local xs = core.is_tensor(x) and { x } or x
  if type(xs) ~= "table" or not core.is_tensor(xs[1]) then fail("x must be a tensor or a list of tensors") end
  local n = xs[1]:shape()[1]
  local ys = y == nil and {} or core.is_tensor(y) and { y } or y
  if type(ys) ~= "table" or (y ~= nil and not core.is_tensor(ys[1])) then
    fail("y must be a tensor or a list of tensors (nn.tensor{...} makes one from numbers)")
  end
  for _, t in ipairs(xs) do if t:shape()[1] ~= n then fail("the tensors of x have different numbers of rows") end end
  for _, t in ipairs(ys) do if t:shape()[1] ~= n then fail("x and y have different numbers of rows") end end
  local function rows(list, idx)
    local out = {}
    for i, t in ipairs(list) do out[i] = core.take_rows(t, idx, 1, #idx) end
    return #out == 1 and out[1] or out
  end
  return M.new{ n = n, batch_size = o.batch_size or 32, shuffle = o.shuffle or false, seed = o.seed,
    load = function(idx) return rows(xs, idx), y ~= nil and rows(ys, idx) or nil end }
end

return M
