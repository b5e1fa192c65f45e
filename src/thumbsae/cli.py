"""`thumbsae ...` sub-commands: world, fetch, rank, compare.

Each sub-command parses its flags and calls one function of its package; a `ThumbsaeError` becomes
one line on stderr and exit status 2, so scripts and users see what went wrong and where.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thumbsae.console import quiet_third_party
from thumbsae.errors import ThumbsaeError


def _world(args: argparse.Namespace) -> int:
    from thumbsae.world import WorldConfig, generate_world

    overrides = {"seed": args.seed, "null": args.null}
    if args.thumbnails is not None:
        overrides["n_thumbnails"] = args.thumbnails
    if args.size is not None:
        overrides["width"], overrides["height"] = args.size
    if args.channels is not None:
        overrides["n_channels"] = args.channels
    if args.reference_per_class is not None:
        overrides["n_reference_per_class"] = args.reference_per_class
    out = generate_world(WorldConfig(**overrides), Path(args.out))
    print(f"wrote world to {out}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from thumbsae.data import fetch_manifest

    manifest, rejects = fetch_manifest(
        Path(args.manifest), Path(args.out), workers=args.workers, timeout=args.timeout, retries=args.retries
    )
    print(f"wrote {manifest} and {rejects}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    from thumbsae.video import run_rank

    run_rank(
        Path(args.source),
        sae_dir=Path(args.sae),
        model_dir=Path(args.model),
        out_dir=Path(args.out),
        n_candidates=args.candidates,
        channel_id=args.channel,
        progress=not args.no_progress,
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from thumbsae.sae.compare import compare_runs

    csv_path, png_path = compare_runs([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {csv_path} and {png_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thumbsae", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show third-party logs and warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="write a synthetic thumbnail world with ground truth")
    world.add_argument("--out", required=True, help="output folder")
    world.add_argument("--thumbnails", type=int, default=None, help="number of thumbnails")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--null", action="store_true", help="permute views (the null world)")
    world.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None)
    world.add_argument("--channels", type=int, default=None, help="number of channels")
    world.add_argument("--reference-per-class", type=int, default=None)
    world.set_defaults(run=_world)

    fetch = sub.add_parser("fetch", help="download a manifest's http(s) images, resumably")
    fetch.add_argument("manifest")
    fetch.add_argument("--out", required=True)
    fetch.add_argument("--workers", type=int, default=8)
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    fetch.add_argument("--retries", type=int, default=2, help="retries on timeouts, 5xx and 429")
    fetch.set_defaults(run=_fetch)

    rank = sub.add_parser("rank", help="rank candidate stills of a video (or a folder of drafts)")
    rank.add_argument("source", help="a video file, or a folder of images")
    rank.add_argument("--sae", required=True, help="an SAE folder (RUN/sae)")
    rank.add_argument("--model", required=True, help="an engagement model (OUT/engagement_model)")
    rank.add_argument("--out", required=True, help="output folder")
    rank.add_argument("--candidates", type=int, default=24, help="number of candidate stills")
    rank.add_argument("--channel", default=None, help="channel id, for channel-relative scores")
    rank.add_argument("--no-progress", action="store_true")
    rank.set_defaults(run=_rank)

    compare = sub.add_parser("compare", help="compare SAE runs across sizes (CSV + PNG)")
    compare.add_argument("runs", nargs="+", help="run folders (each with sae/ and metrics)")
    compare.add_argument("--out", required=True)
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    try:
        return args.run(args)
    except ThumbsaeError as err:
        print(f"thumbsae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
