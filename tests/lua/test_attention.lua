-- Attention and Transformer layers: MultiHeadAttention against PyTorch's
-- nn.MultiheadAttention (tests/fixtures/torch_mha.lua, made by
-- make_torch_mha.py with Debian's python3-torch), weights set in Keras's
-- layouts through set_weights; masks; bad input.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local mha_ref = dofile(here .. "../fixtures/torch_mha.lua")
local tr_ref = dofile(here .. "../fixtures/torch_transformer.lua")

local T = {}

local function tensors(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = nn.tensor(v) end
  return out
end

-- One fixture case: output, scores, input and weight gradients.
local function mha_against_torch(case, opts)
  local layer = nn.MultiHeadAttention{num_heads = 2, key_dim = 3}
  local q = nn.tensor(case.query):requires_grad(true)
  local k = nn.tensor(case.key):requires_grad(true)
  local v = nn.tensor(case.value):requires_grad(true)
  opts = opts or {}
  opts.return_attention_scores, opts.training = true, true
  local y, scores = layer(q, v, k, opts)
  layer:set_weights(tensors(case.weights))
  y, scores = layer(q, v, k, opts)
  check.same_table(y:totable(), case.y, 1e-5, "output")
  check.same_table(scores:totable(), case.scores, 1e-5, "attention scores")
  ;((y * nn.tensor(case.r)):sum() + (scores * nn.tensor(case.r2)):sum()):backward()
  check.same_table(q.grad:totable(), case.dquery, 1e-5, "query gradient")
  check.same_table(k.grad:totable(), case.dkey, 1e-5, "key gradient")
  check.same_table(v.grad:totable(), case.dvalue, 1e-5, "value gradient")
  for i, w in ipairs(layer:weights()) do
    check.same_table(w.tensor.grad:totable(), case.dweights[i], 1e-5, w.name .. " gradient")
  end
end

function T.mha_cross_attention_matches_torch() mha_against_torch(mha_ref.cross) end
function T.mha_causal_self_attention_matches_torch() mha_against_torch(mha_ref.causal, {use_causal_mask = true}) end
function T.mha_attention_mask_matches_torch()
  mha_against_torch(mha_ref.masked, {attention_mask = nn.tensor(mha_ref.masked.keep)})
end

function T.mha_weights_have_keras_layouts()
  local layer = nn.MultiHeadAttention{num_heads = 4, key_dim = 8, value_dim = 5, output_shape = 7}
  local x = nn.Input{shape = {3, 16}}
  local kv = nn.Input{shape = {9, 12}}
  local y = layer(x, kv)
  check.same_table(y.shape, {3, 7}, 0, "output shape")
  local want = {
    {"query_kernel", {16, 4, 8}}, {"query_bias", {4, 8}}, {"key_kernel", {12, 4, 8}}, {"key_bias", {4, 8}},
    {"value_kernel", {12, 4, 5}}, {"value_bias", {4, 5}}, {"output_kernel", {4, 5, 7}}, {"output_bias", {7}}}
  for i, w in ipairs(layer:weights()) do
    check.eq(w.name, want[i][1], "weight " .. i)
    check.same_table(w.tensor:shape(), want[i][2], 0, w.name)
  end
  check.eq(#nn.MultiHeadAttention{num_heads = 2, key_dim = 2, use_bias = false}:build({{3, 4}, {3, 4}}) and 0, 0)
end

-- Padding from Embedding{mask_zero} reaches attention: keys at padded steps
-- get no weight, exactly as an explicit attention_mask would give; a padded
-- query step attends to nothing (Keras 3: weights all zero, so its output
-- is the output bias alone).
function T.mha_uses_the_padding_mask()
  nn.seed(5)
  local ids = nn.Input{shape = {5}}
  local e = nn.Embedding{10, 8, mask_zero = true}(ids)
  local mha = nn.MultiHeadAttention{num_heads = 2, key_dim = 4}
  local out, scores = mha(e, e, {return_attention_scores = true})
  local m = nn.Model{inputs = ids, outputs = {out, scores}}
  local x = nn.tensor{{3, 4, 5, 0, 0}, {1, 2, 3, 4, 9}}
  local o, s = table.unpack(m:predict(x))
  local st, ot = s:totable(), o:totable()
  local bias = mha:weights()[8].tensor:totable()
  for t = 4, 5 do check.same_table(ot[1][t], bias, 1e-6, "a padded query step's output: the output bias") end
  for h = 1, 2 do
    for t = 1, 3 do
      check.eq(st[1][h][t][4], 0, "padded key 4 gets no weight")
      check.eq(st[1][h][t][5], 0, "padded key 5 gets no weight")
    end
    for t = 4, 5 do check.same_table(st[1][h][t], {0, 0, 0, 0, 0}, 0, "padded query step " .. t .. " attends to nothing") end
    for n, last in ipairs({3, 5}) do
      for t = 1, last do
        local sum = 0
        for k = 1, 5 do sum = sum + st[n][h][t][k] end
        check.near(sum, 1, 1e-5, "weights sum to one")
      end
    end
  end
end

-- A Transformer block on the fixture's weights: output, input and weight
-- gradients against PyTorch's TransformerEncoderLayer / DecoderLayer.
local function block_against_torch(layer, case, inputs, grads)
  local xs = {}
  for i, v in ipairs(inputs) do xs[i] = nn.tensor(v):requires_grad(true) end
  layer(#xs == 1 and xs[1] or xs, true)
  layer:set_weights(tensors(case.weights))
  local y = layer(#xs == 1 and xs[1] or xs, true)
  check.same_table(y:totable(), case.y, 1e-5, "output")
  ;(y * nn.tensor(case.r)):sum():backward()
  for i, x in ipairs(xs) do check.same_table(x.grad:totable(), grads[i], 1e-5, "input gradient " .. i) end
  for i, w in ipairs(layer:weights()) do
    check.same_table(w.tensor.grad:totable(), case.dweights[i], 1e-5, w.name .. " gradient")
  end
end

function T.transformer_encoder_matches_torch()
  for _, case in ipairs{tr_ref.encoder, tr_ref.encoder_pre_ln} do
    block_against_torch(nn.TransformerEncoder{10, 2, activation = case.activation, normalize_first = case.normalize_first},
      case, {case.x}, {case.dx})
  end
end

function T.transformer_decoder_with_memory_matches_torch()
  local c = tr_ref.decoder
  block_against_torch(nn.TransformerDecoder{intermediate_dim = 10, num_heads = 2}, c, {c.x, c.memory}, {c.dx, c.dmemory})
end

-- Causal: changing a later step leaves every earlier output alone.
function T.transformer_decoder_is_causal()
  nn.seed(9)
  local dec = nn.TransformerDecoder{8, 2}
  local x = nn.randn(1, 5, 4)
  local y1 = dec(x):totable()
  local x2 = x:clone()
  x2[{{1, 1}, {4, 4}}] = nn.randn(1, 1, 4)
  local y2 = dec(x2):totable()
  for t = 1, 3 do check.same_table(y2[1][t], y1[1][t], 1e-6, "step " .. t) end
  local moved = 0
  for k = 1, 4 do moved = math.max(moved, math.abs(y2[1][4][k] - y1[1][4][k])) end
  assert(moved > 1e-3, "step 4 depends on its input")
end

function T.transformer_bad_input_is_named()
  check.fails(function() nn.TransformerEncoder{16, 8}:build({5, 4}) end,
    "num_heads 8 is more than the input's 4 features")
  check.fails(function() nn.TransformerEncoder{0, 2}:build({5, 4}) end, "intermediate_dim must be positive, got 0")
  check.fails(function() nn.TransformerEncoder{8, 2}:build({4}) end,
    "expects the sequence of rank 2 (steps, features) per sample, got shape (None, 4)")
end

-- A small GPT: Embedding + PositionEmbedding, a pre-LN and a post-LN
-- decoder, a raw causal MultiHeadAttention with a residual, a softmax head.
local function tiny_gpt(L, V, mask_zero)
  local inp = nn.Input{shape = {L}}
  local e = nn.Embedding{V, 16, mask_zero = mask_zero}(inp)
  local h = nn.Add()({e, nn.PositionEmbedding{L}(e)})
  h = nn.TransformerDecoder{32, 2, normalize_first = true}(h)
  h = nn.TransformerDecoder{32, 4}(h)
  local mha = nn.MultiHeadAttention{num_heads = 2, key_dim = 4}
  h = nn.Add()({h, mha(h, h, {use_causal_mask = true})})
  h = nn.LayerNormalization{}(h)
  return nn.Model{inputs = inp, outputs = nn.Dense{V, activation = "softmax"}(h)}
end

-- Step by step, the cache gives every position the outputs of the whole
-- sequence run at once.
local function cached_steps_match(mask_zero, ids)
  nn.seed(21)
  local L, V = 8, 11
  local m = tiny_gpt(L, V, mask_zero)
  local full = m:predict(nn.tensor(ids, "int32")):totable()
  local session = require("lunet.generate").session(m, L)
  -- three steps at once, then one at a time
  local parts = {{1, 3}, {4, 4}, {5, 5}, {6, 6}, {7, 7}, {8, 8}}
  for _, p in ipairs(parts) do
    local rows = {}
    for n = 1, 2 do rows[n] = {table.unpack(ids[n], p[1], p[2])} end
    local y = nn._C.session_feed(session.handle, nn.tensor(rows, "int32")):totable()
    for n = 1, 2 do
      for k = p[1], p[2] do
        check.same_table(y[n][k - p[1] + 1], full[n][k], 1e-5, "position " .. k .. (mask_zero and ", masked" or ""))
      end
    end
  end
  check.eq(session:length(), 8, "steps fed")
  check.fails(function() nn._C.session_feed(session.handle, nn.tensor({{1}, {2}}, "int32")) end,
    "position 8 is past the position table's 8 (sequence_length)")
  session:close()
end

-- With a padding mask (Embedding mask_zero) the cache keeps the keys' mask:
-- 0 ids (padding) at the start, inside and at the end of the rows, in
-- other places in each row, are masked keys step by step as at once.
function T.cached_steps_match_the_full_sequence()
  cached_steps_match(false, {{3, 1, 4, 1, 5, 9, 2, 6}, {2, 7, 1, 8, 2, 8, 1, 8}})
  cached_steps_match(true, {{3, 0, 4, 1, 0, 9, 2, 0}, {0, 0, 1, 8, 2, 8, 0, 8}})
end

function T.generation_with_the_cache_equals_without()
  nn.seed(22)
  local m = tiny_gpt(8, 11)
  for _, prompt in ipairs{{1, 2, 3}, {4}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}} do
    local a = m:generate(prompt, {max_new_tokens = 14, temperature = 0, use_cache = false})
    local b = m:generate(prompt, {max_new_tokens = 14, temperature = 0, use_cache = true})
    check.same_table(b, a, 0, "greedy")
    check.eq(#a, #prompt + 14, "length")
    local c = m:generate(prompt, {max_new_tokens = 14, temperature = 0.9, top_k = 5, top_p = 0.9, seed = 7, use_cache = false})
    local d = m:generate(prompt, {max_new_tokens = 14, temperature = 0.9, top_k = 5, top_p = 0.9, seed = 7})
    check.same_table(d, c, 0, "sampled with one seed")
  end
  -- a model with a layer that cannot step falls back, or says why
  local inp = nn.Input{shape = {6}}
  local rnn = nn.LSTM{8, return_sequences = true}(nn.Embedding{5, 4}(inp))
  local lm = nn.Model{inputs = inp, outputs = nn.Dense{5, activation = "softmax"}(rnn)}
  check.eq(#lm:generate({1, 2}, {max_new_tokens = 3}), 5, "uncached fallback")
  check.fails(function() lm:generate({1, 2}, {use_cache = true}) end, "lstm (LSTM) cannot run step by step")
  check.fails(function() lm:generate({1, 7}) end, "prompt entry 2 is 7, outside the vocabulary of 5")
  check.fails(function() lm:generate({1}, {top_p = 2}) end, "bad argument 'top_p' to 'generate' (a number in (0, 1])")
  check.fails(function() lm:generate({}) end, "the prompt is empty")
  -- a padding mask (Embedding mask_zero): the cache keeps the keys' mask,
  -- so a 0 id is a masked key with it as without (it was an ordinary key)
  local function decoder(mask_zero, causal)
    nn.seed(5)
    local x = nn.Input{shape = {8}}
    local h = nn.TransformerDecoder{16, 2, use_causal_mask = causal}(nn.Embedding{6, 8, mask_zero = mask_zero}(x))
    return nn.Model{inputs = x, outputs = nn.Dense{6}(h)}
  end
  local masked = decoder(true, true)
  local prompt = {3, 0, 2, 4, 1, 0}
  local want = masked:generate(prompt, {max_new_tokens = 6, temperature = 0.8, seed = 3, use_cache = false})
  check.same_table(masked:generate(prompt, {max_new_tokens = 6, temperature = 0.8, seed = 3, use_cache = true}), want, 0,
    "masked: cached as uncached")
  local gpt = tiny_gpt(8, 11, true)
  for _, p in ipairs{{0, 3, 0}, {5, 0, 0, 2, 0, 1, 0, 4, 0, 7}} do
    check.same_table(gpt:generate(p, {max_new_tokens = 9, temperature = 0.7, seed = 4, use_cache = true}),
      gpt:generate(p, {max_new_tokens = 9, temperature = 0.7, seed = 4, use_cache = false}), 0, "masked attention")
  end
  -- a decoder that is not causal cannot step: it falls back (it failed at the first step)
  local open = decoder(false, false)
  check.eq(#open:generate({1, 2}, {max_new_tokens = 2}), 4, "non-causal: uncached fallback")
  check.fails(function() open:generate({1, 2}, {use_cache = true}) end, "is not a causal decoder")
end

-- Sampling follows the distribution: top_k = 1 is greedy, top_p keeps the
-- smallest set holding that much probability.
function T.sampling_rules()
  local gen = require "lunet.generate"
  local scores = {math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)}
  local r = gen.rng(1)
  local counts = {0, 0, 0, 0}
  for _ = 1, 4000 do
    local k = gen.sample(scores, {temperature = 1, top_p = 0.75}, r) + 1
    counts[k] = counts[k] + 1
  end
  check.eq(counts[3] + counts[4], 0, "top_p = 0.75 keeps the first two")
  check.near(counts[1] / 4000, 0.5 / 0.8, 0.03, "renormalized")
  check.eq(gen.sample(scores, {temperature = 1, top_k = 1}, r), 0, "top_k = 1")
  check.eq(gen.sample(scores, {temperature = 0}, r), 0, "temperature 0")
  -- ties at the top-k boundary go to the lower ids (as tf and jax's top_k)
  for _ = 1, 200 do
    assert(gen.sample({0, 0, 0, 0}, {temperature = 1, top_k = 2}, r) <= 1, "a tie broken by the lower id")
  end
end

-- A decoder ending in a Softmax layer gives probabilities, as one whose
-- Dense has activation = "softmax": generate samples the same tokens from
-- both (same weights, same seeds), not from a second softmax over them.
function T.generate_reads_a_softmax_layer_as_probabilities()
  local function build(softmax_layer)
    nn.seed(5)
    local inp = nn.Input{shape = {4}}
    local e = nn.Embedding{5, 8}(inp)
    local out = softmax_layer and nn.Softmax{}(nn.Dense{5}(e)) or nn.Dense{5, activation = "softmax"}(e)
    return nn.Model{inputs = inp, outputs = out}
  end
  local a, b = build(false), build(true)
  local w = a:get_weights()
  w[2] = w[2] * 20 -- a peaked distribution: a second softmax would flatten it visibly
  a:set_weights(w)
  b:set_weights(w)
  local same, differs = 0, 0
  for seed = 1, 200 do
    local ta = a:generate({1, 2}, {max_new_tokens = 3, seed = seed})
    local tb = b:generate({1, 2}, {max_new_tokens = 3, seed = seed})
    if table.concat(ta, ",") == table.concat(tb, ",") then same = same + 1 else differs = differs + 1 end
  end
  check.eq(differs, 0, "the same samples from both models")
end

function T.mha_bad_input_is_named()
  check.fails(function() nn.MultiHeadAttention{num_heads = 0, key_dim = 4}:build({{3, 4}, {3, 4}}) end,
    "num_heads must be positive, got 0")
  check.fails(function() nn.MultiHeadAttention{num_heads = 2, key_dim = -1}:build({{3, 4}, {3, 4}}) end,
    "key_dim must be positive, got -1")
  local mha = nn.MultiHeadAttention{num_heads = 2, key_dim = 4}
  check.fails(function() mha(nn.randn(2, 3, 4), nn.randn(3, 3, 4)) end,
    "expected input 2 of shape (None, 3, 4), got (3, 3, 4) (every input needs the same batch size)")
  check.fails(function() mha(nn.randn(2, 3, 4), nn.randn(2, 3, 4), {attention_mask = nn.ones(2, 3, 3)}) end,
    "it was first called without an attention_mask; a layer keeps its first call's inputs")
  local masked = nn.MultiHeadAttention{num_heads = 2, key_dim = 4}
  check.fails(function() masked(nn.randn(2, 3, 4), nn.randn(2, 3, 4), {attention_mask = nn.ones(2, 3, 2)}) end,
    "attention_mask must be (None, 3, 3) (query steps, value steps), got (None, 3, 2)")
  masked(nn.randn(2, 3, 4), nn.randn(2, 3, 4), {attention_mask = nn.ones(2, 3, 3)})
  check.fails(function() masked(nn.randn(2, 3, 4), nn.randn(2, 3, 4)) end, "it was first called with an attention_mask")
  check.fails(function() nn.MultiHeadAttention{num_heads = 2, key_dim = 4}(nn.randn(2, 4), nn.randn(2, 4)) end,
    "expects query of rank 2 (steps, features) per sample, got shape (None, 4)")
  check.fails(function() mha(nn.randn(2, 3, 4), nn.randn(2, 3, 4), {causal = true}) end,
    "unknown call option 'causal'")
end

check.run(T)
