"""Loggers for a run: W&B (offline by default) and CSV, always closed, crash included.

This is lightning-hydra-template's `task_wrapper` idea: whatever happens inside the task, the W&B
run is finished so the offline run folder is complete and `wandb sync` works later.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from thumbsae.config import build


def make_loggers(logger_cfg: DictConfig | None, run_dir: Path, *, name: str, group: str | None) -> list:
    """Instantiate every logger under `logger` with its files in `run_dir`."""
    loggers = []
    for key, node in (logger_cfg or {}).items():
        if node is None:
            continue
        if key == "wandb":
            os.environ.setdefault("WANDB_SILENT", "true")
            node = OmegaConf.merge(node, {"name": node.get("name") or name, "group": node.get("group") or group})
        loggers.append(build(node, f"logger.{key}", save_dir=str(run_dir)))
    return loggers


@contextlib.contextmanager
def closing_loggers(loggers: list) -> Iterator[list]:
    """Yield `loggers`; on exit (normal or exception) finish the W&B run with the right exit code."""
    failed = False
    try:
        yield loggers
    except BaseException:
        failed = True
        raise
    finally:
        for lg in loggers:
            if lg.__class__.__name__ == "WandbLogger":
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
            else:
                with contextlib.suppress(Exception):
                    lg.finalize("failed" if failed else "success")

