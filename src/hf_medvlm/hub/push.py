"""Publish an exported folder to the Hugging Face Hub in one commit."""

import logging
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .export import EXAMPLE_IMAGE, REPO_ID_PLACEHOLDER

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "README.md", "handler.py")
# never published: caches, byte code and anything that could hold credentials
_SKIPPED = {".git", ".cache", "__pycache__", ".huggingface"}
_SKIPPED_SUFFIXES = {".pyc", ".lock"}
_SKIPPED_NAMES = {"token", ".env", ".netrc"}


def _check_folder(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no such folder: {model_dir}")
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ValueError(f"{model_dir} is not an export (missing {missing}); run `hf-medvlm export` first")
    if not any(model_dir.glob("*.safetensors")):
        raise ValueError(f"{model_dir} has no safetensors weights")


def _files(model_dir: Path) -> list[Path]:
    files = []
    for path in sorted(model_dir.rglob("*")):
        skipped = set(path.relative_to(model_dir).parts) & _SKIPPED or path.suffix in _SKIPPED_SUFFIXES
        if path.is_file() and not skipped and path.name not in _SKIPPED_NAMES:
            files.append(path)
    return files


def card_for_repo(readme: str, repo_id: str, revision: str | None = None) -> str:
    """The README with the repository's own id in the usage snippets and an absolute widget image URL."""
    card = ModelCard(readme.replace(REPO_ID_PLACEHOLDER, repo_id))
    for example in card.data.get("widget") or []:
        if example.get("src") == EXAMPLE_IMAGE:
            example["src"] = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{EXAMPLE_IMAGE}"
    return str(card)


def commit_operations(model_dir, repo_id: str, revision: str | None = None) -> list[CommitOperationAdd]:
    """One addition per file of the export; the README is adapted to `repo_id` on the way, the folder is not touched."""
    model_dir = Path(model_dir)
    operations = []
    for path in _files(model_dir):
        name = path.relative_to(model_dir).as_posix()
        if name == "README.md":
            content = card_for_repo(path.read_text(encoding="utf-8"), repo_id, revision).encode("utf-8")
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
        else:
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)))
    return operations


def push_to_hub(
    model_dir,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload LlavaMedHiRes model",
) -> str:
    """Create `repo_id` if needed and upload the export in a single commit; returns the commit URL.

    The token comes from the standard places (`HF_TOKEN`, `hf auth login`); it is never printed nor written.
    `revision` names a branch, created from `main` when it does not exist.
    """
    model_dir = Path(model_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repo id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise ValueError(f"repo id must be <namespace>/<name>, got {repo_id!r}")
    _check_folder(model_dir)
    operations = commit_operations(model_dir, repo_id, revision)

    api = HfApi()
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, revision=revision, repo_type="model"
    )
    logger.info("pushed %d files to %s", len(operations), repo_id)
    return commit.commit_url


__all__ = ["push_to_hub", "commit_operations", "card_for_repo"]
