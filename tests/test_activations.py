"""thumbsae.activations: CLIP loading and its errors, the preprocessing fit, hooks, small-set embeddings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from thumbsae.activations import (
    ModelLoadError,
    embed_images,
    encode_text,
    hooked_activations,
    image_embeddings,
    load_clip,
    make_transform,
)
from thumbsae.activations.clip import OPENAI_MEAN, OPENAI_STD
from thumbsae.activations.hooks import vision_blocks
from thumbsae.activations.pixels import PixelForward
from thumbsae.activations.preprocess import rgb_tensor
from thumbsae.errors import ThumbsaeError

# A CLIP small enough that every test here runs in milliseconds: 64 px, 16 px patches -> 17 tokens.
MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MICRO_NAME = "thumbsae-test-micro"



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def micro():
    return load_clip(MICRO_NAME, overrides=MICRO)


def _images(n: int, size=(80, 60), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ---- load_clip -------------------------------------------------------------------------------


def test_random_weights_are_seeded_and_leave_global_rng_alone(micro):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = load_clip(MICRO_NAME, overrides=MICRO)
    after = torch.rand(1)
    assert torch.equal(before, after)  # loading did not consume the caller's RNG
    for (k, a), (_, b) in zip(micro.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k
    other = load_clip(MICRO_NAME, overrides=MICRO, seed=1)
    assert not torch.equal(other.model.visual.conv1.weight, micro.model.visual.conv1.weight)
    assert micro.sha256 is None and micro.pretrained is None
    assert micro.image_size == 64 and micro.has_text
    assert micro.mean == OPENAI_MEAN and micro.std == OPENAI_STD
    assert not micro.model.training


def test_local_safetensors_checkpoint_round_trip(micro, tmp_path):
    trained = load_clip(MICRO_NAME, overrides=MICRO, seed=7)
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(path))
    loaded = load_clip(MICRO_NAME, pretrained=str(path), overrides=MICRO, mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
    assert torch.equal(loaded.model.visual.conv1.weight, trained.model.visual.conv1.weight)
    assert loaded.sha256 is not None and len(loaded.sha256) == 64
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    assert loaded.to_config()["pretrained"] == str(path.resolve())
    # Explicit QuickGELU is honoured for local files (open_clip would not infer it).
    quick = load_clip(MICRO_NAME, pretrained=path, overrides=MICRO, quick_gelu=True)
    assert quick.quick_gelu
    assert type(quick.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    with pytest.raises(ModelLoadError, match="sha256"):
        load_clip(MICRO_NAME, pretrained=path, overrides=MICRO, sha256="0" * 64)


def test_local_pt_state_dict_loads_with_weights_only(micro, tmp_path):
    path = tmp_path / "micro.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in micro.model.state_dict().items()}}, path)
    loaded = load_clip(MICRO_NAME, pretrained=path, overrides=MICRO, seed=5)
    assert torch.equal(loaded.model.visual.proj, micro.model.visual.proj)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "make_file, match",
    [
        (lambda p: p.with_suffix(".safetensors").write_bytes(b"\x00" * 40), "corrupt or unreadable"),
        (lambda p: p.with_suffix(".pt").write_bytes(b"not a zip"), "corrupt or unreadable"),
        (lambda p: p.with_suffix(".pt").write_bytes(pickle.dumps(_Payload())), "corrupt or unreadable"),
    ],
    ids=["safetensors", "pt", "pickle-payload"],
)
def test_corrupt_checkpoint_is_one_line_error(tmp_path, capfd, make_file, match):
    make_file(tmp_path / "bad")
    (path,) = tmp_path.iterdir()
    with pytest.raises(ModelLoadError, match=match) as err:
        load_clip(MICRO_NAME, pretrained=path, overrides=MICRO)
    assert "\n" not in str(err.value) and str(path.name) in str(err.value)
    assert "unpickled!" not in capfd.readouterr().out  # weights_only: the payload never ran


def test_checkpoint_of_another_architecture_says_so(micro, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(4, 3, 16, 16)}, str(path))
    with pytest.raises(ModelLoadError, match="does not fit architecture"):
        load_clip(MICRO_NAME, pretrained=path, overrides=MICRO)


def test_load_errors_are_one_line_and_say_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="did you mean ViT-B-32") as err:
        load_clip("ViT-B-3")
    assert isinstance(err.value, ThumbsaeError) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_clip(MICRO_NAME, pretrained=str(tmp_path / "missing.safetensors"), overrides=MICRO)
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_clip(MICRO_NAME, pretrained=str(tmp_path) + "/", overrides=MICRO)
    with pytest.raises(ModelLoadError, match="neither a checkpoint file nor an open_clip tag"):
        load_clip(MICRO_NAME, pretrained="openai", overrides=MICRO)


def test_hub_tag_offline_says_to_pass_a_local_checkpoint(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(ModelLoadError, match="could not download.*model.pretrained=/path") as err:
        load_clip("ViT-B-32", pretrained="openai")
    assert "\n" not in str(err.value)


# ---- preprocessing fit ----------------------------------------------------------------------


def _striped(width=160, height=120) -> Image.Image:
    """Grey 4:3 image with a pure red band on the outer 10 % of each side."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    band = width // 10
    pixels[:, :band] = (255, 0, 0)
    pixels[:, -band:] = (255, 0, 0)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fit", ["crop", "pad", "squash"])
def test_transform_shape_and_normalisation(fit):
    transform = make_transform(64, OPENAI_MEAN, OPENAI_STD, fit)
    for image in (_striped(), _striped(90, 160), Image.new("L", (33, 20), 200), Image.new("RGBA", (64, 64))):
        x_CHW = transform(image)
        assert x_CHW.shape == (3, 64, 64) and x_CHW.dtype == torch.float32
    grey = transform(Image.new("RGB", (64, 64), (128, 128, 128)))
    expected = (128 / 255 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(grey[:, 32, 32], expected, atol=1e-5)


def test_crop_loses_the_sides_pad_and_squash_keep_them():
    red_CHW = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)

    def red_fraction(x_CHW: torch.Tensor) -> float:
        return float(((x_CHW - red_CHW[:, None, None]).abs().amax(0) < 0.1).float().mean())

    crop, pad, squash = (make_transform(224, OPENAI_MEAN, OPENAI_STD, f)(_striped()) for f in ("crop", "pad", "squash"))
    assert red_fraction(crop) == 0.0  # the 16 px bands lie inside the 20 px cut off each side
    assert red_fraction(pad) > 0.1 and red_fraction(squash) > 0.15
    # pad letterboxes with the mean colour, i.e. exactly zero after normalisation
    assert torch.allclose(pad[:, :10, :], torch.zeros(3, 10, 224), atol=0.01)
    assert pad.abs().amax(0)[112, :].min() > 0.1  # no border along the long side


@pytest.mark.parametrize("fit", ["crop", "pad", "squash"])
@pytest.mark.parametrize("size", [(160, 120), (90, 160), (640, 360), (64, 64)])
@pytest.mark.parametrize("smooth", [True, False])
def test_fit_resizes_like_pil_bicubic(fit, size, smooth):
    """The torch uint8 resize matches PIL's BICUBIC (open_clip's) up- and downscaling: within 1 level
    on smooth pictures; on pure noise the two kernels' different intermediate rounding shows, up to
    a few levels on a fraction of pixels."""
    image = _images(1, size=(size[0] // 8, size[1] // 8) if smooth else size, seed=3)[0]
    image = image.resize(size, Image.Resampling.BILINEAR) if smooth else image
    ours = make_transform(64, OPENAI_MEAN, OPENAI_STD, fit).fit_pixels(image)
    h, w = size[1], size[0]
    if fit == "squash":
        reference = image.resize((64, 64), Image.Resampling.BICUBIC)
    elif fit == "crop":
        scale = max(64 / w, 64 / h)
        new_w, new_h = max(64, round(w * scale)), max(64, round(h * scale))
        left, top = (new_w - 64) // 2, (new_h - 64) // 2
        reference = image.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + 64, top + 64))
    else:
        scale = min(64 / w, 64 / h)
        new_w, new_h = min(64, round(w * scale)), min(64, round(h * scale))
        reference = Image.new("RGB", (64, 64), tuple(round(255 * m) for m in OPENAI_MEAN))
        reference.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), ((64 - new_w) // 2, (64 - new_h) // 2))
    difference = (ours.to(torch.int16) - torch.from_numpy(np.array(reference)).permute(2, 0, 1).to(torch.int16)).abs()
    assert ours.dtype == torch.uint8 and ours.shape == (3, 64, 64)
    if smooth:
        assert int(difference.max()) <= 1
    else:
        assert int(difference.max()) <= 4 and float(difference.float().mean()) < 0.5


@pytest.mark.parametrize("fit", ["crop", "pad", "squash"])
def test_batched_fit_equals_one_image_at_a_time(fit):
    transform = make_transform(64, OPENAI_MEAN, OPENAI_STD, fit)
    images = _images(3, size=(80, 60), seed=1) + _images(2, size=(50, 90), seed=2) + _images(1, size=(64, 64))
    mixed = [images[i] for i in (0, 3, 1, 5, 4, 2)]  # sizes interleaved
    batch_BCHW = transform.fit_batch([rgb_tensor(im) for im in mixed])
    assert batch_BCHW.shape == (6, 3, 64, 64) and batch_BCHW.dtype == torch.uint8
    for got, image in zip(batch_BCHW, mixed):
        assert torch.equal(got, transform.fit_pixels(image))


@pytest.mark.parametrize("tokens", ["cls", "mean", "all"])
def test_pixel_forward_folds_the_normalisation_into_the_patch_embedding(micro, tokens):
    transform = make_transform(64, micro.mean, micro.std, "pad")
    pixels_BCHW = torch.stack([transform.fit_pixels(im) for im in _images(3)])
    forward = PixelForward(micro.model, transform, -2, tokens)
    assert forward.folded and forward.visual.conv1 is not micro.model.visual.conv1
    with torch.inference_mode():
        expected = hooked_activations(micro.model, transform.normalize(pixels_BCHW), -2, tokens)
        got = forward(pixels_BCHW)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert isinstance(micro.model.visual.conv1, torch.nn.Conv2d)  # the model itself is untouched


@pytest.mark.parametrize("fit", ["crop", "pad", "squash"])
def test_fit_batch_writes_into_a_given_tensor_of_either_layout(fit):
    transform = make_transform(64, OPENAI_MEAN, OPENAI_STD, fit)
    images_HWC = [rgb_tensor(im) for im in _images(2, size=(80, 60)) + _images(1, size=(50, 90), seed=2)]
    expected = transform.fit_batch(images_HWC)
    assert expected.stride(1) == 1  # channels-last by default: the resize kernel's layout
    shared_BHWC = torch.zeros(5, 64, 64, 3, dtype=torch.uint8)  # like the lockstep batch buffer, written at slots 1..3
    for out in (shared_BHWC[1:4].permute(0, 3, 1, 2), torch.zeros(3, 3, 64, 64, dtype=torch.uint8)):
        assert transform.fit_batch(images_HWC, out=out) is out
        assert torch.equal(out, expected)
    assert shared_BHWC[0].eq(0).all() and shared_BHWC[4].eq(0).all()  # nothing written outside the slots
    with pytest.raises(ValueError, match=r"out must be uint8 \[3, 3, 64, 64\]"):
        transform.fit_batch(images_HWC, out=torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("size", [(80, 60), (64, 36), (36, 64), (20, 12), (64, 64)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_patch_embedding_skips_the_pad_borders_exactly(micro, size, channels_last):
    """Letterbox (4:3, 16:9, a 1.7 px high patch row of content), pillarbox (9:16), none: embedding
    only what lies inside the borders, plus a constant for them, gives the full embedding's values."""
    transform = make_transform(64, micro.mean, micro.std, "pad")
    images_HWC = [rgb_tensor(im) for im in _images(4, size=size, seed=5)]
    pixels_BCHW = transform.fit_batch(images_HWC)
    if not channels_last:
        pixels_BCHW = pixels_BCHW.contiguous()
    margins = transform.pad_margins([tuple(x.shape[:2]) for x in images_HWC])
    w, h = size
    assert (margins[0] + margins[1] > 0) == (w > h) and (margins[2] + margins[3] > 0) == (h > w)
    forward = PixelForward(micro.model, transform, -2, "all")
    with torch.inference_mode():
        expected = forward(pixels_BCHW)
        got = forward(pixels_BCHW, margins)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    patch = forward.embed.patch
    partial = [key for key in forward.embed._parts if key[1:5] != (0, patch[0], 0, patch[1])]
    assert bool(partial) == any(margins)  # the borders were really left out of the product
    if any(margins):
        # and the border pixels really are not read: painting them changes nothing ...
        painted = pixels_BCHW.clone()
        top, bottom, left, right = margins
        painted[:, :, :top] = 7
        painted[:, :, 64 - bottom :] = 7
        painted[:, :, :, :left] = 7
        painted[:, :, :, 64 - right :] = 7
        with torch.inference_mode():
            assert torch.equal(forward(painted, margins), got)
            # ... while a plain forward sees the paint
            assert not torch.allclose(forward(painted), expected, atol=1e-3)


@pytest.mark.parametrize("margins", [(3, 5, 17, 2), (16, 16, 0, 40), (0, 0, 33, 31), (20, 37, 20, 37)])
def test_patch_embedding_with_borders_on_any_sides(micro, margins):
    """Any border widths, whole and partial patches, rows and columns at once (mixed batches)."""
    transform = make_transform(64, micro.mean, micro.std, "pad")
    pixels_BCHW = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    top, bottom, left, right = margins
    fill = torch.tensor(transform.fill_rgb, dtype=torch.uint8).view(1, 3, 1, 1)
    for rows, cols in ((slice(0, top), slice(None)), (slice(64 - bottom, 64), slice(None)),
                       (slice(None), slice(0, left)), (slice(None), slice(64 - right, 64))):
        pixels_BCHW[:, :, rows, cols] = fill
    forward = PixelForward(micro.model, transform, -2, "all")
    with torch.inference_mode():
        torch.testing.assert_close(forward(pixels_BCHW, margins), forward(pixels_BCHW), rtol=1e-5, atol=1e-5)


def test_pad_margins_are_those_every_image_of_the_batch_has():
    transform = make_transform(64, OPENAI_MEAN, OPENAI_STD, "pad")
    assert transform.pad_margins([(60, 80)]) == (8, 8, 0, 0)
    assert transform.pad_margins([(90, 50)]) == (0, 0, 14, 14)
    assert transform.pad_margins([(60, 80), (36, 64)]) == (8, 8, 0, 0)
    assert transform.pad_margins([(60, 80), (90, 50)]) == (0, 0, 0, 0)
    assert transform.pad_margins([]) == (0, 0, 0, 0)
    assert make_transform(64, OPENAI_MEAN, OPENAI_STD, "crop").pad_margins([(60, 80)]) == (0, 0, 0, 0)
    assert make_transform(64, OPENAI_MEAN, OPENAI_STD, "squash").pad_margins([(60, 80)]) == (0, 0, 0, 0)
    # the margins agree with the pixels: the border rows are the fill colour, the next row is not
    image = _images(1, size=(80, 60), seed=9)[0]
    pixels_CHW = transform.fit_pixels(image)
    fill = torch.tensor(transform.fill_rgb, dtype=torch.uint8).view(3, 1, 1)
    assert pixels_CHW[:, :8].eq(fill).all() and pixels_CHW[:, 56:].eq(fill).all()
    assert not pixels_CHW[:, 8].eq(fill).all() and not pixels_CHW[:, 55].eq(fill).all()


def test_unknown_fit_is_rejected():
    with pytest.raises(ValueError, match="crop, pad, squash"):
        make_transform(64, OPENAI_MEAN, OPENAI_STD, "stretch")


# ---- hooks ----------------------------------------------------------------------------------


def _full_forward_block_output(model, x_BCHW, block: int) -> torch.Tensor:
    seen = {}
    handle = vision_blocks(model)[block].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.inference_mode():
        model.encode_image(x_BCHW)
    handle.remove()
    return seen["out"]


@pytest.mark.parametrize("layer, block", [(-1, 2), (-2, 1), (0, 0), (1, 1), (-3, 0)])
def test_hooked_layer_equals_full_forward_with_hook(micro, layer, block):
    x_BCHW = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference_BTD = _full_forward_block_output(micro.model, x_BCHW, block)
    with torch.inference_mode():
        all_BTD = hooked_activations(micro.model, x_BCHW, layer, "all")
        cls_BD = hooked_activations(micro.model, x_BCHW, layer, "cls")
        mean_BD = hooked_activations(micro.model, x_BCHW, layer, "mean")
    assert all_BTD.shape == (3, 17, 32)
    torch.testing.assert_close(all_BTD, reference_BTD, rtol=0, atol=0)
    # cls runs the hooked block for the class token alone: same maths, another summation order
    torch.testing.assert_close(cls_BD, reference_BTD[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean_BD, reference_BTD[:, 1:].mean(1), rtol=1e-6, atol=1e-6)
    # the visual tower alone works too
    with torch.inference_mode():
        torch.testing.assert_close(hooked_activations(micro.model.visual, x_BCHW, layer, "cls"), cls_BD)


@pytest.mark.parametrize("tokens", ["cls", "mean", "all"])
def test_blocks_after_the_hooked_one_do_not_run(micro, tokens):
    calls = []
    handles = [
        module.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
        for k, block in enumerate(vision_blocks(micro.model))
        for module in block.modules()
    ]
    try:
        with torch.inference_mode():
            hooked_activations(micro.model, torch.zeros(1, 3, 64, 64), -2, tokens)
    finally:
        for h in handles:
            h.remove()
    assert sorted(set(calls)) == [0, 1]


def test_layer_and_token_errors(micro):
    with pytest.raises(ThumbsaeError, match=r"out of range for a 3-block.*-3\.\.2"):
        hooked_activations(micro.model, torch.zeros(1, 3, 64, 64), -4, "cls")
    with pytest.raises(ThumbsaeError, match="cls, mean, all"):
        hooked_activations(micro.model, torch.zeros(1, 3, 64, 64), 0, "patch")


def test_timm_backed_tower_is_hooked_too():
    timm_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    clip = load_clip("thumbsae-test-timm", overrides=timm_cfg)
    x_BCHW = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    reference_BTD = _full_forward_block_output(clip.model, x_BCHW, 10)
    with torch.inference_mode():
        all_BTD = hooked_activations(clip.model, x_BCHW, -2, "all")
        cls_BD = hooked_activations(clip.model, x_BCHW, -2, "cls")
    torch.testing.assert_close(all_BTD, reference_BTD, rtol=0, atol=0)
    torch.testing.assert_close(cls_BD, reference_BTD[:, 0], rtol=0, atol=0)
    # no patch convolution to fold: PixelForward normalises first, exactly like the plain path
    transform = make_transform(224, clip.mean, clip.std, "pad")
    pixels_BCHW = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    forward = PixelForward(clip.model, transform, -2, "all")
    assert not forward.folded
    with torch.inference_mode():
        expected = hooked_activations(clip.model, transform.normalize(pixels_BCHW), -2, "all")
        torch.testing.assert_close(forward(pixels_BCHW), expected, rtol=0, atol=0)


# ---- small in-memory sets -------------------------------------------------------------------


def test_embed_images_matches_hook_on_transformed_batch(micro):
    images = _images(5)
    acts = embed_images(micro, images, layer=-2, tokens="all", fit="pad", batch_size=2)
    transform = make_transform(64, micro.mean, micro.std, "pad")
    with torch.inference_mode():
        expected = hooked_activations(micro.model, torch.stack([transform(im) for im in images]), -2, "all")
    assert acts.shape == (5, 17, 32) and acts.dtype == np.float32
    np.testing.assert_allclose(acts, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert embed_images(micro, [], layer=-2, tokens="cls").shape == (0, 32)


def test_text_and_image_embeddings_are_normalised(micro):
    text_NE = encode_text(micro, ["a red arrow", "food on a table", "a car"])
    image_NE = image_embeddings(micro, _images(4))
    assert text_NE.shape == (3, 32) and image_NE.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(text_NE, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image_NE, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(text_NE[0], text_NE[1])
