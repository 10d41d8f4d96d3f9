#!/usr/bin/env bash
# Starts, on loopback, the local test cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and a kwok controller that plays the kubelet of fake nodes (their pods become Running and Ready without
# containers). Real control plane, so the operator meets real admission, RBAC, TokenRequest, garbage
# collection and Deployment rollouts; only the nodes are simulated (no Docker on these machines).
#
# Usage: bash cluster/up.sh   -> progress on stderr, the kubeconfig path as the only line on stdout.
# A second run while the cluster is healthy does nothing but print the kubeconfig path.
# Stop it with cluster/down.sh. Env overrides: see the "settings" block below and cluster/README.md.
#
# Beside the kwok nodes runs one real node (containerd, kubelet, kube-proxy, a CNI bridge; cluster/node/node.sh),
# tainted so that only pods that tolerate it run there. It needs root and changes the machine (a bridge, routes,
# iptables, sysctls), all of which cluster/down.sh undoes. SR_REAL_NODE=0 leaves it out (kwok nodes only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cluster/versions.env
source "$here/versions.env"

# --- settings -------------------------------------------------------------------------------------------
bin=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}
state=${SR_STATE_DIR:-$repo/.cache/cluster}
apiserver_port=${SR_APISERVER_PORT:-16443}
etcd_port=${SR_ETCD_PORT:-12379}
etcd_peer_port=${SR_ETCD_PEER_PORT:-12380}
kcm_port=${SR_KCM_PORT:-16257}
scheduler_port=${SR_SCHEDULER_PORT:-16259}
nodes=${SR_NODES:-2}
# The address written into the "kubernetes" Service endpoints. Nothing in the cluster dials it (no real pods);
# it must not be loopback (Endpoints validation), so a fixed TEST-NET-2 address keeps the host network out.
advertise=${SR_ADVERTISE_ADDRESS:-198.51.100.1}
service_cidr=${SR_SERVICE_CIDR:-10.96.0.0/16}
pod_cidr=${SR_POD_CIDR:-10.244.0.1/16}
timeout_s=${SR_UP_TIMEOUT:-90}
real_node=${SR_REAL_NODE:-1}
# ---------------------------------------------------------------------------------------------------------

kubeconfig=$state/kubeconfig
pki=$state/pki
logs=$state/logs
pids=$state/pids
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

me=cluster/up.sh
# shellcheck source=cluster/lib.sh
source "$here/lib.sh"
teardown() { SR_LOCK_HELD=1 bash "$here/down.sh" --keep-state; }
# shellcheck source=cluster/node/node.sh
source "$here/node/node.sh"
case $real_node in
  0) ;;
  1) node_settings
     # The API server's endpoint is where the pods reach it: the bridge's gateway address.
     [ -z "${SR_ADVERTISE_ADDRESS:-}" ] || [ "$SR_ADVERTISE_ADDRESS" = "$node_ip" ] \
       || die "with SR_REAL_NODE=1 the advertise address is the node's address $node_ip; unset SR_ADVERTISE_ADDRESS"
     advertise=$node_ip ;;
  *) die "SR_REAL_NODE must be 0 or 1, not '$real_node'" ;;
esac
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Kubectl from the build, always against this cluster, never the user's ~/.kube/config.
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

marker() {  # what the component's command line contains
  case $1 in containerd|apiserver-proxy|kubelet|kube-proxy) node_marker "$1" ;; *) echo "$bin/$1 " ;; esac
}
pid_alive() {  # pid file exists and the process is still that component (not a recycled pid)
  local c=$1 f=$pids/$1.pid p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "$(marker "$c")"
}
# --- build (returns at once when the binaries are cached) -----------------------------------------------
bash "$here/build.sh" >&2 || die "cluster/build.sh failed: the cluster tools could not be built (see above)"
for c in "${components[@]}" kubectl; do
  [ -x "$bin/$c" ] || die "missing binary $bin/$c after cluster/build.sh (component $c)"
done
command -v openssl >/dev/null || die "openssl is needed to create the cluster's certificates"
command -v curl >/dev/null || die "curl is needed to probe the control plane's health endpoints"
[ "$real_node" = 0 ] || node_check_host

# One up.sh or down.sh at a time (parallel test workers may call it together). The lock file lives outside
# the state dir, which down.sh removes.
mkdir -p "$(dirname "$state")"
exec 9>"$state.lock"
flock 9

# --- already running? --------------------------------------------------------------------------------------
if [ -d "$state" ]; then
  # A cluster with a real node records the node's settings; its health includes the node's processes.
  has_node=0
  if node_load_settings; then has_node=1; node_settings; components+=("${node_components[@]}"); fi
  if all_alive && k get --raw /readyz >/dev/null 2>&1; then
    if [ "$real_node" = 0 ] || [ "$has_node" = 1 ]; then
      log "cluster already running$([ "$has_node" = 0 ] || echo " with the real node $node_name") (logs in $logs)"
      echo "$kubeconfig"
      exit 0
    fi
    log "the running cluster has no real node and SR_REAL_NODE=1 asks for one: starting it anew"
  else
    log "found a stopped or broken cluster in $state; removing it and starting anew"
  fi
  SR_LOCK_HELD=1 bash "$here/down.sh" >&2
  components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
  node_saved=()
fi
if [ "$real_node" = 1 ]; then
  node_settings
  components+=("${node_components[@]}")
  pause_archive=$(bash "$here/node/images.sh" build pause) || die "building the pause image failed (cluster/node/images.sh)"
  pause_image=$(bash "$here/node/images.sh" ref pause)
  if node_leftovers; then
    log "removing what an earlier real node left on this machine"
    SR_LOCK_HELD=1 SR_REAL_NODE=1 bash "$here/down.sh" >&2
  fi
  node_check_free
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for spec in "SR_APISERVER_PORT:$apiserver_port" "SR_ETCD_PORT:$etcd_port" "SR_ETCD_PEER_PORT:$etcd_peer_port" \
            "SR_KCM_PORT:$kcm_port" "SR_SCHEDULER_PORT:$scheduler_port"; do
  port_busy "${spec#*:}" && die "port ${spec#*:} on 127.0.0.1 is already in use; choose another with ${spec%%:*}=<port>"
done
if [ "$real_node" = 1 ]; then
  for spec in "SR_KUBELET_HEALTHZ_PORT:$kubelet_healthz_port" "SR_KUBE_PROXY_HEALTHZ_PORT:$proxy_healthz_port" \
              "SR_KUBE_PROXY_METRICS_PORT:$proxy_metrics_port"; do
    port_busy "${spec#*:}" && die "port ${spec#*:} on 127.0.0.1 is already in use; choose another with ${spec%%:*}=<port>"
  done
fi

t0=$(now)
mkdir -p "$pki" "$logs" "$pids" "$state/etcd"
chmod 700 "$state"
if [ "$real_node" = 1 ]; then
  # From here a failing command stops what was started and undoes the machine changes (down.sh --keep-state).
  on_err() {
    local rc=$?
    [ "$BASHPID" = "$$" ] || exit "$rc"
    trap - ERR
    fail "a command failed (exit $rc) at cluster/up.sh line $1" containerd kubelet kube-proxy
  }
  set -E
  trap 'on_err $LINENO' ERR
  # Before the API server (it is reached at the bridge's address) and before any pod: the bridge, the sink,
  # the blackhole routes and the pods' routing table, the sysctls (old values recorded in $state/node).
  node_host_up
fi

# --- certificates and keys ---------------------------------------------------------------------------------
# EC P-256 keys: generated in milliseconds; the API server accepts ES256 service-account signing keys.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# sign <name> <subject> <extensions>: a certificate for pki/<name>.key signed by the cluster CA.
sign() {
  local name=$1 subj=$2 ext=$3
  newkey "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}
# set -e inside a subshell whose status is tested (`( ... ) || die`) is ignored, so the status is taken after it.
set +e
(
  set -e
  newkey "$pki/ca.key"
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=saferollout-local-ca" -days 365 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:${service_cidr%.0/*}.1,IP:$advertise,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kubernetes-admin" "$client"
  sign controller-manager "/CN=system:kube-controller-manager" "$client"
  sign scheduler "/CN=system:kube-scheduler" "$client"
  sign kwok "/O=system:masters/CN=kwok-controller" "$client"
  if [ "$real_node" = 1 ]; then
    sign kubelet "/O=system:nodes/CN=system:node:$node_name" "$client"
    sign kubelet-serving "/CN=$node_name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$node_name"
    sign kube-proxy "/CN=system:kube-proxy" "$client"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  fi
  # Front proxy (request-header authentication, for aggregated APIs): without it the controller-manager and
  # the scheduler log an error for the missing requestheader CA bundle on every resync.
  newkey "$pki/front-proxy-ca.key"
  openssl req -x509 -new -key "$pki/front-proxy-ca.key" -subj "/CN=saferollout-front-proxy-ca" -days 365 \
    -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/front-proxy-ca.crt" 2>/dev/null
  newkey "$pki/front-proxy-client.key"
  printf '%s\n' "$client" >"$pki/front-proxy-client.ext"
  openssl req -new -key "$pki/front-proxy-client.key" -subj "/CN=front-proxy-client" 2>/dev/null |
    openssl x509 -req -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" -CAcreateserial \
      -days 365 -sha256 -extfile "$pki/front-proxy-client.ext" -out "$pki/front-proxy-client.crt" 2>/dev/null
  newkey "$pki/sa.key"
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  rm -f "$pki"/*.csr "$pki"/*.ext
)
pki_status=$?
set -e
[ "$pki_status" = 0 ] || die "creating the certificates with openssl failed (in $pki)"

# write_kubeconfig <file> <cert name>: certificates embedded, so the file works from any directory.
write_kubeconfig() {
  local b64='base64 -w0'
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: saferollout
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $($b64 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$pki/$2.crt")
    client-key-data: $($b64 <"$pki/$2.key")
contexts:
- name: saferollout
  context: {cluster: saferollout, user: $2}
current-context: saferollout
EOF
  chmod 600 "$1"
}
write_kubeconfig "$kubeconfig" admin
write_kubeconfig "$state/controller-manager.kubeconfig" controller-manager
write_kubeconfig "$state/scheduler.kubeconfig" scheduler
write_kubeconfig "$state/kwok.kubeconfig" kwok
: >"$state/kwok.yaml"   # explicit empty config: kwok's built-in stages, never a stray ~/.kwok/kwok.yaml
if [ "$real_node" = 1 ]; then
  write_kubeconfig "$state/kubelet.kubeconfig" kubelet
  write_kubeconfig "$state/kube-proxy.kubeconfig" kube-proxy
  node_write_configs "$pause_image"
fi

# --- processes ---------------------------------------------------------------------------------------------
# start <component> <args...>: own session (a Ctrl-C in the caller's terminal does not reach it), no
# inherited stdout (callers capturing up.sh's output are not held open), and the lock fd closed.
start_exe() {
  local c=$1 exe=$2; shift 2
  setsid "$exe" "$@" </dev/null >>"$logs/$c.log" 2>&1 9>&- &
  echo $! >"$pids/$c.pid"
}
start() { start_exe "$1" "$bin/$1" "${@:2}"; }

# The real node's containerd starts first: it is ready by the time the control plane is.
if [ "$real_node" = 1 ]; then
  start_exe containerd "$(command -v containerd)" --config "$node_dir/containerd.toml"
fi

start etcd --name saferollout --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "saferollout=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync --log-level warn

wait_for "etcd /health" etcd -- curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health"

apiserver_node=()
if [ "$real_node" = 1 ]; then  # the API server calls the kubelet (logs, exec) with a client certificate
  apiserver_node=(--kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" --kubelet-certificate-authority "$pki/ca.crt"
    --kubelet-preferred-address-types InternalIP)
fi
start kube-apiserver \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$apiserver_port" --advertise-address "$advertise" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --authorization-mode Node,RBAC --allow-privileged=true \
  --profiling=false --v=1 "${apiserver_node[@]}"

if [ "$real_node" = 1 ]; then
  # Pods reach the API server at the node's address (the kubernetes Service's endpoint): a TCP forwarder there
  # to the API server on 127.0.0.1, which keeps serving the kubeconfigs (TLS goes through untouched).
  start_exe apiserver-proxy "$(command -v socat)" "TCP-LISTEN:$apiserver_port,bind=$node_ip,reuseaddr,fork,backlog=128" \
    "TCP:127.0.0.1:$apiserver_port"
fi

log "started etcd and kube-apiserver (logs in $logs)"

# --- readiness ---------------------------------------------------------------------------------------------
healthz() { curl -sf --max-time 2 -k "https://127.0.0.1:$1/healthz"; }
wait_for "kube-apiserver /readyz" kube-apiserver etcd -- k get --raw /readyz
log "kube-apiserver ready after $(elapsed "$t0")s"

# The others start once the API server has bootstrapped its RBAC roles: before that the controller-manager
# exits, forbidden to read the extension-apiserver-authentication ConfigMap.
common=(--bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1)
start kube-controller-manager "${common[@]}" --secure-port "$kcm_port" \
  --kubeconfig "$state/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
  --controllers '*' --use-service-account-credentials \
  --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range "$service_cidr" --cluster-name saferollout \
  --kube-api-qps 100 --kube-api-burst 200  # the default 20/s takes minutes over bench/scale.py's 2000 Deployments

start kube-scheduler "${common[@]}" --secure-port "$scheduler_port" \
  --kubeconfig "$state/scheduler.kubeconfig" \
  --authentication-kubeconfig "$state/scheduler.kubeconfig" \
  --authorization-kubeconfig "$state/scheduler.kubeconfig"

start kwok --config "$state/kwok.yaml" --kubeconfig "$state/kwok.kubeconfig" \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --cidr "$pod_cidr" --node-lease-duration-seconds 40

log "started kube-controller-manager, kube-scheduler, kwok"

if [ "$real_node" = 1 ]; then
  wait_for "containerd to answer on $ctr_sock" containerd -- ctr --address "$ctr_sock" version
  bash "$here/node/images.sh" import "$pause_archive" >"$logs/images.log" 2>&1 \
    || fail "importing the pause image into containerd failed" images containerd
  start kubelet --config "$node_dir/kubelet.yaml" --kubeconfig "$state/kubelet.kubeconfig" \
    --root-dir "$node_dir/kubelet" --cert-dir "$node_dir/kubelet/pki" --hostname-override "$node_name" \
    --node-ip "$node_ip" --node-labels saferollout.dev/node=real --v=1
  start kube-proxy --config "$node_dir/kube-proxy.yaml" --v=1
  log "started containerd, kubelet, kube-proxy for the real node $node_name ($node_ip)"
fi

# Vendored third-party CRDs (Gateway API, VolumeSnapshot, Istio VirtualService). Server-side apply: the
# largest CRDs exceed the size limit of client-side apply's last-applied annotation.
if [ -d "$here/crds" ] && [ -n "$(find "$here/crds" -name '*.yaml' -print -quit)" ]; then
  k apply --server-side --force-conflicts -R -f "$here/crds" >"$logs/crds.log" 2>&1 \
    || fail "applying the CRDs under cluster/crds failed" crds kube-apiserver
fi

nodefile=$state/nodes.yaml
: >"$nodefile"
for i in $(seq 0 $((nodes - 1))); do
  cat >>"$nodefile" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    node-role.kubernetes.io/agent: ""
    topology.kubernetes.io/zone: zone-$i
EOF
done
k apply -f "$nodefile" >/dev/null 2>"$logs/nodes.log" || fail "creating the fake nodes failed" nodes kube-apiserver

wait_for "kube-controller-manager /healthz" kube-controller-manager -- healthz "$kcm_port"
wait_for "kube-scheduler /healthz" kube-scheduler -- healthz "$scheduler_port"

wait_for "the default ServiceAccount in namespace default" kube-controller-manager -- \
  k get serviceaccount default -n default
if [ "$real_node" = 1 ]; then
  wait_for "fake nodes to become Ready" kwok -- k wait --for=condition=Ready node -l type=kwok --timeout=2s
  wait_for "the real node $node_name to become Ready" kubelet containerd -- \
    k wait --for=condition=Ready "node/$node_name" --timeout=2s
  wait_for "kube-proxy /healthz" kube-proxy -- curl -sf --max-time 2 "http://127.0.0.1:$proxy_healthz_port/healthz"
else
  wait_for "fake nodes to become Ready" kwok -- k wait --for=condition=Ready node --all --timeout=2s
fi
if [ -d "$here/crds" ]; then
  wait_for "the vendored CRDs to be Established" kube-apiserver -- \
    k wait --for=condition=Established crd --all --timeout=2s
fi

# Smoke test: a Deployment's pods get scheduled onto a kwok node and become Ready.
smoke=sr-smoke
k create namespace "$smoke" >/dev/null
wait_for "the default ServiceAccount in namespace $smoke" kube-controller-manager -- \
  k get serviceaccount default -n "$smoke"
k -n "$smoke" create deployment smoke --image demo/x:1 --replicas 1 >/dev/null
wait_for "the smoke Deployment's pod to become Ready" kube-scheduler kube-controller-manager kwok -- \
  k -n "$smoke" wait --for=jsonpath='{.status.readyReplicas}'=1 deployment/smoke --timeout=2s
if [ "$real_node" = 1 ]; then  # and a pod of the pause image on the real node: sandbox, CNI, runc
  k -n "$smoke" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: real-smoke}
spec:
  nodeSelector: {saferollout.dev/node: real}
  tolerations: [{key: saferollout.dev/real-node, operator: Exists, effect: NoSchedule}]
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers: [{name: pause, image: $pause_image, imagePullPolicy: Never}]
EOF
  wait_for "a pod on the real node to become Ready" kubelet containerd kube-scheduler -- \
    k -n "$smoke" wait --for=condition=Ready pod/real-smoke --timeout=2s
fi
k delete namespace "$smoke" --wait=false >/dev/null

nodes_said="$nodes kwok node(s)"
[ "$real_node" = 0 ] || nodes_said+=" and the real node $node_name ($node_ip)"
log "cluster up in $(elapsed "$t0")s: kube-apiserver https://127.0.0.1:$apiserver_port, $nodes_said"
log "use it with: export KUBECONFIG=$kubeconfig"
echo "$kubeconfig"
