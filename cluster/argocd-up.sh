#!/usr/bin/env bash
# Starts a real Argo CD against the local test cluster, as plain processes on loopback: Redis (from Debian), the
# Argo CD repo-server and the application controller (built from Go modules by cluster/build-argocd.sh). No API
# server, UI, Dex, ApplicationSet or notifications controller: tests drive Argo CD through its CRDs.
#
# Usage: bash cluster/argocd-up.sh   -> progress on stderr, the state dir as the only line on stdout.
# It starts the cluster first (cluster/up.sh, a no-op when it runs). A second run while everything is healthy only
# prints the state dir. Stop it with cluster/argocd-down.sh. Settings: see below and cluster/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

# --- settings -------------------------------------------------------------------------------------------
# One Argo CD per cluster: by default its state dir sits beside the cluster's (.cache/cluster -> .cache/cluster-argocd).
state=${SR_ARGOCD_STATE_DIR:-${SR_STATE_DIR:-$repo/.cache/cluster}-argocd}
redis_port=${SR_ARGOCD_REDIS_PORT:-26380}
repo_port=${SR_ARGOCD_REPO_SERVER_PORT:-28081}
repo_metrics_port=${SR_ARGOCD_REPO_SERVER_METRICS_PORT:-28084}
metrics_port=${SR_ARGOCD_METRICS_PORT:-28082}
# How often the controller compares every Application with Git on its own (upstream: 120 s plus up to 60 s jitter),
# and how long the repo-server trusts a branch's resolved commit (upstream: 3 min). Upstream relies on a Git webhook
# for fast reaction to a push; these make a commit visible within about app_resync seconds without one.
app_resync=${SR_ARGOCD_APP_RESYNC:-5}
revision_cache=${SR_ARGOCD_REVISION_CACHE:-2s}
timeout_s=${SR_UP_TIMEOUT:-90}
namespace=argocd
# ---------------------------------------------------------------------------------------------------------

logs=$state/logs
pids=$state/pids
components=(redis-server argocd-repo-server argocd-application-controller)

me=cluster/argocd-up.sh
# shellcheck source=cluster/lib.sh
source "$here/lib.sh"
teardown() { SR_ARGOCD_LOCK_HELD=1 bash "$here/argocd-down.sh" --keep-state; }

command -v redis-server >/dev/null || die "redis-server is not installed (Debian package redis-server; install it \
with RUNLEVEL=1 apt-get install -y redis-server, so that no service starts on port 6379; make deps does this)"
command -v redis-cli >/dev/null || die "redis-cli is not installed (Debian package redis-tools)"
command -v git >/dev/null || die "git is needed by the Argo CD repo-server"
command -v curl >/dev/null || die "curl is needed to probe the Argo CD health endpoints"

# --- build (returns at once when cached) and the cluster (a no-op when it runs) -----------------------------
bindir=$(bash "$here/build-argocd.sh" | tail -n 1) || die "cluster/build-argocd.sh failed: Argo CD could not be built (see above)"
for c in argocd argocd-repo-server argocd-application-controller; do
  [ -x "$bindir/$c" ] || die "missing $bindir/$c after cluster/build-argocd.sh"
done
kubeconfig=$(bash "$here/up.sh" | tail -n 1) || die "cluster/up.sh failed: the cluster is not running (see above)"
# shellcheck source=cluster/versions.env
source "$here/versions.env"
kubectl=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}/kubectl
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

# One argocd-up.sh or argocd-down.sh at a time; the lock lives outside the state dir, which argocd-down.sh removes.
mkdir -p "$(dirname "$state")"
exec 9>"$state.lock"
flock 9

exe_of() {  # what binary a component runs as
  case $1 in redis-server) command -v redis-server ;; *) echo "$bindir/$1" ;; esac
}
pid_alive() {  # the pid file's process is still that component (not a recycled pid)
  local f=$pids/$1.pid p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$(exe_of "$1")")" ] || return 1
  # The controller and the repo-server are one binary: tell them apart by argv[0] (redis rewrites its own title).
  [ "$1" = redis-server ] || [ "$(tr '\0' '\n' <"/proc/$p/cmdline" | head -n 1)" = "$(exe_of "$1")" ]
}
# The cluster's identity: a cluster that up.sh replaced (it was broken) needs a new Argo CD, whatever still runs.
cluster_uid=$(k get namespace kube-system -o jsonpath='{.metadata.uid}') || die "cannot reach the cluster ($kubeconfig)"
healthy() {
  grep -qx "CLUSTER_UID=$cluster_uid" "$state/env" 2>/dev/null && all_alive && [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ] \
    && curl -sf "http://127.0.0.1:$repo_metrics_port/healthz?full=true" >/dev/null \
    && curl -sf "http://127.0.0.1:$metrics_port/healthz" >/dev/null
}
if [ -s "$state/env" ]; then
  owner=$(sed -n 's/^KUBECONFIG=//p' "$state/env")
  [ "$owner" = "$kubeconfig" ] || die "$state holds the Argo CD of another cluster ($owner), not of $kubeconfig; \
give this one a state dir and ports of its own (SR_ARGOCD_STATE_DIR, SR_ARGOCD_*_PORT)"
fi
if [ -d "$state" ]; then
  if healthy; then log "Argo CD already running (logs in $logs)"; echo "$state"; exit 0; fi
  log "found a stopped or broken Argo CD in $state; removing it and starting anew"
  SR_ARGOCD_LOCK_HELD=1 bash "$here/argocd-down.sh" >&2
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for spec in "SR_ARGOCD_REDIS_PORT:$redis_port" "SR_ARGOCD_REPO_SERVER_PORT:$repo_port" \
            "SR_ARGOCD_REPO_SERVER_METRICS_PORT:$repo_metrics_port" "SR_ARGOCD_METRICS_PORT:$metrics_port"; do
  port_busy "${spec#*:}" && die "port ${spec#*:} on 127.0.0.1 is already in use; choose another with ${spec%%:*}=<port>"
done

t0=$(date +%s.%N)
mkdir -p "$logs" "$pids" "$state/redis" "$state/tmp" "$state/tls" "$state/ssh" "$state/gnupg" "$state/gpg-keys" \
  "$state/plugins" "$state/run"
chmod 700 "$state" "$state/gnupg"
: >"$state/ssh/ssh_known_hosts"

# --- what Argo CD expects in its namespace --------------------------------------------------------------------
# The CRDs are vendored in cluster/crds/argocd (cluster/up.sh applies them too; applying again is a no-op).
k apply --server-side --force-conflicts -f "$here/crds/argocd" >"$logs/setup.log" 2>&1 \
  || fail "applying the Argo CD CRDs (cluster/crds/argocd) failed" setup
k wait --for=condition=Established crd/applications.argoproj.io crd/appprojects.argoproj.io --timeout=60s \
  >>"$logs/setup.log" 2>&1 || fail "the Argo CD CRDs did not become Established" setup
k create namespace "$namespace" --dry-run=client -o yaml | k apply --server-side -f - >>"$logs/setup.log" 2>&1 \
  || fail "creating namespace $namespace failed" setup
# argocd-cm: Argo CD's stock one (vendored in cluster/tools/argocd), plus SafeRollout's health check, the chart's own
# Lua, added under a field manager of its own as a user adds it to an existing argocd-cm.
k -n "$namespace" apply --server-side --force-conflicts --field-manager argocd-install \
  -f "$here/tools/argocd/argocd-cm.yaml" >>"$logs/setup.log" 2>&1 || fail "creating argocd-cm failed" setup
k -n "$namespace" create configmap argocd-cm --dry-run=client -o yaml \
  --from-file=resource.customizations.health.saferollout.dev_SafeRollout="$repo/charts/saferollout/argocd/health.lua" \
  | k apply --server-side --force-conflicts --field-manager saferollout-health -f - >>"$logs/setup.log" 2>&1 \
  || fail "adding the SafeRollout health check to argocd-cm failed" setup
if ! k -n "$namespace" get secret argocd-secret >/dev/null 2>&1; then
  k -n "$namespace" create secret generic argocd-secret --from-literal=server.secretkey="$(openssl rand -hex 32)" \
    --dry-run=client -o yaml | k label --local -f - -o yaml app.kubernetes.io/part-of=argocd \
    | k apply --server-side -f - >>"$logs/setup.log" 2>&1 || fail "creating argocd-secret failed" setup
fi
k apply --server-side --force-conflicts -f - >>"$logs/setup.log" 2>&1 <<EOF || fail "creating AppProject default failed" setup
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: default, namespace: $namespace}
spec:
  sourceRepos: ["*"]
  destinations: [{namespace: "*", server: "*"}]
  clusterResourceWhitelist: [{group: "*", kind: "*"}]
EOF

# --- processes ----------------------------------------------------------------------------------------------
start() {  # each in its own session, so a Ctrl-C in the caller's terminal does not stop it
  local c=$1; shift
  setsid "$(exe_of "$c")" "$@" </dev/null >>"$logs/$c.log" 2>&1 9>&- &
  echo $! >"$pids/$c.pid"
}
# Argo CD outside a pod: https://kubernetes.default.svc means the kubeconfig's cluster; data paths that a pod would
# mount are directories in the state dir; no GnuPG; the repo-server's clones and its askpass socket stay in here.
export ARGOCD_FAKE_IN_CLUSTER=true ARGOCD_GPG_ENABLED=false KUBECONFIG=$kubeconfig
export ARGOCD_TLS_DATA_PATH=$state/tls ARGOCD_SSH_DATA_PATH=$state/ssh ARGOCD_GNUPGHOME=$state/gnupg
export ARGOCD_GPG_DATA_PATH=$state/gpg-keys ARGOCD_PLUGINSOCKFILEPATH=$state/plugins
export ARGOCD_ASK_PASS_SOCK=$state/run/reposerver-ask-pass.sock TMPDIR=$state/tmp

# Redis is only a cache for Argo CD: no persistence, loopback only.
start redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$state/redis" \
  --protected-mode yes --daemonize no --logfile ""
wait_for "redis on 127.0.0.1:$redis_port" redis-server -- \
  bash -c "[ \"\$(redis-cli -h 127.0.0.1 -p $redis_port ping)\" = PONG ]"

start argocd-repo-server --address 127.0.0.1 --port "$repo_port" --disable-tls \
  --metrics-address 127.0.0.1 --metrics-port "$repo_metrics_port" --redis "127.0.0.1:$redis_port" \
  --revision-cache-expiration "$revision_cache" --logformat text
wait_for "the repo-server on 127.0.0.1:$repo_port" argocd-repo-server -- \
  curl -sf "http://127.0.0.1:$repo_metrics_port/healthz?full=true"

# The controller's metrics and /healthz listener binds 0.0.0.0 (hard-coded upstream, no flag in v3.2.11); everything
# else is loopback. What reaches that port from anywhere but loopback is dropped before the controller starts
# (argocd-down.sh removes the rule).
[ "$(id -u)" = 0 ] || die "the application controller listens on every address for its metrics (hard-coded \
upstream): root is needed to drop what reaches port $metrics_port from off the machine"
guard_port add "$metrics_port" || die "could not add the iptables rule that keeps port $metrics_port to loopback"
start argocd-application-controller --kubeconfig "$kubeconfig" --namespace "$namespace" \
  --repo-server "127.0.0.1:$repo_port" --repo-server-plaintext --redis "127.0.0.1:$redis_port" \
  --metrics-port "$metrics_port" --app-resync "$app_resync" --app-resync-jitter 0 \
  --persist-resource-health --logformat text
wait_for "the application controller's /healthz on port $metrics_port" argocd-application-controller -- \
  curl -sf "http://127.0.0.1:$metrics_port/healthz"

cat >"$state/env" <<EOF
SR_ARGOCD_REDIS_PORT=$redis_port
SR_ARGOCD_REPO_SERVER_PORT=$repo_port
SR_ARGOCD_REPO_SERVER_METRICS_PORT=$repo_metrics_port
SR_ARGOCD_METRICS_PORT=$metrics_port
SR_ARGOCD_APP_RESYNC=$app_resync
SR_ARGOCD_REVISION_CACHE=$revision_cache
ARGOCD_BIN=$bindir
KUBECONFIG=$kubeconfig
CLUSTER_UID=$cluster_uid
EOF
log "Argo CD $(basename "$bindir") running in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s" \
  "(redis :$redis_port, repo-server :$repo_port, controller metrics :$metrics_port; logs in $logs)"
echo "$state"
