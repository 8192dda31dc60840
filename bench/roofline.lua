-- Where the seed CNN's training step stands against this machine's limits.
--   lunet bench/roofline.lua [--batch 64] [--steps 5] [--threads N]
-- 1. The ceilings: bench/peak.c (compiled here with cc) measures the FMA
--    throughput and the memory bandwidth (STREAM triad), one core and all.
-- 2. The step: nn.profile over `steps` training steps (after one to warm
--    up) gives each layer's forward and backward time and the flops of the
--    products and convolutions inside.  Bytes are the compulsory traffic
--    from the shapes (forward: input, output, weights; backward: output
--    gradient, input, weights, input gradient, weight gradient; 4 bytes
--    each), a lower bound on what moves.
-- 3. Per layer: achieved GFLOP/s, its fraction of the all-core FMA peak,
--    its arithmetic intensity (flop/byte) and the roofline's bound,
--    min(peak, intensity * bandwidth); then the step's time by kind of op.
local nn = require "lunet"

local USAGE = "usage: lunet bench/roofline.lua [--batch N] [--steps N] [--threads N]\n"
local function usage(msg)
  io.stderr:write("roofline.lua: ", msg, "\n", USAGE)
  os.exit(2)
end
local o = { batch = 64, steps = 5 }
local i = 1
while arg[i] do
  if arg[i] == "-h" or arg[i] == "--help" then
    io.stdout:write(USAGE)
    os.exit(0)
  end
  local k, v = arg[i]:match("^%-%-(%w+)$"), arg[i + 1]
  if not (k == "batch" or k == "steps" or k == "threads") then usage("unknown argument '" .. arg[i] .. "'") end
  if not v then usage("--" .. k .. " needs a value") end
  local n = math.tointeger(tonumber(v))
  if not n or n < 1 then usage("--" .. k .. " takes a whole number of at least 1, got '" .. v .. "'") end
  o[k] = n
  i = i + 2
end
if o.threads then nn.threads(o.threads) end
local threads = nn.threads()

-- ---- the ceilings ----
local here = arg[0]:gsub("[^/]*$", "")
local peak = dofile(here .. "peak.lua")(threads)
print(string.format("machine: %d threads, %s; FMA %.0f GFLOP/s on one core, %.0f on %d; triad %.1f GB/s on one core, %.1f on %d",
  threads, peak.isa, peak.fma_gflops_1, peak.fma_gflops_all, threads, peak.triad_gbs_1, peak.triad_gbs_all, threads))

-- ---- the step ----
local seed_cnn = dofile(here .. "../recipes/seed_cnn.lua")
nn.seed(1)
local model = seed_cnn(nn, { 32, 32, 3 })
local b = o.batch
local x = (nn.rand(b, 32, 32, 3) * 255)
local ylist = {}
for k = 1, b do ylist[k] = (k - 1) % 10 end
local y = nn.tensor(ylist)
model:train_on_batch(x, y) -- warm-up: buffers, kernels
local report = nn.profile(function() for _ = 1, o.steps do model:train_on_batch(x, y) end end, { print = false })
local step_ms = report.wall_us / 1e3 / o.steps

local function numel(shape)
  local n = 1
  for _, d in ipairs(shape) do n = n * d end
  return n
end

local rows = {}
for _, l in ipairs(model.layers) do
  local r
  for _, lr in ipairs(report.layers) do if lr.name == l.name then r = lr end end
  if r then
    local xin, yout, w = b * numel(l.input_shape), b * numel(l.output_shape), l:count_params()
    local bytes = 4 * ((xin + yout + w) + (yout + xin + w + xin + w)) -- forward + backward, per step
    rows[#rows + 1] = { name = l.name, fwd = r.fus / 1e3 / o.steps, bwd = r.bus / 1e3 / o.steps,
      flops = r.flops / o.steps, bytes = bytes }
  end
end

print(string.format("\nseed CNN training step, batch %d: %.1f ms (%d steps profiled)", b, step_ms, o.steps))
print(string.format("%-16s %8s %8s %9s %9s %8s %7s %9s %7s", "layer", "fwd ms", "bwd ms", "GFLOP", "MB", "GFLOP/s",
  "peak", "flop/B", "bound"))
local total_flops, total_bytes = 0, 0
for _, r in ipairs(rows) do
  local t = (r.fwd + r.bwd) / 1e3
  local achieved = r.flops / t / 1e9
  local ai = r.flops / r.bytes
  local bound = math.min(peak.fma_gflops_all, ai * peak.triad_gbs_all)
  total_flops, total_bytes = total_flops + r.flops, total_bytes + r.bytes
  print(string.format("%-16s %8.2f %8.2f %9.3f %9.1f %8.1f %6.1f%% %9.1f %6.1f%%", r.name, r.fwd, r.bwd, r.flops / 1e9,
    r.bytes / 1e6, achieved, 100 * achieved / peak.fma_gflops_all, ai, r.flops > 0 and 100 * achieved / bound or 0))
end
local achieved = total_flops / (step_ms / 1e3) / 1e9
print(string.format("%-16s %17s %9.3f %9.1f %8.1f %6.1f%%  (the whole step: %.1f ms at peak FMA, %.1f ms at the triad's bandwidth)",
  "step", "", total_flops / 1e9, total_bytes / 1e6, achieved, 100 * achieved / peak.fma_gflops_all,
  total_flops / peak.fma_gflops_all / 1e6, total_bytes / peak.triad_gbs_all / 1e6))

-- the step's time by kind of op
local kinds = {
  { "products and convolutions", { gemm = true, conv2d = true, conv2d_backward_data = true, conv2d_backward_filter = true } },
  { "pooling", { pool2d = true, pool2d_backward = true } },
  { "activations", { relu = true, relu_backward = true, softmax = true, softmax_backward = true } },
  { "loss", { softmax_xent = true } },
  { "optimizer", { adam_update = true } },
  { "data movement", { buffer_upload = true, buffer_download = true, buffer_copy = true, strided_copy = true, cast = true } },
}
local sums, other = {}, 0
for _, r in ipairs(report.ops) do
  local found = false
  for k, kind in ipairs(kinds) do
    if kind[2][r.name] then
      sums[k] = (sums[k] or 0) + r.us
      found = true
    end
  end
  if not found then other = other + r.us end
end
print("\nwhere the step's time goes (share of the wall time):")
for k, kind in ipairs(kinds) do
  print(string.format("  %-28s %7.2f ms %6.1f%%", kind[1], (sums[k] or 0) / 1e3 / o.steps, 100 * (sums[k] or 0) / report.wall_us))
end
print(string.format("  %-28s %7.2f ms %6.1f%%", "other ops (fill, mul, sum...)", other / 1e3 / o.steps, 100 * other / report.wall_us))
print(string.format("  %-28s %7.2f ms %6.1f%%", "between ops (the framework)", (report.wall_us - report.op_us) / 1e3 / o.steps,
  100 * (report.wall_us - report.op_us) / report.wall_us))
