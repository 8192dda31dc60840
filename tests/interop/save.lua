-- Writes the interop test's two models (models.lua) with model:save into
-- the folder given: cifar_cnn.safetensors, resnet.safetensors.
local here = arg[0]:gsub("[^/]+$", "")
package.path = here .. "?.lua;" .. package.path
local nn = require "lunet"
local m = require("models")(nn)
for _, name in ipairs({"cifar_cnn", "resnet"}) do m[name]():save(arg[1] .. "/" .. name .. ".safetensors") end
