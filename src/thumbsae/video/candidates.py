"""Candidate stills: one good frame per shot of a video, near-duplicates removed.

One sequential pass: frames sampled by timestamp (`decode.VideoReader`) are downscaled, fed to
PySceneDetect's `AdaptiveDetector` for shot boundaries, and filtered for dark, blown-out, flat,
blurred and transition frames. The best frame of each shot (sharpness x exposure x entropy) is
kept; at the end near-duplicate shots (perceptual hash) are merged and the best `n_candidates`
remain, in time order. A folder of images (a creator's drafts) gives one still per image instead.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.fft
from PIL import Image
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector

from thumbsae.errors import ThumbsaeError
from thumbsae.video.config import VideoConfig
from thumbsae.video.decode import SampledFrame, VideoReader

DRAFT_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
REJECT_REASONS = ("dark", "blown_out", "flat", "blurred", "transition")
_DIFF_WIDTH = 64  # frames compared for transitions at this width: motion and noise average out


@dataclass(frozen=True, eq=False)
class Still:
    """A candidate thumbnail: an upright RGB image and where it came from.

    `time_s`, `frame_index` and `shot_index` are None for a draft image; `name` is a time code
    for a video still and the file's path relative to the folder for a draft.
    """

    time_s: float | None
    image: Image.Image
    frame_index: int | None
    shot_index: int | None
    quality: float
    name: str


@dataclass(frozen=True)
class FrameQuality:
    """Exposure, sharpness and information of one grey analysis frame (0-255 scale)."""

    mean_luma: float
    dark_fraction: float  # pixels at 0-8
    bright_fraction: float  # pixels at 247-255
    sharpness: float  # variance of the Laplacian
    entropy: float  # bits, of the 32-bin luma histogram (coarse, so encoder noise adds none)

    def rejection(self, cfg: VideoConfig) -> str | None:
        """Why this frame is not a thumbnail candidate (one of `REJECT_REASONS`), or None."""
        if self.mean_luma < cfg.dark_luma or self.dark_fraction > cfg.max_clipped:
            return "dark"
        if self.mean_luma > cfg.bright_luma or self.bright_fraction > cfg.max_clipped:
            return "blown_out"
        if self.entropy < cfg.min_entropy:
            return "flat"
        if self.sharpness < cfg.blur_var:
            return "blurred"
        return None

    def score(self, cfg: VideoConfig) -> float:
        """Sharpness x exposure x entropy, each in [0, 1]: higher is a better still."""
        sharp = self.sharpness / (self.sharpness + 10.0 * cfg.blur_var)
        exposure = max(0.05, 1.0 - abs(self.mean_luma - 128.0) / 128.0)
        exposure *= max(0.0, 1.0 - self.dark_fraction - self.bright_fraction)
        information = 0.5 + 0.5 * min(1.0, self.entropy / 4.0)
        return float(sharp * exposure * information)


def _entropy_bits(counts: np.ndarray) -> float:
    # scipy.stats.entropy's argument handling costs more than this sum on 32 bins.
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def measure_quality(gray_HW: np.ndarray) -> FrameQuality:
    """Quality measures of a uint8 grey frame [H, W]."""
    counts = np.bincount(gray_HW.ravel(), minlength=256)
    n = gray_HW.size
    return FrameQuality(
        mean_luma=float(gray_HW.mean()),
        dark_fraction=float(counts[:9].sum() / n),
        bright_fraction=float(counts[247:].sum() / n),
        sharpness=float(cv2.Laplacian(gray_HW, cv2.CV_64F).var()),
        entropy=_entropy_bits(counts.reshape(32, 8).sum(axis=1)),
    )


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash: the 8x8 lowest frequencies of a 64x64 grey image, each bit set
    where the coefficient is above their median."""
    gray_64x64 = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), np.float64)
    low_8x8 = scipy.fft.dctn(gray_64x64, norm="ortho")[:8, :8]
    bits = (low_8x8 > np.median(low_8x8)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


@dataclass(frozen=True)
class ShiftedHashes:
    """Perceptual hashes of a still's 80 % crops: the centre one and a 3x3 grid of them (offsets
    0, 10 and 20 % on each axis), so that views shifted by up to 10 % still match."""

    centre: int
    grid: tuple[int, ...]

    @classmethod
    def of(cls, image: Image.Image) -> ShiftedHashes:
        w, h = image.size
        cw, ch = round(0.8 * w), round(0.8 * h)
        crops = {
            (i, j): perceptual_hash(image.crop((round(i * 0.1 * w), round(j * 0.1 * h),
                                                round(i * 0.1 * w) + cw, round(j * 0.1 * h) + ch)))
            for i in range(3)
            for j in range(3)
        }
        return cls(crops[1, 1], tuple(crops.values()))

    def distance(self, other: ShiftedHashes) -> int:
        """Fewest differing bits between one centre crop and any crop of the other still."""
        return min(
            min(bin(self.centre ^ g).count("1") for g in other.grid),
            min(bin(other.centre ^ g).count("1") for g in self.grid),
        )


def remove_near_duplicates(stills: list[Still], max_hamming: int) -> list[Still]:
    """Keep, best quality first, each still more than `max_hamming` bits (of 64) from every kept
    one (`ShiftedHashes.distance`: the same view, moved by up to 10 %, is a duplicate)."""
    kept: list[tuple[ShiftedHashes, Still]] = []
    for still in sorted(stills, key=lambda s: (-s.quality, s.time_s or 0.0, s.name)):
        hashes = ShiftedHashes.of(still.image)
        if all(hashes.distance(other) > max_hamming for other, _ in kept):
            kept.append((hashes, still))
    return [still for _, still in kept]


def time_code(seconds: float) -> str:
    """`m:ss.ss` (or `h:mm:ss.ss`) for a time in seconds."""
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:05.2f}" if hours else f"{minutes}:{secs:05.2f}"


@dataclass
class CandidateSearch:
    """What `find_candidates` found, with the counts behind it (for the report)."""

    stills: list[Still]
    n_frames: int = 0  # decoded
    n_sampled: int = 0  # analysed
    n_shots: int = 0
    n_duplicates: int = 0
    duration_s: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> sampled frames


@dataclass
class _Sample:
    frame: SampledFrame
    quality: FrameQuality
    small_hw: np.ndarray  # float32 grey frame `_DIFF_WIDTH` px wide, for transition tests


def is_blend(prev_hw: np.ndarray, this_hw: np.ndarray, next_hw: np.ndarray, cfg: VideoConfig) -> bool:
    """Whether a frame sits between its neighbours like a dissolve: the neighbours differ by more
    than `cfg.transition_diff` (mean abs luma) and the frame is close to their average.

    Motion and hard cuts leave a frame about half the neighbours' difference from their average;
    a linear dissolve sampled at equal steps leaves it at the average.
    """
    span = float(np.abs(next_hw - prev_hw).mean())
    if span <= cfg.transition_diff:
        return False
    off_average = float(np.abs(this_hw - 0.5 * (prev_hw + next_hw)).mean())
    return off_average < 0.5 * (0.5 * span)


class _ShotSelector:
    """Streams resolved samples into shots, keeping the best acceptable frame of each."""

    def __init__(self, cfg: VideoConfig):
        self.cfg = cfg
        self.shot_index = 0
        self.shot_has_samples = False
        self.after_transition = False
        self.best: tuple[float, SampledFrame, int] | None = None  # (score, frame, shot)
        self.pool: list[Still] = []
        self.rejected: Counter[str] = Counter()

    def add(self, sample: _Sample, starts_shot: bool, prev: _Sample | None, next_: _Sample | None) -> None:
        transition = (
            prev is not None
            and next_ is not None
            and is_blend(prev.small_hw, sample.small_hw, next_.small_hw, self.cfg)
        )
        # A dissolve does not trip the cut detector, but it does end the shot before it.
        if (starts_shot or (self.after_transition and not transition)) and self.shot_has_samples:
            self.end_shot()
            self.shot_index += 1
        self.shot_has_samples = True
        self.after_transition = transition
        reason = "transition" if transition else sample.quality.rejection(self.cfg)
        if reason is not None:
            self.rejected[reason] += 1
            return
        score = sample.quality.score(self.cfg)
        if self.best is None or score > self.best[0]:
            # Pixels are made once the shot ends: holding the decoded frame is cheaper.
            self.best = (score, sample.frame, self.shot_index)

    def end_shot(self) -> None:
        if self.best is not None:
            score, frame, shot_index = self.best
            self.pool.append(
                Still(
                    time_s=round(frame.time_s, 3),
                    image=frame.still(self.cfg.still_max_side),
                    frame_index=frame.frame_index,
                    shot_index=shot_index,
                    quality=score,
                    name=time_code(frame.time_s),
                )
            )
            # Bound memory on long videos: keep the best few times n_candidates shots.
            limit = self.cfg.pool_factor * self.cfg.n_candidates
            if len(self.pool) > limit:
                self.pool.sort(key=lambda s: (-s.quality, s.time_s))
                del self.pool[limit:]
        self.best = None
        self.shot_has_samples = False
        self.after_transition = False


def find_candidates(
    path: Path,
    cfg: VideoConfig = VideoConfig(),
    *,
    on_progress: Callable[[float], None] | None = None,
) -> CandidateSearch:
    """Decode `path` once and pick up to `cfg.n_candidates` stills, one per distinct shot.

    Returns the stills in time order with the counts behind them; raises `ThumbsaeError` for an
    unreadable video or when no sampled frame is usable. `on_progress(seconds)` is called as
    decoding advances.
    """
    detector = AdaptiveDetector(
        adaptive_threshold=cfg.shot_threshold,
        min_scene_len=max(1, round(cfg.min_shot_s * cfg.sample_fps)),
        window_width=cfg.shot_window,
        min_content_val=cfg.shot_min_content,
    )
    selector = _ShotSelector(cfg)
    cuts: set[int] = set()  # sample indices that start a new shot
    pending: deque[_Sample] = deque()
    # A cut at sample j is reported once sample j + window is in, and a transition needs j + 1.
    lag = cfg.shot_window + 1
    last_index = -1
    previous: _Sample | None = None  # the last sample handed to the selector

    def resolve(upto: int) -> None:
        nonlocal previous
        while pending and pending[0].frame.sample_index <= upto:
            sample = pending.popleft()
            following = pending[0] if pending else None
            selector.add(sample, sample.frame.sample_index in cuts, previous, following)
            previous = sample

    with VideoReader(Path(path)) as reader:
        for frame in reader.sampled(cfg.sample_fps, on_progress, skip_nonref=cfg.skip_nonref):
            bgr_HW3 = frame.analysis_bgr(cfg.analysis_width)
            gray_HW = cv2.cvtColor(bgr_HW3, cv2.COLOR_BGR2GRAY)
            small_h = max(2, round(_DIFF_WIDTH * gray_HW.shape[0] / gray_HW.shape[1]))
            small_hw = cv2.resize(gray_HW, (_DIFF_WIDTH, small_h), interpolation=cv2.INTER_AREA)
            timecode = FrameTimecode(frame.sample_index, fps=cfg.sample_fps)
            cuts.update(c.frame_num for c in detector.process_frame(timecode, bgr_HW3))
            pending.append(_Sample(frame, measure_quality(gray_HW), small_hw.astype(np.float32)))
            last_index = frame.sample_index
            resolve(last_index - lag)
        end = FrameTimecode(last_index + 1, fps=cfg.sample_fps)
        cuts.update(c.frame_num for c in detector.post_process(end))
        resolve(last_index)
        selector.end_shot()
        n_frames, duration_s = reader.n_decoded, reader.decoded_s

    rejected = {reason: selector.rejected.get(reason, 0) for reason in REJECT_REASONS}
    n_sampled = last_index + 1
    if not selector.pool:
        counts = ", ".join(f"{n} {reason}" for reason, n in rejected.items() if n)
        raise ThumbsaeError(
            f"{path}: no usable still among {n_sampled} sampled frames ({counts}); "
            "see video.dark_luma, video.blur_var, video.min_entropy"
        )
    distinct = remove_near_duplicates(selector.pool, cfg.dedupe_hamming)
    chosen = sorted(distinct[: cfg.n_candidates], key=lambda s: s.time_s)
    return CandidateSearch(
        stills=chosen,
        n_frames=n_frames,
        n_sampled=n_sampled,
        n_shots=selector.shot_index + 1,
        n_duplicates=len(selector.pool) - len(distinct),
        duration_s=duration_s,
        rejected=rejected,
    )


def candidate_stills(path: Path, cfg: VideoConfig = VideoConfig()) -> list[Still]:
    """Up to `cfg.n_candidates` stills of the video at `path`, one per distinct shot, in time
    order (see `find_candidates`)."""
    return find_candidates(path, cfg).stills


def draft_stills(
    folder: Path, cfg: VideoConfig = VideoConfig(), *, exclude: Path | None = None
) -> list[Still]:
    """One still per image file under `folder` (recursive, sorted by relative path; hidden files
    and anything under `exclude`, e.g. an earlier ranking written inside it, are skipped).

    Drafts are the creator's own choices, so none is filtered or merged; each is downscaled to
    `cfg.still_max_side`. Raises `ThumbsaeError` naming the first file that does not decode, or
    when the folder holds no image.
    """
    from thumbsae.data import load_rgb

    folder = Path(folder)
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DRAFT_SUFFIXES
    )
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if exclude is not None:
        skip = Path(exclude).resolve()
        files = [p for p in files if not p.resolve().is_relative_to(skip)]
    if not files:
        suffixes = " ".join(sorted(DRAFT_SUFFIXES))
        raise ThumbsaeError(f"{folder}: no images to rank (looked for {suffixes})")
    stills = []
    for file in files:
        try:
            image = load_rgb(file)
        except ThumbsaeError as err:
            raise ThumbsaeError(f"cannot rank drafts: {err}") from None
        image.thumbnail((cfg.still_max_side, cfg.still_max_side), Image.Resampling.LANCZOS)
        gray_HW = np.asarray(image.convert("L"))
        stills.append(
            Still(
                time_s=None,
                image=image,
                frame_index=None,
                shot_index=None,
                quality=measure_quality(gray_HW).score(cfg),
                name=file.relative_to(folder).as_posix(),
            )
        )
    return stills
