-- nn.profile: the calls and floating-point operations it counts against
-- ones derived here from the model's shapes, its times against a timer
-- outside it, the Chrome trace file, fit{profile}, Vulkan, and errors.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local C = require "lunet.core"

local T = {}

local function op(report, name)
  for _, r in ipairs(report.ops) do if r.name == name then return r end end
  return { calls = 0, us = 0, flops = 0 }
end

local function layer(report, name)
  for _, r in ipairs(report.layers) do if r.name == name then return r end end
  error("no layer " .. name .. " in the profile")
end

-- Input(20) -> Dense(16, relu) -> Dense(4, softmax), batches of 32.
local function mlp()
  nn.seed(1)
  local m = nn.Sequential{nn.Dense{16, activation = "relu", input_shape = {20}, name = "hidden"},
    nn.Dense{4, activation = "softmax", name = "out"}}
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
  local x = nn.randn(96, 20)
  local y = nn.tensor({0, 1, 2, 3}):reshape(4, 1)
  local labels = {}
  for i = 1, 96 do labels[i] = (i - 1) % 4 end
  return m, x, nn.tensor(labels)
end

function T.counts_and_flops_of_a_fit()
  local m, x, y = mlp()
  local lines = {}
  local report = nn.profile(function() m:fit(x, y, {epochs = 1, batch_size = 32, verbose = 0}) end,
    {print = function(s) lines[#lines + 1] = s end})
  local steps, b = 3, 32
  for _, name in ipairs{"hidden", "out"} do
    check.eq(layer(report, name).fcalls, steps, name .. " forward passes")
    check.eq(layer(report, name).bcalls, steps, name .. " backward passes")
  end
  -- per step: the forward products are linear ops (hidden's with its bias
  -- and ReLU, out's with its bias); out's backward needs dW and dx (which
  -- takes hidden's ReLU gradient in its epilogue), hidden's only dW (the
  -- data needs no gradient)
  local gemm, masked = op(report, "gemm"), op(report, "gemm_relu_mask")
  check.eq(gemm.calls, 2 * steps, "backward matrix products")
  check.eq(masked.calls, steps, "out's dx, with hidden's ReLU gradient in its epilogue")
  check.eq(op(report, "linear_relu").calls, steps, "hidden's forward: the product, its bias and ReLU")
  check.eq(op(report, "linear").calls, steps, "out's forward: the product and its bias")
  check.eq(op(report, "linear_relu").flops, steps * 2 * b * 20 * 16, "hidden's forward flops")
  check.eq(op(report, "linear").flops, steps * 2 * b * 16 * 4, "out's forward flops")
  check.eq(gemm.flops, (2 * 16 * b * 4 + 2 * 20 * b * 16) * steps, "their floating-point operations")
  check.eq(masked.flops, 2 * b * 4 * 16 * steps, "and out's dx's")
  check.eq(layer(report, "hidden").flops, steps * (2 * b * 20 * 16 + 2 * 20 * b * 16), "hidden's flops")
  check.eq(op(report, "adam_update_multi").calls, steps, "one Adam update of all 4 weights a step")
  check.eq(op(report, "relu").calls, 0, "no relu forward of its own")
  check.eq(op(report, "relu_backward").calls, 0, "no relu backward of its own (out's dx took it)")
  -- the ReLU's gradient is hidden's own (its consumer's product takes it),
  -- and out's softmax is fused into the loss: no activation's gradient of
  -- its own
  local act = 0
  for _, e in ipairs(report.events) do
    if e.kind == "activation_backward" then act = act + 1 end
  end
  check.eq(act, 0, "the activations' gradients run inside their layers")
  -- the times hold together: ops run one after another inside the wall time
  check.eq(report.op_us <= report.wall_us, true, "ops within the wall time")
  for _, e in ipairs(report.events) do
    check.eq(e.ts >= 0 and e.dur >= 0 and e.ts + e.dur <= report.wall_us + 1, true, "event inside the run")
  end
  local text = table.concat(lines, "\n")
  for _, want in ipairs{"profile:", "hidden", "out", "gemm", "adam_update", "(outside layers)", "GFLOP/s"} do
    check.eq(text:find(want, 1, true) ~= nil, true, "the table shows " .. want)
  end
end

-- An activation the layer's op does not run (tanh): its gradient is timed
-- as the layer's activation_backward.
function T.activation_gradient_is_the_layers()
  nn.seed(2)
  local m = nn.Sequential{nn.Dense{8, activation = "tanh", input_shape = {5}, name = "h"}, nn.Dense{2, name = "o"}}
  m:compile{optimizer = "sgd", loss = "mse"}
  local x, y = nn.randn(16, 5), nn.randn(16, 2)
  local report = nn.profile(function() m:train_on_batch(x, y) end, {print = false})
  local act = 0
  for _, e in ipairs(report.events) do
    if e.kind == "activation_backward" then
      act = act + 1
      check.eq(e.name, "h", "the layer of an activation's gradient")
    end
  end
  check.eq(act, 1, "one activation's gradient")
  check.eq(op(report, "tanh").calls, 1, "tanh forward")
end

function T.times_against_an_outside_timer()
  local a, b = nn.randn(384, 384), nn.randn(384, 384)
  local inside
  local report = nn.profile(function()
    local t0 = C.now()
    for _ = 1, 20 do a:matmul(b) end
    inside = (C.now() - t0) * 1e6
  end, {print = false})
  local gemm = op(report, "gemm")
  check.eq(gemm.calls, 20, "products")
  check.eq(gemm.flops, 20 * 2 * 384 ^ 3, "their flops")
  -- the products are nearly all of the loop: the profile's sum of them
  -- must lie within the outside timer's figure and near it
  check.eq(gemm.us <= inside, true, string.format("gemm %.0f us within the loop's %.0f us", gemm.us, inside))
  check.eq(gemm.us >= 0.7 * inside, true, string.format("gemm %.0f us near the loop's %.0f us", gemm.us, inside))
  check.eq(report.wall_us >= inside, true, "the wall time holds the loop")
end

function T.conv_flops_and_trace_file()
  nn.seed(2)
  local m = nn.Sequential{nn.Conv2D{8, 3, padding = "same", activation = "relu", input_shape = {10, 12, 3}, name = "c"},
    nn.MaxPooling2D{2, name = "p"}, nn.Flatten{name = "f"}, nn.Dense{5, name = "d"}}
  m:compile{optimizer = "sgd", loss = "mse"}
  local x, y = nn.randn(16, 10, 12, 3), nn.randn(16, 5)
  local path = check.tmpdir() .. "/trace.json"
  local report = nn.profile(function() m:fit(x, y, {epochs = 1, batch_size = 16, verbose = 0}) end,
    {print = false, trace = path})
  local conv = 2 * 16 * 10 * 12 * 8 * 3 * 3 * 3 -- 2 N OH OW F KH KW C
  check.eq(op(report, "conv2d").flops, conv, "convolution flops")
  check.eq(op(report, "conv2d_backward_filter").flops, conv, "filter gradient flops")
  check.eq(op(report, "conv2d_backward_data").calls, 0, "no input gradient for the data")
  check.eq(op(report, "pool2d_relu").calls, 1, "one pooling pass, the convolution's ReLU in it")
  check.eq(op(report, "pool2d").calls, 0, "no plain pooling")
  check.eq(op(report, "pool2d_relu_backward").calls, 1, "its backward")
  local f = assert(io.open(path))
  local trace = C.json_decode(f:read("a"), "the trace")
  f:close()
  check.eq(#trace.traceEvents, #report.events, "every event in the trace")
  local spans = {}
  for _, e in ipairs(trace.traceEvents) do
    check.eq(e.ph, "X", "complete events")
    check.eq(type(e.ts) == "number" and type(e.dur) == "number", true, "times")
    if e.cat == "forward" and e.name == "c" then spans[#spans + 1] = e end
  end
  check.eq(#spans, 1, "the convolution's forward pass")
  -- the convolution's ReLU runs after the max pooling that reads it (the
  -- two commute; a quarter of the elements), in the pooling's own op
  local function ops_inside(layer)
    local span
    for _, e in ipairs(trace.traceEvents) do
      if e.cat == "forward" and e.name == layer then span = e end
    end
    local names = {}
    for _, e in ipairs(trace.traceEvents) do
      if e.cat == "op" and e.ts >= span.ts and e.ts + e.dur <= span.ts + span.dur + 1e-3 then
        names[#names + 1] = e.name
      end
    end
    table.sort(names)
    return table.concat(names, " ")
  end
  check.eq(ops_inside("c"), "conv2d", "the ops inside the convolution's pass")
  check.eq(ops_inside("p"), "pool2d_relu", "the ops inside the pooling's pass")
end

function T.fit_profile_option()
  local m, x, y = mlp()
  local lines = {}
  local history = m:fit(x, y, {epochs = 2, batch_size = 48, verbose = 0,
    profile = {print = function(s) lines[#lines + 1] = s end, top = 3}})
  check.eq(#history.history.loss, 2, "fit's history comes back")
  check.eq(lines[1]:find("^profile: ") ~= nil, true, "the table printed")
  local text = table.concat(lines, "\n")
  check.eq(text:find("more ops", 1, true) ~= nil, true, "top = 3 cuts the op table")
end

function T.vulkan_counts_the_same()
  if not check.vulkan() then return end
  local counts = {}
  for _, backend in ipairs{"cpu", "vulkan"} do
    local m, x, y = mlp()
    m:to(backend)
    local report = nn.profile(function() m:fit(x, y, {epochs = 1, batch_size = 32, verbose = 0}) end, {print = false})
    counts[backend] = op(report, "gemm")
    check.eq(op(report, "gemm").us > 0, true, backend .. " times its products")
  end
  check.eq(counts.vulkan.calls, counts.cpu.calls, "the same products on Vulkan")
  check.eq(counts.vulkan.flops, counts.cpu.flops, "the same flops on Vulkan")
end

function T.errors()
  check.fails(function() nn.profile() end, "a function to run expected")
  check.fails(function() nn.profile(function() end, {tarce = "x"}) end, "unknown option 'tarce'")
  check.fails(function() nn.profile(function() end, {top = 0}) end, "top must be a positive integer")
  check.fails(function() nn.profile(function() nn.profile(function() end) end, {print = false}) end,
    "profiling already")
  check.fails(function() nn.profile(function() error("inner failure") end, {print = false}) end, "inner failure")
  -- after an error the context profiles no more, and a new profile works
  local r = nn.profile(function() nn.randn(4, 4):matmul(nn.randn(4, 4)) end, {print = false})
  check.eq(op(r, "gemm").calls, 1, "a profile after a failed one")
  check.fails(function() nn.profile(function() end, {print = false, trace = "/nonexistent/dir/t.json"}) end,
    "cannot write the trace")
end

-- A layer a Lambda calls: its passes count on its own row and not again on
-- the Lambda's (whose pass spans them), so the rows and (outside layers)
-- add up to the run and no more.
function T.nested_passes_count_once()
  nn.seed(6)
  local big = nn.Dense{256, activation = "relu", name = "big"}
  local inner = nn.Lambda(function(t) return big(t) end, {name = "inner"})
  local x = nn.Input{shape = {256}}
  local m = nn.Model{inputs = x, outputs = nn.Dense{2, name = "head"}(inner(x))}
  m:compile{optimizer = "sgd", loss = "mse"}
  local xs, ys = nn.randn(256, 256), nn.randn(256, 2)
  local report = nn.profile(function() m:fit(xs, ys, {epochs = 1, batch_size = 64, verbose = 0}) end,
    {print = false})
  local sum = report.outside_share
  for _, r in ipairs(report.layers) do sum = sum + r.share end
  check.eq(sum <= 1 + 1e-6, true, string.format("the shares add up to %.3f of the run", sum))
  local b, i = layer(report, "big"), layer(report, "inner")
  check.eq(b.fcalls, 4, "big's forward passes")
  -- the product is big's; the sub-model's own time is what it adds around it
  check.eq(i.fus < b.fus, true, string.format("inner's own forward %.0f us, big's %.0f us", i.fus, b.fus))
  local spans = 0
  for _, e in ipairs(report.events) do
    if e.kind == "forward" and e.name == "inner" then spans = spans + e.dur end
  end
  check.eq(math.abs(i.fus + b.fus - spans) <= 1, true, "inner's span is its own time and big's")
end

check.run(T)
