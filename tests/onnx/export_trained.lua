-- For tests/onnx/run_trained.sh: the text classifiers that recipes/text_classify.lua
-- trained on real fortunes (DIR/tr.lunet, DIR/lstm.lunet: a masked Transformer
-- encoder and a masked LSTM), exported, with lunet's predictions on 64
-- lines of Debian's computers fortunes and their ids (the model's
-- TextVectorization runs in lunet: the ONNX graph takes ids), for
-- run_ort.js.  Usage: lunet export_trained.lua DIR
local nn = require "lunet"
local dir = arg[1]
local texts = {}
for line in io.lines("/usr/share/games/fortunes/computers") do
  if #line > 20 and #texts < 64 then texts[#texts + 1] = line end
end
local manifest = {}
for _, name in ipairs{"tr", "lstm"} do
  local m = nn.load_model(dir .. "/" .. name .. ".lunet")
  local ids = m.preprocessor(texts)
  local y = m:predict(texts)
  local info = nn.export.onnx(m, dir .. "/" .. name .. ".onnx")
  local function bin(path, t)
    local f = assert(io.open(path, "wb"))
    for _, v in ipairs(t:float():reshape({t:numel()}):totable()) do f:write(string.pack("<f", v)) end
    f:close()
  end
  bin(dir .. "/" .. name .. ".in1.bin", ids)
  bin(dir .. "/" .. name .. ".out1.bin", y)
  manifest[#manifest + 1] = {name = name, file = name .. ".onnx",
    inputs = {{name = info.inputs[1].name, shape = ids:shape(), file = name .. ".in1.bin"}},
    outputs = {{name = info.outputs[1].name, shape = y:shape(), file = name .. ".out1.bin"}}}
  print(name, info.nodes, "nodes", m.class_names and table.concat(m.class_names, ","))
end
local f = io.open(dir .. "/manifest.json", "w")
f:write(require("lunet.core").json_encode(manifest))
f:close()
