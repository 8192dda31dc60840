#!/bin/sh
# Data-parallel training under mpirun (Open MPI), on this one machine:
#   run.sh LUNET_EXECUTABLE SOURCE_DIR WORK_DIR
# 2 and 3 ranks (3: uneven shards) must match one process and end with
# bit-identical weights on every rank; an error on one rank and a rank
# killed with SIGKILL must each end the whole job within seconds, never hang.
set -eu
lunet=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
# CI runs as root, in containers where cross-memory attach is refused
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi="mpirun --oversubscribe --mca btl_vader_single_copy_mechanism none"
command -v mpirun >/dev/null || { echo "mpirun is not installed (apt-get install openmpi-bin)"; exit 1; }

for np in 2 3; do
  mkdir -p "$work/np$np"
  timeout 300 $mpi -np $np "$lunet" "$src/tests/distributed/ddp.lua" "$work/np$np"
  for r in $(seq 1 $((np - 1))); do
    cmp "$work/np$np/weights_0.bin" "$work/np$np/weights_$r.bin" ||
      { echo "rank $r's weights differ from rank 0's ($np ranks)"; exit 1; }
    cmp "$work/np$np/dataset_weights_0.bin" "$work/np$np/dataset_weights_$r.bin" ||
      { echo "rank $r's weights trained on a dataset differ from rank 0's ($np ranks)"; exit 1; }
    if [ -f "$work/np$np/vulkan_weights_0.bin" ]; then
      cmp "$work/np$np/vulkan_weights_0.bin" "$work/np$np/vulkan_weights_$r.bin" ||
        { echo "rank $r's weights trained on Vulkan differ from rank 0's ($np ranks)"; exit 1; }
    fi
  done
  echo "identical weights on $np ranks ($(wc -c < "$work/np$np/weights_0.bin") bytes each; a dataset's too$(
    [ -f "$work/np$np/vulkan_weights_0.bin" ] && echo "; on Vulkan too"))"
done

# BackupAndRestore: a job stopped after epoch 1's backup, run again, ends
# with the weights of an uninterrupted one, on every rank
mkdir -p "$work/resume"
timeout 300 $mpi -np 2 "$lunet" "$src/tests/distributed/resume.lua" full "$work/resume"
if timeout 300 $mpi -np 2 "$lunet" "$src/tests/distributed/resume.lua" interrupted "$work/resume" > "$work/resume.log" 2>&1; then
  cat "$work/resume.log"; echo "the interrupted job exited 0"; exit 1
fi
[ -f "$work/resume/backup/latest.safetensors" ] || { echo "no backup left by the interrupted job"; exit 1; }
timeout 300 $mpi -np 2 "$lunet" "$src/tests/distributed/resume.lua" resume "$work/resume" > "$work/resume2.log" 2>&1 ||
  { cat "$work/resume2.log"; echo "the resumed job failed"; exit 1; }
for r in 0 1; do
  cmp "$work/resume/full_$r.bin" "$work/resume/resume_$r.bin" ||
    { echo "rank $r: the resumed job's weights differ from the uninterrupted job's"; exit 1; }
done
[ ! -f "$work/resume/backup/latest.safetensors" ] || { echo "the backup was not deleted after the resumed job"; exit 1; }
echo "BackupAndRestore: a job interrupted after epoch 1 and run again ends with the uninterrupted weights on both ranks"

# an error raised on rank 1: the job ends, naming the rank and the error
mkdir -p "$work/error"
start=$(date +%s)
if timeout 120 $mpi -np 2 "$lunet" "$src/tests/distributed/faults.lua" error "$work/error" > "$work/error.log" 2>&1; then
  cat "$work/error.log"; echo "the job with an error on rank 1 exited 0"; exit 1
fi
took=$(( $(date +%s) - start ))
cat "$work/error.log"
grep -q "lunet rank 1 of 2: .*boom in a callback on purpose" "$work/error.log" ||
  { echo "the error's rank and message are not in the job's output"; exit 1; }
[ "$took" -lt 60 ] || { echo "the job took $took s to end after the error"; exit 1; }
echo "an error on rank 1 ended the job in $took s"

# ranks that fit on different data (rank 1: 500 samples, rank 0: 512): the
# job ends at once naming the difference, instead of hanging
mkdir -p "$work/mismatch"
if timeout 120 $mpi -np 2 "$lunet" "$src/tests/distributed/faults.lua" mismatch "$work/mismatch" > "$work/mismatch.log" 2>&1; then
  cat "$work/mismatch.log"; echo "the job whose ranks fit on different data exited 0"; exit 1
fi
grep -q "fit: the ranks must run it alike, but samples 500 on rank 1, 512 on rank 0" "$work/mismatch.log" ||
  { cat "$work/mismatch.log"; echo "the mismatch is not named"; exit 1; }
echo "ranks fitting different data: the job ended naming the difference"

# a rank killed while training: the job ends
mkdir -p "$work/kill"
timeout 120 $mpi -np 2 "$lunet" "$src/tests/distributed/faults.lua" kill "$work/kill" > "$work/kill.log" 2>&1 &
job=$!
i=0
while [ ! -s "$work/kill/pid_1" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$work/kill/pid_1" ] || { echo "rank 1 never started"; kill $job; exit 1; }
sleep 2
kill -9 "$(cat "$work/kill/pid_1")"
start=$(date +%s)
status=0
wait $job || status=$?
took=$(( $(date +%s) - start ))
cat "$work/kill.log" | tail -5
[ $status -ne 0 ] || { echo "the job with a killed rank exited 0"; exit 1; }
[ $status -ne 124 ] || { echo "the job with a killed rank hung (timeout)"; exit 1; }
[ "$took" -lt 60 ] || { echo "the job took $took s to end after the kill"; exit 1; }
echo "a rank killed with SIGKILL ended the job in $took s (status $status)"
echo "distributed: ok"
