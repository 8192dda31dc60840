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
-- ngrams, output_mode = "int", vocabulary, idf_weights}: Keras's layer.
-- output_mode "int": ids (N, L), index 0 padding, 1 "[UNK]" (any word
-- outside the vocabulary), then the adapted words by falling frequency,
-- ties in reverse byte order (Keras sorts by count, then token, and
-- reverses: np.lexsort((tokens, counts))[::-1]).  "multi_hot", "count" and
-- "tf_idf": one row of vocabulary size per text (N, V), index 0 "[UNK]" (no
-- padding entry, as Keras's), a word's presence, its count, or its count
-- times its idf, log(1 + documents / (1 + documents holding it)) from
-- adapt ("[UNK]" weighs the mean idf, as Keras's).  max_tokens counts the
-- reserved entries, as in Keras.  ngrams = n adds the 2..n-grams of
-- consecutive words ("the cat"), a list {2, 3} those sizes only.
local output_modes = { int = true, multi_hot = true, count = true, tf_idf = true }

function M.TextVectorization_new(o)
  o = check_fields("TextVectorization", o, { max_tokens = true, output_sequence_length = true, standardize = true,
    split = true, vocabulary = true, output_mode = true, ngrams = true, idf_weights = true })
  local st = o.standardize == nil and "lower_and_strip_punctuation" or o.standardize
  if st ~= false and st ~= "none" and not standardizers[st] then
    error(string.format("bad argument 'standardize' to 'TextVectorization' (valid: lower_and_strip_punctuation, lower, strip_punctuation, none; got %s)", tostring(st)), 2)
  end
  local split = o.split == nil and "whitespace" or o.split
  if split ~= "whitespace" and split ~= "character" then
    error(string.format("bad argument 'split' to 'TextVectorization' (valid: whitespace, character; got %s)", tostring(split)), 2)
  end
  local mode = o.output_mode or "int"
  if not output_modes[mode] then
    error(string.format("bad argument 'output_mode' to 'TextVectorization' (valid: int, multi_hot, count, tf_idf; got %s)",
      tostring(mode)), 2)
  end
  for _, k in ipairs{ "max_tokens", "output_sequence_length" } do
    if o[k] ~= nil and (math.type(o[k]) ~= "integer" or o[k] < 1) then
      error(string.format("bad argument '%s' to 'TextVectorization' (a positive integer)", k), 2)
    end
  end
  if o.output_sequence_length and mode ~= "int" then
    error("bad argument 'output_sequence_length' to 'TextVectorization' (only for output_mode = \"int\", as Keras's)", 2)
  end
  local reserved = mode == "int" and 2 or 1
  if o.max_tokens and o.max_tokens < reserved + 1 then
    error(string.format("bad argument 'max_tokens' to 'TextVectorization' (at least %d: %s and one word)", reserved + 1,
      mode == "int" and "padding, [UNK]" or "[UNK]"), 2)
  end
  local ngrams = o.ngrams
  if ngrams ~= nil then
    local sizes = type(ngrams) == "table" and ngrams or nil
    if math.type(ngrams) == "integer" and ngrams >= 1 then
      sizes = {}
      for n = 1, ngrams do sizes[n] = n end
    end
    for _, n in ipairs(sizes or {}) do if math.type(n) ~= "integer" or n < 1 then sizes = nil break end end
    if not sizes or #sizes == 0 then
      error("bad argument 'ngrams' to 'TextVectorization' (a positive integer n, or a list of sizes such as {1, 2})", 2)
    end
    ngrams = sizes
  end
  local self = setmetatable({ kind = "TextVectorization", max_tokens = o.max_tokens,
    output_sequence_length = o.output_sequence_length, standardize = st == false and "none" or st, split = split,
    output_mode = mode, ngrams = ngrams, reserved = reserved }, TextVectorization)
  if o.vocabulary then self:set_vocabulary(o.vocabulary, o.idf_weights) end
  return self
end

setmetatable(TextVectorization, { __call = function(_, o) return M.TextVectorization_new(o) end })

-- The words of one string after standardization, splitting and n-grams.
function TextVectorization:tokens(s)
  if type(s) ~= "string" then error("TextVectorization: texts must be strings, got " .. type(s), 3) end
  local f = standardizers[self.standardize]
  if f then s = f(s) end
  local words = {}
  if self.split == "character" then
    for _, cp in utf8.codes(s) do words[#words + 1] = utf8.char(cp) end
  else
    for w in s:gmatch("%S+") do words[#words + 1] = w end
  end
  if not self.ngrams then return words end
  local out = {} -- Keras's order: every n-gram of the first size, then of the next, ...
  for _, n in ipairs(self.ngrams) do
    for i = 1, #words - n + 1 do out[#out + 1] = table.concat(words, " ", i, i + n - 1) end
  end
  return out
end

-- vocabulary: the words, without the reserved entries (or with them, as
-- get_vocabulary returns them), max_tokens at most with the reserved ones;
-- idf_weights (tf_idf): one per entry of the vocabulary as given ("[UNK]"
-- takes the words' mean when the list does not start with it), as Keras's.
function TextVectorization:set_vocabulary(words, idf_weights)
  if type(words) ~= "table" then error("TextVectorization: the vocabulary must be a list of words", 3) end
  local int = self.output_mode == "int"
  local start = 1
  if int and words[1] == "" and words[2] == "[UNK]" then start = 3 end
  if not int and words[1] == "[UNK]" then start = 2 end
  -- built aside: a bad list leaves the layer as it was
  local vocab, index = int and { "", "[UNK]" } or { "[UNK]" }, {}
  for i = start, #words do
    local w = words[i]
    if type(w) ~= "string" or w == "" then error(string.format("TextVectorization: vocabulary entry %d must be a non-empty string", i), 3) end
    if index[w] then error(string.format("TextVectorization: the word %q is in the vocabulary twice", w), 3) end
    vocab[#vocab + 1] = w
    index[w] = #vocab - 1
  end
  if self.max_tokens and #vocab > self.max_tokens then
    error(string.format("TextVectorization: a vocabulary of %d entries with the reserved ones (%s) is more than "
      .. "max_tokens = %d", #vocab, int and "\"\" and \"[UNK]\"" or "\"[UNK]\"", self.max_tokens), 3)
  end
  local idf
  if self.output_mode == "tf_idf" then
    if type(idf_weights) ~= "table" or #idf_weights ~= #words then
      error(string.format("TextVectorization: output_mode \"tf_idf\" needs idf_weights, one per vocabulary entry "
        .. "as given (%d, got %s), with the vocabulary (or adapt)", #words,
        type(idf_weights) == "table" and #idf_weights or "none"), 3)
    end
    idf = {}
    local mean, n = 0, 0
    for i = start, #words do
      local v = idf_weights[i]
      if type(v) ~= "number" then error("TextVectorization: idf_weights must be numbers", 3) end
      idf[i - start + 2], mean, n = v, mean + v, n + 1
    end
    -- "[UNK]": its weight when the list starts with it, else the words' mean (Keras's)
    idf[1] = start == 2 and idf_weights[1] or (n > 0 and mean / n or 0)
  end
  self.vocab, self.index, self.idf = vocab, index, idf
  return self
end

function TextVectorization:adapt(texts)
  if type(texts) ~= "table" or #texts == 0 then error("TextVectorization:adapt expects a non-empty list of strings", 2) end
  local count, docs = {}, {}
  for _, s in ipairs(texts) do
    local seen = {}
    for _, w in ipairs(self:tokens(s)) do
      count[w] = (count[w] or 0) + 1
      if not seen[w] then seen[w], docs[w] = true, (docs[w] or 0) + 1 end
    end
  end
  -- the padding "" and "[UNK]" are the vocabulary's reserved entries, never counted words (Keras's
  -- finalize_state removes the special tokens from the counts)
  count[""], count["[UNK]"] = nil, nil
  local words = {}
  for w in pairs(count) do words[#words + 1] = w end
  table.sort(words, function(a, b)
    if count[a] ~= count[b] then return count[a] > count[b] end
    return a > b
  end)
  if self.max_tokens then
    for i = #words, self.max_tokens - self.reserved + 1, -1 do words[i] = nil end
  end
  local idf
  if self.output_mode == "tf_idf" then
    idf = {}
    for i, w in ipairs(words) do idf[i] = math.log(1 + #texts / (1 + docs[w])) end
  end
  return self:set_vocabulary(words, idf)
end

function TextVectorization:vocabulary_size() return self.vocab and #self.vocab or 0 end
function TextVectorization:get_vocabulary() return { table.unpack(self.vocab or {}) } end

-- texts (a string or a list of strings) -> int32 ids (N, L): L is
-- output_sequence_length (padding with 0 at the end, or cutting), or the
-- longest text's length; in the other modes float32 (N, V).
function TextVectorization:__call(texts)
  if not self.vocab then error("TextVectorization: call adapt(texts) (or give a vocabulary) before vectorizing", 2) end
  if type(texts) == "string" then texts = { texts } end
  if type(texts) ~= "table" or #texts == 0 then error("TextVectorization expects a string or a non-empty list of strings", 2) end
  if self.output_mode ~= "int" then
    local rows, v, mode = {}, #self.vocab, self.output_mode
    for i, s in ipairs(texts) do
      local row = {}
      for k = 1, v do row[k] = 0 end
      for _, w in ipairs(self:tokens(s)) do
        local k = (self.index[w] or 0) + 1
        row[k] = mode == "multi_hot" and 1 or row[k] + 1
      end
      if mode == "tf_idf" then for k = 1, v do row[k] = row[k] * self.idf[k] end end
      rows[i] = row
    end
    return C.tensor(rows)
  end
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
    standardize = self.standardize, split = self.split, output_mode = self.output_mode ~= "int" and self.output_mode or nil,
    ngrams = self.ngrams, idf_weights = self.idf,
    vocabulary = self.vocab and { table.unpack(self.vocab, self.reserved + 1) } or nil }
end

-- A tokenizer from its config() (a model file's preprocessor).
function M.from_config(cfg)
  if type(cfg) ~= "table" then error("a text preprocessor's config must be a table", 2) end
  if cfg.kind == "CharTokenizer" then return M.CharTokenizer_new{ vocabulary = cfg.vocabulary, unknown = cfg.unknown } end
  if cfg.kind == "TextVectorization" then
    -- the file keeps the words without "[UNK]" and the weights with it, first
    local words = cfg.vocabulary or {}
    if type(cfg.idf_weights) == "table" and type(words) == "table" and #cfg.idf_weights == #words + 1 then
      words = { "[UNK]", table.unpack(words) }
    end
    -- max_tokens after the vocabulary: a file of before may hold a given vocabulary longer than it
    local tv = M.TextVectorization_new{ output_sequence_length = cfg.output_sequence_length,
      standardize = cfg.standardize, split = cfg.split, output_mode = cfg.output_mode, ngrams = cfg.ngrams,
      vocabulary = words, idf_weights = cfg.idf_weights }
    tv.max_tokens = cfg.max_tokens
    return tv
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
