#!/usr/bin/env bash
# Installs the Debian packages the tests use (real Prometheus, PostgreSQL, its client tools, Lua, and what the
# local cluster's real node runs on: containerd, runc, CNI plugins, iptables).
# Idempotent: returns at once when everything is there. Needs root (apt-get); say so clearly otherwise.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v pg_dump >/dev/null || need+=(postgresql-client)
command -v openssl >/dev/null || need+=(openssl)
command -v go >/dev/null || need+=(golang-go)
# The real node (SR_REAL_NODE=1 cluster/up.sh): the container runtime, the CNI plugins, kube-proxy's iptables and
# conntrack, the forwarder that lets pods reach the API server, and gcc with a static libc for the pause image.
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v socat >/dev/null || need+=(socat)
command -v gcc >/dev/null || need+=(gcc)
dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q 'ok installed' || need+=(libc6-dev)
# Argo CD's cache (the GitOps e2e tests run their own on a loopback port).
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "scripts/system-deps.sh: missing ${need[*]}; install them with apt-get (needs root)" >&2
  exit 1
fi
echo "installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
# RUNLEVEL=1: no package starts its service on install (Redis would take 6379, PostgreSQL 5432).
RUNLEVEL=1 apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# a postinst may still start a service; the tests run their own on loopback
pkill -x prometheus 2>/dev/null || true
