#!/bin/sh
# Packs this build for a machine with a GPU and none of lunet's
# dependencies (the device machines a session may be lent: a different
# distribution, no Debian packages, nothing fetched there), as
# .gpu/bundle.tar.gz (about 40 MB, gzip: a bare machine may lack xz; the
# device tool carries 64 MiB with the tree) holding
#   prefix/  this build installed (bin/lunet, test_vulkan_backend, the
#            backends, the Lua modules)
#   lib/     the shared libraries they load, from this machine (all but
#            glibc's own, which the other machine has, newer)
#   deb/     Vulkan's loader as a Debian package, unpacked there
# Run it here after scripts/setup.sh; then, on that machine, from the
# repository root with .gpu carried along (ignored by git: name it in the
# device tool's carry): sh scripts/gpu_check.sh.
set -eu
cd "$(dirname "$0")/.."
[ -x build/bin/lunet ] || { echo "gpu_bundle.sh: build first (sh scripts/setup.sh)" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/lib .gpu/deb
cmake --install build --prefix "$PWD/.gpu/prefix" >/dev/null
cp build/bin/test_vulkan_backend .gpu/prefix/bin/
# not needed for the check, and they pull in MPI's and the server's worlds
rm -rf .gpu/prefix/include .gpu/prefix/bin/lunet-serve
find .gpu/prefix -name mpi.so -delete
# OpenBLAS is opened at run time by the CPU backend (no ldd entry): itself too
blas=$(ldconfig -p | awk '/libopenblas\.so\.0 /{print $NF; exit}')
[ -n "$blas" ] || { echo "gpu_bundle.sh: no libopenblas.so.0 here" >&2; exit 2; }
for f in .gpu/prefix/bin/* $(find .gpu/prefix -name '*.so*' -type f) "$blas"; do
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | { cat; echo "$blas"; } | sort -u | grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" .gpu/lib/; done
find .gpu -type f \( -name '*.so*' -o -perm -u+x \) -exec strip --strip-debug {} + 2>/dev/null || true
# (into /tmp first: apt's download user may not write here)
(cd /tmp && apt-get download libvulkan1 >/dev/null 2>&1 && mv libvulkan1_*.deb "$OLDPWD/.gpu/deb/")
tar -C .gpu -czf .gpu/bundle.tar.gz prefix lib deb
rm -rf .gpu/prefix .gpu/lib .gpu/deb
echo "gpu_bundle.sh: .gpu/bundle.tar.gz, $(du -h .gpu/bundle.tar.gz | cut -f1) (carry .gpu)"
