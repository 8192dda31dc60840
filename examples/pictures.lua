-- The README's pictures (docs/images/), made from a real training run on
-- Fashion-MNIST (offline, from Debian's dataset-fashion-mnist):
--   build/bin/lunet examples/pictures.lua [OUT_DIR]
-- The seed CNN trains 3 epochs on 20000 images; then the learning-rate
-- finder, the recipe report (curves, confusion matrix, mistakes, Grad-CAM),
-- the first layer's filters and the other three explanations.
local nn = require "lunet"
local help = arg[1] == "-h" or arg[1] == "--help"
if help or #arg > 1 or (arg[1] and arg[1]:match("^%-")) then -- "--help" was taken for the folder
  (help and io.stdout or io.stderr):write("usage: lunet examples/pictures.lua [OUT_DIR] (default docs/images)\n")
  os.exit(help and 0 or 2)
end
local out = arg[1] or "docs/images"
assert(os.execute("mkdir -p '" .. out:gsub("'", "'\\''") .. "'"), "cannot make the folder " .. out)
nn.seed(1)
local x, y, x_test, y_test = nn.datasets.fashion_mnist.load_data({ limit = 20000 })
local names = nn.datasets.registry.fashion_mnist.classes
local seed_cnn = dofile(arg[0]:gsub("[^/]*$", "") .. "../recipes/seed_cnn.lua")
local model = seed_cnn(nn, { 28, 28, 1 })
nn.tools.lr_find(model, x, y, { path = out .. "/lr_find.png" })
local history = model:fit(x, y, { epochs = 3, batch_size = 32, validation_data = { x_test, y_test }, verbose = 2 })
nn.plot.report(model, history, x_test, y_test, out, { class_names = names, title = "seed CNN on Fashion-MNIST" })
nn.plot.weights(model.layers[2], out .. "/filters.png")
local first = {}
for i = 1, 8 do first[i] = i - 1 end
local xs = x_test:index_select(1, first)
local maps, cls = nn.explain.saliency(model, xs)
nn.explain.overlay(xs, maps, out .. "/saliency.png", { labels = cls, class_names = names, title = "saliency" })
maps = nn.explain.smoothgrad(model, xs, { samples = 25 })
nn.explain.overlay(xs, maps, out .. "/smoothgrad.png", { labels = cls, class_names = names, title = "SmoothGrad" })
local info
maps, cls, info = nn.explain.integrated_gradients(model, xs, { steps = 64 })
nn.explain.overlay(xs, maps, out .. "/integrated_gradients.png", { labels = cls, class_names = names,
  title = string.format("integrated gradients (completeness gap %.2f%%)", 100 * info.delta) })
print("pictures in " .. out)
