-- Functional models: nn.Input, layers called on symbolic tensors, nn.Model,
-- merge layers, shared layers, several inputs and outputs, nested models,
-- files (JSON config) and the errors of bad graphs and hostile files.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

local function rows(n, k, f)
  local t = {}
  for i = 1, n do
    t[i] = {}
    for j = 1, k do t[i][j] = f(i, j) end
  end
  return nn.tensor(t)
end

local function tmp() return os.tmpname() .. ".safetensors" end

function T.merge_layers_compute_what_keras_does()
  local a = nn.tensor{{1, -2, 3}, {0.5, 4, -1}}
  local b = nn.tensor{{2, 2, -3}, {0.5, -4, 5}}
  local c = nn.tensor{{0, 1, 1}, {1, 0, 2}}
  local av, bv, cv = a:totable(), b:totable(), c:totable()
  local function each(f)
    local out = {}
    for i = 1, 2 do
      out[i] = {}
      for j = 1, 3 do out[i][j] = f(av[i][j], bv[i][j], cv[i][j]) end
    end
    return out
  end
  check.same_table(nn.Add()({a, b, c}):totable(), each(function(x, y, z) return x + y + z end), 1e-6, "Add")
  check.same_table(nn.Subtract()({a, b}):totable(), each(function(x, y) return x - y end), 1e-6, "Subtract")
  check.same_table(nn.Multiply()({a, b, c}):totable(), each(function(x, y, z) return x * y * z end), 1e-6, "Multiply")
  check.same_table(nn.Average()({a, b}):totable(), each(function(x, y) return (x + y) / 2 end), 1e-6, "Average")
  check.same_table(nn.Maximum()({a, b, c}):totable(), each(math.max), 1e-6, "Maximum")
  check.same_table(nn.Minimum()({a, b, c}):totable(), each(math.min), 1e-6, "Minimum")
  check.same_table(nn.Concatenate()({a, c}):totable(),
    {{1, -2, 3, 0, 1, 1}, {0.5, 4, -1, 1, 0, 2}}, 1e-6, "Concatenate")
  -- broadcasting as Keras's merges (it was "a merge needs equal shapes"): a size 1 stretches, a shorter
  -- sample shape takes size-1 axes after the batch axis: (2, 2, 3) + (2, 1, 3) + (2, 3)
  local p = nn.tensor{{{1, 2, 3}, {4, 5, 6}}, {{-1, -2, -3}, {0, 1, 0}}}
  local q = nn.tensor{{{10, 20, 30}}, {{1, 1, 1}}}
  local r = nn.tensor{{100, 200, 300}, {2, 3, 4}}
  local want, most = {}, {}
  local pv, qv, rv = p:totable(), q:totable(), r:totable()
  for n = 1, 2 do
    want[n], most[n] = {}, {}
    for t = 1, 2 do
      want[n][t], most[n][t] = {}, {}
      for k = 1, 3 do
        want[n][t][k] = pv[n][t][k] + qv[n][1][k] + rv[n][k]
        most[n][t][k] = math.max(pv[n][t][k], rv[n][k])
      end
    end
  end
  check.same_table(nn.Add()({p, q, r}):totable(), want, 1e-4, "Add broadcast")
  check.same_table(nn.Maximum()({p, r}):totable(), most, 1e-6, "Maximum broadcast")
  local i3, i13 = nn.Input{shape = {2, 3}}, nn.Input{shape = {3}}
  check.same_table(nn.Model{inputs = {i3, i13}, outputs = nn.Multiply()({i3, i13})}.output_shape, {2, 3}, 0,
    "the broadcast shape")
  check.fails(function() nn.Add()({nn.Input{shape = {5, 3}}, nn.Input{shape = {4}}}) end,
    "input 2 has shape (None, 4), which does not broadcast with input 1's (None, 5, 3)")
  -- the gradient of a stretched input is summed over the axes it was stretched along
  local qg, rg = q:requires_grad(true), r:requires_grad(true)
  nn.Add()({p, qg, rg}):sum():backward()
  check.same_table(qg.grad:totable(), {{{2, 2, 2}}, {{2, 2, 2}}}, 0, "d/dq: two steps each")
  check.same_table(rg.grad:totable(), {{2, 2, 2}, {2, 2, 2}}, 0, "d/dr")
  check.same_table(nn.Concatenate{axis = 1}({a, c}):shape(), {2, 6}, 0, "Concatenate axis 1 = first sample axis")
  check.same_table(nn.Reshape{{3, 1}}(a):totable(), {{{1}, {-2}, {3}}, {{0.5}, {4}, {-1}}}, 1e-6, "Reshape")
  local x = nn.tensor{{{1, 2, 3}, {4, 5, 6}}}
  check.same_table(nn.Permute{{2, 1}}(x):totable(), {{{1, 4}, {2, 5}, {3, 6}}}, 1e-6, "Permute")
  -- gradients: finite differences on every merge layer's shipped cases
  for _, name in ipairs{"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Reshape",
      "Permute"} do
    local results = nn.check_plugin(name)
    assert(#results > 0, name .. " ships no test cases")
    for _, r in ipairs(results) do
      assert(r.ok, string.format("%s{%s}: max relative error %.3g > %.3g %s", name, r.args, r.max_error, r.tolerance,
        r.error or ""))
    end
  end
end

-- y = relu(x W + b) + x, checked against the same sum by hand.
function T.residual_block_matches_a_hand_computation()
  local x = nn.Input{shape = {4}, name = "x"}
  local d = nn.Dense{4, activation = "relu"}
  local y = nn.Add()({d(x), x})
  local m = nn.Model{inputs = x, outputs = y, name = "res"}
  local input = rows(3, 4, function(i, j) return (i - 2) * 0.5 + j * 0.25 - 0.6 end)
  local w, b = d:get_weights()[1]:totable(), d:get_weights()[2]:totable()
  local want = {}
  for i, r in ipairs(input:totable()) do
    want[i] = {}
    for j = 1, 4 do
      local s = b[j]
      for k = 1, 4 do s = s + r[k] * w[k][j] end
      want[i][j] = math.max(s, 0) + r[j]
    end
  end
  check.same_table(m:predict(input):totable(), want, 1e-5, "predict")
  check.same_table(m(input):totable(), want, 1e-5, "model(x)")
end

function T.two_inputs_two_outputs_train_save_and_reload()
  nn.seed(5)
  local a, b = nn.Input{shape = {3}, name = "a"}, nn.Input{shape = {2}, name = "b"}
  local h = nn.Concatenate()({nn.Dense{8, activation = "tanh", name = "left"}(a), nn.Dense{8, activation = "tanh",
    name = "right"}(b)})
  local cls = nn.Dense{2, activation = "softmax", name = "cls"}(h)
  local reg = nn.Dense{1, name = "reg"}(h)
  local m = nn.Model{inputs = {a, b}, outputs = {cls, reg}, name = "two"}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.02}, loss = {"sparse_categorical_crossentropy", "mse"},
    loss_weights = {1, 0.5}, metrics = {"accuracy"}}
  local n = 64
  local xa = rows(n, 3, function(i, j) return math.sin(i * 0.7 + j) end)
  local xb = rows(n, 2, function(i, j) return math.cos(i * 0.3 + 2 * j) end)
  local va, vb = xa:totable(), xb:totable()
  local yc, yr = {}, {}
  for i = 1, n do
    yc[i] = (va[i][1] + vb[i][2] > 0) and 1 or 0
    yr[i] = {va[i][2] - vb[i][1]}
  end
  local ycls, yreg = nn.tensor(yc), nn.tensor(yr)
  local hist = m:fit({xa, xb}, {ycls, yreg}, {epochs = 40, batch_size = 16, verbose = 0})
  for _, k in ipairs{"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_accuracy"} do
    assert(hist[k] and #hist[k] == 40, "history has " .. k)
  end
  local last = #hist.loss
  assert(hist.loss[last] < 0.5 * hist.loss[1], string.format("loss fell: %g -> %g", hist.loss[1], hist.loss[last]))
  local logs = m:evaluate({xa, xb}, {ycls, yreg})
  check.near(logs.loss, logs.cls_loss + 0.5 * logs.reg_loss, 1e-4, "total loss is the weighted sum")
  assert(logs.cls_accuracy > 0.85, "accuracy " .. logs.cls_accuracy)
  local p = m:predict({xa, xb})
  check.eq(#p, 2, "one prediction per output")
  check.same_table(p[1]:shape(), {n, 2}, 0)
  check.same_table(p[2]:shape(), {n, 1}, 0)
  -- the file holds the graph: it comes back and predicts the same
  local path = tmp()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.eq(back.kind, "functional")
  local q = back:predict({xa, xb})
  check.same_table(q[1]:totable(), p[1]:totable(), 0, "reloaded predictions")
  check.same_table(q[2]:totable(), p[2]:totable(), 0, "reloaded predictions")
  check.near(back:evaluate({xa, xb}, {ycls, yreg}).loss, logs.loss, 1e-6, "reloaded loss")
  -- training goes on from the optimizer's saved state
  check.eq(back.optimizer.iterations, m.optimizer.iterations, "optimizer iterations")
  -- errors: the wrong number of inputs or targets
  check.fails(function() m:fit(xa, {ycls, yreg}, {verbose = 0}) end,
    "fit: the model has 2 inputs but 1 was given (give a list of 2 tensors)")
  check.fails(function() m:fit({xa, xb}, ycls, {verbose = 0}) end, "fit: the model has 2 targets but 1 was given")
  -- Keras's dicts keyed by input and output names, in any order (they were
  -- taken as no tensors at all)
  local byname = m:predict({b = xb, a = xa})
  check.same_table(byname[1]:totable(), p[1]:totable(), 0, "inputs by name")
  check.near(m:evaluate({b = xb, a = xa}, {reg = yreg, cls = ycls}).loss, logs.loss, 1e-6, "targets by name")
  check.fails(function() m:predict({a = xa, c = xb}) end, "predict: no input named 'c' (the model's inputs: a, b)")
  check.fails(function() m:predict({a = xa}) end, "predict: no tensor for the input 'b'")
  check.fails(function() m:fit({xa, xb}, {cls = ycls}, {verbose = 0}) end, "fit: no tensor for the target 'reg'")
  -- weights per output are refused, saying so (a raw tensor error before)
  check.fails(function() m:fit({xa, xb}, {ycls, yreg}, {verbose = 0, sample_weight = {nn.ones(n), nn.ones(n)}}) end,
    "fit: sample_weight is one weight per sample, for every output")
end

-- Numbers in a model file come back bit for bit (cJSON's printer accepted
-- a text an ulp off: about 18% of random doubles changed): layer
-- arguments, the optimizer's settings, and the Lua side's records.
function T.saved_numbers_come_back_exactly()
  local eps, slope, lr = 1.6094379124341003e-3, 0.30000000000000004, 1.6094379124341003e-3
  local m = nn.Sequential{nn.Dense{2, input_shape = {3}}, nn.BatchNormalization{epsilon = eps},
    nn.LeakyReLU{negative_slope = slope}}
  m:compile{optimizer = nn.optimizers.RMSprop{learning_rate = nn.schedules.ExponentialDecay(lr, 7, 0.1 + 0.2)},
    loss = "mse"}
  m:fit(nn.randn(4, 3), nn.randn(4, 2), {epochs = 1, verbose = 0})
  local path = tmp()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.eq(back.layers[2].args.epsilon, eps, "a layer's float")
  check.eq(back.layers[3].args.negative_slope, slope, "another")
  check.eq(back.optimizer.learning_rate:config().initial_learning_rate, lr, "a schedule's rate (the Lua record)")
  check.eq(back.optimizer.learning_rate:config().decay_rate, 0.1 + 0.2, "and its decay")
  math.randomseed(11)
  for i = 1, 2000 do
    local v = (math.random() - 0.5) * 10 ^ math.random(-30, 30)
    local got = nn._C.json_decode(nn._C.json_encode({v}), "test")[1]
    if got ~= v then error(string.format("%.17g came back as %.17g", v, got)) end
  end
end

function T.shared_layers_share_weights_and_count_once()
  local a, b = nn.Input{shape = {3}}, nn.Input{shape = {3}}
  local shared = nn.Dense{2, name = "shared"}
  local m = nn.Model{inputs = {a, b}, outputs = nn.Add()({shared(a), shared(b)})}
  check.eq(#m:get_weights(), 2, "kernel and bias once")
  check.eq(m:count_params(), 8)
  local lines = {}
  m:summary(function(l) lines[#lines + 1] = l end)
  local text = table.concat(lines, "\n")
  assert(text:find("Connected to", 1, true), text)
  assert(text:find("shared[1][0]", 1, true), "the second call of the shared layer: " .. text)
  assert(text:find("Total params: 8 (32.00 B)", 1, true), "bytes below a KB, as Keras: " .. text)
  -- both calls use one kernel: x and x give twice the single call
  local x = nn.tensor{{1, 2, 3}}
  check.same_table(m:predict({x, x}):totable(), (shared(x) * 2):totable(), 1e-6, "one set of weights")
  -- several inputs or outputs: a list of shapes, as Keras's (it was the first one's alone), also loaded
  check.same_table(m.input_shape, {{3}, {3}}, 0, "two inputs")
  local s = nn.Input{shape = {6, 3}}
  local y, h = nn.LSTM{4, return_sequences = true, return_state = true}(s)
  local two = nn.Model{inputs = s, outputs = {y, nn.Dense{5}(h)}}
  check.same_table(two.output_shape, {{6, 4}, {5}}, 0, "two outputs")
  local path = os.tmpname()
  two:save(path)
  check.same_table(nn.load_model(path).output_shape, {{6, 4}, {5}}, 0, "two outputs, loaded")
  os.remove(path)
  lines = {}
  two:summary(function(l) lines[#lines + 1] = l end)
  text = table.concat(lines, "\n")
  assert(text:find("[(None, 6, 4), (None, 4), (None, 4)]", 1, true), "every output of the LSTM: " .. text)
end

-- Two outputs of one name (a shared layer's two calls; a layer of several
-- outputs "lstm_1", "lstm_2" beside a layer named "lstm_1") log under
-- names made unique as tf.keras's: each output's loss its own, against
-- the loss computed from predict.
function T.outputs_of_one_name_log_apart()
  nn.seed(4)
  local mse = function(p, y) return (p - y):square():mean():item() end
  local sh = nn.Dense{2, name = "sh"}
  local x1, x2 = nn.Input{shape = {3}}, nn.Input{shape = {3}}
  local m = nn.Model{inputs = {x1, x2}, outputs = {sh(x1), sh(x2), sh(nn.Add()({x1, x2}))}}
  m:compile{optimizer = "sgd", loss = "mse", metrics = {"mae"}}
  local X1, X2, Y = nn.randn(8, 3), nn.randn(8, 3), {nn.randn(8, 2), nn.randn(8, 2), nn.randn(8, 2)}
  local r, p = m:evaluate({X1, X2}, Y, {verbose = 0}), m:predict({X1, X2})
  for j, name in ipairs{"sh", "sh_1", "sh_2"} do
    check.near(r[name .. "_loss"], mse(p[j], Y[j]), 1e-5, name .. "_loss")
    check.near(r[name .. "_mae"], (p[j] - Y[j]):abs():mean():item(), 1e-5, name .. "_mae")
  end
  check.near(r.loss, mse(p[1], Y[1]) + mse(p[2], Y[2]) + mse(p[3], Y[3]), 1e-5, "the total")
  local list = m:evaluate({X1, X2}, Y, {verbose = 0, return_dict = false})
  check.eq(#list, 7, "loss, three losses, three maes")
  check.near(list[3], r.sh_1_loss, 0, "the list in the logs' order")
  local s = nn.Input{shape = {4, 3}}
  local _, h = nn.LSTM{2, return_sequences = true, return_state = true, name = "lstm"}(s)
  local m2 = nn.Model{inputs = s, outputs = {h, nn.Dense{2, name = "lstm_1"}(h)}}
  m2:compile{optimizer = "sgd", loss = "mse"}
  local xs, ys = nn.randn(5, 4, 3), {nn.randn(5, 2), nn.randn(5, 2)}
  local r2, p2 = m2:evaluate(xs, ys, {verbose = 0}), m2:predict(xs)
  check.near(r2.lstm_2_loss, mse(p2[1], ys[1]), 1e-5, "the LSTM's state h (its output 2)")
  check.near(r2.lstm_1_loss, mse(p2[2], ys[2]), 1e-5, "the Dense named lstm_1")
  -- Keras's dicts keyed by output name were dropped without a word
  check.fails(function() m:compile{optimizer = "sgd", loss = "mse", metrics = {sh = "mae"}} end,
    "bad argument 'metrics' to 'compile' (a table keyed by 'sh': give a list of metrics; each applies to every output)")
  check.fails(function() m:compile{optimizer = "sgd", loss = {sh = "mse"}} end, "a table keyed by 'sh'")
  check.fails(function() m:compile{optimizer = "sgd", loss = "mse", loss_weights = {sh = 1}} end, "keyed by 'sh'")
  check.fails(function() m:compile{optimizer = "sgd", loss = "mse", metrics = {{"mae"}, {"mse"}}} end,
    "entry 1 is a list: per-output metric lists are not supported")
end

-- set_weights checks the whole list before it changes anything (a list one
-- too long overwrote every layer, then failed).
function T.set_weights_changes_nothing_on_a_bad_list()
  nn.seed(5)
  local m = nn.Sequential{nn.Dense{3, input_shape = {2}, name = "d1"}, nn.Dense{1, name = "d2"}}
  local w = m:get_weights()
  local function unchanged(what)
    for i, t in ipairs(m:get_weights()) do check.same_table(t:totable(), w[i]:totable(), 0, what .. ": weight " .. i) end
  end
  check.fails(function() m:set_weights({nn.zeros(2, 3), nn.zeros(3), nn.zeros(3, 1), nn.zeros(1), nn.zeros(1)}) end,
    "set_weights: the model has 4 weights, got 5")
  unchanged("one too many")
  check.fails(function() m:set_weights({nn.zeros(2, 3), nn.zeros(3), nn.zeros(3, 2), nn.zeros(1)}) end,
    "set_weights: d2: weight 1 (kernel) has shape (3, 1), got (3, 2) (entry 3)")
  unchanged("a bad shape in the second layer")
  check.fails(function() m:set_weights({nn.zeros(2, 3), nn.zeros(3), nn.zeros(3, 1), "q"}) end,
    "entry 4 for weight 2 (bias) is string, not a tensor")
  check.fails(function() m:set_weights("x") end, "set_weights: a list of tensors expected, got string")
  check.fails(function() m.layers[1]:set_weights({nn.zeros(2, 3), nn.zeros(4)}) end, "weight 2 (bias) has shape (3), got (4)")
  unchanged("a layer's bad bias")
  m:set_weights({nn.zeros(2, 3), {1, 1, 1}, nn.ones(3, 1), {0.5}})
  check.near(m:predict(nn.ones(1, 2)):item(), 3.5, 1e-6, "tables serve as tensors")
end

-- A Sequential inside a Sequential: its layers, the same objects (summary,
-- get/set_weights and the values work; a functional model is refused).
function T.sequential_models_nest_in_sequential_ones()
  nn.seed(6)
  local inner = nn.Sequential{nn.Dense{3, input_shape = {2}, name = "in1"}, nn.Dense{2, name = "in2"}}
  local outer = nn.Sequential{nn.Dense{2, input_shape = {2}, name = "first"}, inner}
  outer:add(nn.Dense{1, name = "last"})
  check.eq(#outer.layers, 4, "first, in1, in2, last")
  check.eq(outer.layers[2], inner.layers[1], "the inner model's own layer")
  check.eq(outer:count_params(), 6 + 9 + 8 + 3)
  local lines = {}
  outer:summary(function(l) lines[#lines + 1] = l end)
  assert(table.concat(lines, "\n"):find("Total params: 26", 1, true), table.concat(lines, "\n"))
  outer:set_weights(outer:get_weights())
  local x = nn.randn(4, 2)
  local ref = outer.layers[4](inner.layers[2](inner.layers[1](outer.layers[1](x))))
  check.same_table(outer:predict(x):totable(), ref:totable(), 1e-6, "the composition")
  local i0 = nn.Input{shape = {2}}
  check.fails(function() outer:add(nn.Model{inputs = i0, outputs = nn.Dense{2}(i0)}) end,
    "a functional model inside a Sequential is not supported")
  check.fails(function() outer:add(nn.Sequential{nn.Dense{1, name = "fresh"}, nn.Dense{1, name = "first"}}) end,
    "first")
  check.eq(#outer.layers, 4, "a refused model adds nothing")
  check.fails(function() outer:add(5) end, "a layer or a Sequential model expected, got number")
end

function T.nested_models_share_their_layers()
  nn.seed(9)
  local inner_in = nn.Input{shape = {4}}
  local d = nn.Dense{4, activation = "tanh", name = "inner_dense"}
  local inner = nn.Model{inputs = inner_in, outputs = d(inner_in), name = "inner"}
  local seq = nn.Sequential{nn.Dense{3, input_shape = {4}, name = "seq_dense"}}
  local x = nn.Input{shape = {4}}
  local outer = nn.Model{inputs = x, outputs = seq(inner(x)), name = "outer"}
  local before = d:get_weights()[1]:totable()
  outer:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  outer:fit(rows(8, 4, function(i, j) return i * 0.1 - j * 0.2 end), rows(8, 3, function(i, j) return j end),
    {epochs = 2, verbose = 0})
  local after = d:get_weights()[1]:totable()
  assert(after[1][1] ~= before[1][1], "training the outer model trains the inner one's layer")
  local probe = rows(2, 4, function(i, j) return i - j end)
  check.same_table(outer:predict(probe):totable(), seq:predict(inner:predict(probe)):totable(), 1e-5,
    "outer = seq(inner(x))")
end

-- layer.trainable = false (Keras): the layer's weights stay as they are,
-- the others train; a frozen BatchNormalization runs in inference mode;
-- summary counts the frozen weights as non-trainable.
function T.frozen_layers_do_not_train()
  nn.seed(11)
  local x = nn.Input{shape = {4}}
  local base = nn.Dense{6, activation = "tanh", name = "base"}
  local bn = nn.BatchNormalization{name = "bn"}
  local head = nn.Dense{1, name = "head"}
  local m = nn.Model{inputs = x, outputs = head(bn(base(x)))}
  local data = rows(32, 4, function(i, j) return math.sin(i * j) + 2 end)
  local target = rows(32, 1, function(i) return math.cos(i) end)
  base.trainable = false
  bn.trainable = false
  assert(not base.trainable and head.trainable)
  local lines = {}
  m:summary(function(l) lines[#lines + 1] = l end)
  local text = table.concat(lines, "\n")
  -- base 30 and bn 24 (gamma, beta, moving mean and variance) are frozen; head 7 trains
  assert(text:find("Trainable params: 7 ", 1, true) and text:find("Non-trainable params: 54 ", 1, true), text)
  local before = {base = base:get_weights()[1]:totable(), bn = bn:get_weights()[3]:totable(),
    head = head:get_weights()[1]:totable()}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  -- in training mode the frozen BatchNormalization normalizes with its moving statistics
  check.same_table(m(data, true):totable(), m:predict(data):totable(), 1e-6, "frozen BN runs in inference mode")
  m:fit(data, target, {epochs = 3, batch_size = 8, verbose = 0})
  check.same_table(base:get_weights()[1]:totable(), before.base, 0, "frozen Dense unchanged")
  check.same_table(bn:get_weights()[3]:totable(), before.bn, 0, "frozen BN's moving mean unchanged")
  assert(head:get_weights()[1]:totable()[1][1] ~= before.head[1][1], "the head trains")
  -- thawing takes effect at the next compile; without it, training says so
  base.trainable = true
  check.fails(function() m:fit(data, target, {verbose = 0}) end, "compile the model again")
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  m:fit(data, target, {epochs = 1, batch_size = 8, verbose = 0})
  assert(base:get_weights()[1]:totable()[1][1] ~= before.base[1][1], "thawed, it trains")
  -- model.trainable freezes everything
  m.trainable = false
  check.eq(m.trainable, false)
  local all = m:get_weights()
  m:fit(data, target, {epochs = 1, batch_size = 8, verbose = 0})
  for i, w in ipairs(m:get_weights()) do check.same_table(w:totable(), all[i]:totable(), 0, "weight " .. i) end
end

-- nn.Lambda: a Lua function as a layer.  Its gradients are checked against
-- the same model built from layers (2h = Add(h, h)): one SGD step from the
-- same weights must land on the same weights.
function T.lambda_layers_train_and_refuse_to_be_saved()
  nn.seed(3)
  local function twin(middle)
    local x = nn.Input{shape = {3}}
    local d1, d2 = nn.Dense{4, activation = "tanh"}, nn.Dense{1}
    return nn.Model{inputs = x, outputs = d2(middle(d1(x)))}, d1, d2
  end
  local double = nn.Lambda(function(t) return t * 2 end, {name = "double"})
  local a = twin(function(h) return double(h) end)
  local b = twin(function(h) return nn.Add()({h, h}) end)
  b:set_weights(a:get_weights())
  local x = rows(16, 3, function(i, j) return math.sin(i + 2 * j) end)
  local y = rows(16, 1, function(i) return math.cos(i) end)
  check.same_table(a:predict(x):totable(), b:predict(x):totable(), 1e-6, "forward")
  for _, m in ipairs{a, b} do
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
    m:train_on_batch(x, y)
  end
  local wa, wb = a:get_weights(), b:get_weights()
  for i = 1, #wa do check.same_table(wa[i]:totable(), wb[i]:totable(), 1e-6, "weight " .. i .. " after a step") end
  -- the output shape is traced from the function
  local r = nn.Lambda(function(t) return t:reshape(t:shape()[1], 2, 2) end)
  local sym = r(nn.Input{shape = {4}})
  check.same_table(sym.shape, {2, 2}, 0, "traced output shape")
  -- a model holding one is not saved, naming the layer; its weights are
  check.fails(function() a:save(tmp()) end,
    "cannot save model '" .. a.name .. "': layer 'double' (Lambda) runs host-language code")
  local path = tmp()
  a:save_weights(path)
  b:load_weights(path)
  os.remove(path)
  check.same_table(b:predict(x):totable(), a:predict(x):totable(), 1e-6, "weights moved through a file")
  -- an error inside the function names the layer
  local bad = nn.Lambda(function(t) error("no luck") end, {output_shape = {3}, name = "unlucky"})
  check.fails(function() bad(nn.ones(2, 3)) end, "unlucky: the function failed:")
  check.fails(function() nn.Lambda(42) end, "bad argument #1 to 'Lambda' (function expected, got number)")
  check.fails(function() nn.Lambda(function(t) return t end, {output_shape = {"a"}}) end,
    "a sample shape of at most 7 positive sizes")
  -- an identity Lambda passes the gradient on: the layer before it trains
  local first = nn.Dense{3, input_shape = {3}}
  local m = nn.Sequential{first, nn.Lambda(function(t) return t end), nn.Dense{1}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  local w0 = first:get_weights()[1]:totable()
  m:fit(x, y, {epochs = 2, batch_size = 8, verbose = 0})
  assert(first:get_weights()[1]:totable()[1][1] ~= w0[1][1], "the layer before an identity Lambda trains")
end

-- loss_weights: 0 switches an output's loss off (its head gets no gradient).
function T.a_zero_loss_weight_switches_an_output_off()
  nn.seed(4)
  local x = nn.Input{shape = {3}}
  local h = nn.Dense{4, activation = "tanh"}(x)
  local a, b = nn.Dense{1, name = "a"}, nn.Dense{1, name = "b"}
  local m = nn.Model{inputs = x, outputs = {a(h), b(h)}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse", loss_weights = {1, 0}}
  local before = b:get_weights()[1]:totable()
  local data = rows(16, 3, function(i, j) return math.sin(i + j) end)
  local t = rows(16, 1, function(i) return math.cos(i) end)
  m:fit(data, {t, t}, {epochs = 2, batch_size = 8, verbose = 0})
  check.same_table(b:get_weights()[1]:totable(), before, 0, "the weight-0 head is untouched")
  check.fails(function() m:compile{optimizer = "sgd", loss = "mse", loss_weights = {1, -1}} end,
    "a list of 2 numbers >= 0")
end

function T.bad_graphs_are_clear_errors()
  local a, b = nn.Input{shape = {3}, name = "a"}, nn.Input{shape = {4}, name = "b"}
  local y = nn.Dense{2}(a)
  check.fails(function() nn.Model{inputs = b, outputs = y} end,
    "they depend on the input 'a', which is not among the model's inputs")
  check.fails(function() nn.Model{inputs = {a, a}, outputs = y} end, "input 'a' is listed twice")
  check.fails(function() nn.Model{inputs = {a, b}, outputs = y} end, "input 'b' is not used by any output")
  check.fails(function() nn.Model{inputs = y, outputs = y} end, "is the output of dense")
  check.fails(function() nn.Add()({a, b}) end, "input 2 has shape (None, 4), which does not broadcast with input 1's (None, 3)")
  local d = nn.Dense{2, name = "d3"}
  d(a)
  check.fails(function() d(b) end, "d3: built for input (None, 3) but got (None, 4) (input from b with shape (None, 4))")
  check.fails(function() nn.Conv2D{4, 3}(a) end, "(input from a with shape (None, 3))")
  check.fails(function() nn.Input{shape = {0}} end, "sizes must be positive integers")
end

-- A checkpoint whose config is `config` (JSON text), for hostile inputs.
local function with_config(config)
  local path = tmp()
  nn._C.save_safetensors(path, {{name = "w", tensor = nn.zeros(64)}}, {format = "lunet", config = config})
  return path
end

local function dense_config(units, extra)
  return '{"format_version": 2, "class": "Functional", "layers": [{"type": "Dense", "args": {"units": ' .. units
    .. '}}], "inputs": [{"shape": [3]}], "nodes": [{"layer": 0, "inputs": [["input", 0]]}], "outputs": '
    .. (extra or '[["node", 0, 0]]') .. '}'
end

function T.hostile_model_files_are_refused_quickly()
  local cases = {
    {string.rep("[", 100000) .. string.rep("]", 100000), "not valid JSON, or nested too deeply"},
    {string.rep('{"a":', 40) .. "1" .. string.rep("}", 40), "nested deeper than 32 levels"},
    {'{"format_version": 2, "class": "Functional", "layers": "many", "inputs": [], "nodes": [], "outputs": []}',
      "the config's 'layers' must be a list"},
    {'{"format_version": 7, "class": "Functional"}', "config format_version 7, this lunet reads 2"},
    {'{"format_version": 2, "layers": [{"type": "Teleport", "args": {}}], "inputs": [], "nodes": [], "outputs": []}',
      "layers[0] ('?') has the unknown type 'Teleport'"},
    {dense_config('"ten"'), "layers[0] (Dense): argument 'units' has the wrong type or is out of range"},
    {dense_config("1e999"), "layers[0] (Dense): argument 'units' has the wrong type or is out of range"},
    {dense_config("1e12"), "layers[0] (Dense): argument 'units' has the wrong type or is out of range"},
    -- a valid but huge layer: its weights would need 24 GB, more than the file holds
    {dense_config("2000000000"), "more than the file holds (the config does not match the weights)"},
    {dense_config("2", '[["node", 0, 1]]'), "outputs[0] names output 1 of node 0, which has 1"},
    {'{"format_version": 2, "layers": [{"type": "Dense", "args": {"units": 2}}], "inputs": [{"shape": [3]}], '
      .. '"nodes": [{"layer": 0, "inputs": [["node", 0, 0]]}], "outputs": [["node", 0, 0]]}',
      "nodes[0].inputs[0] refers to node 0, which does not come before it (a cycle, or a dangling reference)"},
    {'{"format_version": 2, "layers": [{"type": "Dense", "args": {"units": 2}}], "inputs": [{"shape": [3]}], '
      .. '"nodes": [{"layer": 0, "inputs": [["input", 5]]}], "outputs": [["node", 0, 0]]}',
      "names an input the config does not have (it has 1)"},
    {'{"format_version": 2, "layers": [{"type": "Dense", "args": {"units": 2}}], "inputs": [{"shape": [3]}], '
      .. '"nodes": [{"layer": 3, "inputs": [["input", 0]]}], "outputs": []}', "nodes[0] names no layer of the config"},
    {dense_config("2", "[null]"), "outputs[0] is not a tensor reference"},
    {dense_config("2", "[]") , "1 to 16 outputs, got 0"},
    {dense_config("2"), "the file has no tensor 'layers.0.kernel' (does it belong to another model?)"},
  }
  nn.Lambda(function(t) return t end) -- the type is registered: a file still may not name it
  cases[#cases + 1] = {'{"format_version": 2, "layers": [{"type": "Lambda", "args": {}}], "inputs": [], '
    .. '"nodes": [], "outputs": []}', "layers[0] is a Lambda, which runs host-language code and cannot come from a file"}
  for i, c in ipairs(cases) do
    local path = with_config(c[1])
    local t0 = nn._C.now()
    check.fails(function() nn.load_model(path) end, c[2])
    assert(nn._C.now() - t0 < 1, "case " .. i .. " answered quickly")
    os.remove(path)
  end
  -- entries that overlap may not claim more bytes than the file has
  local header = '{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
    .. '"b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
  local path2 = tmp()
  local f = io.open(path2, "wb")
  f:write(string.pack("<I8", #header), header, string.rep("\0", 16))
  f:close()
  check.fails(function() nn.load_model(path2) end, "the tensors claim more bytes than the file holds")
  os.remove(path2)
  -- a config in the old Lua-source format is refused with its version
  local path = tmp()
  nn._C.save_safetensors(path, {{name = "w", tensor = nn.zeros(1)}},
    {format = "lunet", lunet_version = "0.1.0", config = '{["layers"]={}}'})
  check.fails(function() nn.load_model(path) end,
    "saved by lunet 0.1.0 with a model config in Lua source (config format 1)")
  os.remove(path)
end

check.run(T)
