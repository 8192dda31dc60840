-- nn.plot.report: the pictures and numbers to look at after training an
-- image classifier, written into one folder (what the recipes' --report
-- DIR writes):
--   curves.png            loss and metrics per epoch (training, validation)
--   confusion_matrix.png  on the test set
--   mistakes.png          test images the model got wrong, with both classes
--   gradcam.png           Grad-CAM maps of the first test images
--   report.txt            the classification report (per-class precision,
--                         recall, F1, support)
local plot = require "lunet.plot"
local explain = require "lunet.explain"
local metrics = require "lunet.metrics"

local M = {}

local function mkdir(dir)
  local ok = os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  if not ok then error(string.format("report: cannot make the folder %s", dir), 3) end
end

--- report(model, history, x_test, y_test, dir, {class_names, samples = 8,
-- max_mistakes = 36, verbose = 1}) -> {paths}
function M.write(model, history, x, y, dir, o)
  o = o or {}
  if type(dir) ~= "string" then error("report: a folder path expected", 2) end
  mkdir(dir)
  local names = o.class_names
  local paths = {}
  local function add(p) paths[#paths + 1] = p end
  if history then add(plot.history(history, dir .. "/curves.png", { title = o.title })) end
  local p = model:predict(x, { verbose = 0 })
  local k = p:shape()[2]
  if k == 1 then -- a binary classifier: one score per image, its probability of class 1
    local last = model.outputs and model.outputs[1].node and model.outputs[1].node.layer
    local sigmoid = last and last.args.activation == "sigmoid" -- a Dense layer's, or an Activation layer
    if not sigmoid then p = p:sigmoid() end -- logits (a loss from_logits)
    k = 2
  end
  -- the labels as class ids: ids (N) or (N, 1), or one-hot (N, K) by argmax
  local pred, truth = metrics.class_ids(p, "report (predictions)"), metrics.class_ids(y, "report (labels)")
  local cm = metrics.confusion_matrix(truth, pred, { num_classes = k })
  add(plot.confusion_matrix(cm, names, dir .. "/confusion_matrix.png"))
  local lines = {}
  metrics.classification_report(truth, pred, { target_names = names, num_classes = k,
    print = function(line) lines[#lines + 1] = line or "" end })
  local f = assert(io.open(dir .. "/report.txt", "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  add(dir .. "/report.txt")
  local wrong, wrong_true, wrong_pred, errors = {}, {}, {}, 0
  for i = 1, #pred do
    if pred[i] ~= truth[i] then
      errors = errors + 1
      if #wrong < (o.max_mistakes or 36) then
        wrong[#wrong + 1] = i - 1
        wrong_true[#wrong_true + 1], wrong_pred[#wrong_pred + 1] = truth[i], pred[i]
      end
    end
  end
  if #wrong == 0 then
    add(plot.message(dir .. "/mistakes.png", string.format("none of the %d test images wrong", #pred)))
  else
    add(plot.images(x:index_select(1, wrong), { labels = wrong_true, predictions = wrong_pred, class_names = names,
      path = dir .. "/mistakes.png",
      title = string.format("%d of %d test images wrong (the first %d)", errors, #pred, #wrong) }))
  end
  local n = math.min(o.samples or 8, x:shape()[1])
  local first = {}
  for i = 1, n do first[i] = i - 1 end
  local xs = x:index_select(1, first)
  local maps, cls, layer = explain.grad_cam(model, xs)
  add(explain.overlay(xs, maps, dir .. "/gradcam.png", { labels = cls, class_names = names,
    title = "Grad-CAM (" .. layer .. "), predicted class" }))
  if o.verbose ~= 0 then print("report: " .. table.concat(paths, ", ")) end
  return paths
end

return M
