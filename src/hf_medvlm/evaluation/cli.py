"""`hf-medvlm eval`, `eval-reports` and `eval-stats`: thin shells over the evaluation functions.

Several processes share the questions: `accelerate launch --num_processes N -m hf_medvlm.evaluation eval ...` on GPUs,
`torchrun --nproc_per_node N -m hf_medvlm.evaluation eval ...` anywhere (accelerate's `--cpu` launcher starts a single
process unless mpirun is configured).
"""

import argparse
import sys


def _eval(args) -> None:
    from .runner import evaluate_model

    evaluate_model(
        args.model, args.dataset, split=args.split, limit=args.limit, batch_size=args.batch_size, out_dir=args.out,
        data=args.data, max_new_tokens=args.max_new_tokens, prompt=args.prompt, name=args.name, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
    )


def _eval_reports(args) -> None:
    from .report_generation import DEFAULT_FINDINGS_PROMPT, generate_reports

    judge = None
    if args.judge_endpoint or args.judge_model:
        if not (args.judge_endpoint and args.judge_model):
            raise ValueError("--judge-endpoint and --judge-model go together")
        from ..data.synthesis import ChatEndpoint, SynthesisError

        # greedy judging, so a rerun of the same report gets the same verdict
        judge = ChatEndpoint(
            args.judge_endpoint, args.judge_model, api_key_env=args.judge_api_key_env,
            max_tokens=args.judge_max_tokens, temperature=0.0, timeout=args.judge_timeout,
        )
    try:
        generate_reports(
            args.model, args.data, split=args.split, limit=args.limit, batch_size=args.batch_size, out_dir=args.out,
            image_column=args.image_column, report_column=args.report_column, id_column=args.id_column,
            prompt=args.prompt or DEFAULT_FINDINGS_PROMPT, max_new_tokens=args.max_new_tokens, judge=judge,
            judge_concurrency=args.judge_concurrency, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
            progress=not args.no_progress,
        )
    except Exception as error:
        if judge is None or not isinstance(error, SynthesisError):
            raise
        print(f"hf-medvlm eval-reports: error: {error}; finished judgements are kept, a rerun resumes", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if judge is not None:
            judge.close()


def _eval_stats(args) -> None:
    from .benchmarks import BENCHMARKS, benchmark_statistics, format_statistics

    names = args.dataset or list(BENCHMARKS)
    if args.data and len(names) != 1:
        raise ValueError("--data reads one benchmark: name it with --dataset")
    statistics = {name: benchmark_statistics(name, args.split or ["test"], args.data) for name in names}
    print(format_statistics(statistics))


def _generation_options(parser) -> None:
    parser.add_argument("--model", required=True, help="saved model folder (model + processor) or Hub id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of the split")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU; the saved dtype by default")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def add_eval_commands(subparsers) -> None:
    """Add `eval`, `eval-reports` and `eval-stats` to an argparse subparsers object."""
    run = subparsers.add_parser(
        "eval", help="zero-shot medical VQA (VQA-RAD, SLAKE, PathVQA) scored as in Table 3; a rerun resumes"
    )
    _generation_options(run)
    run.add_argument("--dataset", required=True, help="vqa-rad, slake, path-vqa, or fine-detail (with --data)")
    run.add_argument("--data", default=None,
                     help="local folder/parquet/JSON file (or another Hub id) in the benchmark's schema")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--out", default="outputs/eval", help="one folder per model; holds every benchmark's results")
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--prompt", default="{question}", help="user text around the question, with {question}")
    run.add_argument("--name", default=None, help="our row's label in the table (default: the model folder name)")
    run.set_defaults(func=_eval)

    reports = subparsers.add_parser(
        "eval-reports", help="generate report findings, score BLEU/ROUGE and, with a judge LLM, clinical errors"
    )
    _generation_options(reports)
    reports.add_argument("--data", required=True, help="Hub id, folder or parquet/JSON/CSV file of image-report pairs")
    reports.add_argument("--image-column", default="image")
    reports.add_argument("--report-column", default="findings")
    reports.add_argument("--id-column", default=None, help="default: the row index")
    reports.add_argument("--batch-size", type=int, default=4)
    reports.add_argument("--out", default="outputs/eval-reports")
    reports.add_argument("--max-new-tokens", type=int, default=256)
    reports.add_argument("--prompt", default=None,
                         help="instruction given with each image (default: describe the chest X-ray findings)")
    reports.add_argument("--judge-endpoint", default=None,
                         help="OpenAI-compatible base URL of the judge LLM, e.g. http://localhost:8000/v1")
    reports.add_argument("--judge-model", default=None, help="model name the judge endpoint serves")
    reports.add_argument("--judge-api-key-env", default=None,
                         help="environment variable with the key (default: HF_TOKEN for HF hosts, else OPENAI_API_KEY)")
    reports.add_argument("--judge-max-tokens", type=int, default=256)
    reports.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request")
    reports.add_argument("--judge-concurrency", type=int, default=1, help="requests in flight at once")
    reports.set_defaults(func=_eval_reports)

    stats = subparsers.add_parser("eval-stats", help="images, QA pairs, open and closed per split, beside Table 2")
    stats.add_argument("--dataset", action="append", help="repeatable; default: all three benchmarks")
    stats.add_argument("--split", action="append", help="repeatable; default: test")
    stats.add_argument("--data", default=None, help="local copy of the one benchmark named")
    stats.set_defaults(func=_eval_stats)


def main(argv=None) -> int:
    """`python -m hf_medvlm.evaluation COMMAND ...`: the same commands without the top-level CLI."""
    parser = argparse.ArgumentParser(prog="python -m hf_medvlm.evaluation")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-medvlm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
