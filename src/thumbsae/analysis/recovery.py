"""Recovery: did the feature-group study find what the synthetic world planted?

For each planted motif (`positive`, `negative`, `confounded` in ground_truth.json) the report
names the tested feature whose group members are purest in that motif (purity = fraction of
members whose `motifs` contain it; ties go to the lower feature id), that purity against the
motif's base rate, the feature's side, lift (with CI) against the true multiplier
exp(motif_effects[motif]), and its verdict (q < alpha). Raw and adjusted verdicts sit side by side
when the study ran with adjustment (columns `lift_raw`, `q_value_raw`) or when a second,
adjusted run is passed. For the confounded motif the adjusted verdict should be "not
significant". On a null world (`ground_truth["null"]`) every discovery is false: the report
counts them; the planted motifs are still listed with a true multiplier of 1.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from thumbsae.errors import ThumbsaeError
from thumbsae.jsonable import to_json_ready

# A feature "is" a motif when at least this fraction of its group shows it.
PURE = 0.5
# A world's ground_truth.json is tens of kB; anything far bigger is not one.
MAX_GROUND_TRUTH_BYTES = 64_000_000


def load_ground_truth(path: str | os.PathLike) -> tuple[dict | None, str | None]:
    """Read and check a world's `ground_truth.json` for `recovery_report`.

    Returns `(truth, None)` for a well-formed file, `(None, None)` when there is no file, and
    `(None, warning)` for a malformed one: the one-line warning names the file and the problem
    and says that recovery is skipped (the caller prints it and writes everything else).
    """
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        if not path.is_file():
            raise ValueError("not a regular file")
        if path.stat().st_size > MAX_GROUND_TRUTH_BYTES:
            raise ValueError(f"larger than {MAX_GROUND_TRUTH_BYTES} bytes")
        truth = json.loads(path.read_bytes().decode("utf-8"))
        _check_ground_truth(truth)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        what = " ".join(str(err).split())[:200] or type(err).__name__
        return None, f"{path}: malformed ground truth ({what}); recovery skipped"
    return truth, None


def _check_ground_truth(truth: object) -> None:
    """Raise ValueError unless `truth` has what `_planted` reads, with the right types."""
    if not isinstance(truth, dict):
        raise ValueError(f"expected a JSON object, got {type(truth).__name__}")
    null = truth.get("null", False)
    if not isinstance(null, bool):
        raise ValueError(f"'null' must be true or false, got {null!r}")

    def effects(key: str) -> dict:
        table = truth.get(key)
        if not isinstance(table, dict):
            raise ValueError(f"{key!r} must be an object of motif -> number")
        for motif, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key}.{motif} must be a finite number, got {value!r}")
        return table

    def motifs(container: dict, key: str, where: str) -> list:
        value = container.get(key, [])
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise ValueError(f"{where} must be a list of motif names")
        return value

    if null:
        effects("planted_motif_effects")
        config = truth.get("config", {})
        if not isinstance(config, dict):
            raise ValueError("'config' must be an object")
        motifs(config, "confounded", "config.confounded")
        return
    known = effects("motif_effects")
    for kind in ("positive", "negative", "confounded"):
        unknown = [m for m in motifs(truth, kind, repr(kind)) if m not in known]
        if unknown:
            raise ValueError(f"{kind} motif {unknown[0]!r} has no entry in 'motif_effects'")


def _motif_sets(table: pd.DataFrame) -> tuple[dict[str, int], list[frozenset[str]]]:
    """(video_id -> row, per row the set of motifs its thumbnail shows); `motifs` is `;`-joined."""
    if "motifs" not in table.columns or "video_id" not in table.columns:
        raise ThumbsaeError(
            "recovery: the thumbnails table needs 'video_id' and 'motifs' columns (a world's thumbnails.csv)"
        )
    row_of = {vid: i for i, vid in enumerate(table["video_id"].astype(str))}
    sets = [frozenset(m for m in str(text).split(";") if m) if pd.notna(text) else frozenset() for text in table["motifs"]]
    return row_of, sets


def _member_rows(feature_groups: pd.DataFrame, row_of: dict[str, int]) -> list[np.ndarray]:
    """Per tested feature, int64 rows of its members (from the `;`-joined `members` column)."""
    out = []
    for feature, members in zip(feature_groups["feature"], feature_groups["members"].astype(str)):
        ids = [m for m in members.split(";") if m]
        missing = [m for m in ids if m not in row_of]
        if missing:
            raise ThumbsaeError(f"recovery: member {missing[0]!r} of feature {feature} is not in the thumbnails table")
        out.append(np.array([row_of[m] for m in ids], dtype=np.int64))
    return out


def _purity(member_rows: list[np.ndarray], has_N: np.ndarray) -> np.ndarray:
    """float64 `[G]`: fraction of each group's members whose thumbnail shows the motif (`has_N`)."""
    return np.array([has_N[rows].mean() if rows.shape[0] else 0.0 for rows in member_rows], dtype=np.float64)


def _planted(ground_truth: Mapping) -> list[tuple[str, str, float]]:
    """(motif, kind, true multiplier) of each planted motif; in a null world every multiplier is 1."""
    null = bool(ground_truth.get("null", False))
    if not null:
        effects = ground_truth.get("motif_effects", {})
        kinds = [(m, kind) for kind in ("positive", "negative", "confounded") for m in ground_truth.get(kind, [])]
        return [(m, kind, math.exp(float(effects.get(m, 0.0)))) for m, kind in kinds]
    # The null world keeps the planted effects on record; views were permuted, so none holds.
    planted = ground_truth.get("planted_motif_effects", {})
    confounded = ground_truth.get("config", {}).get("confounded", [])
    out = [(m, "positive" if e > 0 else "negative", 1.0) for m, e in planted.items() if e != 0]
    return out + [(m, "confounded", 1.0) for m in confounded]


def _verdict(row: pd.Series, alpha: float, suffix: str = "") -> dict:
    lift = float(row[f"lift{suffix}"])
    q = float(row[f"q_value{suffix}"])
    ci = [row.get(f"lift_ci_low{suffix}"), row.get(f"lift_ci_high{suffix}")]
    return {
        "lift": lift,
        "lift_ci": [float(c) for c in ci] if all(c is not None and pd.notna(c) for c in ci) else None,
        "q_value": q,
        "significant": bool(q < alpha),
        "side": (str(row.get(f"side{suffix}", "")) if pd.notna(row.get(f"side{suffix}", "")) else ""),
    }


def recovery_report(
    feature_groups: pd.DataFrame,
    table: pd.DataFrame,
    ground_truth: Mapping,
    *,
    adjusted_feature_groups: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> dict:
    """How well the tested features recover the world's planted motifs.

    feature_groups: the study's per-feature frame (`feature`, `members`, `lift`, `q_value`,
        `side`, optional `lift_ci_low/high`; with adjustment also `lift_raw`, `q_value_raw`, then
        `lift`/`q_value` are the adjusted results).
    table: the world's thumbnails (`video_id`, `motifs`). ground_truth: ground_truth.json as a dict.
    adjusted_feature_groups: an adjusted run's frame, when feature_groups is a raw run.
    Returns a JSON-ready dict: `motifs` (one entry per planted motif), `null_world`,
    `n_tested`, `false_discoveries` (null world) or `n_significant`, `n_recovered`.
    """
    if len(feature_groups) == 0:
        raise ThumbsaeError("recovery: no tested features")
    row_of, motif_sets = _motif_sets(table)
    member_rows = _member_rows(feature_groups, row_of)
    has_raw_columns = "q_value_raw" in feature_groups.columns
    if has_raw_columns:
        raw_frame, raw_suffix, adjusted_frame, adjusted_suffix = feature_groups, "_raw", feature_groups, ""
    else:
        raw_frame, raw_suffix = feature_groups, ""
        adjusted_frame, adjusted_suffix = adjusted_feature_groups, ""
    adjusted_by_feature = adjusted_frame.set_index("feature") if adjusted_frame is not None else None

    motifs = []
    for motif, kind, multiplier in _planted(ground_truth):
        has_N = np.array([motif in s for s in motif_sets], dtype=bool)
        purity_G = _purity(member_rows, has_N)
        # Highest purity, then the lower feature id (rows are in ascending feature order).
        best = int(np.lexsort((feature_groups["feature"].to_numpy(), -purity_G))[0])
        row = feature_groups.iloc[best]
        feature = int(row["feature"])
        base_rate = float(has_N.mean())
        raw = _verdict(raw_frame.iloc[best], alpha, raw_suffix)
        adjusted = None
        if adjusted_by_feature is not None and feature in adjusted_by_feature.index:
            adjusted = _verdict(adjusted_by_feature.loc[feature], alpha, adjusted_suffix)
        primary = adjusted if adjusted is not None else raw
        expected = {"positive": "high", "negative": "low"}.get(kind)
        entry = {
            "motif": motif,
            "kind": kind,
            "true_multiplier": multiplier,
            "base_rate": base_rate,
            "best_feature": feature,
            "purity": float(purity_G[best]),
            "pure": bool(purity_G[best] >= PURE),
            "side": primary["side"],
            "lift": primary["lift"],
            "lift_ci": primary["lift_ci"],
            "lift_over_true": primary["lift"] / multiplier,
            "q_value": primary["q_value"],
            "significant": primary["significant"],
            "raw": raw,
            "adjusted": adjusted,
        }
        if expected is not None:
            direction = (primary["lift"] > 1) if kind == "positive" else (primary["lift"] < 1)
            entry["expected_side"] = expected
            entry["recovered"] = bool(entry["pure"] and primary["significant"] and direction)
        else:
            # A confounded motif has no effect of its own: adjusting for channel should remove it.
            entry["recovered"] = bool(entry["pure"])
            entry["drops_out_when_adjusted"] = (
                bool(raw["significant"] and not adjusted["significant"]) if adjusted is not None else None
            )
        motifs.append(entry)

    primary_frame, primary_q = (feature_groups, "q_value")
    n_significant = int((primary_frame[primary_q] < alpha).sum())
    null_world = bool(ground_truth.get("null", False))
    report = {
        "null_world": null_world,
        "alpha": alpha,
        "n_tested": int(len(feature_groups)),
        "n_significant": n_significant,
        "n_significant_raw": int((raw_frame[f"q_value{raw_suffix}"] < alpha).sum()),
        "n_significant_adjusted": (
            int((adjusted_frame["q_value"] < alpha).sum()) if adjusted_frame is not None else None
        ),
        "n_recovered": sum(1 for m in motifs if m["kind"] != "confounded" and m["recovered"]),
        "n_planted": sum(1 for m in motifs if m["kind"] != "confounded"),
        "motifs": motifs,
    }
    if null_world:
        # Every discovery on permuted views is false.
        report["false_discoveries"] = n_significant
        report["false_discoveries_raw"] = report["n_significant_raw"]
        report["false_discoveries_adjusted"] = report["n_significant_adjusted"]
    return to_json_ready(report)


def world_recovery(result, latents_NF, thumbnails: pd.DataFrame, eval_cfg, truth_path: str | os.PathLike):
    """On a synthetic world (`ground_truth.json` beside the thumbnails): how well the study's
    features recover the planted effects, on raw views and after channel + upload-date adjustment
    (the study is run again with the other adjustment, so both verdicts are in one report).

    result: the `StudyResult` of `run_feature_study(latents_NF, thumbnails, eval_cfg)`.
    Returns `(report, None)`, `(None, None)` when this is not a world (no truth file, no `motifs`
    column), or `(None, warning)` for a malformed truth file or one that does not match the table.
    """
    from dataclasses import replace

    from thumbsae.analysis.study import run_feature_study

    if "motifs" not in thumbnails.columns:
        return None, None
    truth, warning = load_ground_truth(truth_path)
    if truth is None:
        return None, warning
    if eval_cfg.adjust == "none":
        raw = result.feature_groups
        adjustable = {"channel_id", "upload_date"} <= set(thumbnails.columns)
        adjusted = (run_feature_study(latents_NF, thumbnails, replace(eval_cfg, adjust="channel_date")).feature_groups
                    if adjustable else None)
    else:
        adjusted = result.feature_groups
        raw = run_feature_study(latents_NF, thumbnails, replace(eval_cfg, adjust="none")).feature_groups
    try:
        return recovery_report(raw, thumbnails, truth, adjusted_feature_groups=adjusted, alpha=eval_cfg.alpha), None
    except ThumbsaeError as err:
        return None, f"{truth_path}: {err}; recovery skipped"
