#!/bin/sh
# lunet against PyTorch on the sequence benchmarks (an LSTM layer and a
# Transformer encoder block training step; see bench_sequence.lua), run
# alternately for N rounds; the table shows medians and torch/lunet ratios
# (above 1: lunet is faster).  torch runs with glibc's malloc as it comes,
# tuned by environment, and with tcmalloc when libtcmalloc-minimal4 is
# installed; each row compares with its fastest (see bench/README.md: the
# allocator decides torch's speed on this machine).
#   bench/compare_sequence.sh [--rounds N] [--threads N] [--steps S]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rounds=3 threads=2 steps=10
lunet=${LUNET:-$here/../build/bin/lunet}
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --threads) threads=$2; shift ;;
    --steps) steps=$2; shift ;;
    *) echo "compare_sequence.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "compare_sequence.sh: /usr/bin/python3 cannot import torch (apt-get install python3-torch)" >&2; exit 2; }
: "${OMP_WAIT_POLICY:=PASSIVE}"
export OMP_WAIT_POLICY
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); threads=$threads; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
. "$here/torch_allocators.sh"
i=1
while [ "$i" -le "$rounds" ]; do
  echo "lunet $("$lunet" "$here/bench_sequence.lua" --threads "$threads" --steps "$steps" --json)" >> "$out"
  for alloc in $torch_allocs; do
    # shellcheck disable=SC2046
    echo "torch-$alloc $(env $(alloc_env "$alloc") /usr/bin/python3 "$here/torch_sequence.py" --threads "$threads" --steps "$steps" --json)" >> "$out"
  done
  i=$((i + 1))
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, data = line.split(" ", 1)
    rows.setdefault(who, []).append(json.loads(data))
torches = [w for w in rows if w != "lunet"]
print(f"{'ms per training step':28} {'lunet':>8} " + " ".join(f"{w:>18}" for w in torches)
      + f" {'PyTorch best/lunet':>19}")
for key, name in (("lstm_ms", "LSTM (64 x 100 x 128 -> 256)"), ("transformer_ms", "Transformer encoder block")):
    l = statistics.median(r[key] for r in rows["lunet"])
    t = {w: statistics.median(r[key] for r in rows[w]) for w in torches}
    print(f"{name:28} {l:8.1f} " + " ".join(f"{t[w]:18.1f}" for w in torches)
          + f" {min(t.values()) / l:19.2f}")
PY
