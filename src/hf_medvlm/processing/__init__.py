"""The processor files published to the Hub as remote code (they import only torch, transformers and each other)."""

from .image_processing_llava_med_hires import LlavaMedHiResImageProcessor, LlavaMedHiResImageProcessorPil
from .processing_llava_med_hires import DEFAULT_CHAT_TEMPLATE, LlavaMedHiResProcessor

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "LlavaMedHiResImageProcessor",
    "LlavaMedHiResImageProcessorPil",
    "LlavaMedHiResProcessor",
]
