#!/usr/bin/env bash
# Install the npm packages that hold the prometheus-operator and KEDA CRD schemas
# (tests/deploy/crd/package.json, locked by package-lock.json) into .cache/crd-models/ and print
# that directory. Idempotent: reinstalls only when the lock file changed.
#
#   dir=$(scripts/fetch_crd_models.sh) && node tests/deploy/validate_crds.mjs "$dir" < objects.json
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/tests/deploy/crd"
dest="${CRD_MODELS_CACHE:-$root/.cache/crd-models}"

if [[ -d "$dest/node_modules" ]] && cmp -s "$src/package-lock.json" "$dest/package-lock.json"; then
    echo "$dest"
    exit 0
fi

command -v npm >/dev/null || { echo "npm is required (apt-get install npm)" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
# The packages declare node >= 22 but run on the node 18/20 of Debian: engine warnings only.
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
echo "$dest"
