#!/usr/bin/env bash
# Copies the generated CRD (crds/, the one source, written by `python -m saferollout.crdgen`) into the Helm
# chart, which cannot reference files outside itself. Run it after `make crds`.
# Usage: bash scripts/sync-chart-crds.sh          -> copies
#        bash scripts/sync-chart-crds.sh --check  -> exit 1 if the chart's copy differs (for CI)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src=$repo/crds/saferollout.dev_saferollouts.yaml
dst=$repo/charts/saferollout/crds/saferollout.dev_saferollouts.yaml

[ -f "$src" ] || { echo "sync-chart-crds: missing $src (run: make crds)" >&2; exit 1; }
case "${1:-}" in
  --check)
    if ! cmp -s "$src" "$dst"; then
      echo "sync-chart-crds: ${dst#"$repo"/} differs from ${src#"$repo"/}; run: bash scripts/sync-chart-crds.sh" >&2
      exit 1
    fi
    ;;
  "")
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
    echo "sync-chart-crds: ${src#"$repo"/} -> ${dst#"$repo"/}" >&2
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
