-- A tiny assertion helper for the Lua tests: check.run{name = fn, ...}
-- prints one line per test and "N passed, M failed" at the end.
local M = {}

function M.near(a, b, tol, what)
  if type(a) ~= "number" or type(b) ~= "number" then return M.eq(a, b, what) end
  tol = tol or 1e-5
  if a == b or (a ~= a and b ~= b) then return end -- equal (infinities too), or NaN where NaN is expected
  -- written so that a NaN fails: every comparison with one is false
  if not (math.abs(a - b) <= tol * math.max(1, math.abs(b))) then
    error(string.format("%s: got %.9g, expected %.9g", what or "value", a, b), 2)
  end
end

function M.eq(a, b, what)
  if a ~= b then error(string.format("%s: got %s, expected %s", what or "value", tostring(a), tostring(b)), 2) end
end

function M.same_table(a, b, tol, what)
  if type(a) ~= "table" then return M.near(a, b, tol, what) end
  M.eq(#a, #b, (what or "table") .. " length")
  for i = 1, #a do M.same_table(a[i], b[i], tol, (what or "table") .. "[" .. i .. "]") end
end

-- Asserts f() fails with a message containing `pattern` (plain text).
function M.fails(f, pattern)
  local ok, err = pcall(f)
  if ok then error("expected an error containing: " .. pattern, 2) end
  if not tostring(err):find(pattern, 1, true) then
    error(string.format("error message\n  %s\ndoes not contain\n  %s", tostring(err), pattern), 2)
  end
end

-- The Vulkan entry of nn.backends(), or nil where it is not built.
local function vulkan_backend()
  for _, b in ipairs(require("lunet").backends()) do
    if b.name == "vulkan" then return b end
  end
end

-- Whether a Vulkan device is there (lavapipe counts); says so when not.
function M.vulkan()
  local vk = vulkan_backend()
  if vk and vk.available then return true end
  print("  (no Vulkan device: skipped)")
  return false
end

-- A test file of Vulkan alone: exits 77 (ctest's skip) with the reason
-- where no Vulkan device can be used.
function M.require_vulkan()
  local vk = vulkan_backend()
  if not (vk and vk.available) then
    print("SKIP: no usable Vulkan device: " .. (vk and vk.detail or "the backend is not built"))
    os.exit(77)
  end
end

-- A fresh empty folder, removed when M.run ends.
local made = {}
function M.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "'"), "cannot make " .. d)
  made[#made + 1] = d
  return d
end

-- The output (stdout and stderr) of this lunet running a chunk of Lua,
-- with environment assignments before it ("LUNET_THREADS=2"); the code
-- goes in single quotes.
function M.lunet(env, code)
  local p = io.popen(string.format("%s %s -e '%s' 2>&1", env, arg[-1], code))
  local out = p:read("a")
  p:close()
  return out
end

function M.run(tests)
  local names, only = {}, os.getenv("CHECK_ONLY") -- CHECK_ONLY=name runs that test alone (by hand)
  for name in pairs(tests) do
    if not only or name == only then names[#names + 1] = name end
  end
  table.sort(names)
  local passed, failed = 0, 0
  for _, name in ipairs(names) do
    local ok, err = xpcall(tests[name], debug.traceback)
    if ok then
      passed = passed + 1
      print("ok   " .. name)
    else
      failed = failed + 1
      print("FAIL " .. name .. "\n" .. tostring(err))
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  for _, d in ipairs(made) do os.execute("rm -rf '" .. d .. "'") end
  os.exit(failed == 0 and 0 or 1)
end

return M
