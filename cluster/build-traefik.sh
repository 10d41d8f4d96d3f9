#!/usr/bin/env bash
# Builds, once, Traefik (the e2e harness's real Gateway API data plane, see harness/traefik.py) from Go modules and
# caches it. The module is cluster/tools/traefik: it requires github.com/traefik/traefik/v3 with Traefik's own
# replace and exclude lines, without which the build fails.
# Output: $SR_TRAEFIK_BIN (default <repo>/.cache/bin/traefik-<version>/traefik). A second run finds it and returns
# at once; a failed build exits non-zero with the reason, it is never skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
dir=${SR_TRAEFIK_BIN:-$repo/.cache/bin/traefik-$TRAEFIK_VERSION}
# A machine-wide copy survives fresh clones of the repo on the same machine (CI clones anew each run).
shared=${SR_SHARED_CACHE_TRAEFIK:-$HOME/.cache/saferollout/bin/traefik-$TRAEFIK_VERSION}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

die() { echo "cluster/build-traefik.sh: $*" >&2; exit 1; }

mkdir -p "$dir"
if [ -x "$dir/traefik" ]; then echo "traefik cached in $dir"; exit 0; fi
if [ -x "$shared/traefik" ]; then
  cp -p "$shared/traefik" "$dir/traefik" && echo "traefik copied from machine cache $shared" && exit 0
fi
command -v go >/dev/null || die "go is not installed; it is needed to build traefik"
mod=$here/tools/traefik
[ -f "$mod/go.mod" ] || die "missing $mod/go.mod"
grep -q "github.com/traefik/traefik/v3 $TRAEFIK_VERSION\$" "$mod/go.mod" \
  || die "$mod/go.mod does not require github.com/traefik/traefik/v3 $TRAEFIK_VERSION (versions.env)"

start=$(date +%s)
echo "building traefik $TRAEFIK_VERSION (several minutes when the Go module cache is cold)"
pkg=github.com/traefik/traefik/v3/pkg/version
ldf="-s -w -X $pkg.Version=$TRAEFIK_VERSION -X $pkg.BuildDate=1970-01-01T00:00:00Z"
# Build to a temporary name first, so that an interrupted build never leaves a half-written binary that looks cached.
(cd "$mod" && go build -trimpath -ldflags "$ldf" -o "$dir/traefik.tmp" github.com/traefik/traefik/v3/cmd/traefik) \
  || die "building traefik $TRAEFIK_VERSION failed (see the go output above)"
"$dir/traefik.tmp" version >/dev/null || die "the built traefik does not run"
mv "$dir/traefik.tmp" "$dir/traefik"
mkdir -p "$shared" && cp -p "$dir/traefik" "$shared/traefik.tmp" && mv "$shared/traefik.tmp" "$shared/traefik"
echo "traefik built in $(( $(date +%s) - start ))s into $dir"
