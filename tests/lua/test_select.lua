-- Tensor ops that pick, order and accumulate (sin, cos, index_select,
-- gather, triu/tril, where, topk, argsort, cumsum): values against naive
-- Lua loops, gradients against finite differences, Vulkan against the CPU,
-- and bad input.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

-- Random values that float32 holds exactly, so picks compare with ==.
local function rand_table(r, c)
  local t = {}
  for i = 1, r do
    t[i] = {}
    for j = 1, c do t[i][j] = string.unpack("f", string.pack("f", math.random() * 4 - 2)) end
  end
  return t
end

-- d/dx sum(f(x) * w) by central differences against backward.
local function grad_check(f, x0, what)
  local x = nn.tensor(x0):requires_grad(true)
  local y = f(x)
  local w = nn.randn(table.unpack(y:shape()))
  ;(y * w):sum():backward()
  local g = x.grad:totable()
  local eps = 1e-2
  for i = 1, #x0 do
    for j = 1, #x0[i] do
      local plus, minus = {}, {}
      for a = 1, #x0 do plus[a], minus[a] = { table.unpack(x0[a]) }, { table.unpack(x0[a]) } end
      plus[i][j], minus[i][j] = x0[i][j] + eps, x0[i][j] - eps
      local fp = (f(nn.tensor(plus)) * w):sum():item()
      local fm = (f(nn.tensor(minus)) * w):sum():item()
      check.near(g[i][j], (fp - fm) / (2 * eps), 2e-2, string.format("%s gradient [%d][%d]", what, i, j))
    end
  end
end

function T.sin_and_cos()
  math.randomseed(1)
  local x0 = rand_table(3, 4)
  local s, c = nn.tensor(x0):sin():totable(), nn.tensor(x0):cos():totable()
  for i = 1, 3 do
    for j = 1, 4 do
      check.near(s[i][j], math.sin(x0[i][j]), 1e-6, "sin")
      check.near(c[i][j], math.cos(x0[i][j]), 1e-6, "cos")
    end
  end
  grad_check(function(x) return x:sin() end, x0, "sin")
  grad_check(function(x) return x:cos() end, x0, "cos")
end

function T.index_select_and_gather()
  math.randomseed(2)
  local x0 = rand_table(4, 5)
  local y = nn.tensor(x0):index_select(1, {3, 0, 3}):totable()
  for k, r in ipairs{4, 1, 4} do check.same_table(y[k], x0[r], 1e-7, "row") end
  local yc = nn.tensor(x0):index_select(-1, nn.tensor({4, 1}, "int32")):totable()
  for i = 1, 4 do check.same_table(yc[i], {x0[i][5], x0[i][2]}, 1e-7, "column") end
  -- torch.gather along axis 2 and 1
  local idx = {{0, 4, 4}, {1, 1, 0}, {2, 3, 2}}
  local g = nn.tensor(x0):gather(2, nn.tensor(idx, "int32")):totable()
  for i = 1, 3 do for j = 1, 3 do check.near(g[i][j], x0[i][idx[i][j] + 1], 0, "gather axis 2") end end
  local idx1 = {{3, 0, 1, 2, 3}, {0, 0, 0, 0, 0}}
  local g1 = nn.tensor(x0):gather(1, nn.tensor(idx1)):totable()
  for i = 1, 2 do for j = 1, 5 do check.near(g1[i][j], x0[idx1[i][j] + 1][j], 0, "gather axis 1") end end
  -- repeated ids add their gradients
  grad_check(function(x) return x:index_select(1, {3, 0, 3, 3}) end, x0, "index_select")
  grad_check(function(x) return x:gather(2, nn.tensor(idx, "int32")) end, x0, "gather")
  check.fails(function() nn.tensor(x0):index_select(1, {4}) end, "index_select: index 4 (entry 1) is outside [0, 4) on axis 1")
  check.fails(function() nn.tensor(x0):index_select(1, {1.5}) end, "ids must be whole numbers")
  check.fails(function() nn.tensor(x0):gather(2, nn.tensor{{5}}) end, "gather: index 5 (entry 1) is not a whole number in [0, 5)")
  check.fails(function() nn.tensor(x0):gather(1, nn.tensor{1, 2}) end, "gather: the index (2,) must have the rank of the input (4, 5)")
end

function T.triangles_and_where()
  math.randomseed(3)
  local x0 = rand_table(3, 4)
  for _, k in ipairs{-1, 0, 2} do
    local u, l = nn.tensor(x0):triu(k):totable(), nn.tensor(x0):tril(k):totable()
    for i = 1, 3 do
      for j = 1, 4 do
        check.near(u[i][j], (j - i >= k) and x0[i][j] or 0, 0, "triu")
        check.near(l[i][j], (j - i <= k) and x0[i][j] or 0, 0, "tril")
      end
    end
  end
  grad_check(function(x) return x:triu(1) end, x0, "triu")
  -- where is exact: the branch not taken never enters the arithmetic
  local w = nn.where(nn.tensor{1, 0, 1}, nn.tensor{1 / 0, 2, 3}, nn.tensor{4, 0 / 0, -1 / 0}):totable()
  check.eq(w[1], math.huge, "inf kept")
  check.eq(w[2] ~= w[2], true, "NaN picked")
  check.eq(w[3], 3, "value")
  local cond = nn.tensor{{1}, {0}, {1}} -- broadcasts over the columns
  local b0 = rand_table(3, 4)
  grad_check(function(x) return nn.where(cond, x, nn.tensor(b0)) end, x0, "where")
  local wb = nn.where(cond, nn.tensor(x0), 0):totable()
  for i = 1, 3 do for j = 1, 4 do check.near(wb[i][j], i == 2 and 0 or x0[i][j], 0, "where with a number") end end
  check.fails(function() nn.where(nn.tensor{1, 0}, nn.tensor{1, 2, 3}, 0) end, "do not broadcast together")
end

function T.topk_argsort_cumsum()
  math.randomseed(4)
  local x0 = rand_table(3, 6)
  local v, i = nn.tensor(x0):topk(3)
  check.eq(i:dtype(), "int32", "indices are int32")
  local vt, it = v:totable(), i:totable()
  for r = 1, 3 do
    local sorted = { table.unpack(x0[r]) }
    table.sort(sorted, function(a, b) return a > b end)
    for k = 1, 3 do
      check.near(vt[r][k], sorted[k], 0, "topk value")
      check.near(x0[r][it[r][k] + 1], sorted[k], 0, "topk index")
    end
  end
  local sv = nn.tensor(x0):topk(2, 1, false):totable() -- smallest two down each column
  for c = 1, 6 do
    local col = { x0[1][c], x0[2][c], x0[3][c] }
    table.sort(col)
    check.near(sv[1][c], col[1], 0, "smallest")
    check.near(sv[2][c], col[2], 0, "second smallest")
  end
  grad_check(function(x) return (x:topk(2)) end, x0, "topk")
  -- argsort is stable: ties keep their order
  check.same_table(nn.tensor{3, 1, 2, 1}:argsort():totable(), {1, 3, 2, 0}, 0, "ascending, stable")
  check.same_table(nn.tensor{3, 1, 2, 1}:argsort(1, true):totable(), {0, 2, 1, 3}, 0, "descending, stable")
  local cs = nn.tensor(x0):cumsum(2):totable()
  for r = 1, 3 do
    local acc = 0
    for c = 1, 6 do
      acc = acc + x0[r][c]
      check.near(cs[r][c], acc, 1e-5, "cumsum")
    end
  end
  check.same_table(nn.tensor{1, 2, 3}:cumsum():totable(), {1, 3, 6}, 0, "a vector")
  grad_check(function(x) return x:cumsum(1) end, x0, "cumsum")
  check.fails(function() nn.tensor(x0):topk(7) end, "topk: k = 7 is outside [0, 6]")
end

-- Every op on Vulkan (lavapipe here) against the CPU, gradients included.
function T.vulkan_agrees_with_the_cpu()
  if not check.vulkan() then return end
  math.randomseed(5)
  local x0 = rand_table(4, 5)
  local idx = nn.tensor({{0, 3, 3, 1, 2}, {1, 1, 0, 3, 3}}, "int32")
  local ops = {
    function(x) return x:sin() + x:cos() end,
    function(x) return x:index_select(1, {3, 0, 3}) end,
    function(x) return x:gather(1, idx:to(x:device())) end,
    function(x) return x:triu(1) + x:tril(-2) end,
    function(x) return (x:topk(2)) end,
    function(x) return x:cumsum(2) end,
    function(x) return nn.where(x:eq(x), x * 2, 0) end,
  }
  for k, f in ipairs(ops) do
    local results = {}
    for _, dev in ipairs{"cpu", "vulkan"} do
      local x = nn.tensor(x0):to(dev):requires_grad(true)
      local y = f(x)
      y:sum():backward()
      results[dev] = { y:to("cpu"):totable(), x.grad:to("cpu"):totable() }
    end
    check.same_table(results.vulkan[1], results.cpu[1], 1e-5, "op " .. k .. " value")
    check.same_table(results.vulkan[2], results.cpu[2], 1e-5, "op " .. k .. " gradient")
  end
end

check.run(T)
