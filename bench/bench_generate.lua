-- Generation speed of a character-level GPT (the shape of
-- recipes/tiny_gpt.lua: context 128, width 128, 2 pre-LN decoder blocks of 4
-- heads, 100 characters): tokens per second with the key/value cache (each
-- new token runs one position through the model) and without it (each
-- token re-runs the whole window), greedy, on random weights.
--   lunet bench/bench_generate.lua [--context 128] [--tokens 100] [--rounds 3]
local nn = require "lunet"

local o = { context = 128, tokens = 100, rounds = 3, width = 128, layers = 2 }
local i = 1
while i <= #arg do
  local k = arg[i]:match("^%-%-(%w+)$")
  if not k or o[k] == nil then error("unknown option " .. arg[i] .. " (--context, --tokens, --rounds, --width, --layers)", 0) end
  o[k] = math.tointeger(tonumber(arg[i + 1])) or error(arg[i] .. " needs an integer", 0)
  i = i + 2
end

nn.seed(1)
local V = 100
local inp = nn.Input{ shape = { o.context } }
local e = nn.Embedding{ V, o.width }(inp)
local h = nn.Add()({ e, nn.PositionEmbedding{ o.context }(e) })
for _ = 1, o.layers do h = nn.TransformerDecoder{ 4 * o.width, 4, normalize_first = true }(h) end
h = nn.LayerNormalization{ epsilon = 1e-5 }(h)
local model = nn.Model{ inputs = inp, outputs = nn.Dense{ V, activation = "softmax" }(h) }
local prompt = {}
for k = 1, 16 do prompt[k] = k end

local function rate(cache)
  local t0 = nn._C.now()
  local out = model:generate(prompt, { max_new_tokens = o.tokens, temperature = 0, use_cache = cache })
  local wall = nn._C.now() - t0
  return o.tokens / wall, out
end

print(string.format("GPT: context %d, width %d, %d layers, vocabulary %d; %d new tokens after a 16-token prompt; %s",
  o.context, o.width, o.layers, V, o.tokens, nn.backends()[1].detail))
local with, without = {}, {}
for r = 1, o.rounds do
  local a, out_a = rate(true)
  local b, out_b = rate(false)
  with[r], without[r] = a, b
  assert(table.concat(out_a, ",") == table.concat(out_b, ","), "the cached and uncached generations differ")
end
table.sort(with)
table.sort(without)
local mw, mo = with[(o.rounds + 1) // 2], without[(o.rounds + 1) // 2]
print(string.format("tokens/s with the cache: %.1f   without: %.1f   speed-up: %.1fx (medians of %d rounds)", mw, mo, mw / mo, o.rounds))
