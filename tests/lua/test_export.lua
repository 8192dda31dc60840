-- nn.export.onnx: what the file holds (read back with protobuf-c), the
-- layouts it keeps, the same bytes from a reloaded model and from Vulkan,
-- and every error path.  The numerical agreement with ONNX Runtime over
-- every layer type is tests/onnx/run.sh.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- The seed CIFAR CNN (recipes/cifar_cnn.lua's model, without training).
local function cifar_cnn()
  return nn.Sequential{
    nn.Conv2D{32, 3, padding = "same", activation = "relu", input_shape = {32, 32, 3}},
    nn.Conv2D{32, 3, activation = "relu"}, nn.MaxPooling2D{2}, nn.Dropout{0.25},
    nn.Conv2D{64, 3, padding = "same", activation = "relu"},
    nn.Conv2D{64, 3, activation = "relu"}, nn.MaxPooling2D{2}, nn.Dropout{0.25},
    nn.Flatten(), nn.Dense{512, activation = "relu"}, nn.Dropout{0.5},
    nn.Dense{10, activation = "softmax"},
  }
end

local function count(list, x)
  local n = 0
  for _, v in ipairs(list) do if v == x then n = n + 1 end end
  return n
end

function T.cifar_cnn_file()
  local dir = check.tmpdir()
  local m = cifar_cnn()
  local path = dir .. "/cifar.onnx"
  local info = nn.export.onnx(m, path, {metadata = {classes = "airplane,automobile"}})
  local r = nn.export.read_onnx(path)
  check.eq(r.opset, 17, "opset")
  check.eq(r.ir_version, 8, "IR version")
  check.eq(r.producer, "lunet", "producer")
  check.eq(r.parameters, m:count_params(), "every weight written once")
  check.eq(#r.ops, info.nodes, "node count")
  check.eq(count(r.ops, "Conv"), 4, "convolutions")
  check.eq(count(r.ops, "MaxPool"), 2, "pooling")
  check.eq(count(r.ops, "MatMul"), 2, "dense layers")
  -- NHWC outside, NCHW inside: one transpose in, one before Flatten
  check.eq(count(r.ops, "Transpose"), 2, "transposes")
  check.eq(count(r.ops, "Dropout"), 0, "no dropout at inference")
  check.same_table(r.inputs[1].shape, {"N", 32, 32, 3}, nil, "input shape (NHWC)")
  check.same_table(r.outputs[1].shape, {"N", 10}, nil, "output shape")
  check.eq(r.metadata.classes, "airplane,automobile", "metadata")
  check.eq(r.metadata.lunet_model, m.name, "model name in the metadata")
  check.eq(slurp(path .. ".part"), nil, "no temporary file left")
end

function T.reloaded_model_same_bytes()
  local dir = check.tmpdir()
  local x = nn.Input{6, 4}
  local h = nn.LSTM{5, return_sequences = true}(x)
  local y = nn.Dense{3, activation = "softmax"}(nn.GlobalAveragePooling1D()(nn.Add(){h, nn.Dense{5}(x)}))
  local m = nn.Model{inputs = x, outputs = y}
  nn.export.onnx(m, dir .. "/a.onnx")
  m:save(dir .. "/m.lunet")
  nn.export.onnx(nn.load_model(dir .. "/m.lunet"), dir .. "/b.onnx")
  check.eq(slurp(dir .. "/a.onnx") == slurp(dir .. "/b.onnx"), true, "a reloaded model exports the same bytes")
end

function T.vulkan_same_bytes()
  if not check.vulkan() then return end
  local dir = check.tmpdir()
  nn.seed(3)
  local m = cifar_cnn()
  nn.export.onnx(m, dir .. "/cpu.onnx")
  m:to("vulkan")
  nn.export.onnx(m, dir .. "/vk.onnx")
  check.eq(slurp(dir .. "/cpu.onnx") == slurp(dir .. "/vk.onnx"), true, "weights read back from the device")
end

function T.errors()
  local dir = check.tmpdir()
  local lam = nn.Sequential{nn.Dense{4, input_shape = {3}}, nn.Lambda(function(x) return x * 2 end, {name = "double"})}
  check.fails(function() nn.export.onnx(lam, dir .. "/l.onnx") end,
    "layer double: a Lambda (a Lua function) cannot be written to a file")
  check.eq(slurp(dir .. "/l.onnx"), nil, "nothing written for a Lambda")

  -- lunet refuses a masked maximum over steps (as Keras); so does the export
  local emb = nn.Sequential{nn.Embedding{10, 4, mask_zero = true, input_shape = {5}}, nn.GlobalMaxPooling1D{name = "gmp"}}
  check.fails(function() nn.export.onnx(emb, dir .. "/e.onnx") end, "layer gmp: a masked input is not supported")

  local m = nn.Sequential{nn.Dense{4, input_shape = {3}, name = "d"}}
  check.fails(function() nn.export.onnx(m, dir .. "/o.onnx", {opset = 13}) end, "opset 13 is not supported")
  -- a merge broadcasting a shorter input: ONNX would align it at the batch axis, so it is refused
  local s3, s1 = nn.Input{shape = {5, 3}}, nn.Input{shape = {3}}
  local bm = nn.Model{inputs = {s3, s1}, outputs = nn.Add{name = "plus"}({s3, s1})}
  check.fails(function() nn.export.onnx(bm, dir .. "/b.onnx") end,
    "layer plus: inputs of ranks 3 and 2 (a merge broadcasting a shorter input) do not export yet")
  check.fails(function() nn.export.onnx(m, dir .. "/o.onnx", {opst = 17}) end, "unknown option 'opst'")
  check.fails(function() nn.export.onnx(m) end, "a file path expected")
  check.fails(function() nn.export.onnx({}, dir .. "/o.onnx") end, "a model expected")
  -- the message is the exporter's, not a Lua source line's
  check.fails(function() nn.export.onnx(m, dir .. "/no/such/dir/o.onnx") end, "nn.export.onnx: cannot write")
  local ok, err = pcall(nn.export.onnx, m, dir .. "/no/such/dir/o.onnx")
  assert(not ok and not tostring(err):find("%.lua:%d+:"), tostring(err))
  check.eq(slurp(dir .. "/no/such/dir/o.onnx.part"), nil, "no temporary file")

  -- a layer type the exporter does not know (a plugin's own) is named
  rawset(m.layers[1], "type", "MyPluginLayer")
  check.fails(function() nn.export.onnx(m, dir .. "/p.onnx") end,
    "layer d: layer type 'MyPluginLayer' has no ONNX translation")

  -- a Normalization never adapted: lunet refuses to predict; the graph passed the data through
  local raw = nn.Input{shape = {3}}
  local un = nn.Model{inputs = raw, outputs = nn.Dense{2}(nn.Normalization{name = "norm"}(raw))}
  check.fails(function() nn.export.onnx(un, dir .. "/n.onnx") end, "layer norm: Normalization is not adapted")

  local junk = dir .. "/junk.onnx"
  local f = assert(io.open(junk, "wb"))
  f:write("\255\255\255 not a protobuf")
  f:close()
  check.fails(function() nn.export.read_onnx(junk) end, "is not an ONNX model")
end

function T.class_names()
  local dir = check.tmpdir()
  local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {4}}}
  m.class_names = {"a", "b", "c"}
  nn.export.onnx(m, dir .. "/m.onnx")
  check.eq(nn.export.read_onnx(dir .. "/m.onnx").metadata.class_names, '["a","b","c"]', "class names in the file")
  m:save(dir .. "/m.lunet")
  check.same_table(nn.load_model(dir .. "/m.lunet").class_names, {"a", "b", "c"}, nil, "class names saved")
  m.class_names = {"a", "b"}
  check.fails(function() m:save(dir .. "/m2.lunet") end, "save: 2 class_names for an output of 3 units")
  check.fails(function() nn.export.onnx(m, dir .. "/m2.onnx") end, "2 class_names for an output of 3 units")
  m.class_names = {"a", 2, "c"}
  check.fails(function() m:save(dir .. "/m2.lunet") end, "class_names must be a list of strings")
  local bin = nn.Sequential{nn.Dense{1, activation = "sigmoid", input_shape = {4}}}
  bin.class_names = {"no", "yes"} -- one sigmoid unit: two classes
  bin:save(dir .. "/bin.lunet")
  check.same_table(nn.load_model(dir .. "/bin.lunet").class_names, {"no", "yes"}, nil, "binary class names")
end

-- A text preprocessor is not in the graph: said on stderr, and kept in the
-- metadata (it was dropped without a word)
function T.text_preprocessor_in_the_metadata()
  local dir = check.tmpdir()
  local tv = nn.text.TextVectorization{max_tokens = 20, output_sequence_length = 5}
  tv:adapt({"the cat ran", "the dog sat"})
  local m = nn.Sequential{nn.Embedding{20, 4, input_shape = {5}}, nn.GlobalAveragePooling1D{}, nn.Dense{2}}
  m:set_preprocessor(tv)
  nn.export.onnx(m, dir .. "/t.onnx")
  local meta = nn.export.read_onnx(dir .. "/t.onnx").metadata
  local cfg = nn._C.json_decode(meta.lunet_preprocessor, "the preprocessor")
  check.eq(cfg.kind, "TextVectorization", "its kind")
  check.eq(cfg.vocabulary[1], "the", "its vocabulary, the likeliest first")
  check.eq(#cfg.vocabulary, 5, "its 5 words")
end

function T.unbuilt_model_needs_a_shape()
  local m = nn.Sequential{nn.Dense{4}}
  check.fails(function() nn.export.onnx(m, "/tmp/unbuilt.onnx") end, "input shape is unknown")
end

check.run(T)
