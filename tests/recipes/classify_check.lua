-- For classify_example.sh: `make DIR` writes a small CNN (random weights,
-- 20x24x3 images of 0..255), 12 PNG and JPEG images and the labels;
-- `check DIR` holds classify's output (DIR/one.txt) against the model's
-- predictions on the same files loaded here.
local nn = require "lunet"
local mode, dir = arg[1], arg[2]
local names = {"cat", "dog", "bird", "fish", "frog"}
if mode == "make" then
  nn.seed(3)
  local m = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {20, 24, 3}},
    nn.Conv2D{6, 3, activation = "relu"}, nn.MaxPooling2D(2), nn.Flatten(), nn.Dense{5, activation = "softmax"}}
  m:build()
  m.class_names = names -- saved with the model: classify prints them without --labels
  m:save(dir .. "/model.lunet")
  local files = {}
  for i = 1, 12 do
    local path = string.format("%s/img%02d.%s", dir, i, i % 3 == 0 and "jpg" or "png")
    nn.utils.save_img(path, (nn.rand(20, 24, 3) * 255):clip(0, 255))
    files[#files + 1] = path
  end
  local f = assert(io.open(dir .. "/files", "w"))
  f:write(table.concat(files, " "))
  f:close()
  f = assert(io.open(dir .. "/labels", "w"))
  f:write(table.concat(names, ","))
  f:close()
  -- a binary classifier: one sigmoid unit, two class names (P(dog) = p)
  local b = nn.Sequential{nn.Rescaling{1 / 255, input_shape = {20, 24, 3}}, nn.Flatten(),
    nn.Dense{1, activation = "sigmoid"}}
  b:build()
  b.class_names = {"cat", "dog"}
  b:save(dir .. "/binary.lunet")
  return
end
if mode == "binary" then -- DIR/binary.txt: classify's answers for the binary model
  local m = nn.load_model(dir .. "/binary.lunet")
  local n = 0
  for line in io.lines(dir .. "/binary.txt") do
    local file, a, pa, b, pb = line:match("^(.-): (%S+) (%S+) (%S+) (%S+)$")
    if not file then error("classify's line for the binary model: " .. line) end
    local p = m:predict(nn.utils.load_img(file):reshape(1, 20, 24, 3)):item()
    local want = p > 0.5 and {"dog", p, "cat", 1 - p} or {"cat", 1 - p, "dog", p}
    if a ~= want[1] or b ~= want[3] or math.abs(tonumber(pa) - want[2]) > 1e-4 or math.abs(tonumber(pb) - want[4]) > 1e-4 then
      error(string.format("%s: classify says %s %s %s %s, lunet %s %.4f %s %.4f", file, a, pa, b, pb, table.unpack(want)))
    end
    n = n + 1
  end
  if n ~= 12 then error(n .. " files classified by the binary model, expected 12") end
  return
end
local m = nn.load_model(dir .. "/model.lunet")
if table.concat(m.class_names or {}, ",") ~= table.concat(names, ",") then
  error("the reloaded model's class_names: " .. table.concat(m.class_names or {"(none)"}, ","))
end
local n = 0
for line in io.lines(dir .. "/one.txt") do
  local file, rest = line:match("^(.-): (.*)$")
  local p = m:predict(nn.utils.load_img(file):reshape(1, 20, 24, 3)):totable()[1]
  local order = {1, 2, 3, 4, 5}
  table.sort(order, function(a, b) return p[a] > p[b] end)
  local i = 0
  for name, prob in rest:gmatch("(%S+) (%S+)") do
    i = i + 1
    if name ~= names[order[i]] or math.abs(tonumber(prob) - p[order[i]]) > 1e-4 then
      error(string.format("%s: classify says %s %s at place %d, lunet %s %.4f", file, name, prob, i, names[order[i]],
        p[order[i]]))
    end
  end
  if i ~= 3 then error(file .. ": " .. i .. " classes printed, expected 3") end
  n = n + 1
end
if n ~= 12 then error(n .. " files classified, expected 12") end
