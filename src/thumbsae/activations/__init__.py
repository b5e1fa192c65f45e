"""CLIP activations: model loading, preprocessing fit, hooks, the shard store and its DataModule.

    load_clip(name, pretrained, ...) -> LoadedCLIP
    make_transform(image_size, mean, std, fit) -> PIL -> [3, H, W]
    hooked_activations(model, images_BCHW, layer, tokens) -> [B, D] | [B, T, D]
    extract_to_store(images_df, clip, layer=, tokens=, fit=, out_dir=, ...) -> ActivationStore
    ActivationStore(path).read(start, stop) -> [rows, D] float32
    ActivationDataModule(stores, batch_size, ...) -> float32 batches [B, D]
    embed_images / image_embeddings / encode_text -> numpy arrays for small in-memory sets

Modules: `clip` (loading), `preprocess` (fit), `hooks`, `pixels` (uint8 forward), `decoding`
(decoding workers), `store_writer` / `store` (the shard store), `distributed` (extraction across
processes), `extract` (the extraction itself), `embed` (small sets), `stream` / `datamodule`
(training batches), `world_clip` (the embedded CLIP).

The DataModule (Lightning) is imported lazily so that `thumbsae rank` does not pay for it.
"""

from thumbsae.activations.clip import LoadedCLIP, ModelLoadError, load_clip
from thumbsae.activations.embed import embed_images, encode_text, image_embeddings
from thumbsae.activations.extract import extract_to_store, store_content_hash
from thumbsae.activations.hooks import TOKEN_MODES, hooked_activations, resolve_layer
from thumbsae.activations.preprocess import DEFAULT_FIT, FITS, make_transform
from thumbsae.activations.store import DTYPES, ActivationStore, store_from_array

__all__ = [
    "DEFAULT_FIT",
    "DTYPES",
    "FITS",
    "TOKEN_MODES",
    "ActivationDataModule",
    "ActivationStore",
    "LoadedCLIP",
    "ModelLoadError",
    "embed_images",
    "encode_text",
    "extract_to_store",
    "hooked_activations",
    "image_embeddings",
    "load_clip",
    "make_transform",
    "resolve_layer",
    "store_content_hash",
    "store_from_array",
]


def __getattr__(name: str):
    if name == "ActivationDataModule":
        from thumbsae.activations.datamodule import ActivationDataModule

        return ActivationDataModule
    raise AttributeError(f"module 'thumbsae.activations' has no attribute {name!r}")
