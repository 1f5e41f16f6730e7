# pycni zipapp launcher: the archive's _pycni_launch.py, imported by the sh prelude or __main__.py (build.py fills in the @NAMES@).
# Kept to syntax every Python can parse, so an unsupported interpreter gets a clear
# message instead of a SyntaxError.
import sys

PLUGIN = "@PLUGIN@"
BUILD_ID = "@BUILD_ID@"
CODE_ID = "@CODE_ID@"
MINIMUM = (3, 9)

if sys.version_info < MINIMUM:
    found = sys.version.split()[0]
    message = "%s: pycni plugins need CPython >= 3.9 on the node; %s is Python %s" % (
        PLUGIN, sys.executable or "python3", found)
    sys.stderr.write(message + "\n")
    sys.stdout.write('{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}\n' % message.replace('"', "'"))
    sys.exit(1)


def _trusted(path):
    """A cache dir is used only when nobody but us could have written into it."""
    import os

    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _cache_dirs():
    """(cache base, this build's unpacked payload dir for this interpreter)."""
    import os

    base = os.environ.get("PYCNI_CACHE_DIR") or "/var/cache/pycni"
    return base, os.path.join(base, "%s-%s-%s" % (PLUGIN, BUILD_ID, sys.implementation.cache_tag))


def _main():
    import os

    archive = sys.path[0]
    base, target = _cache_dirs()
    payload = target if _trusted(base) and _trusted(target) else None
    if payload:
        sys.path.insert(0, payload)  # the client below then imports from bytecode, not the archive
    stdin = None
    if os.environ.get("CNI_COMMAND", "VERSION") != "VERSION":
        from _pycni_client import handle_via_server

        stdin = handle_via_server(PLUGIN, CODE_ID)  # exits when the node server answered
    if payload is None:
        from _pycni_unpack import unpack

        payload = unpack(archive, base, target)
    # Without a usable cache, import straight from the archive: slower, but it works.
    sys.path[:] = [payload or archive + "/payload"] + [p for p in sys.path if p not in (archive, payload)]
    from pycni.plugins.entry import main

    main(PLUGIN, stdin)


_main()
