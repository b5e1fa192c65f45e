"""Train a sparse autoencoder on CLIP vision activations.

    python train.py data.train=IMAGES hydra.run.dir=RUN      # writes RUN/sae/
    python train.py -m sae.expansion_factor=8,16,32,64      # one run per size

Composes conf/train.yaml, runs `thumbsae.tasks.train.train`; the loggers are always closed.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from thumbsae.tasks.entry import check_command_line, override_arg, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()

    def task() -> str:
        from thumbsae.files import shown_path
        from thumbsae.tasks.train import train

        sae_dir = shown_path(train(cfg, hydra_cfg.runtime.output_dir, overrides=list(hydra_cfg.overrides.task)))
        return f"wrote {sae_dir}\nnext: python evaluate.py {override_arg('sae_dir', sae_dir)}"

    run_task("train.py", task)


if __name__ == "__main__":
    check_command_line("train.py", "train")
    main()
