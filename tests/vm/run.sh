#!/usr/bin/env bash
# Boots a stock Debian kernel (binder driver, DMA-BUF system heap, udmabuf)
# under QEMU and runs the VTS-like suite (tests/vts) against the real
# dmabufd service on kernel binder. See "The real-kernel suite" in README.md.
#
#   tests/vm/run.sh           run the suite; exit 0 only on "N passed, 0 failed"
#   tests/vm/run.sh --bench   run the benchmark instead (vts --bench)
#   tests/vm/run.sh --shell   interactive busybox shell with rsb_hub and dmabufd up
#   --only=A,B                run only the cases whose names contain A or B
#   --fuzz-count=N            transactions of the kernel binder fuzz case (default 10000;
#                             the long form is --only=fuzz --fuzz-count=100000)
#   --keep                    keep the initramfs tree, image and console log
#   --stand-in                (harness bring-up) serve with vts's refusing stand-in, not dmabufd
#
# Environment: CARGO_TARGET_DIR (the cache lives in <target>/vm-cache),
# DMABUFD_VM_TIMEOUT (seconds, default 2400), DMABUFD_VM_MEM (MiB, default 1024;
# 3072 with --bench), DMABUFD_VM_LOAD_CYCLES (the load case's cycles per app; default 60).
set -euo pipefail

mode=suite
keep=0
service=dmabufd
only=
fuzz_count=
for arg in "$@"; do
    case "$arg" in
        --shell) mode=shell ;;
        --bench) mode=bench ;;
        --keep) keep=1 ;;
        --only=*)
            only=${arg#--only=}
            case "$only" in *[!A-Za-z0-9_,]*) echo "run.sh: --only takes case-name words and commas: $only" >&2; exit 2 ;; esac
            ;;
        --fuzz-count=*)
            fuzz_count=${arg#--fuzz-count=}
            case "$fuzz_count" in '' | *[!0-9]*) echo "run.sh: --fuzz-count takes a number: $fuzz_count" >&2; exit 2 ;; esac
            ;;
        # Harness bring-up: serve with the suite's minimal stand-in instead of dmabufd.
        --stand-in) service=stand-in ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
cache=$target_dir/vm-cache
timeout_secs=${DMABUFD_VM_TIMEOUT:-2400}
vm_mem=${DMABUFD_VM_MEM:-1024}
# The benchmark's camera burst (30 x 12 MiB direct, then from a pool of 30)
# and its pooled sizes need more than the suite's 1 GiB.
[ "$mode" = bench ] && [ -z "${DMABUFD_VM_MEM:-}" ] && vm_mem=3072
rsbinder_tools_version=0.12.0
mkdir -p "$cache"

log() { echo "run.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- host tools ---------------------------------------------------------------

install_host_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    # A dynamically linked busybox would need its libraries in the guest too.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
        missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v xz >/dev/null || missing+=(xz-utils)
    # bpf/build.sh: the suite loads BPF objects rebuilt from bpf/*.c.
    command -v clang >/dev/null || missing+=(clang)
    command -v llvm-strip >/dev/null || missing+=(llvm)
    [ -r /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install --no-install-recommends ${missing[*]}) or run as root"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- kernel -------------------------------------------------------------------

# The URI the machine's own apt sources use for a Debian archive ("debian" or
# "debian-security"), so this script names no mirror of its own.
debian_mirror() {
    local suffix=$1 uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) print $i }' |
        grep -E "/${suffix}/?\$" | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
            grep -E "/${suffix}/?\$" | head -n1 || true)
    fi
    echo "${uri%/}"
}

fetch_kernel() {
    local kdir=$1 apt=$cache/apt
    local mirror security keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mirror=$(debian_mirror debian)
    security=$(debian_mirror debian-security)
    [ -n "$mirror" ] || die "no Debian archive URI in /etc/apt/sources*; cannot fetch the kernel"
    [ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    rm -rf "$apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" "$apt/debs"
    {
        echo "deb [signed-by=$keyring] $mirror trixie-backports main"
        [ -n "$security" ] && echo "deb [signed-by=$keyring] $security bookworm-security main"
    } >"$apt/sources.list"
    # A private apt configuration: the machine's own sources and lists stay untouched.
    local aptopts=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=$apt/sources.list.d"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache"
        -o "Acquire::Languages=none"
        -o "APT::Architecture=amd64"
        # The cache belongs to the invoking user; skip the _apt download sandbox.
        -o "APT::Sandbox::User=$(id -un)"
    )
    log "resolving the kernel package (trixie-backports 6.18, else bookworm-security 6.12)"
    apt-get "${aptopts[@]}" update -qq >/dev/null
    local pkg
    # Newest 6.18 generic amd64 image; cloud/rt/dbg flavours are other kernels.
    pkg=$(apt-cache "${aptopts[@]}" search --names-only '^linux-image-6\.18\.' | awk '{print $1}' |
        grep -E '^linux-image-6\.18\.[0-9]+\+[a-z0-9.~+]*-amd64(-unsigned)?$' | sort -V | tail -n1 || true)
    if [ -z "$pkg" ]; then
        pkg=$(apt-cache "${aptopts[@]}" search --names-only '^linux-image-6\.12\.' | awk '{print $1}' |
            grep -E '^linux-image-6\.12\.[0-9]+\+[a-z0-9.~+]*-amd64-unsigned$' | sort -V | tail -n1 || true)
    fi
    [ -n "$pkg" ] || die "no linux-image-6.18.*-amd64 (trixie-backports) or 6.12.*-amd64-unsigned (bookworm-security) found"
    log "downloading $pkg"
    (cd "$apt/debs" && apt-get "${aptopts[@]}" download -qq "$pkg" >/dev/null)
    local deb x
    deb=$(ls "$apt/debs"/*.deb | head -n1)
    x=$apt/extract
    mkdir -p "$x"
    dpkg-deb -x "$deb" "$x"
    local vmlinuz ko
    vmlinuz=$(ls "$x"/boot/vmlinuz-* | head -n1)
    ko=$(find "$x" -name 'binder_linux.ko*' | head -n1)
    [ -n "$vmlinuz" ] && [ -n "$ko" ] || die "$pkg has no vmlinuz or binder_linux.ko"
    mkdir -p "$kdir.new"
    cp "$vmlinuz" "$kdir.new/vmlinuz"
    case "$ko" in
        *.xz) xz -dc "$ko" >"$kdir.new/binder_linux.ko" ;;
        *) cp "$ko" "$kdir.new/binder_linux.ko" ;;
    esac
    echo "$pkg" >"$kdir.new/package"
    rm -rf "$kdir" "$x" "$apt/debs" "$apt/cache"
    mv "$kdir.new" "$kdir"
}

# --- rsb_hub / rsb_service ----------------------------------------------------

install_rsbinder_tools() {
    local root=$cache/tools
    if [ -x "$root/bin/rsb_hub" ] && [ -x "$root/bin/rsb_service" ] &&
        grep -qs "rsbinder-tools $rsbinder_tools_version" "$root/.crates.toml"; then
        return 0
    fi
    log "installing rsbinder-tools $rsbinder_tools_version into $root"
    cargo install rsbinder-tools --version "$rsbinder_tools_version" --locked --root "$root" --quiet
}

# --- project binaries ---------------------------------------------------------

build_binaries() {
    log "building dmabufd, dmabufctl and the vts suite (release)"
    (cd "$repo" && cargo build --release --quiet -p dmabufd -p dmabufctl --bins)
    local json
    json=$(cd "$repo" && cargo test --release --no-run --test vts --message-format=json --quiet)
    vts_exe=$(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep '"name":"vts"' |
        grep -o '"executable":"[^"]*"' | tail -n1 | sed 's/"executable":"\(.*\)"/\1/')
    [ -n "$vts_exe" ] && [ -x "$vts_exe" ] || die "could not find the vts test executable"
    dmabufd_exe=$target_dir/release/dmabufd
    dmabufctl_exe=$target_dir/release/dmabufctl
    [ -x "$dmabufd_exe" ] && [ -x "$dmabufctl_exe" ] || die "release binaries missing in $target_dir/release"
}

# The BPF objects rebuilt from source; the suite checks they load and agree
# with the committed ones the binaries embed.
build_bpf() {
    bpf_rebuilt=$cache/bpf-rebuilt
    log "rebuilding the BPF objects (bpf/build.sh) into $bpf_rebuilt"
    rm -rf "$bpf_rebuilt"
    "$repo/bpf/build.sh" "$bpf_rebuilt" >&2 || die "bpf/build.sh failed"
}

# --- initramfs ----------------------------------------------------------------

# Copies a binary and every shared library ldd lists (the loader included) to
# the same paths under the initramfs root.
add_binary() {
    local src=$1 dest=$2 lib
    install -m 0755 "$src" "$root$dest"
    if command -v strip >/dev/null; then strip --strip-debug "$root$dest" 2>/dev/null || true; fi
    for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | grep -v "^$src\$" || true); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        chmod 0755 "$root$lib"
    done
}

build_initramfs() {
    local kdir=$1 image=$2
    root=$work/root
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,etc/rsb_hub,lib/modules,proc,sys,tmp,run}
    # The cpio "." entry becomes "/": apps (uid 10001/10002) must traverse it,
    # and rsb_hub refuses a policy below anything group/world-writable.
    chmod 0755 "$root" "$root"/*
    cp "$(command -v busybox)" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    install -m 0644 "$kdir/binder_linux.ko" "$root/lib/modules/binder_linux.ko"
    add_binary "$dmabufd_exe" /bin/dmabufd
    add_binary "$dmabufctl_exe" /bin/dmabufctl
    add_binary "$vts_exe" /bin/vts
    add_binary "$cache/tools/bin/rsb_hub" /bin/rsb_hub
    add_binary "$cache/tools/bin/rsb_service" /bin/rsb_service
    # The shipped policy, plus (VM only) the load case's sixteen app uids
    # 10100-10115 on the rule that lets apps find the allocator.
    load_uids=$(seq -s ', ' 10100 10115)
    sed "/^name = \"vendor\.dmabuf\.\*\"/,/^find = /s/^find = { uid = \[\(.*\)\] }\$/find = { uid = [\1, $load_uids] }/" \
        "$repo/etc/rsb_hub/dmabufd.toml" >"$root/etc/rsb_hub/dmabufd.toml"
    grep -q "10115] }" "$root/etc/rsb_hub/dmabufd.toml" ||
        die "could not add the load case's uids to the VM's rsb_hub policy"
    chmod 0644 "$root/etc/rsb_hub/dmabufd.toml"
    install -m 0644 "$repo/tests/vm/guest-dmabufd.toml" "$root/etc/dmabufd.toml"
    install -m 0755 "$repo/tests/vm/init.sh" "$root/init"
    mkdir -p "$root/lib/dmabufd-bpf"
    install -m 0644 "$bpf_rebuilt"/*.bpf.o "$root/lib/dmabufd-bpf/"
    printf '%s\n' 'root:x:0:0:root:/:/bin/sh' 'system:x:1000:1000:system:/:/bin/false' \
        'dmabufd:x:1100:1100:dmabufd:/:/bin/false' 'app_a:x:10001:10001:app a:/:/bin/false' \
        'app_b:x:10002:10002:app b:/:/bin/false' 'app_c:x:10003:10003:app c:/:/bin/false' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'system:x:1000:' 'dmabufd:x:1100:' 'app_a:x:10001:' 'app_b:x:10002:' \
        'app_c:x:10003:' >"$root/etc/group"
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    (cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$image"
}

# --- main ---------------------------------------------------------------------

install_host_packages
kernel_dir=$cache/kernel
if [ ! -s "$kernel_dir/vmlinuz" ] || [ ! -s "$kernel_dir/binder_linux.ko" ]; then
    fetch_kernel "$kernel_dir"
fi
log "kernel: $(cat "$kernel_dir/package" 2>/dev/null || echo unknown) (cached in $kernel_dir)"
install_rsbinder_tools
build_binaries
build_bpf

work=$(mktemp -d "$cache/run.XXXXXX")
cleanup() { [ "$keep" -eq 1 ] && log "kept $work" || rm -rf "$work"; }
trap cleanup EXIT
image=$work/initramfs.cpio.gz
build_initramfs "$kernel_dir" "$image"
console=$work/console.log

qemu=(qemu-system-x86_64 -accel tcg -cpu max -m "$vm_mem" -smp 2 -no-reboot -nic none
    -kernel "$kernel_dir/vmlinuz" -initrd "$image")
# psi=1: Debian builds PSI in but off by default; the pools' drain case
# needs its memory trigger.
cmdline="console=ttyS0 quiet panic=-1 psi=1 vm_mode=$mode vm_service=$service"
[ -n "$only" ] && cmdline="$cmdline vm_only=$only"
# The load case's cycles per app (the long form: DMABUFD_VM_LOAD_CYCLES=10000).
if [ -n "${DMABUFD_VM_LOAD_CYCLES:-}" ]; then
    case "$DMABUFD_VM_LOAD_CYCLES" in *[!0-9]*) die "DMABUFD_VM_LOAD_CYCLES takes a number" ;; esac
    cmdline="$cmdline vm_load_cycles=$DMABUFD_VM_LOAD_CYCLES"
fi
[ -n "$fuzz_count" ] && cmdline="$cmdline vm_fuzz_count=$fuzz_count"

if [ "$mode" = shell ]; then
    log "booting to a shell; 'poweroff -f' (or Ctrl-A x) leaves"
    "${qemu[@]}" -nographic -append "$cmdline"
    exit 0
fi

boot() {
    log "booting ($mode, timeout ${timeout_secs}s, console log $console)"
    start=$(date +%s)
    set +e
    timeout -k 10 "$timeout_secs" "${qemu[@]}" -serial "file:$console" -monitor none -display none \
        -append "$cmdline" </dev/null >/dev/null 2>"$work/qemu.err"
    qemu_rc=$?
    set -e
    sed -i 's/\r$//' "$console" 2>/dev/null || true
    log "VM finished in $(($(date +%s) - start))s (qemu exit $qemu_rc)"
}
boot
# The guest kernel can die while it boots, before /init, under TCG with
# two vCPUs (seen once: an int3 Oops in enqueue_timer while the kernel
# patched its own text during the initramfs unpack). Nothing of ours has
# run then, so the boot is tried once more; a crash after /init started
# is a result and is never retried.
if ! grep -q '^vm: /init started$' "$console" && grep -q 'Kernel panic' "$console"; then
    log "the guest kernel panicked before /init ran (an emulator boot crash, not a case):"
    grep -m3 -E 'Oops|RIP:|Kernel panic' "$console" | sed 's/^/    /' >&2
    log "booting once more"
    boot
fi

summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$console" | tail -n1 || true)
if [ "$mode" = bench ]; then
    if grep -q '^BENCH DONE$' "$console"; then
        sed -n '/^BENCH BEGIN$/,/^BENCH DONE$/p' "$console"
        exit 0
    fi
    cat "$console" "$work/qemu.err" >&2
    die "the benchmark did not finish"
fi

passed=${summary%% passed*}
failed=${summary#*, }
failed=${failed%% failed}
if [ -n "$summary" ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ] && [ "$qemu_rc" -eq 0 ]; then
    sed -n '/^vm: suite begins$/,$p' "$console"
    exit 0
fi
echo "===== guest console log =====" >&2
cat "$console" >&2
cat "$work/qemu.err" >&2
[ "$qemu_rc" -eq 124 ] && log "timed out after ${timeout_secs}s"
if [ -n "$summary" ]; then
    die "suite failed: $summary"
fi
die "the guest printed no summary line"
