#!/usr/bin/env bash
# Builds, once, Argo CD (application controller and repo-server, for the GitOps e2e tests, see tests/e2e/argocd.py)
# from Go modules and caches it. The module is cluster/tools/argocd: it requires github.com/argoproj/argo-cd/v3 with
# Argo CD's own go line and replace block, without which the build fails. The version is the one its go.mod requires.
# The binary is multi-call: it is the component its name (or ARGOCD_BINARY_NAME) says, so the output directory also
# holds the symlinks argocd-application-controller and argocd-repo-server.
# Output: $SR_ARGOCD_BIN (default <repo>/.cache/bin/argocd-<version>/). A second run finds it and returns at once;
# a failed build exits non-zero with the reason, it is never skipped. Prints nothing on stdout but the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
mod=$here/tools/argocd
die() { echo "cluster/build-argocd.sh: $*" >&2; exit 1; }
say() { echo "$*" >&2; }

[ -f "$mod/go.mod" ] || die "missing $mod/go.mod"
version=$(awk '$1 == "require" && $2 == "github.com/argoproj/argo-cd/v3" {print $3}' "$mod/go.mod")
[ -n "$version" ] || die "$mod/go.mod does not require github.com/argoproj/argo-cd/v3 on a 'require' line"
dir=${SR_ARGOCD_BIN:-$repo/.cache/bin/argocd-$version}
# A machine-wide copy survives fresh clones of the repo on the same machine (CI clones anew each run).
shared=${SR_SHARED_CACHE_ARGOCD:-$HOME/.cache/saferollout/bin/argocd-$version}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

links() {
  ln -sfn argocd "$dir/argocd-application-controller"
  ln -sfn argocd "$dir/argocd-repo-server"
}

mkdir -p "$dir"
if [ -x "$dir/argocd" ]; then links; say "argocd cached in $dir"; echo "$dir"; exit 0; fi
if [ -x "$shared/argocd" ]; then
  cp -p "$shared/argocd" "$dir/argocd.tmp" && mv "$dir/argocd.tmp" "$dir/argocd" && links
  say "argocd copied from machine cache $shared"; echo "$dir"; exit 0
fi
command -v go >/dev/null || die "go is not installed; it is needed to build argocd"

start=$(date +%s)
say "building argocd $version (about 8 minutes and 1.7 GB of Go module cache when the cache is cold)"
pkg=github.com/argoproj/argo-cd/v3/common
ldf="-s -w -X $pkg.version=${version#v} -X $pkg.buildDate=1970-01-01T00:00:00Z -X $pkg.gitTag=$version"
ldf+=" -X $pkg.gitTreeState=clean"
# Build to a temporary name first, so that an interrupted build never leaves a half-written binary that looks cached.
(cd "$mod" && go build -trimpath -ldflags "$ldf" -o "$dir/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd) >&2 \
  || die "building argocd $version failed (see the go output above)"
ARGOCD_BINARY_NAME=argocd-repo-server "$dir/argocd.tmp" --help >/dev/null \
  || die "the built argocd does not run"
mv "$dir/argocd.tmp" "$dir/argocd"
links
mkdir -p "$shared" && cp -p "$dir/argocd" "$shared/argocd.tmp" && mv "$shared/argocd.tmp" "$shared/argocd"
say "argocd built in $(( $(date +%s) - start ))s into $dir"
echo "$dir"
