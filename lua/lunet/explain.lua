-- nn.explain: where an image classifier looks, as heat maps (N, H, W) over
-- its input.
--   saliency(model, x, {class})             |d logit / d x|, max over channels
--   smoothgrad(model, x, {class, samples = 25, noise = 0.15})
--   integrated_gradients(model, x, {class, baseline, steps = 64})
--   grad_cam(model, x, {class, layer})      ReLU(sum_k mean(dy/dA_k) A_k), in [0, 1]
--   overlay(x, maps, path, {alpha = 0.5})   the maps over the images, as a PNG grid
-- The gradients are of the class's logit, before the output's softmax (or
-- sigmoid): the model runs layer by layer on the tape with the last
-- layer's activation left out (the whole layer when it is a Softmax or an
-- Activation layer).  `class` is a number for every image or a
-- list with one per image (0-based); by default the predicted class.
local C = require "lunet.core"
local plot = require "lunet.plot"
local optim = require "lunet.optim"

local M = {}

local function fail(fn, msg) error(string.format("nn.explain.%s: %s", fn, msg), 3) end

-- The images as a float32 tensor (N, H, W, C) on the model's device.
local function inputs(model, x, fn)
  if type(model) ~= "table" or not model.nodes and not model.layers then fail(fn, "a model expected") end
  if not C.is_tensor(x) then fail(fn, "images (N, H, W, C) expected as a tensor") end
  if x:dim() ~= 4 then
    fail(fn, string.format("images (N, H, W, C) expected, got %d axes (one image: x:reshape{1, H, W, C})", x:dim()))
  end
  if not model.built then model:build({ table.unpack(x:shape(), 2) }) end -- one sample's shape
  if model.inputs and #model.inputs ~= 1 then fail(fn, "a model with one input expected") end
  local device = model.device or "cpu"
  x = x:dtype() == "float32" and x or x:float()
  return x:device() == device and x or x:to(device)
end

-- A layer that is an activation alone: a Softmax layer over the last axis,
-- or an Activation layer (the output layer's activation, as Dense{...,
-- activation = "softmax"} has it, left out all the same).
local function output_activation(layer, out)
  local axis = layer.args and layer.args.axis
  return layer.type == "Activation" or layer.type == "Softmax" and (axis == nil or axis == -1 or axis == #out.shape)
end

-- Runs the model's graph on the tape: returns the logits (the output
-- layer without its activation) and, when `at` names a layer, that layer's
-- output, replaced by a leaf that collects its gradient (or by `value`).
local function forward(model, x, at, value)
  local map = { [model.inputs[1]] = x }
  local last = model.outputs[1]
  local leaf
  for _, n in ipairs(model.nodes) do
    local ins = {}
    for i, s in ipairs(n.inputs) do ins[i] = map[s] end
    local skip = n.outputs[1] == last and #n.outputs == 1
    local outs
    if skip and output_activation(n.layer, last) then
      outs = { ins[1] } -- the whole layer is the activation left out
    else
      outs = { C.layer_call(n.layer.handle, n.listed and ins or ins[1], false, skip) }
    end
    if type(outs[1]) == "table" and not C.is_tensor(outs[1]) then outs = outs[1] end
    for j, s in ipairs(n.outputs) do map[s] = outs[j] end
    if at and n.layer == at then
      leaf = value or outs[1]:detach()
      leaf:requires_grad(true)
      map[n.outputs[1]] = leaf
    end
  end
  return map[last], leaf
end

-- The chosen classes as a list (one per image).
local function classes(logits, class, n, fn)
  local k = logits:shape()[logits:dim()]
  local out = {}
  if class == nil then
    local ids = logits:to("cpu"):reshape({ n, k }):argmax(-1):totable()
    for i = 1, n do out[i] = math.tointeger(ids[i]) end
  elseif type(class) == "number" then
    for i = 1, n do out[i] = class end
  elseif type(class) == "table" and #class == n then
    for i = 1, n do out[i] = class[i] end
  else
    fail(fn, string.format("class: a class id or a list of %d expected", n))
  end
  for i, c in ipairs(out) do
    if math.type(c) ~= "integer" or c < 0 or c >= k then
      fail(fn, string.format("class %s for image %d: the model has %d classes (0 to %d)", tostring(c), i, k, k - 1))
    end
  end
  return out, k
end

-- Sum over images of logit[i, class[i]]: its gradient is each image's own.
local function picked(logits, cls, k)
  local n = #cls
  local mask = {}
  for i = 1, n do
    mask[i] = {}
    for j = 1, k do mask[i][j] = j - 1 == cls[i] and 1 or 0 end
  end
  local m = C.tensor(mask)
  if logits:device() ~= "cpu" then m = m:to(logits:device()) end
  return (logits:reshape({ n, k }) * m):sum()
end

local function clear_grads(model)
  for _, p in ipairs(model.params or {}) do p:zero_grad() end
end

-- The gradient of the chosen logits with respect to the images (N, H, W, C),
-- on the CPU, and the logits' values.
local function input_gradient(model, x, class, fn)
  local leaf = x:detach()
  leaf:requires_grad(true)
  local logits = forward(model, leaf)
  local cls, k = classes(logits, class, x:shape()[1], fn)
  local z = picked(logits, cls, k)
  z:backward()
  local g = leaf.grad:to("cpu")
  clear_grads(model)
  return g, cls, z:item()
end

-- The classes asked for (or predicted), from one forward pass off the tape.
local function chosen(model, x, class, fn)
  local prev = C.set_no_grad(true)
  local ok, z = pcall(forward, model, x)
  C.set_no_grad(prev)
  if not ok then error(z, 0) end
  return (classes(z, class, x:shape()[1], fn))
end

-- (N, H, W, C) -> (N, H, W): the maximum over channels of |v|.
local function max_abs(g) return g:abs():max(4) end

--- saliency(model, x, {class}) -> maps (N, H, W), classes
function M.saliency(model, x, o)
  o = optim.check_fields("nn.explain.saliency", o, { class = true }, "option", 3)
  x = inputs(model, x, "saliency")
  local g, cls = input_gradient(model, x, o.class, "saliency")
  return max_abs(g), cls
end

--- smoothgrad(model, x, {class, samples = 25, noise = 0.15}) ->
-- maps (N, H, W), classes: the gradient averaged over copies of x with
-- Gaussian noise of noise * (max - min) of each image, then |.| max over
-- channels (Smilkov et al. 2017).  The noise comes from lunet's generator
-- (nn.seed makes it repeatable).
function M.smoothgrad(model, x, o)
  o = optim.check_fields("nn.explain.smoothgrad", o, { class = true, samples = true, noise = true }, "option", 3)
  x = inputs(model, x, "smoothgrad")
  local n = x:shape()[1]
  local samples, level = o.samples or 25, o.noise or 0.15
  if math.type(samples) ~= "integer" or samples < 1 then fail("smoothgrad", "samples must be a positive integer") end
  if type(level) ~= "number" or not (level >= 0 and level < math.huge) then
    fail("smoothgrad", "noise must be a number >= 0 (a fraction of each image's range), got " .. tostring(level))
  end
  local cls = chosen(model, x, o.class, "smoothgrad") -- the classes of the clean images
  local host = x:to("cpu")
  local s = host:shape()
  local flat = host:reshape({ n, s[2] * s[3] * s[4] })
  local spread = (flat:max(2) - flat:min(2)):reshape({ n, 1, 1, 1 }) * level
  local total
  for _ = 1, samples do
    local noisy = host + C.randn(table.unpack(s)) * spread
    local g = input_gradient(model, noisy:to(x:device()), cls, "smoothgrad")
    total = total and total + g or g
  end
  return max_abs(total / samples), cls
end

--- integrated_gradients(model, x, {class, baseline (zeros), steps = 64}) ->
-- maps (N, H, W) (the attributions summed over channels, signed), classes,
-- and a table {attributions (N, H, W, C), delta}: delta is the largest
-- relative gap of completeness, |sum(attr) - (logit(x) - logit(baseline))|
-- / |logit(x) - logit(baseline)| (Sundararajan et al. 2017: it should be
-- small; raise steps if not).  The path integral by the midpoint rule
-- (which never evaluates a ReLU exactly at its kink at the baseline).
function M.integrated_gradients(model, x, o)
  o = optim.check_fields("nn.explain.integrated_gradients", o, { class = true, baseline = true, steps = true }, "option", 3)
  x = inputs(model, x, "integrated_gradients")
  local steps = o.steps or 64
  if math.type(steps) ~= "integer" or steps < 1 then fail("integrated_gradients", "steps must be a positive integer") end
  local n = x:shape()[1]
  local base = o.baseline
  if base == nil then base = C.zeros(table.unpack(x:shape()))
  elseif type(base) == "number" then base = C.full(x:shape(), base)
  elseif not C.is_tensor(base) then fail("integrated_gradients", "baseline: a number or a tensor like x expected") end
  base = base:to("cpu"):float()
  local bs, xs = base:shape(), x:shape()
  if table.concat(bs, ",") ~= table.concat(xs, ",") then
    fail("integrated_gradients", string.format("baseline of shape (%s), the images (%s): give one of theirs or a number",
      table.concat(bs, ", "), table.concat(xs, ", ")))
  end
  local host = x:to("cpu")
  local cls = chosen(model, x, o.class, "integrated_gradients")
  local sum
  for i = 1, steps do
    local point = base + (host - base) * ((i - 0.5) / steps)
    local g = input_gradient(model, point:to(x:device()), cls, "integrated_gradients")
    sum = sum and sum + g or g
  end
  local attributions = (host - base) * sum / steps
  -- completeness, per image
  local function logits_of(t)
    local prev = C.set_no_grad(true)
    local z = forward(model, t:to(x:device()))
    C.set_no_grad(prev)
    return z:to("cpu"):totable()
  end
  local zx, zb = logits_of(host), logits_of(base)
  local s = host:shape()
  local per = attributions:reshape({ n, s[2] * s[3] * s[4] }):sum(2):totable()
  local delta = 0
  for i = 1, n do
    local want = zx[i][cls[i] + 1] - zb[i][cls[i] + 1]
    local gap = math.abs(per[i] - want) / math.max(math.abs(want), 1e-12)
    delta = math.max(delta, gap)
  end
  return attributions:sum(4), cls, { attributions = attributions, delta = delta }
end

local function find_layer(model, name, fn)
  for _, n in ipairs(model.nodes) do
    if n.layer.name == name then return n.layer end
  end
  local names = {}
  for _, n in ipairs(model.nodes) do names[#names + 1] = n.layer.name end
  fail(fn, string.format("no layer '%s' in the model (layers: %s)", tostring(name), table.concat(names, ", ")))
end

--- logits(model, x, {layer, activation}) -> the model's output before its
-- last activation (N, K), without gradients; with layer and activation,
-- that layer's output replaced by the tensor given (to probe the rest of
-- the model).
function M.logits(model, x, o)
  o = optim.check_fields("nn.explain.logits", o, { layer = true, activation = true }, "option", 3)
  x = inputs(model, x, "logits")
  local layer = o.layer and find_layer(model, o.layer, "logits")
  local prev = C.set_no_grad(true)
  local ok, z = pcall(forward, model, x, layer, o.activation)
  C.set_no_grad(prev)
  if not ok then error(z, 2) end
  return z
end

--- gradients(model, x, {class, layer}) -> the gradient of the class's logit
-- with respect to the input (or to the layer's output), on the CPU, with
-- the layer's output and the classes: what the maps are made from.
function M.gradients(model, x, o)
  o = optim.check_fields("nn.explain.gradients", o, { class = true, layer = true }, "option", 3)
  x = inputs(model, x, "gradients")
  if not o.layer then
    local g, cls = input_gradient(model, x, o.class, "gradients")
    return g, x:to("cpu"), cls
  end
  local layer = find_layer(model, o.layer, "gradients")
  local logits, a = forward(model, x, layer)
  local cls, k = classes(logits, o.class, x:shape()[1], "gradients")
  picked(logits, cls, k):backward()
  local g = a.grad:to("cpu")
  clear_grads(model)
  return g, a:to("cpu"), cls
end

-- The last layer whose output is an image (H, W, C) of more than one
-- position (a 1x1 map, after the last pooling of a small input, would
-- paint every pixel alike).
local function last_spatial(model)
  local found
  for _, n in ipairs(model.nodes) do
    local s = n.outputs[1].shape
    if #n.outputs == 1 and s and #s == 3 and s[1] * s[2] > 1 and n.outputs[1] ~= model.outputs[1] then
      found = n.layer
    end
  end
  return found
end

-- Bilinear resampling of maps (N, h, w) to (N, H, W), pixel centres aligned
-- (half-pixel, as image resizing does).
local function resize(maps, n, h, w, H, W)
  local out = {}
  for i = 1, n do
    local m, o = maps[i], {}
    for y = 1, H do
      local fy = math.max(0, math.min(h - 1, (y - 0.5) * h / H - 0.5))
      local y0 = math.floor(fy)
      local y1, ty = math.min(y0 + 1, h - 1), fy - y0
      o[y] = {}
      for x = 1, W do
        local fx = math.max(0, math.min(w - 1, (x - 0.5) * w / W - 0.5))
        local x0 = math.floor(fx)
        local x1, tx = math.min(x0 + 1, w - 1), fx - x0
        local top = m[y0 + 1][x0 + 1] * (1 - tx) + m[y0 + 1][x1 + 1] * tx
        local bottom = m[y1 + 1][x0 + 1] * (1 - tx) + m[y1 + 1][x1 + 1] * tx
        o[y][x] = top * (1 - ty) + bottom * ty
      end
    end
    out[i] = o
  end
  return out
end

--- grad_cam(model, x, {class, layer = <the last layer with an image output
-- larger than 1x1>})
-- -> maps (N, H, W) in [0, 1], classes, the layer's name (Selvaraju et al.
-- 2017): the layer's channels weighted by the mean gradient of the class's
-- logit over their positions, summed, through ReLU, resized to the input
-- and divided by each map's maximum (a map that is all zero stays zero).
function M.grad_cam(model, x, o)
  o = optim.check_fields("nn.explain.grad_cam", o, { class = true, layer = true }, "option", 3)
  x = inputs(model, x, "grad_cam")
  local layer = o.layer and find_layer(model, o.layer, "grad_cam") or last_spatial(model)
  if not layer then fail("grad_cam", "the model has no layer with an image output (H, W, C) before its output") end
  local g, act, cls = M.gradients(model, x, { class = o.class, layer = layer.name })
  if act:dim() ~= 4 then
    fail("grad_cam", string.format("layer '%s' gives no image output (H, W, C)", layer.name))
  end
  local n = x:shape()[1]
  local s = act:shape()
  local weights = g:mean(3):mean(2):reshape({ n, 1, 1, s[4] })
  local cam = (act * weights):sum(4):relu():totable()
  local xs = x:shape()
  local maps = resize(cam, n, s[2], s[3], xs[2], xs[3])
  for i = 1, n do
    local peak = 0
    for _, row in ipairs(maps[i]) do for _, v in ipairs(row) do peak = math.max(peak, v) end end
    if peak > 0 then
      for _, row in ipairs(maps[i]) do for j, v in ipairs(row) do row[j] = v / peak end end
    end
  end
  return C.tensor(maps), cls, layer.name
end

-- Blue (0) to red (1) through cyan, yellow: a "jet"-like ramp.
local function heat(t)
  t = math.max(0, math.min(1, t))
  local r = math.max(0, math.min(1, 1.5 - math.abs(4 * t - 3)))
  local g = math.max(0, math.min(1, 1.5 - math.abs(4 * t - 2)))
  local b = math.max(0, math.min(1, 1.5 - math.abs(4 * t - 1)))
  return r, g, b
end

--- overlay(x, maps, path, {alpha = 0.5, cols, labels, class_names, title}):
-- each image with its map over it (scaled to [0, 1] per map; signed maps by
-- their absolute value), next to the image alone, as a PNG (or SVG) grid.
function M.overlay(x, maps, path, o)
  o = optim.check_fields("nn.explain.overlay", o, { alpha = true, cols = true, labels = true, class_names = true, title = true, max = true }, "option", 4)
  if type(path) ~= "string" then fail("overlay", "a file path (.png or .svg) expected") end
  if not C.is_tensor(x) or x:dim() ~= 4 then fail("overlay", "images (N, H, W, C) expected") end
  if not C.is_tensor(maps) or maps:dim() ~= 3 then fail("overlay", "maps (N, H, W) expected") end
  local xs, ms = x:shape(), maps:shape()
  if ms[1] ~= xs[1] or ms[2] ~= xs[2] or ms[3] ~= xs[3] then
    fail("overlay", string.format("maps (%d, %d, %d) do not match images (%d, %d, %d, ...)", ms[1], ms[2], ms[3],
      xs[1], xs[2], xs[3]))
  end
  local alpha = o.alpha or 0.5
  local m = maps:to("cpu"):abs():totable()
  local n = math.min(xs[1], o.max or 32)
  local img = x:to("cpu"):float()
  if img:max():item() > 1.5 then img = img / 255 end
  local pics, names = {}, {}
  for i = 1, n do
    local peak = 0
    for _, row in ipairs(m[i]) do for _, v in ipairs(row) do peak = math.max(peak, v) end end
    local layer = {}
    for yy = 1, xs[2] do
      layer[yy] = {}
      for xx = 1, xs[3] do
        local t = peak > 0 and m[i][yy][xx] / peak or 0
        local r, g, b = heat(t)
        layer[yy][xx] = { r, g, b, alpha * (0.25 + 0.75 * t) }
      end
    end
    pics[i] = C.tensor(layer)
    names[i] = o.labels and tostring((o.class_names or {})[o.labels[i] + 1] or o.labels[i]) or nil
  end
  return plot.pairs(img, pics, path, { cols = o.cols, labels = o.labels and names, title = o.title })
end

return M
