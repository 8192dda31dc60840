-- Training and inference throughput of the CIFAR-10 example CNN in lunet.
--
--   lunet bench/bench_cnn.lua [--backend NAME] [--threads N]
--                             [--batches 32,64,128] [--seconds S]
--                             [--repeats R] [--infer-batch B] [--json]
--                             [--stats [--gpu h200|laptop]]
--                             [--policy float32|mixed_bfloat16]
--
-- --policy: the dtype policy the model is made under (mixed_bfloat16: the
-- products in bfloat16, nn.mixed_precision).
--
-- --stats: instead of timing, one training step per batch size (after
-- warm-up) with the backend's counters for it (nn.backend_stats: dispatches,
-- barriers, submits, waits and their causes, descriptor writes, pipelines
-- made, allocations, bytes up, down and copied, the product dispatches and
-- their workgroups, and those above 10 MFLOP that launch fewer than 256
-- workgroups), the host's time recording and submitting the step's
-- commands, waiting for the device and in the core (record_ns, wait_ns
-- and the rest of the step's wall time), and an estimate of the
-- step on a named GPU: the products at its FP32 peak, the bytes up and down
-- over its PCIe link and a launch cost per dispatch (a lower bound: the
-- other kernels' memory traffic is not counted).  Presets: h200 (67
-- TFLOP/s, PCIe 5 at 55 GB/s, 4 us a launch), laptop (5 TFLOP/s, PCIe 4 x8
-- at 12 GB/s, 8 us).
--
-- A training step is model:train_on_batch: the core's step (forward, loss,
-- backward, Adam update, metrics, all in C), the call model:fit makes per
-- batch.  fit's own per-batch work (row gathering, progress bar) is left
-- out, so these figures are the model's cost, not the loop's.  Inference is
-- model:predict on one batch.
--
-- Each measurement: warm-up steps, then R timed runs of about S seconds
-- each; the figure is the median of the R runs' images/s.  The data is
-- random (nn.rand), which does not change the arithmetic.
local nn = require "lunet"
local C = nn._C

local USAGE = "usage: lunet bench/bench_cnn.lua [--backend NAME] [--threads N] [--batches 32,64,128]\n"
  .. "       [--seconds S] [--repeats R] [--infer-batch B] [--json] [--stats [--gpu h200|laptop]]\n"
  .. "       [--policy float32|mixed_bfloat16]\n"

local function usage(msg)
  io.stderr:write("bench_cnn.lua: ", msg, "\n", USAGE)
  os.exit(2)
end

local function parse_args(argv)
  local o = { batches = { 32, 64, 128 }, seconds = 3, repeats = 3, infer_batch = 256, json = false }
  local i = 1
  local function value(name)
    i = i + 1
    if argv[i] == nil then usage(name .. " needs a value") end
    return argv[i]
  end
  local function number(name)
    local v = tonumber(value(name))
    if not v or v <= 0 then usage(name .. " needs a positive number") end
    return v
  end
  while i <= #argv do
    local a = argv[i]
    if a == "--backend" then o.backend = value(a)
    elseif a == "--threads" then o.threads = math.tointeger(number(a)) or usage("--threads needs an integer")
    elseif a == "--seconds" then o.seconds = number(a)
    elseif a == "--repeats" then o.repeats = math.tointeger(number(a)) or usage("--repeats needs an integer")
    elseif a == "--infer-batch" then o.infer_batch = math.tointeger(number(a)) or usage("--infer-batch needs an integer")
    elseif a == "--json" then o.json = true
    elseif a == "--stats" then o.stats = true
    elseif a == "--gpu" then o.gpu = value(a)
    elseif a == "--policy" then o.policy = value(a)
    elseif a == "--batches" then
      o.batches = {}
      for b in value(a):gmatch("[^,]+") do
        local n = math.tointeger(tonumber(b))
        if not n or n < 1 then usage("--batches takes positive integers separated by commas, e.g. 32,64,128") end
        o.batches[#o.batches + 1] = n
      end
    elseif a == "-h" or a == "--help" then
      io.stdout:write(USAGE)
      os.exit(0)
    else usage("unknown argument '" .. a .. "'") end
    i = i + 1
  end
  return o
end

local function build_model()
  local m = nn.Sequential{
    nn.Conv2D{32, 3, activation = "relu", input_shape = {32, 32, 3}}, nn.MaxPooling2D(2),
    nn.Conv2D{64, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Conv2D{128, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Flatten(), nn.Dense{512, activation = "relu"}, nn.Dense{10, activation = "softmax"}}
  m:compile{optimizer = nn.optimizers.Adam{}, loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  m:build()
  return m
end

-- Integer class labels 0..9 as a float tensor, as the dataset loaders give.
local function labels(n)
  local t = {}
  for i = 1, n do t[i] = (i * 7) % 10 end
  return nn.tensor(t)
end

local function median(v)
  local s = {}
  for i, x in ipairs(v) do s[i] = x end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

-- Runs fn until `seconds` have passed (at least 2 calls); images/s.
local function timed(fn, batch, seconds)
  local t0, count = C.now(), 0
  repeat
    fn()
    count = count + 1
  until count >= 2 and C.now() - t0 >= seconds
  return count * batch / (C.now() - t0)
end

local function measure(fn, batch, o)
  for _ = 1, 3 do fn() end -- warm-up: first-touch allocations, pools, caches
  local runs = {}
  for r = 1, o.repeats do runs[r] = timed(fn, batch, o.seconds) end
  return median(runs), runs
end

local function train_fn(m, batch)
  local x, y = nn.rand{batch, 32, 32, 3}, labels(batch)
  return function()
    local l = m:train_on_batch(x, y)
    if l ~= l then error("the loss became NaN") end
  end
end

local function infer_fn(m, batch)
  local x = nn.rand{batch, 32, 32, 3}
  return function()
    local p = m:predict(x, { batch_size = batch })
    p:free()
  end
end

local function backend_info(name)
  for _, b in ipairs(nn.backends()) do
    if b.name == name then return b end
  end
  return { name = name, device = "?", detail = "?" }
end

local function json_str(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local gpus = {
  h200 = { name = "NVIDIA H200", flops = 67e12, link = 55e9, launch = 4e-6 },
  laptop = { name = "a laptop GPU", flops = 5e12, link = 12e9, launch = 8e-6 },
}

-- One training step's counters per batch size, and the GPU estimate.
local function stats(m, o, backend)
  local gpu = gpus[o.gpu or "h200"] or usage("--gpu takes h200 or laptop")
  for _, b in ipairs(o.batches) do
    local step = train_fn(m, b)
    for _ = 1, 3 do step() end
    local before = nn.backend_stats(backend)
    local t0 = C.now()
    step()
    local wall = C.now() - t0
    local after = nn.backend_stats(backend)
    local d = {}
    for k, v in pairs(after) do if math.type(v) == "integer" then d[k] = v - before[k] end end
    local n = math.min(d.gemm_total, #after.gemm)
    local flops, small, fewest = 0, 0, math.huge
    for i = #after.gemm - n + 1, #after.gemm do
      local g = after.gemm[i]
      flops = flops + g.flops
      if g.flops > 10e6 and g.workgroups < 256 then small = small + 1 end
      fewest = math.min(fewest, g.workgroups)
    end
    print(string.format("batch %d, one training step on %s (%.1f ms wall):", b, backend, wall * 1e3))
    for _, k in ipairs{"dispatches", "barriers", "submits", "waits", "waits_read", "waits_sync", "descriptor_writes",
      "pipelines", "allocations", "bytes_up", "bytes_down", "bytes_copied", "gemm_total"} do
      print(string.format("  %-18s %12d", k, d[k]))
    end
    print(string.format("  host: %.2f ms recording and submitting commands, %.2f ms waiting for the device, "
      .. "%.2f ms the rest (the core's own work)", d.record_ns / 1e6, d.wait_ns / 1e6,
      wall * 1e3 - (d.record_ns + d.wait_ns) / 1e6))
    print(string.format("  products: %d, %.3f GFLOP, fewest workgroups %s; above 10 MFLOP with fewer than 256 "
      .. "workgroups: %d", n, flops / 1e9, n > 0 and tostring(fewest) or "-", small))
    local est = flops / gpu.flops + (d.bytes_up + d.bytes_down) / gpu.link + d.dispatches * gpu.launch
    print(string.format("  on %s (a lower bound): products %.3f ms + transfers %.3f ms + %d launches %.3f ms = "
      .. "%.3f ms a step, %.0f images/s", gpu.name, flops / gpu.flops * 1e3,
      (d.bytes_up + d.bytes_down) / gpu.link * 1e3, d.dispatches, d.dispatches * gpu.launch * 1e3, est * 1e3, b / est))
  end
end

local function main(argv)
  local o = parse_args(argv)
  if o.backend then
    local ok, err = pcall(nn.use, o.backend)
    if not ok then usage("--backend " .. o.backend .. ": " .. tostring(err):gsub("^[^:\n]*%.lua:%d+: ", "")) end
  end
  if o.threads then nn.threads(o.threads) end
  if o.policy then nn.mixed_precision.set_global_policy(o.policy) end
  nn.seed(1)
  local info = backend_info(nn.default_backend())
  local threads = nn.threads()
  if not o.json then
    print(string.format("backend: %s (%s) - %s", info.name, info.device, info.detail))
    print(string.format("threads: %d   OPENBLAS_CORETYPE=%s", threads, os.getenv("OPENBLAS_CORETYPE") or "(unset)"))
    print(string.format("timing: 3 warm-up steps, then median of %d runs of %.1f s each", o.repeats, o.seconds))
    print(string.format("policy: %s", nn.mixed_precision.global_policy()))
  end
  local m = build_model()
  if o.stats then return stats(m, o, nn.default_backend()) end
  local train = {}
  for _, b in ipairs(o.batches) do
    local med, runs = measure(train_fn(m, b), b, o)
    collectgarbage()
    train[#train + 1] = { batch = b, ips = med }
    if not o.json then
      local r = {}
      for i, v in ipairs(runs) do r[i] = string.format("%.0f", v) end
      print(string.format("train  batch %4d: %8.1f images/s  (runs: %s)", b, med, table.concat(r, ", ")))
    end
  end
  local inf = measure(infer_fn(m, o.infer_batch), o.infer_batch, o)
  if not o.json then
    print(string.format("infer  batch %4d: %8.1f images/s", o.infer_batch, inf))
    return
  end
  local parts = {}
  for _, t in ipairs(train) do parts[#parts + 1] = string.format('"%d":%.2f', t.batch, t.ips) end
  print(string.format('{"impl":"lunet","backend":%s,"detail":%s,"threads":%d,"policy":%s,"train":{%s},"infer":{"%d":%.2f}}',
    json_str(info.name), json_str(info.detail), threads, json_str(nn.mixed_precision.global_policy()),
    table.concat(parts, ","), o.infer_batch, inf))
end

main(arg or {})
