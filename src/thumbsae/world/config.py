"""The world's settings: sizes, seed, and the planted generative model of views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from thumbsae.errors import ThumbsaeError
from thumbsae.world.drawing import MOTIFS

# Multiplicative effects on views: two positive, two negative (the study's food-high, sports-low).
DEFAULT_EFFECTS: tuple[tuple[str, float], ...] = (
    ("food", 4.0),
    ("face", 2.0),
    ("sports_field", 0.4),
    ("night_scene", 0.4),
)


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
    """

    n_thumbnails: int = 4000
    width: int = 224
    height: int = 224
    n_channels: int = 40
    n_reference_per_class: int = 150
    seed: int = 0
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
        object.__setattr__(self, "effects", tuple((str(m), float(e)) for m, e in effects))
        object.__setattr__(self, "confounded", tuple(str(m) for m in self.confounded))
        object.__setattr__(self, "years", tuple(int(y) for y in self.years))
        problems = []
        if self.n_thumbnails < 1:
            problems.append(f"n_thumbnails must be >= 1, got {self.n_thumbnails}")
        if self.width < 16 or self.height < 16:
            problems.append(f"width and height must be >= 16, got {self.width}x{self.height}")
        if self.n_channels < 1:
            problems.append(f"n_channels must be >= 1, got {self.n_channels}")
        if self.n_reference_per_class < 0:
            problems.append(f"n_reference_per_class must be >= 0, got {self.n_reference_per_class}")
        if len(self.years) != 2 or self.years[0] > self.years[1]:
            problems.append(f"years must be (first, last) with first <= last, got {self.years}")
        unknown = [m for m, _ in self.effects if m not in MOTIFS]
        unknown += [m for m in self.confounded if m not in MOTIFS]
        if unknown:
            problems.append(f"unknown motif(s) {unknown}; expected names from {', '.join(MOTIFS)}")
        if any(e <= 0 for _, e in self.effects):
            problems.append("effects are multiplicative factors and must be > 0")
        if set(self.confounded) & {m for m, _ in self.effects}:
            problems.append("a confounded motif must have no effect of its own")
        if not 0 <= self.png_compress_level <= 9:
            problems.append(f"png_compress_level must be in 0..9, got {self.png_compress_level}")
        if problems:
            raise ThumbsaeError("bad world config: " + "; ".join(problems))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every image."""
        return (self.width, self.height)
