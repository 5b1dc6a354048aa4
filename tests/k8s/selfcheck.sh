#!/usr/bin/env bash
# Proves, on a cluster that `cluster.sh up NAME` started, everything the Kubernetes end-to-end
# tests rely on. kubectl and curl run in the host network namespace (through the veth), as the
# mirrord-net client will.
#
#   selfcheck.sh NAME
#
# Leaves its pods in place (namespaces mnk-selfcheck and mnk-rbac): `cluster.sh down` removes
# them, which exercises the pod teardown. Ends with an 'N passed, N failed' line.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "selfcheck.sh: must run as root" >&2; exit 1; }
[ $# -eq 1 ] || { echo "usage: selfcheck.sh NAME" >&2; exit 2; }

ENV_TEXT=$("$HERE/cluster.sh" env "$1")
eval "$ENV_TEXT"
: "${KUBECTL:?}" "${K8S_STATE:?}" "${K8S_API:?}" "${K8S_UP_STARTED:?}"

NS=mnk-selfcheck
RBAC_NS=mnk-rbac
IMAGE=$K8S_BUSYBOX_IMAGE
passed=0
failed=0
WORK=$(mktemp -d)
PF_PID=
cleanup() {
    if [ -n "$PF_PID" ]; then kill "$PF_PID" 2>/dev/null || true; wait "$PF_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
k() { "$KUBECTL" --request-timeout=20s "$@"; }

ok() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
expect() { # GOT WANT WHAT
    if [ "$1" = "$2" ]; then ok "$3"; else fail "$3: expected '$2', got: $1"; fi
}

# retry SECONDS COMMAND...: until it succeeds; prints its last output.
retry() {
    local limit=$1 deadline out
    shift
    deadline=$(($(date +%s) + limit))
    while :; do
        if out=$("$@" 2>&1); then printf '%s' "$out"; return 0; fi
        [ "$(date +%s)" -ge "$deadline" ] && { printf '%s' "$out"; return 1; }
        sleep 0.2
    done
}

pod_phase() { k -n "$1" get pod "$2" -o 'jsonpath={.status.phase}' 2>/dev/null; }
wait_phase() { # NS POD PHASE SECONDS
    local deadline=$(($(date +%s) + $4))
    until [ "$(pod_phase "$1" "$2")" = "$3" ]; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

k create namespace "$NS" >/dev/null
k create namespace "$RBAC_NS" >/dev/null

# a. A pod: Running, exec, logs, port-forward, and its IP straight from the host.
cat >"$WORK/web.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: $NS, labels: {app: web}}
spec:
  dnsPolicy: Default
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web >/www/index.html && echo web-started && exec httpd -f -v -p 8080 -h /www"]
EOF
t=$(now)
k apply -f "$WORK/web.yaml" >/dev/null
if wait_phase "$NS" web Running 60; then
    ok "busybox pod Running $(since "$t") s after apply ($(since "$K8S_UP_STARTED") s after 'up' started)"
else
    fail "busybox pod not Running: $(k -n "$NS" describe pod web | tail -n 15)"
fi
out=$(k -n "$NS" exec web -- cat /www/index.html 2>&1 || true)
expect "$out" hello-from-web "kubectl exec"
out=$(retry 10 sh -c "'$KUBECTL' -n $NS logs web | grep -x web-started" || true)
expect "$out" web-started "kubectl logs"

"$KUBECTL" -n "$NS" port-forward pod/web :8080 >"$WORK/pf.out" 2>&1 &
PF_PID=$!
port=$(retry 15 sh -c "sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) -> 8080$/\1/p' '$WORK/pf.out' | grep ." || true)
out=$(retry 10 curl -fsS --max-time 3 "http://127.0.0.1:$port/" || true)
expect "$out" hello-from-web "kubectl port-forward (127.0.0.1:$port on the host)"
kill "$PF_PID" 2>/dev/null || true
wait "$PF_PID" 2>/dev/null || true
PF_PID=

web_ip=$(k -n "$NS" get pod web -o 'jsonpath={.status.podIP}')
out=$(curl -fsS --max-time 3 "http://$web_ip:8080/" 2>&1 || true)
expect "$out" hello-from-web "pod IP $web_ip reachable from the host"
out=$(k get --raw /version 2>&1 | grep -o '"gitVersion": *"[^"]*"' || true)
if [ -n "$out" ]; then ok "API reachable from the host at $K8S_API ($out)"; else fail "API /version"; fi

# d. A Deployment and its ClusterIP Service, from a pod and from the host.
cat >"$WORK/echo.yaml" <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: $IMAGE
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && echo hello-from-echo >/www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: $NS}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
EOF
t=$(now)
k apply -f "$WORK/echo.yaml" >/dev/null
if k -n "$NS" rollout status deployment/echo --timeout=60s >/dev/null; then
    ok "Deployment rolled out in $(since "$t") s"
else
    fail "Deployment rollout"
fi
cluster_ip=$(k -n "$NS" get service echo -o 'jsonpath={.spec.clusterIP}')
out=$(retry 15 k -n "$NS" exec web -- timeout 5 wget -q -O - "http://$cluster_ip/" || true)
expect "$out" hello-from-echo "ClusterIP $cluster_ip reachable from a pod"
out=$(retry 15 curl -fsS --max-time 2 "http://$cluster_ip/" || true)
expect "$out" hello-from-echo "ClusterIP reachable from the host"
out=$(retry 15 nsenter --net="$K8S_NETNS_PATH" curl -fsS --max-time 2 "http://$cluster_ip/" || true)
expect "$out" hello-from-echo "ClusterIP reachable from the node's namespace"
for api in 10.97.0.1:443 "$K8S_NODE_IP:6443"; do
    out=$(retry 15 k -n "$NS" exec web -- sh -c "nc -w 2 ${api%:*} ${api#*:} </dev/null && echo connected" || true)
    expect "$out" connected "a pod connects to the API at $api"
done

# b. The agent: privileged, hostPID, on the node; finds the target by container ID and enters
#    its network namespace. Once as a pod, once as a Job that deletes itself (TTL).
target_cid=$(k -n "$NS" get pod web -o 'jsonpath={.status.containerStatuses[0].containerID}')
target_cid=${target_cid#containerd://}
# shellcheck disable=SC2016 # expanded by the pod's shell
agent_script='set -e
pid=$(grep -l "$TARGET_CID" /proc/[0-9]*/cgroup | cut -d/ -f3)
[ "$(echo "$pid" | wc -w)" = 1 ] || { echo "expected one process, got: $pid"; exit 1; }
echo "target-pid=$pid"
echo "target-cgroup=$(grep -m1 "$TARGET_CID" /proc/$pid/cgroup)"
echo "target-ip=$(nsenter --net=/proc/$pid/ns/net ip -4 -o addr show eth0 | awk "{ print \$4 }")"
echo "own-ip=$(ip -4 -o addr show eth0 | awk "{ print \$4 }")"
printf "GET / HTTP/1.0\r\n\r\n" | nsenter --net=/proc/$pid/ns/net nc 127.0.0.1 8080 | head -n1'
agent_spec() {
    cat <<EOF
      nodeName: $K8S_NODE_NAME
      hostPID: true
      dnsPolicy: Default
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: agent
        image: $IMAGE
        imagePullPolicy: Never
        securityContext: {privileged: true}
        env: [{name: TARGET_CID, value: "$target_cid"}]
        command: ["sh", "-c", $(printf '%s' "$agent_script" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
EOF
}
{
    printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: %s}\nspec:\n' "$NS"
    agent_spec | sed 's/^    //'
} >"$WORK/agent.yaml"
t=$(now)
k apply -f "$WORK/agent.yaml" >/dev/null
if wait_phase "$NS" agent Succeeded 60; then
    log=$(k -n "$NS" logs agent)
    if grep -q "target-ip=$web_ip/" <<<"$log" && grep -q 'HTTP/1.[01] 200' <<<"$log" &&
        grep -q "target-cgroup=.*/kubepods/besteffort/pod" <<<"$log" && ! grep -q "own-ip=$web_ip/" <<<"$log"; then
        ok "hostPID privileged agent pod found the target by container ID and entered its netns ($(since "$t") s): $(tr '\n' ' ' <<<"$log")"
    else
        fail "agent pod output: $log"
    fi
else
    fail "agent pod did not succeed: $(pod_phase "$NS" agent) $(k -n "$NS" logs agent 2>&1 | tail -n 5)"
fi

{
    printf 'apiVersion: batch/v1\nkind: Job\nmetadata: {name: agent-job, namespace: %s}\n' "$NS"
    printf 'spec:\n  ttlSecondsAfterFinished: 3\n  backoffLimit: 0\n  template:\n    spec:\n'
    agent_spec
} >"$WORK/job.yaml"
t=$(now)
k apply -f "$WORK/job.yaml" >/dev/null
ttl=$(k -n "$NS" get job agent-job -o 'jsonpath={.spec.ttlSecondsAfterFinished}')
expect "$ttl" 3 "Job keeps ttlSecondsAfterFinished (feature gate on)"
if k -n "$NS" wait --for=condition=complete job/agent-job --timeout=60s >/dev/null 2>&1; then
    log=$(k -n "$NS" logs job/agent-job 2>&1)
    if grep -q "target-ip=$web_ip/" <<<"$log" && grep -q 'HTTP/1.[01] 200' <<<"$log"; then
        ok "agent Job completed in $(since "$t") s and found the target"
    else
        fail "agent Job output: $log"
    fi
else
    fail "agent Job did not complete"
fi
deadline=$(($(date +%s) + 60))
while k -n "$NS" get job agent-job >/dev/null 2>&1 && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
if k -n "$NS" get job agent-job >/dev/null 2>&1; then
    fail "finished Job not deleted by its TTL"
else
    ok "finished Job deleted by its TTL $(since "$t") s after creation"
fi

# c. RBAC: a service account that may only read pods gets a 403 that names verb and resource.
cat >"$WORK/rbac.yaml" <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: limited, namespace: $RBAC_NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: $RBAC_NS}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: limited-reads-pods, namespace: $RBAC_NS}
subjects: [{kind: ServiceAccount, name: limited, namespace: $RBAC_NS}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
EOF
k apply -f "$WORK/rbac.yaml" >/dev/null
secret=$(retry 30 sh -c "'$KUBECTL' -n $RBAC_NS get serviceaccount limited -o 'jsonpath={.secrets[0].name}' | grep ." || true)
token=$(k -n "$RBAC_NS" get secret "$secret" -o 'jsonpath={.data.token}' | base64 -d)
limited=("$KUBECTL" --kubeconfig=/dev/null --server="$K8S_API" --certificate-authority="$K8S_CA" --token="$token")
if "${limited[@]}" -n "$RBAC_NS" get pods >/dev/null 2>&1; then ok "limited account may list pods"; else fail "limited account cannot list pods"; fi
out=$("${limited[@]}" -n "$RBAC_NS" run denied --image="$IMAGE" --restart=Never 2>&1 || true)
want="Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:$RBAC_NS:limited\" cannot create resource \"pods\" in API group \"\" in the namespace \"$RBAC_NS\""
expect "$out" "$want" "RBAC denial names verb and resource: $out"

echo
echo "selfcheck: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
