#!/bin/busybox sh
# /init of the test VM (built into the initramfs by tests/vm/run.sh).
# Brings up binder, rsb_hub with the shipped policy and dmabufd on kernel
# binder, then runs the suite, the benchmark or a shell (vm_mode= on the
# kernel command line), and powers off.

# run.sh's marker: a kernel that died before this line never ran /init.
/bin/busybox echo "vm: /init started"
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
# The kernel's list of every live dma-buf (dma_buf/bufinfo) lives in debugfs.
mount -t debugfs debugfs /sys/kernel/debug

mode=$(sed -n 's/.*vm_mode=\([a-z-]*\).*/\1/p' /proc/cmdline)
service=$(sed -n 's/.*vm_service=\([a-z-]*\).*/\1/p' /proc/cmdline)
# run.sh --only=A,B: case-name filters for vts.
only=$(sed -n 's/.*vm_only=\([A-Za-z0-9_,]*\).*/\1/p' /proc/cmdline | tr , ' ')
# run.sh's DMABUFD_VM_LOAD_CYCLES: the load case's cycles per app.
load_cycles=$(sed -n 's/.*vm_load_cycles=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$load_cycles" ] && export DMABUFD_LOAD_CYCLES=$load_cycles
# run.sh --fuzz-count=N: the fuzz case's transaction count.
fuzz_count=$(sed -n 's/.*vm_fuzz_count=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$fuzz_count" ]; then export DMABUFD_FUZZ_COUNT="$fuzz_count"; fi
SERVICE_NAME=vendor.dmabuf.IDmaBufAllocator/default

say() { echo "vm: $*"; }
die() {
    say "FATAL: $*"
    for f in /run/rsb_hub.log /run/dmabufd.log; do
        [ -s "$f" ] && { say "--- $f"; cat "$f"; }
    done
    poweroff -f
}

# Binder: the driver's devices, where rsbinder and rsb_hub look for them.
insmod /lib/modules/binder_linux.ko devices=binder,hwbinder,vndbinder ||
    die "insmod binder_linux.ko failed"
[ -c /dev/binder ] || die "/dev/binder did not appear"
mkdir -p /dev/binderfs
ln -s /dev/binder /dev/binderfs/binder
# Every app talks binder; the policy in rsb_hub decides who may add/find what.
chmod 0666 /dev/binder
# The heap devices stay root-only: apps must go through the service.
[ -c /dev/dma_heap/system ] || die "/dev/dma_heap/system missing"
[ -c /dev/udmabuf ] || die "/dev/udmabuf missing"
chown root:root /dev/dma_heap/* /dev/udmabuf
chmod 0600 /dev/dma_heap/* /dev/udmabuf
say "kernel $(uname -r), heaps: $(ls /dev/dma_heap | tr '\n' ' ')"

# rsb_service check: 0 registered, 1 not registered, 2 no answer (no hub yet).
# Gives up early when the process being waited for ($3) has exited.
wait_for() {
    want=$1 tries=$2 pid=$3 rc=2
    while [ "$tries" -gt 0 ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        rsb_service check "$SERVICE_NAME" >/dev/null 2>&1
        rc=$?
        case "$want:$rc" in
            hub:0 | hub:1 | service:0) return 0 ;;
        esac
        tries=$((tries - 1))
        sleep 0.2
    done
    return 1
}

rsb_hub --config /etc/rsb_hub/dmabufd.toml >/run/rsb_hub.log 2>&1 &
wait_for hub 100 $! || die "rsb_hub did not come up"
say "rsb_hub up (policy /etc/rsb_hub/dmabufd.toml)"

if [ "$service" = stand-in ]; then
    # Harness bring-up only: a minimal service registered as uid 1100.
    RUST_LOG=info vts --stand-in-service >/run/dmabufd.log 2>&1 &
else
    # Started as root: it opens the heap devices, then drops to uid 1100.
    RUST_LOG=info dmabufd --kernel --config /etc/dmabufd.toml >/run/dmabufd.log 2>&1 &
fi
service_pid=$!
wait_for service 300 "$service_pid" || die "$SERVICE_NAME was not registered (within 60 s)"
say "service registered (pid $service_pid, uid $(awk '/^Uid:/ {print $2}' /proc/$service_pid/status))"

oom_check() {
    if dmesg | grep -E 'Out of memory|Killed process|oom-kill' >/run/oom.txt; then
        say "kernel log reports an OOM kill:"
        cat /run/oom.txt
        return 1
    fi
    return 0
}

case "$mode" in
    shell)
        say "shell: rsb_hub and the service are running; logs in /run; 'poweroff -f' leaves"
        setsid cttyhack sh
        ;;
    bench)
        # A second instance serving RPC binder, for the RPC column. It is
        # uid 1100 by the time it creates its socket.
        mkdir -p /run/dmabufd-bench
        chown 1100:1100 /run/dmabufd-bench
        RUST_LOG=warn dmabufd --rpc /run/dmabufd-bench/rpc.sock --config /etc/dmabufd.toml \
            >/run/dmabufd-rpc.log 2>&1 &
        tries=100
        while [ ! -S /run/dmabufd-bench/rpc.sock ] && [ $tries -gt 0 ]; do
            sleep 0.2
            tries=$((tries - 1))
        done
        [ -S /run/dmabufd-bench/rpc.sock ] || die "the RPC dmabufd did not start: $(cat /run/dmabufd-rpc.log)"
        echo "BENCH BEGIN"
        # run.sh treats the run as good only when it sees BENCH DONE.
        if DMABUFD_VTS=1 vts --bench 2>&1 && oom_check; then
            echo "BENCH DONE"
        else
            echo "BENCH FAILED"
        fi
        ;;
    *)
        say "suite begins"
        # The BPF objects run.sh rebuilt from bpf/*.c: the suite must find them.
        export DMABUFD_REBUILT_BPF_DIR=/lib/dmabufd-bpf DMABUFD_REQUIRE_REBUILT_BPF=1
        # shellcheck disable=SC2086 # $only is a list of words
        DMABUFD_VTS=1 vts $only 2>&1 | tee /run/vts.out
        summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' /run/vts.out | tail -n1)
        [ -n "$summary" ] || summary="0 passed, 1 failed"
        passed=${summary%% passed*}
        failed=${summary#*, }
        failed=${failed%% failed}
        if ! oom_check; then failed=$((failed + 1)); fi
        # The restart case kills the service on purpose and records the pid
        # of the one it started; that one must still be alive.
        [ -s /run/dmabufd.restarted-pid ] && service_pid=$(cat /run/dmabufd.restarted-pid)
        if ! kill -0 "$service_pid" 2>/dev/null; then
            say "the service died during the suite"
            failed=$((failed + 1))
        fi
        if [ "$failed" != 0 ]; then
            say "--- service log (tail)"
            tail -n 40 /run/dmabufd.log
            say "--- rsb_hub log (tail)"
            tail -n 20 /run/rsb_hub.log
        fi
        echo "$passed passed, $failed failed"
        ;;
esac
poweroff -f
