-- LUNET_CPU_ISA caps the CPU backend's own kernels: "scalar" is reported as
-- such, and an unknown value makes the backend unavailable with a message
-- that lists the valid ones.
local nn = require "lunet"
local want = os.getenv("LUNET_CPU_ISA")
for _, b in ipairs(nn.backends()) do
  if b.name == "cpu" then
    if want == "bogus" then
      assert(not b.available and b.detail:find("LUNET_CPU_ISA=bogus: expected avx512, avx2 or scalar", 1, true),
        b.detail)
    else
      assert(b.available and b.detail:find("lunet kernels " .. want, 1, true), b.detail)
    end
  end
end
print("isa: ok")
