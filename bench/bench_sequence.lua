-- Training-step speed of two sequence models in lunet (their twins in
-- PyTorch: bench/torch_sequence.py; both in turn: bench/compare_sequence.sh).
--
--   lunet bench/bench_sequence.lua [--threads N] [--steps S] [--json]
--
-- lstm:        an LSTM layer, batch 64, 100 steps, 128 inputs, 256 units;
--              the last output against a random target, mean squared error.
-- transformer: a TransformerEncoder block (post-LN, relu), batch 32, 128
--              tokens, width 256, 4 heads, feedforward 1024; every output
--              against a random target, mean squared error.
-- A step is model:train_on_batch (forward, loss, backward, Adam update).
-- After two warm-up steps, S steps are timed; the figure is ms per step.
local nn = require "lunet"

local o = { steps = 10, json = false }
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "--threads" then o.threads = math.tointeger(tonumber(arg[i + 1])) i = i + 1
  elseif a == "--steps" then o.steps = math.tointeger(tonumber(arg[i + 1])) i = i + 1
  elseif a == "--json" then o.json = true
  else io.stderr:write("bench_sequence.lua: unknown argument '", a, "'\n") os.exit(2) end
  i = i + 1
end
if o.threads then nn.threads(o.threads) end
nn.seed(1)

local function lstm()
  local m = nn.Sequential{ nn.LSTM{ 256, input_shape = { 100, 128 } } }
  return m, nn.randn(64, 100, 128), nn.randn(64, 256)
end

local function transformer()
  local m = nn.Sequential{ nn.TransformerEncoder{ 1024, 4, input_shape = { 128, 256 } } }
  return m, nn.randn(32, 128, 256), nn.randn(32, 128, 256)
end

local results = {}
for _, case in ipairs{ { "lstm", lstm }, { "transformer", transformer } } do
  local model, x, y = case[2]()
  model:compile{ optimizer = nn.optimizers.Adam{ learning_rate = 1e-4 }, loss = "mean_squared_error" }
  for _ = 1, 2 do model:train_on_batch(x, y) end
  local t0 = nn._C.now()
  for _ = 1, o.steps do model:train_on_batch(x, y) end
  results[case[1]] = (nn._C.now() - t0) * 1000 / o.steps
end
if o.json then
  print(string.format('{"lstm_ms": %.2f, "transformer_ms": %.2f}', results.lstm, results.transformer))
else
  print(string.format("lunet, %d threads: LSTM step %.1f ms, Transformer encoder step %.1f ms", nn.threads(),
    results.lstm, results.transformer))
end
