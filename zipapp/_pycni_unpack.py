"""Unpack a zipapp's payload into the cache dir and byte-compile it (first run of a build only).

Safe against concurrent first runs (each unpacks into its own temp dir and
renames it into place; the loser discards its copy) and against newer builds
(each build has its own directory, named by the payload's hash).
"""
import compileall
import os
import py_compile
import re
import shutil
import tempfile
import time
import zipfile


def _trusted(path):
    st = os.stat(path)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


STALE_SECONDS = 7 * 24 * 3600
BUILD_DIR = re.compile(r"^(.+)-([0-9a-f]{20})-(.+)$")  # <plugin>-<build id>-<interpreter cache tag>


def _prune_old_builds(base, current):
    """Remove this plugin's other builds for this interpreter once unused for a week.

    A newer build is installed over the old binary, so an old payload only
    serves processes that started before that: after a week none is left.
    """
    match = BUILD_DIR.match(current)
    if not match:
        return
    now = time.time()
    for name in os.listdir(base):
        other = BUILD_DIR.match(name)
        if name == current or not other or (other.group(1), other.group(3)) != (match.group(1), match.group(3)):
            continue
        path = os.path.join(base, name)
        try:
            if now - os.stat(path).st_mtime > STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def unpack(archive, base, target):
    """Return `target` once it holds the payload, or None when the cache can't be used."""
    try:
        os.makedirs(base, mode=0o755, exist_ok=True)
        if not _trusted(base):
            return None
        if os.path.isdir(target):
            return target if _trusted(target) else None
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=base)
        try:
            with zipfile.ZipFile(archive) as outer:
                for name in outer.namelist():
                    if name.startswith("payload/"):
                        outer.extract(name, tmp)
            payload = os.path.join(tmp, "payload")
            compileall.compile_dir(
                payload, ddir=target, quiet=2, workers=1,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            os.chmod(payload, 0o755)
            try:
                os.rename(payload, target)
                _prune_old_builds(base, os.path.basename(target))
            except OSError:
                pass  # another first run won the race; its copy is identical
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target if os.path.isdir(target) else None
    except OSError:
        return None
