-- Data-parallel throughput of the seed CIFAR CNN (batch 64 globally):
--   lunet bench/bench_distributed.lua [EPOCH_SAMPLES]                 one process
--   mpirun -np 2 lunet bench/bench_distributed.lua [EPOCH_SAMPLES] [overlap|blocking]
-- Synthetic 32x32x3 uint8 images; one warm-up epoch, then one timed epoch.
-- Prints images/s and, under MPI, the time in communication: the
-- allreduce wait exposed after backward, the copies of the gradients to
-- host memory, and the bytes per step; and each rank's work and wait a
-- step (the ranks' imbalance).  BENCH_BALANCE=1: distributed = {balance = true}.
local nn = require "lunet"
local n = tonumber(arg[1] or "2048")
local mode = arg[2] or "overlap"
local mpi = os.getenv("OMPI_COMM_WORLD_SIZE") ~= nil
local dist = mpi and nn.distributed.init({threads = 1}) or nil
if not dist then nn.threads(1) end
local size = dist and dist.size or 1
local seed_cnn = dofile(arg[0]:gsub("[^/]*$", "") .. "../recipes/seed_cnn.lua")
nn.seed(1)
local C = require "lunet.core"
local x = nn.rand(n, 32, 32, 3) * 255 -- the model rescales by 1/255, as the recipe's
local labels = {}
for i = 1, n do labels[i] = i % 10 end
local y = nn.tensor(labels)
local model = seed_cnn(nn, {32, 32, 3})
local bs = tonumber(os.getenv("BENCH_BATCH") or "") or 64 // size -- per rank
local o = {epochs = 1, batch_size = bs, verbose = 0}
if dist then
  o.distributed = {overlap = mode ~= "blocking", bucket_bytes = tonumber(os.getenv("BENCH_BUCKET") or ""),
    balance = os.getenv("BENCH_BALANCE") == "1"}
end
model:fit(x, y, o) -- warm-up: buffers, pools
local t0 = C.now()
model:fit(x, y, o)
local seconds = C.now() - t0
-- each rank's work (data, forward, backward, optimizer) and wait a step, in
-- ms: a rank slower than another for the whole run makes the other wait
local per_rank = {}
if dist then
  local s = model.sync_stats
  for i = 1, 2 * size do per_rank[i] = 0 end
  per_rank[2 * dist.rank + 1] = s.work_s / math.max(1, s.steps - 1) * 1e3
  per_rank[2 * dist.rank + 2] = s.wait_s / s.steps * 1e3
  per_rank = dist.allreduce_sum(per_rank)
end
if not dist or dist.rank == 0 then
  local line = string.format("ranks %d, threads 1 each, global batch %d: %.1f images/s (%.2f s for %d images)",
    size, bs * size, n / seconds, seconds, n)
  if dist then
    local s = model.sync_stats
    line = line .. string.format("; %s: wait %.3f s, copies %.3f s, sync total %.3f s, %.0f KB per step in %.1f buckets",
      mode, s.wait_s, s.copy_s, s.sync_s, s.bytes / s.steps / 1024, s.buckets / s.steps)
    local work, wait = {}, {}
    for r = 0, size - 1 do
      work[#work + 1] = string.format("%.2f", per_rank[2 * r + 1])
      wait[#wait + 1] = string.format("%.2f", per_rank[2 * r + 2])
    end
    line = line .. string.format("; a step by rank: work %s ms, wait %s ms", table.concat(work, " / "),
      table.concat(wait, " / "))
  end
  print(line)
end
