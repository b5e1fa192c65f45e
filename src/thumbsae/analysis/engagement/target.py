"""What the engagement model predicts for a thumbnail table: the domain decision, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from thumbsae.analysis.adjust import adjust_views
from thumbsae.errors import ThumbsaeError


@dataclass(frozen=True)
class EngagementTarget:
    """values: float64 `[N]` log views the model learns; kind: one of `config.TARGET_KINDS`;
    groups: `[N]` channel ids (str) for the channel-held-out split, or None."""

    values: np.ndarray
    kind: str
    groups: np.ndarray | None


def engagement_target(table: pd.DataFrame) -> EngagementTarget:
    """The engagement model's target for a thumbnail table (`views`, optional `channel_id`).

    With channels: log1p(views) minus the channel's median (`channel_relative`): a creator
    compares stills of their own video, so what matters is views relative to the channel, and
    channel size (the biggest cause of views) would otherwise drown the thumbnail's share.
    Without channels: log1p(views) (`raw`), and the split holds out random thumbnails.
    """
    if "views" not in table.columns:
        raise ThumbsaeError("engagement model: the thumbnails table has no 'views' column")
    if "channel_id" in table.columns:
        groups = table["channel_id"].astype(str).to_numpy()
        return EngagementTarget(adjust_views(table, "channel"), "channel_relative", groups)
    return EngagementTarget(np.log1p(table["views"].to_numpy(dtype=np.float64)), "raw", None)
