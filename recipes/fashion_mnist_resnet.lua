-- The small ResNet (recipes/resnet.lua) on Fashion-MNIST (28x28x1), with
-- the seed CNN recipe's flags and defaults (batch 32, 2 epochs), so the two
-- compare directly.  Uses Debian's dataset-fashion-mnist when present.
--   lua recipes/fashion_mnist_resnet.lua
local nn = require "lunet"
local recipe = require "lunet.recipe"
local resnet = dofile(arg[0]:gsub("[^/]*$", "") .. "resnet.lua")

recipe.main("fashion_mnist_resnet.lua", function()
  local o = recipe.parse(arg, { epochs = 2, batch_size = 32, augment = false, report = true, dataset = "folder" }, "fashion_mnist_resnet.lua")
  o.class_names = nn.datasets.registry.fashion_mnist.classes
  recipe.setup(nn, o)
  local x_train, y_train, x_test, y_test = nn.datasets.fashion_mnist.load_data(recipe.data_options(o))
  local augment = o.augment and nn.augment.Sequential{
    nn.augment.RandomTranslation(0.1, 0.1, {fill_mode = "constant"}), seed = o.seed} or nil
  recipe.train(resnet(nn, {28, 28, 1}), x_train, y_train, x_test, y_test, augment, o)
end)
