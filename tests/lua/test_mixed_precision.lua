-- Mixed precision (nn.mixed_precision, Keras's "mixed_bfloat16"): the
-- policy and its errors, each layer's dtype, the numbers against an
-- independent computation in Lua (operands rounded to bfloat16 by bit
-- arithmetic here, sums in doubles), gradients, files, and the Vulkan
-- backend against the CPU.  Run under LUNET_CPU_ISA=avx2 too (ctest
-- lua_mixed_precision_avx2), where the products are emulated.
package.path = arg[0]:gsub("[^/]+$", "") .. "?.lua;" .. package.path
local nn = require "lunet"
local check = require "check"

-- x rounded to the nearest bfloat16, ties to even (as VCVTNEPS2BF16), in
-- plain Lua: the float32's bits, the top 16 kept.
local function bf16(x)
  local u = string.unpack("<I4", string.pack("<f", x))
  if u & 0x7f800000 == 0 then u = u & 0x80000000
  else u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000 end
  return (string.unpack("<f", string.pack("<I4", u)))
end

local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end

-- y = x w + b with the products' operands rounded or not, in doubles.
local function dense_ref(x, w, b, round)
  local r = round and bf16 or f32
  local y = {}
  for i = 1, #x do
    y[i] = {}
    for j = 1, #w[1] do
      local s = b[j]
      for k = 1, #w do s = s + r(x[i][k]) * r(w[k][j]) end
      y[i][j] = s
    end
  end
  return y
end

local function flat(t, out)
  for _, v in ipairs(t) do
    if type(v) == "table" then flat(v, out) else out[#out + 1] = v end
  end
  return out
end

local function max_diff(a, b)
  local d = 0
  for i = 1, #a do for j = 1, #a[i] do d = math.max(d, math.abs(a[i][j] - b[i][j])) end end
  return d
end

-- Every test leaves the policy as it found it.
local function with_policy(p, f)
  local old = nn.mixed_precision.global_policy()
  nn.mixed_precision.set_global_policy(p)
  local ok, err = pcall(f)
  nn.mixed_precision.set_global_policy(old)
  if not ok then error(err, 0) end
end

local tests = {}

function tests.policy_and_layer_dtypes()
  check.eq(nn.mixed_precision.global_policy(), "float32", "default policy")
  with_policy("mixed_bfloat16", function()
    check.eq(nn.mixed_precision.global_policy(), "mixed_bfloat16")
    local a, b = nn.Dense{4}, nn.Dense{4, dtype = "float32"}
    check.eq(a.dtype_policy, "mixed_bfloat16")
    check.eq(a.compute_dtype, "bfloat16")
    check.eq(a.variable_dtype, "float32")
    check.eq(b.dtype_policy, "float32")
  end)
  check.eq(nn.Dense{4}.dtype_policy, "float32", "made after the policy went back")
  check.eq(nn.Conv2D{8, 3, dtype = "mixed_bfloat16"}.compute_dtype, "bfloat16", "dtype = per layer")
  check.fails(function() nn.mixed_precision.set_global_policy("mixed_float16") end, "mixed_float16 is not supported")
  check.fails(function() nn.mixed_precision.set_global_policy(16) end, "a policy name expected")
  check.fails(function() nn.Dense{4, dtype = "float64"} end, "unknown dtype 'float64'")
  check.fails(function() nn.Dense{4, dtype = 3} end, "bad argument 'dtype' to 'Dense'")
  check.eq(nn.mixed_precision.global_policy(), "float32", "a refused policy changes nothing")
end

-- A Dense layer's forward under mixed_bfloat16 against the sums above,
-- with values whose rounding matters (not representable in bfloat16).
function tests.dense_forward_matches_rounded_reference()
  nn.seed(3)
  local x = nn.randn{5, 33}
  local m16, m32
  with_policy("mixed_bfloat16", function() m16 = nn.Sequential{nn.Dense{7, input_shape = {33}}} end)
  m32 = nn.Sequential{nn.Dense{7, input_shape = {33}}}
  m32:set_weights(m16:get_weights())
  local w, b = m16:get_weights()[1]:totable(), m16:get_weights()[2]:totable()
  local xt = x:totable()
  local y16, y32 = m16:predict(x):totable(), m32:predict(x):totable()
  local want16, want32 = dense_ref(xt, w, b, true), dense_ref(xt, w, b, false)
  check.same_table(y16, want16, 2e-6, "bfloat16 products")
  check.same_table(y32, want32, 2e-6, "float32 products")
  -- the two references really differ, by what bfloat16's 8 bits allow
  local moved = max_diff(want16, want32)
  if moved < 1e-3 or moved > 0.2 then error("bfloat16 moved the outputs by " .. moved) end
end

-- Convolution, pooling and Dense under the policy: one training step's
-- loss and gradients close to float32's (bfloat16 keeps ~3 significant
-- digits), but not equal to them.
function tests.training_step_close_to_float32()
  local function model(policy)
    local m
    with_policy(policy, function()
      nn.seed(7)
      m = nn.Sequential{nn.Conv2D{32, 3, activation = "relu", input_shape = {10, 10, 3}}, nn.MaxPooling2D(2),
        nn.Conv2D{64, 3, activation = "relu"}, nn.Flatten(), nn.Dense{10, activation = "softmax"}}
      m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy"}
      m:build()
    end)
    return m
  end
  local m16, m32 = model("mixed_bfloat16"), model("float32")
  m32:set_weights(m16:get_weights())
  nn.seed(11)
  local x = nn.rand{16, 10, 10, 3}
  local y = nn.tensor{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5}
  local p16, p32 = m16:predict(x):totable(), m32:predict(x):totable()
  local d = max_diff(p16, p32)
  if d == 0 or d > 0.02 then error("predictions moved by " .. d) end
  local l16, l32 = m16:train_on_batch(x, y), m32:train_on_batch(x, y)
  check.near(l16, l32, 0.01, "loss")
  -- the weights after one step: every kernel's update as float32's, within
  -- 10% in norm (each gradient sums products of rounded operands with much
  -- cancelling, so elements differ more than the operands' 0.4%)
  local w0 = model("float32"):get_weights()
  local a, b = m16:get_weights(), m32:get_weights()
  for i = 1, #a, 2 do
    local u16, u32, before = a[i]:totable(), b[i]:totable(), w0[i]:totable()
    local f16, f32v, f0 = flat(u16, {}), flat(u32, {}), flat(before, {})
    local big, err = 0, 0
    for k = 1, #f16 do
      big = big + (f32v[k] - f0[k]) ^ 2
      err = err + (f16[k] - f32v[k]) ^ 2
    end
    big, err = math.sqrt(big), math.sqrt(err)
    print(string.format("  kernel %d: update norm %.3g, bfloat16 off by %.3g", (i + 1) // 2, big, err))
    if big == 0 or err == 0 or err > 0.1 * big then
      error(string.format("kernel %d: update %g, bfloat16 off by %g", i, big, err))
    end
  end
end

-- A file keeps each layer's policy, whatever the policy when it is read.
function tests.files_keep_the_policy()
  local dir = check.tmpdir()
  local m
  with_policy("mixed_bfloat16", function()
    m = nn.Sequential{nn.Dense{8, input_shape = {4}}, nn.Dense{2, dtype = "float32"}}
    m:build()
  end)
  m:save(dir .. "/m.safetensors")
  local back = nn.load_model(dir .. "/m.safetensors")
  check.eq(back.layers[1].dtype_policy, "mixed_bfloat16")
  check.eq(back.layers[2].dtype_policy, "float32")
  local x = nn.randn{3, 4}
  check.same_table(back:predict(x):totable(), m:predict(x):totable(), 1e-7, "same outputs after loading")
  with_policy("mixed_bfloat16", function()
    local f32 = nn.Sequential{nn.Dense{2, input_shape = {4}, dtype = "float32"}}
    f32:build()
    f32:save(dir .. "/f.safetensors")
    check.eq(nn.load_model(dir .. "/f.safetensors").layers[1].dtype_policy, "float32", "read under mixed_bfloat16")
  end)
end

-- On Vulkan (emulated: gemm.comp rounds the operands as it fetches them)
-- the same numbers as the CPU's, forward and after a training step.
function tests.vulkan_matches_cpu()
  if not check.vulkan() then return end
  local function model()
    local m
    with_policy("mixed_bfloat16", function()
      nn.seed(5)
      m = nn.Sequential{nn.Conv2D{8, 3, activation = "relu", input_shape = {6, 6, 2}}, nn.Flatten(),
        nn.Dense{4, activation = "softmax"}}
      m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.1}, loss = "sparse_categorical_crossentropy"}
      m:build()
    end)
    return m
  end
  local cpu, gpu = model(), model()
  gpu:to("vulkan")
  nn.seed(9)
  local x, y = nn.rand{5, 6, 6, 2}, nn.tensor{0, 1, 2, 3, 0}
  check.same_table(gpu:predict(x:to("vulkan")):totable(), cpu:predict(x):totable(), 1e-5, "predictions")
  check.near(gpu:train_on_batch(x:to("vulkan"), y:to("vulkan")), cpu:train_on_batch(x, y), 1e-5, "loss")
  local a, b = gpu:get_weights(), cpu:get_weights()
  for i = 1, #a do check.same_table(a[i]:to("cpu"):totable(), b[i]:totable(), 1e-5, "weight " .. i) end
end

check.run(tests)
