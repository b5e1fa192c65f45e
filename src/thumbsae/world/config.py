"""The world's settings: sizes, seed, and the planted generative model of views."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

from thumbsae.config import MAX_SEED, Seed
from thumbsae.errors import ThumbsaeError
from thumbsae.world.drawing import MOTIFS

# Multiplicative effects on views: two positive, two negative (the study's food-high, sports-low).
DEFAULT_EFFECTS: tuple[tuple[str, float], ...] = (
    ("food", 4.0),
    ("face", 2.0),
    ("sports_field", 0.4),
    ("night_scene", 0.4),
)


# Limits: a world is a test bed; these keep one run within a few GB of memory and disk.
MAX_THUMBNAILS = 1_000_000
MAX_CHANNELS = 100_000
MAX_REFERENCE_PER_CLASS = 100_000
MIN_SIDE, MAX_SIDE = 16, 2048  # YouTube thumbnails are at most 1280 x 720
MIN_EFFECT, MAX_EFFECT = 0.01, 100.0
_FLOAT_RANGES = (
    ("channel_sd", 0.0, 5.0),
    ("confound_strength", -5.0, 5.0),
    ("age_effect_per_year", -1.0, 1.0),
    ("warmth_effect", -5.0, 5.0),
    ("noise_sd", 0.0, 5.0),
    ("base", -20.0, 30.0),
)


def _integer(key: str, value: object, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi, else a one-line `ThumbsaeError` naming `world.<key>`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ThumbsaeError(f"world.{key}={value!r}: must be an integer in {lo}..{hi}")
    return int(value)


def _number(key: str, value: object) -> float:
    """`value` as a finite float, else a one-line `ThumbsaeError` naming `world.<key>`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ThumbsaeError(f"world.{key}={value!r}: must be a finite number")
    return float(value)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides a world; the same config always gives byte-identical files.

    effects: motif -> multiplicative effect on views (x4 = 4.0); motifs not named have none.
    confounded: motifs with no effect of their own that big channels use more, so they go with
        views only through the channel.
    channel_sd: standard deviation of a channel's log-normal size effect.
    confound_strength: how strongly a channel's size raises its use of the confounded motifs.
    age_effect_per_year: log-views gained per year since upload (older videos gathered more).
    warmth_effect: log-views per unit of palette warmth (warmth is in [-1, 1]).
    noise_sd: standard deviation of the per-video log-normal noise.
    base: log-views of a neutral video of an average channel uploaded on the reference date.
    years: first and last upload year (inclusive); ages count from 1 January after the last.
    workers: drawing processes (None: one for small worlds, else up to the CPU count); the files
        do not depend on it.
    png_compress_level: zlib level of the PNGs (low is fast; files stay lossless either way).

    Every setting is checked on construction: a bad one raises `ThumbsaeError` in one line naming
    it (`world.seed=-1: must be an integer in 0..4294967295`); sizes and counts have upper
    limits (`MAX_SIDE`, `MAX_THUMBNAILS`, ...) so that one run cannot exhaust memory or disk.
    """

    n_thumbnails: int = 4000
    width: int = 224
    height: int = 224
    n_channels: int = 40
    n_reference_per_class: int = 150
    seed: Seed = 0
    null: bool = False
    years: tuple[int, int] = (2015, 2024)
    effects: tuple[tuple[str, float], ...] | Mapping[str, float] = field(default=DEFAULT_EFFECTS)
    confounded: tuple[str, ...] = ("red_arrow",)
    channel_sd: float = 1.0
    confound_strength: float = 1.5
    age_effect_per_year: float = 0.12
    warmth_effect: float = 0.2
    noise_sd: float = 0.5
    base: float = 7.5
    workers: int | None = None
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        # Hydra and JSON hand over dicts and lists; keep the frozen config hashable and ordered.
        effects = self.effects.items() if isinstance(self.effects, Mapping) else self.effects
        try:
            object.__setattr__(self, "effects", tuple((str(m), _number(f"effects.{m}", e)) for m, e in effects))
            object.__setattr__(self, "confounded", tuple(str(m) for m in self.confounded))
            object.__setattr__(self, "years", tuple(_integer("years", y, 1, 9998) for y in self.years))
        except (TypeError, ValueError):
            raise ThumbsaeError(
                "world.effects / world.confounded / world.years: expected a motif -> factor mapping, "
                "a list of motifs and [first, last] years"
            ) from None
        _integer("n_thumbnails", self.n_thumbnails, 1, MAX_THUMBNAILS)
        _integer("width", self.width, MIN_SIDE, MAX_SIDE)
        _integer("height", self.height, MIN_SIDE, MAX_SIDE)
        _integer("n_channels", self.n_channels, 1, MAX_CHANNELS)
        _integer("n_reference_per_class", self.n_reference_per_class, 0, MAX_REFERENCE_PER_CLASS)
        _integer("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.null, bool):
            raise ThumbsaeError(f"world.null={self.null!r}: must be true or false")
        if self.workers is not None:
            _integer("workers", self.workers, 1, 256)
        _integer("png_compress_level", self.png_compress_level, 0, 9)
        if len(self.years) != 2 or self.years[0] > self.years[1]:
            raise ThumbsaeError(f"world.years={list(self.years)}: must be [first, last] with first <= last")
        unknown = [m for m, _ in self.effects if m not in MOTIFS] + [m for m in self.confounded if m not in MOTIFS]
        if unknown:
            raise ThumbsaeError(f"world: unknown motif(s) {unknown}; expected names from {', '.join(MOTIFS)}")
        for motif, effect in self.effects:
            if not MIN_EFFECT <= effect <= MAX_EFFECT:
                raise ThumbsaeError(
                    f"world.effects.{motif}={effect:g}: a multiplicative factor must be in {MIN_EFFECT:g}..{MAX_EFFECT:g}"
                )
        if set(self.confounded) & {m for m, _ in self.effects}:
            raise ThumbsaeError("world.confounded: a confounded motif must have no effect of its own")
        for key, lo, hi in _FLOAT_RANGES:
            value = _number(key, getattr(self, key))
            if not lo <= value <= hi:
                raise ThumbsaeError(f"world.{key}={value:g}: must be a number in {lo:g}..{hi:g}")
        # exp(log-views) must fit int64 (about e^43): bound the largest log-views the model can draw.
        span = self.years[1] - self.years[0] + 1
        largest = (
            abs(self.base) + 8 * self.channel_sd + abs(self.age_effect_per_year) * span
            + sum(abs(math.log(e)) for _, e in self.effects) + abs(self.warmth_effect) + 8 * self.noise_sd
        )
        if largest > 40:
            raise ThumbsaeError(
                f"world: base, channel_sd, noise_sd, effects and age_effect_per_year x {span} years allow "
                f"log-views up to {largest:.0f}; views over e^40 do not fit a 64-bit count"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every image."""
        return (self.width, self.height)
