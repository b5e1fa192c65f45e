"""The world's people and numbers: channels, what each thumbnail shows, and its views.

This is the generative model that ground_truth.json documents. It draws no pixels: `plan_world`
returns the manifests' rows and the truth, and `thumbsae.world.generate` draws the images they
name. Random streams are keyed by (seed, purpose), so adding thumbnails never changes the channels.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from thumbsae.world.captions import title_for
from thumbsae.world.config import WorldConfig
from thumbsae.world.drawing import DISTRACTORS, MOTIFS, SCENES

# Keys of the independent random streams drawn from the seed.
STREAM_CHANNELS, STREAM_THUMBNAILS, STREAM_NULL, STREAM_REFERENCE = 0, 1, 2, 3
STREAM_DRAW_THUMBNAIL, STREAM_DRAW_REFERENCE = 4, 5

FORMULA = (
    "views = round(exp(base + channel_effects[channel_id] + age_effect_per_year * age_years"
    " + sum(motif_effects[m] for m in motifs) + warmth_effect * warmth + noise)),"
    " noise ~ Normal(0, noise_sd), age_years = (reference_date - upload_date).days / 365.25;"
    " in a null world the views column is then randomly permuted"
)
_MOTIF_COUNT_P = (0.4, 0.4, 0.2)  # 1, 2 or 3 motifs per thumbnail


@dataclass(frozen=True)
class WorldPlan:
    """A world before drawing: manifests (image paths relative to the world folder) and truth.

    thumbnails: one row per thumbnail, the columns of thumbnails.csv.
    reference: one row per reference image, `video_id, image, label, scene, warmth`.
    ground_truth: the JSON-ready dict written to ground_truth.json.
    """

    thumbnails: pd.DataFrame
    reference: pd.DataFrame
    ground_truth: dict


def _channels(cfg: WorldConfig) -> pd.DataFrame:
    """Per channel: size effect, motif style weights, favourite scenes and warmth, active years."""
    rng = np.random.default_rng([cfg.seed, STREAM_CHANNELS])
    n = cfg.n_channels
    effect_C = rng.normal(0.0, cfg.channel_sd, size=n)
    # Every channel uses every motif somewhat; styles differ by a few-fold.
    style_CM = rng.gamma(3.0, 1.0, size=(n, len(MOTIFS)))
    z_C = effect_C / cfg.channel_sd if cfg.channel_sd > 0 else np.zeros(n)
    for motif in cfg.confounded:
        # Big channels put this motif on their thumbnails much more often: the confounder.
        style_CM[:, MOTIFS.index(motif)] = 2.0 * np.exp(cfg.confound_strength * z_C)
    scene_CS = rng.gamma(1.0, 1.0, size=(n, len(SCENES)))
    warmth_C = rng.uniform(-0.5, 0.5, size=n)
    first, last = cfg.years
    start_C = rng.integers(first, last + 1, size=n)  # channel's first upload year
    share_C = rng.gamma(2.0, 1.0, size=n)  # how many of the videos it uploads
    return pd.DataFrame(
        {
            "channel_id": [f"ch{i:03d}" for i in range(n)],
            "effect": effect_C,
            "style": list(style_CM / style_CM.sum(axis=1, keepdims=True)),
            "scenes": list(scene_CS / scene_CS.sum(axis=1, keepdims=True)),
            "warmth": warmth_C,
            "start_year": start_C,
            "share": share_C / share_C.sum(),
        }
    )


def _log_effects(cfg: WorldConfig) -> dict[str, float]:
    effects = dict(cfg.effects)
    return {m: math.log(effects[m]) if m in effects else 0.0 for m in MOTIFS}


def _thumbnails(cfg: WorldConfig, channels: pd.DataFrame, reference_date: dt.date) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, STREAM_THUMBNAILS])
    n, n_motifs = cfg.n_thumbnails, len(MOTIFS)
    channel_N = rng.choice(len(channels), size=n, p=channels["share"].to_numpy())
    count_N = rng.choice(len(_MOTIF_COUNT_P), size=n, p=_MOTIF_COUNT_P) + 1
    # Weighted sampling without replacement, all rows at once: the top-k of log-weight + Gumbel.
    style_NM = np.stack(channels["style"].to_numpy())[channel_N]
    keys_NM = np.log(style_NM) + rng.gumbel(size=(n, n_motifs))
    rank_NM = np.argsort(np.argsort(-keys_NM, axis=1), axis=1)
    has_NM = rank_NM < count_N[:, None]
    scene_cdf_NS = np.cumsum(np.stack(channels["scenes"].to_numpy())[channel_N], axis=1)
    scene_N = np.minimum((scene_cdf_NS < rng.random(n)[:, None]).sum(axis=1), len(SCENES) - 1)
    warmth_N = np.round(
        np.clip(channels["warmth"].to_numpy()[channel_N] + rng.normal(0.0, 0.4, n), -1.0, 1.0), 3
    )
    first_day_N = np.array([np.datetime64(f"{y}-01-01") for y in channels["start_year"]])[channel_N]
    last_day = np.datetime64(f"{cfg.years[1]}-12-31")
    span_N = (last_day - first_day_N).astype(int) + 1
    upload_N = first_day_N + np.floor(rng.random(n) * span_N).astype(int)
    age_years_N = (np.datetime64(reference_date.isoformat()) - upload_N).astype(int) / 365.25
    log_effect_M = np.array([_log_effects(cfg)[m] for m in MOTIFS])
    log_views_N = (
        cfg.base
        + channels["effect"].to_numpy()[channel_N]
        + cfg.age_effect_per_year * age_years_N
        + has_NM @ log_effect_M
        + cfg.warmth_effect * warmth_N
        + rng.normal(0.0, cfg.noise_sd, n)
    )
    views_N = np.round(np.exp(log_views_N)).astype(np.int64)
    if cfg.null:
        # The null world: same images and metadata, views shuffled across thumbnails.
        views_N = views_N[np.random.default_rng([cfg.seed, STREAM_NULL]).permutation(n)]
    motifs_N = [[MOTIFS[j] for j in np.flatnonzero(row)] for row in has_NM]  # in MOTIFS order
    ids = [f"t{i:06d}" for i in range(n)]
    return pd.DataFrame(
        {
            "video_id": ids,
            "image": [f"images/thumbnails/{v}.png" for v in ids],
            "views": views_N,
            "channel_id": channels["channel_id"].to_numpy()[channel_N],
            "upload_date": upload_N.astype(str),
            "title": [title_for(m, rng) for m in motifs_N],
            "motifs": [";".join(m) for m in motifs_N],
            "scene": [SCENES[j] for j in scene_N],
            "warmth": warmth_N,
        }
    )


def _reference(cfg: WorldConfig) -> pd.DataFrame:
    """Single-motif images of every motif plus distractor classes: the ImageNet stand-in."""
    rng = np.random.default_rng([cfg.seed, STREAM_REFERENCE])
    rows = []
    for label in MOTIFS + DISTRACTORS:
        for k in range(cfg.n_reference_per_class):
            video_id = f"ref_{label}_{k:04d}"
            rows.append(
                {
                    "video_id": video_id,
                    "image": f"images/reference/{video_id}.png",
                    "label": label,
                    "scene": SCENES[int(rng.integers(len(SCENES)))],
                    "warmth": round(float(rng.uniform(-1.0, 1.0)), 3),
                }
            )
    return pd.DataFrame(rows, columns=["video_id", "image", "label", "scene", "warmth"])


# The settings that decide a world's content, as its ground truth records them: at the top level
# and under "config". `workers` and `png_compress_level` change neither a pixel nor a view count, so
# they are not on record.
_TOP_ON_RECORD = ("seed", "null", "base", "age_effect_per_year", "warmth_effect", "noise_sd")
_CONFIG_ON_RECORD = (
    "n_thumbnails", "width", "height", "n_channels", "n_reference_per_class", "years", "effects",
    "confounded", "channel_sd", "confound_strength",
)


def _on_record(cfg: WorldConfig, key: str) -> Any:
    value = getattr(cfg, key)
    return dict(value) if key == "effects" else list(value) if isinstance(value, tuple) else value


def plan_world(cfg: WorldConfig) -> WorldPlan:
    """Draw the world's numbers (no pixels): manifests and ground truth for `cfg`."""
    reference_date = dt.date(cfg.years[1] + 1, 1, 1)
    channels = _channels(cfg)
    thumbnails = _thumbnails(cfg, channels, reference_date)
    log_effect = _log_effects(cfg)
    active = not cfg.null
    positive = [m for m in MOTIFS if log_effect[m] > 0] if active else []
    negative = [m for m in MOTIFS if log_effect[m] < 0] if active else []
    confounded = [m for m in MOTIFS if m in cfg.confounded] if active else []
    truth = {
        **{key: _on_record(cfg, key) for key in _TOP_ON_RECORD},
        "formula": FORMULA,
        # In a null world no motif has an effect any more; the planted values stay on record.
        "motif_effects": {m: (round(e, 6) if active else 0.0) for m, e in log_effect.items()},
        "motif_multipliers": {
            m: (round(math.exp(e), 6) if active else 1.0) for m, e in log_effect.items()
        },
        "planted_motif_effects": {m: round(e, 6) for m, e in log_effect.items()},
        "positive": positive,
        "negative": negative,
        "confounded": confounded,
        "null_motifs": [m for m in MOTIFS if m not in positive + negative + confounded],
        "channel_effects": {
            c: round(float(e), 6)
            for c, e in zip(channels["channel_id"], channels["effect"], strict=True)
        },
        "channel_confounded_use": {
            c: {m: round(float(s[MOTIFS.index(m)]), 6) for m in cfg.confounded}
            for c, s in zip(channels["channel_id"], channels["style"], strict=True)
        },
        "reference_date": reference_date.isoformat(),
        "motifs": list(MOTIFS),
        "distractors": list(DISTRACTORS),
        "scenes": list(SCENES),
        "config": {key: _on_record(cfg, key) for key in _CONFIG_ON_RECORD},
    }
    return WorldPlan(thumbnails=thumbnails, reference=_reference(cfg), ground_truth=truth)


def settings_differing(cfg: WorldConfig, ground_truth: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings of `cfg` that differ from those a generated world's `ground_truth.json` records:
    `{key: (recorded, asked)}`, empty when `cfg` would generate that same world."""
    config = ground_truth.get("config")
    config = config if isinstance(config, Mapping) else {}
    recorded = {k: ground_truth.get(k) for k in _TOP_ON_RECORD} | {k: config.get(k) for k in _CONFIG_ON_RECORD}
    asked = {k: _on_record(cfg, k) for k in recorded}
    return {k: (recorded[k], asked[k]) for k in recorded if recorded[k] != asked[k]}
