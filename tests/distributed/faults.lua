-- Faults under mpirun, for tests/distributed/run.sh:
--   error: rank 1 raises in a callback during epoch 2; the job must end with
--          that rank and message, not hang.
--   kill:  each rank writes its pid to OUT/pid_<rank> and trains for long;
--          the driver kills one with SIGKILL.
--   mismatch: rank 1 fits on fewer samples than rank 0 (their steps would
--          not match: a hang); the job must end naming the difference.
--   mpirun -np 2 lunet tests/distributed/faults.lua MODE OUT_DIR
local nn = require "lunet"
local mode, out = arg[1], arg[2]
local dist = nn.distributed.init({threads = 1})
nn.seed(3)
local x, y = nn.randn(512, 8), nn.randn(512, 1)
local m = nn.Sequential{nn.Dense{16, activation = "relu", input_shape = {8}}, nn.Dense{1}}
m:compile{optimizer = "adam", loss = "mse"}
local f = assert(io.open(string.format("%s/pid_%d", out, dist.rank), "w"))
local stat = assert(io.open("/proc/self/stat"))
f:write(tostring(stat:read("n"))) -- this process's id
stat:close()
f:close()
local boom = {on_epoch_end = function(_, _, epoch)
  if mode == "error" and dist.rank == 1 and epoch == 1 then error("boom in a callback on purpose") end
end}
if mode == "mismatch" and dist.rank == 1 then x, y = x[{{1, 500}}], y[{{1, 500}}] end
m:fit(x, y, {epochs = mode == "kill" and 100000 or 4, batch_size = 8, verbose = 0, distributed = true,
  callbacks = {boom}})
print("faults: finished (should not have)")
