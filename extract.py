"""Extract CLIP activations of an image set into a shard store (the DVC `extract_*` stages).

    python extract.py source=data/world/reference.csv kind=images out=data/stores/train
    torchrun --nproc-per-node N extract.py ...     # N processes share the shards of one store

Composes conf/extract.yaml and runs `thumbsae.tasks.extract.extract`.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from thumbsae.tasks.entry import check_command_line, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)

    def task() -> str:
        from thumbsae.tasks.extract import extract

        store, is_main = extract(cfg, overrides)
        return f"wrote {store.path}: {store.n} rows x {store.d}" if is_main else ""

    run_task("extract.py", task)


if __name__ == "__main__":
    check_command_line("extract.py", "extract")
    main()
