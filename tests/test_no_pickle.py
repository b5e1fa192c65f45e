"""No code path unpickles a user file: a scan of src/ for every unpickling call, and loaders fed a
malicious pickle (one that would create a file when unpickled) refuse it without running it."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Calls that unpickle (or run code from) whatever file they are given.
FORBIDDEN = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle",
    "shelve.open", "marshal.load", "marshal.loads", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load",
    "numpy.lib.format.read_array",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """`file:line call` for every call in `source` that may unpickle a file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        short = name.split(".")[-1]
        bad = name in FORBIDDEN or name.endswith(".read_pickle")
        if short == "load" and name.split(".")[0] == "torch" and not _is_true(_keyword(node, "weights_only")):
            bad = True  # torch.load only with weights_only=True
        if short == "load" and name.split(".")[0] in ("np", "numpy"):
            allow = _keyword(node, "allow_pickle")
            bad = bad or (allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False))
        if short == "load" and name.split(".")[0] == "yaml":
            loader = _keyword(node, "Loader")
            bad = bad or loader is None or "Safe" not in _dotted(loader)
        if _keyword(node, "ckpt_path") is not None and not _is_true(_keyword(node, "weights_only")):
            bad = True  # Lightning resumes with torch.load: weights_only=True there too
        if bad:
            found.append(f"{filename}:{node.lineno} {name}")
    return found


def test_the_scanner_finds_every_kind_of_unpickling():
    sample = "\n".join([
        "torch.load(p)", "torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)", "pickle.loads(b)",
        "pd.read_pickle(p)", "df = frame.read_pickle(p)", "yaml.load(t)", "trainer.fit(m, ckpt_path=c)",
        "joblib.load(p)",
        # and what is fine:
        "torch.load(p, weights_only=True)", "np.load(p)", "np.load(p, allow_pickle=False)",
        "yaml.load(t, Loader=yaml.SafeLoader)", "trainer.fit(m, ckpt_path=c, weights_only=True)", "json.load(f)",
    ])
    assert [hit.split(" ")[1] for hit in unpickling_calls(sample)] == [
        "torch.load", "torch.load", "np.load", "pickle.loads", "pd.read_pickle", "frame.read_pickle", "yaml.load",
        "trainer.fit", "joblib.load",
    ]


def test_no_source_file_unpickles():
    files = [*sorted((REPO / "src").rglob("*.py")), *sorted(REPO.glob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]
    assert len(files) > 20
    hits = [hit for path in files for hit in unpickling_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert hits == []


class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": _Payload(marker)}, path)  # a real torch checkpoint (zip + pickle)
    return path


def test_loaders_refuse_a_malicious_pickle_without_running_it(tmp_path):
    from thumbsae.activations import load_clip
    from thumbsae.analysis.engagement import EngagementModel
    from thumbsae.analysis.engagement.io import FORMAT
    from thumbsae.errors import ThumbsaeError
    from thumbsae.sae import SparseAutoencoder, TopKConfig, load_sae, save_sae

    marker = tmp_path / "code-ran"
    # The payload works: plain pickle runs it.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()

    sae_dir = save_sae(SparseAutoencoder(TopKConfig(d_in=8, expansion_factor=2, k=2)), tmp_path / "sae")
    _malicious(sae_dir / "sae.safetensors", marker)
    with pytest.raises(ThumbsaeError, match="not a readable safetensors file"):
        load_sae(sae_dir)

    model_dir = tmp_path / "engagement_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"format": FORMAT, "n_latents": 16}))
    _malicious(model_dir / "model.safetensors", marker)
    with pytest.raises(ThumbsaeError, match="corrupt engagement model"):  # refused at the weights
        EngagementModel.load(model_dir)

    for suffix in (".pt", ".bin", ".safetensors"):
        with pytest.raises(ThumbsaeError):
            load_clip("thumbsae-tiny-vit", pretrained=_malicious(tmp_path / f"clip{suffix}", marker))
    assert not marker.exists()
