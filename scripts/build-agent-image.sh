#!/usr/bin/env bash
# Builds the agent image without Docker or a registry: a static mirrord-net-agent and
# iptables-legacy's tools for the steal's iptables fallback (what agent/Dockerfile
# describes), written as an OCI image-layout tar
# tagged localhost/mirrord-net-agent:<workspace version>, and optionally imported into a
# containerd.
#
# usage: scripts/build-agent-image.sh [--out FILE.tar] [--import CONTAINERD_SOCK]
#
#   --out FILE.tar          where to write the image (default:
#                           target/agent-image/mirrord-net-agent-<version>.tar)
#   --import SOCK           also load it into the containerd at SOCK, in the k8s.io namespace
#                           where the kubelet looks (pods then use imagePullPolicy: Never)
#
# The binary is glibc-static (`+crt-static`), built for the explicit target
# x86_64-unknown-linux-gnu so that its flags and its output directory
# (target/x86_64-unknown-linux-gnu/release) leave the host build alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=x86_64-unknown-linux-gnu
out=""
containerd_sock=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a file name}"; shift 2 ;;
        --import) containerd_sock="${2:?--import needs a containerd socket}"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-agent-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# `cargo pkgid` prints path+file:///…/agent#mirrord-net-agent@0.1.0
version="$(cargo pkgid -p mirrord-net-agent)"
version="${version##*@}"
image="localhost/mirrord-net-agent:$version"
out="${out:-target/agent-image/mirrord-net-agent-$version.tar}"

echo "building the static agent ($TARGET, release)" >&2
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p mirrord-net-agent --target "$TARGET"
binary="target/$TARGET/release/mirrord-net-agent"

# Static means no program interpreter: a dynamic binary would fail in the empty image with a
# baffling "no such file or directory".
if readelf --program-headers "$binary" | grep -q 'INTERP'; then
    echo "build-agent-image.sh: $binary is not static (it has a program interpreter)" >&2
    exit 1
fi
if ! "$binary" --version >/dev/null; then
    echo "build-agent-image.sh: $binary does not run" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs"
# The image carries symbols but not the line tables (a third of the size): an agent's panic
# still names its functions.
objcopy --strip-debug "$binary" "$work/rootfs/mirrord-net-agent"
chmod 0755 "$work/rootfs/mirrord-net-agent"

# The steal's iptables fallback (agent/src/incoming/iptables): iptables-legacy's restore and
# save for both families, with the libraries and extension modules they load, taken from this
# machine's iptables package. The agent itself stays static; these are run by its keeper
# process only where the target's kernel has no nftables or the user asks for iptables.
legacy=/usr/sbin/xtables-legacy-multi
extensions=/usr/lib/x86_64-linux-gnu/xtables
if [ ! -x "$legacy" ] || [ ! -d "$extensions" ]; then
    echo "build-agent-image.sh: $legacy not found: install the iptables package" >&2
    exit 1
fi
mkdir -p "$work/rootfs/usr/sbin" "$work/rootfs/run" "$work/rootfs$(dirname "$extensions")"
cp "$legacy" "$work/rootfs/usr/sbin/"
for tool in iptables-legacy-restore iptables-legacy-save ip6tables-legacy-restore ip6tables-legacy-save; do
    ln -s xtables-legacy-multi "$work/rootfs/usr/sbin/$tool"
done
cp -r "$extensions" "$work/rootfs$extensions"
# Every library the tool and its extensions load, the program interpreter included.
ldd "$legacy" "$extensions"/*.so \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' \
    | sort -u \
    | while read -r lib; do
        mkdir -p "$work/rootfs$(dirname "$lib")"
        cp -L "$lib" "$work/rootfs$lib"
    done
if ! chroot "$work/rootfs" /usr/sbin/iptables-legacy-save --version >/dev/null; then
    echo "build-agent-image.sh: iptables-legacy-save does not run in the image" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
python3 tests/k8s/oci-image.py --entrypoint /mirrord-net-agent "$work/rootfs" "$image" "$out"
echo "wrote $image to $out ($(du -h "$out" | cut -f1))" >&2

if [ -n "$containerd_sock" ]; then
    ctr -a "$containerd_sock" -n k8s.io images import "$out" >&2
    echo "imported $image into the containerd at $containerd_sock" >&2
fi
