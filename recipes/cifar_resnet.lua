-- A small ResNet (recipes/resnet.lua) on CIFAR-10: the same flags and
-- closing line as cifar_cnn.lua (batch 64, 10 epochs, validation on the
-- test set, pixels scaled to [0, 1]).
--   lua recipes/cifar_resnet.lua
--   lua recipes/cifar_resnet.lua --data http://mirror/cifar-10-binary.tar.gz --sha256 HEX
local nn = require "lunet"
local recipe = require "lunet.recipe"
local resnet = dofile(arg[0]:gsub("[^/]*$", "") .. "resnet.lua")

recipe.main("cifar_resnet.lua", function()
  local o = recipe.parse(arg, { epochs = 10, batch_size = 64, augment = false, report = true, dataset = "archive" }, "cifar_resnet.lua")
  o.class_names = nn.datasets.registry.cifar10.classes
  recipe.setup(nn, o)
  local x_train, y_train, x_test, y_test = nn.datasets.cifar10.load_data(recipe.data_options(o))
  local augment = o.augment and nn.augment.Sequential{
    nn.augment.RandomFlip("horizontal"),
    nn.augment.RandomTranslation(0.1, 0.1, {fill_mode = "nearest"}),
    seed = o.seed} or nil
  recipe.train(resnet(nn, {32, 32, 3}), x_train, y_train, x_test, y_test, augment, o)
end)
