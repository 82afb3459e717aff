"""Evaluation throughput (questions/s): batched, left-padded generation vs one question at a time.

A tiny two-scale model (random weights, the real SmolLM2 tokenizer) answers synthetic VQA-RAD-schema questions through
`evaluate_model`'s generation step (`generate_batch`: chat template, processor, greedy `generate`). Random weights
never emit the end token, so every answer runs to `--new-tokens`: the figures are per question at that length.
CPU time on `--threads` threads is reported beside wall time; it barely moves with other load on the machine.

    python benchmarks/bench_evaluation.py [--questions 32] [--batch-sizes 1 4 8 16] [--out benchmarks/results]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from hf_medvlm import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResImageProcessor,
    LlavaMedHiResProcessor,
)
from hf_medvlm.assembly import embedded_llm_path
from hf_medvlm.evaluation.runner import evaluate_model, generate_batch, load_model_and_processor, read_jsonl

TILE = 32
SCALES = [TILE, 2 * TILE]
VISION = dict(
    model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    patch_size=8, image_size=TILE, projection_dim=16,
)
TEXT = dict(
    model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024,
)
QUESTIONS = [
    "Is there a fracture?", "Which organ is shown in this image?", "Is the heart enlarged?",
    "What imaging modality was used?", "Where is the lesion located?", "Are the lungs clear?",
]


def save_tiny_model(folder: Path) -> None:
    gguf = embedded_llm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaMedHiResConfig(
        vision_config=VISION,
        text_config=dict(TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scales=SCALES,
    )
    torch.manual_seed(0)
    model = LlavaMedHiResForConditionalGeneration(config).eval()
    processor = LlavaMedHiResProcessor(
        LlavaMedHiResImageProcessor(scales=SCALES), tokenizer, image_seq_length=config.image_seq_length
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def save_questions(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (160 + 8 * (i % 5), 200, 3), dtype=np.uint8)) for i in range(count)]
    table = datasets.Dataset.from_dict(
        {
            "image": images,
            "question": [QUESTIONS[i % len(QUESTIONS)] for i in range(count)],
            "answer": ["yes" if i % 2 else "liver" for i in range(count)],
        }
    ).cast_column("image", datasets.Image())
    (folder / "data").mkdir(parents=True)
    table.to_parquet(folder / "data" / "test-00000-of-00001.parquet")


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes per batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        save_tiny_model(scratch / "model")
        save_questions(scratch / "vqa-rad", args.questions)
        from hf_medvlm.evaluation.benchmarks import load_benchmark

        questions = load_benchmark("vqa-rad", data=scratch / "vqa-rad")
        rows = list(questions)
        model, processor = load_model_and_processor(scratch / "model")

        generation, answers = {}, {}
        for size in args.batch_sizes:
            def one_pass():
                out = []
                for start in range(0, len(rows), size):
                    batch = rows[start:start + size]
                    out += generate_batch(
                        model, processor, [r["image"] for r in batch], [r["question"] for r in batch], args.new_tokens
                    )
                return out

            one_pass()  # warm-up
            best = min((timed(one_pass) for _ in range(args.repeats)), key=lambda t: t[2])
            answers[size] = best[0]
            generation[size] = {"wall_s": best[1], "cpu_s": best[2], "questions_per_s_wall": len(rows) / best[1],
                                "questions_per_s_cpu": len(rows) / best[2]}

        # the whole command path: dataset, model load, resumable JSONL, metrics, table and chart
        end_to_end = {}
        for size in (min(args.batch_sizes), max(args.batch_sizes)):
            out_dir = scratch / f"eval-b{size}"
            _, wall, cpu = timed(lambda: evaluate_model(
                scratch / "model", "vqa-rad", data=scratch / "vqa-rad", batch_size=size, out_dir=out_dir,
                max_new_tokens=args.new_tokens, progress=False,
            ))
            saved = [r["prediction"] for r in read_jsonl(out_dir / "vqa-rad-test" / "predictions.jsonl")]
            end_to_end[size] = {"wall_s": wall, "cpu_s": cpu, "questions_per_s_wall": len(rows) / wall,
                                "same_answers_as_generation_pass": saved == answers[size]}

    single = min(args.batch_sizes)
    agreement = {size: sum(a == b for a, b in zip(answers[size], answers[single])) for size in args.batch_sizes}
    results = {
        "questions": len(rows), "new_tokens": args.new_tokens, "threads": torch.get_num_threads(), "scales": SCALES,
        "generation": generation, "end_to_end": end_to_end, "answers_equal_to_batch_1": agreement,
    }
    lines = [
        f"# Evaluation throughput ({len(rows)} questions, {args.new_tokens} new tokens each, "
        f"{torch.get_num_threads()} thread(s), tiny model)",
        "",
        "| batch size | questions/s (CPU time) | questions/s (wall) | speed-up vs 1 (CPU) | answers equal to batch 1 |",
        "|---|---|---|---|---|",
    ]
    for size in args.batch_sizes:
        g = generation[size]
        lines.append(
            f"| {size} | {g['questions_per_s_cpu']:.1f} | {g['questions_per_s_wall']:.1f} | "
            f"{g['questions_per_s_cpu'] / generation[single]['questions_per_s_cpu']:.2f}x | "
            f"{agreement[size]}/{len(rows)} |"
        )
    lines += ["", "End to end (`evaluate_model`: load, generate, write JSONL, score, table, chart):", ""]
    for size, e in end_to_end.items():
        lines.append(f"- batch {size}: {e['wall_s']:.1f} s wall, {e['questions_per_s_wall']:.1f} questions/s")
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_evaluation.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
