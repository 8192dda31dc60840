-- A small CNN's probabilities, loss, gradients and one Adam step against
-- PyTorch's (tests/fixtures/torch_cnn.lua, made by make_torch_cnn.py).
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local ref = dofile(here .. "../fixtures/torch_cnn.lua")

local function model()
  local m = nn.Sequential{
    nn.Conv2D{3, 3, activation = "relu", input_shape = {6, 6, 2}},
    nn.MaxPooling2D(2), nn.Flatten(), nn.Dense{5, activation = "softmax"}}
  m:set_weights({nn.tensor(ref.weights[1]), nn.tensor(ref.weights[2]), nn.tensor(ref.weights[3]),
    nn.tensor(ref.weights[4])})
  return m
end

local T = {}

function T.forward_matches_torch()
  local m = model()
  check.same_table(m:predict(nn.tensor(ref.x)):totable(), ref.probs, 1e-5, "probabilities")
end

-- The core's training step (fused softmax + cross-entropy): with SGD at
-- learning rate 1 and no momentum, each weight moves by exactly minus its
-- gradient, so the step's gradients are read back from the weights.
function T.train_step_gradients_match_torch()
  local m = model()
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "sparse_categorical_crossentropy"}
  local before = m:get_weights()
  local loss = m:train_on_batch(nn.tensor(ref.x), nn.tensor(ref.labels))
  check.near(loss, ref.loss, 1e-5, "loss")
  for i, w in ipairs(m:get_weights()) do
    check.same_table((before[i] - w):totable(), ref.grads[i], 1e-4, "gradient " .. i)
  end
end

function T.adam_step_matches_torch()
  local m = model()
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-2}, loss = "sparse_categorical_crossentropy"}
  local loss = m:train_on_batch(nn.tensor(ref.x), nn.tensor(ref.labels))
  check.near(loss, ref.loss, 1e-5, "loss")
  for i, w in ipairs(m:get_weights()) do check.same_table(w:totable(), ref.after_adam[i], 1e-5, "weight " .. i) end
end

function T.generic_autograd_path_matches_torch()
  -- the same loss through model(x) and the non-fused loss path
  local m = model()
  local x = nn.tensor(ref.x)
  local p = m(x)
  local onehot = {}
  for i, l in ipairs(ref.labels) do
    onehot[i] = {0, 0, 0, 0, 0}
    onehot[i][l + 1] = 1
  end
  local loss = -(nn.tensor(onehot) * p:log()):sum() / #ref.labels
  check.near(loss:item(), ref.loss, 1e-5, "loss")
  loss:backward()
  for i, w in ipairs(m.params) do check.same_table(w.grad:totable(), ref.grads[i], 1e-4, "gradient " .. i) end
end

-- Conv2DTranspose against torch's conv_transpose2d (fixture
-- make_torch_conv_transpose.py: "valid" and "same", strides, rectangles, dilation_rate,
-- output_padding):
-- outputs and the gradients of the input, kernel and bias.
function T.conv2d_transpose_matches_torch()
  local cases = dofile(here .. "../fixtures/torch_conv_transpose.lua")
  for i, c in ipairs(cases) do
    local x = nn.tensor(c.x)
    local shape = x:shape()
    local args = {input_shape = {shape[2], shape[3], shape[4]}}
    for k, v in pairs(c.args) do args[k] = v end
    local layer = nn.Conv2DTranspose(args)
    nn.Sequential{layer}
    layer:set_weights({nn.tensor(c.kernel), nn.tensor(c.bias)})
    local xr = x:requires_grad(true)
    local y = layer(xr)
    check.same_table(y:totable(), c.y, 1e-4, "case " .. i .. " output")
    ;(y * nn.tensor(c.g)):sum():backward()
    check.same_table(xr.grad:totable(), c.dx, 1e-4, "case " .. i .. " input gradient")
    local w = layer:weights()
    check.same_table(w[1].tensor.grad:totable(), c.dkernel, 1e-4, "case " .. i .. " kernel gradient")
    check.same_table(w[2].tensor.grad:totable(), c.dbias, 1e-4, "case " .. i .. " bias gradient")
  end
  check.fails(function() nn.Sequential{nn.Conv2DTranspose{2, 3, strides = 2, output_padding = 2, input_shape = {3, 3, 1}}} end,
    "output_padding {2, 2} must be >= 0 and below the strides {2, 2}")
  -- pairs that count added or cut rows may be 0 (sizes and steps may not)
  check.same_table(nn.ZeroPadding2D{{0, 2}, input_shape = {3, 3, 1}}.output_shape, {3, 7, 1}, 0, "padding {0, 2}")
  check.fails(function() nn.Conv2D{2, {0, 3}} end, "kernel_size must be positive, got 0")
end

-- Conv2D, MaxPooling2D, AveragePooling2D and BatchNormalization
-- configurations against PyTorch (fixture make_torch_layers.py): "same"
-- padding with TensorFlow's split (stride 2, odd and even sizes), strides
-- of 1 to 3, rectangles, average pooling over real pixels only,
-- and batch norm in inference and in training mode with its moving
-- statistics.  Outputs, and the gradients of sum(y * g).
local layers_ref = dofile(here .. "../fixtures/torch_layers.lua")

local function built(kind, args, x)
  local shape = x:shape()
  local a = {input_shape = {shape[2], shape[3], shape[4]}}
  for k, v in pairs(args) do a[k] = v end
  local layer = nn[kind](a)
  nn.Sequential{layer}
  return layer
end

-- One convolution case: output and the gradients of sum(y * g).
local function conv_matches(kind, c, what)
  local x = nn.tensor(c.x):requires_grad(true)
  local layer = built(kind, c.args, x)
  layer:set_weights({nn.tensor(c.kernel), nn.tensor(c.bias)})
  local y = layer(x)
  check.same_table(y:totable(), c.y, 1e-4, what .. " output")
  ;(y * nn.tensor(c.g)):sum():backward()
  check.same_table(x.grad:totable(), c.dx, 1e-4, what .. " input gradient")
  local w = layer:weights()
  check.same_table(w[1].tensor.grad:totable(), c.dkernel, 1e-4, what .. " kernel gradient")
  check.same_table(w[2].tensor.grad:totable(), c.dbias, 1e-4, what .. " bias gradient")
end

function T.conv2d_configurations_match_torch()
  for i, c in ipairs(layers_ref.conv) do
    conv_matches("Conv2D", c, string.format("conv case %d (%s, strides %d)", i, c.args.padding, c.args.strides[1]))
  end
end

-- Keras's dilation_rate against F.conv2d / F.conv1d with `dilation`
-- ("valid", "same" and, for Conv1D, "causal"; rates 2 to 4, unequal ones),
-- and Conv2D's groups against F.conv2d's (strided, dilated too).
function T.dilated_and_grouped_convolutions_match_torch()
  for i, c in ipairs(layers_ref.conv_dilated) do
    local r = c.args.dilation_rate
    conv_matches("Conv2D", c, string.format("dilated conv case %d (%s, rate {%d, %d})", i, c.args.padding, r[1], r[2]))
  end
  for i, c in ipairs(layers_ref.conv1d_dilated) do
    conv_matches("Conv1D", c, string.format("dilated Conv1D case %d (%s, rate %d)", i, c.args.padding, c.args.dilation_rate))
  end
  for i, c in ipairs(layers_ref.conv_grouped) do
    conv_matches("Conv2D", c, string.format("grouped conv case %d (%d groups, %s)", i, c.args.groups, c.args.padding))
  end
  check.fails(function() nn.Sequential{nn.Conv2D{4, 3, groups = 3, input_shape = {9, 9, 6}}} end,
    "groups = 3 must divide both the input's 6 channels and filters = 4")
  -- Keras's rule: no dilation with strides; a dilated kernel wider than a "valid" input
  check.fails(function() nn.Sequential{nn.Conv2D{2, 3, strides = 2, dilation_rate = 2, input_shape = {9, 9, 1}}} end,
    "a dilated convolution takes strides 1")
  check.fails(function() nn.Sequential{nn.Conv1D{2, 3, strides = 2, dilation_rate = 2, input_shape = {9, 1}}} end,
    "a dilated convolution takes strides 1")
  check.fails(function() nn.Sequential{nn.Conv2D{2, 3, dilation_rate = {1, 4}, input_shape = {9, 8, 1}}} end,
    "kernel_size {3, 3} dilated spans {3, 9}, larger than the input (9, 8)")
  check.fails(function() nn.Sequential{nn.Conv1D{2, 4, dilation_rate = 3, input_shape = {9, 1}}} end,
    "kernel_size 4 dilated spans 10 steps, longer than the input's 9")
  check.fails(function() nn.Sequential{nn.Conv2D{2, 3, dilation_rate = 0, input_shape = {9, 8, 1}}} end, "dilation_rate")
end

function T.pooling_configurations_match_torch()
  for i, c in ipairs(layers_ref.pool) do
    local what = string.format("pool case %d (%s, %s)", i, c.kind, c.args.padding)
    local x = nn.tensor(c.x):requires_grad(true)
    local y = built(c.kind, c.args, x)(x)
    check.same_table(y:totable(), c.y, 1e-5, what .. " output")
    ;(y * nn.tensor(c.g)):sum():backward()
    check.same_table(x.grad:totable(), c.dx, 1e-5, what .. " input gradient")
  end
end

function T.batchnorm_both_modes_match_torch()
  for _, c in ipairs(layers_ref.batchnorm) do
    local what = c.training and "batch norm, training" or "batch norm, inference"
    local x = nn.tensor(c.x):requires_grad(true)
    local layer = built("BatchNormalization", {}, x)
    layer:set_weights({nn.tensor(c.gamma), nn.tensor(c.beta), nn.tensor(c.moving_mean), nn.tensor(c.moving_variance)})
    local y = layer:apply(x, c.training)
    check.same_table(y:totable(), c.y, 1e-4, what .. " output")
    ;(y * nn.tensor(c.g)):sum():backward()
    check.same_table(x.grad:totable(), c.dx, 1e-4, what .. " input gradient")
    local w = layer:get_weights()
    local ws = layer:weights()
    check.same_table(ws[1].tensor.grad:totable(), c.dgamma, 1e-4, what .. " gamma gradient")
    check.same_table(ws[2].tensor.grad:totable(), c.dbeta, 1e-4, what .. " beta gradient")
    check.same_table(w[3]:totable(), c.new_moving_mean, 1e-5, what .. " moving mean")
    check.same_table(w[4]:totable(), c.new_moving_variance, 1e-5, what .. " moving variance")
  end
end

-- scale = false / center = false: gamma / beta are no weights (Keras's
-- get_weights and parameter counts), and the layer computes what the full
-- one (held to torch above) computes with gamma 1 and beta 0.
function T.switched_off_gamma_and_beta_are_no_weights()
  local function names(layer)
    local out = {}
    for _, w in ipairs(layer:weights()) do out[#out + 1] = w.name end
    return table.concat(out, ",")
  end
  for _, c in ipairs(layers_ref.batchnorm) do
    local n = #c.gamma
    local ones, zeros = {}, {}
    for i = 1, n do ones[i], zeros[i] = 1, 0 end
    for _, o in ipairs{{scale = false}, {center = false}, {scale = false, center = false}} do
      local what = string.format("batch norm (scale %s, center %s, training %s)", tostring(o.scale ~= false),
        tostring(o.center ~= false), tostring(c.training))
      local x1, x2 = nn.tensor(c.x):requires_grad(true), nn.tensor(c.x):requires_grad(true)
      local full, part = built("BatchNormalization", {}, x1), built("BatchNormalization", o, x2)
      local gamma = o.scale == false and ones or c.gamma
      local beta = o.center == false and zeros or c.beta
      full:set_weights({nn.tensor(gamma), nn.tensor(beta), nn.tensor(c.moving_mean), nn.tensor(c.moving_variance)})
      local ws = {}
      if o.scale ~= false then ws[#ws + 1] = nn.tensor(c.gamma) end
      if o.center ~= false then ws[#ws + 1] = nn.tensor(c.beta) end
      ws[#ws + 1], ws[#ws + 2] = nn.tensor(c.moving_mean), nn.tensor(c.moving_variance)
      part:set_weights(ws)
      check.eq(names(part), (o.scale ~= false and "gamma," or "") .. (o.center ~= false and "beta," or "")
        .. "moving_mean,moving_variance", what .. ": Keras's weights")
      local y1, y2 = full:apply(x1, c.training), part:apply(x2, c.training)
      check.same_table(y2:totable(), y1:totable(), 1e-6, what .. " output")
      ;(y1 * nn.tensor(c.g)):sum():backward()
      ;(y2 * nn.tensor(c.g)):sum():backward()
      check.same_table(x2.grad:totable(), x1.grad:totable(), 1e-6, what .. " input gradient")
      local by_name = {}
      for _, w in ipairs(full:weights()) do by_name[w.name] = w end
      for _, w in ipairs(part:weights()) do
        local f = by_name[w.name]
        check.same_table(w.tensor:totable(), f.tensor:totable(), 1e-6, what .. " " .. w.name)
        if w.trainable then check.same_table(w.tensor.grad:totable(), f.tensor.grad:totable(), 1e-6, what .. " d" .. w.name) end
      end
    end
  end
  local m = nn.Sequential{nn.Dense{6, input_shape = {4}}, nn.BatchNormalization{scale = false},
    nn.LayerNormalization{center = false}, nn.BatchNormalization{center = false, scale = false},
    nn.LayerNormalization{scale = false, center = false}, nn.Dense{2}}
  check.eq(#m:get_weights(), 2 + 3 + 1 + 2 + 0 + 2, "Keras's get_weights")
  check.eq(m:count_params(), 30 + 18 + 6 + 12 + 0 + 14, "Keras's parameter count")
  check.eq(names(m.layers[3]), "gamma", "LayerNormalization without beta")
  -- a weights file of before (the switched-off gamma and beta saved as frozen weights) still loads
  local path = os.tmpname()
  local full = nn.Sequential{nn.Dense{6, input_shape = {4}}, nn.BatchNormalization{}, nn.LayerNormalization{}, nn.Dense{2}}
  full:save_weights(path)
  local part = nn.Sequential{nn.Dense{6, input_shape = {4}}, nn.BatchNormalization{scale = false},
    nn.LayerNormalization{center = false}, nn.Dense{2}}
  part:load_weights(path)
  os.remove(path)
  check.same_table(part:get_weights()[1]:totable(), full:get_weights()[1]:totable(), 0, "the kernel came")
  -- LayerNormalization without gamma and beta: (x - mean) / sqrt(var + eps), written out
  local x = nn.randn(3, 6)
  local y = nn.Sequential{nn.LayerNormalization{scale = false, center = false, input_shape = {6}}}:predict(x)
  local want = {}
  for i, r in ipairs(x:totable()) do
    local mean, var = 0, 0
    for _, v in ipairs(r) do mean = mean + v / #r end
    for _, v in ipairs(r) do var = var + (v - mean) ^ 2 / #r end
    want[i] = {}
    for j, v in ipairs(r) do want[i][j] = (v - mean) / math.sqrt(var + 1e-3) end
  end
  check.same_table(y:totable(), want, 1e-5, "LayerNormalization, neither gamma nor beta")
end

-- DepthwiseConv2D and SeparableConv2D against torch's grouped and 1x1
-- conv2d, dilated too (fixture make_torch_depthwise.py): outputs, input and weight
-- gradients.
function T.depthwise_and_separable_match_torch()
  local cases = dofile(here .. "../fixtures/torch_depthwise.lua")
  for i, c in ipairs(cases) do
    local x = nn.tensor(c.x)
    local shape = x:shape()
    local args = {input_shape = {shape[2], shape[3], shape[4]}}
    for k, v in pairs(c.args) do args[k] = v end
    local layer = nn[c.layer](args)
    nn.Sequential{layer}
    local ws = {}
    for k, w in ipairs(c.weights) do ws[k] = nn.tensor(w) end
    layer:set_weights(ws)
    local xr = x:requires_grad(true)
    local y = layer(xr)
    local what = c.layer .. " case " .. i
    check.same_table(y:totable(), c.y, 1e-4, what .. " output")
    ;(y * nn.tensor(c.g)):sum():backward()
    check.same_table(xr.grad:totable(), c.dx, 1e-4, what .. " input gradient")
    for k, w in ipairs(layer:weights()) do
      check.same_table(w.tensor.grad:totable(), c.dweights[k], 1e-4, what .. " gradient of " .. w.name)
    end
  end
end

check.run(T)
