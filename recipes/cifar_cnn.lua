-- The classic Keras CIFAR-10 CNN (recipes/seed_cnn.lua): batch 64, 10
-- epochs, validation on the test set, pixels scaled to [0, 1].
--   lua recipes/cifar_cnn.lua
--   lua recipes/cifar_cnn.lua --data http://mirror/cifar-10-binary.tar.gz --sha256 HEX
local nn = require "lunet"
local recipe = require "lunet.recipe"
local seed_cnn = dofile(arg[0]:gsub("[^/]*$", "") .. "seed_cnn.lua")

recipe.main("cifar_cnn.lua", function()
  local o = recipe.parse(arg, { epochs = 10, batch_size = 64, augment = false, report = true, dataset = "archive" }, "cifar_cnn.lua")
  o.class_names = nn.datasets.registry.cifar10.classes
  recipe.setup(nn, o)
  local x_train, y_train, x_test, y_test = nn.datasets.cifar10.load_data(recipe.data_options(o))
  local augment = o.augment and nn.augment.Sequential{
    nn.augment.RandomFlip("horizontal"),
    nn.augment.RandomTranslation(0.1, 0.1, {fill_mode = "nearest"}),
    seed = o.seed} or nil
  recipe.train(seed_cnn(nn, {32, 32, 3}), x_train, y_train, x_test, y_test, augment, o)
end)
