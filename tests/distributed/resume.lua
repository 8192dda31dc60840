-- BackupAndRestore under mpirun, for tests/distributed/run.sh:
--   full:        3 epochs, uninterrupted;
--   interrupted: the same with BackupAndRestore, every rank failing at the
--                end of epoch 2 (before that epoch's backup): the job ends,
--                the backup of epoch 1 stays;
--   resume:      the same command again: it resumes after epoch 1.
-- Each rank writes its weights to OUT/<mode>_<rank>.bin; the driver
-- requires the resumed weights to equal the uninterrupted ones bit for bit
-- on every rank.  Dropout draws from each rank's own stream, so a rank
-- that resumed with another rank's RNG state would train otherwise.
--   mpirun -np N lunet tests/distributed/resume.lua MODE OUT_DIR
local nn = require "lunet"
local mode, out = arg[1], arg[2]
local dist = nn.distributed.init({threads = 1})
nn.seed(5) -- the same data on every rank
local x = nn.randn(120, 6)
local labels = {}
for i, row in ipairs(x:totable()) do labels[i] = row[1] + row[2] > 0 and 1 or (row[3] > 0.5 and 2 or 0) end
local y = nn.tensor(labels)
nn.seed(11 + dist.rank) -- then a stream of its own per rank
local m = nn.Sequential{nn.Dense{16, activation = "relu", input_shape = {6}}, nn.Dropout{0.3}, nn.Dense{3, activation = "softmax"}}
m:compile{optimizer = "adam", loss = "sparse_categorical_crossentropy"}
local callbacks = {}
if mode == "interrupted" then
  callbacks[#callbacks + 1] = {on_epoch_end = function(_, _, epoch)
    if epoch == 1 then error("stopped on purpose at the end of epoch 2") end -- epochs from 0
  end}
end
if mode ~= "full" then callbacks[#callbacks + 1] = nn.callbacks.BackupAndRestore{backup_dir = out .. "/backup", verbose = 0} end
m:fit(x, y, {epochs = 3, batch_size = 8, verbose = 0, distributed = true, callbacks = callbacks})
local f = assert(io.open(string.format("%s/%s_%d.bin", out, mode, dist.rank), "wb"))
for _, w in ipairs(m:get_weights()) do
  for _, e in ipairs(w:reshape{w:numel()}:totable()) do f:write(string.pack("<f", e)) end
end
f:close()
