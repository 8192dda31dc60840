-- Command-line handling shared by the recipes in recipes/.
local M = {}

local usage = [[
usage: %s [options]
  --epochs N          training epochs (default %d)
  --batch-size N      batch size (default %d)
  --backend NAME      compute backend (default: cpu; see nn.backends())
  --threads N         CPU threads (default: all cores, or $LUNET_THREADS)
  --data PATH|URL     a local copy (archive or folder) or a mirror URL of the dataset
  --sha256 HEX        the checksum the download (or --data file) must have;
                      NAME=HEX,NAME=HEX for a set of several files
  --limit N           train on the first N training samples only
  --seed N            random seed (default 1)
  --augment           random augmentation during training%s
  --no-augment        no augmentation%s
  --distributed       data-parallel training under mpirun (batch size per rank)
  --balance           with --distributed: share each global batch by the ranks' measured speeds
  --policy NAME       dtype policy: float32 (default) or mixed_bfloat16 (bfloat16 products)
  --save PATH         save the trained model (safetensors) to PATH%s
  --verbose N         0 silent, 1 progress bar, 2 one line per epoch
  -h, --help          this text]]

-- Parses `argv` into a table; defaults = {epochs =, batch_size =, augment =}.
-- extra: a recipe's own options, {{"--text", "text", "PATH", "doc", default}, ...}
-- (string values).
function M.parse(argv, defaults, prog, extra)
  local o = { epochs = defaults.epochs, batch_size = defaults.batch_size, augment = defaults.augment, seed = 1 }
  local function text()
    local lines = {}
    for _, e in ipairs(extra or {}) do
      lines[#lines + 1] = string.format("\n  %-19s %s%s", e[1] .. " " .. e[3], e[4],
        e[5] and (" (default " .. e[5] .. ")") or "")
    end
    return string.format(usage, prog, defaults.epochs, defaults.batch_size,
      defaults.augment and " (default)" or "", defaults.augment and "" or " (default)",
      defaults.report and "\n  --report DIR        write curves, confusion matrix, mistakes, Grad-CAM maps to DIR" or "")
      .. table.concat(lines)
  end
  local numeric = { ["--epochs"] = "epochs", ["--batch-size"] = "batch_size", ["--limit"] = "limit",
    ["--seed"] = "seed", ["--threads"] = "threads", ["--verbose"] = "verbose" }
  local strings = { ["--backend"] = "backend", ["--data"] = "data", ["--sha256"] = "sha256", ["--save"] = "save",
    ["--policy"] = "policy" }
  if defaults.report then strings["--report"] = "report" end
  for _, e in ipairs(extra or {}) do
    strings[e[1]] = e[2]
    o[e[2]] = e[5]
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
      return argv[i]
    end
    if key == "-h" or key == "--help" then
      print(text())
      os.exit(0)
    elseif numeric[key] then
      local v = math.tointeger(tonumber(value()))
      if not v or v < 0 then error(string.format("%s needs a non-negative integer", key), 0) end
      o[numeric[key]] = v
    elseif strings[key] then
      o[strings[key]] = value()
    elseif key == "--augment" then
      o.augment = true
    elseif key == "--no-augment" then
      o.augment = false
    elseif key == "--distributed" then
      o.distributed = true
    elseif key == "--balance" then
      o.balance = true
    else
      error(string.format("unknown option '%s'\n%s", a, text()), 0)
    end
    i = i + 1
  end
  return o
end

-- The dataset options for load_data from the parsed command line.
function M.data_options(o)
  local d = { limit = o.limit, verbose = true }
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
    return tostring(e)
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
  if o.save then model:save(o.save) end
  if o.report and main then
    require("lunet.report").write(model, history, x_test, y_test, o.report, { class_names = o.class_names })
  end
  if not main then return result end
  print(string.format("test accuracy: %.4f", result.accuracy))
  return result
end

return M
