#!/usr/bin/env bash
# Builds the images the Kubernetes end-to-end tests run besides busybox, from this machine's
# Debian packages (there is no registry), and imports them into a test cluster's containerd.
#
#   tests/k8s/test-images.sh import CONTAINERD_SOCK
#   tests/k8s/test-images.sh worker CONTAINERD_SOCK CLIENT_BINARY
#
# localhost/postgres:local   PostgreSQL 15 (Debian's postgresql-15) with busybox for its shell:
#                            the binaries, every shared library they load (ldd), the share and lib
#                            directories, and a `postgres` user. Its command (see the tests'
#                            manifests) runs initdb into /tmp and starts the server.
# localhost/python:local     This machine's python3 (Debian's python3.11) with its standard library
#                            (no tests, IDLE, tkinter) and busybox for a shell: the incoming
#                            tests' HTTP services (tests/scripts/*.py, given to pods as ConfigMaps).
# localhost/mirrord-net-worker:local
#                            An agent-pool worker (docs/kubernetes/agent-pool-worker.yaml): the
#                            given mirrord-net client with its shared libraries at
#                            /usr/local/bin/mirrord-net, and busybox with every applet. Built
#                            from the binary under test on every run, never cached.
#
# The tars are cached next to the cluster build (MIRRORD_K8S_CACHE), keyed by the package
# version and this script's text, so a second run only imports.
set -euo pipefail

CACHE=${MIRRORD_K8S_CACHE:-/var/cache/mirrord-net-k8s}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[test-images %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# Copies every shared library FILE loads into ROOT, at the same paths.
copy_libs() {
    local root=$1 file=$2 lib
    for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
}

# Copies FILE and every shared library it loads into ROOT, at the same paths.
copy_with_libs() {
    install -D -m 0755 "$2" "$1$2"
    copy_libs "$1" "$2"
}

build_postgres() {
    local out=$1 pg_version bin root
    pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    [ -n "$pg_version" ] || die "no PostgreSQL server installed (scripts/install-test-deps.sh installs it)"
    bin=/usr/lib/postgresql/$pg_version/bin
    root=$(mktemp -d)

    install -D -m 0755 /bin/busybox "$root/bin/busybox"
    for applet in sh echo cat mkdir ls sleep; do ln -s busybox "$root/bin/$applet"; done
    for file in "$bin/postgres" "$bin/initdb" "$bin/pg_ctl"; do copy_with_libs "$root" "$file"; done
    for file in /usr/lib/postgresql/"$pg_version"/lib/*.so; do copy_with_libs "$root" "$file"; done
    mkdir -p "$root/usr/share/postgresql" "$root/usr/share/zoneinfo" "$root/etc"
    cp -a /usr/share/postgresql/"$pg_version" "$root/usr/share/postgresql/"
    cp -a /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
    mkdir -p "$root/usr/share/zoneinfo/Etc" && cp -a /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/Etc/UTC"
    printf 'root:x:0:0:root:/:/bin/sh\npostgres:x:999:999:postgres:/tmp:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
    install -d -m 1777 "$root/tmp"
    install -d -m 1777 "$root/var/run/postgresql"
    ln -s "$bin" "$root/pgbin"
    python3 "$HERE/oci-image.py" "$root" localhost/postgres:local "$out"
    rm -rf "$root"
}

build_python() {
    local out=$1 python lib root file
    python=$(readlink -f /usr/bin/python3)
    lib=/usr/lib/$(basename "$python")
    [ -d "$lib" ] || die "no standard library at $lib"
    root=$(mktemp -d)
    install -D -m 0755 /bin/busybox "$root/bin/busybox"
    for applet in sh echo cat ls sleep; do ln -s busybox "$root/bin/$applet"; done
    copy_with_libs "$root" "$python"
    ln -s "$(basename "$python")" "$root/usr/bin/python3"
    mkdir -p "$root/usr/lib"
    tar -C /usr/lib --exclude=__pycache__ --exclude=test --exclude=idlelib --exclude=tkinter \
        --exclude=ensurepip --exclude=lib2to3 --exclude='config-*' -cf - "$(basename "$lib")" |
        tar -C "$root/usr/lib" -xf -
    for file in "$lib"/lib-dynload/*.so; do copy_with_libs "$root" "$file"; done
    install -d -m 1777 "$root/tmp"
    python3 "$HERE/oci-image.py" "$root" localhost/python:local "$out"
    rm -rf "$root"
}

build_worker() {
    local out=$1 client=$2 root applet
    root=$(mktemp -d)
    install -D -m 0755 /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    ln -s bin "$root/sbin"
    mkdir -p "$root/usr"
    ln -s ../bin "$root/usr/bin"
    mkdir -p "$root/usr/local/bin"
    # Symbols stay, the line tables go (most of the size), as in the agent's image.
    objcopy --strip-debug "$client" "$root/usr/local/bin/mirrord-net"
    chmod 0755 "$root/usr/local/bin/mirrord-net"
    copy_libs "$root" "$client"
    mkdir -p "$root/etc"
    printf 'root:x:0:0:root:/root:/bin/sh\nworker:x:1000:1000:worker:/tmp:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nworker:x:1000:\n' >"$root/etc/group"
    install -d -m 1777 "$root/tmp"
    python3 "$HERE/oci-image.py" "$root" localhost/mirrord-net-worker:local "$out"
    rm -rf "$root"
}

cmd_worker() {
    local sock=${1:?usage: test-images.sh worker CONTAINERD_SOCK CLIENT_BINARY}
    local client=${2:?usage: test-images.sh worker CONTAINERD_SOCK CLIENT_BINARY} out
    [ -x "$client" ] || die "$client is not an executable (cargo build --release builds it)"
    out=$(mktemp --suffix=.tar)
    build_worker "$out" "$client"
    ctr -a "$sock" -n k8s.io images import "$out" >/dev/null \
        || { rm -f "$out"; die "cannot import $out into $sock"; }
    log "imported localhost/mirrord-net-worker:local ($(du -h "$out" | cut -f1))"
    rm -f "$out"
}

# Builds IMAGE (a name for the log) with BUILDER into the cache, keyed by KEY, and imports it.
build_and_import() {
    local sock=$1 image=$2 builder=$3 key=$4 stem=$5 out
    out=$CACHE/test-images/$stem-$key.tar
    if [ ! -s "$out" ]; then
        log "building $image"
        mkdir -p "$CACHE/test-images"
        rm -f "$CACHE/test-images/$stem"-*.tar
        "$builder" "$out.tmp"
        mv "$out.tmp" "$out"
    fi
    ctr -a "$sock" -n k8s.io images import "$out" >/dev/null \
        || die "cannot import $out into $sock"
    log "imported $image ($(du -h "$out" | cut -f1))"
}

cmd_import() {
    local sock=${1:?usage: test-images.sh import CONTAINERD_SOCK} version key out
    command -v ctr >/dev/null || die "ctr (containerd) is missing: tests/k8s/cluster.sh build installs it"
    version=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
    [ -n "$version" ] || die "postgresql-15 is not installed (scripts/install-test-deps.sh installs it)"
    key=$(printf '%s\n' "$version" | cat - "${BASH_SOURCE[0]}" "$HERE/oci-image.py" | sha256sum | cut -c1-16)
    build_and_import "$sock" "localhost/postgres:local (postgresql-15 $version)" build_postgres "$key" postgres
    version=$(python3 -c 'import sys; print(sys.version.split()[0])')
    key=$(printf '%s\n' "$version" | cat - "${BASH_SOURCE[0]}" "$HERE/oci-image.py" | sha256sum | cut -c1-16)
    build_and_import "$sock" "localhost/python:local (python $version)" build_python "$key" python
}

case "${1:-}" in
    import) shift; cmd_import "$@" ;;
    worker) shift; cmd_worker "$@" ;;
    *) echo "usage: $0 import CONTAINERD_SOCK | worker CONTAINERD_SOCK CLIENT_BINARY" >&2; exit 2 ;;
esac
