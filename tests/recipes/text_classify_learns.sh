#!/bin/sh
# The word-level classifier (recipes/text_classify.lua) must tell Debian's
# fortune files apart far better than always answering the majority class:
# after 3 epochs, held-out accuracy at least 0.15 above the majority share
# the recipe reports (checked here against its own count of the classes).
#   text_classify_learns.sh LUNET_EXECUTABLE SOURCE_DIR
set -eu
lunet=$1 src=$2
out=$("$lunet" "$src/recipes/text_classify.lua" --epochs 3 --verbose 2)
echo "$out"
acc=$(echo "$out" | sed -n 's/^test accuracy: //p')
majority=$(echo "$out" | sed -n 's/.*majority class \([0-9.]*\)$/\1/p')
# the majority share, independently: the largest file's fortunes over all
total=0 largest=0
for f in computers food law science songs-poems; do
  n=$(grep -c '^%$' "/usr/share/games/fortunes/$f")
  total=$((total + n)); [ "$n" -gt "$largest" ] && largest=$n
done
echo "majority share over all fortunes: $largest/$total; held-out majority $majority; accuracy $acc"
awk -v m="$majority" -v l="$largest" -v t="$total" 'BEGIN { exit !(m + 0 > 0 && (m - l / t) < 0.05 && (l / t - m) < 0.05) }' \
  || { echo "the reported majority share is off"; exit 1; }
awk -v a="$acc" -v m="$majority" 'BEGIN { exit !(a != "" && a + 0 >= m + 0.15) }' || { echo "no better than the majority class"; exit 1; }
echo "text_classify learns: ok"
