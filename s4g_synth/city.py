"""Procedural city districts: a jittered street grid with avenues, removed segments and a curved road,
road markings and crosswalks, blocks with land uses (downtown, towers, houses, industrial, park, parking,
sports field, pond), buildings from a small catalogue of repeating styles, street/park/garden trees,
parked cars, and sometimes a river.

Everything is drawn with numpy into a :class:`~s4g_synth.world.Canvas` window by window (each
primitive touches only its bounding box), then frozen into a :class:`~s4g_synth.world.World`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .landuse import LandUseMixin, _jitter
from .world import (
    ASPHALT,
    BASE_COLOUR,
    BUILDING,
    CAR,
    DIRT,
    GRASS,
    MARK_WHITE,
    MARK_YELLOW,
    PAVING,
    ROOFTOP,
    SIDEWALK,
    TREE,
    WATER,
    Canvas,
    World,
    value_noise,
)

logger = logging.getLogger(__name__)

TREE_COLOURS = ((58, 96, 44), (70, 110, 50), (46, 80, 40), (88, 118, 56), (64, 90, 36))
CAR_COLOURS = ((200, 30, 30), (30, 60, 160), (230, 230, 230), (20, 20, 22), (150, 150, 155), (200, 170, 40))
CHARACTERS = {  # land-use weights per district character
    "downtown": {"dense": 5, "towers": 3, "parking": 1, "park": 1, "houses": 0.2, "industrial": 0.3},
    "residential": {"houses": 6, "park": 1.5, "dense": 1, "field": 0.7, "parking": 0.3, "pond": 0.4},
    "mixed": {"dense": 3, "houses": 3, "park": 1.2, "parking": 1, "industrial": 1, "field": 0.5, "towers": 0.7,
              "pond": 0.3},
    "industrial": {"industrial": 5, "parking": 2, "dense": 1, "field": 1, "park": 0.5},
}


@dataclass(frozen=True)
class CityConfig:
    """District parameters (metres)."""

    size_m: float = 1000.0           # side of the square district
    res: float = 0.5                 # raster resolution (m/cell)
    block_u: tuple[float, float] = (70.0, 160.0)   # block sizes along the grid axes
    block_v: tuple[float, float] = (55.0, 140.0)
    sidewalk_m: float = 2.5
    p_remove_segment: float = 0.1
    p_river: float = 0.35


@dataclass
class Segment:
    a: np.ndarray        # (2,) start point (x, y)
    b: np.ndarray        # (2,) end point
    hw: float            # road half-width
    avenue: bool
    cross_a: float       # half-width of the road crossing at a (0 at the world edge)
    cross_b: float
    yellow: bool
    trees: bool = False  # street trees along both sidewalks


def _seg_local(canvas: Canvas, a: np.ndarray, b: np.ndarray, pad: float):
    """Window around segment a→b with along (t, from a) and signed across (d) coordinates."""
    win = canvas.window(min(a[0], b[0]) - pad, max(a[0], b[0]) + pad, min(a[1], b[1]) - pad, max(a[1], b[1]) + pad)
    if win is None:
        return None
    sl, X, Y = win
    L = float(np.hypot(*(b - a)))
    ux, uy = (b - a) / max(L, 1e-9)
    t = (X - a[0]) * ux + (Y - a[1]) * uy
    d = -(X - a[0]) * uy + (Y - a[1]) * ux
    return sl, t, d, L


def _rect_local(canvas: Canvas, cx: float, cy: float, ang: float, ha: float, hb: float):
    """Window around an oriented rectangle with local coordinates (a along angle, b across)."""
    r = math.hypot(ha, hb) + canvas.res
    win = canvas.window(cx - r, cx + r, cy - r, cy + r)
    if win is None:
        return None
    sl, X, Y = win
    ca, sa = math.cos(ang), math.sin(ang)
    a = (X - cx) * ca + (Y - cy) * sa
    b = -(X - cx) * sa + (Y - cy) * ca
    return sl, a, b


class CityBuilder(LandUseMixin):
    """Draws one district into a canvas. Use :func:`generate_world`."""

    _rect = staticmethod(_rect_local)

    def __init__(self, seed: int, lat: float, lon: float, name: str, cfg: CityConfig) -> None:
        self.rng = np.random.default_rng(seed)
        self.cfg = cfg
        self.c = Canvas(cfg.size_m, cfg.res, lat, lon, name)
        self.character = str(self.rng.choice(list(CHARACTERS)))
        self.theta = 0.0 if self.rng.random() < 0.3 else float(self.rng.uniform(-0.7, 0.7))
        self.segments: list[Segment] = []
        self.tex = value_noise(self.rng, self.c.n, 6)  # fine texture shared by all surfaces

    # ---- ground -------------------------------------------------------------------------------
    def ground(self) -> None:
        c, rng = self.c, self.rng
        big = value_noise(rng, c.n, int(120 / c.res))
        c.material[:] = np.where(big > 0.55, DIRT, GRASS).astype(np.uint8)
        lut = np.zeros((256, 3), np.float32)
        lut[DIRT], lut[GRASS] = BASE_COLOUR[DIRT], BASE_COLOUR[GRASS]
        mod = 1.0 + 0.10 * self.tex + 0.06 * big
        np.multiply(lut[c.material], mod[..., None], out=c.albedo)

    def river(self) -> None:
        c, rng = self.c, self.rng
        ang = rng.uniform(0, math.pi)
        direction = np.array([math.cos(ang), math.sin(ang)])
        perp = np.array([-direction[1], direction[0]])
        off = rng.uniform(-0.25, 0.25) * c.n * c.res
        amp, lam, ph = rng.uniform(20, 80), rng.uniform(300, 700), rng.uniform(0, 2 * math.pi)
        hw = rng.uniform(9, 22)
        s = np.arange(-0.8 * c.n * c.res, 0.8 * c.n * c.res, 6.0)
        pts = s[:, None] * direction + (off + amp * np.sin(2 * math.pi * s / lam + ph))[:, None] * perp
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            loc = _seg_local(c, a, b, hw + 4)
            if loc is None:
                continue
            sl, t, d, L = loc
            inside = (t >= -3) & (t <= L + 3)
            c.paint(sl, inside & (np.abs(d) < hw + 3) & (c.material[sl] != WATER), PAVING, (190, 178, 140))
            c.paint(sl, inside & (np.abs(d) < hw), WATER,
                    np.float32(BASE_COLOUR[WATER]) * (1 + 0.05 * self.tex[sl][..., None]))

    # ---- streets ------------------------------------------------------------------------------
    def streets(self) -> list[tuple[list, list]]:
        """Build the grid lines and their segments; returns the line lists (for the blocks)."""
        c, rng, cfg = self.c, self.rng, self.cfg
        half = 0.75 * c.n * c.res
        eu = np.array([math.cos(self.theta), math.sin(self.theta)])
        ev = np.array([-eu[1], eu[0]])

        def lines(gap, axis_pos, axis_dir):
            out, pos = [], -half + rng.uniform(0, gap[1])
            while pos < half:
                tilt = float(np.clip(rng.normal(0, 0.03), -0.08, 0.08))
                ca, sa = math.cos(tilt), math.sin(tilt)
                dvec = np.array([ca * axis_dir[0] - sa * axis_dir[1], sa * axis_dir[0] + ca * axis_dir[1]])
                avenue = rng.random() < 0.2
                hw = rng.uniform(7.0, 10.0) if avenue else rng.uniform(3.8, 5.5)
                out.append({"p": pos * axis_pos, "d": dvec, "hw": hw, "avenue": avenue, "pos": pos,
                            "yellow": avenue or rng.random() < 0.5, "trees": rng.random() < 0.45})
                pos += rng.uniform(*gap)
            return out

        vert = lines(cfg.block_u, eu, ev)   # constant-u streets, running along ev
        horz = lines(cfg.block_v, ev, eu)
        for fam, other in ((vert, horz), (horz, vert)):
            for ln in fam:
                ts = []
                for o in other:
                    m = np.array([ln["d"], -o["d"]]).T
                    s, _ = np.linalg.solve(m, o["p"] - ln["p"])
                    ts.append((s, o["hw"]))
                ts.sort()
                ts = [(-2 * half, 0.0)] + ts + [(2 * half, 0.0)]
                ln["cross"] = ts
                for (s0, h0), (s1, h1) in zip(ts[:-1], ts[1:], strict=True):
                    if not ln["avenue"] and h0 > 0 and h1 > 0 and rng.random() < cfg.p_remove_segment:
                        continue
                    self.segments.append(Segment(ln["p"] + s0 * ln["d"], ln["p"] + s1 * ln["d"], ln["hw"],
                                                 ln["avenue"], h0, h1, ln["yellow"], ln["trees"]))
        return vert, horz

    def draw_segments(self, segs: list[Segment], markings_mask_other: bool = False) -> None:
        c, sw = self.c, self.cfg.sidewalk_m
        asphalt = np.float32(BASE_COLOUR[ASPHALT])
        locs = [(_seg_local(c, s.a, s.b, s.hw + sw + 1), s) for s in segs]
        for loc, s in locs:   # sidewalks first, so that crossing asphalt overwrites them
            if loc is None:
                continue
            sl, t, d, L = loc
            m = (np.abs(d) < s.hw + sw) & (t > -(s.hw + sw)) & (t < L + s.hw + sw) & (c.height[sl] < 0.5)
            c.paint(sl, m & (c.material[sl] != ASPHALT) & (c.material[sl] != MARK_WHITE)
                    & (c.material[sl] != MARK_YELLOW),
                    SIDEWALK, np.float32(BASE_COLOUR[SIDEWALK]) * (1 + 0.05 * self.tex[sl][..., None]))
        was_road = c.material.copy() if markings_mask_other else None
        for loc, s in locs:
            if loc is None:
                continue
            sl, t, d, L = loc
            m = (np.abs(d) < s.hw) & (t > -s.cross_a - sw) & (t < L + s.cross_b + sw)
            c.paint(sl, m, ASPHALT, asphalt * (1 + 0.08 * self.tex[sl][..., None]), height=0.0)
        for loc, s in locs:
            if loc is None:
                continue
            sl, t, d, L = loc
            ok = np.ones_like(d, bool) if was_road is None else (was_road[sl] != ASPHALT)
            m0, m1 = s.cross_a + 4.5, L - s.cross_b - 4.5
            seg = (t > m0) & (t < m1) & ok
            yel = np.float32(BASE_COLOUR[MARK_YELLOW]) if s.yellow else np.float32(BASE_COLOUR[MARK_WHITE])
            if s.avenue:
                c.paint(sl, seg & (np.abs(d) < 0.5), MARK_YELLOW, BASE_COLOUR[MARK_YELLOW])
                lane = seg & (np.abs(np.abs(d) - s.hw / 2) < 0.3) & ((t % 9.0) < 3.5)
                edge = seg & (np.abs(np.abs(d) - (s.hw - 0.6)) < 0.25)
                c.paint(sl, lane | edge, MARK_WHITE, BASE_COLOUR[MARK_WHITE])
            else:
                c.paint(sl, seg & (np.abs(d) < 0.3) & ((t % 9.0) < 4.5), MARK_YELLOW if s.yellow else MARK_WHITE, yel)
            for cross, start in ((s.cross_a, True), (s.cross_b, False)):
                if cross <= 0 or not (s.avenue or self.rng.random() < 0.6):
                    continue
                tt = t - cross if start else (L - cross) - t
                zebra = ok & (tt > 0.6) & (tt < 3.6) & (np.abs(d) < s.hw - 0.4) & (((d + 100.0) % 1.4) < 0.7)
                c.paint(sl, zebra, MARK_WHITE, BASE_COLOUR[MARK_WHITE])

    def curved_road(self) -> None:
        c, rng = self.c, self.rng
        half = 0.7 * c.n * c.res
        if rng.random() < 0.5:   # arc of a large circle
            radius = rng.uniform(300, 900)
            centre = rng.uniform(-half, half, 2) + radius * np.array([math.cos(a := rng.uniform(0, 6.3)), math.sin(a)])
            ang = np.arange(0, 2 * math.pi, 4.0 / radius)
            pts = centre + radius * np.stack([np.cos(ang), np.sin(ang)], 1)
        else:                    # meandering road
            ang = rng.uniform(0, math.pi)
            dvec, perp = np.array([math.cos(ang), math.sin(ang)]), np.array([-math.sin(ang), math.cos(ang)])
            s = np.arange(-1.2 * half, 1.2 * half, 4.0)
            off = rng.uniform(-0.5, 0.5) * half + rng.uniform(30, 90) * np.sin(2 * math.pi * s / rng.uniform(250, 600))
            pts = s[:, None] * dvec + off[:, None] * perp
        inside = np.all(np.abs(pts) < 0.55 * c.n * c.res + 20, axis=1)
        pts = pts[inside]
        if len(pts) < 3:
            return
        hw = rng.uniform(4.5, 6.0)
        segs = [Segment(a, b, hw, False, 0.0, 0.0, True) for a, b in zip(pts[:-1], pts[1:], strict=True)]
        self.draw_segments(segs, markings_mask_other=True)

    # ---- blocks -------------------------------------------------------------------------------
    def blocks(self, vert: list, horz: list) -> None:
        c, rng, sw = self.c, self.rng, self.cfg.sidewalk_m
        uses = CHARACTERS[self.character]
        names, weights = list(uses), np.array(list(uses.values()), np.float64)
        limit = 0.5 * c.n * c.res + 40
        eu = np.array([math.cos(self.theta), math.sin(self.theta)])
        ev = np.array([-eu[1], eu[0]])
        for i in range(len(vert) - 1):
            for j in range(len(horz) - 1):
                l0, l1, h0, h1 = vert[i], vert[i + 1], horz[j], horz[j + 1]
                u0 = l0["pos"] + l0["hw"] + sw + 1.0
                u1 = l1["pos"] - l1["hw"] - sw - 1.0
                v0 = h0["pos"] + h0["hw"] + sw + 1.0
                v1 = h1["pos"] - h1["hw"] - sw - 1.0
                # the small street tilts shift the corners by up to ~8 m: stay clear of them
                slack = 6.0
                u0, u1, v0, v1 = u0 + slack, u1 - slack, v0 + slack, v1 - slack
                if u1 - u0 < 12 or v1 - v0 < 12:
                    continue
                centre = (u0 + u1) / 2 * eu + (v0 + v1) / 2 * ev
                if np.any(np.abs(centre) > limit):
                    continue
                use = str(rng.choice(names, p=weights / weights.sum()))
                getattr(self, f"_use_{use}")(centre, (u1 - u0) / 2, (v1 - v0) / 2)

    def _ground_rect(self, centre, ha, hb, material, colour, texture: float = 0.08) -> None:
        loc = _rect_local(self.c, centre[0], centre[1], self.theta, ha, hb)
        if loc is None:
            return
        sl, a, b = loc
        m = (np.abs(a) <= ha) & (np.abs(b) <= hb) & self._free(sl)
        self.c.paint(sl, m, material, np.float32(colour) * (1 + texture * self.tex[sl][..., None]), height=0.0)

    def _free(self, sl) -> np.ndarray:
        mat = self.c.material[sl]
        return ~np.isin(mat, (ASPHALT, MARK_WHITE, MARK_YELLOW, SIDEWALK, WATER)) & (self.c.height[sl] <= 0.0)

    def _local_to_xy(self, centre, u: float, v: float) -> np.ndarray:
        eu = np.array([math.cos(self.theta), math.sin(self.theta)])
        ev = np.array([-eu[1], eu[0]])
        return centre + u * eu + v * ev

    def building(self, xy, ha: float, hb: float, height: float, roof, facade, kind: str,
                 ang: float | None = None) -> None:
        c = self.c
        ang = self.theta if ang is None else ang
        loc = _rect_local(c, xy[0], xy[1], ang, ha, hb)
        if loc is None:
            return
        sl, a, b = loc
        m = (np.abs(a) <= ha) & (np.abs(b) <= hb)
        if not m.any() or not self._free(sl)[m].all():
            return
        roof = np.asarray(roof, np.float32)
        if kind == "gable":
            across = (np.abs(b) / hb) if ha >= hb else (np.abs(a) / ha)
            rise = min(ha, hb) * 0.5
            h = height + rise * (1.0 - across)
        else:
            h = np.full(a.shape, height, np.float32)
            edge = (np.abs(a) > ha - 0.8) | (np.abs(b) > hb - 0.8)
            h = np.where(edge, height + 0.6, h)
            roof = np.where(edge[..., None], roof * 0.8, roof * (1 + 0.04 * self.tex[sl][..., None]))
        c.paint(sl, m, BUILDING, roof, height=h, facade=facade)
        if kind == "flat" and min(ha, hb) > 8 and self.rng.random() < 0.7:   # rooftop units
            for _ in range(int(self.rng.integers(1, 4))):
                ua, ub = self.rng.uniform(-ha + 3, ha - 3), self.rng.uniform(-hb + 3, hb - 3)
                ca, sa = math.cos(ang), math.sin(ang)
                p = (xy[0] + ua * ca - ub * sa, xy[1] + ua * sa + ub * ca)
                loc2 = _rect_local(c, p[0], p[1], ang, self.rng.uniform(1, 3), self.rng.uniform(1, 3))
                if loc2 is not None:
                    sl2, a2, b2 = loc2
                    m2 = (np.abs(a2) <= 2) & (np.abs(b2) <= 1.5) & (c.material[sl2] == BUILDING)
                    c.paint(sl2, m2, ROOFTOP, (150, 150, 150), height=height + 2.0, facade=(140, 140, 140))

    def tree(self, xy, radius: float, top: float, colour=None) -> None:
        c = self.c
        win = c.window(xy[0] - radius, xy[0] + radius, xy[1] - radius, xy[1] + radius)
        if win is None:
            return
        sl, X, Y = win
        r = np.hypot(X - xy[0], Y - xy[1]) / radius
        h = 2.5 + (top - 2.5) * np.sqrt(np.clip(1 - r * r, 0, 1))
        m = (r < 1) & (c.height[sl] < h) & ~np.isin(c.material[sl], (BUILDING, ROOFTOP, WATER))
        col = _jitter(self.rng, colour if colour is not None
                      else TREE_COLOURS[int(self.rng.integers(len(TREE_COLOURS)))], 8)
        albedo = col * (0.75 + 0.35 * (1 - r))[..., None] * (1 + 0.15 * self.tex[sl][..., None])
        if m.any():   # foliage seen from the side: darker than from above, with leafy texture
            c.paint(sl, m, TREE, albedo, height=h)
            c.facade[sl][m] = (col * 0.8)[None, :] * (0.75 + 0.35 * self.tex[sl][m][:, None]
                                                      + 0.1 * (1 - r[m])[:, None])

    def car(self, xy, ang: float) -> None:
        c = self.c
        loc = _rect_local(c, xy[0], xy[1], ang, 2.2, 0.9)
        if loc is None:
            return
        sl, a, b = loc
        m = (np.abs(a) <= 2.2) & (np.abs(b) <= 0.9) & (c.height[sl] <= 0)
        col = _jitter(self.rng, CAR_COLOURS[int(self.rng.integers(len(CAR_COLOURS)))], 10)
        c.paint(sl, m, CAR, col * np.where(np.abs(a)[..., None] < 1.0, 0.7, 1.0), height=1.5, facade=col * 0.85)

    def street_trees_and_cars(self) -> None:
        rng, sw = self.rng, self.cfg.sidewalk_m
        for s in self.segments:
            L = float(np.hypot(*(s.b - s.a)))
            if L < 20:
                continue
            u = (s.b - s.a) / L
            n = np.array([-u[1], u[0]])
            if s.trees:
                for t in np.arange(s.cross_a + 8, L - s.cross_b - 6, rng.uniform(8, 13)):
                    for side in (-1, 1):
                        if rng.random() < 0.85:
                            self.tree(s.a + t * u + side * (s.hw + sw - 0.6) * n, rng.uniform(2.0, 3.2),
                                      rng.uniform(6, 10))
            if not s.avenue and rng.random() < 0.5:
                for t in np.arange(s.cross_a + 8, L - s.cross_b - 6, 6.0):
                    if rng.random() < 0.3:
                        side = rng.choice([-1, 1])
                        self.car(s.a + t * u + side * (s.hw - 1.1) * n, math.atan2(u[1], u[0]))


def generate_world(seed: int, lat: float, lon: float, name: str = "district", cfg: CityConfig | None = None) -> World:
    """Generate one district (deterministic for ``seed``).

    Returns a :class:`World` of ``size_m / res`` cells per side, anchored at (lat, lon).
    """
    cfg = cfg or CityConfig()
    if cfg.size_m <= 0 or cfg.res <= 0 or cfg.size_m / cfg.res > 20000:
        raise ValueError(f"CityConfig: expected size_m > 0, res > 0 and size_m/res <= 20000 cells, got "
                         f"size_m={cfg.size_m}, res={cfg.res}")
    b = CityBuilder(seed, lat, lon, name, cfg)
    b.ground()
    if b.rng.random() < cfg.p_river:
        b.river()
    vert, horz = b.streets()
    b.draw_segments(b.segments)
    if b.rng.random() < 0.6:
        b.curved_road()
    b.blocks(vert, horz)
    b.street_trees_and_cars()
    world = b.c.to_world()
    logger.debug("district %s: character=%s theta=%.2f, %d segments", name, b.character, b.theta, len(b.segments))
    return world
