#!/usr/bin/env bash
# A real single-node Kubernetes cluster for the end-to-end tests, built from Debian's packages
# and run entirely inside a network namespace. See docs/kubernetes-test-cluster.md.
#
#   cluster.sh build            install packages, build the binaries and images (cached)
#   cluster.sh up NAME          start a cluster in network namespace k8s-NAME; writes its env file
#   cluster.sh down NAME        stop it and remove everything it made (idempotent)
#   cluster.sh verify-clean     fail if anything a cluster makes is left on the machine
#   cluster.sh env NAME         print the env file of a running cluster
#   cluster.sh status           name of the cluster that is up (if any)
#   cluster.sh selftest NAME    build, up, selfcheck.sh, down, verify-clean, before/after compare
#
# One cluster per machine: the kubelet writes fixed host paths (/var/lib/kubelet/device-plugins,
# /var/log/pods) and global sysctls, so `up` refuses while another cluster's state exists.
# Run as root.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MIRRORD_K8S_CACHE:-/var/cache/mirrord-net-k8s}
STATE_ROOT=${MIRRORD_K8S_STATE:-/var/lib/mirrord-net-k8s}
GO=/usr/lib/go-1.19/bin/go

# Addresses, all inside the cluster's network namespace except HOST_VETH_IP.
NODE_NAME=node1
NODE_IP=10.233.20.1          # on the namespace's lo; the API server and kubelet address
SERVICE_CIDR=10.97.0.0/16
API_SERVICE_IP=10.97.0.1
POD_CIDR=10.245.0.0/24
POD_GW=10.245.0.1
BRIDGE=cni0mnk
HOST_VETH_IP=10.233.21.1     # 10.233.21.0/30: the veth between the host and the cluster namespace
CLUSTER_VETH_IP=10.233.21.2

PACKAGES=(golang-go etcd-server containerd runc containernetworking-plugins busybox-static
    openssl iptables dpkg-dev gcc libc6-dev python3 iproute2 util-linux procps curl)

# Sysctls the kubelet sets on the whole machine; `up` records them, `down` restores them.
GLOBAL_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
log() { printf '[cluster.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

check_name() {
    [[ ${1:-} =~ ^[a-z][a-z0-9-]{0,10}$ ]] ||
        die "cluster NAME must be 1-11 characters [a-z0-9-], starting with a letter (got '${1:-}')"
}

########################################################################################
# build
########################################################################################

apt_install() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local out
    out=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >"$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; die "apt-get update failed"; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$out" 2>&1 ||
            { cat "$out" >&2; rm -f "$out"; die "apt-get install failed"; }
    fi
    rm -f "$out"
}

# Debian's source lines, in a file of our own, from the archive this machine's own apt sources
# name (its mirror, its suites, its key): no mirror is written into the repository.
SOURCES_FILE=/etc/apt/sources.list.d/mirrord-net-k8s-src.sources

# Prints "URI<TAB>SIGNED-BY" of the first binary source of Debian's main archive (the one whose
# suites include this release's codename and whose components include main), from deb822
# files and one-line sources.list files alike. SIGNED-BY may be empty. Arguments (for
# tests/k8s/apt-sources-test.sh): the apt directory (/etc/apt) and the codename (this
# machine's).
debian_archive() {
    local apt_dir=${1:-/etc/apt} codename=${2:-}
    [ -n "$codename" ] || codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    # deb822 files first, then the one-line ones.
    local files=() file
    for file in "$apt_dir"/sources.list.d/*.sources "$apt_dir"/sources.list "$apt_dir"/sources.list.d/*.list; do
        [ -f "$file" ] && files+=("$file")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v codename="$codename" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && suites ~ ("(^| )" codename "( |$)") && comps ~ /(^| )main( |$)/ && uris != "" && !found) {
                split(uris, u, " "); print u[1] "\t" signed; found = 1
            }
            types = ""; suites = ""; comps = ""; uris = ""; signed = ""
        }
        FNR == 1 { flush() }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            if ($0 ~ /^[ \t]*#/) next
            key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
            if (key == "types") types = $0; else if (key == "uris") uris = $0
            else if (key == "suites") suites = $0; else if (key == "components") comps = $0
            else if (key == "signed-by") signed = $0
            next
        }
        /^deb[ \t]/ && !found {
            line = $0; opts = ""
            if (match(line, /\[[^]]*\]/)) { opts = substr(line, RSTART + 1, RLENGTH - 2); line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH) }
            n = split(line, f, /[ \t]+/)
            if (f[3] != codename) next
            for (i = 4; i <= n; i++) if (f[i] == "main") {
                s = ""; if (match(opts, /signed-by=[^ ]+/)) s = substr(opts, RSTART + 10, RLENGTH - 10)
                print f[2] "\t" s; found = 1; break
            }
        }
        END { flush() }
    ' "${files[@]}" </dev/null
}

ensure_deb_src() {
    local want archive uri signed codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    archive=$(debian_archive | grep -v "^$" | head -n1)
    [ -n "$archive" ] || die "no apt source of Debian's main archive for $codename found in /etc/apt/sources.list{,.d}"
    uri=${archive%%$'\t'*}
    signed=${archive#*$'\t'}
    want=$(printf '%s\n' 'Types: deb-src' "URIs: $uri" \
        "Suites: $codename $codename-updates" 'Components: main' \
        ${signed:+"Signed-By: $signed"})
    if [ ! -f "$SOURCES_FILE" ] || [ "$(cat "$SOURCES_FILE")" != "$want" ]; then
        printf '%s\n' "$want" >"$SOURCES_FILE"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || die "apt-get update failed after adding $SOURCES_FILE"
    fi
    if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || die "apt-get update failed"
    fi
}

source_version() {
    apt-cache showsrc kubernetes | awk '/^Version:/ { print $2 }' | sort -V | tail -n1
}

# Everything that decides the build's output; its hash is part of the cache key.
recipe_hash() {
    {
        declare -f fetch_source gen_openapi build_go build_device_plugin build_pause build_images
        cat "$HERE/pause.c" "$HERE/oci-image.py" "$HERE/fuse-device-plugin.go"
        echo "$GO"
    } | sha256sum | cut -c1-16
}

fetch_source() { # VERSION SRCDIR
    local version=$1 dir=$2
    [ -f "$dir/tree/.extracted" ] && return 0
    rm -rf "$dir"
    mkdir -p "$dir"
    # Owned by _apt, so apt downloads sandboxed (and does not warn that it cannot).
    chown _apt "$dir" 2>/dev/null || true
    (cd "$dir" && apt-get source -q --download-only "kubernetes=$version" >/dev/null) ||
        die "apt-get source kubernetes=$version failed"
    chown -R root "$dir"
    local dsc
    dsc=$(ls "$dir"/kubernetes_*.dsc)
    # "cannot verify inline signature": the archive-signed Sources index already checked the hashes.
    dpkg-source -q -x "$dsc" "$dir/tree" >/dev/null 2>&1 || die "dpkg-source -x $dsc failed"
    touch "$dir/tree/.extracted"
}

go_env() {
    export GOPATH=$1 GO111MODULE=off GOFLAGS="" CGO_ENABLED=0 GOPROXY=off GOCACHE=$CACHE/gocache
    export GOTOOLCHAIN=local GOTELEMETRY=off
}

# pkg/generated/openapi/zz_generated.openapi.go is not in the tarball; kube-apiserver needs it.
# The input dirs are listed the way build/root/Makefile.generated_files does.
gen_openapi() { # GOPATH
    local gopath=$1 k8s=$1/src/k8s.io/kubernetes
    local out=$k8s/pkg/generated/openapi/zz_generated.openapi.go
    [ -s "$out" ] && return 0
    (
        go_env "$gopath"
        cd "$k8s"
        nice -n 19 "$GO" build -o "$gopath/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
        local dirs
        dirs=$(find . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \
                -type f -name '*.go' -print0 |
            xargs -0 grep -l --color=never '^// *+k8s:' |
            xargs grep -l --color=never '+k8s:openapi-gen=' |
            xargs -n1 dirname | sed -e 's|^\./||' -e 's|^staging/src/|vendor/|' |
            grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
            sort -u)
        local count
        count=$(wc -l <<<"$dirs")
        [ "$count" -ge 60 ] || die "openapi-gen: found only $count input dirs"
        log "openapi-gen: $count input dirs"
        local inputs
        inputs=$(awk '{ print "k8s.io/kubernetes/" $0 }' <<<"$dirs" | paste -sd,)
        nice -n 19 "$gopath/bin/openapi-gen" -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi \
            -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
            -r "$gopath/openapi-violations.report" >/dev/null 2>&1 || die "openapi-gen failed"
    )
    [ -s "$out" ] || die "openapi-gen did not write $out"
}

build_go() { # GOPATH OUTDIR
    local gopath=$1 out=$2 x="" pkg
    for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
        k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=v1.20.2 -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
        x+=" -X $pkg.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $pkg.gitTreeState=archive"
        x+=" -X $pkg.buildDate=2021-01-13T13:20:19Z"
    done
    (
        go_env "$gopath"
        cd "$gopath/src/k8s.io/kubernetes"
        mkdir -p "$out"
        nice -n 19 "$GO" build -p 2 -tags providerless -trimpath -ldflags "-s -w$x" -o "$out/" \
            ./cmd/kube-apiserver ./cmd/kubelet ./cmd/kube-controller-manager ./cmd/kube-scheduler \
            ./cmd/kubectl ./cmd/kube-proxy
    ) || die "go build failed"
}

# The test cluster's FUSE device plugin (fuse-device-plugin.go), built inside the Kubernetes
# tree so that GOPATH mode finds the kubelet's API and gRPC in its vendor directory.
build_device_plugin() { # GOPATH OUTDIR
    local gopath=$1 out=$2 dir=$1/src/k8s.io/kubernetes/cmd/mirrord-net-fuse-device-plugin
    mkdir -p "$dir" "$out"
    cp "$HERE/fuse-device-plugin.go" "$dir/main.go"
    (
        go_env "$gopath"
        cd "$gopath/src/k8s.io/kubernetes"
        nice -n 19 "$GO" build -trimpath -ldflags "-s -w" -o "$out/mirrord-net-fuse-device-plugin" \
            ./cmd/mirrord-net-fuse-device-plugin
    ) || die "go build of the FUSE device plugin failed"
}

build_pause() { # OUTDIR
    gcc -static -Os -o "$1/pause" "$HERE/pause.c" || die "gcc pause.c failed"
    strip "$1/pause"
}

build_images() { # BINDIR IMAGEDIR
    local bin=$1 images=$2 work
    work=$(mktemp -d)
    mkdir -p "$images" "$work/busybox/bin" "$work/busybox/etc" "$work/busybox/usr" "$work/busybox/tmp" \
        "$work/pause"
    cp /bin/busybox "$work/busybox/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$work/busybox/bin/$applet"
    done
    ln -s bin "$work/busybox/sbin"
    ln -s ../bin "$work/busybox/usr/bin"
    chmod 1777 "$work/busybox/tmp"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$work/busybox/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/busybox/etc/group"
    cp "$bin/pause" "$work/pause/pause"
    python3 "$HERE/oci-image.py" "$work/busybox" localhost/busybox:local "$images/busybox.tar" sh
    python3 "$HERE/oci-image.py" "$work/pause" localhost/pause:local "$images/pause.tar" /pause
    rm -rf "$work"
}

# Prints the directory of a complete build (bin/, images/) for the current recipe.
build_dir() {
    local version
    version=$(source_version)
    [ -n "$version" ] || die "no kubernetes source package known to apt (deb-src lines missing?)"
    echo "$CACHE/out/${version//[^A-Za-z0-9.+-]/_}-$(recipe_hash)"
}

cmd_build() {
    need_root
    local t0
    t0=$(now)
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build.lock"
    flock 9
    apt_install
    ensure_deb_src
    local out
    out=$(build_dir)
    if [ -f "$out/.complete" ]; then
        log "build cached: $out ($(elapsed "$t0") s)"
        echo "$out"
        return 0
    fi
    local version src gopath
    version=$(source_version)
    src=$CACHE/src/${version//[^A-Za-z0-9.+-]/_}
    gopath=$CACHE/gopath
    log "fetching kubernetes $version source"
    fetch_source "$version" "$src"
    mkdir -p "$gopath/src/k8s.io" "$gopath/bin"
    ln -sfn "$src/tree" "$gopath/src/k8s.io/kubernetes"
    log "generating the OpenAPI definitions"
    gen_openapi "$gopath"
    log "building the Kubernetes binaries (nice 19; a few minutes when cold)"
    local t1
    t1=$(now)
    rm -rf "$out.tmp"
    build_go "$gopath" "$out.tmp/bin"
    build_device_plugin "$gopath" "$out.tmp/bin"
    log "go build took $(elapsed "$t1") s"
    build_pause "$out.tmp/bin"
    build_images "$out.tmp/bin" "$out.tmp/images"
    "$out.tmp/bin/kubectl" version --client --short >/dev/null || die "the built kubectl does not run"
    touch "$out.tmp/.complete"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    # Older builds of other recipes or versions are not needed any more.
    local old
    for old in "$CACHE"/out/*; do
        [ "$old" = "$out" ] || rm -rf "$old"
    done
    log "build done in $(elapsed "$t0") s: $out"
    echo "$out"
}

########################################################################################
# up
########################################################################################

# Per-cluster names and paths.
cluster_vars() { # NAME
    NAME=$1
    NETNS=k8s-$NAME
    HOST_VETH=k8s-$NAME
    S=$STATE_ROOT/$NAME
    SOCK=$S/containerd/containerd.sock
}

# Runs a command in the cluster's network namespace only (not `ip netns exec`, which would give
# it a mount namespace of its own).
in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }

kc() { in_ns "$BIN/kubectl" --kubeconfig "$S/admin.kubeconfig" "$@"; }

# Starts a daemon in the cluster's network and mount namespaces, in its own session, logging to
# $S/logs/NAME.log. All daemons share the one mount namespace, so containerd sees the kubelet's
# volume mounts; the host's mount table sees none of them. nsenter execs, so $! is the daemon.
start_daemon() { # NAME COMMAND...
    local name=$1
    shift
    AWS_EC2_METADATA_DISABLED=true PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        setsid nsenter --net="/run/netns/$NETNS" --mount="$S/ns/mnt" "$@" </dev/null >>"$S/logs/$name.log" 2>&1 &
    echo $! >"$S/pids/$name"
}

wait_for() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            die "timed out after ${limit}s waiting for $what (logs: $S/logs/)"
        fi
        sleep 0.2
    done
}

daemon_alive() { # NAME
    local pid
    pid=$(cat "$S/pids/$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

ensure_alive() { # NAME...
    local d
    for d in "$@"; do
        daemon_alive "$d" || { tail -n 30 "$S/logs/$d.log" >&2 || true; die "$d exited during startup (log: $S/logs/$d.log)"; }
    done
}

# Host paths the kubelet, containerd and CNI write outside the private tree (removed by down
# when up created them).
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd)

record_baseline() {
    local key p
    for key in "${GLOBAL_SYSCTLS[@]}"; do
        echo "$key=$(sysctl -n "$key")"
    done >"$S/sysctls.saved"
    for p in "${HOST_PATHS[@]}"; do
        [ -e "$p" ] || echo "$p"
    done >"$S/created-paths"
    if mountpoint -q /run/netns 2>/dev/null; then : >"$S/run-netns-mounted-before"; fi
    find /run/netns -maxdepth 1 -name 'cni-*' 2>/dev/null | sort >"$S/cni-netns-before" || true
}

make_pki() {
    local p=$S/pki
    mkdir -p "$p"
    (
        cd "$p"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -subj "/CN=mirrord-net-test-ca" -days 3650 -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        # name, subject, extendedKeyUsage, subjectAltName
        cert() {
            openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
            local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$3"
            [ -n "${4:-}" ] && ext+=$'\n'"subjectAltName=$4"
            openssl req -new -key "$1.key" -subj "$2" 2>/dev/null |
                openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out "$1.crt" \
                    -extfile <(echo "$ext") 2>/dev/null
            [ -s "$1.crt" ] || die "openssl could not make the $1 certificate"
        }
        cert apiserver "/CN=kube-apiserver" serverAuth \
            "IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        cert admin "/O=system:masters/CN=admin" clientAuth
        cert node "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
        cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
        cert controller-manager "/CN=system:kube-controller-manager" clientAuth
        cert scheduler "/CN=system:kube-scheduler" clientAuth
        cert kube-proxy "/CN=system:kube-proxy" clientAuth
        cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        echo "$(openssl rand -hex 16),admin,admin-token,system:masters" >tokens.csv
        chmod 600 ./*.key tokens.csv
    )
}

write_kubeconfig() { # FILE CERTNAME USER
    local b64='base64 -w0'
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NAME
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $($b64 "$S/pki/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $($b64 "$S/pki/$2.crt")
    client-key-data: $($b64 "$S/pki/$2.key")
contexts:
- name: $NAME
  context:
    cluster: $NAME
    user: $3
current-context: $NAME
EOF
    chmod 600 "$1"
}

write_configs() {
    mkdir -p "$S/containerd" "$S/cni/net.d" "$S/cni/ipam" "$S/kubelet" "$S/kubelet-certs" \
        "$S/volume-plugins" "$S/etcd" "$S/certs"
    cat >"$S/containerd/config.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:local"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$S/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
EOF
    cat >"$S/cni/net.d/10-mnk.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mnk",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    echo "nameserver 127.0.0.1" >"$S/resolv.conf"
    cat >"$S/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $S/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $S/pki/kubelet-serving.crt
tlsPrivateKeyFile: $S/pki/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: []
failSwapOn: false
resolvConf: $S/resolv.conf
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
serializeImagePulls: false
featureGates: {EphemeralContainers: true}
EOF
    write_kubeconfig "$S/admin.kubeconfig" admin admin
    write_kubeconfig "$S/kubelet.kubeconfig" node "system:node:$NODE_NAME"
    write_kubeconfig "$S/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
    write_kubeconfig "$S/scheduler.kubeconfig" scheduler system:kube-scheduler
    write_kubeconfig "$S/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
}

make_netns() {
    # `ip netns add` bind-mounts /run/netns onto itself the first time (recorded above).
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add "$NODE_IP/32" dev lo
    # A veth to the host namespace so that clients there reach the API, the pods and the
    # ClusterIPs. The namespace gets no default route: nothing can leave the machine.
    ip link add "$HOST_VETH" type veth peer name host0 netns "$NETNS"
    ip addr add "$HOST_VETH_IP/30" dev "$HOST_VETH"
    ip link set "$HOST_VETH" up
    ip -n "$NETNS" addr add "$CLUSTER_VETH_IP/30" dev host0
    ip -n "$NETNS" link set host0 up
    local dst
    for dst in "$NODE_IP/32" "$POD_CIDR" "$SERVICE_CIDR"; do
        ip route replace "$dst" via "$CLUSTER_VETH_IP" dev "$HOST_VETH"
    done
    # The pod bridge, made here (the CNI bridge plugin adopts it) so that the route for
    # node-originated traffic to ClusterIPs can point at it before the first pod.
    ip -n "$NETNS" link add "$BRIDGE" type bridge
    ip -n "$NETNS" addr add "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
    ip -n "$NETNS" link set "$BRIDGE" up
    ip -n "$NETNS" route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$POD_GW"
    in_ns sysctl -q -w net.ipv4.ip_forward=1
    if in_ns ip route show default | grep -q .; then die "namespace $NETNS has a default route"; fi
}

# The daemons' mount namespace, pinned at $S/ns/mnt (a bind mount needs a private parent mount).
# It receives the host's mounts (slave) and sends none back. Unmounting the pin after the last
# daemon is gone frees every mount made inside it at once, also after a crash.
make_mntns() {
    mkdir -p "$S/ns"
    mount --bind "$S/ns" "$S/ns"
    mount --make-private "$S/ns"
    touch "$S/ns/mnt"
    unshare --mount="$S/ns/mnt" --propagation slave true
}

ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

cmd_up() {
    need_root
    check_name "${1:-}"
    cluster_vars "$1"
    local other
    for other in "$STATE_ROOT"/*/; do
        [ -d "$other" ] || continue
        other=$(basename "$other")
        [ "$other" = "$NAME" ] && die "cluster $NAME already exists (up, or left by a crash): run '$0 down $NAME' first"
        die "cluster $other exists; one cluster per machine: run '$0 down $other' first"
    done
    ip netns list | grep -qw "$NETNS" && die "network namespace $NETNS already exists: run '$0 down $NAME' first"
    BIN=$(build_dir_cached)/bin
    local images
    images=$(dirname "$BIN")/images
    local t0
    t0=$(now)
    mkdir -p "$S/logs" "$S/pids"
    echo "$t0" >"$S/up-started"
    record_baseline
    # Anything that fails from here on leaves state that `down NAME` removes.
    trap 'echo "cluster.sh: up failed; to remove what it made, run: $0 down $NAME" >&2' EXIT
    make_netns
    make_mntns
    make_pki
    write_configs
    log "namespace, PKI and configs ready ($(ms_since "$t0") s)"

    start_daemon etcd /usr/bin/etcd --name "$NAME" --data-dir "$S/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster "$NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
        --log-level warn
    start_daemon containerd /usr/bin/containerd --config "$S/containerd/config.toml"
    wait_for 30 "etcd health" in_ns curl -fsS --max-time 2 http://127.0.0.1:2379/health
    ensure_alive etcd
    log "etcd healthy ($(ms_since "$t0") s)"

    start_daemon kube-apiserver "$BIN/kube-apiserver" \
        --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
        --etcd-servers=http://127.0.0.1:2379 --service-cluster-ip-range="$SERVICE_CIDR" \
        --client-ca-file="$S/pki/ca.crt" --tls-cert-file="$S/pki/apiserver.crt" \
        --tls-private-key-file="$S/pki/apiserver.key" --token-auth-file="$S/pki/tokens.csv" \
        --service-account-key-file="$S/pki/sa.pub" --service-account-signing-key-file="$S/pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --api-audiences=https://kubernetes.default.svc.cluster.local \
        --kubelet-client-certificate="$S/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$S/pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority="$S/pki/ca.crt" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --allow-privileged=true --feature-gates=TTLAfterFinished=true,EphemeralContainers=true \
        --cert-dir="$S/certs" --profiling=false

    wait_for 30 "containerd" in_ns ctr --address "$SOCK" version
    ensure_alive containerd
    in_ns ctr --address "$SOCK" -n k8s.io images import "$images/pause.tar" >/dev/null
    in_ns ctr --address "$SOCK" -n k8s.io images import "$images/busybox.tar" >/dev/null
    log "containerd up, images imported ($(ms_since "$t0") s)"

    wait_for 60 "kube-apiserver /readyz" kc get --raw /readyz
    ensure_alive kube-apiserver
    log "kube-apiserver ready ($(ms_since "$t0") s)"

    start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig="$S/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$S/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$S/controller-manager.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 --cert-dir="$S/certs" \
        --service-account-private-key-file="$S/pki/sa.key" --root-ca-file="$S/pki/ca.crt" \
        --cluster-signing-cert-file="$S/pki/ca.crt" --cluster-signing-key-file="$S/pki/ca.key" \
        --use-service-account-credentials=true --feature-gates=TTLAfterFinished=true --profiling=false
    start_daemon kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig="$S/scheduler.kubeconfig" \
        --authentication-kubeconfig="$S/scheduler.kubeconfig" \
        --authorization-kubeconfig="$S/scheduler.kubeconfig" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 --cert-dir="$S/certs" --profiling=false
    start_daemon kubelet "$BIN/kubelet" \
        --config="$S/kubelet-config.yaml" --kubeconfig="$S/kubelet.kubeconfig" \
        --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
        --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
        --root-dir="$S/kubelet" --cert-dir="$S/kubelet-certs" \
        --volume-plugin-dir="$S/volume-plugins" --pod-infra-container-image=localhost/pause:local
    # The node's /dev/net/tun and /dev/fuse as udev makes them (mode 0666) for the agent-pool
    # worker pods, under the state directory: this machine's own may be 0600, and the cluster
    # never changes the host's. The plugin offers the FUSE node as mirrord-net/fuse.
    mkdir -p "$S/dev/net"
    mknod -m 0666 "$S/dev/net/tun" c 10 200
    mknod -m 0666 "$S/dev/fuse" c 10 229
    start_daemon fuse-device-plugin "$BIN/mirrord-net-fuse-device-plugin" "$S/dev/fuse"
    start_daemon kube-proxy "$BIN/kube-proxy" \
        --kubeconfig="$S/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
        --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --bind-address=127.0.0.1 \
        --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
        --nodeport-addresses="$NODE_IP/32" --masquerade-all=true \
        --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
        --conntrack-tcp-timeout-close-wait=0

    wait_for 90 "node $NODE_NAME Ready" node_ready
    wait_for 30 "mirrord-net/fuse on node $NODE_NAME (the FUSE device plugin)" fuse_offered
    ensure_alive kube-controller-manager kube-scheduler kubelet kube-proxy containerd fuse-device-plugin
    local ready
    ready=$(ms_since "$t0")
    log "node $NODE_NAME Ready ($ready s)"
    wait_for 60 "the default service account" kc -n default get serviceaccount default
    trap - EXIT
    write_env "$ready" "$(ms_since "$t0")"
    log "cluster $NAME up in $(ms_since "$t0") s; env: $S/env"
    cat "$S/env"
}

fuse_offered() {
    kc get node "$NODE_NAME" -o 'jsonpath={.status.allocatable}' 2>/dev/null | grep -qF '"mirrord-net/fuse":"'
}

node_ready() {
    kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

write_env() { # NODE_READY_SECONDS UP_SECONDS
    cat >"$S/env" <<EOF
# Kubernetes test cluster $NAME (tests/k8s/cluster.sh). Source this file.
K8S_CLUSTER=$NAME
K8S_NETNS=$NETNS
K8S_NETNS_PATH=/run/netns/$NETNS
KUBECONFIG=$S/admin.kubeconfig
K8S_CA=$S/pki/ca.crt
K8S_API=https://$NODE_IP:6443
K8S_NODE_NAME=$NODE_NAME
K8S_NODE_IP=$NODE_IP
K8S_POD_CIDR=$POD_CIDR
K8S_SERVICE_CIDR=$SERVICE_CIDR
K8S_HOST_VETH=$HOST_VETH
K8S_HOST_VETH_IP=$HOST_VETH_IP
K8S_BIN=$BIN
KUBECTL=$BIN/kubectl
K8S_BUSYBOX_IMAGE=localhost/busybox:local
K8S_PAUSE_IMAGE=localhost/pause:local
K8S_CONTAINERD_SOCK=$SOCK
K8S_STATE=$S
K8S_DEVICE_DIR=$S/dev
K8S_UP_STARTED=$(cat "$S/up-started")
K8S_NODE_READY_SECONDS=$1
K8S_UP_SECONDS=$2
export KUBECONFIG
EOF
}

build_dir_cached() {
    local out
    out=$(build_dir)
    [ -f "$out/.complete" ] || die "no build for this recipe at $out: run '$0 build' first"
    echo "$out"
}

########################################################################################
# down
########################################################################################

# A process's command line with spaces for NULs (nothing if it is gone).
cmdline_of() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null; }

# Inode of the cluster namespace, or empty.
netns_inode() { stat -L -c %i "/run/netns/$NETNS" 2>/dev/null || true; }

# PIDs of every process of this cluster: in its network namespace, or naming its state dir on
# the command line (a daemon whose PID file was never written, a shim, a port-forward).
cluster_pids() {
    local ino pid
    ino=$(netns_inode)
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" = $$ ] && continue
        if [ -n "$ino" ] && [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$ino" ]; then
            echo "$pid"
        elif cmdline_of "$pid" | grep -qF -- "$S/"; then
            echo "$pid"
        fi
    done
}

# Processes in the pod cgroups (the containers: a shim killed first leaves them running).
pod_cgroup_pids() {
    local f
    for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}

# Whether PID is a live process (a zombie waiting for its reaper counts as gone).
pid_alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# Stops PIDs: TERM, then KILL after SECONDS.
stop_pids() { # SECONDS PID...
    local limit=$1 pid deadline alive
    shift
    [ $# -eq 0 ] && return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$(($(date +%s) + limit))
    while :; do
        alive=()
        for pid in "$@"; do pid_alive "$pid" && alive+=("$pid"); done
        [ "${#alive[@]}" -eq 0 ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && break
        sleep 0.1
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
        alive=()
        for pid in "$@"; do pid_alive "$pid" && alive+=("$pid"); done
        [ "${#alive[@]}" -eq 0 ] && return 0
        sleep 0.1
    done
    log "warning: still alive after KILL: ${alive[*]}"
}

# The daemon's PID if its PID file names a live process of this cluster.
daemon_pid() { # NAME
    local pid
    pid=$(cat "$S/pids/$1" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    cmdline_of "$pid" | grep -qF -- "$S/" && echo "$pid"
    return 0
}

ctr_() { timeout 10 nsenter --net="/run/netns/$NETNS" ctr --address "$SOCK" -n k8s.io "$@"; }

delete_workloads() {
    [ -x "${BIN:-}/kubectl" ] || return 0
    daemon_alive kube-apiserver && daemon_alive kubelet || return 0
    local k=(timeout 20 nsenter --net="/run/netns/$NETNS" "$BIN/kubectl" --kubeconfig "$S/admin.kubeconfig"
        --request-timeout=10s)
    "${k[@]}" get --raw /readyz >/dev/null 2>&1 || return 0
    "${k[@]}" delete deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs \
        --all --all-namespaces --wait=false >/dev/null 2>&1 || true
    "${k[@]}" delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    # The kubelet stops the sandboxes through CRI, which runs CNI DEL and unpins their namespaces.
    local deadline=$(($(date +%s) + 20))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ -z "$(ctr_ tasks ls -q 2>/dev/null)" ] && return 0
        sleep 0.3
    done
    log "warning: containers still running 20 s after deleting the pods; killing them"
}

kill_containerd_tasks() {
    daemon_alive containerd || return 0
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do
        ctr_ containers rm "$id" >/dev/null 2>&1 || true
    done
}

umount_under() { # DIR
    local dir=$1 mp
    # Deepest first; mountinfo escapes spaces as \040 (none of ours have spaces).
    for _ in 1 2 3; do
        local mps
        mps=$(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
            awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
        [ -z "$mps" ] && return 0
        while read -r mp; do
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
        done <<<"$mps"
    done
}

remove_cgroups() {
    local root
    for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [ -d "$root" ] || continue
        find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ -d "$root" ] && log "warning: could not remove cgroup $root"
    done
    return 0
}

cmd_down() {
    need_root
    check_name "${1:-}"
    cluster_vars "$1"
    local t0
    t0=$(now)
    BIN=
    local out
    for out in "$CACHE"/out/*/bin; do [ -x "$out/kubectl" ] && BIN=$out; done

    if [ -e "/run/netns/$NETNS" ]; then
        # 1. Pods through the API, so that CRI and CNI tear their sandboxes down properly.
        delete_workloads
        log "pods deleted ($(elapsed "$t0") s)"
    fi
    # 2. The daemons, in order, by PID.
    local d pid t1
    for d in fuse-device-plugin kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
        pid=$(daemon_pid "$d")
        [ -n "$pid" ] || continue
        t1=$(now)
        stop_pids 10 "$pid"
        log "stopped $d ($(elapsed "$t1") s)"
    done
    kill_containerd_tasks
    pid=$(daemon_pid containerd)
    [ -n "$pid" ] && stop_pids 10 "$pid"
    log "daemons stopped ($(elapsed "$t0") s)"
    # 3. Whatever is left: shims (their command line names our socket), containers, strays.
    local pids
    mapfile -t pids < <(cluster_pids; pod_cgroup_pids)
    [ "${#pids[@]}" -gt 0 ] && stop_pids 3 "${pids[@]}"
    mapfile -t pids < <(cluster_pids; pod_cgroup_pids)
    [ "${#pids[@]}" -gt 0 ] && { kill -KILL "${pids[@]}" 2>/dev/null || true; sleep 0.3; }

    # 4. The daemons' mount namespace (kubelet root bind mount, secrets, rootfs, shm, pinned pod
    #    namespaces), then anything under the private tree in the host's table.
    umount "$S/ns/mnt" 2>/dev/null || true
    umount_under "$S"

    # 5. Pinned pod namespaces, then the cluster namespace (bridge, veths, iptables rules).
    local ns
    for ns in /run/netns/cni-*; do
        [ -e "$ns" ] || continue
        grep -qxF "$ns" "$S/cni-netns-before" 2>/dev/null && continue
        umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true
        rm -f "$ns"
    done
    if [ -e "/run/netns/$NETNS" ]; then
        ip netns del "$NETNS" 2>/dev/null || { umount -l "/run/netns/$NETNS" 2>/dev/null || true; rm -f "/run/netns/$NETNS"; }
    fi
    ip link del "$HOST_VETH" 2>/dev/null || true
    local dst
    for dst in "$NODE_IP/32" "$POD_CIDR" "$SERVICE_CIDR"; do
        if ip route show "$dst" | grep -q "dev $HOST_VETH"; then ip route del "$dst" 2>/dev/null || true; fi
    done

    # 6. Cgroups, leaf first.
    remove_cgroups

    # 7. Host paths, sysctls, /run/netns mount.
    rm -rf /var/lib/kubelet/device-plugins /var/lib/cni/results /run/containerd/s /run/containerd/runc \
        /var/log/pods /var/log/containers
    if [ -f "$S/created-paths" ]; then
        while read -r path; do
            [ -n "$path" ] && rm -rf "$path"
        done <"$S/created-paths"
    fi
    if [ -f "$S/sysctls.saved" ]; then
        local line
        while read -r line; do
            [ -n "$line" ] || continue
            sysctl -q -w "$line" >/dev/null 2>&1 || log "warning: could not restore $line"
        done <"$S/sysctls.saved"
    fi
    if [ -d "$S" ] && [ ! -e "$S/run-netns-mounted-before" ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ] &&
        mountpoint -q /run/netns; then
        umount /run/netns 2>/dev/null || true
    fi

    # 8. The private tree itself.
    umount_under "$S"
    rm -rf "$S"
    rmdir "$STATE_ROOT" 2>/dev/null || true
    log "cluster $NAME down in $(elapsed "$t0") s"
}

# Fails, listing them, if any trace of a cluster is left on the machine.
cmd_verify_clean() {
    need_root
    local problems=() line
    add() { problems+=("$*"); }
    local pid cmd
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        cmd=$(cmdline_of "$pid") || continue
        case $cmd in
            *"$STATE_ROOT/"* | *"$CACHE/out/"*) add "process $pid: $cmd" ;;
            *containerd-shim*) add "process $pid: $cmd" ;;
        esac
    done
    while read -r line; do add "mount: $line"; done < <(awk -v a="$STATE_ROOT" -v b="/var/lib/kubelet" \
        'index($5, a) == 1 || index($5, b) == 1 || $5 ~ /^\/run\/netns\/(cni-|k8s-)/ || $5 ~ /^\/run\/containerd/ { print $5 }' /proc/self/mountinfo)
    while read -r line; do add "network namespace: $line"; done < <(ip netns list | awk '$1 ~ /^(k8s-|cni-)/ { print $1 }')
    while read -r line; do add "link: $line"; done < <(ip -o link show | awk -F': ' '$2 ~ /^k8s-/ { print $2 }')
    while read -r line; do add "route: $line"; done < <(ip route show | grep -E 'dev k8s-' || true)
    for line in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/k8s.io; do
        [ -e "$line" ] && add "cgroup: $line"
    done
    if command -v iptables-save >/dev/null; then
        while read -r line; do add "iptables: $line"; done < <(iptables-save 2>/dev/null | grep -E 'KUBE-|CNI-' || true)
    fi
    for line in "$STATE_ROOT" /var/lib/kubelet/device-plugins /var/log/pods /var/log/containers \
        /var/lib/cni/results /run/containerd/s /run/containerd/runc; do
        [ -e "$line" ] && add "path: $line"
    done
    if [ "${#problems[@]}" -gt 0 ]; then
        printf 'left behind: %s\n' "${problems[@]}" >&2
        return 1
    fi
    echo "clean: no cluster processes, mounts, namespaces, links, routes, cgroups, iptables rules or files"
}

cmd_env() {
    check_name "${1:-}"
    cluster_vars "$1"
    [ -f "$S/env" ] || die "cluster $NAME is not up (no $S/env)"
    cat "$S/env"
}

cmd_status() {
    local d found=1
    for d in "$STATE_ROOT"/*/; do
        [ -d "$d" ] || continue
        basename "$d"
        found=0
    done
    return $found
}

########################################################################################
# selftest
########################################################################################

# What a cluster could leave on the machine, in a form to compare before and after.
snapshot() {
    echo "## sysctls"
    local key
    for key in "${GLOBAL_SYSCTLS[@]}"; do echo "$key=$(sysctl -n "$key")"; done
    echo "## top-level paths"
    ls -d /var/lib/* /var/log/* /run/* /etc/* /opt/* /usr/libexec/* /var/run/* 2>/dev/null || true
    find /run/netns -mindepth 1 -maxdepth 1 2>/dev/null | sort
    echo "## mounts"
    awk '{ print $5 }' /proc/self/mountinfo | sort
    echo "## links"
    ip -o link show | awk -F': ' '{ print $2 }' | sed 's/@.*//' | sort
    echo "## routes"
    ip route show | sort
    echo "## cgroups"
    find /sys/fs/cgroup -maxdepth 2 -type d | sort
    echo "## iptables"
    iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//' | sort || true
}

# build, up, selfcheck, down, then proves nothing is left: the checks of verify-clean plus a
# comparison of what snapshot() saw before and after.
cmd_selftest() {
    need_root
    check_name "${1:-}"
    local name=$1 t before after
    before=$(mktemp)
    after=$(mktemp)
    t=$(now)
    cmd_build >/dev/null
    echo "selftest: build $(elapsed "$t") s"
    snapshot >"$before"
    t=$(now)
    local rc=0
    ( cmd_up "$name" >/dev/null ) || rc=$?
    echo "selftest: up $(elapsed "$t") s (rc $rc)"
    if [ "$rc" -eq 0 ]; then
        t=$(now)
        "$HERE/selfcheck.sh" "$name" || rc=$?
        echo "selftest: selfcheck $(elapsed "$t") s (rc $rc)"
    fi
    t=$(now)
    ( cmd_down "$name" ) || rc=$?
    echo "selftest: down $(elapsed "$t") s"
    cmd_verify_clean || rc=1
    snapshot >"$after"
    if ! diff "$before" "$after" >/dev/null; then
        echo "selftest: the machine differs from before 'up' (other users of the machine can cause some):"
        diff "$before" "$after" | sed 's/^/    /' || true
        # Sysctls and new top-level paths are this cluster's doing; mounts, links and routes are
        # judged by verify-clean (other programs on the machine change them too).
        if diff <(sed -n '/^## sysctls/,/^## mounts/p' "$before") <(sed -n '/^## sysctls/,/^## mounts/p' "$after") |
            grep -q '^>'; then
            echo "selftest: FAIL: sysctls or host paths not restored"
            rc=1
        fi
    fi
    rm -f "$before" "$after"
    [ "$rc" -eq 0 ] && echo "selftest: passed" || echo "selftest: FAILED"
    return "$rc"
}

########################################################################################
# main
########################################################################################

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        build) cmd_build "$@" ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        verify-clean) cmd_verify_clean "$@" ;;
        env) cmd_env "$@" ;;
        status) cmd_status "$@" ;;
        selftest) cmd_selftest "$@" ;;
        *) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

# Sourced (by tests/k8s/apt-sources-test.sh), it only defines its functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
