-- A backend of ABI 2.3 (tests/cpu/minor3_backend.c: the CPU backend
-- without the 2.4 to 2.6 members) loads, and a convolution's ReLU moved
-- after a max pooling, a Dense layer's bias and ReLU, the ReLU's gradient
-- in the next layer's data gradient and the optimizer's update of every
-- weight at once (2.6), run as ops of their own there: a
-- training step and a prediction give the same bits as on the CPU backend,
-- which fuses them (nn.profile names the ops each ran), with SGD, Adam and
-- RMSprop.
local nn = require "lunet"
-- (nn.backends() lists it under the name its describe() gives: "cpu")
local ok, err = pcall(nn.use, "cpu23")
assert(ok, "the ABI 2.3 backend loads: " .. tostring(err))

local function run(backend, optimizer)
  nn.use(backend)
  nn.seed(5)
  local m = nn.Sequential{nn.Conv2D{6, 3, activation = "relu", input_shape = {9, 9, 2}}, nn.MaxPooling2D(2),
    nn.Flatten(), nn.Dense{5, activation = "relu"}, nn.Dense{3}}
  m:compile{optimizer = optimizer, loss = "mse"}
  nn.seed(6)
  local x, y = nn.randn(8, 9, 9, 2), nn.randn(8, 3)
  local ops = {}
  local report = nn.profile(function() m:train_on_batch(x, y); m:train_on_batch(x, y) end, {print = false})
  for _, o in ipairs(report.ops) do ops[o.name] = o.calls end
  local out = {}
  for _, w in ipairs(m:get_weights()) do out[#out + 1] = w:to("cpu") end
  out[#out + 1] = m:predict(x):to("cpu")
  return out, ops
end

local optimizers = {
  sgd = function() return nn.optimizers.SGD{learning_rate = 0.1} end,
  adam = function() return nn.optimizers.Adam{learning_rate = 0.01, weight_decay = 0.001} end,
  rmsprop = function() return nn.optimizers.RMSprop{learning_rate = 0.01, momentum = 0.5} end,
}
for _, name in ipairs{"sgd", "adam", "rmsprop"} do
  local fused, fops = run("cpu", optimizers[name]())
  local plain, pops = run("cpu23", optimizers[name]())
  assert(fops.pool2d_relu == 2 and fops.pool2d_relu_backward == 2 and not fops.relu,
    "the CPU backend fuses the pooling and the ReLU")
  assert(fops.linear_relu == 2 and fops.linear == 2 and fops.gemm_relu_mask == 2 and not fops.relu_backward,
    "and the Dense layers' bias and ReLU into their products (the ReLU's gradient in the next one's dx)")
  assert(fops[name .. "_update_multi"] == 2 and not fops[name .. "_update"],
    "and updates the 6 weights in one call a step: " .. tostring(fops[name .. "_update_multi"]))
  assert(pops.pool2d == 2 and pops.relu == 4 and pops.relu_backward == 4 and pops.pool2d_backward == 2
    and not pops.pool2d_relu and not pops.linear and not pops.linear_relu,
    "the ABI 2.3 backend runs them as separate ops")
  assert(pops[name .. "_update"] == 12 and not pops[name .. "_update_multi"], "and one update per weight")
  for i = 1, #fused do
    local d = (fused[i] - plain[i]):abs():max():item()
    assert(d == 0, string.format("%s: result %d differs between the fused and the plain path by %g", name, i, d))
  end
end
print("backend ABI 2.3 fallback: ok")
