#!/bin/sh
# pycni CNI plugin: a zip archive of Python code follows this line; python3 runs it.
command -v python3 >/dev/null 2>&1 || { m="${0##*/}: python3 not found on PATH ($PATH) - pycni plugins need CPython >= 3.9 on the node"; echo "$m" >&2; printf '{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}\n' "$m"; exit 1; }
exec python3 -I -S "$0" "$@"
