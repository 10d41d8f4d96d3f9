#!/usr/bin/env bash
# Copies the generated CRDs (crds/saferollout.dev_*.yaml, the one source, written by `python -m saferollout.crdgen`)
# into the Helm chart, which cannot reference files outside itself. Run it after `make crds`.
# Usage: bash scripts/sync-chart-crds.sh          -> copies
#        bash scripts/sync-chart-crds.sh --check  -> exit 1 if a chart copy differs or is missing (for CI)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
names=(saferollout.dev_saferollouts.yaml saferollout.dev_analysistemplates.yaml
       saferollout.dev_clusteranalysistemplates.yaml)

for name in "${names[@]}"; do
  [ -f "$repo/crds/$name" ] || { echo "sync-chart-crds: missing crds/$name (run: make crds)" >&2; exit 1; }
done
case "${1:-}" in
  --check)
    for name in "${names[@]}"; do
      if ! cmp -s "$repo/crds/$name" "$repo/charts/saferollout/crds/$name"; then
        echo "sync-chart-crds: charts/saferollout/crds/$name differs from crds/$name; run: bash scripts/sync-chart-crds.sh" >&2
        exit 1
      fi
    done
    ;;
  "")
    mkdir -p "$repo/charts/saferollout/crds"
    for name in "${names[@]}"; do
      cp "$repo/crds/$name" "$repo/charts/saferollout/crds/$name"
      echo "sync-chart-crds: crds/$name -> charts/saferollout/crds/$name" >&2
    done
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
