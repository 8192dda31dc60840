-- Tensor ops and autograd against hand-computed values and finite differences.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

function T.arithmetic_broadcast()
  local a = nn.tensor{{1, 2, 3}, {4, 5, 6}}
  local b = nn.tensor{10, 20, 30}
  check.same_table((a + b):totable(), {{11, 22, 33}, {14, 25, 36}})
  check.same_table((a - 1):totable(), {{0, 1, 2}, {3, 4, 5}})
  check.same_table((2 * a):totable(), {{2, 4, 6}, {8, 10, 12}})
  check.same_table((a / b):totable(), {{0.1, 0.1, 0.1}, {0.4, 0.25, 0.2}}, 1e-6)
  check.same_table((-a):totable(), {{-1, -2, -3}, {-4, -5, -6}})
end

function T.reductions_and_argmax()
  local a = nn.tensor{{1, 5, 3}, {4, 2, 6}}
  check.eq(a:sum():item(), 21)
  check.same_table(a:sum(1):totable(), {5, 7, 9})
  check.same_table(a:mean(2):totable(), {3, 4})
  check.same_table(a:max(2):totable(), {5, 6})
  check.same_table(a:argmax(-1):totable(), {1, 2})
end

function T.matmul_reshape_transpose_index()
  local a = nn.tensor{{1, 2}, {3, 4}, {5, 6}}
  local b = nn.tensor{{1, 0, 2}, {0, 1, 3}}
  check.same_table(a:matmul(b):totable(), {{1, 2, 8}, {3, 4, 18}, {5, 6, 28}})
  check.same_table(a:transpose():totable(), {{1, 3, 5}, {2, 4, 6}})
  check.same_table(a:reshape(2, 3):totable(), {{1, 2, 3}, {4, 5, 6}})
  check.same_table(a:reshape(-1):shape(), {6})
  check.same_table(a[2]:totable(), {3, 4})
  check.eq(a[3][2], 6)
  check.same_table(a[{{2, 3}, 1}]:totable(), {3, 5})
  check.same_table(a[{{}, {2, 2}}]:totable(), {{2}, {4}, {6}})
end

function T.assignment_and_shape_helpers()
  local t = nn.zeros(3, 4)
  t[2] = 5
  t[{{}, 4}] = nn.tensor{1, 2, 3}
  t[{3, {1, 2}}] = -1
  check.same_table(t:totable(), {{0, 0, 0, 1}, {5, 5, 5, 2}, {-1, -1, 0, 3}})
  local v = nn.zeros(3)
  v[-1] = 7
  check.same_table(v:totable(), {0, 0, 7})
  check.fails(function() t[{1, 1}] = nn.ones(2) end, "the slice has 1 elements but the value (2,) has 2")
  check.fails(function() nn.ones(2):requires_grad(true)[1] = 3 end, "cannot assign into a tensor that requires grad")
  check.same_table(nn.ones(2, 1, 3):squeeze():shape(), {2, 3})
  check.same_table(nn.ones(2, 3):unsqueeze(1):shape(), {1, 2, 3})
  check.same_table(nn.ones(2, 3):unsqueeze(-1):shape(), {2, 3, 1})
  check.same_table(nn.ones(2, 3, 4):flatten():shape(), {2, 12})
end

function T.unary_and_softmax()
  local x = nn.tensor{0, math.log(2)}
  check.same_table(x:softmax():totable(), {1 / 3, 2 / 3}, 1e-6)
  check.same_table(nn.tensor{-1, 2}:relu():totable(), {0, 2})
  check.near(nn.tensor{0}:sigmoid():totable()[1], 0.5)
  check.near(nn.tensor{1}:exp():item(), math.exp(1), 1e-6)
end

function T.constructors()
  check.same_table(nn.zeros(2, 2):totable(), {{0, 0}, {0, 0}})
  check.same_table(nn.ones{3}:totable(), {1, 1, 1})
  check.same_table(nn.arange(0, 5, 2):totable(), {0, 2, 4})
  nn.seed(3)
  local r = nn.rand(1000)
  check.near(r:mean():item(), 0.5, 0.05)
  local n = nn.randn(4000)
  check.near(n:mean():item(), 0.0, 0.1)
  nn.seed(3)
  check.same_table(nn.rand(1000):totable(), r:totable(), 0, "same seed, same numbers")
end

function T.printing()
  local s = tostring(nn.tensor{{1.5, 2}, {3, 4}})
  assert(s:find("1.5000", 1, true), s)
  assert(s:find("shape=(2, 2), dtype=float32, device=cpu", 1, true), s)
  local big = tostring(nn.zeros(100, 100))
  assert(big:find("...", 1, true) and #big < 2000, "large tensors are abridged")
end

-- d/dx of sum(f(x) * r) by central differences, against backward().
local function grad_check(f, shape)
  nn.seed(7)
  local x = nn.randn(shape)
  x:requires_grad(true)
  local r = nn.randn(f(x):shape())
  local loss = (f(x) * r):sum()
  loss:backward()
  local g = x.grad:reshape(-1):totable()
  local vals = x:reshape(-1):totable()
  local eps = 1e-2
  for k = 1, #vals, math.max(1, #vals // 8) do
    local function at(v)
      local c = {}
      for i, y in ipairs(vals) do c[i] = y end
      c[k] = v
      local t = nn.tensor(c):reshape(shape)
      return nn.no_grad(function() return (f(t) * r):sum():item() end)
    end
    local num = (at(vals[k] + eps) - at(vals[k] - eps)) / (2 * eps)
    check.near(g[k], num, 2e-2, "gradient " .. k)
  end
end

function T.autograd_elementwise()
  local w = nn.tensor{{0.5, -1, 2}}
  grad_check(function(x) return (x * w + x:exp()):tanh() end, {2, 3})
  grad_check(function(x) return x:sigmoid() / (x:square() + 1) end, {3, 2})
end

function T.autograd_matmul_reduce_softmax()
  local w = nn.tensor{{1, 2}, {0.5, -1}, {0, 3}}
  grad_check(function(x) return x:matmul(w):softmax() end, {4, 3})
  grad_check(function(x) return x:sum(2):reshape(2, 1) * x:mean(1) end, {2, 3})
  grad_check(function(x) return x:transpose():log_softmax() end, {3, 2})
end

function T.gradients_are_never_shared()
  local a = nn.tensor{1}:requires_grad(true)
  local b = nn.tensor{1}:requires_grad(true)
  ;((a * 3):sum() + (a + b):sum()):backward()
  check.eq(a.grad:item(), 4, "a.grad")
  check.eq(b.grad:item(), 1, "b.grad (an add hands one dy to both inputs)")
  local g = nn.tensor{5}
  local c = nn.tensor{2}:requires_grad(true)
  c:backward(g)
  c:backward(g)
  check.eq(g:item(), 5, "the user's gradient tensor is left alone")
  check.eq(c.grad:item(), 10, "leaf gradients accumulate")
end

function T.deep_graphs_backward_and_free()
  local x = nn.ones(1):requires_grad(true)
  local y = x
  for _ = 1, 5000 do y = y + 1 end
  y:sum():backward()
  check.eq(x.grad:item(), 1, "gradient through 5000 adds")
  y = nil
  collectgarbage()
end

function T.edge_case_gradients()
  local w = nn.zeros(3):requires_grad(true)
  w:pow(2):sum():backward()
  check.same_table(w.grad:totable(), {0, 0, 0}, 0, "d/dw w^2 at 0")
  local m = nn.ones(4):requires_grad(true)
  m:max():backward()
  check.same_table(m.grad:totable(), {0.25, 0.25, 0.25, 0.25}, 1e-7, "ties share the max's gradient")
  local x = nn.ones(2):requires_grad(true)
  ;(x:clone() * x):sum():backward()
  check.same_table(x.grad:totable(), {2, 2}, 0, "clone passes gradients")
  check.fails(function() nn.ones(3):requires_grad(true):exp():backward(nn.ones(1000)) end,
    "backward: the gradient has shape (1000,) but the tensor has shape (3,)")
end

function T.layers_keep_each_calls_state()
  local d = nn.Dense{1, use_bias = false, input_shape = {1}}
  d:set_weights{nn.tensor{{2}}}
  local w = d:weights()[1].tensor
  local y1 = d(nn.tensor{{3}})
  local _ = d(nn.tensor{{100}})
  y1:sum():backward()
  check.eq(w.grad:item(), 3, "gradient of the first call")
  local x = nn.ones(1, 1):requires_grad(true)
  local z = d(d(x)):sum()
  z:backward()
  check.eq(x.grad:item(), 4, "d(d(x))")
  check.fails(function() z:backward() end, "backward through the same call a second time")
  local y
  do
    local tmp = nn.Dense{4, input_shape = {3}}
    y = tmp(nn.ones(2, 3)):sum()
  end
  collectgarbage()
  collectgarbage()
  y:backward() -- the graph keeps its layer alive
end

-- The indexing rules: a range is {first, last} or {first, last, step = s}
-- (1-based, inclusive); anything else is an error naming the forms (a
-- list of three numbers used to read as the range 1..3, silently).
function T.indexing_rules()
  local t = nn.arange(1, 11) -- 1 .. 10
  check.same_table(t[{{2, 4}}]:totable(), {2, 3, 4}, 0, "range")
  check.same_table(t[{{1, 9, step = 3}}]:totable(), {1, 4, 7}, 0, "range with a step")
  check.same_table(t[{{2, -1, step = 4}}]:totable(), {2, 6, 10}, 0, "step to the end")
  check.same_table(t[{{}}]:totable(), t:totable(), 0, "everything")
  check.fails(function() return t[{{1, 3, 5}}] end,
    "index 1: {1, 3, 5} is not a range; a range is {first, last} or {first, last, step = s}")
  check.fails(function() return t[{{1, 3, 5}}] end, "picking entries is t:index_select(1, ids)")
  check.fails(function() return t[{{2}}] end, "{2} is not a range")
  check.fails(function() return t[{{1, 4, stride = 2}}] end, "is not a range")
  check.fails(function() return t[{{1, 4, step = 0}}] end, "step must be a positive integer")
  check.fails(function() return t[{{1.5, 4}}] end, "the range's first must be an integer")
  local m = nn.zeros(3, 6)
  m[{{}, {1, 6, step = 2}}] = 1
  check.same_table(m:totable()[2], {1, 0, 1, 0, 1, 0}, 0, "assignment with a step")
  check.same_table(nn.arange(1, 7):index_select(1, {0, 2, 4}):totable(), {1, 3, 5}, 0, "the list form")
end

function T.errors_name_shapes()
  check.fails(function() return nn.ones(2, 3) + nn.ones(4) end, "shapes (2, 3) and (4,) do not broadcast")
  check.fails(function() return nn.ones(2, 3):matmul(nn.ones(2, 3)) end, "matmul: shapes (2, 3) and (2, 3) do not fit")
  check.fails(function() return nn.ones(2):backward() end, "does not require grad")
  check.fails(function() return nn.tensor{{1, 2}, {3}} end, "ragged")
  check.fails(function() return nn.ones(2, 3, 4, 5):matmul(nn.ones(3, 2, 5, 6)) end,
    "the batch dimensions of (2, 3, 4, 5) and (3, 2, 5, 6) differ")
end

-- The fused sparse cross-entropy's gradient, (softmax - one-hot) / N times
-- the loss's gradient: from the backward's seed of 1 (the loss the root:
-- the core skips the product by 1), and from other gradients (a product,
-- a sum that hands dy to both terms, a loss added twice).
function T.cross_entropy_gradient_from_logits()
  local n, k = 5, 4
  local labels = {2, 0, 3, 3, 1}
  local x = nn.randn(n, k)
  local P = x:softmax(-1):totable()
  local xent = nn.losses.SparseCategoricalCrossentropy{from_logits = true}
  local function grad_of(f)
    local logits = x:clone():requires_grad(true)
    f(xent(nn.tensor(labels), logits)):backward()
    return logits.grad:totable()
  end
  local cases = {
    {"the loss itself", function(l) return l end, 1},
    {"the loss times 3", function(l) return l * 3 end, 3},
    {"the loss plus a constant", function(l) return l + 2 end, 1},
    {"the loss added to itself", function(l) return l + l end, 2},
  }
  for _, c in ipairs(cases) do
    local g = grad_of(c[2])
    for i = 1, n do
      for j = 1, k do
        local want = c[3] * (P[i][j] - (labels[i] == j - 1 and 1 or 0)) / n
        check.near(g[i][j], want, 1e-6, string.format("%s: dlogits[%d][%d]", c[1], i, j))
      end
    end
  end
end

-- log_softmax and the fused cross-entropy keep their digits at large
-- logits (log(sum) added to a large maximum was rounded away): values
-- worked out by hand, on every backend there is.
function T.log_softmax_of_large_logits()
  local e = math.exp(1)
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    local x = nn.tensor{{1e8, 1e8}, {1000, 1001}}:to(dev):requires_grad(true)
    local y = x:log_softmax()
    check.same_table(y:to("cpu"):totable(), {{-math.log(2), -math.log(2)}, {-math.log(1 + e), -math.log(1 + 1 / e)}},
      1e-6, dev .. ": log_softmax")
    ;(y * nn.tensor{{1, 0}, {0.5, 2}}:to(dev)):sum():backward()
    local p = 1 / (1 + e) -- softmax of 1000 in {1000, 1001}
    check.same_table(x.grad:to("cpu"):totable(), {{0.5, -0.5}, {0.5 - 2.5 * p, 2 - 2.5 * (1 - p)}}, 1e-6,
      dev .. ": its gradient, g - softmax * sum(g)")
    local loss = nn.losses.SparseCategoricalCrossentropy{from_logits = true}(nn.tensor{0, 1}:to(dev),
      nn.tensor{{1000, 1001, 997}, {1e8, 1e8, 0}}:to(dev))
    check.near(loss:item(), (math.log(1 + e + math.exp(-3)) + math.log(2)) / 2, 1e-6, dev .. ": fused cross-entropy")
  end
end

-- cumsum: a NaN or an infinity reaches only the positions after it (a
-- product with a 0/1 triangle made 0 * inf = NaN of the earlier ones);
-- finite values and the gradient (the reversed cumulative sum) as before.
-- pow's gradients take PyTorch's zeros where the formula is 0 * inf.
function T.cumsum_and_pow_at_the_edges()
  local inf = math.huge
  local y = nn.tensor{1, inf, 2, 3}:cumsum(1):totable()
  check.same_table(y, {1, inf, inf, inf}, 0, "cumsum past an infinity")
  local z = nn.tensor{1, 2, 0 / 0, 3}:cumsum(1):totable()
  check.same_table({z[1], z[2]}, {1, 3}, 0, "cumsum before a NaN")
  assert(z[3] ~= z[3] and z[4] ~= z[4], "NaN after it")
  local x = nn.tensor{{1, 2, 3}, {4, 5, 6}}:requires_grad(true)
  local c = x:cumsum(2)
  check.same_table(c:totable(), {{1, 3, 6}, {4, 9, 15}}, 0, "rows")
  ;(c * nn.tensor{{1, 10, 100}, {2, 20, 200}}):sum():backward()
  check.same_table(x.grad:totable(), {{111, 110, 100}, {222, 220, 200}}, 0, "gradient: the reversed sums")
  check.same_table(nn.tensor{{1, 2}, {3, 4}, {5, 6}}:cumsum(1):totable(), {{1, 2}, {4, 6}, {9, 12}}, 0, "axis 1")
  -- pow at base 0: d(a^0)/da = 0 and d(0^b)/db = 0 for b >= 0 (PyTorch's)
  local a = nn.tensor{0, 0, 2}:requires_grad(true)
  local b = nn.tensor{0, 2, 3}:requires_grad(true)
  a:pow(b):sum():backward()
  check.same_table(a.grad:totable(), {0, 0, 12}, 1e-6, "d/da: 0 where b = 0, b a^(b-1) elsewhere")
  check.same_table(b.grad:totable(), {0, 0, 8 * math.log(2)}, 1e-5, "d/db: 0 where a = 0, a^b ln a elsewhere")
end

-- A NaN propagates as in PyTorch: through max/min (reductions and
-- maximum/minimum), argmax (the first NaN), clip and ReLU (plain and fused
-- into a Dense), on every backend there is; so a diverged value cannot be
-- hidden behind a ReLU or a maximum.  elu is exact for small positive x.
function T.nan_propagates_as_in_pytorch()
  local nan = 0 / 0
  local function isnan(v) return v ~= v end
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    local x = nn.tensor{1, nan, 3}:to(dev)
    assert(isnan(x:max():item()) and isnan(x:min():item()), dev .. ": max and min of a NaN")
    local rows = nn.tensor{{1, nan, 3}, {2, 5, 1}}:to(dev)
    local m = rows:max(-1):to("cpu"):totable()
    assert(isnan(m[1]) and m[2] == 5, dev .. ": max along an axis")
    check.same_table(rows:argmax(-1):to("cpu"):totable(), {1, 1}, 0, dev .. ": argmax, the first NaN")
    check.same_table(nn.tensor{{nan, 1, nan}}:to(dev):argmax(-1):to("cpu"):totable(), {0}, 0, dev .. ": first of two")
    local r = nn.tensor{-1, nan, 2}:to(dev):relu():to("cpu"):totable()
    assert(r[1] == 0 and isnan(r[2]) and r[3] == 2, dev .. ": relu")
    local c = nn.tensor{-1, nan, 2}:to(dev):clip(0, 1):to("cpu"):totable()
    assert(c[1] == 0 and isnan(c[2]) and c[3] == 1, dev .. ": clip")
    local a, b = nn.tensor{nan, 0, 1}:to(dev), nn.tensor{0, nan, 2}:to(dev)
    for _, v in ipairs({a:maximum(b):to("cpu"):totable(), b:maximum(a):to("cpu"):totable()}) do
      assert(isnan(v[1]) and isnan(v[2]) and v[3] == 2, dev .. ": maximum with a NaN on either side")
    end
    local d = nn.Dense{2, activation = "relu", kernel_initializer = "ones", input_shape = {2}}
    local y = nn.Sequential{d}:to(dev)(nn.tensor{{nan, 1}, {-3, 1}}:to(dev)):to("cpu"):totable()
    assert(isnan(y[1][1]) and isnan(y[1][2]) and y[2][1] == 0, dev .. ": a Dense's fused ReLU")
  end
  local e = nn.Activation("elu")(nn.tensor{1e-8, 1e-6, -1}):totable()
  check.same_table({e[1], e[2]}, {1e-8, 1e-6}, 1e-12, "elu: small positive x exactly")
  check.near(e[3], math.exp(-1) - 1, 1e-6, "elu(-1)")
  check.fails(function() nn.tensor{{1, 2}, {3, 4}}:softmax(1) end, "over the last axis only")
  check.same_table(nn.tensor{{0, 0}}:softmax(2):totable(), {{0.5, 0.5}}, 1e-7, "softmax(last axis)")
end

-- pow's special values are C's (C99 Annex F, Lua's own ^ as the
-- reference) and tanh keeps a NaN and the digits near 0, on every backend:
-- Vulkan's pow turned NaN^2 into 0 (so a custom squared error hid a NaN)
-- and inf^0 into NaN, and its tanh(NaN) was -1 (plain, and in the LSTM and
-- GRU cells).
function T.pow_and_tanh_edges_on_every_backend()
  local nan, inf = 0 / 0, math.huge
  local xs = {nan, nan, nan, inf, 1, 1, -1, -0.0, -0.0, 0.0, -inf, -inf, 0, 2, -2, -2, 10, -3, 0.5, 4, 4}
  local es = {2, 3, inf, 0, inf, nan, -inf, -1, 3, -2, 0.5, 3, nan, -inf, 3, 0.5, 2, -1, -inf, 0.5, -1}
  local function same(a, b) -- the same value, NaN for NaN, and the sign of a zero
    if a ~= a or b ~= b then return a ~= a and b ~= b end
    return a == b and (a ~= 0 or 1 / a == 1 / b)
  end
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    local got = nn.tensor(xs):to(dev):pow(nn.tensor(es):to(dev)):to("cpu"):totable()
    for i = 1, #xs do
      local want = xs[i] ^ es[i]
      assert(same(got[i], want) or math.abs(got[i] - want) <= 1e-6 * math.abs(want),
        string.format("%s: pow(%g, %g) is %g, C says %g", dev, xs[i], es[i], got[i], want))
    end
    local se = (nn.tensor{1, nan, 3}:to(dev) - nn.tensor{1, 2, 3}:to(dev)):pow(2):mean():item()
    assert(se ~= se, dev .. ": a squared error over a NaN is NaN")
    local t = nn.tensor{nan, 1e-7, 1e-20, -0.3, 0.7, 12}:to(dev):tanh():to("cpu"):totable()
    assert(t[1] ~= t[1], dev .. ": tanh(NaN) is NaN")
    local function tanh(x) local e = math.exp(2 * x) return (e - 1) / (e + 1) end
    check.near(t[2], 1e-7, 1e-14, dev .. ": tanh(1e-7) is 1e-7")
    check.near(t[3], 1e-20, 1e-26, dev .. ": tanh(1e-20) is 1e-20")
    check.same_table({t[4], t[5], t[6]}, {tanh(-0.3), tanh(0.7), 1}, 2e-7, dev .. ": tanh")
    -- the cells' own tanh: an LSTM's NaN cell state reaches h only through
    -- tanh(c) (its gates see finite values); a GRU's NaN state through the
    -- candidate's tanh
    nn.seed(3)
    local x, h0, c0 = nn.Input{shape = {1, 1}}, nn.Input{shape = {2}}, nn.Input{shape = {2}}
    local lstm = nn.Model{inputs = {x, h0, c0}, outputs = nn.LSTM{2}(x, {initial_state = {h0, c0}})}:to(dev)
    local gru = nn.Model{inputs = {x, h0}, outputs = nn.GRU{2}(x, {initial_state = {h0}})}:to(dev)
    local x1, zero, bad = nn.tensor{{{0.5}}}:to(dev), nn.zeros(1, 2):to(dev), nn.tensor{{nan, nan}}:to(dev)
    for name, h in pairs{LSTM = lstm:predict{x1, zero, bad}, GRU = gru:predict{x1, bad}} do
      h = h:to("cpu"):totable()[1]
      assert(h[1] ~= h[1] and h[2] ~= h[2], dev .. ": " .. name .. " with a NaN state gives NaN, got " .. h[1])
    end
  end
end

-- A product with an empty side is numpy's and PyTorch's: an empty result,
-- or zeros where only the inner size is 0 (a sum of nothing), batched or
-- not, with gradients of the operands' shapes, on every backend.  Before,
-- a batched product of inner size 0 computed the first batch entry alone
-- (the rest kept what the memory held: 2.5e19 in a sum) and a batched
-- product with 0 rows or columns was an error on the CPU.
function T.empty_products_on_every_backend()
  local cases = { -- a's shape, b's shape, the result's
    {{5, 0}, {0, 4}, {5, 4}}, {{3, 5, 0}, {3, 0, 4}, {3, 5, 4}}, {{3, 5, 0}, {0, 4}, {3, 5, 4}},
    {{5, 0}, {3, 0, 4}, {3, 5, 4}}, {{3, 0, 2}, {3, 2, 4}, {3, 0, 4}}, {{3, 5, 2}, {3, 2, 0}, {3, 5, 0}},
    {{0, 5, 2}, {0, 2, 4}, {0, 5, 4}}, {{0, 2}, {2, 4}, {0, 4}},
  }
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    for _, c in ipairs(cases) do
      local what = string.format("%s: (%s) @ (%s)", dev, table.concat(c[1], "x"), table.concat(c[2], "x"))
      for _ = 1, 3 do -- memory a finished tensor held, for the result to reuse
        local dirty = (nn.ones(c[3]):to(dev) * 7):sum():item()
        assert(dirty == dirty)
      end
      local a = nn.ones(c[1]):to(dev):requires_grad(true)
      local b = nn.ones(c[2]):to(dev):requires_grad(true)
      local y = a:matmul(b)
      check.same_table(y:shape(), c[3], 0, what .. ": shape")
      local t = y:to("cpu"):reshape(-1):totable()
      for i = 1, #t do assert(t[i] == 0, string.format("%s: element %d is %g, not 0", what, i, t[i])) end
      ;(y * 2):sum():backward()
      check.same_table(a.grad:shape(), c[1], 0, what .. ": a's gradient")
      check.same_table(b.grad:shape(), c[2], 0, what .. ": b's gradient")
      for _, g in ipairs{a.grad, b.grad} do -- the operands' elements meet nothing: 0
        local gt = g:to("cpu"):reshape(-1):totable()
        for i = 1, #gt do assert(gt[i] == 0, string.format("%s: a gradient element is %g", what, gt[i])) end
      end
    end
  end
end

-- Max pooling propagates a NaN as PyTorch's max_pool2d does: the window's
-- output is NaN and the last NaN in scan order takes the gradient (torch
-- 2.x gave these values: y and x.grad), in the 2x2 fast path and the
-- general one, on every backend.  Before, a NaN after the window's first
-- value was dropped and the 2x2 gradient went to a value not chosen.
function T.max_pooling_propagates_nan_as_pytorch()
  local nan = 0 / 0
  local rows = {{3, 2, 5, 0}, {nan, 1, nan, 7}, {4, nan, 1, 1}, {0, 0, 0, 0}}
  local want = {
    [2] = {y = {nan, nan, nan, 1}, grad = {0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0}},
    [3] = {y = {nan, nan, nan, nan}, grad = {0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0}},
  }
  local img = {}
  for r = 1, 4 do
    img[r] = {}
    for c = 1, 4 do img[r][c] = {rows[r][c]} end
  end
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    for size, w in pairs(want) do
      local x = nn.tensor{img}:to(dev):requires_grad(true)
      local y = nn.MaxPooling2D{size, strides = size == 2 and 2 or 1}(x)
      y:sum():backward()
      local yf, gf = y:reshape(4):to("cpu"):totable(), x.grad:reshape(16):to("cpu"):totable()
      for i = 1, 4 do
        local a, b = yf[i], w.y[i]
        assert(a == b or (a ~= a and b ~= b), string.format("%s, pool %d: y[%d] is %s, torch %s", dev, size, i, a, b))
      end
      check.same_table(gf, w.grad, 0, string.format("%s, pool %d: the gradient", dev, size))
    end
  end
end

-- BatchNormalization's and LayerNormalization's statistics keep their
-- digits far from 0 on every backend (Vulkan's float sums lost them to the
-- mean: a constant channel of 10000.1 normalized to -0.03, not 0; rows at
-- 1000 over 4096 features 2e-3 off): against sums in double here.
function T.normalization_statistics_far_from_zero()
  local rows = {}
  for i = 1, 300 do rows[i] = {10000.1, (i % 7) * 0.5 + 1000} end
  nn.seed(4)
  local xt = nn.randn(1, 4096) + 1000
  local xr = xt:totable()[1]
  local mean, var = 0, 0
  for k = 1, 4096 do mean = mean + xr[k] end
  mean = mean / 4096
  for k = 1, 4096 do var = var + (xr[k] - mean) ^ 2 end
  var = var / 4096
  for _, dev in ipairs(check.vulkan() and {"cpu", "vulkan"} or {"cpu"}) do
    local bn = nn.Sequential{nn.BatchNormalization{input_shape = {2}}}:to(dev)
    local y = bn(nn.tensor(rows):to(dev), {training = true}):to("cpu"):totable()
    check.same_table({y[1][1], y[150][1]}, {0, 0}, 0, dev .. ": a constant channel normalizes to 0")
    local ln = nn.Sequential{nn.LayerNormalization{input_shape = {4096}}}:to(dev)
    local out = ln(xt:to(dev)):to("cpu"):totable()[1]
    local worst = 0
    for k = 1, 4096 do worst = math.max(worst, math.abs(out[k] - (xr[k] - mean) / math.sqrt(var + 1e-3))) end
    assert(worst < 2e-4, string.format("%s: LayerNormalization at 1000 over 4096 features off by %.3g", dev, worst))
  end
end

check.run(T)
