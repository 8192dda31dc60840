-- Optimizers, losses, callbacks and learning-rate schedules (Keras's names
-- and defaults).
local C = require "lunet.core"

local M = { optimizers = {}, losses = {}, callbacks = {}, schedules = {} }

-- An optimizer is a Lua object holding Keras's hyperparameters (a learning
-- rate may be a schedule) and a core optimizer (`handle`) holding the
-- per-parameter state and the update count.
local Optimizer = {}
function Optimizer.__index(self, k)
  if k == "iterations" then return C.optimizer_iterations(rawget(self, "handle")) end
  return Optimizer[k]
end
function Optimizer.__newindex(self, k, v)
  if k == "iterations" then C.optimizer_iterations(rawget(self, "handle"), v) return end
  rawset(self, k, v)
end

-- Checks an options table against the allowed keys (the truthy ones of
-- `allowed`), erring at the caller's caller with the valid names; `noun`
-- ("argument") names a key, `argn` (1) the table's place in the call.
local function check_fields(name, opts, allowed, noun, argn)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument #%d to '%s' (table expected, got %s)", argn or 1, name, type(opts)), 3)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      local names = {}
      for a, on in pairs(allowed) do if on and type(a) == "string" then names[#names + 1] = a end end
      table.sort(names)
      error(string.format("bad argument '%s' to '%s' (unknown %s; valid: %s)", tostring(k), name, noun or "argument",
        table.concat(names, ", ")), 3)
    end
  end
  return opts
end
M.check_fields = check_fields

-- Keras's gradient clipping, accepted by every optimizer (0: off).
local clipping = { clipvalue = 0, clipnorm = 0, global_clipnorm = 0 }
local hyper_names = { "learning_rate", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "rho", "weight_decay",
  "clipvalue", "clipnorm", "global_clipnorm", "initial_accumulator_value", "amsgrad", "centered" }

-- Adam{learning_rate = 0.001, beta_1 = 0.9, ...} (3 updates): its
-- arguments (clipping only when set) and how many updates it made.
function Optimizer:__tostring()
  local parts = {}
  for _, k in ipairs(hyper_names) do
    local v = rawget(self, k)
    if v ~= nil and not (clipping[k] and v == 0) then
      local text = type(v) == "number" and string.format("%.6g", v) or type(v) == "function" and "a function"
        or tostring(v)
      parts[#parts + 1] = k .. " = " .. text
    end
  end
  local n = self.iterations
  return string.format("%s{%s} (%d update%s)", self.name, table.concat(parts, ", "), n, n == 1 and "" or "s")
end

local function make(kind, name, defaults, opts, handle)
  local allowed = {}
  for k in pairs(defaults) do allowed[k] = true end
  for k in pairs(clipping) do allowed[k] = true end
  opts = check_fields(name, opts, allowed)
  local self = { kind = kind, name = name }
  for k, v in pairs(defaults) do
    local val = opts[k]
    if val == nil then val = v end
    if type(v) == "boolean" and type(val) ~= "boolean" then
      error(string.format("bad argument '%s' to '%s' (boolean expected, got %s)", k, name, type(val)), 3)
    end
    self[k] = val
  end
  local clips = 0
  for k, v in pairs(clipping) do
    local val = opts[k] or v
    if type(val) ~= "number" or val < 0 then
      error(string.format("bad argument '%s' to '%s' (a number >= 0 expected, 0 is off)", k, name), 3)
    end
    self[k] = val
    if val > 0 then clips = clips + 1 end
  end
  if clips > 1 then
    error(string.format("%s: only one of clipnorm, clipvalue and global_clipnorm can be set (as Keras's); got " ..
      "clipnorm = %g, clipvalue = %g, global_clipnorm = %g", name, self.clipnorm, self.clipvalue,
      self.global_clipnorm), 3)
  end
  local lr = self.learning_rate
  if type(lr) == "table" and lr.schedule then lr = M.schedules.from_config(lr) self.learning_rate = lr end
  if type(lr) ~= "number" and type(lr) ~= "function" and not (type(lr) == "table" and getmetatable(lr)) then
    error(string.format("bad argument 'learning_rate' to '%s' (number or schedule expected)", name), 3)
  end
  if handle then -- the core optimizer of a model read from a file, with its state
    self.handle = handle
    return setmetatable(self, Optimizer)
  end
  local ok
  ok, handle = pcall(C.optimizer_new, { kind = kind, learning_rate = type(lr) == "number" and lr or 0,
    momentum = self.momentum, nesterov = self.nesterov, beta_1 = self.beta_1, beta_2 = self.beta_2,
    epsilon = self.epsilon, rho = self.rho, weight_decay = self.weight_decay, clipvalue = self.clipvalue,
    clipnorm = self.clipnorm, global_clipnorm = self.global_clipnorm,
    initial_accumulator_value = self.initial_accumulator_value, amsgrad = self.amsgrad, centered = self.centered })
  if not ok then error(string.format("bad argument to '%s' (%s)", name, handle), 3) end
  self.handle = handle
  return setmetatable(self, Optimizer)
end

-- Keras's defaults of each optimizer (and the arguments it takes, with the
-- clipping arguments every optimizer takes).
local defaults = {
  SGD = { kind = "sgd", learning_rate = 0.01, momentum = 0.0, nesterov = false, weight_decay = 0 },
  Adam = { kind = "adam", learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7, weight_decay = 0,
    amsgrad = false },
  AdamW = { kind = "adam", learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7, weight_decay = 0.004,
    amsgrad = false },
  RMSprop = { kind = "rmsprop", learning_rate = 0.001, rho = 0.9, momentum = 0.0, epsilon = 1e-7, centered = false,
    weight_decay = 0 },
  Adagrad = { kind = "adagrad", learning_rate = 0.001, initial_accumulator_value = 0.1, epsilon = 1e-7, weight_decay = 0 },
  Adadelta = { kind = "adadelta", learning_rate = 0.001, rho = 0.95, epsilon = 1e-7, weight_decay = 0 },
  Adamax = { kind = "adamax", learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7, weight_decay = 0 },
  Nadam = { kind = "nadam", learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7, weight_decay = 0 },
  Lion = { kind = "lion", learning_rate = 0.001, beta_1 = 0.9, beta_2 = 0.99, weight_decay = 0 },
}

for name, d in pairs(defaults) do
  local args = {}
  for k, v in pairs(d) do if k ~= "kind" then args[k] = v end end
  -- nn.optimizers.Adam{learning_rate = ...}; `handle` (internal) adopts the
  -- core optimizer of a model read from a file
  M.optimizers[name] = function(opts, handle) return make(d.kind, name, args, opts, handle) end
end

-- Whether optimizer `name` takes argument `arg`.
function M.optimizers.takes(name, arg)
  return defaults[name] ~= nil and arg ~= "kind" and (defaults[name][arg] ~= nil or clipping[arg] ~= nil)
end

-- The core's kind of each optimizer and the names compile takes (the same,
-- and adamw: Adam with decay).
M.optimizers.by_kind = { sgd = "SGD", adam = "Adam", rmsprop = "RMSprop", adagrad = "Adagrad", adadelta = "Adadelta",
  adamax = "Adamax", nadam = "Nadam", lion = "Lion" }
local by_name = { adamw = "AdamW" }
for kind, name in pairs(M.optimizers.by_kind) do by_name[kind] = name end

function M.optimizers.get(o)
  if type(o) == "table" and getmetatable(o) == Optimizer then return o end
  if type(o) == "string" and by_name[o:lower()] then return M.optimizers[by_name[o:lower()]]() end
  error(string.format("unknown optimizer %s (valid: sgd, adam, adamw, rmsprop, adagrad, adadelta, adamax, nadam, "
    .. "lion, or nn.optimizers.Adam{...})",
    type(o) == "string" and ("'" .. o .. "'") or type(o)), 3)
end

-- The learning rate of the next update (a schedule sees the number of
-- updates done so far, 0 for the first, as in Keras).
function Optimizer:current_lr()
  local lr = self.learning_rate
  if type(lr) == "number" then return lr end
  return lr(self.iterations)
end

-- Hands the hyperparameters to the core optimizer (fit does it once, then
-- sets the learning rate before each update).
function Optimizer:sync()
  local cfg = { kind = self.kind, learning_rate = self:current_lr() }
  for _, k in ipairs(hyper_names) do
    if k ~= "learning_rate" then cfg[k] = self[k] end
  end
  C.optimizer_configure(self.handle, cfg)
end

-- The same parameters: one list or model, or lists of the same tensors (a
-- training loop may build its list anew each step).
local function same_owner(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or getmetatable(a) or getmetatable(b) or #a ~= #b then
    return false
  end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

-- An optimizer belongs to the first model (or parameter list) it trains.
function Optimizer:claim(owner, level)
  if self.owner and not same_owner(self.owner, owner) then
    local lists = getmetatable(self.owner) == nil and getmetatable(owner) == nil
    error(self.name .. " optimizer already trains another model's weights" .. (lists and " (another list: "
      .. "its state is kept per position, so give the same tensors in the same order every step)" or "")
      .. ": give each model its own optimizer (nn.optimizers." .. self.name .. "{...})", level + 1)
  end
  self.owner = owner
end

-- One update of every parameter from its .grad (cleared afterwards): the
-- step of a custom training loop.  `params`: a list of tensors, or a model
-- (its trainable weights).
function Optimizer:apply(params)
  local owner = params
  if type(params) == "table" and getmetatable(params) ~= nil and type(params.trainable_weights) == "function" then
    params = params:trainable_weights()
    if #params == 0 then error("apply: the model has no trainable weights (every layer frozen?)", 2) end
  elseif type(params) ~= "table" or getmetatable(params) ~= nil then
    error(string.format("bad argument #1 to 'apply' (a list of tensors or a model expected, got %s)",
      C.is_tensor(params) and "a tensor (put it in a list)" or type(params)), 2)
  else
    if #params == 0 or next(params, #params) ~= nil then
      error("bad argument #1 to 'apply' (a list of tensors expected, got " ..
        (next(params) == nil and "an empty table" or "a table with other keys") .. ")", 2)
    end
    for i, p in ipairs(params) do
      if not C.is_tensor(p) then
        error(string.format("bad argument #1 to 'apply' (entry %d is a %s, not a tensor)", i, type(p)), 2)
      end
    end
  end
  self:claim(owner, 2)
  self:sync()
  C.optimizer_apply(self.handle, params)
end

-- What a checkpoint stores.  A schedule made by nn.schedules is saved as its
-- configuration; a plain Lua function cannot be, so its current value is.
function Optimizer:config()
  local cfg = { name = self.name, iterations = self.iterations }
  for _, k in ipairs(hyper_names) do
    local v = self[k]
    if type(v) == "table" and v.config then cfg[k] = v:config()
    elseif type(v) == "function" then cfg[k] = v(self.iterations)
    else cfg[k] = v end
  end
  return cfg
end

-- ---- losses ----

-- Keras's names; their short forms resolve to these.
local loss_names = {
  mean_squared_error = "mean_squared_error", mse = "mean_squared_error",
  categorical_crossentropy = "categorical_crossentropy",
  sparse_categorical_crossentropy = "sparse_categorical_crossentropy",
  binary_crossentropy = "binary_crossentropy",
  mean_absolute_error = "mean_absolute_error", mae = "mean_absolute_error",
  huber = "huber", huber_loss = "huber", log_cosh = "log_cosh", logcosh = "log_cosh",
  kl_divergence = "kl_divergence", kld = "kl_divergence", kullback_leibler_divergence = "kl_divergence",
  hinge = "hinge", squared_hinge = "squared_hinge", categorical_hinge = "categorical_hinge",
  cosine_similarity = "cosine_similarity",
}

-- A loss object: loss(y_true, y_pred [, sample_weight]) -> the batch's
-- loss as a tensor on the tape (Keras's call; weights reduced as Keras
-- does, sum(w * loss) / N).
local Loss = {}
Loss.__index = Loss
Loss.__name = "lunet.Loss"
function Loss:__call(y_true, y_pred, sample_weight)
  if self.fn then -- reduced as compile reduces it: one number as is, per-sample values averaged
    local r = self.fn(y_true, y_pred)
    if not C.is_tensor(r) then error("the loss function returned a " .. type(r) .. ", not a tensor", 2) end
    if r:dim() == 0 then
      if sample_weight ~= nil then
        error("the loss function returned one number, which sample weights cannot weigh: return one loss per sample", 2)
      end
      return r
    end
    if sample_weight == nil then return r:mean() end
    local shape = { r:shape()[1] }
    for i = 2, r:dim() do shape[i] = 1 end
    return (r * sample_weight:reshape(table.unpack(shape))):mean()
  end
  return C.loss(self.name, y_true, y_pred, self.from_logits, sample_weight, self.delta, self.label_smoothing)
end
function Loss:__tostring()
  return "Loss(" .. self.name .. (self.from_logits and ", from_logits" or "") ..
    (self.delta and (", delta = " .. self.delta) or "") ..
    (self.label_smoothing and (", label_smoothing = " .. self.label_smoothing) or "") .. ")"
end

local smoothing = { categorical_crossentropy = true, binary_crossentropy = true }

local function loss_object(name, opts)
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "from_logits" and not (k == "delta" and name == "huber")
      and not (k == "label_smoothing" and smoothing[name]) then
      error(string.format("bad argument '%s' to the %s loss (valid: from_logits%s)", tostring(k), name,
        name == "huber" and ", delta" or smoothing[name] and ", label_smoothing" or ""), 3)
    end
  end
  local d, ls = opts.delta, opts.label_smoothing
  if d ~= nil and not (type(d) == "number" and d > 0) then
    error("bad argument 'delta' to the huber loss (a number > 0; Keras's default is 1.0)", 3)
  end
  if ls ~= nil and not (type(ls) == "number" and ls >= 0 and ls <= 1) then
    error(string.format("bad argument 'label_smoothing' to the %s loss (a number in [0, 1])", name), 3)
  end
  return setmetatable({ name = name, from_logits = opts.from_logits or false, delta = d,
    label_smoothing = ls ~= 0 and ls or nil }, Loss)
end

local loss_classes = {
  MeanSquaredError = "mean_squared_error", CategoricalCrossentropy = "categorical_crossentropy",
  SparseCategoricalCrossentropy = "sparse_categorical_crossentropy", BinaryCrossentropy = "binary_crossentropy",
  MeanAbsoluteError = "mean_absolute_error", Huber = "huber", LogCosh = "log_cosh", KLDivergence = "kl_divergence",
  Hinge = "hinge", SquaredHinge = "squared_hinge", CategoricalHinge = "categorical_hinge",
  CosineSimilarity = "cosine_similarity",
}
for class, name in pairs(loss_classes) do
  M.losses[class] = function(o) return loss_object(name, o) end
end

function M.losses.get(l)
  if type(l) == "table" and getmetatable(l) == Loss then return l end
  if type(l) == "function" then -- Keras's custom loss: f(y_true, y_pred)
    return setmetatable({ name = "loss_function", fn = l, handle = C.loss_function(l), from_logits = false }, Loss)
  end
  if type(l) == "table" and loss_names[l.name] then -- a loss as a model file describes it
    return loss_object(loss_names[l.name], { from_logits = l.from_logits, delta = l.delta,
      label_smoothing = l.label_smoothing })
  end
  if type(l) == "string" and loss_names[l] then return loss_object(loss_names[l]) end
  local names = {}
  for k, v in pairs(loss_names) do if k == v then names[#names + 1] = k end end
  table.sort(names)
  error(string.format("unknown loss %s (valid: %s, nn.losses.X{...}, or a function(y_true, y_pred))",
    type(l) == "string" and ("'" .. l .. "'") or type(l), table.concat(names, ", ")), 3)
end

-- ---- learning-rate schedules: callable objects of the step, saved with
-- the model ----

local Schedule = {}
Schedule.__index = Schedule
function Schedule:__call(step) return self.fn(self.cfg, step) end
function Schedule:config() return self.cfg end
-- ExponentialDecay{decay_rate = 0.9, decay_steps = 10, initial_learning_rate = 0.1}
function Schedule:__tostring()
  local keys = {}
  for k in pairs(self.cfg) do if k ~= "schedule" then keys[#keys + 1] = k end end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. " = " .. tostring(self.cfg[k]) end
  return self.cfg.schedule .. "{" .. table.concat(keys, ", ") .. "}"
end

local extra_schedules
local schedule_fns = {
  ExponentialDecay = function(c, step)
    local p = step / c.decay_steps
    if c.staircase then p = math.floor(p) end
    return c.initial_learning_rate * c.decay_rate ^ p
  end,
  -- Keras 3's: with warmup_target, a linear warm-up from
  -- initial_learning_rate to warmup_target over warmup_steps, then the
  -- cosine decay from warmup_target over decay_steps (to alpha times it).
  CosineDecay = function(c, step)
    local alpha, from, warm = c.alpha or 0, c.initial_learning_rate, 0
    if c.warmup_target then
      warm = c.warmup_steps or 0
      if step < warm then return from + (c.warmup_target - from) * step / warm end
      from = c.warmup_target
    end
    local t = math.min(step - warm, c.decay_steps) / c.decay_steps
    return from * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)
  end,
}

extra_schedules = {

  -- Keras's PolynomialDecay: from initial to end over decay_steps; with
  -- cycle the horizon grows by decay_steps each time it is reached
  PolynomialDecay = function(c, step)
    local steps, t = c.decay_steps, step
    if c.cycle then steps = steps * math.max(1, math.ceil(step / steps)) else t = math.min(step, steps) end
    local e = c.end_learning_rate or 1e-4
    return (c.initial_learning_rate - e) * (1 - t / steps) ^ (c.power or 1) + e
  end,
  -- Keras's InverseTimeDecay: initial / (1 + decay_rate * step / decay_steps)
  InverseTimeDecay = function(c, step)
    local p = step / c.decay_steps
    if c.staircase then p = math.floor(p) end
    return c.initial_learning_rate / (1 + c.decay_rate * p)
  end,
  -- Keras's PiecewiseConstantDecay: values[i] up to boundaries[i] (inclusive)
  PiecewiseConstantDecay = function(c, step)
    for i, b in ipairs(c.boundaries) do
      if step <= b then return c.values[i] end
    end
    return c.values[#c.values]
  end,
}
for name, fn in pairs(extra_schedules) do schedule_fns[name] = fn end

-- Each schedule's arguments in Keras's positional order, the required ones
-- first; nn.schedules.X(a, b, ...), X{a, b, ...} or X{name = ...}.
local schedule_specs = {
  ExponentialDecay = { order = { "initial_learning_rate", "decay_steps", "decay_rate", "staircase" }, required = 3 },
  InverseTimeDecay = { order = { "initial_learning_rate", "decay_steps", "decay_rate", "staircase" }, required = 3 },
  CosineDecay = { order = { "initial_learning_rate", "decay_steps", "alpha", "name", "warmup_target", "warmup_steps" },
    required = 2 },
  PolynomialDecay = { order = { "initial_learning_rate", "decay_steps", "end_learning_rate", "power", "cycle" },
    required = 2 },
  PiecewiseConstantDecay = { order = { "boundaries", "values" }, required = 2 },
}

local function check_schedule(name, o)
  local numbers = { initial_learning_rate = true, decay_steps = true, decay_rate = true, alpha = true,
    warmup_target = true, end_learning_rate = true, power = true }
  for k, v in pairs(o) do
    if numbers[k] and type(v) ~= "number" then
      error(string.format("bad argument '%s' to '%s' (number expected)", k, name), 4)
    end
  end
  if o.decay_steps ~= nil and o.decay_steps <= 0 then
    error(string.format("bad argument 'decay_steps' to '%s' (must be positive)", name), 4)
  end
  if o.warmup_steps ~= nil and (math.type(o.warmup_steps) ~= "integer" or o.warmup_steps < 0) then
    error("bad argument 'warmup_steps' to 'CosineDecay' (a non-negative integer)", 4)
  end
  if name == "PiecewiseConstantDecay" then
    local b, v = o.boundaries, o.values
    local ok = type(b) == "table" and type(v) == "table" and #v == #b + 1
    for i = 1, ok and #b or 0 do ok = ok and type(b[i]) == "number" and (i == 1 or b[i] > b[i - 1]) end
    for i = 1, ok and #v or 0 do ok = ok and type(v[i]) == "number" end
    if not ok then
      error("bad arguments to 'PiecewiseConstantDecay' (boundaries: increasing numbers; values: numbers, one more "
        .. "than the boundaries)", 4)
    end
  end
end

for name, spec in pairs(schedule_specs) do
  M.schedules[name] = function(...)
    local o
    if select("#", ...) == 1 and type(...) == "table" and getmetatable(...) == nil and (...).cfg == nil then
      o = {}
      for k, v in pairs((...)) do o[k] = v end
    else
      o = { ... }
    end
    -- positional entries take Keras's order
    for i, key in ipairs(spec.order) do
      if o[i] ~= nil then
        if o[key] ~= nil then error(string.format("bad argument '%s' to '%s' (given twice)", key, name), 2) end
        o[key], o[i] = o[i], nil
      end
    end
    local allowed = {}
    for _, key in ipairs(spec.order) do allowed[key] = true end
    check_fields(name, o, allowed)
    for i = 1, spec.required do
      if o[spec.order[i]] == nil then
        error(string.format("bad argument '%s' to '%s' (required)", spec.order[i], name), 2)
      end
    end
    check_schedule(name, o)
    local cfg = { schedule = name }
    for k, v in pairs(o) do if k ~= "name" then cfg[k] = v end end
    return setmetatable({ cfg = cfg, fn = schedule_fns[name] }, Schedule)
  end
end

function M.schedules.from_config(cfg)
  if not schedule_fns[cfg.schedule] then error("unknown learning-rate schedule '" .. tostring(cfg.schedule) .. "'", 2) end
  return setmetatable({ cfg = cfg, fn = schedule_fns[cfg.schedule] }, Schedule)
end

-- ---- callbacks ----

-- Callbacks get Keras's arguments: (model, epoch, logs) with epochs
-- counted from 0, (model, batch, logs) for the batch hooks.
local Callback = {}
Callback.__index = Callback
function Callback:on_train_begin() end
function Callback:on_epoch_begin() end
function Callback:on_epoch_end() end
function Callback:on_train_end() end

local function callback(fields)
  return setmetatable(fields, Callback)
end

-- Keras's comparison (max: v - d > best; min: v + d < best), the best
-- starting at -inf / +inf so that a NaN never counts as an improvement.
-- The first value seen is the best so far (Keras's reference None; a NaN
-- too, after which nothing improves on it).
local function improved(self, value)
  local best = self.best
  if best == nil then return true end
  if self.mode == "max" then return value - self.min_delta > best end
  return value + self.min_delta < best
end

-- Python's repr of a float: the shortest digits that read back the same,
-- in fixed notation for decimal exponents from -4 to 15 (100.0, 0.0001),
-- else in exponent form (1e+16, 1e-05).
local function shortest(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
  if v == 0 then return 1 / v < 0 and "-0.0" or "0.0" end
  for p = 1, 17 do
    local e = string.format("%." .. (p - 1) .. "e", v)
    if tonumber(e) == v then
      local exp = tonumber(e:match("e([-+]%d+)$"))
      if exp < -4 or exp >= 16 then return e:gsub("%.?0*e", "e") end
      local text = string.format("%." .. math.max(p - 1 - exp, 0) .. "f", v)
      if not text:find("%.") then text = text .. ".0" end
      return text
    end
  end
  return string.format("%.17g", v)
end

M.float_repr = shortest -- (for the tests)

-- A callback's verbose: 0, 1, true or false (as Keras's int; true is 1).
local function verbosity(v)
  if v == true then return 1 elseif v == false or v == nil then return 0 end
  return tonumber(v) or 0
end

-- The monitored value of this epoch's logs; a key never logged warns once
-- (on stderr, naming the logged keys), as Keras warns, instead of doing
-- nothing silently.
local function watched(self, what, logs, instead)
  local v = logs[self.monitor]
  if v == nil and not self.warned then
    self.warned = true
    local keys = {}
    for k in pairs(logs) do keys[#keys + 1] = k end
    table.sort(keys)
    io.stderr:write(string.format("warning: %s watches '%s', which is not logged (logged: %s)%s; %s\n",
      what, self.monitor, table.concat(keys, ", "),
      self.monitor:match("^val_") and "; give fit validation_data or validation_split" or "",
      instead or "it does nothing"))
  end
  return v
end

-- A checkpoint path with Keras's format fields: {epoch}, {epoch:02d},
-- {val_loss:.2f}, ... (Python's format specs d, f, e, g with width and
-- precision; a bare float as Python's str).  epoch is the 1-based number
-- (Keras formats epoch + 1).  A field that is not logged is an error naming
-- the logged ones.
local function checkpoint_name(path, epoch, logs)
  return (path:gsub("{([%w_]+):?([^}]*)}", function(name, spec)
    local v = name == "epoch" and epoch or logs[name]
    if v == nil then
      local keys = {}
      for k in pairs(logs) do keys[#keys + 1] = k end
      table.sort(keys)
      error(string.format("ModelCheckpoint: the path names {%s}, which is not logged (logged: epoch, %s)", name,
        table.concat(keys, ", ")), 0)
    end
    if spec == "" then return name == "epoch" and string.format("%d", v) or shortest(v) end
    if not spec:match("^0?%d*%.?%d*[dfeg]$") then
      error(string.format("ModelCheckpoint: unsupported format '{%s:%s}' (use d, f, e or g with a width and precision, like {epoch:02d} or {val_loss:.2f})", name, spec), 0)
    end
    if spec:sub(-1) == "d" then v = math.floor(v) end
    return string.format("%" .. spec, v)
  end))
end
M.checkpoint_name = checkpoint_name

-- Refuses file names of Keras's own formats: lunet writes safetensors, and
-- a file must not claim to be what it is not.
function M.check_save_path(path, what)
  local ext = path:lower():match("%.([%w]+)$")
  if ext == "keras" or ext == "h5" or ext == "hdf5" then
    error(string.format("%s: '%s' names a Keras .%s file, but lunet writes safetensors; use a .safetensors name", what,
      path, ext), 3)
  end
end

-- A callback's mode: "min", "max", or "auto", settled by settle_mode.
local function monitor_mode(monitor, mode, what)
  if mode == nil then return "auto" end
  if mode ~= "auto" and mode ~= "min" and mode ~= "max" then
    error(string.format("bad argument 'mode' to '%s' (\"auto\", \"min\" or \"max\")", what), 3)
  end
  return mode
end

-- "auto", once the monitored value is logged, as Keras 3 settles it: a
-- loss falls; a compiled metric goes the way its kind improves (the
-- metric's _direction, by its logged name, so a custom name such as
-- AUC{name = "roc"} is found and an output's loss named "decoder2_loss" is
-- no R2); anything else is an error asking for the mode (it was read from
-- the name's letters).
local function settle_mode(self, model, what)
  if self.mode ~= "auto" then return end
  local name = self.monitor:gsub("^val_", "")
  local mode = (name == "loss" or name:match("_loss$")) and "min"
    or (model.handle and C.model_metric_modes(model.handle)[name])
  if not mode then
    error(string.format("%s: cannot tell whether '%s' should rise or fall (it is no loss and no compiled metric); "
      .. "give mode = \"max\" or \"min\"", what, self.monitor), 0)
  end
  self.mode = mode
end

-- min_delta's magnitude (Keras takes abs(min_delta)).
local function delta(v, what)
  if v == nil then return nil end
  if type(v) ~= "number" then error(string.format("bad argument 'min_delta' to '%s' (a number)", what), 3) end
  return math.abs(v)
end

function M.callbacks.EarlyStopping(o)
  o = check_fields("EarlyStopping", o, { monitor = true, min_delta = true, patience = true, mode = true,
    restore_best_weights = true, verbose = true })
  local self = callback({ monitor = o.monitor or "val_loss", min_delta = delta(o.min_delta, "EarlyStopping") or 0,
    patience = o.patience or 0, restore_best_weights = o.restore_best_weights or false, verbose = verbosity(o.verbose) })
  self.mode = monitor_mode(self.monitor, o.mode, "EarlyStopping")
  function self:on_train_begin()
    self.wait, self.best, self.best_weights, self.stopped_epoch, self.best_epoch = 0, nil, nil, 0, 0
  end
  function self:on_epoch_end(model, epoch, logs) -- epoch from 0, as Keras's
    local v = watched(self, "EarlyStopping", logs)
    if v == nil then return end
    settle_mode(self, model, "EarlyStopping")
    if improved(self, v) then
      self.best, self.wait, self.best_epoch = v, 0, epoch
      if self.restore_best_weights then self.best_weights = model:get_weights() end
    else
      self.wait = self.wait + 1
      if self.wait >= self.patience and epoch > 0 then
        self.stopped_epoch = epoch
        model.stop_training = true
      end
    end
  end
  function self:on_train_end(model)
    if self.stopped_epoch > 0 and self.verbose > 0 then
      print(string.format("Epoch %d: early stopping", self.stopped_epoch + 1))
    end
    if self.restore_best_weights and self.best_weights then
      if self.verbose > 0 then
        print(string.format("Restoring model weights from the end of the best epoch: %d.", self.best_epoch + 1))
      end
      model:set_weights(self.best_weights)
    end
  end
  return self
end

function M.callbacks.ModelCheckpoint(o)
  if type(o) == "string" then o = { path = o } end
  o = check_fields("ModelCheckpoint", o, { path = true, filepath = true, monitor = true, save_best_only = true,
    mode = true, verbose = true, [1] = true })
  local path = o.path or o.filepath or o[1] -- ModelCheckpoint{"best.lunet"} as Keras's positional filepath
  if type(path) ~= "string" then error("bad argument 'path' to 'ModelCheckpoint' (a file path is required)", 2) end
  M.check_save_path(path, "ModelCheckpoint")
  local self = callback({ path = path, monitor = o.monitor or "val_loss", save_best_only = o.save_best_only or false,
    min_delta = 0, verbose = o.verbose })
  self.mode = monitor_mode(self.monitor, o.mode, "ModelCheckpoint")
  function self:on_epoch_end(model, epoch, logs) -- epoch from 0; files and saves number it from 1
    local v = self.save_best_only and watched(self, "ModelCheckpoint", logs, "it saves every epoch")
    local file = checkpoint_name(self.path, epoch + 1, logs)
    if self.save_best_only and v ~= nil then -- (an unlogged monitor saves every epoch, as Keras's, with its warning)
      settle_mode(self, model, "ModelCheckpoint")
      if not improved(self, v) then return end
      self.best = v
    end
    model:save(file, { epoch = epoch + 1 })
    if self.verbose and self.verbose ~= 0 then print("saved " .. file) end
  end
  return self
end

-- Under MPI each rank draws from its own RNG stream (dropout,
-- augmentation), but rank 0 alone writes the backup: at each epoch end the
-- ranks' RNG states are gathered (a collective: every rank is at the same
-- epoch end) into the file's "rng_ranks" metadata, as 32-bit halves (exact
-- in the doubles of the reduction), and on resume each rank takes its own,
-- so a resumed job draws what the uninterrupted one would have.
local function gather_rank_rng()
  local dist = require "lunet.distributed"
  if not dist.active then return nil end
  local v = {}
  for i = 1, 4 * dist.size do v[i] = 0 end
  local seed, counter = C.seed(), C.rng_take(0)
  local at = 4 * dist.rank
  v[at + 1], v[at + 2], v[at + 3], v[at + 4] = seed >> 32, seed & 0xffffffff, counter >> 32, counter & 0xffffffff
  local all = dist.allreduce_sum(v)
  for i, x in ipairs(all) do all[i] = math.tointeger(x) end
  return C.json_encode(all)
end

-- After rank 0's RNG state is set everywhere from the backup: this rank's
-- own, when the backup has one per rank of this job; with another number
-- of ranks, rank 0's seed plus the rank (streams apart, as init keys them).
local function restore_rank_rng(back)
  local dist = require "lunet.distributed"
  if not dist.active then return end
  local text = C.model_meta(back.handle, "rng_ranks")
  local all = text and C.json_decode(text, "the ranks' RNG states")
  if all and #all == 4 * dist.size then
    local at = 4 * dist.rank
    C.seed((math.tointeger(all[at + 1]) << 32) | math.tointeger(all[at + 2]))
    C.rng_take((math.tointeger(all[at + 3]) << 32) | math.tointeger(all[at + 4]))
  else
    local counter = C.rng_take(0)
    C.seed(C.seed() + dist.rank)
    C.rng_take(counter)
  end
end

-- Keras's BackupAndRestore: at the end of every epoch the model, its
-- optimizer state, the epoch and the RNG's position go to
-- <backup_dir>/latest.safetensors (atomically); a fit that finds the file
-- starts after its epoch with that state, so an interrupted fit run again
-- ends where an uninterrupted one would (a test checks the weights bit for
-- bit).  The file is deleted when fit completes (delete_checkpoint).
function M.callbacks.BackupAndRestore(o)
  if type(o) == "string" then o = { backup_dir = o } end
  o = check_fields("BackupAndRestore", o, { backup_dir = true, delete_checkpoint = true, save_freq = true,
    verbose = true })
  if type(o.backup_dir) ~= "string" then
    error("bad argument 'backup_dir' to 'BackupAndRestore' (a folder path is required)", 2)
  end
  if o.save_freq ~= nil and o.save_freq ~= "epoch" then
    error("bad argument 'save_freq' to 'BackupAndRestore' (only \"epoch\" so far)", 2)
  end
  os.execute(string.format("mkdir -p '%s'", o.backup_dir:gsub("'", "'\\''")))
  local file = o.backup_dir .. "/latest.safetensors"
  local self = callback({ backup_dir = o.backup_dir, file = file, verbose = o.verbose,
    delete_checkpoint = o.delete_checkpoint ~= false })
  function self:on_train_begin(model)
    local f = io.open(file, "rb")
    if not f then return end
    f:close()
    local back = require("lunet.model").load_model(file)
    -- the optimizer that made the state, with the same slots, before anything changes (an Adam backup
    -- became a Nadam's state, or failed for an SGD after the weights were already replaced)
    local a, b = back.optimizer, model.optimizer
    local function slots_of(o) return string.format("%s%s%s", o.name, o.amsgrad and " amsgrad" or "",
      o.centered and " centered" or "") .. ((o.momentum or 0) ~= 0 and " with momentum" or "") end
    if a and b and slots_of(a) ~= slots_of(b) then
      error(string.format("BackupAndRestore: %s was made by a model trained with %s; this one trains with %s (delete "
        .. "the backup, or give another backup_dir)", file, slots_of(a), slots_of(b)), 0)
    end
    model:set_weights(back:get_weights()) -- all or nothing: another model's weights are refused here
    C.seed(back.rng_state.seed) -- the RNG's seed and position at the backup too
    C.rng_take(back.rng_state.counter)
    if back.optimizer and model.optimizer then
      local n = #model.params
      for i, slots in ipairs(C.optimizer_slots(back.optimizer.handle, n)) do
        for k, t in pairs(slots) do C.optimizer_set_slot(model.optimizer.handle, i, k, t) end
      end
      model.optimizer.iterations = back.optimizer.iterations
      -- a rate lowered during training (by hand or ReduceLROnPlateau) resumes lowered, as Keras's
      if type(back.optimizer.learning_rate) == "number" and type(model.optimizer.learning_rate) == "number" then
        model.optimizer.learning_rate = back.optimizer.learning_rate
      end
    end
    model.resume_epoch = back.epoch
    model.key_base = back.key_base -- the random draws' keys go on as in the run that stopped
    restore_rank_rng(back)
    if self.verbose ~= 0 then
      print(string.format("BackupAndRestore: resuming after epoch %d from %s", back.epoch, file))
    end
  end
  function self:on_epoch_end(model, epoch) -- from 0; the file holds the epochs done
    model:save(file, { epoch = epoch + 1, rng_ranks = gather_rank_rng() })
  end
  function self:on_train_end(model)
    local dist = require "lunet.distributed"
    if self.delete_checkpoint and (not dist.active or dist.rank == 0) then os.remove(file) end
  end
  return self
end

-- Keras's ReduceLROnPlateau: when `monitor` has not improved by min_delta
-- for `patience` epochs, the learning rate is multiplied by `factor` (not
-- below min_lr), then `cooldown` epochs pass before counting again.
function M.callbacks.ReduceLROnPlateau(o)
  o = check_fields("ReduceLROnPlateau", o, { monitor = true, factor = true, patience = true, mode = true,
    min_delta = true, cooldown = true, min_lr = true, verbose = true })
  local self = callback({ monitor = o.monitor or "val_loss", factor = o.factor or 0.1, patience = o.patience or 10,
    min_delta = delta(o.min_delta, "ReduceLROnPlateau") or 1e-4, cooldown = o.cooldown or 0, min_lr = o.min_lr or 0,
    verbose = o.verbose })
  if not (type(self.factor) == "number" and self.factor > 0 and self.factor < 1) then
    error("bad argument 'factor' to 'ReduceLROnPlateau' (a number in (0, 1))", 2)
  end
  self.mode = monitor_mode(self.monitor, o.mode, "ReduceLROnPlateau")
  -- as Keras 3's (MonitorCallback): a new fit resets the waiting and the
  -- cooldown but keeps the best value seen, so a reused callback goes on
  function self:on_train_begin() self.wait, self.cool = 0, 0 end
  function self:on_epoch_end(model, epoch, logs) -- epoch from 0
    logs.learning_rate = model.optimizer:current_lr() -- as Keras's, into the logs and the history
    local v = watched(self, "ReduceLROnPlateau", logs)
    if v == nil then return end
    settle_mode(self, model, "ReduceLROnPlateau")
    if self.cool > 0 then self.cool = self.cool - 1; self.wait = 0 end
    if improved(self, v) then
      self.best, self.wait = v, 0
    elseif self.cool == 0 then
      self.wait = self.wait + 1
      if self.wait >= self.patience then
        local opt = model.optimizer
        local old = opt:current_lr()
        if type(opt.learning_rate) ~= "number" then
          error("ReduceLROnPlateau: the optimizer's learning rate is a schedule; give it a number to reduce", 0)
        end
        local new = math.max(old * self.factor, self.min_lr)
        if new < old then
          opt.learning_rate = new
          if self.verbose and self.verbose ~= 0 then
            print(string.format("Epoch %d: ReduceLROnPlateau reducing learning rate to %s.", epoch + 1, shortest(new)))
          end
        end
        self.cool, self.wait = self.cooldown, 0
      end
    end
  end
  return self
end

-- Keras's CSVLogger: one row per epoch (epoch, then the logged keys in
-- sorted order) to `filename`; append = true continues a file.
function M.callbacks.CSVLogger(filename, o)
  if type(filename) ~= "string" then error("bad argument #1 to 'CSVLogger' (a file name expected)", 2) end
  o = check_fields("CSVLogger", o, { separator = true, append = true })
  local self = callback({ filename = filename, sep = o.separator or ",", append = o.append or false })
  function self:on_train_begin()
    local f, err = io.open(self.filename, self.append and "a" or "w")
    if not f then error("CSVLogger: cannot write " .. tostring(err), 0) end
    self.file, self.keys = f, nil
  end
  function self:on_epoch_end(_, epoch, logs)
    if not self.keys then
      self.keys = {}
      for k in pairs(logs) do self.keys[#self.keys + 1] = k end
      table.sort(self.keys)
      local size = self.file:seek("end")
      if size == 0 then self.file:write("epoch", self.sep, table.concat(self.keys, self.sep), "\n") end
    end
    local row = { tostring(epoch) } -- from 0, as Keras's
    for _, k in ipairs(self.keys) do row[#row + 1] = logs[k] ~= nil and shortest(logs[k]) or "" end
    self.file:write(table.concat(row, self.sep), "\n")
    self.file:flush()
  end
  function self:on_train_end()
    if self.file then self.file:close() end
    self.file = nil
  end
  return self
end

-- Keras's TerminateOnNaN: a NaN or infinite loss stops training (the
-- weights as the last good step left them) instead of failing fit; the
-- epoch it happens in still ends (validation, on_epoch_end, history).
function M.callbacks.TerminateOnNaN()
  return callback({ terminate_on_nan = true })
end

-- Keras's LearningRateScheduler: fn(epoch from 0, lr) sets the rate at
-- each epoch's start; verbose 1 prints it.  An optimizer whose rate is a
-- schedule is an error, as Keras's (the rate is not settable).
function M.callbacks.LearningRateScheduler(fn, verbose)
  if type(fn) ~= "function" then error("bad argument #1 to 'LearningRateScheduler' (function(epoch, lr) expected)", 2) end
  local self = callback({ verbose = verbosity(verbose) })
  function self:on_epoch_begin(model, epoch)
    local opt = model.optimizer
    if type(opt.learning_rate) ~= "number" then
      error("LearningRateScheduler: the optimizer's learning rate is a schedule, which a scheduler cannot set; "
        .. "give the optimizer a number", 0)
    end
    local lr = fn(epoch, opt:current_lr())
    if type(lr) ~= "number" then
      error(string.format("LearningRateScheduler: the schedule function returned a %s, not a number", type(lr)), 0)
    end
    opt.learning_rate = lr
    if self.verbose > 0 then
      print(string.format("Epoch %d: LearningRateScheduler setting learning rate to %s.", epoch + 1, shortest(lr)))
    end
  end
  function self:on_epoch_end(model, _, logs) logs.learning_rate = model.optimizer:current_lr() end
  return self
end

-- The hooks fit calls (Keras's names; epochs and batches from 0, as
-- Keras's; on_batch_begin/end are Keras's aliases of on_train_batch_*),
-- and their names as a sorted list for the errors that name them.
M.callback_hooks = { on_train_begin = true, on_train_end = true, on_epoch_begin = true, on_epoch_end = true,
  on_train_batch_begin = true, on_train_batch_end = true, on_batch_begin = true, on_batch_end = true,
  on_test_begin = true, on_test_end = true }
M.callback_hook_names = {}
for h in pairs(M.callback_hooks) do M.callback_hook_names[#M.callback_hook_names + 1] = h end
table.sort(M.callback_hook_names)

-- A callback from plain functions (Keras's LambdaCallback, the model first):
-- nn.callbacks.LambdaCallback{on_epoch_end = function(model, epoch, logs) end}
function M.callbacks.LambdaCallback(fns)
  local self = callback({})
  for name, fn in pairs(fns or {}) do
    if not M.callback_hooks[name] then
      error(string.format("bad argument '%s' to 'LambdaCallback' (valid: %s)", tostring(name),
        table.concat(M.callback_hook_names, ", ")), 2)
    end
    self[name] = function(_, ...) return fn(...) end
  end
  return self
end

return M
