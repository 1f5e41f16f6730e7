"""The spec's error object and codes.

Every failure a plugin reports is a `CNIError`; the dispatcher turns it into
the JSON object the spec defines, printed on stdout with a non-zero exit.
"""
from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs milliseconds on every exec of VERSION
if TYPE_CHECKING:
    from typing import Any, Dict

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999


class CNIError(Exception):
    """An error that is reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
