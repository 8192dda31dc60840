-- The seed CNN (Conv 32/64/128 + MaxPool, Dense 512, Dense 10) on
-- Fashion-MNIST (28x28x1), Adam 1e-3, batch 32 (Keras's default), 2 epochs.
-- Uses Debian's dataset-fashion-mnist when present.
--   lua recipes/fashion_mnist_cnn.lua --epochs 2
local nn = require "lunet"
local recipe = require "lunet.recipe"

local o = recipe.parse(arg, { epochs = 2, batch_size = 32, augment = false }, "fashion_mnist_cnn.lua")
nn.seed(o.seed)
if o.backend then nn.use(o.backend) end
if o.threads then nn.threads(o.threads) end

local x_train, y_train, x_test, y_test = nn.datasets.fashion_mnist.load_data(recipe.data_options(o))
x_train, x_test = x_train / 255, x_test / 255

local model = nn.Sequential{
  nn.Conv2D{32, 3, activation = "relu", input_shape = {28, 28, 1}},
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
  nn.augment.RandomTranslation(0.1, 0.1, {fill_mode = "constant"}), seed = o.seed} or nil
model:fit(x_train, y_train, {epochs = o.epochs, batch_size = o.batch_size, validation_data = {x_test, y_test},
  augment = augment, verbose = o.verbose})

local result = model:evaluate(x_test, y_test)
if o.save then model:save(o.save) end
print(string.format("test accuracy: %.4f", result.accuracy))
