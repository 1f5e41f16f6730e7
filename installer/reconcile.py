"""One sync pass: binaries, then template -> render -> validate -> atomic write. Idempotent."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .binaries import BinaryError, BinaryInstaller
from .fsutil import sha256
from .health import Status
from .kube import KubeUnavailable
from .log import Log
from .mtu import host_mtu
from .nodecheck import NodeChecker, SetupError, conflist_binaries
from .render import NEEDS_POD_CIDRS, NodeFacts, TemplateError, WaitingForNode, parse_template, \
    placeholders_used, render
from .runtime import RuntimeInstaller
from .settings import Settings
from .source_volume import VolumeSource
from .state import Manifest
from .validate import ValidationError, validate
from .writer import ConfWriter

# results of one pass (also the `result` label of pycni_installer_syncs_total)
WRITTEN, UNCHANGED, REJECTED, WAITING, ERROR = "written", "unchanged", "rejected", "waiting", "error"
BLOCKED = "blocked"  # a plugin binary the config names does not run on this node (nodecheck.py)
UNRECORDED = "unrecorded"  # the state manifest cannot be written: `uninstall` would not know our files


class Installer:
    """Owns the sources; `sync()` makes the host match them. Call `start_sources()` once first."""

    def __init__(self, settings: Settings, log: Log, status: Status,
                 api_factory: Optional[Callable[[], Any]] = None) -> None:
        self.s = settings
        self.log = log
        self.status = status
        self.api_factory = api_factory
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.writer = ConfWriter(settings.conf_dir, settings.conf_name, log)
        self.manifest = Manifest(settings.bin_dir)
        self.binaries = BinaryInstaller(settings.source_dir, settings.bin_dir, log,
                                        written=lambda path: self.manifest.data["binaries"].get(str(path)))
        self.nodecheck = NodeChecker(settings.bin_dir, settings.host_root, settings.host_root_explicit,
                                     settings.host_bin_dir, settings.in_pod, settings.binary_check_timeout, log,
                                     settings.runtime_path)
        self.runtime = RuntimeInstaller(settings.runtime_bundle, settings.bin_dir, self.nodecheck, log)
        self.runtime_problem = ""
        self.pod_events: Any = None  # events.EventRecorder on this installer's own Pod
        self.volume: Optional[VolumeSource] = None
        self.configmap: Any = None  # source_api.ConfigMapSource
        self.node: Any = None  # nodes.NodeSource
        self.events: Any = None  # events.EventRecorder
        self._api: Any = None
        self._api_error = ""
        self._last_good: Optional[bytes] = None
        self._rejected_inputs: set = set()
        self._mtu: Optional[Tuple[int, str]] = None

    # ---- sources ---------------------------------------------------------------------------
    def notify(self) -> None:
        self.wake.set()

    def _restart(self, source: str) -> Callable[[str], None]:
        return lambda cause: self.status.count("watch_restarts", (source, cause))

    def api(self) -> Any:
        """The API client, made on first use (None, with the reason kept, when there is no access)."""
        if self._api is None and not self._api_error:
            try:
                if self.api_factory is None:
                    raise KubeUnavailable("no Kubernetes API access configured")
                self._api = self.api_factory()
            except KubeUnavailable as exc:
                self._api_error = str(exc)
        return self._api

    def start_sources(self) -> None:
        s = self.s
        if s.config_dir is not None:
            self.volume = VolumeSource(s.config_dir, s.config_key, self.log, self.notify, self.stop).start()
        if s.watch_api and s.configmap:
            api = self.api()
            if api is None:
                self.log.error("api_unavailable", why=self._api_error)
            else:
                from .events import EventRecorder
                from .source_api import ConfigMapSource

                namespace, name = s.configmap
                self.configmap = ConfigMapSource(api, namespace, name, s.config_key, self.log, self.notify,
                                                 self.stop, s.watch_timeout_seconds,
                                                 self._restart("configmap")).start()
                self.events = EventRecorder(api, namespace, s.node_name, self.configmap.involved_object,
                                            self.log)

    def _node_source(self) -> Any:
        if self.node is None and self.s.node_name and self.api() is not None:
            from .nodes import NodeSource

            self.node = NodeSource(self.api(), self.s.node_name, self.log, self.notify, self.stop,
                                   self.s.watch_timeout_seconds, self._restart("node")).start()
        return self.node

    def template(self) -> Tuple[Optional[str], str]:
        """(template text or None, where it came from / why there is none)."""
        cm = self.configmap
        if cm is not None and cm.synced:
            text = cm.text()
            if text is not None or self.volume is None:
                return text, cm.label if text is not None else f"{cm.label}: no such ConfigMap or key"
        if self.volume is not None:
            text = self.volume.text()
            return text, self.volume.label if text is not None else f"{self.volume.label}: no such file"
        if cm is not None:
            cause = cm.watcher.problem()
            return None, f"{cm.label}: not listed yet" + (f": {cause}" if cause else "")
        return None, "no config source (set --config-dir and/or --configmap)"

    def _overlay_mtu(self, host: int) -> int:
        """The pod MTU: the host's, less the VXLAN overhead when the node agent runs the vxlan backend."""
        from .network import KEY, pod_mtu

        sources = [s for s in (self.configmap if self.configmap and self.configmap.synced else None, self.volume) if s]
        text = next((t for t in (s.text(KEY) for s in sources) if t is not None), None)
        return pod_mtu(host, text)

    def _facts(self, used: set) -> NodeFacts:
        if self.s.mtu:
            mtu = self.s.mtu
        else:
            if self._mtu is None:
                self._mtu = host_mtu()
                self.log.info("mtu_detected", mtu=self._mtu[0], source=self._mtu[1])
            mtu = self._overlay_mtu(self._mtu[0])
        cidrs: Optional[List[str]] = None
        if used & set(NEEDS_POD_CIDRS) and self.s.pod_cidrs:
            cidrs = list(self.s.pod_cidrs)
        elif used & set(NEEDS_POD_CIDRS) and self.s.node_name:
            node = self._node_source()
            if node is None:
                raise TemplateError(f"the config uses podCIDR placeholders, which need the Node object: "
                                    f"{self._api_error}")
            cidrs = node.known_cidrs()
            if cidrs is None:
                cause = node.watcher.problem()
                raise WaitingForNode(f"waiting for the first list of node {self.s.node_name}"
                                     + (f": {cause}" if cause else ""))
            if not node.exists:
                raise WaitingForNode(f"waiting for node {self.s.node_name} to be registered")
        return NodeFacts(self.s.node_name, cidrs, mtu)

    # ---- the pass --------------------------------------------------------------------------
    def sync(self, why: str) -> str:
        self.status.update(sync_started=time.monotonic())
        try:
            result = self._sync(why)
        except OSError as exc:  # a host write failed: report, retry at the next pass
            self.log.error("sync_failed", why=f"{type(exc).__name__}: {exc}")
            self.status.update(config_ok=False, reason=f"sync failed: {exc}")
            result = ERROR
        finally:
            self.status.update(sync_started=0.0)
        self.status.count("syncs", result)
        return result

    def _sync(self, why: str) -> str:
        try:
            bins = self.binaries.sync(why)
        except BinaryError as exc:
            self.log.error("binaries_failed", why=str(exc))
            self.status.update(binaries_ok=False, reason=f"binaries not installed: {exc}")
            return ERROR
        if bins.copied:
            with self.status.lock:
                self.status.binary_copies += len(bins.copied)
            self.manifest.pending["binaries"].update({str(self.s.bin_dir / n): bins.installed[n] for n in bins.copied})
        if not self._flush_manifest():
            return UNRECORDED
        self.status.update(binaries_ok=True)
        runtime = self.runtime.sync(why)
        self.runtime_problem = runtime.problem
        installed = runtime.installed
        installed_at = str(self.runtime.base / installed) if installed else ""
        if installed and self.manifest.data["runtime"].get(installed_at) != installed:
            # recorded once, as binaries are only when copied: not a manifest re-read every pass
            self.manifest.pending["runtime"][installed_at] = installed
            if not self._flush_manifest():
                return UNRECORDED

        text, origin = self.template()
        if text is None:
            self.status.update(config_ok=False, rejection=None, reason=f"waiting for config: {origin}")
            self._keep_last_good()
            return WAITING
        try:
            template = parse_template(text)
            facts = self._facts(placeholders_used(template))
            rendered = render(template, facts)
            conflist = validate(rendered, self.s.bin_dir, self._node_bin_dir())
        except WaitingForNode as exc:
            self.status.update(config_ok=False, rejection=None, reason=str(exc))
            self._keep_last_good()
            return WAITING
        except TemplateError as exc:
            return self._reject(exc.kind, str(exc), text, origin)
        except ValidationError as exc:
            return self._reject(exc.kind, exc.message, text, origin)
        if not self._binaries_run(conflist):
            return BLOCKED

        written = self.writer.write(rendered, why=f"{why}: from {origin}")
        digest = sha256(rendered)
        if written:
            with self.status.lock:
                self.status.conflist_writes += 1
            self.manifest.pending["conflists"][str(self.writer.path)] = digest
        if self.s.exclusive:
            self.manifest.pending_moved.extend([str(self.s.conf_dir), a, b]
                                               for a, b in self.writer.move_aside_others())
        if not self._flush_manifest():
            return UNRECORDED
        self._last_good = rendered
        self.status.update(config_ok=True, rejection=None, reason="ok", last_success=time.time(),
                           config_hash=digest)
        return WRITTEN if written else UNCHANGED

    def _node_bin_dir(self) -> str:
        """The bin dir as the node names it, for messages (our /host/opt/cni/bin is its /opt/cni/bin)."""
        if self.s.host_bin_dir:
            return self.s.host_bin_dir
        try:
            root, path = self.nodecheck.view()
            if root != Path("/"):
                return path
        except SetupError:
            pass
        text = str(self.s.bin_dir)
        return text[len("/host"):] if text.startswith("/host/") else text
    def _flush_manifest(self) -> bool:
        """Record what this pass wrote; False (not ready, reported) when the bin dir cannot hold the manifest."""
        try:
            self.manifest.flush()
            return True
        except OSError as exc:
            reason = (f"cannot write the state manifest {self.manifest.path}: {exc.strerror or exc}; "
                      f"`uninstall` would not know what was installed")
            self.log.error("manifest_failed", why=reason)
            self.status.update(config_ok=False, binaries_ok=False, reason=reason)
            return False

    def _binaries_run(self, conflist: Dict[str, Any]) -> bool:
        """Every binary the conflist names answers VERSION on the node (see nodecheck.py); else report."""
        report = self.nodecheck.check(conflist_binaries(conflist), conflist["cniVersion"])
        with self.status.lock:
            for outcome in report.outcomes:
                self.status.binary_checks[outcome.plugin] = int(outcome.ok)
                if not outcome.ok:
                    self.status.binary_check_failures[outcome.plugin] += 1
        if report.ok:
            return True
        where = f" ({report.where})" if report.where else ""
        reason = f"plugin binaries do not run on this node{where}: {report.reason()}"
        if self.runtime_problem:
            reason += f"; {self.runtime_problem}"
        kept = self.writer.current() is not None
        self.status.update(config_ok=False, rejection=None,
                           reason=f"{reason}; no conflist written" + (" (the existing one stays)" if kept else ""))
        self.log.error("binary_check_failed", why=reason, kept=str(self.writer.path) if kept else None)
        for recorder in (self.events, self._pod_recorder()):
            if recorder is not None:
                recorder.record("BinaryCheckFailed", f"{reason}; no conflist written", dedupe_key=reason)
        return False

    def _pod_recorder(self) -> Any:
        """Events on our own Pod (downward API name/namespace/uid), made on first use when the API is there."""
        s = self.s
        if self.pod_events is None and s.pod_name and s.pod_namespace and self.api() is not None:
            from .events import EventRecorder

            ref = {"kind": "Pod", "apiVersion": "v1", "namespace": s.pod_namespace, "name": s.pod_name}
            if s.pod_uid:
                ref["uid"] = s.pod_uid
            self.pod_events = EventRecorder(self.api(), s.pod_namespace, s.node_name, lambda: ref, self.log)
        return self.pod_events

    def _keep_last_good(self) -> None:
        """Repair our last good file if it vanished from the host while no new config can be made."""
        if self._last_good is not None and self.writer.write(self._last_good, why="repair: last good config"):
            with self.status.lock:
                self.status.conflist_writes += 1

    def _reject(self, kind: str, reason: str, text: str, origin: str) -> str:
        self._keep_last_good()
        key = (sha256(text.encode()), reason)
        self.status.update(rejection=(kind, reason))
        if key not in self._rejected_inputs:  # count and report each bad input once, not each resync
            self._rejected_inputs.add(key)
            self.status.count("rejections", kind)
            self.log.error("config_rejected", kind=kind, why=reason, source=origin,
                           kept=str(self.writer.path) if self.writer.current() is not None else None)
            if self.events is not None:
                self.events.record("ConfigRejected", reason, dedupe_key=key[0])
        return REJECTED
