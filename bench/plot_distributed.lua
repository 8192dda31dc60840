-- Measured data-parallel throughput on this machine against the README's
-- cost model, as a table and a chart:
--   lunet bench/plot_distributed.lua [EPOCH_SAMPLES (2048)] [OUT.png (docs/images/distributed_scaling.png)]
-- Runs bench/bench_distributed.lua alone and under mpirun with 2, 3 and 4
-- ranks (1 thread each; more ranks than cores are oversubscribed), global
-- batch 64.  The model: a step of 64 images takes t1 (measured, one
-- process) split over p ranks that share c cores, t(p) = t1 / p * max(1,
-- p / c), plus a ring allreduce of the S gradient bytes, 2(p-1) a +
-- 2(p-1)/p S / B (a = 10 us a message; B = 25 Gb/s, and this machine's
-- shared memory, taken as the triad bandwidth of bench/peak.c's one core).
local nn = require "lunet"
local C = require "lunet.core"

local n = tonumber(arg[1] or "2048")
local out = arg[2] or (arg[0]:gsub("[^/]*$", "") .. "../docs/images/distributed_scaling.png")
local lunet = arg[-1]
local here = arg[0]:gsub("[^/]*$", "")
local cores = 2
do
  local f = io.popen("nproc")
  cores = tonumber(f:read("l")) or cores
  f:close()
end
local mpi = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe "
  .. "--mca btl_vader_single_copy_mechanism none"

local function run(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local text = f:read("a")
  f:close()
  local ips = text:match("([%d.]+) images/s")
  if not ips then error("no images/s in the output of " .. cmd .. ":\n" .. text, 0) end
  return tonumber(ips), text
end

local ranks, measured = { 1, 2, 3, 4 }, {}
for i, p in ipairs(ranks) do
  local bench = string.format("'%s' '%sbench_distributed.lua' %d", lunet, here, n)
  measured[i] = run(p == 1 and bench or string.format("%s -np %d %s", mpi, p, bench))
  print(string.format("%d rank%s: %.0f images/s measured", p, p > 1 and "s" or "", measured[i]))
end

-- the model's inputs
local t1 = 64 / measured[1] -- seconds per 64-image step on one core
local model = dofile(here .. "../recipes/seed_cnn.lua")(nn, { 32, 32, 3 })
local S = 4 * model:count_params()
local shm = dofile(here .. "peak.lua")(1).triad_gbs_1
local alpha = 10e-6
local function predicted(p, bandwidth)
  local compute = t1 / p * math.max(1, p / cores)
  local comm = p > 1 and (2 * (p - 1) * alpha + 2 * (p - 1) / p * S / bandwidth) or 0
  return 64 / (compute + comm)
end
local m25, mshm = {}, {}
print(string.format("\nmodel: t1 = %.1f ms per 64 images, S = %.2f MB, %d cores; shared memory %.1f GB/s", t1 * 1e3,
  S / 1e6, cores, shm))
print(string.format("%6s %12s %18s %24s", "ranks", "measured", "model, 25 Gb/s", "model, shared memory"))
for i, p in ipairs(ranks) do
  m25[i], mshm[i] = predicted(p, 25e9 / 8), predicted(p, shm * 1e9)
  print(string.format("%6d %12.0f %18.0f %24.0f", p, measured[i], m25[i], mshm[i]))
end
nn.plot.curve(ranks, {
  { values = measured, label = "measured" },
  { values = mshm, label = "model, shared memory", dashed = true },
  { values = m25, label = "model, 25 Gb/s", dashed = true },
}, out, { title = string.format("seed CNN, global batch 64, %d cores: images/s by ranks", cores), xlabel = "ranks",
  ylabel = "images/s", legend = "bottom_right" })
print("chart: " .. out)
