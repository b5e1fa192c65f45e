"""thumbsae.data: image sets (manifests and folders), image decoding, validation, rejects and
URL fetching (atomic writes live in `thumbsae.files`).

    load_image_set(source, kind=..., rejects_path=..., strict=...) -> pd.DataFrame
    load_rgb(path) -> PIL.Image.Image (RGB)
    fetch_manifest(manifest, out_dir, FetchConfig(...)) -> (manifest_csv, rejects_csv)
"""

from thumbsae.data.images import (
    DECODE_BUDGET,
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodeBudget,
    ImageDecodeError,
    decode_cost,
    decode_image,
    load_rgb,
)
from thumbsae.data.manifest import (
    KINDS,
    Reject,
    RejectedRowsError,
    ValidatedSet,
    is_url,
    load_image_set,
    read_manifest,
    validate_image_set,
    write_manifest,
    write_rejects,
)

__all__ = [
    "DECODE_BUDGET",
    "DEFAULT_MAX_DECODE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "KINDS",
    "DecodeBudget",
    "FetchConfig",
    "ImageDecodeError",
    "Reject",
    "RejectedRowsError",
    "ValidatedSet",
    "decode_cost",
    "decode_image",
    "fetch_manifest",
    "is_url",
    "load_image_set",
    "load_rgb",
    "read_manifest",
    "validate_image_set",
    "write_manifest",
    "write_rejects",
]


def __getattr__(name: str):
    # `requests` is only needed by `thumbsae fetch`; importing it lazily keeps `thumbsae.data` light.
    if name in ("fetch_manifest", "FetchConfig"):
        from thumbsae.data import fetch

        return getattr(fetch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
