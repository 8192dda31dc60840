-- nn.export.onnx(model, path, {opset = 17}): the model as an ONNX file that
-- other runtimes (ONNX Runtime, TensorRT, OpenVINO, onnx2torch) read.
--
-- The graph is made here, layer by layer, from each layer's type, arguments
-- and weights; lunet.onnx (lua/onnx/lunet_onnx.c, protobuf-c) writes it.
-- The model's inputs and outputs keep lunet's layout (images NHWC, the
-- batch axis named "N"); inside, convolutions and pooling run channels
-- first as ONNX defines them, and a value is transposed only where a layer
-- needs the other layout (a chain of convolutions stays NCHW).  Layers
-- that act only in training (dropout, noise, random augmentation, activity
-- regularization) become nothing; RandomCrop becomes its inference
-- (the centred crop, resized).  Recurrent layers are ONNX's LSTM, GRU and
-- RNN operators; attention and the Transformer blocks are decomposed into
-- MatMul, Softmax and LayerNormalization.  Padding masks (Embedding's
-- mask_zero) travel as float (N, T) values beside the tensors and act where
-- lunet's layers use them (attention, masked mean, and recurrent layers,
-- which are then unrolled over their steps).  What cannot be written (a
-- Lambda, a plugin's own layer type) is an error naming the layer.
local C = require "lunet.core"

local M = {}

local OPSET_MIN, OPSET_MAX = 17, 17

local function fail(msg) error("nn.export.onnx: " .. msg, 0) end

-- ---- the graph being written ----

local Graph = {}
Graph.__index = Graph

local function new_graph()
  return setmetatable({ nodes = {}, initializers = {}, used = {}, consts = {} }, Graph)
end

-- A name not used yet, from `base`.
function Graph:fresh(base)
  base = (base or "v"):gsub("[^%w_%.%-/]", "_")
  local name, k = base, 1
  while self.used[name] do
    name = base .. "_" .. k
    k = k + 1
  end
  self.used[name] = true
  return name
end

-- Adds a node; returns its outputs' names (nout of them, default 1).
function Graph:node(op, inputs, attrs, nout, base)
  local outs = {}
  for i = 1, nout or 1 do outs[i] = self:fresh((base or self.prefix or op) .. "/" .. op .. (i > 1 and i or "")) end
  self.nodes[#self.nodes + 1] = { op = op, name = self:fresh("node/" .. outs[1]), inputs = inputs, outputs = outs,
    attrs = attrs }
  return table.unpack(outs)
end

-- A float32 initializer from a tensor (any shape, laid out as it is).
function Graph:tensor(t, base)
  local name = self:fresh((self.prefix or "w") .. "/" .. (base or "w"))
  self.initializers[#self.initializers + 1] = { name = name, dims = t:shape(), tensor = t }
  return name
end

-- A constant from Lua numbers: floats (dims default {#values}) or int64.
function Graph:floats(values, dims, base)
  local name = self:fresh((self.prefix or "c") .. "/" .. (base or "const"))
  local v = {}
  for i, x in ipairs(values) do v[i] = x + 0.0 end
  self.initializers[#self.initializers + 1] = { name = name, dims = dims or { #values }, float = v }
  return name
end

-- int64 constants are shared (axes, shapes, pads).
function Graph:ints(values, dims)
  local key = table.concat(values, ",") .. "|" .. table.concat(dims or { #values }, ",")
  if self.consts[key] then return self.consts[key] end
  local name = self:fresh("const/i64_" .. (#values <= 4 and table.concat(values, "_"):gsub("-", "m") or #values))
  self.initializers[#self.initializers + 1] = { name = name, dims = dims or { #values }, int64 = values }
  self.consts[key] = name
  return name
end

function Graph:scalar(x, base) return self:floats({ x }, {}, base) end

-- ---- values and their layout ----
-- A value: {name =, rank = (with the batch axis), cf = true when channels
-- come first (NCHW, NCL)}.  Sample axes are numbered as lunet numbers them
-- (1 .. rank - 1, channels last); onnx_axis maps them to the value's layout.

local function value(name, rank, cf) return { name = name, rank = rank, cf = cf or false } end

local function to_cf_perm(r)
  local p = { 0, r - 1 }
  for i = 1, r - 2 do p[#p + 1] = i end
  return p
end

local function to_cl_perm(r)
  local p = { 0 }
  for i = 2, r - 1 do p[#p + 1] = i end
  p[#p + 1] = 1
  return p
end

-- The ONNX axis of lunet sample axis a (1-based, negative from the end).
local function onnx_axis(v, a)
  if a < 0 then a = v.rank + a end
  if not v.cf or v.rank < 3 then return a end
  if a == v.rank - 1 then return 1 end
  return a + 1
end

function Graph:cl(v)
  if not v.cf then return v end
  v.cl_copy = v.cl_copy or value(self:node("Transpose", { v.name }, { perm = to_cl_perm(v.rank) }), v.rank, false)
  v.cl_copy.mask = v.mask
  return v.cl_copy
end

function Graph:cf(v)
  if v.cf or v.rank < 3 then return v end
  v.cf_copy = v.cf_copy or value(self:node("Transpose", { v.name }, { perm = to_cf_perm(v.rank) }), v.rank, true)
  v.cf_copy.mask = v.mask
  return v.cf_copy
end

-- A same-layout result of an elementwise op on v.
local function like(v, name) return value(name, v.rank, v.cf) end

-- The shape (without the batch axis) that broadcasts a per-feature vector
-- of `n` along lunet sample axis a of v, in v's layout.
local function feature_dims(v, a, n)
  local dims = {}
  for i = 1, v.rank - 1 do dims[i] = 1 end
  dims[onnx_axis(v, a)] = n
  -- leading ones can go (ONNX broadcasts from the right); trailing ones must stay
  while #dims > 1 and dims[1] == 1 do table.remove(dims, 1) end
  return dims
end

-- ---- weights ----

local function weights_of(layer)
  local w = {}
  for _, e in ipairs(layer:weights()) do w[e.name] = e.tensor:to("cpu") end
  return w
end

local function tolist(t) return t:reshape({ t:numel() }):totable() end

-- Rows [first, first + count) (1-based) of a 2-D tensor.
local rows = C.take_rows

-- ---- activations ----

local act_ops = { relu = "Relu", sigmoid = "Sigmoid", tanh = "Tanh" }

function Graph:activation(v, name)
  if not name or name == "linear" then return v end
  if act_ops[name] then return like(v, self:node(act_ops[name], { v.name })) end
  if name == "softmax" or name == "log_softmax" then
    v = self:cl(v)
    return like(v, self:node(name == "softmax" and "Softmax" or "LogSoftmax", { v.name }, { axis = -1 }))
  end
  if name == "leaky_relu" then return like(v, self:node("LeakyRelu", { v.name }, { alpha = 0.2 })) end
  if name == "elu" then return like(v, self:node("Elu", { v.name }, { alpha = 1.0 })) end
  if name == "silu" or name == "swish" then
    return like(v, self:node("Mul", { v.name, self:node("Sigmoid", { v.name }) }))
  end
  if name == "gelu" then -- 0.5 x (1 + erf(x / sqrt 2)): ONNX has no Gelu before opset 20
    local e = self:node("Erf", { self:node("Mul", { v.name, self:scalar(1 / math.sqrt(2), "inv_sqrt2") }) })
    local one = self:node("Add", { e, self:scalar(1, "one") })
    return like(v, self:node("Mul", { self:node("Mul", { v.name, self:scalar(0.5, "half") }), one }))
  end
  fail(string.format("activation '%s' has no ONNX translation", name))
end

local rnn_acts = { tanh = "Tanh", sigmoid = "Sigmoid", relu = "Relu", linear = "Affine" } -- Affine: alpha 1, beta 0

-- ---- layers: emit[type](g, layer, ins, w) -> outputs (values) ----

local emit = {}

local function identity(_, _, ins) return ins[1] end
for _, t in ipairs { "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ActivityRegularization",
  "RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom" } do
  emit[t] = identity
end

-- x W + b on the last axis, W (in, out) as a tensor.
function Graph:dense(v, kernel, bias)
  v = self:cl(v)
  local y = self:node("MatMul", { v.name, self:tensor(kernel, "kernel") })
  if bias then y = self:node("Add", { y, self:tensor(bias, "bias") }) end
  return value(y, v.rank, false)
end

emit.Dense = function(g, l, ins, w)
  return g:activation(g:dense(ins[1], w.kernel, w.bias), l.args.activation)
end

-- TensorFlow's "same": out = ceil(in / s); the odd pixel of padding goes
-- to the end.  Returns begin and end pads per spatial axis.
local function same_pads(sizes, k, s)
  local b, e = {}, {}
  for i, n in ipairs(sizes) do
    local out = (n + s[i] - 1) // s[i]
    local total = math.max((out - 1) * s[i] + k[i] - n, 0)
    b[i], e[i] = total // 2, total - total // 2
  end
  return b, e
end

local function pair(v)
  if type(v) == "table" then return { v[1], v[2] or v[1] } end
  return { v, v }
end

-- A "sides" argument (n, {h, w} or {{top, bottom}, {left, right}}) as
-- {top, bottom, left, right}.
local function sides(v)
  if type(v) == "table" and type(v[1]) == "table" then return { v[1][1], v[1][2], v[2][1], v[2][2] } end
  local p = pair(v)
  return { p[1], p[1], p[2], p[2] }
end

-- Pads of a convolution with kernel k, strides s and dilation d (nil: 1),
-- the padding computed on the dilated extent (k - 1) d + 1 as the layer does.
local function conv_pads(l, spatial, k, s, d)
  local pad = l.args.padding
  local n = #k
  local p = {}
  if d then
    local ext = {}
    for i = 1, n do ext[i] = (k[i] - 1) * d[i] + 1 end
    k = ext
  end
  if pad == "same" then
    local b, e = same_pads(spatial, k, s)
    for i = 1, n do p[i], p[n + i] = b[i], e[i] end
  elseif pad == "causal" then
    for i = 1, n do p[i], p[n + i] = k[i] - 1, 0 end
  else
    for i = 1, 2 * n do p[i] = 0 end
  end
  return p
end

local function spatial_of(l) -- the input's spatial sizes (lunet order)
  local s = l.input_shape
  local out = {}
  for i = 1, #s - 1 do out[i] = s[i] end
  return out
end

emit.Conv2D = function(g, l, ins, w)
  local x = g:cf(ins[1])
  local k, s, d = pair(l.args.kernel_size), pair(l.args.strides), pair(l.args.dilation_rate or 1)
  local inputs = { x.name, g:tensor(w.kernel:permute({ 4, 3, 1, 2 }), "kernel") }
  if w.bias then inputs[3] = g:tensor(w.bias, "bias") end
  local y = g:node("Conv", inputs, { kernel_shape = k, strides = s, dilations = d, group = l.args.groups or 1,
    pads = conv_pads(l, spatial_of(l), k, s, d) })
  return g:activation(value(y, 4, true), l.args.activation)
end

emit.Conv1D = function(g, l, ins, w)
  local x = g:cf(ins[1])
  local k, s, d = { l.args.kernel_size }, { l.args.strides }, { l.args.dilation_rate or 1 }
  local inputs = { x.name, g:tensor(w.kernel:permute({ 3, 2, 1 }), "kernel") }
  if w.bias then inputs[3] = g:tensor(w.bias, "bias") end
  local y = g:node("Conv", inputs, { kernel_shape = k, strides = s, dilations = d,
    pads = conv_pads(l, spatial_of(l), k, s, d) })
  return g:activation(value(y, 3, true), l.args.activation)
end

-- Keras's depthwise kernel (KH, KW, C, M) as ONNX's grouped one (C*M, 1, KH, KW):
-- output channel c*M + m reads input channel c.
local function depthwise_kernel(g, t)
  local s = t:shape()
  local flat = t:reshape({ s[1], s[2], s[3] * s[4] }):permute({ 3, 1, 2 })
  return g:tensor(flat:reshape({ s[3] * s[4], 1, s[1], s[2] }), "depthwise_kernel"), s[3]
end

local function depthwise(g, l, x, w, bias)
  local k, s, d = pair(l.args.kernel_size), pair(l.args.strides), pair(l.args.dilation_rate or 1)
  local kernel, c = depthwise_kernel(g, w.depthwise_kernel)
  local inputs = { x.name, kernel }
  if bias then inputs[3] = g:tensor(bias, "bias") end
  return value(g:node("Conv", inputs, { kernel_shape = k, strides = s, group = c, dilations = d,
    pads = conv_pads(l, spatial_of(l), k, s, d) }), 4, true)
end

emit.DepthwiseConv2D = function(g, l, ins, w)
  return g:activation(depthwise(g, l, g:cf(ins[1]), w, w.bias), l.args.activation)
end

emit.SeparableConv2D = function(g, l, ins, w)
  local d = depthwise(g, l, g:cf(ins[1]), w, nil)
  local inputs = { d.name, g:tensor(w.pointwise_kernel:permute({ 4, 3, 1, 2 }), "pointwise_kernel") }
  if w.bias then inputs[3] = g:tensor(w.bias, "bias") end
  local y = g:node("Conv", inputs, { kernel_shape = { 1, 1 } })
  return g:activation(value(y, 4, true), l.args.activation)
end

-- Keras's deconv_output_length: "valid" (H-1)s + K (H s when K < s), "same"
-- H s; the full transposed convolution is cropped by the pads of the
-- matching convolution (the odd pixel at the end), or extended by
-- output_padding when the kernel is smaller than the stride; K is the
-- dilated extent d (K - 1) + 1 with a dilation_rate.
emit.Conv2DTranspose = function(g, l, ins, w)
  local x = g:cf(ins[1])
  local kernel, s, d = pair(l.args.kernel_size), pair(l.args.strides), pair(l.args.dilation_rate or 1)
  local k = { d[1] * (kernel[1] - 1) + 1, d[2] * (kernel[2] - 1) + 1 } -- the dilated extent sizes the output
  local pads, extra = { 0, 0, 0, 0 }, { 0, 0 }
  local op, size = l.args.output_padding and pair(l.args.output_padding), spatial_of(l)
  for i = 1, 2 do
    if op then -- Keras's exact size; the window where TensorFlow's SAME conv_transpose starts it
      local full = (size[i] - 1) * s[i] + k[i]
      local out = full - 2 * (l.args.padding == "same" and k[i] // 2 or 0) + op[i]
      local cut = full - out
      if cut >= 0 then pads[i], pads[2 + i] = cut // 2, cut - cut // 2 else extra[i] = -cut end
    elseif k[i] < s[i] then
      extra[i] = s[i] - k[i]
    elseif l.args.padding == "same" then
      local total = k[i] - s[i]
      pads[i], pads[2 + i] = total // 2, total - total // 2
    end
  end
  local inputs = { x.name, g:tensor(w.kernel:permute({ 4, 3, 1, 2 }), "kernel") }
  if w.bias then inputs[3] = g:tensor(w.bias, "bias") end
  local y = g:node("ConvTranspose", inputs,
    { kernel_shape = kernel, strides = s, dilations = d, pads = pads, output_padding = extra })
  return g:activation(value(y, 4, true), l.args.activation)
end

local function pool(op, rank)
  return function(g, l, ins)
    local x = g:cf(ins[1])
    local k = rank == 4 and pair(l.args.pool_size) or { l.args.pool_size }
    local s = l.args.strides and (rank == 4 and pair(l.args.strides) or { l.args.strides }) or k
    local attrs = { kernel_shape = k, strides = s, pads = conv_pads(l, spatial_of(l), k, s) }
    if op == "AveragePool" then attrs.count_include_pad = 0 end -- TensorFlow averages the pixels inside
    return value(g:node(op, { x.name }, attrs), rank, true)
  end
end
emit.MaxPooling2D = pool("MaxPool", 4)
emit.AveragePooling2D = pool("AveragePool", 4)
emit.MaxPooling1D = pool("MaxPool", 3)

-- lunet's masked mean over the steps: sum(x m) / max(sum(m), 1).
local function masked_mean(g, l, x)
  x = g:cl(x)
  local m = g:node("Unsqueeze", { x.mask, g:ints({ 2 }) })
  local keep = l.args.keepdims and 1 or 0
  local sum = g:node("ReduceSum", { g:node("Mul", { x.name, m }), g:ints({ 1 }) }, { keepdims = keep })
  local cnt = g:node("ReduceSum", { m, g:ints({ 1 }) }, { keepdims = keep })
  local den = g:node("Max", { cnt, g:scalar(1, "one") })
  return value(g:node("Div", { sum, den }), keep == 1 and 3 or 2, false)
end

local function global_pool(op)
  return function(g, l, ins)
    local x = ins[1]
    if x.mask and x.rank == 3 then
      if op ~= "ReduceMean" then fail(string.format("layer %s: a masked input is not supported (as in Keras)", l.name)) end
      return masked_mean(g, l, x)
    end
    local axes = {}
    for a = 1, x.rank - 2 do axes[a] = onnx_axis(x, a) end
    local keep = l.args.keepdims and 1 or 0
    local y = g:node(op, { x.name }, { axes = axes, keepdims = keep })
    if keep == 1 then return like(x, y) end
    return value(y, 2, false)
  end
end
emit.GlobalAveragePooling2D = global_pool("ReduceMean")
emit.GlobalMaxPooling2D = global_pool("ReduceMax")
emit.GlobalAveragePooling1D = global_pool("ReduceMean")
emit.GlobalMaxPooling1D = global_pool("ReduceMax")

emit.Flatten = function(g, _, ins)
  local x = g:cl(ins[1])
  return value(g:node("Flatten", { x.name }, { axis = 1 }), 2, false)
end

emit.Reshape = function(g, l, ins)
  local x = g:cl(ins[1])
  local shape = { 0 } -- 0: the batch axis as it is
  for i, d in ipairs(l.args.target_shape) do shape[i + 1] = d end
  return value(g:node("Reshape", { x.name, g:ints(shape) }), #shape, false)
end

emit.Permute = function(g, l, ins)
  local x = g:cl(ins[1])
  local perm = { 0 }
  for i, d in ipairs(l.args.dims) do perm[i + 1] = d end
  return value(g:node("Transpose", { x.name }, { perm = perm }), x.rank, false)
end

-- y = x * scale + shift per feature of lunet axis `a`.
function Graph:affine(v, a, scale, shift)
  local dims = feature_dims(v, a, #scale)
  local y = self:node("Mul", { v.name, self:floats(scale, dims, "scale") })
  return like(v, self:node("Add", { y, self:floats(shift, dims, "shift") }))
end

-- Inference: (x - mean) / sqrt(var + eps) * gamma + beta, as one scale and shift.
emit.BatchNormalization = function(g, l, ins, w)
  local x = ins[1]
  local mean, var = tolist(w.moving_mean), tolist(w.moving_variance)
  local gamma = w.gamma and tolist(w.gamma)
  local beta = w.beta and tolist(w.beta)
  local scale, shift = {}, {}
  for i = 1, #mean do
    scale[i] = (gamma and gamma[i] or 1) / math.sqrt(var[i] + l.args.epsilon)
    shift[i] = (beta and beta[i] or 0) - mean[i] * scale[i]
  end
  return g:affine(x, l.args.axis, scale, shift)
end

-- (x - mean) / max(sqrt(variance), 1e-7) per feature of the last axis.
emit.Normalization = function(g, l, ins, w)
  -- not adapted: lunet refuses to predict; the graph would pass the data through
  if w.count and tolist(w.count)[1] == 0 then
    fail(string.format("layer %s: Normalization is not adapted (call layer:adapt(data) before exporting, or give it " ..
      "mean and variance)", l.name))
  end
  local mean, var = tolist(w.mean), tolist(w.variance)
  local scale, shift = {}, {}
  for i = 1, #mean do
    scale[i] = 1 / math.max(math.sqrt(var[i]), 1e-7)
    shift[i] = -mean[i] * scale[i]
  end
  return g:affine(ins[1], l.args.axis, scale, shift)
end

emit.Rescaling = function(g, l, ins)
  local x = ins[1]
  local y = g:node("Mul", { x.name, g:scalar(l.args.scale, "scale") })
  if l.args.offset ~= 0 then y = g:node("Add", { y, g:scalar(l.args.offset, "offset") }) end
  return like(x, y)
end

-- LayerNormalization over the last axis (width n); gamma and beta may be
-- absent (scale = false, center = false).
function Graph:layer_norm(v, gamma, beta, eps, n)
  v = self:cl(v)
  local ones = {}
  if not gamma then for i = 1, n do ones[i] = 1 end end
  local inputs = { v.name, gamma and self:tensor(gamma, "gamma") or self:floats(ones, { n }, "gamma") }
  if beta then inputs[3] = self:tensor(beta, "beta") end
  return value(self:node("LayerNormalization", inputs, { axis = -1, epsilon = eps }), v.rank, false)
end

emit.LayerNormalization = function(g, l, ins, w)
  return g:layer_norm(ins[1], w.gamma, w.beta, l.args.epsilon, l.input_shape[#l.input_shape])
end

emit.Activation = function(g, l, ins) return g:activation(ins[1], l.args.activation) end

emit.LeakyReLU = function(g, l, ins)
  return like(ins[1], g:node("LeakyRelu", { ins[1].name }, { alpha = l.args.negative_slope + 0.0 }))
end

emit.ReLU = function(g, l, ins)
  local x = ins[1]
  local slope = l.args.negative_slope
  local y = slope ~= 0 and g:node("LeakyRelu", { x.name }, { alpha = slope + 0.0 }) or g:node("Relu", { x.name })
  if l.args.max_value then y = g:node("Clip", { y, "", g:scalar(l.args.max_value, "max_value") }) end
  return like(x, y)
end

emit.Softmax = function(g, _, ins) -- lunet's Softmax takes the last axis only
  local x = g:cl(ins[1])
  return like(x, g:node("Softmax", { x.name }, { axis = -1 }))
end

emit.PReLU = function(g, _, ins, w)
  local x = g:cl(ins[1])
  return like(x, g:node("PRelu", { x.name, g:tensor(w.alpha, "alpha") }))
end

-- ---- merging ----

-- The inputs of an elementwise merge in the first one's layout.  Inputs of
-- one rank broadcast as ONNX does (size-1 axes); a shorter one would align
-- at the batch axis in ONNX where lunet and Keras put its size-1 axes after
-- it, so it is refused rather than exported wrong.
local function same_layout(g, ins, l)
  for i = 2, #ins do
    if l and ins[i].rank ~= ins[1].rank then
      fail(string.format("layer %s: inputs of ranks %d and %d (a merge broadcasting a shorter input) do not export "
        .. "yet; give the shorter one its size-1 axes with nn.Reshape first", l.name, ins[1].rank, ins[i].rank))
    end
  end
  local out = { ins[1] }
  for i = 2, #ins do out[i] = ins[1].cf and g:cf(ins[i]) or g:cl(ins[i]) end
  return out
end

local function chain(op)
  return function(g, l, ins)
    local xs = same_layout(g, ins, l)
    local y = xs[1].name
    for i = 2, #xs do y = g:node(op, { y, xs[i].name }) end
    return like(xs[1], y)
  end
end
emit.Add = chain("Add")
emit.Subtract = chain("Sub")
emit.Multiply = chain("Mul")

local function variadic(op)
  return function(g, l, ins)
    local xs = same_layout(g, ins, l)
    local names = {}
    for i, x in ipairs(xs) do names[i] = x.name end
    return like(xs[1], g:node(op, names))
  end
end
emit.Maximum = variadic("Max")
emit.Minimum = variadic("Min")

emit.Average = function(g, l, ins)
  local s = variadic("Sum")(g, l, ins)
  return like(s, g:node("Mul", { s.name, g:scalar(1 / #ins, "inv_count") }))
end

emit.Concatenate = function(g, l, ins)
  local xs = same_layout(g, ins)
  local names = {}
  for i, x in ipairs(xs) do names[i] = x.name end
  return like(xs[1], g:node("Concat", names, { axis = onnx_axis(xs[1], l.args.axis) }))
end

-- ---- images: padding, cropping, resizing ----

local INT64_MIN = math.mininteger

-- Slice of v along lunet sample axes: starts/stops per entry of `axes`.
function Graph:slice(v, axes, starts, stops, steps)
  local oaxes = {}
  for i, a in ipairs(axes) do oaxes[i] = onnx_axis(v, a) end
  local inputs = { v.name, self:ints(starts), self:ints(stops), self:ints(oaxes) }
  if steps then inputs[5] = self:ints(steps) end
  return like(v, self:node("Slice", inputs))
end

emit.ZeroPadding2D = function(g, l, ins)
  local x = ins[1]
  local p = sides(l.args.padding)
  local pads = {}
  for i = 1, 8 do pads[i] = 0 end
  local h, w = onnx_axis(x, 1), onnx_axis(x, 2)
  pads[h + 1], pads[4 + h + 1], pads[w + 1], pads[4 + w + 1] = p[1], p[2], p[3], p[4]
  return like(x, g:node("Pad", { x.name, g:ints(pads) }, { mode = "constant" }))
end

emit.Cropping2D = function(g, l, ins)
  local c = sides(l.args.cropping)
  local s = l.input_shape
  return g:slice(ins[1], { 1, 2 }, { c[1], c[3] }, { s[1] - c[2], s[2] - c[4] })
end

-- Keras's (height - target) // 2 from the top and the left.
emit.CenterCrop = function(g, l, ins)
  local s = l.input_shape
  local h, w = l.args.height, l.args.width
  if h > s[1] or w > s[2] then return g:resize(ins[1], s, h, w, true) end -- smaller images: smart_resize
  local top, left = (s[1] - h) // 2, (s[2] - w) // 2
  return g:slice(ins[1], { 1, 2 }, { top, left }, { top + h, left + w })
end

emit.UpSampling2D = function(g, l, ins)
  local x = ins[1]
  local f = pair(l.args.size)
  local scales = {}
  for i = 1, 4 do scales[i] = 1.0 end
  scales[onnx_axis(x, 1) + 1], scales[onnx_axis(x, 2) + 1] = f[1] + 0.0, f[2] + 0.0
  return like(x, g:node("Resize", { x.name, "", g:floats(scales, { 4 }, "scales") },
    { mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor" }))
end

-- The largest centred window of the target's aspect ratio (lunet_aspect_window).
local function aspect_window(h, w, oh, ow)
  local ch, cw = math.floor(w * oh / ow), math.floor(h * ow / oh)
  ch, cw = math.max(math.min(ch, h), 1), math.max(math.min(cw, w), 1)
  return (h - ch) // 2, (w - cw) // 2, ch, cw
end

-- Bilinear resize with half-pixel centres (tf.image.resize), optionally of
-- the centred window of the output's aspect ratio.
function Graph:resize(v, in_shape, oh, ow, crop)
  local x = self:cf(v)
  if crop then
    local top, left, ch, cw = aspect_window(in_shape[1], in_shape[2], oh, ow)
    if ch ~= in_shape[1] or cw ~= in_shape[2] then
      x = self:slice(x, { 1, 2 }, { top, left }, { top + ch, left + cw })
    end
  end
  -- the batch and channel sizes come from the input's shape
  local shape = self:node("Shape", { x.name })
  local nc = self:node("Slice", { shape, self:ints({ 0 }), self:ints({ 2 }) })
  local full = self:node("Concat", { nc, self:ints({ oh, ow }) }, { axis = 0 })
  return value(self:node("Resize", { x.name, "", "", full },
    { mode = "linear", coordinate_transformation_mode = "half_pixel" }), 4, true)
end

emit.Resizing = function(g, l, ins)
  return g:resize(ins[1], l.input_shape, l.args.height, l.args.width, l.args.crop_to_aspect_ratio)
end

emit.RandomCrop = function(g, l, ins)
  local s = l.input_shape
  if s[1] == l.args.height and s[2] == l.args.width then return ins[1] end
  return g:resize(ins[1], s, l.args.height, l.args.width, true)
end

-- ---- sequences ----

emit.Reverse = function(g, l, ins)
  local a = l.args.axis
  return g:slice(ins[1], { a }, { -1 }, { INT64_MIN }, { -1 })
end

-- With mask_zero, the padding mask (N, T): 1 where the id is above 0.
emit.Embedding = function(g, l, ins, w)
  local x = g:cl(ins[1])
  local ids = g:node("Cast", { x.name }, { to = 7 }) -- int64
  local y = value(g:node("Gather", { g:tensor(w.embeddings, "embeddings"), ids }, { axis = 0 }), x.rank + 1, false)
  if l.args.mask_zero then
    y.mask = g:node("Cast", { g:node("Greater", { x.name, g:scalar(0, "zero") }) }, { to = 1 })
  end
  return y
end

-- Keras's Masking: present = 1 - min(x == mask_value) over the features;
-- y = x * present, and present (without the feature axis) is the mask.
emit.Masking = function(g, l, ins)
  local x = g:cl(ins[1])
  local eq = g:node("Cast", { g:node("Equal", { x.name, g:scalar(l.args.mask_value, "mask_value") }) }, { to = 1 })
  local all = g:node("ReduceMin", { eq }, { axes = { -1 }, keepdims = 1 })
  local present = g:node("Sub", { g:scalar(1, "one"), all })
  local y = value(g:node("Mul", { x.name, present }), x.rank, false)
  y.mask = g:node("Squeeze", { present, g:ints({ -1 }) })
  return y
end

-- A constant (T, D) table broadcast to x's shape (N, T, D).
local function broadcast_table(g, x, table_name)
  local shape = g:node("Shape", { x.name })
  return value(g:node("Expand", { table_name, shape }), x.rank, false)
end

emit.PositionEmbedding = function(g, l, ins, w)
  local x = g:cl(ins[1])
  local t = l.input_shape[1]
  return broadcast_table(g, x, g:tensor(rows(w.embeddings, 1, t), "embeddings"))
end

emit.SinePositionEncoding = function(g, l, ins)
  local x = g:cl(ins[1])
  local t, d = l.input_shape[1], l.input_shape[2]
  local wave = l.args.max_wavelength
  local v = {}
  for p = 0, t - 1 do
    for i = 0, d - 1 do
      local angle = p * wave ^ (-(2 * (i // 2)) / d)
      v[#v + 1] = i % 2 == 1 and math.cos(angle) or math.sin(angle)
    end
  end
  return broadcast_table(g, x, g:floats(v, { t, d }, "encoding"))
end

-- Keras's gate blocks (columns of the kernels) in ONNX's order, as rows:
-- t (in, G*u) -> (1, G*u, in) with the blocks permuted by `order`.
local function gates(g, t, u, order, base)
  local tt = t:transpose()
  local parts = {}
  for i, k in ipairs(order) do parts[i] = rows(tt, k * u + 1, u) end
  local r = #parts > 1 and C.cat(parts, 1) or parts[1]
  local s = r:shape()
  return g:tensor(r:reshape({ 1, s[1], s[2] }), base)
end

-- Columns [first, first + count) (1-based) of a 2-D tensor.
local function cols(t, first, count) return rows(t:transpose(), first, count):transpose() end

-- An activation of the recurrent cells on a name.
function Graph:rnn_act(x, name)
  if name == "linear" then return x end
  return self:node(rnn_acts[name], { x })
end

-- A masked recurrent layer, unrolled over its (fixed) steps: ONNX's
-- operators know sequence lengths, not masks, and lunet (as Keras) keeps
-- the state at every masked step, wherever it is.  Step t:
--   LSTM  z = x_t W + b + h R; i, f, o = ract(z_i, z_f, z_o), g = act(z_c);
--         c' = f c + i g; h' = o act(c')
--   GRU   (reset_after) z, r = ract(x W + b_in + h R + b_rec) per gate;
--         hh = act(xh + r (h Rh + b_rec_h)); (not) hh = act(xh + (r h) Rh)
--         h' = z h + (1 - z) hh
--   RNN   h' = act(x_t W + b + h R)
-- then h = h + m_t (h' - h) (and c alike): a masked step keeps the state;
-- with zero_output_for_mask (Bidirectional's) the step outputs m_t h.
function Graph:unrolled(op, l, x, w, init)
  local u, T = l.args.units, l.input_shape[1]
  if type(T) == "table" then T = T[1] end
  local act, ract = l.args.activation, l.args.recurrent_activation or "sigmoid"
  local ng = op == "LSTM" and 4 or op == "GRU" and 3 or 1
  local bias = w.bias
  local two = bias and bias:dim() == 2 -- GRU's input and recurrent biases
  local xp = self:node("MatMul", { x.name, self:tensor(w.kernel, "kernel") })
  if bias then xp = self:node("Add", { xp, self:tensor(two and rows(bias, 1, 1):reshape({ ng * u }) or bias, "bias") }) end
  local zeros
  local function zero_state()
    if not zeros then
      local n = self:node("Slice", { self:node("Shape", { x.name }), self:ints({ 0 }), self:ints({ 1 }) })
      zeros = self:node("Expand", { self:floats({ 0 }, { 1, 1 }, "zero_state"),
        self:node("Concat", { n, self:ints({ u }) }, { axis = 0 }) })
    end
    return zeros
  end
  local h = init[1] and self:cl(init[1]).name or zero_state()
  local c = op == "LSTM" and (init[2] and self:cl(init[2]).name or zero_state()) or nil
  local R = w.recurrent_kernel
  local Rn, Rzr, Rh, brec
  if op == "GRU" and not l.args.reset_after then
    Rzr, Rh = self:tensor(cols(R, 1, 2 * u), "recurrent_kernel_zr"), self:tensor(cols(R, 2 * u + 1, u), "recurrent_kernel_h")
  else
    Rn = self:tensor(R, "recurrent_kernel")
    if two then brec = self:tensor(rows(bias, 2, 1):reshape({ ng * u }), "recurrent_bias") end
  end
  local split = ng == 4 and self:ints({ u, u, u, u }) or ng == 3 and self:ints({ u, u, u }) or nil
  local outs = {}
  for k = 1, T do
    local t = l.args.go_backwards and T - k or k - 1
    local xt = self:node("Gather", { xp, self:ints({ t }, {}) }, { axis = 1 })
    local mt = self:node("Unsqueeze", { self:node("Gather", { x.mask, self:ints({ t }, {}) }, { axis = 1 }),
      self:ints({ 1 }) })
    local hn, cn
    if op == "RNN" then
      hn = self:rnn_act(self:node("Add", { xt, self:node("MatMul", { h, Rn }) }), act)
    elseif op == "LSTM" then
      local z = self:node("Add", { xt, self:node("MatMul", { h, Rn }) })
      local zi, zf, zc, zo = self:node("Split", { z, split }, { axis = 1 }, 4)
      local i, f, g, o = self:rnn_act(zi, ract), self:rnn_act(zf, ract), self:rnn_act(zc, act), self:rnn_act(zo, ract)
      cn = self:node("Add", { self:node("Mul", { f, c }), self:node("Mul", { i, g }) })
      hn = self:node("Mul", { o, self:rnn_act(cn, act) })
    else -- GRU
      local xz, xr, xh = self:node("Split", { xt, split }, { axis = 1 }, 3)
      local z, r, hh
      if Rn then
        local hr = self:node("MatMul", { h, Rn })
        if brec then hr = self:node("Add", { hr, brec }) end
        local rz, rr, rh = self:node("Split", { hr, split }, { axis = 1 }, 3)
        z = self:rnn_act(self:node("Add", { xz, rz }), ract)
        r = self:rnn_act(self:node("Add", { xr, rr }), ract)
        hh = self:rnn_act(self:node("Add", { xh, self:node("Mul", { r, rh }) }), act)
      else
        local zr = self:node("MatMul", { h, Rzr })
        local rz, rr = self:node("Split", { zr, self:ints({ u, u }) }, { axis = 1 }, 2)
        z = self:rnn_act(self:node("Add", { xz, rz }), ract)
        r = self:rnn_act(self:node("Add", { xr, rr }), ract)
        hh = self:rnn_act(self:node("Add", { xh, self:node("MatMul", { self:node("Mul", { r, h }), Rh }) }), act)
      end
      hn = self:node("Add", { hh, self:node("Mul", { z, self:node("Sub", { h, hh }) }) })
    end
    h = self:node("Add", { h, self:node("Mul", { mt, self:node("Sub", { hn, h }) }) })
    if c then c = self:node("Add", { c, self:node("Mul", { mt, self:node("Sub", { cn, c }) }) }) end
    if l.args.return_sequences then
      local out = l.args.zero_output_for_mask and self:node("Mul", { mt, h }) or h -- zeros where masked
      outs[k] = self:node("Unsqueeze", { out, self:ints({ 1 }) })
    end
  end
  local result = l.args.return_sequences and value(self:node("Concat", outs, { axis = 1 }), 3, false) or value(h, 2, false)
  if not l.args.return_state then return result end
  if op == "LSTM" then return result, value(h, 2, false), value(c, 2, false) end
  return result, value(h, 2, false)
end

-- The recurrent layers as ONNX's operators (forward direction, time-major).
local function recurrent(op, ngates, order, nstates)
  return function(g, l, ins, w)
    local u = l.args.units
    local x = g:cl(ins[1])
    if x.mask then return g:unrolled(op, l, x, w, { ins[2], ins[3] }) end
    if l.args.go_backwards then -- Keras's: the steps reversed, and the outputs in that order
      x = g:slice(x, { 1 }, { -1 }, { INT64_MIN }, { -1 })
    end
    local xt = g:node("Transpose", { x.name }, { perm = { 1, 0, 2 } })
    local W = gates(g, w.kernel, u, order, "W")
    local R = gates(g, w.recurrent_kernel, u, order, "R")
    local B = ""
    if w.bias then
      local b = tolist(w.bias)
      local wb, rb = {}, {}
      local two = #b == 2 * ngates * u -- GRU with reset_after: input and recurrent biases
      for i, k in ipairs(order) do
        for j = 1, u do
          wb[(i - 1) * u + j] = b[k * u + j]
          rb[(i - 1) * u + j] = two and b[ngates * u + k * u + j] or 0
        end
      end
      for _, v in ipairs(rb) do wb[#wb + 1] = v end
      B = g:floats(wb, { 1, 2 * ngates * u }, "B")
    end
    local inputs = { xt, W, R, B, "" }
    for i = 2, #ins do inputs[4 + i] = g:node("Unsqueeze", { g:cl(ins[i]).name, g:ints({ 0 }) }) end
    local attrs = { hidden_size = u }
    local act = rnn_acts[l.args.activation]
    local ract = rnn_acts[l.args.recurrent_activation or "sigmoid"]
    if not act or not ract then
      fail(string.format("layer %s: activation '%s' has no ONNX translation in %s", l.name,
        tostring(act and l.args.recurrent_activation or l.args.activation), op))
    end
    if op == "LSTM" then attrs.activations = { ract, act, act }
    elseif op == "GRU" then attrs.activations = { ract, act }
    else attrs.activations = { act } end
    -- an Affine's alpha and beta, in the order of the Affines (the others take none)
    local alpha, beta = {}, {}
    for _, a in ipairs(attrs.activations) do
      if a == "Affine" then alpha[#alpha + 1], beta[#beta + 1] = 1.0, 0.0 end -- floats: FLOATS attributes
    end
    if #alpha > 0 then attrs.activation_alpha, attrs.activation_beta = alpha, beta end
    if op == "GRU" then attrs.linear_before_reset = l.args.reset_after and 1 or 0 end
    local outs = { g:node(op, inputs, attrs, 1 + nstates) }
    local result
    if l.args.return_sequences then
      local y = g:node("Squeeze", { outs[1], g:ints({ 1 }) })
      result = value(g:node("Transpose", { y }, { perm = { 1, 0, 2 } }), 3, false)
    else
      result = value(g:node("Squeeze", { outs[2], g:ints({ 0 }) }), 2, false)
    end
    if not l.args.return_state then return result end
    local list = { result }
    for i = 1, nstates do list[i + 1] = value(g:node("Squeeze", { outs[1 + i], g:ints({ 0 }) }), 2, false) end
    return table.unpack(list)
  end
end
-- Keras's gates: LSTM i, f, c, o (ONNX i, o, f, c); GRU z, r, h (ONNX the same).
emit.LSTM = recurrent("LSTM", 4, { 0, 3, 1, 2 }, 2)
emit.GRU = recurrent("GRU", 3, { 0, 1, 2 }, 1)
emit.SimpleRNN = recurrent("RNN", 1, { 0 }, 1)

-- ---- attention ----

-- x (N, L, D) -> (N, H, L, d) with the kernel (D, H, d) and bias (H, d).
function Graph:heads(x, kernel, bias, h, d, base)
  local s = kernel:shape()
  local k2 = kernel:reshape({ s[1], h * d })
  local y = self:node("MatMul", { x.name, self:tensor(k2, base .. "_kernel") })
  if bias then y = self:node("Add", { y, self:tensor(bias:reshape({ h * d }), base .. "_bias") }) end
  y = self:node("Reshape", { y, self:ints({ 0, 0, h, d }) })
  return self:node("Transpose", { y }, { perm = { 0, 2, 1, 3 } })
end

-- Keras's MultiHeadAttention (see plugins/layers/attention.c): returns the
-- output (N, T, Dout) and the scores (N, H, T, S).  `w` holds the weights
-- under prefix..query_kernel and so on; `adder` a (T, S) or (N, 1, T, S)
-- constant or value added to the scores (-1e9 where masked), or nil;
-- `keep` the mask (1 may attend) the softmax is multiplied by, or nil.
function Graph:attention(q, v, k, w, prefix, h, dk, dv, adder, keep)
  q, v, k = self:cl(q), self:cl(v), self:cl(k)
  local function W(n) return w[prefix .. n] end
  local Q = self:heads(q, W("query_kernel"), W("query_bias"), h, dk, "query")
  local K = self:heads(k, W("key_kernel"), W("key_bias"), h, dk, "key")
  local V = self:heads(v, W("value_kernel"), W("value_bias"), h, dv, "value")
  local qs = self:node("Mul", { Q, self:scalar(1 / math.sqrt(dk), "scale") }) -- Keras scales the query
  local kt = self:node("Transpose", { K }, { perm = { 0, 1, 3, 2 } })
  local scores = self:node("MatMul", { qs, kt })
  if adder then scores = self:node("Add", { scores, adder }) end
  local probs = self:node("Softmax", { scores }, { axis = -1 })
  if keep then probs = self:node("Mul", { probs, keep }) end -- a row masked whole attends to nothing
  local ctx = self:node("MatMul", { probs, V })
  ctx = self:node("Transpose", { ctx }, { perm = { 0, 2, 1, 3 } })
  ctx = self:node("Reshape", { ctx, self:ints({ 0, 0, h * dv }) })
  local ok = W("output_kernel")
  local os = ok:shape()
  local out = self:node("MatMul", { ctx, self:tensor(ok:reshape({ os[1] * os[2], os[3] }), "output_kernel") })
  if W("output_bias") then out = self:node("Add", { out, self:tensor(W("output_bias"), "output_bias") }) end
  return value(out, 3, false), value(probs, 4, false)
end

-- What is added to the scores (N, H, T, S): -1e9 where the product of the
-- masks is 0, as lunet's layers_attention_mask and mask_adder make it, and
-- that product (N, 1, T, S), which multiplies the softmax; nil when none
-- (the causal mask alone leaves no row masked whole: no product then).
-- parts: {full = attention_mask (N, T, S), rows = {query masks (N, T)},
-- cols = {value and key masks (N, S)}, causal = {T, S}}.
function Graph:mask_adder(parts)
  local m
  local function times(x) m = m and self:node("Mul", { m, x }) or x end
  if parts.full then times(self:node("Unsqueeze", { parts.full, self:ints({ 1 }) })) end
  for _, r in ipairs(parts.rows or {}) do times(self:node("Unsqueeze", { r, self:ints({ 1, 3 }) })) end
  for _, c in ipairs(parts.cols or {}) do times(self:node("Unsqueeze", { c, self:ints({ 1, 2 }) })) end
  if parts.causal then
    local t, s = parts.causal[1], parts.causal[2]
    local v = {}
    for i = 0, t - 1 do
      for j = 0, s - 1 do v[#v + 1] = i >= j and (m and 1 or 0) or (m and 0 or -1e9) end
    end
    if not m then return self:floats(v, { t, s }, "causal_mask") end -- the adder itself
    times(self:floats(v, { t, s }, "causal_mask"))
  end
  if not m then return nil end
  return self:node("Mul", { self:node("Sub", { m, self:scalar(1, "one") }), self:scalar(1e9, "big") }), m
end

emit.MultiHeadAttention = function(g, l, ins, w)
  local q, v = ins[1], ins[2]
  local k = ins[3] or v
  local h, dk = l.args.num_heads, l.args.key_dim
  local dv = l.args.value_dim or dk
  local t, s = l.input_shape[1][1], l.input_shape[2][1]
  local adder, keep = g:mask_adder({ full = ins[4] and g:cl(ins[4]).name, rows = { q.mask },
    cols = { v.mask, k.mask }, causal = l.args.use_causal_mask and { t, s } or nil })
  return g:attention(q, v, k, w, "", h, dk, dv, adder, keep)
end

local function ffn(g, l, x, w)
  local y = g:dense(x, w.feedforward_intermediate_kernel, w.feedforward_intermediate_bias)
  y = g:activation(y, l.args.activation)
  return g:dense(y, w.feedforward_output_kernel, w.feedforward_output_bias)
end

-- A residual block (KerasHub's): post-norm LN(x + f(x)) or pre-norm x + f(LN(x)).
local function residual(g, l, x, w, norm, f)
  local eps = l.args.layer_norm_epsilon
  local gamma, beta = w[norm .. "_gamma"], w[norm .. "_beta"]
  if l.args.normalize_first then
    local y = f(g:layer_norm(x, gamma, beta, eps, gamma:numel()))
    return value(g:node("Add", { g:cl(x).name, y.name }), 3, false)
  end
  local y = f(x)
  return g:layer_norm(value(g:node("Add", { g:cl(x).name, y.name }), 3, false), gamma, beta, eps, gamma:numel())
end

local function block_dims(l, d)
  local h = l.args.num_heads
  return h, d // h
end

emit.TransformerEncoder = function(g, l, ins, w)
  local x = g:cl(ins[1])
  local d = l.input_shape[#l.input_shape]
  local h, kd = block_dims(l, d)
  local adder, keep = g:mask_adder({ cols = { ins[1].mask } })
  x = residual(g, l, x, w, "self_attention_norm", function(a)
    return (g:attention(a, a, a, w, "self_attention_", h, kd, kd, adder, keep))
  end)
  return residual(g, l, x, w, "feedforward_norm", function(a) return ffn(g, l, a, w) end)
end

emit.TransformerDecoder = function(g, l, ins, w)
  local x = g:cl(ins[1])
  local shape = type(l.input_shape[1]) == "table" and l.input_shape[1] or l.input_shape
  local t, d = shape[1], shape[2]
  local h, kd = block_dims(l, d)
  -- padding masks the keys (KerasHub's padding_mask)
  local self_adder, self_keep = g:mask_adder({ cols = { ins[1].mask },
    causal = l.args.use_causal_mask and { t, t } or nil })
  x = residual(g, l, x, w, "self_attention_norm", function(a)
    return (g:attention(a, a, a, w, "self_attention_", h, kd, kd, self_adder, self_keep))
  end)
  if ins[2] then
    local enc = g:cl(ins[2])
    local cross_adder, cross_keep = g:mask_adder({ cols = { ins[2].mask } })
    x = residual(g, l, x, w, "cross_attention_norm", function(a)
      return (g:attention(a, enc, enc, w, "cross_attention_", h, kd, kd, cross_adder, cross_keep))
    end)
  end
  return residual(g, l, x, w, "feedforward_norm", function(a) return ffn(g, l, a, w) end)
end

-- The masks of a layer's outputs, as the layers' compute_mask hooks make
-- them; a layer without a rule passes its first input's mask to each output.
local mask_rules = {
  Embedding = function(_, _, _, outs) return { outs[1].mask } end,
  Masking = function(_, _, _, outs) return { outs[1].mask } end,
  MultiHeadAttention = function(_, _, ins) return { ins[1].mask } end,
  GlobalAveragePooling1D = function() return {} end,
  GlobalMaxPooling1D = function() return {} end,
  TransformerEncoder = function(_, _, ins) return { ins[1].mask } end,
  TransformerDecoder = function(_, _, ins) return { ins[1].mask } end,
  Reverse = function(g, l, ins)
    local m = ins[1].mask
    if not m or l.args.axis ~= 1 or l.args.flip_mask == false then return { m } end
    return { g:node("Slice", { m, g:ints({ -1 }), g:ints({ INT64_MIN }), g:ints({ 1 }), g:ints({ -1 }) }) }
  end,
}
local function rnn_mask(_, l, ins) return { l.args.return_sequences and ins[1].mask or nil } end
mask_rules.LSTM, mask_rules.GRU, mask_rules.SimpleRNN = rnn_mask, rnn_mask, rnn_mask
-- layers without Keras's supports_masking drop the mask (lunet's layers_drop_mask)
for _, t in ipairs{ "Conv1D", "MaxPooling1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D",
  "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D",
  "UpSampling2D", "Flatten", "Reshape", "Permute", "CenterCrop", "Resizing", "SpatialDropout2D" } do
  mask_rules[t] = function() return {} end
end
-- the element-wise merges: the AND (a product) of the masks there are
local function merge_mask(g, _, ins)
  local m
  for _, x in ipairs(ins) do
    if x.mask then m = m and g:node("Mul", { m, x.mask }) or x.mask end
  end
  return { m }
end
for _, t in ipairs{ "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum" } do mask_rules[t] = merge_mask end
-- Concatenate: on the features, the OR when every input has a mask (else
-- none); on the steps, the masks joined
mask_rules.Concatenate = function(g, l, ins)
  local any, all = false, true
  for _, x in ipairs(ins) do any, all = any or x.mask ~= nil, all and x.mask ~= nil end
  if not any then return {} end
  local rank = ins[1].rank - 1 -- a sample's axes
  local axis = l.args.axis < 0 and l.args.axis + rank + 1 or l.args.axis
  if axis == rank then
    if not all then return {} end
    local m = ins[1].mask
    for i = 2, #ins do m = g:node("Max", { m, ins[i].mask }) end
    return { m }
  end
  if not all then
    fail(string.format("layer %s: joining a masked and an unmasked sequence along the steps is not exported", l.name))
  end
  local names = {}
  for i, x in ipairs(ins) do names[i] = x.mask end
  return { g:node("Concat", names, { axis = axis }) }
end

M.layer_types = function()
  local out = {}
  for k in pairs(emit) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- ---- the model ----

local function check_opts(o)
  o = o or {}
  if type(o) ~= "table" then fail("options must be a table {opset = 17}") end
  for k in pairs(o) do
    if k ~= "opset" and k ~= "metadata" then
      fail(string.format("unknown option '%s' (valid: opset, metadata)", tostring(k)))
    end
  end
  local opset = o.opset or OPSET_MAX
  if math.type(opset) ~= "integer" or opset < OPSET_MIN or opset > OPSET_MAX then
    fail(string.format("opset %s is not supported (lunet writes opset %d)", tostring(opset), OPSET_MAX))
  end
  return o, opset
end

--- nn.export.onnx(model, path, {opset = 17, metadata = {key = "value"}}) ->
-- a summary {nodes =, initializers =, bytes =, inputs =, outputs =}.
function M.onnx(model, path, o)
  if type(model) ~= "table" or not model.layers then fail("bad argument #1 (a model expected)") end
  if type(path) ~= "string" then fail("bad argument #2 (a file path expected)") end
  local opts, opset = check_opts(o)
  local ok_mod, writer = pcall(require, "lunet.onnx")
  if not ok_mod then
    fail("this lunet was built without ONNX support (install libprotobuf-c-dev, protobuf-c-compiler and "
      .. "libonnx-dev, then rebuild)")
  end
  if not model.built then
    local ok, err = pcall(model.build, model)
    if not ok then fail("the model is not built and its input shape is unknown: " .. tostring(err)) end
  end
  -- every layer first, so that an unsupported one is named before any work
  local mixed = {}
  for _, n in ipairs(model.nodes) do
    if n.layer.dtype_policy == "mixed_bfloat16" then mixed[#mixed + 1] = n.layer.name end
  end
  if #mixed > 0 then -- the graph computes in float32: said, not silent
    io.stderr:write(string.format("export.onnx: %d layer%s (%s%s) compute their products in bfloat16 in lunet; the "
      .. "ONNX graph computes them in float32, so its outputs differ from lunet's by bfloat16's rounding "
      .. "(about 3 significant digits)\n", #mixed, #mixed == 1 and "" or "s", table.concat(mixed, ", ", 1,
      math.min(#mixed, 3)), #mixed > 3 and ", ..." or ""))
  end
  if model.preprocessor then -- the graph starts at the token ids: said, not silent
    io.stderr:write(string.format("export.onnx: %s's text preprocessor (%s) is not part of the ONNX graph, which " ..
      "takes its token ids; its settings and vocabulary are in the metadata as lunet_preprocessor\n", model.name,
      tostring(model.preprocessor.kind)))
  end
  for _, n in ipairs(model.nodes) do
    if not emit[n.layer.type] then
      local what = n.layer.type == "Lambda" and "a Lambda (a Lua function) cannot be written to a file"
        or string.format("layer type '%s' has no ONNX translation", tostring(n.layer.type))
      fail(string.format("layer %s: %s", n.layer.name, what))
    end
  end
  local g = new_graph()
  local prev = C.set_no_grad(true)
  local ok, err = pcall(function()
    local vals = {}
    local model_inputs, model_outputs = {}, {}
    for i, x in ipairs(model.inputs) do
      local name = g:fresh(x.name)
      local shape = { "N" }
      for k, d in ipairs(x.shape) do shape[k + 1] = d end
      model_inputs[i] = { name = name, dtype = "float", shape = shape }
      vals[x] = value(name, #x.shape + 1, false)
    end
    for _, n in ipairs(model.nodes) do
      local ins = {}
      for i, s in ipairs(n.inputs) do ins[i] = vals[s] end
      g.prefix = n.layer.name
      local outs = { emit[n.layer.type](g, n.layer, ins, weights_of(n.layer)) }
      local rule = mask_rules[n.layer.type]
      local masks = rule and rule(g, n.layer, ins, outs)
      for j, s in ipairs(n.outputs) do
        if not outs[j] then fail(string.format("layer %s: output %d was not translated", n.layer.name, j)) end
        local m
        if masks then m = masks[j] else m = ins[1] and ins[1].mask end
        if outs[j].mask ~= m then
          if outs[j] == ins[1] then outs[j] = like(ins[1], ins[1].name) end -- a pass-through gets its own record
          outs[j].mask = m
        end
        vals[s] = outs[j]
      end
    end
    g.prefix = nil
    for i, s in ipairs(model.outputs) do
      local v = g:cl(vals[s])
      local name = g:fresh(s.name)
      g.nodes[#g.nodes + 1] = { op = "Identity", name = g:fresh("node/" .. name), inputs = { v.name },
        outputs = { name } }
      local shape = { "N" }
      for k, d in ipairs(s.shape) do shape[k + 1] = d end
      model_outputs[i] = { name = name, dtype = "float", shape = shape }
    end
    g.inputs, g.outputs = model_inputs, model_outputs
  end)
  C.set_no_grad(prev)
  if not ok then
    if type(err) == "string" and err:find("^nn%.export%.onnx") then error(err, 2) end
    fail(tostring(err))
  end
  local meta = { lunet_model = model.name,
    class_names = require("lunet.model").check_class_names(model, "nn.export.onnx") }
  if model.preprocessor then meta.lunet_preprocessor = C.json_encode(model.preprocessor:config()) end
  for k, v in pairs(opts.metadata or {}) do meta[tostring(k)] = tostring(v) end
  local written, bytes = pcall(writer.write, path, { opset = opset, producer_version = C.version, name = model.name,
    doc = string.format("%s, exported by lunet %s", model.name, C.version), inputs = g.inputs,
    outputs = g.outputs, initializers = g.initializers, nodes = g.nodes, metadata = meta })
  if not written then fail(tostring(bytes):gsub("^[^:]*%.lua:%d+: ", "")) end
  return { nodes = #g.nodes, initializers = #g.initializers, bytes = bytes, inputs = g.inputs, outputs = g.outputs }
end

--- nn.export.read_onnx(path) -> {opset, ops, inputs, outputs, parameters, ...}
function M.read_onnx(path)
  local ok_mod, writer = pcall(require, "lunet.onnx")
  if not ok_mod then fail("this lunet was built without ONNX support") end
  return writer.read(path)
end

return M
