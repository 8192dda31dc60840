-- Exports small models that together hold every registered layer type
-- (the script fails when a type is in none of them, so a new layer type
-- must come with its ONNX translation), with every weight set to random
-- values (moving statistics and biases included), and writes for each:
--   DIR/NAME.onnx, DIR/NAME.in<k>.bin, DIR/NAME.out<k>.bin (float32, little
--   endian: lunet's own predictions) and DIR/manifest.json.
-- tests/onnx/check_onnx.py then runs onnx.checker on each file and
-- tests/onnx/run_ort.js runs each in ONNX Runtime against the predictions.
-- Usage: lunet tests/onnx/export_models.lua DIR
local nn = require "lunet"
local layers = require "lunet.layers"

local dir = assert(arg[1], "usage: export_models.lua DIR")
nn.seed(20261129)

local N = 3 -- samples per batch

-- Random weights: variances in [0.5, 1.5], counts kept, the rest N(0, 0.3^2).
local function randomize(model)
  for _, l in ipairs(model.layers) do
    local list = {}
    for i, w in ipairs(l:weights()) do
      local shape = w.tensor:shape()
      if w.name:find("variance") then
        list[i] = nn.rand(table.unpack(shape)) + 0.5
      elseif w.name == "count" then
        list[i] = w.tensor:clone()
      else
        list[i] = nn.randn(table.unpack(shape)) * 0.3
      end
    end
    if #list > 0 then l:set_weights(list) end
  end
end

local function normal(...) return nn.randn(N, ...) end
local function ids(vocab, t)
  local rows = {}
  for i = 1, N do
    rows[i] = {}
    for j = 1, t do rows[i][j] = math.random(0, vocab - 1) end
  end
  return nn.tensor(rows)
end

local cases = {}
local function case(name, build) cases[#cases + 1] = { name = name, build = build } end

case("cnn", function()
  local m = nn.Sequential{
    nn.Conv2D{ 6, 3, padding = "same", activation = "relu", input_shape = { 11, 10, 3 } },
    nn.Conv2D{ 6, { 3, 2 }, dilation_rate = { 2, 3 }, padding = "same" },
    nn.Conv2D{ 6, 3, groups = 3, padding = "same" },
    nn.Conv2D{ 5, { 3, 2 }, strides = 2, padding = "valid", activation = "elu" },
    nn.MaxPooling2D{ 3, strides = 2, padding = "same" },
    nn.BatchNormalization{},
    nn.Conv2D{ 4, 2, strides = { 1, 2 }, padding = "same", use_bias = false },
    nn.AveragePooling2D{ 2, padding = "same" },
    nn.BatchNormalization{ center = false }, -- gamma, no beta (Keras's weights)
    nn.SpatialDropout2D{ 0.3 },
    nn.Flatten{},
    nn.Dropout{ 0.5 },
    nn.Dense{ 7, activation = "softmax" },
  }
  return m, { normal(11, 10, 3) }
end)

case("vision", function()
  local x = nn.Input{ 10, 11, 3 }
  local h = nn.Rescaling{ 1 / 255, offset = -0.5 }(x)
  h = nn.ZeroPadding2D{ { 1, 2 } }(h)
  h = nn.Cropping2D{ { 2, 1 } }(h)
  h = nn.ZeroPadding2D{ { { 0, 1 }, { 2, 0 } } }(h) -- per side (Keras's ((top, bottom), (left, right)))
  h = nn.Cropping2D{ { { 1, 0 }, { 0, 2 } } }(h)
  h = nn.CenterCrop{ 7, 9 }(h)
  local d = nn.DepthwiseConv2D{ 3, depth_multiplier = 2, padding = "same", strides = 2 }(h)
  d = nn.DepthwiseConv2D{ { 3, 2 }, dilation_rate = { 2, 3 }, padding = "same" }(d)
  local s = nn.SeparableConv2D{ 5, 3, padding = "same", activation = "gelu" }(d)
  local u = nn.UpSampling2D{ { 2, 3 } }(s)
  local t = nn.Conv2DTranspose{ 3, 3, strides = 2, padding = "same", activation = "leaky_relu" }(u)
  local t2 = nn.Conv2DTranspose{ 2, 2, strides = 3 }(t)
  local t3 = nn.Conv2DTranspose{ 2, 3, strides = 2 }(s)
  t3 = nn.Conv2DTranspose{ 2, { 3, 2 }, strides = { 2, 3 }, padding = "same", output_padding = { 1, 2 } }(t3)
  t3 = nn.Conv2DTranspose{ 2, 2, strides = 2, output_padding = 1 }(t3)
  t3 = nn.Conv2DTranspose{ 3, { 3, 2 }, dilation_rate = { 2, 3 } }(t3)
  t3 = nn.Conv2DTranspose{ 2, 3, dilation_rate = 2, padding = "same" }(t3)
  local a = nn.LeakyReLU{ negative_slope = 0.25 }(t2)
  local b = nn.ReLU{ max_value = 0.6, negative_slope = 0.1 }(a)
  local c = nn.PReLU{ shared_axes = { 1, 2 } }(b)
  local p1 = nn.GlobalMaxPooling2D{}(c)
  local p2 = nn.GlobalAveragePooling2D{ keepdims = true }(t3)
  local p3 = nn.Flatten{}(p2)
  local e = nn.PReLU{}(nn.Activation{ "swish" }(d))
  local p4 = nn.GlobalAveragePooling2D{}(e)
  local y = nn.Concatenate{}{ p1, p3, p4 }
  return nn.Model{ inputs = x, outputs = y }, { nn.rand(N, 10, 11, 3) * 255 }
end)

case("resize", function()
  local m = nn.Sequential{
    nn.RandomFlip{ input_shape = { 12, 9, 2 } },
    nn.RandomRotation{ 0.2 },
    nn.RandomTranslation{ 0.1, 0.1 },
    nn.RandomZoom{ 0.2, 0.2 },
    nn.Resizing{ 6, 7, crop_to_aspect_ratio = true },
    nn.Resizing{ 9, 5 },
    nn.RandomCrop{ 5, 4 },
    nn.CenterCrop{ 7, 3 }, -- larger than the images: smart_resize
    nn.GaussianNoise{ 0.1 },
    nn.Flatten{},
  }
  return m, { normal(12, 9, 2) }
end)

case("dense", function()
  local x = nn.Input{ 6 }
  local n = nn.Normalization{}
  local outs = {}
  local h = n(x)
  for _, a in ipairs { "relu", "sigmoid", "tanh", "gelu", "leaky_relu", "elu", "silu", "swish", "linear",
    "log_softmax", "softmax" } do
    outs[#outs + 1] = nn.Dense{ 4, activation = a }(h)
  end
  local c = nn.Concatenate{}(outs)
  c = nn.GaussianDropout{ 0.2 }(c)
  c = nn.ActivityRegularization{ l2 = 0.01 }(c)
  c = nn.Activation{ "tanh" }(c)
  local r = nn.Reshape{ { 4, 11 } }(c)
  local p = nn.Permute{ { 2, 1 } }(r)
  local m = nn.Model{ inputs = x, outputs = { nn.Softmax{}(p), r } }
  n:adapt(nn.randn(50, 6) * 2 + 1)
  return m, { normal(6) }
end)

case("merge", function()
  local a, b, row = nn.Input{ 4, 5 }, nn.Input{ 4, 5 }, nn.Input{ 1, 5 }
  local outs = {
    nn.Add{}{ a, b }, nn.Subtract{}{ a, b }, nn.Multiply{}{ a, b }, nn.Average{}{ a, b },
    nn.Maximum{}{ a, b }, nn.Minimum{}{ a, b },
    nn.Add{}{ a, row }, nn.Maximum{}{ row, b }, -- a size-1 axis broadcast, as Keras's merges
  }
  local cat = nn.Concatenate{ axis = 1 }(outs)
  local cat2 = nn.Concatenate{ axis = -1 }{ a, b }
  return nn.Model{ inputs = { a, b, row }, outputs = { cat, cat2 } }, { normal(4, 5), normal(4, 5), normal(1, 5) }
end)

case("images_merge", function()
  -- merging values of different layouts: a convolution's output (channels
  -- first inside) with the input (channels last)
  local x = nn.Input{ 6, 6, 2 }
  local c = nn.Conv2D{ 2, 3, padding = "same" }(x)
  local s = nn.Add{}{ c, x }
  local m = nn.Maximum{}{ x, c, s }
  local cat = nn.Concatenate{ axis = 3 }{ c, x }
  local bn = nn.BatchNormalization{ scale = false }(cat) -- beta, no gamma
  return nn.Model{ inputs = x, outputs = { m, bn } }, { normal(6, 6, 2) }
end)

case("rnn", function()
  local x = nn.Input{ 7, 3 }
  local h = nn.LSTM{ 5, return_sequences = true }(x)
  h = nn.GRU{ 4, return_sequences = true, go_backwards = true }(h)
  h = nn.Reverse{}(h)
  local g = nn.GRU{ 3, reset_after = false, return_sequences = true }(h)
  local r = nn.SimpleRNN{ 3, activation = "relu" }(g)
  local o, hs, cs = nn.LSTM{ 4, return_state = true, go_backwards = true }(h)
  local init = nn.Dense{ 2 }(r)
  local g2 = nn.GRU{ 2 }(g, { initial_state = { init } })
  local bi = nn.Bidirectional(nn.LSTM{ 3 })(x)
  -- linear activations (ONNX's Affine with alpha 1, beta 0)
  local lin = nn.Concatenate{}{ nn.SimpleRNN{ 2, activation = "linear" }(x), nn.LSTM{ 2, activation = "linear" }(x),
    nn.GRU{ 2, activation = "linear", recurrent_activation = "sigmoid" }(x) }
  local y = nn.Concatenate{}{ r, o, hs, cs, g2, bi, lin }
  return nn.Model{ inputs = x, outputs = y }, { normal(7, 3) }
end)

case("conv1d", function()
  local m = nn.Sequential{
    nn.Conv1D{ 4, 3, padding = "causal", activation = "relu", input_shape = { 12, 3 } },
    nn.Conv1D{ 4, 2, dilation_rate = 4, padding = "causal" },
    nn.Conv1D{ 4, 3, dilation_rate = 2 },
    nn.Conv1D{ 5, 3, strides = 2, padding = "same" },
    nn.MaxPooling1D{ 2, padding = "same" },
    nn.Conv1D{ 3, 2 },
    nn.GlobalAveragePooling1D{ keepdims = true },
    nn.GlobalMaxPooling1D{},
  }
  return m, { normal(12, 3) }
end)

case("transformer", function()
  local tokens = nn.Input{ 6 }
  local e = nn.Embedding{ 20, 8 }(tokens)
  local p = nn.PositionEmbedding{ sequence_length = 9 }(e)
  local s = nn.SinePositionEncoding{}(e)
  local h = nn.Add{}{ e, p, s }
  local enc = nn.TransformerEncoder{ intermediate_dim = 16, num_heads = 2 }(h)
  enc = nn.TransformerEncoder{ intermediate_dim = 12, num_heads = 4, normalize_first = true, activation = "gelu" }(enc)
  local dec = nn.TransformerDecoder{ intermediate_dim = 16, num_heads = 2 }{ h, enc }
  dec = nn.TransformerDecoder{ intermediate_dim = 8, num_heads = 2, normalize_first = true }(dec)
  local out, scores = nn.MultiHeadAttention{ num_heads = 2, key_dim = 3, value_dim = 5, output_shape = 6,
    use_causal_mask = true }(dec, enc, h, { return_attention_scores = true })
  local ln = nn.LayerNormalization{scale = false, center = false}(nn.LayerNormalization{}(out))
  local pooled = nn.GlobalAveragePooling1D{}(ln)
  local y = nn.Dense{ 5, activation = "softmax" }(pooled)
  return nn.Model{ inputs = tokens, outputs = { y, scores } }, { ids(20, 6) }
end)

-- Padding masks (mask_zero) through every layer that reads them, with
-- padding in the middle of sequences as well as at their end.
case("masked", function()
  local tokens = nn.Input{ 7 }
  local e = nn.Embedding{ 12, 6, mask_zero = true }(tokens)
  local a = nn.LSTM{ 5, return_sequences = true }(e)
  local b = nn.GRU{ 4, reset_after = false, return_sequences = true, go_backwards = true }(a)
  b = nn.Reverse{}(b)
  local c = nn.SimpleRNN{ 6, return_sequences = true }(b)
  local enc = nn.TransformerEncoder{ intermediate_dim = 8, num_heads = 2 }(c)
  local dec = nn.TransformerDecoder{ intermediate_dim = 8, num_heads = 3 }{ e, enc }
  local att = nn.MultiHeadAttention{ num_heads = 2, key_dim = 3 }(dec, enc)
  local pooled = nn.GlobalAveragePooling1D{}(att)
  local last, h = nn.GRU{ 3, return_state = true }(enc)
  local l2 = nn.LSTM{ 2, go_backwards = true }(e)
  -- Bidirectional's sequence: zeros at the masked steps (Keras's)
  local bi = nn.Flatten{}(nn.Bidirectional(nn.GRU{ 2, return_sequences = true })(e))
  -- whose mask is the input's (not reversed with the backward half): a pooling after it
  local bi_pooled = nn.GlobalAveragePooling1D{}(nn.Bidirectional(nn.GRU{ 2, return_sequences = true },
    { merge_mode = "sum" })(e))
  -- and attention's padded query steps (their rows attend to nothing)
  local y = nn.Concatenate{}{ pooled, last, h, l2, bi, nn.Flatten{}(att), bi_pooled }
  return nn.Model{ inputs = tokens, outputs = y }, { nn.tensor({
    { 3, 5, 0, 7, 1, 0, 0 }, { 11, 2, 4, 9, 8, 6, 10 }, { 4, 0, 0, 0, 0, 0, 0 } }) }
end)

-- Keras's Masking on float sequences padded with zero steps, into an LSTM and a masked mean
case("masking", function()
  local x = nn.Input{ 6, 3 }
  local m = nn.Masking{}(x)
  local h = nn.LSTM{ 4, return_sequences = true }(m)
  local y = nn.Concatenate{}{ nn.GlobalAveragePooling1D{}(h), nn.LSTM{ 2 }(m) }
  local data = normal(6, 3):totable()
  for i = 1, N do for t = 7 - i, 6 do data[i][t] = { 0, 0, 0 } end end
  return nn.Model{ inputs = x, outputs = y }, { nn.tensor(data) }
end)

-- masks stop at a convolution and merge as Keras's (AND; Concatenate on the steps joins them)
case("mask_rules", function()
  local a, b = nn.Input{ 7 }, nn.Input{ 7 }
  local ea = nn.Embedding{ 9, 4, mask_zero = true }(a)
  local eb = nn.Embedding{ 9, 4, mask_zero = true }(b)
  local conv = nn.GlobalAveragePooling1D{}(nn.Conv1D{ 3, 3, padding = "same" }(ea))
  local sum = nn.GlobalAveragePooling1D{}(nn.Add{}{ ea, eb })
  local steps = nn.GlobalAveragePooling1D{}(nn.Concatenate{ axis = 1 }{ ea, eb })
  -- padded at different lengths, so that the AND differs from either input's mask
  local pa, pb = {}, {}
  for i = 1, N do
    pa[i], pb[i] = {}, {}
    for j = 1, 7 do
      pa[i][j] = j <= 7 - (i % 4) and math.random(1, 8) or 0
      pb[i][j] = j <= 6 - (i % 3) and math.random(1, 8) or 0
    end
  end
  return nn.Model{ inputs = { a, b }, outputs = nn.Concatenate{}{ conv, sum, steps } }, { nn.tensor(pa), nn.tensor(pb) }
end)

case("attention_mask", function()
  local q, v, mask = nn.Input{ 4, 6 }, nn.Input{ 5, 3 }, nn.Input{ 4, 5 }
  local out = nn.MultiHeadAttention{ num_heads = 3, key_dim = 2, use_bias = false }(q, v, { attention_mask = mask })
  local m = {}
  for i = 1, N do
    m[i] = {}
    for t = 1, 4 do
      m[i][t] = {}
      for s = 1, 5 do m[i][t][s] = (s <= t + 1 or (i + s) % 3 == 0) and 1 or 0 end
    end
  end
  return nn.Model{ inputs = { q, v, mask }, outputs = out }, { normal(4, 6), normal(5, 3), nn.tensor(m) }
end)

-- ---- write them ----

local function write_bin(path, t)
  local flat = t:float():reshape({ t:numel() }):totable()
  local f = assert(io.open(path, "wb"))
  for i = 1, #flat, 1024 do
    local chunk = {}
    for k = i, math.min(i + 1023, #flat) do chunk[#chunk + 1] = string.pack("<f", flat[k]) end
    f:write(table.concat(chunk))
  end
  f:close()
end

local covered = {}
local manifest = {}
for _, c in ipairs(cases) do
  local model, xs = c.build()
  randomize(model)
  for _, l in ipairs(model.layers) do covered[l.type] = true end
  local y = model:predict(#xs == 1 and xs[1] or xs)
  local ys = nn.is_tensor(y) and { y } or y
  local info = nn.export.onnx(model, dir .. "/" .. c.name .. ".onnx")
  local entry = { name = c.name, file = c.name .. ".onnx", inputs = {}, outputs = {} }
  for k, x in ipairs(xs) do
    write_bin(string.format("%s/%s.in%d.bin", dir, c.name, k), x)
    entry.inputs[k] = { name = info.inputs[k].name, shape = x:shape(), file = string.format("%s.in%d.bin", c.name, k) }
  end
  for k, t in ipairs(ys) do
    write_bin(string.format("%s/%s.out%d.bin", dir, c.name, k), t)
    entry.outputs[k] = { name = info.outputs[k].name, shape = t:shape(), file = string.format("%s.out%d.bin", c.name, k) }
  end
  manifest[#manifest + 1] = entry
  print(string.format("%-16s %3d layers %4d nodes %8d bytes", c.name, #model.layers, info.nodes, info.bytes))
end

local missing = {}
for tname in pairs(layers.types()) do
  if not covered[tname] then missing[#missing + 1] = tname end
end
table.sort(missing)
if #missing > 0 then
  error("no exported model holds these registered layer types: " .. table.concat(missing, ", ")
    .. " (add them to tests/onnx/export_models.lua)")
end
local f = assert(io.open(dir .. "/manifest.json", "w"))
f:write(nn.utils.json_encode and nn.utils.json_encode(manifest) or require("lunet.core").json_encode(manifest))
f:close()
print(string.format("%d models, every one of the %d registered layer types", #cases,
  (function() local n = 0 for _ in pairs(layers.types()) do n = n + 1 end return n end)()))
