#!/usr/bin/env bash
# Installs everything the end-to-end tests drive (Debian 12), idempotently and quietly, and
# makes sure none of the servers it brings is left running on the host: the tests start their
# own instances inside network namespaces.
#
# Run as root. Safe to run again: it installs only what is missing.
set -euo pipefail

PACKAGES=(
    iproute2        # ip: namespaces, veth, addresses, routes
    util-linux      # nsenter, unshare
    mount           # mount (the target fixture's bind mounts)
    hostname        # hostname -i in the identity tests
    nftables        # nft
    iptables        # iptables-legacy-save: the steal's iptables fallback tests
    dnsmasq-base    # the pod's DNS server (the binary only: no service)
    socat           # UDP echo and UDP client
    curl
    busybox-static  # a statically linked wget
    postgresql      # server (initdb, postgres) for the database tests
    postgresql-client
    redis-server
    redis-tools     # redis-cli
    dnsutils        # dig
    iputils-ping    # ping
    gron            # a Go program that fetches URLs with Go's own resolver
    golang-go       # builds tests/go: Go programs that find interfaces by name
    python3         # the helper servers and clients in tests/scripts
    python3-h2      # HTTP/2 server and client of the agent's HTTP filter tests
    coreutils
    libc-bin        # getent
    procps
    groff-base      # renders the generated manual page in its test
    proxychains4    # the preload design the bench compares with (LD_PRELOAD connect hooks)
    dante-server    # danted, the SOCKS5 server proxychains4 talks to (bench/wrappers)
)

log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps.sh must run as root" >&2
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1
}

if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing test dependencies: ${missing[*]}"
    # A fresh machine may have no (or stale) package lists: update once and retry.
    if ! apt_install "${missing[@]}"; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
        apt_install "${missing[@]}" || { cat "$log" >&2; exit 1; }
    fi
fi

# The packaged services would listen on the host's loopback (5432, 6379) or fail to start
# (danted has no configuration) and start again at boot. Stop them now and keep them from starting.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now postgresql.service redis-server.service danted.service >/dev/null 2>&1 || true
else
    for service in postgresql redis-server danted; do
        if [ -x "/etc/init.d/$service" ]; then
            "/etc/init.d/$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi
if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _ status _; do
        if [ "$status" = online ]; then
            pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
        fi
    done
fi

# Fuzzing (scripts/fuzz.sh): cargo fuzz needs a nightly toolchain for libFuzzer's
# instrumentation.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly Rust toolchain (for cargo fuzz)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked --quiet cargo-fuzz
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked --quiet cargo-nextest
fi
