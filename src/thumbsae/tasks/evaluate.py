"""Apply an SAE to thumbnails with views and find the features that go with views (`python evaluate.py`).

Writes, under the run folder (the README's "What it writes" table): `feature_groups.csv`,
`summary.json`, `panels/` (PNGs + `index.html`), `engagement_model/`, plus `top_and_bottom_groups.csv`,
`recovery.json` (on a world), `latents_thumbnails.npz`, `plots/` and the rejects CSVs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from thumbsae.activations.config import ClipConfig, HookConfig
from thumbsae.config import Seed, build, refuse_overrides, setting, to_plain
from thumbsae.console import StageProgress
from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_write_text, key_digest
from thumbsae.tasks.embedded import ensure_world
from thumbsae.tasks.extract import extract_store
from thumbsae.tasks.loggers import closing_loggers, make_loggers
from thumbsae.tasks.sae_source import HOOK_KEYS, hook_defaults, refuse_hook_settings


def resolve_sae_dir(cfg: DictConfig, overrides: Sequence[str]) -> Path:
    """`sae_dir`, or the embedded SAE: trained first, in this process and with this config's training
    groups, into `default_sae_run` when it is not there yet.

    Training settings (`sae.*`, `trainer.*`, ...) given with an existing SAE would be ignored, so they
    are refused in one line.
    """
    from thumbsae.tasks.train import TRAIN_GROUPS, train

    if cfg.get("sae_dir"):
        refuse_overrides(overrides, TRAIN_GROUPS, why=f"sae_dir={cfg.sae_dir} is an SAE that is already trained")
        return Path(cfg.sae_dir)
    run = Path(cfg.default_sae_run)
    if (run / "sae" / "config.json").exists():
        refuse_overrides(overrides, TRAIN_GROUPS, why=f"the embedded SAE in {run} is already trained; train a new one with train.py")
        return run / "sae"
    print(f"no sae_dir given: training the embedded SAE into {run} (sae_dir=RUN/sae evaluates one you trained)")
    return train(cfg, run)


def hook_from_sae(cfg: DictConfig, sae_config: dict, overrides: Sequence[str]) -> tuple[ClipConfig, HookConfig]:
    """The CLIP model and hook an SAE was trained on, with this run's storage settings
    (`activations.dtype`, `cache_dir`, stores)."""
    refuse_hook_settings(sae_config, overrides)
    clip_cfg = build({"_target_": "thumbsae.activations.config.ClipConfig", **sae_config["clip"]}, "clip (SAE config)")
    hook_values = {**to_plain(cfg.activations), **{k: sae_config["hook"][k] for k in HOOK_KEYS}}
    return clip_cfg, build(hook_values, "activations")


def align(table: pd.DataFrame, video_ids: list[str]) -> pd.DataFrame:
    """Rows of `table` in the order of `video_ids` (the store's images)."""
    indexed = table.set_index("video_id", drop=False)
    return indexed.loc[list(video_ids)].reset_index(drop=True)


def evaluate(cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Run the whole evaluation; returns the summary written to `out_dir/summary.json`.

    overrides: the command line's Hydra overrides, to refuse the ones this run would not use.
    Every setting is checked before the first expensive step.
    """
    from thumbsae.analysis.latents import encode_latents, save_latents
    from thumbsae.analysis.recovery import world_recovery
    from thumbsae.analysis.study import run_feature_study, write_study
    from thumbsae.jsonable import to_json_ready
    from thumbsae.sae import load_sae

    setting(cfg, "seed", Seed)  # checked now, used when the engagement model is fitted
    setting(cfg, "strict", bool)  # `strict=maybe` named as typed, before data.strict inherits it
    data = build(cfg.data, "data")
    eval_cfg = build(cfg.eval, "eval")
    eng_cfg = build(cfg.engagement, "engagement")
    build(cfg.activations, "activations")
    for key in ("thumbnails", "reference"):
        if not getattr(data, key):
            raise ThumbsaeError(f"data.{key}: not set; pass data.{key}=IMAGES (a manifest or a folder)")
    ensure_world(cfg, [data.thumbnails, data.reference], overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sae_dir = resolve_sae_dir(cfg, overrides)
    sae, sae_config = load_sae(sae_dir, hook_defaults=hook_defaults(cfg, overrides))
    clip_cfg, hook = hook_from_sae(cfg, sae_config, overrides)
    clip = clip_cfg.load()

    thumb_store, thumbnails = extract_store(
        data.thumbnails, kind="thumbnails", hook=hook, clip_cfg=clip_cfg, strict=data.strict,
        rejects_path=out_dir / "rejects.csv", clip=clip, out_dir=hook.thumbnails_store,
    )
    ref_store, reference = extract_store(
        data.reference, kind="reference", hook=hook, clip_cfg=clip_cfg, strict=data.strict,
        rejects_path=out_dir / "rejects_reference.csv", clip=clip, out_dir=hook.reference_store,
    )
    fit_engagement = bool(cfg.get("engagement_model", True))
    report = bool(cfg.get("report", True))
    steps = ["encode latents", "feature study"]
    steps += ["embed thumbnails", "name features", "engagement model"] if fit_engagement else ["name features"]
    steps += ["report"] if report else []
    with StageProgress(steps, "evaluate") as step:
        step("encode latents")
        thumb_latents = encode_latents(sae, thumb_store, pool=eval_cfg.pool)
        ref_latents = encode_latents(sae, ref_store, pool=eval_cfg.pool)
        save_latents(thumb_latents, out_dir / "latents_thumbnails.npz")
        thumbnails = align(thumbnails, thumb_latents.video_ids)
        reference = align(reference, ref_latents.video_ids)

        step("feature study")
        result = run_feature_study(thumb_latents.csr, thumbnails, eval_cfg)
        feature_groups = result.feature_groups
        recovery, warning = world_recovery(result, thumb_latents.csr, thumbnails, eval_cfg,
                                           Path(data.thumbnails).parent / "ground_truth.json")

        embeddings = None
        if fit_engagement:
            # Every thumbnail's final CLIP embedding: the ridge baseline's input, also used by the names.
            step("embed thumbnails")
            embeddings = final_embeddings(clip, thumbnails["image"].tolist(), fit=hook.fit,
                                          cache=embeddings_cache(hook, thumb_store, thumbnails["video_id"]))

        step("name features")
        side_features = [int(f) for f in feature_groups.loc[feature_groups["side"].isin(["high", "low"]), "feature"]]
        known = None if embeddings is None else dict(zip(thumbnails["image"].astype(str), embeddings))
        names = name_side_features(side_features, feature_groups, thumbnails, reference, ref_latents.csr, clip,
                                   known_embeddings=known, text_cache=text_embeddings_cache(hook, thumb_store))
        feature_groups["name"] = [names.get(int(f), {}).get("name", "") for f in feature_groups["feature"]]
        summary = write_study(result, out_dir)
        summary["feature_names"] = sorted({v.get("source", "none") for v in names.values()}) or ["none"]
        if warning:
            print(f"evaluate.py: warning: {warning}")
        if recovery is not None:
            atomic_write_text(out_dir / "recovery.json", json.dumps(recovery, indent=2, sort_keys=True) + "\n")
            summary["recovery"] = {k: v for k, v in recovery.items() if not isinstance(v, (list, dict))}

        if fit_engagement:
            step("engagement model")
            summary["predictor"] = fit_and_save_engagement_model(
                cfg, eng_cfg, out_dir / "engagement_model", thumb_latents.csr, thumbnails, embeddings, feature_groups, names,
                eval_cfg
            )

        summary["sae_dir"] = str(sae_dir)
        summary["clip"] = sae_config["clip"]
        summary["hook"] = sae_config["hook"]
        atomic_write_text(out_dir / "summary.json", json.dumps(to_json_ready(summary), indent=2, sort_keys=True) + "\n")

        if report:
            from thumbsae.report.panels import write_panels
            from thumbsae.report.plots import write_plots

            step("report")
            write_panels(
                out_dir / "panels", feature_groups, thumbnails, reference, ref_latents.csr, names,
                stat_label=f"group {eval_cfg.statistic}",
            )
            write_plots(out_dir / "plots", feature_groups, result.nulls, summary)
            loggers = make_loggers(cfg.get("logger"), out_dir, name=f"evaluate-{Path(sae_dir).parent.name}",
                                   group=cfg.get("experiment_name"))
            with closing_loggers(loggers):
                from thumbsae.report.wandb_log import log_evaluation

                log_evaluation(loggers, out_dir / "panels", feature_groups, summary)
    return summary


def final_embeddings(clip, paths: list[str], *, fit: str, cache: Path | None = None, chunk: int = 256) -> np.ndarray:
    """[N, E] normalised final CLIP image embeddings (the ridge baseline's input), in chunks.

    cache: a `.npy` file named by `embeddings_cache` (the images' store and order). When it holds
    a float32 `[N, E]` array that is returned; otherwise the embeddings are computed and written
    there (temporary name, then rename), so evaluating several SAEs on the same thumbnails runs the
    full CLIP tower over them once.
    """
    from thumbsae.activations import image_embeddings
    from thumbsae.activations.store import cached_array
    from thumbsae.data import load_rgb

    def compute() -> np.ndarray:
        return np.concatenate([
            image_embeddings(clip, [load_rgb(p) for p in paths[i : i + chunk]], fit=fit) for i in range(0, len(paths), chunk)
        ], axis=0)

    return cached_array(cache, len(paths), compute)


def embeddings_cache(hook: HookConfig, store, video_ids: Sequence[str]) -> Path | None:
    """Where `final_embeddings` keeps the embeddings of `video_ids` (in that order) of `store`'s
    images: under `activations.cache_dir/embeddings/`, named by the store's content hash (the
    images' bytes, the CLIP model and its preprocessing) and the ids. None for a store without one."""
    store_hash = store.metadata.get("content_hash")
    if not store_hash:
        return None
    key = {"what": "final CLIP image embeddings, L2-normalised", "store": store_hash, "fit": hook.fit,
           "video_ids": [str(v) for v in video_ids]}
    return Path(hook.cache_dir) / "embeddings" / f"{key_digest(key, 20)}.npy"


def text_embeddings_cache(hook: HookConfig, store) -> Callable[[list[str]], Path | None]:
    """Prompts -> where `name_features` keeps their text embeddings: under
    `activations.cache_dir/text/`, named by the CLIP that `store` was extracted with (its name,
    pretrained tag or path, weights' sha256, overrides, seed) and the prompts. None for a store
    that does not record its CLIP."""
    model = store.metadata.get("model")

    def cache(prompts: list[str]) -> Path | None:
        if not isinstance(model, dict):
            return None
        key = {"what": "CLIP text embeddings, L2-normalised", "model": model, "prompts": list(prompts)}
        return Path(hook.cache_dir) / "text" / f"{key_digest(key, 20)}.npy"

    return cache


def name_side_features(
    features, feature_groups, thumbnails, reference, ref_csr, clip, *, known_embeddings=None, text_cache=None
) -> dict[int, dict]:
    """Names for the high/low features from their top thumbnails (text tower) or reference labels.
    known_embeddings: image path -> final CLIP embedding already computed (not embedded again);
    text_cache: prompts -> the file that keeps their text embeddings (`text_embeddings_cache`)."""
    from thumbsae.analysis.names import name_features

    image_of = dict(zip(thumbnails["video_id"], thumbnails["image"]))
    members = dict(zip(feature_groups["feature"].astype(int), feature_groups["members"]))
    top_images = {f: [image_of[v] for v in str(members[f]).split(";")[:11] if v in image_of] for f in features}
    labels = {}
    if "label" in reference.columns:
        csc = ref_csr.tocsc()
        for f in features:
            col = csc.getcol(f)
            order = np.argsort(-col.data, kind="stable")[:11]
            labels[f] = [str(reference["label"].iloc[i]) for i in col.indices[order]]
    sample = thumbnails["image"].iloc[:: max(1, len(thumbnails) // 256)].tolist()
    return name_features(
        features, top_images=top_images, all_images_sample=sample, clip=clip if clip.has_text else None,
        reference_labels=labels, known_embeddings=known_embeddings, text_cache=text_cache,
    )


def fit_and_save_engagement_model(cfg, eng_cfg, model_dir, csr, thumbnails, embeddings, feature_groups, names, eval_cfg) -> dict:
    """Fit the engagement model (`engagement.*`) on the thumbnails' target, save it with its features'
    info, and measure how calibrated its pairwise probabilities are on held-out channels."""
    from thumbsae.analysis.engagement import engagement_target, fit_engagement_model
    from thumbsae.analysis.engagement.pairs import held_out_pair_calibration
    from thumbsae.report.plots import write_pair_calibration

    seed = int(cfg.seed)
    target = engagement_target(thumbnails)
    model, metrics = fit_engagement_model(
        csr, target.values, groups=target.groups, baseline_embeddings=embeddings, seed=seed,
        target_kind=target.kind, config=eng_cfg,
    )
    # rank pools a still's token latents the way the model was fitted.
    model.metrics["pool"] = metrics["pool"] = eval_cfg.pool
    image_of = dict(zip(thumbnails["video_id"], thumbnails["image"]))
    info = {}
    for row in feature_groups.itertuples(index=False):
        f = int(row.feature)
        info[f] = {
            "name": names.get(f, {}).get("name", ""),
            "lift": float(row.lift),
            "q_value": float(row.q_value),
            "side": str(row.side) if isinstance(row.side, str) else "",
            "examples": [image_of[v] for v in str(row.members).split(";")[:6] if v in image_of],
        }
    model.save(model_dir, feature_info=info)
    if "channel_id" in thumbnails.columns and getattr(model, "pair_curve", None) is not None:
        calib = held_out_pair_calibration(model, csr, thumbnails, seed=seed, config=eng_cfg)
        metrics["pair_calibration"] = calib.summary()
        if cfg.get("report", True):
            write_pair_calibration(Path(model_dir).parent / "plots", calib.table, ece=calib.ece, max_gap=calib.max_gap,
                                   truth=calib.truth)
    return metrics
