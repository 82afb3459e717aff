"""Convert LLaVA-Med, LLaVA-Rad, Llama3-Med (TinyLLaVA layout) and llava-hf checkpoints into LlavaMedHiRes folders.

Each original layout names the same three parts differently; a layout is a list of `(source prefix, our prefix)`
rules, first match wins. Vision towers that the original keeps apart (LLaVA-Med names a CLIP checkpoint in its
config, LLaVA-Rad ships an open_clip checkpoint beside the LLM) are read from `vision_tower` and joined in.
"""

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AddedToken, AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedConfig

from ..modeling import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration
from ..modeling.configuration_llava_med_hires import vision_tower_geometry
from ..processing import LlavaMedHiResImageProcessor, LlavaMedHiResProcessor
from .chat_formats import END_OF_TURN, chat_template

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("llava-med", "llava-rad", "llama3-med", "llava-hf")
TOWER = "<vision tower>"  # the rest of the key belongs to the vision tower's own state dict

_PROJECTOR = ("model.multi_modal_projector.linear_1.", "model.multi_modal_projector.linear_2.")
# original LLaVA (haotian-liu/LLaVA, microsoft/LLaVA-Med, microsoft/LLaVA-Rad): LlavaLlamaForCausalLM/LlavaMistral...
_LLAVA_RULES = (
    ("model.mm_projector.0.", _PROJECTOR[0]),
    ("model.mm_projector.2.", _PROJECTOR[1]),
    ("model.vision_tower.vision_tower.", TOWER),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
# TinyLLaVA_Factory, the code base of Llama3-Med
_TINYLLAVA_RULES = (
    ("connector._connector.0.", _PROJECTOR[0]),
    ("connector._connector.2.", _PROJECTOR[1]),
    ("vision_tower._vision_tower.", TOWER),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)
# transformers' LlavaForConditionalGeneration, as saved since v4.52 and before
_LLAVA_HF_RULES = (
    ("model.vision_tower.", TOWER),
    ("vision_tower.", TOWER),
    ("model.multi_modal_projector.", "model.multi_modal_projector."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("model.language_model.", "model.language_model."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)
LAYOUTS = {
    "llava-med": _LLAVA_RULES, "llava-rad": _LLAVA_RULES, "llama3-med": _TINYLLAVA_RULES, "llava-hf": _LLAVA_HF_RULES,
}
# tensors the originals carry that have no counterpart here (rotary caches, LLaVA-NeXT's unused newline)
_IGNORED = re.compile(r"(\.inv_freq$|^model\.image_newline$)")
# wrappers the towers' own state dicts may sit under (HF CLIP/SigLIP before v5, LLaVA-Rad's VisionTower, open_clip)
_TOWER_WRAPPERS = ("", "vision_model.", "vit.", "visual.trunk.", "trunk.")
_LLAVA_TEXT_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
_LLAVA_ONLY_KEYS = {
    "architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints", "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter", "use_mm_proj", "tokenizer_model_max_length", "tokenizer_padding_side",
    "unfreeze_mm_vision_tower", "s2_scales", "_name_or_path", "transformers_version", "auto_map",
}
_SELECT_FEATURE = {"patch": "default", "cls_patch": "full", "default": "default", "full": "full"}


def _resolve(location, what: str) -> Path:
    """A local folder or file, or a Hub repository id resolved through the Hugging Face cache."""
    path = Path(location)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(location)))
    except Exception as error:  # offline, unknown repo, gated: say which input could not be found
        raise FileNotFoundError(
            f"{what} {location!r} is neither a local path nor a reachable Hub repository: {error}"
        ) from error


def _read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in files:
        if file.suffix == ".safetensors":
            tensors.update(load_file(file))
            continue
        loaded = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        tensors.update({k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    return tensors


def _checkpoint_files(folder: Path, exclude: set[str] = frozenset()) -> list[Path]:
    for pattern in ("*.safetensors", "pytorch_model*.bin", "model_state_dict.bin"):
        files = sorted(p for p in folder.glob(pattern) if p.name not in exclude)
        if files:
            return files
    if (folder / "adapter_config.json").exists():
        raise ValueError(
            f"{folder} holds a LoRA adapter, not full weights: merge it into its base model first "
            "(peft's merge_and_unload) and convert the merged folder"
        )
    raise FileNotFoundError(f"no weights (*.safetensors, pytorch_model*.bin, model_state_dict.bin) in {folder}")


def _rename(tensors: dict, rules) -> tuple[dict, dict, list]:
    """`(ours, tower, unused)`: tensors under our names, the vision tower's tensors under its own, and the rest."""
    ours, tower, unused = {}, {}, []
    for key, value in tensors.items():
        if _IGNORED.search(key):
            continue
        for source, target in rules:
            if key.startswith(source):
                rest = key[len(source) :]
                if target == TOWER:
                    tower[rest] = value
                else:
                    ours[target + rest] = value
                break
        else:
            unused.append(key)
    return ours, tower, unused


def _source_name(key: str, rules) -> str:
    """Our key -> the name the original layout gives it (for error messages)."""
    for source, target in rules:
        if target != TOWER and key.startswith(target):
            return source + key[len(target) :]
    return key


def _match_tower(tensors: dict, expected: set[str]) -> dict:
    """The tower tensors under the names the tower module uses, whichever wrapper prefix the source put them under."""
    best = {}
    for wrapper in _TOWER_WRAPPERS:
        candidate = {k[len(wrapper) :]: v for k, v in tensors.items() if k.startswith(wrapper)}
        if len(set(candidate) & expected) > len(set(best) & expected):
            best = candidate
    return best


def _normalisation(folder: Path, open_clip: dict | None) -> dict:
    """`image_mean`/`image_std` of a tower folder: its image-processor config, open_clip's or timm's preprocessing."""
    if (folder / "preprocessor_config.json").exists():
        data = json.loads((folder / "preprocessor_config.json").read_text())
        if "image_mean" in data and "image_std" in data:
            return {"image_mean": list(data["image_mean"]), "image_std": list(data["image_std"])}
    preprocess = (open_clip or {}).get("preprocess_cfg", {})
    if "mean" in preprocess and "std" in preprocess:
        return {"image_mean": list(preprocess["mean"]), "image_std": list(preprocess["std"])}
    if (folder / "config.json").exists():
        pretrained = json.loads((folder / "config.json").read_text()).get("pretrained_cfg", {})
        if "mean" in pretrained and "std" in pretrained:
            return {"image_mean": list(pretrained["mean"]), "image_std": list(pretrained["std"])}
    return {}


def _open_clip_config(folder: Path) -> dict | None:
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and ("vision_cfg" in data or "vision_cfg" in data.get("model_cfg", {})):
            return data
    return None


def _hf_vision_config(folder: Path) -> PreTrainedConfig | None:
    """The vision config of an HF folder (a CLIP/SigLIP model or its vision part); None for other models."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError):  # a model type transformers does not know, e.g. LLaVA's llava_llama
        return None
    config = getattr(config, "vision_config", None) or config
    return config if getattr(config, "image_size", None) and getattr(config, "patch_size", None) else None


def _timm_config(architecture: str, model_args: dict | None) -> PreTrainedConfig:
    return AutoConfig.for_model(
        "timm_wrapper", architecture=architecture, model_args=model_args or None, do_pooling=False
    )


def read_vision_tower(location) -> tuple[PreTrainedConfig, dict, dict]:
    """`(vision config, tensors, normalisation)` of a separately stored tower.

    Accepts an HF CLIP/SigLIP folder (full model or vision model), a timm Hub folder (`config.json` with
    `architecture`), or an open_clip folder with a timm trunk (a JSON with `vision_cfg.timm_model_name` beside the
    checkpoint, as LLaVA-Rad's BiomedCLIP-CXR), or a Hub id of any of these.
    """
    path = _resolve(location, "vision tower")
    folder = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else None
    open_clip = _open_clip_config(folder)
    data = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    config = _hf_vision_config(folder) if "model_type" in data else None
    if config is None and "architecture" in data:
        config = _timm_config(data["architecture"], data.get("model_args"))
    if config is None and open_clip is not None:
        vision = open_clip.get("model_cfg", open_clip)["vision_cfg"]
        if not vision.get("timm_model_name"):
            raise ValueError(
                f"{folder}: open_clip towers are supported with a timm trunk (vision_cfg.timm_model_name); convert a "
                "native open_clip ViT to transformers' CLIP first, or use its timm export"
            )
        args = {"img_size": vision["image_size"]} if vision.get("image_size") else None
        config = _timm_config(vision["timm_model_name"], args)
        if files is None:  # open_clip folders hold one checkpoint, named freely
            files = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".bin", ".pth", ".safetensors"))
    if config is None:
        raise FileNotFoundError(
            f"{folder} describes no vision tower: expected an HF CLIP/SigLIP config.json, a timm config.json "
            "(architecture) or an open_clip JSON with vision_cfg"
        )
    files = files or _checkpoint_files(folder)
    if not files:
        raise FileNotFoundError(f"no vision-tower weights in {folder}")
    return config, _read_tensors(files), _normalisation(folder, open_clip)


def _text_config(source_format: str, source: dict) -> PreTrainedConfig:
    if source_format in ("llama3-med", "llava-hf"):
        text = dict(source["text_config"])
        return AutoConfig.for_model(text.pop("model_type"), **text)
    model_type = source.get("model_type", "llava_llama")
    if model_type not in _LLAVA_TEXT_TYPES:
        raise ValueError(f"LLaVA model_type {model_type!r} has no counterpart; known: {sorted(_LLAVA_TEXT_TYPES)}")
    fields = {k: v for k, v in source.items() if k not in _LLAVA_ONLY_KEYS and not k.startswith("mm_")}
    return AutoConfig.for_model(_LLAVA_TEXT_TYPES[model_type], **fields)


def _check_projector(source_format: str, source: dict) -> None:
    kind = source.get("connector_type") if source_format == "llama3-med" else source.get("mm_projector_type")
    if source_format != "llava-hf" and kind not in (None, "mlp2x_gelu"):
        raise ValueError(f"projector {kind!r}: only the two-layer GELU MLP (mlp2x_gelu) maps onto this model")


def _scales(scales, source: dict, tile: int, projector_in: int, tower_width: int, layers: int) -> list[int]:
    """Explicit scales, or the source's `s2_scales`, or `tile x 1..n` with n read off the projector's input width."""
    if scales is None and source.get("s2_scales"):
        raw = source["s2_scales"]
        scales = [int(s) for s in (raw.split(",") if isinstance(raw, str) else raw)]
    count = projector_in // (tower_width * layers)
    if count * tower_width * layers != projector_in:
        raise ValueError(
            f"the projector takes {projector_in} channels, not a multiple of the tower width {tower_width} x "
            f"{layers} feature layer(s)"
        )
    if scales is None:
        scales = [tile * (i + 1) for i in range(count)]
        if count > 1:
            logger.warning("projector width implies %d scales; assuming S2 scales %s", count, scales)
    if len(scales) != count:
        raise ValueError(f"scales {list(scales)} give {len(scales)} scales but the projector was trained on {count}")
    return list(scales)


def _default_chat_format(source_format: str, text_type: str, vocab: dict) -> str:
    if source_format == "llava-med":
        return "mistral_instruct" if text_type == "mistral" else "vicuna_v1"
    if source_format == "llava-rad":
        return "vicuna_v1"
    if "<|eot_id|>" in vocab:
        return "llama3"
    return "chatml" if "<|im_end|>" in vocab else "vicuna_v1"


def _source_chat_template(src: Path, tokenizer) -> str | None:
    """A llava-hf processor's own chat template, wherever that transformers version saved it."""
    if (src / "chat_template.jinja").exists():
        return (src / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json"):
        if (src / name).exists():
            template = json.loads((src / name).read_text()).get("chat_template")
            if template:
                return template
    return getattr(tokenizer, "chat_template", None)


def _grow_vocabulary(ours: dict, size: int, tied: bool) -> None:
    """Append rows (the mean of the existing ones) to the embeddings and LM head for tokens added to the tokenizer."""
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key not in ours or (tied and key == "lm_head.weight"):
            continue
        weight = ours[key]
        if size > weight.shape[0]:
            extra = weight.float().mean(dim=0, keepdim=True).to(weight.dtype).expand(size - weight.shape[0], -1)
            ours[key] = torch.cat([weight, extra], dim=0)
    if tied:
        ours["lm_head.weight"] = ours["model.language_model.embed_tokens.weight"]


def convert_checkpoint(
    source_format: str,
    src,
    out_dir,
    vision_tower=None,
    *,
    scales: list[int] | None = None,
    chat_format: str | None = None,
    tokenizer=None,
    image_token: str = "<image>",
    max_shard_size: str | int = "5GB",
) -> Path:
    """Convert a checkpoint in an original layout into a LlavaMedHiRes folder (weights, config, processor).

    Args:
        source_format: `"llava-med"`, `"llava-rad"`, `"llama3-med"` (TinyLLaVA layout) or `"llava-hf"`.
        src: folder or Hub id with `config.json`, the weights and the tokenizer.
        vision_tower: folder, file or Hub id of a tower the original keeps apart; defaults to the one its config
            names (LLaVA-Med: `mm_vision_tower`; LLaVA-Rad: `mm_vision_tower_config`/`_checkpoint` beside the weights).
        scales: multi-scale sides; by default the source's `s2_scales` or what the projector width implies.
        chat_format: a name from `chat_formats` or `"chatml"`; by default the source's own conversation format
            (llava-hf: its processor's template).
        tokenizer: folder or id of the tokenizer when `src` has none (e.g. the base LLM of a merged LoRA).
    """
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; choose one of {list(SOURCE_FORMATS)}")
    src = _resolve(src, f"{source_format} checkpoint")
    out_dir = Path(out_dir)
    if out_dir.resolve() == src.resolve():
        raise ValueError("out_dir must differ from the source folder")
    source = json.loads((src / "config.json").read_text())
    _check_projector(source_format, source)
    rules = LAYOUTS[source_format]
    tower_files = {source.get("mm_vision_tower_checkpoint") or ""}
    ours, tower_tensors, unused = _rename(_read_tensors(_checkpoint_files(src, tower_files)), rules)

    vision_config, tower_tensors, norm, tower_origin = _vision_tower(
        source_format, source, src, vision_tower, embedded=tower_tensors
    )
    text_config = _text_config(source_format, source)
    tokenizer, image_token, image_token_id = _tokenizer(source_format, source, tokenizer or src, image_token)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    if "lm_head.weight" not in ours and tied and "model.language_model.embed_tokens.weight" in ours:
        ours["lm_head.weight"] = ours["model.language_model.embed_tokens.weight"]
    embed = ours.get("model.language_model.embed_tokens.weight")
    vocab = max(len(tokenizer), embed.shape[0] if embed is not None else text_config.vocab_size)
    _grow_vocabulary(ours, vocab, tied)
    text_config.vocab_size = vocab
    text_config.pad_token_id = tokenizer.pad_token_id

    layer = source.get("mm_vision_select_layer", source.get("vision_feature_layer", -2))
    selection = source.get("mm_vision_select_feature", source.get("vision_feature_select_strategy", "patch"))
    strategy = _SELECT_FEATURE[selection]
    geometry = vision_tower_geometry(vision_config)
    projector = ours.get(_PROJECTOR[0] + "weight")
    projector_in = projector.shape[1] if projector is not None else geometry["hidden_size"]
    layers = 1 if isinstance(layer, int) else len(layer)
    scales = _scales(scales, source, geometry["image_size"], projector_in, geometry["hidden_size"], layers)

    config = LlavaMedHiResConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        scales=scales,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=source.get("projector_hidden_act", "gelu"),
        multimodal_projector_bias=source.get("multimodal_projector_bias", True),
        tie_word_embeddings=tied,
    )
    with torch.device("meta"):  # no random initialisation of billions of weights that are about to be replaced
        model = LlavaMedHiResForConditionalGeneration(config)
    expected = set(model.state_dict())
    timm_tower = vision_config.model_type == "timm_wrapper"
    tower_prefix = "model.vision_tower.timm_model." if timm_tower else "model.vision_tower."
    tower_expected = {k[len(tower_prefix) :] for k in expected if k.startswith(tower_prefix)}
    tower = _match_tower(tower_tensors, tower_expected)
    ours.update({tower_prefix + k: v for k, v in tower.items() if k in tower_expected})

    missing = sorted(expected - set(ours))
    if missing:
        in_tower = [k[len(tower_prefix) :] for k in missing if k.startswith(tower_prefix)]
        elsewhere = [_source_name(k, rules) for k in missing if not k.startswith(tower_prefix)]
        lines = []
        if elsewhere:
            lines.append(f"the {source_format} checkpoint {src} lacks {_count(elsewhere)}: {_shorten(elsewhere)}")
        if in_tower:
            lines.append(f"the vision tower {tower_origin} lacks {_count(in_tower)}: {_shorten(in_tower)}")
        raise ValueError("; ".join(lines))
    if unused:
        logger.warning("%d tensors of %s have no counterpart and are dropped: %s", len(unused), src, _shorten(unused))

    try:
        model.load_state_dict({k: ours[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as error:  # size mismatches: the tower or text config does not fit the weights
        raise ValueError(f"the {source_format} weights do not fit the configuration from {src}: {error}") from None
    if tied:
        model.tie_weights()
    model.config.dtype = ours["lm_head.weight"].dtype

    if chat_format is None and source_format == "llava-hf":
        template = _source_chat_template(src, tokenizer) or chat_template("vicuna_v1")
    else:
        chat_format = chat_format or _default_chat_format(source_format, text_config.model_type, tokenizer.get_vocab())
        template = chat_template(chat_format)
    model.generation_config = _generation_config(src, tokenizer, chat_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)

    aspect = source.get("image_aspect_ratio") or ("resize" if source_format == "llava-hf" else "pad")
    # LLaVA's "square" and llava-hf's CLIP processor resize without padding; "pad" is LLaVA-1.5's expand2square
    image_processor = LlavaMedHiResImageProcessor(
        scales=scales, image_aspect_ratio="pad" if aspect == "pad" else "resize", **(norm or _hf_norm(src))
    )
    processor = LlavaMedHiResProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        image_token=image_token,
        image_seq_length=config.image_seq_length,
    )
    processor.save_pretrained(out_dir)
    logger.info("converted %s (%s) to %s", src, source_format, out_dir)
    return out_dir


def _vision_tower(source_format: str, source: dict, src: Path, given, embedded: dict):
    """`(config, tensors, normalisation, origin)`: the tower given, kept in the checkpoint, or named by the config."""
    if given is not None:
        return (*read_vision_tower(given), str(given))
    if embedded and "vision_config" in source:
        vision = dict(source["vision_config"])
        return AutoConfig.for_model(vision.pop("model_type"), **vision), embedded, {}, str(src)
    named = _named_tower(source_format, source, src)
    config, tensors, norm = read_vision_tower(named)
    # an original that kept a (possibly fine-tuned) tower copy in its checkpoint: the config is the named tower's
    return (config, embedded, norm, str(src)) if embedded else (config, tensors, norm, str(named))


def _tokenizer(source_format: str, source: dict, location, image_token: str):
    """`(tokenizer, image token, its id)`: llava-hf's own image token, or `image_token` added to the LLM's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(location)
    if source_format == "llava-hf":
        image_token_id = source.get("image_token_index", source.get("image_token_id"))
        image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    else:
        if image_token not in tokenizer.get_vocab():
            # the originals splice images in at a -200 sentinel; a real token is what processors and pipelines expect
            tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
        image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer, image_token, image_token_id


def _named_tower(source_format: str, source: dict, src: Path):
    """The tower the original config names: LLaVA-Rad's open_clip files beside the weights, else `mm_vision_tower`."""
    if source_format == "llava-rad" and source.get("mm_vision_tower_checkpoint"):
        checkpoint = src / source["mm_vision_tower_checkpoint"]
        if checkpoint.exists():
            return checkpoint
    named = source.get("mm_vision_tower") or source.get("vision_model_name_or_path")
    if not named:
        raise ValueError(
            f"the {source_format} checkpoint {src} holds no vision tower and its config names none: pass vision_tower"
        )
    return named


def _hf_norm(src: Path) -> dict:
    """A llava-hf folder's own image mean and std (from its processor config)."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (src / name).exists():
            data = json.loads((src / name).read_text())
            data = data.get("image_processor", data)
            if "image_mean" in data and "image_std" in data:
                return {"image_mean": list(data["image_mean"]), "image_std": list(data["image_std"])}
    return {}


def _generation_config(src: Path, tokenizer, chat_format: str | None) -> GenerationConfig:
    """The source's generation config, with the chat format's end-of-turn token as an extra stop token."""
    if (src / "generation_config.json").exists():
        generation = GenerationConfig.from_pretrained(src)
    else:
        generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    stops = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    stops = [s for s in stops if s is not None]
    turn_end = tokenizer.convert_tokens_to_ids(END_OF_TURN[chat_format]) if chat_format in END_OF_TURN else None
    if turn_end is not None and turn_end != tokenizer.unk_token_id and turn_end not in stops:
        stops.append(turn_end)
    generation.eos_token_id = stops[0] if len(stops) == 1 else stops
    generation.pad_token_id = tokenizer.pad_token_id
    return generation


def _count(names: list) -> str:
    return f"{len(names)} tensor" + ("" if len(names) == 1 else "s")


def _shorten(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


__all__ = ["SOURCE_FORMATS", "convert_checkpoint", "read_vision_tower"]
