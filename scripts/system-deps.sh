#!/usr/bin/env bash
# Installs the Debian packages the tests use (real Prometheus, PostgreSQL, its client tools, Lua).
# Idempotent: returns at once when everything is there. Needs root (apt-get); say so clearly otherwise.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v pg_dump >/dev/null || need+=(postgresql-client)
command -v openssl >/dev/null || need+=(openssl)
command -v go >/dev/null || need+=(golang-go)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "scripts/system-deps.sh: missing ${need[*]}; install them with apt-get (needs root)" >&2
  exit 1
fi
echo "installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the packages start their services on install where they can; the tests run their own on loopback
pkill -x prometheus 2>/dev/null || true
