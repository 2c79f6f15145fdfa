"""Type stub of the compiled synthetic-world renderer ``s4g_synth._render`` (pybind11, OpenMP; both functions
release the GIL). Sources: csrc/synth/ (conventions in csrc/synth/render.h); float64 NumPy reference:
:mod:`s4g_synth.reference`; callers: :mod:`s4g_synth.capture`.

World raster: row 0 is the north edge at ``y0``, column 0 the west edge at ``x0``, cells are ``res`` metres
(x = east, y = north); points outside the raster take the nearest edge cell. ``height`` float32 (R, C)
metres, ``albedo``/``facade`` uint8 (R, C, 3), ``material`` uint8 (R, C) ids < ``gain.shape[0]``, ``gain``
float32 (M, 3) colour gain per material; all C-contiguous. Bad input raises ``ValueError`` naming the
argument. ``hmax`` (max height, used to end shadow rays early) is computed when ``None``; ``threads`` <= 0
uses the OpenMP default.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

def render_panorama(
    height: npt.NDArray[np.float32],
    albedo: npt.NDArray[np.uint8],
    facade: npt.NDArray[np.uint8],
    material: npt.NDArray[np.uint8],
    gain: npt.NDArray[np.float32],
    dist: npt.NDArray[np.float64],
    *,
    res: float,
    x0: float,
    y0: float,
    camera: Sequence[float],
    size: Sequence[int],
    elev_top: float = 0.7853981633974483,
    elev_bottom: float = -0.7853981633974483,
    sun_azimuth: float = 2.4,
    sun_elevation: float = 0.8,
    ambient: float = 0.55,
    shadow_step: float = 1.0,
    shadow_max: float = 60.0,
    sky_horizon: Sequence[int] = (200, 215, 230),
    sky_zenith: Sequence[int] = (90, 140, 210),
    far_ground: Sequence[int] = (120, 120, 110),
    floor_height: float = 3.2,
    window_width: float = 2.6,
    hmax: float | None = None,
    threads: int = 0,
) -> npt.NDArray[np.uint8]:
    """Ray-march a 360° equirectangular panorama → uint8 (H, W, 3) with ``size = (H, W)``.

    ``camera = (x, y, z)`` metres; ``dist`` float64 (K,) finite, positive, strictly increasing horizontal
    sample distances (metres). Column j looks toward azimuth 2πj/W from south through west (W/4 west, W/2
    north, 3W/4 east); rows span ``elev_top`` .. ``elev_bottom`` radians (π/2 > top > bottom > −π/2).
    Sun angles in radians (azimuth clockwise from north, elevation in (0.01, π/2)); ``ambient`` in [0, 1] is
    the light in full shadow; shadow rays step ``shadow_step`` m up to ``shadow_max`` m. Sky and far-ground
    colours are RGB 0–255; building walls (material 9) get windows of ``window_width`` × ``floor_height`` m.
    """

def render_tile(
    height: npt.NDArray[np.float32],
    albedo: npt.NDArray[np.uint8],
    facade: npt.NDArray[np.uint8],
    material: npt.NDArray[np.uint8],
    gain: npt.NDArray[np.float32],
    *,
    res: float,
    x0: float,
    y0: float,
    center: Sequence[float],
    size: int,
    tile_res: float,
    sun_azimuth: float = 2.4,
    sun_elevation: float = 0.8,
    ambient: float = 0.55,
    shadow_step: float = 1.0,
    shadow_max: float = 60.0,
    hmax: float | None = None,
    threads: int = 0,
) -> npt.NDArray[np.uint8]:
    """North-up orthographic tile uint8 (size, size, 3) centred at ``center = (x, y)`` metres, ``tile_res``
    metres per pixel: albedo × material gain × (Lambert shading from the height gradient + cast shadows)."""
