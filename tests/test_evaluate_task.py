"""thumbsae.tasks.evaluate helpers: the final-embedding cache that lets several SAEs be evaluated
on the same thumbnails with one pass of the full CLIP tower."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_activations import micro  # noqa: F401 - the tiny CLIP fixture, shared

from thumbsae.activations import image_embeddings
from thumbsae.activations.config import HookConfig
from thumbsae.activations.store import store_from_array
from thumbsae.data import load_rgb
from thumbsae.tasks.evaluate import embeddings_cache, final_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(folder, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _store(folder, name: str, ids: list[str], seed: int = 0):
    acts = np.random.default_rng(seed).normal(size=(len(ids), 8)).astype(np.float32)
    return store_from_array(folder / name, acts, ids, tokens="cls")


def test_embeddings_are_computed_once_then_read_back(micro, tmp_path, monkeypatch):
    paths = _images(tmp_path, 5)
    ids = [f"v{i}" for i in range(5)]
    hook = HookConfig(cache_dir=str(tmp_path / "cache"))
    cache = embeddings_cache(hook, _store(tmp_path, "s", ids), ids)
    assert cache.parent == tmp_path / "cache" / "embeddings" and not cache.exists()

    first = final_embeddings(micro, paths, fit="pad", cache=cache, chunk=2)
    expected = image_embeddings(micro, [load_rgb(p) for p in paths], fit="pad")
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    assert cache.is_file() and not list(cache.parent.glob("*tmp*"))

    def no_forward(*args, **kwargs):
        raise AssertionError("the CLIP tower ran although the embeddings were cached")

    monkeypatch.setattr("thumbsae.activations.image_embeddings", no_forward)
    np.testing.assert_array_equal(final_embeddings(micro, paths, fit="pad", cache=cache), first)


@pytest.mark.parametrize("damage", ["truncated file", "wrong length", "pickled object array"])
def test_a_damaged_cache_is_recomputed_and_replaced(micro, tmp_path, damage):
    paths = _images(tmp_path, 4)
    cache = tmp_path / "cache" / "embeddings" / "k.npy"
    cache.parent.mkdir(parents=True)
    if damage == "truncated file":
        cache.write_bytes(b"\x93NUMPY\x01\x00")
    elif damage == "wrong length":
        np.save(cache, np.zeros((3, 32), dtype=np.float32))
    else:
        np.save(cache, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    got = final_embeddings(micro, paths, fit="pad", cache=cache)
    assert got.shape == (4, 32)
    np.testing.assert_array_equal(np.load(cache, allow_pickle=False), got)


def test_cache_name_follows_the_images_model_and_order(tmp_path):
    ids = ["a", "b", "c"]
    hook = HookConfig(cache_dir=str(tmp_path))
    store = _store(tmp_path, "s", ids)
    name = embeddings_cache(hook, store, ids)
    assert embeddings_cache(hook, store, ids) == name
    assert embeddings_cache(hook, store, ["b", "a", "c"]) != name  # another order
    assert embeddings_cache(hook, _store(tmp_path, "other", ids, seed=1), ids) != name  # other store content
    assert embeddings_cache(HookConfig(cache_dir=str(tmp_path), fit="crop"), store, ids) != name
    store.metadata.pop("content_hash")
    assert embeddings_cache(hook, store, ids) is None  # no identity: no cache



def test_text_cache_name_follows_the_clip_and_the_prompts(tmp_path):
    from thumbsae.tasks.evaluate import text_embeddings_cache

    hook = HookConfig(cache_dir=str(tmp_path))
    store = _store(tmp_path, "s", ["a", "b"])
    store.metadata.pop("model", None)
    assert text_embeddings_cache(hook, store)(["a photo of food"]) is None  # no CLIP on record: no cache
    clip = {"name": "ViT-L-14", "pretrained": "openai", "sha256": "ab" * 32, "overrides": None, "seed": 0}
    store.metadata["model"] = clip
    name = text_embeddings_cache(hook, store)(["a photo of food", "a photo of cars"])
    assert name.parent == tmp_path / "text" and name.suffix == ".npy"
    assert text_embeddings_cache(hook, store)(["a photo of food", "a photo of cars"]) == name
    # Other thumbnails, same CLIP: the same file (text does not depend on the images).
    other = _store(tmp_path, "other", ["x", "y", "z"], seed=1)
    other.metadata["model"] = dict(clip)
    assert text_embeddings_cache(hook, other)(["a photo of food", "a photo of cars"]) == name
    assert text_embeddings_cache(hook, store)(["a photo of cars", "a photo of food"]) != name  # another order
    store.metadata["model"] = {**clip, "sha256": "cd" * 32}  # other weights
    assert text_embeddings_cache(hook, store)(["a photo of food", "a photo of cars"]) != name
