#!/bin/sh
# Data-parallel speed-up, measured side by side: one process against
# `mpirun -np RANKS` on the seed CIFAR CNN, the same global batch, 1 thread
# per process (bench/bench_distributed.lua).
#
#   bench/compare_distributed.sh [--rounds N] [--ranks P] [--global-batch G,...]
#                                [--samples N] [--mode overlap|blocking] [--lunet PATH]
#
# The runs alternate (one process, then P ranks, for each global batch) for
# N rounds: the machine's speed drifts over minutes, and alternation spreads
# the drift over both.  Each round's ratio compares the two adjacent runs;
# the summary gives the median and the range of the ratios.  Each round
# also runs P independent single processes at once, each on its own core
# (taskset, as mpirun binds its ranks) with a rank's batch and share of the
# samples, and no exchange: their summed images/s is what this machine
# gives P processes sharing it, the ceiling of data-parallel training here,
# and "of the ceiling" is the P ranks' share of it (what the exchange and
# the waiting for the slower rank cost).  Runs as root
# and in containers (OMPI_ALLOW_RUN_AS_ROOT, no cross-memory attach).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
rounds=5 ranks=2 batches=64,128 samples=16384 mode=overlap
lunet=${LUNET:-$here/../build/bin/lunet}

die() { echo "compare_distributed.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --global-batch) batches=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --lunet) lunet=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
command -v mpirun >/dev/null || die "mpirun is not installed (apt-get install openmpi-bin)"
[ -x "$lunet" ] || die "no lunet at $lunet (build first, or --lunet PATH)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# more ranks than cores need --oversubscribe, which also turns off mpirun's
# binding of each rank to a core: only then
mpi="mpirun --mca btl_vader_single_copy_mechanism none"
[ "$ranks" -le "$(nproc)" ] || mpi="$mpi --oversubscribe"
bench=$here/bench_distributed.lua
out=$(mktemp)
trap 'rm -f "$out"' EXIT

ips() { sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p'; }
# P single processes at once, each on core i mod cores where taskset
# exists, BENCH_BATCH=$1 and samples/P each: their images/s summed.
apart() {
  files=""
  for i in $(seq 0 $((ranks - 1))); do
    f=$(mktemp)
    files="$files $f"
    pin=""
    command -v taskset >/dev/null && pin="taskset -c $((i % $(nproc)))"
    BENCH_BATCH=$1 $pin "$lunet" "$bench" $((samples / ranks)) > "$f" &
  done
  wait
  # shellcheck disable=SC2086
  cat $files | ips | awk '{ s += $1; k++ } END { if (k) printf "%.1f", s }'
  # shellcheck disable=SC2086
  rm -f $files
}
echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores;" \
  "$ranks ranks against 1 process, 1 thread each, $samples samples an epoch, $mode"
for r in $(seq 1 "$rounds"); do
  for g in $(echo "$batches" | tr , ' '); do
    per=$((g / ranks))
    [ $((per * ranks)) -eq "$g" ] || die "global batch $g does not split over $ranks ranks"
    one=$(BENCH_BATCH=$g "$lunet" "$bench" "$samples" | ips)
    line=$($mpi -x BENCH_BATCH=$per -np "$ranks" "$lunet" "$bench" "$samples" "$mode" | grep 'images/s')
    many=$(echo "$line" | ips)
    free=$(apart "$per")
    [ -n "$one" ] && [ -n "$many" ] && [ -n "$free" ] || die "a run printed no images/s"
    ratio=$(echo "$many $one" | awk '{printf "%.2f", $1 / $2}')
    share=$(echo "$many $free" | awk '{printf "%.2f", $1 / $2}')
    echo "$g $one $many $ratio $free $share" >> "$out"
    echo "round $r, global batch $g: 1 process $one, $ranks ranks $many images/s: ${ratio}x (${line#*; });" \
      "$ranks independent processes $free images/s: ${share} of the ceiling"
  done
done
echo
echo "global batch | 1 process (median) | $ranks ranks (median) | speed-up median | range | $ranks apart (median) | of the ceiling (median)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for g in $(echo "$batches" | tr , ' '); do
  rows=$(awk -v g="$g" '$1 == g' "$out")
  one=$(echo "$rows" | cut -d' ' -f2 | median)
  many=$(echo "$rows" | cut -d' ' -f3 | median)
  ratio=$(echo "$rows" | cut -d' ' -f4 | median)
  low=$(echo "$rows" | cut -d' ' -f4 | sort -n | head -1)
  high=$(echo "$rows" | cut -d' ' -f4 | sort -n | tail -1)
  free=$(echo "$rows" | cut -d' ' -f5 | median)
  share=$(echo "$rows" | cut -d' ' -f6 | median)
  printf "%12d | %19.0f | %15.0f | %14.2fx | %s-%s | %13.0f | %.2f\n" "$g" "$one" "$many" "$ratio" "$low" "$high" \
    "$free" "$share"
done
