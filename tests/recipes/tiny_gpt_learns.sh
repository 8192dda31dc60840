#!/bin/sh
# The character-level GPT (recipes/tiny_gpt.lua) must learn: after one short
# epoch on Debian's fortunes its held-out bits per character must beat the
# text's unigram entropy (computed here independently, in Python) by half a
# bit, and its sample must come from the key/value cache path.
#   tiny_gpt_learns.sh LUNET_EXECUTABLE SOURCE_DIR
set -eu
lunet=$1 src=$2
dir=/usr/share/games/fortunes
entropy=$(python3 -c "
import collections, math, os, sys
d = sys.argv[1]
t = b''.join(open(os.path.join(d, f), 'rb').read() for f in sorted(os.listdir(d))
             if '.' not in f and os.path.isfile(os.path.join(d, f)))
print(-sum(c / len(t) * math.log2(c / len(t)) for c in collections.Counter(t).values()))" "$dir")
out=$("$lunet" "$src/recipes/tiny_gpt.lua" --text "$dir" --epochs 1 --limit 6000 --verbose 2)
echo "$out"
bpc=$(echo "$out" | sed -n 's/^test bits_per_char: //p')
echo "unigram entropy: $entropy bits per character; the GPT: $bpc"
awk -v b="$bpc" -v e="$entropy" 'BEGIN { exit !(b != "" && b + 0 < e - 0.5) }' || { echo "no learning"; exit 1; }
echo "$out" | grep -q "^sample at temperature" || { echo "no sample"; exit 1; }
echo "tiny_gpt learns: ok"
