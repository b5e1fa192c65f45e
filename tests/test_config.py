"""The one configuration tree: every entry point composes it, every option of every group builds,
no composed key is read by nothing, bad values fail in one line before any work."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from thumbsae.config import MAX_SEED, Seed, build, check, check_fields, compose, conf_dir, refuse_overrides, setting, to_plain
from thumbsae.errors import ThumbsaeError

# Every entry point's config: train.py, evaluate.py, extract.py and the `thumbsae` sub-commands.
ENTRY_CONFIGS = ("train", "evaluate", "extract", "world", "world_clip", "fetch", "rank", "compare", "export", "import")
# Values the entry points require on their command line (`???` in the YAML).
REQUIRED = {
    "world": ["out=/tmp/w"],
    "world_clip": ["world_dir=/tmp/w", "out=/tmp/m.safetensors"],
    "fetch": ["manifest=m.csv", "out=/tmp/f"],
    "rank": ["source=v.mp4", "sae_dir=s", "model_dir=m", "out=/tmp/r"],
    "compare": ["runs=[a]", "out=/tmp/c"],
    "export": ["sae_dir=s", "format=saelens", "out=/tmp/e"],
    "import": ["inputs=[a.h5]", "out=/tmp/i"],
}
CUSTOM_DATA = ["data.train=/tmp/train", "data.thumbnails=/tmp/t.csv", "data.reference=/tmp/r.csv"]
SRC = Path(__file__).resolve().parents[1] / "src" / "thumbsae"


def entry_configs() -> list[str]:
    return [name for name in ENTRY_CONFIGS if (conf_dir() / f"{name}.yaml").exists()]


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every option file of every group under conf/."""
    return sorted(
        (path.parent.relative_to(conf_dir()).as_posix(), path.stem)
        for path in conf_dir().glob("*/*.yaml")
    )


def build_all(cfg: DictConfig, tmp_path: Path) -> dict:
    """Build every node of a composed config that names a `_target_` (run-time arguments as tasks give them)."""
    built = {}
    for key, node in cfg.items():
        if not isinstance(node, DictConfig):
            continue
        if "_target_" in node:
            if key == "trainer" and node.accelerator != "cpu":
                import inspect

                import pytorch_lightning as pl
                import torch

                if not torch.cuda.is_available():
                    # A GPU trainer cannot be built here: check its keys against the Trainer's signature.
                    settings = {k: v for k, v in to_plain(node).items() if not k.startswith("_")}
                    built[key] = inspect.signature(pl.Trainer).bind(**settings)
                    continue
            runtime = {"_partial_": True} if key == "datamodule" else {}
            built[key] = build(node, key, **runtime)
        elif key in ("logger", "callbacks"):
            for name, sub in node.items():
                runtime = {"save_dir": str(tmp_path)} if key == "logger" else {"dirpath": str(tmp_path)}
                built[f"{key}.{name}"] = build(sub, f"{key}.{name}", **runtime)
    return built


def test_conf_is_shipped_inside_the_package():
    assert (conf_dir() / "train.yaml").is_file()
    assert conf_dir().resolve() == (SRC / "conf").resolve()


@pytest.mark.parametrize("name", ENTRY_CONFIGS)
def test_every_entry_point_composes_the_tree_and_builds(name, tmp_path):
    if name not in entry_configs():
        pytest.fail(f"conf/{name}.yaml is missing: every command composes the one tree")
    cfg = compose(name, REQUIRED.get(name, []))
    build_all(cfg, tmp_path)


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_of_every_group_builds(group, option, tmp_path):
    entry = next(n for n in entry_configs() if group in compose(n, REQUIRED.get(n, [])) or group == "experiment")
    overrides = [f"{group}={option}", *REQUIRED.get(entry, [])]
    if group == "experiment" or (group == "data" and option == "custom"):
        overrides += CUSTOM_DATA
    cfg = compose(entry, overrides)
    built = build_all(cfg, tmp_path)
    if group not in ("experiment", "paths"):
        assert group in built or any(k.startswith(group + ".") for k in built), f"{group}={option} built nothing"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(conf_dir()) / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_every_experiment_builds_for_train_and_evaluate(entry, experiment, tmp_path):
    cfg = compose(entry, [f"experiment={experiment}", *CUSTOM_DATA])
    build_all(cfg, tmp_path)


def test_study_experiment_sets_the_papers_recipe():
    for name in ("train", "evaluate"):
        cfg = compose(name, ["experiment=study", *CUSTOM_DATA])
        assert cfg.model.name == "ViT-L-14" and cfg.model.pretrained == "openai"
        assert cfg.activations.tokens == "cls" and cfg.activations.layer == -2
        assert cfg.sae.arch == "relu" and cfg.sae.expansion_factor == 64 and cfg.sae.l1_coef == 8e-5
        assert cfg.eval.group_size == 400 and cfg.eval.n_side == 100 and cfg.eval.threshold == 0.05


def test_option_files_inherit_their_groups_default_and_list_only_what_differs():
    # An option file that repeats most of another option is a copy kept equal by hand.
    for group_dir in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "experiment"):
        options = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in group_dir.glob("*.yaml")}
        for name, node in options.items():
            own = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
            for other, other_node in options.items():
                if other == name or "defaults" in node:
                    continue
                shared = {k for k, v in own.items() if k in other_node and other_node[k] == v}
                assert len(own) < 6 or len(shared) < 0.7 * len(own), (
                    f"conf/{group_dir.name}/{name}.yaml repeats {len(shared)} of {len(own)} keys of {other}.yaml: "
                    "inherit it with `defaults: [...]` and list only what differs"
                )


# ---- no setting is ignored ------------------------------------------------------------------------


def _source_text() -> str:
    return "\n".join(p.read_text() for p in SRC.rglob("*.py"))


def _targets(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.add(node["_target_"])
        for value in node.values():
            found |= _targets(value)
    return found


def test_every_field_of_every_built_config_is_read_somewhere(tmp_path):
    """A dataclass field that no code outside the dataclass reads is a setting that does nothing."""
    from hydra.utils import get_object

    targets = set()
    for path in conf_dir().rglob("*.yaml"):
        targets |= _targets(OmegaConf.to_container(OmegaConf.load(path)))
    code = _source_text()
    unread = []
    for target in sorted(targets):
        cls = get_object(target)
        if not dataclasses.is_dataclass(cls):
            continue
        body = _class_body(code, cls.__name__)
        outside = code.replace(body, "")
        for field in dataclasses.fields(cls):
            if not re.search(rf"\b{re.escape(field.name)}\b", outside):
                unread.append(f"{target}.{field.name}")
    assert not unread, f"settings that nothing reads: {unread}"


def _class_body(code: str, name: str) -> str:
    match = re.search(rf"^class {name}\b.*?(?=^\S)", code + "\nEND", flags=re.S | re.M)
    return match.group(0) if match else ""


@pytest.mark.parametrize("name", ENTRY_CONFIGS)
def test_every_top_level_key_is_read_by_its_command(name):
    """Top-level keys of an entry config (not groups) are read by its task or sub-command."""
    if name not in entry_configs():
        pytest.skip(f"conf/{name}.yaml is checked by the composition test")
    cfg = compose(name, REQUIRED.get(name, []))
    code = _source_text()
    for key, node in cfg.items():
        if isinstance(node, DictConfig):
            # A group: something builds it or reads it.
            assert re.search(rf"cfg\.{key}\b|\"{key}\"|'{key}'", code), f"{name}: group {key} is read by nothing"
        else:
            assert re.search(rf"cfg\.{key}\b|cfg\.get\(\"{key}\"|setting\(cfg, \"{key}\"|\"{key}\": args", code), (
                f"{name}: key {key} is read by nothing"
            )


# ---- one-line errors before any work ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.threshold=abc", "eval.threshold='abc': expected a number"),
        ("eval.group_size=1.5", "eval.group_size=1.5: expected a whole number"),
        ("activations.tokens=some", "activations.tokens='some': expected one of cls, mean, all"),
        ("data.strict=maybe", "data.strict='maybe': expected true or false"),
        ("model.seed=abc", "model.seed='abc': expected a whole number"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_setting(override, message):
    cfg = compose("evaluate", [override])
    group = override.split(".")[0]
    with pytest.raises(ThumbsaeError) as err:
        build(cfg[group], group)
    assert str(err.value) == message


def _seed_settings(cfg: DictConfig) -> list[str]:
    """Every `seed` in a composed config: the top-level one and those of the groups that build something."""
    plain = OmegaConf.to_container(cfg, resolve=False)  # unresolved: `out: ???` is fine here
    keys = ["seed"] if "seed" in plain else []
    return keys + [f"{g}.seed" for g, node in plain.items() if isinstance(node, dict) and "_target_" in node and "seed" in node]


@pytest.mark.parametrize("config_name", [p.stem for p in sorted(conf_dir().glob("*.yaml"))])
def test_every_seed_is_checked_against_what_numpy_torch_and_lightning_accept(config_name):
    # seed=-1 used to reach Lightning's seed_everything (a traceback) and eval.seed=-1 numpy's
    # default_rng; model.seed=-1 and sae.seed=-1 were silently accepted.
    for key in _seed_settings(compose(config_name)):
        for bad in (-1, MAX_SEED + 1):
            cfg = compose(config_name, [f"{key}={bad}"])
            with pytest.raises(ThumbsaeError) as err:
                setting(cfg, "seed", Seed) if key == "seed" else check(cfg[key.split(".")[0]], key.split(".")[0])
            assert str(err.value) == f"{key}={bad}: expected a whole number from 0 to 4294967295"
        cfg = compose(config_name, [f"{key}={MAX_SEED}"])
        assert (setting(cfg, "seed", Seed) if key == "seed" else to_plain(cfg[key.split(".")[0]])["seed"]) == MAX_SEED
        if key != "seed":
            check(cfg[key.split(".")[0]], key.split(".")[0])


def test_the_seed_check_covers_the_pipeline_seeds():
    # The parametrized test above finds seeds by walking the configs; it must find these.
    found = {k for name in ("train", "evaluate", "world") for k in _seed_settings(compose(name))}
    assert {"seed", "sae.seed", "model.seed", "datamodule.seed", "eval.seed", "world.seed"} <= found


def test_unknown_keys_and_malformed_overrides_are_one_line_errors():
    with pytest.raises(ThumbsaeError, match=r"eval.bogus"):
        compose("evaluate", ["eval.bogus=1"])
    with pytest.raises(ThumbsaeError, match=r"eval: unknown setting\(s\) eval.bogus"):
        check_fields(build.__globals__["dataclasses"].make_dataclass("X", ["a"]), {"a": 1, "bogus": 2}, "eval")
    with pytest.raises(ThumbsaeError, match=r"^data.train: must be set"):
        build(compose("train", ["data=custom"]).data, "data")
    with pytest.raises(ThumbsaeError) as err:
        compose("train", ["sae=bogus"])
    assert str(err.value).startswith("bad setting: In 'pipeline': Could not find 'sae/bogus' Available options in 'sae': ")
    assert str(err.value).endswith(" relu study_relu topk")  # the options, not Hydra's search path


def test_a_setting_that_would_not_apply_is_refused():
    refuse_overrides(["eval.n_side=4", "hydra.run.dir=x"], ["sae", "trainer"], why="-")
    with pytest.raises(ThumbsaeError, match=r"^sae.k=64: not used here \(an SAE is given\)"):
        refuse_overrides(["eval.n_side=4", "sae.k=64"], ["sae", "trainer"], why="an SAE is given")
    with pytest.raises(ThumbsaeError, match=r"^sae=relu: not used here"):
        refuse_overrides(["sae=relu"], ["sae"], why="x")


def test_evaluate_refuses_training_settings_with_an_existing_sae(tmp_path):
    from thumbsae.tasks.evaluate import resolve_sae_dir

    cfg = compose("evaluate", [f"sae_dir={tmp_path}"])
    assert resolve_sae_dir(cfg, ["eval.n_side=3"]) == tmp_path
    with pytest.raises(ThumbsaeError, match=r"^sae.k=64: not used here"):
        resolve_sae_dir(cfg, ["sae.k=64"])
    with pytest.raises(ThumbsaeError, match=r"^trainer.max_steps=5: not used here"):
        resolve_sae_dir(cfg, ["trainer.max_steps=5"])


def test_the_default_paths_resolve():
    resolved = to_plain(compose("train"))
    assert resolved["data"]["train"] == "data/world/reference.csv"
    assert resolved["activations"]["layer"] == -2
    assert resolved["model"]["name"] == "thumbsae-tiny-vit"


def test_no_hydra_resolver_interpolation_in_pipeline_configs():
    # DVC composes these configs through the command line, so ${hydra:...} must not appear in them.
    for path in conf_dir().rglob("*.yaml"):
        body = path.read_text().split("\nhydra:")[0]
        assert "${hydra:" not in body, path
