-- lunet.datasets end to end: downloads from tests/data/http_server.py on the
-- loopback, the cache (re-hash, re-download), path=, limit=, errors, verify().
--
--   lunet tests/data/test_datasets.lua [WORKDIR]
--
-- WORKDIR (default: a fresh folder under /tmp) receives the fixtures, the
-- server's folder and the cache.  Exits non-zero on the first failure.

local ds = require "lunet.datasets"
local C = require "lunet.core"

-- The two lines that know the tensor binding's API (used on small tensors).
local function shape_of(t) return t:shape() end                                 -- {d1, ...}
local function value_at(t, flat) return t:reshape(-1):totable()[flat + 1] end   -- from 0

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local work = arg and arg[1] or os.tmpname() .. ".d"
-- Start clean, removing only what this test creates.
os.execute(string.format("rm -rf '%s/srv' '%s/cache' '%s/cache2' '%s/cache3' '%s/cache4' " ..
                         "'%s/cache5' '%s/cache6' '%s/cache7' '%s/badlabels' '%s/empty-cache' && mkdir -p '%s/srv' " ..
                         "'%s/badlabels'",
                         work, work, work, work, work, work, work, work, work, work, work, work))

local failures = 0
local function check(cond, fmt, ...)
  if not cond then
    failures = failures + 1
    io.stderr:write("FAIL: ", string.format(fmt, ...), "\n")
  end
end

local function same_shape(t, want, what)
  local got = shape_of(t)
  local ok = #got == #want
  for i = 1, #want do ok = ok and got[i] == want[i] end
  check(ok, "%s: shape {%s}, expected {%s}", what, table.concat(got, ","), table.concat(want, ","))
end

local function expect_error(fn, patterns, what)
  local ok, err = pcall(fn)
  check(not ok, "%s: no error", what)
  if ok then return end
  for _, p in ipairs(patterns) do
    check(tostring(err):find(p, 1, true), "%s: error lacks %q:\n%s", what, p, tostring(err))
  end
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

local function shell(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("l")
  p:close()
  return out
end

-- ---- fixtures ----

local PER_BATCH = 4
local cifar_sha = shell(string.format("python3 '%s/make_cifar_fixture.py' '%s/srv/cifar-10-binary.tar.gz' %d",
                                      here, work, PER_BATCH))

-- MNIST-style files, uncompressed under the .gz names (gzopen reads both):
-- 6 training and 2 test images; pixel i of image n is (n * 31 + i) % 256.
local function idx_images(n)
  local parts = { string.pack(">I4I4I4I4", 0x803, n, 28, 28) }
  for k = 0, n - 1 do
    local row = {}
    for i = 0, 783 do row[#row + 1] = string.char((k * 31 + i) % 256) end
    parts[#parts + 1] = table.concat(row)
  end
  return table.concat(parts)
end
local function idx_labels(labels)
  return string.pack(">I4I4", 0x801, #labels) .. string.char(table.unpack(labels))
end
write(work .. "/srv/train-images-idx3-ubyte.gz", idx_images(6))
write(work .. "/srv/train-labels-idx1-ubyte.gz", idx_labels { 5, 0, 4, 1, 9, 2 })
write(work .. "/srv/t10k-images-idx3-ubyte.gz", idx_images(2))
write(work .. "/srv/t10k-labels-idx1-ubyte.gz", idx_labels { 7, 2 })
local mnist_sha = {}
for _, f in ipairs(ds.mnist.files) do mnist_sha[f.name] = C.sha256(work .. "/srv/" .. f.name) end

-- ---- the server ----

local server = assert(io.popen(string.format("python3 '%s/http_server.py' '%s/srv' --timeout 60",
                                             here, work)))
local port = server:read("l")
local base = "http://127.0.0.1:" .. port
local cache = work .. "/cache"

-- ---- CIFAR-10 ----

local curl = base .. "/ok/c1/cifar-10-binary.tar.gz"
local xtr, ytr, xte, yte = ds.cifar10.load_data { url = curl, sha256 = cifar_sha, dir = cache,
                                                  verbose = false }
same_shape(xtr, { 5 * PER_BATCH, 32, 32, 3 }, "cifar x_train")
same_shape(ytr, { 5 * PER_BATCH }, "cifar y_train")
same_shape(xte, { PER_BATCH, 32, 32, 3 }, "cifar x_test")
same_shape(yte, { PER_BATCH }, "cifar y_test")
-- images as Keras returns them: uint8 (a quarter of float32's memory); labels float32 ids
check(xtr:dtype() == "uint8" and xte:dtype() == "uint8", "cifar images are uint8, got %s", xtr:dtype())
check(ytr:dtype() == "float32", "cifar labels are float32, got %s", ytr:dtype())
-- The test batch holds the classes in turn; class 0's colour is (40, 90, 20)
-- +-24, and row 10 is outside its bright band (rows 0..2).
for n = 0, PER_BATCH - 1 do check(value_at(yte, n) == n % 10, "y_test[%d]", n) end
for c, base_colour in ipairs { 40, 90, 20 } do
  local v = value_at(xte, (10 * 32 + 5) * 3 + (c - 1))
  check(math.abs(v - base_colour) <= 24, "x_test[0,10,5,%d] = %s, expected %d+-24", c - 1, v,
        base_colour)
end
local cached = cache .. "/cifar10/cifar-10-binary.tar.gz"
check(C.sha256(cached) == cifar_sha, "cached file's sha256")

-- A verified cache is used without the network.
xtr = ds.cifar10.load_data { url = base .. "/404/c2/cifar-10-binary.tar.gz", sha256 = cifar_sha,
                             dir = cache, verbose = false }
same_shape(xtr, { 5 * PER_BATCH, 32, 32, 3 }, "cifar from cache")

-- A damaged cache is detected by verify() and downloaded again by load_data.
write(cached, "garbage")
local ok, report = ds.verify("cifar10", { dir = cache, sha256 = cifar_sha })
check(ok == false and report:find(cached, 1, true) and report:find("expected " .. cifar_sha, 1, true),
      "verify of a damaged cache: %s", tostring(report))
ds.cifar10.load_data { url = base .. "/ok/c3/cifar-10-binary.tar.gz", sha256 = cifar_sha,
                       dir = cache, verbose = false }
check(C.sha256(cached) == cifar_sha, "re-downloaded after damage")
check(ds.verify("cifar10", { dir = cache, sha256 = cifar_sha }) == true, "verify after repair")

-- limit keeps the first training samples; path skips the checksum.
xtr, ytr, xte = ds.cifar10.load_data { path = work .. "/srv/cifar-10-binary.tar.gz", limit = 3 }
same_shape(xtr, { 3, 32, 32, 3 }, "cifar limit x")
same_shape(ytr, { 3 }, "cifar limit y")
same_shape(xte, { PER_BATCH, 32, 32, 3 }, "cifar limit leaves the test set")

-- Errors name the URL, the cause and the options.
expect_error(function()
  ds.cifar10.load_data { url = base .. "/ok/c4/cifar-10-binary.tar.gz", sha256 = string.rep("0", 64),
                         dir = work .. "/cache2", verbose = false }
end, { "checksum mismatch", "expected sha256 " .. string.rep("0", 64), "got " .. cifar_sha,
       "url =", "path =", "sha256 =", "dir =" }, "wrong sha256")
expect_error(function()
  ds.cifar10.load_data { url = "http://127.0.0.1:1/cifar-10-binary.tar.gz", dir = work .. "/cache3",
                         retries = 0, verbose = false }
end, { "http://127.0.0.1:1/cifar-10-binary.tar.gz", "Failed to connect", "url =", "path =",
       "sha256 =", "dir = <the cache folder, now " .. work .. "/cache3>" }, "offline")
expect_error(function()
  ds.cifar10.load_data { url = base .. "/404/c5/cifar-10-binary.tar.gz", sha256 = cifar_sha,
                         dir = work .. "/cache4", verbose = false }
end, { base .. "/404/c5/cifar-10-binary.tar.gz: HTTP 404 (Not Found)" }, "404")

-- ---- MNIST-style ----

local mx, my, mxt, myt = ds.mnist.load_data { url = base .. "/ok/m1", sha256 = mnist_sha,
                                              dir = cache, verbose = false }
same_shape(mx, { 6, 28, 28, 1 }, "mnist x_train")
same_shape(my, { 6 }, "mnist y_train")
same_shape(mxt, { 2, 28, 28, 1 }, "mnist x_test")
same_shape(myt, { 2 }, "mnist y_test")
check(mx:dtype() == "uint8" and my:dtype() == "float32", "mnist: uint8 images, float32 labels")
for n, y in ipairs { 5, 0, 4, 1, 9, 2 } do check(value_at(my, n - 1) == y, "mnist y[%d]", n - 1) end
check(value_at(mx, 2 * 784 + 100) == (2 * 31 + 100) % 256, "mnist x[2, 3, 16, 0]")
check(value_at(mxt, 784 + 783) == (31 + 783) % 256, "mnist x_test[1, 27, 27, 0]")
mx = ds.mnist.load_data { path = work .. "/srv", limit = 4 }
same_shape(mx, { 4, 28, 28, 1 }, "mnist path + limit")

-- One sha256 string for four files is refused before anything is fetched.
expect_error(function()
  ds.mnist.load_data { url = base .. "/ok/m2", sha256 = mnist_sha["train-images-idx3-ubyte.gz"],
                       dir = work .. "/cache5", verbose = false }
end, { "bad argument #1 to 'mnist.load_data' (sha256 must be a table keyed by file name for " ..
       "the 4 files of mnist", "got a string)" }, "mnist sha256 string")
check(shell(string.format("test -e '%s/cache5' && echo yes || echo no", work)) == "no",
      "mnist sha256 string: the cache was touched")
expect_error(function() ds.verify("mnist", { dir = cache, sha256 = "00" }) end,
             { "bad argument #2 to 'verify' (sha256 must be a table keyed by file name" },
             "verify sha256 string")

-- A checksum is 64 hex digits, checked before anything is fetched (an
-- empty one checked nothing; a malformed one failed after the download),
-- and it names files of the set.
local zeros = string.rep("0", 64)
for _, case in ipairs {
  { { sha256 = "" }, 'sha256 of cifar-10-binary.tar.gz must be 64 hexadecimal digits, got ""' },
  { { sha256 = "c4a38c50" }, 'sha256 of cifar-10-binary.tar.gz must be 64 hexadecimal digits, got "c4a38c50"' },
  { { sha256 = zeros:sub(2) .. "g" }, "sha256 of cifar-10-binary.tar.gz must be 64 hexadecimal digits" },
} do
  case[1].url, case[1].dir, case[1].verbose = base .. "/ok/c6/cifar-10-binary.tar.gz", work .. "/cache6", false
  expect_error(function() ds.cifar10.load_data(case[1]) end, { "bad argument #1 to 'cifar10.load_data' (" .. case[2] },
               "cifar sha256 " .. case[1].sha256)
end
-- a misspelt option is an error (limt = 100 loaded every sample)
expect_error(function() ds.mnist.load_data { url = base .. "/ok/m6", dir = work .. "/cache6", limt = 100 } end,
             { "bad argument #1 to 'mnist.load_data' (unknown option 'limt'; valid: advice, backoff, dir, limit," },
             "misspelt option")
expect_error(function()
  ds.mnist.load_data { url = base .. "/ok/m6", dir = work .. "/cache6", sha256 = { ["train-images.gz"] = zeros } }
end, { "sha256 names 'train-images.gz', which is not a file of mnist (train-images-idx3-ubyte.gz, " }, "mnist name")
check(shell(string.format("test -e '%s/cache6' && echo yes || echo no", work)) == "no",
      "bad sha256: the cache was touched")

-- The downloader's numbers are checked; a fraction of a second of
-- stall_timeout rounds up (0.5 truncated to 0, which libcurl takes as no
-- limit: a stalled server hung the download).
expect_error(function()
  ds.cifar10.load_data { url = base .. "/ok/c7/cifar-10-binary.tar.gz", dir = work .. "/cache7", stall_timeout = 0 }
end, { "field 'stall_timeout' must be 0.001 to 86400 seconds, got 0" }, "stall_timeout 0")
expect_error(function()
  ds.cifar10.load_data { url = base .. "/ok/c7/cifar-10-binary.tar.gz", dir = work .. "/cache7", retries = -1 }
end, { "field 'retries' must be 0 to 1000, got -1" }, "retries -1")
local t0 = os.time()
local stalled, why = pcall(C.download, { url = base .. "/stall/s1/cifar-10-binary.tar.gz",
  dest = work .. "/cache7/stall.bin", stall_timeout = 0.5, stall_speed = 1000, retries = 0, progress = "none" })
check(not stalled and tostring(why):find("/stall/s1/", 1, true) and os.time() - t0 <= 10,
      "stall_timeout = 0.5 ends a stalled download (after %d s): %s", os.time() - t0, tostring(why))

-- With path =, a sha256 given checks the local copy too (it was ignored).
local tgz = work .. "/srv/cifar-10-binary.tar.gz"
expect_error(function() ds.cifar10.load_data { path = tgz, sha256 = zeros } end,
             { "lunet.datasets.cifar10: " .. tgz .. " has sha256 " .. cifar_sha .. ", expected " .. zeros },
             "cifar path + wrong sha256")
same_shape(ds.cifar10.load_data { path = tgz, sha256 = cifar_sha, limit = 3 }, { 3, 32, 32, 3 }, "cifar path + sha256")
expect_error(function() ds.cifar10.load_data { path = work .. "/srv", sha256 = cifar_sha } end,
             { "sha256 checks the .tar.gz; path " .. work .. "/srv is a folder" }, "cifar folder + sha256")
local wrong = {}
for k, v in pairs(mnist_sha) do wrong[k] = v end
wrong["t10k-labels-idx1-ubyte.gz"] = zeros
expect_error(function() ds.mnist.load_data { path = work .. "/srv", sha256 = wrong } end,
             { work .. "/srv/t10k-labels-idx1-ubyte.gz has sha256 " }, "mnist path + a wrong sha256")
same_shape(ds.mnist.load_data { path = work .. "/srv", sha256 = mnist_sha }, { 6, 28, 28, 1 }, "mnist path + sha256")
-- a recipe's --sha256 NAME=HEX,NAME=HEX is that table
local recipe = require "lunet.recipe"
local opts = recipe.data_options { data = work .. "/srv",
  sha256 = "train-images-idx3-ubyte.gz=" .. zeros .. ", t10k-labels-idx1-ubyte.gz = " .. cifar_sha }
check(opts.sha256["train-images-idx3-ubyte.gz"] == zeros and opts.sha256["t10k-labels-idx1-ubyte.gz"] == cifar_sha,
      "recipe --sha256 NAME=HEX,...")
check(recipe.data_options { sha256 = cifar_sha }.sha256 == cifar_sha, "recipe --sha256 HEX")

-- A label outside 0..9 is caught when loading, naming file, record and value.
for _, name in ipairs { "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz" } do
  local src = assert(io.open(work .. "/srv/" .. name, "rb"))
  write(work .. "/badlabels/" .. name, src:read("a"))
  src:close()
end
write(work .. "/badlabels/train-labels-idx1-ubyte.gz", idx_labels { 5, 0, 4, 1, 200, 2 })
expect_error(function() ds.mnist.load_data { path = work .. "/badlabels" } end,
             { work .. "/badlabels/train-labels-idx1-ubyte.gz: label 200 at record 4 is " ..
               "outside 0..9 (the file is corrupt; delete it or pass path=)" }, "bad label")

-- Debian's Fashion-MNIST copy, when installed, needs no network.
local debian = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
local f = io.open(debian, "rb")
if f then
  f:close()
  local fx, fy, fxt, fyt = ds.fashion_mnist.load_data { dir = work .. "/empty-cache", limit = 10,
                                                       verbose = false }
  same_shape(fx, { 10, 28, 28, 1 }, "fashion x_train")
  same_shape(fy, { 10 }, "fashion y_train")
  same_shape(fxt, { 10000, 28, 28, 1 }, "fashion x_test")
  same_shape(fyt, { 10000 }, "fashion y_test")
  -- The first training label of Fashion-MNIST is 9 (Ankle boot).
  check(value_at(fy, 0) == 9, "fashion y_train[0] = %s", value_at(fy, 0))
  -- verify counts the Debian copy load_data reads (it said "not downloaded")
  check(ds.verify("fashion_mnist", { dir = work .. "/empty-cache" }) == true, "verify with the Debian copy")
end

pcall(C.download, { url = base .. "/_quit", dest = work .. "/quit.txt", retries = 0,
                    progress = "none" })
server:close()
if failures > 0 then
  io.stderr:write(failures, " check(s) failed\n")
  os.exit(1)
end
print("test_datasets: all checks passed")
