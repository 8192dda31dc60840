-- Backends built for another ABI (tests/cpu/abi_backend.c as 1.1 and as the
-- next minor version of this lunet's, found through LUNET_BACKEND_PATH) are
-- listed as unavailable with both versions named; the real backends still
-- load.
local nn = require "lunet"
local seen = {}
for _, b in ipairs(nn.backends()) do seen[b.name] = b end
local ours = nn._C.abi.backend
local major, minor = ours:match("^(%d+)%.(%d+)$")
for name, v in pairs{abi1_1 = "1.1", abinext = major .. "." .. (tonumber(minor) + 1)} do
  local b = assert(seen[name], name .. " is listed")
  assert(not b.available, name .. " is refused")
  assert(b.detail:find("built for backend ABI " .. v, 1, true)
    and b.detail:find("this lunet has backend ABI " .. ours, 1, true), b.detail)
  local ok, err = pcall(nn.use, name)
  assert(not ok and tostring(err):find("is unavailable", 1, true), tostring(err))
end
assert(seen.cpu and seen.cpu.available, "the cpu backend still loads")
print("backend versions: ok")
