-- A session for the leak check (tests/leak, sanitizer builds only): build,
-- train, save, load, evaluate, a dataset of images, CSV, and the errors
-- the README documents, each caught; LeakSanitizer must report nothing at
-- exit.  Fed to the lunet shell on stdin, as a typed session would be.
local nn = require "lunet"
nn.seed(1)
local labels = {}
for i = 1, 32 do labels[i] = i % 3 end
local x, y = nn.rand(32, 8, 8, 1) * 255, nn.tensor(labels)
local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {8, 8, 1}}, nn.RandomFlip{"horizontal", seed = 1},
  nn.Conv2D{4, 3, activation = "relu"}, nn.MaxPooling2D(2), nn.Flatten(), nn.Dropout(0.1),
  nn.Dense{3, activation = "softmax", kernel_regularizer = nn.regularizers.l2(1e-4)}}
m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
m:fit(x, y, {epochs = 2, batch_size = 8, verbose = 0, validation_split = 0.25,
  augment = nn.augment.Sequential{nn.augment.RandomTranslation(0.1, 0.1), seed = 2}})
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir .. "/a " .. dir .. "/b")
for i = 1, 4 do
  nn.utils.save_img(dir .. "/a/" .. i .. ".png", nn.rand(8, 8, 3) * 255)
  nn.utils.save_img(dir .. "/b/" .. i .. ".jpg", nn.rand(8, 8, 3) * 255)
end
local ds = nn.utils.image_dataset_from_directory(dir, {image_size = {8, 8}, batch_size = 3, verbose = false})
local c = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {8, 8, 3}}, nn.Flatten(), nn.Dense{2, activation = "softmax"}}
c:compile{optimizer = "nadam", loss = "sparse_categorical_crossentropy"}
c:fit(ds, nil, {epochs = 1, verbose = 0})
-- the losses built from chains of ops (hinge, log_cosh) and the new paths of
-- this session: a masked BatchNormalization, a dilated Conv2DTranspose,
-- cumsum, a fused sigmoid cross-entropy
for _, loss in ipairs{"hinge", "squared_hinge", "categorical_hinge", "log_cosh"} do
  local r = nn.Sequential{nn.Dense{3, input_shape = {4}}}
  r:compile{optimizer = "sgd", loss = loss}
  r:train_on_batch(nn.rand(5, 4), nn.tensor{{0, 1, 0}, {1, 0, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}})
end
local mb = nn.Sequential{nn.Masking{input_shape = {4, 2}}, nn.BatchNormalization{}, nn.Dense{1, activation = "sigmoid"}}
mb:compile{optimizer = "sgd", loss = "binary_crossentropy"}
mb:train_on_batch(nn.tensor{{{1, 2}, {0, 0}, {3, 1}, {0, 0}}}, nn.tensor{{{1}, {0}, {1}, {0}}})
local ct = nn.Sequential{nn.Conv2DTranspose{2, 3, dilation_rate = 2, padding = "same", input_shape = {4, 4, 1}}}
ct:compile{optimizer = "sgd", loss = "mse"}
ct:train_on_batch(nn.rand(2, 4, 4, 1), nn.rand(2, 4, 4, 2))
local cs = nn.tensor{1, 2, 3}:requires_grad(true)
cs:cumsum(1):sum():backward()
local path = dir .. "/m.safetensors"
m:save(path)
local back = nn.load_model(path)
print(back:evaluate(x, y).loss)
local csv = dir .. "/t.csv"
local f = io.open(csv, "w")
f:write("a,b\n1,2\n3,4\n")
f:close()
print(nn.utils.read_csv(csv):tensor():sum():item())
local errors = {
  function() return nn.Dense{2, activation = "rellu"} end,
  function() return nn.Conv3D{} end,
  function() return m:fit(x, nn.zeros(3), {verbose = 0}) end,
  function() return m:compile{optimizer = "adamx", loss = "mse"} end,
  function() return m:compile{optimizer = "adam", loss = "hingee"} end,
  function() return nn.load_model("/nonexistent") end,
  function() return m:save(dir .. "/m.keras") end,
  function() return nn.zeros(2, 3) + nn.zeros(4, 5) end,
  function() return x[{{1, 2, 3}}] end,
  function() return nn.augment.Rescaling(1 / 255) end,
  function() return nn.Sequential{nn.Normalization{input_shape = {2}}}(nn.zeros(1, 2)) end,
  function() return nn.utils.read_csv("/nonexistent.csv") end,
  function() return nn.utils.load_img(csv) end,
  function() return nn.utils.image_dataset_from_directory("/nonexistent") end,
  function() return nn.datasets.mnist.load_data{path = "/nonexistent"} end,
  function() return m:fit(x, y, {epochz = 1}) end,
}
for i, e in ipairs(errors) do
  local ok, err = pcall(e)
  assert(not ok, "error case " .. i .. " did not fail")
  print(i, err)
end
os.execute("rm -rf " .. dir)
print("session: ok")
