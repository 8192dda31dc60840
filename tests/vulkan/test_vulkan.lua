-- The Vulkan backend from Lua: the CIFAR CNN trains the same on Vulkan as on
-- the CPU, tensors and models move, mixing devices is a clear error.
-- Exits 77 (skipped) where no Vulkan device exists.
package.path = arg[0]:gsub("[^/]+$", "") .. "../lua/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

check.require_vulkan()

local T = {}

local function seed_cnn()
  return nn.Sequential{
    nn.Conv2D{32, 3, activation = "relu", input_shape = {32, 32, 3}}, nn.MaxPooling2D(2),
    nn.Conv2D{64, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Conv2D{128, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Flatten(), nn.Dense{512, activation = "relu"}, nn.Dense{10, activation = "softmax"}}
end

-- 20 steps of the seed CNN from one seed: the losses agree to 1e-3 relative.
function T.cifar_cnn_trains_the_same_on_both_backends()
  nn.use("cpu")
  nn.seed(7)
  local x = nn.rand(160, 32, 32, 3)
  local labels = {}
  for i = 1, 160 do labels[i] = (i * 7) % 10 end
  local y = nn.tensor(labels)
  local function run(backend)
    nn.use(backend)
    nn.seed(1)
    local m = seed_cnn()
    m:compile{optimizer = nn.optimizers.Adam{}, loss = "sparse_categorical_crossentropy"}
    check.eq(m.device, backend, "the model's device")
    local losses = {}
    local cb = nn.callbacks.LambdaCallback{on_epoch_end = function(_, _, logs) losses[#losses + 1] = logs.loss end}
    -- shuffled (the same order on both: nn.seed(1) above); the tolerance was
    -- set on this order, Adam amplifying float reassociation differently on others
    m:fit(x, y, {epochs = 2, batch_size = 16, verbose = 0, callbacks = {cb}})
    return losses, m
  end
  local cpu = run("cpu")
  local gpu, m = run("vulkan")
  for i = 1, #cpu do check.near(gpu[i], cpu[i], 1e-3, "epoch " .. i .. " loss (10 steps each)") end
  nn.use("cpu")
  local p = m:predict(x)
  check.eq(p:device(), "vulkan", "predictions stay on the model's device")
end

function T.tensors_move_and_mixing_is_an_error()
  nn.use("cpu")
  local a = nn.tensor{{1, 2}, {3, 4}}
  local g = a:to("vulkan")
  check.eq(g:device(), "vulkan")
  check.same_table((g * 2 + 1):to("cpu"):totable(), {{3, 5}, {7, 9}})
  check.fails(function() return a + g end, "inputs live on different backends ('cpu' and 'vulkan')")
  local w = nn.ones(2):requires_grad(true)
  ;(w:to("vulkan") * 3):sum():backward()
  check.same_table(w.grad:totable(), {3, 3}, 0, "gradients come back across backends")
end

function T.a_model_moves_with_its_optimizer()
  nn.use("cpu")
  nn.seed(3)
  local x, y = nn.rand(32, 4), nn.rand(32, 2)
  local m = nn.Sequential{nn.Dense{2, input_shape = {4}}}
  m:compile{optimizer = "adam", loss = "mse"}
  m:fit(x, y, {epochs = 1, verbose = 0})
  m:to("vulkan")
  check.eq(m.device, "vulkan")
  local h = m:fit(x, y, {epochs = 1, verbose = 0}) -- host data, batches moved to the device
  assert(h.loss[1] == h.loss[1], "finite loss")
  m:to("cpu")
  check.eq(m:predict(x):device(), "cpu")
end

-- (Embedding ships no test cases, its ids have no finite differences: the
-- GPT below and test_vulkan_loops.lua run it on Vulkan against the CPU.)
function T.every_builtin_layer_agrees_with_the_cpu()
  for _, name in ipairs{"Dense", "Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
      "Flatten", "Dropout", "BatchNormalization", "Activation", "Add", "Concatenate", "LSTM", "GRU", "LayerNormalization", "SimpleRNN", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Conv1D", "MaxPooling1D", "PositionEmbedding", "SinePositionEncoding", "MultiHeadAttention", "TransformerEncoder", "TransformerDecoder", "Reverse", "Rescaling", "CenterCrop", "GlobalMaxPooling2D", "LeakyReLU", "ReLU", "Softmax", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "PReLU", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Conv2DTranspose", "ActivityRegularization", "DepthwiseConv2D", "SeparableConv2D", "Masking"} do
    for _, r in ipairs(nn.check_plugin(name)) do
      local v = r.backends.vulkan
      assert(v, name .. ": no Vulkan comparison")
      assert(v.ok, string.format("%s{%s} on Vulkan: max relative difference %.3g %s", name, r.args, v.max_diff,
        v.error or ""))
    end
  end
end

-- A small GPT on Vulkan: the key/value cache gives the tokens the
-- uncached path does (tokens against the CPU's could differ on a near tie
-- on other GPUs: the layers' outputs are compared above).
-- The random preprocessing layers and Resizing resample on the model's
-- device: Vulkan draws the same transforms and agrees with the CPU.
function T.preprocessing_layers_agree_with_the_cpu()
  nn.use("cpu")
  nn.seed(4)
  local x = nn.rand(6, 9, 8, 3)
  for _, layer in ipairs{nn.RandomFlip{seed = 2, input_shape = {9, 8, 3}},
      nn.RandomRotation{0.25, fill_mode = "constant", seed = 2, input_shape = {9, 8, 3}},
      nn.RandomTranslation{0.2, 0.3, fill_mode = "wrap", seed = 2, input_shape = {9, 8, 3}},
      nn.RandomZoom{0.3, seed = 2, input_shape = {9, 8, 3}}, nn.RandomCrop{6, 5, padding = 1, seed = 2, input_shape = {9, 8, 3}},
      nn.Resizing{5, 12, input_shape = {9, 8, 3}}, nn.Resizing{4, 4, crop_to_aspect_ratio = true, input_shape = {9, 8, 3}}} do
    local m = nn.Sequential{layer}
    local keys = {training = true, epoch = 3, first_index = 7}
    local want, want_inf = m(x, keys), m(x)
    m:to("vulkan")
    local xv = x:to("vulkan")
    check.same_table(m(xv, keys):to("cpu"):totable(), want:totable(), 1e-5, layer.type .. " in training")
    check.same_table(m(xv):to("cpu"):totable(), want_inf:totable(), 1e-5, layer.type .. " at inference")
  end
end

-- BatchNormalization under a padding mask (its weighted moments are tape
-- ops): a training step on Vulkan gives the CPU's weights.
function T.masked_batchnorm_trains_as_on_the_cpu()
  local weights = {}
  for _, backend in ipairs{"cpu", "vulkan"} do
    nn.use("cpu")
    nn.seed(5)
    local x = nn.randn(3, 4, 2):totable()
    x[1][4], x[2][3], x[2][4] = {0, 0}, {0, 0}, {0, 0}
    local m = nn.Sequential{nn.Masking{input_shape = {4, 2}}, nn.BatchNormalization{momentum = 0.5}, nn.Dense(1)}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "mse"}
    m:to(backend)
    m:train_on_batch(nn.tensor(x):to(backend), nn.randn(3, 4, 1):to(backend))
    weights[backend] = m:get_weights()
  end
  nn.use("cpu")
  for k, w in ipairs(weights.cpu) do
    check.same_table(weights.vulkan[k]:to("cpu"):totable(), w:totable(), 1e-5, "weight " .. k .. " on Vulkan")
  end
end

-- The optimizers written with tensor ops (Adam with amsgrad and centered
-- RMSprop among them) run on Vulkan as on the CPU.
function T.op_written_optimizers_agree_with_the_cpu()
  local extra = {Adam = {amsgrad = true, weight_decay = 0.01}, RMSprop = {centered = true, momentum = 0.5}}
  for _, name in ipairs{"Adagrad", "Adadelta", "Adamax", "Nadam", "Lion", "Adam", "RMSprop"} do
    local results = {}
    for _, backend in ipairs{"cpu", "vulkan"} do
      nn.use("cpu")
      nn.seed(9)
      local p0, gs = nn.randn(5, 3), {nn.randn(5, 3), nn.randn(5, 3), nn.randn(5, 3)}
      local p = p0:to(backend):requires_grad(true)
      local args = extra[name] or {weight_decay = 0.01}
      args.learning_rate = 0.05
      local opt = nn.optimizers[name](args)
      for _, g in ipairs(gs) do
        (p * g:to(backend)):sum():backward()
        opt:apply({p})
      end
      results[backend] = p:to("cpu"):totable()
    end
    nn.use("cpu")
    check.same_table(results.vulkan, results.cpu, 1e-5, name .. " on Vulkan")
  end
end

-- Same seed, same device: identical weights after an epoch (shuffle,
-- dropout and every kernel deterministic), bit for bit.
function T.training_is_reproducible_on_vulkan()
  nn.use("cpu")
  nn.seed(31)
  local x, y = nn.rand(48, 8, 8, 3), nn.tensor((function() local t = {} for i = 1, 48 do t[i] = i % 4 end return t end)())
  local function run()
    nn.use("vulkan")
    nn.seed(5)
    local m = nn.Sequential{nn.Conv2D{4, 3, activation = "relu", input_shape = {8, 8, 3}}, nn.MaxPooling2D(2),
      nn.Flatten(), nn.Dropout(0.2), nn.Dense{4, activation = "softmax"}}
    m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
    m:fit(x, y, {epochs = 1, batch_size = 8, verbose = 0})
    local w = {}
    for i, t in ipairs(m:get_weights()) do w[i] = t:to("cpu"):totable() end
    nn.use("cpu")
    return w
  end
  check.same_table(run(), run(), 0, "two runs")
end

-- A save in the middle of training resumes exactly on Vulkan: two epochs,
-- a save, a third epoch; the saved file loaded, moved to Vulkan and trained
-- for the third epoch gives the same weights, bit for bit (the file holds
-- the optimizer's state, the epoch and the RNG's position: the third
-- epoch's shuffle and dropout match).
function T.save_and_resume_exactly_on_vulkan()
  nn.use("cpu")
  nn.seed(32)
  local labels = {}
  for i = 1, 48 do labels[i] = i % 4 end
  local x, y = nn.rand(48, 8, 8, 3), nn.tensor(labels)
  local function weights(m)
    local w = {}
    for i, t in ipairs(m:get_weights()) do w[i] = t:to("cpu"):totable() end
    return w
  end
  nn.use("vulkan")
  nn.seed(6)
  local m = nn.Sequential{nn.Conv2D{4, 3, activation = "relu", input_shape = {8, 8, 3}}, nn.MaxPooling2D(2),
    nn.Flatten(), nn.Dropout(0.2), nn.Dense{4, activation = "softmax"}}
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
  m:fit(x, y, {epochs = 2, batch_size = 8, verbose = 0})
  local path = check.tmpdir() .. "/mid.safetensors"
  m:save(path)
  m:fit(x, y, {epochs = 3, initial_epoch = 2, batch_size = 8, verbose = 0})
  local straight = weights(m)
  local back = nn.load_model(path):to("vulkan")
  back:fit(x, y, {epochs = 3, initial_epoch = back.epoch, batch_size = 8, verbose = 0})
  nn.use("cpu")
  check.same_table(weights(back), straight, 0, "resumed against uninterrupted")
end

function T.generation_with_the_cache_on_vulkan()
  nn.seed(40)
  local inp = nn.Input{shape = {6}}
  local e = nn.Embedding{9, 8}(inp)
  local h = nn.Add()({e, nn.PositionEmbedding{6}(e)})
  h = nn.TransformerDecoder{16, 2, normalize_first = true}(h)
  local m = nn.Model{inputs = inp, outputs = nn.Dense{9, activation = "softmax"}(h)}
  m:to("vulkan")
  local cached = m:generate({1, 2}, {max_new_tokens = 8, temperature = 0})
  local plain = m:generate({1, 2}, {max_new_tokens = 8, temperature = 0, use_cache = false})
  check.same_table(cached, plain, 0, "cache on Vulkan")
end

function T.devices_are_listed()
  local vk
  for _, b in ipairs(nn.backends()) do if b.name == "vulkan" then vk = b end end
  assert(#vk.devices >= 1, "at least one device")
  local in_use = 0
  for _, d in ipairs(vk.devices) do
    assert(d.name ~= "" and d.type ~= "" and d.memory > 0, "device fields")
    if d.in_use then in_use = in_use + 1 end
  end
  check.eq(in_use, 1, "devices in use")
end

-- A LUNET_VULKAN_* switch with a value it does not take makes the backend
-- unavailable, saying which (a typo was read as the default or as 0).
function T.bad_switches_are_errors()
  local function run(env)
    return check.lunet(env, 'local nn = require "lunet"; print((nn.ones(2):to("vulkan") * 2):to("cpu"):sum():item())')
  end
  local cases = {
    {"LUNET_VULKAN_FLUSH=eight", "LUNET_VULKAN_FLUSH=eight: expected a whole number of commands"},
    {"LUNET_VULKAN_FLUSH=-1", "LUNET_VULKAN_FLUSH=-1: expected"},
    {"LUNET_VULKAN_TILE=4", "LUNET_VULKAN_TILE=4: expected 8 or 16"},
    {"LUNET_VULKAN_VALIDATION=yes", "LUNET_VULKAN_VALIDATION=yes: expected 0 or 1"},
    {"LUNET_VULKAN_SUBGROUPS=off", "LUNET_VULKAN_SUBGROUPS=off: expected 0 or 1"},
    {"LUNET_VULKAN_FAULT=submit:3:gone", "LUNET_VULKAN_FAULT=submit:3:gone: expected count or submit:N[:lost|oom]"},
    {"LUNET_VULKAN_FAULT=submit:3x", "LUNET_VULKAN_FAULT=submit:3x: expected"},
  }
  for _, c in ipairs(cases) do
    local out = run(c[1])
    assert(out:find(c[2], 1, true), c[1] .. ": " .. out)
  end
  for _, good in ipairs{"LUNET_VULKAN_FLUSH=0", "LUNET_VULKAN_TILE=8", "LUNET_VULKAN_SUBGROUPS=0",
                        "LUNET_VULKAN_FAULT=submit:100000:oom"} do
    local out = run(good)
    assert(out:find("^4") or out:find("\n4"), good .. ": " .. out)
  end
end

check.run(T)
