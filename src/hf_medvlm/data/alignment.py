"""Stage-1 alignment records from figure-caption pairs: "describe the image briefly" -> caption."""

import hashlib
from pathlib import Path

from .card import finish_conversion
from .records import FORMS, DataReport, assistant_turn, read_records, user_turn

# Varied wordings of one request, so the connector learns the image, not a fixed prompt string.
BRIEF_DESCRIPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Give a short description of this figure.",
    "What does this image show? Answer briefly.",
    "Summarize the visual content of the image.",
    "Write a brief caption for this figure.",
    "Provide a concise account of what is shown.",
    "Briefly explain what can be seen in this image.",
    "In a few words, what is depicted here?",
    "Offer a compact description of the figure.",
    "Share a quick summary of the image.",
    "Describe the main findings visible in this picture, briefly.",
    "Present a short overview of the image's content.",
    "What is this figure about? Keep it short.",
    "Render a brief, clear description of the image.",
)


def pick_instruction(record_id: str, instructions=BRIEF_DESCRIPTION_INSTRUCTIONS, seed: int = 0) -> str:
    """The instruction for one record: a stable hash of (seed, id), so reruns and reorderings give the same pairs."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return instructions[int.from_bytes(digest[:8], "big") % len(instructions)]


def _pairs(source, image_column: str):
    """Records from a file path (JSONL, JSON, CSV) or rows of a `datasets.Dataset`, undecoded images as paths."""
    if isinstance(source, (str, Path)):
        return read_records(source), Path(source).name
    from datasets import Dataset

    if isinstance(source, Dataset):
        if image_column in source.features and hasattr(source.features[image_column], "decode"):
            source = source.cast_column(image_column, type(source.features[image_column])(decode=False))
        return list(source), "dataset"
    return list(source), "records"


def _image_path(value, image_root):
    if isinstance(value, dict):  # an undecoded datasets.Image value
        return value.get("path") or None
    if value in (None, ""):
        return None
    return Path(image_root) / str(value) if image_root is not None else Path(str(value))


def alignment_pairs(
    source, image_root=None, *, form: str = "prompt-completion", instructions=BRIEF_DESCRIPTION_INSTRUCTIONS,
    seed: int = 0, image_column: str = "image", caption_column: str = "caption", id_column: str = "id",
    strict: bool = False, out=None, card_kwargs: dict | None = None,
):
    """
    Single-turn alignment records `(instruction + image -> caption)` from figure-caption pairs: a JSONL, JSON or CSV
    file, or a `datasets.Dataset`. LLaVA-Med's field names (`fig_caption`, `pair_id`) are accepted too.

    Returns `(dataset, report)`; `out`, `strict` as in `from_llava_med`.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not instructions:
        raise ValueError("instructions must hold at least one instruction")
    records, name = _pairs(source, image_column)
    report = DataReport(source=name, total=len(records))
    rows, seen = [], set()
    for index, record in enumerate(records):
        record_id = str(record.get(id_column) or record.get("pair_id") or f"record-{index}")
        caption = record.get(caption_column, record.get("fig_caption"))
        if record_id in seen:
            report.reject(record_id, "duplicate_id", "an earlier record has the same id")
            continue
        seen.add(record_id)
        if not isinstance(caption, str) or not caption.strip():
            report.reject(record_id, "empty_caption", f"no text in column {caption_column!r}")
            continue
        value = record.get(image_column)
        if isinstance(value, dict) and value.get("bytes") is not None:
            image = value  # image bytes from a dataset: kept as they are
        else:
            image = _image_path(value, image_root)
            if image is None:
                report.reject(record_id, "missing_image", f"no value in column {image_column!r}")
                continue
            if not Path(image).is_file():
                report.reject(record_id, "missing_image", f"image file not found: {image}")
                continue
            image = str(Path(image).resolve())
        messages = [user_turn(pick_instruction(record_id, instructions, seed), 1), assistant_turn(caption.strip())]
        row = {"id": record_id, "images": [image]}
        if form == "prompt-completion":
            row.update(prompt=messages[:1], completion=messages[1:])
        else:
            row["messages"] = messages
        rows.append(row)
    return finish_conversion(rows, report, form, out, strict, card_kwargs, kind="alignment")
