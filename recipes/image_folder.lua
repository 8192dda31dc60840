-- An image classifier trained on a folder of your own pictures, one
-- sub-folder per class (Keras's "image classification from scratch"):
--
--   photos/cats/*.jpg  photos/dogs/*.png ...
--   lua recipes/image_folder.lua --dir photos [--size 128] [--epochs 20]
--
-- nn.utils.image_dataset_from_directory streams the files in batches
-- (PNG and JPEG, decoded and resized in C on several threads), holding out
-- --validation-split of them (fixed by --seed).  The model carries its own
-- preprocessing: Rescaling(1/255) and, in training only, random flips and
-- rotations (--no-augment turns them off), so a saved model takes raw
-- 0..255 images.  Last line: "validation accuracy: X".
local nn = require "lunet"
local recipe = require "lunet.recipe"

recipe.main("image_folder.lua", function()
  local o = recipe.parse(arg, { epochs = 10, batch_size = 32, augment = true, limit = false }, "image_folder.lua", {
    { "--dir", "dir", "PATH", "the folder: one sub-folder of images per class", nil },
    { "--size", "size", "N", "images are resized to N x N", "64" },
    { "--validation-split", "split", "F", "the fraction held out", "0.2" },
  })
  recipe.setup(nn, o)
  if not o.dir then error("--dir PATH is required: a folder with one sub-folder of images per class", 0) end
  local size = recipe.integer(o, "size", 8)
  local split = recipe.number(o, "split", 0, 0.9)
  local train, val = nn.utils.image_dataset_from_directory(o.dir, {
    image_size = { size, size }, batch_size = o.batch_size, validation_split = split, subset = "both", seed = o.seed })
  local k = #train.class_names
  if k < 2 then error("the folder has one class; a classifier needs two or more", 0) end
  print("classes: " .. table.concat(train.class_names, ", "))

  local layers = { nn.Rescaling{ 1 / 255, input_shape = { size, size, 3 } } }
  if o.augment then
    layers[#layers + 1] = nn.RandomFlip{ "horizontal" }
    layers[#layers + 1] = nn.RandomRotation{ 0.05, fill_mode = "nearest" }
  end
  for _, filters in ipairs{ 32, 64, 128 } do
    layers[#layers + 1] = nn.Conv2D{ filters, 3, padding = "same", activation = "relu" }
    layers[#layers + 1] = nn.MaxPooling2D(2)
  end
  layers[#layers + 1] = nn.GlobalAveragePooling2D()
  layers[#layers + 1] = nn.Dropout{ 0.3 }
  layers[#layers + 1] = nn.Dense{ k, activation = "softmax" }
  local model = nn.Sequential(layers)
  model:compile{ optimizer = nn.optimizers.Adam{ learning_rate = 1e-3 }, loss = "sparse_categorical_crossentropy",
    metrics = { "accuracy" } }
  model:summary()
  model:fit(train, nil, { epochs = o.epochs, validation_data = val, verbose = o.verbose })
  local acc = model:evaluate(val).accuracy
  -- one held-out file through the trained model, from the file itself
  local path = val.file_paths[1]
  local p = model:predict(nn.utils.load_img(path, { target_size = { size, size } }):reshape(1, size, size, 3)):totable()[1]
  local best = 1
  for j = 2, k do if p[j] > p[best] then best = j end end
  print(string.format("%s -> %s (%.2f)", path, train.class_names[best], p[best]))
  model.class_names = train.class_names
  if o.save then model:save(o.save) end
  print(string.format("validation accuracy: %.4f", acc))
end)
