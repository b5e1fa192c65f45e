"""The embedded model: the tiny ViT CLIP trained contrastively on the world's image-caption pairs.

A random-weight CLIP runs, but its features mean little. This trains `thumbsae-tiny-vit` (the
shipped architecture, text tower included) on the world's thumbnails and reference images with
captions made from each image's motifs, scene and palette (`thumbsae.world.caption_for`), and
saves a plain open_clip checkpoint (float16 by default):

    open_clip.create_model("thumbsae-tiny-vit", pretrained="data/world_clip/model.safetensors")

plus a JSON sidecar (`model.json`: preprocessing, training settings, losses, held-out caption
retrieval of the trained and of the untrained model, the checkpoint's sha256). Decoded images are
cached once as uint8; the same world, settings and seed give the same weights on the same CPU
type and thread count (other CPUs round differently, so their weights differ in the last bits).

The package ships one such checkpoint, trained on the default world (`model=tiny_world` loads it
as `thumbsae:world_clip`), so nothing is trained on first use. To retrain it:

    thumbsae world-clip --world data/world --out data/world_clip/model.safetensors [world_clip.KEY=VALUE]

(`dvc repro pipelines/world_clip/dvc.yaml` runs exactly that.)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss
from PIL import Image
from safetensors.torch import save as safetensors_bytes

from thumbsae.activations.clip import SHIPPED_WORLD_CLIP, shipped_checkpoint
from thumbsae.activations.model_configs import TINY_VIT_NAME, register_shipped_configs
from thumbsae.config import Seed
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_write_bytes, atomic_write_text
from thumbsae.world.captions import MOTIF_PHRASES, caption_for


DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class WorldClipConfig:
    """Training settings of the world CLIP (the `world_clip` config group; all recorded in the sidecar).

    max_images: train on a seeded random subset of this many images (tests, quick runs).
    heldout_fraction: share of images kept out of training for caption retrieval.
    warmup_fraction: share of the steps with a linear learning-rate warm-up (then cosine decay).
    dtype: storage type of the checkpoint; the trained weights are rounded to it before the
        held-out retrieval is measured, so the sidecar describes the file as saved.
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: Seed = 0
    max_images: int | None = None
    heldout_fraction: float = 0.1
    warmup_fraction: float = 0.1
    model: str = TINY_VIT_NAME
    dtype: str = "float16"

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 2, "must be >= 2 (a contrastive batch needs pairs)"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_images", self.max_images is None or self.max_images >= 3, "must be null or >= 3"),
            ("heldout_fraction", 0 < self.heldout_fraction < 1, "must be in (0, 1)"),
            ("warmup_fraction", 0 <= self.warmup_fraction < 1, "must be in [0, 1)"),
            ("dtype", self.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ThumbsaeError(f"world_clip.{key}={getattr(self, key)}: {allowed}")


@dataclass(frozen=True)
class CaptionedImages:
    """The world's images as model inputs: `pixels_NCHW` uint8 (fit to the model size), captions."""

    pixels_NCHW: torch.Tensor
    captions: list[str]
    video_ids: list[str]


def _reference_caption(row: pd.Series) -> str:
    if "scene" in row and "warmth" in row and isinstance(row["scene"], str):
        return caption_for([row["label"]], row["scene"], float(row["warmth"]))
    return f"a thumbnail of {MOTIF_PHRASES.get(row['label'], row['label'])}"  # older worlds


def world_captions(world_dir: Path) -> pd.DataFrame:
    """Every image of the world at `world_dir` with its caption: columns `video_id, image, caption`.

    Thumbnails come first, then reference images, in manifest order; `image` is an absolute path.
    """
    world_dir = Path(world_dir)
    frames = []
    thumbs_csv, ref_csv = world_dir / "thumbnails.csv", world_dir / "reference.csv"
    if not thumbs_csv.is_file():
        raise ThumbsaeError(
            f"{thumbs_csv}: missing; write a world first (thumbsae world --out {world_dir})"
        )
    try:
        thumbs = pd.read_csv(thumbs_csv, keep_default_na=False)
        frames.append(
            pd.DataFrame(
                {
                    "video_id": thumbs["video_id"].astype(str),
                    "image": thumbs["image"],
                    "caption": [
                        caption_for([m for m in motifs.split(";") if m], scene, float(warmth))
                        for motifs, scene, warmth in zip(
                            thumbs["motifs"], thumbs["scene"], thumbs["warmth"], strict=True
                        )
                    ],
                }
            )
        )
        if ref_csv.is_file():
            ref = pd.read_csv(ref_csv, keep_default_na=False)
            frames.append(
                pd.DataFrame(
                    {
                        "video_id": ref["video_id"].astype(str),
                        "image": ref["image"],
                        "caption": [_reference_caption(row) for _, row in ref.iterrows()],
                    }
                )
            )
    except (KeyError, ValueError) as err:
        raise ThumbsaeError(f"{world_dir}: not a thumbsae world manifest ({err})") from err
    table = pd.concat(frames, ignore_index=True)
    table["image"] = [str((world_dir / p).resolve()) for p in table["image"]]
    return table


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    """Pad to a square (black borders, nothing cut off), then resize to `size`."""
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)


def load_captioned_images(table: pd.DataFrame, image_size: int) -> CaptionedImages:
    """Decode every `table.image` once into a uint8 `[N, 3, image_size, image_size]` tensor."""
    pixels_NCHW = torch.empty((len(table), 3, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(table["image"]):
        try:
            with Image.open(path) as img:
                rgb = _fit_square(img.convert("RGB"), image_size)
        except OSError as err:
            raise ThumbsaeError(f"{path}: cannot read image ({err})") from err
        pixels_NCHW[i] = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    return CaptionedImages(pixels_NCHW, list(table["caption"]), list(table["video_id"]))


class _Normalize:
    """uint8 `[B, 3, H, W]` -> float32 normalised model input."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean_13 = torch.tensor(mean).view(1, 3, 1, 1)
        self.std_13 = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        return (pixels_BCHW.float() / 255.0 - self.mean_13) / self.std_13


def _split(n: int, cfg: WorldClipConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) index arrays; at least one image on each side."""
    order = np.random.default_rng([cfg.seed, 7]).permutation(n)
    n_heldout = min(n - 1, max(1, round(cfg.heldout_fraction * n)))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


@torch.inference_mode()
def caption_retrieval(
    model: torch.nn.Module,
    tokenizer,
    normalize: _Normalize,
    pixels_NCHW: torch.Tensor,
    captions: list[str],
    batch_size: int = 256,
) -> dict[str, float]:
    """Image -> caption retrieval among the distinct captions of these images.

    Returns `recall_at_1` (the top caption is the image's own, exactly), `motif_recall_at_1`
    (the top caption names the same motifs, whatever scene and warmth) and `chance`
    (1 / number of distinct captions).
    """
    model.eval()
    distinct = sorted(set(captions))
    text_TE = torch.cat(
        [
            model.encode_text(tokenizer(distinct[i : i + batch_size]), normalize=True)
            for i in range(0, len(distinct), batch_size)
        ]
    )
    image_NE = torch.cat(
        [
            model.encode_image(normalize(pixels_NCHW[i : i + batch_size]), normalize=True)
            for i in range(0, len(pixels_NCHW), batch_size)
        ]
    )
    best_N = (image_NE @ text_TE.T).argmax(dim=1).tolist()
    retrieved = [distinct[j] for j in best_N]

    def content(caption: str) -> str:  # "a warm thumbnail of X on Y background" -> "X"
        return caption.split(" thumbnail of ", 1)[1].rsplit(" on ", 1)[0]

    return {
        "recall_at_1": float(np.mean([r == c for r, c in zip(retrieved, captions, strict=True)])),
        "motif_recall_at_1": float(
            np.mean([content(r) == content(c) for r, c in zip(retrieved, captions, strict=True)])
        ),
        "chance": 1.0 / len(distinct),
        "n_images": len(captions),
        "n_captions": len(distinct),
    }


def _lr_at(step: int, total: int, cfg: WorldClipConfig) -> float:
    warmup = max(1, int(cfg.warmup_fraction * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices only: biases, norms, embeddings' scale and logit_scale stay free (CLIP recipe).
    decay, free = [], []
    for name, param in model.named_parameters():
        is_matrix = param.ndim >= 2 and "embedding" not in name and "logit_scale" not in name
        (decay if is_matrix else free).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": free, "weight_decay": 0.0}]


def _round_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round every parameter and buffer through `dtype` in place (they stay float32 tensors)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))


def sidecar_path(checkpoint: Path) -> Path:
    """The JSON sidecar beside a world CLIP checkpoint (`model.safetensors` -> `model.json`)."""
    return Path(checkpoint).with_suffix(".json")


def fit_world_clip(
    world_dir: Path, cfg: WorldClipConfig, *, progress: bool = True
) -> tuple[torch.nn.Module, dict]:
    """Train the tiny CLIP of `cfg.model` on the world at `world_dir`; return (model, report).

    report: the sidecar's content (preprocessing, settings, losses, held-out caption retrieval of
    the trained and the untrained model), JSON-ready and free of timings, so reruns match byte for
    byte. The returned model's weights are already rounded to `cfg.dtype` (what is saved).
    Raises `ThumbsaeError` for a missing or unreadable world.
    """
    started = time.perf_counter()
    table = world_captions(Path(world_dir))
    if cfg.max_images is not None and cfg.max_images < len(table):
        keep = np.sort(
            np.random.default_rng([cfg.seed, 5]).permutation(len(table))[: cfg.max_images]
        )
        table = table.iloc[keep].reset_index(drop=True)
    if len(table) < 3:
        raise ThumbsaeError(
            f"{world_dir}: need at least 3 images to train and hold out, found {len(table)}"
        )

    register_shipped_configs()
    # Keep the caller's global random state untouched; all of training draws from `seed`.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = open_clip.create_model(cfg.model, pretrained=None)
        tokenizer = open_clip.get_tokenizer(cfg.model)
        image_size = model.visual.image_size
        image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        data = load_captioned_images(table, image_size)
        tokens_NL = tokenizer(data.captions)
        normalize = _Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        train_idx, heldout_idx = _split(len(table), cfg)
        heldout_pixels = data.pixels_NCHW[heldout_idx]
        heldout_captions = [data.captions[i] for i in heldout_idx]
        untrained = caption_retrieval(model, tokenizer, normalize, heldout_pixels, heldout_captions)

        batch = min(cfg.batch_size, len(train_idx))
        steps_per_epoch = max(1, len(train_idx) // batch)  # drop the ragged last batch
        total_steps = steps_per_epoch * cfg.epochs
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        loss_fn = ClipLoss()
        generator = torch.Generator().manual_seed(cfg.seed)
        epoch_losses: list[float] = []
        step_losses: list[float] = []
        model.train()
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
            for b in range(steps_per_epoch):
                idx = order[b * batch : (b + 1) * batch]
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(len(step_losses), total_steps, cfg)
                image_BE = model.encode_image(normalize(data.pixels_NCHW[idx]), normalize=True)
                text_BE = model.encode_text(tokens_NL[idx], normalize=True)
                loss = loss_fn(image_BE, text_BE, model.logit_scale.exp())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # CLIP clamps the temperature at 100
                    model.logit_scale.clamp_(0, math.log(100))
                step_losses.append(loss.item())
            epoch_losses.append(float(np.mean(step_losses[-steps_per_epoch:])))
            if progress:
                print(
                    f"world_clip: epoch {epoch + 1}/{cfg.epochs} loss {epoch_losses[-1]:.4f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
        _round_weights(model, DTYPES[cfg.dtype])
        trained = caption_retrieval(model, tokenizer, normalize, heldout_pixels, heldout_captions)
    model.eval()
    report = {
        "model": cfg.model,
        "quick_gelu": False,
        "image_size": image_size,
        "mean": list(OPENAI_DATASET_MEAN),
        "std": list(OPENAI_DATASET_STD),
        "fit": "pad",
        "training": asdict(cfg),
        "world": str(Path(world_dir)),
        "n_train": int(len(train_idx)),
        "n_heldout": int(len(heldout_idx)),
        "steps": total_steps,
        "first_loss": step_losses[0],
        "final_loss": epoch_losses[-1],
        "epoch_losses": epoch_losses,
        "heldout_retrieval": {"trained": trained, "untrained": untrained},
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    if progress:
        print(
            f"world_clip: trained in {time.perf_counter() - started:.0f} s; held-out caption "
            f"recall@1 "
            f"{trained['recall_at_1']:.3f} (untrained {untrained['recall_at_1']:.3f}, chance "
            f"{trained['chance']:.3f}), motif recall@1 {trained['motif_recall_at_1']:.3f} "
            f"(untrained {untrained['motif_recall_at_1']:.3f})",
            file=sys.stderr,
        )
    return model, report


def save_world_clip(
    model: torch.nn.Module, report: dict, out_path: Path, *, dtype: str | None = None
) -> Path:
    """Write `model`'s state_dict to `out_path` (.safetensors) and `report` to its JSON sidecar.

    dtype: storage type of floating-point tensors (`float16`, `float32`); default: the one the
    report's training settings name, else float32. The sidecar gets `dtype` and the checkpoint's
    `sha256` (the digest `model.sha256` in a model config checks).
    """
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ThumbsaeError(f"{out_path}: the world CLIP checkpoint must end in .safetensors")
    dtype = dtype or report.get("training", {}).get("dtype", "float32")
    if dtype not in DTYPES:
        raise ThumbsaeError(f"world_clip.dtype={dtype}: must be one of {', '.join(DTYPES)}")
    state = {
        k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).detach().contiguous().clone()
        for k, v in model.state_dict().items()
    }
    data = safetensors_bytes(state, metadata={"format": "pt"})
    sidecar = {
        **report,
        "pretrained": str(out_path),
        "dtype": dtype,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        atomic_write_text(sidecar_path(out_path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        # The checkpoint goes last: once it exists, the whole model (sidecar included) is there.
        atomic_write_bytes(out_path, data)
    except OSError as err:
        raise ThumbsaeError(f"{out_path}: cannot write the world CLIP ({err})") from err
    return out_path


def train_world_clip(
    world_dir: Path,
    out_path: Path,
    cfg: WorldClipConfig | None = None,
    *,
    progress: bool = True,
    **settings,
) -> Path:
    """Train the tiny CLIP on the world at `world_dir`; write `out_path` (.safetensors) + sidecar.

    world_dir: a folder written by `thumbsae.world.generate_world` (thumbnails.csv, reference.csv).
    out_path: the checkpoint file; it loads with
        `open_clip.create_model("thumbsae-tiny-vit", pretrained=str(out_path))`.
    cfg: the training settings (default `WorldClipConfig()`); `settings` are keyword overrides of
        it (`epochs=8, max_images=10`).
    Returns `out_path`. Raises `ThumbsaeError` for a missing or unreadable world or bad settings.
    """
    if Path(out_path).suffix != ".safetensors":  # fail before training, not after
        raise ThumbsaeError(f"{out_path}: the world CLIP checkpoint must end in .safetensors")
    cfg = replace(cfg or WorldClipConfig(), **settings)
    model, report = fit_world_clip(Path(world_dir), cfg, progress=progress)
    return save_world_clip(model, report, Path(out_path), dtype=cfg.dtype)


def check_shipped_world_clip() -> dict:
    """The shipped checkpoint's sidecar, after checking that the file's sha256 is the one it names.

    Raises `ThumbsaeError` when the file or its sidecar is missing or they disagree.
    """
    path = shipped_checkpoint(SHIPPED_WORLD_CLIP)
    try:
        sidecar = json.loads(sidecar_path(path).read_text())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, json.JSONDecodeError) as err:
        raise ThumbsaeError(f"{path}: the shipped world CLIP is unreadable ({err})") from err
    if sidecar.get("sha256") != digest:
        raise ThumbsaeError(
            f"{path}: sha256 {digest[:12]}... is not the {str(sidecar.get('sha256'))[:12]}... its "
            "sidecar names; reinstall thumbsae"
        )
    return sidecar
