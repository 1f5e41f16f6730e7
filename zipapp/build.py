"""Build one self-contained executable zipapp per plugin: `python zipapp/build.py [--out dist/bin]`.

Each file is a sh prelude whose stamp lines carry the build's identity
(plugin, code id, payload id: the launcher and the node server read them),
then a zip: the launcher (`_pycni_launch.py`, imported by the prelude, or by
`__main__.py` for `python3 <file>`), the modules it needs before anything is
unpacked, and a `payload/` tree: the `pycni.plugins` package plus the
libraries that plugin needs, copied from the building interpreter's
site-packages. The launcher holds no build-specific value, so its bytecode is
the same in every plugin.

The modules a thin client runs on every exec also go in as bytecode, in one
`<cache tag>/` folder per CPython the build finds, which the prelude puts on
sys.path before the archive's root: zipimport takes `name.pyc` there, and an
interpreter with no folder of its own imports the root's `.py` files. Without
that, every exec compiled them from source: the first compile() of a process
alone costs ~1.5 ms, and zipimport compiles each module twice (once to learn
`__file__`, once to run it).

Archives are byte-for-byte reproducible (for the same set of interpreters), so
an installer can skip identical copies.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import io
import marshal
import os
import re
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRELUDE = (HERE / "prelude.sh").read_bytes()  # finds python3, or says clearly that there is none
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _plugins_module(relative: str) -> ModuleType:
    """A module of plugins/, loaded by path: the build must not depend on an installed pycni."""
    path = ROOT / "plugins" / relative
    spec = importlib.util.spec_from_file_location(f"_pycni_build_{path.stem}", path)
    if spec is None or spec.loader is None:
        sys.exit(f"build: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The plugin table (plugins/core/registry.py): binary name -> libraries its zipapp carries beyond the standard library.
VENDORED: Dict[str, Tuple[str, ...]] = _plugins_module("core/registry.py").VENDORED


def _tree(src: Path, dest: str) -> Iterator[Tuple[str, bytes]]:
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{dest}/{path.relative_to(src).as_posix()}", path.read_bytes()


def _library_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"build: library {name!r} is not installed for {sys.executable}")
    return Path(list(spec.submodule_search_locations)[0])


# `python3 <this file>` runs __main__.py (from source, via runpy: not the path a runtime takes).
MAIN = b"""\
import sys
sys.path.insert(0, "%s/%s" % (sys.path[0], sys.implementation.cache_tag))  # bytecode, when there is some
import _pycni_launch
"""

# Run by each interpreter found: marshal.dumps((implementation, cache tag, version, {name.pyc: pyc}))
# of marshal.loads(stdin) = {name.py: source}. Unchecked hash-based pycs: valid without the source
# and with no timestamp in them; co_filename is the name inside the archive.
COMPILE = """\
import sys
del sys.path[0]
import marshal
from importlib._bootstrap_external import _code_to_hash_pyc
from importlib.util import source_hash
sources = marshal.loads(sys.stdin.buffer.read())
pycs = {}
for name in sorted(sources):
    code = compile(sources[name], name, "exec", dont_inherit=True)
    pycs[name + "c"] = bytes(_code_to_hash_pyc(code, source_hash(sources[name]), False))
info = sys.implementation
sys.stdout.buffer.write(marshal.dumps((info.name, info.cache_tag, tuple(sys.version_info[:2]), pycs)))
"""
INTERPRETER = re.compile(r"python3\.(\d+)$")
THIN_PATH = ("_pycni_launch.py", "_pycni_client.py", "_pycni_wire.py")  # imported by every exec
CACHED_CLIENT = ("_pycni_client.py", "_pycni_wire.py")  # also in the payload (see payload_files)


def launcher_modules() -> List[Tuple[str, bytes]]:
    """Top-level modules the launcher imports before (or instead of) the unpacked payload."""
    return [("_pycni_launch.py", (HERE / "launcher.py").read_bytes()),
            ("_pycni_unpack.py", (HERE / "_pycni_unpack.py").read_bytes()),
            ("_pycni_client.py", (HERE / "_pycni_client.py").read_bytes()),
            ("_pycni_wire.py", (ROOT / "plugins" / "server" / "wire.py").read_bytes())]


def found_pythons() -> List[str]:
    """This interpreter, then every `python3.N` (N >= 9) in /usr/bin, /usr/local/bin and pyenv."""
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = [sys.executable]
    for pattern in ("/usr/bin/python3.*", "/usr/local/bin/python3.*", f"{pyenv}/versions/*/bin/python3.*"):
        for path in sorted(glob.glob(pattern)):
            match = INTERPRETER.search(path)
            if match and int(match.group(1)) >= 9 and os.access(path, os.X_OK):
                found.append(path)
    real = [os.path.realpath(path) for path in found]
    return [path for i, path in enumerate(found) if real[i] not in real[:i]]


def _compile_with(python: str, sources: Dict[str, bytes]) -> Optional[Tuple[str, Dict[str, bytes]]]:
    """(cache tag, {name.pyc: pyc}) from `python`, or None when it is no CPython >= 3.9."""
    try:
        # A fixed hash seed: set and frozenset constants then marshal in the same order every build.
        proc = subprocess.run([python, "-S", "-s", "-c", COMPILE], input=marshal.dumps(sources),
                              env={"PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, cwd="/", timeout=120)
        implementation, tag, version, pycs = marshal.loads(proc.stdout)
    except (OSError, ValueError, EOFError, TypeError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or implementation != "cpython" or tuple(version) < (3, 9) or not tag:
        return None
    return tag, pycs


def launcher_bytecode(pythons: List[str]) -> List[Tuple[str, bytes, bool]]:
    """Archive entries (name, data, compress) of the `<cache tag>/` folders; the first interpreter of a tag wins.

    Each folder holds the sources too: should an interpreter reject a pyc (a pre-release
    with another magic number under the same tag), zipimport falls back to the `.py` in
    the same folder; with none there the import would fail, not go on to the root.
    """
    sources = {name: data for name, data in launcher_modules() if name in THIN_PATH}
    seen: Dict[str, Dict[str, bytes]] = {}
    with ThreadPoolExecutor(4) as pool:
        for compiled in pool.map(lambda python: _compile_with(python, sources), pythons):
            if compiled and compiled[0] not in seen:
                seen[compiled[0]] = compiled[1]
    entries = []
    for tag in sorted(seen):
        for name in sorted(sources):
            entries += [(f"{tag}/{name}c", seen[tag][name + "c"], False), (f"{tag}/{name}", sources[name], True)]
    return entries


def payload_files(plugin: str) -> List[Tuple[str, bytes]]:
    # The client and wire modules go into the payload too: an interpreter the build made no
    # bytecode for then imports them from the unpacked cache rather than compiling them.
    files = [("payload/pycni/__init__.py", b"")]
    files += [(f"payload/{name}", data) for name, data in launcher_modules() if name in CACHED_CLIENT]
    files += _tree(ROOT / "plugins", "payload/pycni/plugins")
    for library in VENDORED[plugin]:
        files += _tree(_library_dir(library), f"payload/{library}")
    return files


def _plugins_code_id() -> str:
    return _plugins_module("core/buildinfo.py").code_id(ROOT / "plugins")


def _write(zf: zipfile.ZipFile, name: str, data: bytes, compress: bool = True) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    zf.writestr(info, data)


def build(plugin: str, out_dir: Path, bytecode: List[Tuple[str, bytes, bool]]) -> Path:
    """Write `out_dir/plugin`; `bytecode` is launcher_bytecode(...) (the same for every plugin)."""
    payload = payload_files(plugin)
    digest = hashlib.sha256()
    for name, data in payload:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    build_id = digest.hexdigest()[:20]
    # The stamp lines in the prelude are the build's identity, for the launcher and the node server.
    prelude = PRELUDE.replace(b"@PLUGIN@", plugin.encode()).replace(b"@CODE_ID@", _plugins_code_id().encode())
    prelude = prelude.replace(b"@BUILD_ID@", build_id.encode())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        # What runs from the archive itself on every exec is stored, not deflated: no zlib import.
        _write(zf, "__main__.py", MAIN, compress=False)
        for name, data in launcher_modules():
            _write(zf, name, data, compress=False)
        for name, data, compress in bytecode:
            _write(zf, name, data, compress)
        for name, data in payload:
            _write(zf, name, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / plugin
    tmp = out_dir / f".{plugin}.tmp"
    tmp.write_bytes(prelude + buf.getvalue())
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist" / "bin"), help="output directory")
    parser.add_argument("--python", action="append", metavar="PATH",
                        help="an interpreter to byte-compile the launcher modules with (repeatable; "
                             "default: this one and every CPython >= 3.9 in /usr/bin, /usr/local/bin, pyenv)")
    parser.add_argument("plugins", nargs="*", default=sorted(VENDORED), help="plugins to build (default: all)")
    args = parser.parse_args()
    unknown = [p for p in args.plugins if p not in VENDORED]
    if unknown:
        sys.exit(f"build: unknown plugin {unknown[0]!r}; known: {', '.join(sorted(VENDORED))}")
    bytecode = launcher_bytecode(args.python or found_pythons())
    tags = sorted({name.split("/")[0] for name, _, _ in bytecode})
    print(f"launcher bytecode for: {', '.join(tags) or 'none'}")
    for plugin in args.plugins:
        path = build(plugin, Path(args.out), bytecode)
        print(f"built {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
