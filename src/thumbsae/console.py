"""What a run prints: thumbsae's own lines and one progress bar per stage, nothing else.

Libraries we call talk a lot: open_clip logs INFO lines through the root logger, Lightning prints
hardware lines, tips and a model table and warns about things we chose on purpose, torch and W&B
add deprecation notes. `quiet_third_party(verbose=False)` hides all of it on the console (errors
still show, and Hydra's run log file keeps every line); `verbose=True` (`thumbsae -v ...`,
`python train.py hydra.verbose=true`) shows everything. Progress bars come from `progress_bar`
(tqdm, stderr), `StageProgress` (one bar over a command's named steps) and, for Lightning
training, `step_progress_bar` (one bar over `max_steps`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Self

OWN_LOGGER = "thumbsae"
# Records of these loggers are this package's own lines ("__main__": train.py, evaluate.py, ...;
# "hydra": the multirun launcher's "#1 : sae.expansion_factor=16", part of the command run).
_OWN_PREFIXES = (OWN_LOGGER, "__main__", "hydra")


def _is_own(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _OWN_PREFIXES)


class OwnLinesOnly(logging.Filter):
    """Passes thumbsae's own records and anyone's errors; drops other libraries' INFO and warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _is_own(record.name) or record.levelno >= logging.ERROR


class StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is at the time of each record (like
    logging's last-resort handler), so a replaced stderr (pytest's capture) is never left stale."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _is_console(handler: logging.Handler) -> bool:
    if isinstance(handler, StderrHandler):
        return True
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream in (sys.stderr, sys.stdout)


def quiet_third_party(verbose: bool | str | list | None = None) -> None:
    """Hide third-party INFO lines and warnings on the console unless `verbose`.

    verbose: truthy shows everything (Hydra's `hydra.verbose` may be True, a logger name or a list
    of them; any of these counts); None asks the running Hydra job (`hydra_verbose()`, False
    outside Hydra). Not verbose:
    - every console handler of the root logger (a stderr one is added when there is none) passes
      only `thumbsae.*`, `__main__` and Hydra launcher records and anyone's errors; file handlers
      keep everything;
    - Python warnings are ignored except those raised from thumbsae's own modules;
    - W&B's terminal lines are silenced (`WANDB_SILENT=true` unless already set).
    Safe to call more than once.
    """
    if verbose is None:
        verbose = hydra_verbose()
    if verbose:
        logging.getLogger(OWN_LOGGER).setLevel(logging.DEBUG)
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"thumbsae(\.|$)")
    root = logging.getLogger()
    consoles = [h for h in root.handlers if _is_console(h)]
    if not consoles:
        handler = StderrHandler()
        root.addHandler(handler)
        consoles = [handler]
    for handler in consoles:
        if not any(isinstance(f, OwnLinesOnly) for f in handler.filters):
            handler.addFilter(OwnLinesOnly())
    # A library that logs to its own handler (Lightning does when imported before any handler
    # existed) bypasses the root's; filter those too.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not _is_own(name):
            for handler in logger.handlers:
                if _is_console(handler) and not any(isinstance(f, OwnLinesOnly) for f in handler.filters):
                    handler.addFilter(OwnLinesOnly())
    if logging.getLogger(OWN_LOGGER).level == logging.NOTSET:
        logging.getLogger(OWN_LOGGER).setLevel(logging.INFO)


def hydra_verbose() -> bool:
    """True when the running Hydra job was asked for verbose logging (`hydra.verbose=...`)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose) if HydraConfig.initialized() else False
    except (ImportError, ValueError):
        return False


def progress_bar(
    total: int | None, desc: str, *, unit: str = "it", initial: int = 0, disable: bool = False, iterable: Any = None
):
    """A tqdm bar on stderr with a known `total` (what every stage's bar uses), over `iterable` when
    given. Close it (or use it as a context manager) when the stage ends. Off a terminal (a log
    file, CI, a pipe) it is redrawn at most every `LOG_REFRESH_S` seconds instead of ten times a
    second, so a log holds a few lines per stage, the final one always among them."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True,
        mininterval=0.1 if _is_terminal(sys.stderr) else LOG_REFRESH_S,
    )


LOG_REFRESH_S = 15.0


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class StageProgress:
    """One bar over a command's named steps (`total` = their number), the running step shown
    beside the count. Call it with a step's name when that step starts; the previous one is then
    counted done. Use it as a context manager: leaving it counts the last step.

        with StageProgress(["encode latents", "feature study"], "evaluate") as step:
            step("encode latents"); ...
            step("feature study"); ...
    """

    def __init__(self, steps: list[str], desc: str, *, disable: bool = False) -> None:
        if len(set(steps)) != len(steps):
            raise ValueError(f"StageProgress: step names repeat: {steps}")
        self._steps = list(steps)
        self._done: list[str] = []
        self._current: str | None = None
        self._bar = progress_bar(len(self._steps), desc, unit="step", disable=disable)

    def __call__(self, name: str) -> None:
        if name not in self._steps or name in self._done or name == self._current:
            raise ValueError(f"StageProgress: {name!r} is not a step still to run (steps: {self._steps})")
        self._finish_current()
        self._current = name
        self._bar.set_postfix_str(name, refresh=True)

    @property
    def done(self) -> list[str]:
        """The steps counted done so far, in order."""
        return list(self._done)

    def _finish_current(self) -> None:
        if self._current is not None:
            self._done.append(self._current)
            self._bar.update(1)
            self._current = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._finish_current()
        self._bar.close()


def step_progress_bar(desc: str = "train SAE") -> Any:
    """A Lightning progress-bar callback: one bar over the optimiser steps up to `max_steps`.

    Lightning's own bar counts epochs (`Epoch 14/-2` when only `max_steps` bounds the run) and
    adds a bar per validation; this one shows `step/max_steps`, starts at the resumed step, and
    puts the last training loss and validation FVU beside the count. Pass it in `callbacks`:
    Lightning then uses it instead of its default bar.
    """
    from pytorch_lightning.callbacks import ProgressBar

    class StepProgressBar(ProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._enabled = True
            self._bar = None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer, pl_module) -> None:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            self._bar = progress_bar(
                total, desc, unit="step", initial=trainer.global_step,
                disable=not self._enabled or not trainer.is_global_zero,
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._bar is not None:
                self._bar.update(trainer.global_step - self._bar.n)
                loss = trainer.callback_metrics.get("train/loss")
                if loss is not None and trainer.global_step % 25 == 0:
                    self._bar.set_postfix(self._postfix(trainer), refresh=False)

        def on_validation_end(self, trainer, pl_module) -> None:
            if self._bar is not None:
                self._bar.set_postfix(self._postfix(trainer), refresh=False)

        def on_train_end(self, trainer, pl_module) -> None:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

        @staticmethod
        def _postfix(trainer) -> dict[str, str]:
            shown = {"train/loss": "loss", "val/fvu": "val_fvu"}
            return {
                short: f"{float(trainer.callback_metrics[key]):.4f}"
                for key, short in shown.items()
                if key in trainer.callback_metrics
            }

        def print(self, *args: Any, **kwargs: Any) -> None:
            from tqdm.auto import tqdm

            tqdm.write(" ".join(str(a) for a in args), file=sys.stderr)

    return StepProgressBar()


def training_callbacks(desc: str = "train SAE") -> list:
    """The Lightning callbacks that keep training quiet: `step_progress_bar(desc)` and a plain
    `ModelSummary`, which logs its table (shown only when verbose) where Lightning would otherwise
    print a rich table on every run."""
    from pytorch_lightning.callbacks import ModelSummary

    return [step_progress_bar(desc), ModelSummary()]
