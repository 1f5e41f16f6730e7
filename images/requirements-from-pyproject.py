"""Print requirements from a pyproject.toml, one per line: [project] dependencies, or with
--build-system the [build-system] requires.

Lets the image's build stage install them in layers that only pyproject.toml invalidates.
Works on Python 3.9+: tomllib, else the tomli that pip vendors.
"""
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    from pip._vendor import tomli as tomllib

args = sys.argv[1:]
build_system = "--build-system" in args
paths = [a for a in args if not a.startswith("--")] or ["pyproject.toml"]
with open(paths[0], "rb") as f:
    data = tomllib.load(f)
reqs = data.get("build-system", {}).get("requires", []) if build_system else data["project"].get("dependencies", [])
print("\n".join(reqs))
