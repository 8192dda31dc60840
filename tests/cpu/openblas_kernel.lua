-- The CPU backend picks OpenBLAS's kernel itself: the family this CPU runs
-- best (read here independently from /proc/cpuinfo), or the user's
-- OPENBLAS_CORETYPE, which it never overrides.  OpenBLAS reports the kernel
-- it loaded, and the backend's detail line shows it.
local user = os.getenv("OPENBLAS_CORETYPE") -- before lunet loads (the backend may set it)
local nn = require "lunet"
local info = io.open("/proc/cpuinfo"):read("a")
local flags = " " .. (info:match("\nflags%s*:%s*([^\n]*)") or info:match("^flags%s*:%s*([^\n]*)") or "") .. " "
local function has(f) return flags:find(" " .. f .. " ", 1, true) ~= nil end
local expected = user
if not expected then
  if has("avx512f") and has("avx512bw") and has("avx512dq") and has("avx512vl") and has("fma") then
    expected = "SkylakeX"
  elseif has("avx2") and has("fma") then
    expected = "Haswell"
  end
end
local cpu
for _, b in ipairs(nn.backends()) do if b.name == "cpu" then cpu = b end end
assert(cpu and cpu.available, "the cpu backend is available")
local kernel = cpu.detail:match("kernel (%w+)")
print(string.format("OPENBLAS_CORETYPE=%s, expected %s, OpenBLAS reports %s", user or "(unset)",
  tostring(expected), tostring(kernel)))
assert(expected, "this CPU has neither AVX2 nor AVX-512: nothing to check")
assert(kernel and kernel:lower() == expected:lower(), cpu.detail)
-- and it computes: a small product against the hand result
local p = nn.tensor{{1, 2}, {3, 4}}:matmul(nn.tensor{{5}, {6}}):totable()
assert(p[1][1] == 17 and p[2][1] == 39, "GEMM through the loaded OpenBLAS")
print("openblas kernel: ok")
