#!/usr/bin/env bash
# The real node's own images, made here without a registry or an image builder: a static binary in one layer,
# written as an OCI image archive, imported into the node's containerd with `ctr images import`.
#
#   images.sh ref <name>             the image reference of pause or testapp
#   images.sh build <name>           builds pause (cluster/node/pause.c, gcc -static) or testapp
#                                    (cluster/node/testapp, go build) once, caches the archive under
#                                    .cache/node-images/ and prints its path
#   images.sh import <archive.tar>   imports an archive (OCI or docker-archive, e.g. from `make image`) into the
#                                    running real node's containerd, namespace k8s.io (where the kubelet looks)
#
# Pods use the images with imagePullPolicy: Never (nothing can be pulled here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${SR_STATE_DIR:-$repo/.cache/cluster}
cache=${SR_NODE_IMAGES:-$repo/.cache/node-images}

die() { echo "cluster/node/images.sh: $*" >&2; exit 1; }

ref() {
  case $1 in
    pause) echo localhost/saferollout/pause:1 ;;
    testapp) echo localhost/saferollout/testapp:1 ;;
    *) die "unknown image '$1' (pause, testapp)" ;;
  esac
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_archive <ref> <binary> <out.tar>: one layer with /<binary name> (the entrypoint) and an empty /tmp.
# Reproducible: sorted entries, owner 0, mtime 0, uncompressed layer.
oci_archive() {
  local image=$1 binary=$2 out=$3 name work layer diff config cfg_digest manifest man_digest
  name=$(basename "$binary")
  work=$(mktemp -d)
  mkdir -p "$work/rootfs/tmp" "$work/oci/blobs/sha256"
  chmod 755 "$work/rootfs"
  chmod 1777 "$work/rootfs/tmp"
  install -m 755 "$binary" "$work/rootfs/$name"
  layer=$work/layer.tar
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$work/rootfs" -cf "$layer" .
  diff=$(sha "$layer")
  mv "$layer" "$work/oci/blobs/sha256/$diff"
  config=$work/config.json
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/%s"],"Env":["PATH=/"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$name" "$diff" >"$config"
  cfg_digest=$(sha "$config")
  manifest=$work/manifest.json
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$cfg_digest" "$(stat -c %s "$config")" "$diff" "$(stat -c %s "$work/oci/blobs/sha256/$diff")" >"$manifest"
  man_digest=$(sha "$manifest")
  mv "$config" "$work/oci/blobs/sha256/$cfg_digest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man_digest" "$(stat -c %s "$manifest")" "$image" "${image##*:}" >"$work/oci/index.json"
  mv "$manifest" "$work/oci/blobs/sha256/$man_digest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -C "$work/oci" \
    -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

build() {
  local name=$1 image key out bindir
  image=$(ref "$name")
  case $name in
    pause) command -v gcc >/dev/null || die "gcc is needed to build the pause image (scripts/system-deps.sh)"
           key=$(cat "$here/pause.c" "$here/images.sh" <(gcc --version | head -n1) | sha256sum | cut -c1-16) ;;
    testapp) command -v go >/dev/null || die "go is needed to build the testapp image"
             key=$(cat "$here/testapp/go.mod" "$here/testapp/main.go" "$here/images.sh" <(go version) | sha256sum | cut -c1-16) ;;
  esac
  out=$cache/$name-$key.tar
  if [ ! -s "$out" ]; then
    mkdir -p "$cache"
    bindir=$(mktemp -d)
    case $name in
      pause) gcc -static -Os -s -Wall -Werror -o "$bindir/pause" "$here/pause.c" || die "compiling pause.c failed" ;;
      testapp) (cd "$here/testapp" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
                  go build -trimpath -ldflags "-s -w" -o "$bindir/testapp" .) || die "building testapp failed" ;;
    esac
    oci_archive "$image" "$bindir/$name" "$out"
    rm -rf "$bindir"
    # older archives of this image are superseded
    find "$cache" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$key.tar" -delete
  fi
  echo "$out"
}

import() {
  local sock=$state/node/containerd/containerd.sock archive
  [ -S "$sock" ] || die "no real node's containerd at $sock (start the cluster with SR_REAL_NODE=1 cluster/up.sh)"
  for archive in "$@"; do
    [ -s "$archive" ] || die "no image archive at $archive"
    ctr --address "$sock" --namespace k8s.io images import "$archive" >/dev/null \
      || die "ctr images import $archive failed"
  done
}

case ${1:-} in
  ref) [ $# -eq 2 ] || die "usage: images.sh ref <name>"; ref "$2" ;;
  build) [ $# -eq 2 ] || die "usage: images.sh build <name>"; build "$2" ;;
  import) [ $# -ge 2 ] || die "usage: images.sh import <archive.tar>..."; shift; import "$@" ;;
  *) die "usage: images.sh ref|build <pause|testapp> | import <archive.tar>..." ;;
esac
