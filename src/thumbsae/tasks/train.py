"""Train a sparse autoencoder on CLIP activations of an image set (`python train.py`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from thumbsae.config import Seed, build, check, refuse_overrides, setting, to_plain
from thumbsae.console import training_callbacks
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_write_text
from thumbsae.report.wandb_log import log_comparison_row
from thumbsae.sae.compare import run_summary
from thumbsae.tasks.embedded import ensure_world
from thumbsae.tasks.extract import extract_store
from thumbsae.tasks.loggers import closing_loggers, make_loggers

TRAIN_GROUPS = ("sae", "optim", "datamodule", "trainer", "callbacks")
# Composed with the pipeline (conf/pipeline.yaml) but read only by evaluate.py.
EVAL_GROUPS = ("eval", "engagement", "engagement_model", "report", "sae_dir", "default_sae_run")


def run_name(cfg: DictConfig) -> str:
    """A readable run name: architecture, expansion and k (what a size sweep varies)."""
    s = cfg.sae
    k = f"-k{s.k}" if s.get("k") is not None else ""
    return f"{s.arch}-x{s.expansion_factor}{k}"


def splice_evaluator(cfg: DictConfig, clip, images, n_images: int | None = None):
    """Zero-shot metrics with the SAE spliced in, on a seeded sample of labelled training images
    (`n_images`, default `splice_sample_size`: 5 % of them, 32..256).

    None without a text tower or without `label`s (a manifest column, or folder sub-folders).
    """
    if images is None or not clip.has_text or "label" not in images.columns or images["label"].nunique() < 2:
        return None
    import torch

    from thumbsae.activations import make_transform
    from thumbsae.data import load_rgb
    from thumbsae.sae.splice import SpliceEvaluator, splice_sample_size

    n_images = splice_sample_size(len(images)) if n_images is None else min(n_images, len(images))
    sample = images.sample(n=n_images, random_state=int(cfg.seed)).sort_index()
    classes = sorted(sample["label"].astype(str).unique())
    transform = make_transform(clip.image_size, clip.mean, clip.std, fit=str(cfg.activations.fit))
    images_BCHW = torch.stack([transform(load_rgb(p)) for p in sample["image"]])
    labels_B = torch.tensor([classes.index(str(label)) for label in sample["label"]])
    prompts = [f"a photo of {label.replace('_', ' ')}" for label in classes]
    return SpliceEvaluator.from_prompts(
        clip.model, clip.tokenizer, images_BCHW, labels_B, prompts,
        layer=int(cfg.activations.layer), tokens=str(cfg.activations.tokens),
    )


def check_resumable(checkpoint: Path) -> bool:
    """True when `checkpoint` exists and can be resumed from; one-line error for a broken one."""
    if not checkpoint.exists():
        return False
    if checkpoint.stat().st_size == 0:
        raise ThumbsaeError(
            f"{checkpoint}: empty checkpoint (the run was killed while saving); this run cannot resume from it. "
            f"Delete {checkpoint.parent} to start the run fresh"
        )
    import zipfile

    if not zipfile.is_zipfile(checkpoint):
        raise ThumbsaeError(
            f"{checkpoint}: not a readable checkpoint; this run cannot resume from it. Delete {checkpoint.parent} to start fresh"
        )
    return True


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> Path:
    """Extract (or reuse) activations of `data.train`, train the SAE, write `run_dir/sae/`.

    Every setting is checked before the first expensive step. Also writes `run_dir/metrics.json`
    (final validation metrics, for `thumbsae compare`), `run_dir/timing.json` and
    `run_dir/rejects.csv`. Resumes from `run_dir/checkpoints/last.ckpt` when it exists.
    overrides: the command line's Hydra overrides; evaluation settings among them are refused.
    """
    from thumbsae.activations import ActivationStore
    from thumbsae.sae import SAELitModule, save_sae

    refuse_overrides(overrides, EVAL_GROUPS, why="train.py does not evaluate; evaluate.py does")
    run_dir = Path(run_dir)
    seed = setting(cfg, "seed", Seed)
    setting(cfg, "strict", bool)  # `strict=maybe` named as typed, before data.strict inherits it
    data = build(cfg.data, "data")
    clip_cfg = build(cfg.model, "model")
    hook = build(cfg.activations, "activations")
    make_datamodule = build(cfg.datamodule, "datamodule", _partial_=True)
    optim_cfg = build(cfg.optim, "optim")
    check(cfg.sae, "sae")
    sae_node = to_plain(cfg.sae)
    if not hook.store and not data.train:
        raise ThumbsaeError("data.train: not set; pass data.train=IMAGES (a manifest or a folder) or activations.store=STORE")
    ensure_world(cfg, [] if hook.store else [data.train], overrides)
    resume = check_resumable(run_dir / "checkpoints" / "last.ckpt")
    name = run_name(cfg)
    loggers = make_loggers(cfg.get("logger"), run_dir, name=name, group=cfg.get("group"))
    callbacks = [build(node, f"callbacks.{key}", **_callback_runtime(key, run_dir)) for key, node in cfg.callbacks.items()]
    # One progress bar over max_steps, and Lightning's model table logged rather than printed.
    callbacks += training_callbacks()
    trainer: pl.Trainer = build(cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir))

    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    clip = clip_cfg.load()
    # The SAE's settings are checked against the model's width before any activation is extracted.
    build(cfg.sae, "sae", d_in=int(clip.visual.transformer.width))

    if hook.store:
        store, images = ActivationStore(Path(hook.store)), None
    else:
        store, images = extract_store(data.train, kind="images", hook=hook, clip_cfg=clip_cfg, strict=data.strict,
                                      rejects_path=run_dir / "rejects.csv", clip=clip)

    datamodule = make_datamodule([store.path])
    datamodule.setup("fit")
    sae_cfg = build(cfg.sae, "sae", d_in=store.d, input_scale=float(datamodule.scale))
    module = SAELitModule(sae_cfg, optim_cfg, splice=splice_evaluator(cfg, clip, images))

    validates = float(datamodule.val_fraction) > 0
    with closing_loggers(loggers):
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        started = time.perf_counter()
        checkpoint = str(run_dir / "checkpoints" / "last.ckpt") if resume else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        seconds = time.perf_counter() - started
        # Without validation rows (datamodule.val_fraction=0) the SAE is saved without final metrics.
        results = trainer.validate(module, datamodule=datamodule, verbose=False) if validates else [{}]
        metrics = {k: float(v) for k, v in results[0].items()}

        meta = {
            "optim": optim_cfg.to_dict(),
            "clip": {**clip_cfg.to_dict(), "sha256": clip.sha256},
            "hook": hook.hook,
            "normalisation": {"input_scale": float(datamodule.scale), "method": "mean norm sqrt(d)" if datamodule.normalize else "none"},
            "training": {
                "images": str(data.train) if not hook.store else None,
                "store": str(hook.store) if hook.store else None,
                "n_activations": int(store.n),
                "max_steps": int(trainer.max_steps),
                "batch_size": int(datamodule.batch_size),
                "seed": seed,
            },
        }
        sae_dir = save_sae(module.sae, run_dir / "sae", meta)
        # Timings vary run to run, so they stay out of metrics.json (a DVC metric whose hash is locked).
        timing_keys = [k for k in metrics if "per_s" in k or "time" in k]
        timing = {"train_seconds": round(seconds, 3), **{k.split("/")[-1]: metrics.pop(k) for k in timing_keys}}
        summary = {
            "name": name,
            "arch": sae_cfg.arch,
            "d_in": sae_cfg.d_in,
            "expansion_factor": sae_node.get("expansion_factor"),
            "n_latents": module.sae.n_latents,
            "k": sae_node.get("k"),  # None for architectures without a fixed k
            **{k.split("/")[-1]: v for k, v in metrics.items()},
        }
        atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2, sort_keys=True) + "\n")
        # The W&B run carries the same row as `thumbsae compare`'s table (a multirun lines up in W&B);
        # a run without validation rows has no metrics to compare.
        if validates:
            log_comparison_row(loggers, run_summary(run_dir))
    return sae_dir


def _callback_runtime(key: str, run_dir: Path) -> dict:
    """Run-time arguments of the known callbacks (their folder lives in the run folder)."""
    return {"dirpath": str(run_dir / "checkpoints")} if key == "model_checkpoint" else {}
