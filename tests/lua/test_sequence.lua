-- Sequence layers: LSTM against PyTorch (tests/fixtures/torch_lstm.lua, made
-- by make_torch_lstm.py with Debian's python3-torch), with weights set in
-- Keras's layout through set_weights.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"
local ref = dofile(here .. "../fixtures/torch_lstm.lua")
local gru_ref = dofile(here .. "../fixtures/torch_gru.lua")
local ln_ref = dofile(here .. "../fixtures/torch_layernorm.lua")
local rnn_ref = dofile(here .. "../fixtures/torch_rnn.lua")
local emb_ref = dofile(here .. "../fixtures/torch_embedding.lua")

local T = {}

-- A recurrent layer on the fixture's Keras-layout weights: its output and
-- every gradient against PyTorch's.
local function against_torch(make, fixture, want)
  local layer = make()
  layer:set_weights({nn.tensor(fixture.weights[1]), nn.tensor(fixture.weights[2]), nn.tensor(fixture.weights[3])})
  local x = nn.tensor(fixture.x):requires_grad(true)
  local y = layer(x, true)
  check.same_table(y:totable(), want.y, 1e-5, "output")
  ;(y * nn.tensor(want.r)):sum():backward()
  check.same_table(x.grad:totable(), want.dx, 1e-5, "input gradient")
  local w = layer:weights()
  check.same_table(w[1].tensor.grad:totable(), want.dkernel, 1e-5, "kernel gradient")
  check.same_table(w[2].tensor.grad:totable(), want.drecurrent, 1e-5, "recurrent kernel gradient")
  check.same_table(w[3].tensor.grad:totable(), want.dbias, 1e-5, "bias gradient")
end

local function lstm(seq) return function() return nn.LSTM{4, return_sequences = seq, input_shape = {5, 3}} end end
local function gru(seq) return function() return nn.GRU{5, return_sequences = seq, input_shape = {4, 3}} end end
local function rnn(seq)
  return function() return nn.SimpleRNN{4, return_sequences = seq, input_shape = {4, 3}} end
end

function T.lstm_last_state_matches_torch() against_torch(lstm(false), ref, ref.last) end
function T.lstm_sequences_match_torch() against_torch(lstm(true), ref, ref.sequences) end
function T.gru_last_state_matches_torch() against_torch(gru(false), gru_ref, gru_ref.last) end
function T.gru_sequences_match_torch() against_torch(gru(true), gru_ref, gru_ref.sequences) end
function T.simple_rnn_last_state_matches_torch() against_torch(rnn(false), rnn_ref, rnn_ref.last) end
function T.simple_rnn_sequences_match_torch() against_torch(rnn(true), rnn_ref, rnn_ref.sequences) end

function T.layer_normalization_matches_torch()
  local ln = nn.LayerNormalization{epsilon = 1e-5, input_shape = {3, 4}}
  ln:set_weights({nn.tensor(ln_ref.gamma), nn.tensor(ln_ref.beta)})
  local x = nn.tensor(ln_ref.x):requires_grad(true)
  local y = ln(x, true)
  check.same_table(y:totable(), ln_ref.y, 1e-5, "output")
  ;(y * nn.tensor(ln_ref.r)):sum():backward()
  check.same_table(x.grad:totable(), ln_ref.dx, 1e-4, "input gradient")
  local w = ln:weights()
  check.same_table(w[1].tensor.grad:totable(), ln_ref.dgamma, 1e-5, "gamma gradient")
  check.same_table(w[2].tensor.grad:totable(), ln_ref.dbeta, 1e-5, "beta gradient")
  check.eq(nn.LayerNormalization{input_shape = {4}}.args.epsilon, 1e-3, "Keras's epsilon")
end

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

-- Embedding: rows of the table by hand, the table's gradient as the sum of
-- dy over each id's positions by hand, and the errors.
function T.embedding_looks_up_and_accumulates_by_id()
  nn.seed(5)
  local emb = nn.Embedding{5, 3, input_shape = {4}}
  local table_ = emb:get_weights()[1]:totable()
  for _, row in ipairs(table_) do
    for _, v in ipairs(row) do assert(v >= -0.05 and v <= 0.05, "Keras's uniform(-0.05, 0.05)") end
  end
  local ids = {{0, 3, 3, 1}, {4, 0, 2, 3}}
  local y = emb(nn.tensor(ids), true)
  local want = {}
  for i, row in ipairs(ids) do
    want[i] = {}
    for t, id in ipairs(row) do want[i][t] = table_[id + 1] end
  end
  check.same_table(y:totable(), want, 0, "rows of the table")
  local r = nn.randn(2, 4, 3)
  ;(y * r):sum():backward()
  local rv, grad = r:totable(), {}
  for id = 1, 5 do grad[id] = {0, 0, 0} end
  for i, row in ipairs(ids) do
    for t, id in ipairs(row) do
      for k = 1, 3 do grad[id + 1][k] = grad[id + 1][k] + rv[i][t][k] end
    end
  end
  check.same_table(emb:weights()[1].tensor.grad:totable(), grad, 1e-6, "gradient: dy summed per id")
  check.fails(function() emb(nn.tensor{{0, 7, 1, 1}}) end,
    "embedding: id 7 at flat position 1 is outside [0, 5) (input_dim is 5")
  check.fails(function() emb(nn.tensor{{0, 1.5, 1, 1}}) end, "ids must be whole numbers")
end

-- mask_zero's mask reaches the LSTM, whose masked steps keep the state: a
-- sequence padded with zeros at the end gives what the unpadded one gives
-- (the same weights in a model of a shorter input: a layer is built for one
-- sequence length).
function T.padding_masked_by_embedding_keeps_the_lstm_state()
  nn.seed(6)
  local emb, lstm = nn.Embedding{6, 3, mask_zero = true}, nn.LSTM{4, return_sequences = true}
  local x5 = nn.Input{shape = {5}}
  local padded = nn.Model{inputs = x5, outputs = lstm(emb(x5))}
  local emb3, lstm3 = nn.Embedding{6, 3, mask_zero = true}, nn.LSTM{4, return_sequences = true}
  local x3 = nn.Input{shape = {3}}
  local short = nn.Model{inputs = x3, outputs = lstm3(emb3(x3))}
  short:set_weights(padded:get_weights())
  local yp = padded:predict(nn.tensor{{2, 5, 1, 0, 0}, {3, 0, 0, 0, 0}}):totable()
  local ys = short:predict(nn.tensor{{2, 5, 1}, {3, 4, 4}}):totable()
  -- the first sequence: steps 4 and 5 repeat step 3's state
  for t = 1, 3 do check.same_table(yp[1][t], ys[1][t], 1e-6, "step " .. t) end
  for t = 4, 5 do check.same_table(yp[1][t], ys[1][3], 1e-6, "masked step " .. t) end
  -- the second: everything after step 1 is padding
  for t = 2, 5 do check.same_table(yp[2][t], ys[2][1], 1e-6, "masked step " .. t) end
  -- gradients through the masked steps: the LSTM kernel's against central differences
  local ids = nn.tensor{{2, 5, 1, 0, 0}, {3, 0, 0, 0, 0}}
  local r = nn.randn(2, 5, 4)
  local kernel = lstm:weights()[1].tensor
  local function loss() return (padded(ids, false) * r):sum() end
  loss():backward()
  local g, vals = kernel.grad:totable(), kernel:reshape(-1):totable()
  for _, k in ipairs{1, 7, 20, 33} do
    local function at(v)
      local copy = {table.unpack(vals)}
      copy[k] = v
      kernel:assign(nn.tensor(copy):reshape(kernel:shape()))
      return nn.no_grad(function() return loss():item() end)
    end
    local num = (at(vals[k] + 1e-2) - at(vals[k] - 1e-2)) / 2e-2
    kernel:assign(nn.tensor(vals):reshape(kernel:shape()))
    local row, col = (k - 1) // 16 + 1, (k - 1) % 16 + 1
    check.near(g[row][col], num, 2e-3, "kernel gradient " .. k)
  end
end

-- Embedding -> LSTM -> Dense learns which of two tokens occurs more often.
function T.embedding_lstm_classifier_learns()
  nn.seed(8)
  local n, len = 256, 8
  local xs, ys = {}, {}
  for i = 1, n do
    local row, ones, twos = {}, 0, 0
    for t = 1, len do
      local tok = 1 + math.floor(nn._C.philox(77, i * 100 + t) * 3) -- 1, 2 or 3
      row[t] = tok
      if tok == 1 then ones = ones + 1 elseif tok == 2 then twos = twos + 1 end
    end
    xs[i], ys[i] = row, ones > twos and 1 or 0
  end
  local x, y = nn.tensor(xs), nn.tensor(ys)
  local m = nn.Sequential{nn.Embedding{4, 8, input_shape = {len}}, nn.LSTM{16}, nn.Dense{2, activation = "softmax"}}
  m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.02}, loss = "sparse_categorical_crossentropy",
    metrics = {"accuracy"}}
  m:fit(x, y, {epochs = 25, batch_size = 32, verbose = 0})
  local acc = m:evaluate(x, y).accuracy
  assert(acc > 0.9, "accuracy " .. acc)
end

-- Accuracy on sequence outputs counts every position (N * T), checked by
-- hand against the predictions.
function T.sequence_accuracy_counts_positions()
  nn.seed(9)
  local m = nn.Sequential{nn.Embedding{4, 3, input_shape = {5}}, nn.LSTM{6, return_sequences = true},
    nn.Dense{4, activation = "softmax"}}
  m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy", metrics = {"accuracy"}}
  local x = nn.tensor{{1, 2, 3, 0, 1}, {3, 3, 2, 1, 0}}
  local y = nn.tensor{{1, 2, 3, 0, 1}, {3, 3, 2, 1, 0}}
  m:fit(x, y, {epochs = 30, batch_size = 2, verbose = 0})
  local p, t, hits = m:predict(x):totable(), y:totable(), 0
  for i = 1, 2 do
    for s = 1, 5 do
      local best = 1
      for k = 2, 4 do if p[i][s][k] > p[i][s][best] then best = k end end
      if best - 1 == t[i][s] then hits = hits + 1 end
    end
  end
  check.near(m:evaluate(x, y).accuracy, hits / 10, 1e-9, "accuracy over the 10 positions")
end

-- GlobalAveragePooling1D honours mask_zero: the mean over the real tokens
-- (checked by hand), and a bag-of-embeddings text model learns with it.
function T.global_average_pooling1d_averages_unmasked_steps()
  nn.seed(10)
  local x = nn.Input{shape = {4}}
  local emb = nn.Embedding{5, 2, mask_zero = true}
  local m = nn.Model{inputs = x, outputs = nn.GlobalAveragePooling1D()(emb(x))}
  local ids = {{1, 2, 0, 0}, {3, 0, 0, 0}, {0, 0, 0, 0}}
  local tbl, got = emb:get_weights()[1]:totable(), m:predict(nn.tensor(ids)):totable()
  for i, row in ipairs(ids) do
    local want, n = {0, 0}, 0
    for _, id in ipairs(row) do
      if id ~= 0 then
        n = n + 1
        for k = 1, 2 do want[k] = want[k] + tbl[id + 1][k] end
      end
    end
    for k = 1, 2 do want[k] = n > 0 and want[k] / n or 0 end
    check.same_table(got[i], want, 1e-6, "row " .. i)
  end
  local mx = nn.Model{inputs = x, outputs = nn.GlobalMaxPooling1D()(emb(x))}
  check.fails(function() mx:predict(nn.tensor(ids)) end, "a masked input is not supported (as in Keras)")
end

-- Conv1D against the sum written out: y[n][t][f] = b[f] + sum over k and c
-- of x[n][t*s + k][c] * w[k][c][f] (padding "valid").
function T.conv1d_matches_a_hand_convolution()
  nn.seed(13)
  local conv = nn.Conv1D{3, 2, strides = 2, input_shape = {7, 2}}
  local x = nn.randn(2, 7, 2)
  local xv, w, b = x:totable(), conv:get_weights()[1]:totable(), conv:get_weights()[2]:totable()
  local y = conv(x):totable()
  check.eq(#y[1], 3, "steps: floor((7 - 2) / 2) + 1")
  for n = 1, 2 do
    for t = 1, 3 do
      for f = 1, 3 do
        local v = b[f]
        for k = 1, 2 do
          for c = 1, 2 do v = v + xv[n][(t - 1) * 2 + k][c] * w[k][c][f] end
        end
        check.near(y[n][t][f], v, 1e-5, string.format("y[%d][%d][%d]", n, t, f))
      end
    end
  end
  check.same_table(w and conv:weights()[1].tensor:shape(), {2, 2, 3}, 0, "kernel (k, C, F)")
  -- MaxPooling1D: the maximum of each window of 2 steps (Keras's default)
  local p = nn.MaxPooling1D()(x):totable()
  check.eq(#p[1], 3, "floor(7 / 2) windows")
  for n = 1, 2 do
    for t = 1, 3 do
      for c = 1, 2 do
        check.eq(p[n][t][c], math.max(xv[n][2 * t - 1][c], xv[n][2 * t][c]), "window max")
      end
    end
  end
end

-- Position vectors: the sinusoids written out (KerasHub's formula), the
-- learned table's first T rows for every sample, and a sequence longer
-- than the table refused.
function T.position_layers_follow_keras_hub()
  local x = nn.zeros(2, 5, 6)
  local enc = nn.SinePositionEncoding()(x):totable()
  for p = 0, 4 do
    for i = 0, 5 do
      local angle = p * 10000 ^ (-(2 * (i // 2)) / 6)
      local want = i % 2 == 0 and math.sin(angle) or math.cos(angle)
      check.near(enc[1][p + 1][i + 1], want, 1e-5, string.format("p %d, i %d", p, i))
      check.near(enc[2][p + 1][i + 1], want, 1e-5, "the same for every sample")
    end
  end
  nn.seed(14)
  local pe = nn.PositionEmbedding{8, input_shape = {5, 6}}
  local tbl, y = pe:get_weights()[1]:totable(), pe(x):totable()
  for n = 1, 2 do for p = 1, 5 do check.same_table(y[n][p], tbl[p], 0, "row " .. p) end end
  check.fails(function() nn.PositionEmbedding{4, input_shape = {5, 6}} end,
    "a sequence of 5 steps is longer than the position table's 4 (sequence_length)")
  -- the table learns: its gradient is dy summed over the batch
  local xr = nn.zeros(2, 5, 6)
  local r = nn.randn(2, 5, 6)
  ;(pe(xr, true) * r):sum():backward()
  local g, rv = pe:weights()[1].tensor.grad:totable(), r:totable()
  for p = 1, 5 do
    for k = 1, 6 do check.near(g[p][k], rv[1][p][k] + rv[2][p][k], 1e-5, "gradient") end
  end
  for p = 6, 8 do for k = 1, 6 do check.eq(g[p][k], 0, "rows past T get nothing") end end
end

-- The final states are what the next part of the sequence needs: running
-- the first half with return_state and the second from those states
-- gives the whole sequence's output (h and c both checked, and the initial
-- states' gradients by the self-test).
function T.states_carry_a_sequence_on()
  nn.seed(30)
  for _, kind in ipairs{"LSTM", "GRU", "SimpleRNN"} do
    local whole = nn[kind]{4, return_sequences = true}
    local x = nn.randn(2, 6, 3)
    local y = whole(x):totable()
    local first = nn[kind]{4, return_sequences = true, return_state = true}
    local second = nn[kind]{4, return_sequences = true}
    local out = {first(x[{{}, {1, 3}}])}
    first:set_weights(whole:get_weights())
    out = {first(x[{{}, {1, 3}}])}
    local states = {table.unpack(out, 2)}
    check.eq(#states, kind == "LSTM" and 2 or 1, kind .. " states")
    check.same_table(states[1]:totable(), out[1][{{}, {3, 3}}]:reshape(2, 4):totable(), 1e-6, kind .. " h is the last output")
    second(x[{{}, {4, 6}}], {initial_state = states})
    second:set_weights(whole:get_weights())
    local rest = second(x[{{}, {4, 6}}], {initial_state = states}):totable()
    for n = 1, 2 do
      for t = 1, 3 do check.same_table(rest[n][t], y[n][t + 3], 1e-5, kind .. " step " .. (t + 3)) end
    end
  end
  check.fails(function() nn.LSTM{4}(nn.randn(2, 3, 3), {initial_state = {nn.zeros(2, 4)}}) end,
    "initial_state needs 2 tensors (h and c), got 1")
  check.fails(function() nn.GRU{4}(nn.randn(2, 3, 3), {initial_state = {nn.zeros(2, 5)}}) end,
    "initial state 1 must be (None, 4) (units), got (None, 5)")
end

-- go_backwards reads the steps last to first (its sequence comes out in
-- that order, as in Keras): the same as the forward layer on the reversed
-- input.
function T.go_backwards_reads_the_reversed_sequence()
  nn.seed(31)
  local x = nn.randn(2, 5, 3)
  local rev = x:index_select(2, {4, 3, 2, 1, 0})
  for _, kind in ipairs{"LSTM", "GRU", "SimpleRNN"} do
    local fwd = nn[kind]{4, return_sequences = true}
    local back = nn[kind]{4, return_sequences = true, go_backwards = true}
    fwd(x)
    back(x)
    back:set_weights(fwd:get_weights())
    check.same_table(back(x):totable(), fwd(rev):totable(), 1e-6, kind)
  end
end

-- Direct calls carry the padding mask as a model's graph does (Keras's
-- eager _keras_mask): emb then LSTM, Bidirectional, pooling and attention
-- called on tensors give what the same layers give inside a model.
function T.direct_calls_carry_the_padding_mask()
  nn.seed(34)
  local ids = nn.tensor{{3, 5, 1, 0, 0}, {2, 0, 4, 0, 0}}
  local emb = nn.Embedding{6, 4, mask_zero = true, name = "eager_mask_embedding"}
  local lstm = nn.LSTM{3, return_sequences = true, name = "eager_mask_lstm"}
  local bi = nn.Bidirectional(nn.GRU{2, return_sequences = true, name = "eager_mask_gru"})
  local pool = nn.GlobalAveragePooling1D{name = "eager_mask_pool"}
  local mha = nn.MultiHeadAttention{num_heads = 2, key_dim = 2, name = "eager_mask_mha"}
  local x = nn.Input{shape = {5}}
  local e = emb(x)
  local model = nn.Model{inputs = x, outputs = {lstm(e), pool(bi(e)), mha(e, e)}}
  local want = model:predict(ids, {verbose = 0})
  local ee = emb(ids)
  check.same_table(nn.mask_of(ee):totable(), {{1, 1, 1, 0, 0}, {1, 0, 1, 0, 0}}, 0, "the embedding's mask")
  check.same_table(lstm(ee):totable(), want[1]:totable(), 1e-6, "LSTM called directly")
  check.same_table(pool(bi(ee)):totable(), want[2]:totable(), 1e-6, "Bidirectional and pooling called directly")
  check.same_table(mha(ee, ee):totable(), want[3]:totable(), 1e-6, "attention called directly")
end

-- Bidirectional over a padding mask, as Keras: each direction's masked
-- steps output zeros (zero_output_for_mask, which Bidirectional sets), the
-- real steps what the two plain layers give (their states skip the masked
-- steps either way), for every merge.
function T.bidirectional_zeros_the_masked_steps()
  nn.seed(33)
  local ids = nn.tensor{{3, 0, 5, 0, 0, 2, 0}, {4, 1, 1, 2, 6, 3, 5}}
  local x = nn.Input{shape = {7}}
  local emb = nn.Embedding{7, 3, mask_zero = true, name = "bi_masked_embedding"} -- (names: other tests count)
  local e = emb(x)
  local bi = nn.Bidirectional(nn.LSTM{4, return_sequences = true})
  local model = nn.Model{inputs = x, outputs = bi(e)}
  local f = nn.LSTM{4, return_sequences = true}
  local b = nn.LSTM{4, return_sequences = true, go_backwards = true}
  local ref = nn.Model{inputs = x, outputs = {f(e), b(e)}}
  local ws = bi:get_weights()
  f:set_weights({ws[1], ws[2], ws[3]})
  b:set_weights({ws[4], ws[5], ws[6]})
  local got = model:predict(ids, {verbose = 0}):totable()
  local outs = ref:predict(ids, {verbose = 0})
  local want_f, want_b = outs[1]:totable(), outs[2]:totable()
  local idt = ids:totable()
  for n = 1, 2 do
    for t = 1, 7 do
      local fh, bh = {table.unpack(got[n][t], 1, 4)}, {table.unpack(got[n][t], 5, 8)}
      if idt[n][t] == 0 then
        check.same_table(fh, {0, 0, 0, 0}, 0, "forward half at masked step " .. t)
        check.same_table(bh, {0, 0, 0, 0}, 0, "backward half at masked step " .. t)
      else -- the backward layer's sequence comes out last step first
        check.same_table(fh, want_f[n][t], 1e-6, "forward half at step " .. t)
        check.same_table(bh, want_b[n][8 - t], 1e-6, "backward half at step " .. t)
      end
    end
  end
  check.eq(require("lunet.core").layer_args(bi.forward_layer.handle).zero_output_for_mask, true,
    "set on the forward layer")
  -- the output's mask is the input's, for every merge (Keras's compute_mask),
  -- so what comes after skips the same steps: a pooled average over the
  -- valid steps written out
  local want_mask = {}
  for n = 1, 2 do
    want_mask[n] = {}
    for t = 1, 7 do want_mask[n][t] = idt[n][t] ~= 0 and 1 or 0 end
  end
  local ee = emb(ids)
  for _, mode in ipairs{"concat", "sum", "mul", "ave"} do
    local m = nn.Bidirectional(nn.GRU{2, return_sequences = true}, {merge_mode = mode})
    check.same_table(nn.mask_of(m(ee)):totable(), want_mask, 0, mode .. ": the input's mask")
  end
  local fwd, bwd = nn.Bidirectional(nn.GRU{2, return_sequences = true}, {merge_mode = "none"})(ee)
  check.same_table(nn.mask_of(fwd):totable(), want_mask, 0, "none: the forward output's mask")
  check.same_table(nn.mask_of(bwd):totable(), want_mask, 0, "none: the backward output's mask")
  local pooled = nn.Model{inputs = x, outputs = nn.GlobalAveragePooling1D{}(bi(e))}:predict(ids, {verbose = 0})
  for n, p in ipairs(pooled:totable()) do
    local sum, count = {0, 0, 0, 0, 0, 0, 0, 0}, 0
    for t = 1, 7 do
      if idt[n][t] ~= 0 then
        count = count + 1
        for k = 1, 8 do sum[k] = sum[k] + got[n][t][k] end
      end
    end
    for k = 1, 8 do sum[k] = sum[k] / count end
    check.same_table(p, sum, 1e-6, "pooled over the valid steps, sample " .. n)
  end
  -- Keras's rule: the two directions run opposite ways
  check.fails(function() nn.Bidirectional(nn.LSTM{3, go_backwards = true}) end,
    "the forward layer has go_backwards = true")
  check.fails(function() nn.Bidirectional(nn.LSTM{3}, {backward_layer = nn.LSTM{3}}) end,
    "the backward layer needs go_backwards = true")
  -- a saved model keeps it (it shows as its parts when read back)
  model:compile{optimizer = "sgd", loss = "mse"}
  local path = os.tmpname()
  model:save(path)
  local again = nn.load_model(path):predict(ids, {verbose = 0}):totable()
  os.remove(path)
  check.same_table(again, got, 0, "the model read back")
  -- without return_sequences the final states are the plain layers' (nothing to zero)
  local last = nn.Bidirectional(nn.GRU{3}, {merge_mode = "sum"})
  local lm = nn.Model{inputs = x, outputs = last(e)}
  local g1, g2 = nn.GRU{3}, nn.GRU{3, go_backwards = true}
  local lr = nn.Model{inputs = x, outputs = nn.Add{}{g1(e), g2(e)}}
  local lw = last:get_weights()
  g1:set_weights({lw[1], lw[2], lw[3]})
  g2:set_weights({lw[4], lw[5], lw[6]})
  check.same_table(lm:predict(ids, {verbose = 0}):totable(), lr:predict(ids, {verbose = 0}):totable(), 1e-6,
    "the final states summed")
end

-- Bidirectional: the forward layer's output beside the backward layer's
-- (put back in step order), from two plain layers with the same weights.
function T.bidirectional_joins_both_directions()
  nn.seed(32)
  local x = nn.randn(2, 5, 3)
  local rev_ids = {4, 3, 2, 1, 0}
  local bi = nn.Bidirectional(nn.LSTM{4, return_sequences = true})
  local y = bi(x)
  check.same_table(y:shape(), {2, 5, 8}, 0, "concat doubles the units")
  local ws = bi:get_weights()
  check.eq(#ws, 6, "forward then backward weights")
  local f, b = nn.LSTM{4, return_sequences = true}, nn.LSTM{4, return_sequences = true}
  f(x)
  b(x)
  f:set_weights({ws[1], ws[2], ws[3]})
  b:set_weights({ws[4], ws[5], ws[6]})
  local want_f = f(x):totable()
  local want_b = b(x:index_select(2, rev_ids)):index_select(2, rev_ids):totable()
  local got = y:totable()
  for n = 1, 2 do
    for t = 1, 5 do
      check.same_table({table.unpack(got[n][t], 1, 4)}, want_f[n][t], 1e-6, "forward half")
      check.same_table({table.unpack(got[n][t], 5, 8)}, want_b[n][t], 1e-6, "backward half, in step order")
    end
  end
  local sum = nn.Bidirectional(nn.GRU{3, return_state = true}, {merge_mode = "sum"})
  local out, hf, hb = sum(x)
  check.same_table(out:totable(), (hf + hb):totable(), 1e-6, "sum of the last states")
  -- set_weights on it and on a model holding it (both raised "attempt to call a nil value")
  local copy = nn.Bidirectional(nn.LSTM{4, return_sequences = true})
  copy(x)
  copy:set_weights(ws)
  check.same_table(copy(x):totable(), got, 0, "set_weights copies both directions")
  local inp = nn.Input{shape = {5, 3}}
  local m = nn.Model{inputs = inp, outputs = nn.Dense{1}(nn.Bidirectional(nn.GRU{2})(inp))}
  local mw = m:get_weights()
  for i, w in ipairs(mw) do mw[i] = w * 0 + i end
  m:set_weights(mw)
  for i, w in ipairs(m:get_weights()) do check.eq(w:reshape(-1):totable()[1], i, "model weight " .. i) end
  check.fails(function() nn.Bidirectional(nn.Dense{3}) end, "an nn.LSTM, nn.GRU or nn.SimpleRNN layer expected")
  check.fails(function() nn.Bidirectional(nn.LSTM{3}, {merge_mode = "max"}) end, "concat, sum, mul, ave or none")
end

-- Keras's recurrent dropout: one mask per sequence, the same at every
-- step, in training only.  A linear SimpleRNN with an identity kernel and
-- no recurrence passes x * mask through, so y / x is one 0-or-2 value per
-- (sample, feature) at every step; with the identity as recurrent kernel
-- and ones as the initial state, h_t = mask^t.
function T.recurrent_dropout_keeps_one_mask_per_sequence()
  nn.seed(33)
  local eye = {}
  for i = 1, 4 do eye[i] = {0, 0, 0, 0}; eye[i][i] = 1 end
  local inp = nn.SimpleRNN{4, activation = "linear", use_bias = false, return_sequences = true, dropout = 0.5}
  local x = nn.rand(8, 6, 4) + 1
  inp(x)
  inp:set_weights({nn.tensor(eye), nn.zeros(4, 4)})
  check.same_table(inp(x):totable(), x:totable(), 1e-6, "inference: no dropout")
  local y, xt = inp(x, true):totable(), x:totable()
  local dropped = 0
  for n = 1, 8 do
    for k = 1, 4 do
      local r = y[n][1][k] / xt[n][1][k]
      assert(math.abs(r) < 1e-5 or math.abs(r - 2) < 1e-5, "kept values are scaled by 1 / (1 - rate)")
      if r < 1 then dropped = dropped + 1 end
      for t = 2, 6 do check.near(y[n][t][k] / xt[n][t][k], r, 1e-5, "the same mask at step " .. t) end
    end
  end
  assert(dropped > 4 and dropped < 28, "about half dropped: " .. dropped)
  local rec = nn.SimpleRNN{4, activation = "linear", use_bias = false, return_sequences = true, recurrent_dropout = 0.5}
  local zero_in = nn.zeros(8, 5, 4)
  rec(zero_in, {initial_state = {nn.ones(8, 4)}})
  rec:set_weights({nn.zeros(4, 4), nn.tensor(eye)})
  local h = rec(zero_in, {initial_state = {nn.ones(8, 4)}, training = true}):totable()
  for n = 1, 8 do
    for k = 1, 4 do
      local m = h[n][1][k]
      assert(m == 0 or math.abs(m - 2) < 1e-6, "h_1 = mask")
      for t = 2, 5 do check.near(h[n][t][k], m ^ t, 1e-4, "h_" .. t .. " = mask^" .. t) end
    end
  end
  check.fails(function() nn.LSTM{4, dropout = 1}:build({3, 2}) end, "dropout must be in [0, 1), got 1")
end

-- GRU with reset_after = false, Keras's original form, against the
-- formula in plain Lua: z = s(x Wz + h Uz + bz), r = s(x Wr + h Ur + br),
-- g = tanh(x Wh + (r h) Uh + bh), h = z h + (1 - z) g.
function T.gru_reset_before_follows_the_formula()
  nn.seed(35)
  local gru = nn.GRU{3, reset_after = false, return_sequences = true}
  local x = nn.randn(2, 4, 2)
  local y = gru(x):totable()
  local w = gru:get_weights()
  local k, r, b = w[1]:totable(), w[2]:totable(), w[3]:totable()
  check.same_table(w[3]:shape(), {9}, 0, "one bias of 3 units")
  local sig = function(v) return 1 / (1 + math.exp(-v)) end
  local xt = x:totable()
  for n = 1, 2 do
    local h = {0, 0, 0}
    for t = 1, 4 do
      local function proj(gate, j, hv)
        local s = b[gate * 3 + j]
        for d = 1, 2 do s = s + xt[n][t][d] * k[d][gate * 3 + j] end
        for i = 1, 3 do s = s + hv[i] * r[i][gate * 3 + j] end
        return s
      end
      local z, rr, rh, g, new = {}, {}, {}, {}, {}
      for j = 1, 3 do z[j], rr[j] = sig(proj(0, j, h)), sig(proj(1, j, h)) end
      for j = 1, 3 do rh[j] = rr[j] * h[j] end
      for j = 1, 3 do g[j] = math.tanh(proj(2, j, rh)) end
      for j = 1, 3 do new[j] = z[j] * h[j] + (1 - z[j]) * g[j] end
      h = new
      check.same_table(y[n][t], h, 1e-5, "step " .. t)
    end
  end
end

-- Embedding against torch.nn.Embedding: rows of the table, and the
-- table's gradient with repeated ids adding up (the scatter kernel).
function T.embedding_matches_torch()
  local emb = nn.Embedding{7, 3}
  local ids = nn.tensor(emb_ref.ids, "int32")
  emb(ids)
  emb:set_weights({nn.tensor(emb_ref.weight)})
  local y = emb(ids, true)
  check.same_table(y:totable(), emb_ref.y, 1e-6, "output")
  ;(y * nn.tensor(emb_ref.r)):sum():backward()
  check.same_table(emb:weights()[1].tensor.grad:totable(), emb_ref.dweight, 1e-6, "table gradient")
end

-- Causal Conv1D: k - 1 zeros before the first step, so step t sums
-- kernel[j] . x[t - (k - 1) + j] over the steps that exist (naive loops).
function T.causal_conv1d_sees_only_the_past()
  nn.seed(34)
  local conv = nn.Conv1D{2, 3, padding = "causal"}
  local x = nn.randn(2, 5, 3)
  local y = conv(x):totable()
  local w, b = conv:get_weights()[1]:totable(), conv:get_weights()[2]:totable()
  local xt = x:totable()
  for n = 1, 2 do
    for t = 1, 5 do
      for f = 1, 2 do
        local sum = b[f]
        for j = 1, 3 do
          local s = t - 3 + j
          if s >= 1 then for c = 1, 3 do sum = sum + w[j][c][f] * xt[n][s][c] end end
        end
        check.near(y[n][t][f], sum, 1e-5, "causal output")
      end
    end
  end
  check.same_table(nn.Conv1D{2, 4, strides = 2, padding = "causal", input_shape = {5, 3}}.output_shape, {3, 2}, 0,
    "out = ceil(in / stride)")
end

-- Keras's Masking: a step whose every feature is mask_value is zeroed and
-- masked, so an LSTM over zero-padded sequences gives what it gives on the
-- sequences without the padding (the same weights), and the loss skips it.
function T.masking_pads_float_sequences()
  nn.seed(3)
  local seq = nn.randn(2, 5, 3):totable()
  for t = 4, 5 do seq[1][t] = {0, 0, 0} end
  seq[2][5] = {0, 0, 0}
  seq[2][2] = {0, 0.5, 0} -- a step with one feature not 0 stays
  local lstm = nn.LSTM{4}
  local m = nn.Sequential{nn.Masking{input_shape = {5, 3}}, lstm}
  local y = m:predict(nn.tensor(seq)):totable()
  for i, n in ipairs{3, 4} do
    local rows = {}
    for t = 1, n do rows[t] = seq[i][t] end
    local short = nn.LSTM{4}
    short(nn.tensor({rows}))
    short:set_weights(lstm:get_weights())
    check.same_table(y[i], short(nn.tensor({rows})):totable()[1], 1e-6, "sequence " .. i .. " without its padding")
  end
  local masked = nn.Masking{mask_value = 0.5}(nn.tensor{{{0.5, 0.5}, {0.5, 1}}})
  check.same_table(masked:totable(), {{{0, 0}, {0.5, 1}}}, 0, "zeroed where every feature is mask_value")
  check.same_table(nn.mask_of(masked):totable(), {{0, 1}}, 0, "and masked there")
end

-- Keras 3's BatchNormalization under a padding mask: in training its batch
-- statistics are the valid steps' (weighted moments), so a training step of
-- Masking -> BatchNormalization -> Dense on zero-padded sequences, with the
-- masked loss, is the step of BatchNormalization -> Dense on the valid steps
-- alone taken as a batch of vectors: the same loss, gradients (gamma, beta,
-- the Dense) and moving statistics.  Inference uses the moving ones.
local function masked_batchnorm(o)
  nn.seed(8)
  local seq = (nn.randn(3, 4, 2) * 2 + 1):totable()
  local target = nn.randn(3, 4, 1):totable()
  local pad = {{3, 4}, {4}, {}}
  for i, steps in ipairs(pad) do for _, t in ipairs(steps) do seq[i][t] = {0, 0} end end
  local rows, want = {}, {}
  for i = 1, 3 do
    for t = 1, 4 do
      if seq[i][t][1] ~= 0 then rows[#rows + 1], want[#want + 1] = seq[i][t], target[i][t] end
    end
  end
  local function compile(m)
    m:compile{optimizer = nn.optimizers.SGD{learning_rate = 0.5}, loss = "mse"}
    return m
  end
  local padded = compile(nn.Sequential{nn.Masking{input_shape = {4, 2}},
    nn.BatchNormalization{momentum = 0.5, scale = o.scale, center = o.center}, nn.Dense(1)})
  local flat = compile(nn.Sequential{nn.BatchNormalization{momentum = 0.5, input_shape = {2}, scale = o.scale,
    center = o.center}, nn.Dense(1)})
  flat:set_weights(padded:get_weights())
  for step = 1, 2 do
    local la = padded:train_on_batch(nn.tensor(seq), nn.tensor(target))
    local lb = flat:train_on_batch(nn.tensor(rows), nn.tensor(want))
    check.near(la, lb, 1e-5, "step " .. step .. ": the loss over the valid steps")
    local wa, wb = padded:get_weights(), flat:get_weights()
    for k = 1, #wb do
      check.same_table(wa[k]:totable(), wb[k]:totable(), 1e-5, "step " .. step .. ": weight " .. k ..
        " (gamma, beta, moving mean, moving variance, kernel, bias; without the switched-off ones)")
    end
  end
  -- inference normalizes every step by the moving statistics
  local ya = padded:predict(nn.tensor(seq)):totable()
  local yb = flat:predict(nn.tensor(rows)):totable()
  local r = 0
  for i = 1, 3 do
    for t = 1, 4 do
      if seq[i][t][1] ~= 0 then
        r = r + 1
        check.near(ya[i][t][1], yb[r][1], 1e-5, "inference at a valid step")
      end
    end
  end
end

function T.batchnorm_statistics_leave_masked_steps_out()
  for _, o in ipairs{{}, {scale = false}, {center = false}} do masked_batchnorm(o) end
end

-- Masks through layers as Keras 3 carries them: a layer without
-- supports_masking (Conv1D, MaxPooling1D, Flatten, Reshape, ...) drops the
-- mask; the element-wise merges take the AND of their inputs' masks (in
-- any order); Concatenate counts an unmasked input as present (along the
-- features: no mask left) and joins masks along the steps.
function T.masks_through_layers_as_keras()
  nn.seed(6)
  local ids = nn.tensor{{1, 2, 0, 0, 0}, {3, 1, 2, 0, 0}}
  local other = nn.tensor{{1, 2, 3, 0, 0}, {3, 1, 0, 0, 0}}
  local emb = nn.Embedding{5, 3, mask_zero = true}
  local e, f = emb(ids), emb(other)
  local conv = nn.Conv1D{3, 3, padding = "same"}
  assert(nn.mask_of(conv(e)) == nil, "Conv1D drops the mask")
  assert(nn.mask_of(nn.MaxPooling1D(2)(e)) == nil, "MaxPooling1D drops the mask")
  assert(nn.mask_of(nn.Flatten()(e)) == nil, "Flatten drops the mask")
  assert(nn.mask_of(nn.Dense(2)(e)) ~= nil, "Dense carries it")
  local both = {{1, 1, 0, 0, 0}, {1, 1, 0, 0, 0}} -- the AND of the two masks
  check.same_table(nn.mask_of(nn.Add()({e, f})):totable(), both, 0, "Add: AND")
  check.same_table(nn.mask_of(nn.Add()({f, e})):totable(), both, 0, "Add: AND, either order")
  assert(nn.mask_of(nn.Concatenate()({e, nn.Dense(3)(nn.randn(2, 5, 3))})) == nil,
    "Concatenate on the features with an unmasked input: no mask")
  check.same_table(nn.mask_of(nn.Concatenate{axis = 1}({e, f})):totable(),
    {{1, 1, 0, 0, 0, 1, 1, 1, 0, 0}, {1, 1, 1, 0, 0, 1, 1, 0, 0, 0}}, 0, "Concatenate on the steps joins the masks")
  -- so GlobalAveragePooling1D after a Conv1D averages every step, as Keras's
  local pooled = nn.GlobalAveragePooling1D()(conv(e)):totable()
  local full = conv(e):mean(2):totable()
  check.same_table(pooled, full, 1e-6, "the mean over every step after a Conv1D")
end

-- Dilated causal convolutions (WaveNet's stack, kernel 2, rates 1, 2, 4)
-- see 8 steps back: they learn y[t] = x[t - 6], which the same stack
-- undilated (4 steps back) cannot, as its held-out loss shows.
function T.dilated_causal_conv1d_learns_a_long_echo()
  local function data(n, steps, seed)
    nn.seed(seed)
    local x = nn.randn(n, steps, 1)
    local xt, y = x:totable(), {}
    for i = 1, n do
      y[i] = {}
      for t = 1, steps do y[i][t] = {t > 6 and xt[i][t - 6][1] or 0} end
    end
    return x, nn.tensor(y)
  end
  local x, y = data(256, 16, 1)
  local xv, yv = data(64, 16, 2)
  local loss = {}
  for _, rates in ipairs{{1, 2, 4}, {1, 1, 1}} do
    nn.seed(5)
    local ls = {}
    for i, r in ipairs(rates) do
      ls[i] = nn.Conv1D{8, 2, dilation_rate = r, padding = "causal", input_shape = i == 1 and {16, 1} or nil}
    end
    ls[#ls + 1] = nn.Dense(1)
    local m = nn.Sequential(ls)
    m:compile{optimizer = nn.optimizers.Adam{learning_rate = 0.02}, loss = "mse"}
    m:fit(x, y, {epochs = 60, batch_size = 32, verbose = 0})
    loss[#loss + 1] = m:evaluate(xv, yv, {verbose = 0}).loss
  end
  assert(loss[1] < 1e-3, "the dilated stack did not learn the echo: held-out loss " .. loss[1])
  assert(loss[2] > 0.3, "the undilated stack should not reach 6 steps back: held-out loss " .. loss[2])
end

-- An optimizer applied to a parameter list rebuilt each step trains it.
function T.a_training_loop_may_rebuild_its_parameter_list()
  local w = nn.zeros(2):requires_grad(true)
  local opt = nn.optimizers.SGD{learning_rate = 0.5}
  for _ = 1, 3 do
    ((w - nn.tensor{1, 2}):square():sum()):backward()
    opt:apply({w})
  end
  assert(w:totable()[2] > 1.5, "it trained")
end

check.run(T)
