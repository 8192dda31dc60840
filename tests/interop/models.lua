-- The two networks of the PyTorch interop test, with weights set from a
-- formula (no initializer, no BLAS: the same bytes on every machine):
-- the seed CNN (recipes/seed_cnn.lua, the full CIFAR-10 network) and the
-- residual network of recipes/resnet.lua at widths 8/16/32 (the same
-- graph, a smaller file).  Also the images both sides predict.
--   local m = require("models")(nn); m.cifar_cnn(), m.resnet(), m.images()
return function(nn)
  local here = debug.getinfo(1, "S").source:sub(2):gsub("[^/]+$", "")
  local M = {}

  -- Every weight from a formula of its position in the model and the
  -- element's index: small values of both signs, and for BatchNormalization's
  -- gamma and moving variance positive ones.
  local function fill(model)
    local k = 0
    for _, l in ipairs(model.layers) do
      local ws = {}
      for i, w in ipairs(l:weights()) do
        k = k + 1
        local shape, v = w.tensor:shape(), {}
        for j = 1, w.tensor:numel() do
          local x = 0.2 * math.sin(0.37 * j + 1.3 * k)
          v[j] = (w.name == "gamma" or w.name == "moving_variance") and math.abs(x) + 0.5 or x
        end
        ws[i] = nn.tensor(v):reshape(shape)
      end
      if #ws > 0 then l:set_weights(ws) end
    end
    return model
  end

  function M.cifar_cnn() return fill(dofile(here .. "../../recipes/seed_cnn.lua")(nn, {32, 32, 3})) end
  function M.resnet() return fill(dofile(here .. "../../recipes/resnet.lua")(nn, {32, 32, 3}, {widths = {8, 16, 32}})) end

  -- N images (N, 32, 32, 3) of 8-bit values as float32.
  function M.images(n)
    local v = {}
    for i = 0, n * 32 * 32 * 3 - 1 do v[i + 1] = (i * 37 + (i // 3072) * 101) % 256 end
    return nn.tensor(v):reshape({n, 32, 32, 3})
  end
  return M
end
