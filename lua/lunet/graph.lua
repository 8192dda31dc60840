-- Symbolic tensors for functional models (Keras's KerasTensor): nn.Input
-- makes one, and calling a layer on symbolic tensors builds the layer and
-- returns symbolic outputs that remember the call.  nn.Model then walks
-- back from its outputs to its inputs.
local C = require "lunet.core"

local M = {}

local Symbolic = {}
Symbolic.__index = Symbolic
M.Symbolic = Symbolic

local function shape_str(s)
  return "(None" .. (#s > 0 and ", " or "") .. table.concat(s, ", ") .. ")"
end
M.shape_str = shape_str

function Symbolic:__tostring()
  return string.format("<symbolic tensor '%s' %s>", self.name, shape_str(self.shape))
end

-- The sample shape, as t:shape() would give it for a batch of N (N = nil).
function Symbolic:sample_shape()
  local s = {}
  for i, d in ipairs(self.shape) do s[i] = d end
  return s
end

function M.is_symbolic(v) return getmetatable(v) == Symbolic end

-- Where a symbolic tensor comes from, for errors and summary().
function M.producer(s)
  return s.node and s.node.layer.name or s.name
end

local inputs_made = 0

-- nn.Input{shape = {28, 28, 1}, name = "image"}, or nn.Input{28, 28, 1}:
-- one sample's shape, without the batch axis.
function M.Input(o)
  if type(o) ~= "table" then
    error("bad argument #1 to 'Input' (a table expected: nn.Input{shape = {28, 28, 1}, name = ...})", 2)
  end
  for k in pairs(o) do
    if k ~= "shape" and k ~= "name" and math.type(k) ~= "integer" then
      error(string.format("bad argument '%s' to 'Input' (unknown argument; valid: shape, name)", tostring(k)), 2)
    end
  end
  local shape = o.shape or (o[1] ~= nil and { table.unpack(o) }) or nil
  if type(shape) ~= "table" or #shape == 0 then
    error("bad argument 'shape' to 'Input' (one sample's shape, e.g. {28, 28, 1}, is required)", 2)
  end
  local copy = {}
  for i, d in ipairs(shape) do
    if math.type(d) ~= "integer" or d < 1 then
      error(string.format("bad argument 'shape' to 'Input' (sizes must be positive integers, got %s)", tostring(d)), 2)
    end
    copy[i] = d
  end
  if o.name ~= nil and type(o.name) ~= "string" then error("bad argument 'name' to 'Input' (a string expected)", 2) end
  inputs_made = inputs_made + 1
  local name = o.name or (inputs_made == 1 and "input_layer" or ("input_layer_" .. (inputs_made - 1)))
  return setmetatable({ shape = copy, name = name }, Symbolic)
end

-- x as a list of symbolic tensors, and whether it was given as a list;
-- nil when x holds no symbolic tensor at all.
function M.symbolic_list(x, what)
  if M.is_symbolic(x) then return { x }, false end
  if type(x) ~= "table" or getmetatable(x) ~= nil then return nil end
  local any, all = false, #x > 0
  for _, v in ipairs(x) do
    if M.is_symbolic(v) then any = true else all = false end
  end
  if not any then return nil end
  if not all then
    error(string.format("%s: a list of inputs mixes symbolic tensors (nn.Input, layer outputs) with other values", what), 3)
  end
  return x, true
end

-- layer(x) on symbolic tensors: builds the layer for their shapes and
-- returns symbolic outputs (one per layer output).
function M.call(layer, xs, listed)
  local shapes = {}
  for i, s in ipairs(xs) do shapes[i] = s.shape end
  local ok, out = pcall(C.layer_build, layer.handle, listed and shapes or shapes[1])
  if not ok then
    local from = {}
    for i, s in ipairs(xs) do from[i] = string.format("%s with shape %s", M.producer(s), shape_str(s.shape)) end
    error(string.format("%s (input%s from %s)", out, #xs > 1 and "s" or "", table.concat(from, ", ")), 3)
  end
  local outs = (listed or type(out[1]) == "table") and out or { out }
  if not layer.output_shape then
    layer.input_shape = listed and shapes or shapes[1]
    layer.output_shape = #outs == 1 and outs[1] or outs
  end
  local node = { layer = layer, inputs = xs, listed = listed, outputs = {} }
  for j, s in ipairs(outs) do
    node.outputs[j] = setmetatable({ shape = s, node = node, index = j,
      name = #outs == 1 and layer.name or (layer.name .. "_" .. j) }, Symbolic)
  end
  return table.unpack(node.outputs)
end

return M
