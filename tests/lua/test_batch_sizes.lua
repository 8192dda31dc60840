-- Issue 12: the CPU kernels split work by threads and by batch (the small-k
-- convolution, the pooling and activation passes, OpenBLAS underneath), so
-- a result could depend on how many rows a call gets or how many threads
-- share it.  On the seed CNN: predictions of batches of 1 to 512 rows equal
-- each row predicted alone, and one SGD step on a batch moves the weights
-- by the mean of the per-row steps (the mean loss's gradient is the mean of
-- the rows' gradients), on 1 and on 2 threads.  The reference is the
-- batch-of-one path on one thread, an independent partition of the same
-- arithmetic; the kernels themselves are held to naive loops and PyTorch
-- elsewhere.  Run under LUNET_CPU_ISA=avx512|avx2|scalar by ctest.
local nn = require "lunet"
local here = arg[0]:gsub("[^/]*$", "")
local check = dofile(here .. "check.lua")
local seed_cnn = dofile(here .. "../../recipes/seed_cnn.lua")

local SIZES = {1, 2, 3, 5, 31, 64, 65, 127, 512}
local N = SIZES[#SIZES]

local function rows(t, a, b) return t[{{a, b}}] end

-- Largest |a - b| over all entries of two lists of tensors.
local function max_diff(a, b)
  local m = 0
  for i = 1, #a do m = math.max(m, (a[i] - b[i]):abs():max():item()) end
  return m
end

local function max_abs(a)
  local m = 0
  for i = 1, #a do m = math.max(m, a[i]:abs():max():item()) end
  return m
end

local function sgd_model()
  nn.seed(12)
  local m = seed_cnn(nn, {32, 32, 3})
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "sparse_categorical_crossentropy"}
  return m
end

-- w0 - w after one step from w0 on (x, y): the step, i.e. the gradient (lr 1).
local function step(m, w0, x, y)
  m:set_weights(w0)
  m:train_on_batch(x, y)
  local w, d = m:get_weights(), {}
  for i = 1, #w0 do d[i] = w0[i] - w[i] end
  return d
end

check.run{
  batches_and_threads = function()
    nn.seed(3)
    local x = nn.rand(N, 32, 32, 3) * 255
    local labels = {}
    for i = 1, N do labels[i] = (i * 7) % 10 end
    local y = nn.tensor(labels)
    local m = sgd_model()
    local w0 = m:get_weights()

    -- The reference: every row alone, on one thread.
    nn.threads(1)
    local pred1 = {}
    for i = 1, N do pred1[i] = m:predict(rows(x, i, i), {batch_size = 1}) end
    local mean_step, sum = {}, nil
    local want = {}
    for _, b in ipairs(SIZES) do want[b] = true end
    for i = 1, N do
      local d = step(m, w0, rows(x, i, i), rows(y, i, i))
      if sum then
        for k = 1, #sum do sum[k] = sum[k] + d[k] end
      else
        sum = d
      end
      if want[i] then
        mean_step[i] = {}
        for k = 1, #sum do mean_step[i][k] = sum[k] / i end
      end
    end

    for _, threads in ipairs{1, 2} do
      nn.threads(threads)
      for _, b in ipairs(SIZES) do
        m:set_weights(w0)
        local p = m:predict(rows(x, 1, b), {batch_size = b})
        local worst = 0
        for i = 1, b do worst = math.max(worst, (rows(p, i, i) - pred1[i]):abs():max():item()) end
        if worst > 2e-6 then
          error(string.format("%d threads, batch %d: a row's prediction differs from the row alone by %.3g", threads, b, worst))
        end
        local d = step(m, w0, rows(x, 1, b), rows(y, 1, b))
        local err, scale = max_diff(d, mean_step[b]), max_abs(mean_step[b])
        if err > 1e-4 * scale then
          error(string.format("%d threads, batch %d: the step differs from the mean of the rows' steps by %.3g (largest entry %.3g)",
            threads, b, err, scale))
        end
      end
    end
  end,
}
