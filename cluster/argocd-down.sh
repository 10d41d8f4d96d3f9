#!/usr/bin/env bash
# Stops the Argo CD started by cluster/argocd-up.sh (application controller, repo-server, Redis) and removes its state
# dir. First it deletes every Application in namespace argocd while the controller still runs (so finalizers are
# honoured and a later Argo CD does not pick up a test's leftovers). The cluster itself keeps running (cluster/down.sh).
# Idempotent: with nothing running it just says so.
# --keep-state: stop the processes but keep the state dir (argocd-up.sh uses it after a failed start, for the logs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# One Argo CD per cluster: by default its state dir sits beside the cluster's (.cache/cluster -> .cache/cluster-argocd).
state=${SR_ARGOCD_STATE_DIR:-${SR_STATE_DIR:-$repo/.cache/cluster}-argocd}
keep_state=false
[ "${1:-}" = "--keep-state" ] && keep_state=true

me=cluster/argocd-down.sh
# shellcheck source=cluster/lib.sh
source "$here/lib.sh"

if [ -z "${SR_ARGOCD_LOCK_HELD:-}" ]; then
  mkdir -p "$(dirname "$state")"
  exec 9>"$state.lock"
  flock 9
fi

if [ ! -d "$state" ]; then log "no Argo CD state in $state; nothing to stop"; exit 0; fi

# The pid of a component, only if that process is still this component (a recycled pid is left alone).
live_pid() {
  local f=$state/pids/$1.pid p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -r "/proc/$p/cmdline" ] || return 1
  if [ "$1" = redis-server ]; then
    [ "$(readlink "/proc/$p/exe")" = "$(readlink -f "$(command -v redis-server)")" ] || return 1
  else
    [ "$(basename "$(tr '\0' '\n' <"/proc/$p/cmdline" | head -n 1)")" = "$1" ] || return 1
  fi
  echo "$p"
}

# Applications go first, while the controller can still run their finalizers.
if [ -s "$state/env" ] && live_pid argocd-application-controller >/dev/null; then
  kubeconfig=$(sed -n 's/^KUBECONFIG=//p' "$state/env")
  # shellcheck source=cluster/versions.env
  source "$here/versions.env"
  kubectl=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}/kubectl
  if [ -r "$kubeconfig" ] && "$kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    if ! "$kubectl" --kubeconfig "$kubeconfig" -n argocd delete applications.argoproj.io --all --timeout=60s \
        >/dev/null 2>&1; then
      log "Applications still there after 60s; removing their finalizers"
      for a in $("$kubectl" --kubeconfig "$kubeconfig" -n argocd get applications.argoproj.io -o name 2>/dev/null); do
        "$kubectl" --kubeconfig "$kubeconfig" -n argocd patch "$a" --type merge -p '{"metadata":{"finalizers":null}}' \
          >/dev/null 2>&1 || true
      done
    fi
  fi
fi

# Clients first, Redis last.
stopped=()
for c in argocd-application-controller argocd-repo-server redis-server; do
  if p=$(live_pid "$c"); then
    stop_pid "$c" "$p"
    stopped+=("$c")
  fi
  rm -f "$state/pids/$c.pid"
done
if [ ${#stopped[@]} -gt 0 ]; then log "stopped ${stopped[*]}"; else log "no component was running"; fi

# the rule argocd-up.sh added for the controller's metrics port (it listens on every address)
metrics_port=$(sed -n 's/^SR_ARGOCD_METRICS_PORT=//p' "$state/env" 2>/dev/null)
[ "$(id -u)" != 0 ] || guard_port remove "${metrics_port:-${SR_ARGOCD_METRICS_PORT:-28082}}"

if $keep_state; then log "kept $state"; else rm -rf "$state"; log "removed $state"; fi
