-- Random augmentation and resizing as model layers (nn.RandomFlip,
-- RandomRotation, RandomTranslation, RandomZoom, RandomCrop, Resizing):
-- the same images as fit{augment = ...} for the same keys, inside fit too;
-- identity (or the centre window) at inference; Resizing against TF's
-- half-pixel formula written out in Lua; saved and loaded; bad arguments.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local A = nn.augment

local T = {}

local function max_diff(a, b) return (a - b):abs():max():item() end

-- Each layer next to the augment step that fit{augment} would run.
local function pairs_of_layers(shape)
  return {
    {nn.RandomFlip{"horizontal_and_vertical", seed = 3, input_shape = shape}, A.RandomFlip("horizontal_and_vertical")},
    {nn.RandomRotation{0.2, fill_mode = "nearest", seed = 3, input_shape = shape},
     A.RandomRotation(0.2, {fill_mode = "nearest"})},
    {nn.RandomTranslation{0.2, {-0.1, 0.3}, seed = 3, input_shape = shape}, A.RandomTranslation(0.2, {-0.1, 0.3})},
    {nn.RandomZoom{{-0.3, 0.2}, seed = 3, input_shape = shape}, A.RandomZoom{height_factor = {-0.3, 0.2}}},
    {nn.RandomZoom{0.2, {0.1, 0.4}, fill_mode = "wrap", seed = 3, input_shape = shape},
     A.RandomZoom(0.2, {0.1, 0.4}, {fill_mode = "wrap"})},
    {nn.RandomCrop{5, 4, padding = 2, seed = 3, input_shape = shape}, A.RandomCrop{5, 4, padding = 2}},
  }
end

function T.layers_draw_what_fit_augment_draws()
  nn.seed(1)
  local x = nn.rand(12, 7, 6, 3)
  for _, p in ipairs(pairs_of_layers{7, 6, 3}) do
    local m = nn.Sequential{p[1]}
    local aug = A.Sequential{p[2], seed = 3}
    local got = m(x, {training = true, epoch = 4, first_index = 20})
    local want = aug:apply(x, {epoch = 4, first_index = 20})
    check.eq(max_diff(got, want), 0, p[1].type .. ": the same images as the augment pipeline")
    -- the keys matter: another epoch draws other transforms
    local other = m(x, {training = true, epoch = 5, first_index = 20})
    assert(max_diff(other, got) > 0, p[1].type .. ": epoch 5 drew what epoch 4 drew")
    -- by dataset index, not batch position
    local idx = {}
    for i = 1, 12 do idx[i] = 100 - i end
    check.eq(max_diff(m(x, {training = true, epoch = 4, indices = idx}), aug:apply(x, {epoch = 4, indices = idx})), 0,
      p[1].type .. " with indices")
  end
end

-- At inference RandomCrop does what Keras documents: the largest centred
-- window of its aspect ratio, resized to height x width (Resizing with
-- crop_to_aspect_ratio, itself held to TF's formula).
function T.inference_passes_images_through_and_crop_resizes()
  local x = nn.rand(3, 7, 6, 3)
  for _, p in ipairs(pairs_of_layers{7, 6, 3}) do
    local m = nn.Sequential{p[1]}
    if p[1].type == "RandomCrop" then
      local want = nn.Sequential{nn.Resizing{5, 4, crop_to_aspect_ratio = true, input_shape = {7, 6, 3}}}(x)
      check.eq(max_diff(m(x), want), 0, "the aspect window, resized")
      check.same_table(m:predict(x):shape(), {3, 5, 4, 3}, 0, "the shape training sees")
    else
      check.eq(max_diff(m(x), x), 0, p[1].type .. " at inference")
      check.eq(max_diff(m:predict(x), x), 0, p[1].type .. " in predict")
    end
  end
end

-- Outside fit, each call draws anew, and lunet.seed repeats a run.
function T.calls_outside_fit_draw_anew()
  local x = nn.rand(6, 8, 8, 1)
  local m = nn.Sequential{nn.RandomRotation{0.3, input_shape = {8, 8, 1}}}
  nn.seed(5)
  local a, b = m(x, true), m(x, true)
  assert(max_diff(a, b) > 0, "two calls drew the same rotation")
  nn.seed(5)
  check.eq(max_diff(m(x, true), a), 0, "lunet.seed repeats the draws")
  -- two unseeded layers of one model draw independently
  local two = nn.Sequential{nn.RandomFlip{"horizontal", input_shape = {8, 8, 1}}, nn.RandomFlip{"horizontal"}}
  local y = two(x, {training = true, epoch = 1})
  assert(max_diff(y, x) > 0, "two independent flips undid each other on every sample")
end

-- Inside model:fit the layer sees each sample as fit{augment} would have
-- made it: captured by a Lambda after the layer, with and without shuffling.
function T.inside_fit_the_keys_are_fits()
  nn.seed(2)
  local n, bs = 10, 4
  local x, y = nn.rand(n, 5, 5, 1), nn.rand(n, 1)
  local seen = {}
  local capture = nn.Lambda(function(t, training)
    if training then seen[#seen + 1] = t:clone() end
    return t
  end)
  local m = nn.Sequential{nn.RandomFlip{"horizontal_and_vertical", seed = 11, input_shape = {5, 5, 1}}, capture,
    nn.Flatten(), nn.Dense(1)}
  m:compile{optimizer = "sgd", loss = "mse"}
  local aug = A.Sequential{A.RandomFlip("horizontal_and_vertical"), seed = 11}
  m:fit(x, y, {epochs = 2, batch_size = bs, shuffle = false, verbose = 0})
  check.eq(#seen, 6, "training calls (3 batches, 2 epochs)")
  local k = 0
  for epoch = 1, 2 do
    local want = aug:apply(x, {epoch = epoch})
    for first = 1, n, bs do
      k = k + 1
      local count = math.min(bs, n - first + 1)
      check.eq(max_diff(seen[k], want[{{first, first + count - 1}}]), 0, ("epoch %d, batch %d"):format(epoch, k))
    end
  end
  -- shuffled: every sample seen equals the augment pipeline's image of one
  -- dataset row (this second fit's epoch 1 draws as the model's third)
  seen = {}
  m:fit(x, y, {epochs = 1, batch_size = bs, verbose = 0})
  local want = aug:apply(x, {epoch = 3}):totable()
  local rows = {}
  for _, b in ipairs(seen) do for _, r in ipairs(b:totable()) do rows[#rows + 1] = r end end
  check.eq(#rows, n, "samples seen")
  local used = {}
  for _, r in ipairs(rows) do
    local found
    for i = 1, n do
      if not used[i] and pcall(check.same_table, r, want[i], 0) then found = i break end
    end
    assert(found, "a shuffled sample is not the augment pipeline's image of any row")
    used[found] = true
  end
end

-- tf.image.resize (bilinear, half-pixel centres, edges clamped), written out.
local function resize_reference(img, oh, ow, crop)
  local h, w = #img, #img[1]
  local ch, cw, top, left = h, w, 0, 0
  if crop then
    ch = math.min(h, math.floor(w * oh / ow))
    cw = math.min(w, math.floor(h * ow / oh))
    top, left = (h - ch) // 2, (w - cw) // 2
  end
  local function at(yy, xx) return img[top + yy + 1][left + xx + 1] end
  local out = {}
  for i = 0, oh - 1 do
    out[i + 1] = {}
    local sy = (i + 0.5) * ch / oh - 0.5
    local y0 = math.floor(sy)
    local dy = sy - y0
    local ya, yb = math.max(y0, 0), math.min(y0 + 1, ch - 1)
    ya = math.min(ya, ch - 1)
    for j = 0, ow - 1 do
      local sx = (j + 0.5) * cw / ow - 0.5
      local x0 = math.floor(sx)
      local dx = sx - x0
      local xa, xb = math.min(math.max(x0, 0), cw - 1), math.min(x0 + 1, cw - 1)
      local v = (1 - dy) * ((1 - dx) * at(ya, xa) + dx * at(ya, xb)) + dy * ((1 - dx) * at(yb, xa) + dx * at(yb, xb))
      out[i + 1][j + 1] = v
    end
  end
  return out
end

function T.resizing_matches_tf_half_pixel_bilinear()
  nn.seed(3)
  local x = nn.rand(1, 5, 7, 1)
  local img = x:reshape(5, 7):totable()
  for _, c in ipairs{{3, 4}, {9, 11}, {5, 7}, {2, 9}, {6, 3, true}, {4, 4, true}, {10, 3, true}} do
    local m = nn.Sequential{nn.Resizing{c[1], c[2], crop_to_aspect_ratio = c[3] or false, input_shape = {5, 7, 1}}}
    local got = m(x):reshape(c[1], c[2]):totable()
    check.same_table(got, resize_reference(img, c[1], c[2], c[3]), 1e-5, ("Resizing %dx%d%s"):format(c[1], c[2],
      c[3] and " cropped" or ""))
  end
  -- 8-bit images in, float32 out
  local u = nn.tensor({{{{0}, {255}}, {{128}, {64}}}}, "uint8")
  local r = nn.Sequential{nn.Resizing{2, 2, input_shape = {2, 2, 1}}}(u)
  check.eq(r:dtype(), "float32", "uint8 in, float32 out")
end

function T.saved_with_the_model()
  local m = nn.Sequential{
    nn.RandomRotation{{-0.1, 0.25}, fill_mode = "constant", fill_value = 0.5, seed = 4, input_shape = {6, 6, 2}},
    nn.RandomZoom{0.1}, nn.RandomCrop{4, 4}, nn.Resizing{8, 8}, nn.Flatten(), nn.Dense(2)}
  m:compile{optimizer = "adam", loss = "mse"}
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.same_table(back.layers[1].args.factor, {-0.1, 0.25}, 1e-12, "a factor pair")
  check.eq(back.layers[2].args.height_factor, 0.1, "a factor number")
  check.eq(back.layers[1].args.fill_value, 0.5, "fill_value")
  local x = nn.rand(3, 6, 6, 2)
  check.eq(max_diff(back:predict(x), m:predict(x)), 0, "the same model")
  check.eq(max_diff(back(x, {training = true, epoch = 2}), m(x, {training = true, epoch = 2})), 0, "the same draws")
end

-- GaussianNoise and GaussianDropout: the noise's moments in training, the
-- identity at inference, GaussianDropout's gradient the noise it drew.
function T.gaussian_noise_layers()
  nn.seed(12)
  local n = 40000
  local x = nn.full(n, 2.0)
  local add = nn.Sequential{nn.GaussianNoise{0.3, input_shape = {1}}}
  local d = (add(x:reshape(n, 1), true) - 2):reshape(n)
  check.near(d:mean():item(), 0, 0.01, "GaussianNoise mean")
  check.near(d:square():mean():sqrt():item(), 0.3, 0.02, "GaussianNoise stddev")
  check.eq(max_diff(add(x:reshape(n, 1)), x:reshape(n, 1)), 0, "identity at inference")
  local rate = 0.2
  local xr = nn.full(n, 1.0):requires_grad(true)
  local mul = nn.GaussianDropout{rate}
  local y = mul(xr:reshape(n, 1), true)
  local m = y:reshape(n)
  check.near(m:mean():item(), 1, 0.01, "GaussianDropout mean")
  check.near((m - 1):square():mean():item(), rate / (1 - rate), 0.01, "GaussianDropout variance rate / (1 - rate)")
  y:sum():backward()
  check.eq(max_diff(xr.grad, m), 0, "the gradient is the noise drawn")
  check.fails(function() nn.Sequential{nn.GaussianDropout{1.5, input_shape = {2}}} end, "rate must be in [0, 1)")
end

-- 8-bit images train exactly as the same values in float32: the batch
-- loader converts them on its worker (with and without augmentation), and
-- a model given uint8 computes in float32; arithmetic on uint8 promotes.
function T.uint8_images_train_as_float()
  nn.seed(13)
  local f = (nn.rand(24, 6, 6, 1) * 255):totable()
  for i = 1, 24 do for y = 1, 6 do for x = 1, 6 do f[i][y][x][1] = math.floor(f[i][y][x][1]) end end end
  local xf, xu = nn.tensor(f), nn.tensor(f, "uint8")
  local labels = {}
  for i = 1, 24 do labels[i] = i % 3 end
  local y = nn.tensor(labels)
  check.eq(xu:dtype(), "uint8", "8-bit tensor")
  check.eq((xu / 255):dtype(), "float32", "uint8 / 255 promotes")
  check.eq(max_diff(xu / 255, xf / 255), 0, "the same values")
  for _, aug in ipairs{false, true} do
    local weights = {}
    for k, x in ipairs{xf, xu} do
      nn.seed(3)
      local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {6, 6, 1}}, nn.Flatten(), nn.Dense{3, activation = "softmax"}}
      m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
      m:fit(x, y, {epochs = 2, batch_size = 8, verbose = 0, validation_data = {x, y},
        augment = aug and nn.augment.Sequential{nn.augment.RandomFlip("horizontal"), seed = 4} or nil})
      weights[k] = m:get_weights()[1]:totable()
      if k == 2 then
        check.eq(max_diff(m:predict(xu), m:predict(xf)), 0, "predict on uint8")
      end
    end
    check.same_table(weights[2], weights[1], 0, aug and "uint8 with augmentation" or "uint8 batches")
  end
end

function T.bad_arguments_say_what_is_wrong()
  check.fails(function() nn.RandomRotation{{0.3, 0.1}} end, "factor pair {0.3, 0.1} is reversed")
  check.fails(function() nn.RandomRotation{"a"} end, "factor must be a number or a pair {lo, hi}")
  check.fails(function() nn.RandomFlip{"sideways"} end, "mode must be one of horizontal, vertical")
  -- the per-side form works (its values are tested in test_model.lua); a malformed one is an error
  check.same_table(nn.Sequential{nn.ZeroPadding2D{{{0, 1}, {2, 0}}, input_shape = {4, 4, 1}}}(nn.ones(1, 4, 4, 1)):shape(),
    {1, 5, 6, 1}, 0, "per-side padding")
  check.fails(function() nn.ZeroPadding2D{{{0, 1, 2}, {0, 1}}} end,
    "padding must be an integer, a pair {h, w} or a pair of pairs {{top, bottom}, {left, right}}, got {{0, 1, 2}, {0, 1}}")
  check.fails(function() nn.RandomZoom{0.2, fill_mode = "mirror"} end, "fill_mode must be one of reflect")
  check.fails(function() nn.Sequential{nn.RandomRotation{1.5, input_shape = {4, 4, 1}}} end, "factor must be in [-1, 1]")
  -- a negative number was taken as its magnitude (Keras and nn.augment refuse it)
  check.fails(function() nn.Sequential{nn.RandomRotation{-0.2, input_shape = {4, 4, 1}}} end,
    "RandomRotation: factor must be >= 0 when a number (f means [-f, f]; a pair {lo, hi} gives another range), got -0.2")
  check.fails(function() nn.Sequential{nn.RandomCrop{6, 6, input_shape = {4, 4, 1}}} end, "does not fit")
  -- a crop larger than the images fits once padded; at inference Keras's rule resizes up
  local big = nn.Sequential{nn.RandomCrop{6, 6, padding = 2, input_shape = {4, 4, 1}}}
  check.same_table(big(nn.rand(2, 4, 4, 1)):shape(), {2, 6, 6, 1}, 0, "resized up at inference")
  check.fails(function() nn.Sequential{nn.RandomFlip{input_shape = {16}}} end, "expects input of rank 3")
  -- a trainable layer before a random one would get no gradient: an error, never silence
  local m = nn.Sequential{nn.Conv2D{2, 1, input_shape = {4, 4, 1}}, nn.RandomFlip{"horizontal"}, nn.Flatten(), nn.Dense(1)}
  m:compile{optimizer = "sgd", loss = "mse"}
  check.fails(function() m:fit(nn.rand(4, 4, 4, 1), nn.rand(4, 1), {verbose = 0}) end,
    "put the preprocessing layers first in the model")
end

-- fit{augment = ...} takes one step or a list of steps as augment.Sequential
-- of them (it trained without augmentation, silently), and anything else is
-- an error (augment = true failed on indexing a boolean).
local function trained(augment, extra)
  nn.seed(6)
  local x, y = nn.rand(8, 6, 6, 1), nn.rand(8, 1)
  local m = nn.Sequential{nn.Flatten{input_shape = {6, 6, 1}}, nn.Dense{1}}
  m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
  local o = {epochs = 1, batch_size = 8, shuffle = false, verbose = 0, augment = augment}
  for k, v in pairs(extra or {}) do o[k] = v end
  m:fit(x, y, o)
  return m:get_weights()[1]:totable()
end

function T.fit_takes_a_step_or_a_list()
  local flip = function() return A.RandomTranslation(0.4, 0.4, {fill_mode = "constant"}) end
  local none, seq = trained(nil), trained(A.Sequential{flip()})
  local differs = false
  for i, row in ipairs(none) do differs = differs or row[1] ~= seq[i][1] end
  check.eq(differs, true, "augmentation changes the step")
  check.same_table(trained(flip()), seq, 0, "one step")
  check.same_table(trained({flip()}), seq, 0, "a list of steps")
  check.fails(function() trained(true) end,
    "bad argument 'augment' to 'fit' (nn.augment.Sequential{step, ..., seed = n}, one augment step or a list of them expected, got true)")
  check.fails(function() trained({1, 2}) end, "got a table that is not a list of augment steps)")
end

-- A pipeline without a seed draws by nn.seed's, as Keras's layers by the
-- global seed (it drew by seed 0 whatever nn.seed said).
function T.unseeded_pipeline_follows_nn_seed()
  local x = nn.rand(4, 6, 6, 1)
  local aug = A.Sequential{A.RandomTranslation(0.4, 0.4, {fill_mode = "constant"})}
  local function run(seed) nn.seed(seed) return aug:apply(x, {epoch = 1}) end
  check.eq(max_diff(run(1), run(1)), 0, "the same nn.seed, the same draws")
  assert(max_diff(run(1), run(2)) > 0, "another nn.seed, other draws")
  check.eq(max_diff(run(7), A.Sequential{A.RandomTranslation(0.4, 0.4, {fill_mode = "constant"}), seed = 7}:apply(x,
    {epoch = 1})), 0, "nn.seed(7) draws as seed = 7")
end

-- Each fit call's epochs are numbered from initial_epoch + 1, and the
-- random draws were keyed by that number: fit called again replayed the
-- same augmentation, random-layer draws and dataset order.  Now the keys
-- go on, so two fits of one epoch train as one fit of two (augmentation
-- and a random layer in the model), a fit resuming at initial_epoch =
-- model.epoch from a saved file as well, and after a save and load the keys go on.
function T.fit_calls_continue_the_random_draws()
  local function build()
    nn.seed(9)
    -- named: an unseeded random layer draws by its name, and auto-names count up
    local m = nn.Sequential{nn.RandomFlip{"horizontal", name = "flip", input_shape = {6, 6, 1}}, nn.Flatten{}, nn.Dense{1}}
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "mse"}
    return m
  end
  nn.seed(10)
  local x, y = nn.rand(8, 6, 6, 1), nn.rand(8, 1)
  local aug = A.Sequential{A.RandomTranslation(0.4, 0.4, {fill_mode = "constant"}), seed = 3}
  local o = {batch_size = 4, shuffle = false, verbose = 0, augment = aug}
  local function fit(m, epochs, initial, callbacks)
    local oo = {epochs = epochs, initial_epoch = initial, callbacks = callbacks}
    for k, v in pairs(o) do oo[k] = v end
    m:fit(x, y, oo)
    return m:get_weights()[1]:totable()
  end
  local whole = fit(build(), 2)
  local twice = build()
  fit(twice, 1)
  check.same_table(fit(twice, 1), whole, 0, "fit of one epoch twice = fit of two")
  local resumed = build()
  fit(resumed, 1)
  local path = check.tmpdir() .. "/keys.safetensors"
  resumed:save(path)
  check.same_table(fit(nn.load_model(path), 2, 1), whole, 0, "resumed from a file at initial_epoch = 1")
  -- the third call's keys are the third epoch's: a model saved after two
  -- calls (key base 1) and loaded trains on as the one that did not stop
  local path2 = check.tmpdir() .. "/keys2.safetensors"
  twice:save(path2)
  local reloaded = nn.load_model(path2)
  check.same_table(fit(reloaded, 1), fit(twice, 1), 0, "a third fit after save and load")
  -- BackupAndRestore brings the keys back: a second fit cut after its
  -- second epoch, run again in a fresh model, ends as the one not cut
  local function second_fit(m, callbacks) return fit(m, 3, nil, callbacks) end
  local ref = build()
  fit(ref, 1)
  local want = second_fit(ref)
  local dir = check.tmpdir() .. "/backup"
  local cut = build()
  fit(cut, 1)
  local crash = nn.callbacks.LambdaCallback{on_epoch_end = function(_, e) if e == 1 then error("power cut") end end}
  check.fails(function() second_fit(cut, {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}, crash}) end,
    "power cut")
  check.same_table(second_fit(build(), {nn.callbacks.BackupAndRestore{backup_dir = dir, verbose = 0}}), want, 0,
    "resumed by BackupAndRestore")
  -- a dataset's shuffled order goes on too
  local ds = nn.data.from_tensor_slices(x, y, {batch_size = 4, shuffle = true, seed = 2})
  local function fit_ds(m, epochs)
    m:fit(ds, nil, {epochs = epochs, verbose = 0})
    return m:get_weights()[1]:totable()
  end
  local ds_whole = fit_ds(build(), 2)
  local ds_twice = build()
  fit_ds(ds_twice, 1)
  check.same_table(fit_ds(ds_twice, 1), ds_whole, 0, "a dataset: fit of one epoch twice = fit of two")
end

-- Numbers that would go wrong silently are errors: a NaN or infinite layer
-- argument (Rescaling{nan} made every output NaN) or fill value, a
-- fractional sample index (taken as 0), data with NaN given to adapt
-- (NaN statistics), a feature count other than the layer's (an internal
-- message); an augment step's {a, b} that means the range [a, b] to the
-- step and height a, width b to the layer of the same name is an error
-- saying so, and the layer's table form works for the steps.  A zoom far
-- beyond the image resamples (its source index was cast out of range).
function T.bad_numbers_are_errors()
  check.fails(function() nn.Rescaling{0 / 0} end, "Rescaling: scale must be a finite number, got nan")
  check.fails(function() nn.Rescaling{1, offset = math.huge} end, "Rescaling: offset must be a finite number, got inf")
  check.fails(function() A.RandomRotation(0.1, {fill_value = 0 / 0}) end, "fill_value must be a finite number, got")
  check.fails(function() A.RandomZoom{0.2, 0.3} end,
    "{0.2, 0.3} could mean height 0.2 and width 0.3 (as nn.RandomZoom{0.2, 0.3}) or the range [0.2, 0.3]")
  check.fails(function() A.RandomTranslation{0.1, 0.2} end, "could mean height 0.1 and width 0.2")
  check.eq(tostring(A.RandomZoom{0.2, 0.3, fill_mode = "nearest"}), tostring(A.RandomZoom(0.2, 0.3, {fill_mode = "nearest"})),
    "RandomZoom's layer form")
  check.eq(tostring(A.RandomRotation{0.1, fill_mode = "nearest"}), tostring(A.RandomRotation(0.1, {fill_mode = "nearest"})),
    "RandomRotation's layer form")
  check.eq(tostring(A.RandomRotation{-0.1, 0.2}), "RandomRotation(factor = {-0.1, 0.2}, fill_mode = 'reflect', fill_value = 0)",
    "one factor: a pair is its range")
  local aug = A.Sequential{A.RandomFlip(), seed = 1}
  check.fails(function() aug:apply(nn.rand(2, 4, 4, 1), {indices = {0, 1.5}}) end,
    "bad argument #2 to 'apply' (indices[2] is 1.5; sample indices are whole numbers >= 0 (0-based))")
  check.fails(function() aug:apply(nn.rand(2, 4, 4, 1), {indices = {0}}) end,
    "bad argument #2 to 'apply' (indices has 1 entries for 2 samples (one dataset index per sample))")
  local norm = nn.Normalization{}
  check.fails(function() norm:adapt(nn.tensor{{1, 2}, {0 / 0, 3}}) end,
    norm.name .. ": adapt: feature 0 has NaN or infinite values (mean nan, variance nan)")
  norm:adapt(nn.tensor{{1, 2}, {3, 5}})
  check.fails(function() norm:adapt(nn.tensor{{1, 2, 3}}) end,
    norm.name .. ": adapt got 3 features (x of shape (1, 3)), the layer was built for 2")
  -- a dataset adapts as its tensor does
  local x = nn.tensor{{1, 2}, {3, 5}, {5, 8}}
  local from_ds = nn.Normalization{}:adapt(nn.data.from_tensor_slices(x, nn.tensor{0, 1, 0}, {batch_size = 2}))
  local from_x = nn.Normalization{}:adapt(x)
  for i = 1, 3 do
    check.same_table(from_ds:get_weights()[i]:totable(), from_x:get_weights()[i]:totable(), 1e-6, "weight " .. i)
  end
  local zoom = nn.Sequential{nn.RandomZoom{{1e30, 1e30}, fill_mode = "constant", input_shape = {4, 4, 1}}}
  local out = zoom(nn.rand(2, 4, 4, 1), true)
  check.eq(out:abs():max():item(), 0, "zoomed out beyond the image: all fill")
end

-- An unbuilt model trained with a crop in fit{augment} is built for the
-- cropped images (it was built for the raw ones, then refused every
-- augmented batch).
function T.fit_builds_for_the_augmented_shape()
  local m = nn.Sequential{nn.Flatten{}, nn.Dense{2}}
  m:compile{optimizer = "sgd", loss = "mse"}
  m:fit(nn.rand(8, 6, 6, 1), nn.rand(8, 2), {verbose = 0, augment = A.Sequential{A.RandomCrop{4, 4}}})
  check.same_table(m:get_weights()[1]:shape(), {16, 2}, 0, "Dense over 4 x 4 crops")
end

check.run(T)
