-- A decoder-only, character-level GPT: token and learned position
-- embeddings, pre-LN causal Transformer decoder blocks, a final layer
-- normalization and a softmax over the characters; AdamW with a warm-up
-- and cosine decay, gradient clipping.  Trained on real text (by default
-- every fortune of Debian's `fortunes` package, 2.5 MB), the last 10%
-- held out; prints held-out bits per character each epoch and samples text
-- from a prompt with the key/value cache.
--
--   lua recipes/tiny_gpt.lua [--text PATH] [--context 64] [--width 128]
--                            [--layers 2] [--heads 4] [--prompt TEXT]
--
-- Last line: "test bits_per_char: X".
local nn = require "lunet"
local recipe = require "lunet.recipe"

local FORTUNES = "/usr/share/games/fortunes"

-- The text: a file, or every fortune file of a folder (sorted by name).
local function read_text(path)
  local f = io.open(path, "rb")
  if f and f:read(0) then
    local t = f:read("a")
    f:close()
    return t
  end
  if f then f:close() end
  local p = io.popen("ls -1 '" .. path:gsub("'", "'\\''") .. "' 2>/dev/null")
  local parts = {}
  for name in p:lines() do
    if not name:find("%.") then -- fortune files have no extension; .dat/.u8 are indexes and copies
      local g = io.open(path .. "/" .. name, "rb")
      if g then
        parts[#parts + 1] = g:read("a")
        g:close()
      end
    end
  end
  p:close()
  if #parts == 0 then
    error(string.format("cannot read --text %s (install Debian's fortunes package: apt-get install fortunes)", path), 0)
  end
  return table.concat(parts)
end

recipe.main("tiny_gpt.lua", function()
  local o = recipe.parse(arg, { epochs = 4, batch_size = 32,
    limit = "train on the first N windows and hold out N/8 only" }, "tiny_gpt.lua", {
    { "--text", "text", "PATH", "a text file, or a folder of fortune files", FORTUNES },
    { "--context", "context", "N", "characters the model sees", "64" },
    { "--width", "width", "N", "embedding width", "128" },
    { "--layers", "layers", "N", "decoder blocks", "2" },
    { "--heads", "heads", "N", "attention heads", "4" },
    { "--prompt", "prompt", "TEXT", "the start of the sample", "The " },
    { "--temperature", "temperature", "T", "sampling temperature", "0.8" },
  })
  recipe.setup(nn, o)
  local ctx, width = recipe.integer(o, "context", 2), recipe.integer(o, "width", 1)
  local nlayers, heads = recipe.integer(o, "layers", 1), recipe.integer(o, "heads", 1)
  local temperature = recipe.number(o, "temperature", 0) -- 0: the likeliest character each time
  local text = read_text(o.text)
  local tok = nn.text.CharTokenizer()
  tok:adapt(text)
  -- the prompt is read after training: a character the text lacks fails now
  local ok, err = pcall(tok.encode, tok, o.prompt)
  if not ok then error("--prompt: " .. tostring(err), 0) end
  local ids = tok:encode(text)
  local n = ids:shape()[1]
  local split = math.floor(n * 0.9)
  local train_ids = nn._C.take_rows(ids, 1, split)
  local test_ids = nn._C.take_rows(ids, split + 1, n - split)
  local x, y = nn.text.windows(train_ids, ctx, ctx // 2)
  local xt, yt = nn.text.windows(test_ids, ctx, ctx)
  if o.limit then
    x, y = nn._C.take_rows(x, 1, math.min(o.limit, x:shape()[1])), nn._C.take_rows(y, 1, math.min(o.limit, y:shape()[1]))
    local held = math.max(1, o.limit // 8)
    xt, yt = nn._C.take_rows(xt, 1, math.min(held, xt:shape()[1])), nn._C.take_rows(yt, 1, math.min(held, yt:shape()[1]))
  end
  print(string.format("%s: %d characters, %d distinct; %d training windows of %d, %d held out", o.text, n,
    tok:vocabulary_size(), x:shape()[1], ctx, xt:shape()[1]))

  local vocab = tok:vocabulary_size()
  local inp = nn.Input{ shape = { ctx }, name = "ids" }
  local e = nn.Embedding{ vocab, width }(inp)
  local h = nn.Add()({ e, nn.PositionEmbedding{ ctx }(e) })
  for _ = 1, nlayers do
    h = nn.TransformerDecoder{ intermediate_dim = 4 * width, num_heads = heads, normalize_first = true }(h)
  end
  h = nn.LayerNormalization{ epsilon = 1e-5 }(h)
  local out = nn.Dense{ vocab, activation = "softmax" }(h)
  local model = nn.Model{ inputs = inp, outputs = out, name = "tiny_gpt" }
  model:set_preprocessor(tok)
  local steps = o.epochs * math.ceil(x:shape()[1] / o.batch_size)
  local warmup = math.max(1, math.min(200, steps // 10))
  local lr = nn.schedules.CosineDecay{ initial_learning_rate = 0, warmup_target = 1e-3, warmup_steps = warmup,
    decay_steps = math.max(1, steps - warmup), alpha = 0.1 }
  model:compile{ optimizer = nn.optimizers.AdamW{ learning_rate = lr, weight_decay = 0.01, global_clipnorm = 1 },
    loss = "sparse_categorical_crossentropy" }
  model:summary()
  local bits = function(nats) return nats / math.log(2) end
  local report = nn.callbacks.LambdaCallback{ on_epoch_end = function(_, epoch, logs)
    print(string.format("epoch %d: held-out bits_per_char %.4f", epoch + 1, bits(logs.val_loss)))
  end }
  local t0 = os.time()
  model:fit(x, y, { epochs = o.epochs, batch_size = o.batch_size, validation_data = { xt, yt }, verbose = o.verbose,
    callbacks = { report } })
  local seconds = os.time() - t0
  local result = bits(model:evaluate(xt, yt, { batch_size = 64 }).loss)
  print(string.format("%.0f s per epoch", seconds / math.max(1, o.epochs)))
  local sample = model:generate(o.prompt, { max_new_tokens = 200, temperature = temperature, top_k = 20, seed = o.seed })
  print(string.format("sample at temperature %s:\n%s", o.temperature, sample))
  if o.save then model:save(o.save) end
  print(string.format("test bits_per_char: %.4f", result))
end)
