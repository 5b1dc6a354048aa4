#!/usr/bin/env bash
# Tests cluster.sh's debian_archive, which takes the Debian archive (URI and key) for the
# cluster's deb-src lines from the machine's own apt sources, on sample apt directories:
# deb822 .sources files, one-line sources.list files, both, neither. Needs no root and no
# cluster: `bash tests/k8s/apt-sources-test.sh`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster.sh
source "$HERE/cluster.sh"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

failures=0
# expect NAME CODENAME WANTED: debian_archive of the apt directory $TMP/NAME prints WANTED.
expect() {
    local got
    got=$(debian_archive "$TMP/$1" "$2")
    if [ "$got" = "$3" ]; then
        echo "ok   $1"
    else
        echo "FAIL $1: got '$got', wanted '$3'"
        failures=$((failures + 1))
    fi
}
# apt NAME FILE: the sample file FILE (relative to the apt directory NAME), from stdin.
apt() {
    mkdir -p "$(dirname "$TMP/$1/$2")"
    cat >"$TMP/$1/$2"
}

# deb822, the security archive first, a comment inside a stanza, two URIs: the first URI of
# the main archive's stanza, with its key.
apt deb822 sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
# a mirror of this machine's
URIs: http://archive.example/debian http://second.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt deb822 sources.list.d/other.sources <<'EOF'
Types: deb
URIs: https://vendor.example/repo
Suites: bookworm
Components: main
EOF
expect deb822 bookworm $'http://archive.example/debian\t/usr/share/keyrings/debian-archive-keyring.gpg'

# One-line format with options, a deb-src line and a commented line before it; no key.
apt oneline sources.list <<'EOF'
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/debian.gpg] http://line.example/debian bookworm main non-free-firmware
deb http://plain.example/debian bookworm main
EOF
expect oneline bookworm $'http://line.example/debian\t/etc/apt/keyrings/debian.gpg'

apt nokey sources.list.d/debian.list <<'EOF'
deb http://nokey.example/debian bookworm contrib main
EOF
expect nokey bookworm $'http://nokey.example/debian\t'

# Another release's archive, or only contrib, is not this machine's main archive.
apt mismatch sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: http://old.example/debian
Suites: bullseye
Components: main

Types: deb
URIs: http://contrib.example/debian
Suites: bookworm
Components: contrib
EOF
expect mismatch bookworm ''

# deb822 files are read before sources.list.
apt both sources.list <<'EOF'
deb http://list.example/debian bookworm main
EOF
apt both sources.list.d/debian.sources <<'EOF'
Types: deb
URIs: http://sources.example/debian
Suites: bookworm
Components: main
EOF
expect both bookworm $'http://sources.example/debian\t'

# No sources at all: nothing, without waiting on stdin.
mkdir -p "$TMP/empty"
expect empty bookworm ''

if [ "$failures" -ne 0 ]; then
    echo "apt-sources-test: $failures failed"
    exit 1
fi
echo "apt-sources-test: passed"
