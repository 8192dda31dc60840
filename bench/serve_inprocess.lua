-- bench/serve_load.py's baseline: saves the seed CIFAR CNN (random weights)
-- to MODEL, then decodes the JSON request bodies in-process and runs
-- model:predict on them in batches of 64, timed.
--   lunet bench/serve_inprocess.lua MODEL BODIES_JSON
local nn = require "lunet"
local C = require "lunet.core"
local model_path, bodies_path = arg[1], arg[2]
local seed_cnn = dofile(arg[0]:gsub("[^/]*$", "") .. "../recipes/seed_cnn.lua")
nn.seed(1)
local m = seed_cnn(nn, {32, 32, 3})
m:build()
m:save(model_path)
local f = assert(io.open(bodies_path))
local bodies = C.json_decode(f:read("a"))
f:close()
local function run(rounds)
  local images = 0
  for _ = 1, rounds do
    local batch = {}
    for i, b in ipairs(bodies) do batch[i] = C.json_decode(b).instances[1] end
    m:predict(nn.tensor(batch), {batch_size = 64})
    images = images + #batch
  end
  return images
end
run(2) -- warm-up
local t0 = C.now()
local images = run(20)
print(string.format("in-process: %.1f images/s", images / (C.now() - t0)))
