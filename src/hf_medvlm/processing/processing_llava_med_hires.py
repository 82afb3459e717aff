"""LlavaMedHiResProcessor: hierarchical-tiling image processor + tokenizer + a training-ready chat template."""

from transformers.processing_utils import MultiModalData, ProcessorMixin

# ChatML turns (the format of SmolLM2, Qwen and many instruct LLMs). The assistant turn, its end marker included, sits
# inside {% generation %} so TRL's `assistant_only_loss` trains on exactly the answers.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- for item in items if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\n' -}}"
    "{%- else -%}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


class LlavaMedHiResProcessor(ProcessorMixin):
    r"""
    Turns images and text into the model's inputs: `pixel_values` `(num_images, num_tiles, 3, tile, tile)` from the
    image processor, and `input_ids` in which every `image_token` is expanded to `image_seq_length` copies.

    Args:
        image_processor: a `LlavaMedHiResImageProcessor` with the model's `scales`.
        tokenizer: the language model's tokenizer; it must know `image_token` as a single token.
        chat_template (`str`, *optional*): Jinja template; defaults to a ChatML template with generation markers.
        image_token (`str`): the placeholder written in prompts, `"<image>"` by default.
        image_seq_length (`int`): tokens per image, the model config's `image_seq_length`.
    """

    def __init__(
        self, image_processor=None, tokenizer=None, chat_template=None, image_token="<image>", image_seq_length=None,
        **kwargs,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer does not know the image token {self.image_token!r}; add it first with "
                f"tokenizer.add_special_tokens({{'additional_special_tokens': [{self.image_token!r}]}})"
            )
        if not isinstance(image_seq_length, int) or image_seq_length < 1:
            raise ValueError(
                f"image_seq_length must be a positive integer (the model config's image_seq_length), got {image_seq_length!r}"
            )
        self.image_seq_length = image_seq_length
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def _check_special_mm_tokens(self, text, text_inputs, modalities):
        # a truncated prompt that keeps part of an image's tokens would feed the model a silently wrong image
        input_ids = text_inputs["input_ids"]
        input_ids = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
        for index, (sample, ids) in enumerate(zip(text, input_ids)):
            expected = sample.count(self.image_token)
            found = list(ids).count(self.image_token_id)
            if found != expected:
                raise ValueError(
                    f"text {index}: truncation would cut through image tokens: {expected // self.image_seq_length} "
                    f"image(s) need {expected} image tokens but only {found} fit; raise max_length or disable truncation"
                )

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        """Placeholder tokens and tiles per image; every image gives the same counts whatever its size."""
        vision_data = {}
        if image_sizes is not None:
            num_tiles = self.image_processor.num_tiles
            vision_data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            vision_data["num_image_patches"] = [num_tiles] * len(image_sizes)
        return MultiModalData(**vision_data)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Decode generated ids `(batch, sequence)` to a list of strings."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # a fast tokenizer keeps the truncation/padding of its last call in tokenizer.json; a save right after a
        # truncated batch (the end of a training run) would make every later load truncate at that length
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        return super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["LlavaMedHiResProcessor", "DEFAULT_CHAT_TEMPLATE"]
