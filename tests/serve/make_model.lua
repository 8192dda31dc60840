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
print("model: ok")
