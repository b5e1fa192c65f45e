"""What `train.py`, `evaluate.py` and `extract.py` share: their command line checked in one line
before Hydra starts, and a task's `ThumbsaeError` turned into one line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from thumbsae.config import compose
from thumbsae.errors import ThumbsaeError

# Hydra's own flags: with these the command line is Hydra's to read (sweeps, help, config printing).
HYDRA_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")


def check_command_line(script: str, config_name: str, argv: list[str] | None = None) -> None:
    """Compose `conf/<config_name>.yaml` with the command line's overrides; on a malformed override,
    an unknown key or group option, print one line (`train.py: error: ...`) and exit 2.

    Multirun sweeps and Hydra's own flags are left to Hydra.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HYDRA_FLAGS or a.startswith("--config") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "-"))]
    try:
        compose(config_name, overrides)
    except ThumbsaeError as err:
        fail(script, err)


def run_task(script: str, task: Callable[[], str]) -> None:
    """Inside a Hydra job: quiet the console (third-party lines hidden unless `hydra.verbose=true`),
    run `task`, print what it returns (if anything), or its `ThumbsaeError` as one line with exit
    status 2."""
    from thumbsae.console import quiet_third_party

    quiet_third_party()
    try:
        message = task()
    except ThumbsaeError as err:
        fail(script, err)
    if message:
        print(message)


def fail(script: str, err: Exception) -> NoReturn:
    print(f"{script}: error: {err}", file=sys.stderr)
    sys.exit(2)
