"""The smallest end-to-end run: assemble, ask about a real CT slice, export as remote code, reload fresh, compare."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from .assembly import SMALL_RANDOM_VISION, build_model
from .medical_image import load_medical_image

RELOAD_AND_ANSWER = """
import json, sys, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from PIL import Image
folder, image_path, prompt, new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
inputs = processor(images=[Image.open(image_path)], text=prompt, return_tensors="pt")
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
print(json.dumps({"ids": output[0, inputs["input_ids"].shape[1]:].tolist(), "class": type(model).__module__}))
"""


def reload_and_answer(folder, image_path, prompt: str, new_tokens: int) -> dict:
    """Load `folder` in a fresh Python process, offline, with `AutoModelForImageTextToText` + `trust_remote_code`,
    and answer `prompt` (already chat-formatted) about the image greedily. Returns `{"ids", "class"}`: the generated
    token ids and the module the model class came from (`transformers_modules...` for remote code)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RELOAD_AND_ANSWER), str(folder), str(image_path), prompt,
         str(new_tokens)],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reloading {folder} in a fresh process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _ct_slice():
    """CT_small.dcm from pydicom's wheel: a real 16-bit CT slice, windowed for soft tissue."""
    from pydicom.data import get_testdata_file

    return load_medical_image(get_testdata_file("CT_small.dcm"), window="abdomen")


def run_quickstart(out_dir="outputs/quickstart", scales=(128, 256, 384), question=None, new_tokens=24) -> dict:
    """Assemble, answer, export, reload in a fresh process and check the answers agree; returns the report."""
    out_dir = Path(out_dir)
    question = question or "What imaging modality is shown in this image?"
    report, started = {}, time.perf_counter()

    vision = dict(SMALL_RANDOM_VISION, image_size=scales[0])
    model, processor = build_model(vision=vision, scales=list(scales))
    report["assemble_s"] = time.perf_counter() - started
    print(
        f"assembled: SmolLM2-135M-Instruct (pre-trained) + a {vision['num_hidden_layers']}-layer ViT "
        f"(RANDOMLY INITIALISED: answers are not grounded in the image), scales {list(scales)}, "
        f"{model.config.num_tiles} tiles and {model.config.image_seq_length} image tokens per image"
    )

    image = _ct_slice()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    tick = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    answer_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    report["generate_s"] = time.perf_counter() - tick
    report["answer"] = processor.post_process_image_text_to_text([answer_ids])[0]

    tick = time.perf_counter()
    export = out_dir / "model"
    model.save_pretrained(export)
    processor.save_pretrained(export)
    image_path = out_dir / "ct_small.png"
    image.save(image_path)
    report["export_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    reloaded = reload_and_answer(export, image_path, prompt, new_tokens)
    report["reload_s"] = time.perf_counter() - tick
    report["reloaded_with_remote_code"] = reloaded["class"].startswith("transformers_modules")
    report["reloaded_answer_matches"] = reloaded["ids"] == answer_ids
    report["export_dir"] = str(export)
    report["total_s"] = time.perf_counter() - started

    print(f"question: {question}")
    print(f"answer:   {report['answer']!r}")
    print(
        f"exported to {export}; reloaded in a fresh process through trust_remote_code: "
        f"{report['reloaded_with_remote_code']}, same answer: {report['reloaded_answer_matches']}"
    )
    print(
        "timings: " + ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in report.items() if k.endswith("_s"))
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if not (report["reloaded_with_remote_code"] and report["reloaded_answer_matches"]):
        raise RuntimeError(f"the reloaded export does not reproduce the answer: {report}")
    return report
