#!/bin/sh
# pycni-build: @PLUGIN@ @CODE_ID@
# pycni-payload: @BUILD_ID@
# pycni CNI plugin: a zip archive of Python code follows these lines; python3 runs it.
#
# 0. Hand the request to the node's pycni-server from sh, before any Python starts (a Python start
#    costs ~13 ms of CPU, this ~2 ms). The protocol is plugins/server/handoff.py's: one line
#    "pid starttime watchdog-pid plugin code-id" into the server's root-only FIFO; the server reads
#    this process's environment and stdin from /proc, writes the result into its stdout, the exit
#    code into spool/<pid>.<starttime>, then kills the watchdog sleep this shell waits on. Return
#    1 (run in-process) when nothing reached a live server, when the server declines, or when this
#    shell took the request back (created that file before the server did) at the accept deadline.
pycni_handoff() {
	s=${PYCNI_SERVER_SOCKET-/run/pycni/server.sock}
	case "${CNI_COMMAND:-VERSION}:$s" in VERSION:* | *: | *:off) return 1 ;; esac
	h=$s.handoff
	q=$h/requests
	[ -p "$q" ] && [ -O "$q" ] && [ -O "$h" ] || return 1
	{ read -r p t <"$h/server" && pycni_started "$p"; } 2>/dev/null || return 1
	[ "$x" = "$t" ] || return 1 # a spool its server left behind
	ps=$t
	pycni_started $$ && t=$x && f=$h/$$.$t || return 1
	# The server opens stdin and stdout as fds 3 and 4: a builtin's redirection (the printf below)
	# swaps fd 1 for a moment. A closed stdin fails this, and the server declines then.
	{ command exec 3<&0 4>&1; } 2>/dev/null
	d=1
	sleep "${PYCNI_SERVER_ACCEPT_TIMEOUT:-5}" </dev/null >/dev/null 2>&1 3<&- 4>&- &
	w=$!
	printf '%s %s %s @PLUGIN@ @CODE_ID@\n' $$ "$t" $w 2>/dev/null 1<>"$q" || { kill $w; wait $w; return 1; } 2>/dev/null
	{ wait $w; } 2>/dev/null # dash reports the killed sleep otherwise
	pycni_answered && exit "$c"
	[ "$c" = D ] && pycni_in_process && return 1
	set -C # create-or-fail: whichever of this shell and the server makes the file first owns the request
	{ true >"$f"; } 2>/dev/null && { set +C; pycni_in_process; return 1; } # not ":": a special builtin failing a redirection ends the shell
	set +C # the server has it: wait for the answer, or say it may have run (at once if that server is gone)
	{ pycni_started "$p"; } 2>/dev/null && [ "$x" = "$ps" ] || { pycni_answered && exit "$c"; pycni_lost; }
	sleep "${PYCNI_SERVER_TIMEOUT:-30}" </dev/null >/dev/null 2>&1 3<&- 4>&- &
	w=$!
	printf '%s %s %s wait\n' $$ "$t" $w 2>/dev/null 1<>"$q"
	{ wait $w; } 2>/dev/null # dash reports the killed sleep otherwise
	pycni_answered && exit "$c"
	[ "$c" = D ] && pycni_in_process && return 1
	pycni_lost
}
pycni_started() { # x = the start time of process $1 (field 22 of its stat); fails when it is gone or a zombie
	read -r x <"/proc/$1/stat" || return 1
	set -- ${x##*) }
	x=${20}
	case $1 in Z | X) return 1 ;; esac
}
pycni_lost() {
	printf '{"cniVersion": "1.1.0", "code": 11, "msg": "%s"}\n' "lost the pycni node server after it took the request; try again later"
	exit 1
}
pycni_answered() { # the answer file holds the exit code (the result is in stdout), or D for declined
	c=
	{ read -r c <"$f"; } 2>/dev/null
	case $c in '' | *[!0-9]*) return 1 ;; esac
}
pycni_in_process() { # the server had its chance: the Python client must not wait for it again
	export PYCNI_SERVER_SOCKET=off
}
d=
pycni_handoff
[ -z "$d" ] || exec 3<&- 4>&- # the copies of stdin and stdout are the handoff's, not Python's
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
