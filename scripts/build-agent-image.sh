#!/usr/bin/env bash
# Builds the agent's container image from this repository, with no registry and no container
# engine: a statically linked mirrord-net-agent in an otherwise empty image, written as an
# OCI image-layout tar, and optionally imported into a containerd.
#
#   scripts/build-agent-image.sh [--out FILE.tar] [--import CONTAINERD_SOCK]
#
# The image is tagged localhost/mirrord-net-agent:VERSION (the workspace version), the
# client's default --agent-image; its entrypoint is /mirrord-net-agent. agent/Dockerfile makes
# the same image with docker or buildah from the static binary, for registries:
#
#   docker build -f agent/Dockerfile -t REGISTRY/mirrord-net-agent:VERSION \
#       target/x86_64-unknown-linux-gnu/release
#
# The binary links glibc statically (crt-static): the agent resolves no names and looks up no
# users, the two things static glibc cannot do. The explicit --target keeps this build apart
# from the host's (target/x86_64-unknown-linux-gnu/), so its RUSTFLAGS do not rebuild the
# client or the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=target/mirrord-net-agent-image.tar
import=
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --import) import=$2; shift 2 ;;
        *) echo "usage: $0 [--out FILE.tar] [--import CONTAINERD_SOCK]" >&2; exit 2 ;;
    esac
done

log() { printf '[build-agent-image %(%T)T] %s\n' -1 "$*" >&2; }

triple=x86_64-unknown-linux-gnu
version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "mirrord-net-agent"))')
image=localhost/mirrord-net-agent:$version

log "building the static agent ($triple, crt-static)"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p mirrord-net-agent --target "$triple" --quiet
binary=target/$triple/release/mirrord-net-agent
# A dynamically linked binary names its loader in a PT_INTERP header; a static one has none.
if readelf --program-headers "$binary" | grep -q INTERP; then
    echo "error: $binary is not statically linked" >&2
    exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -m 0755 "$binary" "$root/mirrord-net-agent"
# /tmp for anything that wants a scratch directory; the agent itself writes nothing.
install -d -m 1777 "$root/tmp"
mkdir -p "$(dirname "$out")"
python3 tests/k8s/oci-image.py --entrypoint "$root" "$image" "$out" /mirrord-net-agent
log "wrote $image to $out ($(du -h "$out" | cut -f1), binary $(du -h "$binary" | cut -f1))"

if [ -n "$import" ]; then
    ctr -a "$import" -n k8s.io images import "$out" >/dev/null
    log "imported $image into $import"
fi
