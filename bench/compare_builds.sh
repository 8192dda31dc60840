#!/bin/sh
# Compares two builds of lunet (say, before and after a change) on the
# seed CNN, alternating them in one run: the machine's speed drifts.
#
#   bench/compare_builds.sh --old DIR [--new DIR] [--rounds N] [--threads N]
#                           [--seconds S] [--limit N] [--raw FILE]
#
# DIR is a built source tree (DIR/build/bin/lunet); --new defaults to this
# tree.  Each round runs, for the old then the new build:
#   - DIR/bench/bench_cnn.lua: CIFAR-10 CNN training images/s at batch 32 and
#     64, and inference at 256 (each tree's own script, so the old one runs
#     the old code path);
#   - recipes/fashion_mnist_cnn.lua --epochs 1 --limit N (Debian's
#     dataset-fashion-mnist): the whole recipe's wall time, fit loop,
#     prefetching and progress included.
# The table gives medians over the rounds and new/old ratios (above 1: the
# new build is faster).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
old='' new=$(cd "$here/.." && pwd) rounds=3 threads=2 seconds=2 limit=12000 raw=''
die() { echo "compare_builds.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --old) old=${2:?--old needs a directory}; shift ;;
    --new) new=${2:?--new needs a directory}; shift ;;
    --rounds) rounds=${2:?--rounds needs a value}; shift ;;
    --threads) threads=${2:?--threads needs a value}; shift ;;
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    --limit) limit=${2:?--limit needs a value}; shift ;;
    --raw) raw=${2:?--raw needs a file name}; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$old" ] || die "--old DIR is required (a built tree, e.g. git worktree add /tmp/old HEAD~1 and build it)"
for d in "$old" "$new"; do
  [ -x "$d/build/bin/lunet" ] || die "$d/build/bin/lunet is not an executable: build that tree first"
done
[ -d /usr/share/datasets/fashion-mnist ] || die "apt-get install dataset-fashion-mnist"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
now() { date +%s.%N; }
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); threads=$threads"
i=1
while [ "$i" -le "$rounds" ]; do
  for which in old new; do
    if [ "$which" = old ]; then d=$old; else d=$new; fi
    echo "round $i/$rounds: $which" >&2
    line=$(cd "$d" && build/bin/lunet bench/bench_cnn.lua --threads "$threads" --seconds "$seconds" \
      --batches 32,64 --repeats 1 --json)
    t0=$(now)
    (cd "$d" && build/bin/lunet recipes/fashion_mnist_cnn.lua --epochs 1 --limit "$limit" \
      --threads "$threads" --verbose 0 >/dev/null)
    t1=$(now)
    echo "$which $line $(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}')" >>"$out"
  done
  i=$((i + 1))
done

[ -z "$raw" ] || cp "$out" "$raw"
/usr/bin/python3 - "$out" "$limit" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    which, rest = line.split(" ", 1)
    js, secs = rest.rsplit(" ", 1)
    r = json.loads(js)
    for b, v in r["train"].items():
        runs.setdefault(f"cifar train batch {b} (img/s)", {}).setdefault(which, []).append(v)
    for b, v in r["infer"].items():
        runs.setdefault(f"cifar infer batch {b} (img/s)", {}).setdefault(which, []).append(v)
    runs.setdefault(f"fashion recipe, {sys.argv[2]} samples (s)", {}).setdefault(which, []).append(float(secs))
print(f"medians of {len(next(iter(runs.values()))['old'])} rounds")
print(f"{'':<38}{'old':>12}{'new':>12}{'new/old speed':>16}")
for k, d in runs.items():
    o, n = statistics.median(d["old"]), statistics.median(d["new"])
    speed = o / n if k.endswith("(s)") else n / o
    print(f"{k:<38}{o:>12.1f}{n:>12.1f}{speed:>16.3f}")
EOF
