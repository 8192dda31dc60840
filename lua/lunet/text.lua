-- Text data (nn.text): a character tokenizer, Keras's word-level
-- TextVectorization, and language-modelling windows.  Tokenizers turn
-- strings into int32 id tensors (on the CPU, as datasets are); a model
-- carries one (model:set_preprocessor) so that it is saved with it and
-- predict/evaluate/fit/generate take strings.
local C = require "lunet.core"

local M = {}

local check_fields = require("lunet.optim").check_fields

-- The characters of a string (UTF-8; a stray byte counts as Latin-1).
local function chars_of(codes)
  local out = {}
  for i, cp in ipairs(codes) do out[i] = utf8.char(cp) end
  return out
end

-- ---- CharTokenizer ----

local CharTokenizer = {}
CharTokenizer.__index = CharTokenizer
M.CharTokenizer = CharTokenizer

-- nn.text.CharTokenizer{vocabulary = {"a", "b", ...}, unknown = "?"}: ids
-- 0..V-1 for the vocabulary's characters (sorted by code point when it
-- comes from adapt).  A character outside it is an error, or becomes
-- `unknown` (which must be in the vocabulary) when given.
function M.CharTokenizer_new(o)
  o = check_fields("CharTokenizer", o, { vocabulary = true, unknown = true })
  local self = setmetatable({ kind = "CharTokenizer", codes = nil, unknown = o.unknown }, CharTokenizer)
  if o.vocabulary then self:set_vocabulary(o.vocabulary) end
  return self
end

setmetatable(CharTokenizer, { __call = function(_, o) return M.CharTokenizer_new(o) end })

function CharTokenizer:set_vocabulary(chars)
  if type(chars) ~= "table" or #chars == 0 then
    error("CharTokenizer: the vocabulary must be a non-empty list of characters", 3)
  end
  local codes, seen = {}, {}
  for i, ch in ipairs(chars) do
    local ok, n = pcall(utf8.len, ch)
    if type(ch) ~= "string" or not ok or n ~= 1 then
      error(string.format("CharTokenizer: vocabulary entry %d must be one character, got %q", i, tostring(ch)), 3)
    end
    local cp = utf8.codepoint(ch)
    if seen[cp] then error(string.format("CharTokenizer: the character %q is in the vocabulary twice", ch), 3) end
    seen[cp] = i
    codes[i] = cp
  end
  -- ids follow the list's order: keep the order in a map for encode
  self.chars = {}
  for i, cp in ipairs(codes) do self.chars[i] = utf8.char(cp) end
  self.id_of = seen
  self:check_unknown()
  return self
end

function CharTokenizer:check_unknown()
  if self.unknown ~= nil and not (self.id_of and self.id_of[utf8.codepoint(self.unknown)]) then
    error(string.format("CharTokenizer: unknown = %q is not in the vocabulary", self.unknown), 4)
  end
end

-- Learns the vocabulary: every distinct character of `text` (a string or a
-- list of strings), sorted by code point.
function CharTokenizer:adapt(text)
  if type(text) == "table" then text = table.concat(text, "\n") end
  if type(text) ~= "string" or #text == 0 then error("CharTokenizer:adapt expects a non-empty string or list of strings", 2) end
  local chars = chars_of(C.text_chars(text))
  if self.unknown and not text:find(self.unknown, 1, true) then chars[#chars + 1] = self.unknown end
  table.sort(chars, function(a, b) return utf8.codepoint(a) < utf8.codepoint(b) end)
  return self:set_vocabulary(chars)
end

function CharTokenizer:vocabulary_size() return self.chars and #self.chars or 0 end
function CharTokenizer:get_vocabulary() return { table.unpack(self.chars or {}) } end

local function need_vocab(self, what)
  if not self.chars then error(string.format("CharTokenizer:%s before the tokenizer has a vocabulary (adapt it to a text first)", what), 3) end
end

-- text -> int32 ids (n characters), on the CPU.
function CharTokenizer:encode(text)
  need_vocab(self, "encode")
  if type(text) ~= "string" then error("CharTokenizer:encode expects a string, got " .. type(text), 2) end
  local codes, ids = {}, {}
  for i, ch in ipairs(self.chars) do codes[i], ids[i] = utf8.codepoint(ch), i - 1 end
  local unk = self.unknown and (self.id_of[utf8.codepoint(self.unknown)] - 1) or nil
  local ok, t = pcall(C.text_encode, text, codes, ids, unk)
  if not ok then error("CharTokenizer: " .. tostring(t), 2) end
  return t
end

-- ids (a tensor or a list of numbers) -> text
function CharTokenizer:decode(ids)
  need_vocab(self, "decode")
  local t = type(ids) == "table" and ids or ids:totable()
  local out = {}
  for i, v in ipairs(t) do
    local ch = self.chars[math.tointeger(v) and math.tointeger(v) + 1 or -1]
    if not ch then error(string.format("CharTokenizer:decode: id %s is outside 0..%d", tostring(v), #self.chars - 1), 2) end
    out[i] = ch
  end
  return table.concat(out)
end

function CharTokenizer:__call(texts)
  if type(texts) == "string" then return self:encode(texts) end
  error("a CharTokenizer encodes one string (tok:encode(s)); for a batch of texts use nn.text.TextVectorization", 2)
end

function CharTokenizer:config()
  return { kind = "CharTokenizer", vocabulary = self:get_vocabulary(), unknown = self.unknown }
end

-- ---- TextVectorization ----

local TextVectorization = {}
TextVectorization.__index = TextVectorization
M.TextVectorization = TextVectorization

local standardizers = {
  lower_and_strip_punctuation = function(s) return (s:lower():gsub("%p", "")) end,
  lower = function(s) return s:lower() end,
  strip_punctuation = function(s) return (s:gsub("%p", "")) end,
}

-- nn.text.TextVectorization{max_tokens, output_sequence_length,
-- standardize = "lower_and_strip_punctuation", split = "whitespace",
-- vocabulary}: Keras's layer with output_mode "int".  Index 0 is padding,
-- 1 is "[UNK]" (any word outside the vocabulary), then the adapted words
-- by falling frequency, ties in reverse byte order (Keras sorts by count,
-- then token, and reverses: np.lexsort((tokens, counts))[::-1]); max_tokens
-- counts the two reserved entries, as in Keras.
function M.TextVectorization_new(o)
  o = check_fields("TextVectorization", o, { max_tokens = true, output_sequence_length = true, standardize = true,
    split = true, vocabulary = true })
  local st = o.standardize == nil and "lower_and_strip_punctuation" or o.standardize
  if st ~= false and st ~= "none" and not standardizers[st] then
    error(string.format("bad argument 'standardize' to 'TextVectorization' (valid: lower_and_strip_punctuation, lower, strip_punctuation, none; got %s)", tostring(st)), 2)
  end
  local split = o.split == nil and "whitespace" or o.split
  if split ~= "whitespace" and split ~= "character" then
    error(string.format("bad argument 'split' to 'TextVectorization' (valid: whitespace, character; got %s)", tostring(split)), 2)
  end
  for _, k in ipairs{ "max_tokens", "output_sequence_length" } do
    if o[k] ~= nil and (math.type(o[k]) ~= "integer" or o[k] < 1) then
      error(string.format("bad argument '%s' to 'TextVectorization' (a positive integer)", k), 2)
    end
  end
  if o.max_tokens and o.max_tokens < 3 then
    error("bad argument 'max_tokens' to 'TextVectorization' (at least 3: padding, [UNK] and one word)", 2)
  end
  local self = setmetatable({ kind = "TextVectorization", max_tokens = o.max_tokens,
    output_sequence_length = o.output_sequence_length, standardize = st == false and "none" or st, split = split }, TextVectorization)
  if o.vocabulary then self:set_vocabulary(o.vocabulary) end
  return self
end

setmetatable(TextVectorization, { __call = function(_, o) return M.TextVectorization_new(o) end })

-- The words of one string after standardization and splitting.
function TextVectorization:tokens(s)
  if type(s) ~= "string" then error("TextVectorization: texts must be strings, got " .. type(s), 3) end
  local f = standardizers[self.standardize]
  if f then s = f(s) end
  local out = {}
  if self.split == "character" then
    for _, cp in utf8.codes(s) do out[#out + 1] = utf8.char(cp) end
  else
    for w in s:gmatch("%S+") do out[#out + 1] = w end
  end
  return out
end

-- vocabulary: the words, without the two reserved entries (or with them,
-- as get_vocabulary returns them).
function TextVectorization:set_vocabulary(words)
  if type(words) ~= "table" then error("TextVectorization: the vocabulary must be a list of words", 3) end
  local start = (words[1] == "" and words[2] == "[UNK]") and 3 or 1
  self.vocab = { "", "[UNK]" }
  self.index = {}
  for i = start, #words do
    local w = words[i]
    if type(w) ~= "string" or w == "" then error(string.format("TextVectorization: vocabulary entry %d must be a non-empty string", i), 3) end
    if self.index[w] then error(string.format("TextVectorization: the word %q is in the vocabulary twice", w), 3) end
    self.vocab[#self.vocab + 1] = w
    self.index[w] = #self.vocab - 1
  end
  return self
end

function TextVectorization:adapt(texts)
  if type(texts) ~= "table" or #texts == 0 then error("TextVectorization:adapt expects a non-empty list of strings", 2) end
  local count = {}
  for _, s in ipairs(texts) do
    for _, w in ipairs(self:tokens(s)) do count[w] = (count[w] or 0) + 1 end
  end
  -- the padding "" and "[UNK]" are the vocabulary's first two entries, never counted words (Keras's
  -- finalize_state removes the special tokens from the counts)
  count[""], count["[UNK]"] = nil, nil
  local words = {}
  for w in pairs(count) do words[#words + 1] = w end
  table.sort(words, function(a, b)
    if count[a] ~= count[b] then return count[a] > count[b] end
    return a > b
  end)
  if self.max_tokens then
    for i = #words, self.max_tokens - 1, -1 do words[i] = nil end
  end
  return self:set_vocabulary(words)
end

function TextVectorization:vocabulary_size() return self.vocab and #self.vocab or 0 end
function TextVectorization:get_vocabulary() return { table.unpack(self.vocab or {}) } end

-- texts (a string or a list of strings) -> int32 ids (N, L): L is
-- output_sequence_length (padding with 0 at the end, or cutting), or the
-- longest text's length.
function TextVectorization:__call(texts)
  if not self.vocab then error("TextVectorization: call adapt(texts) (or give a vocabulary) before vectorizing", 2) end
  if type(texts) == "string" then texts = { texts } end
  if type(texts) ~= "table" or #texts == 0 then error("TextVectorization expects a string or a non-empty list of strings", 2) end
  local rows, longest = {}, 1
  for i, s in ipairs(texts) do
    local ids = {}
    for k, w in ipairs(self:tokens(s)) do ids[k] = self.index[w] or 1 end
    rows[i] = ids
    longest = math.max(longest, #ids)
  end
  local len = self.output_sequence_length or longest
  for _, ids in ipairs(rows) do
    for k = #ids + 1, len do ids[k] = 0 end
    for k = #ids, len + 1, -1 do ids[k] = nil end
  end
  return C.tensor(rows, "int32")
end

function TextVectorization:config()
  return { kind = "TextVectorization", max_tokens = self.max_tokens, output_sequence_length = self.output_sequence_length,
    standardize = self.standardize, split = self.split, vocabulary = self.vocab and { table.unpack(self.vocab, 3) } or nil }
end

-- A tokenizer from its config() (a model file's preprocessor).
function M.from_config(cfg)
  if type(cfg) ~= "table" then error("a text preprocessor's config must be a table", 2) end
  if cfg.kind == "CharTokenizer" then return M.CharTokenizer_new{ vocabulary = cfg.vocabulary, unknown = cfg.unknown } end
  if cfg.kind == "TextVectorization" then
    return M.TextVectorization_new{ max_tokens = cfg.max_tokens, output_sequence_length = cfg.output_sequence_length,
      standardize = cfg.standardize, split = cfg.split, vocabulary = cfg.vocabulary or {} }
  end
  error("unknown text preprocessor kind '" .. tostring(cfg.kind) .. "'", 2)
end

function M.is_preprocessor(p)
  local mt = getmetatable(p)
  return mt == CharTokenizer or mt == TextVectorization
end

-- nn.text.windows(ids, seq_len, stride): language-modelling pairs over an
-- id sequence (a tokenizer's output): x (N, seq_len) and y (N, seq_len),
-- y being x one token later; window w starts at w * stride (default
-- seq_len: no overlap).
function M.windows(ids, seq_len, stride)
  if math.type(seq_len) ~= "integer" then error("bad argument #2 to 'windows' (seq_len: an integer)", 2) end
  stride = stride or seq_len
  if math.type(stride) ~= "integer" then error("bad argument #3 to 'windows' (stride: an integer)", 2) end
  local ok, x, y = pcall(C.text_windows, ids, seq_len, stride)
  if not ok then error(x, 2) end
  return x, y
end

return M
