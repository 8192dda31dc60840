-- lunet.datasets: Keras-style load_data() for CIFAR-10, MNIST and
-- Fashion-MNIST, over a checksummed download cache.
--
--   local ds = require "lunet.datasets"
--   local x_train, y_train, x_test, y_test = ds.cifar10.load_data()
--
-- x is uint8 NHWC (as Keras gives it, a quarter of float32's memory; a
-- model's Rescaling layer converts each batch), y float32 class ids {N}.
-- Options (all optional):
--   url     replaces the registry URL (for MNIST-style sets: a base URL)
--   sha256  replaces the published checksum (for MNIST-style sets: a table
--           keyed by file name)
--   path    a local copy (CIFAR: the .tar.gz or its folder; MNIST-style: a
--           folder of the four IDX files); format checks apply, and sha256
--           when given
--   dir     the cache folder (default $LUNET_DATA_DIR or ~/.cache/lunet/datasets)
--   limit   keep only the first `limit` training samples
--   verbose false: no progress output; true: also say what the cache does
--   retries, backoff, stall_timeout: passed on to the downloader
--   advice  replaces the "Options: ..." line of a failed download's error
--           (a program naming its own flags for url, path and sha256)

local C = require "lunet.core"

local M = {}

local IDX_NAMES = {
  "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
}

-- One registry entry per file of a MNIST-style set.
local function idx_files(bases, sizes, md5s)
  local files = {}
  for i, name in ipairs(IDX_NAMES) do
    local urls = {}
    for _, base in ipairs(bases) do urls[#urls + 1] = base .. name end
    files[i] = { name = name, urls = urls, size = sizes[i], md5 = md5s[i] }
  end
  return files
end

-- Sources: REFERENCE.md (the datasets' official pages, TensorFlow Datasets'
-- checksum list).  MNIST and Fashion-MNIST publish MD5s only.
M.registry = {
  cifar10 = {
    name = "cifar10",
    files = {
      { name = "cifar-10-binary.tar.gz",
        urls = { "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" },
        size = 170052171,
        md5 = "c32a1d4ab5d03f1284b67883e8d87530",
        sha256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" },
    },
    classes = { "airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck" },
  },
  mnist = {
    name = "mnist",
    files = idx_files(
      { "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/" },
      { 9912422, 28881, 1648877, 4542 },
      { "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c" }),
    classes = { "0", "1", "2", "3", "4", "5", "6", "7", "8", "9" },
  },
  fashion_mnist = {
    name = "fashion_mnist",
    files = idx_files(
      { "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" },
      { 26421880, 29515, 4422102, 5148 },
      { "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310" }),
    -- Debian's dataset-fashion-mnist: the same data, gzipped again without
    -- the file name in the header (24 bytes smaller), so its own MD5s
    -- (measured from the Debian 12 package).
    local_copy = {
      dir = "/usr/share/datasets/fashion-mnist",
      md5 = {
        ["train-images-idx3-ubyte.gz"] = "cf8536b0aa1a6ac5fa3f23001093305c",
        ["train-labels-idx1-ubyte.gz"] = "10bea18fdb374794d4bb42e356e600c9",
        ["t10k-images-idx3-ubyte.gz"] = "f78720b4224f21cce2f2ccf2d7a94c9a",
        ["t10k-labels-idx1-ubyte.gz"] = "0d30e22e447f3c33dab9ed536400ac01",
      },
    },
    classes = { "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot" },
  },
}

-- ---- helpers ----

local function note(opts, fmt, ...)
  if opts.verbose then io.stderr:write(string.format(fmt, ...), "\n") end
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function is_dir(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local _, _, code = f:read(1) -- a folder opens, and reading it fails with EISDIR (21)
  f:close()
  return code == 21
end

local function cache_dir(opts)
  if opts.dir then return opts.dir end
  local env = os.getenv("LUNET_DATA_DIR")
  if env and env ~= "" then return env end
  local home = os.getenv("HOME")
  if not home or home == "" then
    error("lunet.datasets: HOME is not set: pass dir = <cache folder> or set LUNET_DATA_DIR", 0)
  end
  return home .. "/.cache/lunet/datasets"
end

-- What a file must hash to: the user's sha256 replaces the published
-- checksums (and the size, which belongs to the published file).
-- The user's sha256 for `file` (one string, or a table by file name), or nil.
local function user_sha256(file, opts)
  local user = opts.sha256
  if type(user) == "table" then user = user[file.name] end
  return user
end

local function expected(file, opts)
  local user = user_sha256(file, opts)
  if user then return { sha256 = user } end
  return { sha256 = file.sha256, md5 = file.md5, size = file.size }
end

-- true, or false and a sentence saying what differs.
local function check(path, want)
  if want.sha256 then
    local got = C.sha256(path)
    if got == want.sha256:lower() then return true end
    return false, string.format("sha256 %s, expected %s", got, want.sha256)
  elseif want.md5 then
    local got = C.md5(path)
    if got == want.md5:lower() then return true end
    return false, string.format("md5 %s, expected %s", got, want.md5)
  end
  return true
end

local function urls_for(set, file, opts)
  if not opts.url then return file.urls end
  if #set.files == 1 then return { opts.url } end
  local base = opts.url:sub(-1) == "/" and opts.url or opts.url .. "/"
  return { base .. file.name }
end

local function download_error(set, file, urls, err, dir, opts)
  if opts.advice then -- a program's own words for the same choices (a recipe's --data and --sha256)
    return string.format("lunet.datasets.%s: cannot download %s\n  %s\n  %s", set.name, file.name,
      (tostring(err):gsub("\n", "\n  ")), opts.advice)
  end
  return string.format(
    "lunet.datasets.%s: cannot download %s\n  %s\n" ..
    "  Options: url = <a mirror or local server%s>, path = <a local copy: %s>,\n" ..
    "           sha256 = <the checksum of the file at url>, dir = <the cache folder, now %s>",
    set.name, file.name, (tostring(err):gsub("\n", "\n  ")),
    #set.files > 1 and " base URL" or "",
    #set.files > 1 and "a folder holding the four IDX files" or "the .tar.gz or its folder",
    dir)
end

-- A Debian-packaged copy whose checksum matches, if any.
local function local_copy(set, file, opts)
  local lc = set.local_copy
  if not lc or opts.url or opts.sha256 then return nil end
  local path = lc.dir .. "/" .. file.name
  if not exists(path) then return nil end
  local ok, why = check(path, { md5 = lc.md5[file.name] })
  if ok then
    note(opts, "%s: using %s", set.name, path)
    return path
  end
  note(opts, "%s: ignoring %s (%s)", set.name, path, why)
  return nil
end

-- The path of a verified copy of `file`: the cache, a local copy, or a
-- fresh download.
local function fetch(set, file, opts)
  local found = local_copy(set, file, opts)
  if found then return found end
  local dir = cache_dir(opts)
  local dest = dir .. "/" .. set.name .. "/" .. file.name
  local want = expected(file, opts)
  if exists(dest) then
    local ok, why = check(dest, want)
    if ok then return dest end
    -- not removed here: the download replaces it under its lock, where
    -- another process may just have put a good copy
    note(opts, "%s: cached %s has %s; downloading it again", set.name, dest, why)
  end
  local urls = urls_for(set, file, opts)
  local mirrors = { table.unpack(urls, 2) }
  local ok, err = pcall(C.download, {
    url = urls[1], mirrors = mirrors, dest = dest,
    size = want.size, md5 = want.md5, sha256 = want.sha256,
    label = set.name .. "/" .. file.name,
    progress = opts.verbose == false and "none" or "auto",
    retries = opts.retries, backoff = opts.backoff, stall_timeout = opts.stall_timeout,
  })
  if not ok then error(download_error(set, file, urls, err, dir, opts), 0) end
  return dest
end

-- One checksum for several files would fail all but one of them (and move
-- each aside as .corrupt), so such sets take a table keyed by file name.
-- Each checksum is 64 hexadecimal digits (an empty one would check
-- nothing; a malformed one would only fail after the whole download).
local function sha256_error(set, opts)
  local sums = opts.sha256
  if sums == nil then return nil end
  if #set.files > 1 and type(sums) ~= "table" then
    return string.format("sha256 must be a table keyed by file name for the %d files of %s, " ..
                         "e.g. { [\"%s\"] = \"<hex>\", ... } (a recipe's --sha256 %s=<hex>,...); got a %s",
                         #set.files, set.name, set.files[1].name, set.files[1].name, type(sums))
  end
  if type(sums) ~= "table" then sums = { [set.files[1].name] = sums } end
  local known, names = {}, {}
  for i, file in ipairs(set.files) do known[file.name], names[i] = true, file.name end
  for name, hex in pairs(sums) do
    if not known[name] then
      return string.format("sha256 names '%s', which is not a file of %s (%s)", tostring(name), set.name,
                           table.concat(names, ", "))
    end
    if type(hex) ~= "string" or not hex:match("^" .. ("%x"):rep(64) .. "$") then
      return string.format("sha256 of %s must be 64 hexadecimal digits, got %s", name,
                           type(hex) == "string" and string.format("%q", hex) or type(hex))
    end
  end
  return nil
end

-- A local copy checked against the user's sha256, when one is given for it.
local function check_local(set, file, path, opts)
  local user = user_sha256(file, opts)
  if not user then return path end
  local ok, why = check(path, { sha256 = user })
  if not ok then error(string.format("lunet.datasets.%s: %s has %s", set.name, path, why), 0) end
  return path
end

local function check_opts(set, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument #1 to '%s.load_data' (table expected, got %s)",
                        set.name, type(opts)), 3)
  end
  -- a misspelt option was ignored (limt = 100 loaded all 60000)
  local valid = { url = true, sha256 = true, path = true, dir = true, limit = true, verbose = true, retries = true,
    backoff = true, stall_timeout = true, advice = true }
  for k in pairs(opts) do
    if not valid[k] then
      error(string.format("bad argument #1 to '%s.load_data' (unknown option '%s'; valid: advice, backoff, dir, " ..
        "limit, path, retries, sha256, stall_timeout, url, verbose)", set.name, tostring(k)), 3)
    end
  end
  local why = sha256_error(set, opts)
  if why then error(string.format("bad argument #1 to '%s.load_data' (%s)", set.name, why), 3) end
  if opts.limit ~= nil then
    local n = math.tointeger(opts.limit)
    if not n or n < 0 then
      error(string.format("bad argument #1 to '%s.load_data' (limit must be an integer >= 0, " ..
                          "got %s)", set.name, tostring(opts.limit)), 3)
    end
  end
  return opts
end

-- ---- loaders ----

local function load_cifar10(opts)
  local set = M.registry.cifar10
  opts = check_opts(set, opts)
  local path = opts.path or fetch(set, set.files[1], opts)
  if opts.path and opts.sha256 then
    if is_dir(path) then
      error(string.format("lunet.datasets.%s: sha256 checks the .tar.gz; path %s is a folder", set.name, path), 0)
    end
    check_local(set, set.files[1], path, opts)
  end
  return C.read_cifar10(path, opts.limit)
end

-- A local folder's copy of an IDX file, gzipped or not.
local function idx_in_folder(set, dir, name)
  local path = dir .. "/" .. name
  if exists(path) then return path end
  local raw = path:gsub("%.gz$", "")
  if exists(raw) then return raw end
  error(string.format("lunet.datasets.%s: %s not found (path = must be a folder holding " ..
                      "the four IDX files, gzipped or not)", set.name, path), 0)
end

local function load_idx(set, opts)
  opts = check_opts(set, opts)
  local paths = {}
  for i, file in ipairs(set.files) do
    paths[i] = opts.path and check_local(set, file, idx_in_folder(set, opts.path, file.name), opts)
      or fetch(set, file, opts)
  end
  local x_train, n_xtr = C.read_idx(paths[1], opts.limit, true)
  -- Labels are range-checked here: a bad one would only fail deep in training.
  local max_label = #set.classes - 1
  local y_train, n_ytr = C.read_idx(paths[2], opts.limit, false, max_label)
  local x_test, n_xte = C.read_idx(paths[3], nil, true)
  local y_test, n_yte = C.read_idx(paths[4], nil, false, max_label)
  if n_xtr ~= n_ytr or n_xte ~= n_yte then
    error(string.format("lunet.datasets.%s: %d training images but %d labels, %d test " ..
                        "images but %d labels (a file is from another dataset?)",
                        set.name, n_xtr, n_ytr, n_xte, n_yte), 0)
  end
  return x_train, y_train, x_test, y_test
end

M.cifar10 = M.registry.cifar10
M.mnist = M.registry.mnist
M.fashion_mnist = M.registry.fashion_mnist

function M.cifar10.load_data(opts) return load_cifar10(opts) end
function M.mnist.load_data(opts) return load_idx(M.registry.mnist, opts) end
function M.fashion_mnist.load_data(opts) return load_idx(M.registry.fashion_mnist, opts) end

-- Re-hashes a dataset's cached files.  Returns true, or false and one line
-- per file that is missing or differs.
function M.verify(name, opts)
  local set = M.registry[name]
  if not set then
    local names = {}
    for k in pairs(M.registry) do names[#names + 1] = k end
    table.sort(names)
    error(string.format("bad argument #1 to 'verify' (unknown dataset '%s'; known: %s)",
                        tostring(name), table.concat(names, ", ")), 2)
  end
  opts = opts or {}
  local why = sha256_error(set, opts)
  if why then error(string.format("bad argument #2 to 'verify' (%s)", why), 2) end
  local problems = {}
  for _, file in ipairs(set.files) do
    local path = cache_dir(opts) .. "/" .. set.name .. "/" .. file.name
    if not exists(path) and local_copy(set, file, { sha256 = opts.sha256 }) then
      -- load_data reads the Debian copy, checked against its checksums: nothing to download
    elseif not exists(path) then
      problems[#problems + 1] = path .. ": not downloaded"
    else
      local ok, why = check(path, expected(file, opts))
      if not ok then problems[#problems + 1] = path .. ": " .. why end
    end
  end
  if #problems == 0 then return true end
  return false, table.concat(problems, "\n")
end

return M
