-- Models: Sequential and functional (nn.Input, nn.Model), with build,
-- summary, compile, fit, evaluate, predict, weights and checkpoints.  The
-- model itself (graph, step, metrics, optimizer state) lives in the core
-- (`self.handle`); Lua keeps the graph's description, fit's loop,
-- callbacks and progress bar.
local C = require "lunet.core"
local graph = require "lunet.graph"
local layers = require "lunet.layers"
local optim = require "lunet.optim"
local metrics = require "lunet.metrics"
local Progress = require "lunet.progress"
local text = require "lunet.text"
local gen = require "lunet.generate"

local M = {}
local Model = {}

-- model.trainable: false freezes every layer, true thaws them all; like a
-- layer's, the change takes effect at the next compile (fit compiles again
-- by itself).
function Model.__index(self, k)
  if k == "trainable" then
    for _, l in ipairs(rawget(self, "layers")) do if l.trainable then return true end end
    return false
  end
  return Model[k]
end

function Model.__newindex(self, k, v)
  if k == "trainable" then
    if type(v) ~= "boolean" then error("trainable must be true or false", 2) end
    for _, l in ipairs(rawget(self, "layers")) do l.trainable = v end
    rawset(self, "compiled", false)
    return
  end
  rawset(self, k, v)
end

local dataset = require "lunet.dataset"
local distributed = require "lunet.distributed"
local augment = require "lunet.augment"
local shape_str = graph.shape_str

-- ---- construction ----

-- Layer names are unique in a model, as Keras requires: they name its
-- weights in files and its layers in summaries, profiles and errors.
-- Returns the message for the first name used twice, or nil.
local function duplicate_name(self)
  local at = {}
  for i, l in ipairs(self.layers) do
    local j = at[l.name]
    if j and self.layers[j] ~= l then
      return string.format("%s: the name '%s' is used by layers %d and %d; layer names must be unique in a model " ..
        "(they name its weights in files): give one of them another name = ...", self.name, l.name, j, i)
    end
    at[l.name] = at[l.name] or i
  end
end

function M.Sequential(list, opts)
  local self = setmetatable({ kind = "sequential", layers = {}, built = false, epoch = 0,
    name = (opts and opts.name) or layers.auto_name("Sequential") }, Model) -- sequential, sequential_1, ... as Keras
  for i, l in ipairs(list or {}) do
    if not layers.is_layer(l) and getmetatable(l) ~= Model then
      error(string.format("bad argument #1 to 'Sequential' (entry %d is a %s, not a layer or a model)", i, type(l)), 2)
    end
    local ok, err = pcall(self.add, self, l)
    if not ok then error(err, 2) end
  end
  -- built at once when the first layer names its input, as in Keras
  if self.layers[1] and self.layers[1].args.input_shape then
    local ok, err = pcall(self.build, self)
    if not ok then error(err, 2) end
  end
  return self
end

-- A list from one value or a list; `single` tells which it was.
local function as_list(v, what, check)
  local single = check(v)
  local list = single and { v } or v
  if type(list) ~= "table" or #list == 0 then
    error(string.format("bad argument '%s' to 'Model' (a symbolic tensor or a list of them expected)", what), 3)
  end
  for i, x in ipairs(list) do
    if not check(x) then
      error(string.format("bad argument '%s' to 'Model' (%s[%d] is a %s, not a symbolic tensor from nn.Input or a "
        .. "layer call)", what, what, i, type(x)), 3)
    end
  end
  return list, single
end

-- The calls between the inputs and the outputs, each after its inputs.
-- A model's input_shape or output_shape, as Keras's: one value's shape,
-- or the list of them when there are several.
local function io_shapes(values)
  if #values == 1 then return values[1].shape end
  local out = {}
  for i, v in ipairs(values) do out[i] = v.shape end
  return out
end

local function walk(inputs, outputs)
  local is_input, order, seen = {}, {}, {}
  for _, x in ipairs(inputs) do is_input[x] = true end
  local function visit(s)
    if not s.node then
      if not is_input[s] then
        error(string.format("bad argument 'outputs' to 'Model' (they depend on the input '%s', which is not "
          .. "among the model's inputs)", s.name), 4)
      end
      return
    end
    if seen[s.node] then return end
    seen[s.node] = true
    for _, x in ipairs(s.node.inputs) do visit(x) end
    order[#order + 1] = s.node
  end
  for _, s in ipairs(outputs) do visit(s) end
  return order
end

-- nn.Model{inputs = x or {x1, x2}, outputs = y or {y1, y2}, name = ...}
function M.Model(o)
  if type(o) ~= "table" then error("bad argument #1 to 'Model' (table {inputs =, outputs =} expected)", 2) end
  for k in pairs(o) do
    if k ~= "inputs" and k ~= "outputs" and k ~= "name" then
      error(string.format("bad argument '%s' to 'Model' (unknown; valid: inputs, outputs, name)", tostring(k)), 2)
    end
  end
  local ins, single_in = as_list(o.inputs, "inputs", graph.is_symbolic)
  local outs, single_out = as_list(o.outputs, "outputs", graph.is_symbolic)
  for i, x in ipairs(ins) do
    if x.node then
      error(string.format("bad argument 'inputs' to 'Model' (inputs[%d] is the output of %s, not an nn.Input)", i,
        x.node.layer.name), 2)
    end
    for k = 1, i - 1 do
      if ins[k] == x then error(string.format("bad argument 'inputs' to 'Model' (input '%s' is listed twice)", x.name), 2) end
    end
  end
  local nodes = walk(ins, outs)
  local self = setmetatable({ kind = "functional", name = o.name or layers.auto_name("Functional"), epoch = 0, built = false,
    inputs = ins, outputs = outs, nodes = nodes, single_input = single_in, single_output = single_out,
    layers = {} }, Model)
  local seen = {}
  for _, n in ipairs(nodes) do
    if not seen[n.layer] then
      seen[n.layer] = true
      self.layers[#self.layers + 1] = n.layer
    end
  end
  local why = duplicate_name(self)
  if why then error(why, 2) end
  local ok, err = pcall(self.build, self)
  if not ok then error(err, 2) end
  return self
end

function Model:__tostring()
  local names = {}
  for i, l in ipairs(self.layers) do names[i] = l.type end
  return string.format("%s(%s: %s%s)", self.kind == "sequential" and "Sequential" or "Model", self.name,
    table.concat(names, ", "), self.device and (", on " .. self.device) or "")
end

-- A Sequential model added is added as its layers, the same layer objects
-- (its weights are shared with it, as Keras's nested model's are).
function Model:add(layer)
  if self.kind ~= "sequential" then error("add: only a Sequential model grows layer by layer", 2) end
  if getmetatable(layer) == Model then
    if layer.kind ~= "sequential" then
      error("add: a functional model inside a Sequential is not supported; call it on a symbolic tensor in a "
        .. "functional model (nn.Input, nn.Model)", 2)
    end
    local n = #self.layers
    for _, l in ipairs(layer.layers) do
      local ok, err = pcall(self.add, self, l)
      if not ok then
        for i = #self.layers, n + 1, -1 do self.layers[i] = nil end -- as it was
        error(err, 2)
      end
    end
    return self
  end
  if not layers.is_layer(layer) then
    error(string.format("bad argument #1 to 'add' (a layer or a Sequential model expected, got %s)", type(layer)), 2)
  end
  self.layers[#self.layers + 1] = layer
  local why = duplicate_name(self)
  if why then
    self.layers[#self.layers] = nil
    error(why, 2)
  end
  self.built = false
  return self
end

-- The core model from the symbolic graph (inputs, nodes, outputs).
local function make_core(self)
  local h = C.model_new(self.name)
  local id = {}
  for _, x in ipairs(self.inputs) do id[x] = C.model_input(h, x.shape, x.name) end
  for _, n in ipairs(self.nodes) do
    local ins = {}
    for i, x in ipairs(n.inputs) do ins[i] = id[x] end
    local first = C.model_add(h, n.layer.handle, ins)
    for j, y in ipairs(n.outputs) do id[y] = first + j - 1 end
  end
  local outs = {}
  for j, y in ipairs(self.outputs) do outs[j] = id[y] end
  C.model_outputs(h, outs)
  self.handle, self.compiled = h, false
  self.params = C.model_params(h)
  self.input_shape, self.output_shape = io_shapes(self.inputs), io_shapes(self.outputs)
  self.built = true
  -- the model's device: where its weights live (batches are moved there)
  self.device = self.params[1] and self.params[1]:device() or C.default_backend()
end

-- Builds a Sequential for one sample's shape (a functional model is built
-- when it is made).
function Model:build(shape)
  if self.kind == "sequential" then
    shape = shape or self.layers[1] and self.layers[1].args.input_shape
    if not shape then
      error("the model's input shape is unknown: give the first layer input_shape = {...} or call model:build{...}", 2)
    end
    local x = graph.Input{ shape = shape, name = "input_layer" }
    local h = x
    for i, l in ipairs(self.layers) do
      local ok, out = pcall(l.__call, l, h)
      -- the layer's own words, without the position in lunet's Lua they were raised at
      if not ok then error(string.format("layer %d (%s): %s", i, l.name, (tostring(out):gsub("^[^:]*%.lua:%d+: ", ""))), 2) end
      h = out
    end
    self.inputs, self.outputs = { x }, { h }
    self.nodes = walk(self.inputs, self.outputs)
    self.single_input, self.single_output = true, true
  end
  make_core(self)
  return self.output_shape
end

local function ensure_built(self, x)
  if self.built then return end
  local s = self.layers[1] and self.layers[1].args.input_shape
  if not s and C.is_tensor(x) then
    s = x:shape()
    table.remove(s, 1)
  end
  self:build(s)
end

-- What an unbuilt model is built for under fit{augment}: images of the
-- pipeline's output shape (a crop makes them smaller), as a tensor of one
-- sample; x itself without augmentation.
local function augmented_like(x, aug)
  if aug == nil or not C.is_tensor(x) or x:dim() ~= 4 then return x end
  local s = x:shape()
  local h, w, c = augment.pipeline(aug, "fit"):output_shape(s[2], s[3], s[4])
  return C.zeros(1, h, w, c)
end

-- ---- summary ----

local function fmt_int(n)
  local s = tostring(math.floor(n))
  return (s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

local function fmt_bytes(n) -- as Keras's summary: B below a KB
  if n >= 1024 * 1024 then return string.format("%.2f MB", n / 1024 / 1024) end
  if n >= 1024 then return string.format("%.2f KB", n / 1024) end
  return string.format("%.2f B", n)
end

-- Rows of Keras's functional summary: inputs, then one per call, with the
-- tensors each call reads ("dense[0][0]": layer, call, output).
local function functional_rows(self)
  local rows, calls = {}, {}
  for _, x in ipairs(self.inputs) do
    rows[#rows + 1] = { string.format("%s (InputLayer)", x.name), shape_str(x.shape), "0", "-" }
  end
  local counted = {}
  for _, n in ipairs(self.nodes) do
    calls[n.layer] = (calls[n.layer] or 0) + 1
    n.call_index = calls[n.layer] - 1
    local from = {}
    for i, x in ipairs(n.inputs) do
      from[i] = x.node and string.format("%s[%d][%d]", x.node.layer.name, x.node.call_index, x.index - 1)
        or string.format("%s[0][0]", x.name)
    end
    local params = counted[n.layer] and 0 or n.layer:count_params()
    counted[n.layer] = true
    -- every output's shape, as Keras's [(None, 6, 4), (None, 4)] (an LSTM's states too)
    local shapes = {}
    for j, y in ipairs(n.outputs) do shapes[j] = shape_str(y.shape) end
    local shown = #shapes == 1 and shapes[1] or "[" .. table.concat(shapes, ", ") .. "]"
    rows[#rows + 1] = { string.format("%s (%s)", n.layer.name, n.layer.type), shown, fmt_int(params),
      table.concat(from, ", ") }
  end
  return rows
end

function Model:summary(print_fn)
  ensure_built(self)
  print_fn = print_fn or print
  local rows, total, trainable = {}, 0, 0
  for _, l in ipairs(self.layers) do
    local t, tr = l:count_params()
    total, trainable = total + t, trainable + tr
  end
  local head = { "Layer (type)", "Output Shape", "Param #" }
  if self.kind == "sequential" then
    for _, l in ipairs(self.layers) do
      rows[#rows + 1] = { string.format("%s (%s)", l.name, l.type), shape_str(l.output_shape), fmt_int(l:count_params()) }
    end
  else
    rows, head[4] = functional_rows(self), "Connected to"
  end
  local w = { 29, 26, 12, 20 }
  for _, r in ipairs(rows) do for i = 1, #head do w[i] = math.max(w[i], #r[i] + 2) end end
  local width = 0
  for i = 1, #head do width = width + w[i] end
  local line = string.rep("─", width)
  local function row(r)
    local parts = {}
    for i = 1, #head do parts[i] = r[i] .. string.rep(" ", i < #head and w[i] - #r[i] or 0) end
    return table.concat(parts)
  end
  print_fn(string.format('Model: "%s"', self.name))
  print_fn(line)
  print_fn(row(head))
  print_fn(string.rep("═", width))
  for i, r in ipairs(rows) do
    print_fn(row(r))
    if i < #rows then print_fn(line) end
  end
  print_fn(string.rep("═", width))
  -- once the optimizer has stepped (Keras's optimizer.built), its variables
  -- count too, as Keras 3 prints them: the slots, the iteration count
  -- (int64) and the learning rate (float32)
  local opt_count, opt_bytes
  local opt = self.optimizer
  if opt and opt.handle and self.params then
    local n, built = 0, opt.iterations > 0
    for _, slots in ipairs(C.optimizer_slots(opt.handle, #self.params)) do
      for _, t in pairs(slots) do n, built = n + t:numel(), true end
    end
    if built then opt_count, opt_bytes = n + 2, n * 4 + 12 end
  end
  print_fn(string.format("Total params: %s (%s)", fmt_int(total + (opt_count or 0)),
    fmt_bytes(total * 4 + (opt_bytes or 0))))
  print_fn(string.format("Trainable params: %s (%s)", fmt_int(trainable), fmt_bytes(trainable * 4)))
  print_fn(string.format("Non-trainable params: %s (%s)", fmt_int(total - trainable), fmt_bytes((total - trainable) * 4)))
  if opt_count then print_fn(string.format("Optimizer params: %s (%s)", fmt_int(opt_count), fmt_bytes(opt_bytes))) end
  print_fn(line)
end

function Model:count_params()
  ensure_built(self)
  local total = 0
  for _, l in ipairs(self.layers) do total = total + l:count_params() end
  return total
end

-- ---- compile ----

local function noutputs(self) return self.outputs and #self.outputs or 1 end

function Model:compile(o)
  if type(o) ~= "table" then error("bad argument #1 to 'compile' (table expected)", 2) end
  optim.check_fields("compile", o, { optimizer = true, loss = true, metrics = true, loss_weights = true,
    weighted_metrics = true })
  -- Keras's dicts keyed by output name are not taken (their entries were
  -- dropped: metrics = {out_a = "mae"} compiled no metric)
  for _, key in ipairs{"loss", "loss_weights", "metrics", "weighted_metrics"} do
    local v = o[key]
    if type(v) == "table" and getmetatable(v) == nil and v.name == nil then
      for k in pairs(v) do
        if math.type(k) ~= "integer" or k < 1 or k > #v then
          error(string.format("bad argument '%s' to 'compile' (a table keyed by %s: give a list%s)", key,
            type(k) == "string" and ("'" .. k .. "'") or tostring(k), key:find("metrics") and " of metrics; each applies to every output"
              or ", one entry per output in the order of the model's outputs"), 2)
        end
        if key:find("metrics") and type(v[k]) == "table" and getmetatable(v[k]) == nil and v[k].name == nil then
          error(string.format("bad argument '%s' to 'compile' (entry %d is a list: per-output metric lists are " ..
            "not supported; metrics apply to every output)", key, k), 2)
        end
      end
    end
  end
  self.optimizer = optim.optimizers.get(o.optimizer or "rmsprop")
  if o.loss == nil then error("bad argument 'loss' to 'compile' (a loss is required)", 2) end
  -- one loss for every output, or a list with one per output
  local list = (type(o.loss) == "table" and o.loss.name == nil) and o.loss or { o.loss }
  self.losses = {}
  for i, l in ipairs(list) do self.losses[i] = optim.losses.get(l) end
  self.loss = self.losses[1]
  if #self.losses ~= 1 and #self.losses ~= noutputs(self) then
    error(string.format("bad argument 'loss' to 'compile' (%d losses for a model with %d outputs: give one, or one "
      .. "per output)", #self.losses, noutputs(self)), 2)
  end
  self.loss_weights = o.loss_weights
  local ok = o.loss_weights == nil or (type(o.loss_weights) == "table" and #o.loss_weights == noutputs(self))
  for _, w in ipairs(ok and o.loss_weights or {}) do ok = ok and type(w) == "number" and w >= 0 end
  if not ok then
    error(string.format("bad argument 'loss_weights' to 'compile' (a list of %d numbers >= 0, one per output)",
      noutputs(self)), 2)
  end
  for _, key in ipairs{"metrics", "weighted_metrics"} do
    local specs = {}
    for _, m in ipairs(o[key] or {}) do
      local ok, spec = pcall(metrics.spec, m)
      if not ok then error(string.format("bad argument '%s' to 'compile' (%s)", key, spec), 2) end
      specs[#specs + 1] = spec
    end
    self[key] = specs
  end
  self.compiled = false
  return self
end

-- Builds and compiles the core model on first use (a Sequential without an
-- input shape is built by its first batch).
local function ensure_compiled(self, x)
  ensure_built(self, x)
  if self.compiled then return end
  local specs = {}
  local n = #self.losses == 1 and not self.loss_weights and 1 or noutputs(self)
  for j = 1, n do
    local l = self.losses[#self.losses == 1 and 1 or j]
    specs[j] = { loss = l.name, from_logits = l.from_logits, weight = self.loss_weights and self.loss_weights[j] or 1,
      delta = l.delta, label_smoothing = l.label_smoothing, fn = l.handle }
  end
  C.model_compile(self.handle, specs, self.metrics, self.optimizer.handle, self.weighted_metrics)
  self.metric_keys = C.model_metric_names(self.handle)
  self.compiled = true
end

-- ---- data ----

local function nsamples(t) return t:shape()[1] end

-- Texts given to a model with a TextVectorization preprocessor become its
-- int32 ids; anything else passes unchanged.
local function preprocess(self, x, what)
  local texts = type(x) == "string" or (type(x) == "table" and getmetatable(x) == nil and type(x[1]) == "string")
  if not texts then return x end
  local p = self.preprocessor
  if not p then
    error(string.format("%s: got text, but the model has no text preprocessor (model:set_preprocessor(nn.text.TextVectorization{...}))", what), 3)
  end
  if p.kind ~= "TextVectorization" then
    error(string.format("%s: a %s turns one text into ids (tok:encode); give the model id tensors, or use model:generate", what, p.kind), 3)
  end
  return p(x)
end

-- x (or y) as a list of tensors, one per model input (output); errors
-- at `level` (the user's call counted from here).
-- A table keyed by the model's input or output names (Keras's dicts) as
-- the list in the model's order; other values as they are.
local function by_name(self, v, noun, what, level)
  if type(v) ~= "table" or v[1] ~= nil or next(v) == nil then return v end
  local syms = noun == "input" and self.inputs or self.outputs
  if not syms then return v end
  local pos, names = {}, {}
  for i, sym in ipairs(syms) do
    if pos[sym.name] then
      error(string.format("%s: two %ss are named '%s': give a list in the model's order", what, noun, sym.name), level)
    end
    pos[sym.name], names[i] = i, sym.name
  end
  local list = {}
  for k, t in pairs(v) do
    if not pos[k] then
      error(string.format("%s: no %s named '%s' (the model's %ss: %s)", what, noun, tostring(k), noun,
        table.concat(names, ", ")), level)
    end
    list[pos[k]] = t
  end
  for i, name in ipairs(names) do
    if list[i] == nil then error(string.format("%s: no tensor for the %s '%s'", what, noun, name), level) end
  end
  return list
end

local function tensors(self, v, n, argn, what, noun, level)
  level = level or 4
  v = by_name(self, v, noun, what, level + 1)
  local list = C.is_tensor(v) and { v } or v
  if type(list) ~= "table" then
    error(string.format("bad argument #%d to '%s' (a tensor or a list of tensors expected, got %s)", argn, what, type(v)), level)
  end
  for i, t in ipairs(list) do
    if not C.is_tensor(t) then
      error(string.format("bad argument #%d to '%s' (entry %d is a %s, not a tensor)", argn, what, i, type(t)), level)
    end
    if t:dim() < 1 then error(string.format("%s: %s %d has no batch axis", what, noun, i), level) end
  end
  if #list ~= n then
    error(string.format("%s: the model has %d %s%s but %d %s given%s", what, n, noun, n == 1 and "" or "s", #list,
      #list == 1 and "was" or "were", n > 1 and string.format(" (give a list of %d tensors)", n) or ""), level)
  end
  return list
end

-- The inputs and targets of a call, with one sample count.
local function check_xy(self, x, y, what)
  local xs = tensors(self, x, #self.inputs, 1, what, "input")
  local ys = tensors(self, y, noutputs(self), 2, what, "target")
  local n = nsamples(xs[1])
  if n == 0 then -- no loss or metric is defined on nothing (Keras: "Expected input data to be non-empty")
    error(string.format("%s: x has 0 samples (give at least one)", what), 3)
  end
  for _, t in ipairs(xs) do
    if nsamples(t) ~= n then
      error(string.format("%s: the inputs have %d and %d samples (they must have the same first dimension)", what, n,
        nsamples(t)), 3)
    end
  end
  for _, t in ipairs(ys) do
    if nsamples(t) ~= n then
      error(string.format("%s: x has %d samples but y has %d (they must have the same first dimension)", what, n,
        nsamples(t)), 3)
    end
  end
  return xs, ys
end

-- Sparse labels must be class ids of the model's output: checked once up
-- front, so the error names the sample rather than a row of some batch.
local function check_labels(self, ys, what)
  for j, y in ipairs(ys) do
    local loss = self.losses[#self.losses == 1 and 1 or j]
    if loss.name == "sparse_categorical_crossentropy" then
      local shape = self.outputs[j].shape
      local k = shape[#shape]
      for i, v in ipairs(y:reshape(-1):totable()) do
        if v ~= math.floor(v) or v < 0 or v >= k then
          error(string.format("%s: y holds label %s for sample %d, outside the model's %d classes [0, %d)",
            what, tostring(math.tointeger(v) or v), i, k, k), 3)
        end
      end
    end
  end
end

-- Per-sample weights (Keras's sample_weight and class_weight), as one
-- float32 tensor (N) on the host, or nil when neither is given.
-- class_weight maps a class id (0-based, as the labels) to its weight;
-- each sample takes its label's weight (the argmax of a one-hot row), and
-- a label without one is an error.  Given both, they multiply.
local function sample_weights(self, ys, n, sw, cw, what)
  if sw == nil and cw == nil then return nil end
  local w
  if sw ~= nil then
    if type(sw) == "table" and not C.is_tensor(sw) then
      if C.is_tensor(sw[1]) or (sw[1] == nil and next(sw) ~= nil) then -- Keras's per-output weights
        error(string.format("%s: sample_weight is one weight per sample, for every output (a tensor or a list of " ..
          "numbers); weights per output are not supported (weigh an output's loss with compile's loss_weights)",
          what), 3)
      end
      sw = C.tensor(sw)
    end
    if not C.is_tensor(sw) then error(string.format("%s: sample_weight must be a tensor or a list of numbers", what), 3) end
    if sw:numel() ~= n or (sw:dim() > 1 and sw:shape()[1] ~= n) then
      error(string.format("%s: sample_weight has %d values for %d samples: give one weight per sample", what,
        sw:numel(), n), 3)
    end
    w = sw:to("cpu"):reshape(n):totable()
  end
  if cw ~= nil then
    if type(cw) ~= "table" then error(string.format("%s: class_weight must be a table {[class] = weight}", what), 3) end
    if #ys ~= 1 then error(string.format("%s: class_weight works on a model with one output (give sample_weight)", what), 3) end
    local y = ys[1]
    local shape = y:shape()
    local ids
    if #shape == 2 and shape[2] > 1 then
      ids = y:argmax(-1)
    elseif #shape == 1 or (#shape == 2 and shape[2] == 1) then
      ids = y
    else
      error(string.format("%s: class_weight needs one label per sample (targets (N) or one-hot (N, K)); for "
        .. "targets of shape %s give sample_weight", what, shape_str(shape)), 3)
    end
    ids = ids:to("cpu"):reshape(n):totable()
    w = w or {}
    for i, id in ipairs(ids) do
      local c = math.tointeger(id)
      local cwv = cw[c]
      if type(cwv) ~= "number" then
        error(string.format("%s: class_weight has no weight for class %s (sample %d); give every class one", what,
          tostring(c or id), i), 3)
      end
      w[i] = (w[i] or 1) * cwv
    end
  end
  return C.tensor(w)
end

-- A permutation of 1..n from the seeded counter-based stream.
local function permutation(n)
  local seed = C.seed()
  return dataset.permutation(n, seed, C.rng_take(n))
end

-- Rows [first, first+count) of t on `device`.
local function rows_on(t, first, count, device, order)
  local r = order and C.take_rows(t, order, first, count) or C.take_rows(t, first, count)
  if r:device() == device then return r end
  local moved = r:to(device)
  r:free()
  return moved
end

local function rows_of(list, first, count, device, order)
  local out = {}
  for i, t in ipairs(list) do out[i] = rows_on(t, first, count, device, order) end
  return out
end

local function free_all(list)
  for _, t in ipairs(list) do t:free() end
end

-- One tensor for a single-input (-output) model, else the list.
local function unlist(list) return #list == 1 and list[1] or list end

-- Mean loss and metrics over xs, ys in batches, inference mode.
-- A dataset batch as lists on the model's device.
local function on_device(t, device)
  local list = C.is_tensor(t) and { t } or t or {}
  local out = {}
  for i, v in ipairs(list) do
    out[i] = v:device() == device and v or v:to(device)
  end
  return out
end

-- A dataset batch's sample weights (its loader's third value), as a
-- float32 tensor on the device, or nil.
local function dataset_weights(w, device)
  if w == nil then return nil end
  if type(w) == "table" and not C.is_tensor(w) then w = C.tensor(w) end
  if not C.is_tensor(w) then
    error("the dataset's loader returned a third value that is not sample weights (a tensor or a list)", 0)
  end
  return w:to(device)
end

local function run_eval(self, xs, ys, batch_size, w)
  local h = self.handle
  if dataset.is(xs) then
    C.model_reset_metrics(h)
    local order = xs:order(0)
    if distributed.active then -- each rank its block of the samples, in their order (the same on every rank)
      local first, count = distributed.block(xs.n)
      order = {}
      for i = 1, count do order[i] = first + i - 1 end
    end
    for step = 1, (#order + xs.batch_size - 1) // xs.batch_size do
      local xb, yb, _, wb = xs:batch(step, order)
      xs:prefetch(step + 1, order)
      if yb == nil then error("the dataset has no targets (labels = false?): nothing to evaluate against", 0) end
      C.model_test_step(h, unlist(on_device(xb, self.device)), unlist(on_device(yb, self.device)), nil, nil, nil,
        dataset_weights(wb, self.device))
      if C.interrupted() then error("interrupted", 0) end
    end
    if distributed.active then distributed.reduce_metrics(h) end
    return C.model_logs(h)
  end
  local n = nsamples(xs[1])
  local base = 0 -- under MPI each rank measures its block, and the counts are added up
  if distributed.active then
    if n < distributed.size then
      error(string.format("%d samples to evaluate on %d ranks: each rank needs one", n, distributed.size), 0)
    end
    base, n = distributed.block(n)
    base = base - 1
  end
  C.model_reset_metrics(h)
  for first = base + 1, base + n, batch_size do
    local count = math.min(batch_size, base + n - first + 1)
    local xb, yb = rows_of(xs, first, count, self.device), rows_of(ys, first, count, self.device)
    local wb = w and rows_on(w, first, count, self.device)
    C.model_test_step(h, unlist(xb), unlist(yb), nil, nil, nil, wb)
    free_all(xb)
    free_all(yb)
    if wb then wb:free() end
    if C.interrupted() then error("interrupted", 0) end
  end
  if distributed.active then distributed.reduce_metrics(h) end
  return C.model_logs(h)
end

-- The epoch's batches, as a function: next(step) -> xb, yb (nil at the end);
-- next(nil) stops.  Host data (cpu, float32) of a one-input, one-output
-- model goes through the prefetch thread, which gathers and augments the
-- next batches while the current step computes and uploads them to the
-- model's device.  Augmentation is keyed by each sample's dataset index on
-- both paths.
local function batch_source(xs, ys, order, n, bs, aug, epoch, device, w)
  if dataset.is(xs) then
    return function(step)
      if step == nil then return end
      local xb, yb, idx, wb = xs:batch(step, order)
      xs:prefetch(step + 1, order) -- read the next batch while this one trains
      if yb == nil then error("the dataset has no targets (labels = false?): nothing to train against", 0) end
      xb, yb = on_device(xb, device), on_device(yb, device)
      if aug then
        local indices = {}
        for i, v in ipairs(idx) do indices[i] = v - 1 end
        xb[1] = aug:apply(xb[1], { epoch = epoch, indices = indices })
      end
      return unlist(xb), unlist(yb), dataset_weights(wb, device)
    end
  end
  local x, y = xs[1], ys[1]
  local host = #xs == 1 and #ys == 1 and x:on_host() and y:on_host()
    and (x:dtype() == "float32" or x:dtype() == "uint8") and y:dtype() == "float32" and not w
  if host then
    if not order then
      order = {}
      for i = 1, n do order[i] = i end
    end
    local b = C.batches_new(x, y, order, bs, aug and aug.handle, aug and aug:key_seed() or 0, epoch, device)
    return function(step)
      if step == nil then return C.batches_close(b) end
      return C.batches_next(b)
    end
  end
  return function(step)
    if step == nil then return end
    local first, count = (step - 1) * bs + 1, math.min(bs, n - (step - 1) * bs)
    local xb, yb = rows_of(xs, first, count, device, order), rows_of(ys, first, count, device, order)
    local wb = w and rows_on(w, first, count, device, order)
    if aug then
      local indices = {}
      for i = 1, count do indices[i] = (order and order[first + i - 1] or first + i - 1) - 1 end
      local xa = aug:apply(xb[1], { epoch = epoch, indices = indices })
      xb[1]:free()
      xb[1] = xa
    end
    return unlist(xb), unlist(yb), wb
  end
end

local function free_batch(b)
  if C.is_tensor(b) then b:free() else free_all(b) end
end

local fit_options = { epochs = true, batch_size = true, validation_data = true, validation_split = true, shuffle = true,
  augment = true, callbacks = true, verbose = true, initial_epoch = true, sample_weight = true, class_weight = true,
  distributed = true, profile = true }

local evaluate_options = { batch_size = true, verbose = true, sample_weight = true, return_dict = true }
local predict_options = { batch_size = true, verbose = true }

local function call_cbs(cbs, name, ...)
  for _, cb in ipairs(cbs) do
    local f = cb[name]
    if f then f(cb, ...) end
  end
end

-- A callback with an on_* method that is not one of the hooks fit calls
-- (optim.callback_hooks) is an error, not a hook that never runs; returns
-- whether any callback has a per-batch hook.
local function check_callbacks(cbs)
  if type(cbs) ~= "table" then error("bad argument 'callbacks' to 'fit' (a list of callbacks expected)", 3) end
  local per_batch = false
  for i, cb in ipairs(cbs) do
    if type(cb) ~= "table" then error(string.format("fit: callbacks[%d] is a %s, not a callback", i, type(cb)), 3) end
    for k, v in pairs(cb) do
      if type(k) == "string" and k:match("^on_") and type(v) == "function" and not optim.callback_hooks[k] then
        error(string.format("fit: callbacks[%d] has a method '%s' that fit never calls (hooks: %s)", i, k,
          table.concat(optim.callback_hook_names, ", ")), 3)
      end
    end
    per_batch = per_batch or cb.on_train_batch_begin ~= nil or cb.on_train_batch_end ~= nil
      or cb.on_batch_begin ~= nil or cb.on_batch_end ~= nil
  end
  return per_batch
end

local function split_rows(list, first, count)
  local out = {}
  for i, t in ipairs(list) do out[i] = C.take_rows(t, first, count) end
  return out
end

-- A host copy of all that training changes (every layer's weights, the
-- optimizer's slots and update count, the epoch), taken at each epoch's end
-- when the model lives on a device: if the device fails (lost, or out of
-- memory) the model comes back on the CPU from it.
local function host_copy(self)
  local copy = { epoch = self.epoch, iterations = self.optimizer.iterations, layers = {}, slots = {} }
  for li, l in ipairs(self.layers) do
    copy.layers[li] = {}
    for i, w in ipairs(l:weights()) do copy.layers[li][i] = w.tensor:to("cpu") end
  end
  for i, slots in ipairs(C.optimizer_slots(self.optimizer.handle, #self.params)) do
    copy.slots[i] = {}
    for k, t in pairs(slots) do copy.slots[i][k] = t:to("cpu") end
  end
  return copy
end

-- The model on the CPU from a host copy, without reading the device.
local function restore_on_cpu(self, copy)
  for li, l in ipairs(self.layers) do
    for i, t in ipairs(copy.layers[li]) do C.layer_set_weight(l.handle, i, t) end
  end
  for i, slots in ipairs(copy.slots) do
    for k, t in pairs(slots) do C.optimizer_set_slot(self.optimizer.handle, i, k, t) end
  end
  self.optimizer.iterations = copy.iterations
  self.params = C.model_params(self.handle)
  self.device = "cpu"
  self.epoch = copy.epoch
end

-- After a failed step or host copy: a device that failed (lost, out of
-- memory) brings the model back on the CPU from the last copy, and says
-- so; any other error goes up as it is.  Raises in every case, blaming
-- the caller of fit (`level` counts from this function).
local function fit_failed(self, copy, err, level)
  local status = C.last_error_status()
  if copy and (status == "device error" or status == "out of memory") then
    local device = self.device
    restore_on_cpu(self, copy)
    error(string.format("fit: %s; the model is back on the CPU as it was at the end of epoch %d (weights and "
      .. "optimizer state): fit again with CPU tensors to go on there, or restart lunet to use %s again",
      tostring(err), copy.epoch, device), level)
  end
  error(err == "interrupted" and err or ("fit: " .. tostring(err)), err == "interrupted" and 0 or level)
end

-- A fresh host copy; when reading the device fails, the model comes back
-- from the previous one (nil before the first epoch: nothing to come back to).
local function next_host_copy(self, previous)
  local ok, copy = pcall(host_copy, self)
  if not ok then
    fit_failed(self, previous, string.format("%s (reading the model back from %s)", tostring(copy), self.device), 4)
  end
  return copy
end

local fit_impl

function Model:fit(x, y, o)
  if (type(o) == "table" and o.distributed) or distributed.active then
    -- under MPI an error on one rank must end the job, not leave the other
    -- ranks waiting in a collective
    local ok, r = pcall(fit_impl, self, x, y, o)
    if not ok then distributed.abort(tostring(r)) end
    return r
  end
  return fit_impl(self, x, y, o)
end

fit_impl = function(self, x, y, o)
  o = o or {}
  if o.profile ~= nil and type(o.profile) ~= "boolean" and type(o.profile) ~= "table" then
    error(string.format("bad argument 'profile' to 'fit' (true, or nn.profile's options {trace = ..., ...}, " ..
      "expected; got %s)", type(o.profile) == "string" and string.format("%q", o.profile) or type(o.profile)), 2)
  end
  if o.profile then -- fit{profile = true} or {profile = {trace = ...}}: the whole fit under nn.profile
    local rest = {}
    for k, v in pairs(o) do if k ~= "profile" then rest[k] = v end end
    local popts = type(o.profile) == "table" and o.profile or nil
    local _, history = require("lunet.profile").profile(function() return fit_impl(self, x, y, rest) end, popts)
    return history
  end
  optim.check_fields("fit", o, fit_options, "option", 3)
  if o.shuffle ~= nil and type(o.shuffle) ~= "boolean" and o.shuffle ~= "batch" then
    error(string.format("fit: shuffle must be true, false or \"batch\", got %s", tostring(o.shuffle)), 2)
  end
  if not self.optimizer then error("fit: call model:compile{optimizer = ..., loss = ...} first", 2) end
  -- a loaded model resuming at the epoch it was saved at: the RNG's seed and
  -- position then too (load_model keeps them aside); a first fit of any
  -- other kind leaves them (stale after it)
  local rng = self.rng_state
  self.rng_state = nil
  if rng and o.initial_epoch ~= nil and o.initial_epoch == self.epoch then
    C.seed(rng.seed)
    C.rng_take(rng.counter)
  end
  local ds = dataset.is(x) and x or nil
  local dist = (o.distributed or distributed.active) and distributed.init() or nil
  if ds then
    if y ~= nil then error("fit: the dataset gives the targets: call fit(ds, nil, {...})", 2) end
    for _, k in ipairs{"batch_size", "validation_split", "sample_weight", "class_weight"} do
      if o[k] ~= nil then error(string.format("fit: %s does not go with a dataset (it has its own batches)", k), 2) end
    end
    -- one batch builds the model and checks its shapes against the data
    local x1, y1 = ds:batch(1, ds:order(0))
    ensure_built(self, augmented_like(x1, o.augment))
    check_xy(self, x1, y1, "fit (the dataset's first batch)")
    ensure_compiled(self, x1)
    x, y = x1, y1
  end
  local split = o.validation_split
  -- Keras: 0 or none means no split, else a number in (0, 1) (NaN and -0.5
  -- trained without validation, silently; a string failed in a comparison)
  if split ~= nil and split ~= 0 and not (type(split) == "number" and split > 0 and split < 1) then
    error(string.format("bad argument 'validation_split' to 'fit' (a number in (0, 1) expected, got %s)",
      tostring(split)), 2)
  end
  if o.validation_data ~= nil and not dataset.is(o.validation_data) and
     (type(o.validation_data) ~= "table" or getmetatable(o.validation_data) ~= nil or o.validation_data[1] == nil) then
    error("bad argument 'validation_data' to 'fit' ({x, y} or {x, y, sample_weight}, or a dataset, expected, got " ..
      (C.is_tensor(o.validation_data) and "a tensor" or type(o.validation_data)) .. ")", 2)
  end
  x = preprocess(self, x, "fit")
  if o.validation_data and not dataset.is(o.validation_data) then
    o = setmetatable({ validation_data = { preprocess(self, o.validation_data[1], "fit"), o.validation_data[2],
      o.validation_data[3] } }, { __index = o })
  end
  ensure_built(self, augmented_like(x, o.augment))
  local xs, ys = check_xy(self, x, y, "fit")
  check_labels(self, ys, "fit")
  local epochs, bs = o.epochs or 1, ds and ds.batch_size or o.batch_size or 32
  if math.type(bs) ~= "integer" or bs < 1 then error("bad argument 'batch_size' to 'fit' (positive integer expected)", 2) end
  local verbose = o.verbose
  if verbose == nil or verbose == "auto" then verbose = 1 end
  if dist and dist.rank ~= 0 then verbose = 0 end -- one progress bar, rank 0's
  if o.augment and #xs ~= 1 then error("fit: augment works on a model with one input", 2) end
  local n = ds and ds.n or nsamples(xs[1])
  if ds then xs, ys = ds, nil end
  local w = not ds and sample_weights(self, ys, n, o.sample_weight, o.class_weight, "fit") or nil
  local xv, yv, wv
  if dataset.is(o.validation_data) then
    xv = o.validation_data
  elseif o.validation_data then
    xv, yv = check_xy(self, o.validation_data[1], o.validation_data[2], "fit (validation_data)")
    wv = sample_weights(self, yv, nsamples(xv[1]), o.validation_data[3], nil, "fit (validation_data)")
  elseif split and split > 0 then
    -- Keras's split: the first floor(n (1 - split)) rows train
    local nv = n - math.floor(n * (1 - split))
    if nv < 1 or nv >= n then error("fit: validation_split leaves no training or no validation samples", 2) end
    xv, yv = split_rows(xs, n - nv + 1, nv), split_rows(ys, n - nv + 1, nv)
    xs, ys = split_rows(xs, 1, n - nv), split_rows(ys, 1, n - nv)
    if w then
      -- validation takes the sample weights alone: class_weight weighs training only, as Keras's
      local sw = o.class_weight and o.sample_weight and sample_weights(self, ys, n, o.sample_weight, nil, "fit") or nil
      wv = (not o.class_weight or sw) and C.take_rows(sw or w, n - nv + 1, nv) or nil
      w = C.take_rows(w, 1, n - nv)
    end
    n = n - nv
  end
  local aug = o.augment ~= nil and augment.pipeline(o.augment, "fit") or nil
  local cbs = o.callbacks or {}
  local per_batch = check_callbacks(cbs)
  ensure_compiled(self, x)
  local opt, h = self.optimizer, self.handle
  opt:claim(self, 2)
  opt:sync()
  local sync, balance
  if dist then -- rank 0's weights everywhere, then every step averages the gradients
    local od, elements = type(o.distributed) == "table" and o.distributed or {}, 0
    local balanced = od.balance
    if balanced == nil then balanced = dist.balance == true end -- (the recipes' --balance)
    for _, p in ipairs(self.params) do elements = elements + p:numel() end
    dist.agree("fit", { samples = n, batch_size = bs, epochs = epochs, shuffle = o.shuffle == false and 0 or 1,
      initial_epoch = o.initial_epoch or 0, validation_samples = xv and (dataset.is(xv) and xv.n or nsamples(xv[1])) or 0,
      parameters = #self.params, parameter_elements = elements, overlap = od.overlap == false and 0 or 1,
      bucket_bytes = math.tointeger(od.bucket_bytes) or 0, balance = balanced and 1 or 0 })
    if balanced and ds then
      error("fit: distributed.balance shares tensors' global batches; a dataset makes its own batches", 2)
    end
    dist.broadcast_model(self)
    sync = dist.attach(self, od)
    -- balance: each global batch shared by the ranks' speeds, measured
    -- epoch by epoch and kept for the next fit of this global batch
    if balanced then balance = { g = bs * dist.size, shares = dist.balanced[bs * dist.size] } end
  end
  local history = { epoch = {} }
  local keys = self.metric_keys
  for _, k in ipairs(keys) do history[k] = {} end
  if xv then
    for _, k in ipairs(keys) do history["val_" .. k] = {} end
  end
  self.stop_training = false
  local steps = (n + bs - 1) // bs
  if dist then _, steps = dist.shard(nil, n, bs) end
  local nan_stop, last_logs = false, nil
  for _, cb in ipairs(cbs) do nan_stop = nan_stop or cb.terminate_on_nan == true end
  -- Keras's History: .history holds the per-epoch lists (the same tables
  -- as the flat fields), .epoch the epochs run, .params fit's settings
  history.history = {}
  for k, v in pairs(history) do if k ~= "epoch" and k ~= "history" then history.history[k] = v end end
  history.params = { epochs = epochs, steps = steps, verbose = verbose, batch_size = bs }
  call_cbs(cbs, "on_train_begin", self)
  -- BackupAndRestore sets resume_epoch in on_train_begin
  local first_epoch = math.max(o.initial_epoch or 0, self.resume_epoch or 0) + 1
  self.resume_epoch = nil
  -- An epoch's random draws (augmentation, random layers, a dataset's
  -- shuffle) are keyed by its number plus key_base: a fit numbering its
  -- epochs again over ones this model trained (fit called twice without
  -- initial_epoch) continues the keys instead of replaying them, as Keras's
  -- seed generators advance; one resuming at initial_epoch = model.epoch
  -- keeps them (key_base is saved with the model).
  if first_epoch <= self.epoch then self.key_base = (self.key_base or 0) + self.epoch - first_epoch + 1 end
  local key_base = self.key_base or 0
  if dist then dist.agree("fit (resuming from a backup)", { first_epoch = first_epoch }) end
  local copy = self.device ~= "cpu" and next_host_copy(self, nil) or nil
  for epoch = first_epoch, epochs do
    if verbose ~= 0 then print(string.format("Epoch %d/%d", epoch, epochs)) end
    call_cbs(cbs, "on_epoch_begin", self, epoch - 1)
    local order -- nil: the samples in their order (shuffle = false)
    if ds then
      order = ds:order(epoch + key_base)
    elseif o.shuffle == "batch" then -- Keras's: the batches in order, each one's samples shuffled
      order = {}
      for first = 1, n, bs do
        local count = math.min(bs, n - first + 1)
        for i, v in ipairs(permutation(count)) do order[first + i - 1] = first + v - 1 end
      end
    elseif o.shuffle ~= false then
      order = permutation(n)
    end
    local sizes, totals -- under MPI: this rank's shard of each global batch (rank 0's order), all ranks' counts
    local count = n
    if dist then
      if order then order = dist.order(order, n) end
      order, steps, sizes, totals = dist.shard(order, n, bs, balance and balance.shares)
      count = #order
    end
    local own = sizes and sizes[1] or bs -- this rank's batch (with balance, its share)
    local bar = Progress.new(steps, verbose)
    local logs = {}
    local next_batch = batch_source(xs, ys, order, count, own, aug, epoch + key_base, self.device, w)
    local measured, upto -- balance: sync's counters after the epoch's first step and its last full one
    local full = balance and math.min(steps, n // balance.g) or 0
    C.model_reset_metrics(h)
    local ran = steps -- fewer when a callback or TerminateOnNaN stops the epoch
    local ok, err = pcall(function()
      for s = 1, steps do
        ran = s
        local xb, yb, wb = next_batch(s)
        if per_batch then
          call_cbs(cbs, "on_train_batch_begin", self, s - 1, logs)
          call_cbs(cbs, "on_batch_begin", self, s - 1, logs)
        end
        C.optimizer_set_lr(opt.handle, opt:current_lr())
        if sync then sync:count(sizes[s], totals[s]) end
        local stepped, msg = pcall(C.model_train_step, h, xb, yb, epoch + key_base, order, (s - 1) * own + 1, wb)
        if balance and s == 1 then measured = sync:stats() end
        if balance and s == full then upto = sync:stats() end
        free_batch(xb)
        free_batch(yb)
        if wb then wb:free() end
        if not stepped and nan_stop and tostring(msg):find("the loss became NaN or infinite", 1, true) then
          -- TerminateOnNaN: stop here, the weights as the last good step left them; the epoch
          -- ends as Keras's does (validation, on_epoch_end, history), its loss the invalid one
          print(string.format("Epoch %d, step %d: invalid loss, terminating training", epoch, s))
          self.stop_training = true
          C.model_logs(h, logs)
          logs.loss = tostring(msg):find("infinite loss", 1, true) and math.huge or 0 / 0
          return
        end
        if not stepped then error(string.format("%s (epoch %d, step %d)", msg, epoch, s), 0) end
        C.model_logs(h, logs)
        if per_batch then
          call_cbs(cbs, "on_train_batch_end", self, s - 1, logs)
          call_cbs(cbs, "on_batch_end", self, s - 1, logs)
        end
        bar:update(s, logs, keys, false)
        if C.interrupted() then error("interrupted", 0) end
        -- a callback's stop_training ends the epoch after this step, as Keras's (it ran the epoch out);
        -- under MPI every rank must run the same steps, so the epoch ends first
        if self.stop_training and not dist then return end
      end
    end)
    next_batch(nil) -- stops the prefetch thread, on success or error
    if ok and dist then -- the epoch's training metrics over every rank's samples
      ok, err = pcall(function()
        dist.reduce_metrics(h)
        C.model_logs(h, logs)
        if balance and measured and upto then -- the full steps after the first: the next epoch's shares
          balance.shares = dist.rebalance(balance.shares, upto.work_s - measured.work_s, full - 1, balance.g)
          dist.balanced[balance.g] = balance.shares
        end
      end)
    end
    if ok and xv then
      local vl
      call_cbs(cbs, "on_test_begin", self)
      ok, vl = pcall(run_eval, self, xv, yv, bs, wv)
      if ok then call_cbs(cbs, "on_test_end", self, vl) end
      if ok then
        for _, k in ipairs(keys) do logs["val_" .. k] = vl[k] end
      else
        err = vl == "interrupted" and vl or string.format("%s (epoch %d, validation)", tostring(vl), epoch)
      end
    end
    if not ok then
      if bar.tty and bar.verbose == 1 and bar.last >= 0 then io.stdout:write("\n") end -- past a bar drawn in place
      fit_failed(self, copy, err, 3)
    end
    local all = {}
    for _, k in ipairs(keys) do all[#all + 1] = k end
    if xv then for _, k in ipairs(keys) do all[#all + 1] = "val_" .. k end end
    bar:update(ran, logs, all, true)
    self.epoch = epoch
    call_cbs(cbs, "on_epoch_end", self, epoch - 1, logs)
    -- the history last, as Keras's History callback: it records what the
    -- callbacks added (ReduceLROnPlateau's learning_rate)
    for k, v in pairs(logs) do
      if not history[k] then history[k] = {}; history.history[k] = history[k] end
      table.insert(history[k], v)
    end
    table.insert(history.epoch, epoch - 1)
    last_logs = logs
    if copy then copy = next_host_copy(self, copy) end
    collectgarbage("step")
    if self.stop_training then break end
  end
  call_cbs(cbs, "on_train_end", self, last_logs)
  if sync then
    self.sync_stats = sync:stats()
    sync:detach()
  end
  self.history = history
  return history
end

-- evaluate's result: the logs table, or with return_dict = false Keras's
-- form: the loss alone, or the loss then the metrics in the logs' order.
local function eval_result(self, logs, o)
  if o.verbose and o.verbose ~= 0 then
    local parts = {}
    for k, v in pairs(logs) do parts[#parts + 1] = string.format("%s: %.4f", k, v) end
    table.sort(parts)
    print(table.concat(parts, " - "))
  end
  if o.return_dict ~= false then return logs end
  local keys = self.metric_keys
  if #keys == 1 then return logs[keys[1]] end
  local list = {}
  for i, k in ipairs(keys) do list[i] = logs[k] end
  return list
end

function Model:evaluate(x, y, o)
  o = optim.check_fields("evaluate", o, evaluate_options, "option", 3) -- (a misspelt option is not ignored)
  if not self.optimizer then error("evaluate: call model:compile{...} first", 2) end
  if dataset.is(x) then
    if y ~= nil then error("evaluate: the dataset gives the targets: call evaluate(ds)", 2) end
    if o.batch_size or o.sample_weight then
      error("evaluate: a dataset makes its own batches and weights: leave out batch_size and sample_weight", 2)
    end
    local x1, y1 = x:batch(1, x:order(0))
    ensure_built(self, x1)
    check_xy(self, x1, y1, "evaluate (the dataset's first batch)")
    ensure_compiled(self, x1)
    return eval_result(self, run_eval(self, x), o)
  end
  x = preprocess(self, x, "evaluate")
  ensure_built(self, x)
  local xs, ys = check_xy(self, x, y, "evaluate")
  ensure_compiled(self, x)
  check_labels(self, ys, "evaluate")
  local logs = run_eval(self, xs, ys, o.batch_size or 32,
    sample_weights(self, ys, nsamples(xs[1]), o.sample_weight, nil, "evaluate"))
  return eval_result(self, logs, o)
end

-- The outputs for x, in batches: a tensor, or a list for several outputs.
function Model:predict(x, o)
  o = optim.check_fields("predict", o, predict_options, "option", 2)
  if dataset.is(x) then -- in the samples' order 1..n (a shuffling dataset's files too)
    local parts, order = {}, {}
    for i = 1, x.n do order[i] = i end
    for step = 1, #x do
      local xb = x:batch(step, order)
      x:prefetch(step + 1, order)
      ensure_built(self, xb)
      local outs = { C.model_predict(self.handle, unlist(on_device(xb, self.device))) }
      for j, t in ipairs(outs) do
        parts[j] = parts[j] or {}
        parts[j][#parts[j] + 1] = t
      end
    end
    local out = {}
    for j, p in ipairs(parts) do out[j] = #p == 1 and p[1] or C.cat(p, 1) end
    return #out == 1 and out[1] or out
  end
  x = preprocess(self, x, "predict")
  ensure_built(self, x)
  local xs = tensors(self, x, #self.inputs, 1, "predict", "input", 3)
  local bs = o.batch_size or 32
  local n = nsamples(xs[1])
  if n <= bs and #xs == 1 and xs[1]:device() == self.device then
    if #self.outputs == 1 then return C.model_predict(self.handle, xs[1]) end
    return { C.model_predict(self.handle, xs[1]) }
  end
  local parts = {}
  for first = 1, math.max(n, 1), bs do -- once for no samples: outputs of 0 rows, on any device
    local xb = rows_of(xs, first, math.min(bs, n - first + 1), self.device)
    local outs = { C.model_predict(self.handle, unlist(xb)) }
    for j, t in ipairs(outs) do
      parts[j] = parts[j] or {}
      parts[j][#parts[j] + 1] = t
    end
    free_all(xb)
  end
  local out = {}
  for j, p in ipairs(parts) do out[j] = #p == 1 and p[1] or C.cat(p, 1) end
  return #out == 1 and out[1] or out
end

-- Keras's single-batch calls: one step on (x, y) with the metrics of that
-- batch alone; returns the loss and the logs (with return_dict, the logs
-- alone, the loss among them, as Keras's dict).
function Model:train_on_batch(x, y, o)
  if not self.optimizer then error("train_on_batch: call model:compile{optimizer = ..., loss = ...} first", 2) end
  o = optim.check_fields("train_on_batch", o, { sample_weight = true, class_weight = true, return_dict = true })
  ensure_built(self, x)
  local xs, ys = check_xy(self, x, y, "train_on_batch")
  ensure_compiled(self, x)
  local opt = self.optimizer
  opt:claim(self, 2)
  opt:sync()
  C.model_reset_metrics(self.handle)
  local w = sample_weights(self, ys, nsamples(xs[1]), o.sample_weight, o.class_weight, "train_on_batch")
  local loss = C.model_train_step(self.handle, unlist(xs), unlist(ys), nil, nil, nil, w and w:to(self.device))
  if o.return_dict then return C.model_logs(self.handle) end
  return loss, C.model_logs(self.handle)
end

function Model:test_on_batch(x, y, o)
  if not self.optimizer then error("test_on_batch: call model:compile{...} first", 2) end
  o = optim.check_fields("test_on_batch", o, { sample_weight = true, return_dict = true })
  ensure_built(self, x)
  local xs, ys = check_xy(self, x, y, "test_on_batch")
  ensure_compiled(self, x)
  C.model_reset_metrics(self.handle)
  local w = sample_weights(self, ys, nsamples(xs[1]), o.sample_weight, nil, "test_on_batch")
  local loss = C.model_test_step(self.handle, unlist(xs), unlist(ys), nil, nil, nil, w and w:to(self.device))
  if o.return_dict then return C.model_logs(self.handle) end
  return loss, C.model_logs(self.handle)
end

-- model(x): on tensors a differentiable call (a list for several inputs;
-- one result per output), so a model can sit inside a bigger function; on
-- symbolic tensors the model's calls join the caller's graph, sharing the
-- layers (a model used as a layer).  model(x, true) runs in training mode;
-- model(x, {training = true, epoch = e, first_index = i | indices = {...}})
-- also gives random preprocessing layers the keys fit would (aug:apply's).
function Model:__call(x, training)
  local xs, listed = graph.symbolic_list(x, self.name)
  if xs then
    if not self.built then
      if self.kind ~= "sequential" then error(self.name .. ": the model is not built", 2) end
      self:build(xs[1].shape)
    end
    if #xs ~= #self.inputs then
      error(string.format("%s takes %d input%s, got %d", self.name, #self.inputs, #self.inputs == 1 and "" or "s", #xs), 2)
    end
    local map = {}
    for i, s in ipairs(self.inputs) do map[s] = xs[i] end
    for _, n in ipairs(self.nodes) do
      local ins = {}
      for i, s in ipairs(n.inputs) do ins[i] = map[s] end
      local outs = { n.layer:apply(n.listed and ins or ins[1]) }
      for j, s in ipairs(n.outputs) do map[s] = outs[j] end
    end
    local outs = {}
    for j, s in ipairs(self.outputs) do outs[j] = map[s] end
    return table.unpack(outs)
  end
  ensure_built(self, x)
  if type(training) == "table" then
    -- {training = true, epoch =, first_index = | indices = }: the keys the
    -- random preprocessing layers draw with, as in aug:apply (0-based)
    local o = optim.check_fields(self.name, training, { training = true, epoch = true, first_index = true,
      indices = true }, "call option", 2)
    for _, k in ipairs{ "epoch", "first_index" } do -- a negative one wrapped to 2^64 - 1 in C
      if o[k] ~= nil and (math.tointeger(o[k]) == nil or o[k] < 0) then
        error(string.format("%s: %s must be a whole number >= 0, got %s", self.name, k, tostring(o[k])), 2)
      end
    end
    if o.indices ~= nil and type(o.indices) ~= "table" then
      error(string.format("%s: indices must be a list of sample indices (0-based)", self.name), 2)
    end
    local n = C.is_tensor(x) and x:shape()[1] or nil
    if o.indices ~= nil and n and #o.indices ~= n then
      error(string.format("%s: indices has %d entries for a batch of %d (one dataset index per sample)", self.name,
        #o.indices, n), 2)
    end
    local order = o.indices and {}
    for i, v in ipairs(o.indices or {}) do
      if math.tointeger(v) == nil or v < 0 then
        error(string.format("%s: indices[%d] is %s; sample indices are whole numbers >= 0 (0-based)", self.name, i,
          tostring(v)), 2)
      end
      order[i] = v + 1
    end
    return C.model_forward(self.handle, x, o.training or false, o.training and (o.epoch or 0) or nil, order,
                           order and 1 or (o.first_index or 0) + 1)
  end
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

-- Keras's model.trainable_weights: the tensors an optimizer updates (the
-- weights themselves, not copies; frozen layers' and statistics left out),
-- in get_weights' order.
function Model:trainable_weights()
  ensure_built(self)
  local out = {}
  for _, l in ipairs(self.layers) do
    for _, w in ipairs(l:weights()) do
      if w.trainable then out[#out + 1] = w.tensor end
    end
  end
  return out
end

-- Every count and shape is checked before any weight changes (a wrong
-- list leaves the model as it was).
function Model:set_weights(list)
  ensure_built(self)
  if type(list) ~= "table" or getmetatable(list) ~= nil then
    error(string.format("set_weights: a list of tensors expected, got %s", type(list)), 2)
  end
  local per, total = {}, 0
  for i, l in ipairs(self.layers) do
    per[i] = l:weights()
    total = total + #per[i]
  end
  if total ~= #list then error(string.format("set_weights: the model has %d weights, got %d", total, #list), 2) end
  local src, k = {}, 0
  for i, l in ipairs(self.layers) do
    local err
    src[i], err = l:weights_from(per[i], list, k + 1, k)
    if not src[i] then error("set_weights: " .. err, 2) end
    k = k + #per[i]
  end
  for i, ws in ipairs(per) do
    for j, w in ipairs(ws) do C.assign(w.tensor, src[i][j]) end
  end
end

-- ---- checkpoints (safetensors; the config is JSON, written by the core) ----

local function weight_entries(self)
  local entries = {}
  for i, l in ipairs(self.layers) do
    for _, w in ipairs(l:weights()) do
      entries[#entries + 1] = { name = string.format("layers.%d.%s", i - 1, w.name), tensor = w.tensor }
    end
  end
  return entries
end

-- model.class_names = {"cat", "dog", ...}: the names of the output's
-- classes, saved with the model (its "class_names" metadata, which lunet
-- serve, the ONNX export and lunet_model_class_name read).  Checked here:
-- a list of strings, one per output unit (two for one sigmoid unit).
function M.check_class_names(self, what)
  local names = rawget(self, "class_names")
  if names == nil then return nil end
  local ok = type(names) == "table" and #names > 0
  for k, v in pairs(ok and names or {}) do
    if math.type(k) ~= "integer" or type(v) ~= "string" or v:find("\0", 1, true) then ok = false end
  end
  if not ok then error(string.format("%s: class_names must be a list of strings (without NUL characters)", what), 3) end
  local out = self.outputs and #self.outputs == 1 and self.outputs[1].shape
  local k = out and out[#out]
  if k and #names ~= k and not (k == 1 and #names == 2) then
    error(string.format("%s: %d class_names for an output of %d units", what, #names, k), 3)
  end
  return C.json_encode(names)
end

-- Writes the model (the core's lunet_model_save: weights, the graph as
-- JSON, compile settings and optimizer state) with the epoch, the RNG state
-- and the Lua optimizer's own settings (a schedule) in the metadata.
function Model:save(path, o)
  if type(path) ~= "string" then error("bad argument #1 to 'save' (a file path expected)", 2) end
  if distributed.active and distributed.rank ~= 0 then return end -- rank 0 writes (the weights are the same)
  optim.check_save_path(path, "save")
  ensure_built(self)
  if self.optimizer then ensure_compiled(self) end
  local class_names = M.check_class_names(self, "save")
  local function encode(v) -- its refusal (a string holding a NUL) at the caller's line, before any file is written
    local ok, text = pcall(C.json_encode, v)
    if not ok then error("save: " .. tostring(text):gsub("^[^:\n]*%.lua:%d+: ", ""), 3) end
    return text
  end
  C.model_save(self.handle, path, { epoch = tostring((o and o.epoch) or self.epoch), rng_seed = tostring(C.seed()),
    epoch_key_base = self.key_base and tostring(self.key_base) or nil,
    class_names = class_names,
    rng_counter = tostring(C.rng_take(0)),
    lua_optimizer = self.optimizer and encode(self.optimizer:config()) or nil, rng_ranks = o and o.rng_ranks,
    preprocessor = self.preprocessor and encode(self.preprocessor:config()) or nil })
end

-- ---- generation (lunet/generate.lua holds the sampling) ----

-- The model's one input as (L) ids and its one output (L, V): what
-- generate needs; errors otherwise.
local function decoder_shape(self)
  if #self.inputs ~= 1 or #self.outputs ~= 1 then
    error("generate: the model must have one input (ids) and one output (next-token scores)", 3)
  end
  local ins, outs = self.inputs[1].shape, self.outputs[1].shape
  if #ins ~= 1 or #outs ~= 2 or outs[1] ~= ins[1] then
    error(string.format("generate: the model maps %s to %s; a decoder maps ids (None, L) to scores (None, L, vocabulary)",
      graph.shape_str(ins), graph.shape_str(outs)), 3)
  end
  -- probabilities: a softmax activation, or a Softmax layer over the vocabulary axis (its scores are not
  -- logits: taking them for logits would sample from a second softmax)
  local last = self.outputs[1].node and self.outputs[1].node.layer
  local args = last and last.args or {}
  local probs = args.activation == "softmax"
    or (last ~= nil and last.type == "Softmax" and (args.axis == nil or args.axis == -1 or args.axis == 2))
  return ins[1], outs[2], probs
end

-- model:generate(prompt, {max_new_tokens = 20, temperature = 1, top_k,
-- top_p, seed = 1, use_cache}): the prompt (a string with a CharTokenizer
-- preprocessor, a list of ids or a 1-D tensor) followed by the sampled
-- tokens, in the prompt's form.  temperature 0 takes the most likely token.
function Model:generate(prompt, o)
  o = gen.check_options(o)
  ensure_built(self)
  local ids, finish = gen.prompt_ids(self, prompt)
  if #ids == 0 then error("generate: the prompt is empty (give at least one token)", 2) end
  local steps, vocab, probs = decoder_shape(self)
  for i, v in ipairs(ids) do
    if v >= vocab then error(string.format("generate: prompt entry %d is %d, outside the vocabulary of %d", i, v, vocab), 2) end
  end
  local random = gen.rng(o.seed)
  local function scores_of(row)
    if not probs then return row end
    for i, v in ipairs(row) do row[i] = math.log(math.max(v, 1e-30)) end
    return row
  end
  local out = { table.unpack(ids) }
  local session, why
  if o.use_cache ~= false then session, why = gen.session(self, steps) end
  if o.use_cache and not session then
    error("generate: use_cache needs a model whose every layer runs step by step: " .. tostring(why), 2)
  end
  if session then
    local ok, err = pcall(function()
      local window = {}
      for k = math.max(1, #out - steps + 1), #out do window[#window + 1] = out[k] end
      local row = session:feed(window)
      for i = 1, o.max_new_tokens do
        out[#out + 1] = gen.sample(scores_of(row), o, random)
        if i == o.max_new_tokens then break end
        -- a full context starts over from the last `steps` tokens
        if session:length() >= steps then row = session:restart(out) else row = session:feed({ out[#out] }) end
      end
    end)
    session:close()
    if not ok then error(err, 2) end
    return finish(out)
  end
  for _ = 1, o.max_new_tokens do
    local first = math.max(1, #out - steps + 1)
    local window = {}
    for k = first, #out do window[#window + 1] = out[k] end
    local at = #window
    for k = at + 1, steps do window[k] = 0 end
    local y = self:predict(C.tensor({ window }, "int32"))
    out[#out + 1] = gen.sample(scores_of(y:totable()[1][at]), o, random)
  end
  return finish(out)
end

-- Attaches a text preprocessor (nn.text.TextVectorization or
-- CharTokenizer): saved with the model; fit/evaluate/predict then take
-- texts, generate takes and returns text.
function Model:set_preprocessor(p)
  if p ~= nil and not text.is_preprocessor(p) then
    error("bad argument #1 to 'set_preprocessor' (nn.text.TextVectorization or nn.text.CharTokenizer expected)", 2)
  end
  self.preprocessor = p
  return self
end

-- The weights alone (safetensors, "layers.<i>.<weight>"), for a model
-- the file cannot describe (one with nn.Lambda): rebuild it in code, then
-- load_weights.
function Model:save_weights(path)
  if type(path) ~= "string" then error("bad argument #1 to 'save_weights' (a file path expected)", 2) end
  optim.check_save_path(path, "save_weights")
  ensure_built(self)
  C.save_safetensors(path, weight_entries(self), { format = "lunet_weights", lunet_version = C.version })
end

-- Copies a checkpoint's weights into this model, checking names and shapes.
function Model:load_weights(path)
  ensure_built(self)
  local entries = C.load_safetensors(path)
  local by = {}
  for _, e in ipairs(entries) do by[e.name] = e.tensor end
  local mine = {}
  for _, e in ipairs(weight_entries(self)) do
    mine[e.name] = true
    local src = by[e.name]
    if not src then error(string.format("%s does not belong to this model: it has no weight '%s'", path, e.name), 2) end
    local a, b = table.concat(e.tensor:shape(), ", "), table.concat(src:shape(), ", ")
    if a ~= b then
      error(string.format("%s belongs to another model: '%s' has shape (%s), this model expects (%s)", path, e.name, b, a), 2)
    end
  end
  -- and every layer weight of the file is one of this model's (a bigger model's file is not half loaded),
  -- but a normalization's switched-off gamma or beta, a frozen weight in files before 0.3
  local function switched_off(name)
    local i, w = name:match("^layers%.(%d+)%.(%a+)$")
    local l = i and self.layers[tonumber(i) + 1]
    return l and (l.type == "BatchNormalization" or l.type == "LayerNormalization")
      and ((w == "gamma" and l.args.scale == false) or (w == "beta" and l.args.center == false))
  end
  for _, e in ipairs(entries) do
    if e.name:match("^layers%.") and not mine[e.name] and not switched_off(e.name) then
      error(string.format("%s belongs to another model: it has the weight '%s', which this model lacks", path,
        e.name), 2)
    end
  end
  for _, e in ipairs(weight_entries(self)) do C.assign(e.tensor, by[e.name]) end
  return by
end

-- ---- reading a file: the core checks and builds; Lua wraps ----

-- The Lua optimizer for a loaded model's core optimizer: its settings from
-- the Lua side's record (a schedule) when the file has one, else the core's.
local function loaded_optimizer(h)
  local handle = C.model_optimizer(h)
  local lua_cfg = C.model_meta(h, "lua_optimizer")
  local cfg = lua_cfg and C.json_decode(lua_cfg, "the optimizer settings")
    or C.json_decode(C.model_meta(h, "optimizer") or "{}", "the optimizer config")
  local name = lua_cfg and cfg.name or optim.optimizers.by_kind[cfg.kind]
  -- the core's config alone says "adam": with decay, AdamW (an Adam{weight_decay} keeps its name in lua_optimizer)
  if not lua_cfg and name == "Adam" and cfg.weight_decay and cfg.weight_decay > 0 then name = "AdamW" end
  if not optim.optimizers.takes(name, "learning_rate") then
    error(string.format("unknown optimizer '%s'", tostring(name)), 0)
  end
  local args = {}
  for k, v in pairs(cfg) do
    if optim.optimizers.takes(name, k) then args[k] = v end
  end
  -- a file of lunet 0.2 may set several clipping options: the one the core
  -- kept (the first of global_clipnorm, clipnorm, clipvalue; it said so)
  for i, k in ipairs{ "global_clipnorm", "clipnorm", "clipvalue" } do
    if (args[k] or 0) > 0 then
      for j = i + 1, 3 do args[({ "global_clipnorm", "clipnorm", "clipvalue" })[j]] = 0 end
      break
    end
  end
  return optim.optimizers[name](args, handle)
end

-- Rebuilds the Lua objects (layers, symbolic graph) of a core model.
local function wrap(h)
  local d = C.model_describe(h)
  local ls = {}
  for i, handle in ipairs(d.layers) do ls[i] = layers.wrap(handle) end
  local sym = {}
  local ins = {}
  for i, x in ipairs(d.inputs) do
    ins[i] = graph.Input{ shape = x.shape, name = x.name }
    sym[x.id] = ins[i]
  end
  local chain = #d.inputs == 1 and #d.outputs == 1
  local prev = d.inputs[1].id
  for _, c in ipairs(d.calls) do
    local l = ls[c.layer]
    local xs = {}
    for i, id in ipairs(c.inputs) do xs[i] = sym[id] end
    local listed = #xs > 1 or layers.types()[l.type].max_inputs > 1
    local outs = { graph.call(l, xs, listed) }
    for j = 1, c.nout do sym[c.out + j - 1] = outs[j] end
    chain = chain and #c.inputs == 1 and c.inputs[1] == prev and c.nout == 1
    prev = c.out
  end
  local outs = {}
  for j, id in ipairs(d.outputs) do outs[j] = sym[id] end
  chain = chain and prev == d.outputs[1]
  local self = setmetatable({ kind = chain and "sequential" or "functional", name = d.name, epoch = 0, layers = ls,
    inputs = ins, outputs = outs, single_input = #ins == 1, single_output = #outs == 1 }, Model)
  self.nodes = walk(ins, outs)
  self.handle, self.built = h, true
  self.params = C.model_params(h)
  self.input_shape, self.output_shape = io_shapes(ins), io_shapes(outs)
  self.device = self.params[1] and self.params[1]:device() or C.default_backend()
  if d.compiled then
    self.losses = {}
    local weights, weighted = {}, false
    for j, l in ipairs(d.losses) do
      self.losses[j] = optim.losses.get({ name = l.loss, from_logits = l.from_logits, delta = l.delta,
        label_smoothing = l.label_smoothing })
      weights[j], weighted = l.weight, weighted or l.weight ~= 1
    end
    self.loss, self.metrics, self.weighted_metrics = self.losses[1], d.metrics, d.weighted_metrics
    self.loss_weights = weighted and weights or nil
    self.optimizer = loaded_optimizer(h)
    self.compiled, self.metric_keys = true, C.model_metric_names(h)
  end
  return self
end

function M.load_model(path)
  if type(path) ~= "string" then error("bad argument #1 to 'load_model' (a file path expected)", 2) end
  local ok, model = pcall(function() return wrap(C.model_load(path)) end)
  if not ok then error(tostring(model), 2) end
  local h = model.handle
  model.epoch = math.tointeger(tonumber(C.model_meta(h, "epoch"))) or 0
  model.key_base = math.tointeger(tonumber(C.model_meta(h, "epoch_key_base") or "")) -- nil: 0
  local names = C.model_meta(h, "class_names")
  if names then model.class_names = C.json_decode(names, "the class names") end
  local pre = C.model_meta(h, "preprocessor")
  if pre then model.preprocessor = text.from_config(C.json_decode(pre, "the text preprocessor")) end
  -- the RNG's seed and position when saved: fit{initial_epoch = model.epoch}
  -- takes them up (training resumes exactly); loading alone leaves nn.seed's
  -- stream as the user set it (it replaced it: two seeds, the same dropout)
  local seed = C.model_meta(h, "rng_seed")
  if seed then
    model.rng_state = { seed = math.tointeger(tonumber(seed)) or 0,
      counter = math.tointeger(tonumber(C.model_meta(h, "rng_counter"))) or 0 }
  end
  return model
end

M.Input = graph.Input
return M
