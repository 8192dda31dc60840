-- PyTorch reads lunet's checkpoints: tests/fixtures/make_torch_interop.py
-- read the files tests/interop/save.lua writes with a few lines of Python
-- (tests/fixtures/lunet_torch.py), ran the seed CIFAR-10 CNN and the
-- residual network as NCHW PyTorch networks, and recorded what it read and
-- predicted (torch_interop.lua).  Here lunet writes the same files again:
-- every tensor must be the one PyTorch read (names, shapes, bytes, by
-- checksums computed from the raw file, as Python does), and lunet's
-- predictions from the loaded files must equal PyTorch's.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. here .. "../interop/?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local C = require "lunet.core"
local models = require("models")(nn)
local torch = dofile(here .. "../fixtures/torch_interop.lua")

-- The file's tensors as PyTorch's reader sees them: header, offsets, bytes.
local function raw_tensors(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local n = string.unpack("<I8", data)
  local header = C.json_decode(data:sub(9, 8 + n), "the header")
  local body, out = 9 + n, {}
  for name, e in pairs(header) do
    if name ~= "__metadata__" then
      assert(e.dtype == "F32", name .. " is " .. e.dtype)
      local a, b = e.data_offsets[1], e.data_offsets[2]
      local sum, weighted = 0, 0
      for i = 0, (b - a) // 4 - 1 do
        local v = string.unpack("<f", data, body + a + 4 * i)
        sum, weighted = sum + v, weighted + v * (i % 7)
      end
      out[name] = {sum, weighted}
    end
  end
  return out
end

local function same_file_as_torch_read(name, path)
  local got, want = raw_tensors(path), torch[name].sums
  for k, w in pairs(want) do
    local g = got[k]
    assert(g, string.format("%s: PyTorch read %s, which lunet no longer writes", name, k))
    for j = 1, 2 do
      check.near(g[j], w[j], 1e-6 * math.max(1, math.abs(w[j])), string.format("%s: %s checksum %d", name, k, j))
    end
  end
  for k in pairs(got) do
    if k:match("^layers%.") then assert(want[k], string.format("%s: lunet writes %s, which PyTorch did not read", name, k)) end
  end
end

local T = {}

for _, name in ipairs({"cifar_cnn", "resnet"}) do
  T[name .. "_loads_into_pytorch"] = function()
    local path = check.tmpdir() .. "/" .. name .. ".safetensors"
    models[name]():save(path)
    same_file_as_torch_read(name, path)
    local p = nn.load_model(path):predict(models.images(4)):totable()
    for i, row in ipairs(torch[name].predictions) do
      for j, v in ipairs(row) do
        check.near(p[i][j], v, 2e-6, string.format("%s: image %d, class %d against PyTorch", name, i, j))
      end
    end
  end
end

check.run(T)
