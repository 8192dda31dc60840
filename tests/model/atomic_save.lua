-- The saving side of atomic_save.sh.  Usage:
--   lunet atomic_save.lua PATH init        one save (weights all 0), then exit
--   lunet atomic_save.lua PATH save        saves for ever, weights all 1, 2, 3, ...
--   lunet atomic_save.lua PATH checkpoint  fit for ever with ModelCheckpoint(PATH)
--   lunet atomic_save.lua PATH verify      PATH loads, and its weights are all one value
-- The model is large enough (about 4 MB) that a save takes a while, so a
-- kill at a random moment often lands inside one.
local nn = require "lunet"
local path, mode = arg[1], arg[2]

local function model()
  nn.seed(1)
  local m = nn.Sequential{nn.Dense{1000, input_shape = {1000}}, nn.Dense{4}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "mse"}
  return m
end

local function fill(m, v)
  local ws = m:get_weights()
  for i, w in ipairs(ws) do ws[i] = nn.full(w:shape(), v) end
  m:set_weights(ws)
end

if mode == "init" then
  local m = model()
  fill(m, 0)
  m:save(path)
elseif mode == "save" then
  local m = model()
  io.stdout:write("saving\n")
  io.stdout:flush()
  for k = 1, math.huge do
    fill(m, k)
    m:save(path)
  end
elseif mode == "checkpoint" then
  local m = model()
  local x, y = nn.rand({8, 1000}), nn.rand({8, 4})
  io.stdout:write("saving\n")
  io.stdout:flush()
  m:fit(x, y, {epochs = 1000000, batch_size = 8, verbose = 0,
    callbacks = {nn.callbacks.ModelCheckpoint{path}}})
elseif mode == "verify" then
  local m = nn.load_model(path) -- a torn file fails here: sizes are checked against the header
  local first
  for _, w in ipairs(m:get_weights()) do
    local lo, hi = w:min():item(), w:max():item()
    first = first or lo
    if arg[3] == "uniform" and (lo ~= first or hi ~= first) then
      error(string.format("%s mixes two saves: weights from %g to %g", path, math.min(lo, first), hi))
    end
  end
  print(string.format("verify: ok (%s)", arg[3] == "uniform" and ("all " .. first) or "loads"))
else
  error("usage: atomic_save.lua PATH init|save|checkpoint|verify [uniform]")
end
