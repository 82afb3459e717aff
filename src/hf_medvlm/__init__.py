"""hf-medvlm: high-resolution biomedical vision-language models for the Hugging Face stack.

Importing the package registers the model and processors with transformers' Auto classes and marks them for export
as remote code, so `save_pretrained` writes a folder that loads with `trust_remote_code=True` where hf_medvlm is not
installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)

from .modeling import (
    LlavaMedHiResConfig,
    LlavaMedHiResForConditionalGeneration,
    LlavaMedHiResModel,
    LlavaMedHiResPreTrainedModel,
)
from .processing import (
    DEFAULT_CHAT_TEMPLATE,
    LlavaMedHiResImageProcessor,
    LlavaMedHiResImageProcessorPil,
    LlavaMedHiResProcessor,
)

__version__ = "0.1.0"

AutoConfig.register(LlavaMedHiResConfig.model_type, LlavaMedHiResConfig, exist_ok=True)
AutoModel.register(LlavaMedHiResConfig, LlavaMedHiResModel, exist_ok=True)
AutoModelForImageTextToText.register(LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration, exist_ok=True)
AutoModelForMultimodalLM.register(LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(
    LlavaMedHiResConfig,
    image_processor_classes={"torchvision": LlavaMedHiResImageProcessor, "pil": LlavaMedHiResImageProcessorPil},
    exist_ok=True,
)
AutoProcessor.register(LlavaMedHiResConfig, LlavaMedHiResProcessor, exist_ok=True)

LlavaMedHiResConfig.register_for_auto_class()
LlavaMedHiResModel.register_for_auto_class("AutoModel")
LlavaMedHiResForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
LlavaMedHiResImageProcessor.register_for_auto_class("AutoImageProcessor")
LlavaMedHiResProcessor.register_for_auto_class("AutoProcessor")


def __getattr__(name):
    # heavier entry points load on first use, so `import hf_medvlm` stays cheap
    lazy = {
        "build_model": ("assembly", "build_model"),
        "load_medical_image": ("medical_image", "load_medical_image"),
        "MedicalImageError": ("medical_image", "MedicalImageError"),
    }
    if name in lazy:
        import importlib

        module, attribute = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "LlavaMedHiResConfig",
    "LlavaMedHiResForConditionalGeneration",
    "LlavaMedHiResImageProcessor",
    "LlavaMedHiResImageProcessorPil",
    "LlavaMedHiResModel",
    "LlavaMedHiResPreTrainedModel",
    "LlavaMedHiResProcessor",
    "build_model",
    "load_medical_image",
    "MedicalImageError",
]
