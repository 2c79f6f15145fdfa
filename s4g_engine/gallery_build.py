"""``s4g-index build`` beyond one process: ``--ray`` (embedding on Ray Data, :mod:`s4g_engine.ray_embed`) and
``--index-backend milvus --uri URI`` (the gallery in Milvus, :mod:`s4g_engine.milvus_backend`).

``s4g-index build --model M --images DIR --coords tiles.csv|tiles.parquet --out tiles.npz --ray [--address A]``
``s4g-index build --model M --images DIR --coords tiles.csv --index-backend milvus --uri tiles.db [--ray]``

With ``--ray`` the shards go to ``--shards DIR`` (default ``<out or uri>.shards``) and are then assembled, in
tile-list order and verified, into the index (a ``.npz`` file, or a Milvus collection).

Neither holds a model whose aerial view has ``centres`` > 1 (every tile embedded as several versions,
:mod:`s4g_engine.tile_centres`): the shards and Milvus keep one embedding per tile, so such a model is refused
with the single-process build as the way out.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def add_cluster_args(b: argparse.ArgumentParser) -> None:
    """The ``--ray`` and Milvus options of ``s4g-index build``."""
    g = b.add_argument_group("distributed build (pip install 's4g[cluster]')")
    g.add_argument("--ray", action="store_true", help="embed on Ray Data (a local Ray unless --address)")
    g.add_argument("--address", default=None, help="Ray cluster address (HOST:6379 or ray://HOST:10001)")
    g.add_argument("--shards", default=None, help="embedding-shard folder (default: <out>.shards); reused to resume")
    g.add_argument("--shard-size", type=int, default=4096, help="tiles per shard (a multiple of --batch-size)")
    g.add_argument("--ray-actors", type=int, default=None, help="most encoder actors (default: CPUs / cpus per actor)")
    g.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    g.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="> 0: encoders on GPUs")
    g.add_argument("--ray-local-cpus", type=int, default=None, help="CPUs of the in-process Ray (default: all)")
    m = b.add_argument_group("Milvus gallery (--index-backend milvus)")
    m.add_argument("--uri", default=None, help="Milvus Lite file (tiles.db) or server URI (http://host:19530)")
    m.add_argument("--collection", default="s4g_tiles", help="Milvus collection name")
    m.add_argument("--milvus-index", default="auto", help="auto|FLAT|HNSW|IVF_FLAT|IVF_PQ|DISKANN (auto: by size)")


def wants_cluster_build(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "ray", False)) or getattr(args, "index_backend", "") == "milvus"


def _target_index(args: argparse.Namespace, dim: int, fingerprint: str, count: int) -> Any:
    if args.index_backend == "milvus":
        from s4g_engine.milvus_backend import MilvusIndex

        return MilvusIndex.create(args.uri, dim, fingerprint=fingerprint, collection=args.collection,
                                  index_type=args.milvus_index, expected_count=count)
    from s4g_engine.index import ReferenceIndex

    return ReferenceIndex(dim, backend=args.index_backend, fingerprint=fingerprint,
                          tile_side_m=getattr(args, "tile_side_m", None))


def refuse_tile_versions(args: argparse.Namespace) -> None:
    """:class:`InputError` when the model embeds each tile as several versions (aerial ``centres`` > 1), which
    neither the Ray shards nor a Milvus gallery can hold."""
    from s4g_engine.bundle import read_bundle_config
    from s4g_engine.errors import InputError
    from s4g_engine.preprocess import DataContract

    centres = DataContract.from_config(read_bundle_config(args.model, verify=False)["views"]).aerial.centres
    if centres > 1:
        how = "--ray" if args.ray else "--index-backend milvus"
        raise InputError(f"{args.model}: this model embeds each tile as {centres}×{centres} versions (config.json "
                         f"views.aerial.centres = {centres}), which {how} cannot hold (one embedding per tile); "
                         "expected the single-process build: s4g-index build without --ray, with --index-backend "
                         "auto, exact or exact-fp16 and --out FILE")


def build(args: argparse.Namespace, paths: Sequence[str], coords: np.ndarray, ids: Sequence[str]) -> int:
    """Build the index of ``args`` (``--ray`` and/or Milvus); prints one summary line."""
    t0 = time.perf_counter()
    refuse_tile_versions(args)
    dest = args.uri if args.index_backend == "milvus" else args.out
    if args.ray:
        from s4g_engine.ray_embed import RayEmbedConfig, embed_to_shards

        cfg = RayEmbedConfig(model=args.model, shards_dir=args.shards or f"{dest}.shards", batch_size=args.batch_size,
                             shard_size=args.shard_size, address=args.address, actors=args.ray_actors,
                             cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor,
                             device=args.device, backend=args.backend, local_cpus=args.ray_local_cpus)
        summary = embed_to_shards(cfg, paths, coords, ids)
        job = summary.manifest.job
        index = _target_index(args, int(job["embed_dim"]), str(job["fingerprint"]), len(paths))
        for vec, c, i in summary.manifest.iter_shards(summary.shards):
            index.add(vec, c, i)
        how = f"ray: {summary.computed} shards embedded, {summary.skipped} reused"
    else:
        from s4g_engine.localiser import Localiser

        with Localiser.from_dir(args.model, device=args.device, backend=args.backend, batch_size=args.batch_size,
                                index_backend="exact") as loc:
            loc.index = _target_index(args, loc.embed_dim, loc.fingerprint, len(paths))
            loc.index_references(paths, coords, ids, progress=True)
            index = loc.index
        how = "single process"
    index.save(dest)
    dt = time.perf_counter() - t0
    print(f"indexed {len(paths)} references in {dt:.1f} s ({how}), backend {index.backend}, wrote {dest}")
    return 0


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Option combinations the parser cannot express."""
    if args.index_backend == "milvus":
        if not args.uri:
            p.error("--index-backend milvus needs --uri (a Milvus Lite file such as tiles.db, or http://host:19530)")
    elif not args.out:
        p.error("--out FILE is required (or --index-backend milvus --uri URI)")
    if args.uri and args.index_backend != "milvus":
        p.error("--uri is for --index-backend milvus")
    if args.address and not args.ray:
        p.error("--address needs --ray")
