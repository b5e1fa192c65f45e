"""Sequential, timestamp-subsampled decoding of any video PyAV reads, with clear errors.

Seeking in long-GOP files decodes from the previous keyframe each time, so one sequential pass that
keeps about `sample_fps` frames per second is both simpler and faster. A kept frame stays a PyAV
frame until someone asks for pixels, so only the frames that are analysed or kept pay for colour
conversion and scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from thumbsae.errors import ThumbsaeError

# First bytes of containers we can name when FFmpeg cannot open them (so "truncated MP4" beats
# "invalid data").
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"RIFF", "AVI/RIFF"),
    (0, b"FLV", "FLV"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"OggS", "Ogg"),
)
# FFmpeg's still-image demuxers are `image2` and `<format>_pipe`; a single image is not a video.
_IMAGE_DEMUXER = "image2"
_IMAGE_PIPE_SUFFIX = "_pipe"
_TS_PACKET = 188  # MPEG-TS: a 0x47 sync byte every 188 bytes


@dataclass(frozen=True)
class SampledFrame:
    """One decoded frame kept by the subsampler; pixels are produced on demand.

    `quarter_turns` counter-clockwise quarter turns bring the coded frame upright (rotation
    metadata); `display_size` is (width, height) upright, non-square pixels made square.
    """

    sample_index: int
    frame_index: int
    time_s: float
    frame: av.VideoFrame
    quarter_turns: int
    display_size: tuple[int, int]

    def _coded_target(self, width: int, height: int) -> tuple[int, int]:
        # Size to ask swscale for before rotating, so that the rotated frame is (width, height).
        return (height, width) if self.quarter_turns % 2 else (width, height)

    def analysis_bgr(self, width: int) -> np.ndarray:
        """The frame upright at about `width` px wide (even sizes): uint8 [H, W, 3] in BGR
        (PySceneDetect's order)."""
        dw, dh = self.display_size
        width = max(2, width // 2 * 2)
        height = max(2, round(width * dh / dw / 2) * 2)
        cw, ch = self._coded_target(width, height)
        # Scaling in YUV and converting the small frame is several times cheaper than swscale's
        # scale + RGB conversion in one step.
        yuv_I420 = self.frame.reformat(cw, ch, format="yuv420p", interpolation="AREA").to_ndarray()
        bgr_HW3 = cv2.cvtColor(yuv_I420, cv2.COLOR_YUV2BGR_I420)
        return np.ascontiguousarray(np.rot90(bgr_HW3, self.quarter_turns))

    def still(self, max_side: int) -> Image.Image:
        """The frame upright as an RGB image whose longest side is at most `max_side` px."""
        dw, dh = self.display_size
        scale = min(1.0, max_side / max(dw, dh))
        width, height = max(2, round(dw * scale)), max(2, round(dh * scale))
        cw, ch = self._coded_target(width, height)
        rgb_HW3 = self.frame.reformat(cw, ch, format="rgb24", interpolation="AREA").to_ndarray()
        return Image.fromarray(np.ascontiguousarray(np.rot90(rgb_HW3, self.quarter_turns)))


def _sniff_container(path: Path) -> str | None:
    """The container family named by the file's first bytes, or None."""
    with path.open("rb") as handle:
        head = handle.read(2 * _TS_PACKET + 1)
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if len(head) > 2 * _TS_PACKET and head[0] == head[_TS_PACKET] == head[2 * _TS_PACKET] == 0x47:
        return "MPEG-TS"
    return None


def _quarter_turns(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Counter-clockwise quarter turns that make `frame` upright."""
    degrees_ccw = frame.rotation  # display matrix side data, counter-clockwise
    if not degrees_ccw:
        # Old muxers wrote a clockwise `rotate` tag instead of a display matrix.
        tag = stream.metadata.get("rotate")
        try:
            degrees_ccw = -float(tag) if tag is not None else 0
        except ValueError:
            degrees_ccw = 0
    return round(degrees_ccw / 90) % 4


class VideoReader:
    """An opened video file with one decodable video stream; raises `ThumbsaeError` otherwise.

    Use as a context manager; `sampled(fps)` yields `SampledFrame`s in presentation order and
    checks at the end that the whole stream was there (not truncated, not empty).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise ThumbsaeError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise ThumbsaeError(f"{self.path}: not a regular file")
        if self.path.stat().st_size == 0:
            raise ThumbsaeError(f"{self.path}: empty file (0 bytes), not a video")
        try:
            self.container = av.open(str(self.path), mode="r")
        except av.FFmpegError as err:
            family = _sniff_container(self.path)
            if family is not None:
                raise ThumbsaeError(
                    f"{self.path}: looks like {family} but cannot be opened; the file is truncated "
                    f"or corrupt ({err.strerror or err})"
                ) from None
            raise ThumbsaeError(
                f"{self.path}: not a video (no container format recognised: {err.strerror or err})"
            ) from None
        try:
            self.stream = self._video_stream()
        except ThumbsaeError:
            self.container.close()
            raise
        self.n_decoded = 0
        self.decoded_s = 0.0

    def _video_stream(self) -> av.video.stream.VideoStream:
        fmt = self.container.format.name
        if fmt == _IMAGE_DEMUXER or fmt.endswith(_IMAGE_PIPE_SUFFIX):
            raise ThumbsaeError(
                f"{self.path}: a still image ({fmt}), not a video; to rank images, pass a folder"
            )
        streams = self.container.streams
        if not streams.video:
            kinds = sorted({s.type for s in streams})
            if kinds == ["audio"]:
                raise ThumbsaeError(f"{self.path}: audio only, no video stream")
            found = ", ".join(kinds) if kinds else "no streams at all"
            raise ThumbsaeError(f"{self.path}: no video stream ({found})")
        # Cover art is stored as a one-frame video stream; prefer a real one.
        real = [s for s in streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        stream = (real or list(streams.video))[0]
        if stream.codec_context is None:
            raise ThumbsaeError(
                f"{self.path}: unknown or unsupported video codec (no decoder in this FFmpeg build)"
            )
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the bottleneck
        return stream

    @property
    def duration_s(self) -> float | None:
        """The video stream's declared duration in seconds (container's if the stream has none)."""
        if self.stream.duration and self.stream.time_base:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration:
            return self.container.duration / av.time_base
        return None

    def _display_size(self, frame: av.VideoFrame, quarter_turns: int) -> tuple[int, int]:
        sar = self.stream.sample_aspect_ratio or Fraction(1)
        width = max(2, round(frame.width * float(sar))) if sar > 0 else frame.width
        return (frame.height, width) if quarter_turns % 2 else (width, frame.height)

    def sampled(
        self,
        sample_fps: float,
        on_progress: Callable[[float], None] | None = None,
        *,
        skip_nonref: bool = True,
    ) -> Iterator[SampledFrame]:
        """Yield about `sample_fps` frames per second of video, chosen by presentation time.

        skip_nonref: tell the decoder not to decode frames no other frame refers to (most
            B-frames): about half the decoding work of a typical export, while the frames left
            are still a few hundredths of a second apart. `frame_index` then comes from the
            timestamp (exact for constant frame rate).
        `on_progress(seconds_decoded)` is called every kept frame. Raises `ThumbsaeError` when
        decoding fails, when no frame decodes, or when the stream ends well before its declared
        duration (a truncated file).
        """
        if skip_nonref:
            self.stream.codec_context.skip_frame = "NONREF"
        step_s = 1.0 / sample_fps
        rate = float(self.stream.average_rate or self.stream.guessed_rate or 30)
        start_s: float | None = None
        next_s = 0.0
        sample_index = 0
        last_s = 0.0
        try:
            for frame in self.container.decode(self.stream):
                frame_index = self.n_decoded
                self.n_decoded += 1
                raw_s = frame.time if frame.time is not None else frame_index / rate
                if start_s is None:
                    start_s = raw_s
                time_s = raw_s - start_s
                duration = frame.duration * frame.time_base if frame.duration else 1 / rate
                last_s = max(last_s, time_s + float(duration))
                if time_s + 1e-6 < next_s:
                    continue
                # The next grid point after this frame: no drift, and no burst after a gap.
                next_s = (np.floor(time_s / step_s + 1e-6) + 1) * step_s
                turns = _quarter_turns(frame, self.stream)
                if skip_nonref:
                    frame_index = round(time_s * rate)
                yield SampledFrame(
                    sample_index,
                    frame_index,
                    time_s,
                    frame,
                    turns,
                    self._display_size(frame, turns),
                )
                sample_index += 1
                self.decoded_s = last_s
                if on_progress is not None:
                    on_progress(time_s)
        except av.FFmpegError as err:
            raise ThumbsaeError(
                f"{self.path}: decoding failed after {last_s:.1f} s ({err.strerror or err}); "
                "the file is truncated or corrupt"
            ) from None
        self.decoded_s = last_s
        if self.n_decoded == 0:
            raise ThumbsaeError(
                f"{self.path}: the video stream has no decodable frames (empty or truncated)"
            )
        expected = self.duration_s
        if expected is not None and last_s < expected - max(1.0, 0.1 * expected):
            raise ThumbsaeError(
                f"{self.path}: truncated: frames end at {last_s:.1f} s but the file declares "
                f"{expected:.1f} s"
            )

    def check_decodes(self) -> None:
        """Decode the first frame (then rewind by reopening), so that a file with a video stream but
        no decodable frame fails before any expensive work. Raises `ThumbsaeError`."""
        try:
            for _ in self.container.decode(self.stream):
                break
            else:
                raise ThumbsaeError(
                    f"{self.path}: the video stream has no decodable frames (empty or truncated)"
                )
        except av.FFmpegError as err:
            raise ThumbsaeError(
                f"{self.path}: the first frame does not decode ({err.strerror or err}); the file is "
                "truncated or corrupt"
            ) from None
        finally:
            self.container.close()
        self.container = av.open(str(self.path), mode="r")
        self.stream = self._video_stream()

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
