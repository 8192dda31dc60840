-- Keras's training progress: "Epoch e/E", then one line redrawn in place on
-- a terminal (throttled), or one line per epoch when not a terminal; verbose
-- 2 writes Keras's "32/32 - 1s - 10ms/step - loss: ..." once an epoch.
local C = require "lunet.core"

local Progress = {}
Progress.__index = Progress

local function fmt_time(s)
  if s >= 3600 then return string.format("%d:%02d:%02d", s // 3600, (s % 3600) // 60, math.floor(s % 60)) end
  if s >= 60 then return string.format("%d:%02d", s // 60, math.floor(s % 60)) end
  return string.format("%ds", math.floor(s + 0.5))
end

local function fmt_step(s)
  if s >= 1 then return string.format("%.0fs/step", s) end
  if s >= 1e-3 then return string.format("%.0fms/step", s * 1e3) end
  return string.format("%.0fus/step", s * 1e6)
end

function Progress.new(steps, verbose, out)
  out = out or io.stdout
  local tty = C.isatty(1)
  return setmetatable({ steps = steps, verbose = verbose, out = out, tty = tty, start = C.now(), last = -1 }, Progress)
end

function Progress:metrics_text(logs, keys)
  local parts = {}
  for _, k in ipairs(keys) do
    if logs[k] then parts[#parts + 1] = string.format(" - %s: %.4f", k, logs[k]) end
  end
  return table.concat(parts)
end

function Progress:bar(step)
  local width = 20
  local done = self.steps > 0 and math.floor(width * step / self.steps) or width
  if self.tty then
    return "\27[1m" .. string.rep("━", done) .. "\27[0m\27[2m" .. string.rep("━", width - done) .. "\27[0m"
  end
  return string.rep("=", done) .. string.rep(".", width - done)
end

function Progress:update(step, logs, keys, final)
  if self.verbose == 0 then return end
  local now = C.now()
  if not final and (not self.tty or now - self.last < 0.05) then return end
  if self.verbose == 2 and not final then return end
  self.last = now
  local elapsed = now - self.start
  local per = step > 0 and elapsed / step or 0
  local w = #tostring(self.steps)
  local time = final and fmt_time(elapsed) or ("ETA: " .. fmt_time(per * (self.steps - step)))
  local line
  if self.verbose == 2 then -- Keras's one line an epoch: no bar, nothing redrawn
    line = string.format("%" .. w .. "d/%d - %s - %s%s", step, self.steps, time, fmt_step(per),
      self:metrics_text(logs, keys))
    self.out:write(line, "\n")
    self.out:flush()
    return
  end
  line = string.format("%" .. w .. "d/%d %s %s %s%s", step, self.steps, self:bar(step), time, fmt_step(per),
    self:metrics_text(logs, keys))
  if self.tty then
    self.out:write("\r\27[K", line)
    if final then self.out:write("\n") end
  elseif final then
    self.out:write(line, "\n")
  end
  self.out:flush()
end

return Progress
