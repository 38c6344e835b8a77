"""The augmentation parameters, one value object validated once: `lrface augment` / `lrface synth`, POST /v1/synthesize,
augmentation jobs and their tasks all pass an `AugmentParams` along instead of six loose arguments."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lrface.core.face import FACE_HEIGHT, MIN_INPUT_HEIGHT

# Heights a caller may ask for: below MIN_INPUT_HEIGHT nothing face-like is left, above the canvas it is not LR.
MIN_HEIGHT = MIN_INPUT_HEIGHT
MAX_HEIGHT = FACE_HEIGHT


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_heights(height: int | None, min_height: int | None, max_height: int | None) -> None:
    """The one check of the height arguments (ValueError naming the argument): each an integer within
    [MIN_HEIGHT, MAX_HEIGHT] px when given, a fixed `height` or a range, not both, and the range not reversed.
    (Whether the model can draw from a range that leaves one bound open is the model's check:
    `Synthesizer.check`.)"""
    for name, value in (("height", height), ("min_height", min_height), ("max_height", max_height)):
        if value is None:
            continue
        if not _is_int(value):
            raise ValueError(f"{name} must be an integer, not {value!r}")
        if not MIN_HEIGHT <= value <= MAX_HEIGHT:
            raise ValueError(f"{name} must be within [{MIN_HEIGHT}, {MAX_HEIGHT}] px, not {value}")
    if height is not None and (min_height is not None or max_height is not None):
        raise ValueError("give either height or min_height / max_height, not both")
    if min_height is not None and max_height is not None and min_height > max_height:
        raise ValueError(f"min_height ({int(min_height)}) must not exceed max_height ({int(max_height)})")


@dataclass(frozen=True)
class AugmentParams:
    """K LR variants per face: `variants` (K >= 1) under run seed `seed` (>= 0), at a fixed `height`, or drawn
    within [`min_height`, `max_height`] (each bound defaulting to the model's range), written at native LR size or
    on the 112x96 canvas (`canvas`). Construction validates (ValueError); an instance is always valid."""

    variants: int = 1
    seed: int = 0
    height: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    canvas: bool = False

    def __post_init__(self):
        if not _is_int(self.variants) or self.variants < 1:
            raise ValueError(f"variants must be an integer >= 1, not {self.variants!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, not {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, not {self.seed}")
        check_heights(self.height, self.min_height, self.max_height)

    def synthesis(self) -> dict:
        """The keyword arguments of `Synthesizer.synthesize` / `Synthesizer.prepare` (these fields alone, also for
        a subclass that adds its own)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentParams)}
