-- nn.metrics objects (Precision, Recall, AUC, top-k, F1Score, MeanIoU, MAE,
-- RMSE, R2Score): each against the definition computed here in plain Lua on
-- random data with ties and empty classes, fed in uneven batches (the
-- state must add up exactly), in compile and evaluate, on logits, on the
-- Vulkan backend, and the errors.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

-- Fixed pseudo-random data: scores in steps of 1/16 (so ties happen, and
-- the same in float32 as here).
local function data(n, k, seed)
  math.randomseed(seed)
  local labels, scores, onehot = {}, {}, {}
  for i = 1, n do
    labels[i] = math.random(0, k - 1)
    if labels[i] == k - 1 and i % 3 ~= 0 then labels[i] = 0 end -- a rare class
    scores[i], onehot[i] = {}, {}
    for c = 1, k do
      local s = math.random(0, 16) / 16
      if c - 1 == labels[i] then s = math.min(1, s + 0.25) end -- better than chance
      scores[i][c] = s
      onehot[i][c] = c - 1 == labels[i] and 1 or 0
    end
  end
  return labels, scores, onehot
end

local function rows(list, first, last)
  local out = {}
  for i = first, math.min(last, #list) do out[#out + 1] = list[i] end
  return out
end

-- Feeds the metric in batches of 7, 1 and 50 rows (uneven on purpose).
local function feed(metric, y, p)
  local at, sizes, s = 1, {7, 1, 50}, 1
  while at <= #y do
    local last = at + sizes[s] - 1
    metric:update_state(nn.tensor(rows(y, at, last)), nn.tensor(rows(p, at, last)))
    at, s = last + 1, s % #sizes + 1
  end
  return metric:result()
end

local function ratio(a, b) return b ~= 0 and a / b or 0 end

function T.precision_recall_every_element_and_one_class()
  local _, scores, onehot = data(200, 4, 1)
  for _, th in ipairs({0.5, 0.3}) do
    for _, class_id in ipairs({false, 2}) do
      local tp, pp, ap = 0, 0, 0
      for i = 1, #scores do
        for c = 1, 4 do
          if not class_id or c - 1 == class_id then
            local pos, act = scores[i][c] > th, onehot[i][c] ~= 0
            if pos and act then tp = tp + 1 end
            if pos then pp = pp + 1 end
            if act then ap = ap + 1 end
          end
        end
      end
      local o = {thresholds = th, class_id = class_id or nil}
      check.near(feed(nn.metrics.Precision(o), onehot, scores), tp / pp, 1e-12, "precision " .. th)
      check.near(feed(nn.metrics.Recall(o), onehot, scores), tp / ap, 1e-12, "recall " .. th)
    end
  end
  -- class ids with class_id: one-hot on the device
  local labels, s2 = data(60, 3, 2)
  local tp, pp = 0, 0
  for i = 1, #labels do
    if s2[i][2] > 0.5 then
      pp = pp + 1
      if labels[i] == 1 then tp = tp + 1 end
    end
  end
  check.near(feed(nn.metrics.Precision{class_id = 1}, labels, s2), tp / pp, 1e-12, "precision from ids")
  check.eq(nn.metrics.Precision():result(), 0, "nothing seen: 0, as Keras")
end

-- Keras's AUC from counts at its 200 thresholds, all on the host.
local function keras_auc(y, p, pr)
  local t = 200
  local th = {-1e-7}
  for i = 1, t - 2 do th[#th + 1] = i / (t - 1) end
  th[t] = 1 + 1e-7
  local tp, fp, fn, tn = {}, {}, {}, {}
  for j = 1, t do
    tp[j], fp[j], fn[j], tn[j] = 0, 0, 0, 0
    local f = th[j] -- the scores here are multiples of 1/16, never on a threshold
    for i = 1, #y do
      local pos = p[i] > f
      if y[i] ~= 0 then
        if pos then tp[j] = tp[j] + 1 else fn[j] = fn[j] + 1 end
      elseif pos then fp[j] = fp[j] + 1 else tn[j] = tn[j] + 1 end
    end
  end
  local area = 0
  for j = 1, t - 1 do
    if not pr then
      local x0, x1 = ratio(fp[j], fp[j] + tn[j]), ratio(fp[j + 1], fp[j + 1] + tn[j + 1])
      local y0, y1 = ratio(tp[j], tp[j] + fn[j]), ratio(tp[j + 1], tp[j + 1] + fn[j + 1])
      area = area + (x0 - x1) * (y0 + y1) / 2
    else
      local dtp = tp[j] - tp[j + 1]
      local p0, p1 = tp[j] + fp[j], tp[j + 1] + fp[j + 1]
      local slope = ratio(dtp, math.max(p0 - p1, 0))
      local intercept = tp[j + 1] - slope * p1
      local pratio = (p0 > 0 and p1 > 0) and p0 / p1 or 1
      area = area + ratio(slope * (dtp + intercept * math.log(pratio)), math.max(tp[j + 1] + fn[j + 1], 0))
    end
  end
  return area
end

-- The exact ROC AUC: the chance a positive outscores a negative (ties 1/2).
local function exact_roc(y, p)
  local wins, pairs_ = 0, 0
  for i = 1, #y do
    if y[i] ~= 0 then
      for j = 1, #y do
        if y[j] == 0 then
          pairs_ = pairs_ + 1
          wins = wins + (p[i] > p[j] and 1 or p[i] == p[j] and 0.5 or 0)
        end
      end
    end
  end
  return wins / pairs_
end

-- Average precision (scikit-learn's): the precision at each positive, by rank.
local function average_precision(y, p)
  local order = {}
  for i = 1, #y do order[i] = i end
  table.sort(order, function(a, b) return p[a] > p[b] end)
  local tp, positives, ap = 0, 0, 0
  for _, v in ipairs(y) do if v ~= 0 then positives = positives + 1 end end
  for rank, i in ipairs(order) do
    if y[i] ~= 0 then
      tp = tp + 1
      ap = ap + tp / rank / positives
    end
  end
  return ap
end

function T.auc_as_keras_counts_it_and_near_the_exact_area()
  local _, scores, onehot = data(300, 3, 3)
  local y, p = {}, {}
  for i = 1, #scores do y[i], p[i] = onehot[i][1], scores[i][1] end
  local roc = feed(nn.metrics.AUC(), y, p)
  check.near(roc, keras_auc(y, p, false), 1e-9, "ROC as Keras counts it")
  check.near(roc, exact_roc(y, p), 1e-2, "ROC near the exact area")
  local pr = feed(nn.metrics.AUC{curve = "PR"}, y, p)
  check.near(pr, keras_auc(y, p, true), 1e-9, "PR as Keras interpolates it")
  -- continuous scores: the 200 buckets come within 1e-2 of the exact values
  math.randomseed(9)
  local yc, pc = {}, {}
  for i = 1, 2000 do
    yc[i] = math.random() < 0.3 and 1 or 0
    pc[i] = math.min(1, math.max(0, (yc[i] == 1 and 0.6 or 0.4) + (math.random() - 0.5) * 0.8))
  end
  check.near(feed(nn.metrics.AUC(), yc, pc), exact_roc(yc, pc), 1e-2, "continuous ROC")
  check.near(feed(nn.metrics.AUC{curve = "PR"}, yc, pc), average_precision(yc, pc), 1e-2, "continuous PR")
  -- multi-class scores with one-hot targets: every element counts (Keras's multi_label = false)
  local flat_y, flat_p = {}, {}
  for i = 1, #scores do
    for c = 1, 3 do flat_y[#flat_y + 1], flat_p[#flat_p + 1] = onehot[i][c], scores[i][c] end
  end
  check.near(feed(nn.metrics.AUC(), onehot, scores), keras_auc(flat_y, flat_p, false), 1e-9, "flattened")
  -- from logits: a sigmoid first
  local logits = {}
  for i = 1, #pc do logits[i] = math.log(math.max(pc[i], 1e-6) / math.max(1 - pc[i], 1e-6)) end
  check.near(feed(nn.metrics.AUC{from_logits = true}, yc, logits), feed(nn.metrics.AUC(), yc, pc), 1e-3, "logits")
  check.fails(function() nn.metrics.AUC():update_state({0, 1}, {-0.5, 2}) end,
    "predictions from -0.5 to 2, outside [0, 1] (AUC thresholds probabilities: give it from_logits = true")
end

function T.top_k_counts_ties_in()
  local labels, scores, onehot = data(150, 6, 4)
  for _, k in ipairs({1, 2, 5}) do
    local hits = 0
    for i = 1, #labels do
      local mine, above = scores[i][labels[i] + 1], 0
      for c = 1, 6 do if scores[i][c] > mine then above = above + 1 end end
      if above < k then hits = hits + 1 end
    end
    check.near(feed(nn.metrics.SparseTopKCategoricalAccuracy{k = k}, labels, scores), hits / #labels, 1e-12,
      "sparse top-" .. k)
    check.near(feed(nn.metrics.TopKCategoricalAccuracy(k), onehot, scores), hits / #labels, 1e-12, "top-" .. k)
  end
  -- a hand case: a tie at the boundary counts in (tf.math.in_top_k)
  local m = nn.metrics.SparseTopKCategoricalAccuracy{k = 1}
  m:update_state({1, 0}, {{0.5, 0.5, 0}, {0.2, 0.7, 0.1}})
  check.eq(m:result(), 0.5, "tie")
  check.fails(function() nn.metrics.SparseTopKCategoricalAccuracy():update_state({3}, {{0.5, 0.5, 0}}) end,
    "1 of 1 labels are not class ids in [0, 3)")
end

function T.f1_per_class_and_averages()
  local labels, scores, onehot = data(120, 4, 5)
  for _, th in ipairs({false, 0.4}) do
    local tp, pp, ap = {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}
    for i = 1, #scores do
      local mx = math.max(table.unpack(scores[i]))
      for c = 1, 4 do
        local pos
        if th then pos = scores[i][c] > th else pos = scores[i][c] == mx and scores[i][c] > 1e-9 end
        if pos then pp[c] = pp[c] + 1 end
        if onehot[i][c] == 1 then ap[c] = ap[c] + 1 end
        if pos and onehot[i][c] == 1 then tp[c] = tp[c] + 1 end
      end
    end
    -- Keras's FBetaScore, with its epsilons of 1e-7
    local function f1_of(t, p_, a_)
      local p, r = t / (p_ + 1e-7), t / (a_ + 1e-7)
      return 2 * p * r / (p + r + 1e-7)
    end
    local f1, macro, weighted, n = {}, 0, 0, #scores
    local stp, spp, sap = 0, 0, 0
    for c = 1, 4 do
      f1[c] = f1_of(tp[c], pp[c], ap[c])
      macro, weighted = macro + f1[c] / 4, weighted + f1[c] * ap[c] / (n + 1e-7)
      stp, spp, sap = stp + tp[c], spp + pp[c], sap + ap[c]
    end
    local t = th or nil
    check.same_table(feed(nn.metrics.F1Score{average = false, threshold = t}, onehot, scores), f1, 1e-12, "per class")
    check.near(feed(nn.metrics.F1Score{threshold = t}, onehot, scores), macro, 1e-12, "macro")
    check.near(feed(nn.metrics.F1Score{average = "weighted", threshold = t}, labels, scores), weighted, 1e-12,
      "weighted, from class ids")
    check.near(feed(nn.metrics.F1Score{average = "micro", threshold = t}, onehot, scores), f1_of(stp, spp, sap),
      1e-12, "micro")
  end
  -- the epsilons show under small weights: Keras's 0.49995, not 0.5
  local small = nn.metrics.F1Score{threshold = 0.5}
  small:update_state(nn.tensor{{1, 0}, {0, 0}}, nn.tensor{{0.6, 0.2}, {0.2, 0.3}}, nn.tensor{0.001, 0.001})
  local p = 0.001 / (0.001 + 1e-7)
  check.near(small:result(), (2 * p * p / (2 * p + 1e-7)) / 2, 1e-9, "macro F1 under weights of 0.001")
  assert(math.abs(small:result() - 0.5) > 2e-5, "the epsilons count: " .. small:result())
end

function T.mean_iou_from_ids_and_scores()
  local labels, scores = data(200, 5, 6)
  local pred = {}
  for i = 1, #scores do
    local best = 1
    for c = 2, 5 do if scores[i][c] > scores[i][best] then best = c end end
    pred[i] = best - 1
  end
  labels[1], pred[1] = 4, 4 -- class 4 is rare; make sure it appears once
  local cm = {}
  for a = 0, 5 do cm[a] = {} for b = 0, 5 do cm[a][b] = 0 end end
  for i = 1, #labels do cm[labels[i]][pred[i]] = cm[labels[i]][pred[i]] + 1 end
  local sum, valid = 0, 0
  for c = 0, 5 do -- class 5 never appears: left out of the mean (Keras)
    local row, col = 0, 0
    for j = 0, 5 do row, col = row + cm[c][j], col + cm[j][c] end
    local denom = row + col - cm[c][c]
    if denom > 0 then sum, valid = sum + cm[c][c] / denom, valid + 1 end
  end
  check.near(feed(nn.metrics.MeanIoU(6), labels, pred), sum / valid, 1e-12, "ids")
  scores[1] = {0, 0, 0, 0, 1} -- the argmax of row 1 is class 4, as pred[1]
  for _, r in ipairs(scores) do r[6] = -1 end
  check.near(feed(nn.metrics.MeanIoU{num_classes = 6}, labels, scores), sum / valid, 1e-12, "scores by argmax")
  check.fails(function() nn.metrics.MeanIoU(3):update_state({0, 5}, {0, 1}) end,
    "1 of 2 positions have a label or prediction that is not a class id in [0, 3)")
  check.fails(function() nn.metrics.MeanIoU() end, "MeanIoU needs num_classes")
end

function T.regression_errors_and_r2()
  math.randomseed(7)
  local y, p, n = {}, {}, 90
  for i = 1, n do
    y[i] = {math.random() * 4, math.random() - 2}
    p[i] = {y[i][1] + (math.random() - 0.5), y[i][2] * 0.5}
  end
  local abs, sq, res, sy, syy = 0, 0, {0, 0}, {0, 0}, {0, 0}
  for i = 1, n do
    for c = 1, 2 do
      local e = y[i][c] - p[i][c]
      abs, sq = abs + math.abs(e), sq + e * e
      res[c], sy[c], syy[c] = res[c] + e * e, sy[c] + y[i][c], syy[c] + y[i][c] ^ 2
    end
  end
  local r2, tot = {}, {}
  for c = 1, 2 do
    local mean = sy[c] / n
    tot[c] = 0
    for i = 1, n do tot[c] = tot[c] + (y[i][c] - mean) ^ 2 end
    r2[c] = 1 - res[c] / tot[c]
  end
  check.near(feed(nn.metrics.MeanAbsoluteError(), y, p), abs / (2 * n), 1e-5, "MAE")
  check.near(feed(nn.metrics.RootMeanSquaredError(), y, p), math.sqrt(sq / (2 * n)), 1e-5, "RMSE")
  check.near(feed(nn.metrics.R2Score(), y, p), (r2[1] + r2[2]) / 2, 1e-4, "R2 uniform")
  check.near(feed(nn.metrics.R2Score{class_aggregation = "variance_weighted"}, y, p),
    1 - (res[1] + res[2]) / (tot[1] + tot[2]), 1e-4, "R2 variance-weighted")
  check.same_table(feed(nn.metrics.R2Score{class_aggregation = false}, y, p), r2, 1e-4, "R2 per column")
end

function T.state_adds_across_objects_and_resets()
  local _, scores, onehot = data(80, 3, 8)
  local whole = nn.metrics.AUC{curve = "PR"}
  whole:update_state(onehot, scores)
  local a, b = nn.metrics.AUC{curve = "PR"}, nn.metrics.AUC{curve = "PR"}
  a:update_state(rows(onehot, 1, 33), rows(scores, 1, 33))
  b:update_state(rows(onehot, 34, 80), rows(scores, 34, 80))
  a:merge_state(b)
  check.near(a:result(), whole:result(), 1e-12, "merged halves")
  check.same_table(a:state(), whole:state(), 0, "merged state")
  local c = nn.metrics.AUC{curve = "PR"}:set_state(whole:state())
  check.near(c:result(), whole:result(), 0, "state set")
  check.fails(function() a:merge_state(nn.metrics.AUC()) end, "another kind or options")
  a:reset_state()
  check.eq(a:result(), 0, "reset")
  check.eq(tostring(nn.metrics.AUC{curve = "PR", name = "pr"}), "<metric pr: AUC(curve=PR,name=pr)>")
end

-- A binary classifier on fixed data: compile's metrics equal the objects
-- run on predict's output, and logits are turned into probabilities.
local function binary_case(from_logits)
  nn.seed(4)
  local x, y = nn.randn(64, 3), {}
  local xs = x:totable()
  for i = 1, 64 do y[i] = {(xs[i][1] + 0.5 * xs[i][2] > 0) and 1 or 0} end
  local model = nn.Sequential{nn.Dense{4, activation = "relu", input_shape = {3}},
    nn.Dense{1, activation = not from_logits and "sigmoid" or nil}}
  model:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.05},
    loss = nn.losses.BinaryCrossentropy{from_logits = from_logits},
    metrics = {"precision", nn.metrics.Recall(), nn.metrics.AUC{name = "auc_roc"}, nn.metrics.AUC{curve = "PR"},
      "accuracy", nn.metrics.F1Score{threshold = 0.5}}}
  model:fit(x, nn.tensor(y), {epochs = 3, batch_size = 16, verbose = 0})
  local logs = model:evaluate(x, nn.tensor(y), {batch_size = 10, verbose = 0, return_dict = true})
  -- the metrics' specs are saved with the model and compiled again on load
  local path = check.tmpdir() .. "/binary.lunet"
  model:save(path)
  local again = nn.load_model(path):evaluate(x, nn.tensor(y), {batch_size = 10, verbose = 0, return_dict = true})
  for k, v in pairs(logs) do check.near(again[k], v, 1e-6, "loaded model's " .. k) end
  local p = model:predict(x, {verbose = 0})
  if from_logits then p = p:sigmoid() end
  local expect = {precision = nn.metrics.Precision(), recall = nn.metrics.Recall(), auc_roc = nn.metrics.AUC(),
    auc = nn.metrics.AUC{curve = "PR"}, f1_score = nn.metrics.F1Score{threshold = 0.5}}
  for k, m in pairs(expect) do
    m:update_state(nn.tensor(y), p)
    check.near(logs[k], m:result(), 1e-5, (from_logits and "logits " or "") .. k)
  end
end

function T.compile_and_evaluate_probabilities() binary_case(false) end
function T.compile_and_evaluate_logits() binary_case(true) end

function T.compile_with_a_fused_softmax_and_sparse_labels()
  nn.seed(5)
  local x, labels = nn.randn(50, 4), {}
  for i = 1, 50 do labels[i] = i % 3 end
  local model = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {4}}}
  model:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy", nn.metrics.SparseTopKCategoricalAccuracy{k = 2}, nn.metrics.MeanIoU(3),
      nn.metrics.F1Score{average = "macro"}, nn.metrics.AUC()}}
  local logs = model:evaluate(x, nn.tensor(labels), {batch_size = 16, verbose = 0, return_dict = true})
  local p = model:predict(x, {verbose = 0})
  for k, m in pairs({sparse_top_k_categorical_accuracy = nn.metrics.SparseTopKCategoricalAccuracy{k = 2},
    mean_io_u = nn.metrics.MeanIoU(3), f1_score = nn.metrics.F1Score(), auc = nn.metrics.AUC()}) do
    m:update_state(nn.tensor(labels), p)
    check.near(logs[k], m:result(), 1e-5, k)
  end
  check.fails(function()
    model:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"precison"}}
  end, "unknown metric 'precison'")
  check.fails(function()
    model:compile{optimizer = "adam", loss = "mse", metrics = {nn.metrics.F1Score{average = false}}}
    model:evaluate(x, nn.randn(50, 3), {verbose = 0})
  end, "gives one value per class, and a log holds one number")
  check.fails(function()
    model:compile{optimizer = "adam", loss = "mse", metrics = {"auc", "auc"}}
    model:evaluate(x, nn.randn(50, 3), {verbose = 0})
  end, "two metrics log as 'auc' (give one a name: auc(name=...))")
  -- a class_id past the output's classes is a compile error (fit failed at its first step)
  check.fails(function()
    model:compile{optimizer = "adam", loss = "mse", metrics = {nn.metrics.Recall{class_id = 3}}}
    model:evaluate(x, nn.randn(50, 3), {verbose = 0})
  end, "metric 'Recall(class_id=3)': class_id 3, but output '" .. model.layers[1].name .. "' has 3 classes (ids 0 to 2)")
  model:compile{optimizer = "adam", loss = "mse", metrics = {nn.metrics.Recall{class_id = 2}}}
  model:evaluate(x, nn.randn(50, 3), {verbose = 0})
end

-- The metrics never change the loss: a saturated softmax (logits 0 and 40)
-- gives the logits' loss, 20, and the same step whether or not a metric
-- reads probabilities (clipped probabilities would give 8.06 and no step).
function T.metrics_reading_probabilities_leave_the_fused_loss_alone()
  local x, y = nn.tensor{{1}, {0.5}}, nn.tensor{{1, 0}, {0, 1}}
  local function step(metrics)
    local model = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {1}, use_bias = false}}
    model:set_weights{nn.tensor{{0, 40}}}
    model:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "categorical_crossentropy",
      metrics = metrics}
    local loss = model:evaluate(x, y, {verbose = 0, return_dict = true}).loss
    model:train_on_batch(x, y)
    return loss, model:get_weights()[1]:totable()[1], model
  end
  local loss0, w0 = step({})
  check.near(loss0, 20, 1e-5, "the logits' loss")
  check.near(w0[1], 0.5, 1e-5, "the step on the first weight")
  for _, metrics in ipairs({{"auc"}, {"precision"}, {"accuracy", nn.metrics.Recall(), nn.metrics.F1Score()}}) do
    local loss, w, model = step(metrics)
    check.near(loss, loss0, 1e-6, "the loss with " .. tostring(metrics[1]))
    check.same_table(w, w0, 1e-6, "the step with " .. tostring(metrics[1]))
    -- and the metric still reads the probabilities
    local logs = model:evaluate(x, y, {verbose = 0, return_dict = true})
    local m = metrics[1] == "auc" and nn.metrics.AUC() or metrics[1] == "precision" and nn.metrics.Precision() or nil
    if m then
      m:update_state(y, model:predict(x, {verbose = 0}))
      check.near(logs[metrics[1]], m:result(), 1e-6, metrics[1] .. " from the probabilities")
    end
  end
end

-- Keras on TensorFlow reads a sigmoid's or softmax's logits in the
-- cross-entropies (_keras_logits), also when the activation is a layer of
-- its own: a saturated unit's loss is the logits' (40, not the clipped
-- -log 1e-7 = 16.1) and its gradient sigmoid(z) - t moves it.  The metrics
-- still read probabilities.
function T.cross_entropies_read_the_logits_of_a_final_activation()
  local cases = {
    {"Dense sigmoid", function() return {nn.Dense{1, activation = "sigmoid", input_shape = {1}}} end,
      "binary_crossentropy", nn.tensor{{0}}, {40}},
    {"Activation sigmoid", function() return {nn.Dense{1, input_shape = {1}}, nn.Activation("sigmoid")} end,
      "binary_crossentropy", nn.tensor{{0}}, {40}},
    {"Softmax layer", function() return {nn.Dense{2, input_shape = {1}}, nn.Softmax{}} end,
      "sparse_categorical_crossentropy", nn.tensor{0}, {0, 40}},
    {"Activation softmax", function() return {nn.Dense{2, input_shape = {1}}, nn.Activation("softmax")} end,
      "sparse_categorical_crossentropy", nn.tensor{0}, {0, 40}},
  }
  for _, c in ipairs(cases) do
    local name, layers, loss, y, bias = c[1], c[2](), c[3], c[4], c[5]
    local model = nn.Sequential(layers)
    local d = layers[1]
    d:set_weights{nn.zeros(1, #bias), nn.tensor(bias)}
    model:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = loss, metrics = {"auc"}}
    local r = model:evaluate(nn.tensor{{1}}, y, {verbose = 0})
    check.near(r.loss, 40, 1e-4, name .. ": the logits' loss")
    check.near(r.auc, 0, 1e-6, name .. ": AUC from the probabilities (no error for values outside [0, 1])")
    model:train_on_batch(nn.tensor{{1}}, y)
    -- d loss / d z = p - t: 1 for the sigmoid, (1, -1) for the softmax's two units
    local want = #bias == 1 and {40 - 0.1} or {0 + 0.1, 40 - 0.1}
    check.same_table(d:get_weights()[2]:totable(), want, 1e-4, name .. ": the step moves the saturated unit")
  end
end

-- Weighted metrics (Keras's sample_weight): whole-number weights give what
-- the same metric gives on the rows repeated that many times (0: left out),
-- for every kind; a fractional weight the weighted mean written out; one
-- weight per position of a sequence the same as its rows flattened.
function T.sample_weights_count_as_repeated_rows()
  local labels, scores, onehot = data(40, 4, 21)
  local reps = {}
  for i = 1, 40 do reps[i] = (i * 7) % 4 end -- 0 to 3
  local function repeated(rows)
    local out = {}
    for i, r in ipairs(rows) do for _ = 1, reps[i] do out[#out + 1] = r end end
    return out
  end
  local makers = {
    {function() return nn.metrics.Precision() end, onehot}, {function() return nn.metrics.Recall{class_id = 2} end, onehot},
    {function() return nn.metrics.AUC() end, onehot}, {function() return nn.metrics.AUC{curve = "PR"} end, onehot},
    {function() return nn.metrics.SparseTopKCategoricalAccuracy{k = 2} end, labels},
    {function() return nn.metrics.F1Score{average = "macro"} end, onehot},
    {function() return nn.metrics.F1Score{average = "weighted", threshold = 0.5} end, onehot},
    {function() return nn.metrics.MeanIoU(4) end, labels},
    {function() return nn.metrics.SparseCategoricalAccuracy() end, labels},
    {function() return nn.metrics.BinaryAccuracy() end, onehot},
    {function() return nn.metrics.MeanAbsoluteError() end, onehot},
    {function() return nn.metrics.RootMeanSquaredError() end, onehot},
    {function() return nn.metrics.R2Score() end, onehot},
  }
  for _, mk in ipairs(makers) do
    local make, y = mk[1], mk[2]
    local weighted, plain = make(), make()
    weighted:update_state(nn.tensor(y), nn.tensor(scores), nn.tensor(reps))
    plain:update_state(nn.tensor(repeated(y)), nn.tensor(repeated(scores)))
    local a, b = weighted:result(), plain:result()
    check.near(type(a) == "table" and a[1] or a, type(b) == "table" and b[1] or b, 1e-6, weighted.name .. " weighted")
  end
  -- fractional weights: sum(w * correct) / sum(w) and MAE sum(w * mean|e|) / sum(w)
  local w, num, den, mae = {}, 0, 0, 0
  for i = 1, 40 do
    w[i] = (i % 5) * 0.3
    local best = 1
    for c = 2, 4 do if scores[i][c] > scores[i][best] then best = c end end
    num, den = num + w[i] * (best - 1 == labels[i] and 1 or 0), den + w[i]
    local e = 0
    for c = 1, 4 do e = e + math.abs(scores[i][c] - onehot[i][c]) / 4 end
    mae = mae + w[i] * e
  end
  local acc = nn.metrics.SparseCategoricalAccuracy()
  acc:update_state(nn.tensor(labels), nn.tensor(scores), nn.tensor(w))
  check.near(acc:result(), num / den, 1e-6, "weighted accuracy")
  local m = nn.metrics.MeanAbsoluteError()
  m:update_state(nn.tensor(onehot), nn.tensor(scores), nn.tensor(w))
  check.near(m:result(), mae / den, 1e-6, "weighted MAE")
  -- a (5, 8) sequence of predictions weighted per position = its 40 rows
  local seq = nn.metrics.AUC()
  seq:update_state(nn.tensor(onehot):reshape{5, 8, 4}, nn.tensor(scores):reshape{5, 8, 4}, nn.tensor(reps):reshape{5, 8})
  local rows = nn.metrics.AUC()
  rows:update_state(nn.tensor(onehot), nn.tensor(scores), nn.tensor(reps))
  check.near(seq:result(), rows:result(), 1e-6, "per-position weights")
  check.fails(function() nn.metrics.AUC():update_state(nn.tensor(onehot), nn.tensor(scores), nn.tensor{1, 0}) end,
    "give one weight per sample")
  -- an empty batch with its empty weights adds nothing (and does not crash)
  local empty = nn.metrics.BinaryAccuracy()
  empty:update_state(nn.zeros(0), nn.zeros(0), nn.zeros(0))
  check.eq(empty:result(), 0, "nothing seen")
end

function T.vulkan_agrees_with_the_cpu()
  if not check.vulkan() then return end
  local labels, scores, onehot = data(70, 4, 10)
  local makers = {
    function() return nn.metrics.Precision{class_id = 1} end, function() return nn.metrics.AUC{curve = "PR"} end,
    function() return nn.metrics.F1Score{average = "micro"} end, function() return nn.metrics.R2Score() end,
    function() return nn.metrics.TopKCategoricalAccuracy{k = 2} end, function() return nn.metrics.MeanIoU(4) end,
  }
  for i, make in ipairs(makers) do
    local y = i == 6 and labels or onehot
    local cpu, gpu = make(), make()
    cpu:update_state(nn.tensor(y), nn.tensor(scores))
    gpu:update_state(nn.tensor(y):to("vulkan"), nn.tensor(scores):to("vulkan"))
    check.near(gpu:result(), cpu:result(), 1e-5, cpu.name)
  end
end

-- Edge cases where a number could look right and be wrong (the ninth
-- audit, each against Keras 3's formula worked by hand):
function T.metrics_and_losses_at_keras_edges()
  -- top-k: a label's score is picked exactly (0 * -inf made it NaN, and
  -- nothing ranks above a NaN: a hit), and a row with a NaN or an
  -- infinity is a miss (tf.math.in_top_k)
  local topk = nn.metrics.SparseTopKCategoricalAccuracy{k = 1}
  topk:update_state({2, 2, 1, 0}, {{2, -math.huge, 1, 0.5}, {0.1, 0 / 0, 0.2, 0.3}, {0.1, 0.9, 0.2, 0.3},
    {0 / 0, 1, 2, 3}})
  check.near(topk:result(), 1 / 4, 1e-7, "top-1 over rows with -inf and NaN")
  -- Keras's Accuracy: equal values, element by element
  local exact = nn.metrics.Accuracy()
  exact:update_state({1, 2, 3, 4}, {1, 2, 0, 4})
  check.near(exact:result(), 0.75, 1e-7, "Accuracy: exact equality")
  -- R2: Keras's variance weighting leaves a constant column out (its
  -- residual too); 1-D inputs are refused as Keras's R2Score does
  local r2 = nn.metrics.R2Score{class_aggregation = "variance_weighted_average"}
  r2:update_state({{1, 5}, {2, 5}, {3, 5}}, {{1.1, 4}, {1.9, 6}, {3.2, 5}})
  check.near(r2:result(), 1 - 0.06 / 2, 1e-6, "variance-weighted R2 with a constant column")
  check.fails(function() nn.metrics.R2Score():update_state({1, 2, 3}, {1, 2, 2}) end, "2-D (samples, outputs)")
  -- MeanIoU: predictions and targets of one shape are ids, as Keras's defaults
  local iou = nn.metrics.MeanIoU{num_classes = 2}
  iou:update_state({0, 1}, {1, 1})
  check.near(iou:result(), (0 + 1 / 2) / 2, 1e-7, "ids on both sides")
  local scores = nn.metrics.MeanIoU{num_classes = 2, sparse_y_pred = false}
  scores:update_state({0, 1}, {{0.2, 0.8}, {0.3, 0.7}})
  check.near(scores:result(), 0.25, 1e-7, "sparse_y_pred = false: argmax of the scores")
  -- AUC of NaN predictions is an error, not 0
  check.fails(function() nn.metrics.AUC():update_state({0, 1}, {0.3, 0 / 0}) end, "NaN or infinite")
  -- hinge: only labels that are all 0 or 1 read as -1/1 (soft labels stay)
  local yp = nn.tensor{{0.3, -0.6}, {0.9, 0.2}}
  local function hinge(y, p)
    local s = 0
    for i = 1, 2 do for j = 1, 2 do s = s + math.max(0, 1 - y[i][j] * p[i][j]) / 4 end end
    return s
  end
  local soft = {{0.2, 0.7}, {1, 0}}
  check.near(nn.losses.Hinge()(nn.tensor(soft), yp):item(), hinge(soft, yp:totable()), 1e-6, "hinge, soft labels kept")
  check.near(nn.losses.Hinge()(nn.tensor{{0, 1}, {1, 0}}, yp):item(), hinge({{-1, 1}, {1, -1}}, yp:totable()), 1e-6,
    "hinge, 0/1 labels as -1/1")
  -- cosine similarity: Keras's normalize floors the norm at 1e-7, not its square
  check.near(nn.losses.CosineSimilarity()(nn.tensor{{1, 0}}, nn.tensor{{5e-7, 0}}):item(), -1, 1e-6,
    "a tiny prediction is still a direction")
  -- binary cross-entropy clips p to [eps, 1 - eps] in float32 before both logs, as Keras's: at p = 1 with target 0
  -- the term is -log(1 - float32(1 - 1e-7)) = 15.94 (it was -log(1e-7) = 16.12)
  local function f32(v) return (string.unpack("f", string.pack("f", v))) end
  local hi, lo = f32(1 - 1e-7), f32(1e-7)
  local function bce(z, p)
    local c = math.min(math.max(p, lo), hi)
    return -(z * math.log(c) + (1 - z) * math.log(f32(1 - c)))
  end
  local zs, ps = {0, 1, 0, 1}, {1, 0, 0, 1}
  local want = 0
  for i = 1, 4 do want = want + bce(zs[i], ps[i]) / 4 end
  check.near(nn.losses.BinaryCrossentropy()(nn.tensor{{0}, {1}, {0}, {1}}, nn.tensor{{1}, {0}, {0}, {1}}):item(), want,
    1e-5, "saturated probabilities")
  assert(math.abs(want - 8.0151196) < 1e-5, "Keras's value: " .. want)
end

-- BinaryAccuracy's threshold is on the probabilities, also when the loss
-- reads logits: the model's logits are compared with log(t / (1 - t)).
function T.binary_accuracy_threshold_with_a_logits_loss()
  local m = nn.Sequential{nn.Dense{1, use_bias = false, kernel_initializer = "ones", input_shape = {1}}}
  m:compile{optimizer = "sgd", loss = nn.losses.BinaryCrossentropy{from_logits = true},
    metrics = {nn.metrics.BinaryAccuracy{threshold = 0.7}}}
  -- sigmoid: 0.62, 0.69, 0.88: above 0.7 only the last
  local r = m:evaluate(nn.tensor{{0.5}, {0.8}, {2.0}}, nn.tensor{{0}, {0}, {1}}, {verbose = 0})
  check.near(r.binary_accuracy, 1, 1e-7, "threshold 0.7 on the probabilities")
end

check.run(T)
