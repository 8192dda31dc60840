-- nn.profile(fn, {trace = "trace.json", print = print, top = 25}) runs fn
-- and prints where its time went: per layer (forward and backward calls,
-- time, GFLOP/s, share of the run) and per op (each backend call the core
-- made: calls, total and mean time, GFLOP/s, share), then returns a report
-- table and fn's results.  With `trace` it also writes a Chrome trace-event
-- file (chrome://tracing or https://ui.perfetto.dev open it): layers as
-- spans, the ops inside them.  model:fit(x, y, {profile = true}) profiles
-- the fit.  Only this Lua state's context is recorded (the work of a
-- prefetching thread is not); on Vulkan each op waits for the device while
-- profiled, so the times are the device's and the run is slower.
local C = require "lunet.core"

local M = {}

local function fail(msg) error("nn.profile: " .. msg, 3) end

-- Groups events by name: calls, total time, flops.
local function by_name(events, keep)
  local rows, index = {}, {}
  for _, e in ipairs(events) do
    if keep(e) then
      local r = index[e.name]
      if not r then
        r = { name = e.name, calls = 0, us = 0, flops = 0 }
        index[e.name] = r
        rows[#rows + 1] = r
      end
      r.calls, r.us, r.flops = r.calls + 1, r.us + e.dur, r.flops + e.flops
    end
  end
  table.sort(rows, function(a, b) return a.us > b.us end)
  return rows
end

-- Each op's innermost enclosing layer pass (by time: a layer's pass spans
-- the ops it ran), so that layers get their flops, and each pass the time
-- of the passes nested in it (a sub-model's layers, the layers a Lambda
-- calls), so that layers get their own time; returns the time inside
-- top-level layer passes.
local function attribute(events)
  local sorted = {}
  for i, e in ipairs(events) do sorted[i] = e end
  table.sort(sorted, function(a, b)
    if a.ts ~= b.ts then return a.ts < b.ts end
    return a.dur > b.dur
  end)
  local stack, inside = {}, 0
  for _, e in ipairs(sorted) do
    while #stack > 0 and stack[#stack].ts + stack[#stack].dur < e.ts + e.dur - 1e-3 do stack[#stack] = nil end
    local top = stack[#stack]
    if e.kind == "op" then
      if top then top.inner_flops = (top.inner_flops or 0) + e.flops end
    else
      if not top then inside = inside + e.dur else top.nested_us = (top.nested_us or 0) + e.dur end
      stack[#stack + 1] = e
    end
  end
  return inside
end

local function layer_rows(events)
  local rows, index = {}, {}
  for _, e in ipairs(events) do
    if e.kind ~= "op" then
      local r = index[e.name]
      if not r then
        r = { name = e.name, fcalls = 0, fus = 0, bcalls = 0, bus = 0, flops = 0 }
        index[e.name] = r
        rows[#rows + 1] = r
      end
      -- its own time: a nested layer's passes count on that layer's row (they
      -- counted on both, and the shares added up to more than the run)
      local own = e.dur - (e.nested_us or 0)
      if e.kind == "forward" then r.fcalls, r.fus = r.fcalls + 1, r.fus + own
      elseif e.kind == "backward" then r.bcalls, r.bus = r.bcalls + 1, r.bus + own
      else r.bus = r.bus + own end -- its activation's gradient: part of its backward, not a pass of its own
      r.flops = r.flops + (e.inner_flops or 0)
    end
  end
  table.sort(rows, function(a, b) return a.fus + a.bus > b.fus + b.bus end)
  return rows
end

local function gflops(flops, us) return flops > 0 and us > 0 and string.format("%.1f", flops / us / 1e3) or "" end

local function ms(us) return string.format("%.2f", us / 1e3) end

local function write_trace(path, events, wall_us)
  local list = {}
  for i, e in ipairs(events) do
    list[i] = { name = e.name, cat = e.kind, ph = "X", ts = e.ts, dur = e.dur, pid = 1, tid = 1,
      args = e.flops > 0 and { flops = e.flops } or nil }
  end
  local text = C.json_encode({ traceEvents = list, displayTimeUnit = "ms",
    otherData = { producer = "lunet " .. C.version, wall_us = wall_us } })
  local tmp = path .. ".part"
  local f, err = io.open(tmp, "w")
  if not f then fail("cannot write the trace: " .. tostring(err)) end
  local ok, werr = f:write(text)
  f:close()
  if not ok then
    os.remove(tmp)
    fail("cannot write the trace: " .. tostring(werr))
  end
  local renamed, rerr = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    fail("cannot write the trace: " .. tostring(rerr))
  end
end

-- The tables, as lines.
local function format(report, top)
  local out = {}
  local function add(...) out[#out + 1] = string.format(...) end
  add("profile: %.3f s wall, %d ops, %d layer passes%s", report.wall_us / 1e6, report.nops, report.npasses,
    report.dropped > 0 and string.format(" (%d more events not kept)", report.dropped) or "")
  if #report.layers > 0 then
    add("%-28s %7s %10s %9s %7s %10s %9s %8s %7s", "layer", "fwd", "fwd ms", "fwd mean", "bwd", "bwd ms",
      "bwd mean", "GFLOP/s", "share")
    for i, r in ipairs(report.layers) do
      if i > top then
        add("  (%d more layers)", #report.layers - top)
        break
      end
      add("%-28s %7d %10s %9s %7d %10s %9s %8s %6.1f%%", r.name:sub(1, 28), r.fcalls, ms(r.fus),
        r.fcalls > 0 and ms(r.fus / r.fcalls) or "", r.bcalls, ms(r.bus), r.bcalls > 0 and ms(r.bus / r.bcalls) or "",
        gflops(r.flops, r.fus + r.bus), 100 * r.share)
    end
    add("%-28s %68s %6.1f%%", "(outside layers)", "loss, optimizer, metrics, data", 100 * report.outside_share)
  end
  add("%-28s %7s %10s %9s %8s %7s", "op", "calls", "total ms", "mean us", "GFLOP/s", "share")
  for i, r in ipairs(report.ops) do
    if i > top then
      add("  (%d more ops)", #report.ops - top)
      break
    end
    add("%-28s %7d %10s %9.1f %8s %6.1f%%", r.name:sub(1, 28), r.calls, ms(r.us), r.us / r.calls, gflops(r.flops, r.us),
      100 * r.share)
  end
  add("%-28s %7s %10s %9s %8s %6.1f%%", "(ops in all)", "", ms(report.op_us), "", "", 100 * report.op_us / report.wall_us)
  return out
end

--- nn.profile(fn, {trace =, print =, top = 25}) -> report, fn's results
function M.profile(fn, o)
  if type(fn) ~= "function" then fail("bad argument #1 (a function to run expected)") end
  o = o or {}
  if type(o) ~= "table" then fail("bad argument #2 (options {trace =, print =, top =} expected)") end
  for k in pairs(o) do
    if k ~= "trace" and k ~= "print" and k ~= "top" then
      fail(string.format("unknown option '%s' (valid: trace, print, top)", tostring(k)))
    end
  end
  local top = o.top or 25
  if math.type(top) ~= "integer" or top < 1 then fail("top must be a positive integer") end
  if o.trace ~= nil and type(o.trace) ~= "string" then fail("trace must be a file path") end
  local say = o.print == nil and print or o.print
  if say and type(say) ~= "function" then fail("print must be a function (or false for silence)") end
  C.profile_start()
  local t0 = C.now()
  local results = table.pack(pcall(fn))
  local wall_us = (C.now() - t0) * 1e6
  local events, dropped = C.profile_events()
  C.profile_stop()
  if not results[1] then error(results[2], 0) end
  local outside_layers = wall_us - attribute(events)
  local layers = layer_rows(events)
  for _, r in ipairs(layers) do r.share = (r.fus + r.bus) / wall_us end
  local ops = by_name(events, function(e) return e.kind == "op" end)
  local op_us, nops, npasses = 0, 0, 0
  for _, r in ipairs(ops) do
    r.share = r.us / wall_us
    op_us, nops = op_us + r.us, nops + r.calls
  end
  for _, e in ipairs(events) do if e.kind == "forward" or e.kind == "backward" then npasses = npasses + 1 end end
  local report = { wall_us = wall_us, layers = layers, ops = ops, op_us = op_us, nops = nops, npasses = npasses,
    outside_share = #layers > 0 and outside_layers / wall_us or 1, dropped = dropped, events = events }
  if o.trace then write_trace(o.trace, events, wall_us) end
  report.lines = format(report, top)
  if say then for _, line in ipairs(report.lines) do say(line) end end
  return report, table.unpack(results, 2, results.n)
end

return M
