"""hf-medvlm: high-resolution biomedical vision-language models for the Hugging Face stack.

Importing the package registers the model with transformers' Auto classes and marks it for export as remote code,
so `save_pretrained` writes a folder that loads with `trust_remote_code=True` where hf_medvlm is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .modeling import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResModel,
    LlavaMedHiResPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(LlavaMedHiResConfig.model_type, LlavaMedHiResConfig, exist_ok=True)
AutoModel.register(LlavaMedHiResConfig, LlavaMedHiResModel, exist_ok=True)
AutoModelForImageTextToText.register(LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration, exist_ok=True)

LlavaMedHiResConfig.register_for_auto_class()
LlavaMedHiResModel.register_for_auto_class("AutoModel")
LlavaMedHiResForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "LlavaMedHiResConfig",
    "LlavaMedHiResForConditionalGeneration",
    "LlavaMedHiResModel",
    "LlavaMedHiResPreTrainedModel",
]
