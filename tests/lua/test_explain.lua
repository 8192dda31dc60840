-- nn.explain: a hand-made model that only looks at one corner lights up
-- that corner in every method; the gradients behind saliency and Grad-CAM
-- against central finite differences of the logit; integrated gradients'
-- completeness; functional models; Vulkan against the CPU; the overlay PNG.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local check = require "check"
local nn = require "lunet"

local T = {}

-- 8x8x1 images.  A 1x1 convolution splits x into relu(x) and relu(-x); the
-- softmax layer's class 0 logit is the sum of relu(x) over the top-left
-- 3x3 corner (class 1 its negative): nothing else matters to it.
local function corner_model()
  local m = nn.Sequential{nn.Conv2D{2, 1, activation = "relu", input_shape = {8, 8, 1}, name = "split"},
    nn.Flatten(), nn.Dense{2, activation = "softmax"}}
  m:build()
  m.layers[1]:set_weights({nn.tensor({{{{1, -1}}}}), nn.zeros(2)})
  local w = {}
  for i = 1, 8 * 8 * 2 do w[i] = {0, 0} end
  for r = 0, 2 do for c = 0, 2 do w[(r * 8 + c) * 2 + 1] = {1, -1} end end
  m.layers[3]:set_weights({nn.tensor(w), nn.zeros(2)})
  return m
end

-- Bright top-left corner, dark (negative) bottom-right corner, noise elsewhere.
local function corner_image(seed)
  math.randomseed(seed)
  local img = {}
  for r = 1, 8 do
    img[r] = {}
    for c = 1, 8 do
      local v = (math.random() - 0.5) * 0.2
      if r <= 3 and c <= 3 then v = 0.5 + math.random() * 0.5 end
      if r >= 6 and c >= 6 then v = -1 end
      img[r][c] = {v}
    end
  end
  return img
end

local function in_corner(r, c) return r <= 3 and c <= 3 end

-- Every map lights the corner and nothing else (outside: at most `leak`
-- times the corner's least value; Grad-CAM also sees the noise elsewhere,
-- weakly, since it weighs whole channels).
local function only_corner(maps, what, leak)
  for i, map in ipairs(maps:totable()) do
    local inside, outside = math.huge, 0
    for r = 1, 8 do
      for c = 1, 8 do
        local v = math.abs(map[r][c])
        if in_corner(r, c) then inside = math.min(inside, v) else outside = math.max(outside, v) end
      end
    end
    if not (inside > 0.05 and outside <= (leak or 1e-6 / inside) * inside) then
      error(string.format("%s, image %d: least inside the corner %g, most outside %g", what, i, inside, outside), 2)
    end
  end
end

function T.a_model_that_looks_at_one_corner_lights_up_that_corner()
  local m = corner_model()
  local x = nn.tensor({corner_image(1), corner_image(2)})
  -- the softmax is skipped: class 0's logit is the corner's sum
  local z = nn.explain.logits(m, x):totable()
  local want = 0
  for r = 1, 3 do for c = 1, 3 do want = want + x:totable()[1][r][c][1] end end
  check.near(z[1][1], want, 1e-5, "logit 0")
  check.near(z[1][2], -want, 1e-5, "logit 1")
  local s, cls = nn.explain.saliency(m, x)
  check.same_table(cls, {0, 0}, 0, "predicted classes")
  check.same_table(s:shape(), {2, 8, 8}, 0, "map shape")
  only_corner(s, "saliency")
  only_corner(nn.explain.smoothgrad(m, x, {samples = 8, noise = 0.05}), "smoothgrad")
  local ig, _, info = nn.explain.integrated_gradients(m, x, {steps = 16})
  only_corner(ig, "integrated gradients")
  check.near(info.delta, 0, 1e-4, "completeness of a piecewise-linear path")
  local cam, _, layer = nn.explain.grad_cam(m, x)
  check.eq(layer, "split", "default layer: the last with an image output")
  only_corner(cam, "grad_cam", 0.2)
  -- the dark corner, as strong as the bright one but in the channel the
  -- class ignores, stays black
  for _, map in ipairs(cam:totable()) do
    for r = 6, 8 do for c = 6, 8 do check.eq(map[r][c], 0, "Grad-CAM on the ignored corner") end end
  end
  for _, map in ipairs(cam:totable()) do
    local peak = 0
    for r = 1, 8 do for c = 1, 8 do peak = math.max(peak, map[r][c]) end end
    check.near(peak, 1, 1e-6, "Grad-CAM scaled to [0, 1]")
  end
  -- asking for class 1 (its logit falls as the corner brightens): the
  -- weights are negative, ReLU leaves nothing
  local cam1 = nn.explain.grad_cam(m, x, {class = 1})
  check.near(cam1:abs():max():item(), 0, 0, "class 1's Grad-CAM")
end

-- A small CNN with random weights (conv, pooling, dense, softmax).
local function cnn(channels)
  nn.seed(11)
  local m = nn.Sequential{nn.Conv2D{4, 3, padding = "same", activation = "relu", input_shape = {6, 6, channels}, name = "c1"},
    nn.Conv2D{3, 3, activation = "tanh", name = "c2"}, nn.MaxPooling2D{2}, nn.Flatten(),
    nn.Dense{3, activation = "softmax"}}
  m:build()
  return m
end

function T.saliency_gradient_against_finite_differences()
  local m = cnn(2)
  nn.seed(3)
  local x = nn.randn(2, 6, 6, 2)
  local g, _, cls = nn.explain.gradients(m, x, {class = {2, 0}})
  local base = x:totable()
  local gt = g:totable()
  local eps = 1e-2
  local worst = 0
  for _, p in ipairs({{1, 1, 1, 1}, {1, 3, 4, 2}, {2, 6, 6, 1}, {2, 2, 5, 2}, {1, 5, 2, 1}}) do
    local i, r, c, ch = table.unpack(p)
    local function logit(delta)
      local t = nn.tensor(base)
      local v = base[i][r][c][ch] + delta
      local copy = t:totable()
      copy[i][r][c][ch] = v
      return nn.explain.logits(m, nn.tensor(copy)):totable()[i][cls[i] + 1]
    end
    local fd = (logit(eps) - logit(-eps)) / (2 * eps)
    worst = math.max(worst, math.abs(fd - gt[i][r][c][ch]))
    check.near(gt[i][r][c][ch], fd, 2e-2, string.format("d logit / d x at %d,%d,%d,%d", i, r, c, ch))
  end
  -- the saliency map is |g|, maximum over channels
  local s = nn.explain.saliency(m, x, {class = {2, 0}}):totable()
  check.near(s[1][3][4], math.max(math.abs(gt[1][3][4][1]), math.abs(gt[1][3][4][2])), 1e-6, "saliency = max |g|")
end

function T.grad_cam_gradient_against_finite_differences()
  local m = cnn(1)
  nn.seed(4)
  local x = nn.randn(1, 6, 6, 1)
  local g, a, cls = nn.explain.gradients(m, x, {layer = "c1"})
  local at = a:totable()
  for _, p in ipairs({{1, 1, 1}, {3, 4, 2}, {6, 6, 4}, {2, 5, 3}}) do
    local r, c, k = table.unpack(p)
    local function logit(delta)
      local copy = nn.tensor(at):totable()
      copy[1][r][c][k] = copy[1][r][c][k] + delta
      return nn.explain.logits(m, x, {layer = "c1", activation = nn.tensor(copy)}):totable()[1][cls[1] + 1]
    end
    local fd = (logit(1e-2) - logit(-1e-2)) / 2e-2
    check.near(g:totable()[1][r][c][k], fd, 2e-2, string.format("d logit / d A at %d,%d,%d", r, c, k))
  end
  -- the map from those parts, computed here: ReLU(sum_k mean(g_k) A_k), scaled to 1
  local gt = g:totable()
  local weights = {}
  for k = 1, 4 do
    weights[k] = 0
    for r = 1, 6 do for c = 1, 6 do weights[k] = weights[k] + gt[1][r][c][k] / 36 end end
  end
  local want, peak = {}, 0
  for r = 1, 6 do
    want[r] = {}
    for c = 1, 6 do
      local v = 0
      for k = 1, 4 do v = v + weights[k] * at[1][r][c][k] end
      want[r][c] = math.max(v, 0)
      peak = math.max(peak, want[r][c])
    end
  end
  for r = 1, 6 do for c = 1, 6 do want[r][c] = peak > 0 and want[r][c] / peak or 0 end end
  -- c1 keeps the input's 6x6, so the resize is the identity
  check.same_table(nn.explain.grad_cam(m, x, {layer = "c1"}):totable()[1], want, 1e-5, "Grad-CAM map")
end

function T.integrated_gradients_complete_within_two_percent()
  local m = cnn(3)
  nn.seed(5)
  local x = nn.rand(3, 6, 6, 3)
  local maps, cls, info = nn.explain.integrated_gradients(m, x, {steps = 64})
  check.same_table(maps:shape(), {3, 6, 6}, 0, "maps")
  if not (info.delta < 0.02) then error(string.format("completeness gap %.4f, above 2%%", info.delta)) end
  -- and the attributions sum to the logit difference computed here
  local zx = nn.explain.logits(m, x):totable()
  local z0 = nn.explain.logits(m, nn.zeros(3, 6, 6, 3)):totable()
  local sums = info.attributions:reshape{3, 108}:sum(2):totable()
  for i = 1, 3 do
    check.near(sums[i], zx[i][cls[i] + 1] - z0[i][cls[i] + 1], 0.02, "image " .. i)
  end
end

function T.functional_model()
  nn.seed(6)
  local inp = nn.Input{shape = {6, 6, 1}}
  local a = nn.Conv2D{3, 3, padding = "same", activation = "relu", name = "left"}(inp)
  local b = nn.Conv2D{3, 1, activation = "relu", name = "right"}(inp)
  local joined = nn.Add()({a, b})
  local out = nn.Dense{2, activation = "softmax"}(nn.Flatten()(joined))
  local m = nn.Model{inputs = inp, outputs = out}
  local x = nn.randn(2, 6, 6, 1)
  local cam, _, layer = nn.explain.grad_cam(m, x)
  check.eq(layer, m.nodes[3].layer.name, "the last image layer (the Add)")
  check.same_table(cam:shape(), {2, 6, 6}, 0, "Grad-CAM")
  local g = nn.explain.gradients(m, x, {class = 1}):totable()
  local base = x:totable()
  local function logit(delta)
    local copy = nn.tensor(base):totable()
    copy[2][3][3][1] = copy[2][3][3][1] + delta
    return nn.explain.logits(m, nn.tensor(copy)):totable()[2][2]
  end
  check.near(g[2][3][3][1], (logit(1e-2) - logit(-1e-2)) / 2e-2, 2e-2, "functional gradient")
  check.fails(function() nn.explain.grad_cam(m, x, {layer = "nope"}) end, "no layer 'nope' in the model (layers: ")
  check.fails(function() nn.explain.saliency(m, x, {class = 2}) end, "class 2 for image 1: the model has 2 classes")
  check.fails(function() nn.explain.saliency(m, nn.randn(6, 6, 1)) end, "images (N, H, W, C) expected, got 3 axes")
end

function T.vulkan_agrees_with_the_cpu()
  if not check.vulkan() then return end
  local m = cnn(1)
  nn.seed(8)
  local x = nn.randn(2, 6, 6, 1)
  local s_cpu, cam_cpu = nn.explain.saliency(m, x), nn.explain.grad_cam(m, x)
  m:to("vulkan")
  local s_vk, cam_vk = nn.explain.saliency(m, x), nn.explain.grad_cam(m, x)
  check.same_table(s_vk:totable(), s_cpu:totable(), 1e-4, "saliency")
  check.same_table(cam_vk:totable(), cam_cpu:totable(), 1e-4, "grad_cam")
end

function T.overlay_writes_a_picture_that_shows_the_map()
  local m = corner_model()
  local x = nn.tensor({corner_image(3)})
  local path = check.tmpdir() .. "/overlay.png"
  check.eq(nn.explain.overlay(x + 1, nn.explain.saliency(m, x), path, {labels = {0}, class_names = {"corner"}}), path)
  local img = nn.utils.load_img(path):totable()
  -- the right-hand copy (the overlay) is red-tinted in its top-left corner
  -- and not in its bottom-right one: find the overlay by the scale used
  local h, w = #img, #img[1]
  check.eq(h > 100 and w > 200, true, "picture size")
  local scale = math.floor(112 / 8)
  local ox, oy = 5 + 8 * scale + 4, 6
  local hot = img[oy + scale + 1][ox + scale + 1]
  local cold = img[oy + 7 * scale][ox + 7 * scale]
  check.eq(hot[1] > hot[3] + 60, true, string.format("red over the corner (got %d, %d, %d)", hot[1], hot[2], hot[3]))
  check.eq(cold[3] >= cold[1], true, string.format("blue away from it (got %d, %d, %d)", cold[1], cold[2], cold[3]))
  check.fails(function() nn.explain.overlay(x, nn.zeros(1, 4, 4), path) end, "maps (1, 4, 4) do not match images")
end

-- The output's softmax as a layer of its own (Softmax, or Activation
-- "softmax"/"sigmoid") is left out as the Dense layer's activation is: the
-- logits, gradients and maps equal those of the same model with the
-- activation in its Dense layer (they were of the probabilities).
function T.a_softmax_layer_at_the_end_is_left_out()
  local function build(last)
    nn.seed(11)
    local x = nn.Input{shape = {6, 6, 2}}
    local h = nn.Flatten()(nn.Conv2D{3, 3, activation = "tanh"}(x))
    local y
    if last == "dense" then
      y = nn.Dense{3, activation = "softmax"}(h)
    else
      y = nn.Dense{3}(h)
      y = last == "softmax" and nn.Softmax{}(y) or nn.Activation{last}(y)
    end
    return nn.Model{inputs = x, outputs = y}
  end
  nn.seed(3)
  local x = nn.randn(2, 6, 6, 2)
  local want = nn.explain.logits(build("dense"), x):totable()
  local wantg = nn.explain.gradients(build("dense"), x, {class = 1}):totable()
  for _, last in ipairs{"softmax", "sigmoid"} do
    local m = build(last)
    check.same_table(nn.explain.logits(m, x):totable(), want, 0, last .. " layer: logits")
    check.same_table(nn.explain.gradients(m, x, {class = 1}):totable(), wantg, 0, last .. " layer: gradients")
  end
  local probs = build("softmax"):predict(x):totable()
  check.near(probs[1][1] + probs[1][2] + probs[1][3], 1, 1e-5, "predict still gives probabilities")
end

-- Options are checked (an unknown one was ignored, a bad one failed deep
-- inside), and an unbuilt model is built from one image's shape (it was
-- given the batch's, so the first layer refused its input).
function T.options_are_checked_and_unbuilt_models_build()
  local m = nn.Sequential{nn.Flatten{}, nn.Dense{3}}
  local x = nn.rand(2, 4, 4, 1)
  check.same_table(nn.explain.saliency(m, x):shape(), {2, 4, 4}, 0, "an unbuilt model")
  check.fails(function() nn.explain.saliency(m, x, {clas = 1}) end,
    "bad argument 'clas' to 'nn.explain.saliency' (unknown option; valid: class)")
  check.fails(function() nn.explain.smoothgrad(m, x, {noise = "lots"}) end,
    "nn.explain.smoothgrad: noise must be a number >= 0 (a fraction of each image's range), got lots")
  check.fails(function() nn.explain.integrated_gradients(m, x, {baseline = nn.zeros(1, 4, 4, 1)}) end,
    "nn.explain.integrated_gradients: baseline of shape (1, 4, 4, 1), the images (2, 4, 4, 1)")
  check.fails(function() nn.explain.grad_cam(m, x, {layers = "dense"}) end, "unknown option; valid: class, layer")
end

check.run(T)
