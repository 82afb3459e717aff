"""Zero-shot medical VQA evaluation of a saved model, resumable and split over processes, scored like Table 3.

Layout of `out_dir` (one folder per model; one sub-folder per benchmark and split):

    out_dir/vqa-rad-test/shards/rank0.jsonl   predictions as they are produced, one file per process, flushed per batch
    out_dir/vqa-rad-test/predictions.jsonl    all predictions merged in dataset order
    out_dir/vqa-rad-test/metrics.json         `vqa_metrics` of the merged predictions
    out_dir/results.{json,md,png}             Table 3 layout: every benchmark evaluated so far, beside the paper's rows
"""

import json
import math
import os
from pathlib import Path

import torch

from .benchmarks import BENCHMARKS, get_benchmark, load_benchmark
from .metrics import vqa_metrics

# Table 3 of the Llama3-Med paper: open recall / closed accuracy per benchmark, then the average of the six
TABLE3_COLUMNS = [(name, kind) for name in ("vqa-rad", "slake", "path-vqa") for kind in ("open", "closed")]
TABLE3_REFERENCES = [
    ("zero-shot", "LLaVA 7B", (20.74, 59.19, 26.82, 50.24, 8.74, 45.65), 35.23),
    ("zero-shot", "LLaVA-Med 7B (CLIP)", (28.23, 61.40, 39.17, 52.16, 12.30, 54.05), 41.22),
    ("zero-shot", "LLaVA-Med 7B (BioMed CLIP)", (37.84, 60.66, 39.73, 54.33, 11.65, 49.07), 42.21),
    ("zero-shot", "LLaVA-Med 13B (CLIP)", (31.66, 61.40, 37.71, 49.76, 11.34, 49.63), 40.25),
    ("zero-shot", "LLaVA-Med 7B (w/ Mistral)", (32.03, 62.87, 41.63, 56.97, 11.80, 55.47), 43.46),
    ("zero-shot", "Llama3-Med 8B", (31.20, 62.87, 44.34, 61.06, 12.88, 64.97), 46.22),
    ("fine-tuned, 1 epoch", "LLaVA-Med 7B (CLIP)", (28.61, 56.25, 70.58, 54.57, 11.17, 59.19), 46.73),
    ("fine-tuned, 9 epochs", "LLaVA 7B", (50.00, 65.07, 78.18, 63.22, 7.74, 63.20), 54.57),
    ("fine-tuned, 9 epochs", "LLaVA-Med 7B (CLIP)", (66.26, 80.88, 82.30, 84.86, 37.59, 91.54), 73.90),
    ("fine-tuned, 9 epochs", "LLaVA-Med 7B (BioMed CLIP)", (64.75, 83.09, 87.11, 86.78, 39.60, 91.09), 75.40),
    ("fine-tuned, 9 epochs", "LLaVA-Med 13B (CLIP)", (64.58, 77.94, 84.97, 85.58, 38.82, 92.39), 74.05),
]
DEFAULT_PROMPT = "{question}"


# ---------------------------------------------------------------------------------------------------------- JSONL


def read_jsonl(path) -> list:
    """The complete records of a JSONL file; a last line cut short by a killed run is left out."""
    records = []
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break
    return records


def _repair_jsonl(path: Path) -> None:
    """Cut a file back to its last complete line, so appending after a kill does not glue two records."""
    if not path.exists():
        return
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or (line.strip() and not isinstance(json.loads(line), dict)):
                break
        except ValueError:
            break
        good += len(line)
    if good < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good)


def _write_json(path: Path, value) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(_finite(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _finite(value):
    """NaN (a rate over zero questions) as null, since JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------------- generation


def distributed_state():
    """accelerate's `PartialState`, also for `torchrun` on a machine without accelerators (gloo on CPU)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState only sets up CPU processes when told so; without any accelerator, CPU is the only choice anyway
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    return PartialState(cpu=cpu)


def load_model_and_processor(model_dir, device=None, dtype=None, trust_remote_code=False):
    """`(model, processor)` from a saved folder (or Hub id), in eval mode on `device`."""
    import hf_medvlm  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    options = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=trust_remote_code, **options)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model.to(device or "cpu").eval(), processor


def generate_batch(model, processor, images, questions, max_new_tokens=64) -> list:
    """Greedy answers to one batch: each question with its image through the chat template, left padded."""
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in questions
    ]
    inputs = processor(images=list(images), text=prompts, padding=True, padding_side="left", return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    answers = processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1]:])
    return [answer.strip() for answer in answers]


def _check_run_settings(run_dir: Path, settings: dict, state) -> None:
    """Refuse to resume predictions made with another model or generation settings."""
    path = run_dir / "run.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = {key: (before.get(key), value) for key, value in settings.items() if before.get(key) != value}
        if changed:
            detail = "; ".join(f"{key}: {old!r} before, {new!r} now" for key, (old, new) in changed.items())
            raise ValueError(f"{run_dir} holds predictions made with other settings ({detail}); use another out_dir")
    elif state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)


def run_generation(
    model_dir, dataset, run_dir, fields, question, *, batch_size=8, max_new_tokens=64, settings=None, dtype=None,
    trust_remote_code=False, callback=None, progress=True,
):
    """
    Generate one answer per row of `dataset` (columns `id`, `image` and those in `fields`), resumably, split over the
    processes of an accelerate launch. `question(row)` gives the user text. Each process appends
    `{"id", *fields, "prediction"}` records to `run_dir/shards/rank{i}.jsonl`, flushed per batch; ids found in any
    shard are skipped. After every batch `callback(batch_number, records)` runs; an exception from it stops the run
    with the finished batches kept. Returns all records in dataset order on the main process, None elsewhere.
    """
    state = distributed_state()
    run_dir, shards = Path(run_dir), Path(run_dir) / "shards"
    model_path = Path(str(model_dir))
    model_name = str(model_path.resolve()) if model_path.exists() else str(model_dir)
    settings = dict(settings or {}, model=model_name, max_new_tokens=max_new_tokens)
    if state.is_main_process:
        shards.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    _check_run_settings(run_dir, settings, state)
    own = shards / f"rank{state.process_index}.jsonl"
    _repair_jsonl(own)
    state.wait_for_everyone()
    done = {str(record["id"]) for path in sorted(shards.glob("*.jsonl")) for record in read_jsonl(path)}
    ids = [str(value) for value in dataset["id"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset ids are not unique: {len(ids)} rows, {len(set(ids))} distinct ids")
    pending = [index for index, value in enumerate(ids) if value not in done]
    state.wait_for_everyone()  # every process has read the shards before any writes to them

    with state.split_between_processes(pending) as mine:
        mine = list(mine)
    if mine:
        from tqdm.auto import tqdm

        model, processor = load_model_and_processor(model_dir, state.device, dtype, trust_remote_code)
        batches = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
        bar = tqdm(
            total=len(mine), unit="question", desc=f"generate (process {state.process_index})",
            disable=not progress, position=state.process_index,
        )
        try:
            with own.open("a", encoding="utf-8") as handle:
                for number, indices in enumerate(batches, start=1):
                    rows = list(dataset.select(indices))
                    answers = generate_batch(
                        model, processor, [row["image"] for row in rows], [question(row) for row in rows],
                        max_new_tokens,
                    )
                    records = [
                        {"id": str(row["id"]), **{field: row[field] for field in fields}, "prediction": answer}
                        for row, answer in zip(rows, answers)
                    ]
                    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
                    handle.flush()
                    bar.update(len(records))
                    if callback is not None:
                        callback(number, records)
        finally:
            bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    found = {}
    for path in sorted(shards.glob("*.jsonl")):
        for record in read_jsonl(path):
            found.setdefault(str(record["id"]), record)
    merged = [found[value] for value in ids if value in found]
    missing = len(ids) - len(merged)
    if missing:
        raise RuntimeError(f"{missing} of {len(ids)} rows have no prediction in {shards}; rerun to finish them")
    temporary = run_dir / "predictions.jsonl.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in merged)
    os.replace(temporary, run_dir / "predictions.jsonl")
    return merged


# ----------------------------------------------------------------------------------------------------- evaluation


def evaluate_model(
    model_dir, dataset, split="test", limit=None, batch_size=8, out_dir="outputs/eval", *, data=None,
    max_new_tokens=64, prompt=DEFAULT_PROMPT, name=None, dtype=None, trust_remote_code=False, callback=None,
    progress=True, cache_dir=None,
):
    """
    Zero-shot evaluation of a saved model on one benchmark split ("vqa-rad", "slake", "path-vqa"), as in Table 3;
    also "fine-detail" (`hf_medvlm.fine_detail`, read from `data`), whose metrics stay out of the Table 3 files.

    `data` reads the benchmark from a local folder/file or another Hub id (see `load_benchmark`); `limit` keeps the
    first N questions; `prompt` formats the question (`"{question}"`); answers are greedy, at most `max_new_tokens`.
    A rerun with the same `out_dir` resumes. Launched with accelerate, the processes share the questions.
    Writes the files listed in the module docstring and prints the results table. Returns, on the main process,
    `{"metrics": vqa_metrics, "table": results_table(out_dir, split), ...}`; None on the other processes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if "{question}" not in prompt:
        raise ValueError(f"prompt must contain '{{question}}', got {prompt!r}")
    state = distributed_state()
    benchmark = get_benchmark(dataset)
    with state.main_process_first():  # one process downloads and caches, the others read the cache
        questions = load_benchmark(benchmark.name, split, data, cache_dir=cache_dir)
    total = len(questions)
    if limit is not None:
        questions = questions.select(range(min(limit, total)))
    out_dir = Path(out_dir)
    run_dir = out_dir / f"{benchmark.name}-{split}"
    records = run_generation(
        model_dir, questions, run_dir, ("question", "answer", "answer_type"),
        lambda row: prompt.format(question=row["question"]), batch_size=batch_size, max_new_tokens=max_new_tokens,
        settings={"prompt": prompt, "dataset": benchmark.name, "split": split}, dtype=dtype,
        trust_remote_code=trust_remote_code, callback=callback, progress=progress,
    )
    if records is None:
        return None
    metrics = vqa_metrics(
        [record["prediction"] for record in records], [record["answer"] for record in records],
        [record["answer_type"] for record in records],
    )
    summary = {
        "model": name or Path(str(model_dir)).name,
        "model_dir": str(model_dir),
        "dataset": benchmark.name,
        "split": split,
        "questions": len(records),
        "split_questions": total,
        "complete": len(records) == total,
        "max_new_tokens": max_new_tokens,
        "prompt": prompt,
        "metrics": metrics,
    }
    _write_json(run_dir / "metrics.json", summary)
    if benchmark.name not in BENCHMARKS:  # not a Table 3 benchmark: its metrics stand alone
        print(json.dumps({"dataset": benchmark.name, "questions": len(records), **metrics}, indent=1))
        return {**summary, "table": None}
    table = write_results(out_dir, split)
    print(format_results_markdown(table))
    return {**summary, "table": table}


# ---------------------------------------------------------------------------------------------------------- table


def results_table(out_dir, split="test") -> dict:
    """Our row in the Table 3 layout from every `*/metrics.json` of `split` in `out_dir`, and the paper's rows."""
    out_dir = Path(out_dir)
    values, questions, model, complete = {}, {}, None, True
    for path in sorted(out_dir.glob("*/metrics.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("split") != split or summary.get("dataset") not in BENCHMARKS:
            continue
        model = model or summary["model"]
        metrics = summary["metrics"]
        values[f"{summary['dataset']}/open"] = metrics.get("open_recall")
        values[f"{summary['dataset']}/closed"] = metrics.get("closed_accuracy")
        questions[summary["dataset"]] = summary["questions"]
        complete = complete and summary.get("complete", False)
    columns = [f"{name}/{kind}" for name, kind in TABLE3_COLUMNS]
    row = [values.get(column) for column in columns]
    # the paper's average is over all six cells; a partial row has none
    average = sum(row) / len(row) if all(value is not None for value in row) else None
    return {
        "split": split,
        "columns": columns,
        "ours": {
            "model": model, "values": dict(zip(columns, row)), "average": average, "questions": questions,
            "complete": complete and len(questions) == len(BENCHMARKS),
        },
        "references": [
            {"group": group, "model": label, "values": dict(zip(columns, cells)), "average": avg}
            for group, label, cells, avg in TABLE3_REFERENCES
        ],
    }


def _cell(value) -> str:
    return "/" if value is None else f"{value:.2f}"


def format_results_markdown(table: dict) -> str:
    """Markdown in the layout of Table 3: open recall and closed accuracy per benchmark, then the average."""
    titles = {name: benchmark.title for name, benchmark in BENCHMARKS.items()}
    header = ["model"] + [f"{titles[c.split('/')[0]]} {c.split('/')[1]}" for c in table["columns"]] + ["average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ours = table["ours"]
    label = f"**{ours['model'] or 'ours'}** (ours)"
    counts = ", ".join(f"{titles[name]} {count}" for name, count in ours["questions"].items())
    lines.append(
        "| " + " | ".join([label] + [_cell(ours["values"][c]) for c in table["columns"]] + [_cell(ours["average"])])
        + " |"
    )
    group = None
    for reference in table["references"]:
        if reference["group"] != group:
            group = reference["group"]
            lines.append("| *" + group + " (paper)* |" + " |" * (len(header) - 1))
        cells = [_cell(reference["values"][c]) for c in table["columns"]] + [_cell(reference["average"])]
        lines.append("| " + " | ".join([reference["model"]] + cells) + " |")
    note = f"\n\nOurs: {table['split']} split, questions evaluated: {counts or 'none'}"
    if not ours["complete"]:
        note += " (partial: not every benchmark, or not every question of a split; no average)"
    return "\n".join(lines) + note + ".\nOpen: recall of ground-truth tokens; closed: accuracy (LLaVA-Med protocol)."


def plot_results(table: dict, path) -> Path:
    """A grouped bar chart of the table: one group per column, one bar per model (ours and the zero-shot rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {name: benchmark.title for name, benchmark in BENCHMARKS.items()}
    columns = table["columns"] + ["average"]
    labels = [f"{titles[c.split('/')[0]]}\n{c.split('/')[1]}" for c in table["columns"]] + ["average"]
    ours = table["ours"]
    rows = [(f"{ours['model'] or 'ours'} (ours)", {**ours["values"], "average": ours["average"]})]
    rows += [
        (reference["model"], {**reference["values"], "average": reference["average"]})
        for reference in table["references"] if reference["group"] == "zero-shot"
    ]
    width = 0.8 / len(rows)
    figure, axes = plt.subplots(figsize=(12, 4.5))
    for number, (label, values) in enumerate(rows):
        heights = [values.get(column) if values.get(column) is not None else float("nan") for column in columns]
        positions = [index + (number - (len(rows) - 1) / 2) * width for index in range(len(columns))]
        bars = axes.bar(positions, heights, width, label=label, color="black" if number == 0 else None)
        if number == 0:  # our values written out, since a near-zero bar is invisible
            axes.bar_label(bars, labels=[_cell(values.get(column)) for column in columns], fontsize=7, padding=2)
    axes.set_xticks(range(len(columns)), labels)
    axes.set_ylabel("open recall / closed accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"Medical VQA, {table['split']} split: ours beside the zero-shot rows of Table 3 (Llama3-Med paper)")
    axes.legend(fontsize=7, ncol=2, loc="upper left")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_results(out_dir, split="test") -> dict:
    """Write `results.json`, `results.md` and `results.png` for `split` into `out_dir`; returns the table."""
    out_dir = Path(out_dir)
    table = results_table(out_dir, split)
    suffix = "" if split == "test" else f"-{split}"
    _write_json(out_dir / f"results{suffix}.json", table)
    (out_dir / f"results{suffix}.md").write_text(format_results_markdown(table) + "\n", encoding="utf-8")
    plot_results(table, out_dir / f"results{suffix}.png")
    return table


__all__ = [
    "DEFAULT_PROMPT",
    "TABLE3_COLUMNS",
    "TABLE3_REFERENCES",
    "evaluate_model",
    "format_results_markdown",
    "generate_batch",
    "load_model_and_processor",
    "plot_results",
    "read_jsonl",
    "results_table",
    "run_generation",
    "write_results",
]
