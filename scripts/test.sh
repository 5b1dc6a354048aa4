#!/usr/bin/env bash
# The project's test command: installs the test dependencies, builds, checks formatting and
# lints, then runs the unit tests and the end-to-end tests with nextest. Exits non-zero on any
# failure. Needs root: the end-to-end tests make network namespaces and TUN devices.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh must run as root (the tests create network namespaces): sudo $0" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "building"
cargo build --release --workspace --bins

step "checking formatting"
cargo fmt --all -- --check

step "linting"
cargo clippy --workspace --all-targets -- -D warnings

step "benchmark harness, smoke mode (checks it runs; no timing assertions)"
cargo run --release -p mirrord-net-bench -- --smoke --runs 1

step "running unit and end-to-end tests"
# tests/nextest.toml: per-test timeouts, and the heavy tests one at a time.
cargo nextest run --workspace --release --no-fail-fast \
    --tool-config-file "mirrord-net-tests:$PWD/tests/nextest.toml"
