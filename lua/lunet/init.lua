-- lunet: the Lua API.  `local nn = require "lunet"`.
local C = require "lunet.core"

local nn = {}
nn.version = C.version
nn._C = C

-- tensors
nn.tensor, nn.zeros, nn.ones, nn.full = C.tensor, C.zeros, C.ones, C.full
nn.rand, nn.randn, nn.arange, nn.cat = C.rand, C.randn, C.arange, C.cat
nn.where = C.where
nn.is_tensor = C.is_tensor
nn.Tensor = C.tensor_methods

-- Extra tensor methods written in Lua.
function nn.Tensor.assign(t, src)
  C.assign(t, src)
  return t
end

-- t:flatten(): all axes after the first into one ((N, ...) -> (N, M)); a
-- 1-D tensor stays as it is.
function nn.Tensor.flatten(t)
  local s = t:shape()
  if #s <= 1 then return t:reshape(s) end
  return t:reshape(s[1], -1)
end

-- t:squeeze(axis): drops size-1 axes (all of them without an axis).
function nn.Tensor.squeeze(t, axis)
  local s, out = t:shape(), {}
  if axis and axis < 0 then axis = #s + 1 + axis end
  for i, d in ipairs(s) do
    if not (d == 1 and (axis == nil or axis == i)) then out[#out + 1] = d end
  end
  return t:reshape(out)
end

-- t:unsqueeze(axis): a size-1 axis inserted before `axis` (1-based; -1 last).
function nn.Tensor.unsqueeze(t, axis)
  local s = t:shape()
  if axis < 0 then axis = #s + 2 + axis end
  if axis < 1 or axis > #s + 1 then
    error(string.format("bad argument #1 to 'unsqueeze' (axis must be in [1, %d], got %d)", #s + 1, axis), 2)
  end
  table.insert(s, axis, 1)
  return t:reshape(s)
end

function nn.seed(n) return C.seed(n) end
function nn.threads(n) return C.threads(n) end
function nn.backends() return C.backends() end
-- nn.use("vulkan") or nn.use("vulkan", {device = 1}).
function nn.use(name, opts)
  local device = opts and opts.device
  if device ~= nil and math.type(device) ~= "integer" then
    error("bad argument #2 to 'use' (device must be an integer index, see nn.backends())", 2)
  end
  return C.use(name, device)
end
function nn.default_backend() return C.default_backend() end

-- Runs f with gradient recording off (inference, manual updates).
function nn.no_grad(f, ...)
  local prev = C.set_no_grad(true)
  local res = table.pack(pcall(f, ...))
  C.set_no_grad(prev)
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- Keras's weight constraints, as the specs the core reads (kernel_constraint =
-- nn.constraints.max_norm(2)); axis: a number or a list, Keras's default 0.
nn.constraints = {}
local function axes(a)
  a = a == nil and 0 or a
  if type(a) == "number" then a = {a} end
  if type(a) ~= "table" or #a == 0 then error("constraint: axis must be an axis or a list of axes", 3) end
  local out = {}
  for i, v in ipairs(a) do
    if math.type(v) ~= "integer" or v < 0 then error("constraint: axes are integers >= 0 (0-based, as Keras's)", 3) end
    out[i] = tostring(v)
  end
  return table.concat(out, " ")
end
local function num(v, what)
  if type(v) ~= "number" or v ~= v then error("constraint: " .. what .. " must be a number", 3) end
  return string.format("%.17g", v)
end
function nn.constraints.non_neg() return "non_neg()" end
function nn.constraints.max_norm(max_value, o)
  if type(max_value) == "table" then o, max_value = max_value, max_value.max_value end
  return string.format("max_norm(max_value=%s,axis=%s)", num(max_value or 2, "max_value"), axes(o and o.axis))
end
function nn.constraints.unit_norm(o) return string.format("unit_norm(axis=%s)", axes(o and o.axis)) end
function nn.constraints.min_max_norm(o)
  o = o or {}
  return string.format("min_max_norm(min_value=%s,max_value=%s,rate=%s,axis=%s)", num(o.min_value or 0, "min_value"),
    num(o.max_value or 1, "max_value"), num(o.rate or 1, "rate"), axes(o.axis))
end
nn.constraints.NonNeg, nn.constraints.MaxNorm = nn.constraints.non_neg, nn.constraints.max_norm
nn.constraints.UnitNorm, nn.constraints.MinMaxNorm = nn.constraints.unit_norm, nn.constraints.min_max_norm

nn.regularizers = {}
function nn.regularizers.l1(v) return { kind = "l1", l1 = v or 0.01, l2 = 0 } end
function nn.regularizers.l2(v) return { kind = "l2", l1 = 0, l2 = v or 0.01 } end
-- Keras's L1L2 (and its alias l1_l2): each factor 0 unless given
-- (l1_l2{l2 = 1e-4} has no L1 term)
function nn.regularizers.l1_l2(a, b)
  if type(a) == "table" then a, b = a.l1, a.l2 end
  return { kind = "l1_l2", l1 = a or 0, l2 = b or 0 }
end
nn.regularizers.L1L2 = nn.regularizers.l1_l2

local layers = require "lunet.layers"
layers.install(nn)
nn.load_plugin = layers.load_plugin
nn.check_plugin = layers.check_plugin
nn.Lambda = layers.Lambda
nn.Bidirectional = layers.make_bidirectional
nn.help = layers.help
nn.mask_of = layers.mask_of

local model = require "lunet.model"
nn.Sequential = model.Sequential
nn.Model = model.Model
nn.Input = model.Input
nn.load_model = model.load_model

local optim = require "lunet.optim"
nn.optimizers = optim.optimizers
nn.losses = optim.losses
nn.callbacks = optim.callbacks
nn.schedules = optim.schedules

nn.datasets = require "lunet.datasets"
nn.augment = require "lunet.augment"
nn.text = require "lunet.text"
nn.utils = require "lunet.utils"
nn.data = require "lunet.dataset"
nn.distributed = require "lunet.distributed"
nn.metrics = require "lunet.metrics"
nn.plot = require "lunet.plot"
nn.tools = require "lunet.tools"
nn.explain = require "lunet.explain"
nn.export = require "lunet.export"
nn.profile = require("lunet.profile").profile
nn.backend_stats = C.backend_stats

-- Mixed precision as in Keras: nn.mixed_precision.set_global_policy
-- ("mixed_bfloat16") before making the layers; their products run in
-- bfloat16 (float32 sums), everything else stays float32.
local warned = {}
nn.mixed_precision = {
  set_global_policy = function(policy)
    if type(policy) ~= "string" then
      error(string.format("bad argument #1 to 'set_global_policy' (a policy name expected: float32 or mixed_bfloat16, got %s)",
        type(policy)), 2)
    end
    local ok, err = pcall(C.set_policy, policy)
    if not ok then error(err, 2) end
    local be = C.default_backend()
    if policy == "mixed_bfloat16" and not warned[be] then
      local how = C.backend_bf16(be)
      if how == 0 then
        warned[be] = true
        io.stderr:write(string.format("lunet: mixed_bfloat16 on backend '%s' is emulated (%s): the products are " ..
          "rounded to bfloat16 but run at float32 speed\n", be,
          be == "cpu" and "this CPU has no AVX512-BF16, or LUNET_CPU_ISA is below avx512" or "no bfloat16 kernels there yet"))
      elseif how < 0 then
        warned[be] = true
        io.stderr:write(string.format("lunet: backend '%s' has no bfloat16 products: layers made under mixed_bfloat16 " ..
          "will fail on it (use the cpu backend, or the float32 policy)\n", be))
      end
    end
  end,
  global_policy = function() return C.policy() end,
}
nn.plot.report = require("lunet.report").write
nn.callbacks.LivePlot = nn.plot.LivePlot

-- Threads from LUNET_THREADS are read by the backend itself.
return nn
