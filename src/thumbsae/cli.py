"""`thumbsae ...` sub-commands: world, world-clip, fetch, import, rank, export, compare.

Each sub-command composes its config from the same `conf/` tree as `train.py` (`conf/<command>.yaml`),
takes Hydra `key=value` overrides after its arguments (`thumbsae rank v.mp4 ... video.n_candidates=8`),
and calls one function of its package. Its flags are short names for common keys. A bad flag, value
or input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from thumbsae.config import build, compose, refuse_overrides
from thumbsae.console import quiet_third_party
from thumbsae.errors import ThumbsaeError
from thumbsae.files import shown_path

# `key=value`, `+key=value`, `~key`, `group=option`: what Hydra takes on a command line.
OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.@/-]*(=.*)?$")


# Flags that take no value (the word after them is an argument of its own).
SWITCHES = frozenset({"--null", "--no-progress", "--views-only", "--help"})


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`thumbsae rank: error: ...`), exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _world(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.world import generate_world

    flags = {
        "world.n_thumbnails": args.thumbnails,
        "world.seed": args.seed,
        "world.null": True if args.null else None,
        "world.width": args.size[0] if args.size else None,
        "world.height": args.size[1] if args.size else None,
        "world.n_channels": args.channels,
        "world.n_reference_per_class": args.reference_per_class,
    }
    cfg = _compose("world", overrides, {"out": args.out, **flags})
    out = generate_world(build(cfg.world, "world"), Path(cfg.out))
    print(f"wrote world to {shown_path(out)}")
    return 0


def _world_clip(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.activations.world_clip import train_world_clip

    cfg = _compose("world_clip", overrides, {"world_dir": args.world, "out": args.out})
    out = train_world_clip(Path(cfg.world_dir), Path(cfg.out), build(cfg.world_clip, "world_clip"))
    print(f"wrote {shown_path(out)}")
    return 0


def _fetch(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.data import fetch_manifest

    cfg = _compose(
        "fetch", overrides,
        {"manifest": args.manifest, "out": args.out, "fetch.workers": args.workers, "fetch.timeout": args.timeout,
         "fetch.retries": args.retries},
    )
    manifest, rejects = fetch_manifest(Path(cfg.manifest), Path(cfg.out), build(cfg.fetch, "fetch"))
    print(f"wrote {shown_path(manifest)} and {shown_path(rejects)}")
    return 0


def _import(args: argparse.Namespace, overrides: list[str]) -> int:
    importer = args.source.replace("-", "_")
    flags = {"inputs": list(args.inputs), "out": args.out, "importer.keep_first": args.keep_first,
             "importer.require_counts": ["viewCount"] if args.views_only else None}
    if args.image_format is not None:
        if importer != "yt8m":
            raise ThumbsaeError("--image-format: only yt8m imports write images (youtube-api writes URLs)")
        flags["importer.image_format"] = args.image_format
    cfg = _compose("import", [f"importer={importer}", *overrides], flags)
    config = build(cfg.importer, "importer")
    if importer == "yt8m":
        from thumbsae.data.youtube8m import import_yt8m

        manifest, rejects = import_yt8m([Path(p) for p in cfg.inputs], Path(cfg.out), config)
    else:
        from thumbsae.data.youtube_api import import_youtube_api

        manifest, rejects = import_youtube_api([Path(p) for p in cfg.inputs], Path(cfg.out), config)
    print(f"wrote {shown_path(manifest)} and {shown_path(rejects)}")
    return 0


def _rank(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.tasks.sae_source import hook_defaults, refuse_storage_settings
    from thumbsae.video import run_rank

    cfg = _compose(
        "rank", overrides,
        {"source": args.source, "sae_dir": args.sae, "model_dir": args.model, "out": args.out,
         "video.n_candidates": args.candidates, "channel_id": args.channel, "progress": False if args.no_progress else None},
    )
    video = build(cfg.video, "video")
    refuse_storage_settings(overrides, "rank")
    if _names_its_clip(Path(cfg.sae_dir)):
        refuse_overrides(overrides, ["model", "activations"], why=f"{cfg.sae_dir} names the CLIP model and hook it was trained on")
    records = run_rank(
        Path(cfg.source),
        sae_dir=Path(cfg.sae_dir),
        model_dir=Path(cfg.model_dir),
        out_dir=Path(cfg.out),
        n_candidates=video.n_candidates,
        channel_id=cfg.channel_id,
        progress=bool(cfg.progress),
        cfg=video,
        hook_defaults=hook_defaults(cfg, overrides),
    )
    written = f"wrote {shown_path(Path(cfg.out) / 'ranking.json')} and {shown_path(Path(cfg.out) / 'report.html')}"
    if records:
        best = records[0]
        where = f"at {best['timecode']}" if best.get("timecode") else str(best.get("source", ""))
        written += f": {len(records)} stills ranked, the best {where} (score {best['score']:.3g})"
    print(written)
    return 0


def _names_its_clip(sae_dir: Path) -> bool:
    """Whether an SAE folder's `config.json` names its CLIP model and hook (thumbsae's own format)."""
    import json

    for folder in (sae_dir, sae_dir / "sae"):
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return isinstance(config, dict) and isinstance(config.get("clip"), dict) and isinstance(config.get("hook"), dict)
    return False


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.sae.formats import export_sae
    from thumbsae.tasks.sae_source import hook_defaults, refuse_storage_settings

    refuse_storage_settings(overrides, "export")
    cfg = _compose("export", overrides, {"sae_dir": args.sae_dir, "format": args.format, "out": args.out})
    out = export_sae(Path(cfg.sae_dir), str(cfg.format), Path(cfg.out), hook_defaults=hook_defaults(cfg, overrides))
    print(f"wrote {shown_path(out)} ({cfg.format})")
    return 0


def _compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from thumbsae.report.compare_report import write_comparison_report

    cfg = _compose("compare", overrides, {"runs": list(args.runs), "evaluations": args.eval, "out": args.out})
    files = write_comparison_report([Path(r) for r in cfg.runs], Path(cfg.out), [Path(e) for e in cfg.evaluations])
    print(f"wrote {shown_path(files.html)}, {shown_path(files.csv)} and {shown_path(files.png)}")
    return 0


def _compose(name: str, overrides: list[str], flags: dict) -> DictConfig:
    """`conf/<name>.yaml` with the overrides, then the flags given (None: not given) set on top."""
    from omegaconf import OmegaConf

    cfg = compose(name, overrides)
    for key, value in flags.items():
        if value is not None:
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="thumbsae", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show third-party logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    hint = "then any key=value overrides of its conf/ tree"

    def command(name: str, run: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=f"{help_text} ({hint})")
        p.set_defaults(run=run)
        return p

    world = command("world", _world, "write a synthetic thumbnail world with ground truth (conf/world.yaml)")
    world.add_argument("--out", required=True, help="output folder")
    world.add_argument("--thumbnails", type=int, default=None, help="number of thumbnails (world.n_thumbnails)")
    world.add_argument("--seed", type=int, default=None, help="world.seed")
    world.add_argument("--null", action="store_true", help="permute views: the null world (world.null)")
    world.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None, help="world.width world.height")
    world.add_argument("--channels", type=int, default=None, help="number of channels (world.n_channels)")
    world.add_argument("--reference-per-class", type=int, default=None, help="world.n_reference_per_class")

    world_clip = command("world-clip", _world_clip, "retrain the tiny world CLIP on a world (conf/world_clip.yaml)")
    world_clip.add_argument("--world", required=True, help="a world folder (thumbsae world --out DIR)")
    world_clip.add_argument("--out", required=True, help="checkpoint path, ending in .safetensors")

    fetch = command("fetch", _fetch, "download a manifest's http(s) images, resumably (conf/fetch.yaml)")
    fetch.add_argument("manifest")
    fetch.add_argument("--out", required=True)
    fetch.add_argument("--workers", type=int, default=None, help="fetch.workers")
    fetch.add_argument("--timeout", type=float, default=None, help="seconds per request (fetch.timeout)")
    fetch.add_argument("--retries", type=int, default=None, help="retries on timeouts, 5xx and 429 (fetch.retries)")

    imports = command("import", _import, "import YouTube-8M shards or YouTube Data API responses (conf/import.yaml)")
    imports.add_argument("source", choices=("yt8m", "youtube-api"), help="what the inputs are")
    imports.add_argument("inputs", nargs="+", help="yt8m: SHARD.h5 files; youtube-api: videos.list JSON files")
    imports.add_argument("--out", required=True, help="output folder (manifest.csv, rejects.csv, images/)")
    imports.add_argument("--keep-first", type=int, default=None, help="keep the first N usable videos (importer.keep_first)")
    imports.add_argument("--views-only", action="store_true",
                         help="require only the view count, not likes and comments (importer.require_counts)")
    imports.add_argument("--image-format", choices=("png", "jpeg"), default=None, help="yt8m images (importer.image_format)")

    rank = command("rank", _rank, "rank candidate stills of a video or a folder of drafts (conf/rank.yaml)")
    rank.add_argument("source", help="a video file, or a folder of images")
    rank.add_argument("--sae", required=True, help="an SAE folder (RUN/sae; or a SAELens / sparsify folder)")
    rank.add_argument("--model", required=True, help="an engagement model (OUT/engagement_model)")
    rank.add_argument("--out", required=True, help="output folder")
    rank.add_argument("--candidates", type=int, default=None, help="number of candidate stills (video.n_candidates)")
    rank.add_argument("--channel", default=None, help="channel id, for channel-relative scores (channel_id)")
    rank.add_argument("--no-progress", action="store_true", help="no progress bar (progress=false)")

    export = command("export", _export, "write an SAE as a SAELens or sparsify folder (conf/export.yaml)")
    export.add_argument("sae_dir", help="an SAE folder (ours, SAELens or sparsify)")
    export.add_argument("--format", required=True, choices=("saelens", "sparsify"))
    export.add_argument("--out", required=True)

    compare = command("compare", _compare, "compare SAE runs across sizes and architectures (conf/compare.yaml)")
    compare.add_argument("runs", nargs="+", help="run folders (each with sae/ and metrics.json)")
    compare.add_argument("--eval", nargs="+", default=None, metavar="EVAL_DIR",
                         help="evaluate.py folders, matched to the runs by their SAE (default: RUN/eval or RUN/evaluate)")
    compare.add_argument("--out", required=True)
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra overrides, argparse's arguments): `key=value` words after the sub-command that are
    not the value of a flag. A file whose name looks like `key=value` can be given as `./name`."""
    overrides, rest = [], []
    for i, word in enumerate(argv):
        after_flag = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1] and argv[i - 1] not in SWITCHES
        if i > 0 and not after_flag and "=" in word and not word.startswith("-") and OVERRIDE.match(word):
            overrides.append(word)
        else:
            rest.append(word)
    return overrides, rest


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    quiet_third_party(args.verbose)
    try:
        return args.run(args, overrides)
    except ThumbsaeError as err:
        print(f"thumbsae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
