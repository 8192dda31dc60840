-- Sequence layers: LSTM against PyTorch (tests/fixtures/torch_lstm.lua, made
-- by make_torch_lstm.py with Debian's python3-torch), with weights set in
-- Keras's layout through set_weights.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local ref = dofile(here .. "../fixtures/torch_lstm.lua")

local T = {}

local function against_torch(return_sequences, want)
  local lstm = nn.LSTM{4, return_sequences = return_sequences, input_shape = {5, 3}}
  lstm:set_weights({nn.tensor(ref.weights[1]), nn.tensor(ref.weights[2]), nn.tensor(ref.weights[3])})
  local x = nn.tensor(ref.x):requires_grad(true)
  local y = lstm(x, true)
  check.same_table(y:totable(), want.y, 1e-5, "output")
  ;(y * nn.tensor(want.r)):sum():backward()
  check.same_table(x.grad:totable(), want.dx, 1e-5, "input gradient")
  local w = lstm:weights()
  check.same_table(w[1].tensor.grad:totable(), want.dkernel, 1e-5, "kernel gradient")
  check.same_table(w[2].tensor.grad:totable(), want.drecurrent, 1e-5, "recurrent kernel gradient")
  check.same_table(w[3].tensor.grad:totable(), want.dbias, 1e-5, "bias gradient")
end

function T.lstm_last_state_matches_torch() against_torch(false, ref.last) end
function T.lstm_sequences_match_torch() against_torch(true, ref.sequences) end

function T.lstm_defaults_are_keras()
  nn.seed(2)
  local lstm = nn.LSTM{6, input_shape = {3, 2}}
  local w = lstm:weights()
  check.same_table(w[1].tensor:shape(), {2, 24}, 0, "kernel (features, 4 units)")
  check.same_table(w[2].tensor:shape(), {6, 24}, 0, "recurrent kernel (units, 4 units)")
  -- unit_forget_bias: the forget gate's quarter of the bias starts at 1
  local b = w[3].tensor:totable()
  for k = 1, 24 do check.eq(b[k], (k > 6 and k <= 12) and 1 or 0, "bias " .. k) end
  -- orthogonal recurrent kernel: its rows are orthonormal
  local r = w[2].tensor:totable()
  for i = 1, 6 do
    for j = 1, 6 do
      local dot = 0
      for k = 1, 24 do dot = dot + r[i][k] * r[j][k] end
      check.near(dot, i == j and 1 or 0, 1e-5, string.format("row %d . row %d", i, j))
    end
  end
  check.fails(function() nn.Sequential{nn.LSTM{4, input_shape = {5}}} end,
    "expects input of rank 2 (timesteps, features), got shape (None, 5)")
  check.fails(function() nn.LSTM{0} end, "units must be positive")
end

check.run(T)
