#!/bin/sh
# Builds examples/classify.c against lunet installed into a scratch prefix
# (nothing but `pkg-config lunet`), makes a model and PNG and JPEG images
# with lunet from Lua, and requires classify's top-3 classes on 1 thread and
# on 4 threads sharing the one model to equal Lua's predictions.
#   classify_example.sh BUILD_DIR SOURCE_DIR WORK_DIR LUNET
set -eu
build=$1 src=$2 work=$3 lunet=$4
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
export PKG_CONFIG_PATH="$(ls -d "$work"/prefix/lib*/pkgconfig | head -n 1)"
libdir=$(pkg-config --variable=libdir lunet)
cc -std=gnu11 -O2 -Wall -Wextra -Werror "$src/examples/classify.c" $(pkg-config --cflags --libs lunet) -lpthread \
  -Wl,-rpath,"$libdir" -o "$work/classify"
"$lunet" "$src/tests/recipes/classify_check.lua" make "$work"
"$work/classify" "$work/model.lunet" --labels "$(cat "$work/labels")" $(cat "$work/files") > "$work/one.txt"
"$work/classify" "$work/model.lunet" --labels "$(cat "$work/labels")" --threads 4 $(cat "$work/files") > "$work/four.txt"
cmp "$work/one.txt" "$work/four.txt" || { echo "4 threads on one model gave other answers than 1"; exit 1; }
"$lunet" "$src/tests/recipes/classify_check.lua" check "$work"
head -n 3 "$work/one.txt"
echo "classify example: ok"
