"""Slow float64 NumPy reference of the C++ renderer (csrc/synth/render.cpp, module ``s4g_synth._render``),
for parity tests.

It is written differently on purpose: the panorama is a per-pixel ray march (every pixel finds its own
first sample with ``cam_z + d_k·tan(elev) <= h(d_k)``), while the C++ code marches once per column with
a fill frontier. Same conventions as ``csrc/synth/render.h``.
"""
from __future__ import annotations

import math

import numpy as np

from .world import World

BUILDING_ID = 9  # render.h kMaterialBuilding


def _cells(world: World, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = world.height.shape
    c = np.clip(np.floor((x - world.x0) / world.res), 0, cols - 1).astype(np.int64)
    r = np.clip(np.floor((world.y0 - y) / world.res), 0, rows - 1).astype(np.int64)
    return r, c


def _h(world: World, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    rows, cols = world.height.shape
    return world.height[np.clip(r, 0, rows - 1), np.clip(c, 0, cols - 1)].astype(np.float64)


def _u8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)


def _sunlit(world: World, x, y, z, az, el, step, max_m) -> np.ndarray:
    lit = np.ones(np.shape(x), bool)
    sx, sy, te = math.sin(az), math.cos(az), math.tan(el)
    for k in range(1, int(math.floor(max_m / step)) + 1):
        d = k * step
        r, c = _cells(world, x + d * sx, y + d * sy)
        lit &= ~(_h(world, r, c) > z + d * te)
    return lit


def _top_light(world, r, c, x, y, az, el, ambient, step, max_m) -> np.ndarray:
    gx = (_h(world, r, c + 1) - _h(world, r, c - 1)) / (2.0 * world.res)
    gy = (_h(world, r - 1, c) - _h(world, r + 1, c)) / (2.0 * world.res)
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    ce, se = math.cos(el), math.sin(el)
    ndotl = (-gx * math.sin(az) * ce - gy * math.cos(az) * ce + se) / norm
    diffuse = np.clip(ndotl / se, 0.0, 1.3)
    lit = _sunlit(world, x, y, _h(world, r, c), az, el, step, max_m)
    diffuse = np.where((diffuse > 0) & ~lit, 0.0, diffuse)
    return ambient + (1.0 - ambient) * diffuse


def render_tile_ref(world: World, gain: np.ndarray, center, size: int, tile_res: float, *, sun_azimuth=2.4,
                    sun_elevation=0.8, ambient=0.55, shadow_step=1.0, shadow_max=60.0) -> np.ndarray:
    """uint8 (size, size, 3), same maths as ``s4g_synth._render.render_tile``."""
    u = np.arange(size, dtype=np.float64)
    y = center[1] - (u[:, None] + 0.5 - size / 2.0) * tile_res + np.zeros((1, size))
    x = center[0] + (u[None, :] + 0.5 - size / 2.0) * tile_res + np.zeros((size, 1))
    r, c = _cells(world, x, y)
    light = _top_light(world, r, c, x, y, sun_azimuth, sun_elevation, ambient, shadow_step, shadow_max)
    g = gain.astype(np.float64)[world.material[r, c]]
    return _u8(world.albedo[r, c].astype(np.float64) * g * light[..., None])


def render_panorama_ref(world: World, gain: np.ndarray, dist: np.ndarray, camera, size, *,
                        elev_top=math.pi / 4, elev_bottom=-math.pi / 4, sun_azimuth=2.4, sun_elevation=0.8,
                        ambient=0.55, shadow_step=1.0, shadow_max=60.0, sky_horizon=(200, 215, 230),
                        sky_zenith=(90, 140, 210), far_ground=(120, 120, 110), floor_height=3.2,
                        window_width=2.6) -> np.ndarray:
    """uint8 (H, W, 3), same maths as ``s4g_synth._render.render_panorama`` (per-pixel march)."""
    H, W = size
    cx, cy, cz = (float(v) for v in camera)
    elev = elev_top - (np.arange(H) + 0.5) * ((elev_top - elev_bottom) / H)
    tan_el = np.tan(elev)
    theta = 2.0 * math.pi * np.arange(W) / W
    ex, ny = -np.sin(theta), -np.cos(theta)
    hit = np.full((H, W), -1, np.int64)
    for k, d in enumerate(np.asarray(dist, np.float64)):
        r, c = _cells(world, cx + d * ex, cy + d * ny)
        h = _h(world, r, c)
        newly = (hit < 0) & (cz + d * tan_el[:, None] <= h[None, :])
        hit[newly] = k
    out = np.zeros((H, W, 3), np.uint8)
    # background
    m = np.sqrt(np.clip(elev / (math.pi / 2), 0, 1))
    sky = _u8(np.asarray(sky_horizon, np.float64) + (np.asarray(sky_zenith, np.float64) - sky_horizon) * m[:, None])
    bg = np.where((elev > 0)[:, None], sky, np.asarray(far_ground, np.uint8)[None, :])
    ii, jj = np.nonzero(hit < 0)
    out[ii, jj] = bg[ii]
    ii, jj = np.nonzero(hit >= 0)
    k = hit[ii, jj]
    d = np.asarray(dist, np.float64)[k]
    x, y = cx + d * ex[jj], cy + d * ny[jj]
    r, c = _cells(world, x, y)
    h = _h(world, r, c)
    dp = np.where(k > 0, np.asarray(dist, np.float64)[np.maximum(k - 1, 0)], 0.0)
    rp, cp = _cells(world, cx + dp * ex[jj], cy + dp * ny[jj])
    r0, c0 = _cells(world, np.array([cx]), np.array([cy]))
    rp = np.where(k > 0, rp, r0[0])
    cp = np.where(k > 0, cp, c0[0])
    hp = _h(world, rp, cp)
    mat = world.material[r, c]
    g = gain.astype(np.float64)[mat]
    wall = h > hp
    # walls
    xwall = cp != c
    nx = np.where(xwall, np.where(ex[jj] > 0, -1.0, 1.0), 0.0)
    nyw = np.where(xwall, 0.0, np.where(ny[jj] > 0, -1.0, 1.0))
    along = np.where(xwall, y, x)
    ce, se = math.cos(sun_elevation), math.sin(sun_elevation)
    wl = ambient + (1 - ambient) * np.clip((nx * math.sin(sun_azimuth) + nyw * math.cos(sun_azimuth)) * ce / se, 0, 1.3)
    fac = world.facade[r, c].astype(np.float64)
    window = np.floor(fac * 0.3 + np.array([35.0, 45.0, 60.0]))
    z = cz + d * tan_el[ii]
    fs = along / window_width - np.floor(along / window_width)
    fz = z / floor_height - np.floor(z / floor_height)
    win = (mat == BUILDING_ID) & (fs >= 0.2) & (fs < 0.75) & (z > 1.0) & (fz >= 0.35) & (fz < 0.8)
    wall_col = _u8(np.where(win[:, None], window, fac) * g * wl[:, None])
    # tops
    tl = _top_light(world, r, c, x, y, sun_azimuth, sun_elevation, ambient, shadow_step, shadow_max)
    top_col = _u8(world.albedo[r, c].astype(np.float64) * g * tl[:, None])
    out[ii, jj] = np.where(wall[:, None], wall_col, top_col)
    return out
