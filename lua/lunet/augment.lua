-- lunet.augment: Keras-style random preprocessing for image batches (NHWC).
--
--   local augment = require "lunet.augment"
--   local aug = augment.Sequential{
--     augment.RandomCrop{32, 32, padding = 4},
--     augment.RandomFlip("horizontal"),
--     seed = 42,
--   }
--   local y = aug:apply(x, {epoch = 3})       -- x: tensor (N, H, W, C)
--   augment.preview(aug, x, 16, "aug.png")     -- a PNG grid of 16 samples
--
-- Rescaling and normalization belong in the model (nn.Rescaling,
-- nn.Normalization), where validation, evaluate and predict see them too;
-- augment.Rescaling and augment.Normalization are errors saying so.
--
-- The work happens in C (core/src/augment.c): the geometric steps compose
-- into one affine matrix per sample and one bilinear resample, so they share
-- one fill mode (a crop with padding fills with 0, like torchvision: give the
-- other steps fill_mode = "constant" to combine them).  Draws are keyed by
-- (seed, epoch, sample index), so a sample's augmentation does not depend on
-- the batch it lands in.
--
-- For the fit loop: `aug.handle` is the C pipeline (userdata "lunet.Augment",
-- read with lunetL_checkaugment() in C) to hand to lunet_batches_new(), and
-- `aug.seed` its seed.
local core = require "lunet.core"

local augment = {}

-- Raises Lua's "bad argument" error at the caller of the constructor that
-- calls this (level 3: fail, constructor, caller; `deeper` for a helper
-- of the constructor).
local function fail(fname, n, msg, deeper)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), 3 + (deeper or 0))
end

local function show(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  return tostring(v)
end

local Step = {}
Step.__index = Step
Step.__name = "lunet.augment.Step"

local function fmt_value(v)
  if type(v) == "table" then
    local parts = {}
    for i = 1, #v do parts[i] = fmt_value(v[i]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return show(v)
end

-- Fields shown by tostring, in order.
local shown = {"mode", "factor", "height_factor", "width_factor", "height", "width",
               "padding", "fill_mode", "fill_value", "scale", "offset", "mean", "std"}

function Step.__tostring(s)
  local parts = {}
  for _, k in ipairs(shown) do
    if s[k] ~= nil then parts[#parts + 1] = k .. " = " .. fmt_value(s[k]) end
  end
  return s.kind .. "(" .. table.concat(parts, ", ") .. ")"
end

local function step(t) return setmetatable(t, Step) end

-- A factor given as a number f (meaning [-f, f]; f in [0, 1], or [0, 1)
-- when nopen) or a {lo, hi} pair with lo <= hi, each >= pmin (> pmin when
-- popen) and <= pmax.  Returns the pair, or nil and a message.
local function factor_range(name, v, nopen, pmin, pmax, popen)
  if math.type(v) then
    if not (v >= 0 and (v < 1 or (v == 1 and not nopen))) then
      return nil, string.format("%s must be in [0, 1%s when a number, got %s", name,
                                nopen and ")" or "]", show(v))
    end
    return {-v, v}
  end
  if type(v) ~= "table" or not math.type(v[1]) or not math.type(v[2]) or v[3] ~= nil then
    return nil, string.format("%s must be a number or a {lo, hi} pair, got %s", name,
                              fmt_value(v))
  end
  local lo, hi = v[1], v[2]
  if lo > hi then
    return nil, string.format("%s pair {%s, %s} is reversed (lower must be <= upper)", name,
                              show(lo), show(hi))
  end
  if (popen and lo <= pmin) or (not popen and lo < pmin) or hi > pmax then
    return nil, string.format("%s values must be in %s%s, %s], got {%s, %s}", name,
                              popen and "(" or "[", show(pmin), show(pmax), show(lo),
                              show(hi))
  end
  return {lo, hi}
end

local fill_modes = {reflect = true, constant = true, nearest = true, wrap = true}

-- Checks the options shared by rotation, translation and zoom; copies them
-- into step s.  Returns nil and a message on a bad option.
local function fill_options(opts, s, extra)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then return nil, "options must be a table, got " .. show(opts) end
  for k, v in pairs(opts) do
    if k == "fill_mode" then
      if not fill_modes[v] then
        return nil, "fill_mode must be one of reflect, constant, nearest, wrap, got " ..
          show(v)
      end
      s.fill_mode = v
    elseif k == "fill_value" then
      if not math.type(v) or v ~= v or v == math.huge or v == -math.huge then
        return nil, "fill_value must be a finite number, got " .. show(v)
      end
      s.fill_value = v
    elseif k == "interpolation" then
      if v ~= "bilinear" then
        return nil, "interpolation must be 'bilinear' (the only one lunet has), got " ..
          show(v)
      end
    elseif k == "seed" then
      return nil, "seed is set once for the pipeline: augment.Sequential{..., seed = n}"
    elseif not (extra and extra[k]) and type(k) == "string" then
      return nil, "unknown option " .. show(k)
    end
  end
  s.fill_mode = s.fill_mode or "reflect"
  s.fill_value = s.fill_value or 0
  return s
end

local flip_modes = {horizontal = true, vertical = true, horizontal_and_vertical = true}

--- RandomFlip(mode) or RandomFlip{mode = ...}: flips with probability 0.5;
-- mode "horizontal", "vertical" or "horizontal_and_vertical" (the default).
function augment.RandomFlip(mode)
  if type(mode) == "table" then mode = mode.mode or mode[1] end
  if mode == nil then mode = "horizontal_and_vertical" end
  if not flip_modes[mode] then
    fail("RandomFlip", 1, "mode must be one of horizontal, vertical, " ..
      "horizontal_and_vertical, got " .. show(mode))
  end
  return step{kind = "RandomFlip", mode = mode}
end

-- A step called with one table as its layer is: nn.RandomZoom{0.2, 0.3,
-- fill_mode = "nearest"} (the factors by position or by name, and the
-- options).  Returns true, the factors in `names`' order and the options;
-- false for any other call.  A bare pair {a, b} of numbers is a range for a
-- one-factor step; for a two-factor one it could mean either (the layer's
-- height a and width b, or the range [a, b] for the height), so it is an
-- error of fname.
local function layer_form(fname, names, nargs, t)
  if nargs ~= 1 or type(t) ~= "table" or getmetatable(t) ~= nil then return false end
  local named = false
  for k in pairs(t) do named = named or type(k) == "string" end
  if not named and #t == 2 and type(t[1]) == "number" and type(t[2]) == "number" then
    if #names == 1 then return false end
    local a, b = show(t[1]), show(t[2])
    local msg = ("{A, B} could mean height A and width B (as nn.F{A, B}) or the range [A, B]: write F(A, B) or " ..
      "F{height_factor = A, width_factor = B} for the first, F{height_factor = {A, B}} for the second")
    fail(fname, 1, (msg:gsub("[ABF]", { A = a, B = b, F = fname })), 1)
  end
  if not named and #t ~= 1 then return false end
  local factors, opts = {}, {}
  for i, name in ipairs(names) do factors[i] = t[name] == nil and t[i] or t[name] end
  for k, v in pairs(t) do
    if type(k) == "string" and k ~= names[1] and k ~= names[2] then opts[k] = v end
  end
  return true, factors, next(opts) ~= nil and opts or nil
end

--- RandomRotation(factor, opts) or RandomRotation{factor = ..., fill_mode = ...}:
-- turns by a random fraction of a full turn in [-factor, factor] (or in a
-- {lo, hi} pair); opts: fill_mode ("reflect"), fill_value (0).
function augment.RandomRotation(...)
  local factor, opts = ...
  local layer, factors, named = layer_form("RandomRotation", {"factor"}, select("#", ...), factor)
  if layer then factor, opts = factors[1], named end
  local r, err = factor_range("factor", factor, false, -1, 1, false)
  if not r then fail("RandomRotation", 1, err) end
  local s, oerr = fill_options(opts, step{kind = "RandomRotation", factor = r},
                               {factor = true})
  if not s then fail("RandomRotation", 2, oerr) end
  return s
end

--- RandomTranslation(height_factor, width_factor, opts), or the same names
-- in one table: shifts by random fractions of the height and width; a
-- number f means [-f, f], a pair {lo, hi} a range (positive: down, right).
function augment.RandomTranslation(...)
  local h, w, opts = ...
  local layer, factors, named = layer_form("RandomTranslation", {"height_factor", "width_factor"}, select("#", ...), h)
  if layer then h, w, opts = factors[1], factors[2], named end
  local hr, herr = factor_range("height_factor", h, false, -1, 1, false)
  if not hr then fail("RandomTranslation", 1, herr) end
  local wr, werr = factor_range("width_factor", w, false, -1, 1, false)
  if not wr then fail("RandomTranslation", 2, werr) end
  local s, oerr = fill_options(opts, step{kind = "RandomTranslation", height_factor = hr,
                                          width_factor = wr},
                               {height_factor = true, width_factor = true})
  if not s then fail("RandomTranslation", 3, oerr) end
  return s
end

--- RandomCrop{height, width, padding = 0} (also named, or positional
-- arguments): pads with `padding` zeros on every side, then takes a random
-- height x width window (torchvision's RandomCrop).
function augment.RandomCrop(h, w, padding)
  if type(h) == "table" then
    local t = h
    h, w, padding = t.height or t[1], t.width or t[2], t.padding or t[3]
  elseif type(padding) == "table" then
    padding = padding.padding
  end
  padding = padding or 0
  local names = {"height", "width", "padding"}
  for i, v in ipairs{h, w, padding} do
    local least = i == 3 and 0 or 1
    if math.type(v) ~= "integer" or v < least then
      fail("RandomCrop", i, string.format("%s must be an integer >= %d, got %s", names[i],
                                          least, show(v)))
    end
  end
  return step{kind = "RandomCrop", height = h, width = w, padding = padding}
end

local function is_options(t)
  return type(t) == "table" and t[1] == nil and next(t) ~= nil
end

--- RandomZoom(height_factor, width_factor, opts), or the same names in one
-- table: zooms by 1 + a random value in [-f, f] (or a {lo, hi} pair); a
-- positive value zooms out (Keras).  width_factor nil: the width zooms as
-- much as the height, keeping the aspect.
function augment.RandomZoom(...)
  local h, w, opts = ...
  local layer, factors, named = layer_form("RandomZoom", {"height_factor", "width_factor"}, select("#", ...), h)
  if layer then
    h, w, opts = factors[1], factors[2], named
  elseif opts == nil and is_options(w) then
    opts, w = w, nil
  end
  local hr, herr = factor_range("height_factor", h, true, -1, math.huge, true)
  if not hr then fail("RandomZoom", 1, herr) end
  local wr
  if w ~= nil then
    local werr
    wr, werr = factor_range("width_factor", w, true, -1, math.huge, true)
    if not wr then fail("RandomZoom", 2, werr) end
  end
  local s, oerr = fill_options(opts, step{kind = "RandomZoom", height_factor = hr,
                                          width_factor = wr},
                               {height_factor = true, width_factor = true})
  if not s then fail("RandomZoom", 3, oerr) end
  return s
end

--- Rescaling: refused (it changed only training batches); nn.Rescaling is
-- the model layer.
function augment.Rescaling()
  error("nn.augment.Rescaling changed only training batches, so validation, evaluate and predict saw other data; "
    .. "put nn.Rescaling{scale, offset} in the model instead (it is saved with it)", 2)
end


--- Normalization: refused (it changed only training batches);
-- nn.Normalization with layer:adapt(x) is the model layer.
function augment.Normalization()
  error("nn.augment.Normalization changed only training batches, so validation, evaluate and predict saw other "
    .. "data; put nn.Normalization{} in the model and call layer:adapt(x_train) (mean and variance are saved with it)", 2)
end

local Sequential = {}
Sequential.__index = Sequential
Sequential.__name = "lunet.augment.Sequential"

--- Sequential{step, step, ..., seed = n}: the pipeline.  Fields: steps,
-- seed, handle (the C pipeline for the batch loader).
function augment.Sequential(t)
  if type(t) ~= "table" then
    fail("Sequential", 1, "expected a list of augment steps, got " .. show(t))
  end
  local steps = {}
  for i = 1, #t do
    if getmetatable(t[i]) ~= Step then
      fail("Sequential", 1, string.format("step %d is not an augment step (got %s)", i,
                                          show(t[i])))
    end
    steps[i] = t[i]
  end
  local seed = t.seed -- nil: nn.seed's, when the pipeline runs
  if seed ~= nil and math.type(seed) ~= "integer" then
    fail("Sequential", 1, "seed must be an integer, got " .. show(seed))
  end
  local ok, handle = pcall(core.augment_new, steps)
  if not ok then fail("Sequential", 1, tostring(handle)) end
  return setmetatable({steps = steps, seed = seed, handle = handle}, Sequential)
end

--- aug:key_seed(): the seed its draws are keyed by: its own, or nn.seed's
-- (so an unseeded pipeline changes with nn.seed, as Keras's layers with the
-- global seed).
function Sequential:key_seed()
  return self.seed or core.seed()
end

--- augment.pipeline(v, fname): v as a pipeline: an augment.Sequential, one
-- step, or a list of steps (wrapped); anything else is an error of fname.
function augment.pipeline(v, fname)
  if getmetatable(v) == Sequential then return v end
  if getmetatable(v) == Step then return augment.Sequential{v} end
  local steps = type(v) == "table" and getmetatable(v) == nil and #v > 0
  for k, s in pairs(steps and v or {}) do steps = steps and math.type(k) == "integer" and getmetatable(s) == Step end
  if steps then return augment.Sequential(v) end
  error(string.format("bad argument 'augment' to '%s' (nn.augment.Sequential{step, ..., seed = n}, one augment " ..
    "step or a list of them expected, got %s)", fname,
    type(v) == "table" and getmetatable(v) == nil and "a table that is not a list of augment steps" or show(v)), 3)
end

--- aug:apply(x, {seed =, epoch =, first_index =, indices =, count =}) -> a new tensor.
-- x (N, H, W, C) or (H, W, C), float32 or uint8.  first_index: the dataset
-- index of x's first sample (keys its draws), or indices: each sample's
-- dataset index (0-based); count: samples from the front.
function Sequential:apply(x, opts)
  opts = opts or {}
  if type(opts) ~= "table" then fail("apply", 2, "options must be a table, got " .. show(opts)) end
  for _, k in ipairs{"seed", "epoch", "first_index", "count"} do
    local v = opts[k]
    if v ~= nil and math.type(v) ~= "integer" then
      fail("apply", 2, k .. " must be an integer, got " .. show(v))
    end
  end
  if opts.indices ~= nil and type(opts.indices) ~= "table" then
    fail("apply", 2, "indices must be a list of sample indices, got " .. show(opts.indices))
  end
  if opts.indices ~= nil and core.is_tensor(x) then
    local n = x:dim() == 4 and x:shape()[1] or 1
    local want = opts.count and math.min(opts.count, n) or n
    if #opts.indices < want then
      fail("apply", 2, string.format("indices has %d entries for %d samples (one dataset index per sample)",
        #opts.indices, want))
    end
  end
  for i, v in ipairs(opts.indices or {}) do -- a fraction was taken as 0, silently
    if math.tointeger(v) == nil or v < 0 then
      fail("apply", 2, string.format("indices[%d] is %s; sample indices are whole numbers >= 0 (0-based)", i, show(v)))
    end
  end
  return core.augment_apply(self.handle, x, opts.seed or self:key_seed(), opts.epoch or 0,
                            opts.indices or opts.first_index or 0, opts.count)
end

Sequential.__call = Sequential.apply

--- aug:output_shape(h, w, c) -> oh, ow, oc (a crop sets the size).
function Sequential:output_shape(h, w, c)
  return core.augment_output_shape(self.handle, h, w, c)
end

function Sequential:__tostring()
  local lines = {"augment.Sequential (seed " .. (self.seed or "of nn.seed") .. ")"}
  for i, s in ipairs(self.steps) do lines[i + 1] = "  " .. tostring(s) end
  return table.concat(lines, "\n")
end

--- augment.preview(aug, x, n, path, opts): augments the first n samples of x
-- (default 16, at most all; aug nil shows them as they are; aug may be one step) and
-- writes them as a PNG grid; opts: cols, seed, epoch.  Returns path.
function augment.preview(aug, x, n, path, opts)
  if getmetatable(aug) == Step then aug = augment.Sequential{aug} end
  if aug ~= nil and getmetatable(aug) ~= Sequential then
    fail("preview", 1, "expected an augment.Sequential, a step or nil, got " .. show(aug))
  end
  n = n or 16
  if math.type(n) ~= "integer" or n < 1 then
    fail("preview", 3, "n must be a positive integer, got " .. show(n))
  end
  if type(path) ~= "string" then fail("preview", 4, "path must be a string, got " .. show(path)) end
  opts = opts or {}
  local y
  if aug then
    y = aug:apply(x, {seed = opts.seed, epoch = opts.epoch, count = n})
  else
    y = augment.Sequential{}:apply(x, {count = n})
  end
  core.png_grid(path, y, opts.cols or 0)
  return path
end

return augment
