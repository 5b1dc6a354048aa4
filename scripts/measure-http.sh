#!/bin/bash
# 1000 keep-alive GETs of 1 KiB (curl's per-request time, p50/p99) and a 1 GiB download,
# against nginx in a "services" namespace, from a "pod" namespace directly and through
# `mirrord-net exec`. Two rounds, alternating. Root; after `cargo build --release --bins`.
# Usage: scripts/measure-http.sh [BIN_DIR]   (default: target/release)
set -euo pipefail
bin=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
command -v nginx >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null

svc=mhsvc$$ pod=mhpod$$ dir=$(mktemp -d) target_pid=
cleanup() {
    set +e
    [ -n "$target_pid" ] && kill "$target_pid"
    ip netns pids "$svc" | xargs -r kill
    ip netns del "$svc"
    ip netns del "$pod"
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$svc"
ip netns add "$pod"
ip link add "mha$$" type veth peer name "mhb$$"
ip link set "mha$$" netns "$svc"
ip link set "mhb$$" netns "$pod"
ip -n "$svc" addr add 10.251.0.1/24 dev "mha$$"
ip -n "$svc" link set "mha$$" up
ip -n "$svc" link set lo up
ip -n "$pod" addr add 10.251.0.2/24 dev "mhb$$"
ip -n "$pod" link set "mhb$$" up
ip -n "$pod" link set lo up
ip -n "$pod" route add default via 10.251.0.1

mkdir -p "$dir/www"
head -c 1024 /dev/urandom > "$dir/www/1k"
truncate -s 1G "$dir/www/1g" # sparse: served from the page cache, no disk in the way
cat > "$dir/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $dir/nginx.pid; error_log $dir/error.log;
events { worker_connections 1024; }
http {
  access_log off; sendfile on; keepalive_requests 100000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { listen 10.251.0.1:80; root $dir/www; }
}
CONF
ip netns exec "$svc" nginx -c "$dir/nginx.conf" &
ip netns exec "$pod" sleep 3600 &
target_pid=$!
sleep 0.5

keepalive() { "$@" curl -s -o /dev/null -w '%{time_total}\n' "http://10.251.0.1/1k?[1-1000]"; }
download() { "$@" curl -s -o /dev/null -w '%{speed_download}\n' http://10.251.0.1/1g; }
percentiles() {
    sort -n | awk '{a[NR]=$1} END {printf "p50 %.0f µs  p99 %.0f µs  (n=%d)\n", a[int(NR*0.5)]*1e6, a[int(NR*0.99)]*1e6, NR}'
}
gbits() { awk '{printf "%.2f Gbit/s\n", $1*8/1e9}'; }

direct=(ip netns exec "$pod")
session=("$bin/mirrord-net" exec -q --as-root --target "pid/$target_pid" --)
for round in 1 2; do
    echo "round $round"
    echo -n "  keep-alive, direct:      "; keepalive "${direct[@]}" | percentiles
    echo -n "  keep-alive, mirrord-net: "; keepalive "${session[@]}" | percentiles
    echo -n "  1 GiB, direct:           "; download "${direct[@]}" | gbits
    echo -n "  1 GiB, mirrord-net:      "; download "${session[@]}" | gbits
done
