#!/usr/bin/env python3
"""Regenerate charts/pycni.yaml, the single `kubectl apply -f` manifest, from the Helm chart.

    python3 tools/render-manifest.py            # write charts/pycni.yaml and charts/pycni-uninstall.yaml
    python3 tools/render-manifest.py --check    # exit 1 if it is out of date with the chart

The manifest is `helm template` of charts/pycni with default values, release name `pycni`
in namespace kube-system. Helm comes from tools/install-helm.sh (or $HELM).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "pycni"
MANIFEST = ROOT / "charts" / "pycni.yaml"
# The cluster uninstall: the same objects with `uninstall: true` (`kubectl apply -f` it over the
# install, wait for every pod Ready, then `kubectl delete -f` it).
UNINSTALL_MANIFEST = ROOT / "charts" / "pycni-uninstall.yaml"
UNINSTALL_VALUES = ("--set", "uninstall=true")
RELEASE = "pycni"
NAMESPACE = "kube-system"
HEADER = (
    "# pycni: the installer DaemonSet, its ConfigMap and RBAC, for `kubectl apply -f charts/pycni.yaml`.\n"
    "# Generated from charts/pycni with default values by `python3 tools/render-manifest.py`:\n"
    "# do not edit by hand; change the chart and regenerate.\n"
)


def helm_binary() -> str:
    """$HELM, else the helm that tools/install-helm.sh installs (and caches)."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    out = subprocess.run(["bash", str(ROOT / "tools" / "install-helm.sh")], check=True,
                         env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def render(helm: str, values: tuple = ()) -> str:
    """The manifest text for the chart as it is now (with `values`: extra helm flags)."""
    out = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    header = HEADER if not values else HEADER.replace("with default values", "with " + " ".join(values))
    return header + out.lstrip("\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the manifest is up to date")
    args = parser.parse_args()
    helm = helm_binary()
    stale = 0
    for manifest, values in ((MANIFEST, ()), (UNINSTALL_MANIFEST, UNINSTALL_VALUES)):
        text = render(helm, values)
        current = manifest.read_text() if manifest.exists() else None
        if current == text:
            continue
        if args.check:
            print(f"{manifest.relative_to(ROOT)} is out of date with the chart: "
                  "run python3 tools/render-manifest.py", file=sys.stderr)
            stale = 1
            continue
        tmp = manifest.with_name("." + manifest.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, manifest)
        print(f"wrote {manifest.relative_to(ROOT)}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
