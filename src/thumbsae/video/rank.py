"""Score candidate stills by predicted engagement and explain each score by SAE features.

CLIP -> SAE -> engagement model with exactly the preprocessing of training: the SAE's
`config.json` names the CLIP model, the hooked layer and token and the image fit, and the SAE
applies its own input scaling. `run_rank` is `thumbsae rank`: it writes `ranking.json` (best
first), the stills, the features' example thumbnails and `report.html` into a temporary folder
beside `out_dir` and renames it into place only when everything is written.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.sparse as sp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from thumbsae.errors import ThumbsaeError
from thumbsae.video.candidates import CandidateSearch, Still, draft_stills, find_candidates, time_code
from thumbsae.video.config import VideoConfig
from thumbsae.video.decode import VideoReader

STILLS_DIR = "stills"
EXAMPLES_DIR = "examples"


@dataclass(frozen=True, eq=False)
class RankedStill:
    """A still with its predicted score, interval and the features behind the score.

    up / down: `{feature, contribution, activation, name?}` pushing the score up (largest first)
    and down (most negative first); `contributions`: every active used feature's contribution,
    keyed by feature (they sum to `score - intercept`). beats: P(this still beats the still at
    each position of the ranking), in ranking order, or None when the engagement model carries
    no pairwise uncertainty (a model folder written before it did).
    """

    still: Still
    score: float
    lo: float
    hi: float
    up: list[dict]
    down: list[dict]
    contributions: dict[int, float]
    beats: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class StillScorer:
    """The loaded CLIP, SAE and engagement model, and how activations are taken and pooled."""

    clip: Any  # thumbsae.activations.LoadedCLIP
    sae: Any  # thumbsae.sae.SparseAutoencoder
    model: Any  # thumbsae.analysis.engagement.EngagementModel
    layer: int
    tokens: str
    fit: str
    pool: str
    batch_size: int = 32

    @classmethod
    def load(cls, sae_dir: Path, model_dir: Path, cfg: VideoConfig = VideoConfig(), hook_defaults: dict | None = None) -> StillScorer:
        """Load `sae_dir` (an SAE folder), the CLIP it names, and `model_dir` (an engagement model).

        Raises `ThumbsaeError` naming the folder and what is wrong with it.
        """
        from thumbsae.activations import load_clip
        from thumbsae.analysis.engagement import EngagementModel
        from thumbsae.sae import load_sae

        sae_dir, model_dir = Path(sae_dir), Path(model_dir)
        if not sae_dir.is_dir():
            raise ThumbsaeError(f"--sae {sae_dir}: no such SAE folder")
        if not model_dir.is_dir():
            raise ThumbsaeError(f"--model {model_dir}: no such engagement model folder")
        try:
            sae, sae_config = load_sae(sae_dir, hook_defaults=hook_defaults)
            hook = dict(sae_config["hook"])
            clip_cfg = dict(sae_config["clip"])
            layer, tokens, fit = int(hook["layer"]), str(hook["tokens"]), str(hook["fit"])
        except ThumbsaeError:
            raise
        except Exception as err:  # any unreadable file or missing key becomes one line
            raise ThumbsaeError(f"--sae {sae_dir}: not a usable SAE folder ({_short(err)})") from None
        accepted = inspect.signature(load_clip).parameters
        notice = _RandomWeightsNotice()
        logging.getLogger().addFilter(notice)
        try:
            clip = load_clip(**{k: v for k, v in clip_cfg.items() if k in accepted})
        except ThumbsaeError:
            raise
        except Exception as err:
            raise ThumbsaeError(f"--sae {sae_dir}: cannot load the CLIP it names ({_short(err)})") from None
        finally:
            logging.getLogger().removeFilter(notice)
        model = EngagementModel.load(model_dir)
        n_latents = int(getattr(sae, "n_latents", None) or sae.cfg.n_latents)
        if model.n_latents != n_latents:
            raise ThumbsaeError(
                f"--model {model_dir}: expects {model.n_latents} latents but the SAE in {sae_dir} has "
                f"{n_latents}; pass the engagement model evaluated with this SAE"
            )
        # video.pool if set, else the pooling the model was fitted with, else max.
        pool = cfg.pool or _model_pool(model) or "max"
        return cls(clip, sae, model, layer, tokens, fit, pool, cfg.batch_size)

    @property
    def score_kind(self) -> str:
        return str(self.model.target_kind)

    def latents(self, images: Sequence[Any]) -> sp.csr_matrix:
        """SAE latents of PIL images, pooled per image: csr float32 `[N, F]`."""
        from thumbsae.activations import embed_images
        from thumbsae.analysis.latents import encode_latents

        acts = embed_images(
            self.clip, list(images), layer=self.layer, tokens=self.tokens, fit=self.fit,
            batch_size=self.batch_size,
        )  # [N, D] or [N, T, D]
        return encode_latents(self.sae, acts, pool=self.pool).csr

    def rank(self, stills: Sequence[Still], top_features: int = 5) -> list[RankedStill]:
        """Score `stills` and return them best first (ties: earlier time, then name)."""
        if not stills:
            return []
        from thumbsae.analysis.engagement.pairs import beat_probabilities

        latents_NF = sp.csr_matrix(self.latents([s.image for s in stills]))
        score_N, lo_N, hi_N = self.model.predict(latents_NF)
        has_pairs = getattr(self.model, "pair_curve", None) is not None
        p_NN = beat_probabilities(self.model, latents_NF) if has_pairs else None
        ranked = []
        for i, still in enumerate(stills):
            row = latents_NF[i]
            up, down = self.model.contributions(row, top=None)
            every = {int(e["feature"]): float(e["contribution"]) for e in up + down}
            ranked.append(
                RankedStill(
                    still, float(score_N[i]), float(lo_N[i]), float(hi_N[i]),
                    up[:top_features], down[:top_features], every,
                )
            )
        order = sorted(
            range(len(ranked)), key=lambda i: (-ranked[i].score, _time_key(ranked[i].still), ranked[i].still.name)
        )
        if p_NN is None:
            return [ranked[i] for i in order]
        return [
            dataclasses.replace(ranked[i], beats=tuple(float(p_NN[i, j]) for j in order)) for i in order
        ]


def rank_stills(stills: Sequence[Still], scorer: StillScorer, cfg: VideoConfig = VideoConfig()) -> list[RankedStill]:
    """Stills scored by `scorer`, best first, each with its `cfg.top_features` reasons per side."""
    return scorer.rank(stills, cfg.top_features)


def pair_verdict(p: float, threshold: float, *, better: str = "#1", worse: str = "#2") -> str:
    """The words for "how sure is `better` beats `worse`": "#1 beats #2 with probability 0.71"
    when p >= threshold (`video.close_call`), else "too close to call"."""
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ThumbsaeError(f"pair_verdict: p must be a probability in [0, 1], got {p!r}")
    if not (isinstance(threshold, (int, float)) and 0.5 <= threshold <= 1.0):
        raise ThumbsaeError(f"video.close_call={threshold!r}: must be a probability in [0.5, 1]")
    if p < threshold:
        return "too close to call"
    return f"{better} beats {worse} with probability {p:.2f}"


def why_beats(better: RankedStill, worse: RankedStill, top: int = 5) -> list[dict]:
    """The features that most separate two stills' scores: `{feature, difference, better, worse}`
    by largest positive difference first (the score gap is the sum of all differences)."""
    features = set(better.contributions) | set(worse.contributions)
    rows = [
        {
            "feature": f,
            "difference": better.contributions.get(f, 0.0) - worse.contributions.get(f, 0.0),
            "better": better.contributions.get(f, 0.0),
            "worse": worse.contributions.get(f, 0.0),
        }
        for f in sorted(features)
    ]
    rows.sort(key=lambda r: (-r["difference"], r["feature"]))
    return [r for r in rows if r["difference"] > 0][:top]


def _time_key(still: Still) -> float:
    return still.time_s if still.time_s is not None else 0.0


def _model_pool(model: Any) -> str | None:
    pool = getattr(model, "pool", None) or (getattr(model, "metrics", {}) or {}).get("pool")
    return pool if pool in ("max", "mean") else None


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _round(value: float) -> float:
    return float(round(value, 6))


def _copy_examples(model: Any, features: set[int], out_dir: Path, per_feature: int) -> dict[int, list[str]]:
    """Copy up to `per_feature` example thumbnails of each feature into `out_dir/examples/`.

    Returns feature -> paths relative to `out_dir`. Only files inside the model folder are copied
    (its config could name any path).
    """
    root = Path(model.path).resolve() if getattr(model, "path", None) else None
    copied: dict[int, list[str]] = {}
    for feature in sorted(features):
        rels = []
        for j, src in enumerate(model.examples(feature)[:per_feature]):
            src = Path(src).resolve()
            if root is None or not src.is_relative_to(root) or not src.is_file():
                continue
            rel = f"{EXAMPLES_DIR}/f{feature}_{j}{src.suffix.lower()}"
            (out_dir / EXAMPLES_DIR).mkdir(exist_ok=True)
            shutil.copyfile(src, out_dir / rel)
            rels.append(rel)
        copied[feature] = rels
    return copied


def ranking_records(
    ranked: Sequence[RankedStill],
    *,
    out_dir: Path,
    scorer: StillScorer,
    work_dir: Path,
    cfg: VideoConfig = VideoConfig(),
    channel_id: str | None = None,
    video_name: str | None = None,
) -> list[dict]:
    """Write the stills and example thumbnails into `work_dir`; return the `ranking.json` records.

    `image` is the still's absolute path under the final `out_dir`, `image_file` the same path
    relative to it (what the report links); `source` is the video's file name for a video still
    and the draft's path inside its folder for a draft.
    """
    (work_dir / STILLS_DIR).mkdir(exist_ok=True)
    names = _feature_names(scorer.model)
    features = {int(e["feature"]) for r in ranked for e in r.up + r.down}
    examples = _copy_examples(scorer.model, features, work_dir, cfg.examples_per_feature)
    interval = float(getattr(scorer.model, "interval", 0.8))
    out_abs = Path(out_dir).resolve()
    records = []
    for rank, item in enumerate(ranked, start=1):
        still = item.still
        image_file = f"{STILLS_DIR}/rank{rank:02d}.jpg"
        still.image.save(work_dir / image_file, format="JPEG", quality=cfg.jpeg_quality)
        reasons = [dict(e, direction="up") for e in item.up] + [dict(e, direction="down") for e in item.down]
        reasons.sort(key=lambda e: (-abs(e["contribution"]), e["feature"]))
        record = {
            "rank": rank,
            "time_s": still.time_s,
            "timecode": None if still.time_s is None else time_code(still.time_s),
            "source": still.name if still.time_s is None or video_name is None else video_name,
            "image": str(out_abs / image_file),
            "image_file": image_file,
            "frame_index": still.frame_index,
            "shot_index": still.shot_index,
            "quality": _round(still.quality),
            "score": _round(item.score),
            "score_lo": _round(item.lo),
            "score_hi": _round(item.hi),
            "interval": interval,
            "score_kind": scorer.score_kind,
            "channel_id": channel_id,
            "features": [
                {
                    "feature": int(e["feature"]),
                    "contribution": _round(e["contribution"]),
                    "direction": e["direction"],
                    "activation": _round(e.get("activation", 0.0)),
                    "name": names.get(int(e["feature"])),
                    "examples": examples.get(int(e["feature"]), []),
                }
                for e in reasons
            ],
        }
        record.update(_pair_fields(ranked, rank, cfg.close_call))
        if rank < len(ranked):
            record["beats_next"] = [
                {k: (_round(v) if isinstance(v, float) else v) for k, v in row.items()}
                | {"name": names.get(row["feature"])}
                for row in why_beats(item, ranked[rank], cfg.top_features)
            ]
        records.append(record)
    return records


def _pair_fields(ranked: Sequence[RankedStill], rank: int, close_call: float) -> dict:
    """`p_better_than_next` (null for the last), `p_first_beats` (null for #1) and their verdicts
    `verdict_next` / `verdict_first` for the still at 1-based `rank`; all null without pairwise
    uncertainty in the model."""
    item, first = ranked[rank - 1], ranked[0]
    p_next = item.beats[rank] if item.beats is not None and rank < len(ranked) else None
    p_first = first.beats[rank - 1] if first.beats is not None and rank > 1 else None
    next_words = None if p_next is None else pair_verdict(p_next, close_call, better=f"#{rank}", worse=f"#{rank + 1}")
    first_words = None if p_first is None else pair_verdict(p_first, close_call, better="#1", worse=f"#{rank}")
    return {
        "p_better_than_next": None if p_next is None else _round(p_next),
        "p_first_beats": None if p_first is None else _round(p_first),
        "verdict_next": next_words,
        "verdict_first": first_words,
    }


def _feature_names(model: Any) -> dict[int, str]:
    info = getattr(model, "feature_info", {}) or {}
    return {int(f): str(v["name"]) for f, v in info.items() if isinstance(v, dict) and v.get("name")}


def _progress(enabled: bool) -> Progress:
    # Transient, on stderr, and only on a terminal: stdout stays clean, and an error (or a log
    # file) shows just its one line.
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    )


class _RandomWeightsNotice(logging.Filter):
    """Drops open_clip's warning that no pretrained weights were loaded: an SAE trained on a
    random-weight CLIP (the embedded default) names exactly that model, so it is no news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _check_out_dir(out_dir: Path, source: Path) -> None:
    """Refuse an output folder whose replacement would destroy something that is not ours."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ThumbsaeError(f"--out {out_dir}: exists and is not a folder")
    if source.resolve() == out_dir.resolve() or source.resolve().is_relative_to(out_dir.resolve()):
        raise ThumbsaeError(f"--out {out_dir}: holds {source} itself; choose another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "ranking.json").is_file():
        # The folder is replaced as a whole, so only an earlier ranking may be overwritten.
        raise ThumbsaeError(
            f"--out {out_dir}: exists and is not an earlier ranking (no ranking.json); "
            "choose a new or empty folder"
        )
    for parent in out_dir.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ThumbsaeError(f"--out {out_dir}: cannot create it, {parent} is not a folder")
            break


def _missing_ancestors(path: Path) -> list[Path]:
    """Folders above `path` that do not exist yet, deepest first."""
    missing = []
    for parent in path.resolve().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def run_rank(
    source: Path,
    *,
    sae_dir: Path,
    model_dir: Path,
    out_dir: Path,
    n_candidates: int = 24,
    channel_id: str | None = None,
    progress: bool = True,
    cfg: VideoConfig | None = None,
    hook_defaults: dict | None = None,
) -> list[dict]:
    """`thumbsae rank`: pick candidate stills of `source`, rank them, write `out_dir`.

    hook_defaults: the CLIP and hook of an SAE folder that does not name them (`load_sae`).

    source: a video file, or a folder of images (drafts: each ranked, none filtered).
    Writes `out_dir/ranking.json` (list, best first: `rank, time_s, timecode, source, image,
    image_file, score, score_lo, score_hi, features [{feature, contribution, direction, name,
    examples}], p_better_than_next, p_first_beats, verdict_next, verdict_first, beats_next,
    ...`), `out_dir/report.html`, `stills/` and `examples/`; an existing `out_dir` is replaced
    only when all of it is written. Returns the records. Raises
    `ThumbsaeError` (bad video, bad folders, unwritable output) leaving no partial output.
    """
    from thumbsae.files import atomic_dir
    from thumbsae.report.rank_report import write_rank_report

    cfg = dataclasses.replace(cfg or VideoConfig(), n_candidates=int(n_candidates))
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise ThumbsaeError(f"{source}: no such file or folder")
    _check_out_dir(out_dir, source)
    duration_s = None
    if source.is_file():
        with VideoReader(source) as reader:  # a bad video fails now, before models load
            reader.check_decodes()
            duration_s = reader.duration_s

    created = _missing_ancestors(out_dir)
    try:
        with ExitStack() as stack:
            bar = stack.enter_context(_progress(progress))
            try:
                work_dir = stack.enter_context(atomic_dir(out_dir))
            except OSError as err:
                raise ThumbsaeError(f"--out {out_dir}: cannot write there ({err.strerror or err})") from None
            scorer, search = _load_while_decoding(source, out_dir, cfg, bar, duration_s, sae_dir, model_dir, hook_defaults)
            task = bar.add_task("scoring stills", total=len(search.stills))
            ranked = rank_stills(search.stills, scorer, cfg)
            bar.update(task, completed=len(search.stills))
            try:
                records = ranking_records(
                    ranked, out_dir=out_dir, scorer=scorer, work_dir=work_dir, cfg=cfg,
                    channel_id=channel_id, video_name=source.name if source.is_file() else None,
                )
                (work_dir / "ranking.json").write_text(json.dumps(records, indent=2) + "\n")
                write_rank_report(
                    work_dir,
                    records,
                    source_name=source.name,
                    score_kind=scorer.score_kind,
                    channel_id=channel_id,
                    stats=_stats(search, source),
                    comparison=_comparison(ranked, records, cfg.close_call),
                )
            except OSError as err:
                raise ThumbsaeError(f"--out {out_dir}: cannot write there ({err.strerror or err})") from None
    except BaseException:
        for folder in created:  # folders made for the output, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return records


class _Cancelled(Exception):
    """Stops the decoding thread when loading the models failed."""


def _load_while_decoding(
    source: Path,
    out_dir: Path,
    cfg: VideoConfig,
    bar: Progress,
    duration_s: float | None,
    sae_dir: Path,
    model_dir: Path,
    hook_defaults: dict | None = None,
) -> tuple[StillScorer, CandidateSearch]:
    """Load CLIP, SAE and model (mostly imports: seconds) in this thread while another decodes.

    The decoder spends most of its time in FFmpeg without the GIL, so the two overlap. Imports
    stay on the main thread (some libraries install signal handlers when imported). A loading
    error stops the decoder at its next sampled frame and is raised.
    """
    cancel = threading.Event()

    def search() -> CandidateSearch:
        if source.is_dir():
            task = bar.add_task("reading drafts", total=None)
            stills = draft_stills(source, cfg, exclude=out_dir)
            bar.update(task, total=len(stills), completed=len(stills))
            return CandidateSearch(stills=stills, n_frames=0, n_sampled=len(stills))
        task = bar.add_task("decoding video (s)", total=duration_s or None)

        def on_progress(seconds: float) -> None:
            if cancel.is_set():
                raise _Cancelled()
            bar.update(task, completed=seconds)

        return find_candidates(source, cfg, on_progress=on_progress)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbsae-decode") as pool:
        searching = pool.submit(search)
        try:
            scorer = StillScorer.load(sae_dir, model_dir, cfg, hook_defaults)
            return scorer, searching.result()
        except BaseException:
            cancel.set()
            raise


def _stats(search: CandidateSearch, source: Path) -> dict:
    if search.n_frames == 0:
        return {"kind": "drafts", "n_images": len(search.stills)}
    return {
        "kind": "video",
        "duration_s": round(search.duration_s, 3),
        "n_frames": search.n_frames,
        "n_sampled": search.n_sampled,
        "n_shots": search.n_shots,
        "n_duplicates": search.n_duplicates,
        "rejected": dict(search.rejected),
        "n_candidates": len(search.stills),
    }


def _comparison(ranked: Sequence[RankedStill], records: Sequence[dict], close_call: float) -> dict | None:
    """What the report's "Why #1 beats #2" shows: both records, the score gap, the features
    behind it, and how sure the order is (`p_better`, `verdict`, `close_call`)."""
    if len(ranked) < 2:
        return None
    return {
        "better": records[0],
        "worse": records[1],
        "score_gap": _round(ranked[0].score - ranked[1].score),
        "reasons": records[0].get("beats_next", []),
        "p_better": records[0].get("p_better_than_next"),
        "verdict": records[0].get("verdict_next"),
        "close_call": close_call,
    }
