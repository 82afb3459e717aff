"""Throughput of the LlavaMedHiRes image processors on large images, against transformers' LLaVA-NeXT processor.

Tiling of the 1134 class: scales 378/756/1134 with 378-pixel tiles (14 tiles per image). LLaVA-NeXT is built offline
from its defaults with `image_grid_pinpoints=[[1134, 1134]]`, i.e. a 3 x 3 grid of 378-pixel crops plus the base
image (10 tiles). Images: random uint8 RGB and a random 12-bit grayscale stored as uint16. The figures to read are
the ratios to our torch backend; absolute images/s depend on the machine.

    python benchmarks/bench_image_processing.py [--repeats 10] [--json results.json]
"""

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from transformers import LlavaNextImageProcessor, LlavaNextImageProcessorPil

from hf_medvlm.processing.image_processing_llava_med_hires import (
    LlavaMedHiResImageProcessor,
    LlavaMedHiResImageProcessorPil,
)


SCALES = [378, 756, 1134]


def processors() -> dict:
    next_kwargs = dict(
        size={"shortest_edge": 378}, crop_size={"height": 378, "width": 378}, image_grid_pinpoints=[[1134, 1134]]
    )
    return {
        "llava_med_hires_torch": LlavaMedHiResImageProcessor(scales=SCALES),
        "llava_med_hires_pil": LlavaMedHiResImageProcessorPil(scales=SCALES),
        "llava_next_torchvision": LlavaNextImageProcessor(**next_kwargs),
        "llava_next_pil": LlavaNextImageProcessorPil(**next_kwargs),
    }


def images(height: int, width: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "rgb_uint8": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        # (H, W, 1): transformers' processors do not take 2-D arrays
        "gray_uint16": rng.integers(0, 4096, (height, width, 1), dtype=np.uint16),
    }


def time_one(processor, image, repeats: int) -> dict:
    """Median images/s over `repeats` calls after two warm-up calls, with the output's tile count and value range."""
    try:
        out = processor(image, return_tensors="pt")["pixel_values"]
    except Exception as error:  # a processor may refuse an input kind; record why
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
    processor(image, return_tensors="pt")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        processor(image, return_tensors="pt")
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "images_per_s": 1.0 / median,
        "ms_per_image": 1000.0 * median,
        "ms_min": 1000.0 * min(seconds),
        "tiles": int(out.shape[1] if out.ndim == 5 else out.shape[0]),
        "output_shape": list(out.shape),
        "value_range": [float(out.min()), float(out.max())],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    results = {
        "image_size": [args.height, args.width],
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "runs": {},
    }
    procs = processors()
    for image_name, image in images(args.height, args.width).items():
        runs = {name: time_one(processor, image, args.repeats) for name, processor in procs.items()}
        base = runs["llava_med_hires_torch"].get("images_per_s")
        for run in runs.values():
            if base and "images_per_s" in run:
                run["ratio_to_llava_med_hires_torch"] = run["images_per_s"] / base
        results["runs"][image_name] = runs

    print(f"{args.height}x{args.width}, {args.repeats} repeats, {results['torch_threads']} torch threads")
    for image_name, runs in results["runs"].items():
        print(f"\n{image_name}")
        for name, run in runs.items():
            if "error" in run:
                print(f"  {name:24s} error: {run['error']}")
            else:
                print(
                    f"  {name:24s} {run['images_per_s']:6.2f} img/s  {run['ms_per_image']:7.1f} ms  "
                    f"x{run['ratio_to_llava_med_hires_torch']:.2f}  tiles={run['tiles']:2d}  "
                    f"range=[{run['value_range'][0]:.2f}, {run['value_range'][1]:.2f}]"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
