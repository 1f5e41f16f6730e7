"""CNI_ARGS: `K=V;K=V` pairs the runtime passes, with typed access to the Kubernetes keys."""
from __future__ import annotations

from pycni.plugins.core.record import FrozenRecord

from pycni.plugins.core.errors import INVALID_ENVIRONMENT, CNIError

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, FrozenSet, Iterable, Optional

KUBERNETES_KEYS: FrozenSet[str] = frozenset(
    {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}
)


class CniArgs(FrozenRecord):
    __slots__ = ("values",)
    _defaults = {"values": dict}
    values: Dict[str, str]

    @classmethod
    def parse(cls, text: str) -> "CniArgs":
        values: Dict[str, str] = {}
        for pair in text.split(";"):
            if not pair:
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}, expected KEY=VALUE")
            values[key] = value
        return cls(values)

    @property
    def ignore_unknown(self) -> bool:
        return self.values.get("IgnoreUnknown", "").lower() in ("1", "true")

    def require_known(self, known: Iterable[str]) -> None:
        """Unknown keys are an error unless the runtime set IgnoreUnknown."""
        if self.ignore_unknown:
            return
        allowed = set(known) | KUBERNETES_KEYS | {"IgnoreUnknown"}
        unknown = sorted(k for k in self.values if k not in allowed)
        if unknown:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS: unknown args {unknown} (set IgnoreUnknown=1 to allow)")

    def get(self, key: str) -> Optional[str]:
        return self.values.get(key) or None

    @property
    def pod_namespace(self) -> Optional[str]:
        return self.get("K8S_POD_NAMESPACE")

    @property
    def pod_name(self) -> Optional[str]:
        return self.get("K8S_POD_NAME")

    @property
    def pod_infra_container_id(self) -> Optional[str]:
        return self.get("K8S_POD_INFRA_CONTAINER_ID")

    @property
    def pod_uid(self) -> Optional[str]:
        return self.get("K8S_POD_UID")
