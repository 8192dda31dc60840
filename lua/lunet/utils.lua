-- nn.utils: Keras's to_categorical and a train/test split.
local C = require "lunet.core"

local M = {}

-- to_categorical(y, num_classes): class ids (a tensor or a list, whole
-- numbers from 0) as one-hot rows (N, num_classes) float32; num_classes
-- defaults to the largest id + 1, as in Keras.
function M.to_categorical(y, num_classes)
  local ids = C.is_tensor(y) and y:reshape(-1):totable() or y
  if type(ids) ~= "table" then error("bad argument #1 to 'to_categorical' (class ids: a tensor or a list)", 2) end
  local k = num_classes
  if k == nil then
    k = 0
    for _, v in ipairs(ids) do k = math.max(k, v + 1) end
  end
  if math.type(k) ~= "integer" or k < 1 then error("bad argument #2 to 'to_categorical' (a positive integer)", 2) end
  local rows = {}
  for i, v in ipairs(ids) do
    if math.tointeger(v) == nil or v < 0 or v >= k then
      error(string.format("to_categorical: entry %d is %s, not a class id in [0, %d)", i, tostring(v), k), 2)
    end
    local r = {}
    for j = 1, k do r[j] = 0 end
    r[math.tointeger(v) + 1] = 1
    rows[i] = r
  end
  return C.tensor(rows)
end

-- train_test_split(x, y, {test_size = 0.25, shuffle = true, seed = 0}):
-- x_train, x_test, y_train, y_test (sklearn's order); the same rows of x
-- and y go together; the order is fixed by the seed.
function M.train_test_split(x, y, o)
  o = o or {}
  for k in pairs(o) do
    if k ~= "test_size" and k ~= "shuffle" and k ~= "seed" then
      error(string.format("bad argument '%s' to 'train_test_split' (valid: test_size, shuffle, seed)", tostring(k)), 2)
    end
  end
  if not C.is_tensor(x) or (y ~= nil and not C.is_tensor(y)) then
    error("bad argument to 'train_test_split' (x and y must be tensors)", 2)
  end
  local n = x:shape()[1]
  if y and y:shape()[1] ~= n then
    error(string.format("train_test_split: x has %d samples but y has %d", n, y:shape()[1]), 2)
  end
  local size = o.test_size or 0.25
  local nt = math.type(size) == "integer" and size or math.ceil(n * size)
  if not (nt >= 1 and nt < n) then
    error(string.format("train_test_split: test_size %s leaves no training or no test samples of %d", tostring(size), n), 2)
  end
  local order = {}
  for i = 1, n do order[i] = i - 1 end
  if o.shuffle ~= false then
    -- generate's generator keyed by the seed, so math.random is untouched
    local random = require("lunet.generate").rng(o.seed or 0)
    local function rand(m) return math.floor(random() * m) end
    for i = n, 2, -1 do
      local j = rand(i) + 1
      order[i], order[j] = order[j], order[i]
    end
  end
  local train, test = {}, {}
  for i = 1, n do
    if i <= n - nt then train[#train + 1] = order[i] else test[#test + 1] = order[i] end
  end
  local xt, xv = x:index_select(1, train), x:index_select(1, test)
  if not y then return xt, xv end
  return xt, xv, y:index_select(1, train), y:index_select(1, test)
end

return M
