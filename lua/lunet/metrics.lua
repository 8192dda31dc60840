-- nn.metrics: metric objects (Precision, AUC, F1Score, ..., the same
-- computation compile's metrics run on the model's device), and reports over
-- a whole set of predictions, counted exactly on the host.  confusion_matrix (true classes in rows, as Keras's and
-- scikit-learn's) and classification_report (per-class precision, recall,
-- F1 and support, with accuracy and the macro and weighted averages, as
-- scikit-learn prints them).
local C = require "lunet.core"

local M = {}

-- Class ids from labels or scores: a list or a tensor of ids (N) or (N, 1)
-- of whole numbers, one-hot or scores (N, K) by argmax, and one
-- probability per sample (N, 1) of a binary classifier thresholded at 0.5.
local function class_ids(v, what)
  if type(v) == "table" and not C.is_tensor(v) then v = C.tensor(v) end
  if not C.is_tensor(v) then error(string.format("%s: a tensor or a list expected, got %s", what, type(v)), 3) end
  local shape = v:shape()
  local ids
  if #shape == 2 and shape[2] > 1 then
    ids = v:to("cpu"):argmax(-1):totable()
  elseif #shape == 1 or (#shape == 2 and shape[2] == 1) then
    local flat = v:to("cpu"):reshape({shape[1]}):totable()
    local whole = true
    for _, x in ipairs(flat) do whole = whole and x == math.floor(x) end
    if #shape == 2 and not whole then
      ids = {}
      for i, x in ipairs(flat) do ids[i] = x > 0.5 and 1 or 0 end
    else
      ids = flat
    end
  else
    error(string.format("%s: class ids (N) or scores (N, K) expected, got a tensor of %d axes", what, #shape), 3)
  end
  for i, x in ipairs(ids) do
    if x ~= math.floor(x) or x < 0 then
      error(string.format("%s: row %d holds %s, not a class id (give whole numbers from 0, or scores (N, K))",
        what, i, tostring(x)), 3)
    end
    ids[i] = math.tointeger(x)
  end
  return ids
end

M.class_ids = class_ids

local function counts(y_true, y_pred, o, what)
  o = o or {}
  local t, p = class_ids(y_true, what .. " (y_true)"), class_ids(y_pred, what .. " (y_pred)")
  if #t ~= #p then error(string.format("%s: %d true labels but %d predictions", what, #t, #p), 3) end
  local k = o.num_classes
  if k == nil then
    k = 0
    for i = 1, #t do k = math.max(k, t[i] + 1, p[i] + 1) end
  elseif math.type(k) ~= "integer" or k < 1 then
    error(string.format("%s: num_classes must be a positive integer", what), 3)
  end
  local cm = {}
  for i = 1, k do
    cm[i] = {}
    for j = 1, k do cm[i][j] = 0 end
  end
  for i = 1, #t do
    if t[i] >= k or p[i] >= k then
      error(string.format("%s: row %d has class %d, outside num_classes = %d", what, i, math.max(t[i], p[i]), k), 3)
    end
    cm[t[i] + 1][p[i] + 1] = cm[t[i] + 1][p[i] + 1] + 1
  end
  return cm, k, #t
end

-- nn.metrics.confusion_matrix(y_true, y_pred[, {num_classes = K}]) -> a (K, K)
-- tensor of counts: row i the samples of true class i, column j those
-- predicted as j.
function M.confusion_matrix(y_true, y_pred, o)
  local cm = counts(y_true, y_pred, o, "confusion_matrix")
  return C.tensor(cm)
end

-- nn.metrics.classification_report(y_true, y_pred[, {target_names =,
-- num_classes =, digits = 2, print = true}]) -> { classes = {{name, precision,
-- recall, f1, support}, ...}, accuracy, macro_avg, weighted_avg }, and the
-- table printed.  A class never predicted has precision 0, one never
-- present recall 0 (scikit-learn's zero_division = 0).  Without
-- num_classes or target_names the classes are those seen in y_true or
-- y_pred, as scikit-learn's.
function M.classification_report(y_true, y_pred, o)
  o = o or {}
  local cm, k, n = counts(y_true, y_pred, o, "classification_report")
  local names = o.target_names or {}
  if o.target_names and #names ~= k then
    error(string.format("classification_report: %d target_names for %d classes", #names, k), 2)
  end
  -- the classes reported: those in y_true or y_pred, as scikit-learn's
  -- unique_labels (an id in neither diluted the macro average); all K when
  -- num_classes or target_names says what they are
  local listed = {}
  for c = 1, k do
    local seen = o.num_classes ~= nil or o.target_names ~= nil
    for j = 1, k do seen = seen or cm[c][j] > 0 or cm[j][c] > 0 end
    if seen then listed[#listed + 1] = c end
  end
  local report = { classes = {}, accuracy = 0 }
  local macro = { precision = 0, recall = 0, f1 = 0, support = n }
  local weighted = { precision = 0, recall = 0, f1 = 0, support = n }
  local correct = 0
  for _, c in ipairs(listed) do
    local tp, predicted, support = cm[c][c], 0, 0
    for j = 1, k do
      predicted = predicted + cm[j][c]
      support = support + cm[c][j]
    end
    correct = correct + tp
    local precision = predicted > 0 and tp / predicted or 0
    local recall = support > 0 and tp / support or 0
    local f1 = precision + recall > 0 and 2 * precision * recall / (precision + recall) or 0
    report.classes[#report.classes + 1] = { name = names[c] or tostring(c - 1), precision = precision,
      recall = recall, f1 = f1, support = support }
    for key, v in pairs({ precision = precision, recall = recall, f1 = f1 }) do
      macro[key] = macro[key] + v / #listed
      weighted[key] = weighted[key] + (n > 0 and v * support / n or 0)
    end
  end
  report.accuracy = n > 0 and correct / n or 0
  report.macro_avg, report.weighted_avg = macro, weighted
  if o.print ~= false then
    local print = type(o.print) == "function" and o.print or print -- a function takes the lines
    local d = o.digits or 2
    local width = 12
    for _, c in ipairs(report.classes) do width = math.max(width, #c.name) end
    local num = "%10." .. d .. "f"
    local row = "%" .. width .. "s" .. num .. num .. num .. "%10d"
    print(string.format("%" .. width .. "s%10s%10s%10s%10s", "", "precision", "recall", "f1-score", "support"))
    print()
    for _, c in ipairs(report.classes) do print(string.format(row, c.name, c.precision, c.recall, c.f1, c.support)) end
    print()
    print(string.format("%" .. width .. "s%10s%10s" .. num .. "%10d", "accuracy", "", "", report.accuracy, n))
    print(string.format(row, "macro avg", macro.precision, macro.recall, macro.f1, n))
    print(string.format(row, "weighted avg", weighted.precision, weighted.recall, weighted.f1, n))
  end
  return report
end

-- ---- metric objects ----

-- A metric object: update_state(y_true, y_pred), result(), reset_state(),
-- merge_state(other), as Keras's.  Each holds a core metric made from its
-- spec ("AUC(curve=PR)"), and compile{metrics = {obj}} compiles the same
-- spec for the model's outputs.
local Metric = {}
Metric.__index = Metric

local function as_tensor(v, what)
  if C.is_tensor(v) then return v end
  if type(v) == "table" then return C.tensor(v) end
  error(string.format("%s: a tensor or a list expected, got %s", what, type(v)), 3)
end

-- sample_weight (Keras's): one weight per sample, or per position of a
-- sequence's predictions; a mean becomes sum(w v) / sum(w), counts weigh w.
function Metric:update_state(y_true, y_pred, sample_weight)
  C.metric_update(self.handle, as_tensor(y_true, self.name .. " (y_true)"), as_tensor(y_pred, self.name .. " (y_pred)"),
    sample_weight ~= nil and as_tensor(sample_weight, self.name .. " (sample_weight)") or nil)
  return self
end
function Metric:result() return C.metric_result(self.handle) end
function Metric:reset_state() C.metric_reset(self.handle) return self end
-- The additive state (sums and counts), for a reduction across processes.
function Metric:state() return C.metric_state(self.handle) end
function Metric:set_state(v) C.metric_set_state(self.handle, v) return self end
function Metric:merge_state(other) C.metric_merge(self.handle, other.handle) return self end
function Metric:get_config() return { name = self.name, spec = self.spec } end
Metric.__tostring = function(self) return string.format("<metric %s: %s>", self.name, self.spec) end

function M.is_metric(v) return getmetatable(v) == Metric end

-- false is "none" for the options that take it (F1's threshold, average),
-- a boolean elsewhere (sparse_y_true, sparse_y_pred, from_logits)
local none_options = { threshold = true, average = true, class_aggregation = true }
local function option_value(v, key)
  if v == false and none_options[key] then return "none" end
  if type(v) == "boolean" then return tostring(v) end
  if math.type(v) == "float" then return string.format("%.9g", v) end
  return tostring(v)
end

-- A class: options (a table, or the first option positionally) checked
-- against `keys`, written into the spec in a fixed order.
local function class(class_name, keys, positional)
  return function(o)
    if type(o) ~= "table" then o = o == nil and {} or { [positional or "?"] = o } end
    local parts = {}
    for k in pairs(o) do
      if type(k) ~= "string" or not keys[k] then
        local valid = {}
        for key in pairs(keys) do valid[#valid + 1] = key end
        table.sort(valid)
        error(string.format("nn.metrics.%s: unknown option '%s' (valid: %s)", class_name, tostring(k),
          table.concat(valid, ", ")), 2)
      end
    end
    local sorted = {}
    for key in pairs(keys) do sorted[#sorted + 1] = key end
    table.sort(sorted)
    for _, key in ipairs(sorted) do
      if o[key] ~= nil then parts[#parts + 1] = key .. "=" .. option_value(o[key], key) end
    end
    local spec = #parts > 0 and class_name .. "(" .. table.concat(parts, ",") .. ")" or class_name
    local ok, h, name = pcall(C.metric_new, spec)
    if not ok then error(h, 2) end
    return setmetatable({ handle = h, name = name, spec = spec }, Metric)
  end
end

local common = { name = true }
local function with(t)
  for k in pairs(common) do t[k] = true end
  return t
end

M.Precision = class("Precision", with { thresholds = true, class_id = true }, "thresholds")
M.Recall = class("Recall", with { thresholds = true, class_id = true }, "thresholds")
M.AUC = class("AUC", with { num_thresholds = true, curve = true, from_logits = true }, "num_thresholds")
M.TopKCategoricalAccuracy = class("TopKCategoricalAccuracy", with { k = true }, "k")
M.SparseTopKCategoricalAccuracy = class("SparseTopKCategoricalAccuracy", with { k = true }, "k")
M.F1Score = class("F1Score", with { average = true, threshold = true }, "average")
M.MeanIoU = class("MeanIoU", with { num_classes = true, sparse_y_true = true, sparse_y_pred = true },
  "num_classes")
M.MeanAbsoluteError = class("MeanAbsoluteError", with {})
M.RootMeanSquaredError = class("RootMeanSquaredError", with {})
M.R2Score = class("R2Score", with { class_aggregation = true }, "class_aggregation")
M.BinaryAccuracy = class("BinaryAccuracy", with { threshold = true }, "threshold")
M.Accuracy = class("Accuracy", with {}) -- Keras's: the fraction of predictions equal to their targets
M.CategoricalAccuracy = class("CategoricalAccuracy", with {})
M.SparseCategoricalAccuracy = class("SparseCategoricalAccuracy", with {})

-- compile's view of a metrics entry: a spec string, checked now so that a
-- typo fails at compile, not at the first batch.
function M.spec(v)
  if M.is_metric(v) then return v.spec end
  if type(v) ~= "string" then
    error(string.format("a metric name or an nn.metrics object expected, got %s", type(v)), 0)
  end
  if v ~= "accuracy" and v ~= "acc" then
    local ok, err = pcall(C.metric_new, v)
    if not ok then error(err, 0) end
  end
  return v
end

return M
