-- A word-level text classifier on real labelled text available offline:
-- the fortune files of Debian's `fortunes` package are the classes (which
-- file a fortune comes from).  TextVectorization (kept in the model file),
-- Embedding with mask_zero, a Transformer encoder block or an LSTM, masked
-- average pooling and a softmax.  The held-out split is fixed by --seed.
--
--   lua recipes/text_classify.lua [--classes computers,food,law,science,songs-poems]
--                                 [--model transformer|lstm]
--
-- Last line: "test accuracy: X" (the majority class's share is printed too).
local nn = require "lunet"
local recipe = require "lunet.recipe"

local FORTUNES = "/usr/share/games/fortunes"

-- The fortunes of one file: entries separated by lines holding "%".
local function fortunes(dir, name)
  local path = dir .. "/" .. name
  local f = io.open(path, "rb")
  if not f then
    -- a misspelt class, or no fortunes at all
    local p = io.popen("ls -1 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    local names = {}
    for n in p:lines() do if not n:find("%.") then names[#names + 1] = n end end
    p:close()
    if #names == 0 then
      error(string.format("cannot read %s (install Debian's fortunes package: apt-get install fortunes)", path), 0)
    end
    error(string.format("--classes: no fortune file '%s' in %s; there are: %s", name, dir, table.concat(names, ", ")), 0)
  end
  local out, cur = {}, {}
  for line in f:lines() do
    if line == "%" then
      if #cur > 0 then out[#out + 1] = table.concat(cur, "\n") end
      cur = {}
    else
      cur[#cur + 1] = line
    end
  end
  if #cur > 0 then out[#out + 1] = table.concat(cur, "\n") end
  f:close()
  return out
end

recipe.main("text_classify.lua", function()
  local o = recipe.parse(arg, { epochs = 8, batch_size = 32, limit = "train on the first N texts only" }, "text_classify.lua", {
    { "--dir", "dir", "PATH", "the folder of fortune files", FORTUNES },
    { "--classes", "classes", "LIST", "the files to tell apart", "computers,food,law,science,songs-poems" },
    { "--model", "model", "NAME", "transformer or lstm", "transformer" },
    { "--length", "length", "N", "words per text", "64" },
  })
  recipe.setup(nn, o)
  if o.model ~= "transformer" and o.model ~= "lstm" then error("--model must be transformer or lstm, got " .. o.model, 0) end
  local len = recipe.integer(o, "length", 1)
  local names, texts, labels = {}, {}, {}
  local seen = {}
  for name in o.classes:gmatch("[^,]+") do
    if seen[name] then error("--classes names '" .. name .. "' twice (its texts would take two labels)", 0) end
    seen[name] = true
    names[#names + 1] = name
    for _, t in ipairs(fortunes(o.dir, name)) do
      texts[#texts + 1], labels[#labels + 1] = t, #names - 1
    end
  end
  if #names < 2 then error("--classes needs at least two files", 0) end
  -- the held-out fifth, fixed by the seed
  math.randomseed(o.seed)
  local order = {}
  for i = 1, #texts do order[i] = i end
  for i = #order, 2, -1 do
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  local ntest = #texts // 5
  local train_t, train_y, test_t, test_y = {}, {}, {}, {}
  for k, i in ipairs(order) do
    if k <= ntest then test_t[#test_t + 1], test_y[#test_y + 1] = texts[i], labels[i]
    else train_t[#train_t + 1], train_y[#train_y + 1] = texts[i], labels[i] end
  end
  if o.limit then
    for i = #train_t, o.limit + 1, -1 do train_t[i], train_y[i] = nil, nil end
  end
  local counts = {}
  for _, y in ipairs(test_y) do counts[y] = (counts[y] or 0) + 1 end
  local majority = 0
  for _, c in pairs(counts) do majority = math.max(majority, c) end
  print(string.format("%d fortunes in %d classes (%s): %d for training, %d held out; majority class %.4f",
    #texts, #names, table.concat(names, ", "), #train_t, #test_t, majority / #test_t))

  local tv = nn.text.TextVectorization{ max_tokens = 20000, output_sequence_length = len }
  tv:adapt(train_t)
  local width = 64
  local ids = nn.Input{ shape = { len }, name = "words" }
  local h = nn.Embedding{ tv:vocabulary_size(), width, mask_zero = true }(ids)
  if o.model == "transformer" then
    h = nn.Add()({ h, nn.PositionEmbedding{ len }(h) })
    h = nn.TransformerEncoder{ intermediate_dim = 128, num_heads = 4, dropout = 0.1 }(h)
    h = nn.GlobalAveragePooling1D()(h)
  else
    h = nn.LSTM{ width }(h)
  end
  h = nn.Dropout{ 0.3 }(h)
  local out = nn.Dense{ #names, activation = "softmax" }(h)
  local model = nn.Model{ inputs = ids, outputs = out, name = "text_classify" }
  model:set_preprocessor(tv)
  model:compile{ optimizer = nn.optimizers.Adam{ learning_rate = 1e-3 }, loss = "sparse_categorical_crossentropy",
    metrics = { "accuracy" } }
  model:summary()
  local x, y = tv(train_t), nn.tensor(train_y)
  local xt, yt = tv(test_t), nn.tensor(test_y)
  model:fit(x, y, { epochs = o.epochs, batch_size = o.batch_size, validation_data = { xt, yt }, verbose = o.verbose })
  local acc = model:evaluate(xt, yt, { batch_size = 128 }).accuracy
  -- the model takes texts itself: its vectorizer is part of it
  local probe = test_t[1]
  local p = model:predict({ probe }):totable()[1]
  local best = 1
  for k = 2, #p do if p[k] > p[best] then best = k end end
  print(string.format("\"%s\"\n  -> %s (%.2f); it comes from %s", probe:sub(1, 120):gsub("%s+", " "), names[best], p[best],
    names[test_y[1] + 1]))
  model.class_names = names
  if o.save then model:save(o.save) end
  print(string.format("test accuracy: %.4f", acc))
end)
