"""The one configuration tree (`conf/`) every command composes, and how its nodes become objects.

    cfg = compose("rank", ["video.n_candidates=8"])          # what `thumbsae rank ... video.n_candidates=8` does
    video = build(cfg.video, "video")                          # -> thumbsae.video.VideoConfig, checked
    refuse_overrides(overrides, ["sae", "optim"], why="...")   # a setting that would not be used

Every group node names what it builds with `_target_`. `build` instantiates it with
`hydra.utils.instantiate`; when the target is a dataclass, each value is first checked against the
field's type, so `sae.k=abc` fails in one line naming `sae.k` instead of deep inside training, and a
key that is not a field is refused by name (a key nothing reads never goes unnoticed).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from thumbsae.errors import ThumbsaeError, one_line


@dataclasses.dataclass(frozen=True)
class Between:
    """`Annotated[int, Between(lo, hi)]`: a whole-number setting that `build` checks lies in lo..hi."""

    low: int
    high: int


MAX_SEED = 2**32 - 1
#: Every seed setting (`seed`, `sae.seed`, `world.seed`, ...): what numpy, torch and Lightning all accept.
Seed = Annotated[int, Between(0, MAX_SEED)]


def conf_dir() -> Path:
    """The `conf/` folder: shipped inside the package, so an installed `thumbsae` finds it too."""
    return Path(__file__).resolve().parent / "conf"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra `overrides` (`key=value`, `group=option`).

    Raises `ThumbsaeError` (one line) for a malformed override, an unknown key or group option.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        # Hydra ends an unknown group option with its search path: where conf/ is, not what to type.
        raise ThumbsaeError(f"bad setting: {one_line(err).split(' Config search path:')[0]}") from None
    finally:
        GlobalHydra.instance().clear()


def build(node: DictConfig | Mapping | None, group: str, **runtime: Any) -> Any:
    """Instantiate the `_target_` of a config node (a group's YAML), checking every value first.

    node: the composed node (e.g. `cfg.video`). group: its name in the tree, used in messages
    (`video.n_candidates=0: ...`). runtime: arguments only known at run time (a run folder, loggers);
    they are passed through unchecked. Returns the built object; raises `ThumbsaeError` naming the
    setting for a value of the wrong type, an unknown key, or a value the target refuses.
    """
    import hydra

    values, target, settings = _checked(node, group)
    special = {k: v for k, v in values.items() if k.startswith("_") and k != "_target_"}
    if dataclasses.is_dataclass(target):
        # Built here so that nested dicts stay plain values (instantiate would recurse into them).
        try:
            return target(**settings, **runtime)
        except ThumbsaeError:
            raise
        except (TypeError, ValueError) as err:
            raise ThumbsaeError(f"{group}: {one_line(err)}") from None
    try:
        return hydra.utils.instantiate({"_target_": values["_target_"], **special, **settings}, **runtime)
    except ThumbsaeError:
        raise
    except Exception as err:  # noqa: BLE001 - instantiate wraps any constructor error; report it in one line
        cause = err.__cause__ if isinstance(err.__cause__, ThumbsaeError) else err
        if isinstance(cause, ThumbsaeError):
            raise cause from None
        raise ThumbsaeError(f"{group}: cannot build {values['_target_']}: {one_line(err)}") from None


def check(node: DictConfig | Mapping, group: str) -> None:
    """Check a node's values against its `_target_`'s field types without building it (for a config
    whose build needs values only known later, such as an SAE's width)."""
    _checked(node, group)


def _checked(node: DictConfig | Mapping | None, group: str) -> tuple[dict, Any, dict[str, Any]]:
    """A node's plain values, its located `_target_` and its settings (keys without a leading `_`)
    converted to the target's field or parameter types. Third-party targets (Lightning's Trainer,
    loggers) check their own arguments when built, so their settings pass through as given."""
    if node is None:
        raise ThumbsaeError(f"{group}: missing from the configuration")
    values = to_plain(node)
    if not isinstance(values, dict) or "_target_" not in values:
        raise ThumbsaeError(f"{group}: the config node names no _target_ to build")
    target = _locate(values["_target_"], group)
    settings = {k: v for k, v in values.items() if not k.startswith("_")}
    if dataclasses.is_dataclass(target):
        settings = check_fields(target, settings, group)
    elif getattr(target, "__module__", "").startswith("thumbsae."):
        settings = check_parameters(target, settings, group)
    return values, target, settings


def to_plain(node: Any) -> Any:
    """A resolved plain-Python copy of an OmegaConf node (dicts, lists, scalars).

    A mandatory value left unset (`???`) is a one-line `ThumbsaeError` naming it.
    """
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    if isinstance(node, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", "") or "a setting"
            raise ThumbsaeError(f"{key}: must be set (it has no default here); pass {key}=...") from None
        except OmegaConfBaseException as err:
            raise ThumbsaeError(f"bad setting: {one_line(err)}") from None
    return node


def check_fields(cls: type, values: Mapping[str, Any], group: str) -> dict[str, Any]:
    """`values` converted to the types of dataclass `cls`'s fields; one-line errors naming `group.key`.

    Accepts what Hydra and JSON hand over (ints for floats, lists for tuples, "1"/"true" strings from
    the command line are already typed by Hydra). Unknown keys are refused with the known ones listed.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ThumbsaeError(
            f"{group}: unknown setting(s) {', '.join(f'{group}.{k}' for k in unknown)}; known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    return {key: _convert(value, hints.get(key, Any), f"{group}.{key}") for key, value in values.items()}


def check_parameters(target: Any, values: Mapping[str, Any], group: str) -> dict[str, Any]:
    """`values` converted to the annotated types of `target`'s parameters (a class or function of
    ours that is not a dataclass); unknown keys refused by name, as `check_fields` does."""
    import inspect

    func = target.__init__ if isinstance(target, type) else target
    signature = inspect.signature(func).parameters
    params = {n: p for n, p in signature.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    passes_on = any(p.kind is p.VAR_KEYWORD for p in signature.values())  # **kwargs: its callee checks them
    unknown = sorted(set(values) - set(params))
    if unknown and not passes_on:
        raise ThumbsaeError(
            f"{group}: unknown setting(s) {', '.join(f'{group}.{k}' for k in unknown)}; known: {', '.join(sorted(params))}"
        )
    hints = typing.get_type_hints(func, include_extras=True)
    return {key: _convert(value, hints.get(key, Any), f"{group}.{key}") for key, value in values.items()}


def setting(cfg: DictConfig, key: str, hint: Any) -> Any:
    """The top-level setting `key` of `cfg` converted to `hint` (`int`, `str | None`, ...); one-line
    `ThumbsaeError` naming it otherwise (`seed=abc`)."""
    return _convert(to_plain(cfg.get(key)), hint, key)


def refuse_overrides(overrides: Iterable[str], prefixes: Iterable[str], *, why: str) -> None:
    """Refuse, in one line, any command-line override of a setting under `prefixes` that this run would
    not use (e.g. `sae.k=64` when an existing SAE is evaluated). `why` says why it does not apply."""
    prefixes = tuple(prefixes)
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in prefixes or key.startswith(tuple(p + "." for p in prefixes)):
            raise ThumbsaeError(f"{override}: not used here ({why}); remove it")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The keys (`sae.k`, `sae`) that command-line overrides set."""
    return [o.lstrip("+~").split("=", 1)[0] for o in overrides]


# ---- type checks -------------------------------------------------------------------------------


def _locate(path: str, group: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as err:  # noqa: BLE001 - any import failure is the same user error
        raise ThumbsaeError(f"{group}._target_={path!r}: cannot be imported ({one_line(err)})") from None


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        value = _convert(value, args[0], name)
        for bounds in (m for m in hint.__metadata__ if isinstance(m, Between)):
            if not bounds.low <= value <= bounds.high:
                raise ThumbsaeError(f"{name}={value!r}: expected a whole number from {bounds.low} to {bounds.high}")
        return value
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ThumbsaeError(f"{name}=null: a value is required")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, name)
            except ThumbsaeError as err:
                errors.append(str(err))
        raise ThumbsaeError(errors[0] if len(errors) == 1 else f"{name}={value!r}: expected {_describe(hint)}")
    if value is None:
        raise ThumbsaeError(f"{name}=null: expected {_describe(hint)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ThumbsaeError(f"{name}={value!r}: expected one of {', '.join(map(str, args))}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ThumbsaeError(f"{name}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise ThumbsaeError(f"{name}={value!r}: expected a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ThumbsaeError(f"{name}={value!r}: expected a number")
        if not math.isfinite(float(value)):
            raise ThumbsaeError(f"{name}={value!r}: expected a finite number")
        return float(value)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ThumbsaeError(f"{name}={value!r}: expected text")
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ThumbsaeError(f"{name}={value!r}: expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ThumbsaeError(f"{name}={value!r}: expected {len(args)} values")
            return tuple(_convert(v, a, name) for v, a in zip(value, args))
        item = args[0] if args else Any
        converted = [_convert(v, item, name) for v in value]
        return tuple(converted) if origin is tuple or hint is tuple else converted
    if origin in (dict, Mapping) or hint in (dict,):
        if not isinstance(value, Mapping):
            raise ThumbsaeError(f"{name}={value!r}: expected a mapping")
        return dict(value)
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Annotated:
        return _describe(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        nullable = type(None) in typing.get_args(hint)
        return " or ".join(parts) + (" or null" if nullable else "")
    return {int: "a whole number", float: "a number", bool: "true or false", str: "text"}.get(hint, str(hint))
