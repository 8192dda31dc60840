# Sourced by compare.sh and compare_sequence.sh: the allocators torch runs
# with (see bench/README.md: on this machine the allocator decides torch's
# speed).  Sets $torch_allocs (those available here) and defines
# alloc_env NAME, which prints the environment assignments for `env`.
tcmalloc=$(ls /usr/lib/*/libtcmalloc_minimal.so.4 2>/dev/null | head -1) || true
torch_allocs="glibc glibc-tuned${tcmalloc:+ tcmalloc}"

alloc_env() {
  case $1 in
    glibc) ;;
    glibc-tuned) echo MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 ;;
    tcmalloc) echo "LD_PRELOAD=$tcmalloc" ;;
  esac
}
