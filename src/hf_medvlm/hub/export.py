"""Export a trained model as a self-contained Hub folder: weights, remote code, processor, card, endpoint handler."""

import logging
import shutil
import sys
from pathlib import Path

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

logger = logging.getLogger(__name__)

# the repository's top-level template (src/hf_medvlm/hub/export.py -> repository root) in a source checkout or an
# editable install; a built wheel installs the same file as data under <prefix>/share/hf-medvlm/
_SOURCE_TEMPLATE = Path(__file__).resolve().parents[3] / "model_card.md"
_INSTALLED_TEMPLATE = Path(sys.prefix) / "share" / "hf-medvlm" / "model_card.md"
MODEL_CARD_TEMPLATE = _SOURCE_TEMPLATE if _SOURCE_TEMPLATE.is_file() else _INSTALLED_TEMPLATE
HANDLER_TEMPLATE = Path(__file__).with_name("endpoint_handler.py")
EXAMPLE_IMAGE = "example.png"
EXAMPLE_QUESTION = "What imaging modality is shown in this image?"
REPO_ID_PLACEHOLDER = "<org>/<model-name>"
DEFAULT_TAGS = ["medical", "biology", "vision-language", "llava", "llava-med", "multi-scale", "hf-medvlm"]
# a dict eval result may leave the task out: the benchmarks of this family are visual question answering
_DEFAULT_TASK = {"task_type": "visual-question-answering", "task_name": "Visual Question Answering"}


def _eval_results(results) -> list[EvalResult]:
    converted = []
    for result in results or []:
        if isinstance(result, EvalResult):
            converted.append(result)
        elif isinstance(result, dict):
            try:
                converted.append(EvalResult(**{**_DEFAULT_TASK, **result}))
            except TypeError as error:
                raise ValueError(f"eval result {result!r} does not fit huggingface_hub.EvalResult: {error}") from None
        else:
            raise ValueError(f"eval results must be EvalResult objects or dicts, got {type(result).__name__}")
    return converted


def example_image() -> Image.Image:
    """A real CT slice (pydicom's CT_small.dcm, abdomen window); a drawn phantom where pydicom is not installed."""
    try:
        from pydicom.data import get_testdata_file

        from ..medical_image import load_medical_image
    except ImportError:
        return _phantom()
    return load_medical_image(get_testdata_file("CT_small.dcm"), window="abdomen").convert("RGB")


def _phantom(size: int = 128) -> Image.Image:
    """A grey CT-like phantom: body outline, two lungs, a spine."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 20, size - 8, size - 20), fill=150)
    draw.ellipse((22, 34, 58, 90), fill=30)
    draw.ellipse((70, 34, 106, 90), fill=30)
    draw.ellipse((56, 86, 72, 102), fill=240)
    return image.convert("RGB")


def _requirements(config) -> str:
    version = ".".join(transformers.__version__.split(".")[:2])
    needs = [f"transformers>={version}", "torch", "pillow"]
    if config.vision_config.model_type == "timm_wrapper":
        needs.append("timm")
    return "\n".join(needs) + "\n"


def render_model_card(
    model,
    *,
    model_name: str,
    repo_id: str | None = None,
    eval_results=None,
    base_model=None,
    license: str = "apache-2.0",
    datasets=None,
    tags=None,
    language="en",
    example_question: str = EXAMPLE_QUESTION,
    template: str | Path | None = None,
) -> ModelCard:
    """The model card: YAML metadata the Hub reads (model-index, widget, ...) over a body rendered from the template."""
    template = Path(template or MODEL_CARD_TEMPLATE)
    if not template.is_file():
        raise FileNotFoundError(f"model card template not found: {template}")
    results = _eval_results(eval_results)
    as_list = lambda value: [value] if isinstance(value, str) else list(value or [])  # noqa: E731
    widget_src = f"https://huggingface.co/{repo_id}/resolve/main/{EXAMPLE_IMAGE}" if repo_id else EXAMPLE_IMAGE
    card_data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=as_list(base_model) or None,
        datasets=as_list(datasets) or None,
        tags=list(dict.fromkeys(DEFAULT_TAGS + as_list(tags))),
        model_name=model_name,
        eval_results=results or None,
        widget=[{"src": widget_src, "text": example_question, "example_title": "CT slice"}],
    )
    config = model.config
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        vision_type=config.vision_config.model_type,
        text_type=config.text_config.model_type,
        parameters=_human(model.num_parameters()),
        scales=list(config.scales),
        tile_size=config.tile_size,
        num_tiles=config.num_tiles,
        image_seq_length=config.image_seq_length,
        example_image=EXAMPLE_IMAGE,
        example_question=example_question,
        base_model=as_list(base_model),
        datasets=as_list(datasets),
        eval_rows=[
            {
                "dataset": r.dataset_name,
                "split": r.dataset_split or "",
                "metric": r.metric_name or r.metric_type,
                "value": r.metric_value,
            }
            for r in results
        ],
    )


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def export_model(
    model_dir,
    out_dir,
    eval_results=None,
    *,
    base_model=None,
    license: str = "apache-2.0",
    datasets=None,
    tags=None,
    language="en",
    model_name: str | None = None,
    repo_id: str | None = None,
    max_shard_size: str | int = "5GB",
    example_question: str = EXAMPLE_QUESTION,
    card_template: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out_dir` ready for `push_to_hub`: sharded safetensors, config with `auto_map`, remote code, processor,
    tokenizer and chat template, `README.md`, `handler.py`, `requirements.txt` and `example.png`.

    Args:
        model_dir: a saved LlavaMedHiRes model with its processor (a training output, a converted checkpoint, ...).
        eval_results: `huggingface_hub.EvalResult`s or dicts of their fields; they become the card's `model-index`.
        base_model, datasets: Hub ids for the card metadata.
        repo_id: the target repository, for absolute links in the card; `push_to_hub` fills it in otherwise.
        overwrite: replace a non-empty `out_dir` (stale shards of an earlier export would be uploaded too).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json)")
    if not any((model_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise FileNotFoundError(f"{model_dir} has no processor; save the processor beside the model first")
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError("out_dir must differ from model_dir: the export rewrites every file")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace it")
    # the registered (local) classes load it; their save_pretrained writes the remote-code files and auto_map
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    if type(model).__module__.split(".")[0] != "hf_medvlm":
        raise ValueError(f"{model_dir} holds a {type(model).__name__}, not a LlavaMedHiRes model")

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    processor.save_pretrained(out_dir)
    shutil.copyfile(HANDLER_TEMPLATE, out_dir / "handler.py")
    (out_dir / "requirements.txt").write_text(_requirements(model.config))
    image = example_image()
    image.thumbnail((256, 256))
    image.save(out_dir / EXAMPLE_IMAGE)

    card = render_model_card(
        model,
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else out_dir.resolve().name),
        repo_id=repo_id,
        eval_results=eval_results,
        base_model=base_model,
        license=license,
        datasets=datasets,
        tags=tags,
        language=language,
        example_question=example_question,
        template=card_template,
    )
    card.save(out_dir / "README.md")
    logger.info("exported %s to %s", model_dir, out_dir)
    return out_dir


__all__ = ["export_model", "render_model_card", "example_image", "MODEL_CARD_TEMPLATE"]
