"""The model files published to the Hub as remote code (they import only torch, transformers and each other)."""

from .configuration_llava_med_hires import LlavaMedHiResConfig
from .modeling_llava_med_hires import (
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResModel,
    LlavaMedHiResPreTrainedModel,
)

__all__ = [
    "LlavaMedHiResConfig",
    "LlavaMedHiResForConditionalGeneration",
    "LlavaMedHiResModel",
    "LlavaMedHiResPreTrainedModel",
]
