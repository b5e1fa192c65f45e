"""Generated videos with known shots, for tests and `bench/rank.py`.

Each shot is one picture (typically a synthetic-world thumbnail) seen through a slowly panning
window, so consecutive frames differ like real footage while every frame of a shot shows the same
content. Shots are joined by hard cuts or cross-fades; rotation metadata can be set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

PAN_MARGIN = 1.2  # pictures are drawn this much larger than the frame, and the window pans across


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
    seed: int,
    scene: str = "gradient",
    warmth: float = 0.0,
    margin: float = PAN_MARGIN,
) -> Shot:
    """A shot of a synthetic-world thumbnail with `motifs`, drawn `margin` times larger than
    `size` so that the window pans across it (by `margin - 1` of the frame width)."""
    from thumbsae.world import draw_thumbnail

    width, height = round(size[0] * margin), round(size[1] * margin)
    picture = draw_thumbnail(
        list(motifs), scene=scene, warmth=warmth, size=(width, height),
        rng=np.random.default_rng(seed),
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
) -> Path:
    """Encode `shots` into a video file at `path` (container from the suffix); returns `path`.

    crossfade_s: length of a linear cross-fade between consecutive shots (0: hard cuts).
    rotation: display rotation metadata, degrees counter-clockwise (the frames are stored as is).
    options: encoder options (default: x264 `ultrafast`, which keeps generation cheap).
    audio: add a silent AAC track.
    """
    path = Path(path)
    width, height = size
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if options is not None or codec == "libx264":
            stream.options = dict(options or {"preset": "ultrafast", "crf": "23"})
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = container.add_stream("aac", rate=44100) if audio else None

        def encode(frame_HW3: np.ndarray) -> None:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HW3), format="rgb24")
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
            _write_silence(container, audio_stream, sum(s.seconds for s in shots))
    finally:
        container.close()
    return path


def _write_silence(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    """Silent mono audio of `seconds` into `stream`."""
    samples = 1024
    for k in range(max(1, round(seconds * 44100 / samples))):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, k * samples
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An audio-only file (silent AAC) at `path` (`.m4a`: MP4 container)."""
    path = Path(path)
    container = av.open(str(path), mode="w", format="mp4" if path.suffix == ".m4a" else None)
    try:
        _write_silence(container, container.add_stream("aac", rate=44100), seconds)
    finally:
        container.close()
    return path


def write_demo_models(
    out_dir: Path,
    pictures: Sequence[Image.Image],
    labels: Sequence[str],
    log_effects: Sequence[float],
    *,
    thumbnail_size: tuple[int, int] = (160, 90),
    crops_per_picture: int = 8,
    clip_name: str = "thumbsae-tiny-vit",
    layer: int = -2,
    tokens: str = "cls",
    fit: str = "pad",
    n_latents: int = 256,
    k: int = 16,
    sae_steps: int = 40,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A tiny SAE and engagement model that know `pictures`, for tests and benchmarks only.

    Each picture gives `crops_per_picture` thumbnails (random crops of 80-100 % of it, resized to
    `thumbnail_size`) whose log views are `log_effects[i]` plus noise (sd 0.1). A top-k SAE is
    trained for `sae_steps` full-batch Adam steps on their CLIP activations (random-weight
    `clip_name`), and the real engagement model (`fit_engagement_model`, channel-relative target,
    no channels) is fitted on their latents. Each used feature is named after the label of the
    picture whose thumbnails activate it most, with those thumbnails as examples.
    Writes `out_dir/sae/`, `out_dir/engagement_model/` and `out_dir/thumbnails/`; returns
    `(sae_dir, model_dir)`.
    """
    import torch

    from thumbsae.activations import embed_images, load_clip
    from thumbsae.analysis.latents import encode_latents
    from thumbsae.analysis.predictor import fit_engagement_model
    from thumbsae.sae import SparseAutoencoder, TopKConfig, save_sae

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    thumbs_dir = out_dir / "thumbnails"
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    thumbnails, owner, log_views = [], [], []
    for i, picture in enumerate(pictures):
        for j in range(crops_per_picture):
            frac = rng.uniform(0.8, 1.0)
            w, h = round(picture.width * frac), round(picture.height * frac)
            x, y = int(rng.integers(0, picture.width - w + 1)), int(rng.integers(0, picture.height - h + 1))
            thumb = picture.crop((x, y, x + w, y + h)).resize(thumbnail_size, Image.Resampling.BILINEAR)
            path = thumbs_dir / f"p{i}_{j}.png"
            thumb.save(path)
            thumbnails.append(path)
            owner.append(i)
            log_views.append(float(log_effects[i]) + rng.normal(0.0, 0.1))
    owner_N = np.asarray(owner)

    clip = load_clip(clip_name)
    images = [Image.open(p).convert("RGB") for p in thumbnails]
    acts_ND = embed_images(clip, images, layer=layer, tokens=tokens, fit=fit)
    if acts_ND.ndim == 3:
        train_ND = acts_ND.reshape(-1, acts_ND.shape[-1])
    else:
        train_ND = acts_ND
    sae = SparseAutoencoder(TopKConfig(d_in=train_ND.shape[1], n_latents=n_latents, k=k, seed=seed))
    x_ND = torch.from_numpy(np.ascontiguousarray(train_ND))
    sae.init_b_dec(x_ND)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-3)
    for _ in range(sae_steps):
        out = sae(x_ND)
        optimizer.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        sae.normalize_decoder()
    sae.eval()
    sae_dir = save_sae(sae, out_dir / "sae", {
        "clip": clip.to_config(),
        "hook": {"layer": layer, "tokens": tokens, "fit": fit},
        "normalisation": {"input_scale": 1.0, "method": "none"},
        "training": {"images": "write_demo_models", "n_activations": int(train_ND.shape[0]), "seed": seed},
    })

    csr = encode_latents(sae, acts_ND, pool="max").csr
    target_N = np.asarray(log_views) - np.median(log_views)
    model, _ = fit_engagement_model(csr, target_N, seed=seed, target_kind="channel_relative")
    dense_NF = csr.toarray()
    info = {}
    for f in model.feature_indices.tolist():
        mean_per_picture = [dense_NF[owner_N == i, f].mean() for i in range(len(pictures))]
        best = int(np.argmax(mean_per_picture))
        top = np.argsort(-dense_NF[:, f], kind="stable")[:4]
        info[int(f)] = {
            "name": str(labels[best]),
            "lift": float(np.exp(log_effects[best] - np.median(log_effects))),
            "q_value": None,
            "examples": [str(thumbnails[n]) for n in top],
        }
    model_dir = model.save(out_dir / "engagement_model", feature_info=info)
    return sae_dir, model_dir
