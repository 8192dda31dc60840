#!/bin/sh
# expect.sh PATTERN COMMAND [ARG...]: runs COMMAND and passes only when it
# exits 0 AND a line of its output matches PATTERN (grep -E).  ctest's
# PASS_REGULAR_EXPRESSION alone ignores the exit status: a crash after the
# line, or a failure that prints it, would pass.
set -u
pattern=$1
shift
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 0 ]; then
  echo "expect.sh: the command exited with status $rc"
  exit 1
fi
if ! printf '%s\n' "$out" | grep -Eq -- "$pattern"; then
  echo "expect.sh: no line of the output matches: $pattern"
  exit 1
fi
