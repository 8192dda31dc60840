-- A character-level LSTM language model (Keras's classic text-generation
-- example): windows of 40 characters, one-hot, predict the next one.  The
-- last 10% of the text is held out; each epoch prints its bits per
-- character, and the end samples text at a temperature.
--   lua recipes/char_rnn.lua [--text PATH] [--units N] [--temperature T]
-- The last line is `test bits_per_char: X`.
local nn = require "lunet"
local recipe = require "lunet.recipe"

local SEQ, STRIDE = 40, 3

-- The windows of ids: x (n, SEQ) and the next id y (n), from ids[first..last].
local function windows(ids, first, last)
  local xs, ys = {}, {}
  for s = first, last - SEQ, STRIDE do
    local w = {}
    for k = 0, SEQ - 1 do w[k + 1] = ids[s + k] end
    xs[#xs + 1], ys[#ys + 1] = w, ids[s + SEQ]
  end
  return nn.tensor(xs), nn.tensor(ys)
end

-- (n, SEQ) ids -> (n, SEQ, vocab) one-hot, on the device by comparison.
local function one_hot(ids, vocab)
  local n = ids:shape()[1]
  return ids:reshape(n, SEQ, 1):eq(nn.arange(vocab):reshape(1, 1, vocab))
end

-- Draws an index from probabilities p (a Lua list) sharpened by temperature
-- (0: the likeliest, as generate does).
local function sample(p, temperature)
  if temperature == 0 then
    local best = 1
    for i, v in ipairs(p) do if v > p[best] then best = i end end
    return best
  end
  local w, total = {}, 0
  for i, v in ipairs(p) do
    w[i] = math.exp(math.log(math.max(v, 1e-12)) / temperature)
    total = total + w[i]
  end
  local r = math.random() * total
  for i, v in ipairs(w) do
    r = r - v
    if r <= 0 then return i end
  end
  return #w
end

recipe.main("char_rnn.lua", function()
  local o = recipe.parse(arg, { epochs = 10, batch_size = 128, limit = "train on the first N windows only" }, "char_rnn.lua", {
    { "--text", "text", "PATH", "a text file to learn", "/usr/share/common-licenses/GPL-3" },
    { "--units", "units", "N", "LSTM units", "128" },
    { "--temperature", "temperature", "T", "sampling temperature", "0.5" },
  })
  local temperature = recipe.number(o, "temperature", 0) -- 0: the likeliest character each time
  local units = recipe.integer(o, "units", 1)
  recipe.setup(nn, o)
  local f, err = io.open(o.text, "rb")
  if not f then error("cannot read --text " .. tostring(err), 0) end
  local text = f:read("a")
  f:close()
  -- the held-out tenth must hold a window and its next character
  if #text < 10 * (SEQ + 1) then
    error(string.format("%s has %d characters; at least %d are needed", o.text, #text, 10 * (SEQ + 1)), 0)
  end
  local chars, index = {}, {}
  for ch in text:gmatch(".") do
    if not index[ch] then chars[#chars + 1], index[ch] = ch, true end
  end
  table.sort(chars)
  for i, ch in ipairs(chars) do index[ch] = i - 1 end
  local ids = {}
  for i = 1, #text do ids[i] = index[text:sub(i, i)] end
  local split = math.floor(#ids * 0.9)
  local xi, y = windows(ids, 1, split)
  local xvi, yv = windows(ids, split + 1, #ids)
  local vocab = #chars
  if o.limit then xi, y = nn._C.take_rows(xi, 1, math.min(o.limit, xi:shape()[1])), nn._C.take_rows(y, 1, math.min(o.limit, y:shape()[1])) end
  local x, xv = one_hot(xi, vocab), one_hot(xvi, vocab)
  print(string.format("%s: %d characters, %d distinct; %d training and %d held-out windows of %d", o.text, #text,
    vocab, x:shape()[1], xv:shape()[1], SEQ))
  local model = nn.Sequential{
    nn.LSTM{units, input_shape = {SEQ, vocab}},
    nn.Dense{vocab, activation = "softmax"},
  }
  model:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-2, global_clipnorm = 5},
    loss = "sparse_categorical_crossentropy"}
  model:summary()
  local bits = function(nats) return nats / math.log(2) end
  local report = nn.callbacks.LambdaCallback{on_epoch_end = function(_, epoch, logs)
    print(string.format("epoch %d: held-out bits_per_char %.4f", epoch + 1, bits(logs.val_loss)))
  end}
  model:fit(x, y, { epochs = o.epochs, batch_size = o.batch_size, validation_data = { xv, yv },
    verbose = o.verbose, callbacks = { report } })
  local result = bits(model:evaluate(xv, yv, { batch_size = 256 }).loss)
  -- a sample, seeded by the held-out text's first window
  math.randomseed(o.seed)
  local window = {}
  for k = 1, SEQ do window[k] = ids[split + k] end
  local out = {}
  for _ = 1, 200 do
    local p = model:predict(one_hot(nn.tensor({ window }), vocab)):totable()[1]
    local next_id = sample(p, temperature) - 1
    out[#out + 1] = chars[next_id + 1]
    table.remove(window, 1)
    window[SEQ] = next_id
  end
  print(string.format("sample at temperature %s:\n%s", o.temperature, table.concat(out)))
  -- the characters of the output units, saved with the model (its input is
  -- one-hot over the same list): model.class_names[i] is unit i's
  model.class_names = chars
  if o.save then model:save(o.save) end
  print(string.format("test bits_per_char: %.4f", result))
end)
