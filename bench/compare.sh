#!/bin/sh
# Compares lunet with PyTorch on the CIFAR-10 example CNN (see README.md).
#
#   bench/compare.sh [--rounds N] [--threads N] [--seconds S] [--batches 32,64,128]
#                    [--backend NAME] [--no-channels-last] [--lunet PATH] [--raw FILE]
#
# The runs alternate (lunet, torch, torch channels_last, lunet, ...) for N
# rounds, and each figure in the table is the median over the rounds: the
# machine's speed drifts over minutes, and alternation spreads the drift
# over all columns alike.
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
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
i=1
while [ "$i" -le "$rounds" ]; do
  echo "round $i/$rounds: lunet" >&2
  # shellcheck disable=SC2086
  "$lunet" "$here/bench_cnn.lua" $common ${backend:+--backend "$backend"} >>"$out"
  echo "round $i/$rounds: torch" >&2
  # shellcheck disable=SC2086
  OMP_WAIT_POLICY=$OMP_WAIT_POLICY "$python" "$here/torch_cnn.py" $common >>"$out"
  if [ "$cl" = 1 ]; then
    echo "round $i/$rounds: torch channels_last" >&2
    # shellcheck disable=SC2086
    OMP_WAIT_POLICY=$OMP_WAIT_POLICY "$python" "$here/torch_cnn.py" $common --channels-last >>"$out"
  fi
  i=$((i + 1))
done
[ -z "$raw" ] || cp "$out" "$raw"

"$python" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def key(r):
    if r["impl"] == "lunet":
        return "lunet"
    return "torch_cl" if r["layout"] == "channels_last" else "torch"
runs = {}
for r in rows:
    for kind in ("train", "infer"):
        for b, v in r[kind].items():
            runs.setdefault((kind, int(b)), {}).setdefault(key(r), []).append(v)
lunet = next(r for r in rows if r["impl"] == "lunet")
print(f"lunet backend: {lunet['backend']} - {lunet['detail']}")
cols = [c for c in ("lunet", "torch", "torch_cl") if any(c in d for d in runs.values())]
head = {"lunet": "lunet img/s", "torch": "torch img/s", "torch_cl": "torch NHWC img/s"}
print(f"medians of {max(len(v) for d in runs.values() for v in d.values())} rounds")
line = f"{'':<16}" + "".join(f"{head[c]:>18}" for c in cols)
line += "".join(f"{'lunet/' + c.replace('_cl', ' NHWC'):>18}" for c in cols[1:])
print(line)
for (kind, b) in sorted(runs, key=lambda k: (k[0] != "train", k[1])):
    d = runs[(kind, b)]
    med = {c: statistics.median(d[c]) for c in cols if c in d}
    line = f"{kind + ' batch ' + str(b):<16}" + "".join(f"{med.get(c, float('nan')):>18.1f}" for c in cols)
    line += "".join(f"{med['lunet'] / med[c]:>18.2f}" for c in cols[1:] if c in med)
    print(line)
EOF
