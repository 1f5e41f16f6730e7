#!/usr/bin/env bash
# Make a local base image for images/Containerfile when no container registry is reachable:
# debootstrap a minimal Debian with python3 (+ venv for the build stage) and `podman import` it.
# Usage: tools/make-base-image.sh [IMAGE]   (default localhost/pycni-base:bookworm)
# Skips the work when the image already exists (podman's store is the cache); FORCE=1 rebuilds.
set -euo pipefail

IMAGE=${1:-localhost/pycni-base:bookworm}
SUITE=${SUITE:-bookworm}
PODMAN=(podman --runtime "${PODMAN_RUNTIME:-runc}")

if [ "${FORCE:-0}" != 1 ] && "${PODMAN[@]}" image exists "$IMAGE"; then
    echo "make-base-image: $IMAGE exists"
    exit 0
fi

command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The mirror apt already uses on this machine (deb822 "URIs:" or one-line "deb URL suite").
mirror=${MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | head -n1 | awk '{print $2}' || true)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/pycni-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "make-base-image: debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Trust what this machine trusts: package registries may sit behind a local TLS proxy CA.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
# Trim what a container never needs: apt lists, caches, docs, man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar --numeric-owner -C "$root" -c . | "${PODMAN[@]}" import \
    --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$IMAGE" >/dev/null
echo "make-base-image: imported $IMAGE"
