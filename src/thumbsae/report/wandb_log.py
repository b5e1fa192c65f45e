"""The evaluation in Weights & Biases: panel images, the feature-group table, summary numbers.

Works with W&B offline (the default logger): everything lands in the run folder and `wandb sync`
uploads it later. With W&B disabled or no run, it logs one debug line and does nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Members lists can hold hundreds of ids; the table keeps the first few (the CSV has them all).
MAX_MEMBERS_IN_TABLE = 11


def find_wandb_run(run_or_logger):
    """The live `wandb` run behind `run_or_logger`, or None.

    Accepts a `wandb` run, a Lightning `WandbLogger` (its `.experiment`), a list of loggers (the
    first W&B one), or None.
    """
    if run_or_logger is None:
        return None
    if isinstance(run_or_logger, (list, tuple)):
        for item in run_or_logger:
            run = find_wandb_run(item)
            if run is not None:
                return run
        return None
    if run_or_logger.__class__.__name__ == "WandbLogger":
        return run_or_logger.experiment
    if callable(getattr(run_or_logger, "log", None)):
        return run_or_logger
    return None


def _is_disabled(run) -> bool:
    """True for wandb's disabled-mode stand-in (`NoopRun`), whose calls would go nowhere."""
    mode = getattr(getattr(run, "settings", None), "mode", None)
    return getattr(run, "disabled", False) is True or mode == "disabled"


def feature_table_frame(feature_groups: pd.DataFrame) -> pd.DataFrame:
    """`feature_groups` ready for a W&B table: plain types, NaN as None, members shortened."""
    frame = feature_groups.copy()
    if "members" in frame.columns:
        frame["members"] = [
            ";".join(str(m).split(";")[:MAX_MEMBERS_IN_TABLE]) if isinstance(m, str) else "" for m in frame["members"]
        ]
    if "side" in frame.columns:
        frame["side"] = frame["side"].fillna("").astype(str)
    return frame.astype(object).where(pd.notna(frame), None)


def summary_scalars(summary: dict, prefix: str = "eval/") -> dict[str, float | int | str]:
    """Flatten the numbers (and short strings) of `summary` to `prefix` + dotted keys."""
    flat: dict[str, float | int | str] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(value[k], f"{key}.{k}" if key else str(k))
        elif isinstance(value, (bool, np.bool_)):
            flat[prefix + key] = int(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            number = value.item() if isinstance(value, np.generic) else value
            if not (isinstance(number, float) and math.isnan(number)):
                flat[prefix + key] = number
        elif isinstance(value, str) and len(value) <= 200:
            flat[prefix + key] = value

    walk(summary or {}, "")
    return flat


def log_evaluation(run_or_logger, panels_dir: str | Path, feature_groups: pd.DataFrame, summary: dict) -> bool:
    """Log the evaluation to W&B: every panel PNG as an image, the feature groups as a table.

    Inputs:
        run_or_logger: a `wandb` run, a Lightning `WandbLogger`, a list of loggers, or None.
        panels_dir: the folder `write_panels` wrote (its `*.png` and `overview/*.png`).
        feature_groups: the `feature_groups.csv` frame (one row per tested feature).
        summary: the evaluation summary; its numbers go to the run summary under `eval/`.
    Returns:
        True when something was logged, False when W&B is off (no run, or disabled mode).
    """
    run = find_wandb_run(run_or_logger)
    if run is None or _is_disabled(run):
        log.debug("log_evaluation: W&B is disabled or no run was given; nothing logged")
        return False
    import wandb

    panels_dir = Path(panels_dir)
    images = {}
    for path in sorted(panels_dir.glob("*.png")) + sorted((panels_dir / "overview").glob("*.png")):
        key = f"panels/overview_{path.stem}" if path.parent.name == "overview" else f"panels/{path.stem}"
        images[key] = wandb.Image(str(path), caption=path.stem)
    frame = feature_table_frame(feature_groups)
    table = wandb.Table(columns=[str(c) for c in frame.columns], data=frame.values.tolist())
    run.log({**images, "eval/feature_groups": table})
    for key, value in summary_scalars(summary).items():
        run.summary[key] = value
    return True


def log_comparison_row(run_or_logger, row: dict) -> bool:
    """Give a training run's W&B run the same numbers `thumbsae compare` tabulates.

    row: one `thumbsae.sae.compare.run_summary` row (run, name, arch, n_latents, fvu, l0,
    dead_fraction, tokens_per_s, ...). Each number goes to the run summary under `compare/`, and
    the row is logged as a one-row table `compare/sae_runs`, so the runs of a multirun group
    (`group`) line up in W&B as they do in `sae_comparison.csv`. Returns False when W&B is off.
    """
    run = find_wandb_run(run_or_logger)
    if run is None or _is_disabled(run):
        log.debug("log_comparison_row: W&B is disabled or no run was given; nothing logged")
        return False
    import wandb

    plain = {
        str(k): (None if isinstance(v, float) and math.isnan(v) else (v.item() if isinstance(v, np.generic) else v))
        for k, v in row.items()
    }
    run.log({"compare/sae_runs": wandb.Table(columns=list(plain), data=[list(plain.values())])})
    for key, value in summary_scalars(plain, prefix="compare/").items():
        run.summary[key] = value
    return True


def quiet_wandb_logger(**kwargs):
    """Lightning's `WandbLogger(**kwargs)` without the `anonymous` setting it always passes.

    Lightning hands `anonymous=None` to `wandb.init`, and W&B then warns on every run that "the
    anonymous setting has no effect"; dropping the key removes a warning about nothing we set.
    Use as a logger config's `_target_` (`thumbsae.report.wandb_log.quiet_wandb_logger`).
    """
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(**kwargs)
    logger._wandb_init.pop("anonymous", None)  # private dict Lightning passes to wandb.init
    return logger
