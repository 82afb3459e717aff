"""LlavaMedHiRes against its oracles: transformers' own LLaVA, and a step-by-step reference of the S2 method."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration

from hf_medvlm import LlavaMedHiResConfig, LlavaMedHiResForConditionalGeneration, LlavaMedHiResModel

from conftest import IMAGE_TOKEN_ID, TILE, TINY_CLIP, TINY_LLAMA, TINY_TIMM, prompt_ids, tiny_config, tiny_model

SCALES3 = (TILE, 2 * TILE, 3 * TILE)


def random_pixels(num_images, num_tiles, seed=0):
    return torch.randn(num_images, num_tiles, 3, TILE, TILE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- single scale: exactly transformers' LLaVA


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"vision_feature_select_strategy": "full"},
        {"vision_feature_layer": [-3, -1]},
        {"multimodal_projector_bias": False, "projector_hidden_act": "silu"},
    ],
)
def test_single_scale_equals_transformers_llava(options):
    ours = tiny_model(**options)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=TINY_CLIP, text_config=TINY_LLAMA, image_token_index=IMAGE_TOKEN_ID, **options)
    ).eval()
    result = llava.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == set(llava.state_dict())

    seq = ours.config.image_seq_length
    ids = torch.cat([prompt_ids(2, seq, seed=1)], dim=0)
    pixels = random_pixels(2, 1)
    with torch.no_grad():
        expected = llava(input_ids=ids, pixel_values=pixels[:, 0]).logits
        got = ours(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


# ---------------------------------------------------------------- multi-scale: an independent reference


def reference_logits(model, input_ids, pixel_values):
    """BRIEF section 2 step by step: loop over images, scales and tiles; stitch; area-pool; concat; project; splice."""
    config = model.config
    tower = model.model.vision_tower
    layer = config.vision_feature_layer
    grid = config.tile_size // config.vision_config.patch_size
    image_vectors = []
    for image in pixel_values:
        tile_index, per_scale = 0, []
        for scale in config.scales:
            k = scale // config.tile_size
            canvas = torch.zeros(config.vision_config.hidden_size, k * grid, k * grid)
            for row in range(k):
                for col in range(k):
                    hidden = tower(image[tile_index : tile_index + 1], output_hidden_states=True).hidden_states
                    patches = hidden[layer][0, 1:]  # drop CLS
                    feature_map = patches.reshape(grid, grid, -1).permute(2, 0, 1)
                    canvas[:, row * grid : (row + 1) * grid, col * grid : (col + 1) * grid] = feature_map
                    tile_index += 1
            pooled = F.interpolate(canvas[None], size=(grid, grid), mode="area")[0]
            per_scale.append(pooled.flatten(1).T)  # (grid*grid, C)
        image_vectors.append(model.model.multi_modal_projector(torch.cat(per_scale, dim=-1)))
    embeds = model.get_input_embeddings()(input_ids).clone()
    positions = (input_ids[0] == config.image_token_id).nonzero().flatten()
    embeds[0, positions] = torch.cat(image_vectors)
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    return model.lm_head(hidden)


def test_three_scales_match_step_by_step_reference():
    model = tiny_model(SCALES3)
    assert model.config.num_tiles == 1 + 4 + 9
    assert model.config.image_seq_length == (TILE // 8) ** 2
    assert model.model.multi_modal_projector.linear_1.in_features == 32 * 3
    pixels = random_pixels(2, 14)
    ids = prompt_ids(2, model.config.image_seq_length)
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pixels).logits
        expected = reference_logits(model, ids, pixels)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_scales_are_concatenated_smallest_first():
    model = tiny_model(SCALES3)
    pixels = random_pixels(1, 14)
    with torch.no_grad():
        merged = model.model.get_image_features(pixel_values=pixels).last_hidden_state
        alone = tiny_model().model.get_image_features(pixel_values=pixels[:, :1]).last_hidden_state
    # the same seed gives the same tower, so the first channel block is the plain single-scale feature map
    assert torch.allclose(merged[..., :32], alone, atol=1e-6)
    assert merged.shape == (1, model.config.image_seq_length, 32 * 3)


def test_tile_batches_bound_tower_calls_without_changing_results():
    calls = []
    full = tiny_model(SCALES3)
    chunked = tiny_model(SCALES3, max_tile_batch=5)
    chunked.model.vision_tower.register_forward_hook(lambda *args: calls.append(args[1][0].shape[0]))
    pixels = random_pixels(2, 14)
    ids = prompt_ids(2, full.config.image_seq_length)
    with torch.no_grad():
        expected = full(input_ids=ids, pixel_values=pixels).logits
        got = chunked(input_ids=ids, pixel_values=pixels).logits
    assert calls == [5, 5, 5, 5, 5, 3]  # 28 tiles in ceil(28 / 5) calls
    assert torch.allclose(got, expected, atol=1e-5)


def test_full_strategy_multi_scale_keeps_cls_as_the_mean_of_tile_cls():
    model = tiny_model((TILE, 2 * TILE), vision_feature_select_strategy="full")
    assert model.config.image_seq_length == 16 + 1
    pixels = random_pixels(1, 5)
    with torch.no_grad():
        merged = model.model.get_image_features(pixel_values=pixels).last_hidden_state
        hidden = model.model.vision_tower(pixels[0], output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(merged[0, 0, 32:], hidden[1:5, 0].mean(0), atol=1e-6)
    assert torch.allclose(merged[0, 0, :32], hidden[0, 0], atol=1e-6)


# ---------------------------------------------------------------- timm tower


def test_timm_tower_matches_forward_intermediates_reference():
    model = tiny_model((TILE, 2 * TILE), vision=TINY_TIMM)
    assert model.config.image_seq_length == 16
    pixels = random_pixels(1, 5)
    timm_vit = model.model.vision_tower.timm_model
    with torch.no_grad():
        merged = model.model.get_image_features(pixel_values=pixels).last_hidden_state
        # second-to-last block, as HF's hidden_states[-2]; timm returns NCHW maps without the CLS token
        _, maps = timm_vit.forward_intermediates(pixels[0], indices=[len(timm_vit.blocks) - 2])
    maps = maps[0]
    base = maps[0].flatten(1).T
    stitched = torch.cat([torch.cat([maps[1], maps[2]], dim=2), torch.cat([maps[3], maps[4]], dim=2)], dim=1)
    pooled = F.avg_pool2d(stitched[None], 2)[0].flatten(1).T
    assert torch.allclose(merged[0], torch.cat([base, pooled], dim=-1), atol=1e-5)

    ids = prompt_ids(1, 16)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert torch.isfinite(logits).all()


def test_timm_tower_refuses_full_strategy():
    with pytest.raises(ValueError, match="timm"):
        tiny_config(vision=TINY_TIMM, vision_feature_select_strategy="full")


# ---------------------------------------------------------------- generation


def test_generate_with_cache_equals_without_and_runs_the_tower_once():
    model = tiny_model(SCALES3)
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    pixels = random_pixels(1, 14)
    ids = prompt_ids(1, model.config.image_seq_length)
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(input_ids=ids, pixel_values=pixels, use_cache=True, **settings)
    assert len(calls) == 1
    uncached = model.generate(input_ids=ids, pixel_values=pixels, use_cache=False, **settings)
    assert len(calls) == 2
    assert cached.shape[1] == ids.shape[1] + 8
    assert torch.equal(cached, uncached)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny_model(SCALES3)
    seq = model.config.image_seq_length
    short, long_ = prompt_ids(1, seq, text=(9,), seed=3), prompt_ids(1, seq, text=(9, 10, 11, 12, 13), seed=4)
    pixels = random_pixels(2, 14)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    alone = [
        model.generate(input_ids=short, pixel_values=pixels[:1], **settings)[0, short.shape[1] :],
        model.generate(input_ids=long_, pixel_values=pixels[1:], **settings)[0, long_.shape[1] :],
    ]
    pad = long_.shape[1] - short.shape[1]
    batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1), long_])
    mask = torch.cat([torch.cat([torch.zeros(1, pad), torch.ones_like(short)], dim=1), torch.ones_like(long_)]).long()
    batched = model.generate(input_ids=batch, attention_mask=mask, pixel_values=pixels, **settings)
    assert torch.equal(batched[0, batch.shape[1] :], alone[0])
    assert torch.equal(batched[1, batch.shape[1] :], alone[1])


# ---------------------------------------------------------------- training-facing behaviour


def test_labels_give_loss_and_a_frozen_tower_gets_no_gradient():
    model = tiny_model(SCALES3).train()
    model.model.vision_tower.requires_grad_(False)
    ids = prompt_ids(1, model.config.image_seq_length)
    labels = ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)
    out = model(input_ids=ids, pixel_values=random_pixels(1, 14), labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_unfrozen_tower_and_gradient_checkpointing_give_the_same_gradients():
    def projector_and_tower_grads(checkpointing):
        model = tiny_model(SCALES3).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        ids = prompt_ids(1, model.config.image_seq_length)
        model(input_ids=ids, pixel_values=random_pixels(1, 14), labels=ids).loss.backward()
        tower = dict(model.model.vision_tower.named_parameters())["embeddings.patch_embedding.weight"].grad
        return model.model.multi_modal_projector.linear_1.weight.grad, tower

    plain, checkpointed = projector_and_tower_grads(False), projector_and_tower_grads(True)
    assert plain[1] is not None and plain[1].abs().sum() > 0
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_sdpa_eager_and_bf16_agree(tmp_path):
    tiny_model(SCALES3).save_pretrained(tmp_path)
    pixels = random_pixels(1, 14)
    ids = prompt_ids(1, tiny_config(SCALES3).image_seq_length)
    logits = {}
    for name, kwargs in {
        "eager": dict(attn_implementation="eager"),
        "sdpa": dict(attn_implementation="sdpa"),
        "bf16": dict(attn_implementation="sdpa", dtype=torch.bfloat16),
    }.items():
        model = LlavaMedHiResForConditionalGeneration.from_pretrained(tmp_path, **kwargs).eval()
        with torch.no_grad():
            logits[name] = model(input_ids=ids, pixel_values=pixels).logits.float()
    assert model.model.language_model.config._attn_implementation == "sdpa"
    assert model.model.vision_tower.dtype == torch.bfloat16
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-5)
    assert (logits["bf16"] - logits["sdpa"]).abs().max() < 0.1


def test_device_map_auto_loads_and_runs(tmp_path):
    tiny_model(SCALES3).save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, device_map="auto")
    # accelerate places whole layers: the decoder and encoder layers of both backbones are never split
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= set(model._no_split_modules)
    ids = prompt_ids(1, model.config.image_seq_length)
    out = model.generate(input_ids=ids, pixel_values=random_pixels(1, 14), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


# ---------------------------------------------------------------- Auto classes and saving


def test_auto_classes_resolve_and_weights_are_safetensors(tmp_path):
    model = tiny_model(SCALES3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LlavaMedHiResConfig) and config.scales == list(SCALES3)
    assert isinstance(AutoModel.from_pretrained(tmp_path), LlavaMedHiResModel)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(reloaded, LlavaMedHiResForConditionalGeneration)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForMultimodalLM"}


def test_llava_hf_config_fields_are_understood():
    config = LlavaMedHiResConfig(
        vision_config=TINY_CLIP, text_config=TINY_LLAMA, image_token_index=IMAGE_TOKEN_ID, scales=[TILE]
    )
    assert config.image_token_id == IMAGE_TOKEN_ID


# ---------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"scales": [TILE, 48]}, ["[48]", "multiples", str(TILE)]),
        ({"scales": [2 * TILE, 4 * TILE]}, ["scales[0]=64", "32"]),
        ({"scales": [2 * TILE, TILE]}, ["ascending"]),
        ({"scales": []}, ["non-empty"]),
        ({"vision_feature_select_strategy": "cls"}, ["'cls'", "default"]),
        ({"vision_feature_layer": 7}, ["[7]", "3 layers"]),
        ({"image_seq_length": 576}, ["576", "16"]),
        ({"max_tile_batch": 0}, ["max_tile_batch", "0"]),
    ],
)
def test_invalid_configs_name_the_field_and_values(kwargs, fragments):
    scales = kwargs.pop("scales", [TILE])
    with pytest.raises(ValueError) as error:
        tiny_config(scales, **kwargs)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_tile_count_mismatch_names_both_numbers():
    model = tiny_model(SCALES3)
    ids = prompt_ids(1, model.config.image_seq_length)
    with pytest.raises(ValueError, match=r"5 tiles per image .* need 14"):
        model(input_ids=ids, pixel_values=random_pixels(1, 5))
    with pytest.raises(ValueError, match=r"\(3, 16, 16\), expected \(3, 32, 32\)"):
        model(input_ids=ids, pixel_values=torch.randn(1, 14, 3, 16, 16))


def test_image_token_mismatch_names_both_numbers():
    model = tiny_model(SCALES3)
    seq = model.config.image_seq_length
    ids = prompt_ids(1, seq)
    with pytest.raises(ValueError, match=rf"{seq} image tokens.* {2 * seq} features \(2 images x image_seq_length {seq}\)"):
        model(input_ids=ids, pixel_values=random_pixels(2, 14))
    assert math.isfinite(model(input_ids=ids, pixel_values=random_pixels(1, 14)).logits.sum().item())
