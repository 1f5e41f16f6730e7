"""Build one self-contained executable zipapp per plugin: `python zipapp/build.py [--out dist/bin]`.

Each archive holds a tiny launcher (`__main__.py`), the unpacker, and a
`payload/` tree: the `pycni.plugins` package plus the libraries that plugin
needs, copied from the building interpreter's site-packages. Archives are
byte-for-byte reproducible, so an installer can skip identical copies.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRELUDE = (HERE / "prelude.sh").read_bytes()  # finds python3, or says clearly that there is none
FIXED_TIME = (1980, 1, 1, 0, 0, 0)

# The libraries each plugin imports at run time (beyond the standard library).
VENDORED: Dict[str, List[str]] = {
    "pycni-bridge": [],  # netlink through plugins/netlink.py: pyroute2's import alone costs 140-450 ms
    "pycni-macvlan": [],
    "pycni-host-local": [],
    "pycni-dns": ["dnslib"],
}


def _tree(src: Path, dest: str) -> Iterator[Tuple[str, bytes]]:
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{dest}/{path.relative_to(src).as_posix()}", path.read_bytes()


def _library_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"build: library {name!r} is not installed for {sys.executable}")
    return Path(list(spec.submodule_search_locations)[0])


def launcher_modules() -> List[Tuple[str, bytes]]:
    """Top-level modules the launcher imports before (or instead of) the unpacked payload."""
    return [("_pycni_unpack.py", (HERE / "_pycni_unpack.py").read_bytes()),
            ("_pycni_client.py", (HERE / "_pycni_client.py").read_bytes()),
            ("_pycni_wire.py", (ROOT / "plugins" / "wire.py").read_bytes())]


def payload_files(plugin: str) -> List[Tuple[str, bytes]]:
    # The client and wire modules go into the payload too, so a cached run imports their bytecode.
    files = [("payload/pycni/__init__.py", b"")] + [(f"payload/{n}", d) for n, d in launcher_modules()[1:]]
    files += _tree(ROOT / "plugins", "payload/pycni/plugins")
    for library in VENDORED[plugin]:
        files += _tree(_library_dir(library), f"payload/{library}")
    return files


def _plugins_code_id() -> str:
    """buildinfo.code_id, loaded by path: the build must not depend on an installed pycni."""
    spec = importlib.util.spec_from_file_location("_pycni_buildinfo", ROOT / "plugins" / "buildinfo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.code_id(ROOT / "plugins")


def _write(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool = True) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    zf.writestr(info, data)


def build(plugin: str, out_dir: Path) -> Path:
    payload = payload_files(plugin)
    digest = hashlib.sha256()
    for name, data in payload:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    build_id = digest.hexdigest()[:20]
    launcher = (HERE / "launcher.py").read_text()
    launcher = launcher.replace("@PLUGIN@", plugin).replace("@BUILD_ID@", build_id)
    launcher = launcher.replace("@CODE_ID@", _plugins_code_id())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        # What runs from the archive itself on every exec is stored, not deflated: no zlib import.
        _write(zf, "_pycni_launch.py", launcher.encode(), compress=False)
        _write(zf, "__main__.py", b"import _pycni_launch  # `python3 <this file>` works too\n", compress=False)
        for name, data in launcher_modules():
            _write(zf, name, data, compress=False)
        for name, data in payload:
            _write(zf, name, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / plugin
    tmp = out_dir / f".{plugin}.tmp"
    tmp.write_bytes(PRELUDE + buf.getvalue())
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist" / "bin"), help="output directory")
    parser.add_argument("plugins", nargs="*", default=sorted(VENDORED), help="plugins to build (default: all)")
    args = parser.parse_args()
    for plugin in args.plugins:
        if plugin not in VENDORED:
            sys.exit(f"build: unknown plugin {plugin!r}; known: {', '.join(sorted(VENDORED))}")
        path = build(plugin, Path(args.out))
        print(f"built {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
