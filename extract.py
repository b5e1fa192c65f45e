"""Extract CLIP activations of an image set into a shard store (the DVC `extract_*` stages).

    python extract.py source=data/world/reference.csv kind=images out=data/stores/train

Composes conf/extract.yaml and runs `thumbsae.tasks.extract.extract`.
"""

import sys

import hydra
from omegaconf import DictConfig

from thumbsae.errors import ThumbsaeError


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    from thumbsae.tasks.extract import extract

    try:
        store = extract(cfg)
    except ThumbsaeError as err:
        print(f"extract.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {store.path}: {store.n} rows x {store.d}")


if __name__ == "__main__":
    main()
