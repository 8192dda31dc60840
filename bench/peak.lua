-- This machine's ceilings from bench/peak.c, compiled here with cc and run
-- on `threads` threads (bench/roofline.lua, bench/plot_distributed.lua):
--   local peak = dofile(dir .. "peak.lua")(threads)
--   peak.isa, peak.fma_gflops_1, peak.fma_gflops_all, peak.triad_gbs_1, peak.triad_gbs_all
local here = debug.getinfo(1, "S").source:sub(2):gsub("[^/]*$", "")
return function(threads)
  local exe = os.tmpname()
  assert(os.execute(string.format("cc -O3 -pthread '%speak.c' -o '%s'", here, exe)), "cannot compile bench/peak.c with cc")
  local peak = {}
  local p = assert(io.popen(string.format("'%s' %d", exe, threads)))
  for line in p:lines() do
    local k, v = line:match("^(%S+) (%S+)$")
    if k then peak[k] = tonumber(v) or v end
  end
  p:close()
  os.remove(exe)
  return peak
end
