"""Apply an SAE to thumbnails with view counts and find the features that go with views.

    python evaluate.py sae_dir=RUN/sae data.thumbnails=MANIFEST data.reference=IMAGES hydra.run.dir=OUT
    python evaluate.py eval=study ...        # the published study's exact statistics

Composes conf/evaluate.yaml and runs `thumbsae.tasks.evaluate.evaluate`.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from thumbsae.console import quiet_third_party
from thumbsae.errors import ThumbsaeError


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    quiet_third_party()  # hydra.verbose=true shows third-party logs and warnings
    from thumbsae.tasks.evaluate import evaluate

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = evaluate(cfg, out_dir)
    except ThumbsaeError as err:
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(
        f"wrote {out_dir}: {summary['n_features_tested']} features tested, "
        f"selection_null_p={summary['selection_null_p']:.4g}"
    )


if __name__ == "__main__":
    main()
