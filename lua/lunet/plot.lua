-- nn.plot: pictures of training, in one call each, written as PNG (or SVG
-- by the name's extension) on a cairo canvas (lua/lunet_plot_lua.c):
--   history(hist, path)                         loss and metrics per epoch
--   confusion_matrix(cm, labels, path)          counts as a heat map
--   images(x, {labels, predictions, path})      a grid, mistakes in red
--   weights(layer, path)                        a Conv2D's filters as tiles
--   curve(xs, ys, path, {...})                  any line chart (lr_find's)
-- Every function returns the path it wrote.
local C = require "lunet.core"

local M = {}

local INK, GRID, FRAME = "#222222", "#e6e6e6", "#888888"
local TRAIN, VALID, BAD = "#1f77b4", "#ff7f0e", "#d62728"
local FONT, SMALL = 13, 11

local function fail(fn, msg) error(string.format("nn.plot.%s: %s", fn, msg), 3) end

local function check_path(fn, path)
  if type(path) ~= "string" or not (path:match("%.png$") or path:match("%.svg$")) then
    fail(fn, "a file name ending in .png or .svg expected, got " .. tostring(path))
  end
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

-- ---- axes ----

-- About n round tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k.
local function ticks(lo, hi, n)
  if hi <= lo then hi = lo + (lo == 0 and 1 or math.abs(lo) * 0.1) end
  local raw = (hi - lo) / (n or 5)
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local step = mag
  for _, m in ipairs({1, 2, 5, 10}) do
    if m * mag >= raw * (1 - 1e-9) then step = m * mag break end
  end
  local out, v = {}, math.floor(lo / step + 1e-9) * step
  while v <= hi + step * 1e-9 do
    if v >= lo - step * 1e-9 then out[#out + 1] = v end
    v = v + step
  end
  return out, step
end

local function label_of(v, step)
  if v == 0 then return "0" end
  local a = math.abs(v)
  if a >= 1e5 or a < 1e-3 then return string.format("%.0e", v) end
  local digits = math.max(0, -math.floor(math.log(step, 10) + 1e-9))
  return string.format("%." .. digits .. "f", v)
end

-- Draws axes in box {x, y, w, h} for data ranges xr, yr ({lo, hi});
-- o.log_x: a logarithmic x axis.  Returns the data -> pixel map.
local function axes(cv, box, xr, yr, o)
  o = o or {}
  local function fx(v)
    if o.log_x then
      local a, b = math.log(xr[1], 10), math.log(xr[2], 10)
      return box.x + (math.log(v, 10) - a) / (b - a) * box.w
    end
    return box.x + (v - xr[1]) / (xr[2] - xr[1]) * box.w
  end
  local function fy(v) return box.y + box.h - (v - yr[1]) / (yr[2] - yr[1]) * box.h end
  cv:rect(box.x, box.y, box.w, box.h, "#ffffff")
  local yt, ystep = ticks(yr[1], yr[2], 5)
  for _, v in ipairs(yt) do
    cv:line({box.x, fy(v), box.x + box.w, fy(v)}, GRID, 1)
    cv:text(box.x - 5, fy(v), label_of(v, ystep), SMALL, INK, 1, 0.5)
  end
  if o.log_x then
    for e = math.ceil(math.log(xr[1], 10) - 1e-9), math.floor(math.log(xr[2], 10) + 1e-9) do
      local v = 10 ^ e
      cv:line({fx(v), box.y, fx(v), box.y + box.h}, GRID, 1)
      cv:text(fx(v), box.y + box.h + 4, string.format("1e%d", e), SMALL, INK, 0.5, 0)
    end
  else
    local xt, xstep = ticks(xr[1], xr[2], o.integer_x and math.min(6, xr[2] - xr[1]) or 6)
    for _, v in ipairs(xt) do
      if not o.integer_x or v == math.floor(v) then
        cv:line({fx(v), box.y, fx(v), box.y + box.h}, GRID, 1)
        cv:text(fx(v), box.y + box.h + 4, label_of(v, math.max(xstep, o.integer_x and 1 or 0)), SMALL, INK, 0.5, 0)
      end
    end
  end
  cv:rect(box.x, box.y, box.w, box.h, nil, FRAME, 1)
  if o.xlabel then cv:text(box.x + box.w / 2, box.y + box.h + 20, o.xlabel, FONT, INK, 0.5, 0) end
  if o.ylabel then cv:text(box.x - 48, box.y + box.h / 2, o.ylabel, FONT, INK, 0.5, 1, false, 90) end
  if o.title then cv:text(box.x + box.w / 2, box.y - 8, o.title, FONT + 2, INK, 0.5, 1, true) end
  return fx, fy
end

-- The range of the finite values of some lists, padded by 5%.
local function range(lists, pad)
  local lo, hi = math.huge, -math.huge
  for _, list in ipairs(lists) do
    for _, v in ipairs(list) do
      if finite(v) then lo, hi = math.min(lo, v), math.max(hi, v) end
    end
  end
  if lo > hi then return {0, 1} end
  local p = (hi - lo) * (pad or 0.05)
  if p == 0 then p = math.abs(hi) * 0.05 + 1e-3 end
  return {lo - p, hi + p}
end

-- A series as the flat point list cv:line takes; a value that is not a
-- finite number leaves a gap.
local function points(fx, fy, xs, values)
  local pts = {}
  for j, v in ipairs(values) do
    local ok = finite(v)
    pts[#pts + 1], pts[#pts + 2] = ok and fx(xs[j] or j) or 0 / 0, ok and fy(v) or 0 / 0
  end
  return pts
end

local function legend(cv, x, y, entries)
  for i, e in ipairs(entries) do
    local ly = y + (i - 1) * 18
    cv:line({x, ly + 7, x + 22, ly + 7}, e.color, 2, e.dashed)
    cv:text(x + 28, ly, e.label, SMALL, INK, 0, 0)
  end
end

-- ---- curves ----

-- nn.plot.curve(xs, ys, path, {title, xlabel, ylabel, log_x, mark = {x, label},
-- width = 640, height = 420, legend = "top_right" | "bottom_right"}): one
-- line (ys a list of numbers) or several ({{label =, values =, dashed =},
-- ...} against the same xs).
function M.curve(xs, ys, path, o)
  check_path("curve", path)
  o = o or {}
  if type(xs) ~= "table" or #xs < 1 then error("nn.plot.curve: xs must be a list of numbers", 2) end
  if type(ys) ~= "table" or #ys < 1 then error("nn.plot.curve: ys must be a list of numbers or of series", 2) end
  local series = type(ys[1]) == "table" and ys or { { values = ys } }
  for i, s in ipairs(series) do
    if type(s.values) ~= "table" or #s.values ~= #xs then
      error(string.format("nn.plot.curve: %s has %s values for %d xs (one y per x)",
        #series > 1 and ("series " .. i) or "ys", type(s.values) == "table" and #s.values or "no", #xs), 2)
    end
  end
  for i, x in ipairs(xs) do
    if type(x) ~= "number" or x ~= x or (o.log_x and x <= 0) then
      error(string.format("nn.plot.curve: xs[%d] is %s (%s)", i, tostring(x),
        o.log_x and "a log axis takes numbers > 0" or "a number expected"), 2)
    end
  end
  local colors = { TRAIN, VALID, "#2ca02c", "#9467bd", "#8c564b" }
  local lists = {}
  for i, s in ipairs(series) do lists[i] = s.values end
  local w, h = o.width or 640, o.height or 420
  local cv = C.canvas_new(path, w, h)
  local xr = o.log_x and { xs[1], xs[#xs] } or range({ xs }, 0)
  local fx, fy = axes(cv, { x = 70, y = 40, w = w - 100, h = h - 95 }, xr, range(lists), o)
  for i, s in ipairs(series) do
    cv:line(points(fx, fy, xs, s.values), s.color or colors[(i - 1) % #colors + 1], 2, s.dashed)
  end
  if o.mark then
    local mx = fx(o.mark.x)
    cv:line({ mx, 40, mx, h - 55 }, BAD, 1.5, true)
    if o.mark.label then cv:text(mx + 4, 44, o.mark.label, SMALL, BAD, 0, 0) end
  end
  if #series > 1 or series[1].label then
    local entries = {}
    for i, s in ipairs(series) do
      entries[i] = { label = s.label or tostring(i), color = s.color or colors[(i - 1) % #colors + 1], dashed = s.dashed }
    end
    if o.legend ~= nil and o.legend ~= "top_right" and o.legend ~= "bottom_right" then
      error("nn.plot.curve: legend must be \"top_right\" or \"bottom_right\"", 2)
    end
    legend(cv, w - 200, o.legend == "bottom_right" and h - 70 - 18 * #entries or 48, entries)
  end
  return cv:finish()
end

-- ---- history ----

-- nn.plot.history(hist, path[, {title}]): one panel per quantity (loss,
-- then each metric), training solid and validation dashed, per epoch.
function M.history(hist, path, o)
  check_path("history", path)
  o = o or {}
  if type(hist) ~= "table" then fail("history", "the History from model:fit expected, got " .. type(hist)) end
  local logs = hist.history or hist
  local names = {}
  for k, v in pairs(logs) do
    if type(k) == "string" and type(v) == "table" and not k:match("^val_") and #v > 0 then names[#names + 1] = k end
  end
  table.sort(names, function(a, b)
    if a == "loss" or b == "loss" then return a == "loss" end
    return a < b
  end)
  if #names == 0 then fail("history", "the history has no per-epoch values (did fit run an epoch?)") end
  local epochs = hist.epoch and #hist.epoch > 0 and hist.epoch or nil
  local cols = math.min(#names, 3)
  local rows = (#names + cols - 1) // cols
  local pw, ph = 400, 300
  local top = o.title and 34 or 0
  local cv = C.canvas_new(path, cols * pw, rows * ph + top)
  if o.title then cv:text(cols * pw / 2, 8, o.title, FONT + 4, INK, 0.5, 0, true) end
  for i, name in ipairs(names) do
    local train, val = logs[name], logs["val_" .. name]
    local xs = {}
    for e = 1, #train do xs[e] = epochs and epochs[e] + 1 or e end -- History.epoch counts from 0; the plot from 1
    local px, py = ((i - 1) % cols) * pw, top + ((i - 1) // cols) * ph
    local xr = { xs[1], math.max(xs[#xs], xs[1] + 1) }
    local fx, fy = axes(cv, { x = px + 70, y = py + 36, w = pw - 95, h = ph - 90 }, xr, range({ train, val or {} }),
      { title = name, xlabel = "epoch", integer_x = true })
    local function draw(values, color, dashed)
      cv:line(points(fx, fy, xs, values), color, 2, dashed)
      if #values == 1 and finite(values[1]) then cv:circle(fx(xs[1]), fy(values[1]), 3, color) end
    end
    draw(train, TRAIN)
    local entries = { { label = "training", color = TRAIN } }
    if val then
      draw(val, VALID, true)
      entries[2] = { label = "validation", color = VALID, dashed = true }
    end
    -- the legend goes to the corner the curves leave free: bottom right
    -- when the last epochs sit high (a rising accuracy)
    local last, yr = train[#train], range({ train, val or {} })
    local high = finite(last) and (last - yr[1]) / (yr[2] - yr[1]) > 0.5
    legend(cv, px + pw - 130, high and py + ph - 54 - 18 * #entries or py + 44, entries)
  end
  return cv:finish()
end

-- ---- confusion matrix ----

local function as_rows(v, fn)
  if C.is_tensor(v) then v = v:to("cpu"):totable() end
  if type(v) ~= "table" or type(v[1]) ~= "table" then fail(fn, "a (K, K) tensor or a list of rows expected") end
  for i, r in ipairs(v) do
    if #r ~= #v then fail(fn, string.format("row %d has %d values for %d classes (a square matrix expected)", i, #r, #v)) end
  end
  return v
end

-- White to dark blue.
local function shade(t)
  t = math.max(0, math.min(1, t))
  return { 1 - t * 0.92, 1 - t * 0.7, 1 - t * 0.35 }
end

-- nn.plot.confusion_matrix(cm, labels, path[, {normalize = false, title}]):
-- true classes in rows, predicted in columns; colours by count (or by the
-- share of the row with normalize = true), each cell with its count.
function M.confusion_matrix(cm, labels, path, o)
  if type(labels) == "string" and path == nil then labels, path = nil, labels end
  check_path("confusion_matrix", path)
  o = o or {}
  local rows = as_rows(cm, "confusion_matrix")
  local k = #rows
  labels = labels or {}
  if #labels > 0 and #labels ~= k then
    fail("confusion_matrix", string.format("%d labels for %d classes", #labels, k))
  end
  local names = {}
  for i = 1, k do names[i] = tostring(labels[i] or i - 1) end
  local cell = math.max(22, math.min(64, math.floor(560 / k)))
  local probe = C.canvas_new("measure.png", 1, 1) -- never written
  local lw = 0
  for _, n in ipairs(names) do lw = math.max(lw, probe:text_width(n, SMALL)) end
  local left, top = math.floor(lw + 50), math.floor(lw + 70)
  local w, h = left + k * cell + math.floor(lw / 2) + 20, top + k * cell + 30 -- labels lean right at 60 degrees
  local cv = C.canvas_new(path, w, h)
  local peak = 0
  for _, r in ipairs(rows) do for _, v in ipairs(r) do peak = math.max(peak, v) end end
  cv:text(left + k * cell / 2, 8, o.title or "confusion matrix", FONT + 2, INK, 0.5, 0, true)
  cv:text(left + k * cell / 2, 30, "predicted", FONT, INK, 0.5, 0)
  cv:text(14, top + k * cell / 2, "true", FONT, INK, 0.5, 0.5, false, 90)
  for i = 1, k do
    local total = 0
    for j = 1, k do total = total + rows[i][j] end
    cv:text(left - 6, top + (i - 0.5) * cell, names[i], SMALL, INK, 1, 0.5)
    cv:text(left + (i - 0.5) * cell, top - 6, names[i], SMALL, INK, 0, 0.5, false, 60)
    for j = 1, k do
      local v = rows[i][j]
      local t = o.normalize and (total > 0 and v / total or 0) or (peak > 0 and v / peak or 0)
      local x, y = left + (j - 1) * cell, top + (i - 1) * cell
      cv:rect(x, y, cell, cell, shade(t), "#ffffff", 1)
      local s = o.normalize and string.format("%.2f", t) or string.format("%d", math.floor(v + 0.5))
      if cell >= 26 then cv:text(x + cell / 2, y + cell / 2, s, math.min(SMALL, cell / 3), t > 0.5 and "#ffffff" or INK, 0.5, 0.5) end
    end
  end
  cv:rect(left, top, k * cell, k * cell, nil, FRAME, 1)
  return cv:finish()
end

-- ---- images ----

local function ids_of(v, n, fn, what)
  if v == nil then return nil end
  if C.is_tensor(v) then
    local s = v:shape()
    if #s == 2 and s[2] > 1 then v = v:to("cpu"):argmax(-1) end
    v = v:to("cpu"):reshape({ v:numel() }):totable()
  end
  if type(v) ~= "table" or #v < n then
    fail(fn, string.format("%s: one class per image expected (%d), got %s", what, n, type(v) == "table" and #v or type(v)))
  end
  return v
end

-- Images as (N, H, W, C) with values in 0..1 (0..255 scaled down).
local function images_01(x, fn)
  if not C.is_tensor(x) then fail(fn, "a tensor of images (N, H, W, C) expected") end
  local s = x:shape()
  if #s == 3 then x, s = x:reshape({ s[1], s[2], s[3], 1 }), { s[1], s[2], s[3], 1 } end
  if #s ~= 4 or (s[4] ~= 1 and s[4] ~= 3) then
    fail(fn, "images (N, H, W, C) with C 1 or 3 expected, got (" .. table.concat(s, ", ") .. ")")
  end
  x = x:to("cpu"):float()
  if x:max():item() > 1.5 then x = x / 255 end
  return x, s
end

-- nn.plot.images(x, {labels, predictions, class_names, path, cols, max = 36,
-- title}): a grid of the first images with the true class (and the
-- predicted one: green when right, red and framed when wrong).
-- predictions may be ids or scores (N, K).
function M.images(x, o)
  o = o or {}
  check_path("images", o.path)
  local xs, s = images_01(x, "images")
  local n = math.min(s[1], o.max or 36)
  local labels = ids_of(o.labels, n, "images", "labels")
  local preds = ids_of(o.predictions, n, "images", "predictions")
  local names = o.class_names or {}
  local cols = o.cols or math.min(n, math.ceil(math.sqrt(n * 1.5)))
  local rows = (n + cols - 1) // cols
  local scale = math.max(1, math.floor(96 / math.max(s[2], s[3])))
  local tw, th = s[3] * scale, s[2] * scale
  local cap = (labels or preds) and 30 or 0
  local gw, gh = math.max(tw + 10, 110), th + cap + 10
  local top = o.title and 34 or 6
  local cv = C.canvas_new(o.path, cols * gw + 10, rows * gh + top + 4)
  if o.title then cv:text((cols * gw + 10) / 2, 8, o.title, FONT + 2, INK, 0.5, 0, true) end
  local function name(id) return id and tostring(names[id + 1] or id) or "?" end
  for i = 1, n do
    local gx, gy = 5 + ((i - 1) % cols) * gw, top + ((i - 1) // cols) * gh
    local ix = gx + (gw - tw) / 2
    local img = C.take_rows(xs, i, 1):reshape({ s[2], s[3], s[4] })
    cv:image(img, ix, gy, tw, th)
    local wrong = labels and preds and labels[i] ~= preds[i]
    if wrong then cv:rect(ix - 2, gy - 2, tw + 4, th + 4, nil, BAD, 3) end
    if labels then cv:text(gx + gw / 2, gy + th + 2, name(labels[i]), SMALL, INK, 0.5, 0) end
    if preds then
      cv:text(gx + gw / 2, gy + th + (labels and 15 or 2), (labels and "→ " or "") .. name(preds[i]), SMALL,
        wrong and BAD or "#2ca02c", 0.5, 0, wrong)
    end
  end
  return cv:finish()
end

-- nn.plot.pairs(x, overlays, path, {cols, labels, title}): each image
-- twice, alone and under its overlay (H, W, 4) RGBA in 0..1 (the
-- explanations' heat maps).
function M.pairs(x, overlays, path, o)
  check_path("pairs", path)
  o = o or {}
  local xs, s = images_01(x, "pairs")
  local n = math.min(s[1], #overlays)
  local cols = o.cols or math.min(n, 4)
  local rows = (n + cols - 1) // cols
  local scale = math.max(1, math.floor(112 / math.max(s[2], s[3])))
  local tw, th = s[3] * scale, s[2] * scale
  local cap = o.labels and 18 or 0
  local gw, gh = 2 * tw + 16, th + cap + 12
  local top = o.title and 34 or 6
  local cv = C.canvas_new(path, cols * gw + 10, rows * gh + top + 4)
  if o.title then cv:text((cols * gw + 10) / 2, 8, o.title, FONT + 2, INK, 0.5, 0, true) end
  for i = 1, n do
    local gx, gy = 5 + ((i - 1) % cols) * gw, top + ((i - 1) // cols) * gh
    local img = C.take_rows(xs, i, 1):reshape({ s[2], s[3], s[4] })
    cv:image(img, gx, gy, tw, th)
    cv:image(img, gx + tw + 4, gy, tw, th)
    cv:image(overlays[i], gx + tw + 4, gy, tw, th, true)
    if o.labels then cv:text(gx + tw + 2, gy + th + 2, o.labels[i], SMALL, INK, 0.5, 0) end
  end
  return cv:finish()
end

-- ---- weights ----

-- nn.plot.weights(layer, path[, {max_filters = 64}]): a Conv2D's kernels
-- (KH, KW, C, F), one tile per filter (RGB when C = 3, else one tile per
-- input channel, up to 8), each scaled from its own minimum to maximum.
function M.weights(layer, path, o)
  check_path("weights", path)
  o = o or {}
  if type(layer) ~= "table" or not layer.get_weights then
    fail("weights", "a layer expected (model.layers[i] or model:get_layer(name))")
  end
  local w = layer:get_weights()[1]
  if not w or w:dim() ~= 4 then
    fail("weights", string.format("%s has no 4-D kernel (KH, KW, C, F): only convolutions are drawn",
      tostring(layer.name or layer)))
  end
  local s = w:shape()
  local kh, kw, ch, f = s[1], s[2], s[3], s[4]
  local k = w:to("cpu"):float():totable()
  local nf = math.min(f, o.max_filters or 64)
  local per = ch == 3 and 1 or math.min(ch, 8)
  local scale = math.max(4, math.floor(48 / math.max(kh, kw)))
  local tw, th = kw * scale, kh * scale
  local cols = per == 1 and math.min(nf, 8) or per
  local rows = per == 1 and (nf + cols - 1) // cols or nf
  local cv = C.canvas_new(path, cols * (tw + 6) + 10, rows * (th + 6) + 40)
  cv:text((cols * (tw + 6) + 10) / 2, 8, string.format("%s: %d filters %dx%d", tostring(layer.name or "conv"), f, kh, kw),
    FONT, INK, 0.5, 0, true)
  for fi = 1, nf do
    for c0 = 1, per do
      local lo, hi = math.huge, -math.huge
      for a = 1, kh do for b = 1, kw do for c = 1, ch do
        local v = k[a][b][c][fi]
        if per == 1 or c == c0 then lo, hi = math.min(lo, v), math.max(hi, v) end
      end end end
      local span = hi > lo and hi - lo or 1
      local tile = {}
      for a = 1, kh do
        tile[a] = {}
        for b = 1, kw do
          if ch == 3 then
            tile[a][b] = { (k[a][b][1][fi] - lo) / span, (k[a][b][2][fi] - lo) / span, (k[a][b][3][fi] - lo) / span }
          else
            tile[a][b] = { (k[a][b][c0][fi] - lo) / span }
          end
        end
      end
      local idx = per == 1 and fi - 1 or (fi - 1) * per + c0 - 1
      local x, y = 5 + (idx % cols) * (tw + 6), 32 + (idx // cols) * (th + 6)
      cv:image(C.tensor(tile), x, y, tw, th)
    end
  end
  return cv:finish()
end

-- nn.plot.message(path, text): a picture that only says something (a
-- report's "no mistakes").
function M.message(path, text)
  check_path("message", path)
  local cv = C.canvas_new(path, 480, 80)
  cv:text(240, 40, text, FONT + 2, INK, 0.5, 0.5)
  return cv:finish()
end

-- ---- live ----

-- nn.callbacks.LivePlot{path = "curves.png", every = 1, title}: rewrites
-- the history plot at the end of every `every` epochs (and at the end), so
-- a viewer that keeps the file open follows the training.
function M.LivePlot(o)
  o = o or {}
  if type(o) == "string" then o = { path = o } end
  check_path("LivePlot", o.path)
  local every = o.every or 1
  if math.type(every) ~= "integer" or every < 1 then fail("LivePlot", "every must be a positive integer") end
  local cb = { path = o.path, every = every, history = {}, epoch = {} }
  function cb:on_train_begin() self.history, self.epoch = {}, {} end
  function cb:on_epoch_end(_, epoch, logs)
    self.epoch[#self.epoch + 1] = epoch
    for k, v in pairs(logs or {}) do
      if type(v) == "number" then
        self.history[k] = self.history[k] or {}
        self.history[k][#self.epoch] = v
      end
    end
    if #self.epoch % self.every == 0 then M.history(self, self.path, { title = o.title }) end
  end
  function cb:on_train_end()
    if #self.epoch > 0 and #self.epoch % self.every ~= 0 then M.history(self, self.path, { title = o.title }) end
  end
  return cb
end

M.ticks = ticks -- for the tests

return M
