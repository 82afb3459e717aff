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


def _plan_changes(args) -> dict:
    return {name: getattr(args, name) for name in ("train", "test", "stage1_steps", "stage2_steps", "batch_size")}


def _demo(args) -> None:
    from .demo import DEMO_PLANS, plan_with, run_demo

    run_demo(out_dir=args.out, quick=args.quick, seed=args.seed, stage2=args.stage2, progress=not args.no_progress,
             plan=plan_with(DEMO_PLANS, args.quick, **_plan_changes(args)))


def _bench_fine_detail(args) -> None:
    from .demo import BENCH_PLANS, plan_with, run_fine_detail_bench

    run_fine_detail_bench(out_dir=args.out, quick=args.quick, seed=args.seed, stage2=args.stage2,
                          progress=not args.no_progress, plan=plan_with(BENCH_PLANS, args.quick, **_plan_changes(args)))


def _run_options(parser, out: str) -> None:
    parser.add_argument("--out", default=out)
    parser.add_argument("--quick", action="store_true", help="a few steps on a few slices (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage2", default="lora", choices=["lora", "instruction"],
                        help="stage 2: LoRA on the LLM + projector, or projector + whole LLM")
    parser.add_argument("--no-progress", action="store_true")
    for name, what in (("train", "training slices"), ("test", "test slices"), ("stage1-steps", "stage-1 steps"),
                       ("stage2-steps", "stage-2 steps"), ("batch-size", "per-device batch size")):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: the plan's)")


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

    demo = commands.add_parser(
        "demo",
        help="offline, on a CPU: fine-detail data, stage 1 and stage 2 training, evaluation, Hub export and a "
        "fresh-process reload of a SmolLM2-135M model with a random vision tower",
    )
    _run_options(demo, "outputs/demo")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="benchmarks that train and evaluate")
    benches = bench.add_subparsers(dest="bench", required=True)
    fine = benches.add_parser(
        "fine-detail", help="1 scale against 3 scales on the fine-detail phantoms, same data and step budget"
    )
    _run_options(fine, "outputs/bench-fine-detail")
    fine.set_defaults(func=_bench_fine_detail)

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
