"""Feature names: CLIP text words (a fake text tower we control) and majority reference labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import thumbsae.activations
from thumbsae.analysis.names import load_vocabulary, name_features, vocabulary_path
from thumbsae.errors import ThumbsaeError

WORDS = ["food", "sports field", "face", "car"]
E = 6


@dataclass(frozen=True)
class FakeClip:
    has_text: bool = True


def _axis(i: int) -> np.ndarray:
    v = np.zeros(E)
    v[i] = 1.0
    return v


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture
def fake_tower(tmp_path, monkeypatch):
    """Images whose colour says their content; every image also carries a strong shared "face" look.

    Red images are food, green sports fields, blue cars; the shared component lies along "face",
    so naming without removing the background would call everything a face.
    """
    colours = {"food": (255, 0, 0), "sports field": (0, 255, 0), "car": (0, 0, 255)}
    content_axis = {"food": 0, "sports field": 1, "car": 3}
    paths: dict[str, list[str]] = {}
    for word, rgb in colours.items():
        paths[word] = []
        for j in range(4):
            path = tmp_path / f"{word.replace(' ', '_')}_{j}.png"
            Image.new("RGB", (8, 8), rgb).save(path)
            paths[word].append(str(path))
    calls = {"images": 0, "texts": 0}

    def image_embeddings(clip, images):
        calls["images"] += len(images)
        rows = []
        for im in images:
            r, g, b = im.getpixel((0, 0))
            word = "food" if r else "sports field" if g else "car"
            # 3x the shared "face" direction, 1x the image's content, a fixed tilt on axis 5
            rows.append(_unit(3 * _axis(2) + _axis(content_axis[word]) + 0.2 * _axis(5)))
        return np.stack(rows).astype(np.float32)

    def encode_text(clip, texts):
        calls["texts"] += len(texts)
        rows = []
        for text in texts:
            word = text.removeprefix("a photo of ").removeprefix("a thumbnail of ")
            # a shared "prompt" direction (axis 4) plus the word's own axis
            rows.append(_unit(2 * _axis(4) + _axis(WORDS.index(word))))
        return np.stack(rows).astype(np.float32)

    monkeypatch.setattr(thumbsae.activations, "image_embeddings", image_embeddings)
    monkeypatch.setattr(thumbsae.activations, "encode_text", encode_text)
    return paths, calls


def test_text_tower_names_each_feature_by_its_content(fake_tower):
    paths, calls = fake_tower
    top = {7: paths["food"][:3], 8: paths["sports field"], 9: paths["car"][1:]}
    background = [p for word in paths for p in paths[word]]
    names = name_features(
        [7, 8, 9], top_images=top, all_images_sample=background, clip=FakeClip(), vocabulary=WORDS, top_words=2
    )
    assert {f: n["words"][0][0] for f, n in names.items()} == {7: "food", 8: "sports field", 9: "car"}
    assert all(n["source"] == "text" for n in names.values())
    assert names[7]["name"].startswith("food, ") and len(names[7]["words"]) == 2
    assert names[7]["words"][0][1] > names[7]["words"][1][1]
    assert calls["images"] == len(background)  # each distinct image embedded once



def test_known_embeddings_are_used_instead_of_embedding_again(fake_tower):
    """evaluate.py hands over every thumbnail's embedding: naming then embeds only the others."""
    import thumbsae.activations

    paths, calls = fake_tower
    top = {7: paths["food"][:3], 8: paths["sports field"], 9: paths["car"][1:]}
    background = [p for word in paths for p in paths[word]]
    args = dict(top_images=top, all_images_sample=background, clip=FakeClip(), vocabulary=WORDS, top_words=2)
    plain = name_features([7, 8, 9], **args)
    embed = thumbsae.activations.image_embeddings
    known = {p: embed(None, [Image.open(p).convert("RGB")])[0] for p in background[:8]}
    calls["images"] = 0
    reused = name_features([7, 8, 9], **args, known_embeddings=known)
    assert calls["images"] == len(background) - 8  # only the images not handed over
    assert json.dumps(reused, sort_keys=True) == json.dumps(plain, sort_keys=True)
    every = {p: embed(None, [Image.open(p).convert("RGB")])[0] for p in background}
    calls["images"] = 0
    assert json.dumps(name_features([7, 8, 9], **args, known_embeddings=every), sort_keys=True) == json.dumps(
        plain, sort_keys=True
    )
    assert calls["images"] == 0


def test_the_text_tower_runs_over_a_vocabulary_once_per_cache_file(fake_tower, tmp_path):
    paths, calls = fake_tower
    args = dict(top_images={7: paths["food"][:3]}, all_images_sample=[p for w in paths for p in paths[w]],
                clip=FakeClip(), vocabulary=WORDS, top_words=2)
    plain = name_features([7], **args)
    asked = []

    def cache(prompts):
        asked.append(prompts)
        return tmp_path / "text" / "a.npy"

    calls["texts"] = 0
    first = name_features([7], **args, text_cache=cache)
    assert calls["texts"] == len(asked[0]) == 2 * len(WORDS)  # two prompt templates per word
    assert (tmp_path / "text" / "a.npy").is_file() and not list((tmp_path / "text").glob(".*"))
    again = name_features([7], **args, text_cache=cache)
    assert calls["texts"] == 2 * len(WORDS)  # read back, not embedded again
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True) == json.dumps(plain, sort_keys=True)
    (tmp_path / "text" / "a.npy").write_bytes(b"not an array")  # damaged: embedded again and replaced
    assert json.dumps(name_features([7], **args, text_cache=cache), sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert calls["texts"] == 4 * len(WORDS)


def test_background_subtraction_is_what_removes_the_shared_look(fake_tower):
    paths, _ = fake_tower
    # With only food images as background, the food feature's direction is ~0 beyond noise: no name;
    # with a mixed background, food wins over the shared "face" look every image has.
    names = name_features(
        [1], top_images={1: paths["food"]}, all_images_sample=paths["food"], clip=FakeClip(), vocabulary=WORDS
    )
    assert names[1]["source"] == "none"
    mixed = paths["food"] + paths["car"]
    names = name_features(
        [1], top_images={1: paths["food"]}, all_images_sample=mixed, clip=FakeClip(), vocabulary=WORDS, top_words=4
    )
    ranked = [w for w, _ in names[1]["words"]]
    assert ranked[0] == "food" and ranked[-1] == "car"  # food minus the background points away from car


def test_names_are_deterministic(fake_tower):
    paths, _ = fake_tower
    top = {3: paths["car"], 4: paths["food"]}
    runs = [
        name_features([3, 4], top_images=top, all_images_sample=None, clip=FakeClip(), vocabulary=WORDS)
        for _ in range(2)
    ]
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)
    assert runs[0][3]["words"][0][0] == "car"


def test_without_a_text_tower_the_majority_reference_label_names_it():
    labels = {1: ["dog", "cat", "dog", "car", "dog"], 2: ["cat", "dog"], 3: []}
    for clip in (None, FakeClip(has_text=False)):
        names = name_features([1, 2, 3], top_images={}, all_images_sample=None, clip=clip, reference_labels=labels)
        assert names[1]["name"] == "dog" and names[1]["source"] == "reference_label"
        assert names[1]["share"] == pytest.approx(0.6) and names[1]["n_images"] == 5
        assert names[1]["words"] == [("dog", 0.6), ("cat", 0.2), ("car", 0.2)]
        assert names[2]["name"] == "cat"  # a tie goes to the label of the higher-activating image
        assert names[3] == {"name": "", "source": "none", "words": []}


def test_shipped_vocabulary_has_everyday_concepts_and_the_world_motifs():
    from thumbsae.world import MOTIFS

    words = load_vocabulary()
    assert len(words) >= 300 and len(set(words)) == len(words)
    assert {
        "food",
        "dish",
        "plate",
        "dip",
        "stadium",
        "football",
        "portrait",
        "headline",
        "arrow",
        "dog",
        "kitchen",
        "night",
        "city",
    } <= set(words)
    assert {m.replace("_", " ") for m in MOTIFS} <= set(words)
    assert vocabulary_path().is_file()


def test_bad_vocabulary_files_fail_clearly(tmp_path: Path):
    with pytest.raises(ThumbsaeError, match="missing.txt"):
        load_vocabulary(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ThumbsaeError, match="no words"):
        load_vocabulary(empty)
    custom = tmp_path / "v.txt"
    custom.write_text("cat\n# x\n dog \ncat\n")
    assert load_vocabulary(custom) == ["cat", "dog"]


def test_real_tiny_clip_text_tower_names_from_the_vocabulary(tmp_path):
    from thumbsae.activations import load_clip

    clip = load_clip("thumbsae-tiny-vit", seed=0)
    assert clip.has_text
    paths = []
    for i, rgb in enumerate([(250, 30, 30), (30, 200, 40), (20, 20, 220), (240, 240, 240)]):
        Image.new("RGB", (48, 36), rgb).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    top = {0: paths[:2], 5: paths[2:]}
    runs = [name_features([0, 5], top_images=top, all_images_sample=paths, clip=clip, top_words=3) for _ in range(2)]
    vocabulary = set(load_vocabulary())
    assert runs[0] == runs[1]
    for entry in runs[0].values():
        assert entry["source"] == "text" and len(entry["words"]) == 3
        assert {w for w, _ in entry["words"]} <= vocabulary
        assert entry["name"] == ", ".join(w for w, _ in entry["words"])


def test_text_names_carry_the_reference_majority_and_fall_back_to_it(fake_tower):
    paths, _ = fake_tower
    labels = {1: ["pizza", "pizza", "dog"], 2: ["car", "bus"]}
    names = name_features(
        [1, 2],
        top_images={1: paths["food"]},
        all_images_sample=paths["food"] + paths["car"],
        clip=FakeClip(),
        reference_labels=labels,
        vocabulary=WORDS,
    )
    assert names[1]["source"] == "text" and names[1]["words"][0][0] == "food"
    assert names[1]["reference_label"] == "pizza" and names[1]["reference_share"] == pytest.approx(2 / 3)
    assert names[2]["source"] == "reference_label" and names[2]["name"] == "car"  # no top images to embed
