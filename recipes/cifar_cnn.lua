-- The classic Keras CIFAR-10 CNN: Conv2D 32/64/128 (3x3, relu, valid) each
-- followed by MaxPooling2D 2, Flatten, Dense 512 relu, Dense 10 softmax;
-- Adam 1e-3, sparse categorical cross-entropy, batch 64, 10 epochs,
-- validation on the test set.
--   lua recipes/cifar_cnn.lua
--   lua recipes/cifar_cnn.lua --data http://mirror/cifar-10-binary.tar.gz --sha256 HEX
local nn = require "lunet"
local recipe = require "lunet.recipe"

local o = recipe.parse(arg, { epochs = 10, batch_size = 64, augment = false }, "cifar_cnn.lua")
nn.seed(o.seed)
if o.backend then nn.use(o.backend) end
if o.threads then nn.threads(o.threads) end

local x_train, y_train, x_test, y_test = nn.datasets.cifar10.load_data(recipe.data_options(o))
x_train, x_test = x_train / 255, x_test / 255

local model = nn.Sequential{
  nn.Conv2D{32, 3, activation = "relu", input_shape = {32, 32, 3}},
  nn.MaxPooling2D(2),
  nn.Conv2D{64, 3, activation = "relu"},
  nn.MaxPooling2D(2),
  nn.Conv2D{128, 3, activation = "relu"},
  nn.MaxPooling2D(2),
  nn.Flatten(),
  nn.Dense{512, activation = "relu"},
  nn.Dense{10, activation = "softmax"},
}
model:summary()
model:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "sparse_categorical_crossentropy",
  metrics = {"accuracy"}}

local augment = o.augment and nn.augment.Sequential{
  nn.augment.RandomFlip("horizontal"),
  nn.augment.RandomTranslation(0.1, 0.1, {fill_mode = "nearest"}),
  seed = o.seed} or nil
model:fit(x_train, y_train, {epochs = o.epochs, batch_size = o.batch_size, validation_data = {x_test, y_test},
  augment = augment, verbose = o.verbose})

local result = model:evaluate(x_test, y_test)
if o.save then model:save(o.save) end
print(string.format("test accuracy: %.4f", result.accuracy))
