"""Distributed gallery embedding on Ray Data (the ``cluster`` extra): tile list → embedding shards.

``s4g-index build ... --ray [--address ADDR]`` runs the same decode → preprocess → encoder pipeline as
:class:`~s4g_engine.localiser.Localiser` (each actor holds a Localiser and calls its aerial embedding), through
``ray.data`` ``map_batches`` over a pool of actors (CPU or GPU per actor). Ray Data's streaming executor
provides the backpressure: shard descriptors are fed to the pool only as fast as actors finish them.

One dataset row is one *shard*, a contiguous range of the tile list whose length is a multiple of the encoder
batch size, so every image is encoded in the same batch as by the single-process build, and with the
encoder runtime/precision the driver resolved once (an ``auto`` choice is pinned before the actors start):
the vectors are bit-identical to ``s4g-index build`` without ``--ray``. Actors write their shard file
themselves (atomically); the driver records each finished shard in the manifest as results stream back
(:mod:`s4g_engine.shards`), so a killed job restarted with the same arguments skips finished shards.

Without ``--address`` a local Ray is started in-process (and stopped afterwards); with it, the job joins a
running cluster, whose nodes must see the model bundle, the tile images and the shard folder at the same
paths (a shared file system) and have s4g installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4g_engine.errors import DependencyError, InputError, S4GError
from s4g_engine.shards import Manifest, plan_shards, tile_list_digest, write_shard

log = logging.getLogger(__name__)


class RayUnavailableError(S4GError, ConnectionError):
    """The Ray cluster named by ``--address`` cannot be reached."""


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"--ray needs Ray Data ({exc}); install the cluster extra: "
                              "pip install 's4g[cluster]'") from exc
    return ray


@dataclass(frozen=True)
class RayEmbedConfig:
    """How a distributed gallery build runs.

    ``actors``: the most actors in the pool (default: as many as the cluster's CPUs / ``cpus_per_actor``);
    ``gpus_per_actor`` > 0 runs the encoders on GPUs (device ``cuda``; not bit-identical to a CPU build);
    ``local_cpus``/``object_store_mb``: the in-process Ray when no ``address`` is given; ``manifest_every_s``:
    how often finished shards are written to the manifest (a kill loses at most that much work).
    """

    model: str
    shards_dir: str
    batch_size: int = 32
    shard_size: int = 4096
    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    local_cpus: int | None = None
    object_store_mb: int = 512
    manifest_every_s: float = 2.0

    def __post_init__(self) -> None:
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise InputError(f"cpus_per_actor must be > 0 and gpus_per_actor >= 0, got {self.cpus_per_actor}, "
                             f"{self.gpus_per_actor}")
        if self.actors is not None and self.actors < 1:
            raise InputError(f"actors must be >= 1, got {self.actors}")


@dataclass(frozen=True)
class EmbedSummary:
    shards: int
    skipped: int
    computed: int
    rows: int
    seconds: float
    manifest: Manifest


def resolve_encoder(cfg: RayEmbedConfig) -> dict[str, Any]:
    """The aerial encoder every actor must use, plus the model's identity: an ``auto`` runtime/precision is
    resolved once here (as the single-process build resolves it) and pinned for the actors."""
    from s4g_engine.localiser import Localiser

    device = "cuda" if cfg.gpus_per_actor > 0 else cfg.device
    with Localiser.from_dir(cfg.model, device=device, backend=cfg.backend, precision=cfg.precision,
                            batch_size=cfg.batch_size, decode_threads=1) as loc:
        choice = loc.encoder_choice.get("aerial") or {}
        return {"fingerprint": loc.fingerprint, "embed_dim": loc.embed_dim, "device": device,
                "backend": str(choice.get("runtime", cfg.backend)),
                "precision": str(choice.get("precision", cfg.precision))}


class ShardEmbedder:
    """Ray Data actor: one Localiser per actor; embeds one shard descriptor per call and writes its file."""

    def __init__(self, model: str, shards_dir: str, batch_size: int, device: str, backend: str, precision: str,
                 threads: int) -> None:
        from s4g_engine.localiser import Localiser

        self.dir = Path(shards_dir)
        self.loc = Localiser.from_dir(model, device=device, backend=backend, precision=precision,
                                      batch_size=batch_size, threads=threads, decode_threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"shard": [], "file": [], "sha256": [], "rows": [], "start": [], "stop": [],
                                     "seconds": []}
        for j in range(len(batch["shard"])):
            t0 = time.perf_counter()
            paths = [str(p) for p in batch["paths"][j]]
            coords = np.stack([np.asarray(batch["lat"][j], np.float64), np.asarray(batch["lon"][j], np.float64)], 1)
            emb = self.loc.embed_aerial(paths, progress=False)
            entry = write_shard(self.dir, int(batch["shard"][j]), emb, coords, [str(x) for x in batch["ids"][j]])
            for key in ("shard", "file", "sha256", "rows"):
                out[key].append(entry[key])
            out["start"].append(int(batch["start"][j]))
            out["stop"].append(int(batch["start"][j]) + len(paths))
            out["seconds"].append(time.perf_counter() - t0)
        return out


def _init_ray(ray: Any, cfg: RayEmbedConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray; True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    if cfg.address:
        try:
            ray.init(address=cfg.address, log_to_driver=False)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise RayUnavailableError(f"cannot reach the Ray cluster at --address {cfg.address!r} ({exc}); expected "
                                      "a running cluster (`ray start --head` on its head node, address HOST:6379 or "
                                      "ray://HOST:10001), or leave --address out to run on this machine") from exc
        return True
    ray.init(num_cpus=cfg.local_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=int(cfg.object_store_mb) * 1024 * 1024)
    return True


def embed_to_shards(cfg: RayEmbedConfig, paths: Sequence[str], coords: np.ndarray, ids: Sequence[str], *,
                    progress: bool = True) -> EmbedSummary:
    """Embed the tile list into ``cfg.shards_dir`` on Ray, skipping shards a previous run finished."""
    ray = import_ray()
    t0 = time.perf_counter()
    ranges = plan_shards(len(paths), cfg.shard_size, cfg.batch_size)
    enc = resolve_encoder(cfg)
    job = {"tiles_sha256": tile_list_digest(paths, coords, ids), "count": len(paths), "batch_size": cfg.batch_size,
           "shard_size": cfg.shard_size, **enc}
    man = Manifest.open(cfg.shards_dir, job)
    done = man.finished(ranges)
    todo = [i for i in range(len(ranges)) if i not in done]
    log.info("%d shards of %d tiles: %d finished before, %d to embed", len(ranges), len(paths), len(done), len(todo))
    if todo:
        _run_pool(ray, cfg, enc, man, ranges, todo, paths, coords, ids, progress)
    return EmbedSummary(shards=len(ranges), skipped=len(done), computed=len(todo), rows=len(paths),
                        seconds=time.perf_counter() - t0, manifest=man)


def _run_pool(ray: Any, cfg: RayEmbedConfig, enc: dict[str, Any], man: Manifest, ranges: list[tuple[int, int]],
              todo: list[int], paths: Sequence[str], coords: np.ndarray, ids: Sequence[str], progress: bool) -> None:
    started = _init_ray(ray, cfg)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = cfg.actors or max(1, int(cpus // cfg.cpus_per_actor))
        actors = min(actors, len(todo))
        items = []
        for i in todo:
            a, b = ranges[i]
            items.append({"shard": i, "start": a, "paths": list(paths[a:b]), "lat": coords[a:b, 0].tolist(),
                          "lon": coords[a:b, 1].tolist(), "ids": list(ids[a:b])})
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardEmbedder, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None,
            fn_constructor_kwargs={"model": str(Path(cfg.model).resolve()),
                                   "shards_dir": str(Path(cfg.shards_dir).resolve()),
                                   "batch_size": cfg.batch_size, "device": enc["device"], "backend": enc["backend"],
                                   "precision": enc["precision"], "threads": max(1, int(cfg.cpus_per_actor))})
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="embed shards", unit="shard")
        last_save = -float("inf")  # the first finished shard is recorded at once, then every manifest_every_s
        try:
            for row in ds.iter_rows():
                due = time.monotonic() - last_save >= cfg.manifest_every_s
                man.record({k: (int(row[k]) if k in ("shard", "rows", "start", "stop") else str(row[k]))
                            for k in ("shard", "file", "sha256", "rows", "start", "stop")}, save=due)
                last_save = time.monotonic() if due else last_save
                if bar is not None:
                    bar.update(1)
        finally:
            man.save()  # what finished is recorded even when the job fails or is interrupted
            if bar is not None:
                bar.close()
    finally:
        if started:
            ray.shutdown()
