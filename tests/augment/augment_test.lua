-- Lua tests of lunet.augment: constructors, error messages, apply and preview.
-- Run: lua5.4 augment_test.lua <tmpdir> with LUA_PATH/LUA_CPATH reaching
-- lunet.augment and lunet.core.
local core = require "lunet.core"
local augment = require "lunet.augment"

local tmpdir = arg[1] or "/tmp"
local failures, count = 0, 0

local function test(name, fn)
  count = count + 1
  local ok, err = pcall(fn)
  if not ok then
    failures = failures + 1
    io.stderr:write("FAIL ", name, ": ", tostring(err), "\n")
  end
end

local function eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %s, want %s", what or "value", tostring(got), tostring(want)), 2)
  end
end

-- Calls fn and checks it raises an error ending in `want` (after the position).
local function raises(want, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("no error; wanted: " .. want, 2) end
  err = tostring(err)
  if err:sub(-#want) ~= want then
    error(string.format("error %q\n  does not end with %q", err, want), 2)
  end
end

-- A (1, h, w, 1) tensor from rows of numbers.
local function image(rows)
  local t = {}
  for y, row in ipairs(rows) do
    t[y] = {}
    for x, v in ipairs(row) do t[y][x] = {v} end
  end
  return core.tensor{t}
end

-- Rows of a (1, h, w, 1) result.
local function rows_of(t)
  local out = {}
  for y, row in ipairs(t:totable()[1]) do
    out[y] = {}
    for x, px in ipairs(row) do out[y][x] = px[1] end
  end
  return out
end

local function same_rows(got, want)
  for y = 1, #want do
    for x = 1, #want[y] do
      eq(got[y][x], want[y][x], string.format("pixel (%d, %d)", y, x))
    end
  end
end

test("augment_lua_constructors", function()
  local f = augment.RandomFlip()
  eq(f.mode, "horizontal_and_vertical", "RandomFlip default")
  eq(augment.RandomFlip{mode = "vertical"}.mode, "vertical", "named RandomFlip")
  local r = augment.RandomRotation(0.1)
  eq(r.factor[1], -0.1, "rotation lo")
  eq(r.factor[2], 0.1, "rotation hi")
  eq(r.fill_mode, "reflect", "rotation fill")
  local r2 = augment.RandomRotation{factor = {-0.2, 0.3}, fill_mode = "constant", fill_value = 2}
  eq(r2.factor[1], -0.2, "named rotation lo")
  eq(r2.fill_value, 2, "fill_value")
  local c = augment.RandomCrop{32, 30, padding = 4}
  eq(c.height, 32, "crop height")
  eq(c.width, 30, "crop width")
  eq(c.padding, 4, "crop padding")
  eq(augment.RandomCrop(8, 8).padding, 0, "crop default padding")
  local z = augment.RandomZoom(0.2, {fill_mode = "nearest"})
  eq(z.width_factor, nil, "zoom width follows height")
  eq(z.fill_mode, "nearest", "zoom options as the 2nd argument")
  eq(tostring(augment.RandomFlip("horizontal")), "RandomFlip(mode = 'horizontal')", "tostring")
end)

test("augment_lua_errors", function()
  raises("bad argument #1 to 'RandomFlip' (mode must be one of horizontal, vertical, " ..
         "horizontal_and_vertical, got 'sideways')", augment.RandomFlip, "sideways")
  raises("bad argument #1 to 'RandomRotation' (factor must be in [0, 1] when a number, got 3)",
         augment.RandomRotation, 3)
  raises("bad argument #1 to 'RandomRotation' (factor pair {0.5, 0.2} is reversed " ..
         "(lower must be <= upper))", augment.RandomRotation, {0.5, 0.2})
  raises("bad argument #2 to 'RandomRotation' (fill_mode must be one of reflect, constant, " ..
         "nearest, wrap, got 'mirror')", augment.RandomRotation, 0.1, {fill_mode = "mirror"})
  raises("bad argument #2 to 'RandomTranslation' (width_factor must be a number or a " ..
         "{lo, hi} pair, got nil)", augment.RandomTranslation, 0.1)
  raises("bad argument #1 to 'RandomZoom' (height_factor must be in [0, 1) when a number, " ..
         "got 1)", augment.RandomZoom, 1)
  raises("bad argument #3 to 'RandomCrop' (padding must be an integer >= 0, got -1)",
         augment.RandomCrop, {4, 4, padding = -1})
  -- preprocessing that changed only training batches is refused, pointing to the layers
  local ok, err = pcall(augment.Rescaling, 1 / 255)
  assert(not ok and err:find("put nn.Rescaling{scale, offset} in the model", 1, true), err)
  ok, err = pcall(augment.Normalization, {0, 1})
  assert(not ok and err:find("put nn.Normalization{} in the model and call layer:adapt(x_train)", 1, true), err)
  raises("bad argument #2 to 'RandomRotation' (seed is set once for the pipeline: " ..
         "augment.Sequential{..., seed = n})", augment.RandomRotation, 0.1, {seed = 3})
  raises("bad argument #1 to 'Sequential' (step 2 is not an augment step (got 'flip'))",
         augment.Sequential, {augment.RandomFlip(), "flip"})
  -- the C pipeline's own check: one fill mode for the one resample
  raises("bad argument #1 to 'Sequential' (RandomRotation: fill_mode 'reflect' " ..
         "(fill_value 0) differs from RandomCrop's 'constant' (fill_value 0); the " ..
         "geometric steps share one resample, so give them the same fill)",
         augment.Sequential, {augment.RandomCrop{4, 4, padding = 1}, augment.RandomRotation(0.1)})
end)

test("augment_lua_apply_translation", function()
  local aug = augment.Sequential{
    augment.RandomTranslation({0, 0}, {0.5, 0.5}, {fill_mode = "wrap"}),
  }
  local y = aug:apply(image{{1, 2, 3, 4}, {5, 6, 7, 8}})
  eq(#y:shape(), 4, "rank")
  -- shifted right by 2 with wrap
  same_rows(rows_of(y), {{3, 4, 1, 2}, {7, 8, 5, 6}})
end)

test("augment_lua_apply_crop_shape_and_seeds", function()
  local aug = augment.Sequential{augment.RandomCrop{2, 3, padding = 1}, seed = 5}
  local x = image{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}
  local oh, ow, oc = aug:output_shape(3, 3, 1)
  eq(oh * 100 + ow * 10 + oc, 231, "output_shape")
  local shape = aug:apply(x):shape()
  eq(shape[1], 1, "N")
  eq(shape[2], 2, "H")
  eq(shape[3], 3, "W")
  eq(shape[4], 1, "C")
  -- the same keys give the same crop; some epoch gives another
  local a = table.concat(rows_of(aug:apply(x, {epoch = 1}))[1], ",")
  eq(table.concat(rows_of(aug:apply(x, {epoch = 1}))[1], ","), a, "repeatable")
  local differs = false
  for e = 2, 12 do
    if table.concat(rows_of(aug:apply(x, {epoch = e}))[1], ",") ~= a then differs = true end
  end
  eq(differs, true, "epochs differ")
end)

test("augment_lua_preview", function()
  local path = tmpdir .. "/augment_preview.png"
  os.remove(path)
  local x = core.tensor{{{{0.5}}}, {{{1}}}, {{{0}}}}
  eq(augment.preview(augment.RandomFlip(), x, 2, path), path, "preview returns the path")
  local f = assert(io.open(path, "rb"))
  local head = f:read(24)
  f:close()
  eq(head:sub(2, 4), "PNG", "PNG signature")
  -- IHDR width and height, big-endian: 2 images of 1x1 with a 2-pixel gap
  eq(string.unpack(">I4", head, 17), 4, "width")
  eq(string.unpack(">I4", head, 21), 1, "height")
  os.remove(path)
  raises("png_grid: cannot write '/nonexistent-dir/p.png': No such file or directory",
         augment.preview, nil, x, 1, "/nonexistent-dir/p.png")
end)

print(string.format("%d tests, %d failures", count, failures))
os.exit(failures == 0 and 0 or 1)
