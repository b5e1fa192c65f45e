"""Generated videos with known shots, for tests and `bench/rank.py`.

The shots and the encoder are the world's (`thumbsae.world.demo_video`, which also writes every
world's `demo.mp4`); this adds what only tests need, such as an audio-only file.
"""

from __future__ import annotations

from pathlib import Path

import av

from thumbsae.world.demo_video import PAN_MARGIN, Shot, write_silence, world_shot, write_video

__all__ = ["PAN_MARGIN", "Shot", "world_shot", "write_audio_only", "write_video"]


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An audio-only file (silent AAC) at `path` (`.m4a`: MP4 container)."""
    path = Path(path)
    container = av.open(str(path), mode="w", format="mp4" if path.suffix == ".m4a" else None)
    try:
        write_silence(container, container.add_stream("aac", rate=44100), seconds)
    finally:
        container.close()
    return path
