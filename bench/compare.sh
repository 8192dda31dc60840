#!/bin/sh
# Compares lunet with PyTorch on the CIFAR-10 example CNN (see README.md).
#
#   bench/compare.sh [--rounds N] [--threads N] [--seconds S] [--batches 32,64,128]
#                    [--backend NAME] [--no-channels-last] [--lunet PATH] [--raw FILE]
#
# The runs alternate (lunet, then torch in each configuration, lunet, ...)
# for N rounds, and each figure in the table is the median over the rounds:
# the machine's speed drifts over minutes, and alternation spreads the drift
# over all columns alike.
#
# torch runs in up to five configurations: NCHW and channels-last layouts,
# each with glibc's malloc as it comes and with glibc tuned by environment
# (MALLOC_MMAP_THRESHOLD_=4 GiB, MALLOC_TRIM_THRESHOLD_=64 GiB: big blocks stay
# in the heap instead of a fresh mmap per tensor per step), plus
# channels-last with tcmalloc when libtcmalloc-minimal4 is installed
# (PyTorch's performance guide advises tcmalloc or jemalloc; jemalloc is
# slower here).  "torch best" is, per row, the fastest of them.  lunet runs
# with glibc as it comes (its CPU backend pools its own buffers; tuning
# glibc does not change it).
#
# OPENBLAS_CORETYPE and the other OPENBLAS_* variables are passed through
# unchanged to both programs.  OMP_WAIT_POLICY is set to PASSIVE for torch
# unless the caller sets it: torch's OpenMP threads otherwise spin while
# waiting, which on a shared, busy machine costs torch 2-3x at 2 threads.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
rounds=3 threads=2 seconds=3 batches=32,64,128 backend='' cl=1 raw=''
lunet=${LUNET:-$here/../build/bin/lunet}
python=/usr/bin/python3

die() { echo "compare.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=${2:?--rounds needs a value}; shift ;;
    --threads) threads=${2:?--threads needs a value}; shift ;;
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    --batches) batches=${2:?--batches needs a value}; shift ;;
    --backend) backend=${2:?--backend needs a value}; shift ;;
    --lunet) lunet=${2:?--lunet needs a path}; shift ;;
    --raw) raw=${2:?--raw needs a file name}; shift ;;
    --no-channels-last) cl=0 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -x "$lunet" ] || die "$lunet is not an executable: build lunet first, or give --lunet PATH"
"$python" -c "import torch" 2>/dev/null || die "$python cannot import torch: apt-get install python3-torch"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# One timed run per program per round; the rounds give the median.
common="--threads $threads --seconds $seconds --batches $batches --repeats 1 --json"
: "${OMP_WAIT_POLICY:=PASSIVE}"
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}  torch OMP_WAIT_POLICY=$OMP_WAIT_POLICY  threads=$threads"
. "$here/torch_allocators.sh"
echo "torch allocators: $torch_allocs${tcmalloc:+ ($tcmalloc)}"
i=1
while [ "$i" -le "$rounds" ]; do
  echo "round $i/$rounds: lunet" >&2
  # shellcheck disable=SC2086
  "$lunet" "$here/bench_cnn.lua" $common ${backend:+--backend "$backend"} >>"$out"
  for layout in nchw nhwc; do
    flag=''
    if [ "$layout" = nhwc ]; then
      [ "$cl" = 1 ] || continue
      flag=--channels-last
    fi
    for alloc in $torch_allocs; do
      [ "$alloc" != tcmalloc ] || [ "$layout" = nhwc ] || continue
      echo "round $i/$rounds: torch $layout $alloc" >&2
      # shellcheck disable=SC2086,SC2046
      env OMP_WAIT_POLICY="$OMP_WAIT_POLICY" $(alloc_env "$alloc") "$python" "$here/torch_cnn.py" $common $flag \
        --label "$layout $alloc" >>"$out"
    done
  done
  i=$((i + 1))
done
[ -z "$raw" ] || cp "$out" "$raw"

"$python" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
runs = {}
for r in rows:
    name = "lunet" if r["impl"] == "lunet" else "torch " + r["label"]
    for kind in ("train", "infer"):
        for b, v in r[kind].items():
            runs.setdefault((kind, int(b)), {}).setdefault(name, []).append(v)
lunet = next(r for r in rows if r["impl"] == "lunet")
print(f"lunet backend: {lunet['backend']} - {lunet['detail']}")
names = list(dict.fromkeys(n for d in runs.values() for n in d))
order = sorted(runs, key=lambda k: (k[0] != "train", k[1]))
print(f"medians of {max(len(v) for d in runs.values() for v in d.values())} rounds, images/s")
print(f"{'':<17}" + "".join(f"{n:>24}" for n in names))
for key in order:
    med = {n: statistics.median(v) for n, v in runs[key].items()}
    print(f"{key[0] + ' batch ' + str(key[1]):<17}"
          + "".join(f"{med.get(n, float('nan')):>24.1f}" for n in names))
print()
print(f"{'':<17}{'lunet':>10}{'torch best':>12}  {'(its configuration)':<22}{'lunet / best':>13}")
for key in order:
    med = {n: statistics.median(v) for n, v in runs[key].items()}
    best = max((n for n in med if n != "lunet"), key=lambda n: med[n])
    print(f"{key[0] + ' batch ' + str(key[1]):<17}{med['lunet']:>10.1f}{med[best]:>12.1f}  "
          f"{best[6:]:<22}{med['lunet'] / med[best]:>13.2f}")
EOF
