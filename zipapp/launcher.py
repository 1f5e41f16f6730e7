# pycni zipapp launcher: the archive's _pycni_launch, imported by the sh prelude (or __main__.py).
# The same module in every build: a build's identity is in the prelude's stamp lines, which
# build.py writes and the node server reads too. The archive also holds it as bytecode for
# the interpreters the build found (see build.py): nothing is compiled on the thin-client path.
# Kept to syntax every Python can parse, so an unsupported interpreter gets a clear
# message instead of a SyntaxError.
import sys

MINIMUM = (3, 9)
STAMP = b"# pycni-build: "  # <plugin> <code id>; the node server reads this line as well
PAYLOAD = b"# pycni-payload: "  # <build id>: names this build's cache dir


def _identity(archive):
    """(plugin, code id, build id) from the stamp lines at the top of the archive file."""
    with open(archive, "rb") as f:
        head = f.read(1024).split(b"\n")[:8]
    stamp = [line[len(STAMP):].split() for line in head if line.startswith(STAMP)]
    payload = [line[len(PAYLOAD):].strip() for line in head if line.startswith(PAYLOAD)]
    if not stamp or len(stamp[0]) != 2 or not payload:
        raise SystemExit("%s: no pycni build stamp at its top; rebuild it with zipapp/build.py" % archive)
    return stamp[0][0].decode(), stamp[0][1].decode(), payload[0].decode()


def _refuse_old_python(plugin):
    found = sys.version.split()[0]
    message = "%s: pycni plugins need CPython >= 3.9 on the node; %s is Python %s" % (
        plugin, sys.executable or "python3", found)
    sys.stderr.write(message + "\n")
    sys.stdout.write('{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}\n' % message.replace('"', "'"))
    sys.exit(1)


def _trusted(path):
    """A cache dir is used only when nobody but us could have written into it."""
    import posix

    try:
        st = posix.stat(path)
    except OSError:
        return False
    return st.st_uid == posix.geteuid() and not st.st_mode & 0o022


def _cache_dirs(plugin, build_id):
    """(cache base, this build's unpacked payload dir for this interpreter)."""
    import posix

    raw = posix.environ.get(b"PYCNI_CACHE_DIR") or b"/var/cache/pycni"
    base = raw.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    name = "%s-%s-%s" % (plugin, build_id, sys.implementation.cache_tag)
    return base, base + name if base.endswith("/") else base + "/" + name


def _main():
    archive = __loader__.archive  # type: ignore[name-defined]  # the zip file, whichever folder of it this module came from
    plugin, code_id, build_id = _identity(archive)
    if sys.version_info < MINIMUM:
        _refuse_old_python(plugin)
    # `posix`, not `os`: under `python3 -S`, `os` costs 1-2 ms of imports (see _pycni_client).
    import posix

    base, target = _cache_dirs(plugin, build_id)
    payload = target if _trusted(base) and _trusted(target) else None
    stdin = None
    if posix.environ.get(b"CNI_COMMAND", b"VERSION") != b"VERSION":
        # The client and wire modules come as bytecode from the archive when the build made
        # some for this interpreter, else from the unpacked cache (if any), else from source.
        if payload:
            sys.path.insert(sys.path.index(archive) if archive in sys.path else len(sys.path), payload)
        from _pycni_client import handle_via_server

        stdin = handle_via_server(plugin, code_id)  # exits when the node server answered
    if payload is None:
        from _pycni_unpack import unpack

        payload = unpack(archive, base, target)
    # Without a usable cache, import straight from the archive: slower, but it works.
    inside = archive + "/"
    sys.path[:] = [payload or inside + "payload"] + [
        p for p in sys.path if p not in (archive, payload) and not p.startswith(inside)]
    from pycni.plugins.core.entry import main

    main(plugin, stdin, code_id)


_main()
