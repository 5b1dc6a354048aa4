#!/usr/bin/env bash
# Fuzzes every decoder of bytes from the other side (fuzz/fuzz_targets) with cargo fuzz.
#
#   scripts/fuzz.sh              short mode (the test command's): 15 s per target
#   scripts/fuzz.sh --long       a million executions or 30 minutes per target, whichever first
#   scripts/fuzz.sh TARGET...    only these targets (either mode)
#
# Each run starts from the corpus kept in the repository (fuzz/corpus/TARGET); the long mode
# adds what it finds there (minimise it with `cargo +nightly fuzz cmin TARGET` before keeping
# it), the short mode keeps its finds in a scratch directory. A crash, a timeout (10 s on one input) or a memory blow-up (2 GiB) fails the
# script and leaves the input under fuzz/artifacts/TARGET. Built without a sanitizer in short
# mode (the project's code is safe Rust: panics, hangs and allocations are what the fuzzer
# looks for; it builds in half the time) and with AddressSanitizer in long mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

long=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --long) long=true ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

if $long; then
    sanitizer=address
    limits=(-runs=1000000 -max_total_time=1800)
else
    sanitizer=none
    limits=(-max_total_time=15)
fi
cargo +nightly fuzz build --sanitizer "$sanitizer"

status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    if $long; then
        corpora=("corpus/$target")
    else
        scratch=$(mktemp -d)
        corpora=("$scratch" "corpus/$target")
    fi
    start=$(date +%s)
    log=$(mktemp)
    if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "${corpora[@]}" -- \
        "${limits[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        echo "fuzz $target: ${runs:-?} executions in $(($(date +%s) - start)) s, no failure"
    else
        echo "fuzz $target: FAILED (input saved under fuzz/artifacts/$target)"
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 || tail -30 "$log"
        status=1
    fi
    rm -f "$log"
    if ! $long; then
        rm -rf "$scratch"
    fi
done
exit "$status"
