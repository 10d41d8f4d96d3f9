#!/usr/bin/env bash
# Stops the local test cluster started by cluster/up.sh and removes its state dir (etcd data, certificates,
# kubeconfig, logs). Idempotent: with nothing running it just says so.
# --keep-state: stop the processes but keep the state dir (up.sh uses it after a failed start, for the logs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cluster/versions.env
source "$here/versions.env"
bin=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}
state=${SR_STATE_DIR:-$repo/.cache/cluster}
keep_state=false
[ "${1:-}" = "--keep-state" ] && keep_state=true

log() { echo "cluster/down.sh: $*" >&2; }

# Same lock as up.sh, unless up.sh (which holds it) is the caller.
if [ -z "${SR_LOCK_HELD:-}" ]; then
  mkdir -p "$(dirname "$state")"
  exec 9>"$state.lock"
  flock 9
fi

if [ ! -d "$state" ]; then log "no cluster state in $state; nothing to stop"; exit 0; fi

# The pid of a component, only if that process is still this component (a recycled pid is left alone).
live_pid() {
  local f=$state/pids/$1.pid p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "$bin/$1 " && echo "$p"
}

# Running and not a zombie (a component that up.sh started and that already exited is a zombie until up.sh ends).
running() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 != "Z") }' "/proc/$1/stat" 2>/dev/null; }

# Clients first, etcd last, so nothing logs storms of connection errors while stopping.
stopped=()
for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  if p=$(live_pid "$c"); then
    # Each component leads its own process group (setsid in up.sh): signal the group, children included.
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$p" || break; sleep 0.1; done
    if running "$p"; then
      log "$c (pid $p) still running 10s after SIGTERM; killing it"
      kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
      # Gone before returning, so an up.sh right after finds its ports free.
      for _ in $(seq 1 50); do running "$p" || break; sleep 0.1; done
    fi
    stopped+=("$c")
  fi
  rm -f "$state/pids/$c.pid"
done
if [ ${#stopped[@]} -gt 0 ]; then log "stopped ${stopped[*]}"; else log "no component was running"; fi

if $keep_state; then log "kept $state"; else rm -rf "$state"; log "removed $state"; fi
