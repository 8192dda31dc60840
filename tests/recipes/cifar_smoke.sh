#!/bin/sh
# recipes/cifar_cnn.lua on the generated CIFAR-10 archive (the official
# layout; each class its own colour, with noise): 200 training images, 3
# epochs with augmentation must reach 0.5 test accuracy (chance: 0.1; it
# reaches about 0.8), so a recipe that stops learning fails.  --report
# must leave its five files: four PNGs and the classification report with
# CIFAR's class names.
#   cifar_smoke.sh LUNET_EXECUTABLE SOURCE_DIR ARCHIVE
set -eu
lunet=$1 src=$2 archive=$3
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
out=$("$lunet" "$src/recipes/cifar_cnn.lua" --data "$archive" --epochs 3 --limit 200 --augment --verbose 2 \
  --report "$report/pictures")
echo "$out"
acc=$(echo "$out" | sed -n 's/^test accuracy: //p')
awk -v a="$acc" 'BEGIN { exit !(a != "" && a + 0 >= 0.5) }' || { echo "test accuracy $acc is below 0.5"; exit 1; }
for f in curves confusion_matrix mistakes gradcam; do
  magic=$(head -c 4 "$report/pictures/$f.png" | od -An -tx1 | tr -d ' \n')
  [ "$magic" = "89504e47" ] || { echo "report: $f.png is not a PNG ($magic)"; exit 1; }
done
grep -q "airplane" "$report/pictures/report.txt" && grep -q "macro avg" "$report/pictures/report.txt" ||
  { echo "report: report.txt lacks the class names or the averages"; cat "$report/pictures/report.txt"; exit 1; }
echo "cifar smoke: ok"
