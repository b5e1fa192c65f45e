"""Views adjusted for channel and upload age, so feature groups are compared like with like.

`channel`: log1p(views) minus the median log1p(views) of the thumbnail's channel.
`channel_date`: first minus a smooth function of log upload age, fitted WITHIN channels (a
channel that uploaded mostly long ago must not pass its age on to its channel effect, nor the
other way round), then minus the channel median of what is left. Age is counted in days before the
newest upload date in the data, so the adjustment depends on the table only and is deterministic.
The age function is piecewise linear in log1p(age days) with knots at `AGE_BINS` quantiles.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from thumbsae.errors import ThumbsaeError

Adjust = Literal["none", "channel", "channel_date"]

AGE_BINS = 10


def _required(table: pd.DataFrame, column: str, needed_by: str) -> pd.Series:
    """The column, with a clear error naming the setting that needs it when it is missing or empty."""
    if column not in table.columns:
        raise ThumbsaeError(f"{needed_by} needs a '{column}' column in the thumbnails table")
    col = table[column]
    empty = col.isna() | (col.astype(str).str.strip() == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if rows.shape[0] > 5 else "")
        raise ThumbsaeError(
            f"{needed_by} needs '{column}' on every thumbnail: {rows.shape[0]} rows have none (rows {shown})"
        )
    return col


def channel_codes(table: pd.DataFrame, needed_by: str = "eval.adjust=channel") -> np.ndarray:
    """int64 `[N]` code per thumbnail's `channel_id` (order of first appearance)."""
    codes, _ = pd.factorize(_required(table, "channel_id", needed_by).astype(str), sort=False)
    return codes.astype(np.int64)


def age_days(table: pd.DataFrame, needed_by: str = "eval.adjust=channel_date") -> np.ndarray:
    """float64 `[N]` days between each `upload_date` and the newest upload date in the table."""
    raw = _required(table, "upload_date", needed_by).astype(str)
    dates = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    bad = dates.isna().to_numpy()
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ThumbsaeError(
            f"upload_date: row {r} has {raw.iloc[r]!r}, not an ISO-8601 date ({int(bad.sum())} bad rows)"
        )
    newest = dates.max()
    return ((newest - dates).dt.total_seconds() / 86400.0).to_numpy(dtype=np.float64)


def _channel_median(y_N: np.ndarray, channel_N: np.ndarray) -> np.ndarray:
    """float64 `[N]`: the median of `y_N` over each thumbnail's channel."""
    return pd.Series(y_N).groupby(channel_N, sort=True).transform("median").to_numpy(dtype=np.float64)


def _age_basis(x_N: np.ndarray) -> np.ndarray:
    """float64 `[N, B]` piecewise-linear 'tent' functions of x at its quantile knots (rows sum to 1)."""
    knots = np.unique(np.quantile(x_N, np.linspace(0.0, 1.0, AGE_BINS + 1)))
    if knots.shape[0] < 2:
        return np.ones((x_N.shape[0], 1))
    eye = np.eye(knots.shape[0])
    return np.stack([np.interp(x_N, knots, eye[j]) for j in range(knots.shape[0])], axis=1)


def _channel_mean(a_NB: np.ndarray, channel_N: np.ndarray) -> np.ndarray:
    """`a_NB` replaced by its mean over each thumbnail's channel (column by column)."""
    count_C = np.bincount(channel_N).astype(np.float64)
    sums_CB = np.stack([np.bincount(channel_N, weights=a_NB[:, j]) for j in range(a_NB.shape[1])], axis=1)
    return (sums_CB / count_C[:, None])[channel_N]


def _age_curve(x_N: np.ndarray, y_N: np.ndarray, channel_N: np.ndarray) -> np.ndarray:
    """float64 `[N]` age effect f(x) of the model y = channel level + f(x) + noise, mean zero.

    Fitted within channels (both sides minus their channel means, then least squares on the
    tent basis), so channel levels and age separate exactly even when big channels are old.
    """
    basis_NB = _age_basis(x_N)
    within_NB = basis_NB - _channel_mean(basis_NB, channel_N)
    within_N = y_N - _channel_mean(y_N[:, None], channel_N)[:, 0]
    coef_B = np.linalg.lstsq(within_NB, within_N, rcond=None)[0]
    curve_N = basis_NB @ coef_B
    return curve_N - curve_N.mean()


def adjust_views(table: pd.DataFrame, mode: Adjust) -> np.ndarray:
    """float64 `[N]` adjusted log views of the table's thumbnails.

    table: needs `views`; `channel_id` for `channel`; `channel_id` and `upload_date` for
    `channel_date`. `none` returns log1p(views) unchanged.
    """
    y_N = np.log1p(table["views"].to_numpy(dtype=np.float64))
    if mode == "none":
        return y_N
    if mode not in ("channel", "channel_date"):
        raise ThumbsaeError(f"eval.adjust: expected none, channel or channel_date, got {mode!r}")
    channel_N = channel_codes(table, f"eval.adjust={mode}")
    if mode == "channel":
        return y_N - _channel_median(y_N, channel_N)
    age_N = _age_curve(np.log1p(age_days(table, f"eval.adjust={mode}")), y_N, channel_N)
    return y_N - age_N - _channel_median(y_N - age_N, channel_N)
