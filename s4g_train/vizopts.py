"""The choices of ``s4g-viz`` (heatmap modes, projected rows, colormaps), in a module without torch or
matplotlib, so that the command line's parser and ``--help`` import neither."""

from __future__ import annotations

#: Heatmap modes: activation (channel-mean of the last feature map) or gradcam (gradient-weighted).
MODES: tuple[str, ...] = ("activation", "gradcam")
#: Panorama rows projected onto the tile.
ROWS: tuple[str, ...] = ("full", "below-horizon")
#: Perceptual colormaps offered for the overlays.
CMAPS: tuple[str, ...] = ("inferno", "viridis", "turbo", "magma", "plasma", "cividis")
