-- Every optimizer: six updates against torch.optim configured to Keras's
-- formulas (SGD with momentum and Nesterov, RMSprop with and without
-- momentum and centered, Adam with and without amsgrad, AdamW, Adagrad,
-- Adadelta, Adamax), four schedules against
-- torch's schedulers (Nadam: Keras's formula in
-- float64, torch 1.13's NAdam being off; fixture make_torch_optimizers.py),
-- Lion and decoupled weight decay against the formula in plain Lua, saved
-- state that resumes exactly, names and bad arguments.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. here .. "../fixtures/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local F = require "torch_optimizers"

local T = {}

-- Runs opt over the fixture's gradients: the gradient of sum(p * g) is g.
local function run(opt, p0, grads, each)
  local p = nn.tensor(p0):requires_grad(true)
  for i, g in ipairs(grads) do
    (p * nn.tensor(g)):sum():backward()
    opt:apply({p})
    each(i, p:totable())
  end
end

function T.updates_match_torch_configured_as_keras()
  for _, name in ipairs{"Adadelta", "Adagrad", "Adamax", "Nadam", "SGD", "SGD_nesterov", "RMSprop",
                        "RMSprop_momentum", "RMSprop_centered", "RMSprop_centered_momentum", "Adam", "Adam_amsgrad",
                        "AdamW"} do
    local case = F[name]
    run(nn.optimizers[name:match("^[^_]+")](case.args), F.p0, F.grads, function(i, got)
      check.same_table(got, case.steps[i], 2e-6, name .. " step " .. i)
    end)
  end
end

-- SGD under each schedule, against torch's schedulers stepping once per
-- update.
function T.schedules_match_torch_schedulers()
  for name, case in pairs(F.schedules) do
    local sched = nn.schedules[name](table.unpack(case.args))
    run(nn.optimizers.SGD{learning_rate = sched}, F.p0, F.grads, function(i, got)
      check.same_table(got, case.steps[i], 2e-6, name .. " step " .. i)
    end)
  end
end

-- Lion (Keras 3): p -= lr * sign(b1 m + (1 - b1) g); m = b2 m + (1 - b2) g,
-- after the decoupled decay p -= lr * wd * p, in doubles.
function T.lion_and_weight_decay_match_the_formula()
  local lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
  local p, m = {}, {}
  for r = 1, 3 do
    p[r], m[r] = {}, {}
    for c = 1, 4 do p[r][c], m[r][c] = F.p0[r][c], 0 end
  end
  local function sign(v) return v > 0 and 1 or v < 0 and -1 or 0 end
  run(nn.optimizers.Lion{learning_rate = lr, weight_decay = wd}, F.p0, F.grads, function(i, got)
    local g = F.grads[i]
    for r = 1, 3 do
      for c = 1, 4 do
        p[r][c] = p[r][c] - lr * wd * p[r][c]
        p[r][c] = p[r][c] - lr * sign(b1 * m[r][c] + (1 - b1) * g[r][c])
        m[r][c] = b2 * m[r][c] + (1 - b2) * g[r][c]
      end
    end
    check.same_table(got, p, 1e-5, "Lion step " .. i)
  end)
  -- Adagrad with Keras's epsilon inside the root, and weight decay
  local acc, q = {}, {}
  for r = 1, 3 do
    acc[r], q[r] = {}, {}
    for c = 1, 4 do acc[r][c], q[r][c] = 0.1, F.p0[r][c] end
  end
  run(nn.optimizers.Adagrad{learning_rate = 0.05, weight_decay = 0.2}, F.p0, F.grads, function(i, got)
    local g = F.grads[i]
    for r = 1, 3 do
      for c = 1, 4 do
        q[r][c] = q[r][c] - 0.05 * 0.2 * q[r][c]
        acc[r][c] = acc[r][c] + g[r][c] ^ 2
        q[r][c] = q[r][c] - 0.05 * g[r][c] / math.sqrt(acc[r][c] + 1e-7)
      end
    end
    check.same_table(got, q, 1e-5, "Adagrad with decay, step " .. i)
  end)
  -- RMSprop with decay, plain and centered with momentum (Keras 3's
  -- rmsprop.py after the base optimizer's decay), and a decay set on the
  -- object after construction
  for _, o in ipairs{{momentum = 0, centered = false}, {momentum = 0.5, centered = true}, {late = true}} do
    local lr, rho, wd = 0.01, 0.9, 0.3
    local v, a, mom, r = {}, {}, {}, {}
    for i = 1, 3 do
      v[i], a[i], mom[i], r[i] = {}, {}, {}, {}
      for c = 1, 4 do v[i][c], a[i][c], mom[i][c], r[i][c] = 0, 0, 0, F.p0[i][c] end
    end
    local opt = nn.optimizers.RMSprop{learning_rate = lr, momentum = o.momentum, centered = o.centered,
                                      weight_decay = not o.late and wd or nil}
    if o.late then opt.weight_decay = wd end
    local momentum = o.momentum or 0
    run(opt, F.p0, F.grads, function(step, got)
      local g = F.grads[step]
      for i = 1, 3 do
        for c = 1, 4 do
          r[i][c] = r[i][c] - lr * wd * r[i][c]
          v[i][c] = rho * v[i][c] + (1 - rho) * g[i][c] ^ 2
          local den = v[i][c]
          if o.centered then
            a[i][c] = rho * a[i][c] + (1 - rho) * g[i][c]
            den = den - a[i][c] ^ 2
          end
          local inc = lr * g[i][c] / math.sqrt(den + 1e-7)
          if momentum > 0 then
            mom[i][c] = momentum * mom[i][c] + inc
            inc = mom[i][c]
          end
          r[i][c] = r[i][c] - inc
        end
      end
      check.same_table(got, r, 1e-5, "RMSprop with decay (momentum " .. momentum .. "), step " .. step)
    end)
  end
end

-- A model compiled with each new optimizer trains, saves its state and,
-- loaded, continues exactly where the original does.
function T.state_is_saved_and_resumes_exactly()
  local amsgrad = function() return nn.optimizers.Adam{learning_rate = 0.01, amsgrad = true, weight_decay = 0.01} end
  local centered = function() return nn.optimizers.RMSprop{centered = true, momentum = 0.5, weight_decay = 0.01} end
  for _, name in ipairs{"adagrad", "adadelta", "adamax", "nadam", "lion", amsgrad, centered} do
    nn.seed(3)
    local x, y = nn.randn(32, 4), nn.randn(32, 1)
    local m = nn.Sequential{nn.Dense{8, activation = "tanh", input_shape = {4}}, nn.Dense(1)}
    m:compile{optimizer = type(name) == "function" and name() or name, loss = "mse"}
    name = type(name) == "string" and name or m.optimizer.name .. (m.optimizer.amsgrad and " amsgrad" or " centered")
    local first = m:fit(x, y, {epochs = 3, batch_size = 8, shuffle = false, verbose = 0})
    assert(first.loss[3] < first.loss[1], name .. " did not lower the loss: " .. first.loss[1] .. " -> " .. first.loss[3])
    local path = os.tmpname()
    m:save(path)
    local back = nn.load_model(path)
    os.remove(path)
    check.eq(back.optimizer.name, m.optimizer.name, name .. ": the optimizer comes back (Adam with decay as Adam)")
    check.eq(back.optimizer.amsgrad, m.optimizer.amsgrad, name .. ": amsgrad comes back")
    check.eq(back.optimizer.centered, m.optimizer.centered, name .. ": centered comes back")
    m:fit(x, y, {epochs = 1, batch_size = 8, shuffle = false, verbose = 0})
    back:fit(x, y, {epochs = 1, batch_size = 8, shuffle = false, verbose = 0})
    check.same_table(back:predict(x):totable(), m:predict(x):totable(), 0, name .. ": resumed training")
  end
end

function T.names_and_bad_arguments()
  check.eq(nn.optimizers.get("Nadam").name, "Nadam", "by name")
  check.eq(nn.optimizers.Adadelta().rho, 0.95, "Keras's default rho")
  check.eq(nn.optimizers.Adagrad().initial_accumulator_value, 0.1, "Keras's default accumulator")
  check.fails(function() nn.optimizers.get("adamx") end, "valid: sgd, adam, adamw, rmsprop, adagrad, adadelta")
  check.fails(function() nn.optimizers.Lion{rho = 0.9} end, "rho")
  check.fails(function() nn.optimizers.Adagrad{initial_accumulator_value = -1} end, "initial_accumulator_value must be >= 0")
  check.fails(function() nn.optimizers.Adam{amsgrad = 1} end, "'amsgrad' to 'Adam' (boolean expected, got number)")
  check.fails(function() nn.optimizers.SGD{centered = true} end, "unknown argument")
  check.eq(nn.optimizers.AdamW{amsgrad = true}.amsgrad, true, "AdamW takes amsgrad")
  -- printed with its arguments (it was a table address)
  check.eq(tostring(nn.optimizers.SGD{learning_rate = nn.schedules.ExponentialDecay(0.1, 10, 0.9), clipnorm = 1}),
    "SGD{learning_rate = ExponentialDecay{decay_rate = 0.9, decay_steps = 10, initial_learning_rate = 0.1}, "
    .. "momentum = 0, nesterov = false, weight_decay = 0, clipnorm = 1} (0 updates)", "an optimizer's text")
  -- once it has state, what decides its slots stays (a centered mean gradient is no momentum)
  local w = nn.tensor{1.0, 2.0}:requires_grad(true)
  local rms = nn.optimizers.RMSprop{centered = true}
  ;(w * nn.tensor{1, 1}):sum():backward()
  rms:apply({w})
  rms.momentum = 0.9
  ;(w * nn.tensor{1, 1}):sum():backward()
  check.fails(function() rms:apply({w}) end, "whether momentum is on cannot change once the optimizer has state")
  -- the core refuses the flags on another kind (the C API has no argument lists)
  check.fails(function() nn._C.optimizer_new{kind = "sgd", amsgrad = true} end, "amsgrad is an argument of Adam")
  check.fails(function() nn._C.optimizer_new{kind = "adam", centered = true} end, "centered is an argument of RMSprop")
  -- clipping works on the new ones too: a clipvalue of 0 ... 1e-3 caps Adagrad's first step
  local p = nn.tensor{10.0}:requires_grad(true)
  ;(p * nn.tensor{1000.0}):sum():backward()
  nn.optimizers.Adagrad{learning_rate = 1, clipvalue = 0.001}:apply({p})
  check.near(p:totable()[1], 10 - 0.001 / math.sqrt(0.1 + 1e-6 + 1e-7), 1e-6, "clipped gradient")
end

-- opt:apply(model) updates the model's trainable weights (it took the
-- model for an empty list: no weight moved, the step still counted);
-- anything but a non-empty list of tensors is an error.
function T.apply_takes_a_model_or_a_list_of_tensors()
  nn.seed(2)
  local m = nn.Sequential{nn.Dense{3, input_shape = {2}}, nn.Dense{1}}
  m.layers[2].trainable = false
  local x, y = nn.randn(8, 2), nn.randn(8, 1)
  local opt = nn.optimizers.SGD{learning_rate = 0.1}
  local before = m:get_weights()
  ;(m(x, true) - y):square():mean():backward()
  local tw = m:trainable_weights()
  check.eq(#tw, 2, "the first layer's kernel and bias; the frozen one's left out")
  local grads = {tw[1].grad:clone(), tw[2].grad:clone()}
  opt:apply(m)
  local after = m:get_weights()
  for i = 1, 2 do
    check.same_table(after[i]:totable(), (before[i] - grads[i] * 0.1):totable(), 1e-7, "w - lr g, weight " .. i)
    assert((after[i] - before[i]):abs():max():item() > 1e-4, "weight " .. i .. " did not move")
  end
  for i = 3, 4 do check.same_table(after[i]:totable(), before[i]:totable(), 0, "frozen weight " .. i) end
  check.eq(opt.iterations, 1, "one step")
  check.eq(tw[1].grad, nil, "the gradients cleared")
  check.fails(function() opt:apply({}) end, "a list of tensors expected, got an empty table")
  check.fails(function() opt:apply(after[1]) end, "got a tensor (put it in a list)")
  check.fails(function() opt:apply({after[1], 3}) end, "entry 2 is a number, not a tensor")
  check.eq(opt.iterations, 1, "no step counted for the refused calls")
  local a, b = nn.zeros(2):requires_grad(true), nn.zeros(2):requires_grad(true)
  local own = nn.optimizers.SGD{}
  ;(a:sum() + b:sum()):backward()
  own:apply({a, b})
  ;(a:sum() + b:sum()):backward()
  check.fails(function() own:apply({b, a}) end, "its state is kept per position, so give the same tensors in the same order")
end

check.run(T)
