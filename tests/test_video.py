"""Candidate stills from generated videos: shots, filters, near-duplicates, rotation, bad files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from thumbsae.cli import main
from thumbsae.errors import ThumbsaeError
from thumbsae.video import (
    VideoConfig,
    VideoReader,
    candidate_stills,
    draft_stills,
    find_candidates,
    perceptual_hash,
)
from thumbsae.video.candidates import ShiftedHashes
from thumbsae.video.synthetic import Shot, world_shot, write_audio_only, write_video

SIZE = (320, 180)
FPS = 15


def shot(motifs, seed, seconds=2.0, scene="gradient", margin=1.2):
    return world_shot(motifs, size=SIZE, seconds=seconds, seed=seed, scene=scene, margin=margin)


def darkened(s: Shot, factor=0.08) -> Shot:
    return Shot(s.picture.point(lambda v: int(v * factor)), s.seconds)


def blurred(s: Shot, radius=6) -> Shot:
    return Shot(s.picture.filter(ImageFilter.GaussianBlur(radius)), s.seconds)


def shot_of(still, bounds):
    """Index of the shot (by `bounds`, cumulative end times) whose time range holds the still."""
    return int(np.searchsorted(bounds, still.time_s, side="right"))


def test_shots_found_and_near_duplicates_removed(tmp_path):
    # The camera pans by 10 % of the frame in each shot; the last shot returns to the first view.
    shots = [shot(m, seed, margin=1.1) for m, seed in [(["food"], 1), (["sports_field"], 2), (["car", "face"], 3)]]
    shots.append(shots[0])
    video = write_video(tmp_path / "v.mp4", shots, size=SIZE, fps=FPS)
    search = find_candidates(video, VideoConfig())
    assert search.n_shots == 4
    assert search.n_duplicates == 1  # the last shot repeats the first
    bounds = np.cumsum([s.seconds for s in shots])
    assert sorted(shot_of(s, bounds) for s in search.stills) in ([0, 1, 2], [1, 2, 3])
    assert [s.time_s for s in search.stills] == sorted(s.time_s for s in search.stills)
    assert all(s.image.size == SIZE for s in search.stills)
    assert search.n_frames == 4 * 2 * FPS


def test_dark_blurred_and_flat_frames_dropped(tmp_path):
    shots = [
        shot(["animal"], 4),
        darkened(shot(["food"], 5)),
        blurred(shot(["red_arrow", "face"], 6)),
        Shot(Image.new("RGB", (384, 216), (90, 140, 200)), 2.0),  # a flat colour card
        shot(["car"], 7),
    ]
    video = write_video(tmp_path / "v.mp4", shots, size=SIZE, fps=FPS)
    search = find_candidates(video, VideoConfig())
    bounds = np.cumsum([s.seconds for s in shots])
    assert sorted(shot_of(s, bounds) for s in search.stills) == [0, 4]
    assert search.rejected["dark"] >= 4
    assert search.rejected["blurred"] >= 4
    assert search.rejected["flat"] >= 4


def test_dissolve_frames_dropped_and_split_shots(tmp_path):
    shots = [shot(["food"], 8, seconds=3.0), shot(["sports_field", "text_overlay"], 9, seconds=3.0)]
    video = write_video(tmp_path / "v.mp4", shots, size=SIZE, fps=FPS, crossfade_s=1.0)
    search = find_candidates(video, VideoConfig())
    assert search.rejected["transition"] >= 1
    assert len(search.stills) == 2  # the dissolve separates the two shots
    # The cross-fade occupies the last second of the first shot's frames (2.0 s to 3.0 s).
    assert all(not (2.05 < s.time_s < 2.95) for s in search.stills)


def test_n_candidates_keeps_best_in_time_order(tmp_path):
    shots = [shot([m], 10 + i, seconds=1.5) for i, m in enumerate(["food", "car", "red_arrow", "face", "sports_field"])]
    video = write_video(tmp_path / "v.mp4", shots, size=SIZE, fps=FPS)
    every = find_candidates(video, VideoConfig(n_candidates=24)).stills
    three = candidate_stills(video, VideoConfig(n_candidates=3))
    assert len(every) == 5 and len(three) == 3
    best = sorted(every, key=lambda s: -s.quality)[:3]
    assert [s.time_s for s in three] == sorted(s.time_s for s in best)


def test_rotation_metadata_makes_stills_upright(tmp_path):
    picture = Image.new("RGB", SIZE, (40, 90, 160))
    draw = ImageDraw.Draw(picture)
    draw.rectangle([0, 0, 39, SIZE[1]], fill=(230, 30, 30))  # red band on the left edge
    for x in range(60, 300, 24):  # texture so the frame is neither flat nor blurred
        draw.ellipse([x, 60, x + 14, 74], fill=(250, 250, 250))
    video = write_video(tmp_path / "r.mp4", [Shot(picture, 2.0)], size=SIZE, fps=FPS, rotation=90)
    (still,) = candidate_stills(video, VideoConfig())
    assert still.image.size == (SIZE[1], SIZE[0])  # portrait
    rgb = np.asarray(still.image).astype(int)
    # Turned a quarter counter-clockwise, the left edge is now the bottom.
    assert rgb[-10:, :, 0].mean() > 180 and rgb[-10:, :, 2].mean() < 90
    assert rgb[:10, :, 0].mean() < 90


def test_sampling_follows_timestamps(tmp_path):
    video = write_video(tmp_path / "v.mkv", [shot(["food"], 1, seconds=4.0)], size=SIZE, fps=FPS)
    with VideoReader(video) as reader:
        times = [f.time_s for f in reader.sampled(3.0)]
        assert reader.n_decoded == 4 * FPS
    assert len(times) == 12
    assert np.allclose(np.diff(times), 1 / 3, atol=1 / FPS)


def test_same_video_same_stills(tmp_path):
    shots = [shot(["food"], 1), shot(["car"], 2)]
    video = write_video(tmp_path / "v.mp4", shots, size=SIZE, fps=FPS)
    a, b = candidate_stills(video), candidate_stills(video)
    assert [s.time_s for s in a] == [s.time_s for s in b]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))


def test_shifted_hashes_match_moved_views_only():
    picture = shot(["food"], 1).picture  # 384 x 216
    view = picture.crop((0, 18, 320, 198))
    moved = picture.crop((32, 18, 352, 198))  # the camera moved by 10 % of the frame
    other = shot(["sports_field"], 2).picture.crop((0, 18, 320, 198))
    plain = lambda a, b: bin(perceptual_hash(a) ^ perceptual_hash(b)).count("1")  # noqa: E731
    shifted = lambda a, b: ShiftedHashes.of(a).distance(ShiftedHashes.of(b))  # noqa: E731
    assert shifted(view, moved) <= 6 < plain(view, moved)
    assert shifted(view, other) > 10 and plain(view, other) > 10


def test_drafts_folder_keeps_every_image_and_name(tmp_path):
    drafts = tmp_path / "drafts"
    (drafts / "sub").mkdir(parents=True)
    shot(["food"], 1).picture.save(drafts / "b.png")
    shot(["car"], 2).picture.save(drafts / "sub" / "a.jpg")
    (drafts / "notes.txt").write_text("not an image")
    stills = draft_stills(drafts, VideoConfig(still_max_side=200))
    assert [s.name for s in stills] == ["b.png", "sub/a.jpg"]
    assert all(s.time_s is None and max(s.image.size) == 200 for s in stills)


# ---- bad inputs: one line on stderr, non-zero exit, no output folder ----


def _truncate(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def _no_streams(path: Path) -> Path:
    container = av.open(str(path), mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height = SIZE
    container.start_encoding()
    container.close()
    return path


def _header_only(path: Path, out: Path) -> Path:
    """A Matroska file cut inside its first cluster's header: a video track and no frames."""
    data = path.read_bytes()
    out.write_bytes(data[: data.index(b"\x1f\x43\xb6\x75") + 12])
    return out


def _unknown_codec(path: Path, out: Path) -> Path:
    out.write_bytes(path.read_bytes().replace(b"avc1", b"zq9x"))
    return out


BAD_VIDEOS = {
    "missing file": (lambda d, v: d / "nope.mp4", "no such file"),
    "not a video": (lambda d, v: (d / "notes.mp4").write_text("hello\n" * 50) and d / "notes.mp4", "not a video"),
    "empty file": (lambda d, v: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", "empty file"),
    "still image": (lambda d, v: (shot(["food"], 1).picture.save(d / "x.png"), d / "x.png")[1], "still image"),
    "audio only": (lambda d, v: write_audio_only(d / "a.m4a"), "audio only"),
    "no video stream": (lambda d, v: _no_streams(d / "none.mp4"), "no video stream"),
    "zero frames": (lambda d, v: _header_only(v["mkv"], d / "zero.mkv"), "no decodable frames"),
    "truncated mp4": (lambda d, v: _truncate(v["mp4"], 0.5, d / "cut.mp4"), "truncated"),
    "unknown codec": (lambda d, v: _unknown_codec(v["mp4"], d / "codec.mp4"), "unsupported video codec"),
}


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    shots = [shot(["food"], 1, seconds=1.0), shot(["car"], 2, seconds=1.0)]
    return {
        "mp4": write_video(folder / "good.mp4", shots, size=SIZE, fps=FPS),
        "mkv": write_video(folder / "good.mkv", shots * 3, size=SIZE, fps=FPS),
    }


@pytest.mark.parametrize("case", sorted(BAD_VIDEOS))
def test_bad_video_one_line_error_and_no_output(case, tmp_path, good_videos, capsys):
    make, expected = BAD_VIDEOS[case]
    video = make(tmp_path, good_videos)
    out = tmp_path / "out" / "ranked"
    code = main(["rank", str(video), "--sae", str(tmp_path / "sae"), "--model", str(tmp_path / "m"),
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("thumbsae rank: error:")
    assert expected in err[0] and str(video) in err[0]
    assert not out.exists() and not out.parent.exists()


def test_truncated_mkv_found_while_decoding(good_videos, tmp_path):
    cut = _truncate(good_videos["mkv"], 0.6, tmp_path / "cut.mkv")
    with pytest.raises(ThumbsaeError, match="truncated"):
        find_candidates(cut, VideoConfig())
