-- nn.utils: Keras's to_categorical, a train/test split and
-- image_dataset_from_directory.
local C = require "lunet.core"
local dataset = require "lunet.dataset"
local check_fields = require("lunet.optim").check_fields

local M = {}

-- to_categorical(y, num_classes): class ids (a tensor or a list, whole
-- numbers from 0) as one-hot rows (N, num_classes) float32; num_classes
-- defaults to the largest id + 1, as in Keras.
function M.to_categorical(y, num_classes)
  local ids = C.is_tensor(y) and y:reshape(-1):totable() or y
  if type(ids) ~= "table" then error("bad argument #1 to 'to_categorical' (class ids: a tensor or a list)", 2) end
  for i, v in ipairs(ids) do
    if type(v) ~= "number" or math.tointeger(v) == nil or v < 0 then
      error(string.format("to_categorical: entry %d is %s, not a class id (a whole number >= 0)", i, tostring(v)), 2)
    end
  end
  local k = num_classes
  if k == nil then -- Keras's: the largest id + 1
    k = 0
    for _, v in ipairs(ids) do k = math.max(k, math.tointeger(v) + 1) end
  end
  if math.type(k) ~= "integer" or k < 1 then error("bad argument #2 to 'to_categorical' (a positive integer)", 2) end
  local rows = {}
  for i, v in ipairs(ids) do
    if v >= k then
      error(string.format("to_categorical: entry %d is %s, not a class id in [0, %d)", i, tostring(v), k), 2)
    end
    local r = {}
    for j = 1, k do r[j] = 0 end
    r[math.tointeger(v) + 1] = 1
    rows[i] = r
  end
  if #rows == 0 then error("bad argument #1 to 'to_categorical' (no class ids)", 2) end
  local out = C.tensor(rows)
  -- Keras's shape: the ids' shape and the class axis, a trailing axis of 1 dropped
  local shape = C.is_tensor(y) and y:shape() or { #ids }
  if #shape > 1 and shape[#shape] == 1 then table.remove(shape) end
  shape[#shape + 1] = k
  return out:reshape(shape)
end

-- pad_sequences(sequences, {maxlen, padding = "pre", truncating = "pre",
-- value = 0, dtype = "int32"}): Keras's: a list of id lists to one (N,
-- maxlen) tensor, maxlen by default the longest; shorter ones padded with
-- value before ("pre", Keras's default) or after ("post"), longer ones cut
-- at the start ("pre": the last maxlen kept) or at the end ("post").
function M.pad_sequences(sequences, o)
  if type(sequences) ~= "table" or getmetatable(sequences) then
    error("bad argument #1 to 'pad_sequences' (a list of sequences, each a list of numbers)", 2)
  end
  o = check_fields("pad_sequences", o, {maxlen = true, padding = true, truncating = true, value = true, dtype = true},
    "option", 2)
  local padding, truncating = o.padding or "pre", o.truncating or "pre"
  for name, v in pairs{padding = padding, truncating = truncating} do
    if v ~= "pre" and v ~= "post" then
      error(string.format("bad argument '%s' to 'pad_sequences' (\"pre\" or \"post\", got %s)", name, tostring(v)), 2)
    end
  end
  local dtype, value = o.dtype or "int32", o.value or 0
  if dtype ~= "int32" and dtype ~= "float32" then
    error("bad argument 'dtype' to 'pad_sequences' (\"int32\" or \"float32\")", 2)
  end
  if type(value) ~= "number" then error("bad argument 'value' to 'pad_sequences' (a number)", 2) end
  local maxlen = o.maxlen
  for i, seq in ipairs(sequences) do
    if type(seq) ~= "table" then
      error(string.format("pad_sequences: sequence %d is a %s, not a list of numbers", i, type(seq)), 2)
    end
    for j, v in ipairs(seq) do
      if type(v) ~= "number" then error(string.format("pad_sequences: sequence %d, entry %d is not a number", i, j), 2) end
    end
  end
  if maxlen == nil then
    maxlen = 0
    for _, seq in ipairs(sequences) do maxlen = math.max(maxlen, #seq) end
  end
  if math.type(maxlen) ~= "integer" or maxlen < 1 then
    error("bad argument 'maxlen' to 'pad_sequences' (a positive integer; the sequences are all empty?)", 2)
  end
  if #sequences == 0 then error("bad argument #1 to 'pad_sequences' (no sequences)", 2) end
  local rows = {}
  for i, seq in ipairs(sequences) do
    local n = #seq
    local first = n > maxlen and truncating == "pre" and n - maxlen + 1 or 1 -- the kept part: seq[first .. first + keep - 1]
    local keep = math.min(n, maxlen)
    local row, pad = {}, maxlen - keep
    local at = padding == "pre" and pad or 0
    for k = 1, maxlen do row[k] = value end
    for k = 1, keep do row[at + k] = seq[first + k - 1] end
    rows[i] = row
  end
  return C.tensor(rows, dtype)
end

--- timeseries_dataset_from_array(data, targets, sequence_length,
-- {sequence_stride = 1, sampling_rate = 1, batch_size = 128, shuffle =
-- false, seed, start_index = 0, end_index}) -> a dataset of windows, as
-- Keras's: window p (from 0, every sequence_stride) takes data rows
-- start_index + p, + sampling_rate, ... (sequence_length of them; indices
-- from 0, end_index exclusive) and its target is targets[start_index + p];
-- with shuffle the windows are shuffled by the seed, and again every epoch
-- (Keras shuffles the start positions once, then the dataset each time it
-- is iterated).  targets nil: windows alone (forecasting pairs
-- come from data and targets offset by the horizon, as in Keras's examples).
function M.timeseries_dataset_from_array(data, targets, sequence_length, o)
  local function bad(msg) error("timeseries_dataset_from_array: " .. msg, 3) end
  o = check_fields("timeseries_dataset_from_array", o, {sequence_stride = true, sampling_rate = true,
    batch_size = true, shuffle = true, seed = true, start_index = true, end_index = true}, "option", 4)
  if not C.is_tensor(data) then
    if type(data) ~= "table" then bad("data must be a tensor or a list") end
    data = C.tensor(data)
  end
  if targets ~= nil and not C.is_tensor(targets) then
    if type(targets) ~= "table" then bad("targets must be a tensor, a list or nil") end
    targets = C.tensor(targets)
  end
  local shape = data:shape()
  local t = shape[1]
  local L, stride, rate = sequence_length, o.sequence_stride or 1, o.sampling_rate or 1
  for name, v in pairs{sequence_length = L, sequence_stride = stride, sampling_rate = rate, batch_size = o.batch_size or 1} do
    if math.type(v) ~= "integer" or v < 1 then bad(name .. " must be a positive integer") end
  end
  local first, last = o.start_index or 0, o.end_index or t
  if math.type(first) ~= "integer" or first < 0 or first >= t then bad(string.format("start_index must be in [0, %d)", t)) end
  if math.type(last) ~= "integer" or last <= first or last > t then
    bad(string.format("end_index must be in (start_index, %d]", t))
  end
  local n = last - first - (L - 1) * rate -- Keras's count of start positions
  if targets then n = math.min(n, targets:shape()[1]) end
  if n <= 0 then
    bad(string.format("no window fits: %d rows from start_index to end_index, and a window spans %d",
      last - first, (L - 1) * rate + 1))
  end
  local starts = {}
  for p = 0, n - 1, stride do starts[#starts + 1] = p end
  if o.shuffle then
    local perm = dataset.permutation(#starts, o.seed or C.rng_take(1), 0)
    local shuffled = {}
    for i, k in ipairs(perm) do shuffled[i] = starts[k] end
    starts = shuffled
  end
  local rows, at = {}, {}
  for i, p in ipairs(starts) do
    for j = 0, L - 1 do rows[#rows + 1] = first + p + j * rate end
    at[i] = first + p
  end
  local win = {#starts, L}
  for i = 2, #shape do win[#win + 1] = shape[i] end
  local last_start = 0
  for _, p in ipairs(starts) do last_start = math.max(last_start, p) end
  if targets and first + last_start >= targets:shape()[1] then
    bad(string.format("targets has %d rows, but window %d needs targets[%d] (the target of window p is "
      .. "targets[start_index + p])", targets:shape()[1], last_start, first + last_start))
  end
  local x = data:index_select(1, rows):reshape(win)
  local y = targets and targets:index_select(1, at) or nil
  return dataset.from_tensor_slices(x, y, {batch_size = o.batch_size or 128, shuffle = o.shuffle and true or nil,
    seed = o.shuffle and o.seed or nil})
end

-- train_test_split(x, y, {test_size = 0.25, shuffle = true, seed = 0}):
-- x_train, x_test, y_train, y_test (sklearn's order); the same rows of x
-- and y go together; the order is fixed by the seed.
function M.train_test_split(x, y, o)
  o = o or {}
  for k in pairs(o) do
    if k ~= "test_size" and k ~= "shuffle" and k ~= "seed" then
      error(string.format("bad argument '%s' to 'train_test_split' (valid: test_size, shuffle, seed)", tostring(k)), 2)
    end
  end
  if not C.is_tensor(x) or (y ~= nil and not C.is_tensor(y)) then
    error("bad argument to 'train_test_split' (x and y must be tensors)", 2)
  end
  local n = x:shape()[1]
  if y and y:shape()[1] ~= n then
    error(string.format("train_test_split: x has %d samples but y has %d", n, y:shape()[1]), 2)
  end
  local size = o.test_size or 0.25
  local nt = math.type(size) == "integer" and size or math.ceil(n * size)
  if not (nt >= 1 and nt < n) then
    error(string.format("train_test_split: test_size %s leaves no training or no test samples of %d", tostring(size), n), 2)
  end
  local order = {}
  for i = 1, n do order[i] = i - 1 end
  if o.shuffle ~= false then
    -- generate's generator keyed by the seed, so math.random is untouched
    local random = require("lunet.generate").rng(o.seed or 0)
    local function rand(m) return math.floor(random() * m) end
    for i = n, 2, -1 do
      local j = rand(i) + 1
      order[i], order[j] = order[j], order[i]
    end
  end
  local train, test = {}, {}
  for i = 1, n do
    if i <= n - nt then train[#train + 1] = order[i] else test[#test + 1] = order[i] end
  end
  local xt, xv = x:index_select(1, train), x:index_select(1, test)
  if not y then return xt, xv end
  return xt, xv, y:index_select(1, train), y:index_select(1, test)
end

-- ---- CSV files ----

local Table = {}
Table.__index = Table
Table.__name = "lunet.CsvTable"

function Table:__tostring()
  return string.format("CsvTable(%d rows: %s)", self.n, table.concat(self.columns, ", "))
end

local function column(self, name, what)
  local v = self.data[name]
  if v == nil then
    -- a number for a column named by a number (header = false names them "1", "2", ...)
    local hint = type(name) == "number" and self.data[tostring(math.tointeger(name) or name)] ~= nil
      and string.format("; names are strings: '%s'", tostring(math.tointeger(name) or name)) or ""
    error(string.format("%s: no column %s (columns: %s%s)", what, type(name) == "string" and "'" .. name .. "'"
      or tostring(name), table.concat(self.columns, ", "), hint), 3)
  end
  return v
end

--- tbl:tensor({names...}) -> float32 (n, k) of numeric columns (all
-- numeric ones without names); a text column or an empty field is an error.
function Table:tensor(names)
  if names == nil then
    names = {}
    for _, c in ipairs(self.columns) do if C.is_tensor(self.data[c]) then names[#names + 1] = c end end
  end
  if type(names) ~= "table" or #names == 0 then error("tensor: give a list of column names", 2) end
  local cols = {}
  for k, name in ipairs(names) do
    local v = column(self, name, "tensor")
    if not C.is_tensor(v) then
      error(string.format("tensor: column '%s' holds text (e.g. '%s'); encode it with tbl:encode('%s')", name,
        tostring(v[1]), name), 2)
    end
    local rows = v:totable()
    for i, x in ipairs(rows) do
      if x ~= x then error(string.format("tensor: column '%s' is empty at row %d", name, i), 2) end
    end
    cols[k] = v:reshape(self.n, 1)
  end
  return #cols == 1 and cols[1] or C.cat(cols, 2)
end

--- tbl:encode(name) -> ids (n) float32 and the classes: each distinct value
-- of the column, sorted (text, or numbers), its id its position from 0.
function Table:encode(name)
  local v = column(self, name, "encode")
  -- numbers as read (doubles) where float32 would merge them (ids above 2^24)
  local vals = self.exact and self.exact[name] or (C.is_tensor(v) and v:totable() or v)
  local seen, classes = {}, {}
  for i, x in ipairs(vals) do
    -- a text column's "" or "NA" too (it became a class, and shifted every id after it)
    if x ~= x or (type(x) == "string" and C.csv_missing(x)) then
      error(string.format("encode: column '%s' is empty (%s) at row %d; fill or drop such rows first", name,
        x ~= x and "NaN" or "'" .. x .. "', a missing value", i), 2)
    end
    if not seen[x] then seen[x] = true classes[#classes + 1] = x end
  end
  table.sort(classes)
  local id = {}
  for k, c in ipairs(classes) do id[c] = k - 1 end
  local ids = {}
  for i, x in ipairs(vals) do ids[i] = id[x] end
  return C.tensor(ids), classes
end

--- read_csv(path, {header = true, delimiter = ","}) -> a table of columns:
-- tbl.columns (names in order), tbl.n (rows), tbl.data[name] (a float32
-- tensor (n) when every field is a number, an empty one NaN; else the
-- strings), tbl:tensor(names), tbl:encode(name).
function M.read_csv(path, o)
  o = o or {}
  for k in pairs(o) do
    if k ~= "header" and k ~= "delimiter" then
      error(string.format("bad argument '%s' to 'read_csv' (valid: header, delimiter)", tostring(k)), 2)
    end
  end
  if type(path) ~= "string" then error("bad argument #1 to 'read_csv' (a file name)", 2) end
  local ok, t = pcall(C.read_csv, path, o.delimiter or ",", o.header ~= false)
  if not ok then error(tostring(t), 2) end
  return setmetatable(t, Table)
end

--- csv_dataset(path, {label = name, features = {names}, batch_size = 32,
-- shuffle = true, seed, header, delimiter}) -> a dataset of (features,
-- label) batches: the numeric feature columns (default: every numeric
-- column but the label; the text columns left out are named unless
-- verbose = false) as float32 (N, k); a text label becomes class ids
-- (ds.class_names), a numeric one stays as it is (an empty one is an error).
function M.csv_dataset(path, o)
  o = check_fields("csv_dataset", o, {label = true, features = true, batch_size = true, shuffle = true, seed = true,
    header = true, delimiter = true, verbose = true})
  local tbl = M.read_csv(path, {header = o.header, delimiter = o.delimiter})
  local features = o.features
  if not features then
    features = {}
    local text = {}
    for _, c in ipairs(tbl.columns) do
      if c ~= o.label then
        if C.is_tensor(tbl.data[c]) then features[#features + 1] = c else text[#text + 1] = "'" .. c .. "'" end
      end
    end
    -- said, not silent: a column with one word in it is text and stays out
    if #text > 0 and o.verbose ~= false then
      print(string.format("csv_dataset: leaving out the text column%s %s (features are numeric; give features = " ..
        "{...}, or encode a category with read_csv(...):encode(name))", #text == 1 and "" or "s",
        table.concat(text, ", ")))
    end
  end
  local x = tbl:tensor(features)
  local y, classes
  if o.label then
    if C.is_tensor(column(tbl, o.label, "csv_dataset")) then
      y = tbl.data[o.label]
      local labels = y:totable()
      for i, v in ipairs(labels) do
        if v ~= v then
          error(string.format("csv_dataset: the label '%s' is empty (NaN) at row %d; fill or drop such rows first",
            o.label, i), 2)
        end
      end
    else
      y, classes = tbl:encode(o.label)
    end
  end
  local ds = dataset.from_tensor_slices(x, y, {batch_size = o.batch_size, shuffle = o.shuffle ~= false,
    seed = o.seed or C.rng_take(1)})
  ds.columns, ds.class_names = features, classes
  return ds
end

-- ---- single images (keras.utils.load_img / save_img) ----

--- save_img(path, x, {scale = true, quality = 95}): x (H, W, C) (or
-- (1, H, W, C)); PNG or JPEG by the name's extension.  As Keras's
-- save_img (array_to_img): with scale (the default) the values are
-- shifted to start at 0 and stretched so the largest is 255; then each is
-- cut to a whole number (truncated, as NumPy's astype("uint8")); without
-- scale they must be 0..255 already.
function M.save_img(path, x, o)
  if type(path) ~= "string" then error("bad argument #1 to 'save_img' (a file name)", 2) end
  if not C.is_tensor(x) then error("bad argument #2 to 'save_img' (an image tensor (H, W, C))", 2) end
  o = check_fields("save_img", o, {scale = true, quality = true})
  if x:dim() == 4 and x:shape()[1] == 1 then x = x:reshape(table.unpack(x:shape(), 2)) end
  C.image_save(path, x, o.quality or 95, o.scale ~= false)
  return path
end

--- load_img(path, {target_size = {h, w}, color_mode = "rgb",
-- crop_to_aspect_ratio (Keras's keep_aspect_ratio), interpolation =
-- "bilinear"}) -> float32 (H, W, C), 0..255; without target_size the
-- file's own size.
function M.load_img(path, o)
  o = check_fields("load_img", o, {target_size = true, color_mode = true, crop_to_aspect_ratio = true,
    keep_aspect_ratio = true, interpolation = true})
  if o.interpolation ~= nil and o.interpolation ~= "bilinear" then
    error(string.format("load_img: interpolation %q is not offered; only \"bilinear\" (Keras's load_img " ..
      "defaults to \"nearest\", lunet's readers resize bilinearly)", tostring(o.interpolation)), 2)
  end
  if o.keep_aspect_ratio ~= nil then
    if o.crop_to_aspect_ratio ~= nil and o.crop_to_aspect_ratio ~= o.keep_aspect_ratio then
      error("load_img: keep_aspect_ratio and crop_to_aspect_ratio disagree (they are the same option)", 2)
    end
    o.crop_to_aspect_ratio = o.keep_aspect_ratio
  end
  local channels = ({rgb = 3, grayscale = 1, rgba = 4})[o.color_mode or "rgb"]
  if not channels then error("load_img: color_mode must be rgb, grayscale or rgba", 2) end
  local size = o.target_size
  if not size then
    local info = C.image_info(path)
    size = {info.height, info.width}
  end
  local t = C.images_wait(C.images_load_async({path}, size[1], size[2], channels, o.crop_to_aspect_ratio or false, 1))
  return t:reshape(size[1], size[2], channels)
end

-- ---- image_dataset_from_directory ----

local image_options = {labels = true, label_mode = true, class_names = true, color_mode = true, batch_size = true,
  image_size = true, shuffle = true, seed = true, validation_split = true, subset = true, interpolation = true,
  crop_to_aspect_ratio = true, verbose = true, follow_links = true}
local image_ext = {png = true, jpg = true, jpeg = true}
local other_ext = {bmp = true, gif = true, webp = true, tif = true, tiff = true}
local channels_of = {rgb = 3, grayscale = 1, rgba = 4}

local function bad(msg) error("image_dataset_from_directory: " .. msg, 3) end

-- The image files under dir in Keras's order: the folders sorted by their
-- path (a folder's own files before its sub-folders'), each folder's files
-- sorted by name; symbolic links to folders followed only with
-- follow_links.  Counts the image files of formats lunet skips.
local function image_files(dir, out, skipped, follow)
  local roots = {}
  local function walk(path)
    local files = {}
    for _, e in ipairs(C.listdir(path)) do
      local full = path .. "/" .. e.name
      if e.dir then
        if follow or not e.link then walk(full) end
      else
        local ext = (e.name:match("%.([^.]+)$") or ""):lower()
        if image_ext[ext] then files[#files + 1] = full
        elseif other_ext[ext] then skipped[ext] = (skipped[ext] or 0) + 1 end
      end
    end
    roots[#roots + 1] = {path = path, files = files}
    if #roots > 100000 then bad("more than 100000 folders under " .. dir .. " (a link loop? follow_links is on)") end
  end
  walk(dir)
  table.sort(roots, function(a, b) return a.path < b.path end)
  for _, r in ipairs(roots) do
    for _, f in ipairs(r.files) do out[#out + 1] = f end
  end
  return out
end

--- image_dataset_from_directory(dir, {image_size = {256, 256}, batch_size = 32,
-- labels = "inferred", label_mode = "int", class_names, color_mode = "rgb",
-- shuffle = true, seed, validation_split, subset, crop_to_aspect_ratio,
-- verbose = true}) -> a dataset (two for subset = "both") of float32
-- images (N, H, W, C) 0..255 and their labels, as Keras's.
function M.image_dataset_from_directory(dir, o)
  o = o or {}
  if type(dir) ~= "string" then bad("the first argument is the folder (a string)") end
  for k in pairs(o) do
    if not image_options[k] then bad("unknown option '" .. tostring(k) .. "'") end
  end
  local size = o.image_size or {256, 256}
  if type(size) ~= "table" or math.type(size[1]) ~= "integer" or math.type(size[2]) ~= "integer" or size[1] < 1
    or size[2] < 1 then
    bad("image_size must be {height, width}, positive integers")
  end
  local bs = o.batch_size or 32
  if math.type(bs) ~= "integer" or bs < 1 then bad("batch_size must be a positive integer") end
  local color = o.color_mode or "rgb"
  local channels = channels_of[color]
  if not channels then bad("color_mode must be rgb, grayscale or rgba, got " .. tostring(color)) end
  if o.interpolation ~= nil and o.interpolation ~= "bilinear" then
    bad("interpolation must be 'bilinear' (the only one lunet has)")
  end
  local labels = o.labels -- false: no labels (Keras's None)
  if labels == nil then labels = "inferred" elseif labels == false then labels = nil end
  local mode = o.label_mode
  if mode == nil then mode = labels and "int" or nil end
  if labels and mode ~= "int" and mode ~= "categorical" and mode ~= "binary" then
    bad("label_mode must be int, categorical or binary, got " .. tostring(mode))
  end
  local shuffle = o.shuffle ~= false
  local split, subset = o.validation_split, o.subset
  if split ~= nil and (type(split) ~= "number" or not (split > 0 and split < 1)) then -- NaN too (it gave 0 files)
    bad("validation_split must be a number in (0, 1)")
  end
  if (split == nil) ~= (subset == nil) then bad("validation_split and subset go together") end
  if subset and subset ~= "training" and subset ~= "validation" and subset ~= "both" then
    bad("subset must be training, validation or both, got " .. tostring(subset))
  end
  local seed = o.seed
  if seed ~= nil and math.type(seed) ~= "integer" then bad("seed must be an integer") end
  if split and shuffle and seed == nil then
    bad("with validation_split and shuffling, give a seed, so that training and validation never share a file")
  end
  seed = seed or C.rng_take(1)
  local listed, why = pcall(C.listdir, dir)
  if not listed then bad(tostring(why)) end
  -- the files and their labels
  local files, ids, class_names = {}, {}, nil
  local skipped = {}
  if labels == "inferred" then
    class_names = {}
    -- one class per folder, hidden ones (.ipynb_checkpoints) skipped as Keras's index_directory does
    for _, e in ipairs(C.listdir(dir)) do
      if e.dir and e.name:sub(1, 1) ~= "." then class_names[#class_names + 1] = e.name end
    end
    if o.class_names then
      if type(o.class_names) ~= "table" or #o.class_names == 0 then
        bad("class_names must be a list of folder names, got " .. tostring(o.class_names))
      end
      local have, named = {}, {}
      for _, c in ipairs(class_names) do have[c] = true end
      for _, c in ipairs(o.class_names) do
        if type(c) ~= "string" then bad("class_names must be a list of folder names, got " .. tostring(c)) end
        if not have[c] then bad(string.format("class_names names '%s', which is not a folder of %s", c, dir)) end
        -- twice: each of its files loaded twice, under two labels
        if named[c] then bad(string.format("class_names names '%s' twice", c)) end
        named[c] = true
      end
      class_names = o.class_names
    end
    if #class_names == 0 then bad(dir .. " has no class folders (labels = 'inferred' reads one folder per class)") end
    for k, name in ipairs(class_names) do
      for _, f in ipairs(image_files(dir .. "/" .. name, {}, skipped, o.follow_links)) do
        files[#files + 1], ids[#ids + 1] = f, k - 1
      end
    end
  else
    if o.class_names ~= nil then bad("class_names goes with labels = 'inferred' (the labels given are the ids)") end
    image_files(dir, files, skipped, o.follow_links)
    if type(labels) == "table" then
      if #labels ~= #files then
        bad(string.format("labels has %d entries for the %d image files (in sorted order)", #labels, #files))
      end
      for i, v in ipairs(labels) do ids[i] = v end
    elseif labels ~= nil then
      bad("labels must be 'inferred', a list of labels or false (none)")
    end
  end
  if mode == "binary" and class_names and #class_names ~= 2 then
    bad(string.format("label_mode 'binary' needs 2 classes, found %d", #class_names))
  end
  if #files == 0 then bad("no PNG or JPEG files under " .. dir) end
  local verbose = o.verbose ~= false
  if verbose then
    print(string.format("Found %d files%s.", #files,
      class_names and string.format(" belonging to %d classes", #class_names) or ""))
    local parts = {}
    for ext, n in pairs(skipped) do parts[#parts + 1] = string.format("%d .%s", n, ext) end
    if #parts > 0 then
      table.sort(parts)
      print("Skipped " .. table.concat(parts, ", ") .. " (lunet reads PNG and JPEG).")
    end
  end
  -- shuffled once with the seed, then split: the last fraction validates
  local perm = shuffle and dataset.permutation(#files, seed, 0) or nil
  local all = {}
  for i = 1, #files do all[i] = perm and perm[i] or i end
  -- the number of classes, over every file (a subset may lack one)
  local k = class_names and #class_names or 0
  if labels and not class_names then
    for i, v in ipairs(ids) do
      if type(v) ~= "number" or v ~= math.floor(v) or v < 0 then
        bad(string.format("labels[%d] is %s, not a class id (an integer >= 0)", i, tostring(v)))
      end
      k = math.max(k, math.tointeger(v) + 1)
    end
    if mode == "binary" and k > 2 then bad("label_mode 'binary' needs labels 0 and 1, found " .. (k - 1)) end
  end
  local function make(first, last, what)
    local paths, lab = {}, {}
    for i = first, last do paths[#paths + 1], lab[#lab + 1] = files[all[i]], ids[all[i]] end
    if verbose and what then print(string.format("Using %d files for %s.", #paths, what)) end
    -- decoding starts on C threads now; the returned function waits for it
    local function start(idx)
      local p, l = {}, {}
      for i, j in ipairs(idx) do p[i], l[i] = paths[j], lab[j] end
      local pending = C.images_load_async(p, size[1], size[2], channels, o.crop_to_aspect_ratio or false)
      return function()
        local x = C.images_wait(pending)
        if not labels then return x end
        if mode == "categorical" then return x, M.to_categorical(l, k) end
        if mode == "binary" then
          local rows = {}
          for i, v in ipairs(l) do rows[i] = {v} end
          return x, C.tensor(rows)
        end
        return x, C.tensor(l)
      end
    end
    return dataset.new{
      n = #paths, batch_size = bs, shuffle = shuffle and what ~= "validation", seed = seed,
      class_names = class_names, file_paths = paths, labels = labels and lab or nil,
      image_size = {size[1], size[2]}, channels = channels,
      load = function(idx)
        local pend = start(idx)
        return pend()
      end,
      load_async = function(idx) return start(idx) end,
    }
  end
  local n = #files
  if not split then return make(1, n) end
  local nv = math.floor(split * n)
  if nv < 1 or nv >= n then bad(string.format("validation_split %g of %d files leaves an empty subset", split, n)) end
  if subset == "training" then return make(1, n - nv, "training") end
  if subset == "validation" then return make(n - nv + 1, n, "validation") end
  return make(1, n - nv, "training"), make(n - nv + 1, n, "validation")
end

return M
