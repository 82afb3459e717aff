"""Medical VQA benchmarks (VQA-RAD, SLAKE, PathVQA): loaders, open/closed assignment, split statistics (Table 2).

Every loader returns a `datasets.Dataset` with the same columns, whatever the source:
`id` (str, stable across runs: the source's `id` column, else the row index for VQA-RAD and PathVQA; `qid` for
SLAKE), `image` (`datasets.Image`),
`question`, `answer` and `answer_type` ("open" or "closed").

Open/closed assignment follows the LLaVA-Med protocol: VQA-RAD and PathVQA questions whose answer is "yes" or "no"
(after answer normalisation) are closed, all others open; SLAKE carries its own `answer_type` field (OPEN/CLOSED),
and only its English questions (`q_lang == "en"`) are kept.
"""

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .metrics import normalize_answer

COLUMNS = ["id", "image", "question", "answer", "answer_type"]
CLOSED_ANSWERS = frozenset({"yes", "no"})
# SLAKE's original release names its validation file validate.json
SPLIT_FILE_NAMES = {"validation": ("validation", "validate", "val"), "train": ("train",), "test": ("test",)}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its short name, Hub id, name in the paper's tables and Table 2 counts per split."""

    name: str
    hub_id: str
    title: str
    # split -> (images, QA pairs, open, closed), as printed in Table 2 of the Llama3-Med paper
    table2: dict


BENCHMARKS = {
    "vqa-rad": Benchmark(
        "vqa-rad", "flaviagiammarino/vqa-rad", "VQA-RAD",
        {"train": (313, 1797, 770, 1027), "test": (203, 451, 179, 272)},
    ),
    "slake": Benchmark(
        "slake", "BoKelvin/SLAKE", "SLAKE",
        {"train": (450, 4919, 2976, 1943), "validation": (96, 1053, 631, 422), "test": (96, 1061, 645, 416)},
    ),
    "path-vqa": Benchmark(
        "path-vqa", "flaviagiammarino/path-vqa", "PathVQA",
        {"train": (2599, 19755, 9949, 9806), "validation": (858, 6279, 3144, 3135), "test": (858, 6761, 3370, 3391)},
    ),
}
# generated locally (`hf_medvlm.fine_detail`), not part of Table 3: evaluated through the same code, reported apart
FINE_DETAIL = Benchmark("fine-detail", "", "Fine-detail phantoms", {})
_ALIASES = {"finedetail": "fine-detail", "vqarad": "vqa-rad", "slake": "slake", "slakeen": "slake", "pathvqa": "path-vqa", "vqapath": "path-vqa"}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name` ("vqa-rad", "slake", "path-vqa"; case, dashes and underscores do not matter)."""
    key = _ALIASES.get("".join(c for c in str(name).lower() if c.isalnum()))
    if key == FINE_DETAIL.name:
        return FINE_DETAIL
    if key is None:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, {FINE_DETAIL.name}")
    return BENCHMARKS[key]


def answer_type_from_answer(answer: str) -> str:
    """"closed" for a yes/no answer, "open" otherwise (the VQA-RAD and PathVQA rule of the LLaVA-Med protocol)."""
    return "closed" if normalize_answer(str(answer)) in CLOSED_ANSWERS else "open"


def _split_aliases(split: str) -> tuple:
    return SPLIT_FILE_NAMES.get(split, (split,))


def _check_columns(dataset, needed, source) -> None:
    missing = [column for column in needed if column not in dataset.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {dataset.column_names}")


def _resolve_image_paths(dataset, root: Path, column: str = "image"):
    """Cast a column of image file names (relative to `root`) to `datasets.Image`."""
    import datasets

    if isinstance(dataset.features[column], datasets.Image):
        return dataset
    root = Path(root)

    def absolute(batch):
        return {column: [str(path if Path(path).is_absolute() else root / path) for path in batch[column]]}

    return dataset.map(absolute, batched=True, desc="image paths").cast_column(column, datasets.Image())


def load_split(source, split: str = "test", cache_dir=None, image_column: str = "image"):
    """
    One split of an image dataset from a Hub id, a folder (Hub parquet layout, imagefolder, `save_to_disk` output)
    or a parquet/JSON/CSV file, whose `image_column` holds images or paths relative to the file's folder.
    """
    import datasets

    source = str(source)
    path = Path(source)
    if path.is_file():
        kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{source}: expected a .parquet, .json, .jsonl or .csv file, or a folder")
        table = datasets.load_dataset(kind, data_files={split: str(path)}, split=split, cache_dir=cache_dir)
        _check_columns(table, (image_column,), source)
        return _resolve_image_paths(table, path.parent, image_column)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
            saved = datasets.load_from_disk(str(path))
            if split not in saved:
                raise ValueError(f"{source}: no split {split!r}; found {list(saved)}")
            return saved[split]
        if (path / "state.json").is_file():  # Dataset.save_to_disk: one split
            return datasets.load_from_disk(str(path))
    elif path.is_absolute() or source.startswith("."):
        raise FileNotFoundError(f"benchmark data not found: {source}")
    # a Hub id, or a folder in the Hub layout (data/test-*.parquet) or imagefolder layout (test/ + metadata.jsonl)
    return datasets.load_dataset(str(source), split=split, cache_dir=cache_dir)


def _slake_image_root(folder: Path) -> Path:
    """The folder SLAKE's `img_name` values (`xmlab0/source.jpg`) are relative to; unpacks `imgs.zip` once."""
    for candidate in (folder / "imgs", folder):
        if any(candidate.glob("xmlab*")):
            return candidate
    archive = folder / "imgs.zip"
    if archive.is_file():
        target = folder / "imgs_unpacked"
        if not (target / ".complete").exists():
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(target)
            (target / ".complete").touch()
        return target / "imgs" if (target / "imgs").is_dir() else target
    return folder / "imgs"


def _slake_records(source: str, split: str, cache_dir=None):
    """`(records, image root)` of one SLAKE split, from a JSON file, a folder (split JSON + imgs/) or the Hub."""
    path = Path(source)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), _slake_image_root(path.parent)
    if not path.is_dir():
        if path.is_absolute() or source.startswith("."):
            raise FileNotFoundError(f"benchmark data not found: {source}")
        from huggingface_hub import snapshot_download

        # the Hub copy is JSON per split plus one imgs.zip: fetch just those
        names = [f"{name}.json" for name in _split_aliases(split)]
        path = Path(
            snapshot_download(source, repo_type="dataset", allow_patterns=[*names, "imgs.zip"], cache_dir=cache_dir)
        )
    for name in _split_aliases(split):
        if (path / f"{name}.json").is_file():
            records = json.loads((path / f"{name}.json").read_text(encoding="utf-8"))
            return records, _slake_image_root(path)
    names = " or ".join(f"{name}.json" for name in _split_aliases(split))
    raise FileNotFoundError(f"{source}: no {names} for split {split!r}")


def _load_slake(source: str, split: str, cache_dir=None):
    import datasets

    records, root = _slake_records(source, split, cache_dir)
    needed = ("img_name", "question", "answer", "answer_type")
    rows = {"id": [], "image": [], "question": [], "answer": [], "answer_type": []}
    for index, record in enumerate(records):
        missing = [key for key in needed if key not in record]
        if missing:
            raise ValueError(f"{source}: SLAKE record {index} lacks {missing}; it has {sorted(record)}")
        if record.get("q_lang", "en") != "en":
            continue
        kind = str(record["answer_type"]).strip().lower()
        if kind not in ("open", "closed"):
            raise ValueError(f"{source}: SLAKE record {index} has answer_type {record['answer_type']!r}")
        image = root / record["img_name"]
        if not image.is_file():
            raise FileNotFoundError(f"{source}: SLAKE record {index}: image {image} not found")
        rows["id"].append(str(record.get("qid", index)))
        rows["image"].append(str(image))
        rows["question"].append(str(record["question"]))
        rows["answer"].append(str(record["answer"]))
        rows["answer_type"].append(kind)
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


def load_benchmark(name: str, split: str = "test", data=None, *, cache_dir=None):
    """
    One split of a benchmark as a `datasets.Dataset` with columns `id, image, question, answer, answer_type`.

    `data`: where to read it: None for the benchmark's Hub id, another Hub id, a folder (Hub layout
    `data/test-*.parquet`, imagefolder `test/` + `metadata.jsonl`, `save_to_disk` output, or for SLAKE a folder with
    `test.json` and `imgs/`), or one parquet/JSON/CSV file (image paths relative to the file's folder).
    """
    benchmark = get_benchmark(name)
    if data is None and not benchmark.hub_id:
        raise ValueError(
            f"{benchmark.name} is generated locally, not downloaded: write it with `hf-medvlm data fine-detail OUT` "
            "and pass --data OUT/test.jsonl"
        )
    source = str(data) if data is not None else benchmark.hub_id
    if benchmark.name == "slake":
        dataset = _load_slake(source, split, cache_dir)
    else:
        dataset = load_split(source, split, cache_dir)
        _check_columns(dataset, ("image", "question", "answer"), source)

        def standardise(batch, indices):
            answers = [str(answer) for answer in batch["answer"]]
            ids = batch["id"] if "id" in batch else indices  # a source's own ids are kept
            return {
                "id": [str(value) for value in ids],
                "answer": answers,
                "answer_type": [answer_type_from_answer(answer) for answer in answers],
            }

        extra = [column for column in dataset.column_names if column not in COLUMNS]
        dataset = dataset.map(
            standardise, batched=True, with_indices=True, remove_columns=extra + ["answer"], desc="open/closed"
        )
    return dataset.select_columns(COLUMNS)


def _image_key(value) -> str:
    """A content hash of an undecoded image cell, so repeated copies of one image count once."""
    if value.get("bytes") is not None:
        return hashlib.sha1(value["bytes"]).hexdigest()
    return hashlib.sha1(Path(value["path"]).read_bytes()).hexdigest()


def split_statistics(dataset) -> dict:
    """`{"images", "qa", "open", "closed"}` of one loaded split; images are counted by content."""
    import datasets

    plain = dataset.cast_column("image", datasets.Image(decode=False))
    images = {_image_key(value) for value in plain["image"]}
    types = dataset["answer_type"]
    closed = sum(1 for kind in types if kind == "closed")
    return {"images": len(images), "qa": len(types), "open": len(types) - closed, "closed": closed}


def benchmark_statistics(name: str, splits=("test",), data=None, *, cache_dir=None) -> dict:
    """`{split: {"ours": counts, "paper": Table 2 counts or None}}` for a benchmark's splits."""
    benchmark = get_benchmark(name)
    result = {}
    for split in splits:
        ours = split_statistics(load_benchmark(name, split, data, cache_dir=cache_dir))
        paper = benchmark.table2.get(split)
        result[split] = {"ours": ours, "paper": dict(zip(("images", "qa", "open", "closed"), paper)) if paper else None}
    return result


def format_statistics(statistics: dict) -> str:
    """A markdown table like Table 2: per benchmark and split, our counts and the paper's side by side."""
    lines = [
        "| dataset | split | images | QA pairs | open | closed |",
        "|---|---|---|---|---|---|",
    ]
    for name, splits in statistics.items():
        title = get_benchmark(name).title
        for split, counts in splits.items():
            ours, paper = counts["ours"], counts["paper"]
            cells = [
                f"{ours[key]:,}" + (f" (paper {paper[key]:,})" if paper else "")
                for key in ("images", "qa", "open", "closed")
            ]
            lines.append(f"| {title} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "answer_type_from_answer",
    "benchmark_statistics",
    "format_statistics",
    "get_benchmark",
    "load_benchmark",
    "load_split",
    "split_statistics",
]
