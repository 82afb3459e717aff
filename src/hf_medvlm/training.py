"""Training through TRL's `SFTTrainer`: the two-stage curriculum (alignment, instruction), LoRA, and merging.

A run is one YAML recipe read by `TrlParser` into three dataclasses: [`DataArguments`] (local dataset files),
`trl.SFTConfig` (every optimisation setting) and [`ModelArguments`] (what to build or load, and the `stage`). The same
entry point runs in one process or under `accelerate launch`:

    python -m hf_medvlm.training --config recipes/tiny/stage1_alignment.yaml
    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml -m hf_medvlm.training --config RECIPE
    accelerate launch --multi_gpu --num_processes 2 -m hf_medvlm.training --config RECIPE   # DDP over gloo on CPU

Stages (see [`apply_stage`]): `alignment` trains the projector only, `instruction` the projector and the LLM, `lora`
LoRA adapters on the LLM's linear layers plus the whole projector; `train_vision_tower: true` opts the vision tower in.
The policy is written into the saved checkpoint as `config.training_stage` (and `training_stage.json` beside a LoRA
adapter, which has no `config.json` of its own).
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import ModelConfig  # SFTConfig, SFTTrainer and TrlParser load on use: the CLI imports this module

from . import LlavaMedHiResConfig

logger = logging.getLogger(__name__)

STAGES = ("alignment", "instruction", "lora")
# Top-level sub-modules of LlavaMedHiResForConditionalGeneration trained by each stage (before the vision opt-in).
STAGE_TRAINABLE = {
    "alignment": ("multi_modal_projector",),
    "instruction": ("multi_modal_projector", "language_model", "lm_head"),
    "lora": ("multi_modal_projector",),  # plus the LoRA adapters peft adds to the language model
}
TRAINING_STAGE_FILE = "training_stage.json"
DEFAULT_ALIGNMENT_PROMPT = "Describe the image concisely."
DATA_FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --------------------------------------------------------------------------------------------------------------------
# Recipe arguments


@dataclass
class DataArguments:
    """Local training data: a JSONL/JSON/parquet file or a `datasets.save_to_disk` folder.

    Accepted rows (images as `datasets.Image` or file paths relative to `image_root`):
    - conversations: `messages` (+ `images`), trained with `assistant_only_loss`;
    - prompt-completion: `prompt`, `completion` (+ `images`), trained on the completion only;
    - caption pairs: `image` / `images` + `caption`, turned into prompt-completion with `alignment_prompt`;
    - VQA pairs: `image` / `images` + `question` + `answer`, turned into a two-turn conversation.
    """

    dataset_path: str | None = field(default=None, metadata={"help": "Training data file or save_to_disk folder."})
    eval_dataset_path: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_split: str = field(default="train", metadata={"help": "Split to use when the folder holds a DatasetDict."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder that relative image paths start from (default: the data file's)."}
    )
    alignment_prompt: str = field(
        default=DEFAULT_ALIGNMENT_PROMPT, metadata={"help": "User turn that precedes a caption in caption pairs."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` (dtype, LoRA rank/alpha/dropout/targets) plus what to build and which stage to run.

    Either `model_name_or_path` (a previous stage's output folder) or `vision` + `text` (a new model assembled with
    `hf_medvlm.build_model`; both default to the offline defaults: a small random ViT and SmolLM2-135M-Instruct).
    """

    stage: str = field(default="instruction", metadata={"help": f"Training stage: one of {', '.join(STAGES)}."})
    train_vision_tower: bool = field(default=False, metadata={"help": "Opt in to training the vision tower too."})
    vision: dict | str | None = field(
        default=None,
        metadata={"help": "Vision tower: folder / Hub id (CLIP, SigLIP, timm), or a config mapping (random init)."},
    )
    text: str | None = field(default=None, metadata={"help": "LLM folder / Hub id / .gguf file."})
    scales: list[int] | None = field(default=None, metadata={"help": "Image scales, e.g. 378 756 1134."})
    vision_feature_layer: int | None = field(default=None, metadata={"help": "Vision hidden layer (default -2)."})
    image_aspect_ratio: str = field(default="pad", metadata={"help": "'pad' (LLaVA) or 'resize'."})
    image_token: str = field(default="<image>", metadata={"help": "Image placeholder token."})


def build_parser():
    """`TrlParser` over `(DataArguments, SFTConfig, ModelArguments)`."""
    from trl import SFTConfig, TrlParser

    return TrlParser((DataArguments, SFTConfig, ModelArguments))


def parse_recipe(recipe) -> tuple:
    """`(data, SFTConfig, model)` arguments from a YAML path, a mapping, or argv (`["--config", path, "--key", v]`).

    Device-aware defaults (see [`device_overrides`]) are applied before `SFTConfig` validates itself.
    """
    parser = build_parser()
    overrides = device_overrides()
    if isinstance(recipe, (list, tuple)):
        flags = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
        return tuple(parser.parse_args_and_config(args=list(recipe) + flags))
    if isinstance(recipe, (str, Path)):
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe file not found: {path}")
        import yaml

        mapping = yaml.safe_load(path.read_text())
        if not isinstance(mapping, dict):
            raise ValueError(f"recipe {path} must hold a YAML mapping, got {type(mapping).__name__}")
    elif isinstance(recipe, dict):
        mapping = recipe
    else:
        raise TypeError(f"a recipe is a YAML path, a dict or an argv list, got {type(recipe).__name__}")
    from trl import SFTConfig

    mapping = dict(mapping)
    for key, value in (mapping.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    known = {f.name for cls in (DataArguments, SFTConfig, ModelArguments) for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown recipe keys {unknown} (not fields of DataArguments, SFTConfig or ModelArguments)")
    return tuple(parser.parse_dict({**mapping, **overrides}))


def device_overrides() -> dict:
    """Without CUDA: bf16/fp16 and activation (gradient) checkpointing off, said in one log line; they made a
    135M-parameter step 12x slower on CPU (BRIEF §7), and `SFTConfig` refuses bf16 on a CPU-only machine.

    Without any accelerator, `use_cpu` also makes processes started by `torchrun` / `accelerate launch --multi_gpu`
    join one gloo DDP group (accelerate's `--cpu` flag alone starts a single process).
    """
    if torch.cuda.is_available():
        return {}
    logger.warning("no CUDA device: training in float32 without gradient checkpointing (bf16, fp16 and "
                   "gradient_checkpointing set to false)")
    overrides = {
        "bf16": False, "fp16": False, "gradient_checkpointing": False, "activation_checkpointing": False,
        "dataloader_pin_memory": False,  # pinning needs an accelerator; without one it only warns
    }
    if not torch.accelerator.is_available():
        overrides["use_cpu"] = True
    return overrides


# --------------------------------------------------------------------------------------------------------------------
# Stage policies


def apply_stage(model, stage: str, train_vision_tower: bool = False) -> dict:
    """Set `requires_grad` on `model` (a `LlavaMedHiResForConditionalGeneration`) for `stage` and record the policy.

    Returns the record also stored as `model.config.training_stage`: `{"stage", "train_vision_tower", "trainable",
    "previous"}`, where `trainable` lists the top-level sub-modules that train and `previous` the stages the loaded
    checkpoint had already been through. For `lora` everything is frozen here; peft then adds trainable adapters and
    trainable copies of the modules in `trainable` (see [`lora_config`]).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    trainable = list(STAGE_TRAINABLE[stage]) + (["vision_tower"] if train_vision_tower else [])
    model.requires_grad_(False)
    if stage != "lora":
        modules = {"lm_head": model.lm_head, **dict(model.model.named_children())}
        for name in trainable:
            modules[name].requires_grad_(True)
    earlier = getattr(model.config, "training_stage", None) or {}
    previous = list(earlier.get("previous", [])) + ([earlier["stage"]] if "stage" in earlier else [])
    record = {"stage": stage, "train_vision_tower": bool(train_vision_tower), "trainable": trainable, "previous": previous}
    model.config.training_stage = record
    return record


def lora_target_regex(model) -> str:
    """A peft `target_modules` regex naming every `nn.Linear` of the language model and nothing else.

    A suffix list such as `["q_proj", "v_proj"]` would also hit CLIP's attention layers, hence the anchored regex.
    """
    leaves = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.model.language_model.named_modules()
         if isinstance(module, torch.nn.Linear)}
    )
    if not leaves:
        raise ValueError("the language model has no nn.Linear layers for LoRA")
    return rf"model\.language_model\..*\.({'|'.join(leaves)})"


def lora_config(model, model_args: "ModelArguments", record: dict):
    """`peft.LoraConfig` for the `lora` stage: adapters on the LLM's linear layers, projector (and the vision tower
    when opted in) trained in full through `modules_to_save`."""
    from peft import LoraConfig

    modules_to_save = list(record["trainable"]) + list(model_args.lora_modules_to_save or [])
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or lora_target_regex(model),
        modules_to_save=modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        task_type=model_args.lora_task_type,
    )


# --------------------------------------------------------------------------------------------------------------------
# Validation (before anything heavy is loaded)


def _vision_config(vision):
    from transformers import AutoConfig, PreTrainedConfig

    from .assembly import SMALL_RANDOM_VISION

    if vision is None:
        vision = SMALL_RANDOM_VISION
    if isinstance(vision, str) and vision.lstrip().startswith("{"):
        vision = json.loads(vision)
    if isinstance(vision, PreTrainedConfig):
        return vision
    if isinstance(vision, dict):
        vision = dict(vision)
        if "model_type" not in vision:
            raise ValueError(f"vision: a config mapping needs a model_type, got keys {sorted(vision)}")
        return AutoConfig.for_model(vision.pop("model_type"), **vision)
    config = _read_config(vision, "vision")
    return getattr(config, "vision_config", None) or config


def validate_recipe(data_args: DataArguments, training_args, model_args: ModelArguments) -> None:
    """Fail fast, with the offending value in the message, on what would otherwise fail mid-run."""
    if model_args.stage not in STAGES:
        raise ValueError(f"recipe: unknown stage {model_args.stage!r}; expected one of {', '.join(STAGES)}")
    if model_args.use_peft and model_args.stage != "lora":
        raise ValueError(f"recipe: use_peft is set with stage {model_args.stage!r}; LoRA runs say `stage: lora`")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("recipe: load_in_4bit / load_in_8bit are not supported for this model")
    if model_args.image_aspect_ratio not in ("pad", "resize"):
        raise ValueError(f"recipe: image_aspect_ratio must be 'pad' or 'resize', got {model_args.image_aspect_ratio!r}")

    if data_args.dataset_path is None:
        raise ValueError("recipe: dataset_path is required (a JSONL/JSON/parquet file or a save_to_disk folder)")
    for name in ("dataset_path", "eval_dataset_path"):
        value = getattr(data_args, name)
        if value is not None:
            path = Path(value)
            if not path.exists():
                raise ValueError(f"recipe: {name} {value!r} does not exist")
            if path.is_file() and path.suffix not in DATA_FILE_SUFFIXES:
                raise ValueError(f"recipe: {name} {value!r}: expected one of {sorted(DATA_FILE_SUFFIXES)} or a folder")
    if data_args.image_root is not None and not Path(data_args.image_root).is_dir():
        raise ValueError(f"recipe: image_root {data_args.image_root!r} is not a folder")

    if model_args.model_name_or_path is not None:
        if model_args.vision is not None or model_args.text is not None:
            raise ValueError(
                "recipe: give either model_name_or_path (continue from a saved model) or vision + text (build a new "
                "one), not both"
            )
        folder = Path(model_args.model_name_or_path)
        if (folder / "adapter_config.json").is_file():
            raise ValueError(
                f"recipe: {folder} is a LoRA adapter; merge it first (`hf-medvlm merge {folder} OUT`) and train from OUT"
            )
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise ValueError(f"recipe: model_name_or_path {str(folder)!r} has no config.json")
        saved_config = _read_config(model_args.model_name_or_path, "model_name_or_path")
        if model_args.scales is not None:
            saved = saved_config.scales
            if list(model_args.scales) != list(saved):
                raise ValueError(
                    f"recipe: scales {list(model_args.scales)} differ from the saved model's {saved}; the projector's "
                    "input width depends on the scales, so they cannot change between stages"
                )
        image_seq_length = saved_config.image_seq_length
    else:
        vision_config = _vision_config(model_args.vision)
        try:
            options = {} if model_args.vision_feature_layer is None else {"vision_feature_layer": model_args.vision_feature_layer}
            probe = LlavaMedHiResConfig(vision_config=vision_config.to_dict(), scales=model_args.scales, **options)
        except ValueError as error:
            raise ValueError(
                f"recipe: scales {model_args.scales} do not fit the vision tower ({vision_config.model_type}): {error}"
            ) from error
        image_seq_length = probe.image_seq_length
    if training_args.max_length is not None and training_args.max_length <= image_seq_length:
        raise ValueError(
            f"recipe: max_length {training_args.max_length} leaves no room for text after the {image_seq_length} "
            "image tokens of one image"
        )


def _read_config(location, name):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    except OSError as error:
        raise ValueError(f"recipe: cannot read the config of {name} {location!r}: {error}") from error


# --------------------------------------------------------------------------------------------------------------------
# Data


def load_training_dataset(path, image_root=None, alignment_prompt=DEFAULT_ALIGNMENT_PROMPT, split="train"):
    """A `datasets.Dataset` in TRL's vision-language form: `images` (list of `datasets.Image`) plus either `messages`
    or `prompt` + `completion` (conversational). See [`DataArguments`] for the accepted rows."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset {str(path)!r} does not exist")
    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"dataset {str(path)!r} has splits {list(dataset)}, not {split!r}")
            dataset = dataset[split]
        root = Path(image_root) if image_root else path
    else:
        if path.suffix not in DATA_FILE_SUFFIXES:
            raise ValueError(f"dataset {str(path)!r}: expected one of {sorted(DATA_FILE_SUFFIXES)} or a folder")
        dataset = datasets.load_dataset(DATA_FILE_SUFFIXES[path.suffix], data_files=str(path), split="train")
        root = Path(image_root) if image_root else path.parent
    return to_training_format(dataset, root, alignment_prompt=alignment_prompt, source=str(path))


def to_training_format(dataset, image_root, alignment_prompt=DEFAULT_ALIGNMENT_PROMPT, source="dataset"):
    """Normalise `dataset` to `images` + (`messages` | `prompt`, `completion`); see [`load_training_dataset`]."""
    columns = set(dataset.column_names)
    if "image" in columns and "images" not in columns:
        dataset = dataset.map(lambda row: {"images": [row["image"]]}, remove_columns=["image"])
        columns = set(dataset.column_names)
    if "messages" in columns:
        keep = ["messages"]
    elif {"prompt", "completion"} <= columns:
        keep = ["prompt", "completion"]
    elif "caption" in columns:
        dataset = dataset.map(
            lambda row: {
                "prompt": [{"role": "user", "content": alignment_prompt}],
                "completion": [{"role": "assistant", "content": row["caption"]}],
            }
        )
        keep = ["prompt", "completion"]
    elif {"question", "answer"} <= columns:
        dataset = dataset.map(
            lambda row: {
                "messages": [
                    {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": str(row["answer"])},
                ]
            }
        )
        keep = ["messages"]
    else:
        raise ValueError(
            f"{source}: columns {sorted(columns)} are none of the accepted forms: messages; prompt + completion; "
            "caption (+ image); question + answer (+ image)"
        )
    if "images" in dataset.column_names:
        keep = ["images"] + keep
        dataset = _resolve_image_paths(dataset, Path(image_root), source)
    return dataset.select_columns(keep)


def _resolve_image_paths(dataset, image_root: Path, source: str):
    """File-name `images` become absolute paths cast to `datasets.Image` (decoded lazily); missing files fail here."""
    import datasets

    feature = dataset.features["images"]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image):
        return dataset
    missing = []

    def absolute(row):
        paths = [str(p if Path(p).is_absolute() else image_root / p) for p in row["images"]]
        missing.extend(p for p in paths if not Path(p).is_file())
        return {"images": paths}

    dataset = dataset.map(absolute)
    if missing:
        raise ValueError(f"{source}: {len(missing)} image file(s) not found, first: {missing[0]}")
    return dataset.cast_column("images", datasets.List(datasets.Image()))


# --------------------------------------------------------------------------------------------------------------------
# Model


def load_or_build(model_args: ModelArguments):
    """`(model, processor)`: `from_pretrained(model_name_or_path)`, or `build_model(vision, text, scales)`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = None if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if model_args.model_name_or_path is not None:
        location = model_args.model_name_or_path
        if Path(location).exists():
            location = str(Path(location).resolve())  # recorded as the adapter's base: keep it valid from anywhere
        model = AutoModelForImageTextToText.from_pretrained(
            location, dtype=dtype or "auto", attn_implementation=model_args.attn_implementation
        )
        processor = AutoProcessor.from_pretrained(location)
        return model, processor
    from .assembly import build_model

    vision = model_args.vision
    if isinstance(vision, str) and vision.lstrip().startswith("{"):
        vision = json.loads(vision)
    options = {} if model_args.vision_feature_layer is None else {"vision_feature_layer": model_args.vision_feature_layer}
    model, processor = build_model(
        vision=vision, text=model_args.text, scales=model_args.scales, image_token=model_args.image_token,
        image_aspect_ratio=model_args.image_aspect_ratio, dtype=dtype, **options,
    )
    return model, processor


def build(out_dir, vision=None, text=None, scales=None, **options) -> Path:
    """Assemble a new model with `build_model` and save it with its processor as a Hub-ready folder."""
    from .assembly import build_model

    if isinstance(vision, str) and vision.lstrip().startswith("{"):
        vision = json.loads(vision)
    model, processor = build_model(vision=vision, text=text, scales=scales, **options)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What a run leaves behind: the output folder (a model, or a LoRA adapter), final metrics, the log history."""

    output_dir: Path
    stage: dict
    metrics: dict
    log_history: list


def train(recipe, callbacks=None) -> TrainResult:
    """Run one stage from a recipe (YAML path, mapping, or argv list) and save a Hub-ready folder.

    Order: parse and validate the recipe, load the data, build or load the model, apply the stage policy, train with
    `SFTTrainer` (our processor as `processing_class`), save. Fails with `ValueError` before loading a model when the
    recipe is wrong.
    """
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    data_args, training_args, model_args = parse_recipe(recipe)
    validate_recipe(data_args, training_args, model_args)

    train_dataset = load_training_dataset(
        data_args.dataset_path, data_args.image_root, data_args.alignment_prompt, data_args.dataset_split
    )
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    eval_dataset = None
    if data_args.eval_dataset_path is not None:
        eval_dataset = load_training_dataset(
            data_args.eval_dataset_path, data_args.image_root, data_args.alignment_prompt, data_args.dataset_split
        )
    if "messages" in train_dataset.column_names and not training_args.assistant_only_loss:
        logger.warning("conversational data with assistant_only_loss: false trains on user turns and image tokens too")

    from transformers import set_seed

    set_seed(training_args.seed)  # a newly built model's random weights follow the recipe's seed too
    model, processor = load_or_build(model_args)
    output_dir = Path(training_args.output_dir)
    record = apply_stage(model, model_args.stage, model_args.train_vision_tower)
    peft_config = None
    if model_args.stage == "lora":
        peft_config = lora_config(model, model_args, record)
        if not model.config._name_or_path:
            # a freshly built base exists only in memory: save it so the adapter has a base to load onto
            base_dir = output_dir / "base"
            if training_args.process_index == 0:
                model.save_pretrained(base_dir)
                processor.save_pretrained(base_dir)
            model.config._name_or_path = str(base_dir.resolve())

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume is None:
            logger.warning("resume_from_checkpoint: no checkpoint in %s yet, starting from the beginning", output_dir)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    outcome = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        if peft_config is not None:  # an adapter folder has no config.json to carry the record
            (output_dir / TRAINING_STAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        trainer.save_metrics("train", outcome.metrics)
        trainer.save_state()
    return TrainResult(output_dir, record, dict(outcome.metrics), list(trainer.state.log_history))


def merge(adapter_dir, out_dir) -> Path:
    """Fold a LoRA adapter into its base model and save a plain Hub-ready folder (model + processor).

    The base is the adapter's `base_model_name_or_path`; `config.training_stage` of the result records the LoRA stage.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json missing)")
    base_location = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base_location or not (Path(base_location).exists() or "/" in base_location):
        raise ValueError(f"{adapter_dir}: the adapter's base model {base_location!r} cannot be found")
    base = AutoModelForImageTextToText.from_pretrained(base_location)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    stage_file = adapter_dir / TRAINING_STAGE_FILE
    record = json.loads(stage_file.read_text()) if stage_file.is_file() else {"stage": "lora"}
    model.config.training_stage = dict(record, merged_from=str(adapter_dir))
    model.config._name_or_path = ""
    model.save_pretrained(out_dir)
    processor_source = adapter_dir if (adapter_dir / "processor_config.json").is_file() else base_location
    AutoProcessor.from_pretrained(str(processor_source)).save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------------------------
# Synthetic data for the tiny recipes and the tests

_SHAPES = ("circle", "square", "triangle", "cross")
_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


def make_tiny_dataset(out_dir, num_images: int = 16, image_size: int = 96, seed: int = 0) -> dict:
    """Write synthetic images (one coloured shape on a dark, noisy background) and their texts to `out_dir`:

    - `images/NNNN.png`;
    - `captions.jsonl`: `{"image", "caption"}` (stage 1, alignment);
    - `conversations.jsonl`: `{"images", "messages"}`, two question-answer turns (stage 2, instruction).

    Returns the paths `{"images", "captions", "conversations"}`. Captions and answers are functions of the pixels, so
    a model can really learn them.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions, conversations = [], []
    for index in range(num_images):
        shape = _SHAPES[index % len(_SHAPES)]
        colour = list(_COLOURS)[(index // len(_SHAPES)) % len(_COLOURS)]
        background = rng.integers(0, 40, (image_size, image_size, 3), dtype=np.uint8)
        picture = Image.fromarray(background)
        draw = ImageDraw.Draw(picture)
        half = int(image_size * rng.uniform(0.2, 0.35))
        cx, cy = (int(v) for v in rng.integers(half, image_size - half, 2))
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = _COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
        else:
            bar = max(half // 3, 1)
            draw.rectangle((cx - half, cy - bar, cx + half, cy + bar), fill=fill)
            draw.rectangle((cx - bar, cy - half, cx + bar, cy + half), fill=fill)
        name = f"images/{index:04d}.png"
        picture.save(out_dir / name)
        captions.append({"image": name, "caption": f"A {colour} {shape} on a dark background."})
        conversations.append({
            "images": [name],
            "messages": [
                {"role": "user", "content": "Which shape is shown?"},
                {"role": "assistant", "content": f"A {shape}."},
                {"role": "user", "content": "What colour is it?"},
                {"role": "assistant", "content": f"It is {colour}."},
            ],
        })
    paths = {"images": out_dir / "images", "captions": out_dir / "captions.jsonl",
             "conversations": out_dir / "conversations.jsonl"}
    for key, rows in (("captions", captions), ("conversations", conversations)):
        paths[key].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Command line


def _train_command(args) -> None:
    overrides = list(args.overrides)
    overrides = overrides[1:] if overrides[:1] == ["--"] else overrides
    argv = ["--config", args.config] + overrides
    result = train(argv)
    print(f"saved {result.stage['stage']} stage to {result.output_dir}")


def _merge_command(args) -> None:
    print(f"merged into {merge(args.adapter, args.out)}")


def _build_command(args) -> None:
    options = {} if args.vision_feature_layer is None else {"vision_feature_layer": args.vision_feature_layer}
    out = build(args.out, vision=args.vision, text=args.text, scales=args.scales,
                image_aspect_ratio=args.image_aspect_ratio, **options)
    print(f"built {out}")


def add_training_commands(subparsers) -> None:
    """Add `train`, `merge` and `build` to an `argparse` sub-parser set (the `hf-medvlm` CLI)."""
    train_parser = subparsers.add_parser(
        "train", help="run one training stage from a YAML recipe (TrlParser: SFTConfig + model + data arguments)"
    )
    train_parser.add_argument("--config", required=True, help="YAML recipe, e.g. recipes/tiny/stage1_alignment.yaml")
    train_parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="after `--`: --key value pairs overriding the recipe"
    )
    train_parser.set_defaults(func=_train_command)

    merge_parser = subparsers.add_parser("merge", help="fold a LoRA adapter into its base model")
    merge_parser.add_argument("adapter", help="folder written by a `stage: lora` run")
    merge_parser.add_argument("out", help="folder for the merged model")
    merge_parser.set_defaults(func=_merge_command)

    build_parser_ = subparsers.add_parser("build", help="assemble a new model from a vision encoder and an LLM")
    build_parser_.add_argument("--vision", default=None, help="folder / Hub id, or a JSON config (random tower)")
    build_parser_.add_argument("--text", default=None, help="LLM folder / Hub id / .gguf (default: SmolLM2-135M)")
    build_parser_.add_argument("--scales", type=int, nargs="+", default=None)
    build_parser_.add_argument("--vision-feature-layer", type=int, default=None)
    build_parser_.add_argument("--image-aspect-ratio", default="pad", choices=["pad", "resize"])
    build_parser_.add_argument("--out", required=True)
    build_parser_.set_defaults(func=_build_command)


def main(argv=None) -> int:
    """`python -m hf_medvlm.training --config RECIPE.yaml [--key value ...]` (what `accelerate launch` runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(argv)
    except ValueError as error:
        print(f"hf-medvlm train: error: {error}", file=sys.stderr)
        return 2
    print(f"saved {result.stage['stage']} stage to {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
