#!/usr/bin/env bash
# Every test: lint, host tests (RPC + memfd heap, platform files, sepolicy
# compile), then the real-kernel suite in QEMU (binder, DMA-BUF heaps, udmabuf).
# Installs what it needs on a fresh Debian machine (root) via apt.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "run-all: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# checkpolicy + m4 compile the sepolicy in tests/platform_files.rs;
# systemd provides systemd-analyze, which verifies the systemd unit there;
# python3-prometheus-client parses the metrics in tests/metrics_prometheus.rs.
apt_install checkpolicy m4 systemd python3-prometheus-client
# The C API's test programs: the system C and C++ compilers and pkg-config.
apt_install gcc g++ pkg-config

echo "== lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== host tests"
cargo test --workspace --all-targets
# --all-targets leaves out doc-tests: the client's compile-fail and README examples.
cargo test --workspace --doc

echo "== real-kernel suite (QEMU)"
tests/vm/run.sh
