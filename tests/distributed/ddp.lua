-- Run under mpirun (2 or 3 ranks): data-parallel training must equal one
-- process on the whole batch, leave bit-identical weights on every rank,
-- and evaluate sharded to the single-process figures.
--   mpirun -np N lunet tests/distributed/ddp.lua OUT_DIR
local nn = require "lunet"
local dist = nn.distributed.init({threads = 1})
local out = assert(arg[1], "usage: ddp.lua OUT_DIR")
local rank, size = dist.rank, dist.size

local function fail(msg)
  io.stderr:write(string.format("rank %d: %s\n", rank, msg))
  dist.abort(msg)
end

local function near(a, b, tol, what)
  if math.abs(a - b) > tol * math.max(1, math.abs(b)) then
    fail(string.format("%s: %.9g against %.9g", what, a, b))
  end
end

-- Fixed data, the same on every rank: 3 blobs in 2-D images.
nn.seed(7)
local n = 203 -- not a multiple of any global batch here: uneven shards
local x = nn.randn(n, 4, 4, 1)
local labels = {}
local xs = x:totable()
for i = 1, n do
  local s = xs[i][1][1][1] + xs[i][2][2][1] - xs[i][3][3][1]
  labels[i] = s > 0.5 and 2 or (s < -0.5 and 0 or 1)
end
local y = nn.tensor(labels)

local function model(bn)
  local layers = {nn.Conv2D{4, 2, activation = "relu", input_shape = {4, 4, 1}}}
  if bn then layers[#layers + 1] = nn.BatchNormalization() end
  layers[#layers + 1] = nn.Flatten()
  layers[#layers + 1] = nn.Dense{3, activation = "softmax"}
  local m = nn.Sequential(layers)
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy", nn.metrics.AUC()}}
  m:build()
  return m
end

-- 1. One epoch without shuffling, SGD: the same as one process taking the
-- same global batches (bs * size) in order, within float reassociation.
local bs = 16
local m = model(false)
local single = model(false)
single:set_weights(m:get_weights())
nn.distributed.active = false -- the reference runs alone on each rank
local ref = single:fit(x, y, {epochs = 1, batch_size = bs * size, shuffle = false, verbose = 0})
-- the global batches a distributed epoch takes: the last one, if smaller
-- than the ranks, is left out; the reference's last batch is whatever is left
nn.distributed.active = true
local h = m:fit(x, y, {epochs = 1, batch_size = bs, shuffle = false, verbose = 0, distributed = true})
local g = bs * size
if n % g == 0 or n % g >= size then
  for i, w in ipairs(m:get_weights()) do
    local a, b = w:totable(), single:get_weights()[i]
    local diff = (w - b):abs():max():item()
    if diff > 1e-5 then fail(string.format("weight %d differs from one process by %g", i, diff)) end
  end
  near(h.loss[1], ref.loss[1], 1e-5, "epoch loss against one process")
  near(h.accuracy[1], ref.accuracy[1], 1e-9, "epoch accuracy against one process")
end

-- 1a. balance: uneven shares of each global batch (rank r takes 2r + 1 more
-- than the last) still give one process's step on the whole batch; then the
-- shares follow the ranks' measured speeds: a rank reported twice as slow a
-- sample gets half the share of the others.
do
  local shares, given = {}, 0
  for r = 1, size - 1 do shares[r] = bs - r; given = given + shares[r] end
  shares[size] = bs * size - given
  local mine, steps, sizes, totals = dist.shard(nil, 64 * size, bs, shares)
  local first = 1
  for r = 1, rank do first = first + shares[r] end
  if sizes[1] ~= shares[rank + 1] or totals[1] ~= bs * size or mine[1] ~= first or steps ~= 64 // bs then
    fail(string.format("shard with shares: size %d, total %d, first %d, steps %d", sizes[1], totals[1], mine[1], steps))
  end
  local ub, us = model(false), model(false)
  us:set_weights(ub:get_weights())
  nn.distributed.active = false
  local uref = us:fit(x, y, {epochs = 1, batch_size = bs * size, shuffle = false, verbose = 0})
  nn.distributed.active = true
  dist.balanced[bs * size] = shares
  local uh = ub:fit(x, y, {epochs = 1, batch_size = bs, shuffle = false, verbose = 0,
    distributed = {balance = true}})
  if n % g == 0 or n % g >= size then
    for i, w in ipairs(ub:get_weights()) do
      local diff = (w - us:get_weights()[i]):abs():max():item()
      if diff > 1e-5 then fail(string.format("balanced: weight %d differs from one process by %g", i, diff)) end
    end
    near(uh.loss[1], uref.loss[1], 1e-5, "balanced epoch loss against one process")
  end
  -- rank 0 twice as slow a sample as the others: g = 12 * size - 1 shared
  -- so that its step is as long as theirs (2 ranks: 23 as 7.67 and 15.33,
  -- rounded 8 and 15; 3 ranks: 35 as 7, 14 and 14)
  local gg = 12 * size - 1
  local equal = gg // size
  local new = dist.rebalance(nil, (rank == 0 and 2 or 1) * 10 * equal, 10, gg)
  local want = size == 2 and {8, 15} or {7, 14, 14}
  if not new or table.concat(new, ",") ~= table.concat(want, ",") then
    fail("rebalance gave " .. (new and table.concat(new, ",") or "nil") .. ", expected " .. table.concat(want, ","))
  end
  -- alike speeds: the shares stay (no chasing of noise)
  if dist.rebalance(nil, 10 * equal * (rank == 0 and 1.01 or 1), 10, gg) ~= nil then
    fail("rebalance moved the shares of ranks 1% apart")
  end
end

-- 1b. BatchNormalization's moving mean, averaged with each rank weighted by
-- its samples: with momentum 0 it is the last global batch's mean (203 =
-- 6 * 32 + 11 on 2 ranks, 4 * 48 + 11 on 3: shards of 6/5 and 4/4/3
-- samples, where an unweighted average of the ranks' means is off by ~1e-2).
-- The learning rate is 0, so both models keep the same weights.
local function bn_model()
  local b = nn.Sequential{nn.Conv2D{4, 2, input_shape = {4, 4, 1}}, nn.BatchNormalization{momentum = 0}, nn.Flatten(),
    nn.Dense{3, activation = "softmax"}}
  b:compile{optimizer = nn.optimizers.SGD{learning_rate = 0}, loss = "sparse_categorical_crossentropy"}
  b:build()
  return b
end
local bd, bs1 = bn_model(), bn_model()
bs1:set_weights(bd:get_weights())
nn.distributed.active = false
bs1:fit(x, y, {epochs = 1, batch_size = bs * size, shuffle = false, verbose = 0})
nn.distributed.active = true
bd:fit(x, y, {epochs = 1, batch_size = bs, shuffle = false, verbose = 0, distributed = true})
local function moving_mean(b)
  for _, w in ipairs(b.layers[2]:weights()) do
    if w.name == "moving_mean" then return w.tensor:totable() end
  end
end
local got, want = moving_mean(bd), moving_mean(bs1)
for i = 1, #want do near(got[i], want[i], 1e-5, "moving mean " .. i .. " against one process") end

-- 1c. Weights no step changes stay exactly as they were on uneven shards:
-- a frozen layer's, and an adapted Normalization's statistics (non-trainable
-- weights of a layer that trains: averaged every step, as the moving
-- statistics, in double precision and rounded once).
nn.seed(9)
local norm = nn.Normalization{input_shape = {4, 4, 1}}
norm:adapt(x)
local frozen = nn.Conv2D{4, 2}
local fm = nn.Sequential{norm, frozen, nn.Flatten(), nn.Dense{3, activation = "softmax"}}
fm:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy"}
fm:build()
frozen.trainable = false
fm:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy"}
local function bits(layer)
  local out = {}
  for _, w in ipairs(layer:weights()) do
    for _, v in ipairs(w.tensor:reshape{w.tensor:numel()}:totable()) do out[#out + 1] = string.pack("<f", v) end
  end
  return table.concat(out)
end
local before_norm, before_frozen = bits(norm), bits(frozen)
fm:fit(x, y, {epochs = 2, batch_size = 16, verbose = 0, distributed = true})
if bits(norm) ~= before_norm then fail("the Normalization's statistics moved in training") end
if bits(frozen) ~= before_frozen then fail("the frozen layer's weights moved in training") end

-- 2. Shuffled epochs with BatchNormalization: every rank ends with the
-- same bits (weights and moving statistics), written for the driver to compare.
nn.seed(100 + rank) -- different initial weights per rank: fit broadcasts rank 0's
local bn = model(true)
local bn_t0 = require("lunet.core").now()
bn:fit(x, y, {epochs = 3, batch_size = 8, verbose = 0, distributed = {balance = true}, validation_split = 0.2})
local bn_seconds = require("lunet.core").now() - bn_t0
local f = assert(io.open(string.format("%s/weights_%d.bin", out, rank), "wb"))
for _, w in ipairs(bn:get_weights()) do
  local flat = w:reshape{w:numel()}:totable()
  for _, v in ipairs(flat) do f:write(string.pack("<f", v)) end
end
f:close()

-- 3. Sharded evaluation, reduced exactly, equals one process's.
local logs = bn:evaluate(x, y, {batch_size = 10})
nn.distributed.active = false
local alone = bn:evaluate(x, y, {batch_size = 10})
nn.distributed.active = true
for k, v in pairs(alone) do near(logs[k], v, 1e-5, "sharded evaluate's " .. k) end

-- 4. A dataset (batches of 8 per rank, shuffled by its own seed: rank 0's
-- order is used): identical weights, and its sharded evaluation.
local ds = nn.data.from_tensor_slices(x, y, {batch_size = 8, shuffle = true, seed = 11 + rank})
nn.seed(200 + rank)
local dm = model(false)
dm:fit(ds, nil, {epochs = 2, verbose = 0})
local g = assert(io.open(string.format("%s/dataset_weights_%d.bin", out, rank), "wb"))
for _, w in ipairs(dm:get_weights()) do
  for _, v in ipairs(w:reshape{w:numel()}:totable()) do g:write(string.pack("<f", v)) end
end
g:close()
local dlogs = dm:evaluate(ds)
nn.distributed.active = false
local dalone = dm:evaluate(ds)
nn.distributed.active = true
for k, v in pairs(dalone) do near(dlogs[k], v, 1e-5, "sharded dataset evaluate's " .. k) end

-- 5. Checkpoints: rank 0 alone writes, and the file holds the weights every
-- rank has.
local ckpt = out .. "/ckpt.lunet"
local cm = model(false)
cm:fit(x, y, {epochs = 1, batch_size = 8, verbose = 0, callbacks = {nn.callbacks.ModelCheckpoint(ckpt)}})
dist.barrier()
local back = nn.load_model(ckpt):get_weights()
for i, w in ipairs(cm:get_weights()) do
  if (w - back[i]):abs():max():item() ~= 0 then fail("the checkpoint differs from rank " .. rank .. "'s weights") end
end

-- 6. On the Vulkan backend (lavapipe here): gradients staged through host
-- memory, the same bits on every rank.
for _, b in ipairs(nn.backends()) do
  if b.name == "vulkan" and b.available then
    nn.seed(300 + rank)
    local vm = model(false)
    vm:to("vulkan")
    vm:fit(x:to("vulkan"), y:to("vulkan"), {epochs = 1, batch_size = 16, verbose = 0})
    local v = assert(io.open(string.format("%s/vulkan_weights_%d.bin", out, rank), "wb"))
    for _, w in ipairs(vm:get_weights()) do
      for _, e in ipairs(w:to("cpu"):reshape{w:numel()}:totable()) do v:write(string.pack("<f", e)) end
    end
    v:close()
  end
end

local stats = bn.sync_stats
if not (stats and stats.steps > 0 and stats.bytes > 0) then fail("no gradient was exchanged") end
-- the work between exchanges: some, and with the waits no more than the fit
if not (stats.work_s > 0 and stats.work_s + stats.wait_s < bn_seconds) then
  fail(string.format("work %.4f s and wait %.4f s between exchanges, in a fit of %.4f s", stats.work_s, stats.wait_s,
    bn_seconds))
end
dist.barrier()
if rank == 0 then
  print(string.format("ddp: %d ranks, %d steps synchronised, %.1f KB per step", size, stats.steps,
    stats.bytes / stats.steps / 1024))
  print("ddp: ok")
end
