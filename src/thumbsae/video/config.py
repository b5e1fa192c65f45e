"""`VideoConfig`: every knob of `thumbsae rank` (mirrored by `conf/video/default.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass

from thumbsae.errors import ThumbsaeError


@dataclass(frozen=True)
class VideoConfig:
    """How candidate stills are picked from a video and how they are scored and reported.

    Luma values are on the 0-255 scale of the downscaled analysis frame (`analysis_width` px wide),
    so the thresholds mean the same thing whatever the video's resolution.
    """

    n_candidates: int = 24  # stills ranked (after shot selection and near-duplicate removal)
    sample_fps: float = 3.0  # frames kept per second of video, chosen by timestamp while decoding
    skip_nonref: bool = True  # the decoder skips frames nothing refers to (half the work, same stills)
    analysis_width: int = 320  # width of the frame used for shot detection and quality filters
    still_max_side: int = 640  # longest side of a kept still (what CLIP and the report see)
    shot_threshold: float = 3.0  # PySceneDetect AdaptiveDetector adaptive_threshold
    shot_min_content: float = 15.0  # AdaptiveDetector min_content_val
    shot_window: int = 2  # AdaptiveDetector window_width, in sampled frames
    min_shot_s: float = 0.5  # shortest shot the detector may cut
    dark_luma: float = 35.0  # mean luma below this: a dark frame
    bright_luma: float = 225.0  # mean luma above this: a blown-out frame
    max_clipped: float = 0.75  # fraction of pixels at 0-8 or 247-255 above this: dark/blown out
    blur_var: float = 25.0  # variance of the Laplacian below this: a blurred frame
    min_entropy: float = 0.25  # 32-bin luma histogram entropy (bits) below this: a flat frame
    transition_diff: float = 10.0  # neighbours differing more (mean abs luma) may frame a dissolve
    dedupe_hamming: int = 10  # stills whose shifted hashes (64 bits) are this close are duplicates
    pool_factor: int = 4  # shots kept in memory while decoding, as a multiple of n_candidates
    batch_size: int = 32  # images per CLIP forward pass
    pool: str | None = None  # latent pooling over tokens; None: the engagement model's, else max
    top_features: int = 5  # features shown per direction (pushing up, pushing down)
    examples_per_feature: int = 4  # example thumbnails copied next to the report per feature
    jpeg_quality: int = 90  # stills are written as JPEG
    # "#1 beats #2" is said only when its probability is at least this; below it the other still
    # wins 3 times in 10 or more, and the report says "too close to call".
    close_call: float = 0.7

    def __post_init__(self) -> None:
        if self.n_candidates < 1:
            raise ThumbsaeError(f"video.n_candidates must be >= 1, got {self.n_candidates}")
        if self.sample_fps <= 0:
            raise ThumbsaeError(f"video.sample_fps must be > 0, got {self.sample_fps}")
        if self.analysis_width < 32 or self.still_max_side < 32:
            raise ThumbsaeError("video.analysis_width and video.still_max_side must be >= 32")
        if self.pool not in (None, "max", "mean"):
            raise ThumbsaeError(f"video.pool must be max, mean or null, got {self.pool!r}")
        close_call = self.close_call
        if isinstance(close_call, bool) or not isinstance(close_call, (int, float)) or not 0.5 <= close_call <= 1.0:
            raise ThumbsaeError(f"video.close_call={self.close_call!r}: must be a probability in [0.5, 1]")
