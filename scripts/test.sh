#!/bin/sh
# The whole test suite (what .ci/run does after scripts/setup.sh): the
# build's tests, then the same library, plugins, backends, shell and tests
# built again with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DLUNET_SANITIZE=ON, in build-sanitize/) and their tests, but for the
# long training runs (the ResNet-beats-seed, char_rnn and tiny_gpt recipe
# tests), the C examples built against the installed, unsanitized SDK, and
# the atomic-save kill test (it tests rename(), not memory).
# A sanitizer report fails its test.  Leak checking is off here (the
# libraries lunet loads keep allocations to exit).  Last, the fuzzing build
# (clang, -DLUNET_FUZZ=ON, in build-fuzz/) runs each libFuzzer target for
# LUNET_FUZZ_SECONDS (15) on its corpus.
set -eu
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure
cmake -S . -B build-sanitize -DLUNET_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-sanitize -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-sanitize --output-on-failure -j"$(nproc)" \
    -E 'recipe_fashion_mnist_resnet_beats_seed|recipe_char_rnn_learns|recipe_tiny_gpt_learns|c_example_fashion_mnist|c_example_classify|model_atomic_save'
if ! command -v clang >/dev/null 2>&1; then
  echo "scripts/test.sh: clang is missing, so the fuzz targets cannot be built;" \
       "run scripts/setup.sh (or apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
CC=clang cmake -S . -B build-fuzz -DLUNET_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)"
ctest --test-dir build-fuzz --output-on-failure -j"$(nproc)"
