"""Model speed on one mid-size CPU configuration, as ratios against named peers measured in the same run.

- vision encoding: batched tiles (ours) vs a per-scale loop and vs a per-tile loop (the test's reference);
- decode tokens/s: ours (3 scales) vs transformers' `LlavaForConditionalGeneration` with the same backbones;
- prefill: time split into vision (tower + merge + projector) and LLM.

    python benchmarks/bench_model.py [--repeats 5] [--out benchmarks/results]
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from hf_medvlm import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration

TILE = 224
SCALES = [TILE, 2 * TILE, 3 * TILE]
VISION = dict(
    model_type="clip_vision_model", hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
    num_attention_heads=6, patch_size=14, image_size=TILE, projection_dim=256,
)
TEXT = dict(
    model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=4, vocab_size=32064, max_position_embeddings=4096, pad_token_id=0, eos_token_id=2,
)
IMAGE_TOKEN_ID = 32000


def best_time(fn, repeats):
    """Least CPU time of `repeats` runs after a warm-up: process time on one thread barely moves with other load."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def per_scale_loop(model, pixels):
    """Each scale's tiles in their own tower call, then the same merge: the naive S2 loop."""
    inner, config = model.model, model.config
    features, start = [], 0
    for scale in config.scales:
        count = (scale // config.tile_size) ** 2
        features.append(inner.encode_tiles(pixels[:, start : start + count], config.vision_feature_layer, "default"))
        start += count
    return inner.merge_scales(torch.cat(features, dim=1), "default")


def per_tile_loop(model, pixels):
    inner, config = model.model, model.config
    tiles = [
        inner.encode_tiles(pixels[:, i : i + 1], config.vision_feature_layer, "default") for i in range(pixels.shape[1])
    ]
    return inner.merge_scales(torch.cat(tiles, dim=1), "default")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps CPU-time figures stable)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    ours = LlavaMedHiResForConditionalGeneration(
        LlavaMedHiResConfig(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE_TOKEN_ID, scales=SCALES)
    ).eval()
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE_TOKEN_ID)
    ).eval()
    # same backbones: copy everything but the projector, whose input width differs
    llava.load_state_dict({k: v for k, v in ours.state_dict().items() if "multi_modal_projector" not in k}, strict=False)

    seq = ours.config.image_seq_length
    pixels = torch.randn(1, ours.config.num_tiles, 3, TILE, TILE)
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * seq + list(range(100, 164))])
    results = {"config": {"scales": SCALES, "tile": TILE, "vision": VISION, "text": TEXT, "image_seq_length": seq}}

    with torch.inference_mode():
        inner = ours.model
        batched = best_time(lambda: inner.get_image_features(pixel_values=pixels), args.repeats)
        loop_scale = best_time(lambda: per_scale_loop(ours, pixels), args.repeats)
        loop_tile = best_time(lambda: per_tile_loop(ours, pixels), args.repeats)
        assert torch.allclose(per_tile_loop(ours, pixels), inner.get_image_features(pixel_values=pixels).last_hidden_state, atol=1e-4)
        results["vision_encoding_s"] = {"batched": batched, "per_scale_loop": loop_scale, "per_tile_loop": loop_tile}
        results["vision_speedup_vs_per_scale_loop"] = loop_scale / batched
        results["vision_speedup_vs_per_tile_loop"] = loop_tile / batched

        def decode_rate(model, model_pixels):
            """Greedy decode steps with the KV cache after an untimed prefill: the per-token cost alone."""
            best = float("inf")
            for _ in range(args.repeats):
                out = model(input_ids=ids, pixel_values=model_pixels, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                start = time.process_time()
                for _ in range(args.new_tokens):
                    out = model(input_ids=token, past_key_values=cache, use_cache=True)
                    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                best = min(best, time.process_time() - start)
            return args.new_tokens / best

        # interleaved rounds, so both models see the same machine load; LLaVA twice, as an A/A control of the noise
        rates = {"ours": [], "llava": [], "llava_again": []}
        for _ in range(3):
            rates["ours"].append(decode_rate(ours, pixels))
            rates["llava"].append(decode_rate(llava, pixels[:, 0]))
            rates["llava_again"].append(decode_rate(llava, pixels[:, 0]))
        ours_rate, llava_rate = max(rates["ours"]), max(rates["llava"])
        control = max(rates["llava_again"]) / llava_rate
        results["decode_tokens_per_s"] = {"ours_3_scales": ours_rate, "transformers_llava": llava_rate}
        results["decode_ratio_ours_vs_llava"] = ours_rate / llava_rate
        results["decode_ratio_llava_vs_itself"] = control

        vision = best_time(lambda: inner.get_image_features(pixel_values=pixels), args.repeats)
        embeds = inner.get_input_embeddings()(ids)
        llm = best_time(lambda: inner.language_model(inputs_embeds=embeds), args.repeats)
        llava_prefill = best_time(lambda: llava(input_ids=ids, pixel_values=pixels[:, 0]), args.repeats)
        results["prefill_s"] = {"vision": vision, "llm": llm, "vision_share": vision / (vision + llm)}
        results["prefill_ratio_ours_vs_llava"] = (vision + llm) / llava_prefill

    lines = [
        f"# Model benchmark (CPU time, {torch.get_num_threads()} thread(s))",
        "",
        f"Scales {SCALES}, tile {TILE}, {ours.config.num_tiles} tiles/image, {seq} image tokens.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| vision encoding, batched vs per-scale loop | {results['vision_speedup_vs_per_scale_loop']:.2f}x faster |",
        f"| vision encoding, batched vs per-tile loop | {results['vision_speedup_vs_per_tile_loop']:.2f}x faster |",
        f"| decode tokens/s, ours vs transformers LLaVA | {results['decode_ratio_ours_vs_llava']:.3f}x "
        f"({ours_rate:.1f} vs {llava_rate:.1f}) |",
        f"| A/A control: LLaVA decode vs itself | {control:.3f}x |",
        f"| prefill: vision / LLM | {vision:.3f} s / {llm:.3f} s (vision {100 * vision / (vision + llm):.0f}%) |",
        f"| prefill, ours (3 scales) vs LLaVA (1 scale) | {results['prefill_ratio_ours_vs_llava']:.2f}x the time |",
    ]
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_model.json").write_text(json.dumps(results, indent=2))
    (out / "bench_model.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
