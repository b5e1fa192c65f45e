"""Apply an SAE to thumbnails with view counts and find the features that go with views.

    python evaluate.py sae_dir=RUN/sae data.thumbnails=MANIFEST data.reference=IMAGES hydra.run.dir=OUT
    python evaluate.py eval=study ...        # the published study's exact statistics

Composes conf/evaluate.yaml and runs `thumbsae.tasks.evaluate.evaluate`.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from thumbsae.tasks.entry import check_command_line, run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()

    def task() -> str:
        from thumbsae.files import shown_path
        from thumbsae.tasks.evaluate import evaluate

        out_dir = hydra_cfg.runtime.output_dir
        summary = evaluate(cfg, out_dir, overrides=list(hydra_cfg.overrides.task))
        lines = [(f"wrote {shown_path(out_dir)}: {summary['n_features_tested']} features tested, "
                  f"selection_null_p={summary['selection_null_p']:.4g}")]
        if cfg.get("engagement_model", True):
            lines.append(f"next: thumbsae rank VIDEO --sae {shown_path(summary['sae_dir'])} "
                         f"--model {shown_path(Path(out_dir) / 'engagement_model')} --out DIR")
        return "\n".join(lines)

    run_task("evaluate.py", task)


if __name__ == "__main__":
    check_command_line("evaluate.py", "evaluate")
    main()
