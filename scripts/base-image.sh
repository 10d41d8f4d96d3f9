#!/usr/bin/env bash
# Makes the Dockerfile's base image (its FROM, e.g. python:3.11-slim-bookworm) without any container registry:
# a debootstrap --variant=minbase of the Dockerfile's Debian release from this machine's own apt mirror, plus
# Python 3 and pip, imported into the local containers storage under the FROM name.
#
# Cached twice: in the containers storage (a second run returns at once) and as an archive under
# ~/.cache/saferollout/images/ (a fresh clone or a wiped storage loads it in seconds instead of ~1.5 min).
# The cache key is a hash of this script: change the recipe and the image is remade.
# An image of that name that this script did not make (e.g. the real one, pulled where a registry is reachable)
# is used as it is.
#
# The image carries no apt sources and no host names: builds bind-mount the machine's apt source file
# (`scripts/base-image.sh --sources` prints it) and CA bundle read-only, see scripts/image.sh.
#
#   scripts/base-image.sh            make (or reuse) the base image
#   scripts/base-image.sh --sources  print the apt source file(s) of the Debian release, one a line
#   scripts/base-image.sh --name     print the base image's name
# Env: DEBIAN_RELEASE (default: the Dockerfile's), CONTAINERS_CONF (scripts/image.sh sets it).
set -euo pipefail
trap 'echo "scripts/base-image.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

die() { echo "scripts/base-image.sh: $*" >&2; exit 1; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dockerfile=$repo/Dockerfile

release=${DEBIAN_RELEASE:-$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$dockerfile" | head -n1)}
[ -n "$release" ] || die "no DEBIAN_RELEASE: set it or give the Dockerfile an 'ARG DEBIAN_RELEASE=...'"
from=$(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; exit } }' "$dockerfile")
[ -n "$from" ] || die "no FROM line in $dockerfile"
name=${from//\$\{DEBIAN_RELEASE\}/$release}
name=${name//\$DEBIAN_RELEASE/$release}
[[ $name != *'$'* ]] || die "cannot resolve the FROM image name '$from' (only \${DEBIAN_RELEASE} is substituted)"

# The apt entries (one-line .list and deb822 .sources) for "$release" with component main, as
# "file<TAB>uri<TAB>signed-by". Disabled deb822 paragraphs ("Enabled: no") are skipped.
apt_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v rel="$release" -v file="$f" '
      $1 == "deb" {
        i = 2; opts = ""
        if ($2 ~ /^\[/) { while (i <= NF) { opts = opts " " $i; if ($i ~ /\]$/) break; i++ } i++ }
        uri = $i; suite = $(i + 1); main = 0
        for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
        key = ""
        if (match(opts, /signed-by=[^] ]+/)) key = substr(opts, RSTART + 10, RLENGTH - 10)
        if (suite == rel && main) printf "%s\t%s\t%s\n", file, uri, key
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v rel="$release" -v file="$f" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " rel " ") && (" " comps " ") ~ / main /) {
          n = split(uris, u, " "); if (n > 0) printf "%s\t%s\t%s\n", file, u[1], key
        }
        types = uris = suites = comps = key = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        field = tolower($1); sub(/:$/, "", field); $1 = ""; sub(/^ +/, "")
        if (field == "types") types = $0
        else if (field == "uris") uris = $0
        else if (field == "suites") suites = $0
        else if (field == "components") comps = $0
        else if (field == "enabled") enabled = tolower($0)
        else if (field == "signed-by") key = $0
      }
      END { flush() }' "$f"
  done
}

case "${1:-}" in
  --name) echo "$name"; exit 0 ;;
  --sources)
    apt_entries | cut -f1 | sort -u | grep . || die "no apt source for '$release' (main) in /etc/apt/sources.list{,.d/*}"
    exit 0 ;;
  "") ;;
  *) die "usage: $0 [--sources|--name]" ;;
esac

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, the root containers storage)"
for tool in podman debootstrap unshare chroot; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: run scripts/image.sh (it installs podman, buildah, debootstrap)"
done

# A broken podman (e.g. a CONTAINERS_CONF that is not there) must not read as "no such image" below.
err=$(podman images -q 2>&1 >/dev/null) || die "podman does not work here: $err"
[ -z "$err" ] || echo "podman: $err" >&2

recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/saferollout/images
archive=$cache/base-${name//[\/:]/_}-$recipe.oci.tar
t0=$(date +%s.%N)
since() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0fs", b - a }'; }

have=$(podman image inspect --format '{{index .Config.Labels "dev.saferollout.base-recipe"}}' "$name" 2>/dev/null) && {
  if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
    echo "base image $name: present and not made here, using it as it is"; exit 0
  elif [ "$have" = "$recipe" ]; then
    echo "base image $name: cached (recipe $recipe)"; exit 0
  fi
  echo "base image $name: made by an older recipe ($have), remaking it"
}

if [ -f "$archive" ]; then
  echo "base image $name: loading $archive"
  podman load -q -i "$archive" >/dev/null || die "podman load $archive failed (delete it to remake the image)"
  podman image exists "$name" || die "$archive did not contain $name (delete it to remake the image)"
  echo "base image $name: loaded in $(since)"
  exit 0
fi

entry=$(apt_entries | head -n1)
[ -n "$entry" ] || die "no apt source for Debian '$release' (component main) in /etc/apt/sources.list{,.d/*}: cannot debootstrap"
IFS=$'\t' read -r srcfile mirror key <<<"$entry"
[ -n "$key" ] && [ -f "$key" ] || key=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$key" ] || die "no Debian archive keyring ($key): apt-get install debian-archive-keyring"
ca=/etc/ssl/certs/ca-certificates.crt

mkdir -p "$cache" "$repo/.cache/images"
log=$repo/.cache/images/base-image.log
: >"$log"
work=$(mktemp -d /var/tmp/saferollout-base.XXXXXX)
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
root=$work/rootfs
echo "base image $name: debootstrap --variant=minbase $release from the mirror in $srcfile (log: $log)"

# python3-pip brings ca-certificates; python-is-python3 gives `python`, like the official image's /usr/local/bin.
pkgs=python3,python3-pip,python-is-python3,ca-certificates,netbase,tzdata
if ! debootstrap --variant=minbase --include="$pkgs" --keyring="$key" "$release" "$root" "$mirror" >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 20 "$root/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (full log: $log)"
fi
echo "base image $name: debootstrap done after $(since)"

# Like Debian's own container images: no docs, man pages or translations, now or from later apt installs;
# no .deb or package-list caches left behind.
cat >"$root/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
# container image: no documentation or translations (copyright files stay)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

# The release's updates and security fixes, with the machine's own apt sources (and CA bundle, should the
# mirror be https) bind-mounted in a private mount namespace: nothing of them stays in the image.
: >"$root/etc/apt/sources.list"
mounts=()
while read -r f; do
  [ -e "$root$f" ] || : >"$root$f"
  mounts+=("$f")
done < <(apt_entries | cut -f1 | sort -u)
# The CA bundle goes beside the image's own, not over it: an upgrade of ca-certificates rewrites that one.
mkdir -p "$root/run"; : >"$root/run/host-ca.crt"
# shellcheck disable=SC2016  # the inner script expands its own arguments
if ! unshare --mount --propagation private env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    bash -euo pipefail -c '
      root=$1; ca=$2; shift 2
      mount -t proc proc "$root/proc"
      mount --bind "$ca" "$root/run/host-ca.crt"; mount -o remount,bind,ro "$root/run/host-ca.crt"
      for f in "$@"; do mount --bind "$f" "$root$f"; mount -o remount,bind,ro "$root$f"; done
      apt=(chroot "$root" apt-get -q -o Acquire::https::CAInfo=/run/host-ca.crt)
      "${apt[@]}" update
      "${apt[@]}" -y -o Dpkg::Options::=--force-confold upgrade
      "${apt[@]}" -y clean
    ' _ "$root" "$ca" "${mounts[@]}" >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  die "apt-get upgrade in the new root file system failed (full log: $log)"
fi
for f in "${mounts[@]}"; do
  if [ "$f" = /etc/apt/sources.list ]; then : >"$root$f"; else rm -f "$root$f"; fi
done
echo "# No sources in the image: builds bind-mount the build machine's (scripts/image.sh)." >"$root/etc/apt/sources.list"

# Clean up: host files debootstrap copied in, caches, logs, docs installed before the excludes existed.
# The official image's pip installs into the system Python: no PEP 668 marker here either.
rm -f "$root/run/host-ca.crt" "$root/usr/sbin/policy-rc.d" "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
rm -f "$root/etc/resolv.conf" "$root/etc/hostname" "$root/etc/hosts"
: >"$root/etc/machine-id" 2>/dev/null || true
rm -rf "$root/debootstrap" "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/usr/share/lintian/*
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
chroot "$root" python3 -c 'import ssl, pip' || die "python3 (with ssl and pip) does not run in the new root file system"

echo "base image $name: importing ($(du -sh --apparent-size "$root" | cut -f1) of files)"
imported=$(tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -c . | podman import -q \
  --message "debootstrap --variant=minbase $release + $pkgs (scripts/base-image.sh)" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL dev.saferollout.base-recipe=$recipe" \
  --change "LABEL dev.saferollout.base-release=$release" \
  --change 'CMD ["python3"]' \
  - "$name") || die "podman import failed"
podman image exists "$name" || die "podman import made $imported but no image named $name"
podman save -q --format oci-archive -o "$archive.tmp" "$name" || die "podman save of $name failed"
mv "$archive.tmp" "$archive"
find "$cache" -maxdepth 1 -name "base-${name//[\/:]/_}-*.oci.tar" ! -name "${archive##*/}" -delete
echo "base image $name: made in $(since), $(podman image inspect --format '{{.Size}}' "$name" | numfmt --to=si)B, cached as $archive"
