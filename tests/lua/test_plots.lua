-- nn.plot, nn.callbacks.LivePlot and nn.tools.lr_find: each picture decoded
-- back (nn.utils.load_img) and checked for its size, for drawn content, for
-- content that follows the data, and for text that really renders (a font
-- is installed); lr_find restores the weights and the optimizer's state.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local C = require "lunet.core"

local T = {}

local function load(path) return nn.utils.load_img(path):totable() end

-- Pixels of a region (rows r0..r1, columns c0..c1, 1-based) that are not
-- near white.
local function inked(img, r0, r1, c0, c1)
  local n = 0
  for r = r0, math.min(r1, #img) do
    for c = c0, math.min(c1, #img[1]) do
      local p = img[r][c]
      if p[1] + p[2] + p[3] < 600 then n = n + 1 end
    end
  end
  return n
end

local function differ(a, b)
  if #a ~= #b or #a[1] ~= #b[1] then return true end
  for r = 1, #a do
    for c = 1, #a[1] do
      for k = 1, 3 do if a[r][c][k] ~= b[r][c][k] then return true end end
    end
  end
  return false
end

local function hist(scale)
  local h = {epoch = {1, 2, 3, 4}, history = {loss = {}, val_loss = {}, accuracy = {}, val_accuracy = {}}}
  for e = 1, 4 do
    h.history.loss[e], h.history.val_loss[e] = scale / e, scale / e + 0.1
    h.history.accuracy[e], h.history.val_accuracy[e] = 1 - 0.5 / e, 0.9 - 0.5 / e
  end
  return h
end

function T.history_has_a_panel_per_quantity_and_follows_the_data()
  local dir = check.tmpdir()
  local a = load(nn.plot.history(hist(1), dir .. "/a.png"))
  check.eq(#a, 300, "height: one row of panels")
  check.eq(#a[1], 800, "width: loss and accuracy")
  check.eq(inked(a, 1, 300, 1, 800) > 2000, true, "drawn content")
  local b = load(nn.plot.history(hist(2), dir .. "/b.png"))
  check.eq(differ(a, b), true, "another history, another picture")
  -- the curves use the colours of the legend: training blue, validation orange
  local blue, orange = 0, 0
  for r = 1, 300 do
    for c = 1, 400 do
      local p = a[r][c]
      if p[3] > 150 and p[1] < 80 then blue = blue + 1 end
      if p[1] > 200 and p[2] > 90 and p[2] < 160 and p[3] < 60 then orange = orange + 1 end
    end
  end
  check.eq(blue > 100 and orange > 50, true, string.format("curves drawn (blue %d, orange %d)", blue, orange))
  local svg = nn.plot.history(hist(1), dir .. "/a.svg")
  local f = assert(io.open(svg))
  check.eq(f:read("a"):find("<svg", 1, true) ~= nil, true, "an SVG file")
  f:close()
  check.fails(function() nn.plot.history({history = {}}, dir .. "/c.png") end, "the history has no per-epoch values")
  check.fails(function() nn.plot.history(hist(1), dir .. "/c.jpg") end, "a file name ending in .png or .svg expected")
end

function T.a_title_really_renders()
  -- the band above the panels is white without a title, inked with one
  local dir = check.tmpdir()
  local plain = load(nn.plot.history(hist(1), dir .. "/plain.png"))
  local titled = load(nn.plot.history(hist(1), dir .. "/titled.png", {title = "Fashion-MNIST, 4 epochs"}))
  check.eq(#titled, #plain + 34, "the title's band")
  check.eq(inked(plain, 1, 20, 250, 550), 0, "no title")
  local n = inked(titled, 1, 30, 250, 550)
  if n < 150 then error(string.format("the title inked %d pixels: is a font (fonts-dejavu-core) installed?", n)) end
  -- and its width follows the text: a longer title inks more
  local longer = load(nn.plot.history(hist(1), dir .. "/longer.png", {title = "Fashion-MNIST, 4 epochs, Adam, batch 32"}))
  check.eq(inked(longer, 1, 30, 1, 800) > n, true, "a longer title")
end

function T.confusion_matrix_cells_shade_by_count()
  local dir = check.tmpdir()
  local cm = {{9, 1, 0}, {0, 5, 5}, {2, 0, 8}}
  local img = load(nn.plot.confusion_matrix(cm, {"cat", "dog", "bird"}, dir .. "/cm.png"))
  check.eq(#img > 150 and #img[1] > 150, true, "size")
  -- the darkest cell is (1, 1) (count 9), an empty one (1, 3) is white:
  -- find the cells by their colours' order along the first row
  local row, darkest, lightest = nil, 765, 0
  for r = 1, #img do
    local dark = 0
    for c = 1, #img[1] do if img[r][c][1] < 60 and img[r][c][3] > 120 then dark = dark + 1 end end
    if dark > 20 then row = r break end
  end
  check.eq(row ~= nil, true, "a dark blue cell for the largest count")
  for c = 1, #img[1] do
    local p = img[row + 2][c]
    darkest, lightest = math.min(darkest, p[1] + p[2] + p[3]), math.max(lightest, p[1] + p[2] + p[3])
  end
  check.eq(darkest < 400 and lightest > 700, true, "dark and white cells in the first row")
  local normalized = load(nn.plot.confusion_matrix(nn.tensor(cm), nil, dir .. "/cmn.png", {normalize = true}))
  check.eq(differ(img, normalized), true, "normalised rows shade differently")
  check.fails(function() nn.plot.confusion_matrix({{1, 2}, {3}}, nil, dir .. "/x.png") end, "row 2 has 1 values for 2 classes")
  check.fails(function() nn.plot.confusion_matrix(cm, {"a"}, dir .. "/x.png") end, "1 labels for 3 classes")
end

function T.image_grid_marks_the_mistakes()
  local dir = check.tmpdir()
  local x = nn.zeros(4, 8, 8, 1) + 0.5
  local right = load(nn.plot.images(x, {labels = {0, 1, 2, 3}, predictions = {0, 1, 2, 3}, path = dir .. "/r.png"}))
  local wrong = load(nn.plot.images(x, {labels = {0, 1, 2, 3}, predictions = nn.tensor({{1, 0, 0, 0}, {0, 1, 0, 0},
    {0, 0, 0, 1}, {0, 0, 0, 1}}), path = dir .. "/w.png", class_names = {"a", "b", "c", "d"}}))
  local function red(img)
    local n = 0
    for r = 1, #img do for c = 1, #img[1] do
      local p = img[r][c]
      if p[1] > 180 and p[2] < 80 and p[3] < 80 then n = n + 1 end
    end end
    return n
  end
  check.eq(red(right), 0, "no mistake, no red")
  check.eq(red(wrong) > 100, true, "a mistake framed in red")
  -- 0..255 images are scaled down: the same picture as 0..1
  local scaled = load(nn.plot.images(x * 255, {labels = {0, 1, 2, 3}, predictions = {0, 1, 2, 3}, path = dir .. "/s.png"}))
  check.eq(differ(right, scaled), false, "0..255 and 0..1 draw alike")
  check.fails(function() nn.plot.images(x, {labels = {0}, path = dir .. "/z.png"}) end, "labels: one class per image expected (4)")
end

function T.weights_tiles_follow_the_kernel()
  local dir = check.tmpdir()
  local m = nn.Sequential{nn.Conv2D{4, 3, input_shape = {8, 8, 3}, name = "first"}}
  m:build()
  local a = load(nn.plot.weights(m.layers[1], dir .. "/a.png"))
  check.eq(inked(a, 30, #a, 1, #a[1]) > 500, true, "tiles drawn")
  local w = m.layers[1]:get_weights()
  m.layers[1]:set_weights({w[1] * -1, w[2]})
  local b = load(nn.plot.weights(m.layers[1], dir .. "/b.png"))
  check.eq(differ(a, b), true, "other weights, other tiles")
  local gray = nn.Sequential{nn.Conv2D{2, 3, input_shape = {8, 8, 5}}}
  gray:build()
  local g = load(nn.plot.weights(gray.layers[1], dir .. "/g.png"))
  check.eq(#g[1] > #g, true, "one tile per input channel (5 across)")
  local dense = nn.Sequential{nn.Dense{2, input_shape = {3}}}
  dense:build()
  check.fails(function() nn.plot.weights(dense.layers[1], dir .. "/d.png") end, "has no 4-D kernel")
end

function T.live_plot_rewrites_the_curves_each_epoch()
  local dir = check.tmpdir()
  nn.seed(1)
  local x, y = nn.randn(40, 3), nn.randn(40, 1)
  local m = nn.Sequential{nn.Dense{1, input_shape = {3}}}
  m:compile{optimizer = "sgd", loss = "mse", metrics = {"mae"}}
  local seen = {}
  local live = nn.callbacks.LivePlot{path = dir .. "/live.png"}
  local spy = {on_epoch_end = function(_, _, epoch)
    local f = io.open(dir .. "/live.png", "rb")
    seen[epoch] = f and f:read("a")
    if f then f:close() end
  end}
  m:fit(x, y, {epochs = 3, batch_size = 8, verbose = 0, validation_split = 0.25, callbacks = {live, spy}})
  check.eq(seen[0] ~= nil and seen[2] ~= nil, true, "written at each epoch's end")
  check.eq(seen[0] ~= seen[2], true, "and rewritten as training goes")
  check.eq(#live.history.loss, 3, "history kept")
  check.eq(#live.history.val_mae, 3, "validation metrics kept")
  local img = load(dir .. "/live.png")
  check.eq(#img[1], 800, "loss and mae panels")
end

function T.lr_find_sweeps_and_restores_the_model()
  nn.seed(2)
  local x = nn.randn(256, 4)
  local labels = {}
  local xs = x:totable()
  for i = 1, 256 do labels[i] = xs[i][1] + xs[i][2] > 0 and 1 or 0 end
  local y = nn.tensor(labels)
  local m = nn.Sequential{nn.Dense{8, activation = "relu", input_shape = {4}}, nn.BatchNormalization(),
    nn.Dense{2, activation = "softmax"}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "sparse_categorical_crossentropy"}
  m:fit(x, y, {epochs = 1, batch_size = 32, verbose = 0}) -- the optimizer has state now
  local before = m:get_weights()
  local slots = {}
  for i, s in ipairs(C.optimizer_slots(m.optimizer.handle, #m.params)) do
    slots[i] = {}
    for k, t in pairs(s) do slots[i][k] = t:totable() end
  end
  local iterations = m.optimizer.iterations
  local path = check.tmpdir() .. "/lr.png"
  local r = nn.tools.lr_find(m, x, y, {steps = 60, batch_size = 16, verbose = 0, path = path})
  check.eq(#r.lrs >= 20, true, "points before divergence")
  check.near(r.lrs[1], 1e-7, 1e-9, "starts at min_lr")
  check.eq(r.suggestion > 1e-6 and r.suggestion < 1, true, "a plausible suggestion: " .. r.suggestion)
  check.eq(r.suggestion <= r.min_loss_lr, true, "before the minimum")
  for i, w in ipairs(m:get_weights()) do check.same_table(w:totable(), before[i]:totable(), 0, "weight " .. i) end
  for i, s in ipairs(C.optimizer_slots(m.optimizer.handle, #m.params)) do
    for k, t in pairs(s) do check.same_table(t:totable(), slots[i][k], 0, "slot " .. i .. "." .. k) end
  end
  check.eq(m.optimizer.iterations, iterations, "update count")
  check.eq(m.optimizer.learning_rate, 1e-3, "learning rate setting")
  local img = load(path)
  check.eq(#img, 420, "the plot")
  -- a model never trained: its optimizer has no state afterwards either
  local fresh = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {4}}}
  fresh:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
  fresh:build()
  local w0 = fresh:get_weights()[1]:totable()
  nn.tools.lr_find(fresh, x, y, {steps = 20, verbose = 0})
  check.same_table(fresh:get_weights()[1]:totable(), w0, 0, "fresh weights")
  check.eq(fresh.optimizer.iterations, 0, "fresh optimizer")
  check.fails(function() nn.tools.lr_find(fresh, x, y, {min_lr = 1, max_lr = 0.1}) end, "0 < min_lr < max_lr expected")
  check.fails(function() nn.tools.lr_find(fresh, x, y, {steps = 20, verbos = 0}) end,
    "bad argument 'verbos' to 'lr_find' (unknown option; valid: batch_size, max_lr")
  -- no trace in the random generators: math.random's sequence and lunet's
  -- (dropout draws during the sweep) go on as if it had not run (it
  -- reseeded math.random with 0)
  local drop = nn.Sequential{nn.Dense{4, input_shape = {4}}, nn.Dropout{0.5}, nn.Dense{2, activation = "softmax"}}
  drop:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
  drop:build()
  math.randomseed(77)
  nn.seed(78)
  local want_math, want_nn = math.random(), nn.rand(3):totable()
  math.randomseed(77)
  nn.seed(78)
  nn.tools.lr_find(drop, x, y, {steps = 10, verbose = 0})
  check.eq(math.random(), want_math, "math.random after lr_find")
  check.same_table(nn.rand(3):totable(), want_nn, 0, "lunet's generator after lr_find")
  -- a sweep whose loss never falls suggests no rate below min_lr (a tenth
  -- of the best point was)
  local r2 = nn.tools.lr_find(fresh, x, y, {steps = 5, min_lr = 1, max_lr = 2, stop_factor = 1e9, verbose = 0})
  check.eq(r2.suggestion >= 1, true, "suggestion " .. r2.suggestion .. " >= min_lr")
end

function T.ticks_are_round()
  check.same_table(nn.plot.ticks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1}, 1e-12, "0..1")
  check.same_table(nn.plot.ticks(1.93, 2.87, 5), {2, 2.2, 2.4, 2.6, 2.8}, 1e-12, "1.93..2.87")
  check.same_table(nn.plot.ticks(-3, 48, 5), {0, 20, 40}, 1e-12, "-3..48: steps of 1, 2 or 5 x 10^k")
end

-- nn.plot.curve checks its data: xs and ys of other lengths, a non-list,
-- or a 0 on a log axis were drawn wrong or failed inside.
function T.curve_checks_its_data()
  local path = check.tmpdir() .. "/c.png"
  nn.plot.curve({1, 2, 3}, {3, 1, 2}, path)
  check.eq(#load(path), 420, "a curve")
  check.fails(function() nn.plot.curve({1, 2}, {3, 1, 2}, path) end, "nn.plot.curve: ys has 3 values for 2 xs")
  check.fails(function() nn.plot.curve({1, 2, 3}, {{values = {1, 2, 3}}, {values = {1}}}, path) end,
    "series 2 has 1 values for 3 xs")
  check.fails(function() nn.plot.curve(5, {1}, path) end, "xs must be a list of numbers")
  check.fails(function() nn.plot.curve({0, 1, 10}, {1, 2, 3}, path, {log_x = true}) end,
    "xs[1] is 0 (a log axis takes numbers > 0)")
end

check.run(T)
