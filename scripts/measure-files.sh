#!/usr/bin/env bash
# Cold and warm reads of a 512 MiB file and a walk of a 10,000-entry tree, directly in a
# target's mount namespace and through a mirrord-net session; and session start times.
# Usage (root): scripts/measure-files.sh [BIN_DIR]   (default: target/release)
set -euo pipefail
bin=${1:-target/release}
work=$(mktemp -d /tmp/mnet-measure.XXXXXX)
target_pid=
cleanup() {
    [ -n "$target_pid" ] && kill -9 "$target_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/store/tree" "$work/data"
head -c $((512 << 20)) /dev/urandom > "$work/store/big.bin"
for d in $(seq 0 99); do
    mkdir "$work/store/tree/d$d"
    (cd "$work/store/tree/d$d" && for f in $(seq 0 99); do echo "$d/$f" > "f$f"; done)
done
sync

# The target: its own mount namespace, where the store is mounted on data/.
unshare --mount --propagation private -- sh -c "mount --bind '$work/store' '$work/data'; exec sleep infinity" &
target_pid=$!
sleep 0.5
data=$work/data

TIMEFORMAT=%R
direct() { nsenter --target "$target_pid" --mount -- bash -c "TIMEFORMAT=%R; time ($1) >/dev/null" 2>&1; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

drop
cold_cat=$(direct "cat $data/big.bin")
warm_cat=$(direct "cat $data/big.bin")
drop
cold_find=$(direct "find $data/tree -printf '%s %m\n'")
warm_find=$(direct "find $data/tree -printf '%s %m\n'")
echo "direct: cat cold ${cold_cat}s warm ${warm_cat}s; find+stat cold ${cold_find}s warm ${warm_find}s"

drop
"$bin/mirrord-net" exec --quiet --as-root --target "pid/$target_pid" -- bash -c "
    TIMEFORMAT=%R
    c1=\$( { time cat $data/big.bin >/dev/null; } 2>&1 )
    c2=\$( { time cat $data/big.bin >/dev/null; } 2>&1 )
    c3=\$( { time cat $data/big.bin >/dev/null; } 2>&1 )
    f1=\$( { time find $data/tree -printf '%s %m\n' >/dev/null; } 2>&1 )
    sleep 1.1
    f2=\$( { time find $data/tree -printf '%s %m\n' >/dev/null; } 2>&1 )
    f3=\$( { time find $data/tree -printf '%s %m\n' >/dev/null; } 2>&1 )
    echo \"session: cat cold \${c1}s warm \${c2}s, \${c3}s; find+stat cold \${f1}s warm (after TTL) \${f2}s warm (within TTL) \${f3}s\"
"

for mode in off read; do
    times=()
    for _ in $(seq 1 7); do
        start=$(date +%s%N)
        "$bin/mirrord-net" exec --quiet --as-root --fs-mode "$mode" --target "pid/$target_pid" -- true
        times+=($(( ($(date +%s%N) - start) / 1000000 )))
    done
    sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
    echo "session start --fs-mode $mode (ms, sorted): $sorted"
done
