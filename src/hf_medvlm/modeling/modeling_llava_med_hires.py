"""LlavaMedHiRes: transformers' LLaVA with hierarchical multi-scale (S2) image encoding.

Sub-module names and state-dict keys are those of `LlavaForConditionalGeneration`, so a llava-hf checkpoint loads as
a single-scale model; only the projector's input width grows with the number of scales.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto import AutoModel
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)

from .configuration_llava_med_hires import LlavaMedHiResConfig, vision_tower_geometry


class LlavaMedHiResMultiModalProjector(nn.Module):
    """Two-layer MLP from `vision hidden size x scales x feature layers` channels to the LM's hidden size."""

    def __init__(self, config: LlavaMedHiResConfig, vision_hidden_size: int):
        super().__init__()
        in_features = vision_hidden_size * len(config.scales) * config.num_feature_layers
        text_hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(in_features, text_hidden, bias=config.multimodal_projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=config.multimodal_projector_bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class LlavaMedHiResPreTrainedModel(LlavaPreTrainedModel):
    config_class = LlavaMedHiResConfig
    config: LlavaMedHiResConfig

    def save_pretrained(self, save_directory, *args, **kwargs):
        # name every Auto class in `auto_map`, not only the saved one, so all doors open with trust_remote_code
        module = __name__.rsplit(".", 1)[-1]
        self.config.auto_map = {
            "AutoConfig": f"{LlavaMedHiResConfig.__module__.rsplit('.', 1)[-1]}.LlavaMedHiResConfig",
            "AutoModel": f"{module}.LlavaMedHiResModel",
            "AutoModelForImageTextToText": f"{module}.LlavaMedHiResForConditionalGeneration",
            "AutoModelForMultimodalLM": f"{module}.LlavaMedHiResForConditionalGeneration",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


class LlavaMedHiResModel(LlavaMedHiResPreTrainedModel, LlavaModel):
    """Vision tower -> multi-scale merge -> projector -> language model, without the LM head."""

    def __init__(self, config: LlavaMedHiResConfig):
        LlavaPreTrainedModel.__init__(self, config)  # not LlavaModel.__init__: it builds a single-scale projector
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMedHiResMultiModalProjector(
            config, vision_tower_geometry(config.vision_config)["hidden_size"]
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @property
    def _is_timm_tower(self) -> bool:
        return self.config.vision_config.model_type == "timm_wrapper"

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Returns `(num_images, num_tiles, 3, tile, tile)`; a 4-D batch is accepted when there is one tile per image."""
        config = self.config
        expected = (config.num_tiles, 3, config.tile_size, config.tile_size)
        if pixel_values.ndim == 4 and config.num_tiles == 1:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.ndim != 5:
            raise ValueError(
                f"pixel_values must have shape (num_images, num_tiles, 3, tile, tile) = (N, {', '.join(map(str, expected))}), "
                f"got {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != config.num_tiles:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} tiles per image but scales={config.scales} with tile size "
                f"{config.tile_size} need {config.num_tiles}"
            )
        if tuple(pixel_values.shape[2:]) != expected[1:]:
            raise ValueError(
                f"pixel_values tiles have shape {tuple(pixel_values.shape[2:])}, expected {expected[1:]} "
                f"(3 channels, tile size {config.tile_size})"
            )
        return pixel_values

    def _tower_hidden_states(self, tiles: torch.Tensor, layers: list[int], strategy: str) -> torch.Tensor:
        """`(num_tiles, 3, tile, tile)` -> `(num_tiles, tokens, vision hidden x len(layers))`."""
        if self._is_timm_tower:
            # timm counts blocks from 0 without an embeddings entry: positive HF index i is timm block i - 1
            timm_layers = [i if i < 0 else i - 1 for i in layers]
            maps = self.vision_tower(tiles, output_hidden_states=timm_layers, return_dict=True).hidden_states
            selected = [m.flatten(2).transpose(1, 2) for m in maps]  # NCHW -> (N, H*W, C), prefix tokens removed
        else:
            tiles = tiles.to(self.vision_tower.dtype)
            hidden_states = self.vision_tower(tiles, output_hidden_states=layers, return_dict=True).hidden_states
            selected = [hidden_states[i] for i in layers]
            if strategy == "default":
                selected = [h[:, 1:] for h in selected]
        return torch.cat(selected, dim=-1)

    def encode_tiles(
        self, pixel_values: torch.Tensor, vision_feature_layer: int | list[int], vision_feature_select_strategy: str
    ) -> torch.Tensor:
        """Every tile of every image through the tower in batched calls of at most `max_tile_batch` tiles.

        `(num_images, num_tiles, 3, tile, tile)` -> `(num_images, num_tiles, tokens, vision hidden x feature layers)`.
        """
        layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
        num_images, num_tiles = pixel_values.shape[:2]
        tiles = pixel_values.flatten(0, 1)
        chunk = self.config.max_tile_batch or tiles.shape[0]
        tower_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tower_trains):
            features = [
                self._tower_hidden_states(part, layers, vision_feature_select_strategy) for part in tiles.split(chunk)
            ]
        features = torch.cat(features, dim=0)
        return features.unflatten(0, (num_images, num_tiles))

    def merge_scales(self, tile_features: torch.Tensor, vision_feature_select_strategy: str) -> torch.Tensor:
        """S2 merge: per scale, stitch the tiles into one map, area-pool it to the base grid; concat scales on channels.

        `(num_images, num_tiles, tokens, C)` -> `(num_images, tokens, C x len(scales))`, smallest scale first. With
        `"full"` the CLS token of a scale is the mean of its tiles' CLS tokens.
        """
        config = self.config
        has_cls = vision_feature_select_strategy == "full"
        num_images, _, tokens, channels = tile_features.shape
        grid = int(round((tokens - has_cls) ** 0.5))
        if grid * grid != tokens - has_cls:
            raise ValueError(
                f"the vision tower returned {tokens} tokens per tile; with strategy {vision_feature_select_strategy!r} "
                f"{tokens - has_cls} patch tokens do not form a square grid"
            )
        merged, start = [], 0
        for scale in config.scales:
            k = scale // config.tile_size
            feats = tile_features[:, start : start + k * k]
            start += k * k
            patches = feats[:, :, has_cls:].reshape(num_images, k, k, grid, grid, channels)
            # (image, tile row, tile col, row, col, C) -> one (k*grid) x (k*grid) map, then k x k area pooling
            stitched = patches.permute(0, 1, 3, 2, 4, 5).reshape(num_images, k * grid, k * grid, channels)
            pooled = stitched.reshape(num_images, grid, k, grid, k, channels).mean(dim=(2, 4))
            pooled = pooled.reshape(num_images, grid * grid, channels)
            if has_cls:
                pooled = torch.cat([feats[:, :, :1].mean(dim=1), pooled], dim=1)
            merged.append(pooled)
        return torch.cat(merged, dim=-1)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`pixel_values` `(num_images, num_tiles, 3, tile, tile)` -> `pooler_output`: one `(image_seq_length, text
        hidden)` tensor per image; `last_hidden_state`: the merged features before projection."""
        if vision_feature_layer is None:
            vision_feature_layer = self.config.vision_feature_layer
        if vision_feature_select_strategy is None:
            vision_feature_select_strategy = self.config.vision_feature_select_strategy
        pixel_values = self._check_pixel_values(pixel_values)
        tile_features = self.encode_tiles(pixel_values, vision_feature_layer, vision_feature_select_strategy)
        merged = self.merge_scales(tile_features, vision_feature_select_strategy)
        projector_dtype = self.multi_modal_projector.linear_1.weight.dtype
        image_features = self.multi_modal_projector(merged.to(projector_dtype))
        return BaseModelOutputWithPooling(last_hidden_state=merged, pooler_output=list(image_features))

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = int(special_image_mask.sum())
        n_features = image_features.shape[0]
        if n_image_tokens != n_features:
            seq = self.config.image_seq_length
            raise ValueError(
                f"Image features and image tokens do not match: the text has {n_image_tokens} image tokens, the images "
                f"give {n_features} features ({n_features // seq} images x image_seq_length {seq})"
            )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)


class LlavaMedHiResForConditionalGeneration(LlavaMedHiResPreTrainedModel, LlavaForConditionalGeneration):
    """[`LlavaMedHiResModel`] with the language-modeling head; `generate` runs the vision tower once per call."""

    def __init__(self, config: LlavaMedHiResConfig):
        LlavaPreTrainedModel.__init__(self, config)  # not LlavaForConditionalGeneration.__init__: it builds a LlavaModel
        self.model = LlavaMedHiResModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = [
    "LlavaMedHiResModel",
    "LlavaMedHiResForConditionalGeneration",
    "LlavaMedHiResPreTrainedModel",
]
