#!/bin/sh
# pycni-build: @PLUGIN@ @CODE_ID@
# pycni-payload: @BUILD_ID@
# pycni CNI plugin: a zip archive of Python code follows these lines; python3 runs it.
# fd 9 pins this very file, so an installer renaming a new build over it mid-start is harmless.
command -v python3 >/dev/null 2>&1 || { m="${0##*/}: python3 not found on PATH ($PATH) - pycni plugins need CPython >= 3.9 on the node"; echo "$m" >&2; printf '{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}\n' "$m"; exit 1; }
# Importing the launcher straight from the archive skips runpy (8 ms of imports on every exec);
# <cache tag>/ inside it holds the launcher's bytecode for this interpreter, if the build made some.
exec 9<"$0" && exec python3 -I -S -c 'import sys; a = "/proc/self/fd/9"; sys.path[:0] = [a + "/" + sys.implementation.cache_tag, a]; import _pycni_launch' "$@"
