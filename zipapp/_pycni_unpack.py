"""Unpack a zipapp's payload into the cache dir and byte-compile it (first run of a build only).

Safe against concurrent first runs (each unpacks into its own temp dir and
renames it into place; the loser discards its copy) and against newer builds
(each build has its own directory, named by the payload's hash).
"""
import compileall
import os
import py_compile
import shutil
import tempfile
import zipfile


def _trusted(path):
    st = os.stat(path)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


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
            except OSError:
                pass  # another first run won the race; its copy is identical
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target if os.path.isdir(target) else None
    except OSError:
        return None
