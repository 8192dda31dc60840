-- nn.metrics.confusion_matrix and classification_report: a hand-counted
-- case (the figures scikit-learn prints for it), a random one against
-- counts taken pair by pair, the input forms, and the errors.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

function T.hand_counted_case()
  -- y_pred's scores argmax to {0, 2, 2, 1, 1, 0}
  local y_true = {0, 1, 2, 2, 1, 0}
  local scores = nn.tensor({{0.9, 0.1, 0}, {0.1, 0.2, 0.7}, {0, 0, 1}, {0, 1, 0}, {0, 1, 0}, {1, 0, 0}})
  check.same_table(nn.metrics.confusion_matrix(y_true, scores):totable(), {{2, 0, 0}, {0, 1, 1}, {0, 1, 1}}, 0, "matrix")
  local r = nn.metrics.classification_report(y_true, scores, {target_names = {"cat", "dog", "bird"}, print = false})
  check.same_table({r.classes[1].precision, r.classes[1].recall, r.classes[1].f1, r.classes[1].support}, {1, 1, 1, 2}, 1e-12, "cat")
  check.same_table({r.classes[2].precision, r.classes[2].recall, r.classes[2].f1, r.classes[2].support}, {0.5, 0.5, 0.5, 2}, 1e-12, "dog")
  check.eq(r.classes[3].name, "bird")
  check.near(r.accuracy, 4 / 6, 1e-12, "accuracy")
  check.near(r.macro_avg.f1, (1 + 0.5 + 0.5) / 3, 1e-12, "macro f1")
  -- a class predicted but never true, and one true but never predicted:
  -- precision and recall 0 there (zero_division = 0), weights by support
  local r2 = nn.metrics.classification_report({0, 0, 1, 1}, {0, 2, 0, 0}, {print = false})
  check.same_table({r2.classes[2].precision, r2.classes[2].recall, r2.classes[3].precision, r2.classes[3].support},
    {0, 0, 0, 0}, 0, "empty classes")
  check.near(r2.classes[1].precision, 1 / 3, 1e-12, "class 0 precision")
  check.near(r2.weighted_avg.recall, (0.5 * 2 + 0 * 2) / 4, 1e-12, "weighted recall")
  -- an id in neither y_true nor y_pred (1 here) is no class of the report, as
  -- scikit-learn's unique_labels (it counted in the macro average as zeros);
  -- with num_classes it is
  local r3 = nn.metrics.classification_report({0, 2, 2, 0}, {0, 2, 0, 0}, {print = false})
  check.eq(#r3.classes, 2, "classes 0 and 2")
  check.same_table({r3.classes[1].name, r3.classes[2].name}, {"0", "2"}, 0, "their names")
  -- class 0: P 2/3, R 1, F1 0.8; class 2: P 1, R 1/2, F1 2/3
  check.near(r3.macro_avg.precision, (2 / 3 + 1) / 2, 1e-12, "macro precision")
  check.near(r3.macro_avg.recall, (1 + 0.5) / 2, 1e-12, "macro recall")
  check.near(r3.macro_avg.f1, (0.8 + 2 / 3) / 2, 1e-12, "macro f1")
  local r4 = nn.metrics.classification_report({0, 2, 2, 0}, {0, 2, 0, 0}, {print = false, num_classes = 3})
  check.eq(#r4.classes, 3, "num_classes lists every class")
  check.near(r4.macro_avg.f1, (0.8 + 0 + 2 / 3) / 3, 1e-12, "macro f1 over 3")
end

function T.random_case_against_pairwise_counts()
  nn.seed(12)
  local n, k = 500, 5
  local labels = {}
  for i = 1, n do labels[i] = (i * 7) % k end
  local scores = nn.randn(n, k)
  local pred = scores:argmax(-1):totable()
  local cm = nn.metrics.confusion_matrix(nn.tensor(labels), scores, {num_classes = k}):totable()
  local r = nn.metrics.classification_report(labels, scores, {print = false})
  for c = 0, k - 1 do
    local tp, fp, fn, total = 0, 0, 0, 0
    for i = 1, n do
      if labels[i] == c and pred[i] == c then tp = tp + 1 end
      if labels[i] ~= c and pred[i] == c then fp = fp + 1 end
      if labels[i] == c and pred[i] ~= c then fn = fn + 1 end
    end
    for j = 1, k do total = total + cm[c + 1][j] end
    check.eq(cm[c + 1][c + 1], tp, "true positives of " .. c)
    check.eq(total, tp + fn, "row sum of " .. c)
    check.near(r.classes[c + 1].precision, tp / (tp + fp), 1e-12, "precision of " .. c)
    check.near(r.classes[c + 1].recall, tp / (tp + fn), 1e-12, "recall of " .. c)
  end
end

function T.input_forms_and_errors()
  -- one-hot targets, (N, 1) ids, and a binary classifier's probabilities
  check.same_table(nn.metrics.confusion_matrix(nn.tensor({{1, 0}, {0, 1}}), nn.tensor({{1}, {0}})):totable(),
    {{0, 1}, {1, 0}}, 0, "one-hot and (N, 1) ids")
  check.same_table(nn.metrics.confusion_matrix({0, 1, 1}, nn.tensor({{0.2}, {0.9}, {0.4}})):totable(),
    {{1, 0}, {1, 1}}, 0, "probabilities thresholded at 0.5")
  check.fails(function() nn.metrics.confusion_matrix({0, 1}, {0}) end, "2 true labels but 1 predictions")
  check.fails(function() nn.metrics.confusion_matrix({0, 1.5}, {0, 1}) end, "row 2 holds 1.5, not a class id")
  check.fails(function() nn.metrics.confusion_matrix({0, -1}, {0, 1}) end, "row 2 holds -1")
  check.fails(function() nn.metrics.confusion_matrix({0, 3}, {0, 1}, {num_classes = 2}) end,
    "row 2 has class 3, outside num_classes = 2")
  check.fails(function() nn.metrics.classification_report({0, 1}, {0, 1}, {target_names = {"a"}, print = false}) end,
    "1 target_names for 2 classes")
end

-- nn.plot.report reads one-hot labels as class ids (it flattened them:
-- N*K "labels") and a binary classifier's one score per image as class 1's
-- probability, or its logit where the model has no sigmoid (it took the
-- argmax of one column: class 0 always).
function T.report_takes_one_hot_labels_and_binary_scores()
  local dir = check.tmpdir()
  local function report_text(model, x, y, sub)
    nn.plot.report(model, nil, x, y, dir .. "/" .. sub, {verbose = 0, samples = 2})
    local f = assert(io.open(dir .. "/" .. sub .. "/report.txt"))
    local text = f:read("a")
    f:close()
    return text
  end
  nn.seed(4)
  local x = nn.rand(12, 4, 4, 1)
  local m = nn.Sequential{nn.Conv2D{2, 3, padding = "same", input_shape = {4, 4, 1}}, nn.Flatten(),
    nn.Dense{3, activation = "softmax"}}
  local ids = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}
  local y = nn.tensor(ids)
  check.eq(report_text(m, x, nn.utils.to_categorical(y, 3), "onehot"), report_text(m, x, y, "ids"), "one-hot = ids")
  -- binary: the report's accuracy against one counted here
  for _, logits in ipairs{false, true} do
    nn.seed(5)
    local b = nn.Sequential{nn.Conv2D{2, 3, padding = "same", input_shape = {4, 4, 1}}, nn.Flatten(),
      nn.Dense{1, activation = not logits and "sigmoid" or nil}}
    local yb = {}
    for i = 1, 12 do yb[i] = i % 2 end
    local scores = b:predict(x):totable()
    local right = 0
    for i = 1, 12 do
      local class = (logits and scores[i][1] > 0 or not logits and scores[i][1] > 0.5) and 1 or 0
      if class == yb[i] then right = right + 1 end
    end
    local text = report_text(b, x, nn.tensor(yb), logits and "logits" or "sigmoid")
    local acc = tonumber(text:match("accuracy%s+([%d.]+)"))
    check.near(acc, right / 12, 0.006, (logits and "logits" or "sigmoid") .. ": accuracy in report.txt")
    assert(text:find("\n%s+1%s"), "two classes in the report:\n" .. text)
  end
end

check.run(T)
