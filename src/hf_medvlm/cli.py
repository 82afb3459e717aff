"""`hf-medvlm` command line: each command is a thin shell over one library function."""

import argparse
import sys


def _tiles(args) -> None:
    from .visualize import draw_tile_grid

    out = draw_tile_grid(args.image, scales=args.scales, out=args.out, window=args.window, frame=args.frame)
    print(f"wrote {out}")


def _quickstart(args) -> None:
    from .quickstart import run_quickstart

    run_quickstart(out_dir=args.out, scales=args.scales, question=args.question)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-medvlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tiles = commands.add_parser("tiles", help="draw every scale's tile grid over an image (PNG, TIFF, DICOM, ...)")
    tiles.add_argument("image")
    tiles.add_argument("--out", default="tiles.png")
    tiles.add_argument("--scales", type=int, nargs="+", default=[378, 756, 1134])
    tiles.add_argument("--window", default=None, help="DICOM window preset (lung, mediastinum, bone, brain, abdomen)")
    tiles.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM file")
    tiles.set_defaults(func=_tiles)

    quick = commands.add_parser(
        "quickstart",
        help="assemble a 3-scale model around the embedded SmolLM2-135M-Instruct, ask it about a real CT slice, "
        "export it as Hub remote code and reload it in a fresh process",
    )
    quick.add_argument("--out", default="outputs/quickstart")
    quick.add_argument("--scales", type=int, nargs="+", default=[128, 256, 384])
    quick.add_argument("--question", default="What imaging modality is shown in this image?")
    quick.set_defaults(func=_quickstart)

    from .data.cli import add_data_commands
    from .evaluation.cli import add_eval_commands
    from .hub.cli import add_hub_commands
    from .training import add_training_commands

    add_training_commands(commands)
    add_hub_commands(commands)
    add_data_commands(commands)
    add_eval_commands(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"hf-medvlm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
