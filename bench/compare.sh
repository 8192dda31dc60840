#!/bin/sh
# Compares lunet with PyTorch on the CIFAR-10 example CNN (see README.md).
#
#   bench/compare.sh [--rounds N] [--threads N] [--seconds S] [--batches 32,64,128]
#                    [--backend NAME] [--no-channels-last] [--lunet PATH] [--raw FILE]
#                    [--mixed]
#
# --mixed: mixed precision too: lunet under the mixed_bfloat16 policy and
# torch's channels-last configurations under torch.autocast("cpu",
# torch.bfloat16), each compared with the other and with its own float32.
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
rounds=3 threads=2 seconds=3 batches=32,64,128 backend='' cl=1 raw='' mixed=0
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
    --mixed) mixed=1 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
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
  if [ "$mixed" = 1 ]; then
    echo "round $i/$rounds: lunet mixed_bfloat16" >&2
    # shellcheck disable=SC2086
    "$lunet" "$here/bench_cnn.lua" $common ${backend:+--backend "$backend"} --policy mixed_bfloat16 >>"$out"
  fi
  for layout in nchw nhwc; do
    flag=''
    if [ "$layout" = nhwc ]; then
      [ "$cl" = 1 ] || continue
      flag=--channels-last
    fi
    for alloc in $torch_allocs; do
      [ "$alloc" != tcmalloc ] || [ "$layout" = nhwc ] || continue
      for precision in float32 bf16; do
        [ "$precision" = float32 ] || { [ "$mixed" = 1 ] && [ "$layout" = nhwc ]; } || continue
        label="$layout $alloc" amp=''
        [ "$precision" = float32 ] || { label="$label bf16"; amp=--autocast-bf16; }
        echo "round $i/$rounds: torch $label" >&2
        # shellcheck disable=SC2086,SC2046
        env OMP_WAIT_POLICY="$OMP_WAIT_POLICY" $(alloc_env "$alloc") "$python" "$here/torch_cnn.py" $common $flag \
          $amp --label "$label" >>"$out"
      done
    done
  done
  i=$((i + 1))
done
[ -z "$raw" ] || cp "$out" "$raw"

"$python" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
runs = {}
def name_of(r):
    if r["impl"] == "lunet":
        return "lunet" if r.get("policy", "float32") == "float32" else "lunet bf16"
    return "torch " + r["label"]
for r in rows:
    for kind in ("train", "infer"):
        for b, v in r[kind].items():
            runs.setdefault((kind, int(b)), {}).setdefault(name_of(r), []).append(v)
lunet = next(r for r in rows if r["impl"] == "lunet")
print(f"lunet backend: {lunet['backend']} - {lunet['detail']}")
names = list(dict.fromkeys(n for d in runs.values() for n in d))
order = sorted(runs, key=lambda k: (k[0] != "train", k[1]))
print(f"medians of {max(len(v) for d in runs.values() for v in d.values())} rounds, images/s")
width = max(24, max(len(n) for n in names) + 2)
print(f"{'':<17}" + "".join(f"{n:>{width}}" for n in names))
for key in order:
    med = {n: statistics.median(v) for n, v in runs[key].items()}
    print(f"{key[0] + ' batch ' + str(key[1]):<17}"
          + "".join(f"{med.get(n, float('nan')):>{width}.1f}" for n in names))
def medians(key):
    return {n: statistics.median(v) for n, v in runs[key].items()}
def best(med, bf16):
    theirs = [n for n in med if n.startswith("torch") and n.endswith(" bf16") == bf16]
    return max(theirs, key=lambda n: med[n]) if theirs else None
def table(ours, bf16):
    print()
    print(f"{'':<17}{ours:>11}{'torch best':>12}  {'(its configuration)':<27}{ours + ' / best':>18}")
    for key in order:
        med = medians(key)
        b = best(med, bf16)
        if ours in med and b:
            print(f"{key[0] + ' batch ' + str(key[1]):<17}{med[ours]:>11.1f}{med[b]:>12.1f}  "
                  f"{b[6:]:<27}{med[ours] / med[b]:>18.2f}")
table("lunet", False)
if "lunet bf16" in names:
    table("lunet bf16", True)
    print()
    print(f"{'mixed_bfloat16 / float32':<26}{'lunet':>8}{'torch best':>12}")
    for key in order:
        med = medians(key)
        b16, b32 = best(med, True), best(med, False)
        torch_ratio = med[b16] / med[b32] if b16 and b32 else float("nan")
        print(f"{key[0] + ' batch ' + str(key[1]):<26}{med['lunet bf16'] / med['lunet']:>8.2f}{torch_ratio:>12.2f}")
EOF
