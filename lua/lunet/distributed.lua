-- nn.distributed: data-parallel training on MPI (Open MPI).
--   mpirun -np 2 lua recipes/cifar_cnn.lua --distributed
--   nn.distributed.init()  -- once, at the top of a script run by mpirun
--   model:fit(x, y, {distributed = true, ...})
-- Every rank holds the whole model; each epoch's shuffled order comes from
-- rank 0, each rank trains on its shard of every global batch (batch_size
-- per rank), and the gradients are summed per sample and divided by the
-- global sample count before the optimizer step (lua/mpi/lunet_mpi.c), so
-- the weights stay identical on every rank.  Only rank 0 prints and saves.
local C = require "lunet.core"

local M = { active = false, rank = 0, size = 1, local_rank = 0, local_size = 1 }

local mpi -- the lunet.mpi module, once initialized

local function cores()
  local f = io.open("/proc/cpuinfo")
  if not f then return 1 end
  local n = 0
  for line in f:lines() do if line:match("^processor%s*:") then n = n + 1 end end
  f:close()
  return math.max(n, 1)
end

--- init({threads}) -> nn.distributed: joins the MPI job (idempotent).
-- Threads default to the cores divided by the ranks on this machine
-- (LUNET_THREADS or threads = N overrides).  Each rank's random generator
-- is keyed by its rank (dropout differs per rank; a run is repeatable for a
-- given number of ranks).
function M.init(o)
  if M.active then return M end
  o = o or {}
  local ok, mod = pcall(require, "lunet.mpi")
  if not ok then
    error("nn.distributed: this lunet was built without Open MPI (apt-get install libopenmpi-dev openmpi-bin, "
      .. "then rebuild): " .. tostring(mod), 2)
  end
  mpi = mod
  M.rank, M.size, M.local_rank, M.local_size = mpi.init(C.version)
  M.active = true
  -- LUNET_THREADS read as the CPU backend reads it (0x4 was 4 here, an error there)
  local env, threads = os.getenv("LUNET_THREADS"), o.threads
  if threads == nil and env and env ~= "" then
    threads = env:match("^%d+$") and math.tointeger(tonumber(env))
    if not threads or threads < 1 or threads > 1024 then
      error("LUNET_THREADS=" .. env .. ": expected a whole number from 1 to 1024 (or unset it)", 2)
    end
  end
  C.threads(threads or math.max(1, cores() // M.local_size))
  C.seed(C.seed() + M.rank)
  -- MPI_Finalize when the Lua state closes (a normal exit)
  M.closer = setmetatable({}, { __gc = function() mpi.finalize() end })
  return M
end

function M.is_main() return M.rank == 0 end

function M.barrier() if mpi then mpi.barrier() end end

--- allreduce_sum({numbers}) -> {sums over the ranks} (doubles)
function M.allreduce_sum(list)
  if not mpi then return list end
  return mpi.allreduce_sum(list)
end

--- abort(message): ends the whole job at once, naming this rank.
function M.abort(msg)
  if mpi then mpi.abort(tostring(msg)) end
  error(msg, 0)
end

-- ---- the pieces fit and evaluate use ----

-- Rank 0's weights and optimizer state, to every rank: the start of a
-- distributed fit (ranks may have built their models from other seeds).
function M.broadcast_model(model)
  for _, l in ipairs(model.layers) do
    for _, w in ipairs(l:weights()) do
      if w.tensor:dtype() == "float32" then mpi.bcast_tensor(w.tensor) end
    end
  end
  local opt = model.optimizer
  local slots = C.optimizer_slots(opt.handle, #model.params)
  local have = 0
  for _, s in ipairs(slots) do for _ in pairs(s) do have = have + 1 end end
  local counts = mpi.allreduce_sum({ have })
  if counts[1] ~= have * M.size then
    error("nn.distributed: the ranks' optimizers are in different states (some have trained, some not): "
      .. "start them alike", 0)
  end
  for _, s in ipairs(slots) do for _, t in pairs(s) do mpi.bcast_tensor(t) end end
  opt.iterations = mpi.bcast_ints({ opt.iterations })[1]
end

--- agree(what, {name = integer, ...}): every rank must call a collective
-- with the same settings (a fit's samples, batch size, epochs...), else
-- their collectives stop matching: a hang or wrong sums.  Rank 0's values
-- go to every rank; where one differs every rank fails at once with the
-- same message, naming the first rank that differs and how.
function M.agree(what, settings)
  local names = {}
  for k in pairs(settings) do names[#names + 1] = k end
  table.sort(names)
  local mine = {}
  for i, k in ipairs(names) do mine[i] = assert(math.tointeger(settings[k]), "agree: integer settings expected") end
  local root = mpi.bcast_ints(M.rank == 0 and mine or #mine)
  local found = {} -- rank r's first differing setting (its index) and its value, in slots 2r+1, 2r+2
  for i = 1, 2 * M.size do found[i] = 0 end
  for i = 1, #names do
    if root[i] ~= mine[i] then
      found[2 * M.rank + 1], found[2 * M.rank + 2] = i, mine[i]
      break
    end
  end
  found = mpi.allreduce_sum(found) -- one rank's values in each slot: exact
  for r = 1, M.size - 1 do
    local i = math.tointeger(found[2 * r + 1])
    if i and i > 0 then
      error(string.format("nn.distributed: %s: the ranks must run it alike, but %s %d on rank %d, %d on rank 0", what,
        names[i], math.tointeger(found[2 * r + 2]), r, root[i]), 0)
    end
  end
end

-- The non-trainable float weights of the layers that train
-- (BatchNormalization's moving statistics): those a step may change.  A
-- frozen layer's weights stay as they are (a frozen BatchNormalization
-- runs in inference mode).
local function fixed_weights(model)
  local out = {}
  for _, l in ipairs(model.layers) do
    if l.trainable ~= false then
      for _, w in ipairs(l:weights()) do
        if not w.trainable and w.tensor:dtype() == "float32" then out[#out + 1] = w.tensor end
      end
    end
  end
  return out
end

function M.attach(model, o)
  return mpi.attach(model.handle, fixed_weights(model), o.overlap ~= false, o.bucket_bytes)
end

-- Rank 0's order of the epoch (1-based sample indices), on every rank.
function M.order(order, n)
  return mpi.bcast_ints(M.rank == 0 and order or n)
end

--- shard(order, n, bs[, shares]) -> this rank's samples for the epoch
-- (indices into the data, in step order), the steps, its batch size at
-- each step and the global batch's (all ranks') at each step.
-- A global batch is bs * size samples, rank r taking shares[r + 1] of each
-- (bs each without shares; they add up to bs * size); a last one smaller
-- is split as evenly as it goes (the first ranks take one more), and one
-- with fewer samples than ranks is left out of the epoch.
function M.shard(order, n, bs, shares)
  local g = bs * M.size
  local full = n // g
  local rest = n - full * g
  local mine, sizes, totals = {}, {}, {}
  local own, before = bs, M.rank * bs
  if shares then
    own, before = shares[M.rank + 1], 0
    for r = 1, M.rank do before = before + shares[r] end
  end
  for s = 1, full do
    local first = (s - 1) * g + before
    for i = 1, own do mine[#mine + 1] = order and order[first + i] or first + i end
    sizes[s], totals[s] = own, g
  end
  if rest >= M.size then
    local base, extra = rest // M.size, rest % M.size
    local first = full * g + M.rank * base + math.min(M.rank, extra)
    local count = base + (M.rank < extra and 1 or 0)
    for i = 1, count do mine[#mine + 1] = order and order[first + i] or first + i end
    sizes[#sizes + 1] = count
    totals[#sizes] = rest
  end
  return mine, #sizes, sizes, totals
end

-- balance's shares by global batch, kept from one fit to the next
M.balanced = {}

--- rebalance(shares, work_s, steps, g) -> the shares of a global batch of
-- g for the next epoch, the same on every rank: each rank's share follows
-- its speed in the epoch just run (its samples a step over its work
-- between exchanges, `work_s` over `steps` steps), so that the ranks
-- reach the exchange together.  The shares stay as they are unless the
-- new ones would shorten the slowest rank's step by more than 3% (no
-- chasing of noise).  shares nil: bs each.
function M.rebalance(shares, work_s, steps, g)
  local mine = shares and shares[M.rank + 1] or g // M.size
  local per = {}
  for i = 1, M.size do per[i] = 0 end
  if steps > 0 and work_s > 0 then per[M.rank + 1] = work_s / steps / mine end -- seconds a sample
  per = mpi.allreduce_sum(per)
  local rate, total = {}, 0
  for i = 1, M.size do
    if not (per[i] > 0) then return shares end -- a rank without a measure: as they were
    rate[i] = 1 / per[i]
    total = total + rate[i]
  end
  local new, given = {}, 0
  for i = 1, M.size do
    new[i] = math.max(1, math.floor(g * rate[i] / total + 0.5))
    given = given + new[i]
  end
  while given ~= g do -- rounding: the fastest rank takes or gives the difference
    local best = 1
    for i = 2, M.size do if rate[i] > rate[best] then best = i end end
    local d = given > g and math.max(-(given - g), 1 - new[best]) or g - given
    if d == 0 then break end
    new[best], given = new[best] + d, given + d
  end
  local function slowest(sh)
    local t = 0
    for i = 1, M.size do t = math.max(t, (sh and sh[i] or g // M.size) * per[i]) end
    return t
  end
  if given ~= g or slowest(new) > 0.97 * slowest(shares) then return shares end
  return new
end

--- block(n) -> first, count: this rank's contiguous share of n samples (for
-- evaluation; the first ranks take one more).
function M.block(n)
  local base, extra = n // M.size, n % M.size
  return M.rank * base + math.min(M.rank, extra) + 1, base + (M.rank < extra and 1 or 0)
end

-- The model's metrics summed over the ranks (exact: sums and counts).
function M.reduce_metrics(handle)
  local flat, lengths = C.model_metric_states(handle)
  -- a rank whose metrics are still unsized (no batch) sends zeros of the
  -- right length: ask the others for the lengths first
  local max_len = mpi.allreduce_sum(lengths)
  for i = 1, #lengths do
    if lengths[i] == 0 and max_len[i] > 0 then
      error("nn.distributed: a rank had no batch to measure (more ranks than samples?)", 0)
    end
  end
  C.model_set_metric_states(handle, mpi.allreduce_sum(flat), lengths)
end

return M
