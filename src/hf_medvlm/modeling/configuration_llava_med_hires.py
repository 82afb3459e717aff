"""Configuration of LlavaMedHiRes: a LLaVA model whose vision features are encoded at several scales (S2)."""

import functools
import json

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES


# DFN5B-CLIP ViT-H/14 at 378 px, the vision encoder of Llama3-Med.
_DEFAULT_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 378,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}


@functools.lru_cache(maxsize=16)
def _timm_tower_geometry(architecture: str, model_args_json: str) -> dict:
    """Input size, patch grid, width and prefix-token count of a timm tower, read off a meta-device instance."""
    import timm  # only needed when the tower is a timm model
    import torch

    with torch.device("meta"):
        tower = timm.create_model(architecture, pretrained=False, num_classes=0, **json.loads(model_args_json))
    patch_embed = getattr(tower, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "grid_size", None) is None:
        raise ValueError(
            f"vision_config: timm architecture {architecture!r} has no patch grid (patch_embed.grid_size); "
            "multi-scale encoding needs a ViT-style tower"
        )
    img_size = tuple(patch_embed.img_size)
    grid = tuple(patch_embed.grid_size)
    if img_size[0] != img_size[1] or grid[0] != grid[1]:
        raise ValueError(f"vision_config: timm tower {architecture!r} must take square input, got img_size={img_size}")
    return {
        "image_size": img_size[0],
        "grid_size": grid[0],
        "hidden_size": tower.num_features,
        "num_hidden_layers": len(getattr(tower, "blocks", [])),
    }


def vision_tower_geometry(vision_config: PreTrainedConfig) -> dict:
    """`image_size` (the tile size), `grid_size` (patches per side), `hidden_size` and `num_hidden_layers` of a tower."""
    if vision_config.model_type == "timm_wrapper":
        model_args = json.dumps(vision_config.model_args or {}, sort_keys=True)
        return _timm_tower_geometry(vision_config.architecture, model_args)
    missing = [name for name in ("image_size", "patch_size", "hidden_size") if getattr(vision_config, name, None) is None]
    if missing:
        raise ValueError(
            f"vision_config of type {vision_config.model_type!r} lacks {missing}; "
            "a ViT-style tower (CLIP, SigLIP, timm ViT) is required"
        )
    return {
        "image_size": vision_config.image_size,
        "grid_size": vision_config.image_size // vision_config.patch_size,
        "hidden_size": vision_config.hidden_size,
        "num_hidden_layers": getattr(vision_config, "num_hidden_layers", None),
    }


class LlavaMedHiResConfig(PreTrainedConfig):
    r"""
    Configuration of [`LlavaMedHiResForConditionalGeneration`]: a vision tower, a two-layer MLP projector and a causal
    LM, with the image encoded hierarchically at `scales` and the scales concatenated along channels (S2 encoding).

    Args:
        vision_config (`dict` or `PreTrainedConfig`): any ViT-style vision backbone (CLIP, SigLIP, `timm_wrapper`).
        text_config (`dict` or `PreTrainedConfig`): any causal LM.
        image_token_id (`int`): id of the image placeholder token (llava-hf's `image_token_index` is accepted).
        scales (`list[int]`): ascending image side lengths in pixels; the first equals the tower's input size (the
            tile size), each is a multiple of it. `[tile]` gives exactly LLaVA-1.5.
        vision_feature_layer (`int` or `list[int]`): hidden layer(s) of the tower to use, as indices into the
            tower's `hidden_states` (0 = embeddings, -1 = last layer). Several layers are concatenated on channels.
        vision_feature_select_strategy (`str`): `"default"` drops the CLS token, `"full"` keeps it.
        projector_hidden_act (`str`): activation between the projector's two linear layers.
        multimodal_projector_bias (`bool`): whether the projector's linear layers have biases.
        image_seq_length (`int`, *optional*): tokens per image; derived from the tower, checked when given.
        max_tile_batch (`int`, *optional*): largest number of tiles sent through the tower in one call
            (bounds memory); `None` sends all tiles of a batch at once.
    """

    model_type = "llava_med_hires"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=_DEFAULT_VISION
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    scales: list[int] | None = None
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    image_seq_length: int | None = None
    max_tile_batch: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # llava-hf keeps `tie_word_embeddings` on the text config; follow it so tied LMs stay tied
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

        geometry = vision_tower_geometry(self.vision_config)
        tile_size = geometry["image_size"]
        if self.scales is None:
            self.scales = [tile_size]
        self.scales = [int(s) for s in self.scales] if isinstance(self.scales, (list, tuple)) else self.scales
        self._check_scales(tile_size)
        self._check_feature_selection(geometry)

        if self.max_tile_batch is not None and (not isinstance(self.max_tile_batch, int) or self.max_tile_batch < 1):
            raise ValueError(f"max_tile_batch must be a positive integer or None, got {self.max_tile_batch!r}")

        derived = geometry["grid_size"] ** 2 + (1 if self.vision_feature_select_strategy == "full" else 0)
        if self.image_seq_length is not None and self.image_seq_length != derived:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the vision tower: "
                f"{geometry['grid_size']}x{geometry['grid_size']} patches with "
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} give {derived} tokens per image"
            )
        self.image_seq_length = derived

    def _check_scales(self, tile_size: int) -> None:
        scales = self.scales
        if not isinstance(scales, list) or not scales or not all(isinstance(s, int) and s > 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive integers, got {scales!r}")
        if any(b <= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scales must be strictly ascending, got {scales}")
        if scales[0] != tile_size:
            raise ValueError(
                f"scales[0]={scales[0]} must equal the vision tower's input size (the tile size) {tile_size}"
            )
        bad = [s for s in scales if s % tile_size]
        if bad:
            raise ValueError(f"scales {bad} are not multiples of the tile size {tile_size} (scales={scales})")

    def _check_feature_selection(self, geometry: dict) -> None:
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if self.vision_config.model_type == "timm_wrapper" and self.vision_feature_select_strategy == "full":
            raise ValueError(
                "vision_feature_select_strategy='full' is not available with a timm_wrapper tower: "
                "timm returns patch features without prefix tokens"
            )
        layers = self.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else layers
        if not isinstance(layers, list) or not layers or not all(isinstance(i, int) for i in layers):
            raise ValueError(
                f"vision_feature_layer must be an int or a non-empty list of ints, got {self.vision_feature_layer!r}"
            )
        depth = geometry["num_hidden_layers"]
        if depth:
            if self.vision_config.model_type == "timm_wrapper":
                # timm returns one map per block, no embeddings entry: index 0 has no counterpart
                valid, shown = (lambda i: i != 0 and -depth <= i <= depth), f"{-depth}..{depth} except 0"
            else:
                # hidden_states holds the embeddings plus one entry per layer
                valid, shown = (lambda i: -depth - 1 <= i <= depth), f"{-depth - 1}..{depth}"
            out_of_range = [i for i in layers if not valid(i)]
            if out_of_range:
                raise ValueError(
                    f"vision_feature_layer {out_of_range} out of range for a tower with {depth} layers (valid: {shown})"
                )

    @property
    def tile_size(self) -> int:
        return self.scales[0]

    @property
    def num_tiles(self) -> int:
        """Tiles per image: sum over scales of `(scale / tile_size) ** 2`."""
        return sum((s // self.tile_size) ** 2 for s in self.scales)

    @property
    def num_feature_layers(self) -> int:
        return 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)


# `transformers serve` loads through AutoModelForMultimodalLM only for model types listed here (otherwise it looks the
# architecture up among transformers' own classes and fails on remote code), and names the modality from this table.
MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES.setdefault(LlavaMedHiResConfig.model_type, "LlavaMedHiResForConditionalGeneration")

__all__ = ["LlavaMedHiResConfig", "vision_tower_geometry"]
