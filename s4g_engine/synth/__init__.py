"""Deprecated alias of :mod:`s4g_synth`, kept so that ``from s4g_engine.synth import generate_dataset`` still
works. The synthetic world is its own package now (``s4g_synth``, with the compiled renderer
``s4g_synth._render``); import from there. ``SynthConfig`` of this old path is ``s4g_synth.GeneratorConfig``.
The old submodules (``s4g_engine.synth.capture`` …) are not aliased: use ``s4g_synth.capture`` ….
"""

from __future__ import annotations

import warnings
from typing import Any

from s4g_synth import GENERATOR_VERSION, GeneratorConfig, generate_dataset

__all__ = ["generate_dataset", "GeneratorConfig", "GENERATOR_VERSION"]


# stacklevel 2 names the importing code (warnings skips the import machinery's frames), so Python's default
# filters show the warning when a script imports this module directly.
warnings.warn("s4g_engine.synth is deprecated and will be removed: import s4g_synth instead "
              "(SynthConfig is now s4g_synth.GeneratorConfig)", DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> Any:
    if name == "SynthConfig":  # the old name of the generator's config
        return GeneratorConfig
    raise AttributeError(f"module 's4g_engine.synth' has no attribute {name!r} (the package moved to s4g_synth)")
