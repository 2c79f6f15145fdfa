"""Capturing a place: capture conditions (season, light, white balance, noise) and the two renderers.

The satellite tile and the ground panorama of one place are captured under independently drawn
conditions, as in real cross-view data (different dates, sun positions and cameras).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .world import DIRT, FIELD, GARDEN, GRASS, N_MATERIALS, TREE, WATER, World

logger = logging.getLogger(__name__)

# Vegetation colour gains per season (grass/field/garden, trees, dirt, water).
SEASONS = {
    "summer": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "spring": ((0.95, 1.12, 0.9), (0.95, 1.15, 0.9), (0.95, 0.95, 0.95), (1.0, 1.05, 1.0)),
    "autumn": ((1.25, 1.05, 0.8), (1.6, 1.0, 0.6), (1.05, 1.0, 0.95), (0.95, 1.0, 1.0)),
    "dry": ((1.5, 1.2, 0.95), (1.2, 1.05, 0.85), (1.15, 1.08, 1.0), (0.9, 0.95, 0.9)),
}
SKIES = (((200, 215, 230), (90, 140, 210)), ((215, 220, 225), (150, 170, 200)),
         ((190, 190, 195), (160, 160, 168)), ((235, 210, 180), (110, 140, 190)))


@dataclass(frozen=True)
class Conditions:
    """One capture's appearance parameters.

    gain: float32 (N_MATERIALS, 3) colour gain per material (season × white balance × exposure).
    sun_azimuth/sun_elevation: radians (azimuth clockwise from north). gamma: tone curve exponent.
    noise: std of additive Gaussian pixel noise (0–255 scale). sky: (horizon, zenith) RGB.
    """

    gain: np.ndarray
    sun_azimuth: float
    sun_elevation: float
    ambient: float
    gamma: float
    noise: float
    sky_horizon: tuple[int, int, int]
    sky_zenith: tuple[int, int, int]
    season: str


def sample_conditions(rng: np.random.Generator, *, strength: float = 1.0) -> Conditions:
    """Draw capture conditions; ``strength`` in [0, 1] scales how far they stray from neutral."""
    season = str(rng.choice(list(SEASONS))) if strength > 0 else "summer"
    veg, tree, dirt, water = (np.asarray(g, np.float32) for g in SEASONS[season])
    gain = np.ones((N_MATERIALS, 3), np.float32)
    mix = lambda g: 1.0 + strength * (g - 1.0)  # noqa: E731
    for m in (GRASS, FIELD, GARDEN):
        gain[m] = mix(veg)
    gain[TREE], gain[DIRT], gain[WATER] = mix(tree), mix(dirt), mix(water)
    white = 1.0 + strength * rng.normal(0, 0.04, 3)
    exposure = 1.0 + strength * rng.uniform(-0.15, 0.15)
    gain = (gain * white * exposure).astype(np.float32)
    sky = SKIES[int(rng.integers(len(SKIES)))] if strength > 0 else SKIES[0]
    return Conditions(
        gain=gain,
        sun_azimuth=float(rng.uniform(0, 2 * math.pi)),
        sun_elevation=float(rng.uniform(0.45, 1.25)),
        ambient=float(rng.uniform(0.5, 0.7)),
        gamma=float(1.0 + strength * rng.uniform(-0.15, 0.15)),
        noise=float(strength * rng.uniform(1.0, 4.0)),
        sky_horizon=tuple(int(v) for v in sky[0]),
        sky_zenith=tuple(int(v) for v in sky[1]),
        season=season,
    )


def pano_distances(max_m: float = 160.0, near_m: float = 0.25, step_m: float = 0.25,
                   growth: float = 0.01) -> np.ndarray:
    """Sample distances for the panorama march: ``step_m`` apart near the camera, growing by ``growth``
    of the distance further out. float64 (K,)."""
    out, d = [], near_m
    while d <= max_m:
        out.append(d)
        d += max(step_m, growth * d)
    return np.asarray(out, np.float64)


_DIST = pano_distances()


# Standard-normal quantiles of 256 equiprobable bins: uniform bytes → Gaussian noise via a table lookup
# (an order of magnitude faster than rng.normal on images; the noise is only cosmetic).
def _normal_quantiles() -> np.ndarray:
    from statistics import NormalDist

    nd = NormalDist()
    return np.array([nd.inv_cdf((k + 0.5) / 256.0) for k in range(256)], np.float64)


_GAUSS_Q = _normal_quantiles()


def finish(image: np.ndarray, cond: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Tone curve + sensor noise: uint8 (H, W, 3) → uint8 (H, W, 3)."""
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** cond.gamma + 0.5, 0, 255).astype(np.int16)
    out = lut[image]
    if cond.noise > 0:
        table = np.rint(_GAUSS_Q * cond.noise).astype(np.int16)
        out += table[rng.integers(0, 256, image.shape, dtype=np.uint8)]
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _renderer():
    """The compiled ray caster ``s4g_synth._render``, imported on first use (importing the package, e.g. for
    ``GENERATOR_VERSION``, does not need it)."""
    try:
        from s4g_synth import _render
    except ImportError as exc:
        from s4g_engine.errors import DependencyError

        raise DependencyError(f"the synthetic-world renderer s4g_synth._render is not built ({exc}); rebuild the "
                              "package (pip install -e . in a checkout) so that its compiled module exists") from exc
    return _render


def render_tile(world: World, center: tuple[float, float], size: int, tile_res: float, cond: Conditions,
                threads: int = 1) -> np.ndarray:
    """North-up orthographic tile, uint8 (size, size, 3), before :func:`finish`."""
    render = _renderer()
    return render.render_tile(world.height, world.albedo, world.facade, world.material, cond.gain,
                              res=world.res, x0=world.x0, y0=world.y0, center=center, size=size, tile_res=tile_res,
                              sun_azimuth=cond.sun_azimuth, sun_elevation=cond.sun_elevation, ambient=cond.ambient,
                              hmax=world.hmax, threads=threads)


def render_panorama(world: World, camera: tuple[float, float, float], size: tuple[int, int], cond: Conditions,
                    *, vfov_deg: float = 90.0, dist: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """360° equirectangular panorama uint8 (H, W, 3) (centre column = north), before :func:`finish`.

    Rows span +vfov/2 (top) to −vfov/2 (bottom) around the horizon; with the default 90° and H:W = 1:4
    the pixels are square, as in the 128×512 default.
    """
    half = math.radians(vfov_deg) / 2
    return _render_pano(world, camera, size, cond, half, _DIST if dist is None else dist, threads)


def _render_pano(world, camera, size, cond, half, dist, threads):
    render = _renderer()
    return render.render_panorama(world.height, world.albedo, world.facade, world.material, cond.gain, dist,
                                  res=world.res, x0=world.x0, y0=world.y0, camera=camera, size=size,
                                  elev_top=half, elev_bottom=-half, sun_azimuth=cond.sun_azimuth,
                                  sun_elevation=cond.sun_elevation, ambient=cond.ambient,
                                  sky_horizon=cond.sky_horizon, sky_zenith=cond.sky_zenith,
                                  far_ground=(118, 122, 112), hmax=world.hmax, threads=threads)
