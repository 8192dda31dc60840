-- CSV files (libcsv): RFC 4180 quoting, numbers and text, empty fields,
-- delimiters, hostile files as errors naming the record, and a dataset of
-- features and labels that trains.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local U = nn.utils

local T = {}
local dir = check.tmpdir()

local function file(name, text)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function T.quoting_follows_rfc4180()
  local t = U.read_csv(file("q.csv", 'id,text,score\r\n' ..
    '1,"a, b",2.5\r\n' ..
    '2,"she said ""hi""",-1e3\r\n' ..
    '3,"two\nlines", 7 \r\n' ..
    '\r\n' ..                           -- a blank line is skipped
    '4,,\r\n'))
  check.same_table(t.columns, {"id", "text", "score"}, 0, "header")
  check.eq(t.n, 4, "rows")
  check.same_table(t.data.text, {"a, b", 'she said "hi"', "two\nlines", ""}, 0, "quoted fields")
  check.same_table(t.data.id:totable(), {1, 2, 3, 4}, 0, "a numeric column")
  local s = t.data.score:totable()
  check.eq(s[1], 2.5, "2.5")
  check.eq(s[2], -1000, "-1e3")
  check.eq(s[3], 7, "spaces around a number")
  assert(s[4] ~= s[4], "an empty field is NaN")
  check.fails(function() t:tensor({"score"}) end, "column 'score' is empty at row 4")
  check.fails(function() t:tensor({"text"}) end, "column 'text' holds text")
  check.fails(function() t:tensor({"nope"}) end, "no column 'nope' (columns: id, text, score)")
  check.same_table(t:tensor({"id"}):shape(), {4, 1}, 0, "one column as (n, 1)")
end

function T.delimiters_header_and_encoding()
  local t = U.read_csv(file("s.csv", "1;x\n2;y\n3;x\n"), {delimiter = ";", header = false})
  check.same_table(t.columns, {"1", "2"}, 0, "columns numbered without a header")
  local ids, classes = t:encode("2")
  check.same_table(classes, {"x", "y"}, 0, "classes sorted")
  check.same_table(ids:totable(), {0, 1, 0}, 0, "ids")
  check.same_table(t:tensor():totable(), {{1}, {2}, {3}}, 0, "every numeric column")
end

function T.hostile_files_are_errors()
  check.fails(function() U.read_csv(file("r.csv", "a,b\n1,2\n3\n")) end, "r.csv: record 3 has 1 fields, the first has 2")
  check.fails(function() U.read_csv(file("w.csv", "a,b\n1,2,3\n")) end, "record 2 has more than the 2 fields")
  check.fails(function() U.read_csv(file("u.csv", 'a,b\n1,"open\n')) end, "u.csv: record 2")
  check.fails(function() U.read_csv(file("m.csv", 'a,b\n1,x"y\n')) end, "m.csv: record 2")
  check.fails(function() U.read_csv(file("z.csv", "a,b\n1,\0\n")) end, "holds a NUL byte")
  check.fails(function() U.read_csv(file("e.csv", "")) end, "no records")
  check.fails(function() U.read_csv(dir .. "/none.csv") end, "none.csv: No such file")
  check.fails(function() U.read_csv(file("d.csv", "a\n"), {delimiter = "::"}) end, "the delimiter is one character")
  check.fails(function() U.read_csv(file("d.csv", "a\n"), {sep = ";"}) end, "valid: header, delimiter")
  check.fails(function() U.read_csv(file("dup.csv", "x,x,y\n1,2,3\n")) end, "names column 'x' twice")
end

-- Two Gaussian blobs in a CSV: a logistic regression learns them.
function T.a_csv_dataset_trains()
  nn.seed(3)
  local pts = nn.randn(200, 2):totable()
  local lines = {"x1,x2,kind"}
  for i, p in ipairs(pts) do
    local cls = i % 2 == 0 and "north" or "south"
    local shift = cls == "north" and 2 or -2
    lines[#lines + 1] = string.format("%.6f,%.6f,%s", p[1], p[2] + shift, cls)
  end
  local path = file("blobs.csv", table.concat(lines, "\n") .. "\n")
  local ds = U.csv_dataset(path, {label = "kind", batch_size = 16, seed = 1})
  check.same_table(ds.class_names, {"north", "south"}, 0, "label classes")
  check.same_table(ds.columns, {"x1", "x2"}, 0, "feature columns")
  local m = nn.Sequential{nn.Dense{2, activation = "softmax", input_shape = {2}}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.05}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  m:fit(ds, nil, {epochs = 10, verbose = 0})
  assert(m:evaluate(ds).accuracy > 0.95, "the blobs were not told apart")
end

-- pandas's reading where a number could silently change: a UTF-8 BOM is
-- not part of the first name, pandas's missing-value words are NaN (one
-- "NA" no longer turns a column into text), hexadecimal stays text,
-- classes of ids above 2^24 stay apart, int32 tensors from Lua are exact,
-- and an empty label or category is an error naming its row.
function T.csv_reads_as_pandas_does()
  local t = U.read_csv(file("bom.csv", "\xEF\xBB\xBFa,b\n1,2\n"))
  check.same_table(t.columns, {"a", "b"}, 0, "the BOM is not in the name")
  check.same_table(t.data.a:totable(), {1}, 0, "first column read")
  t = U.read_csv(file("na.csv", "x,y,h\n1,NA,0x10\n2,N/A,0x20\n3,4,1\n4,null,2\n5,#N/A,3\n"))
  local y = t.data.y:totable()
  assert(y[1] ~= y[1] and y[2] ~= y[2] and y[3] == 4 and y[4] ~= y[4] and y[5] ~= y[5], "NA words are NaN")
  check.same_table(t.data.h, {"0x10", "0x20", "1", "2", "3"}, 0, "hexadecimal is text")
  t = U.read_csv(file("ids.csv", "id\n16777216\n16777217\n20000001\n20000002\n16777217\n"))
  local ids, classes = t:encode("id")
  check.same_table(ids:totable(), {0, 1, 2, 3, 1}, 0, "four classes")
  check.same_table(classes, {16777216, 16777217, 20000001, 20000002}, 0, "their values as read")
  check.eq(nn.tensor({16777217, -2147483647}, "int32"):totable()[1], 16777217, "int32 from Lua is exact")
  check.eq(nn.tensor({16777217}, "int32"):item(), 16777217, "and its item")
  check.fails(function() nn.tensor({2 ^ 31}, "int32") end, "does not fit int32")
  check.fails(function() U.read_csv(file("nanc.csv", "c,d\n1,a\n,b\n2,c\n")):encode("c") end, "empty (NaN) at row 2")
  check.fails(function() U.csv_dataset(file("nanl.csv", "x,label\n1,0\n2,\n3,1\n"), {label = "label"}) end,
    "the label 'label' is empty (NaN) at row 2")
  -- a text label that is empty or a missing-value word is no class (it became
  -- class 0 and moved "cat" and "dog" to 2 and 3)
  check.fails(function() U.csv_dataset(file("nant.csv", "f,kind\n1,cat\n2,\n3,dog\n4,NA\n"), {label = "kind"}) end,
    "column 'kind' is empty ('', a missing value) at row 2")
  check.fails(function() U.read_csv(file("nant2.csv", "f,kind\n1,cat\n2,dog\n3,n/a\n")):encode("kind") end,
    "column 'kind' is empty ('n/a', a missing value) at row 3")
  check.fails(function() U.csv_dataset(file("nh.csv", "1,2,0\n3,4,1\n"), {header = false, label = 3}) end,
    "no column 3 (columns: 1, 2, 3; names are strings: '3')")
  local ids2, classes2 = U.read_csv(file("nant3.csv", "f,kind\n1,cat\n2,NAB\n3,dog\n")):encode("kind")
  check.same_table(classes2, {"NAB", "cat", "dog"}, 0, "a word that is not a missing value is a class")
  check.same_table(ids2:totable(), {1, 0, 2}, 0, "and its ids")
end

check.run(T)
