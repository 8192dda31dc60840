-- Models: training learns, checkpoints round-trip, layers pass gradient
-- checks, bad input gets clear errors.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

-- y = 3 x1 - 2 x2 + 1, learned by one Dense unit with MSE.
function T.dense_mse_learns_linear_map()
  nn.seed(11)
  local x = nn.randn(256, 2)
  local y = x:matmul(nn.tensor{{3}, {-2}}) + 1
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mean_squared_error"}
  local h = m:fit(x, y, {epochs = 30, batch_size = 32, verbose = 0})
  assert(h.loss[#h.loss] < 1e-4, "final loss " .. h.loss[#h.loss])
  local w = m:get_weights()
  check.same_table(w[1]:totable(), {{3}, {-2}}, 1e-2, "kernel")
  check.same_table(w[2]:totable(), {1}, 1e-2, "bias")
end

local function blobs(n)
  nn.seed(5)
  local x = nn.randn(n, 8, 8, 1)
  local labels = {}
  for i = 1, n do labels[i] = (i - 1) % 3 end
  local y = nn.tensor(labels)
  -- class c brightens a third of the image
  local mask = {}
  for i = 1, n do
    local img = {}
    for r = 1, 8 do
      img[r] = {}
      for c = 1, 8 do img[r][c] = {((c - 1) // 3 == labels[i]) and 2 or 0} end
    end
    mask[i] = img
  end
  return x + nn.tensor(mask), y
end

local function small_cnn()
  return nn.Sequential{
    nn.Conv2D{4, 3, activation = "relu", padding = "same", input_shape = {8, 8, 1}},
    nn.MaxPooling2D(2), nn.BatchNormalization(), nn.Flatten(), nn.Dropout(0.1),
    nn.Dense{3, activation = "softmax", kernel_regularizer = nn.regularizers.l2(1e-4)}}
end

function T.cnn_learns_and_is_reproducible()
  local x, y = blobs(192)
  local function run()
    nn.seed(42)
    local m = small_cnn()
    m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
    return m, m:fit(x, y, {epochs = 8, batch_size = 16, validation_split = 0.25, verbose = 0})
  end
  local m, h = run()
  assert(h.val_accuracy[#h.val_accuracy] > 0.9, "val accuracy " .. h.val_accuracy[#h.val_accuracy])
  check.eq(#h.loss, 8, "history entries")
  local _, h2 = run()
  for i = 1, 8 do check.eq(h2.loss[i], h.loss[i], "loss of epoch " .. i .. " with the same seed") end
  local p = m:predict(x)
  check.same_table(p:shape(), {192, 3})
  check.near(p[1]:sum():item(), 1, 1e-5, "softmax rows sum to one")
  -- many batches (more than nn.cat once took: 64) give the same rows as one
  local many = nn.cat({x, x, x, x, x, x, x, x, x, x, x}, 1) -- 2112 samples
  local split = m:predict(many, {batch_size = 16})
  check.same_table(split:shape(), {2112, 3}, 0, "132 batches")
  check.same_table(split:totable(), m:predict(many, {batch_size = 4096}):totable(), 1e-6, "batched as one")
end

function T.save_and_load_resume_exactly()
  local x, y = blobs(96)
  nn.seed(9)
  local m = small_cnn()
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 3e-3}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  m:fit(x, y, {epochs = 2, batch_size = 16, verbose = 0})
  local path = os.tmpname()
  m:save(path)
  local before = m:evaluate(x, y)
  local h1 = m:fit(x, y, {epochs = 3, initial_epoch = 2, batch_size = 16, verbose = 0})
  local m2 = nn.load_model(path)
  check.near(m2:evaluate(x, y).loss, before.loss, 1e-6, "loaded model's loss")
  local h2 = m2:fit(x, y, {epochs = 3, initial_epoch = m2.epoch, batch_size = 16, verbose = 0})
  check.near(h2.loss[1], h1.loss[1], 1e-6, "resumed training loss")
  -- loading alone leaves the user's seed (it replaced it: nn.seed(7) and
  -- nn.seed(8) then drew the same numbers)
  nn.seed(7)
  nn.load_model(path)
  local after7 = nn.rand(3):totable()
  nn.seed(8)
  nn.load_model(path)
  local after8 = nn.rand(3):totable()
  nn.seed(8)
  check.same_table(after8, nn.rand(3):totable(), 0, "seed 8's stream, loaded or not")
  assert(after7[1] ~= after8[1], "two seeds, two streams")
  -- a truncated checkpoint and one from another model are refused
  local f = io.open(path, "rb")
  local bytes = f:read("a")
  f:close()
  local cut = os.tmpname()
  f = io.open(cut, "wb")
  f:write(bytes:sub(1, #bytes - 100))
  f:close()
  check.fails(function() nn.load_model(cut) end, "truncated or corrupt")
  -- the tensors must tile the data exactly (safetensors' rule): bytes
  -- appended, or a header length one short (the header ends in padding, so
  -- its JSON still parses, and every tensor would be read a byte off), are
  -- errors, not wrong weights
  local hlen = string.unpack("<I8", bytes)
  for _, mangled in ipairs{bytes .. "\0\0\0\0", string.pack("<I8", hlen - 1) .. bytes:sub(9)} do
    f = io.open(cut, "wb")
    f:write(mangled)
    f:close()
    check.fails(function() nn.load_model(cut) end, "the file is corrupt")
  end
  local other = nn.Sequential{nn.Dense{2, input_shape = {5}}}
  check.fails(function() other:load_weights(path) end, "belongs to another model: 'layers.0.kernel' has shape (3, 3, 1, 4), this model expects (5, 2)")
  -- a weights file and a file of another kind say what they are (they said
  -- "no lunet model config" and "truncated?")
  other:save_weights(cut)
  check.fails(function() nn.load_model(cut) end, "a weights file (model:save_weights): it holds no model")
  f = io.open(cut, "wb")
  f:write("\137PNG\r\n\26\n\0\0\0\rIHDR\0\0\0\1")
  f:close()
  check.fails(function() nn.load_model(cut) end, "not a safetensors file")
  os.remove(path)
  os.remove(cut)
end

-- A safetensors header is checked entry by entry (inputs the fuzzer found):
-- sizes are whole numbers within the file, a name appears once, metadata
-- maps strings to strings.  Each is an error naming the fault.
function T.safetensors_header_faults()
  local dir = check.tmpdir()
  local function file(header, data)
    local path = dir .. "/bad.safetensors"
    local f = assert(io.open(path, "wb"))
    f:write(string.pack("<I8", #header), header, data or string.rep("\0", 16))
    f:close()
    return path
  end
  local ok = file('{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"k":"v"}}')
  check.fails(function() nn.load_model(ok) end, "config") -- a valid file, but no model in it
  local cases = {
    {'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1e42]}}', "lies outside the file"},
    {'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0.5,16.5]}}', "lies outside the file"},
    {'{"w":{"dtype":"F32","shape":[2.5,2],"data_offsets":[0,16]}}', "a dimension is not a whole number"},
    {'{"w":{"dtype":"F32","shape":["2",2],"data_offsets":[0,16]}}', "a dimension is not a whole number"},
    {'{"w":{"dtype":"F32","shape":[1e300,1e300,1e300],"data_offsets":[0,16]}}', "a dimension is not a whole number"},
    {'{"w":{"dtype":"F32","shape":[16,16,16,16],"data_offsets":[0,16]}}', "larger than the file"},
    {'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}',
      "names 'w' twice"},
    {'{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"k":1}}', "metadata 'k' is not a string"},
    {'{"__metadata__":[1]}', "__metadata__ is not an object"},
  }
  for _, c in ipairs(cases) do check.fails(function() nn.load_model(file(c[1])) end, c[2]) end
end

-- Metrics are logged under the name the user wrote, as in Keras: "acc"
-- gives acc and val_acc, which callbacks can watch.
function T.metrics_keep_the_users_name()
  nn.seed(7)
  local x = nn.randn(32, 4)
  local labels = {}
  for i, row in ipairs(x:totable()) do labels[i] = (row[1] + row[2] > 0) and 1 or 0 end
  local y = nn.tensor(labels)
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {4}}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.05}, loss = "sparse_categorical_crossentropy", metrics = {"acc"}}
  local seen = {}
  local stop = nn.callbacks.EarlyStopping{monitor = "val_acc", patience = 100, mode = "max"}
  local hist = m:fit(x, y, {epochs = 3, batch_size = 8, verbose = 0, validation_split = 0.25, callbacks = {stop,
    nn.callbacks.LambdaCallback{on_epoch_end = function(_, _, logs) for k in pairs(logs) do seen[k] = true end end}}})
  assert(hist.acc and hist.val_acc and #hist.acc == 3, "history under acc")
  assert(seen.acc and seen.val_acc and not seen.accuracy, "logs under acc")
  check.eq(m:evaluate(x, y).acc ~= nil, true, "evaluate too")
end

-- Callbacks: a watched key that is never logged warns once, naming the
-- logged ones; ModelCheckpoint fills Keras's format fields and refuses a
-- Keras file name.
function T.callbacks_say_what_they_cannot_do()
  nn.seed(8)
  local x, y = nn.randn(16, 3), nn.tensor{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {3}}}
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  local said, real = {}, io.stderr
  io.stderr = {write = function(_, s) said[#said + 1] = s end}
  local ok, err = pcall(m.fit, m, x, y, {epochs = 3, verbose = 0, callbacks = {nn.callbacks.EarlyStopping{patience = 0}}})
  io.stderr = real
  assert(ok, err)
  check.eq(#said, 1, "warned once")
  assert(said[1]:find("EarlyStopping watches 'val_loss', which is not logged (logged: accuracy, loss)", 1, true), said[1])
  assert(said[1]:find("give fit validation_data", 1, true), said[1])
  assert(said[1]:find("; it does nothing", 1, true), said[1])
  -- save_best_only on an unlogged value saves every epoch, and says so
  local every = os.tmpname()
  said = {}
  io.stderr = {write = function(_, s) said[#said + 1] = s end}
  ok, err = pcall(m.fit, m, x, y, {epochs = 2, verbose = 0,
    callbacks = {nn.callbacks.ModelCheckpoint{path = every .. "-{epoch}.safetensors", save_best_only = true}}})
  io.stderr = real
  assert(ok, err)
  assert(#said == 1 and said[1]:find("which is not logged (logged: accuracy, loss); give fit validation_data or "
    .. "validation_split; it saves every epoch", 1, true), said[1])
  for e = 1, 2 do check.eq(os.remove(every .. "-" .. e .. ".safetensors"), true, "checkpoint of epoch " .. e) end
  os.remove(every)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local ck = nn.callbacks.ModelCheckpoint{path = dir .. "/m-{epoch:02d}-{loss:.2f}-{accuracy}.safetensors"}
  m:fit(x, y, {epochs = 2, verbose = 0, callbacks = {ck}})
  local names = {}
  for f in io.popen("ls " .. dir):lines() do names[#names + 1] = f end
  check.eq(#names, 2, "two checkpoints")
  assert(names[1]:match("^m%-01%-%d+%.%d%d%-[%d.]+%.safetensors$"), names[1])
  assert(names[2]:match("^m%-02%-"), names[2])
  os.execute("rm -rf " .. dir)
  check.fails(function() nn.callbacks.ModelCheckpoint{path = "best.keras"} end,
    "ModelCheckpoint: 'best.keras' names a Keras .keras file, but lunet writes safetensors")
  check.fails(function() m:save("model.h5") end, "save: 'model.h5' names a Keras .h5 file")
  local bad = nn.callbacks.ModelCheckpoint{path = os.tmpname() .. "-{val_acc}.safetensors"}
  check.fails(function() m:fit(x, y, {epochs = 1, verbose = 0, callbacks = {bad}}) end,
    "ModelCheckpoint: the path names {val_acc}, which is not logged")
end

-- Preprocessing in the model: training, validation, evaluate and predict
-- all see it (nn.augment's Rescaling changed training batches only: a
-- val_loss of 58.9 against 0.72 on the same data), and it is saved with the
-- model.  Normalization's statistics against naive sums; an unadapted one
-- refuses to run.
function T.preprocessing_layers_live_in_the_model()
  nn.seed(9)
  local raw = nn.rand(64, 4, 4, 3) * 255
  local labels = {}
  for i, img in ipairs(raw:totable()) do labels[i] = img[1][1][1] > 127 and 1 or 0 end
  local y = nn.tensor(labels)
  local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {4, 4, 3}}, nn.Flatten(), nn.Dense{2, activation = "softmax"}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.05}, loss = "sparse_categorical_crossentropy"}
  local h = m:fit(raw, y, {epochs = 5, batch_size = 16, verbose = 0, validation_data = {raw, y}})
  check.near(h.val_loss[5], m:evaluate(raw, y).loss, 1e-4, "validation = evaluate on the same data")
  assert(math.abs(h.val_loss[5] - h.loss[5]) < 0.3, "validation sees what training saw")
  -- Normalization: the mean and (population) variance of each channel
  local norm = nn.Normalization()
  check.fails(function() norm(nn.randn(2, 3)) end, "not adapted: call layer:adapt(x) on training data first")
  local data = nn.randn(50, 5, 3) * nn.tensor{1, 2, 3} + nn.tensor{10, -1, 0}
  norm = nn.Normalization()
  norm:adapt(data, {batch_size = 7})
  local w = norm:get_weights()
  local t = data:totable()
  for c = 1, 3 do
    local sum, sq = 0, 0
    for n = 1, 50 do for k = 1, 5 do sum = sum + t[n][k][c] end end
    local mean = sum / 250
    for n = 1, 50 do for k = 1, 5 do sq = sq + (t[n][k][c] - mean) ^ 2 end end
    check.near(w[1]:totable()[c], mean, 1e-5, "mean")
    check.near(w[2]:totable()[c], sq / 250, 1e-4, "variance")
  end
  check.eq(w[3]:totable()[1], 250, "count")
  local z = norm(data):reshape(250, 3)
  check.same_table(z:mean(1):totable(), {0, 0, 0}, 1e-4, "standardized mean")
  check.same_table((z:square()):mean(1):totable(), {1, 1, 1}, 1e-3, "standardized variance")
  local inp = nn.Input{shape = {5, 3}}
  local model = nn.Model{inputs = inp, outputs = nn.Dense{1}(norm(inp))}
  local path = os.tmpname()
  model:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.same_table(back:predict(data):totable(), model:predict(data):totable(), 1e-6, "saved with the model")
  -- CenterCrop: Keras's window (the odd margin at the bottom and right)
  local img = nn.arange(0, 30):reshape(1, 5, 6, 1)
  local crop = nn.CenterCrop{2, 3}(img):reshape(2, 3):totable()
  check.same_table(crop, {{7, 8, 9}, {13, 14, 15}}, 0, "centre window")
  -- a crop larger than the images on an axis: Keras's smart_resize (it was an error), as Resizing with
  -- crop_to_aspect_ratio; on Vulkan too
  local up = nn.Sequential{nn.CenterCrop{8, 2, input_shape = {5, 6, 1}}}
  check.same_table(up.output_shape, {8, 2, 1}, 0, "the crop's size")
  local want = nn.Sequential{nn.Resizing{8, 2, crop_to_aspect_ratio = true, input_shape = {5, 6, 1}}}:predict(img)
  check.same_table(up:predict(img):totable(), want:totable(), 1e-6, "smart_resize")
  if check.vulkan() then
    up:to("vulkan")
    check.same_table(up:predict(img:to("vulkan")):to("cpu"):totable(), want:totable(), 1e-5, "smart_resize on Vulkan")
  end
end

-- BackupAndRestore: a fit cut short after epoch 2 and run again ends with
-- the weights of a fit never interrupted, bit for bit (dropout and the
-- shuffles draw from the restored RNG position).
function T.backup_and_restore_resumes_exactly()
  local dir = os.tmpname()
  os.remove(dir)
  nn.seed(5)
  local x, y = nn.randn(40, 3), nn.randn(40, 1)
  local function make()
    nn.seed(21)
    local m = nn.Sequential{nn.Dense{8, activation = "relu", input_shape = {3}}, nn.Dropout{0.3}, nn.Dense(1)}
    m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.01}, loss = "mse"}
    return m
  end
  local whole = make()
  whole:fit(x, y, {epochs = 5, batch_size = 8, verbose = 0})
  local cut = make()
  local crash = nn.callbacks.LambdaCallback{on_epoch_end = function(_, epoch) if epoch == 1 then error("power cut") end end}
  local ok, err = pcall(cut.fit, cut, x, y, {epochs = 5, batch_size = 8, verbose = 0,
    callbacks = {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}, crash}})
  assert(not ok and tostring(err):find("power cut"), "the fit was not cut: " .. tostring(err))
  -- a model trained by another optimizer is refused before anything changes (an Adam backup became a
  -- Nadam's state; into an SGD it failed after replacing the weights)
  local other = make()
  other:compile{optimizer = nn.optimizers.SGD{momentum = 0.9}, loss = "mse"}
  local before = other:get_weights()[1]:totable()
  check.fails(function() other:fit(x, y, {epochs = 5, batch_size = 8, verbose = 0,
    callbacks = {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}}}) end,
    "was made by a model trained with Adam; this one trains with SGD with momentum")
  check.same_table(other:get_weights()[1]:totable(), before, 0, "its weights as they were")
  local again = make()
  local h = again:fit(x, y, {epochs = 5, batch_size = 8, verbose = 0,
    callbacks = {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}}})
  check.same_table(h.epoch, {2, 3, 4}, 0, "the epochs run after resuming (from 0, as Keras's History.epoch)")
  for i, w in ipairs(again:get_weights()) do
    check.same_table(w:totable(), whole:get_weights()[i]:totable(), 0, "weight " .. i)
  end
  assert(io.open(dir .. "/latest.safetensors") == nil, "the backup is deleted when fit completes")
  os.execute("rm -rf " .. dir)
end

-- A weight's initial values come from its own reserved random counters (8
-- per value): he_normal's truncated normals rebuilt here from the Philox
-- stream at exactly those counters, Box-Muller and Keras's redraw beyond 2
-- standard deviations -- so no weight shares draws with the next one.
-- And Keras's L1L2 defaults: a factor not given is 0.
function T.initializers_draw_from_their_own_counters()
  local C = nn._C
  nn.seed(7)
  local c0 = C.rng_take(0)
  local d = nn.Dense{5, kernel_initializer = "he_normal", use_bias = false, input_shape = {3}}
  nn.Sequential{d}
  check.eq(C.rng_take(0) - c0, 15 * 8, "8 counters a value")
  local w, seed, sd = d:get_weights()[1]:totable(), C.seed(), math.sqrt(2 / 3) / 0.87962566103423978
  for r = 1, 3 do
    for col = 1, 5 do
      local i, z = (r - 1) * 5 + col - 1, nil
      for j = 0, 3 do
        local u1, u2 = C.philox(seed, c0 + i * 8 + 2 * j), C.philox(seed, c0 + i * 8 + 2 * j + 1)
        z = math.sqrt(-2 * math.log(1 - u1)) * math.cos(6.28318530718 * u2)
        if math.abs(z) <= 2 then break end
      end
      check.near(w[r][col], sd * z, 1e-5, "kernel value " .. i)
    end
  end
  -- a frozen layer stays frozen in its file (Keras's config keeps trainable): its weights do not move after loading
  nn.seed(1)
  local m = nn.Sequential{nn.Dense{4, input_shape = {3}}, nn.BatchNormalization(), nn.Dense(2)}
  m.layers[1].trainable, m.layers[2].trainable = false, false
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "mse"}
  local x, y = nn.randn(8, 3), nn.randn(8, 2)
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.same_table({back.layers[1].trainable, back.layers[2].trainable, back.layers[3].trainable}, {false, false, true}, 0,
    "trainable flags")
  local before = back:get_weights()
  back:train_on_batch(x, y)
  local after = back:get_weights()
  for i = 1, 6 do check.same_table(after[i]:totable(), before[i]:totable(), 0, "frozen weight " .. i .. " unmoved") end
  assert(math.abs(after[7]:totable()[1][1] - before[7]:totable()[1][1]) > 0, "the trainable layer trains")
  -- Keras's positional arguments and model names
  local mha = nn.MultiHeadAttention{2, 8}
  check.same_table({mha.args.num_heads, mha.args.key_dim}, {2, 8}, 0, "MultiHeadAttention{num_heads, key_dim}")
  check.eq(nn.LayerNormalization{-1, 1e-5}.args.epsilon, 1e-5, "LayerNormalization{axis, epsilon}")
  local first, second = nn.Sequential{nn.Dense(1)}, nn.Sequential{nn.Dense(1)}
  assert(first.name:match("^sequential") and second.name ~= first.name, "numbered model names: " .. second.name)
  local reg = nn.regularizers.l1_l2{l2 = 1e-4}
  check.same_table({reg.l1, reg.l2}, {0, 1e-4}, 0, "L1L2: no L1 term unless given")
end

-- The callback rules of Keras 3 (keras/src/callbacks/, trainers/): each
-- check below is one an audit found lunet doing otherwise.
function T.callbacks_follow_keras_3()
  nn.seed(12)
  local x, labels = nn.randn(10, 3), {}
  for i = 1, 10 do labels[i] = i % 2 end
  local y = nn.tensor(labels)
  local function model()
    nn.seed(3)
    local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {3}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy",
      metrics = {"accuracy"}}
    return m
  end
  -- validation_split: the first floor(10 * 0.75) = 7 train, the last 3 validate, unweighted by class_weight
  local m = model()
  local seen_val
  local h = m:fit(x, y, {epochs = 1, batch_size = 10, verbose = 0, validation_split = 0.25, shuffle = false,
    class_weight = {[0] = 1, [1] = 4},
    callbacks = {{on_test_end = function(_, _, logs) seen_val = logs end}}})
  local xv, yv = nn._C.take_rows(x, 8, 3), nn._C.take_rows(y, 8, 3)
  check.near(h.val_loss[1], m:evaluate(xv, yv, {verbose = 0}).loss, 1e-6, "validation: the last 3, unweighted")
  check.near(seen_val.loss, h.val_loss[1], 1e-12, "on_test_end gets the validation logs")
  -- epochs from 0; batch hooks; the history after the callbacks (learning_rate)
  local epochs, batches = {}, {}
  local spy = {on_epoch_end = function(_, _, epoch) epochs[#epochs + 1] = epoch end,
    on_train_batch_end = function(_, _, b, logs) batches[#batches + 1] = b; assert(logs.loss, "batch logs") end}
  h = model():fit(x, y, {epochs = 3, batch_size = 4, verbose = 0, initial_epoch = 1,
    callbacks = {nn.callbacks.ReduceLROnPlateau{monitor = "loss", patience = 100}, spy}})
  check.same_table(epochs, {1, 2}, 0, "epochs from 0 (initial_epoch 1 of 3)")
  check.same_table(h.epoch, {1, 2}, 0, "History.epoch")
  check.same_table(batches, {0, 1, 2, 0, 1, 2}, 0, "batches from 0, 3 a epoch")
  check.same_table(h.learning_rate, {0.1, 0.1}, 1e-7, "learning_rate in the history")
  check.fails(function() model():fit(x, y, {verbose = 0, callbacks = {{on_epoch_ends = function() end}}}) end,
    "has a method 'on_epoch_ends' that fit never calls")
  -- stop_training set in a batch hook ends the epoch after that step, as Keras's (the epoch ran out)
  local ran = {}
  h = model():fit(x, y, {epochs = 3, batch_size = 4, verbose = 0, callbacks = {{on_train_batch_end =
    function(_, mdl, b) ran[#ran + 1] = b; mdl.stop_training = true end}}})
  check.same_table(ran, {0}, 0, "one step")
  check.same_table(h.epoch, {0}, 0, "one epoch in the history")
  local line = check.lunet("", [[local nn = require "lunet"
    local m = nn.Sequential{nn.Dense{1, input_shape = {3}}}
    m:compile{optimizer = "sgd", loss = "mse"}
    m:fit(nn.randn(64, 3), nn.randn(64, 1), {epochs = 3, batch_size = 8, verbose = 2, callbacks = {{on_train_batch_end =
      function(_, mdl, b) if b == 2 then mdl.stop_training = true end end}}})]])
  assert(line:find("\n3/8 - ", 1, true) and not line:find("Epoch 2", 1, true), "the steps run, 3 of 8: " .. line)
  -- mode "auto", settled from the model once the value is logged (as Keras 3: a metric's direction by its
  -- logged name; it was guessed from the name's letters, so a custom AUC name was minimized and a loss
  -- named decoder2_loss maximized as an R2)
  local am = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {3}}}
  am:compile{optimizer = "sgd", loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy", nn.metrics.AUC{name = "roc"}, nn.metrics.Precision{name = "prec"}}}
  local watch = {}
  for _, name in ipairs{"val_roc", "prec", "val_accuracy", "val_loss"} do
    watch[name] = nn.callbacks.EarlyStopping{monitor = name, patience = 100}
  end
  local list = {}
  for _, cb in pairs(watch) do list[#list + 1] = cb end
  am:fit(x, y, {epochs = 1, verbose = 0, validation_data = {x, y}, callbacks = list})
  for name, mode in pairs{val_roc = "max", prec = "max", val_accuracy = "max", val_loss = "min"} do
    check.eq(watch[name].mode, mode, name)
  end
  local reg = nn.Sequential{nn.Dense{1, input_shape = {3}}}
  reg:compile{optimizer = "sgd", loss = "mse", metrics = {"mae", nn.metrics.R2Score()}}
  reg:fit(x, nn.randn(10, 1), {epochs = 1, verbose = 0}) -- the compiled metrics exist once fit has run
  for name, mode in pairs{val_mae = "min", r2_score = "max"} do
    local cb = nn.callbacks.ReduceLROnPlateau{monitor = name}
    cb:on_train_begin(reg)
    cb:on_epoch_end(reg, 0, {[name] = 1})
    check.eq(cb.mode, mode, name)
  end
  local out_loss = nn.callbacks.ReduceLROnPlateau{monitor = "val_decoder2_loss"}
  out_loss:on_train_begin(am)
  out_loss:on_epoch_end(am, 0, {val_decoder2_loss = 1})
  check.eq(out_loss.mode, "min", "an output's loss falls")
  check.fails(function()
    am:fit(x, y, {epochs = 1, verbose = 0, callbacks = {
      {on_epoch_end = function(_, _, _, logs) logs.score = 1 end}, nn.callbacks.EarlyStopping{monitor = "score"}}})
  end, "EarlyStopping: cannot tell whether 'score' should rise or fall (it is no loss and no compiled metric); "
    .. "give mode = \"max\" or \"min\"")
  check.eq(nn.callbacks.EarlyStopping{monitor = "score", mode = "max"}.mode, "max", "a mode given")
  local es = nn.callbacks.EarlyStopping{monitor = "val_loss", min_delta = -0.1, patience = 1}
  check.eq(es.min_delta, 0.1, "abs(min_delta)")
  local stub = {}
  es:on_train_begin(stub)
  for epoch, v in ipairs{1.0, 1.05, 1.1} do
    if not stub.stop_training then es:on_epoch_end(stub, epoch - 1, {val_loss = v}) end
  end
  check.eq(stub.stop_training, true, "a worse value is no improvement")
  check.eq(es.stopped_epoch, 1, "stopped at the second epoch, from 0")
  local nan = nn.callbacks.EarlyStopping{monitor = "val_loss", patience = 1}
  stub = {}
  nan:on_train_begin(stub)
  nan:on_epoch_end(stub, 0, {val_loss = 0 / 0})
  nan:on_epoch_end(stub, 1, {val_loss = 5})
  check.eq(nan.best ~= nan.best, true, "the first value is the best so far, a NaN too (Keras's reference None)")
  check.eq(stub.stop_training, true, "nothing improves on a NaN")
  -- a scheduler cannot set a schedule's rate
  local sm = nn.Sequential{nn.Dense{2, input_shape = {3}}}
  sm:compile{optimizer = nn.optimizers.SGD{learning_rate = nn.schedules.ExponentialDecay(0.1, 1, 0.5)}, loss = "mse"}
  check.fails(function()
    sm:fit(x, nn.randn(10, 2), {verbose = 0, callbacks = {nn.callbacks.LearningRateScheduler(function(_, lr) return lr end)}})
  end, "the optimizer's learning rate is a schedule")
  -- save_best_only on a value never logged: every epoch saved, as Keras
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local old = io.stderr
  io.stderr = {write = function() end}
  model():fit(x, y, {epochs = 2, verbose = 0, callbacks = {nn.callbacks.ModelCheckpoint{
    path = dir .. "/m-{epoch}.safetensors", monitor = "val_nothing", save_best_only = true}}})
  io.stderr = old
  for e = 1, 2 do
    local f = io.open(string.format("%s/m-%d.safetensors", dir, e), "rb")
    assert(f, "epoch " .. e .. " saved")
    f:close()
  end
  os.execute("rm -rf " .. dir)
  -- Python's repr, as CSVLogger and file names write floats
  local repr = require("lunet.optim").float_repr
  for _, case in ipairs{{100.0, "100.0"}, {1200.0, "1200.0"}, {0.1, "0.1"}, {1e16, "1e+16"}, {1e-05, "1e-05"},
      {0.0001, "0.0001"}, {1 / 3, "0.3333333333333333"}, {2.5e-07, "2.5e-07"}, {123456.789, "123456.789"},
      {-0.5, "-0.5"}, {0.6931471805599453, "0.6931471805599453"}} do
    check.eq(repr(case[1]), case[2], "repr of " .. case[2]) -- (float keys of a table would turn into integers)
  end
  -- verbose = true is verbose = 1
  local said = {}
  local old_print = print
  print = function(s) said[#said + 1] = s end
  local ok_verbose, why = pcall(model().fit, model(), x, y, {epochs = 3, verbose = 0,
    callbacks = {nn.callbacks.EarlyStopping{monitor = "loss", mode = "max", patience = 0, verbose = true}}})
  print = old_print
  assert(ok_verbose, tostring(why))
  assert(said[1] and said[1]:find("early stopping", 1, true), "verbose = true prints")
  -- TerminateOnNaN: an infinite loss stops too, and its epoch still ends
  local big = nn.Sequential{nn.Dense{2, input_shape = {3}}}
  big:compile{optimizer = "sgd", loss = "mse"}
  local ended = {}
  h = big:fit(nn.tensor{{1, 1, 1}, {1, 1, 1}}, nn.tensor{{1e30, 0}, {0, 1}}, {epochs = 3, verbose = 0,
    callbacks = {nn.callbacks.TerminateOnNaN(), {on_epoch_end = function(_, _, e) ended[#ended + 1] = e end}}})
  check.same_table(ended, {0}, 0, "the epoch it stopped in ended")
  check.eq(#h.loss, 1, "and is in the history")
  check.eq(h.loss[1], math.huge, "with its infinite loss")
end

-- The progress lines: verbose 2 is Keras's one plain line an epoch
-- ("4/4 - 0s - 5ms/step - loss: 1.5000"), without the bar or a terminal's
-- escapes even on a terminal (under mpirun rank 0's stdout is one); verbose 1
-- off a terminal draws the bar in ASCII once, at the end.
function T.progress_lines()
  local Progress = require "lunet.progress"
  local function lines(verbose, tty)
    local buf = {}
    local out = { write = function(self, ...) for _, v in ipairs{...} do buf[#buf + 1] = v end end, flush = function() end }
    local p = Progress.new(4, verbose, out)
    p.tty = tty
    for step = 1, 4 do
      p.last = -1 -- not throttled
      p:update(step, { loss = 1.5 }, { "loss" }, step == 4)
    end
    return table.concat(buf)
  end
  for _, tty in ipairs{ true, false } do
    local two = lines(2, tty)
    assert(two:match("^4/4 %- %d+s %- %d+[mu]?s/step %- loss: 1%.5000\n$"), "verbose 2, tty " .. tostring(tty) .. ": " .. two)
  end
  local one = lines(1, false)
  assert(one:match("^4/4 =+ %d+s %d+[mu]?s/step %- loss: 1%.5000\n$"), "verbose 1 off a terminal: " .. one)
  local bar = lines(1, true)
  assert(bar:find("\27[K", 1, true) and select(2, bar:gsub("\r", "")) == 4, "verbose 1 on a terminal redraws: " .. bar)
end

-- Keras's History (.history, .params), ReduceLROnPlateau, CSVLogger and
-- TerminateOnNaN.
function T.history_and_more_callbacks()
  nn.seed(10)
  local x, y = nn.randn(16, 3), nn.tensor{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {3}}}
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  local csv = os.tmpname()
  local h = m:fit(x, y, {epochs = 3, batch_size = 8, verbose = 0, callbacks = {nn.callbacks.CSVLogger(csv)}})
  assert(h.history.loss == h.loss and #h.history.accuracy == 3 and h.history.epoch == nil, "History.history")
  check.eq(h.params.epochs, 3, "params")
  local lines = {}
  for line in io.lines(csv) do lines[#lines + 1] = line end
  os.remove(csv)
  check.eq(lines[1], "epoch,accuracy,loss", "CSV header")
  -- values as Python's repr: the shortest text that reads back the same (k/16 accuracies in at most 6 characters)
  for i = 2, 4 do
    local acc, loss = lines[i]:match("^%d+,([^,]+),([^,]+)$")
    check.eq(tonumber(acc), h.accuracy[i - 1], "accuracy read back")
    check.eq(tonumber(loss), h.loss[i - 1], "loss read back exactly")
    assert(#acc <= 6, "not the shortest form: " .. acc)
  end
  check.eq(#lines, 4, "one row per epoch")
  assert(lines[2]:match("^0,[%d.e-]+,[%d.e-]+$") and lines[4]:match("^2,"), lines[2])
  -- ReduceLROnPlateau on a value that stops improving
  local opt = nn.optimizers.SGD{learning_rate = 0.1}
  local stub = {optimizer = opt}
  local cb = nn.callbacks.ReduceLROnPlateau{monitor = "val_loss", factor = 0.5, patience = 2, cooldown = 1, min_lr = 0.02}
  cb:on_train_begin(stub)
  local lrs = {}
  for epoch, v in ipairs{1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9} do
    cb:on_epoch_end(stub, epoch, {val_loss = v})
    lrs[epoch] = opt.learning_rate
  end
  -- as Keras: the cooldown epoch also counts toward the next patience
  check.same_table(lrs, {0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02, 0.02}, 1e-12, "reduced on plateaus")
  -- a second fit with the same callback keeps the best value seen (Keras 3's
  -- MonitorCallback): 0.95 is no improvement on 0.9, so after patience 2 it reduces
  opt.learning_rate = 0.1
  cb:on_train_begin(stub)
  lrs = {}
  for epoch, v in ipairs{0.95, 0.95, 0.95} do
    cb:on_epoch_end(stub, epoch, {val_loss = v})
    lrs[epoch] = opt.learning_rate
  end
  check.same_table(lrs, {0.1, 0.05, 0.05}, 1e-12, "the best value carried into the next fit")
  -- TerminateOnNaN stops instead of failing
  local bad = nn.tensor{{0 / 0, 1, 2}, {1, 2, 3}}
  local ok, err = pcall(m.fit, m, bad, nn.tensor{0, 1}, {epochs = 2, verbose = 0})
  assert(not ok and tostring(err):find("the loss became NaN", 1, true), tostring(err))
  local w0 = m:get_weights()[1]:totable()
  local h2 = m:fit(bad, nn.tensor{0, 1}, {epochs = 2, verbose = 0, callbacks = {nn.callbacks.TerminateOnNaN()}})
  check.eq(#h2.loss, 1, "the epoch it stopped in ends, as Keras's")
  assert(h2.loss[1] ~= h2.loss[1], "with the NaN loss")
  check.same_table(m:get_weights()[1]:totable(), w0, 0, "weights untouched")
end

-- A layer called directly takes Keras's training flag as a boolean or as
-- {training = ...}: {training = false} is inference (BatchNormalization
-- reads and keeps its moving statistics, Dropout passes the input), and
-- an option it does not know is an error, not a training call.
function T.direct_calls_take_the_training_flag()
  local x = nn.tensor{{1, 2}, {3, 6}}
  for _, flag in ipairs{false, {training = false}} do
    local bn = nn.BatchNormalization{}
    local y = bn(x, flag):totable()
    check.same_table(y, {{1 / math.sqrt(1.001), 2 / math.sqrt(1.001)}, {3 / math.sqrt(1.001), 6 / math.sqrt(1.001)}},
      1e-6, "inference: the moving statistics (0, 1)")
    check.same_table(bn:get_weights()[3]:totable(), {0, 0}, 0, "moving mean untouched")
    check.same_table(nn.Dropout(0.5)(nn.ones(1, 8), flag):totable(), {{1, 1, 1, 1, 1, 1, 1, 1}}, 0, "dropout off")
  end
  local bn = nn.BatchNormalization{momentum = 0.5}
  bn(x, {training = true})
  check.same_table(bn:get_weights()[3]:totable(), {1, 2}, 1e-6, "{training = true} trains: the moving mean moves")
  check.fails(function() nn.Dropout(0.5)(x, {mask = x}) end, "unknown call option 'mask'")
  check.fails(function() nn.Dropout(0.5)(x, 1) end, "training must be true or false")
end

-- Keras's train_on_batch/test_on_batch options (unknown ones are errors,
-- return_dict gives the logs), shuffle = "batch" (the batches in order,
-- each one shuffled inside), and "accuracy" under a loss that
-- does not say which: sparse labels of shape (N, 1) are read as ids.
function T.single_batch_calls_shuffle_batch_and_accuracy_from_shapes()
  nn.seed(2)
  local x, y = nn.randn(10, 3), nn.randn(10, 1)
  local function model()
    nn.seed(5)
    local m = nn.Sequential{nn.Dense{1, input_shape = {3}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse", metrics = {"mae"}}
    return m
  end
  local m = model()
  check.fails(function() m:train_on_batch(x, y, {sample_weights = {1}}) end, "bad argument 'sample_weights'")
  check.fails(function() m:test_on_batch(x, y, {class_weight = {}}) end, "bad argument 'class_weight'")
  local logs = m:test_on_batch(x, y, {return_dict = true})
  check.near(logs.loss, m:test_on_batch(x, y), 1e-7, "return_dict: the logs, the loss among them")
  assert(logs.mae, "and the metrics")
  -- the rows each step sees, by their targets (ids 1..10): a loss of one's own records them
  local seen = {}
  local ids = nn.arange(1, 11):reshape(10, 1)
  local rec = nn.Sequential{nn.Dense{1, input_shape = {3}}}
  rec:compile{optimizer = "sgd", loss = function(t, p)
    local rows = {}
    for i, r in ipairs(t:totable()) do rows[i] = r[1] end
    seen[#seen + 1] = rows
    return (p - t):square():mean()
  end}
  rec:fit(x, ids, {epochs = 3, batch_size = 4, shuffle = "batch", verbose = 0})
  check.eq(#seen, 9, "3 steps an epoch")
  local moved = false
  for s, rows in ipairs(seen) do
    local first = ((s - 1) % 3) * 4 + 1
    local sorted = {table.unpack(rows)}
    table.sort(sorted)
    local want = {}
    for i = first, math.min(first + 3, 10) do want[#want + 1] = i end
    check.same_table(sorted, want, 0, "step " .. s .. ": the batch's own rows")
    for i, v in ipairs(rows) do moved = moved or v ~= sorted[i] end
  end
  assert(moved, "shuffled inside the batches")
  check.fails(function() rec:fit(x, ids, {shuffle = "yes", verbose = 0}) end, "shuffle must be true, false or \"batch\"")
  -- "accuracy" with a loss of one's own: (N, 1) class ids against (N, 3) scores
  local c = nn.Sequential{nn.Dense{3, input_shape = {2}}}
  c:compile{optimizer = "sgd", loss = function(t, p) return (p - p):sum() end, metrics = {"accuracy"}}
  local xs = nn.tensor{{1, 0}, {0, 1}, {1, 1}, {2, -1}, {-1, 2}}
  local ids = c:predict(xs, {verbose = 0}):argmax(-1):totable()
  local labels, right = {}, 0
  for i, v in ipairs(ids) do
    labels[i] = {(i % 2 == 0) and v or (v + 1) % 3}
    if labels[i][1] == v then right = right + 1 end
  end
  check.near(c:evaluate(xs, nn.tensor(labels), {verbose = 0}).accuracy, right / 5, 1e-7, "ids of shape (N, 1)")
end

-- The small vision layers' values against the definitions (the self-tests
-- check their gradients and Vulkan).
function T.vision_layers_values()
  local x = nn.arange(0, 12):reshape(1, 2, 3, 2) -- x[h][w][c] = 6h + 2w + c (0-based)
  local up = nn.UpSampling2D{{2, 1}}(x):totable()[1]
  for h = 1, 4 do for w = 1, 3 do for c = 1, 2 do
    check.eq(up[h][w][c], 6 * ((h - 1) // 2) + 2 * (w - 1) + (c - 1), "upsampled") end end end
  local pad = nn.ZeroPadding2D{{1, 2}}(x)
  check.same_table(pad:shape(), {1, 4, 7, 2}, 0, "padded shape")
  local pt = pad:totable()[1]
  check.eq(pt[1][1][1], 0, "zero border")
  check.eq(pt[2][3][2], x:totable()[1][1][1][2], "the image inside")
  local big = nn.arange(0, 30):reshape(1, 5, 6, 1)
  local cr = nn.Cropping2D{{1, 2}}(big):reshape(3, 2):totable()
  check.same_table(cr, {{8, 9}, {14, 15}, {20, 21}}, 0, "cropped")
  check.same_table(nn.GlobalMaxPooling2D()(x):totable(), {{10, 11}}, 0, "global max")
  -- per side, as Keras's ((top, bottom), (left, right)): against loops
  local xt = x:totable()[1]
  local ps = nn.ZeroPadding2D{{{0, 2}, {3, 1}}}(x)
  check.same_table(ps:shape(), {1, 4, 7, 2}, 0, "padded per side")
  local pst = ps:totable()[1]
  for h = 1, 4 do for w = 1, 7 do for c = 1, 2 do
    local ih, iw = h, w - 3 -- no row above, three columns on the left
    local want = (ih >= 1 and ih <= 2 and iw >= 1 and iw <= 3) and xt[ih][iw][c] or 0
    check.eq(pst[h][w][c], want, string.format("padded per side at %d, %d, %d", h, w, c))
  end end end
  local bt = big:totable()[1]
  local cs = nn.Cropping2D{cropping = {{2, 0}, {1, 3}}}(big)
  check.same_table(cs:shape(), {1, 3, 2, 1}, 0, "cropped per side")
  local cst = cs:totable()[1]
  for h = 1, 3 do for w = 1, 2 do check.eq(cst[h][w][1], bt[h + 2][w + 1][1], "cropped per side") end end
  -- the per-side form survives a file, and the layer shows it as given
  local m = nn.Sequential{nn.ZeroPadding2D{{{0, 2}, {3, 1}}, input_shape = {2, 3, 2}},
                          nn.Cropping2D{{{1, 0}, {0, 2}}}}
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.same_table(back.layers[1].args.padding, {{0, 2}, {3, 1}}, 0, "padding read back")
  check.same_table(back.layers[2].args.cropping, {{1, 0}, {0, 2}}, 0, "cropping read back")
  check.same_table(back:predict(x):totable(), m:predict(x):totable(), 0, "the file's model")
  check.same_table(back:predict(x):shape(), {1, 3, 5, 2}, 0, "2 + 2 - 1 rows, 3 + 4 - 2 columns")
  check.fails(function() nn.ZeroPadding2D{{{0, 1}, 2}} end,
    "padding must be an integer, a pair {h, w} or a pair of pairs {{top, bottom}, {left, right}}, got {{0, 1}, 2}")
  check.fails(function() nn.ZeroPadding2D{{{0, 1}, {2, 3, 4}}} end, "got {{0, 1}, {2, 3, 4}}")
  check.fails(function() nn.Cropping2D{{{0, -1}, {2, 3}}} end, "cropping must be >= 0, got -1")
  check.fails(function() nn.Cropping2D{{{3, 2}, {0, 0}}}(big) end,
    "cropping {{3, 2}, {0, 0}} leaves nothing of images (None, 5, 6, 1)")
  local v = nn.tensor{{-2, -0.5, 0.5, 3}}
  check.same_table(nn.LeakyReLU()(v):totable(), {{-0.6, -0.15, 0.5, 3}}, 1e-6, "LeakyReLU 0.3")
  check.same_table(nn.ReLU{max_value = 1}(v):totable(), {{0, 0, 0.5, 1}}, 0, "ReLU max_value")
  check.fails(function() nn.ReLU{threshold = 1}:build({4}) end, "threshold other than 0 is not supported yet")
  -- PReLU: the learned slope, one per channel with shared_axes {1, 2}
  local pr = nn.PReLU{shared_axes = {1, 2}}
  local img = nn.tensor{{{{-1, -2}, {3, -4}}}} -- (1, 1, 2, 2)
  pr(img)
  pr:set_weights({nn.tensor{{{0.5, 0.25}}}})
  check.same_table(pr(img):totable(), {{{{-0.5, -0.5}, {3, -1}}}}, 1e-7, "PReLU")
  -- SpatialDropout2D: whole channels, in training only
  nn.seed(3)
  local sd = nn.SpatialDropout2D(0.5)
  local ones = nn.ones(4, 3, 3, 5)
  check.same_table(sd(ones):totable(), ones:totable(), 0, "identity in inference")
  local dropped = sd(ones, true):totable()
  local zeros_seen = 0
  for n = 1, 4 do
    for c = 1, 5 do
      local first = dropped[n][1][1][c]
      assert(first == 0 or first == 2, "kept channels are scaled by 2")
      if first == 0 then zeros_seen = zeros_seen + 1 end
      for h = 1, 3 do for w = 1, 3 do check.eq(dropped[n][h][w][c], first, "one draw per channel") end end
    end
  end
  assert(zeros_seen > 0 and zeros_seen < 20, "some channels dropped")
end

function T.utils_categorical_and_split()
  check.same_table(nn.utils.to_categorical({0, 2, 1}):totable(), {{1, 0, 0}, {0, 0, 1}, {0, 1, 0}}, 0, "one-hot")
  check.same_table(nn.utils.to_categorical(nn.tensor{1}, 4):totable(), {{0, 1, 0, 0}}, 0, "num_classes")
  check.fails(function() nn.utils.to_categorical({0, 3}, 3) end, "entry 2 is 3, not a class id in [0, 3)")
  -- Keras's shapes: a tensor's float labels without num_classes; (N, T) ids give (N, T, K); (N, 1) gives (N, K)
  check.same_table(nn.utils.to_categorical(nn.tensor{2, 0}):totable(), {{0, 0, 1}, {1, 0, 0}}, 0, "from a tensor")
  check.same_table(nn.utils.to_categorical(nn.tensor{{0, 1}, {1, 1}, {2, 0}}):shape(), {3, 2, 3}, 0, "(N, T, K)")
  check.same_table(nn.utils.to_categorical(nn.tensor{{1}, {0}}):shape(), {2, 2}, 0, "a trailing 1 dropped")
  -- pad_sequences as Keras's: padding and truncating "pre" by default
  local seqs = {{1, 2, 3}, {4, 5}, {6, 7, 8, 9, 10}}
  check.same_table(nn.utils.pad_sequences(seqs, {maxlen = 4}):totable(), {{0, 1, 2, 3}, {0, 0, 4, 5}, {7, 8, 9, 10}}, 0,
    "pre")
  check.same_table(nn.utils.pad_sequences(seqs, {maxlen = 4, padding = "post", truncating = "post", value = -1}):totable(),
    {{1, 2, 3, -1}, {4, 5, -1, -1}, {6, 7, 8, 9}}, 0, "post")
  check.same_table(nn.utils.pad_sequences({{1}, {}, {2, 3}}):shape(), {3, 2}, 0, "maxlen: the longest")
  check.eq(nn.utils.pad_sequences({{1}}):dtype(), "int32", "int32 by default")
  check.fails(function() nn.utils.pad_sequences(seqs, {padding = "left"}) end, "\"pre\" or \"post\"")
  -- timeseries_dataset_from_array: the examples of Keras's docstring
  local idx = {}
  for i = 0, 98 do idx[i + 1] = i end
  local ds = nn.utils.timeseries_dataset_from_array(idx, nil, 10, {sampling_rate = 2, sequence_stride = 3, batch_size = 100})
  local xw = ds:batch(1, ds:order(0))
  local w = xw:totable()
  check.eq(#w, 27, "windows (starts 0, 3, ..., 78)")
  check.same_table(w[1], {0, 2, 4, 6, 8, 10, 12, 14, 16, 18}, 0, "first sequence")
  check.same_table(w[2], {3, 5, 7, 9, 11, 13, 15, 17, 19, 21}, 0, "second sequence")
  check.same_table(w[27], {78, 80, 82, 84, 86, 88, 90, 92, 94, 96}, 0, "last sequence")
  local series, future = {}, {}
  for i = 0, 89 do series[#series + 1] = i end
  for i = 10, 99 do future[#future + 1] = i end
  local pairs_ds = nn.utils.timeseries_dataset_from_array(series, future, 10, {batch_size = 128})
  local xs, ys = pairs_ds:batch(1, pairs_ds:order(0))
  check.same_table(xs:totable()[1], {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 0, "input of the first pair")
  check.eq(ys:totable()[1], 10, "its target: the next value")
  check.eq(pairs_ds.n, 81, "windows within the series")
  local tail = nn.utils.timeseries_dataset_from_array(series, future, 10, {start_index = 5, end_index = 30})
  local tx, ty = tail:batch(1, tail:order(0))
  check.same_table({tx:totable()[1][1], ty:totable()[1], tail.n}, {5, 15, 16}, 0, "start_index and end_index")
  check.fails(function() nn.utils.timeseries_dataset_from_array(series, nil, 100) end, "no window fits")
  -- shuffle: every window once an epoch, in another order each epoch (it was the same every epoch), by the seed
  local function epoch_targets(d, e)
    local out = {}
    for _, _, yb in d:batches(e) do for _, v in ipairs(yb:totable()) do out[#out + 1] = v end end
    return out
  end
  local sh = nn.utils.timeseries_dataset_from_array(series, future, 10, {batch_size = 16, shuffle = true, seed = 3})
  local e1, e2 = epoch_targets(sh, 1), epoch_targets(sh, 2)
  check.eq(table.concat(e1, ",") ~= table.concat(e2, ","), true, "another order in epoch 2")
  check.same_table(epoch_targets(nn.utils.timeseries_dataset_from_array(series, future, 10,
    {batch_size = 16, shuffle = true, seed = 3}), 2), e2, 0, "the same seed, the same orders")
  for _, e in ipairs{e1, e2} do
    table.sort(e)
    check.eq(#e, 81, "every window")
    for i, v in ipairs(e) do check.eq(v, i + 9, "window " .. i .. " once") end
  end
  check.fails(function() nn.utils.timeseries_dataset_from_array(series, {1, 2, 3}, 4, {start_index = 2}) end,
    "targets has 3 rows, but window")
  -- end to end: next-value forecasts of a sine from its last 8 values (a linear recurrence a Dense layer can learn)
  local wave, nextv = {}, {}
  for i = 0, 399 do wave[#wave + 1] = {math.sin(i * 0.3)} end
  for i = 8, 407 do nextv[#nextv + 1] = math.sin(i * 0.3) end
  local train = nn.utils.timeseries_dataset_from_array(wave, nextv, 8, {batch_size = 32, shuffle = true, seed = 3})
  nn.seed(8)
  local m = nn.Sequential{nn.Flatten{input_shape = {8, 1}}, nn.Dense(1)}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.02}, loss = "mse"}
  local h = m:fit(train, nil, {epochs = 30, verbose = 0})
  assert(h.loss[#h.loss] < 1e-3, "forecasts the sine: loss " .. h.loss[#h.loss])
  local x = nn.arange(0, 10):reshape(10, 1)
  local y = nn.arange(100, 110)
  local xt, xv, yt, yv = nn.utils.train_test_split(x, y, {test_size = 0.3, seed = 4})
  check.eq(xt:shape()[1], 7, "train rows")
  check.eq(xv:shape()[1], 3, "test rows")
  local seen = {}
  for i, v in ipairs(xt:reshape(7):totable()) do check.eq(yt:totable()[i], v + 100, "rows stay paired"); seen[v] = true end
  for i, v in ipairs(xv:reshape(3):totable()) do check.eq(yv:totable()[i], v + 100, "rows stay paired"); assert(not seen[v], "disjoint") end
  local again = {nn.utils.train_test_split(x, y, {test_size = 0.3, seed = 4})}
  check.same_table(again[2]:totable(), xv:totable(), 0, "the seed fixes the split")
end

-- Keras's schedules, with its positional arguments.
function T.more_schedules()
  local pc = nn.schedules.PiecewiseConstantDecay({100, 200}, {1.0, 0.5, 0.1})
  check.same_table({pc(0), pc(100), pc(101), pc(200), pc(201)}, {1.0, 1.0, 0.5, 0.5, 0.1}, 0, "piecewise")
  local poly = nn.schedules.PolynomialDecay(0.1, 100, 0.01, 2)
  check.near(poly(50), (0.1 - 0.01) * 0.25 + 0.01, 1e-12, "polynomial")
  check.near(poly(500), 0.01, 1e-12, "ends at end_learning_rate")
  local cyc = nn.schedules.PolynomialDecay{initial_learning_rate = 0.1, decay_steps = 100, cycle = true}
  check.near(cyc(150), (0.1 - 1e-4) * (1 - 150 / 200) + 1e-4, 1e-12, "cycle")
  check.near(nn.schedules.InverseTimeDecay(1.0, 10, 0.5)(20), 1 / (1 + 0.5 * 2), 1e-12, "inverse time")
  check.near(nn.schedules.ExponentialDecay(0.1, 10, 0.5)(20), 0.025, 1e-12, "positional exponential")
  check.near(nn.schedules.ExponentialDecay{0.1, 10, 0.5, staircase = true}(15), 0.05, 1e-12, "staircase")
  check.fails(function() nn.schedules.PiecewiseConstantDecay({100, 50}, {1, 2, 3}) end, "boundaries: increasing numbers")
  check.fails(function() nn.schedules.PolynomialDecay(0.1) end, "bad argument 'decay_steps' to 'PolynomialDecay' (required)")
  -- saved with a model like the others
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = pc}, loss = "mse"}
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.near(back.optimizer.learning_rate(150), 0.5, 0, "restored")
end

-- Keras's other losses against their formulas in plain Lua: an identity
-- Dense passes x through, so evaluate's loss is loss(x, y).
-- Binary cross-entropy on logits: its gradient is sigmoid(x) - z, at a
-- logit of exactly 0 too (relu's gradient there made it -z: a Dense started
-- at zeros took a wrong first step), directly and fused with a sigmoid Dense.
function T.binary_crossentropy_gradient_at_zero_logits()
  local sig = function(v) return 1 / (1 + math.exp(-v)) end
  local xs, zs = {0, 0, 2, -3, 0}, {1, 0, 1, 0, 0.3}
  local rows = {}
  for i, v in ipairs(xs) do rows[i] = {v} end
  local x = nn.tensor(rows):requires_grad(true)
  local zr = {}
  for i, v in ipairs(zs) do zr[i] = {v} end
  nn.losses.BinaryCrossentropy{from_logits = true}(nn.tensor(zr), x):backward()
  local g = x.grad:reshape(-1):totable()
  for i = 1, #xs do check.near(g[i], (sig(xs[i]) - zs[i]) / #xs, 1e-6, "gradient at logit " .. xs[i]) end
  -- one SGD step of a zero-initialized logistic regression: w -= X^T (sigmoid(0) - y) / n
  local X, y = {{1, 2}, {3, -1}, {0.5, 0.5}, {2, 2}}, {1, 0, 0, 1}
  local m = nn.Sequential{nn.Dense{1, activation = "sigmoid", kernel_initializer = "zeros", input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "binary_crossentropy"}
  local yt = {}
  for i, v in ipairs(y) do yt[i] = {v} end
  m:train_on_batch(nn.tensor(X), nn.tensor(yt))
  local want, wb = {0, 0}, 0
  for i = 1, 4 do
    for j = 1, 2 do want[j] = want[j] - X[i][j] * (0.5 - y[i]) / 4 end
    wb = wb - (0.5 - y[i]) / 4
  end
  local w = m:get_weights()
  check.same_table(w[1]:reshape(-1):totable(), want, 1e-6, "the kernel after one step")
  check.near(w[2]:item(), wb, 1e-6, "the bias after one step")
end

function T.more_losses_follow_keras()
  math.randomseed(11)
  local n, k = 6, 4
  local xp, yt, yb, yc = {}, {}, {}, {}
  for i = 1, n do
    xp[i], yt[i], yb[i], yc[i] = {}, {}, {}, {}
    for j = 1, k do
      xp[i][j] = string.unpack("f", string.pack("f", math.random() * 0.9 + 0.05))
      yt[i][j] = string.unpack("f", string.pack("f", math.random() * 2 - 1))
      yb[i][j] = math.random(0, 1)
      yc[i][j] = j == (i % k) + 1 and 1 or 0
    end
  end
  local function mean_rows(f, t)
    local total = 0
    for i = 1, n do total = total + f(xp[i], t[i]) end
    return total / n
  end
  local function per_elem(g) return function(p, t) local s = 0 for j = 1, k do s = s + g(p[j], t[j]) end return s / k end end
  local clip = function(v) return math.min(math.max(v, 1e-7), 1) end
  local l2 = function(v) local s = 0 for j = 1, k do s = s + v[j] ^ 2 end s = math.sqrt(math.max(s, 1e-12)) local o = {} for j = 1, k do o[j] = v[j] / s end return o end
  local cases = {
    {"mean_absolute_error", yt, per_elem(function(p, t) return math.abs(p - t) end)},
    {"huber", yt, per_elem(function(p, t) local a = math.abs(p - t) local q = math.min(a, 1) return 0.5 * q * q + (a - q) end)},
    {"log_cosh", yt, per_elem(function(p, t) return math.log(math.cosh(p - t)) end)},
    {"kl_divergence", yc, function(p, t) local s = 0 for j = 1, k do s = s + clip(t[j]) * math.log(clip(t[j]) / clip(p[j])) end return s end},
    {"hinge", yb, per_elem(function(p, t) return math.max(1 - (2 * t - 1) * p, 0) end)},
    {"squared_hinge", yb, per_elem(function(p, t) return math.max(1 - (2 * t - 1) * p, 0) ^ 2 end)},
    {"categorical_hinge", yc, function(p, t)
      local pos, neg = 0, -math.huge
      for j = 1, k do pos = pos + t[j] * p[j]; neg = math.max(neg, (1 - t[j]) * p[j]) end
      return math.max(neg - pos + 1, 0) end},
    {"cosine_similarity", yt, function(p, t) local a, b, s = l2(t), l2(p), 0 for j = 1, k do s = s + a[j] * b[j] end return -s end},
  }
  local eye = {}
  for i = 1, k do eye[i] = {} for j = 1, k do eye[i][j] = i == j and 1 or 0 end end
  for _, c in ipairs(cases) do
    local m = nn.Sequential{nn.Dense{k, use_bias = false, input_shape = {k}}}
    m:set_weights({nn.tensor(eye)})
    m:compile{optimizer = "sgd", loss = c[1]}
    check.near(m:evaluate(nn.tensor(xp), nn.tensor(c[2])).loss, mean_rows(c[3], c[2]), 1e-5, c[1])
  end
  check.near(nn.Sequential{nn.Dense{1, input_shape = {1}}}:compile{optimizer = "sgd", loss = "mae"}.losses[1].name == "mean_absolute_error" and 1 or 0, 1, 0, "short name")
  -- Huber's delta and label smoothing, against the formulas
  local xt = nn.tensor(xp)
  for _, delta in ipairs{0.3, 2.5} do
    local want = mean_rows(per_elem(function(p, t) local a = math.abs(p - t) local q = math.min(a, delta)
      return 0.5 * q * q + delta * (a - q) end), yt)
    check.near(nn.losses.Huber{delta = delta}(nn.tensor(yt), xt):item(), want, 1e-5, "huber delta " .. delta)
  end
  local probs = xt:softmax(-1)
  local P = probs:totable()
  for _, s in ipairs{0.1, 0.5} do
    local ce, bce = 0, 0
    for i = 1, n do
      for j = 1, k do
        local t = yc[i][j] * (1 - s) + s / k
        ce = ce - t * math.log(P[i][j])
        local tb = yb[i][j] * (1 - s) + s / 2
        bce = bce - (tb * math.log(P[i][j]) + (1 - tb) * math.log(1 - P[i][j])) / k
      end
    end
    check.near(nn.losses.CategoricalCrossentropy{label_smoothing = s}(nn.tensor(yc), probs):item(), ce / n, 1e-5,
      "categorical label_smoothing " .. s)
    check.near(nn.losses.BinaryCrossentropy{label_smoothing = s}(nn.tensor(yb), probs):item(), bce / n, 1e-5,
      "binary label_smoothing " .. s)
  end
  -- kept by compile and by the model file
  local m = nn.Sequential{nn.Dense{k, activation = "softmax", input_shape = {k}}}
  m:compile{optimizer = "sgd", loss = nn.losses.CategoricalCrossentropy{label_smoothing = 0.2}}
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.eq(back.loss.label_smoothing, 0.2, "label_smoothing saved")
  check.near(back:evaluate(xt, nn.tensor(yc)).loss, m:evaluate(xt, nn.tensor(yc)).loss, 1e-7, "the same loss after loading")
  check.fails(function() nn.losses.Huber{delta = -1} end, "bad argument 'delta' to the huber loss")
  check.fails(function() nn.losses.SparseCategoricalCrossentropy{label_smoothing = 0.1} end,
    "bad argument 'label_smoothing' to the sparse_categorical_crossentropy loss")
  check.fails(function() nn.Sequential{nn.Dense{1, input_shape = {1}}}:compile{optimizer = "sgd", loss = "hubber"} end,
    "unknown loss 'hubber' (valid: binary_crossentropy, categorical_crossentropy, categorical_hinge")
end

-- An unknown activation is an error when the layer is made, naming the
-- valid ones; Dense takes every name nn.Activation does.
function T.activations_are_checked_when_made()
  check.fails(function() nn.Dense{3, activation = "relux"} end,
    "bad argument 'activation' to 'Dense' (unknown activation 'relux'; valid: linear, relu, sigmoid")
  local x = nn.randn(4, 3)
  for _, a in ipairs{"elu", "silu", "swish", "log_softmax", "leaky_relu", "gelu"} do
    local d, lin = nn.Dense{3, activation = a}, nn.Dense{3}
    d(x)
    lin(x)
    lin:set_weights(d:get_weights())
    check.same_table(d(x):totable(), nn.Activation(a)(lin(x)):totable(), 1e-6, a)
  end
end

function T.every_builtin_layer_passes_gradient_check()
  for _, name in ipairs{"Dense", "Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
      "Flatten", "BatchNormalization", "Activation", "LSTM", "GRU", "LayerNormalization", "SimpleRNN", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Conv1D", "MaxPooling1D", "PositionEmbedding", "SinePositionEncoding", "MultiHeadAttention", "TransformerEncoder", "TransformerDecoder", "Reverse", "Rescaling", "CenterCrop", "GlobalMaxPooling2D", "LeakyReLU", "ReLU", "Softmax", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "PReLU", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Conv2DTranspose", "ActivityRegularization", "DepthwiseConv2D", "SeparableConv2D", "Masking"} do
    local results = nn.check_plugin(name)
    assert(#results > 0, name .. " ships no test cases")
    for _, r in ipairs(results) do
      assert(r.ok, string.format("%s{%s}: max relative error %.3g > %.3g", name, r.args, r.max_error, r.tolerance))
    end
  end
end

function T.summary_counts_the_seed_cnn()
  local m = nn.Sequential{
    nn.Conv2D{32, 3, activation = "relu", input_shape = {32, 32, 3}}, nn.MaxPooling2D(2),
    nn.Conv2D{64, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Conv2D{128, 3, activation = "relu"}, nn.MaxPooling2D(2),
    nn.Flatten(), nn.Dense{512, activation = "relu"}, nn.Dense{10, activation = "softmax"}}
  local lines = {}
  m:summary(function(s) lines[#lines + 1] = s end)
  check.eq(m:count_params(), 361034, "parameters")
  local text = table.concat(lines, "\n")
  assert(text:find("Total params: 361,034 (1.38 MB)", 1, true), text)
  assert(text:find("Non-trainable params: 0 (0.00 B)", 1, true), text)
  assert(text:find("(None, 2, 2, 128)", 1, true), text)
  -- once trained, Keras 3 counts the optimizer's variables too: Adam's two
  -- slots per parameter, its iteration count (int64) and learning rate
  local small = nn.Sequential{nn.Dense{4, input_shape = {3}}, nn.Dense{2}}
  small:compile{optimizer = "adam", loss = "mse"}
  small:fit(nn.randn(8, 3), nn.randn(8, 2), {epochs = 1, verbose = 0})
  lines = {}
  small:summary(function(s) lines[#lines + 1] = s end)
  text = table.concat(lines, "\n")
  assert(text:find("Optimizer params: 54 (220.00 B)", 1, true), text)
  assert(text:find("Total params: 80 (324.00 B)", 1, true), text)
end

-- Regularizers on the bias and on the output (activity), and the
-- ActivityRegularization layer: the loss is the data loss plus the
-- penalties written out in Lua, and the gradients follow.
function T.bias_and_activity_regularizers()
  nn.seed(17)
  local x, y = nn.randn(6, 3), nn.randn(6, 2)
  local m = nn.Sequential{nn.Dense{2, input_shape = {3}, kernel_regularizer = nn.regularizers.l1(0.01),
    bias_regularizer = nn.regularizers.l2(0.3), activity_regularizer = nn.regularizers.l1_l2(0.02, 0.05)},
    nn.ActivityRegularization{0.1}} -- l1 by position, as Keras's ActivityRegularization(0.1)
  m:compile{optimizer = "sgd", loss = "mse"}
  local kb = m:get_weights()
  kb[2] = nn.tensor{0.5, -1.5}
  m:set_weights(kb)
  local out = m:predict(x)
  local K, B, O = kb[1]:totable(), kb[2]:totable(), out:totable()
  local data = (out - y):square():mean():item()
  local l1k, b2, l1o, l2o = 0, 0, 0, 0
  for _, r in ipairs(K) do for _, v in ipairs(r) do l1k = l1k + math.abs(v) end end
  for _, v in ipairs(B) do b2 = b2 + v * v end
  for _, r in ipairs(O) do for _, v in ipairs(r) do l1o, l2o = l1o + math.abs(v), l2o + v * v end end
  -- the Dense's activity (l1 0.02, l2 0.05) and the ActivityRegularization's (l1 0.1) see the same output
  local want = data + 0.01 * l1k + 0.3 * b2 + 0.02 * l1o + 0.05 * l2o + 0.1 * l1o
  check.near(m:test_on_batch(x, y), want, 1e-5, "loss with every penalty")
  check.near(m:evaluate(x, y).loss, want, 1e-5, "evaluate reports it too")
  -- the bias gradient carries the penalty's 2 * 0.3 * b
  local plain = nn.Sequential{nn.Dense{2, input_shape = {3}, kernel_regularizer = nn.regularizers.l1(0.01)}}
  plain:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "mse"}
  plain:set_weights(kb)
  local reg = nn.Sequential{nn.Dense{2, input_shape = {3}, kernel_regularizer = nn.regularizers.l1(0.01),
    bias_regularizer = nn.regularizers.l2(0.3)}}
  reg:compile{optimizer = nn.optimizers.SGD{learning_rate = 1}, loss = "mse"}
  reg:set_weights(kb)
  plain:train_on_batch(x, y)
  reg:train_on_batch(x, y)
  local bp, br = plain:get_weights()[2]:totable(), reg:get_weights()[2]:totable()
  for j = 1, 2 do check.near(bp[j] - br[j], 2 * 0.3 * B[j], 1e-5, "bias gradient " .. j) end
  check.fails(function() nn.ActivityRegularization{l1 = -1}:build({3}) end, "l1 and l2 must be >= 0")
  local both = nn._C.layer_args(nn.ActivityRegularization{0.25, 0.5}.handle)
  check.eq(both.l1, 0.25, "l1 first")
  check.eq(both.l2, 0.5, "l2 second")
  -- Keras's names for a depthwise kernel: depthwise_regularizer, depthwise_constraint
  local dw = nn.Sequential{nn.DepthwiseConv2D{3, input_shape = {4, 4, 2}, use_bias = false,
    depthwise_regularizer = nn.regularizers.l2(0.1), depthwise_constraint = nn.constraints.non_neg()}, nn.Flatten()}
  dw:compile{optimizer = nn.optimizers.SGD{learning_rate = 10}, loss = "mse"}
  local xi, yi = nn.randn(2, 4, 4, 2), nn.randn(2, 8)
  local k = dw:get_weights()[1]
  local data_loss = (dw:predict(xi) - yi):square():mean():item()
  check.near(dw:test_on_batch(xi, yi), data_loss + 0.1 * k:square():sum():item(), 1e-5, "depthwise_regularizer")
  dw:train_on_batch(xi, yi)
  check.eq(dw:get_weights()[1]:min():item() >= 0, true, "depthwise_constraint")
end

-- Weight constraints: after an SGD step the constrained kernel is the
-- unconstrained one projected as Keras projects it (written out in Lua).
function T.weight_constraints_project_after_each_update()
  nn.seed(19)
  local x, y = nn.randn(8, 3), nn.randn(8, 4)
  local function stepped(constraint)
    nn.seed(4)
    local m = nn.Sequential{nn.Dense{4, input_shape = {3}, kernel_constraint = constraint}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "mse"}
    m:train_on_batch(x, y)
    return m:get_weights()[1]:totable(), m
  end
  local free = stepped(nil)
  local function colnorm(w, j) local s = 0 for i = 1, #w do s = s + w[i][j] ^ 2 end return math.sqrt(s) end
  local function project(scale_of)
    local out = {}
    for i = 1, #free do out[i] = {} end
    for j = 1, #free[1] do
      local n = colnorm(free, j)
      for i = 1, #free do out[i][j] = free[i][j] * scale_of(n) end
    end
    return out
  end
  local nn_ = stepped(nn.constraints.non_neg())
  for i = 1, #free do for j = 1, #free[1] do check.eq(nn_[i][j], math.max(free[i][j], 0), "non_neg") end end
  check.same_table(stepped(nn.constraints.max_norm(0.6)), project(function(n) return math.min(n, 0.6) / (1e-7 + n) end),
    1e-6, "max_norm over axis 0 (each unit's incoming weights)")
  check.same_table(stepped(nn.constraints.unit_norm()), project(function(n) return 1 / (1e-7 + n) end), 1e-6, "unit_norm")
  check.same_table(stepped(nn.constraints.min_max_norm{min_value = 0.8, max_value = 1.0, rate = 0.5}),
    project(function(n) return (0.5 * math.min(math.max(n, 0.8), 1.0) + 0.5 * n) / (1e-7 + n) end), 1e-6, "min_max_norm")
  -- over axis 1 (each input's outgoing weights)
  local rows = stepped(nn.constraints.max_norm(0.5, {axis = 1}))
  for i = 1, #rows do
    local s = 0
    for j = 1, #rows[i] do s = s + rows[i][j] ^ 2 end
    assert(math.sqrt(s) <= 0.5 + 1e-6, "row " .. i .. " norm " .. math.sqrt(s))
  end
  -- kept by the model file
  local _, m = stepped(nn.constraints.max_norm(0.6))
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.eq(back.layers[1].args.kernel_constraint, "max_norm(max_value=0.59999999999999998,axis=0)", "saved")
  check.fails(function() nn.Dense{2, kernel_constraint = "max_norm(max_value=-1,axis=0)"} end,
    "needs 0 <= min_value <= max_value")
  check.fails(function() nn.Dense{2, kernel_constraint = "sometimes"} end, "expected non_neg(), max_norm(...)")
  -- a frozen layer keeps its weights, constraint or not (Keras constrains what it updates)
  local frozen = nn.Dense{4, input_shape = {3}, kernel_constraint = nn.constraints.non_neg()}
  local fm = nn.Sequential{frozen, nn.Dense(4)}
  fm:compile{optimizer = "sgd", loss = "mse"}
  local w0 = fm:get_weights()
  w0[1] = w0[1] - 1
  fm:set_weights(w0)
  frozen.trainable = false
  fm:compile{optimizer = "sgd", loss = "mse"}
  fm:train_on_batch(x, y)
  check.eq((fm:get_weights()[1] - w0[1]):abs():max():item(), 0, "the frozen kernel untouched")
  local bad = nn.Sequential{nn.Dense{2, input_shape = {3}, kernel_constraint = nn.constraints.unit_norm{axis = 4}}}
  bad:compile{optimizer = "sgd", loss = "mse"}
  check.fails(function() bad:train_on_batch(x, nn.randn(8, 2)) end, "axis 4, but the weight has 2 axes")
end

-- Keras's to_snake_case names, numbered from the second of a kind.
function T.layer_names_follow_keras()
  local want = {Conv2D = "conv2d", MaxPooling2D = "max_pooling2d", LeakyReLU = "leaky_re_lu", SimpleRNN = "simple_rnn",
    MultiHeadAttention = "multi_head_attention", GlobalAveragePooling1D = "global_average_pooling1d",
    BatchNormalization = "batch_normalization", PReLU = "p_re_lu", LSTM = "lstm", UpSampling2D = "up_sampling2d"}
  local args = {Conv2D = {2, 1}, MaxPooling2D = {2}, MultiHeadAttention = {num_heads = 2, key_dim = 2}, SimpleRNN = {2}, LSTM = {2}}
  for tname, base in pairs(want) do
    local a, b = nn[tname](args[tname] or {}), nn[tname](args[tname] or {})
    assert(a.name == base or a.name:match("^" .. base .. "_%d+$"), tname .. " is named " .. a.name)
    local n = tonumber(a.name:match("_(%d+)$")) or 0
    check.eq(b.name, base .. "_" .. (n + 1), tname .. "'s next")
  end
end

function T.positional_and_named_arguments_agree()
  local a = nn.Conv2D{32, 3, activation = "relu", input_shape = {8, 8, 3}}
  local b = nn.Conv2D{filters = 32, kernel_size = 3, activation = "relu", input_shape = {8, 8, 3}}
  check.same_table(a.output_shape, b.output_shape)
  check.same_table(nn.Flatten().args, nn.Flatten{}.args)
end

function T.one_dimensional_targets()
  nn.seed(2)
  local x = nn.randn(8, 2)
  local y = nn.randn(8)
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = "sgd", loss = "mse"}
  local p = m:predict(x):reshape(-1)
  local want = ((p - y):square()):mean():item()
  check.near(m:evaluate(x, y).loss, want, 1e-5, "MSE of (N, 1) predictions against (N,) targets")
  local b = nn.Sequential{nn.Dense{1, activation = "sigmoid", input_shape = {2}}}
  b:compile{optimizer = "sgd", loss = "binary_crossentropy", metrics = {"accuracy"}}
  local acc = b:evaluate(x, nn.tensor{0, 1, 0, 1, 1, 0, 1, 0}).accuracy
  assert(acc >= 0 and acc <= 1, "binary accuracy " .. acc)
  local ints = nn.tensor({0, 1, 2, 1}, "int32")
  local c = nn.Sequential{nn.Dense{3, input_shape = {2}}, nn.Activation("softmax")}
  c:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  local h = c:fit(nn.randn(4, 2), ints, {epochs = 1, verbose = 0})
  check.eq(#h.loss, 1, "int32 labels train through the unfused loss")
end

function T.augmentation_is_keyed_by_sample_index()
  nn.seed(8)
  local x = nn.rand(4, 6, 6, 1)
  local aug = nn.augment.Sequential{nn.augment.RandomTranslation(0.3, 0.3, {fill_mode = "constant"}), seed = 5}
  local picked = nn.cat({x[{{3, 3}}], x[{{1, 1}}]}, 1) -- samples 2 and 0, in that order
  local both = aug:apply(picked, {epoch = 1, indices = {2, 0}})
  local two = aug:apply(x[{{3, 3}}], {epoch = 1, first_index = 2})
  local zero = aug:apply(x[{{1, 1}}], {epoch = 1, first_index = 0})
  check.same_table(both[1]:totable(), two[1]:totable(), 0, "sample 2")
  check.same_table(both[2]:totable(), zero[1]:totable(), 0, "sample 0")
end

function T.bad_input_errors()
  check.fails(function() nn.Conv2D{32, 0} end, "bad argument #2 to 'Conv2D' (kernel_size must be positive, got 0)")
  local ok, err = pcall(function() nn.Dense{0} end)
  assert(not ok and err:find("^[^:]*test_model.lua:%d+: bad argument #1 to 'Dense'"), "points at the caller: " .. err)
  check.fails(function() nn.Conv2D{32, 3, padding = "full"} end, "padding must be one of valid, same, got 'full'")
  check.fails(function() nn.Dense{10, activaton = "relu"} end, "unknown argument; valid: units, activation")
  check.fails(function() return nn.Conv3D{} end, "lunet has no layer or class 'Conv3D'")
  local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {4}}}
  check.fails(function() m:compile{optimizer = "adamx", loss = "mse"} end, "unknown optimizer 'adamx'")
  check.fails(function() m:compile{optimizer = "adam", loss = "hingee"} end, "unknown loss 'hingee'")
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  check.fails(function() m:fit(nn.ones(10, 4), nn.zeros(9), {verbose = 0}) end, "x has 10 samples but y has 9")
  check.fails(function() m:fit(nn.ones(4, 4), nn.tensor{0, 1, 2, 7}, {verbose = 0}) end,
    "fit: y holds label 7 for sample 4, outside the model's 3 classes [0, 3)")
  check.fails(function() m:fit(nn.ones(4, 5), nn.zeros(4), {verbose = 0}) end,
    m.name .. ": expected input of shape (None, 4), got (4, 5)")
  check.fails(function() m:fit(nn.ones(4, 4), nn.zeros(4), {epoch = 2}) end, "unknown option; valid:")
  -- NaN and -0.5 trained without validation, silently; a string failed in a comparison
  for _, bad in ipairs{0 / 0, -0.5, 1, "0.5"} do
    check.fails(function() m:fit(nn.ones(4, 4), nn.zeros(4), {validation_split = bad, verbose = 0}) end,
      "bad argument 'validation_split' to 'fit' (a number in (0, 1) expected, got " .. tostring(bad))
  end
  check.eq(m:fit(nn.ones(4, 4), nn.zeros(4), {validation_split = 0, verbose = 0}).val_loss, nil, "0: no split")
  check.fails(function() m:fit(nn.ones(4, 4), nn.zeros(4), {validation_data = nn.ones(2, 4), verbose = 0}) end,
    "bad argument 'validation_data' to 'fit' ({x, y} or {x, y, sample_weight}, or a dataset, expected, got a tensor)")
  check.fails(function() m:evaluate(nn.ones(4, 4), nn.zeros(4), {batchsize = 2}) end,
    "bad argument 'batchsize' to 'evaluate' (unknown option; valid: batch_size, return_dict, sample_weight, verbose)")
  check.fails(function() m:predict(nn.ones(4, 4), {batchsize = 2}) end,
    "bad argument 'batchsize' to 'predict' (unknown option; valid: batch_size, verbose)")
  -- evaluate's return_dict = false: Keras's list, the loss then the metrics
  local logs = m:evaluate(nn.ones(4, 4), nn.zeros(4), {verbose = 0})
  local list = m:evaluate(nn.ones(4, 4), nn.zeros(4), {verbose = 0, return_dict = false})
  check.same_table(list, {logs.loss, logs.accuracy}, 0, "return_dict = false")
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
  check.eq(m:evaluate(nn.ones(4, 4), nn.zeros(4), {return_dict = false}), logs.loss, "the loss alone")
  -- the model is intact after all that
  local h = m:fit(nn.ones(4, 4), nn.zeros(4), {epochs = 1, verbose = 0})
  check.eq(#h.loss, 1)
  check.fails(function() nn.load_plugin("/nonexistent/plugin.so") end, "no such file")
  check.fails(function() nn.use("warp-drive") end, "no backend named 'warp-drive'")
end

function T.callbacks_and_schedules()
  local x, y = blobs(96)
  nn.seed(4)
  local m = small_cnn()
  -- a learning rate so high that validation loss stops improving
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 2.0}, loss = "sparse_categorical_crossentropy"}
  local stopper = nn.callbacks.EarlyStopping{monitor = "val_loss", patience = 1, restore_best_weights = true,
    verbose = 0}
  local seen = {}
  local logger = nn.callbacks.LambdaCallback{on_epoch_end = function(_, epoch, logs) seen[epoch] = logs.val_loss end}
  local h = m:fit(x, y, {epochs = 30, batch_size = 16, validation_split = 0.25, verbose = 0,
    callbacks = {stopper, logger}})
  assert(#h.loss < 30, "EarlyStopping stopped the run early")
  check.eq(#h.loss, stopper.best_epoch + 2, "stops after patience epochs without improvement (Keras; epochs from 0)")
  check.eq(stopper.stopped_epoch, #h.loss - 1, "the epoch it stopped at, from 0")
  local best = math.huge
  for _, v in pairs(seen) do best = math.min(best, v) end
  check.eq(stopper.best, best, "best val_loss")
  -- restored weights give the best epoch's validation loss
  local xv, yv = nn._C.take_rows(x, 73, 24), nn._C.take_rows(y, 73, 24)
  check.near(m:evaluate(xv, yv).loss, best, 1e-5, "restored weights")

  local lrs = {}
  local sched = nn.callbacks.LearningRateScheduler(function(epoch, lr) lrs[#lrs + 1] = lr return 0.1 / (epoch + 1) end)
  local m2 = small_cnn()
  m2:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "sparse_categorical_crossentropy"}
  m2:fit(x, y, {epochs = 3, batch_size = 32, verbose = 0, callbacks = {sched}})
  check.same_table(lrs, {0.5, 0.1, 0.05}, 1e-12, "scheduled learning rates")
  local decay = nn.schedules.ExponentialDecay{initial_learning_rate = 0.1, decay_steps = 10, decay_rate = 0.5}
  check.near(decay(20), 0.025, 1e-12, "ExponentialDecay")
  -- Keras 3's CosineDecay with a warm-up: 0 -> 1e-3 linearly over 10 steps,
  -- then half a cosine over 100 steps down to alpha * 1e-3
  local cos = nn.schedules.CosineDecay{initial_learning_rate = 0, decay_steps = 100, warmup_target = 1e-3,
    warmup_steps = 10, alpha = 0.1}
  check.near(cos(0), 0, 1e-15, "warm-up start")
  check.near(cos(5), 5e-4, 1e-15, "half-way through the warm-up")
  check.near(cos(10), 1e-3, 1e-15, "the warm-up target")
  check.near(cos(60), 1e-3 * (0.9 * 0.5 + 0.1), 1e-15, "half-way through the decay")
  check.near(cos(500), 1e-4, 1e-15, "alpha times the target at the end")
  check.near(nn.schedules.CosineDecay{initial_learning_rate = 0.2, decay_steps = 4}(2), 0.1, 1e-15, "no warm-up")
  check.fails(function() nn.schedules.CosineDecay{initial_learning_rate = 0.2, decay_steps = 4, warmup = 3} end,
    "unknown argument; valid: alpha, decay_steps, initial_learning_rate, name, warmup_steps, warmup_target")
  -- a schedule is evaluated at step 0 for the first update and survives save/load
  local m3 = small_cnn()
  m3:compile{optimizer = nn.optimizers.SGD{learning_rate = decay}, loss = "sparse_categorical_crossentropy"}
  check.near(m3.optimizer:current_lr(), 0.1, 1e-12, "first update's rate")
  m3:fit(x, y, {epochs = 1, batch_size = 32, verbose = 0})
  check.near(m3.optimizer:current_lr(), 0.1 * 0.5 ^ 0.3, 1e-9, "rate after 3 updates")
  local path = os.tmpname()
  m3:save(path)
  local m4 = nn.load_model(path)
  os.remove(path)
  check.near(m4.optimizer:current_lr(), 0.1 * 0.5 ^ 0.3, 1e-9, "schedule restored")
  -- one optimizer cannot train two models
  local shared = nn.optimizers.Adam{}
  local a, b = small_cnn(), small_cnn()
  a:compile{optimizer = shared, loss = "sparse_categorical_crossentropy"}
  b:compile{optimizer = shared, loss = "sparse_categorical_crossentropy"}
  a:fit(x, y, {epochs = 1, verbose = 0})
  check.fails(function() b:fit(x, y, {epochs = 1, verbose = 0}) end, "already trains another model's weights")
end

-- Gradient clipping against a hand computation: loss = sum(w * c) has the
-- gradient c, and SGD at rate 1 moves w by minus the clipped gradient.
function T.gradient_clipping_matches_keras()
  local c1, c2 = { 3, -4, 0.5 }, { 12, 0, -5 } -- norms 5.0249 and 13
  local function clipped(opts)
    local w1, w2 = nn.zeros(3):requires_grad(true), nn.zeros(3):requires_grad(true)
    local opt = nn.optimizers.SGD(opts)
    local loss = (w1 * nn.tensor(c1)):sum() + (w2 * nn.tensor(c2)):sum()
    loss:backward()
    opt:apply({ w1, w2 })
    assert(w1.grad == nil, "the gradients are cleared after the update")
    return (-w1):totable(), (-w2):totable()
  end
  local a, b = clipped({ learning_rate = 1 })
  check.same_table(a, c1, 1e-6, "no clipping")
  a, b = clipped({ learning_rate = 1, clipvalue = 2 })
  check.same_table(a, { 2, -2, 0.5 }, 1e-6, "clipvalue")
  check.same_table(b, { 2, 0, -2 }, 1e-6, "clipvalue")
  local n1 = math.sqrt(9 + 16 + 0.25)
  a, b = clipped({ learning_rate = 1, clipnorm = 1 })
  check.same_table(a, { 3 / n1, -4 / n1, 0.5 / n1 }, 1e-6, "clipnorm, each gradient alone")
  check.same_table(b, { 12 / 13, 0, -5 / 13 }, 1e-6, "clipnorm")
  a, b = clipped({ learning_rate = 1, clipnorm = 100 })
  check.same_table(b, c2, 1e-6, "clipnorm above the norm changes nothing")
  local g = math.sqrt(n1 * n1 + 169)
  a, b = clipped({ learning_rate = 1, global_clipnorm = 2 })
  check.same_table(a, { 6 / g, -8 / g, 1 / g }, 1e-6, "global_clipnorm")
  check.same_table(b, { 24 / g, 0, -10 / g }, 1e-6, "global_clipnorm")
  check.fails(function() nn.optimizers.Adam{clipnorm = -1} end, "clipnorm")
  -- Keras takes one clipping option at a time
  check.fails(function() nn.optimizers.SGD{clipnorm = 1, clipvalue = 0.5} end,
    "only one of clipnorm, clipvalue and global_clipnorm can be set")
  check.fails(function() nn.optimizers.Adam{clipnorm = 1, global_clipnorm = 2} end, "only one of clipnorm")
  -- a file of lunet 0.2 with two of them still loads, keeping one (it says which)
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{clipnorm = 1}, loss = "mse"}
  local path = os.tmpname()
  m:save(path)
  local f = assert(io.open(path, "rb"))
  local bytes = f:read("a")
  f:close()
  local patched, count = bytes:gsub('\\"clipvalue\\":0,', '\\"clipvalue\\":5,') -- the JSON is escaped in the header
  assert(count >= 1, "the file records clipvalue")
  f = assert(io.open(path, "wb"))
  f:write(patched)
  f:close()
  local back = nn.load_model(path)
  os.remove(path)
  check.eq(back.optimizer.clipnorm, 1, "clipnorm kept")
  check.eq(back.optimizer.clipvalue, 0, "clipvalue dropped")
  back:train_on_batch(nn.ones(2, 2), nn.ones(2, 1))
end

-- A step with no gradient at all is an error and counts nothing (Keras's
-- "No gradients provided for any variable"): the bias corrections and the
-- schedule's step stay where they were.
function T.an_update_without_gradients_is_an_error()
  local w = nn.tensor{1, 2}:requires_grad(true)
  local opt = nn.optimizers.Adam{learning_rate = 0.1}
  w:square():sum():backward()
  opt:apply({w})
  local after_one = w:totable()
  check.fails(function() opt:apply({w}) end, "no gradients provided for any of the 1 parameters")
  check.eq(opt.iterations, 1, "the failed step is not counted")
  check.same_table(w:totable(), after_one, 0, "nor applied")
  w:square():sum():backward()
  opt:apply({w})
  check.eq(opt.iterations, 2, "the next step is the second")
end

-- The optimizer's state is saved by the weight it belongs to, so a model
-- saved after a trainable change (before compiling again) reads back each
-- weight's own moments: the frozen layer's are left out, the others keep
-- theirs, and a newly trainable weight starts fresh.
function T.optimizer_state_follows_its_weights_through_a_file()
  local C = require "lunet.core"
  nn.seed(18)
  local x, y = nn.randn(32, 4), nn.randn(32, 4)
  local m = nn.Sequential{nn.Dense{4, input_shape = {4}}, nn.Dense{4}, nn.Dense{4}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.01}, loss = "mse"}
  m:fit(x, y, {epochs = 2, verbose = 0})
  local before = C.optimizer_slots(m.optimizer.handle, #m.params)
  m.layers[1].trainable = false
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  local after = C.optimizer_slots(back.optimizer.handle, #back.params)
  check.eq(#back.params, 4, "the frozen layer's weights are not parameters")
  for p = 1, 4 do -- back's parameter p is m's parameter p + 2 (layers 2 and 3)
    for k = 1, 2 do
      check.same_table(after[p][k]:totable(), before[p + 2][k]:totable(), 0, "parameter " .. p .. " slot " .. k)
    end
  end
end

-- BackupAndRestore brings back a learning rate lowered during training;
-- load_weights refuses a bigger model's file (it loaded it in part); a
-- training flag on a call in a model's graph is refused (it was dropped).
function T.restores_and_weight_files_keep_everything()
  nn.seed(3)
  local x, y = nn.randn(16, 2), nn.randn(16, 1)
  local dir = check.tmpdir()
  local function model()
    nn.seed(4)
    local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
    return m
  end
  local lower = nn.callbacks.LambdaCallback{on_epoch_end = function(m) m.optimizer.learning_rate = 0.05 end}
  local a = model()
  a:fit(x, y, {epochs = 1, verbose = 0, callbacks = {lower, nn.callbacks.BackupAndRestore{backup_dir = dir,
    delete_checkpoint = false}}})
  local b = model()
  b:fit(x, y, {epochs = 1, verbose = 0, callbacks = {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}}})
  check.eq(b.optimizer.learning_rate, 0.05, "the lowered rate resumes")
  local big = nn.Sequential{nn.Dense{2, input_shape = {2}}, nn.Dense{1}}
  local small = nn.Sequential{nn.Dense{2, input_shape = {2}}}
  local path = dir .. "/w.safetensors"
  big:save_weights(path)
  check.fails(function() small:load_weights(path) end, "it has the weight 'layers.1.kernel', which this model lacks")
  check.fails(function() nn.Dropout(0.5)(nn.Input{shape = {2}}, {training = true}) end,
    "a training flag on a call in a model's graph is not supported")
end

-- A NaN loss updates nothing and names where it happened.
function T.nan_loss_stops_fit_without_update()
  local m = nn.Sequential{nn.Dense{1, input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  local before = m:get_weights()[1]:totable()
  local x = nn.tensor{{1, 2}, {0 / 0, 1}}
  check.fails(function() m:fit(x, nn.zeros(2, 1), {verbose = 0, batch_size = 2}) end,
    "the loss became NaN or infinite (a NaN loss; lower the learning rate?); the weights were not updated (epoch 1, step 1)")
  check.same_table(m:get_weights()[1]:totable(), before, 0, "weights unchanged")
end

-- "accuracy" with mean squared error is Keras's: categorical on one-hot
-- targets (binary on one unit), never a constant 0; checked against the
-- predictions by hand.
function T.accuracy_follows_the_loss_as_in_keras()
  nn.seed(12)
  local m = nn.Sequential{nn.Dense{3, activation = "softmax", input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "mse", metrics = {"accuracy"}}
  local x = nn.tensor{{1, 0}, {0, 1}, {1, 1}, {-1, 0}, {0, -1}, {2, 1}}
  local y = nn.tensor{{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1}}
  m:fit(x, y, {epochs = 20, batch_size = 6, verbose = 0})
  local p, t, hits = m:predict(x):totable(), y:totable(), 0
  local function argmax(v)
    local best = 1
    for i = 2, #v do if v[i] > v[best] then best = i end end
    return best
  end
  for i = 1, #p do if argmax(p[i]) == argmax(t[i]) then hits = hits + 1 end end
  check.near(m:evaluate(x, y).accuracy, hits / #p, 1e-9, "categorical accuracy under mse")
  assert(hits > 0, "the model got some right")
end

function T.resource_errors_are_recoverable()
  check.fails(function() return nn.zeros(1000000, 1000000) end, "out of memory on backend 'cpu'")
  local notplugin = os.tmpname() .. ".so"
  local f = io.open(notplugin, "wb")
  f:write("not an ELF file")
  f:close()
  check.fails(function() nn.load_plugin(notplugin) end, "cannot load plugin " .. notplugin)
  os.remove(notplugin)
  -- a real shared object without lunet's entry point
  local libz
  for _, dir in ipairs{"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib"} do
    local g = io.open(dir .. "/libz.so.1", "rb")
    if g then g:close() libz = dir .. "/libz.so.1" break end
  end
  if libz then check.fails(function() nn.load_plugin(libz) end, "is not a lunet plugin") end
  check.eq(nn.ones(2):sum():item(), 2, "still working afterwards")
end

function T.backends_list_cpu_with_kernel()
  local found
  for _, b in ipairs(nn.backends()) do if b.name == "cpu" then found = b end end
  assert(found and found.available and found.threads >= 1, "cpu backend listed")
  assert(found.detail:find("kernel", 1, true), found.detail)
  check.eq(nn.threads(1), 1)
  check.eq(nn.threads(2), 2)
end

-- A convolution's ReLU runs after the max pooling that reads it (the two
-- commute exactly; a quarter of the elements): the model's predictions
-- equal the layers called one by one, and one SGD step equals a model whose
-- ReLU is a layer of its own between them, bit for bit, also where a
-- convolution's output is negative over a whole window.
function T.relu_after_pooling_is_exact()
  local function build(separate)
    nn.seed(21)
    local layers = separate
      and {nn.Conv2D{6, 3, input_shape = {9, 9, 2}}, nn.ReLU(), nn.MaxPooling2D(2), nn.Flatten(), nn.Dense{3, activation = "softmax"}}
      or {nn.Conv2D{6, 3, activation = "relu", input_shape = {9, 9, 2}}, nn.MaxPooling2D(2), nn.Flatten(),
          nn.Dense{3, activation = "softmax"}}
    local m = nn.Sequential(layers)
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "sparse_categorical_crossentropy"}
    m:build()
    return m
  end
  local a, b = build(false), build(true)
  local w = a:get_weights()
  w[2] = w[2] - 0.3 -- a negative bias: whole windows below zero
  a:set_weights(w)
  b:set_weights(w)
  nn.seed(22)
  local x, y = nn.randn{7, 9, 9, 2}, nn.tensor{0, 1, 2, 0, 1, 2, 0}
  local by_layer = x
  for _, l in ipairs(a.layers) do by_layer = l(by_layer) end
  check.same_table(a:predict(x):totable(), by_layer:totable(), 0, "model vs layers one by one")
  check.same_table(a:predict(x):totable(), b:predict(x):totable(), 0, "fused vs a ReLU layer")
  check.eq(a:train_on_batch(x, y), b:train_on_batch(x, y), "loss")
  local wa, wb = a:get_weights(), b:get_weights()
  for i = 1, #wa do check.same_table(wa[i]:totable(), wb[i]:totable(), 0, "weight " .. i .. " after a step") end
end

-- A Dense layer's "relu" runs in its linear op's epilogue with the bias
-- (backend ABI 2.5): predictions, the loss and the weights after one SGD
-- step equal a Dense without activation followed by a ReLU layer, bit for
-- bit, on the CPU and on Vulkan; mixed precision keeps the separate ops.
-- The profile names the fused op.
-- The CPU, and Vulkan where there is a device.
local function backends_here()
  return check.vulkan() and {"cpu", "vulkan"} or {"cpu"}
end

-- Models a and b with a's weights, the first layer's bias lowered by
-- `lower` (so that its ReLU cuts some units), both on backend be.
local function twins(a, b, lower, be)
  local w = a:get_weights()
  w[2] = w[2] - lower
  a:set_weights(w)
  b:set_weights(w)
  if be ~= "cpu" then a:to(be) b:to(be) end
  return a, b
end

function T.dense_relu_in_the_epilogue_is_exact()
  local function build(separate)
    nn.seed(23)
    local layers = separate
      and {nn.Dense{37, input_shape = {19}}, nn.ReLU(), nn.Dense{5, activation = "relu"}, nn.Dense{3, activation = "softmax"}}
      or {nn.Dense{37, activation = "relu", input_shape = {19}}, nn.Dense{5, activation = "relu"}, nn.Dense{3, activation = "softmax"}}
    local m = nn.Sequential(layers)
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "sparse_categorical_crossentropy"}
    m:build()
    return m
  end
  for _, be in ipairs(backends_here()) do
    local a, b = twins(build(false), build(true), 0.2, be) -- some units below zero on every row
    nn.seed(24)
    local x, y = nn.randn{11, 19}, nn.tensor{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1}
    if be ~= "cpu" then x, y = x:to(be), y:to(be) end
    local pa = a:predict(x):totable()
    check.same_table(pa, b:predict(x):totable(), 0, be .. ": fused vs a ReLU layer")
    local h = a.layers[1](x):totable()
    local zeros, positive = 0, 0
    for _, row in ipairs(h) do for _, v in ipairs(row) do
      if v == 0 then zeros = zeros + 1 elseif v > 0 then positive = positive + 1 end end end
    check.eq(zeros > 0 and positive > 0, true, be .. ": the first layer's ReLU cuts some units, not all")
    check.eq(a:train_on_batch(x, y), b:train_on_batch(x, y), be .. ": loss")
    local wa, wb = a:get_weights(), b:get_weights()
    for i = 1, #wa do check.same_table(wa[i]:totable(), wb[i]:totable(), 0, be .. ": weight " .. i .. " after a step") end
  end
  local m = build(false)
  local x = nn.randn{4, 19}
  local report = nn.profile(function() m:predict(x) end, {print = false})
  local ops = {}
  for _, o in ipairs(report.ops) do ops[o.name] = (ops[o.name] or 0) + o.calls end
  check.eq(ops.linear_relu, 2, "the two relu Dense layers run linear_relu")
  check.eq(ops.linear, 1, "the softmax one runs linear")
  check.eq(ops.gemm, nil, "no separate product")
end

-- The ReLU's gradient of a Dense "relu" layer runs in its consumer's data
-- gradient (gemm_relu_mask) only where that consumer's gradient is the
-- only one its output gets: a graph where the output also feeds a tanh, or
-- is penalised by an activity regularizer, or is the Sequential's plain
-- chain; each against the same model with a separate ReLU layer (never
-- fused, never folded), weights after two steps equal bit for bit, and the
-- profile says where it folded.
function T.relu_gradient_folds_only_where_one_gradient_arrives()
  local function build(kind, separate)
    nn.seed(31)
    local x = nn.Input{shape = {6}, name = "x"}
    local h
    local reg = kind == "regularized" and nn.regularizers.l2(0.3) or nil
    if separate then -- the penalty on the ReLU's output, as the Dense layer's activity_regularizer has it
      h = nn.ReLU()(nn.Dense{9}(x))
      if reg then h = nn.ActivityRegularization{l2 = 0.3}(h) end
    else
      h = nn.Dense{9, activation = "relu", activity_regularizer = reg}(x)
    end
    local y = nn.Dense{3}(h)
    if kind == "branch" then y = nn.Add()({y, nn.Dense{3}(nn.Activation("tanh")(h))}) end
    local m = nn.Model{inputs = x, outputs = y}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.3}, loss = "mse"}
    m:build()
    return m
  end
  for _, be in ipairs(backends_here()) do
    for _, kind in ipairs{"chain", "branch", "regularized"} do
      local a, b = twins(build(kind, false), build(kind, true), 0.3, be) -- some units below zero
      nn.seed(32)
      local x, y = nn.randn{10, 6}, nn.randn{10, 3}
      if be ~= "cpu" then x, y = x:to(be), y:to(be) end
      local ops = {}
      local report = nn.profile(function() a:train_on_batch(x, y); a:train_on_batch(x, y) end, {print = false})
      for _, o in ipairs(report.ops) do ops[o.name] = o.calls end
      b:train_on_batch(x, y)
      b:train_on_batch(x, y)
      local wa, wb = a:get_weights(), b:get_weights()
      for i = 1, #wa do
        check.same_table(wa[i]:totable(), wb[i]:totable(), 0, string.format("%s, %s: weight %d", be, kind, i))
      end
      local folded = kind == "chain"
      check.eq(ops.gemm_relu_mask, folded and 2 or nil, be .. ", " .. kind .. ": the consumer's data gradient took the ReLU's")
      check.eq(ops.relu_backward, not folded and 2 or nil, be .. ", " .. kind .. ": the layer's own ReLU gradient")
    end
  end
end

-- No samples: predict gives outputs of 0 rows through every kind of layer
-- (Flatten took its width from numel / N, nothing at N = 0) on every
-- backend (off the CPU, predict returned an empty Lua table); fit,
-- evaluate and the single-batch calls say there is nothing to learn from
-- (fit said "batches: need one of x", and on Vulkan returned a loss of 0).
function T.no_samples()
  for _, be in ipairs(backends_here()) do
    nn.seed(3)
    local x = nn.Input{shape = {6, 6, 2}}
    local h = nn.Conv2D{4, 3, activation = "relu"}(x)
    h = nn.BatchNormalization{}(nn.MaxPooling2D{2}(h))
    local y = nn.Dense{3}(nn.Flatten{}(h))
    local m = nn.Model{inputs = x, outputs = y}
    m:compile{optimizer = "adam", loss = "mse"}
    if be ~= "cpu" then m:to(be) end
    local p = m:predict(nn.randn(0, 6, 6, 2))
    check.eq(nn.is_tensor(p), true, be .. ": predict gives a tensor")
    check.same_table(p:shape(), {0, 3}, 0, be .. ": predict's shape")
    check.same_table(m:predict(nn.randn(2, 6, 6, 2)):shape(), {2, 3}, 0, be .. ": and then 2 rows")
    local x0, y0 = nn.randn(0, 6, 6, 2), nn.randn(0, 3)
    check.fails(function() m:fit(x0, y0, {verbose = 0}) end, "fit: x has 0 samples (give at least one)")
    check.fails(function() m:evaluate(x0, y0, {verbose = 0}) end, "evaluate: x has 0 samples (give at least one)")
    check.fails(function() m:train_on_batch(x0, y0) end, "train_on_batch: x has 0 samples (give at least one)")
    check.fails(function() m:test_on_batch(x0, y0) end, "test_on_batch: x has 0 samples (give at least one)")
  end
end

-- Layer names are unique in a model, as Keras requires (they name the
-- weights in files, and profiles group by them): two layers of one name
-- are an error naming both; an automatic name skips names already given
-- (a user's "dense_7" and the next automatic Dense shared a name).
function T.layer_names_are_unique()
  check.fails(function() nn.Sequential{nn.Dense{4, name = "x", input_shape = {3}}, nn.Dense{2, name = "x"}} end,
    "the name 'x' is used by layers 1 and 2; layer names must be unique in a model")
  local i = nn.Input{shape = {3}}
  check.fails(function() nn.Model{inputs = i, outputs = nn.Dense{2, name = "y"}(nn.Dense{2, name = "y"}(i))} end,
    "the name 'y' is used by layers 1 and 2")
  local m = nn.Sequential{nn.Dense{2, input_shape = {3}}}
  check.fails(function() m:add(nn.Dense{2, name = m.layers[1].name}) end, "is used by layers 1 and 2")
  check.eq(#m.layers, 1, "the refused layer is not added")
  -- a shared layer is one layer, not two names
  local shared = nn.Dense{3, name = "shared"}
  local a = nn.Input{shape = {3}}
  nn.Model{inputs = a, outputs = shared(shared(a))}
  -- automatic names skip a given one
  local probe = nn.Dense{1}
  local n = tonumber(probe.name:match("_(%d+)$") or "0")
  local given = nn.Dense{1, name = "dense_" .. (n + 1)}
  local auto = nn.Dense{1}
  assert(auto.name ~= given.name, "the automatic name " .. auto.name .. " is the given one")
  check.eq(auto.name, "dense_" .. (n + 2), "the next free automatic name")
end

-- A model's call options and fit's profile are checked: a negative epoch
-- or index wrapped to 2^64 - 1 in C, a fraction was cut, an unknown key
-- was ignored, and profile = "yes" ran as true.
function T.call_options_are_checked()
  local m = nn.Sequential{nn.RandomFlip{"horizontal", input_shape = {2, 2, 1}}, nn.Flatten(), nn.Dense{1}}
  m:compile{optimizer = "sgd", loss = "mse"}
  local x = nn.rand(2, 2, 2, 1)
  check.fails(function() m(x, {training = true, epoch = -1}) end, m.name .. ": epoch must be a whole number >= 0, got -1")
  check.fails(function() m(x, {training = true, first_index = 1.5}) end, "first_index must be a whole number >= 0, got 1.5")
  check.fails(function() m(x, {training = true, indices = {0, 0.5}}) end, "indices[2] is 0.5; sample indices are whole numbers")
  check.fails(function() m(x, {training = true, indices = {0}}) end,
    m.name .. ": indices has 1 entries for a batch of 2 (one dataset index per sample)")
  check.fails(function() m(x, {training = true, epok = 1}) end,
    "bad argument 'epok' to '" .. m.name .. "' (unknown call option; valid: epoch, first_index, indices, training)")
  check.same_table(m(x, {training = true, epoch = 2, indices = {1, 0}}):shape(), {2, 1}, 0, "a good call")
  check.fails(function() m:fit(x, nn.rand(2, 1), {verbose = 0, profile = "yes"}) end,
    "bad argument 'profile' to 'fit' (true, or nn.profile's options {trace = ..., ...}, expected; got \"yes\")")
end

check.run(T)
