-- model:generate(prompt, {max_new_tokens, temperature, top_k, top_p, seed,
-- use_cache}): autoregressive sampling from a decoder model whose input is
-- ids (N, L) and whose output is the next token's distribution at every
-- position (N, L, V), probabilities (a softmax) or logits.
--
-- Without the cache each new token runs the model on the last L tokens
-- (the prompt right-padded with 0 while shorter: a causal model's
-- positions never see what follows them) and reads the last real
-- position.  With the cache (the default where the model allows it) the
-- model runs step by step: each decoder keeps its keys and values, so a
-- token costs one position's work (see Model:decode_session).
local C = require "lunet.core"

local M = {}

-- A small deterministic generator (splitmix64), so `seed` reproduces a
-- sample without touching math.random.
function M.rng(seed)
  local state = seed
  return function()
    state = state + 0x9E3779B97F4A7C15
    local z = state
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    z = z ~ (z >> 31)
    return ((z >> 11) & 0x1FFFFFFFFFFFFF) / 9007199254740992.0 -- [0, 1)
  end
end

-- The next token from one row of scores (log-probabilities or logits).
function M.sample(scores, o, random)
  local v = #scores
  if o.temperature == 0 then
    local best = 1
    for i = 2, v do if scores[i] > scores[best] then best = i end end
    return best - 1
  end
  local idx = {}
  for i = 1, v do idx[i] = i end
  -- by score, ties by the lower id (as tf/jax top_k)
  table.sort(idx, function(a, b) return scores[a] > scores[b] or (scores[a] == scores[b] and a < b) end)
  local keep = o.top_k and math.min(o.top_k, v) or v
  local top = scores[idx[1]] / o.temperature
  local w, total = {}, 0
  for r = 1, keep do
    w[r] = math.exp(scores[idx[r]] / o.temperature - top)
    total = total + w[r]
  end
  if o.top_p and o.top_p < 1 then -- the smallest set holding top_p of the mass
    local mass = 0
    for r = 1, keep do
      mass = mass + w[r] / total
      if mass >= o.top_p then keep = r break end
    end
    total = 0
    for r = 1, keep do total = total + w[r] end
  end
  local x = random() * total
  for r = 1, keep do
    x = x - w[r]
    if x < 0 then return idx[r] - 1 end
  end
  return idx[keep] - 1
end

local options = { max_new_tokens = true, temperature = true, top_k = true, top_p = true, seed = true, use_cache = true }

function M.check_options(o)
  o = o or {}
  if type(o) ~= "table" then error("bad argument #2 to 'generate' (a table of options expected)", 3) end
  for k in pairs(o) do
    if not options[k] then
      error(string.format("bad argument '%s' to 'generate' (unknown option; valid: max_new_tokens, seed, temperature, top_k, top_p, use_cache)", tostring(k)), 3)
    end
  end
  local r = { max_new_tokens = o.max_new_tokens or 20, temperature = o.temperature or 1.0, top_k = o.top_k,
    top_p = o.top_p, seed = o.seed or 1, use_cache = o.use_cache }
  if math.type(r.max_new_tokens) ~= "integer" or r.max_new_tokens < 0 then
    error("bad argument 'max_new_tokens' to 'generate' (a non-negative integer)", 3)
  end
  if type(r.temperature) ~= "number" or r.temperature < 0 then
    error("bad argument 'temperature' to 'generate' (a number >= 0; 0 picks the most likely token)", 3)
  end
  if r.top_k ~= nil and (math.type(r.top_k) ~= "integer" or r.top_k < 1) then
    error("bad argument 'top_k' to 'generate' (a positive integer)", 3)
  end
  if r.top_p ~= nil and (type(r.top_p) ~= "number" or r.top_p <= 0 or r.top_p > 1) then
    error("bad argument 'top_p' to 'generate' (a number in (0, 1])", 3)
  end
  if math.type(r.seed) ~= "integer" then error("bad argument 'seed' to 'generate' (an integer)", 3) end
  return r
end

-- The prompt as a list of ids (0-based), and how to give the result back.
function M.prompt_ids(model, prompt)
  local p = model.preprocessor
  if type(prompt) == "string" then
    if not p or p.kind ~= "CharTokenizer" then
      error("generate: a text prompt needs a CharTokenizer preprocessor (model:set_preprocessor(tok)); or give ids", 3)
    end
    return p:encode(prompt):totable(), function(ids) return p:decode(ids) end
  end
  local ids = C.is_tensor(prompt) and prompt:totable() or prompt
  if type(ids) ~= "table" or (C.is_tensor(prompt) and prompt:dim() ~= 1) then
    error("bad argument #1 to 'generate' (a prompt: a string, a list of ids or a 1-D tensor)", 3)
  end
  for i, v in ipairs(ids) do
    if math.tointeger(v) == nil or v < 0 then
      error(string.format("generate: prompt entry %d is %s, not a token id", i, tostring(v)), 3)
    end
    ids[i] = math.tointeger(v)
  end
  return ids, function(out) return out end
end

-- ---- step by step, with the cache ----

local Session = {}
Session.__index = Session

-- Why the model's calls cannot run step by step although their layers can
-- (nil when they can): Masking takes whole steps of floats, and attention
-- steps only as causal self-attention (it failed at the first step instead
-- of falling back).  Embedding{mask_zero}'s mask steps with the tokens.
local function cannot_step(model)
  for _, n in ipairs(model.nodes or {}) do
    local l, a = n.layer, n.layer.args or {}
    local self_attention = true
    for _, x in ipairs(n.inputs or {}) do self_attention = self_attention and x == n.inputs[1] end
    if l.type == "Masking" then
      return string.format("layer %s masks whole steps of floats, which a step-by-step run does not take", l.name)
    elseif l.type == "TransformerDecoder" and (a.use_causal_mask == false or #(n.inputs or {}) > 1) then
      return string.format("layer %s is not a causal decoder without an encoder sequence", l.name)
    elseif l.type == "MultiHeadAttention" and (not a.use_causal_mask or not self_attention) then
      return string.format("layer %s is not causal self-attention", l.name)
    end
  end
end

-- The step-by-step session for a model (its layers' key/value caches),
-- or nil and the reason when a layer cannot run step by step.
function M.session(model, steps)
  local why = cannot_step(model)
  if why then return nil, why end
  local ok, h = pcall(C.session_new, model.handle)
  if not ok then return nil, h end
  return setmetatable({ model = model, handle = h, steps = steps }, Session)
end

-- Feeds ids (a list) at the next positions; the scores row (a list) of
-- the last one.
function Session:feed(ids)
  local x = C.tensor({ ids }, "int32")
  local dev = self.model.device
  if dev and x:device() ~= dev then x = x:to(dev) end
  local y = C.session_feed(self.handle, x)
  local t = #ids
  return C.take_rows(y:reshape(t, y:shape()[3]), t, 1):totable()[1]
end

-- Starts over with the last `steps` ids of `out` (the context is full):
-- the same computation as the uncached window, so results agree.
function Session:restart(out)
  C.session_close(self.handle)
  self.handle = C.session_new(self.model.handle)
  local window = {}
  for k = math.max(1, #out - self.steps + 1), #out do window[#window + 1] = out[k] end
  return self:feed(window)
end

function Session:length() return C.session_length(self.handle) end
function Session:close() C.session_close(self.handle) end

return M
