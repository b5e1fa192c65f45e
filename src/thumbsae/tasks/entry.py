"""What `train.py`, `evaluate.py` and `extract.py` share: their command line checked in one line
before Hydra starts, and a task's `ThumbsaeError` turned into one line and exit status 2."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from typing import NoReturn

from thumbsae.config import compose
from thumbsae.errors import ThumbsaeError

# Hydra's own flags: with these the command line is Hydra's to read (help, config printing).
HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion")
MULTIRUN_FLAGS = ("-m", "--multirun")


def check_command_line(script: str, config_name: str, argv: list[str] | None = None) -> None:
    """Compose `conf/<config_name>.yaml` with the command line's overrides; on a malformed override,
    an unknown key or group option, print one line (`train.py: error: ...`) and exit 2.

    A multirun (`-m sae.expansion_factor=8,16`) is checked before its first job starts: every value
    of every sweep is composed once (`sweep_samples`), so `-m sae.bogus=1,2` is one line too. Hydra's
    own flags are left to Hydra.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HYDRA_FLAGS or a.startswith("--config") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra", "-"))]
    try:
        for job in sweep_samples(overrides) if any(a in MULTIRUN_FLAGS for a in argv) else [overrides]:
            compose(config_name, job)
    except ThumbsaeError as err:
        fail(script, err)


def sweep_samples(overrides: list[str]) -> list[list[str]]:
    """Override lists of single values that together use every value of every sweep once: each sweep
    at its first value, then each further value with the others at their first (1 + sum of the
    extra values, not their product). A glob sweep needs the config to expand: none (left to Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - compose says what is malformed, in one line
        return [overrides]
    options = []
    for override in parsed:
        if isinstance(override.value(), Glob):
            return []
        if not override.is_sweep_override():
            options.append([override.input_line])
            continue
        values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
        if not values:
            raise ThumbsaeError(f"{override.input_line}: the sweep has no values")
        options.append(values)
    first = [values[0] for values in options]
    samples = [first]
    for i, values in enumerate(options):
        samples += [[*first[:i], value, *first[i + 1:]] for value in values[1:]]
    return samples


def override_arg(key: str, value: str) -> str:
    """`key=value` as one shell word that Hydra reads back as `value`, for the `next:` lines a command
    prints: quoted for Hydra's grammar and for the shell when `value` holds anything else than
    letters, digits and `_ . / : + -` (a multirun folder's `sae.expansion_factor=8,...` would
    otherwise be read as a sweep)."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return f"{key}={value}"
    # In Hydra's quoted strings only backslashes before a quote or at the end are escapes.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    word = f"{key}='{escaped}'"
    # Double quotes read best (`"sae_dir='multirun/...'"`) where nothing inside is special to them.
    return f'"{word}"' if not re.search(r'["$`\\!]', word) else shlex.quote(word)


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
