#!/usr/bin/env bash
# `make image`: builds the operator image from the Dockerfile with buildah, no Docker engine, no container registry.
#   1. installs buildah, podman, debootstrap with apt-get when missing;
#   2. writes a containers.conf under .cache/ (the machine's limits) and points CONTAINERS_CONF at it;
#   3. makes the Dockerfile's base image locally (scripts/base-image.sh, cached);
#   4. buildah bud --pull=never --layers: saferollout/operator:<chart appVersion> in the root containers storage.
#      The build sees the machine's apt sources, CA bundle and pip index settings (bind mounts, build args);
#      none of them is written into the image;
#   5. exports it for containerd (`ctr -n k8s.io images import`): .cache/images/saferollout-operator-<version>.tar;
#      and the demo app image the scenarios' real pods run (harness/demoapp.Containerfile, on top of the operator
#      image): saferollout/demoapp:<version>, .cache/images/saferollout-demoapp-<version>.tar;
#   6. smoke test: podman run as uid 10001, read-only root, tmpfs /tmp, no network: --help and pg_dump --version.
# Env: IMAGE_SMOKE=0 skips step 6. DEBIAN_RELEASE=trixie builds the PostgreSQL 17 client variant (tag -pg17)
# when the machine has trixie apt sources.
set -euo pipefail
trap 'echo "scripts/image.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

die() { echo "scripts/image.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
t_all=$(now)

[ "$(id -u)" = 0 ] || die "needs root: apt-get, debootstrap and the root containers storage"

# --- 1. tools -------------------------------------------------------------------------------------------------
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
# runc, not crun: crun 1.8 refuses this machine's hybrid cgroups ("cgroups in hybrid mode not supported, drop
# all controllers from cgroupv2"), runc runs on the v1 hierarchies.
command -v runc >/dev/null || need+=(runc)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  t=$(now); mkdir -p .cache/images
  echo "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >.cache/images/apt.log 2>&1 \
    || { tail -n 20 .cache/images/apt.log >&2; die "apt-get install ${need[*]} failed"; }
  echo "installed ${need[*]} in $(since "$t")"
fi

# --- 2. containers.conf -----------------------------------------------------------------------------------------
# Without CAP_SYS_RESOURCE a container cannot get more open files or processes than the hard limits here, and
# podman's defaults ask for more (runc: "error setting rlimit type 7: operation not permitted"). PID 1 is not
# systemd: cgroupfs, events to a file. The runtime is runc (see above).
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
mkdir -p .cache/containers .cache/images
export CONTAINERS_CONF=$repo/.cache/containers/containers.conf
cat >"$CONTAINERS_CONF.tmp" <<EOF
# written by scripts/image.sh: this machine's limits (no CAP_SYS_RESOURCE), no systemd
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"

# --- 3. base image ----------------------------------------------------------------------------------------------
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/saferollout/Chart.yaml)
[ -n "$version" ] || die "no appVersion in charts/saferollout/Chart.yaml"
default_release=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' Dockerfile | head -n1)
release=${DEBIAN_RELEASE:-$default_release}
case $release in
  "$default_release") tag=$version ;;
  trixie) tag=$version-pg17 ;;
  *) tag=$version-$release ;;
esac
image=saferollout/operator:$tag
export DEBIAN_RELEASE=$release
t=$(now)
bash scripts/base-image.sh || die "the base image could not be made (see above)"
echo "base image: $(since "$t")"

# --- 4. build ---------------------------------------------------------------------------------------------------
# --network=host: no CNI network (and so no iptables rules) for the build's RUN steps.
args=(--pull=never --layers --force-rm --runtime=runc --network=host --format=oci -f Dockerfile -t "$image"
      --build-arg "DEBIAN_RELEASE=$release")
# pip's settings on this machine: `pip config list` shows its files' and PIP_* variables' values (":env:").
pipconf=$( (command -v pip3 >/dev/null && pip3 config list) 2>/dev/null || true)
pipget() {
  local key scope v
  for scope in ':env:' install global; do
    for key in "$@"; do
      v=$(printf '%s\n' "$pipconf" | sed -n "s/^${scope}\.${key}='\(.*\)'\$/\1/p" | head -n1)
      [ -z "$v" ] || { echo "$v"; return 0; }
    done
  done
}
# The machine's CA bundle (pip's, else the system's), read-only, for RUN steps only; and the apt sources.
ca=${PIP_CERT:-$(pipget cert)}
ca=${ca:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
[ -f "$ca" ] || die "no CA bundle at $ca"
args+=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
sources=$(bash scripts/base-image.sh --sources) || die "no apt sources for the build (see above)"
while read -r f; do args+=(--volume "$f:$f:ro"); done <<<"$sources"
# pip's index settings as build args, never into a file. Build args show in `podman history`: an index URL with
# credentials in it would be visible there.
pipset() {
  local var=$1 v; shift
  v=${!var:-$(pipget "$@")}
  [ -z "$v" ] || args+=(--build-arg "$var=$(echo "$v" | tr '\n' ' ' | sed 's/ *$//')")
}
pipset PIP_INDEX_URL index-url
pipset PIP_EXTRA_INDEX_URL extra-index-url
pipset PIP_TRUSTED_HOST trusted-host
pipset PIP_DEFAULT_TIMEOUT default-timeout timeout

old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
t=$(now)
log=.cache/images/build.log
echo "buildah bud $image (log: $log)"
if ! buildah bud "${args[@]}" . >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "buildah bud failed (full log: $log)"
fi
id=$(podman image inspect --format '{{.Id}}' "$image") || die "buildah reported success but $image is not in the storage"
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "built $image (${id:0:12}, $(numfmt --to=si "$size")B) in $(since "$t")"
# The previous build and its untagged layers, unless something else still uses them.
if [ -n "$old" ] && [ "$old" != "$id" ]; then
  if podman rmi "$old" >/dev/null 2>&1; then echo "removed the previous build ${old:0:12}"
  else echo "kept the previous build ${old:0:12} (tagged or in use elsewhere)"; fi
fi

# --- 5. export for containerd, and the demo app image --------------------------------------------------------------
# export <image> <archive>: docker-archive for `ctr images import`, redone only when the image changed.
export_image() {
  local image=$1 out=$2 id t
  t=$(now)
  id=$(podman image inspect --format '{{.Id}}' "$image") || die "$image is not in the storage"
  if [ -f "$out" ] && [ "$(cat "$out.id" 2>/dev/null)" = "$id" ]; then
    echo "export $out: up to date"
  else
    rm -f "$out" "$out.id"
    podman save -q --format docker-archive -o "$out.tmp" "$image" || die "podman save $image failed"
    mv "$out.tmp" "$out"
    echo "$id" >"$out.id"
    echo "exported $out ($(du -h "$out" | cut -f1)) in $(since "$t")"
  fi
}
export_image "$image" ".cache/images/saferollout-operator-$tag.tar"
demo=saferollout/demoapp:$tag
t=$(now)
if ! buildah bud --pull=never --layers --force-rm --runtime=runc --network=host --format=oci \
    -f harness/demoapp.Containerfile --build-arg "BASE=$image" -t "$demo" harness >.cache/images/demoapp-build.log 2>&1; then
  tail -n 30 .cache/images/demoapp-build.log >&2
  die "buildah bud $demo failed (full log: .cache/images/demoapp-build.log)"
fi
echo "built $demo in $(since "$t")"
export_image "$demo" ".cache/images/saferollout-demoapp-$tag.tar"

# --- 6. smoke test ----------------------------------------------------------------------------------------------
if [ "${IMAGE_SMOKE:-1}" != 0 ]; then
  t=$(now)
  # --network=none: no CNI network, no iptables rules.
  # shellcheck disable=SC2054  # the commas are tmpfs options
  run=(podman run --rm --read-only --tmpfs /tmp:rw,nosuid,nodev --user 10001:10001 --network=none --cap-drop=ALL
       --security-opt=no-new-privileges)
  [ "$("${run[@]}" --entrypoint id "$image" -u)" = 10001 ] || die "the image does not run as uid 10001"
  "${run[@]}" --entrypoint python "$image" -m saferollout --help >/dev/null \
    || die "podman run ... python -m saferollout --help failed"
  pg=$("${run[@]}" --entrypoint pg_dump "$image" --version) || die "podman run ... pg_dump --version failed"
  "${run[@]}" --entrypoint pg_restore "$image" --version >/dev/null || die "podman run ... pg_restore --version failed"
  "${run[@]}" "$demo" --help >/dev/null || die "podman run $demo --help failed"
  echo "smoke test (uid 10001, read-only root, tmpfs /tmp): saferollout --help ok, $pg, demoapp --help ok, in $(since "$t")"
fi
echo "make image: $image ready in $(since "$t_all")"
