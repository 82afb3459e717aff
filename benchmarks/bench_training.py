"""Training speed and memory on this CPU.

1. Every tiny stage (recipes/tiny: SmolLM2-135M-Instruct + a small random ViT, scales 64/128) as its own process,
   exactly as `recipes/tiny/run.sh` runs it: samples/s (wall clock), the process's CPU seconds (less sensitive to
   other load on the machine) and its peak resident memory (`os.wait4` rusage).
2. One training step, ours vs transformers' `LlavaForConditionalGeneration` with the same backbones and weights at
   one scale (where both are the same LLaVA-1.5 computation): forward + backward + AdamW step on identical batches,
   one thread, best CPU time of n interleaved rounds, with an A/A control (LLaVA against itself); then the same pair
   end to end through TRL's `SFTTrainer`, each with its own processor.

    python benchmarks/bench_training.py [--repeats 5] [--out benchmarks/results]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = {
    "stage1_alignment": ("captions.jsonl", None),
    "stage2_instruction": ("conversations.jsonl", "stage1_alignment"),
    "lora": ("conversations.jsonl", "stage1_alignment"),
}


def run_stage(name, work: Path) -> dict:
    """One tiny recipe in a child process; its own rusage gives peak memory and CPU time."""
    data_file, previous = STAGES[name]
    overrides = ["--output_dir", str(work / name), "--dataset_path", str(work / "data" / data_file),
                 "--disable_tqdm", "true", "--logging_steps", "100"]
    if previous:
        overrides += ["--model_name_or_path", str(work / previous)]
    command = [sys.executable, "-m", "hf_medvlm.training", "--config", str(REPO / "recipes" / "tiny" / f"{name}.yaml")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command + overrides, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory and CPU time
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            log.seek(0)
            raise RuntimeError(f"{name} failed:\n{log.read().decode()[-3000:]}")
    metrics = json.loads((work / name / "train_results.json").read_text())
    samples = metrics["train_samples_per_second"] * metrics["train_runtime"]
    return {
        "samples": round(samples),
        "train_samples_per_s": metrics["train_samples_per_second"],
        "train_runtime_s": metrics["train_runtime"],
        "process_wall_s": time.perf_counter() - started,
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
    }


def run_stages(work: Path) -> dict:
    from hf_medvlm.training import make_tiny_dataset

    make_tiny_dataset(work / "data", num_images=16)
    return {name: run_stage(name, work) for name in STAGES}


# ---------------------------------------------------------------------------------------------------------------------
# ours vs transformers' LLaVA


def twin_models():
    """`(ours, llava, processor)`: one scale, the tiny recipe's backbones, identical weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from hf_medvlm.assembly import build_model

    vision = dict(model_type="clip_vision_model", hidden_size=192, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=3, patch_size=16, image_size=64, projection_dim=128)
    torch.manual_seed(0)
    ours, processor = build_model(vision=vision, scales=[64])
    config = ours.config
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict(),
        image_token_id=config.image_token_id, projector_hidden_act=config.projector_hidden_act,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_seq_length=config.image_seq_length, tie_word_embeddings=config.tie_word_embeddings,
    )
    llava = LlavaForConditionalGeneration(llava_config)
    llava.load_state_dict(ours.state_dict(), strict=True)
    return ours.train(), llava.train(), processor


def batches(processor, count=4, batch_size=4):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from hf_medvlm.training import load_training_dataset, make_tiny_dataset

    folder = Path(tempfile.mkdtemp())
    rows = load_training_dataset(make_tiny_dataset(folder, num_images=count * batch_size)["conversations"])
    collate = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True, max_length=256)
    return [collate([dict(rows[i]) for i in range(k, k + batch_size)]) for k in range(0, len(rows), batch_size)]


def step_time(model, batch_list, repeats):
    """Least CPU time of one forward + backward + AdamW step over `repeats` passes through the batches."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batch_list[0])  # warm-up, also creates the optimizer state
    best = float("inf")
    for _ in range(repeats):
        for batch in batch_list:
            start = time.process_time()
            step(batch)
            best = min(best, time.process_time() - start)
    return best


def compare_steps(repeats) -> dict:
    ours, llava, processor = twin_models()
    ours_batches = batches(processor)
    llava_batches = [dict(b, pixel_values=b["pixel_values"][:, 0]) for b in ours_batches]  # one tile: (N, 3, H, W)
    with torch.no_grad():  # same computation before timing anything
        difference = (ours(**ours_batches[0]).logits - llava(**llava_batches[0]).logits).abs().max().item()
    times = {"ours": [], "llava": [], "llava_again": []}
    for _ in range(repeats):  # interleaved rounds so drifting load hits both alike
        times["ours"].append(step_time(ours, ours_batches, 1))
        times["llava"].append(step_time(llava, llava_batches, 1))
        times["llava_again"].append(step_time(llava, llava_batches, 1))
    best = {k: min(v) for k, v in times.items()}
    return {
        "max_logit_difference": difference,
        "step_cpu_s": best,
        "ours_vs_llava": best["ours"] / best["llava"],
        "llava_vs_llava_control": best["llava_again"] / best["llava"],
        "batch": {k: list(v.shape) for k, v in ours_batches[0].items()},
    }


def compare_trainers(repeats) -> dict:
    """SFTTrainer end to end (collation included): ours with our processor, LLaVA with transformers' LlavaProcessor."""
    from transformers import CLIPImageProcessor, LlavaProcessor
    from trl import SFTConfig, SFTTrainer

    from hf_medvlm.training import apply_stage, load_training_dataset, make_tiny_dataset

    ours, llava, processor = twin_models()
    llava_processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        tokenizer=processor.tokenizer, patch_size=16, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token=processor.image_token, chat_template=processor.chat_template,
    )
    folder = Path(tempfile.mkdtemp())
    rows = load_training_dataset(make_tiny_dataset(folder, num_images=16)["conversations"])
    for model in (ours, llava):  # stage 2: projector + LLM
        model.requires_grad_(False)
        for module in (model.model.multi_modal_projector, model.model.language_model, model.lm_head):
            module.requires_grad_(True)
    apply_stage(ours, "instruction")

    def cpu_seconds(model, proc):
        args = SFTConfig(output_dir=str(folder / "out"), per_device_train_batch_size=4, max_steps=4, bf16=False,
                         gradient_checkpointing=False, activation_checkpointing=False, use_cpu=True,
                         dataloader_pin_memory=False, report_to="none", save_strategy="no", logging_steps=100,
                         disable_tqdm=True, assistant_only_loss=True, max_length=256, learning_rate=1e-5)
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=proc)
        start = time.process_time()
        trainer.train()
        return time.process_time() - start

    times = {"ours": [], "llava": []}
    for _ in range(repeats):
        times["ours"].append(cpu_seconds(ours, processor))
        times["llava"].append(cpu_seconds(llava, llava_processor))
    best = {k: min(v) for k, v in times.items()}
    return {"train_4_steps_cpu_s": best, "ours_vs_llava": best["ours"] / best["llava"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--skip-stages", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    report = {"torch_threads_stages": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if not args.skip_stages:
        with tempfile.TemporaryDirectory() as work:
            report["stages"] = run_stages(Path(work))
    torch.set_num_threads(1)  # CPU time on one thread barely moves with other load on the machine
    report["step"] = compare_steps(args.repeats)
    report["trainer"] = compare_trainers(max(1, args.repeats // 2))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_training.json").write_text(json.dumps(report, indent=2))
    lines = ["# Training benchmark (CPU)", ""]
    if "stages" in report:
        lines += [
            f"Tiny recipes (SmolLM2-135M-Instruct + random 4-layer ViT, scales 64/128), {report['cpu_count']} cores, "
            f"{report['torch_threads_stages']} torch threads, each stage its own process.", "",
            "| stage | samples | samples/s | train s | process wall s | process CPU s | peak RSS |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in report["stages"].items():
            lines.append(f"| {name} | {s['samples']} | {s['train_samples_per_s']:.2f} | {s['train_runtime_s']:.1f} | "
                         f"{s['process_wall_s']:.1f} | {s['process_cpu_s']:.1f} | {s['peak_rss_gib']:.2f} GiB |")
        lines.append("")
    step, trainer = report["step"], report["trainer"]
    lines += [
        "One scale, same backbones and weights (max logit difference "
        f"{step['max_logit_difference']:.1e}), 1 thread, best CPU time:", "",
        "| measure | value |", "|---|---|",
        f"| training step (fwd + bwd + AdamW), ours vs LlavaForConditionalGeneration | {step['ours_vs_llava']:.3f}x "
        f"({step['step_cpu_s']['ours']:.3f} s vs {step['step_cpu_s']['llava']:.3f} s) |",
        f"| A/A control: LLaVA vs itself | {step['llava_vs_llava_control']:.3f}x |",
        f"| SFTTrainer, 4 steps incl. collation, ours vs LLaVA + LlavaProcessor | {trainer['ours_vs_llava']:.3f}x "
        f"({trainer['train_4_steps_cpu_s']['ours']:.2f} s vs {trainer['train_4_steps_cpu_s']['llava']:.2f} s) |",
    ]
    (out / "bench_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
