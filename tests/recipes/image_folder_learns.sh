#!/bin/sh
# recipes/image_folder.lua on a folder of generated pictures: three classes
# (horizontal stripes, vertical stripes, a bright disc), 40 files each at
# random sizes and phases with noise, half PNG and half JPEG.  After 12
# epochs the held-out accuracy must be at least 0.8 (chance: 0.33).
#   image_folder_learns.sh LUNET_EXECUTABLE SOURCE_DIR WORK_DIR
set -eu
lunet=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
"$lunet" "$src/tests/recipes/make_image_folder.lua" "$work/pictures" 40
out=$("$lunet" "$src/recipes/image_folder.lua" --dir "$work/pictures" --size 32 --epochs 12 --batch-size 16 --verbose 2)
echo "$out"
acc=$(echo "$out" | sed -n 's/^validation accuracy: //p')
echo "$out" | grep -q '^Found 120 files belonging to 3 classes.$' || { echo "not every file was found"; exit 1; }
awk -v a="$acc" 'BEGIN { exit !(a != "" && a + 0 >= 0.8) }' || { echo "accuracy $acc is below 0.8"; exit 1; }
echo "image_folder learns: ok"
