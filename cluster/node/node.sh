# shellcheck shell=bash
# The real node of the local test cluster (SR_REAL_NODE=1): containerd (Debian's), runc, a CNI bridge,
# kubelet and kube-proxy, beside the kwok fake nodes. Sourced by cluster/up.sh and cluster/down.sh, which set
# $repo, $bin, $state, $service_cidr, $pod_cidr, $apiserver_port and the helpers log and die.
#
# Everything machine-wide that it touches (the bridge and the sink device, routes, a routing rule and table,
# iptables chains of kube-proxy, sysctls, the kubepods cgroups) is named by a setting below, recorded in
# $state/node/ at start, and undone by node_host_down. Nothing may leave the machine:
# - the pods' subnet is on a bridge of its own; the address the API server is reached at from pods and the
#   kubelet's port are on that bridge (its gateway address), everything else listens on 127.0.0.1;
# - the bridge forwards (net.ipv4.conf.<bridge>.forwarding=1) but the machine does not (net.ipv4.ip_forward
#   stays as it was), and whatever the pods send is routed by a table of its own that knows only the bridge's
#   subnet and, for everything else, a blackhole;
# - the pod CIDRs (the real node's and kwok's) are blackholed; the Service CIDR is routed to a sink device (an
#   ifb, which drops every packet not redirected to it by tc; this kernel has no dummy driver): a blackhole route
#   would fail the host's connect() to a ClusterIP before kube-proxy's DNAT in the OUTPUT chain could rewrite it;
# - pods get no default route, no masquerading, no host DNS configuration.

# Settings read from the environment, or at stop from what the start recorded.
node_keys=(SR_NODE_NAME SR_NODE_BRIDGE SR_NODE_SINK SR_NODE_POD_CIDR SR_NODE_SUBNET SR_NODE_ROUTE_TABLE
  SR_KUBELET_PORT SR_KUBELET_HEALTHZ_PORT SR_KUBE_PROXY_HEALTHZ_PORT SR_KUBE_PROXY_METRICS_PORT
  SR_SERVICE_CIDR SR_POD_CIDR SR_APISERVER_PORT)
declare -A node_saved=()
node_components=(containerd apiserver-proxy kubelet kube-proxy)
node_cni_name=saferollout
# Sysctls recorded before anything changes and restored at stop: those set here, and those a kubelet or
# kube-proxy could set if configured otherwise (they are configured not to).
node_sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv6.conf.all.forwarding
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_be_liberal)
# What the kubelet requires (it checks them, protectKernelDefaults, instead of setting them itself), and what
# the bridge needs so that Service traffic between two pods on it passes kube-proxy's rules.
node_sysctl_set=(vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1
  kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000 net.bridge.bridge-nf-call-iptables=1)
# Machine-wide directories the kubelet (its log symlinks, its device-plugin socket, whatever --root-dir says),
# containerd's shims (their sockets) and CNI (its results) create; removed at stop if the start made them.
node_host_dirs=(/var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd)

node_setting() {  # <key> <default>: recorded value, else environment, else default
  local key=$1 def=$2
  if [ -n "${node_saved[$key]+x}" ]; then printf '%s\n' "${node_saved[$key]}"
  else printf '%s\n' "${!key:-$def}"; fi
}

ip4_int() { local IFS=. a b c d; read -r a b c d <<<"$1"; echo $(( (a << 24) | (b << 16) | (c << 8) | d )); }
int_ip4() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }
valid_cidr() {
  local ip=${1%/*} o
  [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/([0-9]|[12][0-9]|3[0-2])$ ]] || return 1
  for o in ${ip//./ }; do [ "$o" -le 255 ] || return 1; done
}
cidr_net() {  # 10.244.0.1/16 -> 10.244.0.0/16
  local len=${1#*/} mask
  mask=$(( len == 0 ? 0 : (0xffffffff << (32 - len)) & 0xffffffff ))
  echo "$(int_ip4 $(( $(ip4_int "${1%/*}") & mask )))/$len"
}
cidr_within() { [ "${1#*/}" -ge "${2#*/}" ] && [ "$(cidr_net "${1%/*}/${2#*/}")" = "$(cidr_net "$2")" ]; }
cidr_overlap() { cidr_within "$1" "$2" || cidr_within "$2" "$1"; }

# Sets the node's variables and checks them (names and numbers only: they become arguments, never code).
node_settings() {
  node_name=$(node_setting SR_NODE_NAME sr-real-node)
  node_bridge=$(node_setting SR_NODE_BRIDGE srbr0)
  node_sink=$(node_setting SR_NODE_SINK srsink0)
  node_pod_cidr=$(node_setting SR_NODE_POD_CIDR 10.240.0.0/16)
  node_subnet=$(node_setting SR_NODE_SUBNET 10.240.0.0/24)
  node_table=$(node_setting SR_NODE_ROUTE_TABLE 3626)
  kubelet_port=$(node_setting SR_KUBELET_PORT 20250)
  kubelet_healthz_port=$(node_setting SR_KUBELET_HEALTHZ_PORT 20248)
  proxy_healthz_port=$(node_setting SR_KUBE_PROXY_HEALTHZ_PORT 20256)
  proxy_metrics_port=$(node_setting SR_KUBE_PROXY_METRICS_PORT 20249)
  node_service_cidr=$(node_setting SR_SERVICE_CIDR "$service_cidr")
  node_kwok_cidr=$(node_setting SR_POD_CIDR "$pod_cidr")
  node_apiserver_port=$(node_setting SR_APISERVER_PORT "$apiserver_port")
  local v
  [[ $node_name =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "SR_NODE_NAME '$node_name' is not a DNS label"
  for v in "$node_bridge" "$node_sink"; do
    [[ $v =~ ^[a-z][a-z0-9]{0,14}$ ]] || die "interface name '$v' (SR_NODE_BRIDGE, SR_NODE_SINK): [a-z][a-z0-9], at most 15"
  done
  [ "$node_bridge" != "$node_sink" ] || die "SR_NODE_BRIDGE and SR_NODE_SINK must differ"
  for v in "$node_pod_cidr" "$node_subnet" "$node_service_cidr" "$node_kwok_cidr"; do
    valid_cidr "$v" || die "'$v' is not an IPv4 CIDR (SR_NODE_POD_CIDR, SR_NODE_SUBNET, SR_SERVICE_CIDR, SR_POD_CIDR)"
  done
  for v in "$node_table" "$kubelet_port" "$kubelet_healthz_port" "$proxy_healthz_port" "$proxy_metrics_port" \
           "$node_apiserver_port"; do
    if ! [[ $v =~ ^[1-9][0-9]{0,4}$ ]] || [ "$v" -gt 65535 ]; then
      die "'$v' is not a port or table number (SR_KUBELET_*, SR_KUBE_PROXY_*, SR_NODE_ROUTE_TABLE)"
    fi
  done
  node_pod_cidr=$(cidr_net "$node_pod_cidr")
  node_subnet=$(cidr_net "$node_subnet")
  node_service_net=$(cidr_net "$node_service_cidr")
  node_kwok_net=$(cidr_net "$node_kwok_cidr")
  [ "${node_subnet#*/}" -le 30 ] || die "SR_NODE_SUBNET $node_subnet is too small"
  cidr_within "$node_subnet" "$node_pod_cidr" || die "SR_NODE_SUBNET $node_subnet must lie inside SR_NODE_POD_CIDR $node_pod_cidr"
  ! cidr_overlap "$node_pod_cidr" "$node_service_net" || die "SR_NODE_POD_CIDR $node_pod_cidr overlaps the Service CIDR"
  ! cidr_overlap "$node_pod_cidr" "$node_kwok_net" || die "SR_NODE_POD_CIDR $node_pod_cidr overlaps kwok's SR_POD_CIDR"
  # The bridge's gateway address: the node's InternalIP, the kubelet's address, the API server's endpoint.
  node_ip=$(int_ip4 $(( $(ip4_int "${node_subnet%/*}") + 1 )))
  node_dir=$state/node
  ctr_sock=$node_dir/containerd/containerd.sock
  [ ${#ctr_sock} -lt 100 ] || die "the state dir path is too long for containerd's socket ($ctr_sock); set a shorter SR_STATE_DIR"
}

node_load_settings() {  # the settings recorded by the start (key=value, known keys only), if any
  local f=$state/node/settings line key k
  node_saved=()
  [ -s "$f" ] || return 1
  while IFS= read -r line; do
    key=${line%%=*}
    for k in "${node_keys[@]}"; do if [ "$k" = "$key" ]; then node_saved[$key]=${line#*=}; fi; done
  done <"$f"
  return 0
}
node_save_settings() {
  local k v
  mkdir -p "$node_dir"
  for k in "${node_keys[@]}"; do
    case $k in
      SR_NODE_NAME) v=$node_name ;; SR_NODE_BRIDGE) v=$node_bridge ;; SR_NODE_SINK) v=$node_sink ;;
      SR_NODE_POD_CIDR) v=$node_pod_cidr ;; SR_NODE_SUBNET) v=$node_subnet ;; SR_NODE_ROUTE_TABLE) v=$node_table ;;
      SR_KUBELET_PORT) v=$kubelet_port ;; SR_KUBELET_HEALTHZ_PORT) v=$kubelet_healthz_port ;;
      SR_KUBE_PROXY_HEALTHZ_PORT) v=$proxy_healthz_port ;; SR_KUBE_PROXY_METRICS_PORT) v=$proxy_metrics_port ;;
      SR_SERVICE_CIDR) v=$node_service_cidr ;; SR_POD_CIDR) v=$node_kwok_cidr ;;
      SR_APISERVER_PORT) v=$node_apiserver_port ;;
    esac
    printf '%s=%s\n' "$k" "$v"
  done >"$node_dir/settings.tmp"
  mv "$node_dir/settings.tmp" "$node_dir/settings"
}

# node_marker <component>: what a live process of the component has in its command line.
node_marker() {
  case $1 in
    containerd) echo "$(command -v containerd || echo /usr/bin/containerd) --config $node_dir/containerd.toml" ;;
    apiserver-proxy) echo "$(command -v socat || echo /usr/bin/socat) TCP-LISTEN:$node_apiserver_port,bind=$node_ip," ;;
    kubelet) echo "$bin/kubelet --config $node_dir/kubelet.yaml" ;;
    kube-proxy) echo "$bin/kube-proxy --config $node_dir/kube-proxy.yaml" ;;
  esac
}

# node_find <component>: the pid of a running process of the component, found by its command line (for a stop
# whose pid file is gone). One grep reads every command line for an argument only this node's process has.
node_find() {
  local key f p
  case $1 in
    containerd) key=$node_dir/containerd.toml ;;
    apiserver-proxy) key="TCP-LISTEN:$node_apiserver_port,bind=$node_ip," ;;
    kubelet) key=$node_dir/kubelet.yaml ;;
    kube-proxy) key=$node_dir/kube-proxy.yaml ;;
    *) return 1 ;;
  esac
  for f in $(grep -lzF -- "$key" /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}; p=${p%/cmdline}
    if proc_has "$p" "$(node_marker "$1")"; then echo "$p"; return 0; fi
  done
  return 1
}

# --- checks before the start ---------------------------------------------------------------------------------
node_check_host() {
  local c missing=()
  [ "$(id -u)" = 0 ] || die "the real node needs root (containerd, the bridge, iptables, cgroups); SR_REAL_NODE=0 starts a cluster of kwok nodes only"
  for c in containerd containerd-shim-runc-v2 ctr runc ip iptables ip6tables iptables-restore socat sysctl \
           mountpoint gcc go conntrack; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  for c in bridge host-local loopback; do [ -x "/usr/lib/cni/$c" ] || missing+=("/usr/lib/cni/$c"); done
  [ ${#missing[@]} -eq 0 ] || die "the real node needs ${missing[*]}: run scripts/system-deps.sh as root (make deps)"
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || die "no br_netfilter (net.bridge.bridge-nf-call-iptables): kube-proxy's rules would miss pod-to-pod Service traffic"
  for c in kubelet kube-proxy; do [ -x "$bin/$c" ] || die "missing binary $bin/$c after cluster/build.sh"; done
}

# The machine must not already use the node's names and address ranges (other than by a previous run of ours,
# which down.sh removes first).
node_check_free() {
  local cidr
  for cidr in "$node_pod_cidr" "$node_service_net" "$node_kwok_net"; do
    if [ -n "$(ip -4 route show table all root "$cidr" 2>/dev/null)" ] || [ -n "$(ip -4 -o addr show to "$cidr")" ]; then
      die "$cidr is already used on this machine (ip route / ip addr); choose other ranges (SR_NODE_POD_CIDR, SR_SERVICE_CIDR, SR_POD_CIDR)"
    fi
  done
  for cidr in $(ip -4 -o addr show | awk '{print $4}'); do
    if cidr_overlap "$(cidr_net "$cidr")" "$node_pod_cidr" || cidr_overlap "$(cidr_net "$cidr")" "$node_service_net"; then
      die "address $cidr on this machine overlaps the real node's ranges; choose other ranges"
    fi
  done
  if [ -n "$(ip rule show priority "$node_table")" ] || [ -n "$(ip route show table "$node_table" 2>/dev/null)" ]; then
    die "routing rule priority or table $node_table is in use; choose another with SR_NODE_ROUTE_TABLE"
  fi
}

node_leftovers() {  # true if a previous run left something machine-wide behind
  ip link show dev "$node_bridge" >/dev/null 2>&1 || ip link show dev "$node_sink" >/dev/null 2>&1 ||
    [ -n "$(ip rule show priority "$node_table")" ] ||
    [ -n "$(ip route show type blackhole root "$node_pod_cidr" 2>/dev/null)" ] ||
    [ -d /sys/fs/cgroup/memory/kubepods ]
}

# --- host setup -----------------------------------------------------------------------------------------------
node_host_up() {
  local kv key d
  mkdir -p "$node_dir"
  node_save_settings
  # Old values first, once: a failed start and the stop after it restore from this file.
  if [ ! -s "$node_dir/sysctl.saved" ]; then
    for key in "${node_sysctls[@]}"; do
      if [ -e "/proc/sys/${key//.//}" ]; then printf '%s %s\n' "$key" "$(sysctl -n "$key")"; fi
    done >"$node_dir/sysctl.saved.tmp"
    mv "$node_dir/sysctl.saved.tmp" "$node_dir/sysctl.saved"
    for d in "${node_host_dirs[@]}"; do if [ ! -e "$d" ]; then echo "$d"; fi; done >"$node_dir/created-dirs"
  fi
  for kv in "${node_sysctl_set[@]}"; do sysctl -qw "$kv"; done

  ip link add "$node_bridge" type bridge
  sysctl -qw "net.ipv6.conf.$node_bridge.disable_ipv6=1"
  ip addr add "$node_ip/${node_subnet#*/}" dev "$node_bridge"
  ip link set "$node_bridge" up
  sysctl -qw "net.ipv4.conf.$node_bridge.forwarding=1"
  ip link add "$node_sink" type ifb
  sysctl -qw "net.ipv6.conf.$node_sink.disable_ipv6=1"
  ip link set "$node_sink" up
  # Host-to-ClusterIP: routed to the sink (so connect() succeeds and kube-proxy's OUTPUT DNAT can rewrite it),
  # from the node's address; a packet no rule rewrote dies in the sink.
  ip route add "$node_service_net" dev "$node_sink" src "$node_ip"
  ip route add blackhole "$node_pod_cidr"
  if ! cidr_within "$node_kwok_net" "$node_pod_cidr"; then ip route add blackhole "$node_kwok_net"; fi
  # What comes in from the pods is routed by this table only: the bridge's subnet, else dropped.
  ip route add "$node_subnet" dev "$node_bridge" table "$node_table"
  ip route add blackhole default table "$node_table"
  ip rule add iif "$node_bridge" lookup "$node_table" priority "$node_table"
}

node_write_configs() {  # containerd, CNI, kubelet, kube-proxy (the pki is up.sh's)
  local pause_image=$1
  mkdir -p "$node_dir/containerd" "$node_dir/cni/net.d" "$node_dir/cni/ipam" "$node_dir/kubelet" \
    "$node_dir/pod-logs" "$node_dir/volume-plugins"
  cat >"$node_dir/containerd.toml" <<EOF
version = 2
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$ctr_sock"
  tcp_address = ""

[ttrpc]
  address = ""

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "$node_dir/containerd/runc-v1"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$node_dir/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  cat >"$node_dir/cni/net.d/10-$node_cni_name.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$node_cni_name",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node_dir/cni/ipam",
        "ranges": [[{"subnet": "$node_subnet", "gateway": "$node_ip"}]],
        "routes": [{"dst": "$node_service_net"}]
      }
    }
  ]
}
EOF
  cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$ctr_sock
imageServiceEndpoint: unix://$ctr_sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
makeIPTablesUtilChains: false
oomScoreAdj: 0
registerNode: true
registerWithTaints:
- {key: saferollout.dev/real-node, value: "true", effect: NoSchedule}
podLogsDir: $node_dir/pod-logs
volumePluginDir: $node_dir/volume-plugins
resolvConf: ""
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
shutdownGracePeriod: 0s
EOF
  cat >"$node_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
hostnameOverride: $node_name
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$proxy_healthz_port
metricsBindAddress: 127.0.0.1:$proxy_metrics_port
enableProfiling: false
clusterCIDR: $node_pod_cidr
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$node_ip/32"]
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false, syncPeriod: 30s, minSyncPeriod: 1s}
EOF
}

# --- teardown (idempotent; also after a failed or half-done start) --------------------------------------------
# proc_has <pid> <string>: the process's command line contains the string.
proc_has() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "$2"; }

node_cgroup_dirs() {  # the kubepods cgroups, deepest first
  local root
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$root" ] && find "$root" -depth -type d
  done
  return 0
}

# The pods' processes (all in the kubepods cgroups), then the shims of this containerd.
node_kill_pods() {
  local d p i f
  local -A procs
  for i in $(seq 1 50); do
    procs=()
    while IFS= read -r d; do  # each v1 hierarchy lists the same processes
      [ -r "$d/cgroup.procs" ] || continue
      while IFS= read -r p; do procs[$p]=1; done <"$d/cgroup.procs"
    done < <(node_cgroup_dirs)
    [ ${#procs[@]} -gt 0 ] || break
    [ "$i" -gt 1 ] || log "killing ${#procs[@]} pod process(es) of the real node"
    kill -KILL "${!procs[@]}" 2>/dev/null || true
    sleep 0.1
  done
  # the shims: one of their arguments is exactly this containerd's socket
  for f in $(grep -lzxF -- "$ctr_sock" /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}; p=${p%/cmdline}
    if proc_has "$p" "containerd-shim-runc-v2 -namespace"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}

node_unmount() {  # every mount under the state dir (overlay rootfs, shm, netns, kubelet volumes), deepest first
  local mp i left
  for i in 1 2 3 4 5; do
    left=0
    while IFS= read -r mp; do
      left=1
      umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done < <(awk -v s="$state/" '{ if (index($5, s) == 1) print length($5), $5 }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)
    [ "$left" = 1 ] || return 0
  done
  log "warning: mounts left under $state: $(awk -v s="$state/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | tr '\n' ' ')"
}

# iptables: every rule that jumps from a built-in chain to a KUBE-* chain, then those chains (kube-proxy's;
# the kubelet makes none, makeIPTablesUtilChains: false). The CNI bridge makes none either (ipMasq: false).
# stderr is dropped: iptables-nft warns on every call once any legacy table exists; what is left is reported.
node_iptables_clean() {
  local cmd t chain num chains left=()
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for t in filter nat mangle raw; do
      "$cmd" -w 5 -t "$t" -S >/dev/null 2>&1 || continue
      for chain in $("$cmd" -w 5 -t "$t" -S 2>/dev/null | awk '$1 == "-P" { print $2 }'); do
        for num in $("$cmd" -w 5 -t "$t" -L "$chain" -n --line-numbers 2>/dev/null |
                     awk 'NR > 2 && $2 ~ /^KUBE-/ { print $1 }' | sort -rn); do
          "$cmd" -w 5 -t "$t" -D "$chain" "$num" 2>/dev/null || true
        done
      done
      chains=$("$cmd" -w 5 -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }')
      for chain in $chains; do "$cmd" -w 5 -t "$t" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$cmd" -w 5 -t "$t" -X "$chain" 2>/dev/null || true; done
      if "$cmd" -w 5 -t "$t" -S 2>/dev/null | grep -q -- 'KUBE-'; then left+=("$cmd -t $t"); fi
    done
  done
  [ ${#left[@]} -eq 0 ] || log "warning: KUBE-* rules left in ${left[*]}"
}

node_network_down() {
  local link
  while ip rule del iif "$node_bridge" lookup "$node_table" priority "$node_table" 2>/dev/null; do :; done
  ip route flush table "$node_table" 2>/dev/null || true
  if ip link show dev "$node_bridge" >/dev/null 2>&1; then
    for link in $(ip -o link show master "$node_bridge" | awk -F': ' '{ print $2 }'); do
      ip link del "${link%@*}" 2>/dev/null || true
    done
    ip link del "$node_bridge"
  fi
  if ip link show dev "$node_sink" >/dev/null 2>&1; then ip link del "$node_sink"; fi  # its Service route goes too
  ip route del blackhole "$node_pod_cidr" 2>/dev/null || true
  if [ -n "$(ip route show type blackhole root "$node_kwok_net" 2>/dev/null)" ] && ! cidr_within "$node_kwok_net" "$node_pod_cidr"; then
    ip route del blackhole "$node_kwok_net" 2>/dev/null || true
  fi
  node_iptables_clean
  if command -v conntrack >/dev/null; then  # NAT state of the pods' and Services' flows
    conntrack -D -s "$node_pod_cidr" >/dev/null 2>&1 || true
    conntrack -D -d "$node_pod_cidr" >/dev/null 2>&1 || true
    conntrack -D -d "$node_service_net" >/dev/null 2>&1 || true
  fi
}

node_host_files_down() {  # what the kubelet, the shims and CNI put outside the state dir
  local d id addr created=""
  if [ -s "$node_dir/created-dirs" ]; then created=$(cat "$node_dir/created-dirs"); fi
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$node_dir/pod-logs/*" -delete
  fi
  # containerd 1.6 puts each shim's socket in /run/containerd/s/, named in the task's address file
  for d in "$node_dir/containerd/state/io.containerd.runtime.v2.task/k8s.io"/*/; do
    [ -s "$d/address" ] || continue
    addr=$(cat "$d/address")
    if [[ $addr =~ ^unix:///run/containerd/s/[0-9a-f]{64}$ ]]; then rm -f "${addr#unix://}"; fi
  done
  # libcni's results: <network>-<sandbox id>-<interface>, and the loopback's cni-loopback-<sandbox id>-lo
  rm -f "/var/lib/cni/results/$node_cni_name"-*
  for d in "$node_dir/containerd/root/io.containerd.grpc.v1.cri/sandboxes"/*/; do
    id=$(basename "$d")
    if [[ $id =~ ^[0-9a-f]{64}$ ]]; then rm -f "/var/lib/cni/results/cni-loopback-$id-lo"; fi
  done
  # The kubelet's device-plugin socket and checkpoint are always under /var/lib/kubelet (not --root-dir).
  if grep -qx /var/lib/kubelet <<<"$created"; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  fi
  while IFS= read -r d; do
    case $d in /var/log/containers|/var/lib/kubelet|/var/lib/cni|/run/containerd)
      if [ -d "$d" ]; then find "$d" -depth -type d -empty -delete; fi ;;
    esac
  done <<<"$created"
  return 0
}

node_sysctl_restore() {
  local f=$node_dir/sysctl.saved key value
  [ -s "$f" ] || return 0
  while read -r key value; do
    [[ $key =~ ^[a-z0-9_.-]+$ && $value =~ ^[0-9]+$ ]] || continue
    [ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] || sysctl -qw "$key=$value" || log "could not restore $key=$value"
  done <"$f"
  mv "$f" "$f.restored"
}

# After the node's processes are stopped: pods, shims, mounts, network, iptables, cgroups, files, sysctls.
node_host_down() {
  local d
  node_kill_pods
  node_unmount
  node_network_down
  while IFS= read -r d; do rmdir "$d" 2>/dev/null || true; done < <(node_cgroup_dirs)
  if [ -n "$(node_cgroup_dirs)" ]; then log "warning: kubepods cgroups left: $(node_cgroup_dirs | head -n 3 | tr '\n' ' ')"; fi
  node_host_files_down
  node_sysctl_restore
  return 0
}
