"""Ask a model one question about one image, streaming the answer as it is generated."""

import sys
from pathlib import Path
from threading import Thread

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer


def load_image(image, window: str | None = None, frame: int | None = None) -> Image.Image:
    """A PIL image as is, or a file (PNG, JPEG, TIFF, DICOM with `window`/`frame`) through `load_medical_image`."""
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    from ..medical_image import load_medical_image  # imported on use: it pulls in numpy and, for DICOM, pydicom

    return load_medical_image(path, window=window, frame=frame)


def ask(
    model_dir_or_id,
    image,
    question: str,
    *,
    max_new_tokens: int = 256,
    window: str | None = None,
    frame: int | None = None,
    out=None,
    echo: bool = True,
    trust_remote_code: bool = False,
    model=None,
    processor=None,
) -> str:
    """Answer `question` about `image` (a path, DICOM included, or a PIL image) with greedy decoding.

    The answer is written piece by piece as it is generated to `out` (default `sys.stdout`; `echo=False` to stay
    quiet) and returned whole.
    `model`/`processor` skip loading when already in memory; `trust_remote_code` is only needed for models whose
    code this package does not provide.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    picture = load_image(image, window=window, frame=frame)
    if model is None:
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir_or_id), trust_remote_code=trust_remote_code)
    if processor is None:
        processor = AutoProcessor.from_pretrained(str(model_dir_or_id), trust_remote_code=trust_remote_code)
    model.eval()
    out = (out or sys.stdout) if echo else None

    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": question}]}]
    # tokenized by the chat template itself, as the pipeline and `transformers serve` do (no second BOS)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure = []

    def generate():
        try:
            with torch.no_grad():
                model.generate(**inputs, streamer=streamer, max_new_tokens=max_new_tokens, do_sample=False)
        except Exception as error:  # surfaced in the caller's thread below
            failure.append(error)
            streamer.end()

    worker = Thread(target=generate, daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        if out is not None:
            out.write(piece)
            out.flush()
    worker.join()
    if failure:
        raise failure[0]
    if out is not None:
        out.write("\n")
    return "".join(pieces)


__all__ = ["ask", "load_image"]
