"""The raster world: metric height field + colour/material maps, and the stamping helpers used to draw it.

Coordinates: x = east, y = north, metres, relative to the world's anchor (lat, lon) at (0, 0).
Raster row 0 is the north edge (y = y0), column 0 the west edge (x = x0); cells are ``res`` metres.
Cell (r, c) covers x in [x0 + c*res, x0 + (c+1)*res) and y in (y0 - (r+1)*res, y0 - r*res].
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from s4g_engine.geo import EARTH_RADIUS_M

logger = logging.getLogger(__name__)

# Material ids (index rows of the per-capture colour gain table).
GRASS, DIRT, PAVING, ASPHALT, MARK_WHITE, MARK_YELLOW, SIDEWALK, PARKING = range(8)
WATER, BUILDING, TREE, FIELD, GARDEN, CAR, ROOFTOP = range(8, 15)
N_MATERIALS = 15
MATERIAL_NAMES = ("grass", "dirt", "paving", "asphalt", "mark_white", "mark_yellow", "sidewalk", "parking",
                  "water", "building", "tree", "field", "garden", "car", "rooftop")
VEGETATION = (GRASS, TREE, FIELD, GARDEN)
ROADLIKE = (ASPHALT, MARK_WHITE, MARK_YELLOW)

# Base colours (RGB) of ground materials; buildings/trees/cars get per-object colours.
BASE_COLOUR = {
    GRASS: (96, 132, 64), DIRT: (138, 116, 86), PAVING: (176, 168, 150), ASPHALT: (72, 72, 76),
    MARK_WHITE: (228, 228, 220), MARK_YELLOW: (222, 182, 60), SIDEWALK: (160, 158, 152),
    PARKING: (92, 92, 94), WATER: (52, 88, 112), FIELD: (82, 140, 66), GARDEN: (84, 120, 58),
}


@dataclass
class World:
    """A rasterised district.

    Attributes:
        height: float32 (R, C) metres above ground (0 = ground/water).
        albedo: uint8 (R, C, 3) colour seen from above.
        facade: uint8 (R, C, 3) colour of vertical faces (walls, tree sides).
        material: uint8 (R, C) material id (< N_MATERIALS).
        res: metres per cell; x0, y0: world x of the west edge / y of the north edge.
        lat, lon: anchor (degrees) of the metric origin (0, 0).
        name: district name (VIGOR city / CVUSA region).
    """

    height: np.ndarray
    albedo: np.ndarray
    facade: np.ndarray
    material: np.ndarray
    res: float
    x0: float
    y0: float
    lat: float
    lon: float
    name: str = "district"
    hmax: float = field(default=0.0)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.height.shape[0]), int(self.height.shape[1])

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) metres."""
        rows, cols = self.shape
        return self.x0, self.x0 + cols * self.res, self.y0 - rows * self.res, self.y0

    def cell(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Clamped (row, col) of world points (same rule as the C++ renderer)."""
        rows, cols = self.shape
        c = np.clip(np.floor((np.asarray(x, np.float64) - self.x0) / self.res), 0, cols - 1).astype(np.int64)
        r = np.clip(np.floor((self.y0 - np.asarray(y, np.float64)) / self.res), 0, rows - 1).astype(np.int64)
        return r, c

    def to_latlon(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Local tangent-plane metres → (lat, lon) degrees (equirectangular; < 1 mm error over a few km)."""
        lat = self.lat + np.degrees(np.asarray(y, np.float64) / EARTH_RADIUS_M)
        lon = self.lon + np.degrees(np.asarray(x, np.float64) / (EARTH_RADIUS_M * math.cos(math.radians(self.lat))))
        return lat, lon

    def finalise(self) -> World:
        """Make arrays contiguous with the renderer's dtypes and cache hmax."""
        self.height = np.ascontiguousarray(self.height, np.float32)
        self.albedo = np.ascontiguousarray(self.albedo, np.uint8)
        self.facade = np.ascontiguousarray(self.facade, np.uint8)
        self.material = np.ascontiguousarray(self.material, np.uint8)
        self.hmax = float(self.height.max()) if self.height.size else 0.0
        return self


class Canvas:
    """Mutable float rasters used while drawing a world; ``to_world`` converts to a :class:`World`."""

    def __init__(self, size_m: float, res: float, lat: float, lon: float, name: str) -> None:
        n = int(round(size_m / res))
        self.n = n
        self.res = res
        self.x0 = -n * res / 2.0
        self.y0 = n * res / 2.0
        self.lat, self.lon, self.name = lat, lon, name
        self.height = np.zeros((n, n), np.float32)
        self.albedo = np.zeros((n, n, 3), np.float32)
        self.facade = np.zeros((n, n, 3), np.float32)
        self.material = np.zeros((n, n), np.uint8)

    def window(self, xmin: float, xmax: float, ymin: float, ymax: float
               ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Raster window covering a bounding box → (slices, X, Y) pixel-centre coordinates, or None."""
        c0 = max(int(math.floor((xmin - self.x0) / self.res)), 0)
        c1 = min(int(math.ceil((xmax - self.x0) / self.res)), self.n)
        r0 = max(int(math.floor((self.y0 - ymax) / self.res)), 0)
        r1 = min(int(math.ceil((self.y0 - ymin) / self.res)), self.n)
        if c1 <= c0 or r1 <= r0:
            return None
        xs = self.x0 + (np.arange(c0, c1) + 0.5) * self.res
        ys = self.y0 - (np.arange(r0, r1) + 0.5) * self.res
        return (slice(r0, r1), slice(c0, c1)), xs[None, :], ys[:, None]

    def paint(self, sl: tuple[slice, slice], mask: np.ndarray, material: int, colour,
              height: np.ndarray | float | None = None, facade=None) -> None:
        """Set material/colour (and optionally height/facade) of the masked cells of a window."""
        if not mask.any():
            return
        self.material[sl][mask] = material
        col = np.asarray(colour, np.float32)
        if col.ndim == 1:
            self.albedo[sl][mask] = col
        else:
            self.albedo[sl][mask] = col[mask]
        if height is not None:
            h = np.broadcast_to(np.asarray(height, np.float32), mask.shape)
            self.height[sl][mask] = h[mask]
        if facade is not None:
            self.facade[sl][mask] = np.asarray(facade, np.float32)

    def to_world(self) -> World:
        def u8(a: np.ndarray) -> np.ndarray:
            a += 0.5
            np.clip(a, 0, 255, out=a)
            return a.astype(np.uint8)

        return World(self.height, u8(self.albedo), u8(self.facade), self.material, self.res,
                     self.x0, self.y0, self.lat, self.lon, self.name).finalise()


def value_noise(rng: np.random.Generator, n: int, cell_px: int) -> np.ndarray:
    """Smooth noise in [-1, 1], float32 (n, n): a coarse random grid bilinearly upsampled."""
    m = max(2, n // max(cell_px, 1) + 2)
    coarse = rng.uniform(-1.0, 1.0, (m, m)).astype(np.float32)
    pos = (np.arange(n, dtype=np.float32) + 0.5) / cell_px
    i0 = np.minimum(pos.astype(np.int64), m - 2)
    f = (pos - i0)[:, None]
    # separable bilinear interpolation: rows, then columns
    rows = coarse[i0] * (1 - f) + coarse[i0 + 1] * f                      # (n, m)
    out = rows[:, i0] * (1 - f.T) + rows[:, i0 + 1] * f.T                 # (n, n)
    return out.astype(np.float32)
