"""Every world writes `demo.mp4`: a minute of world shots, high-view motifs among them, same bytes."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from thumbsae.world import WorldConfig, generate_world
from thumbsae.world.demo_video import (
    DEMO_FILE,
    DEMO_SHOT_SECONDS,
    DEMO_SHOTS,
    demo_frame_size,
    demo_plan,
    write_demo_video,
)

SMALL = WorldConfig(n_thumbnails=24, width=64, height=48, n_channels=3, n_reference_per_class=1, seed=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(SMALL, tmp_path_factory.mktemp("demo") / "w")


def test_world_writes_a_minute_long_demo_video(world):
    video = world / DEMO_FILE
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == demo_frame_size(SMALL) == (160, 90)
        seconds = frames / float(stream.average_rate)
    assert seconds == pytest.approx(DEMO_SHOTS * DEMO_SHOT_SECONDS, abs=0.2) and seconds >= 55


def test_the_plan_shows_high_low_and_neutral_motifs_of_the_world():
    plan = demo_plan(WorldConfig())
    shown = {m for shot in plan for m in shot}
    assert len(plan) == DEMO_SHOTS and all(plan)
    assert {"food", "face"} <= shown  # the default world's high-view motifs
    assert {"sports_field", "night_scene"} <= shown  # and its low-view ones
    assert sum("food" in shot or "face" in shot for shot in plan) >= 3
    custom = WorldConfig(effects={"car": 3.0}, confounded=())
    assert sum("car" in shot for shot in demo_plan(custom)) >= 3  # follows the config's effects


def test_same_config_same_bytes_other_seed_other_video(world, tmp_path):
    # Several writes: x264 presets with lookahead gave different bytes only now and then.
    for _ in range(3):
        again = write_demo_video(SMALL, tmp_path / "again.mp4")
        assert again.read_bytes() == (world / DEMO_FILE).read_bytes()
    other = write_demo_video(WorldConfig(**{**SMALL.__dict__, "seed": 6}), tmp_path / "other.mp4")
    assert other.read_bytes() != again.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.mp4", "other.mp4"]  # no temporaries


def test_shot_detection_finds_the_demo_shots(world):
    from thumbsae.video import VideoConfig, find_candidates

    search = find_candidates(world / DEMO_FILE, VideoConfig())
    assert DEMO_SHOTS - 2 <= search.n_shots <= DEMO_SHOTS + 2
    assert len(search.stills) >= DEMO_SHOTS - 3
