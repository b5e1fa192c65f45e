"""`EngagementConfig`: how the engagement model is fitted and measured (Hydra group `engagement`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from thumbsae.errors import ThumbsaeError

Scaling = Literal["std", "maxabs"]
# What the model predicts: log views relative to the channel (and upload age), or plain log views.
TARGET_KINDS = ("channel_relative", "channel_date_relative", "raw")


@dataclass(frozen=True)
class EngagementConfig:
    """How the engagement model is fitted and evaluated; mirrored by `conf/engagement/default.yaml`.

    Every value is checked on construction; a bad one raises a one-line ThumbsaeError naming
    `engagement.<key>`.
    """

    test_fraction: float = 0.2  # of channels (of thumbnails without channels) held out for the test
    interval: float = 0.8  # prediction-interval coverage
    l1_ratio: tuple[float, ...] = (0.5, 1.0)  # elastic-net mixes tried by cross-validation
    n_alphas: int = 20  # regularisation strengths tried per mix, log-spaced down from the largest
    eps: float = 1e-2  # smallest / largest strength (extended 10x once if the best is the smallest)
    alpha_rule: Literal["min", "1se"] = "min"  # lowest CV error, or the sparsest within one SE of it
    cv_folds: int = 5  # grouped by channel
    min_active: int = 5  # latents active on fewer training thumbnails are not candidates
    scaling: Scaling = "std"  # divide each latent by its training std (or max |value|)
    log1p: bool = False  # log1p of activations before scaling
    max_iter: int = 5000
    # Refits on training channels drawn with replacement, at the chosen strength: the uncertainty
    # of score differences between thumbnails (`p_better_than_next`). 0: no pairwise probabilities.
    n_bootstrap: int = 100

    def __post_init__(self) -> None:
        try:
            ratios = tuple(float(r) for r in self.l1_ratio)
        except TypeError:
            ratios = (float(self.l1_ratio),) if isinstance(self.l1_ratio, (int, float)) else ()
        except ValueError:
            ratios = ()
        if not ratios or not all(0.0 < r <= 1.0 for r in ratios):
            raise ThumbsaeError(f"engagement.l1_ratio={self.l1_ratio!r}: expected one or more numbers in (0, 1]")
        object.__setattr__(self, "l1_ratio", ratios)
        for key in ("test_fraction", "interval"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
                raise ThumbsaeError(f"engagement.{key}={value!r}: must be a number in (0, 1)")
        if not (isinstance(self.eps, (int, float)) and 0.0 < float(self.eps) < 1.0 and math.isfinite(self.eps)):
            raise ThumbsaeError(f"engagement.eps={self.eps!r}: must be a number in (0, 1)")
        minimum = {"n_alphas": 2, "cv_folds": 2, "min_active": 1, "max_iter": 1, "n_bootstrap": 0}
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ThumbsaeError(f"engagement.{key}={value!r}: must be a whole number >= {low}")
        choices = {"alpha_rule": ("min", "1se"), "scaling": ("std", "maxabs")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ThumbsaeError(f"engagement.{key}={getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        if not isinstance(self.log1p, bool):
            raise ThumbsaeError(f"engagement.log1p={self.log1p!r}: expected true or false")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> EngagementConfig:
        """Build from a Hydra/dict `engagement` node; `_target_` and unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(mapping).items() if k in known})
