-- Command-line handling shared by the recipes in recipes/.
local M = {}

-- Each option: its line of --help, shown (and taken) only by the recipes
-- it applies to.
local usage_head = [[
usage: %s [options]
  --epochs N          training epochs (default %d)
  --batch-size N      batch size (default %d)
  --backend NAME      compute backend (default: cpu; see nn.backends())
  --threads N         CPU threads (default: all cores, or $LUNET_THREADS)]]
local usage_dataset = [[
  --data PATH|URL     a local copy (%s) or a mirror URL of the dataset
  --sha256 HEX        the checksum the download (or --data file) must have;
                      NAME=HEX,NAME=HEX for a set of several files]]
local usage_tail = [[
  --seed N            random seed (default 1)
  --distributed       data-parallel training under mpirun (batch size per rank)
  --balance           with --distributed: share each global batch by the ranks' measured speeds
  --policy NAME       dtype policy: float32 (default) or mixed_bfloat16 (bfloat16 products)
  --save PATH         save the trained model (safetensors) to PATH%s
  --verbose N         0 silent, 1 progress bar (default), 2 one line per epoch
  -h, --help          this text]]

-- Whether a file can be written at `path`, without changing one that is
-- there (nil and the reason when not).
local function writable(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
    local w, err = io.open(path, "r+b")
    if w then w:close() end
    return w ~= nil, err
  end
  local w, err = io.open(path, "wb")
  if not w then return nil, err end
  w:close()
  os.remove(path)
  return true
end

-- The command-line flag of each recipe option's key ("split" is
-- --validation-split), for the messages about its value.
local flag_of = {}

-- Parses `argv` into a table.  defaults: epochs, batch_size; augment (true
-- or false: the recipe augments, --augment / --no-augment are offered);
-- dataset (--data and --sha256: "archive" for a one-file set, "folder"
-- for a set of several files, what its local copy is); limit (the text of --limit, or
-- false when the recipe has none); report (true: --report DIR).
-- extra: a recipe's own options, {{"--text", "text", "PATH", "doc", default}, ...}
-- (string values).  Every value is checked here, before any data loads.
function M.parse(argv, defaults, prog, extra)
  local o = { epochs = defaults.epochs, batch_size = defaults.batch_size, augment = defaults.augment, seed = 1 }
  local limit_doc = defaults.limit == nil and "train on the first N training samples only" or defaults.limit
  local function text()
    local lines = { string.format(usage_head, prog, defaults.epochs, defaults.batch_size) }
    if defaults.dataset then
      lines[#lines + 1] = string.format(usage_dataset, defaults.dataset == "folder"
        and "a folder holding its files, gzipped or not" or "the archive, e.g. the .tar.gz")
    end
    if limit_doc then lines[#lines + 1] = string.format("  %-19s %s", "--limit N", limit_doc) end
    if defaults.augment ~= nil then
      lines[#lines + 1] = string.format("  --augment           random augmentation during training%s\n" ..
        "  --no-augment        no augmentation%s", defaults.augment and " (default)" or "",
        defaults.augment and "" or " (default)")
    end
    lines[#lines + 1] = string.format(usage_tail, defaults.report and
      "\n  --report DIR        write curves, confusion matrix, mistakes, Grad-CAM maps to DIR" or "")
    for _, e in ipairs(extra or {}) do
      lines[#lines + 1] = string.format("  %-19s %s%s", e[1] .. " " .. e[3], e[4],
        e[5] and (" (default " .. e[5] .. ")") or "")
    end
    return table.concat(lines, "\n")
  end
  -- integers: the option's name in o and its smallest and largest values
  local numeric = { ["--epochs"] = { "epochs", 1 }, ["--batch-size"] = { "batch_size", 1 },
    ["--seed"] = { "seed", 0 }, ["--threads"] = { "threads", 1 }, ["--verbose"] = { "verbose", 0, 2 } }
  if limit_doc then numeric["--limit"] = { "limit", 1 } end
  local strings = { ["--backend"] = "backend", ["--save"] = "save", ["--policy"] = "policy" }
  if defaults.dataset then strings["--data"], strings["--sha256"] = "data", "sha256" end
  if defaults.report then strings["--report"] = "report" end
  for _, e in ipairs(extra or {}) do
    strings[e[1]] = e[2]
    o[e[2]] = e[5]
    flag_of[e[2]] = e[1]
  end
  local flags = { ["--distributed"] = { "distributed", true }, ["--balance"] = { "balance", true } }
  if defaults.augment ~= nil then
    flags["--augment"], flags["--no-augment"] = { "augment", true }, { "augment", false }
  end
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local key, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    key = key or a
    local function value()
      if inline then return inline end
      i = i + 1
      if argv[i] == nil then error(string.format("%s needs a value\n%s", key, text()), 0) end
      if argv[i]:match("^%-%-") then -- --save --epochs 3 saved to a file named --epochs
        error(string.format("%s needs a value, got the option '%s' (write %s=%s for a value that starts " ..
          "with --)", key, argv[i], key, argv[i]), 0)
      end
      return argv[i]
    end
    if key == "-h" or key == "--help" then
      print(text())
      os.exit(0)
    elseif numeric[key] then
      local name, lo, hi = table.unpack(numeric[key])
      local given = value()
      local v = math.tointeger(tonumber(given))
      if not v or v < lo or (hi and v > hi) then
        error(string.format("%s needs an integer %s, got '%s'", key,
          hi and string.format("from %d to %d", lo, hi) or string.format("of at least %d", lo), given), 0)
      end
      o[name] = v
    elseif strings[key] then
      o[strings[key]] = value()
    elseif flags[key] then
      if inline then -- --augment=no switched augmentation on
        error(string.format("%s takes no value, got '%s'%s", key, a,
          key == "--augment" and " (--no-augment turns it off)" or ""), 0)
      end
      o[flags[key][1]] = flags[key][2]
    else
      error(string.format("unknown option '%s'\n%s", a, text()), 0)
    end
    i = i + 1
  end
  -- a model trained for an hour and then not saved is an hour lost
  if o.save then
    local ok, err = writable(o.save)
    if not ok then error(string.format("--save %s: cannot write there (%s)", o.save, tostring(err)), 0) end
  end
  return o
end

-- A recipe's own option as a number (its text in o[name]) in [lo, hi].
function M.number(o, name, lo, hi)
  local v = tonumber(o[name])
  if not v or v ~= v or (lo and v < lo) or (hi and v > hi) then
    error(string.format("%s needs a number%s, got '%s'", flag_of[name] or "--" .. name, lo and hi and string.format(" from %g to %g", lo, hi)
      or lo and string.format(" of at least %g", lo) or "", tostring(o[name])), 0)
  end
  return v
end

-- A recipe's own option as an integer of at least lo.
function M.integer(o, name, lo)
  local v = math.tointeger(tonumber(o[name]))
  if not v or v < lo then
    error(string.format("%s needs an integer of at least %d, got '%s'", flag_of[name] or "--" .. name, lo,
      tostring(o[name])), 0)
  end
  return v
end

-- The dataset options for load_data from the parsed command line.
function M.data_options(o)
  local d = { limit = o.limit, verbose = true,
    advice = "Options: --data <a mirror URL or a local copy>, --sha256 <the checksum of the file at --data>; " ..
      "LUNET_DATA_DIR=<the cache folder>" }
  if o.data then
    if o.data:match("^%a[%w+.-]*://") then d.url = o.data else d.path = o.data end
  end
  d.sha256 = o.sha256
  if o.sha256 and o.sha256:find("=", 1, true) then -- NAME=HEX,NAME=HEX: one per file (MNIST-style sets)
    d.sha256 = {}
    for item in o.sha256:gmatch("[^,]+") do
      local name, hex = item:match("^%s*(.-)%s*=%s*(.-)%s*$")
      d.sha256[name] = hex
    end
  end
  return d
end

-- Runs a recipe's body; an error (a failed download, a bad option) is
-- reported as one message and exit status 1, without a Lua traceback
-- (LUNET_TRACEBACK=1 shows it).
function M.main(prog, body)
  local ok, err = xpcall(body, function(e)
    if os.getenv("LUNET_TRACEBACK") == "1" then return debug.traceback(tostring(e), 2) end
    -- the message alone: a position in the recipe's or lunet's Lua ("cifar_cnn.lua:13:") says nothing to its user
    return (tostring(e):gsub("^[^:\n]*%.lua:%d+: ", ""))
  end)
  if not ok then
    local dist = require "lunet.distributed"
    if dist.active and dist.size > 1 then dist.abort(prog .. ": " .. err) end -- ends every rank
    io.stderr:write(prog, ": ", err, "\n")
    os.exit(1)
  end
end

-- Seed, backend and threads from the command line.
function M.setup(nn, o)
  nn.seed(o.seed)
  if o.balance and not o.distributed then error("--balance goes with --distributed", 0) end
  if o.distributed then
    nn.distributed.init({ threads = o.threads })
    nn.distributed.balance = o.balance == true -- every fit of the script
    -- every fit and evaluate is now data-parallel; rank 0 alone talks
    if nn.distributed.rank ~= 0 then _G.print = function() end end
  end
  if o.backend then nn.use(o.backend) end
  if o.threads then nn.threads(o.threads) end
  if o.policy then nn.mixed_precision.set_global_policy(o.policy) end -- before the model is made
end

-- Summary, fit with the test set as validation, the final "test accuracy:"
-- line, the checkpoint when --save was given and the pictures when
-- --report was (o.class_names names the classes).
function M.train(model, x_train, y_train, x_test, y_test, augment, o)
  local main = not o.distributed or require("lunet.distributed").rank == 0 -- rank 0 alone talks and writes
  if main then model:summary() end
  local history = model:fit(x_train, y_train, { epochs = o.epochs, batch_size = o.batch_size,
    validation_data = { x_test, y_test }, augment = augment, verbose = o.verbose, distributed = o.distributed })
  local result = model:evaluate(x_test, y_test)
  model.class_names = model.class_names or o.class_names -- saved with it: lunet serve and classify show them
  -- the result first: a save or report that fails does not hide it
  if main then print(string.format("test accuracy: %.4f", result.accuracy)) end
  if o.save then model:save(o.save) end
  if o.report and main then
    require("lunet.report").write(model, history, x_test, y_test, o.report, { class_names = o.class_names })
  end
  return result
end

return M
