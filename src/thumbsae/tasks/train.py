"""Train a sparse autoencoder on CLIP activations of an image set (`python train.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from thumbsae.files import atomic_write_text
from thumbsae.tasks.embedded import ensure_world, ensure_world_clip
from thumbsae.tasks.extract import clip_kwargs, extract_store
from thumbsae.tasks.loggers import closing_loggers, make_loggers


def run_name(cfg: DictConfig) -> str:
    """A readable run name: architecture, expansion and k (what a size sweep varies)."""
    s = cfg.sae
    k = f"-k{s.k}" if s.get("arch") in ("topk", "batchtopk") else ""
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


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Extract (or reuse) activations of `data.train`, train the SAE, write `run_dir/sae/`.

    Also writes `run_dir/metrics.json` (final validation metrics, for `thumbsae compare`) and
    `run_dir/rejects.csv`. Resumes from `run_dir/checkpoints/last.ckpt` when it exists.
    """
    from thumbsae.activations import ActivationDataModule, ActivationStore
    from thumbsae.sae import SAELitModule, save_sae, sae_config_from_dict

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)
    ensure_world(cfg)
    ensure_world_clip(cfg)

    from thumbsae.activations import load_clip

    clip = load_clip(**clip_kwargs(cfg.model))
    if cfg.activations.get("store"):
        store, images = ActivationStore(Path(cfg.activations.store)), None
    else:
        store, images = extract_store(cfg, cfg.data.train, kind="images", rejects_path=run_dir / "rejects.csv", clip=clip)

    sae_node = OmegaConf.to_container(cfg.sae, resolve=True)
    datamodule = ActivationDataModule(
        [store.path],
        batch_size=int(sae_node["batch_size"]),
        val_fraction=float(cfg.datamodule.val_fraction),
        shuffle_buffer=int(cfg.datamodule.shuffle_buffer),
        num_workers=int(cfg.datamodule.num_workers),
        seed=int(cfg.seed),
        normalize=bool(cfg.datamodule.normalize),
    )
    datamodule.setup("fit")
    sae_cfg = sae_config_from_dict({**sae_node, "d_in": store.d, "input_scale": float(datamodule.scale)})
    module = SAELitModule(sae_cfg, splice=splice_evaluator(cfg, clip, images))

    name = run_name(cfg)
    loggers = make_loggers(cfg.get("logger"), run_dir, name=name, group=cfg.get("group"))
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        pl.callbacks.ModelCheckpoint(dirpath=str(checkpoints), save_last=True, every_n_train_steps=int(cfg.checkpoint_every)),
    ]
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir)
    )
    resume = checkpoints / "last.ckpt"
    with closing_loggers(loggers):
        if loggers:
            for lg in loggers:
                lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
        seconds = time.perf_counter() - started
        metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}

    meta = {
        "clip": {**clip_kwargs(cfg.model), "sha256": clip.sha256},
        "hook": {"layer": int(cfg.activations.layer), "tokens": str(cfg.activations.tokens), "fit": str(cfg.activations.fit)},
        "normalisation": {"input_scale": float(datamodule.scale), "method": "mean norm sqrt(d)" if cfg.datamodule.normalize else "none"},
        "training": {
            "images": str(cfg.data.train),
            "n_activations": int(store.n),
            "max_steps": int(cfg.trainer.max_steps),
            "seed": int(cfg.seed),
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
        "k": sae_node.get("k"),
        **{k.split("/")[-1]: v for k, v in metrics.items()},
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2, sort_keys=True) + "\n")
    return sae_dir
