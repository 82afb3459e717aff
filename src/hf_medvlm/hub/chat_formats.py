"""Chat templates that reproduce the original models' conversation formats with image placeholders.

Every template renders `{"type": "image"}` items as `<image>\\n` and `{"type": "text"}` items as their text, wraps
the assistant's answer in `{% generation %}` markers (for TRL's `assistant_only_loss`) and leaves the BOS token to
the tokenizer, as the original code did.
"""

from ..processing import DEFAULT_CHAT_TEMPLATE

# turn markers of the conversation formats of the source code bases (LLaVA's `conversation.py`, Llama-3's template)
CHAT_FORMATS = {
    # LLaVA-Med v1.5 `mistral_instruct`: "[INST] <image>\nQ [/INST] A </s>[INST] ..."
    "mistral_instruct": dict(
        system="", system_start="", system_end="\n\n", user_start="[INST] ", user_end=" [/INST]",
        assistant_start="", assistant_prefix=" ", assistant_end=" </s>",
    ),
    # LLaVA v1 / LLaVA-Rad `v1`: "SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: ..."
    "vicuna_v1": dict(
        system="A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.",
        system_start="", system_end=" ", user_start="USER: ", user_end=" ",
        assistant_start="ASSISTANT:", assistant_prefix=" ", assistant_end="</s>",
    ),
    # Llama-3-Instruct, the LLM of Llama3-Med
    "llama3": dict(
        system="", system_start="<|start_header_id|>system<|end_header_id|>\n\n", system_end="<|eot_id|>",
        user_start="<|start_header_id|>user<|end_header_id|>\n\n", user_end="<|eot_id|>",
        assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n", assistant_prefix="",
        assistant_end="<|eot_id|>",
    ),
}
# the token that ends an assistant turn, added to the generation config's `eos_token_id`
END_OF_TURN = {"mistral_instruct": "</s>", "vicuna_v1": "</s>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>"}


def _literal(text: str) -> str:
    """A Jinja string literal for `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template(name: str) -> str:
    """The Jinja chat template of a conversation format: one of `CHAT_FORMATS` or `"chatml"`."""
    if name == "chatml":
        return DEFAULT_CHAT_TEMPLATE
    if name not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {name!r}; choose one of {sorted([*CHAT_FORMATS, 'chatml'])}")
    f = {key: _literal(value) for key, value in CHAT_FORMATS[name].items()}
    return (
        "{%- set ns = namespace(system=" + f["system"] + ") -%}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        "{%- if message['content'] is string -%}{%- set ns.system = message['content'] -%}"
        "{%- else -%}{%- set ns.system = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('') -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.system -%}{{- " + f["system_start"] + " + ns.system + " + f["system_end"] + " -}}{%- endif -%}"
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['content'] is string -%}"
        "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- " + f["assistant_start"] + " -}}"
        "{%- generation -%}"
        "{{- " + f["assistant_prefix"] + " -}}"
        "{%- for item in items if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
        "{{- " + f["assistant_end"] + " -}}"
        "{%- endgeneration -%}"
        "{%- else -%}"
        "{{- " + f["user_start"] + " -}}"
        "{%- for item in items -%}"
        "{%- if item['type'] == 'image' -%}{{- '<image>\\n' -}}"
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
        "{%- endfor -%}"
        "{{- " + f["user_end"] + " -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + f["assistant_start"] + " -}}{%- endif -%}"
    )


__all__ = ["CHAT_FORMATS", "END_OF_TURN", "chat_template"]
