"""Build a self-contained CPython runtime bundle for nodes without a usable python3.

`python3 -m pycni.installer.bundle --out DIR [--python /usr/bin/python3]` copies,
from the given interpreter: the interpreter binary, the standard library modules
the plugins, their launcher and thin client and pycni-dns's server import (byte-
compiled, without sources), the extension modules among them, and every shared
library those need by `ldd` -- the C library and its dynamic loader included. The
bundle is started through its own loader, so it needs neither a libc nor a python3
on the node:

    DIR/lib/ld.so --inhibit-cache --library-path DIR/lib --argv0 DIR/bin/python3 DIR/bin/python3.bin ...

`--argv0` makes `sys.executable` the `bin/python3` sh wrapper (which starts the
interpreter the same way), so a process re-exec'ing itself (pycni-dns's server)
works too; and CPython finds its prefix (the bundle) from that path: `lib/pythonX.Y/os.pyc`.

Which modules: the closure of importing, in the target interpreter, every module
of the pycni.plugins package, the zipapp launcher and client, dnslib, and ROOTS
(what the plugins import lazily inside functions). The plugin runs in a root with
nothing but a static busybox (tests/test_bundle.py) prove the set complete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

ID_FILE = "pycni-bundle.json"  # {"id", "python", "machine", "files"}: written last, read by the installer
LOADER = "lib/ld.so"
INTERPRETER = "bin/python3.bin"
WRAPPER = "bin/python3"
# Imported inside functions (not seen by importing the modules): from the plugin sources and an
# strace of the plugins' ADD/DEL/CHECK/VERSION runs, the thin client and pycni-dns's server.
ROOTS = ("ctypes", "_sha256", "_sha2", "json", "socket", "selectors", "signal", "subprocess",
         "ipaddress", "fcntl", "errno", "struct", "select", "time", "random", "base64", "binascii",
         "encodings.idna", "encodings.ascii", "encodings.cp437", "encodings.latin_1", "encodings.utf_8", "encodings.aliases",
         "_pycni_unpack", "_pycni_client", "_pycni_wire", "dnslib", "zipimport", "zlib")
OPTIONAL_ROOTS = ("_sha256", "_sha2")  # one of them, depending on the CPython version
# Never worth carrying, whatever imports them.
EXCLUDED = re.compile(r"^(test|tkinter|idlelib|ensurepip|lib2to3|pydoc_data|turtledemo|unittest|distutils"
                      r"|pydoc|doctest|venv"
                      r"|_hashlib|_ssl|bz2|_bz2|lzma|_lzma|pkgutil)(\.|$)")  # optional for their importers; big

# Run by the target interpreter: the names of every module in the plugin packages (pkgutil walks them).
_LIST = r"""
import importlib, os, pkgutil, sys
sys.path[:0] = [p for p in sys.argv[1].split(os.pathsep) if p]
def walk(name):
    module = importlib.import_module(name)
    print(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", None) or [], name + "."):
        walk(info.name)
for package in ("core", "kernel", "main", "ipam", "meta"):  # not server, cli: they run from the image
    walk("pycni.plugins." + package)
"""

# Run by a fresh target interpreter: import those names and the roots with nothing else loaded,
# then print what the stdlib gave: "stdlib dir", "version", "machine", then "module origin" lines.
_INSPECT = r"""
import os, sys
sys.path[:0] = [p for p in sys.argv[1].split(os.pathsep) if p]
for name in sys.argv[2].split(","):
    try:
        __import__(name)
    except ImportError:
        if not sys.argv[3].count("," + name + ","):
            raise
stdlib = os.path.realpath(os.path.dirname(os.__file__))
out = [stdlib, sys.version.split()[0], os.uname().machine, os.path.realpath(sys.executable)]
for name, module in sorted(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    if origin and os.path.isabs(origin) and os.path.realpath(origin).startswith(stdlib + "/"):
        out.append(name + " " + os.path.realpath(origin))
    elif spec is not None and spec.name != name:  # an alias file, e.g. 3.13's collections/abc.py
        for path in (name.replace(".", "/") + ".py", name.replace(".", "/") + "/__init__.py"):
            if os.path.isfile(os.path.join(stdlib, path)):
                out.append(name + " " + os.path.join(stdlib, path))
                break
sys.stdout.write("\n".join(out) + "\n")
"""

# Run by the target interpreter: byte-compile sources to sourceless .pyc files (no timestamps: reproducible).
_COMPILE = r"""
import json, py_compile, sys
for source, target, shown in json.load(sys.stdin):
    py_compile.compile(source, cfile=target, dfile=shown, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


class BundleBuildError(Exception):
    pass


def _run(python: str, code: str, *args: str) -> str:
    env = {"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run([python, "-I", "-S", "-c", code, *args], env=env, cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if proc.returncode != 0:
        raise BundleBuildError(f"{python}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


def inspect(python: str, code_path: str) -> Dict[str, object]:
    """The target interpreter's stdlib dir, version, machine, binary, and {module: file} it imports for us."""
    names = _run(python, _LIST, code_path).split() + list(ROOTS)
    lines = _run(python, _INSPECT, code_path, ",".join(names), "," + ",".join(OPTIONAL_ROOTS) + ",").splitlines()
    stdlib, version, machine, executable = lines[:4]
    modules = dict(line.split(" ", 1) for line in lines[4:])
    return {"stdlib": stdlib, "version": ".".join(version.split(".")[:2]), "full_version": version,
            "machine": machine, "executable": executable, "modules": modules}


def shared_libraries(files: Iterable[Path]) -> Dict[str, Path]:
    """soname -> resolved path of every library `ldd` lists for these ELF files (loader included)."""
    found: Dict[str, Path] = {}
    for path in files:
        proc = subprocess.run(["ldd", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout.decode().splitlines():
            line = line.strip()
            if "=>" in line:
                name, _, rest = line.partition("=>")
                target = rest.split("(")[0].strip()
                if target and target != "not found":
                    found[name.strip()] = Path(os.path.realpath(target))
                elif "not found" in rest:
                    raise BundleBuildError(f"{path}: library {name.strip()} not found")
            elif line.startswith("/"):  # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
                found["ld.so"] = Path(os.path.realpath(line.split()[0]))
    return found


def _module_files(info: Dict[str, object]) -> Tuple[List[Tuple[Path, str]], List[Tuple[Path, str]]]:
    """([(source .py, relative .pyc)], [(extension .so, relative path)]) under lib/pythonX.Y."""
    stdlib = Path(str(info["stdlib"]))
    sources: Dict[str, Path] = {}
    extensions: Dict[str, Path] = {}
    modules: Dict[str, str] = info["modules"]  # type: ignore[assignment]
    for name, origin in sorted(modules.items()):
        if EXCLUDED.match(name):
            continue
        path = Path(origin)
        rel = path.relative_to(stdlib).as_posix()
        if path.suffix == ".py":
            sources[rel[:-3] + ".pyc"] = path
            parts = Path(rel).parent.parts  # every package on the way needs its __init__
            for i in range(1, len(parts) + 1):
                init = stdlib.joinpath(*parts[:i], "__init__.py")
                if init.exists():
                    sources[Path(*parts[:i], "__init__.pyc").as_posix()] = init
        elif path.suffix == ".so":
            extensions[rel] = path
    return [(p, r) for r, p in sorted(sources.items())], [(p, r) for r, p in sorted(extensions.items())]


def _wrapper() -> bytes:
    """bin/python3, what sys.executable names: for a process that re-execs its interpreter (pycni-dns's server)."""
    return (b"#!/bin/sh\n"
            b"# pycni's bundled CPython, started through the bundle's own loader (no libc needed on the node)\n"
            b'b="${0%/bin/*}"\n'
            b'exec "$b/' + LOADER.encode() + b'" --inhibit-cache --library-path "$b/lib" --argv0 "$0" '
            b'"$b/' + INTERPRETER.encode() + b'" -I "$@"\n')


def tree_id(root: Path) -> str:
    """A content hash of the bundle (names, modes, bytes): its version directory name when installed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.name != ID_FILE):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {rel} {path.stat().st_mode & 0o777:o} ".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def build(python: str, out: Path, code_path: str) -> Dict[str, object]:
    """Make the bundle at `out` (replaced whole); returns its ID_FILE content."""
    info = inspect(python, code_path)
    version = str(info["version"])
    stdlib_rel = f"lib/python{version}"
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "bin").mkdir(parents=True)
    (tmp / stdlib_rel / "lib-dynload").mkdir(parents=True)
    executable = Path(str(info["executable"]))
    shutil.copy2(executable, tmp / INTERPRETER)
    (tmp / WRAPPER).write_bytes(_wrapper())
    sources, extensions = _module_files(info)
    # CPython finds its prefix by this landmark, a file even where `os` itself is frozen into the binary
    sources.append((Path(str(info["stdlib"])) / "os.py", "os.pyc"))
    for path, rel in extensions:
        target = tmp / stdlib_rel / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for soname, path in shared_libraries([executable] + [p for p, _ in extensions]).items():
        shutil.copy2(path, tmp / ("lib/ld.so" if soname == "ld.so" else f"lib/{soname}"))
    jobs = [(str(src), str(tmp / stdlib_rel / rel), f"{stdlib_rel}/{rel[:-1]}") for src, rel in sources]
    proc = subprocess.run([python, "-I", "-S", "-c", _COMPILE], input=json.dumps(jobs).encode(), cwd="/",
                          env={"PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise BundleBuildError(f"byte-compiling with {python}: {proc.stderr.decode(errors='replace').strip()}")
    try:  # best effort: distributions ship them stripped already, and a slim image has no binutils
        subprocess.run(["strip", "--strip-unneeded", str(tmp / INTERPRETER), *map(str, (tmp / "lib").rglob("*.so*"))],
                       stderr=subprocess.DEVNULL)
    except OSError:
        pass
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o755 if path.parent.name == "bin" or path.name == "ld.so" else 0o644)
    meta = {"id": tree_id(tmp), "python": info["full_version"], "machine": info["machine"],
            "files": sum(1 for p in tmp.rglob("*") if p.is_file())}
    (tmp / ID_FILE).write_text(json.dumps(meta, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return meta


def command(root: str | Path, *args: str) -> List[str]:
    """argv that runs the bundle at `root` (a path as seen where it runs) with `args`."""
    root = str(root).rstrip("/")
    return [f"{root}/{LOADER}", "--inhibit-cache", "--library-path", f"{root}/lib", "--argv0",
            f"{root}/{WRAPPER}", f"{root}/{INTERPRETER}", *args]


def disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def zipapp_code_path(zipapp: Path) -> str:
    """sys.path entries that import what a built zipapp runs: its launcher modules and its payload
    (pycni-dns's holds pycni.plugins whole, the client modules and dnslib)."""
    return os.pathsep.join((f"{zipapp}/payload", str(zipapp)))


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="bundle directory to (re)create")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to bundle (default: this one)")
    parser.add_argument("--zipapp", required=True, type=Path,
                        help="a built pycni-dns zipapp: its modules decide which stdlib modules go in")
    args = parser.parse_args(argv)
    try:
        meta = build(args.python, Path(args.out), zipapp_code_path(args.zipapp.resolve()))
    except (BundleBuildError, OSError) as exc:
        sys.exit(f"bundle: {exc}")
    print(f"bundle {meta['id']}: CPython {meta['python']} {meta['machine']}, {meta['files']} files, "
          f"{disk_usage(Path(args.out)) // 1024} KiB on disk, in {args.out}")


if __name__ == "__main__":
    main()
