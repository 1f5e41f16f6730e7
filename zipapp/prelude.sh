#!/bin/sh
# pycni-build: @PLUGIN@ @CODE_ID@
# pycni-payload: @BUILD_ID@
# pycni CNI plugin: a zip archive of Python code follows these lines; python3 runs it.
# fd 9 pins this very file, so an installer renaming a new build over it mid-start is harmless.
# Importing the launcher straight from the archive skips runpy (8 ms of imports on every exec);
# <cache tag>/ inside it holds the launcher's bytecode for this interpreter, if the build made some.
c='import sys; a = "/proc/self/fd/9"; sys.path[:0] = [a + "/" + sys.implementation.cache_tag, a]; import _pycni_launch'
# 1. The CPython bundle pycni-installer put beside this file (and checked on this node), through its own loader.
b="${0%/*}/.pycni-python/current"
[ -x "$b/lib/ld.so" ] && exec 9<"$0" && exec "$b/lib/ld.so" --inhibit-cache --library-path "$b/lib" --argv0 "$b/bin/python3" "$b/bin/python3.bin" -I -S -c "$c" "$@"
# 2. The node's python3 (the launcher refuses one older than 3.9); 3. a clear message.
command -v python3 >/dev/null 2>&1 || { m="${0##*/}: python3 not found on PATH ($PATH) - pycni plugins need CPython >= 3.9 on the node"; echo "$m" >&2; printf '{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}\n' "$m"; exit 1; }
exec 9<"$0" && exec python3 -I -S -c "$c" "$@"
