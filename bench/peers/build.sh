#!/usr/bin/env bash
# Builds, once, the peers SafeRollout is measured against (bench/peers.py): Flagger and the Argo Rollouts controller
# and kubectl plugin, from Go modules, cached like cluster/build.sh caches Kubernetes. Bench tooling: not part of
# `make test` (together ~27 min and ~9 GB of module cache when cold). Never vendored into the repository.
#
# Flagger has no replace directives: a plain `go install` of its version. Argo Rollouts pins k8s.io/* with replace
# directives and needs a newer Go than the machine's: a tools module is written at build time with exactly the
# replace block of Argo Rollouts' own go.mod (read from the module proxy's copy), and the build runs under
# GOTOOLCHAIN=go1.27.3, which the go command fetches from the module proxy like any module.
# Output: $SR_PEERS_BIN (default <repo>/.cache/bin/peers/<name>-<version>/); a second run returns at once; a failed
# build exits non-zero with the reason, it is never skipped. The CRDs are taken from the modules' own directories.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
FLAGGER_VERSION=${FLAGGER_VERSION:-v1.36.1}
ROLLOUTS_VERSION=${ROLLOUTS_VERSION:-v1.10.2}
ROLLOUTS_GO=${ROLLOUTS_GO:-go1.27.3}
out=${SR_PEERS_BIN:-$repo/.cache/bin/peers}
shared=${SR_SHARED_CACHE_PEERS:-$HOME/.cache/saferollout/bin/peers}
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

die() { echo "bench/peers/build.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not installed"

cached() {  # cached <dir> <binary>...: found here, or copied from the machine-wide cache
  local dir=$1; shift
  local b ok=1
  for b in "$@"; do [ -x "$out/$dir/$b" ] || ok=0; done
  [ $ok = 1 ] && return 0
  ok=1
  for b in "$@"; do [ -x "$shared/$dir/$b" ] || ok=0; done
  [ $ok = 1 ] || return 1
  mkdir -p "$out/$dir" && cp -pr "$shared/$dir/." "$out/$dir/" && echo "$dir copied from machine cache"
}

keep() {  # keep <dir>: into the machine-wide cache, which survives fresh clones on this machine
  mkdir -p "$shared/$1.tmp" && cp -pr "$out/$1/." "$shared/$1.tmp/" && rm -rf "${shared:?}/$1" \
    && mv "$shared/$1.tmp" "$shared/$1"
}

crds_of() {  # crds_of <module@version> <path in module> <dest>
  local dir
  dir=$(go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] && [ -e "$dir/$2" ] || die "no $2 in $1"
  rm -rf "$3" && mkdir -p "$3" && cp -r "$dir/$2" "$3/" && chmod -R u+w "$3"
}

flagger() {
  local dir=flagger-$FLAGGER_VERSION start
  cached "$dir" flagger && { echo "flagger cached in $out/$dir"; return; }
  start=$(date +%s)
  echo "building flagger $FLAGGER_VERSION"
  mkdir -p "$out/$dir"
  GOBIN="$out/$dir" go install "github.com/fluxcd/flagger/cmd/flagger@$FLAGGER_VERSION" \
    || die "building flagger $FLAGGER_VERSION failed (see the go output above)"
  (cd /tmp && crds_of "github.com/fluxcd/flagger@$FLAGGER_VERSION" artifacts/flagger/crd.yaml "$out/$dir/crds")
  keep "$dir"
  echo "flagger built in $(( $(date +%s) - start ))s into $out/$dir"
}

rollouts() {
  local dir=argo-rollouts-$ROLLOUTS_VERSION start mod gomod
  cached "$dir" rollouts-controller kubectl-argo-rollouts && { echo "argo-rollouts cached in $out/$dir"; return; }
  start=$(date +%s)
  echo "building argo-rollouts $ROLLOUTS_VERSION under $ROLLOUTS_GO"
  export GOTOOLCHAIN=$ROLLOUTS_GO
  mod=$repo/.cache/peers-src/argo-rollouts-$ROLLOUTS_VERSION
  mkdir -p "$mod" "$out/$dir"
  gomod=$(cd /tmp && go mod download -json "github.com/argoproj/argo-rollouts@$ROLLOUTS_VERSION" \
    | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "cannot download github.com/argoproj/argo-rollouts@$ROLLOUTS_VERSION"
  {
    echo "module saferollout.dev/bench/peers/argo-rollouts"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require github.com/argoproj/argo-rollouts $ROLLOUTS_VERSION"
    echo
    awk '/^replace \($/ {on=1} on {print} on && /^\)$/ {exit}' "$gomod"
  } > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/argoproj/argo-rollouts/cmd/kubectl-argo-rollouts"\n\t_ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"\n)\n' > "$mod/tools.go"
  (cd "$mod" && go mod tidy) || die "go mod tidy of the argo-rollouts tools module failed"
  (cd "$mod" && go build -trimpath -o "$out/$dir/" github.com/argoproj/argo-rollouts/cmd/rollouts-controller \
    github.com/argoproj/argo-rollouts/cmd/kubectl-argo-rollouts) \
    || die "building argo-rollouts $ROLLOUTS_VERSION failed (see the go output above)"
  (cd "$mod" && crds_of "github.com/argoproj/argo-rollouts@$ROLLOUTS_VERSION" manifests/crds "$out/$dir/crds")
  rm -f "$out/$dir/crds/crds/kustomization.yaml"  # applied file by file: the kustomization is not a manifest
  keep "$dir"
  echo "argo-rollouts built in $(( $(date +%s) - start ))s into $out/$dir"
}

case "${1:-all}" in
  flagger) flagger ;;
  argo-rollouts) rollouts ;;
  all) flagger; rollouts ;;
  *) die "usage: bench/peers/build.sh [flagger|argo-rollouts|all]" ;;
esac
