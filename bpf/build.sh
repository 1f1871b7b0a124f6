#!/usr/bin/env bash
# Rebuilds the BPF iterator objects that src/scan/bpf.rs embeds.
#
#   bpf/build.sh [OUTDIR]    default OUTDIR: bpf/ (the committed objects)
#
# Needs clang, llvm-strip (package llvm) and libbpf's BPF headers (package
# libbpf-dev: bpf_helpers.h, bpf_core_read.h). DWARF is stripped; .BTF and
# .BTF.ext stay (CO-RE relocation at load time needs them).
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$src}
mkdir -p "$out"
out=$(cd "$out" && pwd)
clang=${CLANG:-clang}
strip=${LLVM_STRIP:-llvm-strip}
command -v "$clang" >/dev/null || { echo "build.sh: $clang not found (apt-get install clang)" >&2; exit 1; }
command -v "$strip" >/dev/null || { echo "build.sh: $strip not found (apt-get install llvm)" >&2; exit 1; }
[ -r /usr/include/bpf/bpf_helpers.h ] || { echo "build.sh: bpf/bpf_helpers.h not found (apt-get install libbpf-dev)" >&2; exit 1; }
for prog in dmabuf_iter task_iter; do
    # The BTF line info names the source file and the compile directory:
    # compile from bpf/ by relative name with a fixed compile directory, so
    # the objects are the same bytes wherever the repo is cloned.
    (cd "$src" && "$clang" -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
        -fdebug-compilation-dir=bpf \
        -I . -c "$prog.bpf.c" -o "$out/$prog.bpf.o.tmp")
    "$strip" -g "$out/$prog.bpf.o.tmp"
    mv "$out/$prog.bpf.o.tmp" "$out/$prog.bpf.o"
done
echo "build.sh: wrote $out/dmabuf_iter.bpf.o $out/task_iter.bpf.o ($("$clang" --version | head -n1))"
