#!/bin/sh
# Builds examples/classify.c against lunet installed into a scratch prefix
# (nothing but `pkg-config lunet`), makes a model and PNG and JPEG images
# with lunet from Lua, and requires classify's top-3 classes on 1 thread and
# on 4 threads sharing the one model to equal Lua's predictions.  Then the
# minimal inference build of the same program (infer/: no Lua, no libcurl,
# nothing loaded with dlopen but OpenBLAS): its libraries must be those of
# the allowlist below, and its answers the same.
#   classify_example.sh BUILD_DIR SOURCE_DIR WORK_DIR LUNET CLASSIFY_MINIMAL
set -eu
build=$1 src=$2 work=$3 lunet=$4 minimal=$5
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
# one sigmoid unit: two classes, {1 - p, p} (it refused the two names)
"$work/classify" "$work/binary.lunet" $(cat "$work/files") > "$work/binary.txt"
"$lunet" "$src/tests/recipes/classify_check.lua" binary "$work"
head -n 3 "$work/one.txt"

# the minimal build: exactly these libraries, and the same answers (the
# class names read from the model this time, not given with --labels)
allowed='linux-vdso.so.1 ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libcjson.so.1 libpng16.so.16 libz.so.1 libjpeg.so.62'
ldd "$minimal" | awk '{print $1}' | sed 's|.*/||' > "$work/ldd.txt"
for lib in $(cat "$work/ldd.txt"); do
  case " $allowed " in
    *" $lib "*) ;;
    *) echo "classify-minimal links $lib, which the minimal build must not (allowed: $allowed)"; exit 1 ;;
  esac
done
grep -q '^libc.so.6$' "$work/ldd.txt" || { echo "ldd of classify-minimal shows no libc: not a dynamic program?"; exit 1; }
if LUNET_PLUGIN_PATH=/nonexistent LUNET_BACKEND_PATH=/nonexistent \
   "$minimal" "$work/model.lunet" --threads 2 $(cat "$work/files") > "$work/minimal.txt"; then :; else
  echo "classify-minimal failed"; exit 1
fi
cmp "$work/one.txt" "$work/minimal.txt" || { echo "the minimal build gave other answers"; exit 1; }
strip -o "$work/classify-minimal.stripped" "$minimal"
echo "classify-minimal: $(wc -c < "$work/classify-minimal.stripped") bytes stripped, links: $(tr '\n' ' ' < "$work/ldd.txt")"
echo "classify example: ok"
