"""Dataset generation: districts → sampled places → rendered pairs → files in a real layout.

Work is split by district (one world each). A district task generates its world, samples its places
with its own RNG and renders each pair with a per-pair RNG seeded from (seed, district, pair), so
results do not depend on the number of workers or their order. Districts run in a process pool;
inside a worker the C++ renderer runs single-threaded.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4g_engine.errors import InputError

# Images are written atomically but without fsync (durable=False): thousands of regenerable files, ~10 ms of
# fsync each; the split files that make a world usable are written last, durably (layouts.py).
from s4g_engine.fileio import atomic_write_bytes

from . import capture
from .city import CityConfig, generate_world
from .layouts import (
    CITY_ANCHORS,
    US_ANCHORS,
    VIGOR_CITIES,
    cvusa_paths,
    encode_image,
    vigor_pano_name,
    vigor_sat_name,
    write_cvusa_index,
    write_vigor_city_index,
)
from .world import ROADLIKE, WATER, World

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1"
LAYOUTS = ("cvusa", "vigor")


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that determines the bytes of a generated dataset.

    (s4g_train's ``data.synth`` section only names a world to generate: layout, pairs, seed and
    ``options``, the keyword arguments of :func:`s4g_synth.generate_dataset` that end up here.)
    """

    layout: str = "cvusa"
    pairs: int = 1000                      # CVUSA: pairs; VIGOR: panoramas (over 4 cities)
    seed: int = 0
    tile_size: int = 256                   # satellite tile side (pixels)
    pano_size: tuple[int, int] = (128, 512)  # panorama (height, width)
    tile_res: float = 0.5                  # metres per tile pixel
    world_res: float = 0.5                 # metres per world raster cell
    district_m: float = 1000.0             # side of one district
    pairs_per_district: int = 200
    min_spacing_m: float = 30.0            # between sampled places of one district
    cam_height: tuple[float, float] = (2.0, 3.0)
    jitter_m: float = 0.6                  # CVUSA: std of the panorama position around the tile centre
    conditions: float = 1.0                # 0 = identical neutral capture conditions, 1 = full variation
    vfov_deg: float = 90.0                 # panorama vertical field of view (centred on the horizon)
    jpeg_quality: int = 90
    val_fraction: float = 0.2              # CVUSA val (= test) share; VIGOR same-area test share = 0.5

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"layout: expected one of {LAYOUTS}, got {self.layout!r}")
        if not isinstance(self.pairs, (int, np.integer)) or self.pairs < 1:
            raise InputError(f"pairs: expected a positive integer, got {self.pairs!r}")
        if self.layout == "vigor" and self.pairs < 8:
            raise InputError(f"pairs: the VIGOR layout needs at least 8 panoramas (2 per city), got {self.pairs}")
        if not 16 <= self.tile_size <= 4096:
            raise InputError(f"tile_size: expected 16..4096 pixels, got {self.tile_size}")
        h, w = self.pano_size
        if not (8 <= h <= 4096 and 16 <= w <= 8192):
            raise InputError(f"pano_size: expected (height 8..4096, width 16..8192), got {self.pano_size}")
        if not (math.isfinite(self.tile_res) and math.isfinite(self.world_res)) or self.tile_res <= 0 \
                or self.world_res <= 0:
            raise InputError(f"tile_res/world_res must be finite and > 0 metres per pixel, got {self.tile_res}/"
                             f"{self.world_res}")
        if not 0.0 <= self.conditions <= 1.0:  # also refuses NaN
            raise InputError(f"conditions: expected 0 (none) .. 1 (full variation), got {self.conditions}")
        extent = self.tile_size * self.tile_res
        if extent > 0.4 * self.district_m:
            raise InputError(f"tile extent {extent:.0f} m (tile_size × tile_res) is too large for districts of "
                             f"{self.district_m:.0f} m; lower --tile-size or tile_res")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"val_fraction: expected (0, 1), got {self.val_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"jpeg_quality: expected 1..100, got {self.jpeg_quality}")


def _district_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k, 0x5EED]).generate_state(1)[0])


def _pair_rng(seed: int, k: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, k, i, 0xCAFE])


def sample_places(world: World, n: int, rng: np.random.Generator, spacing: float,
                  box: tuple[float, float, float, float]) -> np.ndarray:
    """``n`` road points (x, y) inside ``box`` = (xmin, xmax, ymin, ymax) at least ``spacing`` m apart
    (relaxed by ×0.7 steps if the district is too small). float64 (n, 2)."""
    def cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, c = np.nonzero(mask)
        x = world.x0 + (c + 0.5) * world.res
        y = world.y0 - (r + 0.5) * world.res
        ok = (x > box[0]) & (x < box[1]) & (y > box[2]) & (y < box[3])
        return x[ok], y[ok]

    x, y = cells(np.isin(world.material, ROADLIKE) & (world.height <= 0.0))
    if len(x) < 4 * n:   # tiny district: any open ground that is not water
        logger.debug("only %d road cells for %d places: sampling open ground too", len(x), n)
        x, y = cells((world.height <= 0.0) & (world.material != WATER))
    if len(x) < n:
        raise RuntimeError(f"district has only {len(x)} open cells inside the sampling box; need {n}")
    order = rng.permutation(len(x))
    chosen: list[tuple[float, float]] = []
    while spacing > 0.5:
        grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for px, py in chosen:
            grid.setdefault((int(px // spacing), int(py // spacing)), []).append((px, py))
        for idx in order:
            px, py = float(x[idx]), float(y[idx])
            gx, gy = int(px // spacing), int(py // spacing)
            if any((px - qx) ** 2 + (py - qy) ** 2 < spacing * spacing
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for qx, qy in grid.get((gx + dx, gy + dy), ())):
                continue
            grid.setdefault((gx, gy), []).append((px, py))
            chosen.append((px, py))
            if len(chosen) == n:
                return np.asarray(chosen, np.float64)
        spacing *= 0.7
    raise RuntimeError(f"could not place {n} distinct places in the district")


def render_views(world: World, tile_center: tuple[float, float], cam_xy: tuple[float, float],
                 rng: np.random.Generator, cfg: GeneratorConfig, *, render_tile: bool = True
                 ) -> tuple[np.ndarray | None, np.ndarray]:
    """(tile uint8 (S, S, 3) or None, panorama uint8 (H, W, 3)) under independent capture conditions."""
    sat_cond = capture.sample_conditions(rng, strength=cfg.conditions)
    gnd_cond = capture.sample_conditions(rng, strength=cfg.conditions)
    cam_z = float(rng.uniform(*cfg.cam_height))
    tile = None
    if render_tile:
        tile = capture.finish(capture.render_tile(world, tile_center, cfg.tile_size, cfg.tile_res, sat_cond),
                              sat_cond, rng)
    pano = capture.render_panorama(world, (cam_xy[0], cam_xy[1], cam_z), tuple(cfg.pano_size), gnd_cond,
                                   vfov_deg=cfg.vfov_deg)
    return tile, capture.finish(pano, gnd_cond, rng)


def _anchor(cfg: GeneratorConfig, city: str | None, k_city: int, k: int) -> tuple[float, float]:
    if city is None:
        lat, lon = US_ANCHORS[k % len(US_ANCHORS)]
        ring = k // len(US_ANCHORS)
    else:
        lat, lon = CITY_ANCHORS[city]
        ring = k_city
    # districts of one anchor sit on a spiral 0.05° (~5 km) apart: no two districts overlap
    ang = ring * 2.39996
    rad = 0.05 * math.sqrt(ring)
    return lat + rad * math.sin(ang), lon + rad * math.cos(ang) / math.cos(math.radians(lat))


@dataclass(frozen=True)
class DistrictTask:
    k: int                 # global district index
    n: int                 # places (pairs / panoramas) in this district
    first_id: int          # CVUSA: id of its first pair; VIGOR: index of its first panorama in the city
    city: str | None       # VIGOR city, None for CVUSA
    k_city: int            # district index within the city
    out: str
    cfg: GeneratorConfig
    size_m: float = 1000.0  # side of the district
    grid: int = 0           # VIGOR: tiles per side of the district's tile grid


def run_district(task: DistrictTask) -> dict:
    """Generate one district and write its images; returns the index rows for the layout writer."""
    cfg, k = task.cfg, task.k
    t0 = time.perf_counter()
    lat, lon = _anchor(cfg, task.city, task.k_city, k)
    name = task.city or f"district{k:03d}"
    world = generate_world(_district_seed(cfg.seed, k), lat, lon, name,
                           CityConfig(size_m=task.size_m, res=cfg.world_res))
    t_world = time.perf_counter() - t0
    rng = np.random.default_rng([cfg.seed, k, 0x91ACE])
    out = Path(task.out)
    extent = cfg.tile_size * cfg.tile_res
    half = task.size_m / 2
    if task.city is None:
        m = extent / 2 + 5
        places = sample_places(world, task.n, rng, cfg.min_spacing_m, (-half + m, half - m, -half + m, half - m))
        rows = []
        for i, (x, y) in enumerate(places):
            prng = _pair_rng(cfg.seed, k, i)
            cam = (x + prng.normal(0, cfg.jitter_m), y + prng.normal(0, cfg.jitter_m))
            tile, pano = render_views(world, (x, y), cam, prng, cfg)
            pid = task.first_id + i
            sat_rel, pano_rel, _ = cvusa_paths(pid)
            atomic_write_bytes(out / sat_rel, encode_image(tile, "jpg", cfg.jpeg_quality), durable=False)
            atomic_write_bytes(out / pano_rel, encode_image(pano, "jpg", cfg.jpeg_quality), durable=False)
            slat, slon = world.to_latlon(x, y)
            glat, glon = world.to_latlon(*cam)
            rows.append((pid, float(slat), float(slon), float(glat), float(glon)))
        return {"k": k, "rows": rows, "t_world": t_world, "t_total": time.perf_counter() - t0}
    return _run_vigor_district(task, world, rng, t0, t_world)


def _run_vigor_district(task: DistrictTask, world: World, rng: np.random.Generator, t0: float, t_world: float) -> dict:
    from s4g_engine.datasets.vigor import pixel_delta

    cfg, k = task.cfg, task.k
    out = Path(task.out) / task.city
    step = cfg.tile_size * cfg.tile_res / 2                 # 50 % overlap
    n_side = task.grid
    centres = (np.arange(n_side) - (n_side - 1) / 2) * step
    tiles = {}
    for gi, ty in enumerate(centres[::-1]):                # north → south, west → east
        for gj, tx in enumerate(centres):
            lat, lon = world.to_latlon(tx, ty)
            tiles[(gi, gj)] = (float(tx), float(ty), vigor_sat_name(float(lat), float(lon)))
    lim = centres[-1] + step / 2 - 1.0
    places = sample_places(world, task.n, rng, cfg.min_spacing_m * 0.7, (-lim, lim, -lim, lim))
    rows = []
    for i, (x, y) in enumerate(places):
        prng = _pair_rng(cfg.seed, k, i)
        gj = int(np.clip(np.rint((x - centres[0]) / step), 0, n_side - 1))
        gi = int(np.clip(np.rint((centres[-1] - y) / step), 0, n_side - 1))
        tx, ty, _ = tiles[(gi, gj)]
        sj = 1 if x >= tx else -1                          # the other three overlapping tiles
        si = -1 if y >= ty else 1
        cand = [(gi, gj), (gi, gj + sj), (gi + si, gj), (gi + si, gj + sj)]
        cand = [(a, b) if (a, b) in tiles else (gi, gj) for a, b in cand]
        names, north, east = [], [], []
        for a, b in cand:
            cx, cy, nm = tiles[(a, b)]
            names.append(nm)
            north.append(y - cy)
            east.append(x - cx)
        delta = pixel_delta(np.array(north), np.array(east), cfg.tile_res)
        _, pano = render_views(world, (x, y), (x, y), prng, cfg, render_tile=False)
        lat, lon = world.to_latlon(x, y)
        prefix = "".join(prng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 22))
        pname = vigor_pano_name(prefix, float(lat), float(lon))
        atomic_write_bytes(out / "panorama" / pname, encode_image(pano, "jpg", cfg.jpeg_quality), durable=False)
        rows.append((pname, names, delta))
    for (gi, gj), (tx, ty, nm) in tiles.items():
        trng = np.random.default_rng([cfg.seed, k, gi, gj, 0x7173])
        cond = capture.sample_conditions(trng, strength=cfg.conditions)
        tile = capture.finish(capture.render_tile(world, (tx, ty), cfg.tile_size, cfg.tile_res, cond), cond, trng)
        atomic_write_bytes(out / "satellite" / nm, encode_image(tile, "png"), durable=False)
    return {"k": k, "city": task.city, "rows": rows, "tiles": [t[2] for t in tiles.values()],
            "t_world": t_world, "t_total": time.perf_counter() - t0}


def plan(cfg: GeneratorConfig, out: Path) -> list[DistrictTask]:
    """District tasks of a dataset (depends only on cfg)."""
    tasks: list[DistrictTask] = []
    ppd = cfg.pairs_per_district
    extent = cfg.tile_size * cfg.tile_res
    if cfg.layout == "cvusa":
        done = 0
        while done < cfg.pairs:
            n = min(ppd, cfg.pairs - done)
            # small districts for small datasets (same density of places per area)
            size = min(cfg.district_m, max(2.5 * extent + 60.0, 300.0, cfg.district_m * math.sqrt(n / ppd)))
            tasks.append(DistrictTask(len(tasks), n, done + 1, None, len(tasks), str(out), cfg,
                                      size_m=10.0 * math.ceil(size / 10.0)))
            done += n
        return tasks
    per_city = [cfg.pairs // 4 + (1 if c < cfg.pairs % 4 else 0) for c in range(4)]
    for city, n_city in zip(VIGOR_CITIES, per_city, strict=True):
        done, kc = 0, 0
        while done < n_city:
            n = min(ppd, n_city - done)
            # about 0.9 tiles per panorama, as in VIGOR (90,618 tiles / 105,214 panoramas)
            grid = max(math.ceil(200.0 / (extent / 2)), math.ceil(math.sqrt(0.9 * n)))  # ≥ 200 m: some roads
            size = (grid + 1) * extent / 2 + 2 * max(60.0, extent / 2)
            tasks.append(DistrictTask(len(tasks), n, done, city, kc, str(out), cfg, size_m=size, grid=grid))
            done, kc = done + n, kc + 1
    return tasks


def run_tasks(tasks: list[DistrictTask], workers: int, total: int, desc: str) -> list[dict]:
    """Run district tasks (in a spawn process pool when workers > 1) with a progress bar over pairs."""
    from tqdm.auto import tqdm

    results: list[dict] = []
    with tqdm(total=total, desc=desc, unit="pair", disable=None) as bar:
        if workers <= 1 or len(tasks) == 1:
            for t in tasks:
                results.append(run_district(t))
                bar.update(t.n)
        else:
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn")) as ex:
                futs = {ex.submit(run_district, t): t for t in tasks}
                for f in cf.as_completed(futs):
                    results.append(f.result())
                    bar.update(futs[f].n)
    return sorted(results, key=lambda r: r["k"])


def config_to_meta(cfg: GeneratorConfig, tasks: list[DistrictTask]) -> dict:
    anchors = [list(_anchor(cfg, t.city, t.k_city, t.k)) for t in tasks]
    return {"generator": "s4g-synth", "generator_version": GENERATOR_VERSION,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
            "layout": cfg.layout, "seed": cfg.seed, "pairs": cfg.pairs, "tile_size": cfg.tile_size,
            "pano_size": list(cfg.pano_size), "metres_per_pixel": cfg.tile_res, "world_res": cfg.world_res,
            "districts": len(tasks), "anchors": anchors,
            "panorama_convention": "equirectangular, centre column faces north, column 0 south, W/4 west, 3W/4 east; "
                                   f"rows span +{cfg.vfov_deg / 2:g}..-{cfg.vfov_deg / 2:g} degrees elevation"}


def write_layout(cfg: GeneratorConfig, out: Path, results: list[dict]) -> None:
    if cfg.layout == "cvusa":
        rows = [r for res in results for r in res["rows"]]
        ids = np.array([r[0] for r in rows], np.int64)
        gps = np.array([r[1:] for r in rows], np.float64)
        split_rng = np.random.default_rng([cfg.seed, 0x5917])
        val = np.zeros(len(ids), bool)
        val[split_rng.permutation(len(ids))[: max(1, int(round(cfg.val_fraction * len(ids))))]] = True
        write_cvusa_index(out, ids, gps, val)
        return
    for city in VIGOR_CITIES:
        rows = [r for res in results if res["city"] == city for r in res["rows"]]
        tiles = [t for res in results if res["city"] == city for t in res["tiles"]]
        split_rng = np.random.default_rng([cfg.seed, VIGOR_CITIES.index(city), 0x5917])
        test = np.zeros(len(rows), bool)
        test[split_rng.permutation(len(rows))[: len(rows) // 2]] = True
        write_vigor_city_index(out, city, tiles, rows, test)
