-- Layer constructors made from the plugins' argument schemas:
-- nn.Conv2D{32, 3, activation = "relu"} == nn.Conv2D{filters = 32, kernel_size = 3, ...}
local C = require "lunet.core"
local graph = require "lunet.graph"

local M = {}

local Layer = {}
M.Layer = Layer

-- layer.trainable (Keras's): false freezes the layer's weights; a model
-- takes the change at its next compile.
-- layer.dtype_policy: "float32" or "mixed_bfloat16" (the global policy
-- when it was made, or its dtype = argument); compute_dtype and
-- variable_dtype as Keras names them (weights are always float32).
function Layer.__index(self, k)
  if k == "trainable" then return C.layer_trainable(rawget(self, "handle")) end
  if k == "dtype_policy" then return C.layer_policy(rawget(self, "handle")) end
  if k == "compute_dtype" then
    return C.layer_policy(rawget(self, "handle")) == "mixed_bfloat16" and "bfloat16" or "float32"
  end
  if k == "variable_dtype" then return "float32" end
  return Layer[k]
end

function Layer.__newindex(self, k, v)
  if k == "trainable" then
    if type(v) ~= "boolean" then error("trainable must be true or false", 2) end
    C.layer_set_trainable(rawget(self, "handle"), v)
    return
  end
  rawset(self, k, v)
end

local counters = {}

-- Keras's to_snake_case: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d,
-- LeakyReLU -> leaky_re_lu, SimpleRNN -> simple_rnn.
local function snake(name)
  name = name:gsub("[^%w_]", "")
  name = name:gsub("(.)(%u%l+)", "%1_%2")
  return (name:gsub("(%l)(%u)", "%1_%2"):lower())
end

local function describe(v, depth)
  if type(v) == "string" then return string.format("'%s'", v) end
  if type(v) == "table" and getmetatable(v) == nil and (depth or 0) < 2 then -- {1, {2, 3}}
    local parts, n = {}, #v
    for i = 1, n do parts[i] = describe(v[i], (depth or 0) + 1) end
    for k, x in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then
        parts[#parts + 1] = tostring(k) .. " = " .. describe(x, (depth or 0) + 1)
      end
    end
    if #parts > 8 then parts = { table.concat(parts, ", ", 1, 8), "..." } end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return tostring(v)
end

-- The schema's default (a typed value from the plugin), copied so no two
-- layers share a table.
local function default_value(s)
  local v = s.default
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = x end
  return c
end

local positive_ok = { axis = true, seed = true, padding = true }

-- Checks one value against its schema entry; returns the value to store.
-- The pair arguments that count rows and columns added, where 0 is a
-- value (Conv2DTranspose's output_padding); every other pair is a size or
-- a step.  (Paddings and croppings per side are "sides" arguments.)
local zero_ok = { output_padding = true }

local function check_arg(tname, s, v, argpos)
  local where = argpos and ("#" .. argpos) or ("'" .. s.name .. "'")
  -- level 5: bad, check_arg, parse_args, new, then the caller (constructors tail-call new)
  local function bad(msg) error(string.format("bad argument %s to '%s' (%s)", where, tname, msg), 5) end
  if v == nil then
    if s.required then bad(s.name .. " is required") end
    return nil
  end
  local t = s.type
  if t == "int" then
    if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
      bad(string.format("%s must be an integer, got %s", s.name, describe(v)))
    end
    v = math.tointeger(v)
    if not positive_ok[s.name] and v < 1 then bad(string.format("%s must be positive, got %d", s.name, v)) end
  elseif t == "float" then
    if type(v) ~= "number" then bad(string.format("%s must be a number, got %s", s.name, type(v))) end
  elseif t == "bool" then
    if type(v) ~= "boolean" then bad(string.format("%s must be true or false, got %s", s.name, describe(v))) end
  elseif t == "string" then
    if type(v) ~= "string" then bad(string.format("%s must be a string, got %s", s.name, type(v))) end
    if s.choices then
      local ok = false
      for c in s.choices:gmatch("[^|]+") do if c == v then ok = true end end
      if not ok then
        bad(string.format("%s must be one of %s, got '%s'", s.name, s.choices:gsub("|", ", "), v))
      end
    end
  elseif t == "sides" then -- counts per side, 0 allowed: n, {h, w} or {{top, bottom}, {left, right}}
    local form = "an integer, a pair {h, w} or a pair of pairs {{top, bottom}, {left, right}}"
    local vals = type(v) == "table" and v or { v }
    if type(vals[1]) == "table" then
      local function pair(p) return type(p) == "table" and #p == 2 and next(p, 2) == nil end
      if not (#vals == 2 and next(vals, 2) == nil and pair(vals[1]) and pair(vals[2])) then
        bad(string.format("%s must be %s, got %s", s.name, form, describe(v)))
      end
      vals = { vals[1][1], vals[1][2], vals[2][1], vals[2][2] }
    elseif #vals < 1 or #vals > 2 or next(vals, #vals) ~= nil then
      bad(string.format("%s must be %s, got %s", s.name, form, describe(v)))
    end
    for _, x in ipairs(vals) do
      if math.type(x) ~= "integer" then bad(string.format("%s must hold integers, got %s", s.name, describe(x))) end
      if x < 0 then bad(string.format("%s must be >= 0, got %d", s.name, x)) end
    end
  elseif t == "int2" then
    local vals = type(v) == "table" and v or { v }
    if #vals < 1 or #vals > 2 then bad(string.format("%s must be an integer or a pair {h, w}", s.name)) end
    for _, x in ipairs(vals) do
      if math.type(x) ~= "integer" then bad(string.format("%s must hold integers, got %s", s.name, describe(x))) end
      -- sizes and steps are positive; paddings and croppings may be 0
      if x < (zero_ok[s.name] and 0 or 1) then
        bad(string.format("%s must be %s, got %d", s.name, zero_ok[s.name] and ">= 0" or "positive", x))
      end
    end
  elseif t == "shape" then
    if type(v) ~= "table" then bad(string.format("%s must be a list of sizes like {28, 28, 1}", s.name)) end
    -- sizes; the layer itself checks other lists (Reshape's -1, Permute's axes)
    local sizes = s.name == "input_shape"
    for _, x in ipairs(v) do
      if math.type(x) ~= "integer" or (sizes and x < 1) then
        bad(string.format("%s must hold %s, got %s", s.name, sizes and "positive integers" or "integers", describe(x)))
      end
    end
  elseif t == "range" then
    if not (type(v) == "number" or (type(v) == "table" and #v == 2 and type(v[1]) == "number"
                                    and type(v[2]) == "number" and next(v, 2) == nil)) then
      bad(string.format("%s must be a number or a pair {lo, hi}, got %s", s.name, describe(v)))
    end
    if type(v) == "table" and v[1] > v[2] then
      bad(string.format("%s pair {%s, %s} is reversed (lower must be <= upper)", s.name, v[1], v[2]))
    end
  elseif t == "regularizer" then
    if type(v) ~= "table" or (v.l1 == nil and v.l2 == nil) then
      bad(string.format("%s must be nn.regularizers.l1(...), l2(...) or l1_l2(...)", s.name))
    end
  end
  return v
end

local function arg_names(info)
  local names = {}
  for _, s in ipairs(info.args) do names[#names + 1] = s.name end
  return table.concat(names, ", ")
end

-- Parses a call's arguments against the schema; returns the named table.
local function parse_args(info, ...)
  local n = select("#", ...)
  local given = { ... }
  local first = info.args[1]
  -- nn.Dense{10, activation = "relu"}: one table of arguments.  When the
  -- first argument is a shape, a table of plain integers is that shape
  -- (nn.Reshape({7, 7, 16})), and a table holding a table or names is the
  -- arguments (nn.Reshape{{7, 7, 16}}, nn.Reshape{target_shape = {...}}).
  local function is_shape(t)
    if #t == 0 then return false end
    for k, v in pairs(t) do
      if math.type(k) ~= "integer" or type(v) == "table" then return false end
    end
    return true
  end
  local tbl
  if n == 0 then
    tbl = {}
  elseif n == 1 and type(given[1]) == "table" and getmetatable(given[1]) == nil
      and not (info.positional > 0 and first and first.type == "shape" and is_shape(given[1])) then
    tbl = given[1]
  else
    tbl = given
  end
  local out = {}
  local npos = 0
  for i = 1, #tbl do
    if i > info.positional then
      error(string.format("bad argument #%d to '%s' (at most %d positional arguments; name the others: %s)",
        i, info.name, info.positional, arg_names(info)), 3)
    end
    npos = i
  end
  for k in pairs(tbl) do
    if type(k) ~= "number" then
      local known = k == "dtype" -- every layer's: its dtype policy
      for _, s in ipairs(info.args) do if s.name == k then known = true end end
      if not known then
        error(string.format("bad argument '%s' to '%s' (unknown argument; valid: %s)", tostring(k), info.name,
          arg_names(info)), 3)
      end
    elseif math.type(k) ~= "integer" or k < 1 or k > npos then
      error(string.format("bad argument to '%s' (unexpected key %s)", info.name, tostring(k)), 3)
    end
  end
  for i, s in ipairs(info.args) do
    local v, pos = tbl[s.name], nil
    if i <= npos then
      if v ~= nil then
        error(string.format("bad argument #%d to '%s' (%s given both by position and by name)", i, info.name, s.name), 3)
      end
      v, pos = tbl[i], i
    end
    if v == nil then v = default_value(s) end
    out[s.name] = check_arg(info.name, s, v, pos)
  end
  out.dtype = tbl.dtype
  return out
end

local types -- name -> schema info, loaded on first use

local function load_types()
  types = C.layer_types()
  return types
end

function M.types()
  return types or load_types()
end

-- Keras's automatic names: "dense", "dense_1", ...
-- Names given so far, by the user or by auto_name: an automatic name
-- skips them (a user's "dense_1" and the second automatic Dense would
-- otherwise share a name, which a model refuses).
local taken_names = {}

function M.auto_name(tname)
  local base = snake(tname)
  local name
  repeat
    counters[base] = (counters[base] or 0) + 1
    name = counters[base] == 1 and base or base .. "_" .. (counters[base] - 1)
  until not taken_names[name]
  taken_names[name] = true
  return name
end

function M.new(tname, ...)
  local info = M.types()[tname]
  if not info then error(string.format("no layer type '%s'", tname), 2) end
  local args = parse_args(info, ...)
  local name = args.name or M.auto_name(tname)
  taken_names[name] = true
  -- the core names the layer in its errors and metrics as summary() does
  -- the core's own checks (an unknown activation) point at the caller too
  -- (level 2: the constructors tail-call new)
  local ok, handle = pcall(C.layer_new, tname, setmetatable({ name = name }, { __index = args }))
  if not ok then error(handle, 2) end
  if args.dtype ~= nil then
    if type(args.dtype) ~= "string" then
      error(string.format("bad argument 'dtype' to '%s' (a policy name expected: float32 or mixed_bfloat16)", tname), 2)
    end
    local okp, err = pcall(C.layer_set_policy, handle, args.dtype)
    if not okp then error(err, 2) end
  end
  local self = setmetatable({ type = tname, args = args, handle = handle, name = name }, Layer)
  if args.input_shape then self:build(args.input_shape) end
  return self
end

-- The Lua object of a core layer (one a model file made).
function M.wrap(handle)
  local args, tname = C.layer_args(handle)
  local self = setmetatable({ type = tname, args = args, handle = handle, name = args.name or tname }, Layer)
  return self
end

-- nn.Lambda(f, {output_shape =, name =}): a Lua function of tensors,
-- f(x, training) (f({x1, x2}, training) for several inputs), as a layer.  It
-- trains (backward runs f again on the tape); a model holding one cannot be
-- saved, and it runs on one thread at a time.
function M.Lambda(f, o)
  if type(f) ~= "function" then
    error(string.format("bad argument #1 to 'Lambda' (function expected, got %s)", type(f)), 2)
  end
  o = o or {}
  for k in pairs(o) do
    if k ~= "output_shape" and k ~= "name" then
      error(string.format("bad argument '%s' to 'Lambda' (unknown; valid: output_shape, name)", tostring(k)), 2)
    end
  end
  local shape = o.output_shape
  if shape ~= nil then
    local ok = type(shape) == "table" and #shape <= 7
    for _, d in ipairs(ok and shape or {}) do ok = ok and math.type(d) == "integer" and d >= 1 end
    if not ok then
      error("bad argument 'output_shape' to 'Lambda' (a sample shape of at most 7 positive sizes, like {10})", 2)
    end
  end
  if o.name ~= nil and type(o.name) ~= "string" then error("bad argument 'name' to 'Lambda' (a string)", 2) end
  return M.wrap(C.lambda_new(f, o.name or M.auto_name("Lambda"), o.output_shape))
end

function Layer:build(shape)
  self.output_shape = C.layer_build(self.handle, shape)
  self.input_shape = shape
  return self.output_shape
end

function Layer:weights()
  return C.layer_weights(self.handle)
end

function Layer:count_params()
  local total, trainable = 0, 0
  for _, w in ipairs(self:weights()) do
    local n = w.tensor:numel()
    total = total + n
    if w.trainable then trainable = trainable + n end
  end
  return total, trainable
end

local function number_text(v) return v ~= v and "nan" or tostring(v) end

-- layer:adapt(x) (Normalization): learns each feature's mean and
-- variance over every sample and position of x (a tensor, any dtype, or a
-- dataset, whose batches' x are read), in chunks merged exactly (Chan's
-- formula), and keeps them in the layer's weights, so they are saved with
-- the model.  Returns the layer.
function Layer:adapt(x, o)
  if self.type ~= "Normalization" then
    error(string.format("%s: adapt is for Normalization layers (TextVectorization has its own)", self.name), 2)
  end
  local ds = require("lunet.dataset").is(x) and x or nil
  if not ds and (not C.is_tensor(x) or x:dim() < 2) then
    error(string.format("%s: adapt expects a batch of samples (a tensor with a batch axis, or a dataset), got %s",
      self.name, C.is_tensor(x) and ("a tensor of shape (" .. table.concat(x:shape(), ", ") .. ")") or type(x)), 2)
  end
  local n_total, mean, m2, c = 0, {}, {}, nil
  local prev = C.set_no_grad(true)
  -- merges the rows of t (N, ..., C) into the running moments
  local function add(t)
    local shape = t:shape()
    if not c then
      c = shape[#shape]
      if not C.layer_built(self.handle) then self:build({ table.unpack(shape, 2) }) end
      local have = self:weights()[1].tensor:shape()[1]
      if have ~= c then
        error(string.format("%s: adapt got %d features (x of shape (%s)), the layer was built for %d", self.name, c,
          table.concat(shape, ", "), have), 0)
      end
      for k = 1, c do mean[k], m2[k] = 0, 0 end
    end
    local bs = (o and o.batch_size) or 1024
    for first = 1, shape[1], bs do
      local flat = C.take_rows(t, first, math.min(bs, shape[1] - first + 1)):float():reshape(-1, c)
      local n = flat:shape()[1]
      local bm = flat:mean(1):totable()
      local bv = (flat - flat:mean(1, true)):square():mean(1):totable()
      for k = 1, c do
        local delta, total = bm[k] - mean[k], n_total + n
        mean[k] = mean[k] + delta * n / total
        m2[k] = m2[k] + bv[k] * n + delta * delta * n_total * n / total
      end
      n_total = n_total + n
    end
  end
  local ok, err = pcall(function()
    if ds then
      local order = ds:order(1)
      for step = 1, #ds do add((ds:batch(step, order))) end
    else
      add(x)
    end
  end)
  C.set_no_grad(prev)
  if not ok then error(err, 0) end
  if n_total == 0 then error(string.format("%s: adapt got no samples", self.name), 2) end
  local var = {}
  for k = 1, c do
    var[k] = m2[k] / n_total
    if mean[k] ~= mean[k] or var[k] ~= var[k] or math.abs(mean[k]) == math.huge or var[k] == math.huge then
      error(string.format("%s: adapt: feature %d has NaN or infinite values (mean %s, variance %s); clean the data " ..
        "first (a NaN statistic would make every output NaN)", self.name, k - 1, number_text(mean[k]),
        number_text(var[k])), 2)
    end
  end
  self:set_weights({ C.tensor(mean), C.tensor(var), C.tensor({ n_total }) })
  return self
end

-- Copies of the weights, off the tape.
function Layer:get_weights()
  local out = {}
  local prev = C.set_no_grad(true)
  for i, w in ipairs(self:weights()) do out[i] = w.tensor:clone() end
  C.set_no_grad(prev)
  return out
end

-- list[first], list[first + 1], ... as tensors for the weights ws of this
-- layer, every shape checked before anything is assigned; nil and the
-- message when one does not fit (`k0`: the entries' numbering before first).
function Layer:weights_from(ws, list, first, k0)
  local out = {}
  for i, w in ipairs(ws) do
    local src, at = list[first + i - 1], (k0 or 0) + i
    if type(src) == "table" and getmetatable(src) == nil then
      local ok, t = pcall(C.tensor, src)
      if not ok then return nil, string.format("%s: entry %d for weight %d (%s): %s", self.name, at, i, w.name, t) end
      src = t
    end
    if not C.is_tensor(src) then
      return nil, string.format("%s: entry %d for weight %d (%s) is %s, not a tensor", self.name, at, i, w.name,
        type(src))
    end
    local a, b = w.tensor:shape(), src:shape()
    if table.concat(a, ",") ~= table.concat(b, ",") then
      return nil, string.format("%s: weight %d (%s) has shape (%s), got (%s) (entry %d)", self.name, i, w.name,
        table.concat(a, ", "), table.concat(b, ", "), at)
    end
    out[i] = src
  end
  return out
end

function Layer:set_weights(list)
  local ws = self:weights()
  if type(list) ~= "table" or #list ~= #ws then
    error(string.format("%s: set_weights expects %d tensors, got %s", self.name, #ws,
      type(list) == "table" and #list or type(list)), 2)
  end
  local src, err = self:weights_from(ws, list, 1)
  if not src then error(err, 2) end
  for i, w in ipairs(ws) do C.assign(w.tensor, src[i]) end
end

-- The padding masks of tensors that direct calls made (Embedding with
-- mask_zero, and the layers that pass a mask on), as Keras's _keras_mask:
-- the next direct call on such a tensor honours it, as a model would.
-- Weak keys: a mask lives as long as its tensor.
local eager_masks = setmetatable({}, { __mode = "k" })

--- mask_of(tensor) -> the padding mask a direct layer call gave it, or nil
function M.mask_of(t) return eager_masks[t] end

-- Runs the layer on x (a tensor, or a list for several inputs; one result
-- per output), or adds a call to a functional model's graph when x holds
-- symbolic tensors (nn.Input, other layers' outputs).
function Layer:apply(x, training)
  -- layer(x, true), or Keras's keyword as a table: layer(x, {training = true})
  if type(training) == "table" and getmetatable(training) == nil then
    for k in pairs(training) do
      if k ~= "training" then
        error(string.format("%s: unknown call option '%s' (valid: training)", self.name, tostring(k)), 3)
      end
    end
    training = training.training
  end
  if training ~= nil and type(training) ~= "boolean" then
    error(string.format("%s: training must be true or false, got %s", self.name, type(training)), 3)
  end
  if type(x) ~= "table" and type(x) ~= "userdata" then
    error(string.format("%s: called on %s; give a tensor, a model's symbolic tensor, or a list of them", self.name,
      x == nil and "nil" or type(x)), 3)
  end
  local xs, listed = graph.symbolic_list(x, self.name)
  if xs then
    if training ~= nil then -- Keras's always-on dropout (Monte Carlo) in a graph: not built, so refused
      error(string.format("%s: a training flag on a call in a model's graph is not supported (the model's " ..
        "predict and fit decide the mode); for dropout at prediction time call the layers directly", self.name), 3)
    end
    return graph.call(self, xs, listed)
  end
  local masks = {}
  for i, t in ipairs(C.is_tensor(x) and { x } or x) do masks[i] = eager_masks[t] or false end
  local outs, out_masks = C.layer_call_masked(self.handle, x, training or false, false, masks)
  for j, t in ipairs(outs) do
    if out_masks[j] then eager_masks[t] = out_masks[j] end
  end
  return table.unpack(outs)
end

-- Sets an argument that Keras takes per call (use_causal_mask) at the
-- layer's first call; a later call may not change it.
function Layer:fix_arg(name, value)
  local current = C.layer_args(self.handle)[name]
  if current == value then return end
  if C.layer_built(self.handle) then
    error(string.format("%s: it was first called with %s = %s; a layer keeps its first call's %s (make a second layer for the other)",
      self.name, name, tostring(current), name), 3)
  end
  C.layer_set_arg(self.handle, name, value)
  self.args[name] = value
end

-- How layer types whose Keras call takes more than inputs are called.
local call_forms = {}

local mha_options = { attention_mask = true, use_causal_mask = true, return_attention_scores = true, training = true }

-- mha(query, value[, key][, {attention_mask =, use_causal_mask =,
-- return_attention_scores =, training =}]): Keras's call.  attention_mask
-- (N, T, S) is true (nonzero) where query step t may attend to value step s.
function call_forms.MultiHeadAttention(self, query, value, key, opts)
  if opts == nil and type(key) == "table" and getmetatable(key) == nil then key, opts = nil, key end
  opts = opts or {}
  if type(opts) ~= "table" then error(string.format("%s: the options must be a table, got %s", self.name, type(opts)), 3) end
  for k in pairs(opts) do
    if not mha_options[k] then
      error(string.format("%s: unknown call option '%s' (valid: attention_mask, use_causal_mask, return_attention_scores, training)",
        self.name, tostring(k)), 3)
    end
  end
  if value == nil then
    error(string.format("%s: call it as layer(query, value[, key][, options]); for self-attention pass the query twice", self.name), 3)
  end
  if opts.use_causal_mask ~= nil then self:fix_arg("use_causal_mask", opts.use_causal_mask and true or false) end
  local xs = { query, value, key or value }
  if opts.attention_mask ~= nil then xs[4] = opts.attention_mask end
  if C.layer_built(self.handle) and C.layer_input_count(self.handle) ~= #xs then
    error(string.format("%s: it was first called %s an attention_mask; a layer keeps its first call's inputs (pass an all-true mask for no masking)",
      self.name, #xs == 4 and "without" or "with"), 3)
  end
  local out, scores = self:apply(xs, opts.training)
  if opts.return_attention_scores then return out, scores end
  return out
end

-- rnn(x[, {initial_state = {h[, c]}, training =}]) (or rnn(x, training)):
-- Keras's call of a recurrent layer; with return_state it returns the
-- output and the final states.
local function rnn_call(self, x, opts)
  if type(opts) == "boolean" or opts == nil then return self:apply(x, opts) end
  if type(opts) ~= "table" or getmetatable(opts) ~= nil then
    error(string.format("%s: the second argument is a table of options {initial_state =, training =}", self.name), 3)
  end
  for k in pairs(opts) do
    if k ~= "initial_state" and k ~= "training" then
      error(string.format("%s: unknown call option '%s' (valid: initial_state, training)", self.name, tostring(k)), 3)
    end
  end
  local xs = { x }
  if opts.initial_state ~= nil then
    local st = opts.initial_state
    if type(st) ~= "table" or getmetatable(st) ~= nil then st = { st } end
    local want = self.type == "LSTM" and 2 or 1
    if #st ~= want then
      error(string.format("%s: initial_state needs %d tensor%s (%s), got %d", self.name, want, want == 1 and "" or "s",
        self.type == "LSTM" and "h and c" or "h", #st), 3)
    end
    for i, t in ipairs(st) do xs[1 + i] = t end
  end
  if C.layer_built(self.handle) and C.layer_input_count(self.handle) ~= #xs then
    error(string.format("%s: it was first called %s initial_state; a layer keeps its first call's inputs", self.name,
      #xs > 1 and "without" or "with"), 3)
  end
  return self:apply(#xs == 1 and x or xs, opts.training)
end
call_forms.LSTM, call_forms.GRU, call_forms.SimpleRNN = rnn_call, rnn_call, rnn_call

-- layer(x) on tensors runs it (a list for several inputs; one result per
-- output); on symbolic tensors (nn.Input, other layers' outputs) it adds a
-- call to a functional model's graph.  Some types take more (call_forms).
function Layer:__call(...)
  local form = call_forms[self.type]
  if form then return form(self, ...) end
  return self:apply(...)
end

function Layer:__tostring()
  return string.format("%s(name=%s)", self.type, self.name)
end

-- ---- Bidirectional: a wrapper of two recurrent layers ----

local Bidirectional = {}
M.Bidirectional = Bidirectional

function Bidirectional.__index(self, k)
  if k == "trainable" then return self.forward_layer.trainable and self.backward_layer.trainable end
  return Bidirectional[k]
end

function Bidirectional.__newindex(self, k, v)
  if k == "trainable" then
    self.forward_layer.trainable, self.backward_layer.trainable = v, v
    return
  end
  rawset(self, k, v)
end

local merges = { concat = "Concatenate", sum = "Add", mul = "Multiply", ave = "Average" }
local rnn_types = { LSTM = true, GRU = true, SimpleRNN = true }

-- nn.Bidirectional(layer, {merge_mode = "concat", backward_layer, name}):
-- Keras's.  The layer reads the sequence forwards, a copy of it (or
-- backward_layer) backwards (go_backwards flipped); with return_sequences
-- the backward sequence is put back in step order (nn.Reverse) before the
-- two merge: "concat" (default), "sum", "mul", "ave", or "none" for both
-- outputs.  With return_state the final states follow: forward's, then
-- backward's.  Weights: the forward layer's, then the backward layer's.
function M.make_bidirectional(layer, o)
  if getmetatable(layer) ~= Layer or not rnn_types[layer.type] then
    error("bad argument #1 to 'Bidirectional' (an nn.LSTM, nn.GRU or nn.SimpleRNN layer expected)", 3)
  end
  o = o or {}
  for k in pairs(o) do
    if k ~= "merge_mode" and k ~= "backward_layer" and k ~= "name" then
      error(string.format("bad argument '%s' to 'Bidirectional' (unknown; valid: merge_mode, backward_layer, name)", tostring(k)), 2)
    end
  end
  local mode = o.merge_mode == nil and "concat" or o.merge_mode
  if mode ~= "none" and mode ~= false and not merges[mode] then
    error(string.format("bad argument 'merge_mode' to 'Bidirectional' (concat, sum, mul, ave or none; got %s)", tostring(mode)), 2)
  end
  if C.layer_built(layer.handle) then
    error("bad argument #1 to 'Bidirectional' (the layer was already called; give Bidirectional a fresh one)", 3)
  end
  -- Keras's: each direction's masked steps output zeros, so the merged
  -- sequence is zero there (the states still skip them)
  local zero_masked = C.layer_args(layer.handle).return_sequences == true
  layer:fix_arg("zero_output_for_mask", zero_masked)
  local fargs = C.layer_args(layer.handle)
  local back = o.backward_layer
  if back == nil then
    local args = {}
    for k, v in pairs(fargs) do if k ~= "name" and k ~= "input_shape" then args[k] = v end end
    if fargs.go_backwards then
      error("bad argument #1 to 'Bidirectional' (the forward layer has go_backwards = true; Bidirectional " ..
        "makes the backward direction itself: give it a layer with go_backwards = false)", 3)
    end
    args.go_backwards = true
    args.name = "backward_" .. layer.name
    back = M.new(layer.type, args)
  elseif getmetatable(back) ~= Layer or back.type ~= layer.type then
    error("bad argument 'backward_layer' to 'Bidirectional' (a layer of the forward layer's type expected)", 3)
  else
    local bargs = C.layer_args(back.handle)
    for _, k in ipairs{ "return_sequences", "return_state", "units" } do
      if bargs[k] ~= fargs[k] then
        error(string.format("bad argument 'backward_layer' to 'Bidirectional' (its %s differs from the forward layer's)", k), 2)
      end
    end
    if C.layer_built(back.handle) then
      error("bad argument 'backward_layer' to 'Bidirectional' (the layer was already called; give a fresh one)", 2)
    end
    if (bargs.go_backwards == true) == (fargs.go_backwards == true) then
      error("bad argument 'backward_layer' to 'Bidirectional' (the forward and backward layers both have " ..
        "go_backwards = " .. tostring(fargs.go_backwards == true) .. "; the backward layer needs go_backwards = " ..
        tostring(fargs.go_backwards ~= true) .. ", as Keras requires)", 2)
    end
    back:fix_arg("zero_output_for_mask", zero_masked)
  end
  local self = setmetatable({ type = "Bidirectional", name = o.name or M.auto_name("Bidirectional"),
    forward_layer = layer, backward_layer = back, merge_mode = mode, args = { merge_mode = mode },
    sequences = fargs.return_sequences, states = fargs.return_state }, Bidirectional)
  -- the backward output back in order; its mask stays the input's (Keras's
  -- Bidirectional.compute_mask: the backward layer's is not reversed)
  if self.sequences then
    self.reverse = M.new("Reverse", { axis = 1, flip_mask = false, name = self.name .. "_reverse" })
  end
  if merges[mode] then self.merge = M.new(merges[mode], { name = self.name .. "_" .. mode }) end
  if fargs.input_shape then
    self.args.input_shape = fargs.input_shape
    self:build(fargs.input_shape)
  end
  return self
end

-- bi(x[, {initial_state = {forward states..., backward states...}, training}])
function Bidirectional:__call(x, opts)
  local fo, bo = opts, opts
  if type(opts) == "table" and getmetatable(opts) == nil and opts.initial_state then
    local st, n = opts.initial_state, self.forward_layer.type == "LSTM" and 2 or 1
    if type(st) ~= "table" or #st ~= 2 * n then
      error(string.format("%s: initial_state needs %d tensors (the forward layer's states, then the backward layer's)",
        self.name, 2 * n), 2)
    end
    fo, bo = { initial_state = { table.unpack(st, 1, n) }, training = opts.training },
      { initial_state = { table.unpack(st, n + 1, 2 * n) }, training = opts.training }
  end
  local f = { self.forward_layer(x, fo) }
  local b = { self.backward_layer(x, bo) }
  if self.reverse then b[1] = self.reverse(b[1]) end
  local out = { f[1], b[1] }
  if self.merge then out = { self.merge({ f[1], b[1] }) } end
  if not self.output_shape and graph.is_symbolic(out[1]) then
    self.output_shape = out[1].shape
  end
  if self.states then
    for i = 2, #f do out[#out + 1] = f[i] end
    for i = 2, #b do out[#out + 1] = b[i] end
  end
  return table.unpack(out)
end

function Bidirectional:build(shape)
  local y = self(graph.Input{ shape = shape })
  self.output_shape = y.shape
  return self.output_shape
end

function Bidirectional:apply(x, training) return self(x, training) end

function Bidirectional:weights()
  local out = {}
  for _, w in ipairs(self.forward_layer:weights()) do out[#out + 1] = { name = "forward_" .. w.name, tensor = w.tensor, trainable = w.trainable } end
  for _, w in ipairs(self.backward_layer:weights()) do out[#out + 1] = { name = "backward_" .. w.name, tensor = w.tensor, trainable = w.trainable } end
  return out
end

Bidirectional.count_params = Layer.count_params
Bidirectional.get_weights = Layer.get_weights
Bidirectional.set_weights = Layer.set_weights
Bidirectional.weights_from = Layer.weights_from -- set_weights' (and a model's) checks

function Bidirectional:__tostring()
  return string.format("Bidirectional(name=%s, %s)", self.name, self.forward_layer.type)
end

function M.is_layer(l)
  local mt = getmetatable(l)
  return mt == Layer or mt == Bidirectional
end

-- The constructors made for layer types (nn.Dense ...) and their types'
-- names, to tell them from the rest of nn's API.
local constructors = setmetatable({}, { __mode = "k" })

local function constructor(name)
  local ctor = function(...) return M.new(name, ...) end
  constructors[ctor] = name
  return ctor
end

function M.install(nn)
  local mt = {}
  function mt.__index(t, k)
    local info = type(k) == "string" and M.types()[k]
    if info then
      local ctor = constructor(k)
      rawset(t, k, ctor)
      return ctor
    end
    if type(k) == "string" and k:match("^%u") then
      local names = {}
      for name in pairs(M.types()) do names[#names + 1] = name end
      table.sort(names)
      error(string.format("lunet has no layer or class '%s' (layers: %s)", k, table.concat(names, ", ")), 2)
    end
    return nil
  end
  setmetatable(nn, mt)
  for name in pairs(M.types()) do local _ = nn[name] end
end

-- A plugin file's types named as nn's functions: the message, said again
-- each time the file is loaded (the registry keeps the plugin).
local clashed = {}

function M.load_plugin(path)
  local before = {}
  for name in pairs(M.types()) do before[name] = true end
  C.load_plugin(path)
  load_types()
  local nn = package.loaded.lunet
  if nn then
    local clash = {}
    for name, info in pairs(types) do
      -- types of the program itself (nn.Lambda) keep their own constructors,
      -- and nn's functions stay (a type named Sequential replaced nn.Sequential)
      local have = rawget(nn, name)
      if info.plugin ~= "lua" and (have == nil or constructors[have]) then
        rawset(nn, name, constructor(name))
      elseif info.plugin ~= "lua" and not before[name] then
        clash[#clash + 1] = name
      end
    end
    if #clash > 0 then
      table.sort(clash)
      clashed[path] = string.format("load_plugin: %s: the layer type%s %s ha%s the name of nn.%s, which stay%s "
        .. "lunet's; rename the type in the plugin", tostring(path), #clash > 1 and "s" or "", table.concat(clash, ", "),
        #clash > 1 and "ve" or "s", table.concat(clash, ", nn."), #clash > 1 and "" or "s")
    end
  end
  if clashed[path] then error(clashed[path], 2) end
  return true
end

-- Checks a layer type's shipped test cases (the core's
-- lunet_check_layer_type): finite-difference gradients on the CPU in
-- inference and in training mode, then the outputs and gradients of every
-- other available backend against the CPU (1e-3 relative).  One entry per
-- case and mode: {args =, training =, max_error =, tolerance =, ok =,
-- error =, backends = {vulkan = {max_diff =, ok =, error =}}}.
function M.check_plugin(tname)
  if type(tname) ~= "string" then error("bad argument #1 to 'check_plugin' (a layer type name expected)", 2) end
  local results = C.check_layer(tname)
  if #results == 0 then -- an empty list would read as "nothing failed"
    error(string.format("check_plugin: layer type '%s' ships no test cases (its lunet_layer_type has ntests = 0), " ..
      "so nothing was checked; add lunet_layer_test entries to check it", tname), 2)
  end
  return results
end

function M.help(what)
  local tps = M.types()
  if what == nil then
    local names = {}
    for name in pairs(tps) do names[#names + 1] = name end
    table.sort(names)
    print("tensors:     nn.tensor{...}, nn.zeros, nn.ones, nn.rand, nn.randn, nn.arange; t:shape(), t:matmul(u),")
    print("             t:sum(axis), t:softmax(), t:requires_grad(true), loss:backward(), t.grad, t:to(\"vulkan\")")
    print("layers:      " .. table.concat(names, ", "))
    print("models:      nn.Sequential{...}; functional: x = nn.Input{shape = {...}}, y = layer(x), nn.Add()({a, b}),")
    print("             nn.Model{inputs = x, outputs = y}; nn.Lambda(function(x) ... end); layer.trainable = false")
    print("             model:compile{optimizer =, loss =, metrics =}, model:fit(x, y, {...}),")
    print("             model:evaluate, model:predict, model:summary(), model:save(path), nn.load_model(path)")
    print("training:    nn.optimizers.{SGD,Adam,AdamW,RMSprop}, nn.losses, nn.callbacks, nn.schedules")
    print("data:        nn.datasets.{cifar10,mnist,fashion_mnist}.load_data{...}, nn.augment.Sequential{...}")
    print("system:      nn.backends(), nn.use(name), nn.threads(n), nn.seed(n), nn.load_plugin(path)")
    print("see nn.help(\"Conv2D\") for a layer's arguments, and README.md for the whole API")
    return
  end
  if constructors[what] then what = constructors[what] end -- nn.help(nn.Dense)
  if type(what) ~= "string" then
    error(string.format("bad argument #1 to 'help' (a layer type's name, \"Dense\", or its constructor, nn.Dense, "
      .. "expected, got %s)", type(what)), 2)
  end
  local info = tps[what]
  if not info then error("no layer type '" .. what .. "'", 2) end
  print(string.format("nn.%s: %s  [plugin %s]", info.name, info.doc, info.plugin))
  for i, s in ipairs(info.args) do
    print(string.format("  %s%-20s %-11s %-16s %s", i <= info.positional and "*" or " ", s.name, s.type,
      s.required and "(required)" or ("= " .. s.default_text), s.doc))
  end
  print("  (* may be given by position)")
end

return M
