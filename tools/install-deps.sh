#!/usr/bin/env bash
# Install what pycni's build, tests, demo and benchmarks need on a fresh Debian machine:
# Debian packages, and a virtualenv ($VENV, default .venv) holding pycni and its Python
# dependencies. Nothing is pip-installed into the system interpreter (PEP 668).
# Idempotent and quick when everything is already there; any failing step stops with its error.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 nftables iptables containernetworking-plugins dnsmasq-base dnsperf
              iputils-ping dnsutils procps psmisc podman runc busybox-static strace curl)
BASE_PYTHON=${BASE_PYTHON:-python3}
VENV=${VENV:-.venv}

fail() { echo "install-deps: $*" >&2; exit 1; }

apt_install() {
    echo "install-deps: apt packages: $*"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || fail "apt-get install $* failed"
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian splits venv's ensurepip into python3-venv (python3.X-venv).
if ! "$BASE_PYTHON" -c "import ensurepip, venv" 2>/dev/null; then
    missing+=("python3-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

command -v "$BASE_PYTHON" >/dev/null || fail "$BASE_PYTHON not found (apt-get install python3)"
# A venv without pip is one whose creation failed half-way (e.g. ensurepip missing): make it again.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "install-deps: virtualenv $VENV (from $(command -v "$BASE_PYTHON"))"
    rm -rf "$VENV"
    "$BASE_PYTHON" -m venv "$VENV" || fail "'$BASE_PYTHON -m venv $VENV' failed"
fi

# Installed, with its dependencies, from this very tree, and as pyproject.toml says now?
stamp="$VENV/.pycni-installed"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)-$(pwd -P)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
   || ! "$VENV/bin/python" -c "import pycni.plugins, pyroute2, dnslib, kubernetes, yaml, requests, pytest, xdist" 2>/dev/null; then
    echo "install-deps: pip install -e .[test] into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" \
        || fail "pip install -e .[test] into $VENV failed (see above)"
    echo "$want" > "$stamp"
fi
