-- A small Transformer encoder learns to sort (or reverse) sequences of
-- digits: each output position reads the whole input through attention
-- and names the digit that belongs there.  Held-out sequences are scored
-- by exact match (every position right).
--
--   lua recipes/transformer_sort.lua [--task sort|reverse] [--length 8]
--
-- Last line: "test accuracy: X" (exact match on held-out sequences).
local nn = require "lunet"
local recipe = require "lunet.recipe"

local DIGITS = 10

-- n random sequences of `len` digits and their targets.
local function make(n, len, task)
  local xs, ys = {}, {}
  for i = 1, n do
    local s = {}
    for k = 1, len do s[k] = math.random(0, DIGITS - 1) end
    local t = {}
    if task == "sort" then
      for k = 1, len do t[k] = s[k] end
      table.sort(t)
    else
      for k = 1, len do t[k] = s[len + 1 - k] end
    end
    xs[i], ys[i] = s, t
  end
  return nn.tensor(xs), nn.tensor(ys)
end

-- The fraction of sequences whose every position the model gets right.
local function exact_match(model, x, y)
  local pred = model:predict(x, { batch_size = 512 }):argmax(-1):totable()
  local want = y:totable()
  local right = 0
  for i, row in ipairs(want) do
    local ok = true
    for k, v in ipairs(row) do ok = ok and pred[i][k] == v end
    if ok then right = right + 1 end
  end
  return right / #want
end

recipe.main("transformer_sort.lua", function()
  local o = recipe.parse(arg, { epochs = 6, batch_size = 64,
    limit = "train on N generated sequences (at most --train)" }, "transformer_sort.lua", {
    { "--task", "task", "NAME", "sort or reverse", "sort" },
    { "--length", "length", "N", "digits per sequence", "8" },
    { "--train", "train", "N", "training sequences", "20000" },
    { "--width", "width", "N", "the model's width", "64" },
  })
  recipe.setup(nn, o)
  if o.task ~= "sort" and o.task ~= "reverse" then error("--task must be sort or reverse, got " .. o.task, 0) end
  local len, ntrain, width = recipe.integer(o, "length", 2), recipe.integer(o, "train", 1), recipe.integer(o, "width", 1)
  math.randomseed(o.seed)
  local x, y = make(math.min(o.limit or ntrain, ntrain), len, o.task)
  local xt, yt = make(2000, len, o.task)
  print(string.format("%s %d-digit sequences: %d for training, %d held out", o.task, len, x:shape()[1], xt:shape()[1]))

  local ids = nn.Input{ shape = { len }, name = "digits" }
  local e = nn.Embedding{ DIGITS, width }(ids)
  local h = nn.Add()({ e, nn.PositionEmbedding{ len }(e) })
  h = nn.TransformerEncoder{ intermediate_dim = 2 * width, num_heads = 4 }(h)
  h = nn.TransformerEncoder{ intermediate_dim = 2 * width, num_heads = 4 }(h)
  local out = nn.Dense{ DIGITS, activation = "softmax" }(h)
  local model = nn.Model{ inputs = ids, outputs = out, name = "transformer_sort" }
  -- a short warm-up, then a cosine decay to the end of training
  local steps = o.epochs * math.ceil(x:shape()[1] / o.batch_size)
  local warmup = math.min(200, steps // 10)
  local lr = nn.schedules.CosineDecay{ initial_learning_rate = 0, warmup_target = 2e-3, warmup_steps = warmup,
    decay_steps = math.max(1, steps - warmup), alpha = 0.01 }
  model:compile{ optimizer = nn.optimizers.Adam{ learning_rate = lr, global_clipnorm = 1 },
    loss = "sparse_categorical_crossentropy", metrics = { "accuracy" } }
  model:summary()
  local report = nn.callbacks.LambdaCallback{ on_epoch_end = function(_, epoch)
    print(string.format("epoch %d: held-out exact match %.4f", epoch + 1, exact_match(model, xt, yt)))
  end }
  model:fit(x, y, { epochs = o.epochs, batch_size = o.batch_size, verbose = o.verbose, callbacks = { report } })
  local acc = exact_match(model, xt, yt)
  local sample = xt:totable()[1]
  local pred = model:predict(nn.tensor({ sample })):argmax(-1):totable()[1]
  local function digits(row)
    local out = {}
    for k, v in ipairs(row) do out[k] = string.format("%d", v) end
    return table.concat(out, " ")
  end
  print(string.format("%s -> %s", digits(sample), digits(pred)))
  if o.save then model:save(o.save) end
  print(string.format("test accuracy: %.4f", acc))
end)
