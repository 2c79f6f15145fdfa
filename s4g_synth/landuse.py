"""Land uses of city blocks (mixed into :class:`~s4g_synth.city.CityBuilder`): downtown perimeter
blocks, towers on plazas, detached houses with gardens, industrial sheds, parks with paths and ponds,
parking lots, sports fields and ponds. Each method draws one block given its centre (x, y) and half
extents along the grid axes (metres).
"""
from __future__ import annotations

import math

import numpy as np

from .world import BASE_COLOUR, DIRT, FIELD, GARDEN, GRASS, MARK_WHITE, PARKING, PAVING, WATER

# Building styles: (roof colours, facade colours, height range m, roof kind). Blocks pick one style, so
# the same look repeats across the district (hard negatives); each building jitters the colour a little.
STYLES = (
    (((150, 70, 60), (170, 90, 70), (120, 60, 55)), ((200, 170, 140), (220, 200, 170)), (5, 8), "gable"),
    (((90, 90, 95), (70, 75, 80)), ((230, 225, 215), (200, 200, 195)), (5, 9), "gable"),
    (((120, 110, 100), (140, 135, 125)), ((150, 80, 60), (170, 100, 75)), (10, 22), "flat"),
    (((200, 200, 195), (185, 185, 180)), ((120, 130, 140), (100, 110, 125)), (25, 60), "flat"),
    (((60, 60, 62), (80, 80, 85)), ((90, 120, 150), (110, 140, 165)), (30, 75), "flat"),
    (((210, 205, 190), (225, 220, 210)), ((200, 195, 180),), (6, 12), "flat"),
    (((160, 120, 80), (140, 100, 70)), ((235, 225, 200), (215, 200, 170)), (8, 16), "flat"),
    (((100, 130, 120), (80, 115, 105)), ((180, 180, 175), (160, 150, 140)), (12, 30), "flat"),
)
STYLE_FOR_USE = {"dense": (2, 6, 7, 5), "towers": (3, 4, 7), "houses": (0, 1), "industrial": (5, 3)}


def _jitter(rng: np.random.Generator, colour, amount: float = 12.0) -> np.ndarray:
    n = rng.normal(0, amount, 3)
    return np.array([min(255.0, max(0.0, float(c) + float(d))) for c, d in zip(colour, n, strict=True)], np.float32)


class LandUseMixin:
    """Block drawers; expects ``self.rng``, ``self.c`` (Canvas), ``self.theta``, ``self.tex`` and the
    primitives ``building``, ``tree``, ``car``, ``_ground_rect``, ``_free``, ``_local_to_xy``."""

    def _style(self, use: str):
        return STYLES[int(self.rng.choice(STYLE_FOR_USE[use]))]

    def _use_dense(self, centre, hu, hv) -> None:
        rng = self.rng
        self._ground_rect(centre, hu, hv, PAVING if rng.random() < 0.5 else PARKING, BASE_COLOUR[PAVING])
        roofs, facades, (hlo, hhi), kind = self._style("dense")
        depth = rng.uniform(10, 18)
        for side in range(4):
            along_u = side < 2
            length = 2 * (hu if along_u else hv)
            pos = -length / 2
            while pos < length / 2 - 6:
                w = min(rng.uniform(10, 26), length / 2 - pos)
                if w < 6:
                    break
                mid = pos + w / 2
                if along_u:
                    u, v = mid, (hv - depth / 2) * (1 if side == 0 else -1)
                    ha, hb = w / 2 - 0.3, depth / 2
                else:
                    u, v = (hu - depth / 2) * (1 if side == 2 else -1), mid
                    ha, hb = depth / 2, w / 2 - 0.3
                    if abs(v) > hv - depth:      # corners already covered by the u-sides
                        pos += w
                        continue
                self.building(self._local_to_xy(centre, u, v), ha, hb, rng.uniform(hlo, hhi),
                              _jitter(rng, roofs[int(rng.integers(len(roofs)))]),
                              _jitter(rng, facades[int(rng.integers(len(facades)))], 8), kind)
                pos += w
        if rng.random() < 0.5:
            self.tree(centre, rng.uniform(3, 5), rng.uniform(7, 11))

    def _use_towers(self, centre, hu, hv) -> None:
        rng = self.rng
        self._ground_rect(centre, hu, hv, PAVING, BASE_COLOUR[PAVING])
        roofs, facades, (hlo, hhi), kind = self._style("towers")
        n = int(rng.integers(1, 3))
        for k in range(n):
            su = hu / n
            u = -hu + su * (2 * k + 1)
            ha, hb = min(su - 4, rng.uniform(10, 24)), min(hv - 4, rng.uniform(10, 24))
            if ha > 5 and hb > 5:
                self.building(self._local_to_xy(centre, u, rng.uniform(-1, 1) * (hv - hb - 3)), ha, hb,
                              rng.uniform(hlo, hhi),
                              _jitter(rng, roofs[int(rng.integers(len(roofs)))]),
                              _jitter(rng, facades[int(rng.integers(len(facades)))], 8), kind)
        for _ in range(int(rng.integers(2, 8))):
            self.tree(self._local_to_xy(centre, rng.uniform(-hu, hu), rng.choice([-1, 1]) * (hv - 2)),
                      rng.uniform(2, 3.2), rng.uniform(6, 9))

    def _use_houses(self, centre, hu, hv) -> None:
        rng = self.rng
        self._ground_rect(centre, hu, hv, GARDEN, BASE_COLOUR[GARDEN], 0.12)
        roofs, facades, (hlo, hhi), kind = self._style("houses")
        lot_w = rng.uniform(14, 22)
        for row_side in (-1, 1):
            n = max(int(2 * hu // lot_w), 1)
            for k in range(n):
                u = -hu + lot_w * (k + 0.5)
                v = row_side * hv / 2
                hw_, hd_ = rng.uniform(4, 6.5), rng.uniform(4.5, 7)
                xy = self._local_to_xy(centre, u, v + row_side * rng.uniform(-2, 2))
                self.building(xy, hw_, hd_, rng.uniform(hlo, hhi) - 2,
                              _jitter(rng, roofs[int(rng.integers(len(roofs)))]),
                              _jitter(rng, facades[int(rng.integers(len(facades)))], 8), kind)
                if rng.random() < 0.7:
                    self.tree(self._local_to_xy(centre, u + rng.uniform(-lot_w / 2, lot_w / 2),
                                                v - row_side * rng.uniform(hd_ + 2, max(hd_ + 2, hv / 2) + 1e-6)),
                              rng.uniform(2, 4), rng.uniform(5, 10))

    def _use_industrial(self, centre, hu, hv) -> None:
        rng = self.rng
        self._ground_rect(centre, hu, hv, DIRT if rng.random() < 0.5 else PARKING, (150, 140, 120))
        roofs, facades, (hlo, hhi), kind = self._style("industrial")
        ha, hb = hu * rng.uniform(0.5, 0.85), hv * rng.uniform(0.5, 0.85)
        self.building(self._local_to_xy(centre, rng.uniform(-1, 1) * (hu - ha), rng.uniform(-1, 1) * (hv - hb)), ha, hb,
                      rng.uniform(6, 12), _jitter(rng, roofs[0]), _jitter(rng, facades[0], 8), "flat")
        for _ in range(int(rng.integers(0, 6))):
            self.car(self._local_to_xy(centre, rng.uniform(-hu, hu), rng.uniform(-hv, hv)),
                     self.theta + rng.choice([0, math.pi / 2]))

    def _use_park(self, centre, hu, hv) -> None:
        rng = self.rng
        self._ground_rect(centre, hu, hv, GRASS, (90, 140, 62), 0.15)
        loc = self._rect(self.c, centre[0], centre[1], self.theta + rng.uniform(-0.8, 0.8), hu * 1.5, 1.2)
        if loc is not None:
            sl, a, b = loc
            self.c.paint(sl, (np.abs(b) < 1.2) & (np.abs(a) < hu * 1.5) & (self.c.material[sl] == GRASS), PAVING,
                         (196, 184, 150))
        if rng.random() < 0.4:
            self._pond(centre, min(hu, hv) * rng.uniform(0.3, 0.6))
        for _ in range(int(rng.integers(4, 20))):
            self.tree(self._local_to_xy(centre, rng.uniform(-hu, hu), rng.uniform(-hv, hv)), rng.uniform(2.5, 5),
                      rng.uniform(6, 14))

    def _pond(self, centre, radius) -> None:
        c = self.c
        win = c.window(centre[0] - radius - 3, centre[0] + radius + 3, centre[1] - radius - 3, centre[1] + radius + 3)
        if win is None:
            return
        sl, X, Y = win
        r = np.hypot(X - centre[0], (Y - centre[1]) * 1.4)
        free = self._free(sl)
        c.paint(sl, (r < radius + 2.5) & free, PAVING, (196, 184, 140))
        c.paint(sl, (r < radius) & free, WATER, np.float32(BASE_COLOUR[WATER]) * (1 + 0.05 * self.tex[sl][..., None]))

    def _use_pond(self, centre, hu, hv) -> None:
        self._ground_rect(centre, hu, hv, GRASS, BASE_COLOUR[GRASS], 0.15)
        self._pond(centre, min(hu, hv) * 0.8)

    def _use_parking(self, centre, hu, hv) -> None:
        rng, c = self.rng, self.c
        self._ground_rect(centre, hu, hv, PARKING, BASE_COLOUR[PARKING], 0.05)
        loc = self._rect(c, centre[0], centre[1], self.theta, hu, hv)
        if loc is not None:
            sl, a, b = loc
            stalls = (np.abs(a) < hu - 2) & ((a % 2.7) < 0.35) & ((np.abs(b) % 12.0) > 6.5) \
                & (c.material[sl] == PARKING)
            c.paint(sl, stalls, MARK_WHITE, BASE_COLOUR[MARK_WHITE])
        for _ in range(int(rng.integers(3, 25))):
            u = rng.uniform(-hu + 3, hu - 3)
            v = rng.choice([-1, 1]) * (6.5 + 12.0 * rng.integers(0, max(int(hv // 12), 1)) + 3.0)
            if abs(v) < hv:
                self.car(self._local_to_xy(centre, u, v), self.theta + math.pi / 2)

    def _use_field(self, centre, hu, hv) -> None:
        rng, c = self.rng, self.c
        if rng.random() < 0.5:
            self._ground_rect(centre, hu, hv, DIRT, (150, 125, 90), 0.15)
            return
        self._ground_rect(centre, hu, hv, FIELD, BASE_COLOUR[FIELD], 0.04)
        loc = self._rect(c, centre[0], centre[1], self.theta, hu, hv)
        if loc is not None:
            sl, a, b = loc
            fa, fb = hu - 4, hv - 4
            lines = ((np.abs(np.abs(a) - fa) < 0.3) & (np.abs(b) <= fb)) \
                | ((np.abs(np.abs(b) - fb) < 0.3) & (np.abs(a) <= fa)) \
                | ((np.abs(a) < 0.3) & (np.abs(b) <= fb)) | (np.abs(np.hypot(a, b) - min(fa, fb) / 3) < 0.3)
            c.paint(sl, lines & (c.material[sl] == FIELD), MARK_WHITE, (235, 235, 230))

