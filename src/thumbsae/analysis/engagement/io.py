"""The engagement model folder: `model.safetensors`, `config.json`, `examples/`.

`save_model` writes the folder atomically; `load_model` reads it back and checks every key it
uses, so a tampered or truncated folder fails with one line naming the file and the key. Only
safetensors and JSON are read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from thumbsae.analysis.engagement.config import TARGET_KINDS
from thumbsae.analysis.engagement.model import BootstrapFits, EngagementModel
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_dir
from thumbsae.jsonable import to_json_ready

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXAMPLES_DIR = "examples"
FORMAT = "thumbsae.engagement_model"
MAX_EXAMPLES = 6  # example thumbnails copied per used feature on save
EXAMPLE_PX = 160  # longest side of a copied example thumbnail
# Tensors of the bootstrap refits: all of them or none (a model fitted with n_bootstrap=0).
BOOTSTRAP_TENSORS = ("bootstrap_features", "bootstrap_scale", "bootstrap_coef", "bootstrap_intercept")


def save_model(model: EngagementModel, out_dir: str | os.PathLike, feature_info: dict[int, dict] | None = None) -> Path:
    """Write `model.safetensors`, `config.json` and `examples/` to `out_dir`, atomically.

    feature_info: per feature, JSON-able facts (`name`, `lift`, `q_value`, ...) and `examples`,
    paths of its thumbnails; kept for the used features only, with up to 6 examples each
    copied into `examples/` (longest side 160 px) and stored as relative paths.
    Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    info = model.feature_info if feature_info is None else feature_info
    used = {int(f) for f in model.feature_indices}
    tensors = {
        "feature_indices": np.ascontiguousarray(model.feature_indices, dtype=np.int64),
        "coef": np.ascontiguousarray(model.coef, dtype=np.float64),
        "scale": np.ascontiguousarray(model.scale, dtype=np.float64),
        "intercept": np.array([model.intercept], dtype=np.float64),
        "residual_quantiles": np.array(model.residual_quantiles, dtype=np.float64),
    }
    if model.pair_curve is not None:
        tensors["pair_curve_d"] = np.ascontiguousarray(model.pair_curve[0], dtype=np.float64)
        tensors["pair_curve_p"] = np.ascontiguousarray(model.pair_curve[1], dtype=np.float64)
    if model.bootstrap is not None:
        boot = model.bootstrap
        tensors |= {
            "bootstrap_features": np.ascontiguousarray(boot.feature_indices, dtype=np.int64),
            "bootstrap_scale": np.ascontiguousarray(boot.scale, dtype=np.float64),
            "bootstrap_coef": np.ascontiguousarray(boot.coef, dtype=np.float64),
            "bootstrap_intercept": np.ascontiguousarray(boot.intercept, dtype=np.float64),
        }
    try:
        with atomic_dir(out_dir) as tmp:
            saved_info = {
                str(f): _save_feature(model, f, dict(info[f]), tmp)
                for f in sorted(int(k) for k in info)
                if f in used
            }
            save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
            config = {
                "format": FORMAT,
                "version": 1,
                "n_latents": int(model.n_latents),
                "n_features_used": model.n_features_used,
                "n_bootstrap": 0 if model.bootstrap is None else model.bootstrap.n_bootstrap,
                "target_kind": model.target_kind,
                "log1p": bool(model.log1p),
                "interval": {
                    "level": float(model.interval),
                    "residual_lo": float(model.residual_quantiles[0]),
                    "residual_hi": float(model.residual_quantiles[1]),
                },
                "metrics": to_json_ready(model.metrics),
                "features": saved_info,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise ThumbsaeError(f"{out_dir}: cannot write the engagement model ({e.strerror or e})") from e
    return out_dir


def _save_feature(model: EngagementModel, feature: int, info: dict, tmp: Path) -> dict:
    """Copy the feature's example thumbnails into `tmp/examples/`; return its JSON-able info."""
    from thumbsae.data.images import load_rgb

    sources = [Path(p) for p in info.pop("examples", []) or []][:MAX_EXAMPLES]
    copied = []
    for j, src in enumerate(sources):
        if not src.is_absolute() and model.path is not None:
            src = model.path / src  # a loaded model's own examples
        image = load_rgb(src)  # raises a one-line ImageDecodeError naming the file
        image.thumbnail((EXAMPLE_PX, EXAMPLE_PX))
        rel = f"{EXAMPLES_DIR}/f{feature}_{j}.jpg"
        (tmp / EXAMPLES_DIR).mkdir(exist_ok=True)
        image.save(tmp / rel, format="JPEG", quality=85)
        copied.append(rel)
    out = to_json_ready(info)
    out["examples"] = copied
    return out


def _bad(model_dir: Path, file: str, key: str, what: str) -> ThumbsaeError:
    return ThumbsaeError(f"{model_dir / file}: corrupt engagement model: {key} {what}")


def _number(config: dict, model_dir: Path, *keys: str) -> float:
    """config[keys[0]][keys[1]]... as a finite float, or a one-line error naming the key."""
    value: Any = config
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(model_dir, CONFIG_FILE, "'" + ".".join(keys) + "'", f"must be a number, got {value!r}")
    return float(value)


def _feature_info(config: dict, model_dir: Path) -> dict[int, dict]:
    """`features` of config.json: feature id -> object, each `examples` a list of paths."""
    features = config.get("features", {})
    if not isinstance(features, dict):
        got = type(features).__name__
        raise _bad(model_dir, CONFIG_FILE, "'features'", f"must be an object of feature id -> object, got {got}")
    info = {}
    for key, value in features.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise _bad(model_dir, CONFIG_FILE, f"'features' key {key!r}", "is not a feature id")
        if not isinstance(value, dict):
            raise _bad(model_dir, CONFIG_FILE, f"'features.{key}'", f"must be an object, got {type(value).__name__}")
        examples = value.get("examples", [])
        if not isinstance(examples, list) or not all(isinstance(p, str) for p in examples):
            got = repr(examples)[:80]
            raise _bad(model_dir, CONFIG_FILE, f"'features.{key}.examples'", f"must be a list of paths, got {got}")
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad(model_dir, CONFIG_FILE, f"'features.{key}.name'", f"must be text, got {type(name).__name__}")
        info[int(key)] = dict(value)
    return info


def _read_config(model_dir: Path) -> dict:
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ThumbsaeError(f"{model_dir / CONFIG_FILE}: corrupt engagement model: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise _bad(model_dir, CONFIG_FILE, "the file", f"must be a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise _bad(model_dir, CONFIG_FILE, "'format'", f"must be {FORMAT!r}, got {config.get('format')!r}")
    return config


def _read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(model_dir / MODEL_FILE))
    except (OSError, SafetensorError, ValueError) as e:
        raise ThumbsaeError(
            f"{model_dir / MODEL_FILE}: corrupt engagement model: not a readable safetensors file ({e})"
        ) from None


def _tensor(tensors: dict, model_dir: Path, key: str, ndim: int, integer: bool = False) -> np.ndarray:
    if key not in tensors:
        raise _bad(model_dir, MODEL_FILE, f"tensor '{key}'", "is missing")
    value = tensors[key]
    kind_ok = np.issubdtype(value.dtype, np.integer) if integer else np.issubdtype(value.dtype, np.floating)
    if value.ndim != ndim or not kind_ok:
        want = "integer" if integer else "float"
        got = f"{value.dtype} {value.shape}"
        raise _bad(model_dir, MODEL_FILE, f"tensor '{key}'", f"must be a {ndim}-D {want} array, got {got}")
    if not integer and not np.all(np.isfinite(value)):
        raise _bad(model_dir, MODEL_FILE, f"tensor '{key}'", "has NaN or infinite values")
    return value.astype(np.int64 if integer else np.float64)


def _features_in_range(indices: np.ndarray, n_latents: int, model_dir: Path, key: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= n_latents):
        raise _bad(model_dir, MODEL_FILE, f"tensor '{key}'", f"has latents outside 0..{n_latents - 1}")


def _bootstrap(tensors: dict, model_dir: Path, n_latents: int) -> BootstrapFits | None:
    present = [k for k in BOOTSTRAP_TENSORS if k in tensors]
    if not present:
        return None
    if len(present) != len(BOOTSTRAP_TENSORS):
        missing = next(k for k in BOOTSTRAP_TENSORS if k not in tensors)
        raise _bad(model_dir, MODEL_FILE, f"tensor '{missing}'", "is missing (the other bootstrap tensors are there)")
    features = _tensor(tensors, model_dir, "bootstrap_features", 1, integer=True)
    scale = _tensor(tensors, model_dir, "bootstrap_scale", 1)
    coef = _tensor(tensors, model_dir, "bootstrap_coef", 2)
    intercept = _tensor(tensors, model_dir, "bootstrap_intercept", 1)
    _features_in_range(features, n_latents, model_dir, "bootstrap_features")
    if scale.shape != features.shape or coef.shape != (intercept.shape[0], features.shape[0]) or not np.all(scale > 0):
        shapes = f"features {features.shape}, scale {scale.shape}, coef {coef.shape}, intercept {intercept.shape}"
        raise _bad(model_dir, MODEL_FILE, "the bootstrap tensors", f"do not fit together ({shapes})")
    return BootstrapFits(feature_indices=features, scale=scale, coef=coef, intercept=intercept)


def _pair_curve(tensors: dict, model_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(d `[K]` ascending, g `[K]` in [0, 1] non-decreasing), or None when the model has none."""
    if "pair_curve_d" not in tensors and "pair_curve_p" not in tensors:
        return None
    d = _tensor(tensors, model_dir, "pair_curve_d", 1)
    g = _tensor(tensors, model_dir, "pair_curve_p", 1)
    shaped = d.shape == g.shape and d.size > 0
    if not shaped or np.any(np.diff(d) <= 0) or np.any(np.diff(g) < 0) or g.min() < 0 or g.max() > 1:
        raise _bad(
            model_dir, MODEL_FILE, "tensors 'pair_curve_d', 'pair_curve_p'",
            "must be one length, d increasing, p non-decreasing in [0, 1]",
        )
    return d, g


def load_model(model_dir: str | os.PathLike) -> EngagementModel:
    """Read a model folder written by `save_model`.

    A missing folder or file, unreadable JSON or safetensors, a key of the wrong type, or tensors
    that do not fit together raise ThumbsaeError naming the file and the key.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ThumbsaeError(f"{model_dir}: engagement model folder not found")
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (model_dir / name).is_file():
            raise ThumbsaeError(f"{model_dir}: not an engagement model folder ({name} missing)")
    config = _read_config(model_dir)
    n_latents = config.get("n_latents")
    if isinstance(n_latents, bool) or not isinstance(n_latents, int) or n_latents < 1:
        raise _bad(model_dir, CONFIG_FILE, "'n_latents'", f"must be a whole number >= 1, got {n_latents!r}")
    target_kind = config.get("target_kind")
    if target_kind not in TARGET_KINDS:
        allowed = ", ".join(TARGET_KINDS)
        raise _bad(model_dir, CONFIG_FILE, "'target_kind'", f"must be one of {allowed}, got {target_kind!r}")
    level = _number(config, model_dir, "interval", "level")
    if not 0.0 < level < 1.0:
        raise _bad(model_dir, CONFIG_FILE, "'interval.level'", f"must be in (0, 1), got {level}")
    log1p = config.get("log1p", False)
    metrics = config.get("metrics", {})
    if not isinstance(log1p, bool):
        raise _bad(model_dir, CONFIG_FILE, "'log1p'", f"must be true or false, got {log1p!r}")
    if not isinstance(metrics, dict):
        raise _bad(model_dir, CONFIG_FILE, "'metrics'", f"must be an object, got {type(metrics).__name__}")
    info = _feature_info(config, model_dir)

    tensors = _read_tensors(model_dir)
    feature_indices = _tensor(tensors, model_dir, "feature_indices", 1, integer=True)
    coef = _tensor(tensors, model_dir, "coef", 1)
    scale = _tensor(tensors, model_dir, "scale", 1)
    intercept = _tensor(tensors, model_dir, "intercept", 1)
    quantiles = _tensor(tensors, model_dir, "residual_quantiles", 1)
    if not coef.shape == scale.shape == feature_indices.shape:
        got = f"{coef.shape}, {scale.shape}, {feature_indices.shape}"
        keys = "tensors 'coef', 'scale', 'feature_indices'"
        raise _bad(model_dir, MODEL_FILE, keys, f"must have one length, got {got}")
    if intercept.shape != (1,) or quantiles.shape != (2,):
        got = f"{intercept.shape}, {quantiles.shape}"
        keys = "tensors 'intercept', 'residual_quantiles'"
        raise _bad(model_dir, MODEL_FILE, keys, f"must hold 1 and 2 values, got {got}")
    if not np.all(scale > 0):
        raise _bad(model_dir, MODEL_FILE, "tensor 'scale'", "must be > 0 everywhere")
    _features_in_range(feature_indices, n_latents, model_dir, "feature_indices")
    pair_curve = _pair_curve(tensors, model_dir)
    return EngagementModel(
        feature_indices=feature_indices,
        coef=coef,
        scale=scale,
        intercept=float(intercept[0]),
        n_latents=n_latents,
        residual_quantiles=(float(quantiles[0]), float(quantiles[1])),
        interval=level,
        log1p=log1p,
        target_kind=str(target_kind),
        metrics=dict(metrics),
        feature_info=info,
        path=model_dir.resolve(),
        bootstrap=_bootstrap(tensors, model_dir, n_latents),
        pair_curve=pair_curve,
    )
