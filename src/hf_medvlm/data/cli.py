"""`hf-medvlm data ...` commands, each a thin shell over one library function."""

import argparse
import sys
from pathlib import Path


def _push(args, out: Path) -> None:
    if not args.push_to_hub:
        return
    from huggingface_hub import DatasetCard

    from .card import load_dataset_dir, push_to_hub

    card = DatasetCard.load(out / "README.md") if (out / "README.md").is_file() else None
    push_to_hub(load_dataset_dir(out), args.push_to_hub, card, private=not args.public)
    print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")


def _point_to_report(out: Path) -> None:
    if (out / "report.json").is_file():
        print(f"report: {out / 'report.json'}", file=sys.stderr)


def _from_llava_med(args) -> None:
    from .llava_med import from_llava_med

    try:
        dataset, report = from_llava_med(
            args.file, args.image_root, form=args.form, strict=args.strict, check_images=args.check_images, out=args.out
        )
    finally:
        _point_to_report(Path(args.out))
    print(report.summary())
    print(f"wrote {len(dataset)} records to {args.out}")
    _push(args, Path(args.out))


def _alignment(args) -> None:
    from .alignment import alignment_pairs

    try:
        dataset, report = alignment_pairs(
            args.pairs, args.image_root, form=args.form, seed=args.seed, image_column=args.image_column,
            caption_column=args.caption_column, id_column=args.id_column, strict=args.strict, out=args.out,
        )
    finally:
        _point_to_report(Path(args.out))
    print(report.summary())
    print(f"wrote {len(dataset)} records to {args.out}")
    _push(args, Path(args.out))


def generators_from_args(args) -> list:
    """The generators named on the command line: `--endpoint/--model`, `--local`, and any `--generator` specs."""
    from .synthesis import ChatEndpoint, LocalGenerator, parse_generator_spec

    options = dict(max_tokens=args.max_tokens, temperature=args.temperature)
    remote = dict(options, timeout=args.timeout, max_retries=args.max_retries, backoff=args.backoff)
    generators = []
    if args.endpoint or args.model:
        if not (args.endpoint and args.model):
            raise ValueError("--endpoint and --model go together")
        generators.append(ChatEndpoint(args.endpoint, args.model, api_key_env=args.api_key_env, **remote))
    if args.local:
        generators.append(LocalGenerator(args.local, **options))
    for spec in args.generator or []:
        generators.append(parse_generator_spec(spec, **(options if "local=" in spec else remote)))
    if not generators:
        raise ValueError("name a generator: --endpoint URL --model NAME, --local MODEL, or --generator SPEC")
    return generators


def _synthesize(args) -> None:
    from .synthesis import SynthesisError, synthesize

    try:
        result = synthesize(
            args.captions, args.out, generators_from_args(args), concurrency=args.concurrency, limit=args.limit,
            use_mentions=not args.no_mentions, min_turns=args.min_turns, seed=args.seed, image_root=args.image_root,
            strict=args.strict, progress=not args.no_progress,
        )
    except SynthesisError as error:
        print(f"hf-medvlm data synthesize: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(result.summary())
    print(f"output: {args.out} (conversations.jsonl, rejected.jsonl, report.json)")
    if result.dataset is not None:
        _push(args, Path(args.out) / "dataset")


def _hub_options(parser) -> None:
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload the dataset and its card")
    parser.add_argument("--public", action="store_true", help="make the pushed repository public (private otherwise)")


def _fine_detail(args) -> None:
    from ..fine_detail import make_fine_detail_set

    written = make_fine_detail_set(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed)
    counts = written["manifest"]["questions"]
    print(f"wrote {args.out}: questions per kind {counts}; evaluate with "
          f"`hf-medvlm eval --dataset fine-detail --data {written['paths']['test']} --model MODEL`")


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add `data from-llava-med`, `data alignment`, `data synthesize` and `data fine-detail` to an argparse
    subparsers object."""
    data = subparsers.add_parser(
        "data", help="biomedical instruction data: LLaVA-Med files, alignment pairs, synthesis"
    )
    commands = data.add_subparsers(dest="data_command", required=True)

    fine = commands.add_parser(
        "fine-detail", help="procedural CT phantoms with lesions visible only at high resolution (captions, QA, test)"
    )
    fine.add_argument("out")
    fine.add_argument("--train", type=int, default=384, help="training slices")
    fine.add_argument("--test", type=int, default=128, help="test slices")
    fine.add_argument("--size", type=int, default=288, help="slice side in pixels")
    fine.add_argument("--seed", type=int, default=0)
    fine.set_defaults(func=_fine_detail)

    ingest = commands.add_parser(
        "from-llava-med", help="convert a LLaVA-Med JSON/JSONL file into a datasets folder, with a rejection report"
    )
    ingest.add_argument("file")
    ingest.add_argument("--image-root", required=True, help="folder holding the images the records name")
    ingest.add_argument("--out", required=True, help="output folder (dataset, README.md card, report.json)")
    ingest.add_argument("--form", choices=["messages", "prompt-completion"], default="messages",
                        help="prompt-completion for stage-1 alignment pairs")
    ingest.add_argument("--strict", action="store_true", help="fail if any record is rejected")
    ingest.add_argument("--check-images", action="store_true", help="also open every image file")
    _hub_options(ingest)
    ingest.set_defaults(func=_from_llava_med)

    align = commands.add_parser("alignment", help="figure-caption pairs -> single-turn brief-description records")
    align.add_argument("pairs", help="JSONL, JSON or CSV with id, image and caption columns")
    align.add_argument("--image-root", default=None, help="folder the image column is relative to")
    align.add_argument("--out", required=True)
    align.add_argument("--form", choices=["messages", "prompt-completion"], default="prompt-completion")
    align.add_argument("--image-column", default="image")
    align.add_argument("--caption-column", default="caption")
    align.add_argument("--id-column", default="id")
    align.add_argument("--seed", type=int, default=0, help="changes which instruction each record gets")
    align.add_argument("--strict", action="store_true")
    _hub_options(align)
    align.set_defaults(func=_alignment)

    synth = commands.add_parser(
        "synthesize", help="write conversations from figure captions with LLMs (OpenAI-compatible or local)"
    )
    synth.add_argument("--captions", required=True, help="caption records: LLaVA-Med fig_captions JSON, JSONL or CSV")
    synth.add_argument("--out", required=True, help="output folder; a rerun resumes where the last one stopped")
    synth.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    synth.add_argument("--model", default=None, help="model name the endpoint serves")
    synth.add_argument("--api-key-env", default=None,
                       help="environment variable with the key (default: HF_TOKEN for HF hosts, else OPENAI_API_KEY)")
    synth.add_argument("--local", default=None, metavar="MODEL", help="a local chat model (transformers pipeline)")
    synth.add_argument("--generator", action="append", metavar="SPEC",
                       help="repeatable: 'model=M,endpoint=URL,weight=0.75[,name=N,api_key_env=VAR]' or "
                       "'local=PATH,weight=0.25'; records are shared by weight")
    synth.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    synth.add_argument("--limit", type=int, default=None, help="send at most this many new records in this run")
    synth.add_argument("--max-tokens", type=int, default=1024)
    synth.add_argument("--temperature", type=float, default=0.7)
    synth.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    synth.add_argument("--max-retries", type=int, default=4)
    synth.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time")
    synth.add_argument("--no-mentions", action="store_true", help="leave in-text mentions out of the prompt")
    synth.add_argument("--min-turns", type=int, default=2, help="fewest question-answer turns a conversation needs")
    synth.add_argument("--seed", type=int, default=0, help="changes which generator each record goes to")
    synth.add_argument("--image-root", default=None, help="with it, also write the datasets form under OUT/dataset")
    synth.add_argument("--strict", action="store_true", help="fail if any reply is rejected")
    synth.add_argument("--no-progress", action="store_true")
    _hub_options(synth)
    synth.set_defaults(func=_synthesize)
    return data


def main(argv=None) -> int:
    """`python -m hf_medvlm.data COMMAND ...`: the same commands without the top-level CLI."""
    parser = argparse.ArgumentParser(prog="python -m hf_medvlm.data")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-medvlm data {args.data_command}: error: {error}", file=sys.stderr)
        return 2
    return 0
