"""Hugging Face Inference Endpoints handler, copied into every exported folder as `handler.py`.

It imports only torch, transformers, PIL and the standard library: the endpoint runs it where hf_medvlm is not
installed, and the model's own code arrives as remote code with the weights.

Request bodies (JSON):
    {"inputs": {"image": "<URL | base64 | data URI>", "text": "question"}, "parameters": {"max_new_tokens": 64}}
    {"inputs": [{"role": "user", "content": [{"type": "image", "url": "..."}, {"type": "text", "text": "..."}]}]}
Response: `[{"generated_text": "answer"}]`.
"""

import base64
import binascii
from io import BytesIO
from typing import Any

import torch
from PIL import Image
from transformers import pipeline
from transformers.image_utils import load_image

# generation settings a request may set; anything else is refused rather than silently ignored
GENERATION_PARAMETERS = {
    "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams", "repetition_penalty",
}

_IMAGE_TYPES = ("image", "image_url")


class EndpointHandler:
    def __init__(self, path: str = ""):
        device = 0 if torch.cuda.is_available() else -1
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        self.pipe = pipeline("image-text-to-text", model=path, trust_remote_code=True, device=device, dtype=dtype)

    def __call__(self, data: dict[str, Any]) -> list[dict[str, str]]:
        inputs = data.get("inputs", data)
        parameters = dict(data.get("parameters") or {})
        unknown = sorted(set(parameters) - GENERATION_PARAMETERS)
        if unknown:
            raise ValueError(f"unsupported parameters {unknown}; allowed: {sorted(GENERATION_PARAMETERS)}")
        parameters.setdefault("max_new_tokens", 256)
        messages = self._chat(inputs) if isinstance(inputs, list) else self._messages(inputs)
        outputs = self.pipe(text=messages, return_full_text=False, generate_kwargs=parameters)
        return [{"generated_text": output["generated_text"]} for output in outputs]

    @staticmethod
    def _messages(inputs: dict[str, Any]) -> list[dict[str, Any]]:
        """`{"image", "text"}` (or `"question"`) -> one user turn with the image first, as the model was trained."""
        if not isinstance(inputs, dict) or "image" not in inputs:
            raise ValueError('inputs must be {"image": ..., "text": ...} or a list of chat messages')
        question = inputs.get("text", inputs.get("question"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError('inputs needs a non-empty "text" (the question about the image)')
        image = _image(inputs["image"])
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


    @staticmethod
    def _chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chat messages with every image item decoded here, so that none is read from the endpoint's disk."""
        decoded = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = [_image_item(item) if item.get("type") in _IMAGE_TYPES else item for item in content]
            decoded.append({**message, "content": content})
        return decoded


def _image_item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("type") == "image_url":  # OpenAI style: {"image_url": {"url": ...}}
        url = item["image_url"]
        value = url["url"] if isinstance(url, dict) else url
    else:
        value = next((item[key] for key in ("image", "url", "base64") if key in item), None)
    return {"type": "image", "image": value if isinstance(value, Image.Image) else _image(value)}


def _image(value: str) -> Image.Image:
    """An http(s) URL, a data URI or raw base64; never a path on the endpoint's own disk."""
    if not isinstance(value, str):
        raise ValueError("image must be a string: an http(s) URL, a data URI or base64")
    if value.startswith(("http://", "https://")):
        return load_image(value)
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return load_image(Image.open(BytesIO(base64.b64decode(payload, validate=True))))
    except (binascii.Error, OSError, ValueError) as error:
        raise ValueError("image must be an http(s) URL, a data URI or base64-encoded image bytes") from error
