-- Text data: nn.text.CharTokenizer, TextVectorization, windows, and a model
-- that carries its preprocessor through save and load.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

function T.char_tokenizer_round_trips_utf8()
  local tok = nn.text.CharTokenizer()
  tok:adapt("héllo wörld\n")
  check.same_table(tok:get_vocabulary(), {"\n", " ", "d", "h", "l", "o", "r", "w", "é", "ö"}, 0, "sorted by code point")
  local ids = tok:encode("wörld")
  check.eq(ids:dtype(), "int32", "ids are int32")
  check.same_table(ids:totable(), {7, 9, 6, 4, 2}, 0, "ids")
  check.eq(tok:decode(ids), "wörld", "decode")
  check.fails(function() tok:encode("x") end, "the character U+0078 at byte 1 is not in the vocabulary")
  local unk = nn.text.CharTokenizer{vocabulary = {"a", "b", "?"}, unknown = "?"}
  check.same_table(unk:encode("abz"):totable(), {0, 1, 2}, 0, "unknown character")
  check.fails(function() nn.text.CharTokenizer{vocabulary = {"a", "a"}} end, "in the vocabulary twice")
  check.fails(function() nn.text.CharTokenizer{vocabulary = {"ab"}} end, "must be one character")
  -- a stray byte (not UTF-8) counts as Latin-1 and does not stop the reader
  local latin = nn.text.CharTokenizer()
  latin:adapt("caf\233")
  check.eq(latin:vocabulary_size(), 4, "Latin-1 byte")
end

function T.text_vectorization_follows_keras()
  local tv = nn.text.TextVectorization{max_tokens = 6, output_sequence_length = 4}
  tv:adapt({"The cat sat.", "The dog sat!", "a cat", "the end"})
  -- padding, [UNK], then by falling count, ties in reverse order as Keras's
  -- np.lexsort((tokens, counts))[::-1] (the 3; sat, cat 2; end, dog, a 1), 6 in all
  check.same_table(tv:get_vocabulary(), {"", "[UNK]", "the", "sat", "cat", "end"}, 0, "vocabulary")
  local x = tv({"The cat ran away fast", "Dog?"}):totable()
  check.same_table(x, {{2, 4, 1, 1}, {1, 0, 0, 0}}, 0, "ids: cut, padded, unknown")
  local ragged = nn.text.TextVectorization{standardize = "none"}
  ragged:adapt({"A b", "b"})
  check.same_table(ragged({"b A", "b"}):totable(), {{2, 3}, {2, 0}}, 0, "longest text sets the length")
  -- "[UNK]" in the text is the out-of-vocabulary entry, never a second one (Keras drops the special tokens' counts)
  local unk = nn.text.TextVectorization{standardize = "none"}
  unk:adapt({"[UNK] [UNK] b", "b a"})
  check.same_table(unk:get_vocabulary(), {"", "[UNK]", "b", "a"}, 0, "one [UNK]")
  check.fails(function() nn.text.TextVectorization{standardize = "upper"} end, "bad argument 'standardize'")
  check.fails(function() nn.text.TextVectorization{}({"x"}) end, "call adapt(texts)")
end

function T.windows_pair_each_step_with_the_next()
  local ids = nn.tensor({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, "int32")
  local x, y = nn.text.windows(ids, 4, 3)
  check.same_table(x:totable(), {{0, 1, 2, 3}, {3, 4, 5, 6}}, 0, "inputs")
  check.same_table(y:totable(), {{1, 2, 3, 4}, {4, 5, 6, 7}}, 0, "targets")
  local x2 = nn.text.windows(ids, 9)
  check.same_table(x2:totable(), {{0, 1, 2, 3, 4, 5, 6, 7, 8}}, 0, "the last window ends one before the text")
  check.fails(function() nn.text.windows(ids, 10) end, "a sequence of 10 tokens is too short for windows of 10")
  check.fails(function() nn.text.windows(nn.tensor{1, 2, 3}, 1) end, "ids must be a 1-D int32 tensor")
end

-- output_mode multi_hot / count / tf_idf and ngrams, against Keras's rules
-- worked by hand: "[UNK]" first (no padding entry), idf = log(1 + docs /
-- (1 + docs holding the word)), "[UNK]" weighing the words' mean idf; and a
-- bag-of-words classifier that keeps its vectorizer (idf weights too) in
-- its file.
function T.text_vectorization_bag_of_words_modes()
  local texts = {"the cat sat", "the dog", "a cat"}
  local tv = nn.text.TextVectorization{output_mode = "tf_idf", ngrams = 2}
  tv:adapt(texts)
  check.same_table(tv:get_vocabulary(), {"[UNK]", "the", "cat", "the dog", "the cat", "sat", "dog", "cat sat", "a cat", "a"},
    0, "unigrams and bigrams, by count then reverse order")
  local two, one = math.log(1 + 3 / 3), math.log(1 + 3 / 2) -- in two documents, in one
  local unk = (2 * two + 7 * one) / 9
  check.same_table(tv({"the cat ran", "zz"}):totable(),
    {{2 * unk, two, two, 0, one, 0, 0, 0, 0, 0}, {unk, 0, 0, 0, 0, 0, 0, 0, 0, 0}}, 1e-6, "tf_idf")
  local count = nn.text.TextVectorization{output_mode = "count", max_tokens = 3}
  count:adapt(texts)
  check.same_table(count:get_vocabulary(), {"[UNK]", "the", "cat"}, 0, "max_tokens counts [UNK]")
  check.same_table(count({"cat cat the x"}):totable(), {{1, 1, 2}}, 0, "count")
  local hot = nn.text.TextVectorization{output_mode = "multi_hot", vocabulary = {"cat", "the"}}
  check.same_table(hot({"cat cat the x y"}):totable(), {{1, 1, 1}}, 0, "multi_hot")
  local grams = nn.text.TextVectorization{ngrams = {2}, vocabulary = {"a b"}}
  check.same_table(grams({"a b c"}):totable(), {{2, 1}}, 0, "bigrams only")
  check.fails(function() nn.text.TextVectorization{output_mode = "count", output_sequence_length = 4} end,
    "only for output_mode")
  check.fails(function() nn.text.TextVectorization{output_mode = "tf_idf", vocabulary = {"a"}} end, "needs idf_weights")
  -- Keras's set_vocabulary: idf_weights as long as the vocabulary given (one more was taken as [UNK]'s),
  -- [UNK]'s weight the words' mean unless the list starts with [UNK]; a vocabulary within max_tokens
  check.fails(function()
    nn.text.TextVectorization{output_mode = "tf_idf", vocabulary = {"a", "b"}, idf_weights = {9, 1, 2}}
  end, "one per vocabulary entry as given (2, got 3)")
  local given = nn.text.TextVectorization{output_mode = "tf_idf", vocabulary = {"a", "b"}, idf_weights = {1, 2}}
  check.same_table(given({"a b z"}):totable(), {{1.5, 1, 2}}, 0, "[UNK] takes the mean")
  local with_unk = nn.text.TextVectorization{output_mode = "tf_idf", vocabulary = {"[UNK]", "a"}, idf_weights = {7, 1}}
  check.same_table(with_unk({"a z"}):totable(), {{7, 1}}, 0, "[UNK]'s own weight")
  check.fails(function() nn.text.TextVectorization{max_tokens = 3, vocabulary = {"a", "b", "c"}} end,
    "a vocabulary of 5 entries with the reserved ones (\"\" and \"[UNK]\") is more than max_tokens = 3")
  local kept = nn.text.TextVectorization{max_tokens = 4, vocabulary = {"a", "b"}}
  check.fails(function() kept:set_vocabulary({"a", "b", "c"}) end, "more than max_tokens = 4")
  check.same_table(kept:get_vocabulary(), {"", "[UNK]", "a", "b"}, 0, "a refused vocabulary leaves the old one")
  -- a NUL inside a word cannot go into the file's JSON: refused at save (the word was cut there, and a
  -- CharTokenizer's file could not be loaded); so is a class name holding one
  local nul = nn.text.TextVectorization{standardize = "none"}
  nul:adapt{"x\0y c c", "d"}
  local holder = nn.Sequential{nn.Embedding{10, 2, input_shape = {3}}}
  holder:set_preprocessor(nul)
  local path = os.tmpname()
  check.fails(function() holder:save(path) end, "save: cannot save the string \"x\\0...\" in a model config")
  holder:set_preprocessor(nn.text.CharTokenizer{}:adapt("ab\0c"))
  check.fails(function() holder:save(path) end, "it holds a NUL character")
  holder.preprocessor, holder.class_names = nil, {"a\0b", "c", "d"}
  check.fails(function() holder:save(path) end, "class_names must be a list of strings (without NUL characters)")
  os.remove(path)
  -- a classifier on tf_idf rows; the file keeps vocabulary and weights
  nn.seed(3)
  local docs = {"good fun film", "bad dull film", "fun and good", "dull and bad"}
  local v = nn.text.TextVectorization{output_mode = "tf_idf"}
  v:adapt(docs)
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {v:vocabulary_size()}}}
  m:set_preprocessor(v)
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  m:fit(docs, nn.tensor{1, 0, 1, 0}, {epochs = 40, batch_size = 4, verbose = 0})
  check.eq(m:evaluate(docs, nn.tensor{1, 0, 1, 0}).accuracy, 1, "learns")
  local path = os.tmpname()
  m:save(path)
  local back = nn.load_model(path)
  os.remove(path)
  check.same_table(back:predict({"fun film", "so dull"}):totable(), m:predict({"fun film", "so dull"}):totable(), 0,
    "the loaded model vectorizes and predicts the same")
end

-- A classifier on texts: the vectorizer travels in the model file, and the
-- loaded model takes texts and predicts what the saved one did.
function T.a_model_keeps_its_text_preprocessor()
  nn.seed(4)
  local texts = {"good fun film", "bad dull film", "fun and good", "dull and bad", "good good", "bad bad"}
  local labels = nn.tensor{1, 0, 1, 0, 1, 0}
  local tv = nn.text.TextVectorization{output_sequence_length = 4}
  tv:adapt(texts)
  local m = nn.Sequential{
    nn.Embedding{tv:vocabulary_size(), 8, input_shape = {4}},
    nn.GlobalAveragePooling1D(),
    nn.Dense{2, activation = "softmax"},
  }
  m:set_preprocessor(tv)
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.05}, loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  m:fit(texts, labels, {epochs = 30, batch_size = 6, verbose = 0})
  check.eq(m:evaluate(texts, labels).accuracy, 1, "learns the toy task")
  local path = os.tmpname()
  m:save(path)
  local loaded = nn.load_model(path)
  os.remove(path)
  check.same_table(loaded.preprocessor:get_vocabulary(), tv:get_vocabulary(), 0, "vocabulary restored")
  check.same_table(loaded:predict({"good film", "dull"}):totable(), m:predict({"good film", "dull"}):totable(), 1e-6, "same predictions")
  check.fails(function() nn.Sequential{nn.Dense{2, input_shape = {3}}}:predict({"text"}) end, "the model has no text preprocessor")
end

check.run(T)
