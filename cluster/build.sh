#!/usr/bin/env bash
# Builds, once, the binaries of the local test cluster from Go modules and caches them.
# No Docker engine runs on these machines, so kind is not an option: the control plane is compiled here.
# Output: $SR_BIN (default <repo>/.cache/bin/<k8s version>), with kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, kube-proxy, etcd, kwok, helm. A second run finds them there and returns at once.
# kubelet and kube-proxy are for the real node (SR_REAL_NODE=1 cluster/up.sh, see cluster/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=cluster/versions.env
source "$here/versions.env"
bin=${SR_BIN:-$repo/.cache/bin/$K8S_VERSION}
# A machine-wide copy survives fresh clones of the repo on the same machine (CI clones anew each run).
shared=${SR_SHARED_CACHE:-$HOME/.cache/saferollout/bin/$K8S_VERSION-$ETCD_VERSION-$KWOK_VERSION-$HELM_VERSION}
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
tools=("${k8s_cmds[@]}" etcd kwok helm)
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

die() { echo "cluster/build.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not installed; it is needed to build the cluster tools"

have_all() { local d=$1 t; for t in "${tools[@]}"; do [ -x "$d/$t" ] || return 1; done; }

mkdir -p "$bin"
if have_all "$bin"; then echo "cluster tools cached in $bin"; exit 0; fi
# Whatever the machine-wide copy has (a copy made before kubelet and kube-proxy were added lacks only those two).
if [ -d "$shared" ]; then
  for t in "${tools[@]}"; do
    if [ ! -x "$bin/$t" ] && [ -x "$shared/$t" ]; then cp -p "$shared/$t" "$bin/"; fi
  done
  if have_all "$bin"; then echo "cluster tools copied from machine cache $shared"; exit 0; fi
fi

start=$(date +%s)
minor=${K8S_VERSION#v1.}            # 35.4
ldf="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldf+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
  ldf+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build_k8s() {  # only the commands still missing: one go build, so the shared packages compile once
  local mod=$here/tools/k8s c pkgs=() names=()
  [ -f "$mod/go.mod" ] || die "missing $mod/go.mod"
  for c in "${k8s_cmds[@]}"; do
    [ -x "$bin/$c" ] || { pkgs+=("k8s.io/kubernetes/cmd/$c"); names+=("$c"); }
  done
  [ ${#pkgs[@]} -gt 0 ] || return 0
  echo "building kubernetes $K8S_VERSION (${names[*]})"
  (cd "$mod" && go build -trimpath -ldflags "$ldf" -o "$bin/" "${pkgs[@]}") \
    || die "building kubernetes $K8S_VERSION failed (see the go output above)"
}
build_etcd() {
  echo "building etcd $ETCD_VERSION"
  (cd "$here/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3) \
    || die "building etcd $ETCD_VERSION failed"
}
build_plain() {  # modules without replace directives install directly
  local name=$1 pkg=$2
  echo "building $name from $pkg"
  GOBIN=$bin go install -trimpath -ldflags "-s -w" "$pkg" || die "building $name ($pkg) failed"
}

[ -x "$bin/etcd" ] || build_etcd
[ -x "$bin/kwok" ] || build_plain kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
[ -x "$bin/helm" ] || build_plain helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
build_k8s
have_all "$bin" || die "after the build some tools are still missing in $bin"
mkdir -p "$shared" && cp -p "$bin"/* "$shared"/
echo "cluster tools built in $(( $(date +%s) - start ))s into $bin"
