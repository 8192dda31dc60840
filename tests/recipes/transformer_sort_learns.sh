#!/bin/sh
# The Transformer encoder recipe (recipes/transformer_sort.lua) must learn to
# sort 8-digit sequences: exact match on 2000 held-out sequences (every
# position right) of at least 0.95, where chance is about 1e-5.  The
# recipe's exact-match count is checked here too: the sample line it prints
# must be the sorted input.
#   transformer_sort_learns.sh LUNET_EXECUTABLE SOURCE_DIR
set -eu
lunet=$1 src=$2
out=$("$lunet" "$src/recipes/transformer_sort.lua" --epochs 3 --verbose 2)
echo "$out"
acc=$(echo "$out" | sed -n 's/^test accuracy: //p')
sample=$(echo "$out" | sed -n 's/^\([0-9 ]*\) -> \([0-9 ]*\)$/\1|\2/p')
sorted=$(echo "${sample%|*}" | tr ' ' '\n' | sort -n | tr '\n' ' ' | sed 's/ $//')
[ "$sorted" = "${sample#*|}" ] || { echo "the sample '${sample%|*}' came out as '${sample#*|}', sorted is '$sorted'"; exit 1; }
awk -v a="$acc" 'BEGIN { exit !(a != "" && a + 0 >= 0.95) }' || { echo "exact match $acc < 0.95"; exit 1; }
echo "transformer_sort learns: ok"
