-- sample_weight and class_weight: weighted losses against the sums written
-- out in Lua (Keras's sum(w * loss) / N, not PyTorch's / sum(w)), their
-- gradients, and fit/evaluate/train_on_batch with weights; bad weights.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

local function rows(t) return t:totable() end

function T.weighted_losses_match_the_sums()
  nn.seed(4)
  local n = 5
  local w = {0.5, 2, 0, 1, 3}
  local wt = nn.tensor(w)
  -- mean squared error: per-sample mean over the last axis
  local p, t = nn.randn(n, 3), nn.randn(n, 3)
  local P, Tt = rows(p), rows(t)
  local want = 0
  for i = 1, n do
    local s = 0
    for j = 1, 3 do s = s + (P[i][j] - Tt[i][j]) ^ 2 end
    want = want + w[i] * s / 3
  end
  check.near(nn.losses.MeanSquaredError()(t, p, wt):item(), want / n, 1e-6, "weighted MSE")
  check.near(nn.losses.MeanSquaredError()(t, p):item(), (p - t):square():mean():item(), 1e-6, "unweighted MSE")
  -- sparse categorical cross-entropy on probabilities
  local probs = nn.randn(n, 4):softmax(-1)
  local labels = {3, 0, 1, 1, 2}
  local PR = rows(probs)
  want = 0
  for i = 1, n do want = want - w[i] * math.log(PR[i][labels[i] + 1]) end
  check.near(nn.losses.SparseCategoricalCrossentropy()(nn.tensor(labels), probs, wt):item(), want / n, 1e-5,
    "weighted sparse cross-entropy")
  -- ... and on logits, which takes another path than the fused one
  local logits = nn.randn(n, 4)
  local LP = rows(logits:softmax(-1))
  want = 0
  for i = 1, n do want = want - w[i] * math.log(LP[i][labels[i] + 1]) end
  check.near(nn.losses.SparseCategoricalCrossentropy{from_logits = true}(nn.tensor(labels), logits, wt):item(),
    want / n, 1e-5, "weighted sparse cross-entropy from logits")
  -- a sequence output: each of a sample's T rows takes its weight; / (N T)
  local seq = nn.randn(n, 2, 4):softmax(-1)
  local sl = {{0, 1}, {2, 3}, {1, 1}, {0, 0}, {3, 2}}
  local S = rows(seq)
  want = 0
  for i = 1, n do for k = 1, 2 do want = want - w[i] * math.log(S[i][k][sl[i][k] + 1]) end end
  check.near(nn.losses.SparseCategoricalCrossentropy()(nn.tensor(sl), seq, wt):item(), want / (n * 2), 1e-5,
    "a sequence's rows")
  -- KL divergence: per-row sums
  local a, b = nn.rand(n, 3):softmax(-1), nn.rand(n, 3):softmax(-1)
  local A, B = rows(a), rows(b)
  want = 0
  for i = 1, n do
    local s = 0
    for j = 1, 3 do s = s + A[i][j] * math.log(A[i][j] / B[i][j]) end
    want = want + w[i] * s
  end
  check.near(nn.losses.KLDivergence()(a, b, wt):item(), want / n, 1e-5, "weighted KL divergence")
  -- binary cross-entropy, (N, 1) weights accepted
  local pb, yb = nn.rand(n, 1) * 0.8 + 0.1, nn.tensor{{1}, {0}, {1}, {0}, {1}}
  local PB, YB = rows(pb), rows(yb)
  want = 0
  for i = 1, n do
    local q, z = PB[i][1], YB[i][1]
    want = want - w[i] * (z * math.log(q) + (1 - z) * math.log(1 - q))
  end
  check.near(nn.losses.BinaryCrossentropy()(yb, pb, wt:reshape(n, 1)):item(), want / n, 1e-5, "weighted binary CE")
end

function T.weighted_gradient_is_the_weighted_sum()
  local p = nn.tensor{{1.0, 2.0}, {3.0, -1.0}}:requires_grad(true)
  local t = nn.tensor{{0.0, 0.0}, {1.0, 1.0}}
  nn.losses.MeanSquaredError()(t, p, nn.tensor{3.0, 0.5}):backward()
  -- d/dp (1/N) sum_i w_i mean_j (p - t)^2 = w_i * 2 (p - t) / (N * K)
  check.same_table(p.grad:totable(), {{3 * 2 * 1 / 4, 3 * 2 * 2 / 4}, {0.5 * 2 * 2 / 4, 0.5 * 2 * -2 / 4}}, 1e-6,
    "gradient")
end

-- Keras divides by N: weights 1 on half the batch and 0 on the rest give
-- half the loss of that half alone (PyTorch's / sum(w) would give all of it).
function T.models_reduce_as_keras()
  nn.seed(6)
  local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {4}}}
  m:compile{optimizer = "sgd", loss = "sparse_categorical_crossentropy"}
  local x, y = nn.randn(8, 4), nn.tensor{0, 1, 2, 0, 1, 2, 0, 1}
  local half = m:test_on_batch(x[{{1, 4}}], y[{{1, 4}}])
  local w = nn.tensor{1, 1, 1, 1, 0, 0, 0, 0}
  check.near(m:test_on_batch(x, y, {sample_weight = w}), half / 2, 1e-6, "test_on_batch")
  check.near(m:evaluate(x, y, {sample_weight = w, batch_size = 8}).loss, half / 2, 1e-6, "evaluate")
  check.near(m:evaluate(x, y, {sample_weight = nn.ones(8), batch_size = 8}).loss, m:evaluate(x, y, {batch_size = 8}).loss,
    1e-6, "weights of 1 change nothing")
end

-- class_weight is sample_weight from the labels: the same training.
function T.class_weight_is_per_sample_weight_from_labels()
  local function train(opts, onehot)
    nn.seed(8)
    local x = nn.randn(12, 3)
    local labels = {0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 1, 1}
    local y = nn.tensor(labels)
    if onehot then y = nn.utils.to_categorical(y, 3) end
    local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {3}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5},
      loss = onehot and "categorical_crossentropy" or "sparse_categorical_crossentropy"}
    local h = m:fit(x, y, setmetatable({epochs = 2, batch_size = 4, shuffle = false, verbose = 0}, {__index = opts}))
    return m:get_weights()[1]:totable(), h
  end
  local cw = {[0] = 1.0, [1] = 0.25, [2] = 4.0}
  local sw = {}
  for i, c in ipairs{0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 1, 1} do sw[i] = cw[c] end
  local a = train({class_weight = cw})
  local b = train({sample_weight = nn.tensor(sw)})
  local c = train({class_weight = cw}, true)
  local plain = train({})
  check.same_table(a, b, 1e-6, "class_weight = its sample weights")
  check.same_table(c, a, 1e-5, "one-hot labels take their argmax's weight")
  assert(math.abs(a[1][1] - plain[1][1]) > 1e-4, "the weights changed nothing")
  -- both multiply
  local both = train({class_weight = cw, sample_weight = nn.full(12, 2.0)})
  local doubled = {}
  for i, v in ipairs(sw) do doubled[i] = 2 * v end
  check.same_table(both, train({sample_weight = nn.tensor(doubled)}), 1e-6, "class and sample weights multiply")
end

function T.validation_weights_and_split()
  nn.seed(9)
  local x, y = nn.randn(10, 2), nn.randn(10, 1)
  local w = nn.tensor{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0}, loss = "mse"}
  local h = m:fit(x, y, {epochs = 1, batch_size = 10, verbose = 0, validation_data = {x, y, w}})
  check.near(h.val_loss[1], m:evaluate(x, y, {sample_weight = w, batch_size = 10}).loss, 1e-6, "weighted val_loss")
  -- validation_split takes the weights of the rows it holds out
  local h2 = m:fit(x, y, {epochs = 1, batch_size = 10, verbose = 0, validation_split = 0.3, sample_weight = w})
  check.near(h2.val_loss[1], m:evaluate(x[{{8, 10}}], y[{{8, 10}}], {sample_weight = w[{{8, 10}}]}).loss, 1e-6,
    "held-out weights")
end

-- A Lua function as the loss (Keras's custom loss): a scalar, or one loss
-- per sample that the core averages with the sample weights.
function T.a_lua_function_is_a_loss()
  nn.seed(14)
  local x, y = nn.randn(16, 3), nn.randn(16, 2)
  local w = nn.rand(16) * 2
  local function train(loss, opts)
    nn.seed(2)
    local m = nn.Sequential{nn.Dense{2, input_shape = {3}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = loss}
    local h = m:fit(x, y, setmetatable({epochs = 2, batch_size = 4, shuffle = false, verbose = 0}, {__index = opts or {}}))
    return m, h
  end
  local ref, href = train("mse")
  local scalar, hs = train(function(yt, yp) return (yp - yt):square():mean() end)
  check.same_table(scalar:get_weights()[1]:totable(), ref:get_weights()[1]:totable(), 1e-6, "scalar function = mse")
  check.near(hs.loss[2], href.loss[2], 1e-6, "its logged loss")
  local per_sample = function(yt, yp) return (yp - yt):square():mean(-1) end
  local wref = train("mse", {sample_weight = w})
  local wfun = train(per_sample, {sample_weight = w})
  check.same_table(wfun:get_weights()[1]:totable(), wref:get_weights()[1]:totable(), 1e-6,
    "per-sample function with sample weights = weighted mse")
  local path = os.tmpname()
  check.fails(function() scalar:save(path) end, "its loss is a function of the program (Lua)")
  scalar:save_weights(path)
  os.remove(path)
  check.fails(function() train(function() error("my loss broke") end) end, "the loss function failed")
  check.fails(function() train(function() error("my loss broke") end) end, "my loss broke")
  check.fails(function() train(function() return 3 end) end, "returned a number, not a tensor")
  check.fails(function() train(function(yt, yp) return nn.tensor((yp - yt):abs():mean():item()) end) end,
    "no weight would train")
  -- the loss object applies sample weights as compile does
  local f = nn.losses.get(per_sample)
  local yp = nn.randn(16, 2)
  check.near(f(y, yp, w):item(), nn.losses.MeanSquaredError()(y, yp, w):item(), 1e-6, "a function loss object, weighted")
  check.fails(function() train(function(yt, yp) return (yp - yt):square():mean() end, {sample_weight = w}) end,
    "return one loss per sample")
end

function T.bad_weights_say_what_is_wrong()
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {2}}}
  m:compile{optimizer = "sgd", loss = "sparse_categorical_crossentropy"}
  local x, y = nn.randn(4, 2), nn.tensor{0, 1, 1, 0}
  check.fails(function() m:fit(x, y, {sample_weight = nn.ones(3), verbose = 0}) end,
    "sample_weight has 3 values for 4 samples")
  check.fails(function() m:fit(x, y, {class_weight = {[0] = 1}, verbose = 0}) end,
    "class_weight has no weight for class 1 (sample 2)")
  check.fails(function() m:fit(x, y, {class_weight = 2, verbose = 0}) end, "class_weight must be a table")
  check.fails(function() nn.losses.MeanSquaredError()(nn.ones(4, 2), nn.ones(4, 2), nn.ones(2)) end,
    "give one weight per sample")
end

-- A padding mask on a sequence output (Embedding{mask_zero} -> SimpleRNN
-- with return_sequences -> Dense) keeps the padded steps out of the loss as
-- Keras 3 does (losses.loss.apply_mask): sum(l * w * mask) / valid steps,
-- and out of the accuracies and MAE (its MeanMetricWrapper metrics, which
-- apply the mask unscaled); RMSE counts every step, as Keras's.  Targets at
-- padded steps change nothing, loss nor weights.
function T.a_padding_mask_keeps_padded_steps_out_of_the_loss()
  local ids = nn.tensor{{1, 2, 3, 0, 0}, {4, 5, 0, 0, 0}, {2, 2, 2, 2, 1}}
  local function model()
    nn.seed(1)
    local m = nn.Sequential{nn.Embedding{6, 3, mask_zero = true, input_shape = {5}},
      nn.SimpleRNN{4, return_sequences = true}, nn.Dense(1)}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse", metrics = {"mae", "root_mean_squared_error"}}
    return m
  end
  local y1 = {{{1}, {0}, {1}, {5}, {5}}, {{0}, {1}, {5}, {5}, {5}}, {{1}, {1}, {0}, {0}, {1}}}
  local y2 = {{{1}, {0}, {1}, {-9}, {7}}, {{0}, {1}, {3}, {-2}, {0}}, {{1}, {1}, {0}, {0}, {1}}} -- other padding targets
  local sw = {0.5, 2, 1}
  local m = model()
  local p, idt = m:predict(ids):totable(), ids:totable()
  local valid, se, ae, all, wse = 0, 0, 0, 0, 0
  for i = 1, 3 do
    for t = 1, 5 do
      local e = p[i][t][1] - y1[i][t][1]
      all = all + e * e
      if idt[i][t] ~= 0 then valid, se, ae, wse = valid + 1, se + e * e, ae + math.abs(e), wse + sw[i] * e * e end
    end
  end
  local r = m:evaluate(ids, nn.tensor(y1), {verbose = 0})
  check.near(r.loss, se / valid, 1e-5, "masked loss: the mean over the valid steps")
  check.near(r.mae, ae / valid, 1e-5, "masked MAE")
  check.near(r.root_mean_squared_error, math.sqrt(all / 15), 1e-5, "RMSE counts every step, as Keras's")
  r = m:evaluate(ids, nn.tensor(y1), {verbose = 0, sample_weight = nn.tensor(sw)})
  check.near(r.loss, wse / valid, 1e-5, "masked and weighted: sum(w l m) / valid")
  -- a loss function of one value per step is masked too; one giving a number or one per sample is not
  local fm = model()
  fm:compile{optimizer = "sgd", loss = function(yt, yp) return (yp - yt):square():mean(-1) end}
  check.near(fm:evaluate(ids, nn.tensor(y1), {verbose = 0}).loss, se / valid, 1e-5, "a per-step loss function, masked")
  fm:compile{optimizer = "sgd", loss = function(yt, yp) return (yp - yt):square():mean() end}
  check.near(fm:evaluate(ids, nn.tensor(y1), {verbose = 0}).loss, all / 15, 1e-5, "a scalar loss function runs")
  fm:compile{optimizer = "sgd", loss = function(yt, yp) return (yp - yt):square():mean(-1):mean(-1) end}
  check.near(fm:evaluate(ids, nn.tensor(y1), {verbose = 0}).loss, all / 15, 1e-5, "a per-sample loss function runs")
  -- weights per step (the C API's per-position sample weights) with the mask
  local ws, wsum = {}, 0
  for i = 1, 3 do
    ws[i] = {}
    for t = 1, 5 do
      ws[i][t] = i + t / 10
      if idt[i][t] ~= 0 then wsum = wsum + ws[i][t] * (p[i][t][1] - y1[i][t][1]) ^ 2 end
    end
  end
  local h = nn._C.model_test_step(m.handle, {ids}, {nn.tensor(y1)}, nil, nil, nil, nn.tensor(ws))
  check.near(h, wsum / valid, 1e-5, "per-step weights and the mask")
  -- training: the padded steps' targets do not matter
  local a, b = model(), model()
  local ha = a:fit(ids, nn.tensor(y1), {epochs = 2, batch_size = 3, shuffle = false, verbose = 0})
  local hb = b:fit(ids, nn.tensor(y2), {epochs = 2, batch_size = 3, shuffle = false, verbose = 0})
  check.same_table(hb.loss, ha.loss, 1e-6, "losses with other padding targets")
  check.same_table(b:predict(ids):totable(), a:predict(ids):totable(), 1e-6, "weights with other padding targets")
end

-- compile{weighted_metrics}: sample_weight and class_weight reach them
-- (metrics stay unweighted); one weighted under a taken name logs as
-- "weighted_" and the name, as Keras 3; uneven batches add up to the
-- metric over the whole set; the file keeps them.
function T.weighted_metrics_see_the_weights()
  nn.seed(2)
  local x = nn.randn(40, 5)
  local labels, w = {}, {}
  for i = 1, 40 do labels[i], w[i] = i % 3, (i % 4) * 0.5 end
  local y = nn.tensor(labels)
  local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {5}}}
  m:compile{optimizer = "sgd", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"},
    weighted_metrics = {"accuracy", nn.metrics.AUC{name = "wauc"}}}
  local r = m:evaluate(x, y, {sample_weight = nn.tensor(w), batch_size = 7, verbose = 0})
  local p = m:predict(x)
  local acc, wacc, auc = nn.metrics.SparseCategoricalAccuracy(), nn.metrics.SparseCategoricalAccuracy(), nn.metrics.AUC()
  acc:update_state(y, p)
  wacc:update_state(y, p, nn.tensor(w))
  auc:update_state(nn.utils.to_categorical(y, 3), p, nn.tensor(w))
  check.near(r.accuracy, acc:result(), 1e-6, "accuracy stays unweighted")
  check.near(r.weighted_accuracy, wacc:result(), 1e-6, "weighted accuracy")
  check.near(r.wauc, auc:result(), 1e-6, "weighted AUC")
  assert(math.abs(r.weighted_accuracy - r.accuracy) > 1e-3, "the weights changed nothing")
  -- class_weight reaches them too (Keras turns it into sample weights)
  local cw, cws = {[0] = 1, [1] = 3, [2] = 0.5}, {}
  for i = 1, 40 do cws[i] = cw[labels[i]] end
  local h = m:fit(x, y, {epochs = 1, batch_size = 40, shuffle = false, class_weight = cw, verbose = 0})
  local want = nn.metrics.SparseCategoricalAccuracy()
  want:update_state(y, p, nn.tensor(cws)) -- the predictions before the step: fit logs them
  check.near(h.weighted_accuracy[1], want:result(), 1e-6, "class weights in the weighted metric")
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  local rb = back:evaluate(x, y, {sample_weight = nn.tensor(w), verbose = 0})
  check.near(rb.weighted_accuracy, m:evaluate(x, y, {sample_weight = nn.tensor(w), verbose = 0}).weighted_accuracy, 1e-6,
    "weighted metrics saved")
  check.fails(function() m:compile{optimizer = "sgd", loss = "mse", weighted_metrics = {"nonsense"}} end,
    "bad argument 'weighted_metrics' to 'compile'")
end

-- A dataset's loader may return (x, y, sample_weight), Keras's weighted
-- batches: fit and evaluate weigh by them as they weigh tensors' weights.
function T.a_dataset_loader_gives_sample_weights()
  nn.seed(4)
  local x, y = nn.randn(6, 3), nn.randn(6, 1)
  local w = {0, 1, 2, 0.5, 0, 3}
  local function model()
    nn.seed(9)
    local m = nn.Sequential{nn.Dense{1, input_shape = {3}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
    return m
  end
  local ds = nn.data.new{n = 6, batch_size = 4, shuffle = false, load = function(idx)
    local ws = {}
    for i, k in ipairs(idx) do ws[i] = w[k] end
    return x:index_select(1, (function() local z = {} for i, k in ipairs(idx) do z[i] = k - 1 end return z end)()),
      y:index_select(1, (function() local z = {} for i, k in ipairs(idx) do z[i] = k - 1 end return z end)()), ws
  end}
  local a, b = model(), model()
  check.near(a:evaluate(ds, nil, {verbose = 0}).loss, b:evaluate(x, y, {batch_size = 4, sample_weight = nn.tensor(w),
    verbose = 0}).loss, 1e-6, "evaluate weighs a dataset's batches")
  a:fit(ds, nil, {epochs = 2, verbose = 0})
  b:fit(x, y, {epochs = 2, batch_size = 4, shuffle = false, sample_weight = nn.tensor(w), verbose = 0})
  check.same_table(a:get_weights()[1]:totable(), b:get_weights()[1]:totable(), 1e-6, "fit weighs them too")
end

check.run(T)
