-- Sequential models: build, summary, compile, fit, evaluate, predict,
-- weights and checkpoints.  The model itself (graph, step, metrics,
-- optimizer state) lives in the core (`self.handle`); Lua keeps fit's loop,
-- callbacks and progress bar.
local C = require "lunet.core"
local layers = require "lunet.layers"
local optim = require "lunet.optim"
local Progress = require "lunet.progress"

local M = {}
local Model = {}
Model.__index = Model

local function shape_str(s)
  return "(None, " .. table.concat(s, ", ") .. ")"
end

function M.Sequential(list, opts)
  local self = setmetatable({ layers = {}, built = false, epoch = 0, name = (opts and opts.name) or "sequential" }, Model)
  for i, l in ipairs(list or {}) do
    if getmetatable(l) ~= layers.Layer then
      error(string.format("bad argument #1 to 'Sequential' (entry %d is a %s, not a layer)", i, type(l)), 2)
    end
    self:add(l)
  end
  -- built at once when the first layer names its input, as in Keras
  if self.layers[1] and self.layers[1].args.input_shape then
    local ok, err = pcall(self.build, self)
    if not ok then error(err, 2) end
  end
  return self
end

function Model:__tostring()
  local names = {}
  for i, l in ipairs(self.layers) do names[i] = l.type end
  return string.format("Sequential(%s: %s%s)", self.name, table.concat(names, ", "),
    self.device and (", on " .. self.device) or "")
end

function Model:add(layer)
  self.layers[#self.layers + 1] = layer
  self.built = false
  return self
end

-- Builds every layer for one sample's shape.
function Model:build(shape)
  shape = shape or self.layers[1] and self.layers[1].args.input_shape
  if not shape then
    error("the model's input shape is unknown: give the first layer input_shape = {...} or call model:build{...}", 2)
  end
  local s = shape
  local h = C.model_new(self.name)
  local v = C.model_input(h, shape, "input")
  for i, l in ipairs(self.layers) do
    local ok, out = pcall(layers.Layer.build, l, s)
    if ok then ok, out = pcall(C.model_add, h, l.handle, { v }) end
    if not ok then error(string.format("layer %d (%s): %s", i, l.name, out), 2) end
    s, v = l.output_shape, out
  end
  C.model_outputs(h, { v })
  self.handle, self.compiled = h, false
  self.params = C.model_params(h)
  self.input_shape, self.output_shape, self.built = shape, s, true
  -- the model's device: where its weights live (batches are moved there)
  self.device = self.params[1] and self.params[1]:device() or C.default_backend()
  return s
end

local function ensure_built(self, x)
  if self.built then return end
  local s = self.layers[1] and self.layers[1].args.input_shape
  if not s and x then
    s = x:shape()
    table.remove(s, 1)
  end
  self:build(s)
end

local function fmt_int(n)
  local s = tostring(math.floor(n))
  return (s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

local function fmt_bytes(n)
  if n >= 1024 * 1024 then return string.format("%.2f MB", n / 1024 / 1024) end
  return string.format("%.2f KB", n / 1024)
end

function Model:summary(print_fn)
  ensure_built(self)
  print_fn = print_fn or print
  local rows, total, trainable = {}, 0, 0
  for _, l in ipairs(self.layers) do
    local t, tr = l:count_params()
    total, trainable = total + t, trainable + tr
    rows[#rows + 1] = { string.format("%s (%s)", l.name, l.type), shape_str(l.output_shape), fmt_int(t) }
  end
  local w = { 29, 26, 12 }
  for _, r in ipairs(rows) do for i = 1, 3 do w[i] = math.max(w[i], #r[i] + 2) end end
  local line = string.rep("─", w[1] + w[2] + w[3])
  local function row(a, b, c) return a .. string.rep(" ", w[1] - #a) .. b .. string.rep(" ", w[2] - #b) .. c end
  print_fn(string.format('Model: "%s"', self.name))
  print_fn(line)
  print_fn(row("Layer (type)", "Output Shape", "Param #"))
  print_fn(string.rep("═", w[1] + w[2] + w[3]))
  for i, r in ipairs(rows) do
    print_fn(row(r[1], r[2], r[3]))
    if i < #rows then print_fn(line) end
  end
  print_fn(string.rep("═", w[1] + w[2] + w[3]))
  print_fn(string.format("Total params: %s (%s)", fmt_int(total), fmt_bytes(total * 4)))
  print_fn(string.format("Trainable params: %s (%s)", fmt_int(trainable), fmt_bytes(trainable * 4)))
  print_fn(string.format("Non-trainable params: %s (%s)", fmt_int(total - trainable), fmt_bytes((total - trainable) * 4)))
  print_fn(line)
end

function Model:count_params()
  ensure_built(self)
  local total = 0
  for _, l in ipairs(self.layers) do total = total + l:count_params() end
  return total
end

local metric_names = { accuracy = "accuracy", acc = "accuracy", sparse_categorical_accuracy = true,
  categorical_accuracy = true, binary_accuracy = true }

function Model:compile(o)
  if type(o) ~= "table" then error("bad argument #1 to 'compile' (table expected)", 2) end
  for k in pairs(o) do
    if k ~= "optimizer" and k ~= "loss" and k ~= "metrics" then
      error(string.format("bad argument '%s' to 'compile' (unknown; valid: optimizer, loss, metrics)", tostring(k)), 2)
    end
  end
  self.optimizer = optim.optimizers.get(o.optimizer or "rmsprop")
  self.loss = optim.losses.get(o.loss or error("bad argument 'loss' to 'compile' (a loss is required)", 2))
  self.metrics = {}
  for _, m in ipairs(o.metrics or {}) do
    local name = metric_names[m]
    if not name then
      error(string.format("bad argument 'metrics' to 'compile' (unknown metric '%s'; valid: accuracy, "
        .. "sparse_categorical_accuracy, categorical_accuracy, binary_accuracy)", tostring(m)), 2)
    end
    self.metrics[#self.metrics + 1] = name == true and m or name
  end
  self.compiled = false
  return self
end

-- Builds and compiles the core model on first use (a Sequential without an
-- input shape is built by its first batch).
local function ensure_compiled(self, x)
  ensure_built(self, x)
  if self.compiled then return end
  C.model_compile(self.handle, { { loss = self.loss.name, from_logits = self.loss.from_logits } }, self.metrics,
    self.optimizer.handle)
  self.metric_keys = C.model_metric_names(self.handle)
  self.compiled = true
end

local function nsamples(t) return t:shape()[1] end

-- Sparse labels must be class ids of the model's output: checked once up
-- front, so the error names the sample rather than a row of some batch.
local function check_labels(self, y, what)
  if self.loss.name ~= "sparse_categorical_crossentropy" then return end
  local k = self.output_shape[#self.output_shape]
  local labels = y:reshape(-1):totable()
  for i, v in ipairs(labels) do
    if v ~= math.floor(v) or v < 0 or v >= k then
      error(string.format("%s: y holds label %s for sample %d, outside the model's %d classes [0, %d)",
        what, tostring(math.tointeger(v) or v), i, k, k), 3)
    end
  end
end

local function check_xy(x, y, what)
  if not C.is_tensor(x) then error(string.format("bad argument #1 to '%s' (tensor expected, got %s)", what, type(x)), 3) end
  if not C.is_tensor(y) then error(string.format("bad argument #2 to '%s' (tensor expected, got %s)", what, type(y)), 3) end
  if x:dim() < 1 or y:dim() < 1 or nsamples(x) ~= nsamples(y) then
    error(string.format("%s: x has %d samples but y has %d (they must have the same first dimension)", what,
      x:dim() > 0 and nsamples(x) or 0, y:dim() > 0 and nsamples(y) or 0), 3)
  end
end

-- A permutation of 1..n from the seeded counter-based stream.
local function permutation(n)
  local seed, c = C.seed(), C.rng_take(n)
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = 1 + math.floor(C.philox(seed, c + i) * i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end

-- Rows [first, first+count) of t on `device`.
local function rows_on(t, first, count, device, order)
  local r = order and C.take_rows(t, order, first, count) or C.take_rows(t, first, count)
  if r:device() == device then return r end
  local moved = r:to(device)
  r:free()
  return moved
end

-- Mean loss and metrics over x, y in batches, inference mode.
local function run_eval(self, x, y, batch_size)
  ensure_compiled(self, x)
  local n, h = nsamples(x), self.handle
  C.model_reset_metrics(h)
  for first = 1, n, batch_size do
    local count = math.min(batch_size, n - first + 1)
    local xb, yb = rows_on(x, first, count, self.device), rows_on(y, first, count, self.device)
    C.model_test_step(h, xb, yb)
    xb:free()
    yb:free()
    if C.interrupted() then error("interrupted", 0) end
  end
  return C.model_logs(h)
end

-- The epoch's batches, as a function: next(step) -> xb, yb (nil at the end);
-- next(nil) stops.  Host data (cpu, float32) goes through the prefetch
-- thread, which gathers and augments the next batches while the current step
-- computes and uploads them to the model's device.  Augmentation is keyed by
-- each sample's dataset index on both paths.
local function batch_source(x, y, order, n, bs, aug, epoch, device)
  local host = x:device() == "cpu" and y:device() == "cpu" and x:dtype() == "float32" and y:dtype() == "float32"
  if host then
    if not order then
      order = {}
      for i = 1, n do order[i] = i end
    end
    local b = C.batches_new(x, y, order, bs, aug and aug.handle, aug and aug.seed or 0, epoch, device)
    return function(step)
      if step == nil then return C.batches_close(b) end
      return C.batches_next(b)
    end
  end
  return function(step)
    if step == nil then return end
    local first, count = (step - 1) * bs + 1, math.min(bs, n - (step - 1) * bs)
    local xb, yb = rows_on(x, first, count, device, order), rows_on(y, first, count, device, order)
    if aug then
      local indices = {}
      for i = 1, count do indices[i] = (order and order[first + i - 1] or first + i - 1) - 1 end
      local xa = aug:apply(xb, { epoch = epoch, indices = indices })
      xb:free()
      xb = xa
    end
    return xb, yb
  end
end

local fit_options = { epochs = true, batch_size = true, validation_data = true, validation_split = true, shuffle = true,
  augment = true, callbacks = true, verbose = true, initial_epoch = true }

local function call_cbs(cbs, name, ...)
  for _, cb in ipairs(cbs) do
    local f = cb[name]
    if f then f(cb, ...) end
  end
end

function Model:fit(x, y, o)
  o = o or {}
  for k in pairs(o) do
    if not fit_options[k] then
      local names = {}
      for n in pairs(fit_options) do names[#names + 1] = n end
      table.sort(names)
      error(string.format("bad argument '%s' to 'fit' (unknown option; valid: %s)", tostring(k),
        table.concat(names, ", ")), 2)
    end
  end
  if not self.optimizer then error("fit: call model:compile{optimizer = ..., loss = ...} first", 2) end
  check_xy(x, y, "fit")
  ensure_built(self, x)
  check_labels(self, y, "fit")
  local epochs, bs = o.epochs or 1, o.batch_size or 32
  if math.type(bs) ~= "integer" or bs < 1 then error("bad argument 'batch_size' to 'fit' (positive integer expected)", 2) end
  local verbose = o.verbose
  if verbose == nil or verbose == "auto" then verbose = 1 end
  local n = nsamples(x)
  local xv, yv
  if o.validation_data then
    xv, yv = o.validation_data[1], o.validation_data[2]
    check_xy(xv, yv, "fit (validation_data)")
  elseif o.validation_split and o.validation_split > 0 then
    local nv = math.floor(n * o.validation_split)
    if nv < 1 or nv >= n then error("fit: validation_split leaves no training or no validation samples", 2) end
    xv, yv = C.take_rows(x, n - nv + 1, nv), C.take_rows(y, n - nv + 1, nv)
    x, y = C.take_rows(x, 1, n - nv), C.take_rows(y, 1, n - nv)
    n = n - nv
  end
  local aug = o.augment
  local cbs = o.callbacks or {}
  ensure_compiled(self, x)
  local opt, h = self.optimizer, self.handle
  opt:claim(self, 2)
  opt:sync()
  local history = { epoch = {} }
  local keys = self.metric_keys
  for _, k in ipairs(keys) do history[k] = {} end
  if xv then
    for _, k in ipairs(keys) do history["val_" .. k] = {} end
  end
  self.stop_training = false
  local steps = (n + bs - 1) // bs
  call_cbs(cbs, "on_train_begin", self)
  local first_epoch = (o.initial_epoch or 0) + 1
  for epoch = first_epoch, epochs do
    if verbose ~= 0 then print(string.format("Epoch %d/%d", epoch, epochs)) end
    call_cbs(cbs, "on_epoch_begin", self, epoch)
    local order = (o.shuffle == false) and nil or permutation(n)
    local bar = Progress.new(steps, verbose)
    local logs = {}
    local next_batch = batch_source(x, y, order, n, bs, aug, epoch, self.device)
    C.model_reset_metrics(h)
    local ok, err = pcall(function()
      for s = 1, steps do
        local xb, yb = next_batch(s)
        C.optimizer_set_lr(opt.handle, opt:current_lr())
        local stepped, msg = pcall(C.model_train_step, h, xb, yb)
        xb:free()
        yb:free()
        if not stepped then error(string.format("%s (epoch %d, step %d)", msg, epoch, s), 0) end
        C.model_logs(h, logs)
        bar:update(s, logs, keys, false)
        if C.interrupted() then error("interrupted", 0) end
      end
    end)
    next_batch(nil) -- stops the prefetch thread, on success or error
    if not ok then
      if bar.tty then io.stdout:write("\n") end
      error(err == "interrupted" and err or ("fit: " .. tostring(err)), err == "interrupted" and 0 or 2)
    end
    if xv then
      local vl = run_eval(self, xv, yv, bs)
      for _, k in ipairs(keys) do logs["val_" .. k] = vl[k] end
    end
    local all = {}
    for _, k in ipairs(keys) do all[#all + 1] = k end
    if xv then for _, k in ipairs(keys) do all[#all + 1] = "val_" .. k end end
    bar:update(steps, logs, all, true)
    for k, v in pairs(logs) do
      history[k] = history[k] or {}
      table.insert(history[k], v)
    end
    table.insert(history.epoch, epoch)
    self.epoch = epoch
    call_cbs(cbs, "on_epoch_end", self, epoch, logs)
    collectgarbage("step")
    if self.stop_training then break end
  end
  call_cbs(cbs, "on_train_end", self)
  self.history = history
  return history
end

function Model:evaluate(x, y, o)
  if not self.optimizer then error("evaluate: call model:compile{...} first", 2) end
  check_xy(x, y, "evaluate")
  ensure_compiled(self, x)
  check_labels(self, y, "evaluate")
  o = o or {}
  local logs = run_eval(self, x, y, o.batch_size or 32)
  if o.verbose and o.verbose ~= 0 then
    local parts = {}
    for k, v in pairs(logs) do parts[#parts + 1] = string.format("%s: %.4f", k, v) end
    table.sort(parts)
    print(table.concat(parts, " - "))
  end
  return logs
end

function Model:predict(x, o)
  if not C.is_tensor(x) then error(string.format("bad argument #1 to 'predict' (tensor expected, got %s)", type(x)), 2) end
  ensure_built(self, x)
  local bs = (o and o.batch_size) or 32
  local n = nsamples(x)
  if n <= bs and x:device() == self.device then return C.model_predict(self.handle, x) end
  local parts = {}
  for first = 1, n, bs do
    local xb = rows_on(x, first, math.min(bs, n - first + 1), self.device)
    parts[#parts + 1] = C.model_predict(self.handle, xb)
    xb:free()
  end
  return C.cat(parts, 1)
end

-- Keras's single-batch calls: one step on (x, y) with the metrics of that
-- batch alone; returns the loss and the logs.
function Model:train_on_batch(x, y)
  if not self.optimizer then error("train_on_batch: call model:compile{optimizer = ..., loss = ...} first", 2) end
  check_xy(x, y, "train_on_batch")
  ensure_compiled(self, x)
  local opt = self.optimizer
  opt:claim(self, 2)
  opt:sync()
  C.model_reset_metrics(self.handle)
  local loss = C.model_train_step(self.handle, x, y)
  return loss, C.model_logs(self.handle)
end

function Model:test_on_batch(x, y)
  if not self.optimizer then error("test_on_batch: call model:compile{...} first", 2) end
  check_xy(x, y, "test_on_batch")
  ensure_compiled(self, x)
  C.model_reset_metrics(self.handle)
  local loss = C.model_test_step(self.handle, x, y)
  return loss, C.model_logs(self.handle)
end

-- model(x): a differentiable call, so a model can sit inside a bigger function.
function Model:__call(x, training)
  ensure_built(self, x)
  return C.model_forward(self.handle, x, training or false)
end

-- Moves the model (weights and optimizer state) to another backend; new
-- tensors for fit/predict must then live there too (nn.use(name)).
function Model:to(backend)
  ensure_built(self)
  for _, l in ipairs(self.layers) do C.layer_to(l.handle, backend) end
  if self.optimizer then C.optimizer_to(self.optimizer.handle, backend) end
  self.params = C.model_params(self.handle)
  self.device = backend
  return self
end

function Model:get_weights()
  ensure_built(self)
  local out = {}
  for _, l in ipairs(self.layers) do
    for _, w in ipairs(l:get_weights()) do out[#out + 1] = w end
  end
  return out
end

function Model:set_weights(list)
  ensure_built(self)
  local k = 0
  for _, l in ipairs(self.layers) do
    local n = #l:weights()
    local part = {}
    for i = 1, n do part[i] = list[k + i] end
    k = k + n
    l:set_weights(part)
  end
  if k ~= #list then error(string.format("set_weights: the model has %d weights, got %d", k, #list), 2) end
end

-- ---- checkpoints (safetensors) ----

local function serialize(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      local key = type(k) == "number" and ("[" .. k .. "]") or string.format("[%q]", k)
      parts[#parts + 1] = key .. "=" .. serialize(v[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return string.format("%q", v)
  elseif t == "number" then
    return math.type(v) == "integer" and tostring(v) or string.format("%.17g", v)
  elseif t == "boolean" or t == "nil" then
    return tostring(v)
  end
  error("cannot save a " .. t .. " in a model config")
end

local function deserialize(s, path)
  local f, err = load("return " .. s, "=" .. path, "t", {})
  if not f then error(path .. ": corrupt model config: " .. err, 3) end
  return f()
end

local function weight_entries(self)
  local entries = {}
  for i, l in ipairs(self.layers) do
    for _, w in ipairs(l:weights()) do
      entries[#entries + 1] = { name = string.format("layers.%d.%s", i - 1, w.name), tensor = w.tensor }
    end
  end
  return entries
end

function Model:config()
  local cfg = { name = self.name, layers = {} }
  for i, l in ipairs(self.layers) do
    local args = {}
    for k, v in pairs(l.args) do args[k] = v end
    args.name = l.name
    cfg.layers[i] = { type = l.type, args = args }
  end
  cfg.input_shape = self.input_shape
  return cfg
end

function Model:save(path, o)
  ensure_built(self)
  local entries = weight_entries(self)
  local meta = { format = "lunet", lunet_version = C.version, config = serialize(self:config()),
    epoch = tostring((o and o.epoch) or self.epoch), rng_seed = tostring(C.seed()), rng_counter = tostring(C.rng_take(0)) }
  if self.optimizer then
    meta.optimizer = serialize(self.optimizer:config())
    meta.compile = serialize({ loss = self.loss.name, from_logits = self.loss.from_logits, metrics = self.metrics })
    for i, s in ipairs(C.optimizer_slots(self.optimizer.handle, #self.params)) do
      for k, t in pairs(s) do entries[#entries + 1] = { name = string.format("optimizer.%d.%d", i, k), tensor = t } end
    end
  end
  C.save_safetensors(path, entries, meta)
end

-- Copies a checkpoint's weights into this model, checking names and shapes.
function Model:load_weights(path)
  ensure_built(self)
  local entries = C.load_safetensors(path)
  local by = {}
  for _, e in ipairs(entries) do by[e.name] = e.tensor end
  for _, e in ipairs(weight_entries(self)) do
    local src = by[e.name]
    if not src then error(string.format("%s does not belong to this model: it has no weight '%s'", path, e.name), 2) end
    local a, b = table.concat(e.tensor:shape(), ", "), table.concat(src:shape(), ", ")
    if a ~= b then
      error(string.format("%s belongs to another model: '%s' has shape (%s), this model expects (%s)", path, e.name, b, a), 2)
    end
  end
  for _, e in ipairs(weight_entries(self)) do C.assign(e.tensor, by[e.name]) end
  return by
end

function M.load_model(path)
  local entries, meta = C.load_safetensors(path)
  if meta.format ~= "lunet" or not meta.config then
    error(path .. " holds no lunet model config (was it saved by model:save?)", 2)
  end
  local cfg = deserialize(meta.config, path)
  local list = {}
  for i, lc in ipairs(cfg.layers) do list[i] = layers.new(lc.type, lc.args) end
  local model = M.Sequential(list, { name = cfg.name })
  model:build(cfg.input_shape)
  local by = model:load_weights(path)
  if meta.compile and meta.optimizer then
    local comp, oc = deserialize(meta.compile, path), deserialize(meta.optimizer, path)
    local name = oc.name
    local args = {}
    for k, v in pairs(oc) do if k ~= "name" and k ~= "iterations" then args[k] = v end end
    model:compile({ optimizer = optim.optimizers[name](args),
      loss = optim.losses.get({ name = comp.loss, from_logits = comp.from_logits }), metrics = comp.metrics })
    model.optimizer.iterations = oc.iterations or 0
    for i = 1, #model.params do
      for k = 1, 2 do
        local t = by[string.format("optimizer.%d.%d", i, k)]
        if t then C.optimizer_set_slot(model.optimizer.handle, i, k, t) end
      end
    end
  end
  model.epoch = tonumber(meta.epoch) or 0
  if meta.rng_seed then
    C.seed(math.tointeger(tonumber(meta.rng_seed)))
    C.rng_take(math.tointeger(tonumber(meta.rng_counter)) or 0)
  end
  return model
end

return M
