-- The recipes' command line (lunet.recipe): every value checked before any
-- data loads, options offered only where the recipe uses them, and the
-- recipes' own options failing at once rather than after training.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local recipe = require "lunet.recipe"

local T = {}

local DATASET = { epochs = 2, batch_size = 32, augment = false, report = true, dataset = "folder" }
local TEXT = { epochs = 4, batch_size = 32, limit = "train on the first N windows only" }
local function parse(argv, defaults, extra) return recipe.parse(argv, defaults, "r.lua", extra) end

function T.values_are_checked()
  local o = parse({ "--epochs", "3", "--batch-size=16", "--verbose", "2", "--limit", "100", "--seed", "0" }, DATASET)
  check.eq(o.epochs, 3)
  check.eq(o.batch_size, 16)
  check.eq(o.verbose, 2)
  check.eq(o.limit, 100)
  check.eq(o.seed, 0)
  check.eq(o.augment, false, "the default")
  check.fails(function() parse({ "--epochs", "0" }, DATASET) end, "--epochs needs an integer of at least 1, got '0'")
  check.fails(function() parse({ "--batch-size", "-4" }, DATASET) end, "--batch-size needs an integer of at least 1")
  check.fails(function() parse({ "--verbose", "7" }, DATASET) end, "--verbose needs an integer from 0 to 2, got '7'")
  check.fails(function() parse({ "--epochs", "abc" }, DATASET) end, "got 'abc'")
  check.fails(function() parse({ "--limit", "0" }, DATASET) end, "--limit needs an integer of at least 1")
end

function T.flags_take_no_value()
  check.eq(parse({ "--augment" }, DATASET).augment, true)
  check.eq(parse({ "--augment", "--no-augment" }, DATASET).augment, false)
  -- --augment=no turned augmentation on
  check.fails(function() parse({ "--augment=no" }, DATASET) end,
    "--augment takes no value, got '--augment=no' (--no-augment turns it off)")
  check.fails(function() parse({ "--distributed=false" }, DATASET) end, "--distributed takes no value")
end

function T.a_value_is_not_the_next_option()
  -- --save --epochs 3 saved the model to a file named --epochs
  check.fails(function() parse({ "--save", "--epochs", "3" }, DATASET) end,
    "--save needs a value, got the option '--epochs' (write --save=--epochs for a value that starts with --)")
  check.fails(function() parse({ "--report", "--epochs" }, DATASET) end, "--report needs a value, got the option")
  check.fails(function() parse({ "--text", "--epochs" }, TEXT, { { "--text", "text", "PATH", "a file" } }) end,
    "--text needs a value, got the option '--epochs'")
  check.eq(parse({ "--text=--odd" }, TEXT, { { "--text", "text", "PATH", "a file" } }).text, "--odd", "inline")
end

function T.options_only_where_they_apply()
  -- a text recipe has no dataset to download and nothing to augment
  for _, a in ipairs{ "--data", "--sha256", "--augment", "--no-augment", "--report" } do
    check.fails(function() parse({ a, "x" }, TEXT) end, "unknown option '" .. a .. "'")
  end
  check.fails(function() parse({ "--limit", "5" }, { epochs = 1, batch_size = 1, augment = true, limit = false }) end,
    "unknown option '--limit'")
  local o = parse({ "--data", "/d", "--sha256", "ab" }, DATASET)
  check.eq(o.data, "/d")
  check.eq(o.sha256, "ab")
end

function T.save_is_checked_before_training()
  check.fails(function() parse({ "--save", "/nonexistent-folder/m.safetensors" }, DATASET) end,
    "--save /nonexistent-folder/m.safetensors: cannot write there")
  local path = os.tmpname()
  local f = io.open(path, "w")
  f:write("keep")
  f:close()
  parse({ "--save", path }, DATASET)
  f = io.open(path, "r")
  check.eq(f:read("a"), "keep", "a file already there is left as it was")
  f:close()
  os.remove(path)
  local fresh = path .. ".new"
  parse({ "--save", fresh }, DATASET)
  check.eq(io.open(fresh, "r"), nil, "no empty file left behind")
end

function T.own_options_as_numbers()
  check.eq(recipe.number({ t = "0.5" }, "t", 0), 0.5)
  check.eq(recipe.integer({ n = "8" }, "n", 2), 8)
  check.fails(function() recipe.number({ temperature = "abc" }, "temperature", 0) end,
    "--temperature needs a number of at least 0, got 'abc'")
  check.fails(function() recipe.number({ temperature = "-1" }, "temperature", 0) end, "got '-1'")
  check.fails(function() recipe.number({ t = "nan" }, "t", 0) end, "got 'nan'")
  check.fails(function() recipe.number({ split = "1" }, "split", 0, 0.9) end, "--split needs a number from 0 to 0.9")
  check.fails(function() recipe.integer({ context = "1" }, "context", 2) end, "--context needs an integer of at least 2, got '1'")
  -- a recipe's option is named by its flag (image_folder's --validation-split was "--split")
  local o = parse({ "--validation-split", "1.5" }, TEXT, { { "--validation-split", "split", "F", "held out", "0.2" } })
  check.fails(function() recipe.number(o, "split", 0, 0.9) end, "--validation-split needs a number from 0 to 0.9, got '1.5'")
end

-- The recipes themselves: a bad temperature fails before any training (it
-- failed after ten epochs), and --help lists only what the recipe takes.
function T.recipes_fail_before_training()
  local lunet, src = arg[-1], here .. "../../recipes/"
  local function run(args)
    local p = io.popen(string.format("%s %s 2>&1; echo \"status $?\"", lunet, args))
    local out = p:read("a")
    p:close()
    return out
  end
  local out = run(src .. "char_rnn.lua --temperature abc")
  assert(out:find("char_rnn.lua: --temperature needs a number of at least 0, got 'abc'", 1, true), out)
  assert(out:find("status 1", 1, true) and not out:find("Epoch", 1, true), out)
  out = run(src .. "tiny_gpt.lua --text " .. here .. "check.lua --prompt '\xe2\x98\x83'")
  assert(out:find("--prompt:", 1, true) and not out:find("Epoch", 1, true), out)
  -- a misspelt class lists the files there (it advised installing fortunes)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir " .. dir)
  for _, name in ipairs{ "cats", "dogs" } do
    local f = io.open(dir .. "/" .. name, "w")
    f:write("a fortune\n%\nanother\n")
    f:close()
  end
  out = run(src .. "text_classify.lua --dir " .. dir .. " --classes cats,dgs")
  os.execute("rm -r " .. dir)
  assert(out:find("--classes: no fortune file 'dgs' in " .. dir .. "; there are: cats, dogs", 1, true), out)
  out = run(src .. "text_classify.lua --classes computers,computers")
  assert(out:find("--classes names 'computers' twice", 1, true), out)
  out = run(src .. "char_rnn.lua --help")
  assert(out:find("--limit N           train on the first N windows only", 1, true), out)
  assert(not out:find("--augment", 1, true) and not out:find("--data", 1, true), out)
  out = run(src .. "fashion_mnist_cnn.lua --help")
  assert(out:find("--data PATH|URL", 1, true) and out:find("--no-augment", 1, true) and out:find("--report", 1, true), out)
  assert(out:find("a local copy (a folder holding its files, gzipped or not)", 1, true), out)
  out = run(src .. "cifar_cnn.lua --help")
  assert(out:find("a local copy (the archive, e.g. the .tar.gz)", 1, true), out)
  -- a library's error reaches the user without a position in Lua ("fashion_mnist_cnn.lua:13:")
  out = run(src .. "fashion_mnist_cnn.lua --sha256 abc --epochs 1")
  assert(out:find("fashion_mnist_cnn.lua: bad argument #1 to 'fashion_mnist.load_data' (sha256 must be a table", 1, true)
    and not out:find("%.lua:%d+:") and out:find("status 1", 1, true), out)
end

-- A failed download names the recipe's flags (it named load_data's table
-- fields url, path and sha256, which a recipe's user cannot pass).
function T.download_errors_name_the_flags()
  local nn = require "lunet"
  local d = recipe.data_options({ data = "http://127.0.0.1:1/cifar-10-binary.tar.gz" })
  d.retries, d.verbose, d.dir = 0, false, check.tmpdir()
  local ok, err = pcall(nn.datasets.cifar10.load_data, d)
  assert(not ok, "no server listens on port 1")
  err = tostring(err)
  assert(err:find("cannot download cifar-10-binary.tar.gz", 1, true), err)
  assert(err:find("Options: --data <a mirror URL or a local copy>, --sha256", 1, true), err)
  assert(not err:find("url = ", 1, true), err)
end

check.run(T)
