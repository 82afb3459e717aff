"""Shared pieces of the data commands: reading record files, the rejection report, the TRL dataset forms."""

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value

FORMS = ("messages", "prompt-completion")

_CONTENT = List({"type": Value("string"), "text": Value("string")})
_TURNS = List({"role": Value("string"), "content": _CONTENT})
# TRL's vision-language forms: typed content, images as a sequence of datasets.Image
FEATURES = {
    "messages": Features({"id": Value("string"), "messages": _TURNS, "images": List(Image())}),
    "prompt-completion": Features(
        {"id": Value("string"), "prompt": _TURNS, "completion": _TURNS, "images": List(Image())}
    ),
}


class DataValidationError(ValueError):
    """Raised by `strict` runs when at least one record was rejected; the report is written first."""


@dataclass
class DataReport:
    """Which records were kept and which were rejected, with a reason for each rejection."""

    source: str
    total: int = 0
    kept: int = 0
    rejected: list = field(default_factory=list)

    def reject(self, record_id, reason: str, detail: str = "") -> None:
        self.rejected.append({"id": str(record_id), "reason": reason, "detail": detail})

    def by_reason(self) -> dict:
        return dict(sorted(Counter(item["reason"] for item in self.rejected).items()))

    def summary(self) -> str:
        text = f"{self.source}: kept {self.kept} of {self.total} records, rejected {len(self.rejected)}"
        if self.rejected:
            text += " (" + ", ".join(f"{reason}: {count}" for reason, count in self.by_reason().items()) + ")"
        return text

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "total": self.total,
            "kept": self.kept,
            "rejected_count": len(self.rejected),
            "rejected_by_reason": self.by_reason(),
            "rejected": self.rejected,
        }

    def write(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def check(self, strict: bool) -> None:
        if strict and self.rejected:
            first = self.rejected[0]
            raise DataValidationError(
                f"{self.summary()}; strict mode allows no rejection (first: id {first['id']}: {first['reason']}"
                f"{' - ' + first['detail'] if first['detail'] else ''})"
            )


def read_records(path) -> list[dict]:
    """Records of a JSON list, a JSON object of lists (LLaVA-Med's per-domain caption file), JSONL or CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # a .json file holding one object per line
        if isinstance(data, list):
            return data
        if isinstance(data, dict) and data and all(isinstance(value, list) for value in data.values()):
            return [dict(record, domain=record.get("domain", name)) for name, items in data.items() for record in items]
        if isinstance(data, dict):
            return [data]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
    return records


def user_turn(text: str, num_images: int = 0) -> dict:
    content = [{"type": "image", "text": None} for _ in range(num_images)]
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def build_dataset(rows: list[dict], form: str) -> Dataset:
    """A `datasets.Dataset` in one of TRL's vision-language forms; `images` hold file paths, embedded on save."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    features = FEATURES[form]
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
