"""Every speed benchmark in one run, each as a ratio against a named peer measured side by side (CPU process time on
one thread, best of `--repeats`, peers interleaved so drifting machine load hits both alike):

1. vision encoding: batched tiles (ours) vs a per-scale loop;
2. decode tokens/s: ours (3 scales) vs transformers' LLaVA with the same backbones, vs the bare LLM, and LLaVA vs
   itself (the A/A control: how far two identical measurements drift apart here);
3. image tokens per image and prefill time: S2 (ours) vs LLaVA-NeXT anyres tiling at the same scales, with
   transformers' `LlavaNextForConditionalGeneration` on the same backbones, and 1-scale LLaVA for reference;
4. a training step (forward, backward, AdamW) of ours vs `LlavaForConditionalGeneration`, one scale, SmolLM2-135M and
   the tiny recipe's ViT in both, identical weights;
5. image processor images/s: ours (torch and PIL backends) vs `LlavaNextImageProcessor`.

    python benchmarks/run_all.py [--quick] [--repeats 3] [--out benchmarks/results]

Writes `run_all.json` and `run_all.md` to `--out`. `--quick` shrinks models and repeats (a smoke run for tests; its
ratios are not meant to be quoted).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_image_processing  # noqa: E402
import bench_model  # noqa: E402
import bench_training  # noqa: E402

from hf_medvlm import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration  # noqa: E402

IMAGE_TOKEN_ID = bench_model.IMAGE_TOKEN_ID
QUICK_VISION = dict(bench_model.VISION, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, image_size=56, projection_dim=32)
QUICK_TEXT = dict(bench_model.TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2)


def interleaved(measures: dict, rounds: int) -> dict:
    """`{name: best value}` of `measures` (name -> zero-argument timing function, lower is better), run in turns."""
    values = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            values[name].append(measure())
    return {name: min(found) for name, found in values.items()}


def build_models(vision: dict, text: dict) -> dict:
    """Ours (3 scales), LLaVA, LLaVA-NeXT (anyres at the top scale) and the bare LLM, sharing tower and LLM weights."""
    tile = vision["image_size"]
    scales = [tile, 2 * tile, 3 * tile]
    torch.manual_seed(0)
    ours = LlavaMedHiResForConditionalGeneration(
        LlavaMedHiResConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID, scales=scales)
    ).eval()
    shared = {k: v for k, v in ours.state_dict().items() if "multi_modal_projector" not in k}
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    ).eval()
    llava.load_state_dict(shared, strict=False)
    anyres = LlavaNextForConditionalGeneration(
        LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                        image_grid_pinpoints=[[scales[-1], scales[-1]]])
    ).eval()
    missing = anyres.load_state_dict(shared, strict=False).missing_keys
    assert all("multi_modal_projector" in key or "image_newline" in key for key in missing), missing
    llm = LlamaForCausalLM(ours.config.text_config).eval()
    llm.model.load_state_dict(ours.model.language_model.state_dict())
    llm.lm_head.load_state_dict(ours.lm_head.state_dict())
    return {"scales": scales, "ours": ours, "llava": llava, "anyres": anyres, "llm": llm}


def vision_section(models: dict, repeats: int) -> dict:
    ours = models["ours"]
    pixels = torch.randn(1, ours.config.num_tiles, 3, *(2 * [models["scales"][0]]))
    with torch.inference_mode():
        best = interleaved({
            "batched": lambda: bench_model.best_time(lambda: ours.model.get_image_features(pixel_values=pixels), 1),
            "per_scale_loop": lambda: bench_model.best_time(lambda: bench_model.per_scale_loop(ours, pixels), 1),
        }, repeats)
    return {"cpu_s": best, "batched_speedup_vs_per_scale_loop": best["per_scale_loop"] / best["batched"]}


def _decode_seconds(model, inputs: dict, new_tokens: int) -> float:
    """CPU seconds of `new_tokens` greedy steps with the KV cache, after an untimed prefill."""
    out = model(**inputs, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    start = time.process_time()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return time.process_time() - start


def decode_section(models: dict, repeats: int, new_tokens: int) -> dict:
    ours = models["ours"]
    tile = models["scales"][0]
    seq = ours.config.image_seq_length
    text = list(range(100, 164))
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * seq + text])
    pixels = torch.randn(1, ours.config.num_tiles, 3, tile, tile)
    plain = torch.tensor([[1] + [5] * seq + text])  # the bare LLM gets as many prompt tokens, all text
    with torch.inference_mode():
        best = interleaved({
            "ours": lambda: _decode_seconds(ours, {"input_ids": ids, "pixel_values": pixels}, new_tokens),
            "llava": lambda: _decode_seconds(models["llava"], {"input_ids": ids, "pixel_values": pixels[:, 0]},
                                             new_tokens),
            "llava_again": lambda: _decode_seconds(models["llava"], {"input_ids": ids, "pixel_values": pixels[:, 0]},
                                                   new_tokens),
            "bare_llm": lambda: _decode_seconds(models["llm"], {"input_ids": plain}, new_tokens),
        }, repeats)
    rate = {name: new_tokens / seconds for name, seconds in best.items()}
    return {
        "tokens_per_s": rate, "prompt_tokens": ids.shape[1], "new_tokens": new_tokens,
        "ours_vs_llava": rate["ours"] / rate["llava"], "ours_vs_bare_llm": rate["ours"] / rate["bare_llm"],
        "llava_vs_itself": rate["llava_again"] / rate["llava"],
    }


def prefill_section(models: dict, repeats: int) -> dict:
    """Tokens each model gives the LLM for one square image at the top scale, and the prefill (one forward) time."""
    ours, anyres = models["ours"], models["anyres"]
    tile, top = models["scales"][0], models["scales"][-1]
    image = np.random.default_rng(0).integers(0, 256, (top, top, 3), dtype=np.uint8)
    processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=[[top, top]]
    )
    next_inputs = processor(image, return_tensors="pt")
    with torch.inference_mode():
        packed = anyres.model.get_image_features(
            pixel_values=next_inputs["pixel_values"], image_sizes=next_inputs["image_sizes"]
        ).pooler_output
    tokens = {"s2_ours": ours.config.image_seq_length, "llava_1_scale": ours.config.image_seq_length,
              "llava_next_anyres": int(packed[0].shape[0])}
    text = list(range(100, 132))

    def ids(count):
        return torch.tensor([[1] + [IMAGE_TOKEN_ID] * count + text])

    pixels = torch.randn(1, ours.config.num_tiles, 3, tile, tile)
    inputs = {
        "s2_ours": (ours, {"input_ids": ids(tokens["s2_ours"]), "pixel_values": pixels}),
        "llava_1_scale": (models["llava"], {"input_ids": ids(tokens["llava_1_scale"]), "pixel_values": pixels[:, 0]}),
        "llava_next_anyres": (anyres, {"input_ids": ids(tokens["llava_next_anyres"]), **next_inputs}),
    }
    with torch.inference_mode():
        best = interleaved(
            {name: (lambda m=model, i=kwargs: bench_model.best_time(lambda: m(**i), 1))
             for name, (model, kwargs) in inputs.items()},
            repeats,
        )
    return {
        "scales": models["scales"], "image_tokens": tokens, "prefill_cpu_s": best,
        "anyres_tokens_vs_s2": tokens["llava_next_anyres"] / tokens["s2_ours"],
        "anyres_prefill_vs_s2": best["llava_next_anyres"] / best["s2_ours"],
        "s2_prefill_vs_llava_1_scale": best["s2_ours"] / best["llava_1_scale"],
    }


def _tiny_step_comparison(vision: dict, text: dict, repeats: int) -> dict:
    """`bench_training.compare_steps` in miniature for --quick: 1 scale, random tokens, same weights in both."""
    torch.manual_seed(0)
    ours = LlavaMedHiResForConditionalGeneration(
        LlavaMedHiResConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    ).train()
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)
    ).train()
    llava.load_state_dict(ours.state_dict())
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * ours.config.image_seq_length + list(range(100, 132))] * 2)
    pixels = torch.randn(2, 1, 3, vision["image_size"], vision["image_size"])
    batches = {"ours": [{"input_ids": ids, "labels": ids, "pixel_values": pixels}],
               "llava": [{"input_ids": ids, "labels": ids, "pixel_values": pixels[:, 0]}]}
    with torch.no_grad():
        difference = (ours(**batches["ours"][0]).logits - llava(**batches["llava"][0]).logits).abs().max().item()
    best = interleaved({
        "ours": lambda: bench_training.step_time(ours, batches["ours"], 1),
        "llava": lambda: bench_training.step_time(llava, batches["llava"], 1),
        "llava_again": lambda: bench_training.step_time(llava, batches["llava"], 1),
    }, repeats)
    return {"step_cpu_s": best, "ours_vs_llava": best["ours"] / best["llava"],
            "llava_vs_llava_control": best["llava_again"] / best["llava"], "max_logit_difference": difference}


def training_section(repeats: int, quick: bool) -> dict:
    if quick:
        return _tiny_step_comparison(QUICK_VISION, QUICK_TEXT, repeats)
    found = bench_training.compare_steps(repeats)
    return {key: found[key] for key in ("step_cpu_s", "ours_vs_llava", "llava_vs_llava_control", "max_logit_difference")}


def processor_section(repeats: int, side: int) -> dict:
    image = bench_image_processing.images(side * 3 // 4, side)["rgb_uint8"]
    chosen = {name: processor for name, processor in bench_image_processing.processors().items()
              if name in ("llava_med_hires_torch", "llava_med_hires_pil", "llava_next_torchvision")}
    rates = {name: [] for name in chosen}
    for _ in range(repeats):
        for name, processor in chosen.items():
            rates[name].append(bench_image_processing.time_one(processor, image, 3)["images_per_s"])
    best = {name: max(found) for name, found in rates.items()}
    return {
        "image": [side * 3 // 4, side], "images_per_s": best,
        "pil_vs_torch": best["llava_med_hires_pil"] / best["llava_med_hires_torch"],
        "llava_next_vs_ours_torch": best["llava_next_torchvision"] / best["llava_med_hires_torch"],
    }


def markdown(results: dict) -> str:
    v, d, p, t, i = (results[key] for key in ("vision", "decode", "prefill", "training", "processor"))
    rows = [
        ("vision encoding: batched tiles vs per-scale loop", f"{v['batched_speedup_vs_per_scale_loop']:.2f}x faster"),
        ("decode tokens/s: ours vs transformers' LLaVA", f"{d['ours_vs_llava']:.3f}x"),
        ("decode tokens/s: ours vs the bare LLM", f"{d['ours_vs_bare_llm']:.3f}x"),
        ("A/A control: LLaVA decode vs itself", f"{d['llava_vs_itself']:.3f}x"),
        ("image tokens per image: S2 / LLaVA-NeXT anyres / LLaVA",
         f"{p['image_tokens']['s2_ours']} / {p['image_tokens']['llava_next_anyres']} / "
         f"{p['image_tokens']['llava_1_scale']}"),
        ("prefill time: LLaVA-NeXT anyres vs S2", f"{p['anyres_prefill_vs_s2']:.2f}x the time"),
        ("prefill time: S2 vs 1-scale LLaVA", f"{p['s2_prefill_vs_llava_1_scale']:.2f}x the time"),
        ("training step: ours vs LLaVA", f"{t['ours_vs_llava']:.3f}x the time"),
        ("A/A control: LLaVA training step vs itself", f"{t['llava_vs_llava_control']:.3f}x"),
        ("processor images/s: PIL backend vs torch backend", f"{i['pil_vs_torch']:.2f}x"),
        ("processor images/s: LlavaNextImageProcessor vs ours (torch)", f"{i['llava_next_vs_ours_torch']:.2f}x"),
    ]
    header = (f"# Benchmarks, one run ({results['machine']}, CPU time, 1 thread{', quick' if results['quick'] else ''})"
              f"\n\nScales {results['prefill']['scales']}; decode after a {d['prompt_tokens']}-token prompt.\n")
    return header + "\n| measure | ratio |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    vision, text = (QUICK_VISION, QUICK_TEXT) if args.quick else (bench_model.VISION, bench_model.TEXT)
    models = build_models(vision, text)
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "quick": args.quick}
    sections = (
        ("vision", lambda: vision_section(models, repeats)),
        ("decode", lambda: decode_section(models, repeats, 4 if args.quick else args.new_tokens)),
        ("prefill", lambda: prefill_section(models, repeats)),
        ("training", lambda: training_section(repeats, args.quick)),
        ("processor", lambda: processor_section(repeats, 512 if args.quick else 2048)),
    )
    for name, run in sections:
        start = time.perf_counter()
        results[name] = run()
        print(f"{name}: done in {time.perf_counter() - start:.0f}s", flush=True)
    report = markdown(results)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_all.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "run_all.md").write_text(report + "\n")
    return results


if __name__ == "__main__":
    main()
