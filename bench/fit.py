"""Bench: which preprocessing fit (crop, pad, squash) keeps motifs near the edges of 4:3 thumbnails.

For N world backgrounds (160 x 120, `thumbsae.world.draw_thumbnail`), one world motif patch (one of
K motifs, 64 px) is pasted twice: once with its centre in the outer 20 % of the width ("edge",
left or right, possibly partly out of frame), once at the same height in the middle. Per fit and
feature (CLS, mean of patch tokens; layer -2) we measure:

- retention: median over backgrounds of |f(edge) - f(background)| / |f(middle) - f(background)|,
  how much of what the motif does to the activations survives when it sits at an edge;
- detection: held-out balanced accuracy of a logistic-regression probe telling "a motif at the
  edge" from the bare background (backgrounds split 60/40 into train and test).

ratio = pad / crop of the retention (averaged over CLS and mean); target 1.0 (padding should not
lose to the crop). The fit with the highest retention is the default (`DEFAULT_FIT`); when squash
beats pad by less than the paired-bootstrap 95 % CI, it is a tie and pad (no distortion) wins.

    python bench/fit.py [--backgrounds 240] [--model thumbsae-tiny-vit] [--pretrained PATH]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from thumbsae.activations import FITS, embed_images, load_clip
from thumbsae.world import SCENES, draw_thumbnail

PROBE_MOTIFS = ("face", "red_arrow", "text_overlay", "food", "car", "sports_field")
WIDTH, HEIGHT, PATCH = 160, 120, 64


def make_triplets(n: int, seed: int) -> tuple[list[Image.Image], list[Image.Image], list[Image.Image]]:
    """`n` (background, motif at an edge, same motif in the middle) image triplets."""
    rng = np.random.default_rng(seed)
    backgrounds, edges, middles = [], [], []
    for i in range(n):
        background = draw_thumbnail([], scene=SCENES[rng.integers(len(SCENES))], warmth=float(rng.uniform(-1, 1)),
                                    size=(WIDTH, HEIGHT), rng=rng)
        patch = draw_thumbnail([PROBE_MOTIFS[i % len(PROBE_MOTIFS)]], scene=SCENES[rng.integers(len(SCENES))],
                               warmth=float(rng.uniform(-1, 1)), size=(PATCH, PATCH), rng=rng)
        top = round(rng.uniform(0, HEIGHT - PATCH))
        x_centre = rng.uniform(0.02, 0.2) * WIDTH
        x_centre = x_centre if rng.random() < 0.5 else WIDTH - x_centre
        edge, middle = background.copy(), background.copy()
        edge.paste(patch, (round(x_centre - PATCH / 2), top))
        middle.paste(patch, (round((WIDTH - PATCH) / 2), top))
        backgrounds.append(background)
        edges.append(edge)
        middles.append(middle)
    return backgrounds, edges, middles


def detection_accuracy(background_ND: np.ndarray, edge_ND: np.ndarray, train: np.ndarray) -> float:
    """Balanced accuracy of a "motif at the edge vs bare background" probe on held-out backgrounds."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
    x_train = np.concatenate([background_ND[train], edge_ND[train]])
    y_train = np.r_[np.zeros(train.sum()), np.ones(train.sum())]
    probe.fit(x_train, y_train)
    negatives = probe.predict(background_ND[~train]) == 0
    positives = probe.predict(edge_ND[~train]) == 1
    return float((negatives.mean() + positives.mean()) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backgrounds", type=int, default=240)
    parser.add_argument("--model", default="thumbsae-tiny-vit")
    parser.add_argument("--pretrained", default=None, help="a local checkpoint (e.g. the world CLIP); default random")
    parser.add_argument("--layer", type=int, default=-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip(args.model, pretrained=args.pretrained)
    backgrounds, edges, middles = make_triplets(args.backgrounds, args.seed)
    train = np.random.default_rng(args.seed + 1).random(args.backgrounds) < 0.6
    results, per_background = {}, {}
    for fit in FITS:
        acts = [embed_images(clip, images, layer=args.layer, tokens="all", fit=fit)
                for images in (backgrounds, edges, middles)]
        row = {}
        for name, pool in (("cls", lambda a: a[:, 0]), ("mean", lambda a: a[:, 1:].mean(axis=1))):
            background_ND, edge_ND, middle_ND = (pool(a) for a in acts)
            change_edge = np.linalg.norm(edge_ND - background_ND, axis=1)
            change_middle = np.linalg.norm(middle_ND - background_ND, axis=1)
            row[f"retention_{name}"] = round(float(np.median(change_edge / change_middle)), 3)
            per_background[fit] = per_background.get(fit, 0) + change_edge / change_middle / 2
            row[f"detection_{name}"] = round(detection_accuracy(background_ND, edge_ND, train), 3)
        row["retention"] = round((row["retention_cls"] + row["retention_mean"]) / 2, 3)
        row["detection"] = round((row["detection_cls"] + row["detection_mean"]) / 2, 3)
        results[fit] = row
    # Paired bootstrap of the mean per-background retention difference squash - pad.
    diff = per_background["squash"] - per_background["pad"]
    boot = np.random.default_rng(args.seed + 2).choice(diff, size=(2000, len(diff))).mean(axis=1)
    ci = np.quantile(boot, [0.025, 0.975])
    best = max(FITS, key=lambda f: results[f]["retention"])
    if best == "squash" and ci[0] <= 0:
        best = "pad"  # a tie within the CI goes to the fit that keeps the aspect ratio (no distorted shapes)
    print(json.dumps({
        "ratio": round(results["pad"]["retention"] / results["crop"]["retention"], 3),
        "target": 1.0,
        "best_fit": best,
        "squash_minus_pad_retention": {"mean": round(float(diff.mean()), 4), "ci95": [round(float(q), 4) for q in ci]},
        "retention": {f: results[f]["retention"] for f in FITS},
        "detection": {f: results[f]["detection"] for f in FITS},
        "detail": results,
        "backgrounds": args.backgrounds,
        "model": args.model,
        "pretrained": args.pretrained,
        "layer": args.layer,
    }))


if __name__ == "__main__":
    main()
