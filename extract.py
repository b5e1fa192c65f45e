"""Extract CLIP activations of an image set into a shard store (the DVC `extract_*` stages).

    python extract.py source=data/world/reference.csv kind=images out=data/stores/train

Composes conf/extract.yaml and runs `thumbsae.tasks.extract.extract_store`.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from thumbsae.console import quiet_third_party
from thumbsae.errors import ThumbsaeError


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    quiet_third_party()  # hydra.verbose=true shows third-party logs and warnings
    from thumbsae.tasks.embedded import ensure_world, ensure_world_clip
    from thumbsae.tasks.extract import extract_store

    try:
        ensure_world(cfg)
        ensure_world_clip(cfg)
        out = Path(cfg.out)
        store, _ = extract_store(cfg, cfg.source, kind=cfg.kind, rejects_path=out.parent / f"{out.name}_rejects.csv", out_dir=out)
    except ThumbsaeError as err:
        print(f"extract.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {store.path}: {store.n} rows x {store.d}")


if __name__ == "__main__":
    main()
