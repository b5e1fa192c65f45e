"""A small SAE and engagement model that know a few pictures, built with the real trainer.

For `tests/test_rank.py` and `bench/rank.py`: a random-weight tiny CLIP does not separate the
world's motifs in general, so these tests need a model that is known to. `write_demo_models`
makes thumbnails from each picture (random crops), stores their CLIP activations with
`store_from_array`, trains the SAE with `SAELitModule` under a Lightning `Trainer` (the trainer
`python train.py` uses), and fits the real engagement model on the latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_demo_models(
    out_dir: Path,
    pictures: Sequence[Image.Image],
    labels: Sequence[str],
    log_effects: Sequence[float],
    *,
    thumbnail_size: tuple[int, int] = (160, 90),
    crops_per_picture: int = 8,
    clip_name: str = "thumbsae-tiny-vit",
    layer: int = -2,
    tokens: str = "cls",
    fit: str = "pad",
    n_latents: int = 256,
    k: int = 16,
    sae_steps: int = 40,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `out_dir/sae/`, `out_dir/engagement_model/` and `out_dir/thumbnails/`; return
    `(sae_dir, model_dir)`.

    Each picture gives `crops_per_picture` thumbnails (random crops of 80-100 % of it, resized to
    `thumbnail_size`) whose log views are `log_effects[i]` plus noise (sd 0.1). The top-k SAE is
    trained for `sae_steps` full-batch steps on their CLIP activations (random-weight
    `clip_name`); each feature the engagement model uses is named after the label of the picture
    whose thumbnails activate it most, with those thumbnails as examples.
    """
    import pytorch_lightning as pl

    from thumbsae.activations import ActivationDataModule, embed_images, load_clip
    from thumbsae.activations.store import store_from_array
    from thumbsae.analysis.latents import encode_latents
    from thumbsae.analysis.engagement import fit_engagement_model
    from thumbsae.sae import OptimConfig, SAELitModule, TopKConfig, save_sae

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    thumbs_dir = out_dir / "thumbnails"
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    thumbnails, owner, log_views = [], [], []
    for i, picture in enumerate(pictures):
        for j in range(crops_per_picture):
            frac = rng.uniform(0.8, 1.0)
            w, h = round(picture.width * frac), round(picture.height * frac)
            x, y = int(rng.integers(0, picture.width - w + 1)), int(rng.integers(0, picture.height - h + 1))
            thumb = picture.crop((x, y, x + w, y + h)).resize(thumbnail_size, Image.Resampling.BILINEAR)
            path = thumbs_dir / f"p{i}_{j}.png"
            thumb.save(path)
            thumbnails.append(path)
            owner.append(i)
            log_views.append(float(log_effects[i]) + rng.normal(0.0, 0.1))
    owner_N = np.asarray(owner)

    clip = load_clip(clip_name)
    images = [Image.open(p).convert("RGB") for p in thumbnails]
    acts = embed_images(clip, images, layer=layer, tokens=tokens, fit=fit)
    video_ids = [p.stem for p in thumbnails]
    store = store_from_array(
        out_dir / "store", acts, video_ids, tokens=tokens, layer=layer, model=clip.to_config()
    )

    n_rows = store.n
    datamodule = ActivationDataModule(
        [store.path], batch_size=n_rows, val_fraction=0.0, shuffle_buffer=n_rows, seed=seed, normalize=True
    )
    datamodule.setup("fit")
    sae_cfg = TopKConfig(d_in=store.d, n_latents=n_latents, k=k, seed=seed, input_scale=float(datamodule.scale))
    module = SAELitModule(sae_cfg, OptimConfig(lr=2e-3, warmup_steps=1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=sae_steps, max_epochs=-1, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, deterministic=True,
    )
    trainer.fit(module, datamodule=datamodule)
    sae = module.sae.eval()
    sae_dir = save_sae(sae, out_dir / "sae", {
        "clip": clip.to_config(),
        "hook": {"layer": layer, "tokens": tokens, "fit": fit},
        "normalisation": {"input_scale": float(datamodule.scale), "method": "mean norm sqrt(d)"},
        "training": {"images": "tests/demo_models.py", "n_activations": int(n_rows), "seed": seed,
                     "max_steps": sae_steps},
    })

    csr = encode_latents(sae, acts, pool="max").csr
    target_N = np.asarray(log_views) - np.median(log_views)
    model, _ = fit_engagement_model(csr, target_N, seed=seed, target_kind="channel_relative")
    dense_NF = csr.toarray()
    info = {}
    for f in model.feature_indices.tolist():
        mean_per_picture = [dense_NF[owner_N == i, f].mean() for i in range(len(pictures))]
        best = int(np.argmax(mean_per_picture))
        top = np.argsort(-dense_NF[:, f], kind="stable")[:4]
        info[int(f)] = {
            "name": str(labels[best]),
            "lift": float(np.exp(log_effects[best] - np.median(log_effects))),
            "q_value": None,
            "examples": [str(thumbnails[n]) for n in top],
        }
    model_dir = model.save(out_dir / "engagement_model", feature_info=info)
    return sae_dir, model_dir
