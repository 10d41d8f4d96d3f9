#!/usr/bin/env bash
# Stops the local test cluster started by cluster/up.sh and removes its state dir (etcd data, certificates,
# kubeconfig, logs). Idempotent: with nothing running it just says so.
# --keep-state: stop the processes but keep the state dir (up.sh uses it after a failed start, for the logs).
#
# With a real node (SR_REAL_NODE=1 up.sh, settings recorded in the state dir) it also stops the kubelet,
# kube-proxy, every pod's processes and containerd's shims, and containerd, then undoes what the start did to the
# machine: mounts under the state dir, the bridge and the sink device, the blackhole routes, the pods' routing
# rule and table, kube-proxy's iptables chains, conntrack entries, the kubepods cgroups, the files the kubelet,
# the shims and CNI leave outside the state dir, and the sysctls (restored to the values recorded at start).
# Also after a failed start. With no state dir, SR_REAL_NODE=1 still removes the machine-wide leftovers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cluster/versions.env
source "$here/versions.env"
bin=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}
state=${SR_STATE_DIR:-$repo/.cache/cluster}
# up.sh's defaults, for a real node's settings when none were recorded
service_cidr=${SR_SERVICE_CIDR:-10.96.0.0/16}
pod_cidr=${SR_POD_CIDR:-10.244.0.1/16}
apiserver_port=${SR_APISERVER_PORT:-16443}
keep_state=false
[ "${1:-}" = "--keep-state" ] && keep_state=true

me=cluster/down.sh
# shellcheck source=cluster/lib.sh
source "$here/lib.sh"
# shellcheck source=cluster/node/node.sh
source "$here/node/node.sh"

# Same lock as up.sh, unless up.sh (which holds it) is the caller.
if [ -z "${SR_LOCK_HELD:-}" ]; then
  mkdir -p "$(dirname "$state")"
  exec 9>"$state.lock"
  flock 9
fi

real=0
if [ -d "$state" ] && node_load_settings; then real=1; node_settings
elif [ "${SR_REAL_NODE:-0}" = 1 ]; then real=1; node_settings
fi
if [ ! -d "$state" ] && [ "$real" = 0 ]; then log "no cluster state in $state; nothing to stop"; exit 0; fi

marker() {  # what the component's command line contains
  case $1 in containerd|apiserver-proxy|kubelet|kube-proxy) node_marker "$1" ;; *) echo "$bin/$1 " ;; esac
}
# The pid of a component, only if that process is still this component (a recycled pid is left alone).
# A real node's process whose pid file is gone is found by its command line, which names the state dir.
live_pid() {
  local f=$state/pids/$1.pid p
  if [ -s "$f" ]; then
    p=$(cat "$f")
    proc_has "$p" "$(marker "$1")" && echo "$p"
    return
  fi
  [ "$real" = 1 ] && node_find "$1"
}

stopped=()
stop() {
  local c=$1 p
  if p=$(live_pid "$c"); then
    stop_pid "$c" "$p"
    stopped+=("$c")
  fi
  rm -f "$state/pids/$c.pid"
}

# The real node's agents first (so nothing restarts the pods), then the pods and shims, then containerd.
if [ "$real" = 1 ]; then
  stop kubelet
  stop kube-proxy
  node_kill_pods
  stop containerd
fi
# Clients first, etcd last, so nothing logs storms of connection errors while stopping.
for c in kwok kube-scheduler kube-controller-manager; do stop "$c"; done
if [ "$real" = 1 ]; then stop apiserver-proxy; fi
for c in kube-apiserver etcd; do stop "$c"; done
if [ ${#stopped[@]} -gt 0 ]; then log "stopped ${stopped[*]}"; else log "no component was running"; fi

if [ "$real" = 1 ]; then
  node_host_down
  log "removed the real node's bridge, routes, iptables chains and cgroups; sysctls restored"
fi

if [ ! -d "$state" ]; then exit 0; fi
if $keep_state; then log "kept $state"; else rm -rf "$state"; log "removed $state"; fi
