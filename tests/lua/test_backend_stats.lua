-- nn.backend_stats(name): the counters against work whose size is known
-- here (bytes uploaded and downloaded, the shapes of products and
-- convolutions), on the CPU and on Vulkan (lavapipe where there is no GPU).
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

local function delta(name, f)
  local a = nn.backend_stats(name)
  f()
  local b = nn.backend_stats(name)
  local d = {}
  for k, v in pairs(b) do if math.type(v) == "integer" then d[k] = v - a[k] end end
  d.gemm = b.gemm
  return d, b
end

local function last(gemm) return gemm[#gemm] end

-- A Conv2D layer's product: (N*OH*OW, KH*KW*C) x (KH*KW*C, F).
local function conv_model(backend)
  nn.seed(4)
  local m = nn.Sequential{nn.Conv2D{6, 3, input_shape = {7, 9, 2}}, nn.Flatten(), nn.Dense{3}}
  m:compile{optimizer = "sgd", loss = "mse"}
  m:build()
  if backend ~= "cpu" then m:to(backend) end
  return m
end

function T.cpu_counts()
  local values = {}
  for i = 1, 1000 do values[i] = i end
  local t
  local d = delta("cpu", function() t = nn.tensor(values) end)
  check.eq(d.bytes_up, 4000, "bytes uploaded for 1000 floats")
  d = delta("cpu", function() t:totable() end)
  check.eq(d.bytes_down, 4000, "bytes downloaded")
  local a, b = nn.randn(5, 7), nn.randn(7, 3)
  d = delta("cpu", function() a:matmul(b) end)
  check.eq(d.gemm_total, 1, "one product")
  local g = last(d.gemm)
  check.eq(g.op, "gemm", "op")
  check.same_table({g.m, g.n, g.k}, {5, 3, 7}, nil, "its shape")
  check.eq(g.flops, 2 * 5 * 3 * 7, "its flops")
  check.eq(d.dispatches >= 1, true, "parallel regions counted")
  local m = conv_model("cpu")
  local x = nn.randn(4, 7, 9, 2)
  d = delta("cpu", function() m:predict(x) end)
  local conv
  for _, e in ipairs(d.gemm) do if e.op == "conv2d" then conv = e end end
  check.same_table({conv.m, conv.n, conv.k}, {4 * 5 * 7, 6, 3 * 3 * 2}, nil, "the convolution's product")
  local s = nn.backend_stats("cpu")
  check.eq(s.submits, 0, "the CPU submits nothing")
  check.eq(s.record_ns + s.wait_ns, 0, "and records nothing nor waits (it computes as called)")
end

-- Whether the Vulkan backend updates several weights in one dispatch (nn.backends()'s detail).
local function multi_tensor()
  for _, b in ipairs(nn.backends()) do
    if b.name == "vulkan" then return b.detail:find("multi-tensor updates", 1, true) ~= nil end
  end
  return false
end

function T.vulkan_counts()
  if not check.vulkan() then return end
  local values = {}
  for i = 1, 512 do values[i] = i end
  local host = nn.tensor(values)
  local dev
  local d = delta("vulkan", function() dev = host:to("vulkan") end)
  check.eq(d.bytes_up, 2048, "bytes uploaded for 512 floats")
  d = delta("vulkan", function() dev:totable() end)
  check.eq(d.bytes_down, 2048, "bytes downloaded")
  check.eq(d.waits >= 1 and d.waits_read >= 1, true, "a read waits for the device")
  local m = conv_model("vulkan")
  local x, y = nn.randn(4, 7, 9, 2):to("vulkan"), nn.randn(4, 3):to("vulkan")
  m:train_on_batch(x, y) -- pipelines made
  local d2 = delta("vulkan", function() m:train_on_batch(x, y) end)
  check.eq(d2.pipelines, 0, "no pipeline made twice")
  check.eq(d2.waits, 1, "one wait on the device per training step (the loss's read)")
  check.eq(d2.waits_read, 1, "and it is the read")
  check.eq(d2.dispatches > 0 and d2.submits >= 1, true, "a step dispatches and submits")
  -- a batch is submitted early after LUNET_VULKAN_FLUSH commands when the
  -- other batch is done (it is at a step's start: the loss's read waited)
  local flush = tonumber(os.getenv("LUNET_VULKAN_FLUSH") or "32")
  if flush > 0 and d2.dispatches > flush then
    check.eq(d2.submits >= 2, true, string.format("flushed early (%d submits for %d dispatches)", d2.submits, d2.dispatches))
  end
  -- barriers only where a command reads or writes what one since the last
  -- wrote, or writes what one read (the optimizer's updates of different
  -- weights are independent): fewer than dispatches, but some
  -- (besides the one opening and the one closing each batch)
  check.eq(d2.barriers > 0 and d2.barriers - 2 * d2.submits < d2.dispatches, true,
    string.format("barriers between dependent commands only (%d for %d dispatches in %d batches)", d2.barriers,
      d2.dispatches, d2.submits))
  -- 8 descriptors a dispatch; an optimizer update of up to 8 weights at once binds 32
  local multi = multi_tensor() and 1 or 0
  check.eq(d2.descriptor_writes, 8 * d2.dispatches + 24 * multi,
    string.format("descriptor writes: %d for %d dispatches", d2.descriptor_writes, d2.dispatches))
  check.eq(d2.descriptor_writes > 0, true, "descriptor writes counted")
  local seen = {}
  for _, e in ipairs(d2.gemm) do seen[e.op] = e end
  check.same_table({seen.conv2d.m, seen.conv2d.n, seen.conv2d.k}, {4 * 5 * 7, 6, 18}, nil, "the forward product")
  check.same_table({seen.conv2d_backward_filter.m, seen.conv2d_backward_filter.n, seen.conv2d_backward_filter.k},
    {18, 6, 4 * 5 * 7}, nil, "the filter gradient's product")
  check.eq(seen.conv2d.workgroups > 0, true, "workgroups")
  -- split-K: this filter gradient's K (4*5*7 = 140 rows) is too short to
  -- split; one over 16*30*30 = 14,400 rows is cut into slices
  check.eq(seen.conv2d_backward_filter.workgroups < 10, true, "a short K is not split")
  nn.seed(5)
  local big = nn.Sequential{nn.Conv2D{8, 3, input_shape = {32, 32, 3}}, nn.Flatten(), nn.Dense{2}}
  big:compile{optimizer = "sgd", loss = "mse"}
  big:build()
  big:to("vulkan")
  local d3 = delta("vulkan", function() big:train_on_batch(nn.randn(16, 32, 32, 3):to("vulkan"), nn.randn(16, 2):to("vulkan")) end)
  for _, e in ipairs(d3.gemm) do seen[e.op] = e end
  check.eq(seen.conv2d_backward_filter.k, 14400, "the long K")
  check.eq(seen.conv2d_backward_filter.workgroups > 50, true,
    string.format("a long K split over more workgroups (%d)", seen.conv2d_backward_filter.workgroups))
end

-- The Vulkan targets of a training step of the CIFAR-10 CNN (the recipes')
-- at batch 64 (the README's): one wait on the device, at most half the 63 barriers a
-- step took with one after every command, no product above 10 MFLOP on
-- fewer than 256 workgroups, and no bytes moved but the batch, its labels
-- and the two scalars read back (the loss and the accuracy).
function T.vulkan_cifar_step()
  if not check.vulkan() then return end
  nn.seed(6)
  local m = dofile(here .. "../../recipes/seed_cnn.lua")(nn, {32, 32, 3})
  m:build()
  m:to("vulkan")
  local labels = {}
  for i = 1, 64 do labels[i] = (i * 7) % 10 end
  local x, y = nn.rand{64, 32, 32, 3}, nn.tensor(labels)
  m:train_on_batch(x:to("vulkan"), y:to("vulkan")) -- warm-up: pipelines, the buffer pool
  local t0 = nn._C.now()
  local d = delta("vulkan", function() m:train_on_batch(x:to("vulkan"), y:to("vulkan")) end)
  local wall = (nn._C.now() - t0) * 1e9
  check.eq(d.waits, 1, "one wait on the device a step")
  -- the host's time recording the step and waiting for it: both counted, within the wall time
  check.eq(d.record_ns > 0 and d.wait_ns > 0 and d.record_ns + d.wait_ns <= wall, true,
    string.format("recording %.2f ms + waiting %.2f ms within %.2f ms", d.record_ns / 1e6, d.wait_ns / 1e6, wall / 1e6))
  -- (batches cut every few commands, LUNET_VULKAN_FLUSH, level fewer commands together)
  if not os.getenv("LUNET_VULKAN_FLUSH") then
    check.eq(d.barriers <= 31, true, string.format("%d barriers for %d dispatches (at most 31)", d.barriers, d.dispatches))
  end
  -- Adam updates the 10 weights in 2 dispatches (8 + 2) where the device
  -- indexes arrays of buffers (32 descriptors each), else in 10
  local updates = multi_tensor() and 2 or 10
  check.eq(d.descriptor_writes, 8 * (d.dispatches - updates) + (multi_tensor() and 32 or 8) * updates,
    string.format("descriptor writes: %d for %d dispatches, %d of them updates", d.descriptor_writes,
      d.dispatches, updates))
  check.eq(d.bytes_up, (64 * 32 * 32 * 3 + 64) * 4, "bytes up: the batch and its labels")
  check.eq(d.bytes_down <= 8, true, string.format("bytes down: %d (two scalars at most)", d.bytes_down))
  check.eq(d.bytes_copied, 0, "no copies on the device")
  local n = 0
  for i = #d.gemm - d.gemm_total + 1, #d.gemm do
    local e = d.gemm[i]
    n = n + 1
    check.eq(e.flops <= 10e6 or e.workgroups >= 256, true,
      string.format("%s %dx%dx%d: %.0f MFLOP on %d workgroups", e.op, e.m, e.n, e.k, e.flops / 1e6, e.workgroups))
  end
  check.eq(n, 14, "the step's products: 5 forward, 9 backward")
end

function T.errors()
  check.fails(function() nn.backend_stats("nope") end, "no backend named 'nope'")
  check.fails(function() nn.backend_stats() end, "bad argument #1")
end

-- Thread counts and devices: a bad figure is an error that changes nothing
-- (2^32 + 3 was taken as 3; a missing device shut the working backend
-- down), and LUNET_THREADS must be a whole number (it was ignored).
function T.threads_and_devices()
  local n = nn.threads()
  check.fails(function() nn.threads(2000) end, "threads must be from 1 to 1024, got 2000")
  check.fails(function() nn.threads(2 ^ 32 + 3) end, "threads must be from 1 to 1024, got 4294967299")
  check.fails(function() nn.threads(0) end, "threads must be from 1 to 1024, got 0")
  check.eq(nn.threads(), n, "unchanged")
  check.eq(nn.threads(1), 1, "one thread")
  check.eq(nn.threads(n), n, "back")
  collectgarbage() -- the other tests' tensors (a device is picked while none live)
  check.fails(function() nn.use("cpu", { device = 5 }) end, "backend 'cpu' cannot use device 5")
  check.eq(nn.ones(3):sum():item(), 3, "the CPU still runs")
  check.eq(nn.threads(), n, "with its threads")
  local vulkan = false
  for _, b in ipairs(nn.backends()) do vulkan = vulkan or (b.name == "vulkan" and b.available) end
  if vulkan then
    check.fails(function() nn.use("vulkan", { device = 99 }) end, "backend 'vulkan' cannot use device 99")
    local x = nn.ones(2):to("vulkan")
    check.eq((x + x):to("cpu"):sum():item(), 4, "vulkan still works")
    nn.use("cpu")
  end
  local function run(env) return check.lunet(env, 'print(require("lunet").ones(2):sum():item())') end
  for _, bad in ipairs{ "abc", "0x4", "0", "4096", "-2", "3 " } do
    local out = run("LUNET_THREADS='" .. bad .. "'")
    assert(out:find("LUNET_THREADS=" .. bad .. ": expected a whole number from 1 to 1024", 1, true), bad .. ": " .. out)
  end
  local out = run("LUNET_THREADS=2")
  assert(out:find("^2"), out)
  -- a backend named in the environment says so (the name was never typed into the program)
  out = run("LUNET_BACKEND=vulcan")
  assert(out:find("LUNET_BACKEND=vulcan: no backend named 'vulcan'", 1, true), out)
end

check.run(T)
