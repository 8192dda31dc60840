-- A small CNN saved for the server test, and its predictions on fixed
-- inputs (JSON), computed here in lunet for the test to compare with.
--   lunet make_model.lua OUT_DIR
local nn = require "lunet"
local out = arg[1]
nn.seed(5)
local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {6, 6, 1}}, nn.Conv2D{4, 3, activation = "relu"},
  nn.Flatten(), nn.Dense{3, activation = "softmax"}}
m:build()
m:save(out .. "/cnn.lunet")
-- a second version (other weights) for the reload on SIGHUP
local m2 = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {6, 6, 1}}, nn.Conv2D{4, 3, activation = "relu"},
  nn.Flatten(), nn.Dense{3, activation = "softmax"}}
m2:build()
m2:save(out .. "/cnn_v2.lunet")
local x = (nn.rand(5, 6, 6, 1) * 255)
local f = assert(io.open(out .. "/reference.json", "w"))
f:write(require("lunet.core").json_encode({inputs = x:totable(), outputs = m:predict(x):totable(),
  outputs_v2 = m2:predict(x):totable()}))
f:close()
-- two inputs and two outputs (TF Serving's named rows and columns)
local image, extra = nn.Input{shape = {6, 6, 1}, name = "image"}, nn.Input{shape = {3}, name = "extra"}
local h = nn.Flatten()(nn.Conv2D{2, 3, activation = "relu"}(nn.Rescaling{1 / 255}(image)))
local probs = nn.Dense{3, activation = "softmax", name = "probs"}(nn.Concatenate(){h, extra})
local aux = nn.Dense{2, name = "aux"}(extra)
local pair = nn.Model{inputs = {image, extra}, outputs = {probs, aux}}
pair:save(out .. "/pair.lunet")
m.class_names = {"circle", "square", "triangle"}
m:save(out .. "/cnn.lunet") -- its class names in the metadata answer
local xe = nn.randn(5, 3)
local py = pair:predict({x, xe})
f = assert(io.open(out .. "/pair.json", "w"))
f:write(require("lunet.core").json_encode({image = x:totable(), extra = xe:totable(), probs = py[1]:totable(),
  aux = py[2]:totable()}))
f:close()
-- the CNN again with its lone input and output renamed (a reload takes the
-- new names); token ids through an Embedding (a bad id is one request's
-- error); a Dense whose outputs are inf, -inf and NaN
local pixels = nn.Input{shape = {6, 6, 1}, name = "pixels"}
local renamed = nn.Model{inputs = pixels, outputs = nn.Dense{3, activation = "softmax", name = "scores"}(
  nn.Flatten()(nn.Conv2D{4, 3, activation = "relu"}(nn.Rescaling{1 / 255}(pixels))))}
renamed:save(out .. "/cnn_renamed.lunet")
local emb = nn.Sequential{nn.Embedding{10, 2, input_shape = {3}}, nn.Flatten()}
emb:build()
emb:save(out .. "/emb.lunet")
local ids = nn.tensor{{0, 1, 2}, {9, 8, 7}, {3, 3, 3}}
f = assert(io.open(out .. "/emb.json", "w"))
f:write(require("lunet.core").json_encode({ids = ids:totable(), outputs = emb:predict(ids):totable()}))
f:close()
local over = nn.Sequential{nn.Dense{1, use_bias = false, input_shape = {1}}, nn.Dense{3, use_bias = false}}
over:build()
over:set_weights{nn.tensor{{1e30}}, nn.tensor{{1, -1, 0}}} -- 1e30: inf, -inf, inf * 0
over:save(out .. "/overflow.lunet")
-- a Normalization never adapted: lunet serve refuses it at load
local raw = nn.Input{shape = {3}}
nn.Model{inputs = raw, outputs = nn.Dense{2}(nn.Normalization{}(raw))}:save(out .. "/unadapted.lunet")
print("model: ok")
