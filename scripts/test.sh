#!/bin/sh
# The whole test suite (what .ci/run does after scripts/setup.sh): the
# build's tests, then the same library, plugins, backends, shell and tests
# built again with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DLUNET_SANITIZE=ON, in build-sanitize/) and their tests, but for the
# long training runs (the ResNet-beats-seed, char_rnn and tiny_gpt recipe
# tests) and the C example built against the installed, unsanitized SDK.
# A sanitizer report fails its test.  Leak checking is off here (the
# libraries lunet loads keep allocations to exit).
set -eu
cd "$(dirname "$0")/.."
ctest --test-dir build --output-on-failure
cmake -S . -B build-sanitize -DLUNET_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-sanitize -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-sanitize --output-on-failure -j"$(nproc)" \
    -E 'recipe_fashion_mnist_resnet_beats_seed|recipe_char_rnn_learns|recipe_tiny_gpt_learns|c_example_fashion_mnist'
