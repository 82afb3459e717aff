"""Read LLaVA-Med's released JSON/JSONL files into TRL's vision-language dataset forms, validating every record."""

from pathlib import Path

from .card import finish_conversion
from .records import FORMS, DataReport, assistant_turn, read_records, user_turn

IMAGE_PLACEHOLDER = "<image>"
USER_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}


def _record_id(record: dict, index: int) -> str:
    for key in ("id", "question_id", "pair_id"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return f"record-{index}"


def _turns(record: dict):
    """`[(from, value), ...]` of a record: `conversations`, the released `conversatons` spelling, or a qa50 record."""
    turns = record.get("conversations", record.get("conversatons"))
    if turns is not None:
        if not isinstance(turns, list):
            return None
        return [(turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None) for turn in turns]
    if "text" in record and "gpt4_answer" in record:  # qa50 eval record: one question, GPT-4's text-only answer
        return [("human", record["text"]), ("gpt", record["gpt4_answer"])]
    return None


def _images(record: dict) -> list:
    image = record.get("image", record.get("images"))
    if image in (None, "", []):
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def convert_record(record: dict, image_root, form: str = "messages", check_images: bool = False):
    """`(row, None)` for a valid LLaVA-Med record, `(None, (reason, detail))` otherwise."""
    turns = _turns(record)
    if turns is None:
        return None, ("no_conversation", "no `conversations`, `conversatons` or qa50 `text`/`gpt4_answer` field")
    if not turns:
        return None, ("no_conversation", "the conversation is empty")
    roles = []
    for number, (source, value) in enumerate(turns):
        role = USER_ROLES.get(str(source).lower(), ASSISTANT_ROLES.get(str(source).lower()))
        if role is None:
            return None, ("unknown_role", f"turn {number} is from {source!r}; expected human/user or gpt/assistant")
        if not isinstance(value, str) or not value.replace(IMAGE_PLACEHOLDER, "").strip():
            return None, ("empty_turn", f"turn {number} ({source}) has no text")
        roles.append(role)
    expected = ["user", "assistant"] * (len(roles) // 2 + 1)
    if roles != expected[: len(roles)]:
        return None, ("non_alternating_turns", f"roles {roles} do not alternate user/assistant from a user turn")
    if roles[-1] != "assistant":
        return None, ("non_alternating_turns", "the last turn is a question without an answer")

    images = _images(record)
    placeholders = [value.count(IMAGE_PLACEHOLDER) for _, value in turns]
    in_answers = sum(count for count, role in zip(placeholders, roles) if role == "assistant")
    if in_answers:
        return None, ("image_placeholder_mismatch", f"{in_answers} {IMAGE_PLACEHOLDER} placeholder(s) in answers")
    if sum(placeholders) != len(images):
        return None, (
            "image_placeholder_mismatch",
            f"{sum(placeholders)} {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s)",
        )
    paths = []
    for name in images:
        path = Path(image_root) / str(name) if image_root is not None else Path(str(name))
        if not path.is_file():
            return None, ("missing_image", f"image file not found: {path}")
        if check_images:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as opened:
                    opened.verify()
            except (UnidentifiedImageError, OSError) as error:
                return None, ("unreadable_image", f"{path}: {error}")
        paths.append(str(path.resolve()))

    # LLaVA's own preprocessing moves the image to the start of its turn, so typed content puts it first too
    messages = []
    for (_, value), role, count in zip(turns, roles, placeholders):
        text = value.replace(IMAGE_PLACEHOLDER, "").strip()
        messages.append(user_turn(text, count) if role == "user" else assistant_turn(text))
    row = {"id": _record_id(record, 0), "images": paths}
    if form == "prompt-completion":
        if len(messages) != 2:
            detail = f"prompt-completion form needs one question and one answer, got {len(messages)} turns"
            return None, ("not_single_turn", detail)
        row.update(prompt=messages[:1], completion=messages[1:])
    else:
        row["messages"] = messages
    return row, None


def from_llava_med(
    path, image_root=None, *, form: str = "messages", strict: bool = False, check_images: bool = False, out=None,
    card_kwargs: dict | None = None,
):
    """
    Convert a LLaVA-Med file (alignment 500k, instruct 10k/60k, 60k inline mention, qa50 eval; JSON or JSONL) into a
    `datasets.Dataset` with `id`, `messages` (or `prompt`/`completion` for stage-1 pairs) and `images`.

    Returns `(dataset, report)`. With `out`, writes the dataset (`save_to_disk`, images embedded), a dataset card
    (`README.md`) and `report.json` there. With `strict`, any rejection raises `DataValidationError` after the report
    is written.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"image root is not a folder: {image_root}")
    records = read_records(path)
    report = DataReport(source=Path(path).name, total=len(records))
    rows, seen = [], set()
    for index, record in enumerate(records):
        record_id = _record_id(record, index) if isinstance(record, dict) else f"record-{index}"
        if not isinstance(record, dict):
            report.reject(record_id, "not_a_record", f"expected a JSON object, got {type(record).__name__}")
            continue
        if record_id in seen:
            report.reject(record_id, "duplicate_id", "an earlier record has the same id")
            continue
        seen.add(record_id)
        row, problem = convert_record(record, image_root, form=form, check_images=check_images)
        if problem:
            report.reject(record_id, *problem)
            continue
        row["id"] = record_id
        rows.append(row)
    return finish_conversion(rows, report, form, out, strict, card_kwargs)
