"""Train a sparse autoencoder on CLIP vision activations.

    python train.py data.train=IMAGES hydra.run.dir=RUN      # writes RUN/sae/
    python train.py -m sae.expansion_factor=8,16,32,64      # one run per size

Composes conf/train.yaml, runs `thumbsae.tasks.train.train`, always closes the loggers.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from thumbsae.console import quiet_third_party
from thumbsae.errors import ThumbsaeError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    quiet_third_party()  # hydra.verbose=true shows third-party logs and warnings
    from thumbsae.tasks.train import train

    try:
        sae_dir = train(cfg, HydraConfig.get().runtime.output_dir)
    except ThumbsaeError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {sae_dir}")


if __name__ == "__main__":
    main()
