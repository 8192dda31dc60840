#!/bin/sh
# The character-level LSTM (recipes/char_rnn.lua) must learn: after 4 epochs
# on the GPL-3 text every Debian machine has, its held-out bits per character
# must beat the text's unigram entropy (computed here independently, in
# Python), which is what a model that ignores context reaches at best.
#   char_rnn_learns.sh LUNET_EXECUTABLE SOURCE_DIR
set -eu
lunet=$1 src=$2
text=/usr/share/common-licenses/GPL-3
entropy=$(python3 -c "
import collections, math, sys
t = open(sys.argv[1], 'rb').read()
print(-sum(c / len(t) * math.log2(c / len(t)) for c in collections.Counter(t).values()))" "$text")
out=$("$lunet" "$src/recipes/char_rnn.lua" --text "$text" --epochs 4 --verbose 2)
echo "$out"
bpc=$(echo "$out" | sed -n 's/^test bits_per_char: //p')
echo "unigram entropy: $entropy bits per character; the LSTM: $bpc"
awk -v b="$bpc" -v e="$entropy" 'BEGIN { exit !(b != "" && b + 0 < e - 0.3) }' || { echo "no learning"; exit 1; }
echo "char_rnn learns: ok"
