"""CNI spec versions: what pycni speaks and what each version allows."""
from __future__ import annotations

from pycni.plugins.core.errors import INCOMPATIBLE_VERSION, CNIError

TYPE_CHECKING = False  # importing typing costs milliseconds on every exec of VERSION
if TYPE_CHECKING:
    from typing import Iterable, Optional, Tuple

SUPPORTED_VERSIONS: "Tuple[str, ...]" = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"


def version_tuple(version: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise CNIError(INCOMPATIBLE_VERSION, f"malformed cniVersion {version!r}") from None


def require_supported(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, plugin supports "
            + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def negotiate(cni_version: Optional[str], cni_versions: Optional[Iterable[str]]) -> str:
    """Pick the version to speak: the highest of `cniVersions` that we support, else `cniVersion`."""
    if cni_versions:
        usable = [v for v in cni_versions if v in SUPPORTED_VERSIONS]
        if usable:
            return max(usable, key=version_tuple)
        if not cni_version:
            raise CNIError(
                INCOMPATIBLE_VERSION,
                f"none of cniVersions {list(cni_versions)} is supported; plugin supports "
                + ", ".join(SUPPORTED_VERSIONS),
            )
    if not cni_version:
        raise CNIError(INCOMPATIBLE_VERSION, "config has no cniVersion")
    return require_supported(cni_version)


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)
