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
  check.eq(nn.backend_stats("cpu").submits, 0, "the CPU submits nothing")
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
  check.eq(d2.descriptor_writes % d2.dispatches, 0, "the same descriptor writes per dispatch")
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

function T.errors()
  check.fails(function() nn.backend_stats("nope") end, "no backend named 'nope'")
  check.fails(function() nn.backend_stats() end, "bad argument #1")
end

check.run(T)
