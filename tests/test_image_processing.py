"""LlavaMedHiRes image processors: multi-scale tiling, input kinds, backends, errors and save/load round trips."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hf_medvlm.processing.image_processing_llava_med_hires import (
    LlavaMedHiResImageProcessor,
    LlavaMedHiResImageProcessorPil,
    num_tiles_for_scales,
)

from conftest import run_without_hf_medvlm, tiny_model

SCALES = [32, 64, 96]
TILE = SCALES[0]
BACKENDS = [LlavaMedHiResImageProcessor, LlavaMedHiResImageProcessorPil]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
# one 8-bit level in normalised units, for the widest channel
LEVEL = 1 / 255 / STD.min()


def pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


def photo(height=50, width=80, seed=0) -> np.ndarray:
    """uint8 `(H, W, 3)`: smooth gradients, a sharp-edged block and noise, so resampling has something to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)], axis=-1)
    image[height // 4 : height // 2, width // 3 : width // 2] = (250, 10, 40)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def stitch(tiles: torch.Tensor) -> torch.Tensor:
    """`(k * k, 3, t, t)` tiles in row-major order -> the `(3, k * t, k * t)` image they were cut from."""
    k = int(round(tiles.shape[0] ** 0.5))
    rows = [torch.cat(list(tiles[r * k : (r + 1) * k]), dim=-1) for r in range(k)]
    return torch.cat(rows, dim=-2)


# (1) and (2): tiles, scales and their order


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiles_of_each_scale_stitch_back_to_the_single_scale_output(backend):
    image = photo()
    multi = pixels(backend(scales=SCALES), image)[0]
    start = 0
    for scale in SCALES:
        count = (scale // TILE) ** 2
        alone = pixels(backend(scales=[scale]), image)[0, 0]
        assert torch.equal(stitch(multi[start : start + count]), alone), scale
        start += count
    assert start == multi.shape[0]


def test_shapes_tile_count_and_the_models_contract():
    processor = LlavaMedHiResImageProcessor(scales=SCALES)
    assert processor.num_tiles == num_tiles_for_scales(SCALES) == 1 + 4 + 9 == 14
    assert processor.tile_size == TILE
    assert num_tiles_for_scales([378, 756, 1134]) == 14 and num_tiles_for_scales([378]) == 1
    images = [photo(seed=1), photo(40, 30, seed=2)]
    values = pixels(processor, images)
    assert values.shape == (2, 14, 3, TILE, TILE) and values.dtype == torch.float32
    # the first tile is the whole image at the tile size: LLaVA-1.5's input
    assert torch.equal(values[:, 0], pixels(LlavaMedHiResImageProcessor(scales=[TILE]), images)[:, 0])

    model = tiny_model(scales=SCALES)
    with torch.no_grad():
        features = model.model.get_image_features(values).pooler_output
    assert len(features) == 2
    assert features[0].shape == (model.config.image_seq_length, model.config.text_config.hidden_size)


def test_default_scales_are_the_papers():
    processor = LlavaMedHiResImageProcessor()
    assert processor.scales == [378, 756, 1134] and processor.num_tiles == 14 and processor.image_aspect_ratio == "pad"


# (3): every accepted input kind


def pil_with_transparency() -> Image.Image:
    image = Image.fromarray(photo()).convert("P")
    image.info["transparency"] = 0
    return image


def ramp16(height=64, width=64) -> np.ndarray:
    return np.arange(height * width, dtype=np.uint16).reshape(height, width) % 4096


INPUTS = {
    "pil_rgb": lambda: Image.fromarray(photo()),
    "pil_L": lambda: Image.fromarray(photo()).convert("L"),
    "pil_LA": lambda: Image.fromarray(photo()).convert("LA"),
    "pil_RGBA": lambda: Image.fromarray(photo()).convert("RGBA"),
    "pil_P": lambda: Image.fromarray(photo()).convert("P"),
    "pil_P_transparency": pil_with_transparency,
    "pil_CMYK": lambda: Image.fromarray(photo()).convert("CMYK"),
    "pil_YCbCr": lambda: Image.fromarray(photo()).convert("YCbCr"),
    "pil_1": lambda: Image.fromarray(photo()).convert("1"),
    "pil_I;16": lambda: Image.fromarray(ramp16(50, 80)),
    "pil_I": lambda: Image.fromarray(ramp16(50, 80).astype(np.int32) - 1000),
    "pil_F": lambda: Image.fromarray(ramp16(50, 80).astype(np.float32) / 7.0),
    "np_HW_uint8": lambda: photo()[..., 0],
    "np_HWC_uint8": lambda: photo(),
    "np_CHW_uint8": lambda: photo().transpose(2, 0, 1),
    "np_HWC_RGBA_uint8": lambda: np.concatenate([photo(), np.full((50, 80, 1), 200, np.uint8)], axis=-1),
    "np_HWC_LA_uint8": lambda: np.stack([photo()[..., 0], np.full((50, 80), 255, np.uint8)], axis=-1),
    "np_HW_uint16": lambda: ramp16(50, 80),
    "np_HWC_uint16": lambda: photo().astype(np.uint16) * 257,
    "np_HW_int16_hounsfield": lambda: ramp16(50, 80).astype(np.int16) - 1024,
    "np_HW_float32": lambda: photo()[..., 1].astype(np.float32) / 255,
    "np_HWC_float64_wide_range": lambda: photo().astype(np.float64) * 3.7 - 100,
    "np_HWC_bool": lambda: photo() > 128,
    "np_flipped_view": lambda: photo()[::-1],
    "torch_CHW_uint8": lambda: torch.from_numpy(photo()).permute(2, 0, 1),
    "torch_HWC_uint8": lambda: torch.from_numpy(photo()),
    "torch_HW_float": lambda: torch.from_numpy(photo()[..., 2]).float() / 255,
    "torch_HW_uint16": lambda: torch.from_numpy(ramp16(50, 80).astype(np.int32)).to(torch.uint16),
    "torch_CHW_bfloat16": lambda: torch.from_numpy(photo()).permute(2, 0, 1).to(torch.bfloat16) / 255,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_every_input_kind_gives_finite_tiles(backend, kind):
    values = pixels(backend(scales=SCALES), INPUTS[kind]())
    assert values.shape == (1, 14, 3, TILE, TILE)
    assert torch.isfinite(values).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_equivalent_inputs_give_equal_outputs(backend):
    processor = backend(scales=SCALES)
    rgb = photo()
    reference = pixels(processor, rgb)
    assert torch.equal(pixels(processor, Image.fromarray(rgb)), reference)
    assert torch.equal(pixels(processor, rgb.transpose(2, 0, 1)), reference)
    assert torch.equal(pixels(processor, torch.from_numpy(rgb).permute(2, 0, 1)), reference)
    # an opaque alpha channel changes nothing; grayscale is the gray value on all three channels
    assert torch.equal(pixels(processor, Image.fromarray(rgb).convert("RGBA")), reference)
    gray = rgb[..., 0]
    assert torch.equal(pixels(processor, gray), pixels(processor, np.stack([gray] * 3, axis=-1)))
    assert torch.equal(pixels(processor, Image.fromarray(gray)), pixels(processor, gray))
    # 16-bit: the PIL image and its array agree
    assert torch.equal(pixels(processor, Image.fromarray(ramp16(50, 80))), pixels(processor, ramp16(50, 80)))


def test_float_inputs_in_unit_range_read_as_8_bit_values():
    # the torch backend resizes uint8 in uint8 and floats in float32: they differ by 8-bit rounding only
    processor = LlavaMedHiResImageProcessor(scales=SCALES)
    rgb = photo()
    difference = (pixels(processor, rgb.astype(np.float32) / 255) - pixels(processor, rgb)).abs()
    assert difference.max() <= 1.5 * LEVEL and difference.mean() <= 0.35 * LEVEL


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_batches_and_single_images(backend):
    processor = backend(scales=SCALES)
    a, b = photo(seed=3), photo(30, 60, seed=4)
    both = pixels(processor, [a, b])
    assert both.shape == (2, 14, 3, TILE, TILE)
    assert torch.equal(both[0], pixels(processor, a)[0]) and torch.equal(both[1], pixels(processor, b)[0])
    assert torch.equal(pixels(processor, [[a], [b]]), both)
    assert torch.equal(pixels(processor, [a, b, a], disable_grouping=False), torch.stack([both[0], both[1], both[0]]))
    batch = np.stack([a, photo(seed=5)])
    assert pixels(processor, batch).shape == (2, 14, 3, TILE, TILE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transparent_pixels_are_composited_on_white(backend):
    processor = backend(scales=[TILE], image_aspect_ratio="resize", do_normalize=False)
    clear = np.zeros((TILE, TILE, 4), np.uint8)
    values = pixels(processor, Image.fromarray(clear, mode="RGBA"))
    assert torch.allclose(values, torch.ones_like(values))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(photo(30, 50)).save(buffer, format="PNG", exif=exif.tobytes())
    image = Image.open(io.BytesIO(buffer.getvalue()))
    processor = LlavaMedHiResImageProcessor(scales=SCALES)
    expected = pixels(processor, np.asarray(ImageOps.exif_transpose(image)))
    assert torch.equal(pixels(processor, image), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_16_bit_ramp_keeps_its_dynamic_range(backend):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # a 12-bit ramp stored in 16 bits
    processor = backend(scales=[64], image_aspect_ratio="resize", do_normalize=False)
    values = pixels(processor, Image.fromarray(ramp))[0, 0, 0]
    assert values.min() == 0 and values.max() == 1
    assert (values >= 0.999).float().mean() < 0.01  # not saturated: almost no pixel at the top
    if backend is LlavaMedHiResImageProcessor:
        # float all the way: the 4096 levels survive, exactly min-max stretched
        assert values.unique().numel() == 4096
        assert torch.allclose(values, torch.from_numpy(ramp / 4095).float(), atol=1e-6)
    else:
        assert values.unique().numel() == 256  # every 8-bit level used


# (4): padding with the mean colour


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_mode_pads_with_the_mean_colour_and_resize_mode_does_not(backend):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[...] = (200, 30, 90)
    padded = pixels(backend(scales=SCALES), wide)[0]
    stretched = pixels(backend(scales=SCALES, image_aspect_ratio="resize"), wide)[0]
    # scale 96: tiles 5..13; its top row of tiles is all padding, which normalises to ~0
    pad_value = torch.tensor((np.floor(MEAN * 255) / 255 - MEAN) / STD, dtype=torch.float32).view(3, 1, 1)
    for tile in padded[5:8]:
        assert torch.allclose(tile, pad_value.expand_as(tile), atol=1e-4)
        assert tile.abs().max() < 0.015
    colour = torch.tensor(((200, 30, 90) / np.float64(255) - MEAN) / STD, dtype=torch.float32).view(3, 1, 1)
    assert torch.allclose(padded[9], colour.expand_as(padded[9]), atol=1e-4)  # the middle tile is the image
    for tile in stretched[5:14]:
        assert torch.allclose(tile, colour.expand_as(tile), atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_mode_equals_llavas_expand2square_then_resize(backend):
    image = Image.fromarray(photo(40, 70))
    side = max(image.size)
    square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in MEAN))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    ours = pixels(backend(scales=SCALES), image)
    assert torch.equal(ours, pixels(backend(scales=SCALES, image_aspect_ratio="resize"), square))


# (5): the two backends agree


@pytest.mark.parametrize(
    "image", [photo(), photo(120, 90, seed=7), ramp16(50, 80)], ids=["rgb_upscaled", "rgb_downscaled", "gray16"]
)
def test_torch_and_pil_backends_agree_within_one_and_a_half_levels(image):
    # the PIL backend rounds to 8 bits before and after resizing, so each pixel can differ by about one 8-bit level
    torch_values = pixels(LlavaMedHiResImageProcessor(scales=SCALES), image)
    pil_values = pixels(LlavaMedHiResImageProcessorPil(scales=SCALES), image)
    difference = (torch_values - pil_values).abs()
    assert difference.max() <= 1.5 * LEVEL
    assert difference.mean() <= 0.35 * LEVEL


def test_pil_backend_returns_numpy_unless_asked():
    image = photo()
    assert isinstance(LlavaMedHiResImageProcessorPil(scales=SCALES)(image)["pixel_values"], np.ndarray)
    assert isinstance(LlavaMedHiResImageProcessor(scales=SCALES)(image)["pixel_values"], torch.Tensor)


# (6): errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "zero-size image: height 0 x width 10"),
        (torch.zeros(3, 12, 0), "zero-size image: height 12 x width 0"),
        (np.zeros((10, 300, 3), np.uint8), "aspect ratio 30.0 (10 x 300) exceeds max_aspect_ratio=20.0"),
        (np.zeros((10, 12, 5), np.uint8), "wrong number of channels"),
        (np.zeros((10, 12, 3), np.complex64), "unsupported image dtype complex64"),
        (torch.zeros(3, 10, 12, dtype=torch.complex64), "unsupported image dtype torch.complex64"),
        (np.full((10, 12), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((1, 2, 10, 12, 3), np.uint8), "got shape (1, 2, 10, 12, 3)"),
        ([], "no images given"),
    ],
    ids=["zero_height", "zero_width", "aspect", "channels", "np_complex", "torch_complex", "nan", "5d", "empty"],
)
def test_bad_images_are_refused_with_a_clear_message(backend, image, message):
    with pytest.raises(ValueError) as error:
        backend(scales=SCALES)(image)
    assert message in str(error.value)


def test_zero_size_pil_image_and_wrong_explicit_channel_axis():
    processor = LlavaMedHiResImageProcessor(scales=SCALES)
    with pytest.raises(ValueError, match="zero-size image"):
        processor(Image.new("RGB", (0, 10)))
    with pytest.raises(ValueError, match="wrong number of channels.*got 10"):
        processor(np.zeros((10, 12, 3), np.uint8), input_data_format="channels_first")


def test_aspect_ratio_limit_is_configurable():
    tall = np.zeros((300, 10), np.uint8)
    assert pixels(LlavaMedHiResImageProcessor(scales=SCALES, max_aspect_ratio=40), tall).shape[1] == 14
    with pytest.raises(ValueError, match=r"aspect ratio 30.0 \(300 x 10\) exceeds max_aspect_ratio=5"):
        LlavaMedHiResImageProcessor(scales=SCALES)(tall, max_aspect_ratio=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scales=[64, 32]), "strictly ascending, got [64, 32]"),
        (dict(scales=[32, 48, 64]), "scales [48] are not multiples of the tile size scales[0]=32"),
        (dict(scales=[]), "non-empty list of positive integers"),
        (dict(scales=[0, 32]), "non-empty list of positive integers"),
        (dict(image_aspect_ratio="anyres"), "image_aspect_ratio must be one of ('pad', 'resize'), got 'anyres'"),
        (dict(max_aspect_ratio=0.5), "max_aspect_ratio must be a number >= 1, got 0.5"),
    ],
)
def test_bad_parameters_are_refused_at_construction_and_call(kwargs, message):
    with pytest.raises(ValueError) as error:
        LlavaMedHiResImageProcessor(**kwargs)
    assert message in str(error.value)
    with pytest.raises(ValueError) as error:
        LlavaMedHiResImageProcessorPil(scales=SCALES)(photo(), **kwargs)
    assert message in str(error.value)


def test_unsupported_types_and_filters():
    with pytest.raises(TypeError, match="got int"):
        LlavaMedHiResImageProcessor(scales=SCALES)(42)
    with pytest.raises(ValueError, match="LANCZOS is not available in the torch backend"):
        LlavaMedHiResImageProcessor(scales=SCALES, resample=Image.Resampling.LANCZOS)(photo())
    lanczos = LlavaMedHiResImageProcessorPil(scales=SCALES, resample=Image.Resampling.LANCZOS)
    assert torch.isfinite(pixels(lanczos, photo())).all()


# (7): save / load


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_pretrained_from_pretrained_round_trip(backend, tmp_path):
    processor = backend(scales=[32, 64], image_aspect_ratio="resize", max_aspect_ratio=8.0)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["scales"] == [32, 64] and saved["image_aspect_ratio"] == "resize" and saved["max_aspect_ratio"] == 8.0
    assert saved["image_processor_type"] == "LlavaMedHiResImageProcessor"  # the PIL class saves its base name
    loaded = backend.from_pretrained(tmp_path)
    assert type(loaded) is backend
    assert (loaded.scales, loaded.image_aspect_ratio, loaded.max_aspect_ratio) == ([32, 64], "resize", 8.0)
    images = [photo(), photo(20, 90, seed=9)]
    assert torch.equal(pixels(loaded, images), pixels(processor, images))


def test_saved_folder_loads_as_remote_code_with_either_backend(tmp_path):
    LlavaMedHiResImageProcessor.register_for_auto_class()
    folder = tmp_path / "exported"
    processor = LlavaMedHiResImageProcessor(scales=SCALES)
    processor.save_pretrained(folder)
    auto_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]["AutoImageProcessor"]
    assert auto_map == {
        "torchvision": "image_processing_llava_med_hires.LlavaMedHiResImageProcessor",
        "pil": "image_processing_llava_med_hires.LlavaMedHiResImageProcessorPil",
    }
    assert sorted(p.name for p in folder.glob("*.py")) == ["image_processing_llava_med_hires.py"]
    image = photo()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "torch.npy", pixels(processor, image).numpy())
    np.save(tmp_path / "pil.npy", pixels(LlavaMedHiResImageProcessorPil(scales=SCALES), image).numpy())
    run_without_hf_medvlm(
        f"""
        import numpy as np
        from transformers import AutoImageProcessor
        image = np.load("image.npy")
        for backend, name in [(None, "LlavaMedHiResImageProcessor"), ("pil", "LlavaMedHiResImageProcessorPil")]:
            processor = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True, backend=backend)
            assert type(processor).__name__ == name and type(processor).__module__.startswith("transformers_modules")
            values = processor(image, return_tensors="np")["pixel_values"]
            assert np.array_equal(values, np.load(("pil" if backend else "torch") + ".npy")), backend
        """,
        cwd=tmp_path,
    )
