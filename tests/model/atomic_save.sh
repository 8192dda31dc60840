#!/bin/sh
# model:save and ModelCheckpoint are atomic: a process killed with SIGKILL
# at a random moment while it saves over and over leaves under the target
# name either the previous file or the next one, whole, never a torn or
# mixed one.  Usage: atomic_save.sh LUNET WORKDIR [ROUNDS]
set -eu
lunet=$1 dir=$2 rounds=${3:-20}
here=$(dirname "$0")
rm -rf "$dir"
mkdir -p "$dir"
"$lunet" "$here/atomic_save.lua" "$dir/model.lunet" init
for mode in save checkpoint; do
  i=0
  while [ "$i" -lt "$rounds" ]; do
    i=$((i + 1))
    "$lunet" "$here/atomic_save.lua" "$dir/model.lunet" "$mode" >"$dir/child.out" &
    pid=$!
    # wait for the child to start saving, then let it save for 0 to 300 ms
    n=0
    until grep -q saving "$dir/child.out" 2>/dev/null; do
      n=$((n + 1))
      [ "$n" -lt 600 ] || { echo "the saving child did not start"; kill -9 "$pid"; exit 1; }
      sleep 0.05
    done
    sleep "$(awk -v s="$i$mode" 'BEGIN { srand(length(s) * 7919 + substr(s, 1, length(s) - 4) * 104729); printf "%.3f", rand() * 0.3 }')"
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    want=$([ "$mode" = save ] && echo uniform || echo loads)
    if ! "$lunet" "$here/atomic_save.lua" "$dir/model.lunet" verify "$want" >"$dir/verify.out" 2>&1; then
      echo "round $i ($mode): the file under the target name is not whole after kill -9:"
      cat "$dir/verify.out"
      exit 1
    fi
  done
done
left=$(ls "$dir" | grep -c '\.tmp\.' || true)
echo "atomic save: ok ($rounds kills while saving and $rounds while checkpointing; $left temporary files left by killed writers)"
