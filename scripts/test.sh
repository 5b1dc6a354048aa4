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

step "checking that imports flow one way within each crate (scripts/import-graph.py) and that the walks of docs/architecture.md name real functions (scripts/doc-walk-check.py)"
python3 -m unittest discover -s scripts/tests -q
python3 scripts/import-graph.py --check
python3 scripts/doc-walk-check.py

step "the test cluster's apt source choice, on sample files (tests/k8s/apt-sources-test.sh)"
bash tests/k8s/apt-sources-test.sh

step "benchmark harness, smoke mode (checks it runs; no timing assertions)"
# The binary the build step made: `cargo run -p` alone would rebuild dependencies with the
# features of that one package.
./target/release/mirrord-net-bench --smoke --runs 1
# The splice probe's BPF programs load and every path it measures echoes.
./target/release/mirrord-net-splice-probe --count 200 --rounds 1 --closes 20 --banners 2

status=0
step "fuzzing, short mode (scripts/fuzz.sh: 15 s per target from the kept corpus)"
bash scripts/fuzz.sh || status=$?

step "running unit and end-to-end tests"
# tests/nextest.toml: per-test timeouts, and the heavy tests one at a time. The Kubernetes
# tests run afterwards, against a cluster that exists only for them.
nextest() {
    cargo nextest run --workspace --release --no-fail-fast \
        --tool-config-file "mirrord-net-tests:$PWD/tests/nextest.toml" "$@"
}
nextest -E 'not binary_id(mirrord-net-tests::k8s)' || status=$?

step "starting the Kubernetes test cluster (tests/k8s/cluster.sh; cached build in /var/cache)"
bash tests/k8s/cluster.sh build
# A run that was killed may have left its cluster: take down whatever exists first.
for name in $(bash tests/k8s/cluster.sh status || true); do
    bash tests/k8s/cluster.sh down "$name"
done
trap 'bash tests/k8s/cluster.sh down e2e' EXIT
bash tests/k8s/cluster.sh up e2e >/dev/null
# shellcheck disable=SC1091
source /var/lib/mirrord-net-k8s/e2e/env
bash scripts/build-agent-image.sh --import "$K8S_CONTAINERD_SOCK"
bash tests/k8s/test-images.sh import "$K8S_CONTAINERD_SOCK"
bash tests/k8s/test-images.sh worker "$K8S_CONTAINERD_SOCK" target/release/mirrord-net

step "running the Kubernetes end-to-end tests"
nextest -E 'binary_id(mirrord-net-tests::k8s)' || status=$?

step "removing the Kubernetes test cluster"
trap - EXIT
bash tests/k8s/cluster.sh down e2e
bash tests/k8s/cluster.sh verify-clean
exit "$status"
