# Sourced by the Fashion-MNIST recipe tests: fails unless Debian's
# dataset-fashion-mnist is there (these tests are not skipped without it),
# sets lunet, src and work from the arguments (LUNET_EXECUTABLE SOURCE_DIR
# WORK_DIR), makes the work folder, and defines accuracy LOG: the last "test
# accuracy:" figure a recipe printed.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (scripts/setup.sh does)"
  exit 1
fi
lunet=$1 src=$2 work=$3
mkdir -p "$work"
accuracy() { sed -n 's/^test accuracy: \([0-9.]*\)$/\1/p' "$1" | tail -n 1; }
