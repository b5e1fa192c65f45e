"""Readable names for SAE features: CLIP text-tower words, or the majority reference label.

Two ways, and every name says which it used (`source`):

- `"text"`: the model has a text tower. A feature's direction in CLIP's joint space is the mean
  image embedding of its top images minus the mean over a background sample (which removes what
  every thumbnail shares: layout, the "thumbnail look"). Each vocabulary word is prompted as
  "a photo of {word}" and "a thumbnail of {word}" (embeddings averaged), centred on the mean over
  the vocabulary (which removes what every prompt shares), and the words with the highest cosine
  to the direction win.
- `"reference_label"`: no text tower, but the feature's top reference images carry labels
  (ImageNet-style classes). The name is the most common label among them, with its share.
- `"none"`: neither was available; the name is empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from thumbsae.errors import ThumbsaeError

PROMPT_TEMPLATES = ("a photo of {}", "a thumbnail of {}")


def vocabulary_path() -> Path:
    """The vocabulary shipped with thumbsae (`thumbsae/resources/vocabulary.txt`)."""
    return Path(str(resources.files("thumbsae") / "resources" / "vocabulary.txt"))


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """Read a vocabulary file: one concept per line, `#` comments and blank lines skipped.

    Returns the concepts in file order, duplicates dropped (first one kept). `path=None` reads the
    shipped vocabulary. Raises `ThumbsaeError` for a missing or empty file.
    """
    path = vocabulary_path() if path is None else Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ThumbsaeError(f"{path}: cannot read vocabulary ({err.strerror or err})") from err
    words = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    words = list(dict.fromkeys(words))
    if not words:
        raise ThumbsaeError(f"{path}: vocabulary has no words")
    return words


def name_features(
    features: Sequence[int],
    *,
    top_images: dict[int, list[str]],
    all_images_sample: Sequence[str] | None = None,
    clip=None,
    reference_labels: dict[int, list[str]] | None = None,
    vocabulary: Sequence[str] | str | Path | None = None,
    top_words: int = 3,
    template: str | Sequence[str] = PROMPT_TEMPLATES,
    batch_size: int = 64,
    known_embeddings: Mapping[str, np.ndarray] | None = None,
    text_cache: Callable[[list[str]], Path | None] | None = None,
) -> dict[int, dict]:
    """Name each feature from CLIP text words (with a text tower) or its reference labels.

    Inputs:
        features: feature ids to name.
        top_images: feature -> paths of its top thumbnails, highest activation first.
        all_images_sample: background image paths whose mean embedding is subtracted; None uses
            the union of every feature's top images.
        clip: a `LoadedCLIP` (or anything with `has_text`); the text path runs when
            `clip.has_text` is true, through `thumbsae.activations.encode_text` and
            `thumbsae.activations.image_embeddings` (both return L2-normalised `[N, E]` arrays;
            each distinct image is decoded and embedded once, `batch_size` at a time).
        reference_labels: feature -> labels of its top reference images, highest first; the name
            when there is no text tower (or no top image to embed), else added to the text name
            as `reference_label` / `reference_share`.
        vocabulary: a list of words, a vocabulary file, or None for the shipped one.
        top_words: how many words make a text name.
        template: the prompt (or prompts, averaged) each word is put in.
        batch_size: images decoded at a time (bounds memory: only one batch of pixels is held).
        known_embeddings: image path -> its L2-normalised final CLIP embedding, already computed
            (e.g. evaluate.py's embeddings of every thumbnail); those images are not embedded again.
        text_cache: prompts -> the `.npy` file that keeps their text embeddings for this CLIP
            (evaluate.py's `text_embeddings_cache`), so the text tower runs over a vocabulary once
            per CLIP; None embeds them every time.
    Returns:
        feature -> {"name": str, "source": "text" | "reference_label" | "none",
        "words": [(word or label, score)]} where score is a cosine for `"text"` and a share of the
        top reference images for `"reference_label"`; the reference path also gives `"share"`
        (of the winning label) and `"n_images"`. Ties between labels go to the one seen first,
        i.e. on the higher-activating image.
    """
    features = [int(f) for f in features]
    by_label = {f: _name_by_reference_label((reference_labels or {}).get(f, [])) for f in features}
    if clip is None or not getattr(clip, "has_text", False):
        return by_label
    words = vocabulary if isinstance(vocabulary, (list, tuple)) else load_vocabulary(vocabulary)
    names = _name_by_text(
        features, top_images, all_images_sample, clip, list(words), top_words, template, batch_size, known_embeddings,
        text_cache,
    )
    for f in features:
        if names[f]["source"] == "none":
            names[f] = by_label[f]  # no top images to embed: the labels are all we have
        elif by_label[f]["source"] == "reference_label":
            # Shown beside the text name: two independent readings of the same feature.
            names[f]["reference_label"] = by_label[f]["name"]
            names[f]["reference_share"] = by_label[f]["share"]
    return names


def _name_by_reference_label(labels: list[str]) -> dict:
    """The majority label of one feature's top reference images, with its share."""
    labels = [str(label) for label in labels if label is not None and str(label) != "" and str(label) != "nan"]
    if not labels:
        return {"name": "", "source": "none", "words": []}
    # Counter keeps first-seen order among equal counts, so ties go to the higher-ranked image.
    counts = Counter(labels).most_common()
    label, count = counts[0]
    share = count / len(labels)
    return {
        "name": label,
        "source": "reference_label",
        "words": [(lab, c / len(labels)) for lab, c in counts],
        "share": share,
        "n_images": len(labels),
    }


def _name_by_text(
    features: list[int],
    top_images: dict[int, list[str]],
    all_images_sample: Sequence[str] | None,
    clip,
    words: list[str],
    top_words: int,
    template: str | Sequence[str],
    batch_size: int,
    known_embeddings: Mapping[str, np.ndarray] | None = None,
    text_cache: Callable[[list[str]], Path | None] | None = None,
) -> dict[int, dict]:
    """Top vocabulary words per feature by cosine of (top - background) with centred prompts."""
    from thumbsae.activations import encode_text, image_embeddings
    from thumbsae.activations.store import cached_array

    templates = [template] if isinstance(template, str) else list(template)
    # Prompt ensembling: each word's text embedding is the mean over the templates, renormalised.
    prompts = [t.format(w) for t in templates for w in words]
    cache = text_cache(prompts) if text_cache is not None else None
    prompts_TWE = np.asarray(
        cached_array(cache, len(prompts), lambda: encode_text(clip, prompts)), dtype=np.float64
    ).reshape(len(templates), len(words), -1)
    prompts_WE = prompts_TWE.mean(axis=0)
    prompts_WE /= np.maximum(np.linalg.norm(prompts_WE, axis=1, keepdims=True), 1e-12)
    # Centring removes what "a photo of ..." shares, so words differ only by their content.
    prompts_WE = prompts_WE - prompts_WE.mean(axis=0, keepdims=True)
    prompts_WE /= np.maximum(np.linalg.norm(prompts_WE, axis=1, keepdims=True), 1e-12)

    # Each distinct image is embedded once, in first-seen order, however many features share it.
    paths = list(dict.fromkeys(str(p) for f in features for p in top_images.get(f, [])))
    background = list(dict.fromkeys(str(p) for p in all_images_sample)) if all_images_sample else paths
    order = list(dict.fromkeys(paths + background))
    if not order:
        return {f: {"name": "", "source": "none", "words": []} for f in features}
    row = {p: i for i, p in enumerate(order)}
    known = known_embeddings or {}
    missing = [p for p in order if p not in known]
    embedded = dict(zip(missing, _embed_paths(clip, missing, image_embeddings, batch_size))) if missing else {}
    images_NE = np.stack([np.asarray(known[p] if p in known else embedded[p], dtype=np.float64) for p in order])
    background_E = images_NE[[row[p] for p in background]].mean(axis=0)

    names: dict[int, dict] = {}
    for f in features:
        members = [row[str(p)] for p in top_images.get(f, [])]
        if not members:
            names[f] = {"name": "", "source": "none", "words": []}
            continue
        direction_E = images_NE[members].mean(axis=0) - background_E
        norm = np.linalg.norm(direction_E)
        if norm < 1e-12:
            names[f] = {"name": "", "source": "none", "words": []}
            continue
        scores_W = prompts_WE @ (direction_E / norm)
        # Stable sort on -score keeps vocabulary order among exact ties.
        best = np.argsort(-scores_W, kind="stable")[:top_words]
        chosen = [(words[i], round(float(scores_W[i]), 6)) for i in best]
        names[f] = {"name": ", ".join(w for w, _ in chosen), "source": "text", "words": chosen}
    return names


def _embed_paths(clip, paths: list[str], image_embeddings, batch_size: int) -> np.ndarray:
    """`[N, E]` float64 embeddings of the images at `paths`, decoded and embedded a batch at a time."""
    from thumbsae.data.images import load_rgb

    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [load_rgb(p) for p in paths[start : start + batch_size]]
        chunks.append(np.asarray(image_embeddings(clip, batch), dtype=np.float64))
    return np.concatenate(chunks, axis=0)
