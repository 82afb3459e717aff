"""Dataset cards, save/load to disk and an explicit `push_to_hub` for the datasets the data commands produce."""

from pathlib import Path

from datasets import Dataset, load_from_disk
from huggingface_hub import DatasetCard, DatasetCardData

KIND_TEXT = {
    "llava-med": (
        "LLaVA-Med records converted to TRL's vision-language form. LLaVA-Med's data is released under CC BY-NC 4.0 "
        "for research use only; derived data keeps that licence.",
        "cc-by-nc-4.0",
    ),
    "alignment": (
        "Stage-1 alignment records: an image with a varied brief-description instruction, answered by the figure's "
        "caption. They train the connector to map image features onto the language model's embedding space.",
        "other",
    ),
    "synthetic": (
        "Conversations written by language models from figure captions (and in-text mentions) without seeing the "
        "images, following the LLaVA-Med / Llama3-Med recipe. They may contain errors that no one checked against the "
        "images; they are training data, not medical knowledge.",
        "other",
    ),
}
FORM_TEXT = {
    "messages": "`messages`: a conversation of `user`/`assistant` turns with typed content "
    '(`{"type": "image"}`, `{"type": "text", "text": ...}`); `images`: the images, one per image item.',
    "prompt-completion": "`prompt`: the user turn (image + instruction); `completion`: the assistant turn; "
    "`images`: the images, one per image item.",
}


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "1M<n<10M"


def dataset_card(
    dataset: Dataset, *, report=None, form: str = "messages", kind: str = "llava-med", pretty_name: str | None = None,
    license: str | None = None, generators: dict | None = None, source: str | None = None,
) -> DatasetCard:
    """A `DatasetCard` (YAML metadata + README text) describing the data, its form, counts and rejections."""
    description, default_license = KIND_TEXT[kind]
    data = DatasetCardData(
        pretty_name=pretty_name or f"hf-medvlm {kind} data",
        license=license or default_license,
        language=["en"],
        task_categories=["image-text-to-text", "visual-question-answering"],
        tags=list(dict.fromkeys(["medical", "biomedical", "llava-med", "vision-language", kind])),
        size_categories=[_size_category(len(dataset))],
    )
    lines = [f"# {data.pretty_name}", "", description, ""]
    if source or report is not None:
        lines += [f"Source: `{source or report.source}`.", ""]
    lines += ["## Format", "", FORM_TEXT[form], "", f"{len(dataset)} records. Features:", ""]
    lines += ["```", str(dataset.features), "```", ""]
    if report is not None:
        lines += ["## Validation", "", report.summary() + ".", ""]
        if report.rejected:
            lines += ["| reason | records |", "|---|---|"]
            lines += [f"| {reason} | {count} |" for reason, count in report.by_reason().items()]
            lines += ["", "Every rejected record, with its id and reason, is listed in `report.json` beside the data."]
            lines += [""]
    if generators:
        lines += ["## Generators", "", "| generator | records |", "|---|---|"]
        lines += [f"| {name} | {count} |" for name, count in generators.items()]
        lines += [""]
    lines += [
        "## Use",
        "",
        "```python",
        "from datasets import load_from_disk  # or load_dataset(repo_id, split='train') once pushed",
        "",
        "dataset = load_from_disk(path)",
        "```",
        "",
        "Train with TRL's `SFTTrainer` and `DataCollatorForVisionLanguageModeling` (`assistant_only_loss=True` for",
        "`messages`, `completion_only_loss=True` for `prompt`/`completion`).",
        "",
        "Not for clinical use: answers are not medical advice.",
        "",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def save_dataset(dataset: Dataset, out, card: DatasetCard | None = None) -> Path:
    """`save_to_disk` (image files embedded as bytes) plus the card as `README.md`."""
    out = Path(out)
    dataset.save_to_disk(str(out))
    if card is not None:
        card.save(out / "README.md")
    return out


def load_dataset_dir(path) -> Dataset:
    """A dataset saved by `save_dataset`."""
    return load_from_disk(str(path))


def push_to_hub(dataset: Dataset, repo_id: str, card: DatasetCard | None = None, *, private: bool = True, token=None):
    """Upload the dataset and its card to a Hub dataset repository (private by default); only ever called on request."""
    from huggingface_hub import HfApi

    HfApi(token=token).create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if card is not None:
        card.push_to_hub(repo_id, repo_type="dataset", token=token)
    # pushed after the card: datasets merges its `configs`/`dataset_info` metadata into the README it finds
    dataset.push_to_hub(repo_id, private=private, token=token)
    return repo_id


def finish_conversion(rows: list[dict], report, form: str, out=None, strict: bool = False, card_kwargs=None, **card):
    """Build the dataset from kept rows; with `out`, write the report first (so `strict` failures keep it), then
    the dataset and its card. Returns `(dataset, report)`."""
    from .records import build_dataset

    report.kept = len(rows)
    dataset = build_dataset(rows, form)
    if out is not None:
        report.write(Path(out) / "report.json")
    report.check(strict)
    if out is not None:
        save_dataset(dataset, out, dataset_card(dataset, report=report, form=form, **card, **(card_kwargs or {})))
    return dataset, report
