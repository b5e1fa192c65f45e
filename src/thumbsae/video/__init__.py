"""thumbsae.video: candidate stills of a video (or a folder of drafts), ranked with reasons.

    candidate_stills(path, cfg) -> list[Still]          one good frame per distinct shot
    find_candidates(path, cfg) -> CandidateSearch       the same, with the counts behind it
    draft_stills(folder, cfg) -> list[Still]            a creator's own images, unfiltered
    StillScorer.load(sae_dir, model_dir, cfg)           CLIP -> SAE -> engagement model
    rank_stills(stills, scorer, cfg) -> list[RankedStill]   best first, with reasons
    run_rank(source, sae_dir=, model_dir=, out_dir=, ...)   `thumbsae rank`
    pair_verdict(p, threshold) -> str                   "#1 beats #2 with probability 0.71" / "too close to call"
"""

from thumbsae.video.candidates import (
    CandidateSearch,
    FrameQuality,
    Still,
    candidate_stills,
    draft_stills,
    find_candidates,
    measure_quality,
    perceptual_hash,
    remove_near_duplicates,
)
from thumbsae.video.config import VideoConfig
from thumbsae.video.decode import SampledFrame, VideoReader
from thumbsae.video.rank import RankedStill, StillScorer, pair_verdict, rank_stills, run_rank, why_beats

__all__ = [
    "CandidateSearch",
    "FrameQuality",
    "RankedStill",
    "SampledFrame",
    "Still",
    "StillScorer",
    "VideoConfig",
    "VideoReader",
    "candidate_stills",
    "draft_stills",
    "find_candidates",
    "measure_quality",
    "pair_verdict",
    "perceptual_hash",
    "rank_stills",
    "remove_near_duplicates",
    "run_rank",
    "why_beats",
]
