"""Other libraries' SAE files, read into a `SparseAutoencoder` and written from one.

Formats (read by `load_sae`, written by `export_sae`):

- SAELens (6.x, and the older flat `cfg.json`): `cfg.json` + `sae_weights.safetensors` with
  `W_enc` [D, F], `b_enc` [F], `W_dec` [F, D], `b_dec` [D] (+ `threshold` [F] for jumprelu,
  `topk_threshold` for a BatchTopK training save). Architectures `standard` (our relu), `topk`,
  `jumprelu`, `batchtopk`, `matryoshka_batchtopk`. SAELens saves BatchTopK and Matryoshka SAEs
  for inference as JumpReLU (their threshold on every latent); we export them the same way.
- sparsify: `cfg.json` (`SparseCoderConfig` fields + `d_in`) + `sae.safetensors` with
  `encoder.weight` [F, D], `encoder.bias` [F], `W_dec` [F, D], `b_dec` [D]. TopK only.
- the study's trainer (Hugo Fry's ViT SAE code): a `torch.save`d state dict (`W_enc` [D, F],
  `b_enc`, `W_dec` [F, D], `b_dec`), read with `torch.load(weights_only=True)` only; a file that
  needs unpickling (a saved config object, a whole module) is refused.

Our `input_scale` is folded into the weights on export (their SAEs take raw activations), and
SAELens' decoder-norm rescaling and un-subtracted `b_dec` are folded on import, so latents are the
same numbers in both libraries. Where a foreign file does not say which CLIP, layer and token
mode it was trained on, `hook_defaults` supplies them (`{"clip": {...}, "hook": {...}}`); we
write ours into the files we export (SAELens `metadata.thumbsae`, sparsify `cfg.json["thumbsae"]`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_dir, read_json_object
from thumbsae.sae.config import (
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaBatchTopKConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
)
from thumbsae.sae.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    clip_depth,
    load_sae,
    sae_from_tensors,
)
from thumbsae.sae.model import SparseAutoencoder

THUMBSAE, SAELENS, SPARSIFY, STATE_DICT = "thumbsae", "saelens", "sparsify", "state_dict"
FOREIGN_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
EXPORT_FORMATS = (SAELENS, SPARSIFY)
# The SAELens config format we write (6.x: `metadata`, `architecture`, inference classes).
SAELENS_FORMAT_VERSION = "6.0.0"
# Settings a foreign file may leave unsaid, with the Hydra setting that supplies each.
HOOK_SETTINGS = {("clip", "name"): "model.name", ("hook", "layer"): "activations.layer", ("hook", "tokens"): "activations.tokens"}
_NO_SCALE = {"input_scale": 1.0, "method": "none"}


def detect_format(path: Path) -> str:
    """Which format `path` holds: `thumbsae`, `saelens`, `sparsify` (folders) or `state_dict` (a
    file); ThumbsaeError naming what was looked for otherwise."""
    if path.is_file():
        return STATE_DICT
    if not path.is_dir():
        raise ThumbsaeError(f"{path}: no such SAE folder")
    if (path / CONFIG_FILE).is_file() or (path / "sae" / CONFIG_FILE).is_file():
        return THUMBSAE
    if (path / FOREIGN_CONFIG).is_file():
        if (path / SAELENS_WEIGHTS).is_file():
            return SAELENS
        if (path / SPARSIFY_WEIGHTS).is_file():
            return SPARSIFY
        raise ThumbsaeError(f"{path}: has {FOREIGN_CONFIG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify)")
    raise ThumbsaeError(
        f"{path}: not an SAE folder: expected {CONFIG_FILE} + {WEIGHTS_FILE} (thumbsae), {FOREIGN_CONFIG} + "
        f"{SAELENS_WEIGHTS} (SAELens) or {FOREIGN_CONFIG} + {SPARSIFY_WEIGHTS} (sparsify), or a torch state dict file"
    )


def read_foreign(path: Path, kind: str, hook_defaults: Mapping[str, Any] | None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Read a SAELens / sparsify folder or a state dict file: `(sae, config like ours)`."""
    readers: dict[str, Callable[[Path], tuple[SAEConfig, dict[str, torch.Tensor], dict[str, Any]]]] = {
        SAELENS: read_saelens,
        SPARSIFY: read_sparsify,
        STATE_DICT: read_state_dict,
    }
    cfg, tensors, found = readers[kind](path)
    sections = dict(found.get("thumbsae") or {})
    hook = {**dict((hook_defaults or {}).get("hook") or {}), **dict(found.get("hook") or {}), **dict(sections.get("hook") or {})}
    clip = dict(sections.get("clip") or (hook_defaults or {}).get("clip") or {})
    from thumbsae.activations import DEFAULT_FIT

    hook.setdefault("fit", DEFAULT_FIT)
    config: dict[str, Any] = {
        "sae": cfg.to_dict(),
        "clip": clip,
        "hook": hook,
        "normalisation": dict(sections.get("normalisation") or _NO_SCALE),
        "source": {"format": kind, "path": str(path), **found.get("source", {}), **({"trained_as": sections["sae"]} if "sae" in sections else {})},
    }
    for (section, key), setting in HOOK_SETTINGS.items():
        if config[section].get(key) is None:
            raise ThumbsaeError(
                f"{path}: this {kind} SAE does not say its {section}.{key}; set {setting} to the value it was trained with"
            )
    where = path / {SAELENS: SAELENS_WEIGHTS, SPARSIFY: SPARSIFY_WEIGHTS}[kind] if kind != STATE_DICT else path
    return sae_from_tensors(cfg, tensors, str(where), described_by=f"its {kind} config"), config


# ---- reading --------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ThumbsaeError(f"{path}: not a readable safetensors file ({err})") from None
    return {name: t.to(torch.float32) for name, t in tensors.items()}


def _need(tensors: Mapping[str, torch.Tensor], names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ThumbsaeError(f"{where}: missing tensor(s) {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'none'})")


def _sizes(d_in: int, n_latents: int) -> dict[str, int | None]:
    """`expansion_factor` / `n_latents` fields for D and F."""
    if n_latents % d_in == 0:
        return {"d_in": d_in, "expansion_factor": n_latents // d_in, "n_latents": None}
    return {"d_in": d_in, "expansion_factor": max(1, n_latents // d_in), "n_latents": n_latents}


def _layer_from_name(name: Any, pattern: str) -> int | None:
    """The block index a hook or module name points after (TransformerLens `blocks.N.hook_resid_post`
    -> N, `blocks.N.hook_resid_pre` -> N - 1; sparsify `...layers.N` -> N), else None."""
    match = re.search(pattern, str(name or ""))
    if match is None:
        return None
    layer = int(match.group("n")) - (1 if match.groupdict().get("pre") else 0)
    return layer if layer >= 0 else None


def read_saelens(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A SAELens folder -> (our config, our tensors, what the folder says about its hook)."""
    cfg_path, weights = folder / FOREIGN_CONFIG, folder / SAELENS_WEIGHTS
    raw = read_json_object(cfg_path)
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    kwargs = raw.get("activation_fn_kwargs") if isinstance(raw.get("activation_fn_kwargs"), dict) else {}
    activation = raw.get("activation_fn", raw.get("activation_fn_str"))
    arch = raw.get("architecture") or ("topk" if activation == "topk" and "k" in kwargs else "standard")
    k = raw.get("k", kwargs.get("k"))
    norm = raw.get("normalize_activations", "none")
    if norm in (None, False):
        norm = "none"
    if norm not in ("none", "expected_average_only_in"):
        raise ThumbsaeError(
            f"{cfg_path}: normalize_activations={norm!r} normalises each input inside the SAE; "
            "thumbsae reads SAEs that take the activations as they are (none)"
        )
    if raw.get("reshape_activations", "none") not in (None, "none"):
        raise ThumbsaeError(f"{cfg_path}: reshape_activations={raw['reshape_activations']!r}: not a residual-stream SAE")
    tensors = _read_safetensors(weights)
    _need(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), weights)
    W_enc_DF, b_enc, W_dec, b_dec = tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"]
    if W_enc_DF.ndim != 2 or W_dec.shape != W_enc_DF.t().shape:
        raise ThumbsaeError(f"{weights}: W_enc {tuple(W_enc_DF.shape)} and W_dec {tuple(W_dec.shape)} are not [D, F] and [F, D]")
    D, F = W_enc_DF.shape
    if (raw.get("d_in"), raw.get("d_sae")) not in ((D, F), (None, None)):
        raise ThumbsaeError(f"{cfg_path}: d_in={raw.get('d_in')}, d_sae={raw.get('d_sae')} but {weights.name} holds D={D}, F={F}")
    W_enc = W_enc_DF.t().contiguous()
    if not raw.get("apply_b_dec_to_input", True):
        # pre = x W + b_enc = (x - b_dec) W + (b_enc + b_dec W): our encoder always subtracts b_dec.
        b_enc = b_enc + b_dec @ W_enc_DF
    for scale_name in ("scaling_factor", "finetuning_scaling_factor"):
        if scale_name in tensors:  # older SAELens scaled the latents before decoding
            W_dec = W_dec * tensors[scale_name][:, None]
    if raw.get("rescale_acts_by_decoder_norm"):
        # SAELens picks and decodes latents on pre * |W_dec row|: fold the norms in.
        norms = W_dec.norm(dim=1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    sizes = _sizes(D, F)
    ours = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    cfg: SAEConfig
    if arch == "standard":
        cfg = ReLUConfig(**sizes, unit_norm_decoder=False)
    elif arch == "topk":
        cfg = TopKConfig(**sizes, k=_int_k(k, cfg_path), unit_norm_decoder=False)
    elif arch == "jumprelu":
        if "threshold" not in tensors and "log_threshold" not in tensors:
            raise ThumbsaeError(f"{weights}: a jumprelu SAE needs a threshold tensor")
        threshold = tensors["threshold"] if "threshold" in tensors else tensors["log_threshold"].exp()
        cfg = JumpReLUConfig(**sizes, unit_norm_decoder=False)
        ours["log_threshold"] = _log_threshold(threshold)
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        _need(tensors, ("topk_threshold",), weights)
        common = dict(**sizes, k=_int_k(k, cfg_path), unit_norm_decoder=False)
        if arch == "batchtopk":
            cfg = BatchTopKConfig(**common)
        else:
            cfg = MatryoshkaBatchTopKConfig(**common, prefixes=tuple(int(w) for w in raw.get("matryoshka_widths") or (F,)))
        threshold = float(tensors["topk_threshold"])
        ours["threshold"] = torch.tensor(threshold if threshold > 0 else -1.0)
    else:
        raise ThumbsaeError(
            f"{cfg_path}: architecture={arch!r}: thumbsae reads standard, topk, jumprelu, batchtopk and matryoshka_batchtopk"
        )
    hook_name = metadata.get("hook_name", raw.get("hook_name", raw.get("hook_point")))
    layer = _layer_from_name(hook_name, r"^blocks\.(?P<n>\d+)\.hook_resid_(?:post|(?P<pre>pre))$")
    found = {
        "hook": {"layer": layer} if layer is not None else {},
        "thumbsae": metadata.get("thumbsae"),
        "source": {"architecture": arch, "model_name": metadata.get("model_name", raw.get("model_name")), "hook_name": hook_name},
    }
    return cfg, ours, found


def _int_k(k: Any, where: Path) -> int:
    if not isinstance(k, (int, float)) or isinstance(k, bool) or k < 1:
        raise ThumbsaeError(f"{where}: k={k!r}: a top-k SAE needs k >= 1")
    return max(1, round(float(k)))


def _log_threshold(threshold_F: torch.Tensor) -> torch.Tensor:
    # SAELens applies ReLU before its threshold, so thresholds <= 0 act as 0: the smallest positive float.
    return threshold_F.to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny).log()


def read_sparsify(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A sparsify folder -> (our TopK config, our tensors, what the folder says about its hook)."""
    cfg_path, weights = folder / FOREIGN_CONFIG, folder / SPARSIFY_WEIGHTS
    raw = read_json_object(cfg_path)
    for key, ok in (("activation", "topk"), ("skip_connection", False), ("transcode", False)):
        if raw.get(key, ok) != ok:
            raise ThumbsaeError(f"{cfg_path}: {key}={raw[key]!r}: thumbsae reads sparsify TopK autoencoders only ({key}={ok!r})")
    tensors = _read_safetensors(weights)
    _need(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), weights)
    if "W_skip" in tensors:
        raise ThumbsaeError(f"{weights}: has a skip connection (W_skip); thumbsae reads plain TopK autoencoders")
    W_enc = tensors["encoder.weight"]
    F, D = W_enc.shape
    if raw.get("d_in", D) != D:
        raise ThumbsaeError(f"{cfg_path}: d_in={raw['d_in']} but {weights.name} holds D={D}")
    cfg = TopKConfig(**_sizes(D, F), k=_int_k(raw.get("k"), cfg_path), unit_norm_decoder=bool(raw.get("normalize_decoder", True)))
    ours = {"W_enc": W_enc, "b_enc": tensors["encoder.bias"], "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    layer = _layer_from_name(folder.name, r"(?:^|\.)layers[._](?P<n>\d+)$")
    found = {"hook": {"layer": layer} if layer is not None else {}, "thumbsae": raw.get("thumbsae"), "source": {"architecture": "topk"}}
    return cfg, ours, found


def read_state_dict(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A torch state dict of the study's trainer -> (ReLU config, our tensors, nothing about its hook).

    Only `torch.load(weights_only=True)`: tensors and plain containers. Accepts the dict itself or
    `{"state_dict": {...}}`; `W_enc` is [D, F] there.
    """
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise ThumbsaeError(f"{path}: not an SAE folder or a torch state dict ({', '.join(STATE_DICT_SUFFIXES)})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ThumbsaeError(
            f"{path}: refused, it needs unpickling ({reason[:120]}); thumbsae loads plain tensors only: "
            "re-save with torch.save(sae.state_dict(), path)"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ThumbsaeError(f"{path}: not a readable torch file ({type(err).__name__}: {str(err)[:120]})") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ThumbsaeError(f"{path}: holds a {type(data).__name__}, not a state dict of tensors")
    tensors = {str(k): v.to(torch.float32) for k, v in data.items() if isinstance(v, torch.Tensor)}
    _need(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), path)
    W_enc_DF, W_dec = tensors["W_enc"], tensors["W_dec"]
    if W_enc_DF.ndim != 2 or W_dec.shape != W_enc_DF.t().shape:
        raise ThumbsaeError(f"{path}: W_enc {tuple(W_enc_DF.shape)} and W_dec {tuple(W_dec.shape)} are not [D, F] and [F, D]")
    D, F = W_enc_DF.shape
    cfg = ReLUConfig(**_sizes(D, F))
    ours = {"W_enc": W_enc_DF.t().contiguous(), "b_enc": tensors["b_enc"], "W_dec": W_dec, "b_dec": tensors["b_dec"]}
    return cfg, ours, {"source": {"architecture": "relu"}}


# ---- writing --------------------------------------------------------------------------------


def _folded(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """Weights that take raw activations: `input_scale` s folded in (W_enc * s, W_dec / s,
    b_dec / s), so pre-activations and latents are unchanged. Shapes as ours (W_enc [F, D])."""
    s = float(sae.cfg.input_scale)
    with torch.no_grad():
        return {
            "W_enc": (sae.W_enc * s).detach().cpu().float().contiguous(),
            "b_enc": sae.b_enc.detach().cpu().float().contiguous(),
            "W_dec": (sae.W_dec / s).detach().cpu().float().contiguous(),
            "b_dec": (sae.b_dec / s).detach().cpu().float().contiguous(),
        }


def _carried_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """What we write into an export so that thumbsae reads it back completely."""
    out = {key: config[key] for key in ("clip", "hook", "optim", "training") if key in config}
    out["sae"] = config["sae"]
    out["normalisation"] = {**dict(config.get("normalisation") or {}), "input_scale": 1.0, "folded_input_scale": config["sae"].get("input_scale", 1.0)}
    return out


def write_saelens(sae: SparseAutoencoder, config: Mapping[str, Any], out_dir: Path) -> Path:
    """Write `out_dir/cfg.json` + `out_dir/sae_weights.safetensors` in SAELens' inference format."""
    form = sae.inference_form()
    architectures = {TopKConfig: "topk", ReLUConfig: "standard", JumpReLUConfig: "jumprelu"}
    arch = architectures[type(form.cfg)]
    weights = _folded(form)
    tensors = {"W_enc": weights["W_enc"].t().contiguous(), "b_enc": weights["b_enc"], "W_dec": weights["W_dec"], "b_dec": weights["b_dec"]}
    extra: dict[str, Any] = {}
    if arch == "topk":
        extra = {"k": int(form.cfg.k), "rescale_acts_by_decoder_norm": False}
    elif arch == "jumprelu":
        tensors["threshold"] = form.log_threshold.detach().exp().cpu().float().contiguous()
    hook = dict(config.get("hook") or {})
    clip = dict(config.get("clip") or {})
    cfg_json = {
        "architecture": arch,
        "d_in": form.d_in,
        "d_sae": form.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **extra,
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": clip.get("name"),
            "hook_name": _transformerlens_hook(hook.get("layer"), clip),
            "hook_head_index": None,
            "thumbsae": _carried_sections(config),
        },
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / FOREIGN_CONFIG).write_text(json.dumps(cfg_json, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    return out_dir


def _transformerlens_hook(layer: Any, clip: Mapping[str, Any]) -> str | None:
    """`blocks.N.hook_resid_post` for our `layer` (negative ones need the tower's depth)."""
    if not isinstance(layer, int):
        return None
    if layer < 0:
        depth = clip_depth(clip)
        if depth is None:
            return None
        layer += depth
    return f"blocks.{layer}.hook_resid_post" if layer >= 0 else None


def write_sparsify(sae: SparseAutoencoder, config: Mapping[str, Any], out_dir: Path) -> Path:
    """Write `out_dir/cfg.json` + `out_dir/sae.safetensors` as sparsify's `SparseCoder.save_to_disk`."""
    if type(sae.cfg) is not TopKConfig:
        raise ThumbsaeError(
            f"sparsify stores TopK autoencoders only; this SAE is {sae.cfg.arch}: use --format saelens"
        )
    weights = _folded(sae)
    tensors = {"encoder.weight": weights["W_enc"], "encoder.bias": weights["b_enc"], "W_dec": weights["W_dec"], "b_dec": weights["b_dec"]}
    cfg_json = {
        "activation": "topk",
        "expansion_factor": max(1, sae.n_latents // sae.d_in),
        "normalize_decoder": bool(sae.cfg.unit_norm_decoder),
        "num_latents": sae.n_latents,
        "k": int(sae.cfg.k),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": sae.d_in,
        "thumbsae": _carried_sections(config),
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / SPARSIFY_WEIGHTS), metadata={"format": "pt"})
        (tmp / FOREIGN_CONFIG).write_text(json.dumps(cfg_json, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    return out_dir


def export_sae(
    sae_dir: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    *,
    hook_defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Write the SAE at `sae_dir` (any format `load_sae` reads) as a `saelens` or `sparsify` folder
    at `out_dir` (replaced atomically), for those libraries' own loaders; returns `out_dir`.

    SAELens gets BatchTopK and Matryoshka SAEs as JumpReLU (their inference form); sparsify takes
    TopK only. Our input scale is folded into the weights, so their latents equal ours.
    """
    if fmt not in EXPORT_FORMATS:
        raise ThumbsaeError(f"--format {fmt}: use one of {', '.join(EXPORT_FORMATS)}")
    sae, config = load_sae(sae_dir, hook_defaults=hook_defaults)
    out = Path(out_dir)
    if out.resolve() == Path(sae_dir).resolve():
        raise ThumbsaeError(f"--out {out}: must differ from the SAE folder it exports")
    writer = write_saelens if fmt == SAELENS else write_sparsify
    return writer(sae, config, out)
