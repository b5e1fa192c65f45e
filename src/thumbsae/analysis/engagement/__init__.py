"""thumbsae.analysis.engagement: from a thumbnail's SAE latents to its (channel-relative) log views.

- `config`: `EngagementConfig` (Hydra group `engagement`), `TARGET_KINDS`.
- `target`: `engagement_target(table)`, what the model predicts for a thumbnail table.
- `fit`: `fit_engagement_model`, `split_by_channel` (channel-held-out test, grouped CV, bootstrap).
- `model`: `EngagementModel` (predict, contributions, score_samples), `BootstrapFits`.
- `io`: the model folder (`save_model`, `load_model`; never unpickles).
- `metrics`, `baseline`: held-out Spearman, within-channel pairwise accuracy, the ridge baseline.
- `pairs`: P(A beats B) from the bootstrap refits and residual spread, and its calibration.
"""

from thumbsae.analysis.engagement.config import TARGET_KINDS, EngagementConfig
from thumbsae.analysis.engagement.fit import fit_engagement_model, split_by_channel
from thumbsae.analysis.engagement.io import load_model, save_model
from thumbsae.analysis.engagement.metrics import pairwise_accuracy
from thumbsae.analysis.engagement.model import BootstrapFits, EngagementModel
from thumbsae.analysis.engagement.pairs import (
    PairCalibration,
    beat_probabilities,
    beat_probability,
    held_out_pair_calibration,
    pair_calibration,
    reliability,
    world_expected_log_views,
)
from thumbsae.analysis.engagement.target import EngagementTarget, engagement_target

__all__ = [
    "TARGET_KINDS",
    "BootstrapFits",
    "EngagementConfig",
    "EngagementModel",
    "EngagementTarget",
    "PairCalibration",
    "beat_probabilities",
    "beat_probability",
    "engagement_target",
    "fit_engagement_model",
    "held_out_pair_calibration",
    "load_model",
    "pair_calibration",
    "pairwise_accuracy",
    "reliability",
    "save_model",
    "split_by_channel",
    "world_expected_log_views",
]
