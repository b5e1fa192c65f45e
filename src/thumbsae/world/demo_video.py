"""Videos made of world pictures: the demo video a world ships with, and the shots tests build.

Each shot is one picture (drawn like a world thumbnail) seen through a slowly panning window, so
consecutive frames differ like real footage while every frame of a shot shows the same content.
Shots are joined by hard cuts or cross-fades; rotation metadata and a silent audio track can be set.

`write_demo_video(cfg, path)` writes the world's `demo.mp4`: a minute of shots of the world's
motifs, some with its high-view motifs (food, face) and some with its low-view ones, for
`thumbsae rank`. Its bytes depend only on the world config (x264 on one thread, bit-exact
container flags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from thumbsae.errors import ThumbsaeError
from thumbsae.files import atomic_path
from thumbsae.world.config import WorldConfig
from thumbsae.world.drawing import MOTIFS, SCENES, draw_thumbnail

PAN_MARGIN = 1.2  # pictures are drawn this much larger than the frame, and the window pans across
DEMO_FILE = "demo.mp4"
DEMO_SHOTS = 12
DEMO_SHOT_SECONDS = 5.0
DEMO_FPS = 15
STREAM_DEMO = 7  # random stream of the demo's pictures: (seed, STREAM_DEMO, shot)
# ultrafast on one thread: x264's faster presets with lookahead (veryfast, ...) gave different bytes
# for the same frames from run to run here; ultrafast never did (30 runs). Bit-exact container flags.
DEMO_X264 = {"preset": "ultrafast", "crf": "23", "threads": "1"}


@dataclass(frozen=True, eq=False)
class Shot:
    """A picture shown for `seconds`; `picture` is at least the frame size (larger: panned)."""

    picture: Image.Image
    seconds: float


def world_shot(
    motifs: Sequence[str],
    *,
    size: tuple[int, int],
    seconds: float,
    seed: int | Sequence[int],
    scene: str = "gradient",
    warmth: float = 0.0,
    margin: float = PAN_MARGIN,
) -> Shot:
    """A shot of a synthetic-world thumbnail with `motifs`, drawn `margin` times larger than
    `size` so that the window pans across it (by `margin - 1` of the frame width)."""
    width, height = round(size[0] * margin), round(size[1] * margin)
    picture = draw_thumbnail(
        list(motifs), scene=scene, warmth=warmth, size=(width, height), rng=np.random.default_rng(seed)
    )
    return Shot(picture, seconds)


def _shot_frames(shot: Shot, size: tuple[int, int], fps: float) -> list[np.ndarray]:
    """The frames of one shot: uint8 [H, W, 3] windows panning left to right across the picture."""
    width, height = size
    picture = shot.picture.convert("RGB")
    if picture.width < width or picture.height < height:
        picture = picture.resize((max(width, picture.width), max(height, picture.height)))
    pixels_HW3 = np.asarray(picture)
    n = max(1, round(shot.seconds * fps))
    span_x, span_y = picture.width - width, picture.height - height
    frames = []
    for i in range(n):
        t = i / max(1, n - 1)
        x, y = round(t * span_x), round(0.5 * span_y)
        frames.append(pixels_HW3[y : y + height, x : x + width])
    return frames


def write_video(
    path: Path,
    shots: Sequence[Shot],
    *,
    size: tuple[int, int] = (320, 180),
    fps: int = 15,
    codec: str = "libx264",
    crossfade_s: float = 0.0,
    rotation: int = 0,
    options: dict[str, str] | None = None,
    audio: bool = False,
    bitexact: bool = False,
) -> Path:
    """Encode `shots` into a video file at `path` (container from the suffix); returns `path`.

    crossfade_s: length of a linear cross-fade between consecutive shots (0: hard cuts).
    rotation: display rotation metadata, degrees counter-clockwise (the frames are stored as is).
    options: encoder options (default: x264 `ultrafast`, which keeps generation cheap).
    audio: add a silent AAC track.
    bitexact: leave library version tags out of the file, so other FFmpeg builds write the same
        bytes for the same encoder output.
    """
    path = Path(path)
    width, height = size
    container_options = {"fflags": "+bitexact"} if bitexact else {}
    container = av.open(str(path), mode="w", options=container_options)
    try:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if options is not None or codec == "libx264":
            stream.options = dict(options or {"preset": "ultrafast", "crf": "23"})
        if bitexact:
            stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = container.add_stream("aac", rate=44100) if audio else None

        n_encoded = 0

        def encode(frame_HW3: np.ndarray) -> None:
            nonlocal n_encoded
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HW3), format="rgb24")
            # Explicit timestamps: x264's rate control reads them, and unset ones vary run to run.
            frame.pts, frame.time_base = n_encoded, Fraction(1, fps)
            n_encoded += 1
            for packet in stream.encode(frame):
                container.mux(packet)

        n_fade = round(crossfade_s * fps)
        previous_tail: list[np.ndarray] = []
        for shot in shots:
            frames = _shot_frames(shot, size, fps)
            for k, old in enumerate(previous_tail):
                alpha = (k + 1) / (len(previous_tail) + 1)
                mixed = (1 - alpha) * old.astype(np.float32) + alpha * frames[0].astype(np.float32)
                encode(mixed.round().astype(np.uint8))
            tail = min(n_fade, len(frames) // 3) if n_fade else 0
            for frame_HW3 in frames[: len(frames) - tail]:
                encode(frame_HW3)
            previous_tail = frames[len(frames) - tail :]
        for frame_HW3 in previous_tail:
            encode(frame_HW3)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            write_silence(container, audio_stream, sum(s.seconds for s in shots))
    finally:
        container.close()
    return path


def write_silence(container, stream, seconds: float) -> None:
    """Silent mono audio of `seconds` into `stream` (an AAC stream of `container`)."""
    samples = 1024
    for k in range(max(1, round(seconds * 44100 / samples))):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, k * samples
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def demo_frame_size(cfg: WorldConfig) -> tuple[int, int]:
    """(width, height) of the demo video: 16:9 at the world's image height, between 90 and 360 px."""
    height = min(360, max(90, cfg.height)) // 2 * 2
    return round(height * 16 / 9) // 2 * 2, height


def demo_plan(cfg: WorldConfig, n_shots: int = DEMO_SHOTS) -> list[tuple[str, ...]]:
    """The motifs of each demo shot: high-view, low-view and neutral motifs of `cfg` in turn.

    High and low are the motifs whose planted effect is above and below 1; neutral are the others
    (confounded ones included). Returns `n_shots` tuples of motif names.
    """
    high = [m for m, e in cfg.effects if e > 1]
    low = [m for m, e in cfg.effects if e < 1]
    planted = {m for m, _ in cfg.effects}
    neutral = [m for m in MOTIFS if m not in planted]
    # A repeating pattern: neutral, high, low, a neutral pair, a high pair (food with face: x8), ...
    pattern = [("n",), ("h",), ("l",), ("n", "n"), ("h", "h"), ("n",)]
    pools = {"h": high or neutral, "l": low or neutral, "n": neutral or list(MOTIFS)}
    taken = {"h": 0, "l": 0, "n": 0}
    plan = []
    for i in range(n_shots):
        motifs = []
        for kind in pattern[i % len(pattern)]:
            pool = pools[kind]
            motif = pool[taken[kind] % len(pool)]
            taken[kind] += 1
            if motif not in motifs:
                motifs.append(motif)
        plan.append(tuple(motifs))
    return plan


def demo_shots(cfg: WorldConfig, *, n_shots: int = DEMO_SHOTS, seconds: float = DEMO_SHOT_SECONDS) -> list[Shot]:
    """The demo's shots: `demo_plan(cfg)` drawn on the world's scenes, each from its own random
    stream `(cfg.seed, STREAM_DEMO, shot)`."""
    size = demo_frame_size(cfg)
    shots = []
    for i, motifs in enumerate(demo_plan(cfg, n_shots)):
        rng = np.random.default_rng([cfg.seed, STREAM_DEMO, i])
        scene = SCENES[int(rng.integers(len(SCENES)))]
        warmth = float(np.round(rng.uniform(-0.6, 0.6), 3))
        shots.append(
            world_shot(motifs, size=size, seconds=seconds, seed=[cfg.seed, STREAM_DEMO, i, 1], scene=scene, warmth=warmth)
        )
    return shots


def write_demo_video(cfg: WorldConfig, path: Path) -> Path:
    """Write the world's demo video (a minute of world shots, `demo_plan(cfg)`) to `path`.

    The same config gives the same bytes (one encoder thread, bit-exact flags). Returns `path`;
    raises `ThumbsaeError` when it cannot be written.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write_video(
                tmp, demo_shots(cfg), size=demo_frame_size(cfg), fps=DEMO_FPS, options=DEMO_X264, bitexact=True
            )
    except (OSError, av.FFmpegError) as err:
        raise ThumbsaeError(f"{path}: could not write the demo video ({err})") from err
    return path
