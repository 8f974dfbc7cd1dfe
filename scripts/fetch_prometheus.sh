#!/usr/bin/env bash
# Print the directory that holds `promtool` and `prometheus`.
#
# /usr/bin when the Debian package is installed; otherwise Debian's `prometheus` package is
# downloaded (apt-get download, no install, no service started) and unpacked with dpkg -x into
# .cache/prometheus/ (or $PROMETHEUS_CACHE), once; later calls only print the directory.
#
#   bin="$(scripts/fetch_prometheus.sh)" && "$bin/promtool" check metrics < metrics.txt
set -euo pipefail

if [[ -x /usr/bin/promtool && -x /usr/bin/prometheus ]]; then
  echo /usr/bin
  exit 0
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PROMETHEUS_CACHE:-$root/.cache/prometheus}"
bin="$cache/usr/bin"
if [[ ! -x "$bin/promtool" || ! -x "$bin/prometheus" ]]; then
  mkdir -p "$cache/deb"
  cd "$cache/deb"
  if ! apt-get download prometheus >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt-get download prometheus >/dev/null
  fi
  dpkg -x "$(ls -t prometheus_*.deb | head -1)" "$cache"
fi
echo "$bin"
