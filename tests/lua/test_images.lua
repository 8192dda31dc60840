-- Image files and folders: save_img/load_img round trips, the resize equal
-- to the Resizing layer's (itself held to TF's formula in
-- test_preprocessing), channel conversions, image_dataset_from_directory's
-- classes, labels, split and order, hostile files, bad options.
-- Run with LUNET_IMAGE_MAX_PIXELS=1000000 (the CMake test sets it).
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local U = nn.utils

local T = {}
local tmp = check.tmpdir()

local function max_diff(a, b) return (a - b):abs():max():item() end

-- Whole-number pixels 0..255 (exact in PNG).
local function pixels(h, w, c, seed)
  nn.seed(seed or 1)
  local t = (nn.rand(h, w, c) * 255):totable()
  for y = 1, h do for x = 1, w do for k = 1, c do t[y][x][k] = math.floor(t[y][x][k]) end end end
  return nn.tensor(t)
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

function T.png_round_trip_is_exact_and_jpeg_close()
  for _, c in ipairs{1, 3, 4} do
    local x = pixels(7, 9, c, c)
    local mode = ({[1] = "grayscale", [3] = "rgb", [4] = "rgba"})[c]
    U.save_img(tmp .. "/a.png", x, {scale = false})
    check.eq(max_diff(U.load_img(tmp .. "/a.png", {color_mode = mode}), x), 0, c .. " channels through PNG")
  end
  -- a smooth picture through JPEG at quality 100
  local g = nn.arange(0, 64):reshape(8, 8, 1) * 3
  local smooth = nn.cat({g, g, g}, 3)
  U.save_img(tmp .. "/b.jpg", smooth, {quality = 100, scale = false})
  assert(max_diff(U.load_img(tmp .. "/b.jpg"), smooth) <= 4, "JPEG quality 100 is off by more than 4 levels")
  local i = require("lunet.core").image_info(tmp .. "/b.jpg")
  check.eq(i.format, "jpeg", "format from the bytes")
  check.eq(i.width, 8, "width")
end

function T.load_resizes_as_the_resizing_layer()
  local x = pixels(13, 10, 3, 5)
  U.save_img(tmp .. "/r.png", x, {scale = false})
  for _, c in ipairs{{5, 7}, {20, 16}, {13, 10}, {6, 6, true}, {4, 9, true}} do
    local got = U.load_img(tmp .. "/r.png", {target_size = {c[1], c[2]}, crop_to_aspect_ratio = c[3]})
    local want = nn.Sequential{nn.Resizing{c[1], c[2], crop_to_aspect_ratio = c[3] or false, input_shape = {13, 10, 3}}}(
      x:reshape(1, 13, 10, 3)):reshape(c[1], c[2], 3)
    assert(max_diff(got, want) < 1e-3, ("load_img %dx%d%s differs from Resizing by %g"):format(c[1], c[2],
      c[3] and " cropped" or "", max_diff(got, want)))
  end
end

function T.channels_convert()
  local rgb = pixels(3, 4, 3, 9)
  U.save_img(tmp .. "/c.png", rgb, {scale = false})
  local gray = U.load_img(tmp .. "/c.png", {color_mode = "grayscale"}):totable()
  local px = rgb:totable()
  for y = 1, 3 do for x = 1, 4 do
    local p = px[y][x]
    -- TensorFlow's PNG decoder: libpng's png_set_rgb_to_gray(png, 1, 0.299, 0.587), 15-bit fixed point, truncated
    check.eq(gray[y][x][1], (9797 * p[1] + 19234 * p[2] + 3737 * p[3]) >> 15, "gray of an RGB PNG")
  end end
  local g = pixels(3, 4, 1, 10)
  U.save_img(tmp .. "/g.png", g, {scale = false})
  local as_rgb = U.load_img(tmp .. "/g.png"):totable()
  local gv = g:totable()
  for y = 1, 3 do for x = 1, 4 do
    check.same_table(as_rgb[y][x], {gv[y][x][1], gv[y][x][1], gv[y][x][1]}, 0, "gray repeated into RGB")
  end end
  check.same_table(U.load_img(tmp .. "/g.png", {color_mode = "rgba"}):totable()[1][1], {gv[1][1][1], gv[1][1][1],
    gv[1][1][1], 255}, 0, "opaque alpha added")
end

-- Keras's save_img scales by default (array_to_img: x - min, stretched
-- to a largest value of 255) and truncates to whole numbers (astype
-- "uint8"); scale = false keeps the values, truncated.  load_img takes
-- Keras's options and refuses what it does not do.
function T.save_img_scales_and_load_img_checks_options()
  U.save_img(tmp .. "/s.png", nn.tensor{{{10.7}, {100.2}, {200.6}}})
  check.same_table(U.load_img(tmp .. "/s.png", {color_mode = "grayscale"}):reshape(3):totable(),
    {0, math.floor((100.2 - 10.7) / (200.6 - 10.7) * 255), 255}, 0, "scaled to 0..255, truncated")
  U.save_img(tmp .. "/s.png", nn.tensor{{{10.7}, {100.2}, {200.6}}}, {scale = false})
  check.same_table(U.load_img(tmp .. "/s.png", {color_mode = "grayscale"}):reshape(3):totable(), {10, 100, 200}, 0,
    "scale = false: truncated")
  U.save_img(tmp .. "/flat.png", nn.full(2, 2, 1, 7))
  check.eq(U.load_img(tmp .. "/flat.png", {color_mode = "grayscale"}):max():item(), 0, "a constant image scales to 0")
  check.fails(function() U.save_img(tmp .. "/s.png", nn.zeros(2, 2, 3), {scales = true}) end, "unknown")
  local x = pixels(4, 6, 3, 5)
  U.save_img(tmp .. "/k.png", x, {scale = false})
  check.same_table(U.load_img(tmp .. "/k.png", {target_size = {2, 2}, keep_aspect_ratio = true}):totable(),
    U.load_img(tmp .. "/k.png", {target_size = {2, 2}, crop_to_aspect_ratio = true}):totable(), 0,
    "keep_aspect_ratio is crop_to_aspect_ratio")
  check.fails(function() U.load_img(tmp .. "/k.png", {target_size = {2, 2}, interpolation = "nearest"}) end,
    "only \"bilinear\"")
  check.fails(function() U.load_img(tmp .. "/k.png", {grayscale = true}) end, "unknown")
end

-- A PNG written here byte by byte (deflate's stored blocks, so no zlib):
-- width, height, bit depth, colour type, the raw rows (each with its
-- filter byte 0) and extra chunks before IDAT.
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = c ~ s:byte(i)
    for _ = 1, 8 do c = (c & 1 == 1) and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
  end
  return c ~ 0xFFFFFFFF
end

local function png_bytes(w, h, depth, ctype, rows, extra)
  local function chunk(kind, data) return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", crc32(kind .. data)) end
  local raw = table.concat(rows)
  local a, b = 1, 0 -- Adler-32
  for i = 1, #raw do a = (a + raw:byte(i)) % 65521; b = (b + a) % 65521 end
  local z = "\x78\x01\x01" .. string.pack("<I2I2", #raw, (~#raw) & 0xFFFF) .. raw .. string.pack(">I4", (b << 16) | a)
  return "\x89PNG\r\n\x1a\n" .. chunk("IHDR", string.pack(">I4I4BBBBB", w, h, depth, ctype, 0, 0, 0)) ..
    (extra and chunk(extra[1], extra[2]) or "") .. chunk("IDAT", z) .. chunk("IEND", "")
end

-- The stored values, as PIL and TensorFlow give them: a 16-bit sample's
-- high byte (0x8080 is 128; libpng's simplified API made it 186), and a
-- gAMA chunk ignored (gamma 1.0 made 50 into 122).
function T.png_values_are_the_stored_ones()
  local row16 = "\0" .. string.pack(">I2I2I2I2I2I2", 0x8080, 0x1234, 0xFFFF, 0x00FF, 0xA0FF, 0x0100)
  write(tmp .. "/sixteen.png", png_bytes(2, 1, 16, 2, {row16}))
  check.same_table(U.load_img(tmp .. "/sixteen.png"):totable(), {{{128, 18, 255}, {0, 160, 1}}}, 0, "16-bit RGB")
  local gray16 = "\0" .. string.pack(">I2I2I2", 0x8080, 0x3FFF, 0xC000)
  write(tmp .. "/gray16.png", png_bytes(3, 1, 16, 0, {gray16}))
  check.same_table(U.load_img(tmp .. "/gray16.png", {color_mode = "grayscale"}):totable(), {{{128}, {63}, {192}}}, 0,
    "16-bit gray")
  local row8 = "\0" .. string.char(50, 13, 200, 0, 128, 255)
  write(tmp .. "/gamma.png", png_bytes(2, 1, 8, 2, {row8}, {"gAMA", string.pack(">I4", 100000)}))
  check.same_table(U.load_img(tmp .. "/gamma.png"):totable(), {{{50, 13, 200}, {0, 128, 255}}}, 0,
    "8-bit RGB with gAMA 1.0")
  local rgba = "\0" .. string.char(10, 20, 30, 40, 250, 251, 252, 0)
  write(tmp .. "/rgba.png", png_bytes(2, 1, 8, 6, {rgba}, {"gAMA", string.pack(">I4", 55556)}))
  check.same_table(U.load_img(tmp .. "/rgba.png", {color_mode = "rgba"}):totable(), {{{10, 20, 30, 40},
    {250, 251, 252, 0}}}, 0, "RGBA with gAMA 1/1.8")
end

function T.hostile_files_are_errors_naming_the_file()
  U.save_img(tmp .. "/ok.png", pixels(16, 16, 3))
  U.save_img(tmp .. "/ok.jpg", pixels(16, 16, 3))
  for _, name in ipairs{"ok.png", "ok.jpg"} do
    local f = assert(io.open(tmp .. "/" .. name, "rb"))
    local bytes = f:read("a")
    f:close()
    write(tmp .. "/cut_" .. name, bytes:sub(1, #bytes // 2))
    check.fails(function() U.load_img(tmp .. "/cut_" .. name) end, tmp .. "/cut_" .. name .. ": bad")
  end
  write(tmp .. "/text.png", "hello, I am not a picture")
  check.fails(function() U.load_img(tmp .. "/text.png") end, "text.png: not a PNG or JPEG file")
  check.fails(function() U.load_img(tmp .. "/none.png") end, "none.png: No such file")
  -- over the pixel limit (1e6 here): refused from the header, before decoding
  U.save_img(tmp .. "/big.png", nn.zeros(1001, 1000, 1))
  check.fails(function() U.load_img(tmp .. "/big.png") end, "1000 x 1001 pixels is over the limit of 1000000")
  -- a limit that is not a whole number is an error (it was ignored: "1e3" let in 134 million pixels)
  local out = check.lunet("LUNET_IMAGE_MAX_PIXELS=1e3", string.format('require("lunet").utils.load_img("%s")',
    tmp .. "/ok.png"))
  assert(out:find("ok.png: LUNET_IMAGE_MAX_PIXELS=1e3 is not a whole number of pixels", 1, true), out)
  check.fails(function() U.save_img(tmp .. "/x.gif", pixels(2, 2, 3)) end, "name the file .png, .jpg or .jpeg")
end

-- dir/<class>/<files>: n per class, alternating PNG and JPEG, plus files
-- lunet skips or ignores.
local function folder(name, classes, n)
  local dir = tmp .. "/" .. name
  for k, c in ipairs(classes) do
    os.execute(("mkdir -p '%s/%s/sub'"):format(dir, c))
    for i = 1, n do
      local where = i == n and (dir .. "/" .. c .. "/sub") or (dir .. "/" .. c)
      U.save_img(("%s/%02d.%s"):format(where, i, i % 2 == 0 and "png" or "jpg"), nn.full(6 + i, 5 + k, 3, 40 * k), {scale = false})
    end
    write(dir .. "/" .. c .. "/notes.txt", "not an image")
    write(dir .. "/" .. c .. "/anim.gif", "GIF89a")
  end
  write(dir .. "/readme.txt", "top-level files are not a class")
  return dir
end

function T.dataset_classes_labels_and_split()
  local dir = folder("shapes", {"b_two", "a_one", "c_three"}, 5)
  os.execute(("mkdir -p '%s/.ipynb_checkpoints'"):format(dir)) -- hidden: not a class, as Keras's
  local ds = U.image_dataset_from_directory(dir, {image_size = {4, 4}, batch_size = 4, shuffle = false, verbose = false})
  check.same_table(ds.class_names, {"a_one", "b_two", "c_three"}, 0, "class names sorted, the hidden folder left out")
  check.eq(ds.n, 15, "files found (the sub-folder too, no .gif or .txt)")
  check.eq(#ds, 4, "batches")
  -- every file's label is its folder, and its pixels its class's colour
  local seen = 0
  for step, x, y in ds:batches(1) do
    local xs, ys = x:totable(), y:totable()
    for i = 1, #ys do
      local path = ds.file_paths[(step - 1) * 4 + i]
      local folder_name = path:match("/shapes/([^/]+)/")
      check.eq(ds.class_names[ys[i] + 1], folder_name, "label of " .. path)
      local want = folder_name == "a_one" and 80 or folder_name == "b_two" and 40 or 120
      check.near(xs[i][1][1][1], want, 2, "pixels of " .. path) -- JPEG may move a flat colour a level
      seen = seen + 1
    end
  end
  check.eq(seen, 15, "samples")
  -- label modes
  local cat = U.image_dataset_from_directory(dir, {image_size = {4, 4}, label_mode = "categorical", verbose = false})
  local _, yc = cat:batch(1, cat:order(0))
  check.same_table(yc:shape(), {15, 3}, 0, "one-hot labels (15 files, one batch of 32)")
  local none = U.image_dataset_from_directory(dir, {image_size = {4, 4}, labels = false, verbose = false})
  local xn, yn = none:batch(1, none:order(0))
  assert(yn == nil and xn:shape()[1] == 15, "labels = false: images only")
  -- the split: fixed by the seed, disjoint, together everything
  local tr, va = U.image_dataset_from_directory(dir, {image_size = {4, 4}, validation_split = 0.2, subset = "both",
    seed = 5, verbose = false})
  check.eq(tr.n + va.n, 15, "split sizes")
  check.eq(va.n, 3, "the validation fifth")
  local all = {}
  for _, p in ipairs(tr.file_paths) do all[p] = "train" end
  for _, p in ipairs(va.file_paths) do
    assert(not all[p], p .. " is in both subsets")
    all[p] = "val"
  end
  local again = U.image_dataset_from_directory(dir, {image_size = {4, 4}, validation_split = 0.2, subset = "validation",
    seed = 5, verbose = false})
  check.same_table(again.file_paths, va.file_paths, 0, "the seed fixes the split")
  -- the training set reshuffles each epoch, the same way for the same seed
  local o1, o2 = tr:order(1), tr:order(2)
  assert(table.concat(o1, ",") ~= table.concat(o2, ","), "epochs 1 and 2 have the same order")
  check.same_table(tr:order(1), o1, 0, "an epoch's order is fixed")
end

-- Keras's file order: folders sorted by path, so a folder's own files come
-- before its sub-folders'; a link back up is not followed (follow_links
-- false, Keras's default); a thin image with a wide target keeps one row.
function T.file_order_links_and_thin_images()
  local dir = tmp .. "/order"
  os.execute(("mkdir -p '%s/a/sub'"):format(dir))
  for _, name in ipairs{"a/z.png", "a/sub/b.png", "a/c.png", "top.png"} do
    U.save_img(dir .. "/" .. name, nn.full(4, 4, 3, 9), {scale = false})
  end
  os.execute(("ln -s .. '%s/a/loop'"):format(dir))
  local ds = U.image_dataset_from_directory(dir, {labels = {0, 1, 2, 3}, image_size = {2, 2}, shuffle = false,
    verbose = false})
  local rel = {}
  for i, p in ipairs(ds.file_paths) do rel[i] = p:sub(#dir + 2) end
  check.same_table(rel, {"top.png", "a/c.png", "a/z.png", "a/sub/b.png"}, 0, "Keras's order, the link not followed")
  -- categorical width from every file, not from one subset's labels
  local tr, va = U.image_dataset_from_directory(dir, {labels = {0, 1, 0, 3}, label_mode = "categorical",
    image_size = {2, 2}, validation_split = 0.25, subset = "both", seed = 2, verbose = false})
  local _, ytr = tr:batch(1, tr:order(0))
  local _, yva = va:batch(1, va:order(0))
  check.eq(ytr:shape()[2], 4, "training one-hot width")
  check.eq(yva:shape()[2], 4, "validation one-hot width")
  U.save_img(tmp .. "/thin.png", nn.full(1, 2, 3, 50), {scale = false})
  check.same_table(U.load_img(tmp .. "/thin.png", {target_size = {100, 300}, crop_to_aspect_ratio = true}):shape(),
    {100, 300, 3}, 0, "a one-row window")
end

function T.fit_evaluate_predict_on_a_dataset()
  local dir = folder("fit", {"dark", "light"}, 6)
  local ds = U.image_dataset_from_directory(dir, {image_size = {5, 5}, batch_size = 4, seed = 1, verbose = false})
  local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {5, 5, 3}}, nn.Flatten(), nn.Dense{2, activation = "softmax"}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  local h = m:fit(ds, nil, {epochs = 15, verbose = 0})
  check.eq(#h.loss, 15, "epochs")
  check.eq(m:evaluate(ds).accuracy, 1, "two flat colours are told apart")
  check.eq(m:predict(ds):shape()[1], 12, "predict covers the dataset")
  check.fails(function() m:fit(ds, nn.zeros(12), {verbose = 0}) end, "the dataset gives the targets")
  check.fails(function() m:fit(ds, nil, {batch_size = 3, verbose = 0}) end, "batch_size does not go with a dataset")
end

-- A dataset of tensors in memory trains exactly as the tensors do.
function T.from_tensor_slices_trains_as_tensors()
  nn.seed(8)
  local x, y = nn.randn(20, 3), nn.randn(20, 2)
  local function train(data)
    nn.seed(1)
    local m = nn.Sequential{nn.Dense{2, input_shape = {3}}}
    m:compile{optimizer = "adam", loss = "mse"}
    if data then m:fit(data, nil, {epochs = 2, verbose = 0})
    else m:fit(x, y, {epochs = 2, batch_size = 6, shuffle = false, verbose = 0}) end
    return m:get_weights()[1]:totable()
  end
  check.same_table(train(nn.data.from_tensor_slices(x, y, {batch_size = 6})), train(), 0, "the same updates")
  check.fails(function() nn.data.from_tensor_slices(x, nn.zeros(3, 2)) end, "x and y have different numbers of rows")
  -- a misspelt option did not shuffle; a list of numbers as y crashed
  check.fails(function() nn.data.from_tensor_slices(x, y, {shufle = true}) end, "unknown option 'shufle'")
  check.fails(function() nn.data.from_tensor_slices(x, {0, 1, 2}) end, "y must be a tensor or a list of tensors")
  check.fails(function() nn.data.new{n = 4, shuffle = "no", load = function() end} end, "shuffle must be true or false")
end

-- A loader returning more or fewer rows than the indices it was given is
-- an error (predict gave 9 rows for 5 samples, beside the wrong ones).
function T.loaders_return_one_row_per_index()
  nn.seed(3)
  local m = nn.Sequential{nn.Dense{1, input_shape = {1}}}
  m:compile{optimizer = "sgd", loss = "mse"}
  local more = nn.data.new{n = 5, batch_size = 2, load = function()
    return nn.tensor({{1}, {2}, {3}}), nn.tensor({{1}, {2}, {3}}) end}
  check.fails(function() m:predict(more) end, "load returned 3 rows of x for the 2 indices it was given")
  check.fails(function() m:evaluate(more) end, "load returned 3 rows of x")
  check.fails(function() m:fit(more, nil, {verbose = 0}) end, "load returned 3 rows of x")
  local fewer_y = nn.data.new{n = 4, batch_size = 2, load = function(idx)
    local rows = {}
    for i, v in ipairs(idx) do rows[i] = {v} end
    return nn.tensor(rows), nn.tensor({{0}})
  end}
  check.fails(function() m:fit(fewer_y, nil, {verbose = 0}) end, "load returned 1 rows of y for the 2 indices")
  local w = nn.data.new{n = 2, batch_size = 2, load = function() return nn.ones(2, 1), nn.ones(2, 1), {1, 1, 1} end}
  check.fails(function() m:fit(w, nil, {verbose = 0}) end, "load returned 3 rows of sample_weight")
  -- and one that keeps to it predicts a row per sample
  local right = nn.data.new{n = 5, batch_size = 2, load = function(idx)
    local rows = {}
    for i, v in ipairs(idx) do rows[i] = {v} end
    return nn.tensor(rows), nn.tensor(rows)
  end}
  check.eq(m:predict(right):shape()[1], 5, "five predictions")
end

function T.bad_options_say_what_is_wrong()
  local dir = folder("opts", {"x", "y"}, 2)
  local f = U.image_dataset_from_directory
  check.fails(function() f(dir, {image_size = {4, 4}, validation_split = 0.5, subset = "training"}) end, "give a seed")
  check.fails(function() f(dir, {imagesize = {4, 4}}) end, "unknown option 'imagesize'")
  check.fails(function() f(dir, {color_mode = "cmyk"}) end, "color_mode must be rgb, grayscale or rgba")
  check.fails(function() f(dir, {class_names = {"x", "z"}, verbose = false}) end, "names 'z', which is not a folder")
  -- a repeated name loaded each of its files twice, under two labels
  check.fails(function() f(dir, {class_names = {"x", "x"}, verbose = false}) end, "class_names names 'x' twice")
  check.fails(function() f(dir, {class_names = "x", verbose = false}) end, "class_names must be a list of folder names")
  check.fails(function() f(dir, {labels = {0, 1, 0, 1}, class_names = {"x", "y"}, verbose = false}) end,
    "class_names goes with labels = 'inferred'")
  -- NaN passed the range check and gave an empty subset
  check.fails(function() f(dir, {validation_split = 0 / 0, subset = "training", seed = 1, verbose = false}) end,
    "validation_split must be a number in (0, 1)")
  check.fails(function() f(tmp .. "/nowhere") end, "No such file or directory")
  check.fails(function() f(dir, {label_mode = "binary", class_names = {"x"}, verbose = false}) end,
    "label_mode 'binary' needs 2 classes")
  os.execute("mkdir -p " .. tmp .. "/empty/a")
  check.fails(function() f(tmp .. "/empty", {verbose = false}) end, "no PNG or JPEG files")
end

check.run(T)
