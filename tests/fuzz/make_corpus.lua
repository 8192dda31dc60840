-- Writes the fuzz targets' seed corpora under tests/fuzz/corpus/ (run from
-- the repository root: build/bin/lunet tests/fuzz/make_corpus.lua).  Seeds
-- are small valid files of every kind each reader takes, so that the
-- fuzzer starts deep in the format; regression inputs (crashes found and
-- fixed) are added by hand beside them, named regress-*.
local nn = require "lunet"
local root = "tests/fuzz/corpus/"

local function write(what, name, bytes)
  os.execute("mkdir -p " .. root .. what)
  local f = assert(io.open(root .. what .. "/" .. name, "wb"))
  f:write(bytes)
  f:close()
end

local function run(cmd) assert(os.execute(cmd), cmd) end

-- IDX: images (ubyte, 3 dims) and labels (1 dim), raw and gzip.
local function idx(dims, data)
  local head = string.pack(">I4", 0x0800 + #dims)
  for _, d in ipairs(dims) do head = head .. string.pack(">I4", d) end
  return head .. data
end
local pixels = {}
for i = 1, 2 * 4 * 3 do pixels[i] = string.char((i * 37) % 256) end
write("idx", "images-2x4x3.idx", idx({2, 4, 3}, table.concat(pixels)))
write("idx", "labels-5.idx", idx({5}, "\0\3\9\1\7"))
write("idx", "matrix-2x2x2x2.idx", idx({2, 2, 2, 2}, string.rep("\1", 16)))
run("gzip -9n -c " .. root .. "idx/labels-5.idx > " .. root .. "idx/labels-5.idx.gz")

-- CIFAR-10: the official layout with one record per batch file, gzip'd as
-- published and as a plain tar.
os.execute("mkdir -p " .. root .. "cifar")
run("python3 tests/data/make_cifar_fixture.py " .. root .. "cifar/cifar-1.tar.gz 1 >/dev/null")
run("gzip -dc " .. root .. "cifar/cifar-1.tar.gz > " .. root .. "cifar/cifar-1.tar")

-- CSV: a header, numbers, quoted text with the delimiter, a quote and a
-- newline, empty fields; one with ';'.
write("csv", "iris.csv", "sepal_length,sepal_width,species\n5.1,3.5,setosa\n4.9,3.0,setosa\n6.2,2.9,virginica\n")
write("csv", "quoted.csv", 'id,text,score\n1,"a, b",0.5\n2,"say ""hi""",\n3,"two\nlines",-1e3\n')
write("csv", "semicolon.csv", "\xEF\xBB\xBFa;b\r\n1;2\r\n3;4\r\n")

-- Images: PNG and JPEG, gray, RGB and RGBA, tiny.
local tmp = os.tmpname()
for _, c in ipairs({1, 3, 4}) do
  local x = (nn.rand({5, 7, c}) * 255)
  for _, ext in ipairs({"png", "jpg"}) do
    if not (ext == "jpg" and c == 4) then
      nn.utils.save_img(tmp .. "." .. ext, x, {scale = false})
      local f = assert(io.open(tmp .. "." .. ext, "rb"))
      write("image", string.format("c%d.%s", c, ext), f:read("a"))
      f:close()
      os.remove(tmp .. "." .. ext)
    end
  end
end
os.remove(tmp)

-- Models: a Sequential CNN compiled with Adam after one step (optimizer
-- state), a functional graph with two inputs, a recurrent text model with
-- its tokenizer; the same files seed the safetensors reader.
nn.seed(1)
local function save(model, name)
  local path = root .. "model/" .. name
  os.execute("mkdir -p " .. root .. "model " .. root .. "safetensors")
  model:save(path)
  run("cp " .. path .. " " .. root .. "safetensors/" .. name)
end
local cnn = nn.Sequential{
  nn.Conv2D{4, 3, padding = "same", activation = "relu", input_shape = {8, 8, 1}},
  nn.MaxPooling2D{2},
  nn.BatchNormalization{},
  nn.Flatten(),
  nn.Dropout{0.5},
  nn.Dense{3, activation = "softmax"},
}
cnn:compile{optimizer = nn.optimizers.Adam{learning_rate = 1e-3}, loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
cnn:fit(nn.rand({4, 8, 8, 1}), nn.tensor({0, 1, 2, 1}), {epochs = 1, batch_size = 4, verbose = 0})
save(cnn, "cnn.lunet")

local a, b = nn.Input{shape = {6}, name = "a"}, nn.Input{shape = {6}, name = "b"}
local h = nn.Concatenate{axis = -1}({nn.Dense{4, activation = "tanh"}(a), nn.Dense{4}(b)})
local out = nn.Dense{1}(nn.LayerNormalization{}(nn.Add()({h, nn.Dense{8}(h)})))
save(nn.Model{inputs = {a, b}, outputs = out, name = "two_inputs"}, "functional.lunet")

local tok = nn.text.CharTokenizer{}
tok:adapt("hello fuzzing world")
local rnn = nn.Sequential{
  nn.Embedding{tok:vocabulary_size(), 4, input_shape = {5}},
  nn.LSTM{6, return_sequences = true},
  nn.GRU{5},
  nn.Dense{tok:vocabulary_size()},
}
rnn:set_preprocessor(tok)
save(rnn, "char_rnn.lunet")

-- Text: tokenizer configs as a model file stores them, and plain text.
write("text", "char.json", '{"kind":"CharTokenizer","vocabulary":["a","b"," ","\xC3\xA9"],"unknown":"a"}')
write("text", "words.json", '{"kind":"TextVectorization","max_tokens":20,"output_sequence_length":4,'
  .. '"standardize":"lower_and_strip_punctuation","split":"whitespace","vocabulary":["the","cat","sat"]}')
write("text", "utf8.txt", "Grüße, 世界! The cat sat on the mat.\n")
write("text", "latin1.txt", "caf\xE9 na\xEFve \xFF\xFE")
print("seed corpora written under " .. root)
