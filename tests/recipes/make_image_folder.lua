-- Writes a folder of labelled pictures for the image_folder recipe's test:
--   lunet make_image_folder.lua DIR N
-- DIR/hstripes, DIR/vstripes, DIR/disc with N files each: sizes 24..47,
-- random phase and colour, noise; odd files PNG, even ones JPEG.
local nn = require "lunet"
local dir, n = arg[1], math.tointeger(tonumber(arg[2] or "40"))
math.randomseed(7)
local kinds = { "hstripes", "vstripes", "disc" }
for _, kind in ipairs(kinds) do
  os.execute(string.format("mkdir -p '%s/%s'", dir, kind))
  for i = 1, n do
    local h, w = math.random(24, 47), math.random(24, 47)
    local period, phase = math.random(4, 8), math.random(0, 7)
    local base = { math.random(0, 120), math.random(0, 120), math.random(0, 120) }
    local img = {}
    for y = 1, h do
      local row = {}
      for x = 1, w do
        local on
        if kind == "hstripes" then on = ((y + phase) // (period // 2)) % 2 == 0
        elseif kind == "vstripes" then on = ((x + phase) // (period // 2)) % 2 == 0
        else on = (y - h / 2) ^ 2 + (x - w / 2) ^ 2 < (math.min(h, w) / 3) ^ 2 end
        local px = {}
        for c = 1, 3 do px[c] = math.max(0, math.min(255, base[c] + (on and 120 or 0) + math.random(-20, 20))) end
        row[x] = px
      end
      img[y] = row
    end
    nn.utils.save_img(string.format("%s/%s/%03d.%s", dir, kind, i, i % 2 == 1 and "png" or "jpg"), nn.tensor(img), {scale = false})
  end
end
