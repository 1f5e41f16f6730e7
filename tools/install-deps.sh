#!/usr/bin/env bash
# Install what pycni's build, tests, demo and benchmarks need on a fresh Debian machine.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 nftables iptables containernetworking-plugins dnsmasq-base
              iputils-ping dnsutils procps psmisc podman runc busybox-static strace curl)
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Installed, with its dependencies, and from this very tree (not another checkout's)?
here=$(pwd -P)/plugins
there=$("$PYTHON" -c "import pycni.plugins, pyroute2, dnslib, kubernetes, yaml, requests, pytest, xdist, os
print(os.path.realpath(os.path.dirname(pycni.plugins.__file__)))" 2>/dev/null || true)
if [ "$there" != "$here" ]; then
    echo "install-deps: pip install -e .[test]"
    "$PYTHON" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
fi
