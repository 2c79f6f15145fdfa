"""Settings of the localisation service (one frozen dataclass, passed to every replica)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from s4g_engine.errors import InputError


@dataclass(frozen=True)
class ServeConfig:
    """What ``s4g-serve`` runs.

    ``max_batch`` images per encoder/search batch across concurrent requests, ``max_wait_ms`` the longest an
    image waits for others to fill its batch; ``request_timeout_s`` per request (504 after it);
    ``max_images`` per request; ``max_k`` candidates (also bounded by the gallery size and
    :mod:`s4g_engine.limits`); ``tiles`` a folder with the gallery's tiles, named by their ids (thumbnails).
    ``backend``/``precision`` pin the encoder runtime (``auto``: chosen by calibration on the replica's machine
    for its batch size, which may be a bf16 path whose last bits differ from another batch size's choice).
    """

    model: str
    index: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    request_timeout_s: float = 30.0
    max_images: int = 16
    max_k: int = 100
    tiles: str | None = None
    thumbnail_px: int = 128
    gallery_points: int = 5000

    def __post_init__(self) -> None:
        for name in ("max_batch", "replicas", "max_images", "max_k", "thumbnail_px", "gallery_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"serve config {name}: expected an integer >= 1, got {v!r}")
        for name in ("max_wait_ms", "request_timeout_s", "cpus_per_replica", "gpus_per_replica"):
            v = getattr(self, name)  # a string ('5') would pass float() and fail later, in a replica
            gpus = name == "gpus_per_replica"  # 0 = CPU only
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if gpus else v > 0):
                raise InputError(f"serve config {name}: expected a number {'>= 0' if gpus else '> 0'}, got "
                                 f"{type(v).__name__} {v!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"serve config port: expected an integer in [0, 65535], got {self.port!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
