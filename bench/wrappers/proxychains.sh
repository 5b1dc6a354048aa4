#!/bin/sh
# A preload-design wrapper for mirrord-net-bench: proxychains4 (an LD_PRELOAD library that
# hooks connect) in front of dante (a SOCKS5 server) running in the pod's network namespace,
# the client in a namespace of its own linked to the pod by a veth — the topology of a
# preload layer talking to an agent inside the pod.
#
#   mirrord-net-bench --wrapper 'bench/wrappers/proxychains.sh {target_pid} {pod_dir}'
#
# Needs the Debian packages proxychains4 and dante-server. dante is started once per pod (the
# first call) and dies with the pod's namespace; its files live in the pod's directory, which
# the harness removes. Each call makes a fresh network namespace for the client (gone when the
# client exits, taking its veth with it), so nothing outlives the bench. Only TCP is proxied:
# UDP has no route out of the client's namespace, as with any connect-hooking design.
set -eu
pid=$1
dir=$2
shift 2
socks=10.213.9.1
client=10.213.9.2

exec 9>"$dir/proxychains.lock"
flock 9
if [ ! -f "$dir/danted.conf" ]; then
    cat > "$dir/danted.conf" <<CONF
logoutput: $dir/danted.log
internal: $socks port = 1080
external: eth0
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
CONF
    cat > "$dir/proxychains.conf" <<CONF
strict_chain
quiet_mode
tcp_read_time_out 15000
tcp_connect_time_out 8000
[ProxyList]
socks5 $socks 1080
CONF
    nsenter -t "$pid" -n ip addr add "$socks/32" dev lo
    nsenter -t "$pid" -n danted -D -f "$dir/danted.conf" -p "$dir/danted.pid"
    tries=0
    until nsenter -t "$pid" -n ss -Hltn "sport = :1080" | grep -q LISTEN; do
        tries=$((tries + 1))
        [ "$tries" -lt 200 ] || { echo "dante did not start" >&2; exit 1; }
        sleep 0.05
    done
fi
flock -u 9

# The client's own namespace: a veth to the pod, a route to the SOCKS server only.
exec unshare --net sh -c '
    set -e
    pid=$1 dir=$2 socks=$3 client=$4
    shift 4
    peer=pc$$
    ip link set lo up
    ip link add c0 type veth peer name "$peer" netns "$pid"
    ip addr add "$client/32" dev c0
    ip link set c0 up
    nsenter -t "$pid" -n ip link set "$peer" up
    nsenter -t "$pid" -n ip route replace "$client/32" dev "$peer"
    ip route add "$socks/32" dev c0
    exec proxychains4 -q -f "$dir/proxychains.conf" "$@"
' wrapper "$pid" "$dir" "$socks" "$client" "$@"
