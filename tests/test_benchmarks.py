"""`benchmarks/run_all.py --quick`: every section present, real token counts, finite ratios."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def _ratios(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (int, float)) and ("_vs_" in key or "speedup" in key):
                yield key, item
            yield from _ratios(item)


def test_run_all_quick_writes_every_section_with_the_real_token_counts(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run_all.json").read_text())
    assert {"vision", "decode", "prefill", "training", "processor"} <= set(results)
    markdown = (tmp_path / "run_all.md").read_text()
    assert "LLaVA-NeXT anyres" in markdown and "bare LLM" in markdown and "A/A control" in markdown

    tile, patch = 56, 14  # QUICK_VISION
    grid, top = tile // patch, 3 * tile // patch
    tokens = results["prefill"]["image_tokens"]
    assert results["prefill"]["scales"] == [tile, 2 * tile, 3 * tile]
    assert tokens["s2_ours"] == tokens["llava_1_scale"] == grid * grid
    # anyres: the base image's grid, then the 3x3-tile image's full grid with one newline token per row
    assert tokens["llava_next_anyres"] == grid * grid + top * top + top

    ratios = dict(_ratios(results))
    assert {"ours_vs_llava", "ours_vs_bare_llm", "llava_vs_itself", "anyres_prefill_vs_s2",
            "batched_speedup_vs_per_scale_loop", "pil_vs_torch"} <= set(ratios)
    for key, value in ratios.items():
        assert math.isfinite(value) and value > 0, (key, value)
    assert results["training"]["max_logit_difference"] < 1e-4  # the timed twins compute the same thing
