"""What the `data` group builds: the image sets a run reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSets:
    """Image sets (Hydra `data.*`): each a manifest (CSV/Parquet) or a folder of images.

    train: images whose activations train the SAE. thumbnails: thumbnails with `views`, studied by
    evaluate. reference: reference images (the study's ImageNet side of a panel). strict: any
    rejected row is a failure (non-zero exit) instead of a row in the rejects file.
    """

    train: str | None = None
    thumbnails: str | None = None
    reference: str | None = None
    strict: bool = False
