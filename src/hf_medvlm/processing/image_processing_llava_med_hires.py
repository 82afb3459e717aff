"""Image processors of LlavaMedHiRes: pad to a square, resize to every scale, cut each scale into encoder-sized tiles.

Both backends live in this one module so that a saved folder's `auto_map` can name both and remote code can honour
`AutoImageProcessor.from_pretrained(..., backend="pil")`:

- [`LlavaMedHiResImageProcessor`] (default, `backend="torchvision"`): antialiased bicubic resizing with
  `torch.nn.functional.interpolate` (uint8 for 8-bit input, float32 otherwise), on CPU or on `device=`.
- [`LlavaMedHiResImageProcessorPil`] (`backend="pil"`): 8-bit PIL resizing, as in LLaVA-Med's own preprocessing.
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images, to_pil_image
from transformers.image_transforms import resize as pil_resize
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    is_pil_image,
    is_valid_image,
    load_image,
    to_numpy_array,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType


IMAGE_ASPECT_RATIOS = ("pad", "resize")

# Channel counts accepted on arrays and tensors: grayscale, grayscale + alpha, RGB, RGBA.
_CHANNEL_COUNTS = (1, 2, 3, 4)

# EXIF tag 274 (orientation) -> the flips/rotations that undo it on a (C, H, W) tensor, as PIL's exif_transpose does.
_UNDO_EXIF_ORIENTATION = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.rot90(1, (-2, -1)),
}
_EXIF_ORIENTATION_TAG = 0x0112

# PIL modes read as they are (8/16/32-bit gray, float, gray+alpha, RGB, RGBA); the rest are converted first.
_PIL_MODES_KEPT = {"L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_PIL_MODE_CONVERSIONS = {"1": "L", "La": "LA", "RGBa": "RGBA", "PA": "RGBA"}

_TORCH_RESIZE_MODES = {
    PILImageResampling.BICUBIC: "bicubic",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.NEAREST: "nearest-exact",
}


class LlavaMedHiResImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    scales (`list[int]`, *optional*, defaults to `[378, 756, 1134]`):
        Ascending square side lengths in pixels. The first is the tile size (the vision tower's input size), every
        scale is a multiple of it; scale `s` gives `(s / scales[0]) ** 2` tiles.
    image_aspect_ratio (`str`, *optional*, defaults to `"pad"`):
        `"pad"`: pad to a centred square with the mean colour `int(image_mean * 255)` (LLaVA-1.5's `expand2square`,
        LLaVA-Med's default); `"resize"`: stretch to the square.
    max_aspect_ratio (`float`, *optional*, defaults to `20.0`):
        Images whose longer side exceeds `max_aspect_ratio` times the shorter side are refused.
    """

    scales: list[int] | tuple[int, ...]
    image_aspect_ratio: str
    max_aspect_ratio: float | int


def num_tiles_for_scales(scales: Iterable[int]) -> int:
    """Tiles per image: the sum over scales of `(scale / scales[0]) ** 2`, e.g. `[378, 756, 1134]` -> 1 + 4 + 9 = 14."""
    scales = list(scales)
    return sum((scale // scales[0]) ** 2 for scale in scales)


def validate_scales(scales) -> None:
    """Raises `ValueError` unless `scales` is a non-empty, strictly ascending list of multiples of its first entry."""
    if (
        not isinstance(scales, (list, tuple))
        or not scales
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in scales)
    ):
        raise ValueError(f"scales must be a non-empty list of positive integers, got {scales!r}")
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"scales must be strictly ascending, got {list(scales)}")
    not_multiples = [s for s in scales if s % scales[0]]
    if not_multiples:
        raise ValueError(
            f"scales {not_multiples} are not multiples of the tile size scales[0]={scales[0]} (scales={list(scales)})"
        )


def _validate_hires_kwargs(scales, image_aspect_ratio, max_aspect_ratio) -> None:
    validate_scales(scales)
    if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got {image_aspect_ratio!r}")
    if isinstance(max_aspect_ratio, bool) or not isinstance(max_aspect_ratio, (int, float)) or max_aspect_ratio < 1:
        raise ValueError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")


def split_into_tiles(images: torch.Tensor, tile_size: int) -> torch.Tensor:
    """`(B, C, S, S)` -> `(B, (S / tile_size) ** 2, C, tile_size, tile_size)`, tiles in row-major order."""
    batch, channels, side, _ = images.shape
    k = side // tile_size
    tiles = images.reshape(batch, channels, k, tile_size, k, tile_size).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(batch, k * k, channels, tile_size, tile_size)


def pad_to_square(image: torch.Tensor, background: tuple[float, ...]) -> torch.Tensor:
    """`(C, H, W)` -> `(C, L, L)` with `L = max(H, W)`, the image centred on a `background`-coloured canvas."""
    channels, height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    # channels-last memory: the layout torch's fast uint8 resampling kernels read
    canvas = torch.empty((side, side, channels), dtype=image.dtype, device=image.device).permute(2, 0, 1)
    colour = torch.tensor(background, dtype=image.dtype, device=image.device).view(channels, 1, 1)
    canvas.copy_(colour.expand_as(canvas))
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = image
    return canvas


def _flat_list_of_images(images) -> list:
    """Single images, `(N, ...)` batches and (nested) lists of them -> a flat list of single images."""
    if is_valid_image(images):
        if is_pil_image(images) or images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"an image must have shape (H, W), (H, W, C) or (C, H, W), or be a batch (N, ...) of them; "
            f"got shape {tuple(images.shape)}"
        )
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flat_list_of_images(item)]
    raise TypeError(
        "images must be PIL images, numpy arrays, torch tensors, paths/URLs or lists of them; "
        f"got {type(images).__name__}"
    )


def _numpy_to_tensor(array) -> tuple[torch.Tensor, float]:
    """A numpy array -> (tensor of the same layout, full-scale value of an alpha channel in that dtype)."""
    kind = array.dtype.kind
    if kind not in "buif":
        raise ValueError(f"unsupported image dtype {array.dtype}: expected bool, integer or floating-point pixels")
    alpha_max = 1.0 if kind in "bf" else float(2 ** (8 * array.dtype.itemsize - (kind == "i")) - 1)
    if kind == "u" and array.dtype.itemsize > 1:
        array = array.astype("int32" if array.dtype.itemsize == 2 else "int64")  # torch has no uint16/32 arithmetic
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = array.copy()  # torch.from_numpy needs writeable memory with non-negative strides
    return torch.from_numpy(array), alpha_max


_TORCH_PIXEL_DTYPES = {
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
}


def _check_tensor_dtype(tensor: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A torch tensor -> (tensor ready for arithmetic, full-scale value of an alpha channel in its dtype)."""
    if tensor.dtype not in _TORCH_PIXEL_DTYPES:
        raise ValueError(f"unsupported image dtype {tensor.dtype}: expected bool, integer or floating-point pixels")
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        return tensor, 1.0
    alpha_max = float(torch.iinfo(tensor.dtype).max)
    if tensor.dtype in (torch.uint16, torch.uint32, torch.uint64):
        tensor = tensor.to(torch.int32 if tensor.dtype == torch.uint16 else torch.int64)  # no uint16/32 arithmetic
    return tensor, alpha_max


def _pil_to_tensor(image) -> tuple[torch.Tensor, float]:
    """A PIL image in any mode -> (`(C, H, W)` tensor in its own bit depth, EXIF-oriented; alpha full scale)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in _PIL_MODE_CONVERSIONS:
        image = image.convert(_PIL_MODE_CONVERSIONS[mode])
    elif mode not in _PIL_MODES_KEPT:
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    tensor, alpha_max = _numpy_to_tensor(to_numpy_array(image))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    if orientation in _UNDO_EXIF_ORIENTATION:
        tensor = _UNDO_EXIF_ORIENTATION[orientation](tensor)
    return tensor, alpha_max


def _channels_first(tensor: torch.Tensor, input_data_format) -> torch.Tensor:
    """`(H, W)`, `(H, W, C)` or `(C, H, W)` -> `(C, H, W)` with C in 1..4 (the channel axis inferred unless given)."""
    if tensor.ndim == 2:
        return tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"an image must have shape (H, W), (H, W, C) or (C, H, W), got {tuple(tensor.shape)}")
    if input_data_format is not None:
        channels_last = ChannelDimension(input_data_format) == ChannelDimension.LAST
    else:
        first, last = tensor.shape[0] in _CHANNEL_COUNTS, tensor.shape[-1] in _CHANNEL_COUNTS
        if first and last:  # tiny images: prefer the axis that reads as RGB, then channels-first
            channels_last = tensor.shape[-1] == 3 and tensor.shape[0] != 3
        elif first or last:
            channels_last = last
        else:
            raise ValueError(
                f"wrong number of channels: an image needs 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or "
                f"4 (RGBA) channels on its first or last axis, got shape {tuple(tensor.shape)}"
            )
    if channels_last:
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"wrong number of channels: an image needs 1 (grayscale), 2 (grayscale + alpha), 3 (RGB) or 4 (RGBA) "
            f"channels, got {tensor.shape[0]} (shape {tuple(tensor.shape)})"
        )
    return tensor


def _check_geometry(tensor: torch.Tensor, max_aspect_ratio: float) -> None:
    height, width = tensor.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"zero-size image: height {height} x width {width}")
    ratio = max(height, width) / min(height, width)
    if ratio > max_aspect_ratio:
        raise ValueError(
            f"image aspect ratio {ratio:.1f} ({height} x {width}) exceeds max_aspect_ratio={max_aspect_ratio}; "
            "crop the image or raise max_aspect_ratio"
        )


def _stretch_to_8bit_range(colour: torch.Tensor) -> torch.Tensor:
    """Colour channels deeper than 8 bits -> float32 on the 0..255 scale, keeping their dynamic range.

    Floats within [0, 1] are multiplied by 255; every other input (uint16, int16, int32, floats outside [0, 1]) is
    min-max stretched to 0..255 per image, so 12/16-bit data is neither clipped at 255 nor darkened by an unused dtype
    range (a constant image becomes 0).
    """
    if colour.dtype.is_floating_point and not bool(torch.isfinite(colour).all()):
        raise ValueError("image contains NaN or infinite values")
    is_float = colour.dtype.is_floating_point
    low, high = (v.item() for v in torch.aminmax(colour))
    colour = colour.to(torch.float32)
    if is_float and low >= 0 and high <= 1:
        return colour * 255.0
    if high == low:
        return torch.zeros_like(colour)
    return (colour - low) * (255.0 / (high - low))


def _to_rgb(tensor: torch.Tensor, alpha_max: float) -> torch.Tensor:
    """`(C, H, W)`, C in 1..4 -> RGB `(3, H, W)`: uint8 for 8-bit input, else float32 on the 0..255 scale.

    Alpha is composited on white, like transformers' `convert_to_rgb` (transparent figure backgrounds are pages).
    """
    has_alpha = tensor.shape[0] in (2, 4)
    colour = tensor[:-1] if has_alpha else tensor
    if colour.dtype == torch.bool:
        colour = colour.to(torch.uint8) * 255
    elif colour.dtype != torch.uint8:
        colour = _stretch_to_8bit_range(colour)
    if has_alpha:
        alpha = (tensor[-1:].to(torch.float32) / alpha_max).clamp_(0, 1)
        blended = colour.to(torch.float32) * alpha + 255.0 * (1.0 - alpha)
        # 8-bit input stays 8-bit, as PIL's own compositing would leave it
        colour = blended.round_().to(torch.uint8) if colour.dtype == torch.uint8 else blended
    if colour.shape[0] == 1:
        colour = colour.expand(3, -1, -1)  # a view: the pad or the first resize makes the copy
    return colour


class _LlavaMedHiResImageProcessingMixin:
    """What both backends share: parameters, input decoding and checks, padding, normalisation, tiling."""

    valid_kwargs = LlavaMedHiResImageProcessorKwargs
    model_input_names = ["pixel_values"]

    scales = [378, 756, 1134]
    image_aspect_ratio = "pad"
    max_aspect_ratio = 20.0
    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True  # always: the vision tower takes RGB

    def __init__(self, **kwargs: Unpack[LlavaMedHiResImageProcessorKwargs]):
        super().__init__(**kwargs)
        _validate_hires_kwargs(self.scales, self.image_aspect_ratio, self.max_aspect_ratio)

    @property
    def tile_size(self) -> int:
        """Side of one tile in pixels: the first scale, the vision tower's input size."""
        return self.scales[0]

    @property
    def num_tiles(self) -> int:
        """Tiles per image, `pixel_values.shape[1]`: the sum over scales of `(scale / tile_size) ** 2`."""
        return num_tiles_for_scales(self.scales)

    def preprocess(
        self, images: ImageInput, *args, **kwargs: Unpack[LlavaMedHiResImageProcessorKwargs]
    ) -> BatchFeature:
        """Images -> `BatchFeature` with `pixel_values` `(num_images, num_tiles, 3, tile_size, tile_size)`.

        `images`: one image or a (nested) list of them, each a PIL image (any mode; EXIF orientation honoured), a
        numpy array or torch tensor `(H, W)`, `(H, W, C)` or `(C, H, W)` with C in 1..4 (bool, integer or float), a
        path or URL (read as 8-bit RGB by transformers' `load_image`); a 4-D array is a batch. Tiles are ordered by
        ascending scale, then row-major within a scale.
        """
        return super().preprocess(images, *args, **kwargs)

    def _standardize_kwargs(self, scales=None, **kwargs) -> dict:
        kwargs = super()._standardize_kwargs(**kwargs)
        kwargs["scales"] = list(scales) if isinstance(scales, tuple) else scales
        return kwargs

    def _validate_preprocess_kwargs(self, scales=None, image_aspect_ratio=None, max_aspect_ratio=None, **kwargs):
        super()._validate_preprocess_kwargs(**kwargs)
        _validate_hires_kwargs(scales, image_aspect_ratio, max_aspect_ratio)

    def fetch_images(self, image_url_or_urls):
        """Paths and URLs -> PIL images; images pass through; lists keep their nesting."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, str):
            return load_image(image_url_or_urls)
        return image_url_or_urls

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        images = _flat_list_of_images(self.fetch_images(images))
        if not images:
            raise ValueError("no images given: expected at least one image")
        return images

    def process_image(
        self, image, input_data_format=None, device=None, max_aspect_ratio=None, **kwargs
    ) -> torch.Tensor:
        """One input image -> RGB `(3, H, W)` after the checks: uint8 if 8-bit, else float32 on the 0..255 scale."""
        if is_pil_image(image):
            tensor, alpha_max = _pil_to_tensor(image)
        else:
            if not isinstance(image, torch.Tensor):
                tensor, alpha_max = _numpy_to_tensor(image)
            else:
                tensor, alpha_max = _check_tensor_dtype(image)
            tensor = _channels_first(tensor, input_data_format)
        _check_geometry(tensor, self.max_aspect_ratio if max_aspect_ratio is None else max_aspect_ratio)
        if device is not None:
            tensor = tensor.to(device)
        return _to_rgb(tensor, alpha_max)

    def _to_squares(self, images: list[torch.Tensor], image_aspect_ratio: str, image_mean) -> list[torch.Tensor]:
        """`"pad"`: each `(3, H, W)` centred on a mean-coloured `(3, L, L)` square; `"resize"`: left as it is."""
        if image_aspect_ratio == "resize":
            return images
        mean = image_mean if isinstance(image_mean, (list, tuple)) else (image_mean,) * 3
        # integer mean colour on the 8-bit scale, exactly LLaVA-1.5's expand2square
        background = tuple(float(int(m * 255)) for m in mean)
        return [pad_to_square(image, background) for image in images]

    def rescale_and_normalize(
        self, images: torch.Tensor, do_rescale, rescale_factor, do_normalize, image_mean, image_std
    ) -> torch.Tensor:
        """`(B, 3, S, S)` on the 0..255 scale -> float32 `(images * rescale_factor - image_mean) / image_std`."""
        images = images.to(torch.float32)
        if do_rescale:
            images = images * rescale_factor
        if do_normalize:
            mean = torch.as_tensor(image_mean, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
            std = torch.as_tensor(image_std, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
            images = (images - mean) / std
        return images

    def _tiles_of_scale(self, resized: torch.Tensor, tile_size: int, **normalize_kwargs) -> torch.Tensor:
        """`(B, 3, S, S)` resized, on the 0..255 scale -> normalised tiles `(B, (S / tile) ** 2, 3, tile, tile)`."""
        return split_into_tiles(self.rescale_and_normalize(resized, **normalize_kwargs), tile_size)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # name both backends in auto_map (one module defines both) so remote code honours `backend="pil"`
        auto_map = output.get("auto_map")
        entry = auto_map.get("AutoImageProcessor") if isinstance(auto_map, dict) else None
        names = (LlavaMedHiResImageProcessor.__name__, LlavaMedHiResImageProcessorPil.__name__)
        if isinstance(entry, str) and entry.rsplit(".", 1)[-1] in names:
            module = entry.rsplit(".", 1)[0]
            output["auto_map"] = {
                **auto_map,
                "AutoImageProcessor": {
                    "torchvision": f"{module}.{names[0]}",
                    "pil": f"{module}.{names[1]}",
                },
            }
        return output


class LlavaMedHiResImageProcessor(_LlavaMedHiResImageProcessingMixin, TorchvisionBackend):
    r"""
    Multi-scale (S2) image processor of LlavaMedHiRes, torch backend: each image is padded to a square with the mean
    colour (or stretched), resized from that same square to every `scales` entry with antialiased bicubic
    interpolation, normalised and cut into `scales[0]`-sized tiles.

    Output `pixel_values`: `(num_images, num_tiles, 3, tile_size, tile_size)`, tiles ordered by ascending scale then
    row-major, the input of `LlavaMedHiResModel`. `scales=[378, 756, 1134]` gives 1 + 4 + 9 = 14 tiles of 378 px.

    Args:
        scales (`list[int]`, *optional*, defaults to `[378, 756, 1134]`): ascending sides, multiples of the first.
        image_aspect_ratio (`str`, *optional*, defaults to `"pad"`): `"pad"` (mean-colour square) or `"resize"`.
        max_aspect_ratio (`float`, *optional*, defaults to `20.0`): longer / shorter side above which images are
            refused.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`): `BICUBIC`, `BILINEAR` or `NEAREST` here;
            the PIL backend takes any PIL filter.
        do_rescale, rescale_factor, do_normalize, image_mean, image_std: as in transformers' CLIP processors
            (defaults `1/255` and OpenAI CLIP's mean and std).

    Pixel values: 8-bit input (uint8, bool, 8-bit PIL modes) is resized in uint8 by torch's PIL-compatible kernels;
    16-bit, 32-bit-integer and float inputs outside [0, 1] are min-max stretched per image to the 8-bit range and
    resized in float32, so no level is lost; floats within [0, 1] are scaled by 255. Alpha is composited on white.
    Resized values are clamped to the 0..255 range, as PIL's 8-bit resize does.
    """

    def __init__(self, **kwargs: Unpack[LlavaMedHiResImageProcessorKwargs]):
        super().__init__(**kwargs)

    def resize(
        self, image: torch.Tensor, size: SizeDict, resample=None, antialias: bool = True, **kwargs
    ) -> torch.Tensor:
        """`(B, C, H, W)` on the 0..255 scale -> `(B, C, size.height, size.width)`, antialiased when shrinking.

        Like PIL's 8-bit resize: width first, then height, each pass clamped to 0..255 (and rounded, for uint8 input,
        by torch's uint8 kernels). Without the middle clamp, bicubic overshoot at sharp edges lands up to 20 levels
        away from PIL's result.
        """
        resample = PILImageResampling.BICUBIC if resample is None else PILImageResampling(resample)
        if resample not in _TORCH_RESIZE_MODES:
            raise ValueError(
                f"resample={resample.name} is not available in the torch backend (BICUBIC, BILINEAR, NEAREST are); "
                "use LlavaMedHiResImageProcessorPil for other PIL filters"
            )
        mode = _TORCH_RESIZE_MODES[resample]
        if mode == "nearest-exact":
            return F.interpolate(image, size=(size.height, size.width), mode=mode)
        if image.dtype == torch.uint8 and image.device.type == "cpu":
            image = image.contiguous(memory_format=torch.channels_last)  # the layout of the vectorised uint8 kernels
            return F.interpolate(
                image, size=(size.height, size.width), mode=mode, antialias=antialias, align_corners=False
            )
        image = image.to(torch.float32)
        image = F.interpolate(
            image, size=(image.shape[-2], size.width), mode=mode, antialias=antialias, align_corners=False
        ).clamp_(0, 255)
        return F.interpolate(
            image, size=(size.height, size.width), mode=mode, antialias=antialias, align_corners=False
        ).clamp_(0, 255)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        scales: list[int],
        image_aspect_ratio: str,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        disable_grouping: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        normalize_kwargs = dict(
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
        )
        squares = self._to_squares(images, image_aspect_ratio, image_mean)
        grouped, grouped_index = group_images_by_shape(squares, disable_grouping=disable_grouping)
        tiles_grouped = {}
        for shape, stacked in grouped.items():
            if stacked.dtype == torch.uint8 and stacked.device.type == "cpu":
                stacked = stacked.contiguous(memory_format=torch.channels_last)  # once, not once per scale
            per_scale = []
            for scale in scales:
                # every scale from the same square, not from the previous scale
                resized = self.resize(stacked, SizeDict(height=scale, width=scale), resample=resample)
                per_scale.append(self._tiles_of_scale(resized, scales[0], **normalize_kwargs))
            tiles_grouped[shape] = torch.cat(per_scale, dim=1)
        pixel_values = torch.stack(reorder_images(tiles_grouped, grouped_index))
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


class LlavaMedHiResImageProcessorPil(_LlavaMedHiResImageProcessingMixin, PilBackend):
    r"""
    Multi-scale (S2) image processor of LlavaMedHiRes, PIL backend: the same pipeline and output as
    [`LlavaMedHiResImageProcessor`], but the padded square is rounded to 8 bits and resized by PIL (any
    `PILImageResampling` filter), as LLaVA-Med's own preprocessing does. High-bit-depth inputs are mapped to the
    8-bit range first (see [`LlavaMedHiResImageProcessor`]), so they keep their range but not their extra levels.

    Output `pixel_values`: `(num_images, num_tiles, 3, tile_size, tile_size)`; a numpy array unless `return_tensors`
    asks otherwise. With `BICUBIC` it matches the torch backend to within 8-bit rounding.
    """

    def __init__(self, **kwargs: Unpack[LlavaMedHiResImageProcessorKwargs]):
        super().__init__(**kwargs)

    def _preprocess(
        self,
        images: list[torch.Tensor],
        scales: list[int],
        image_aspect_ratio: str,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        normalize_kwargs = dict(
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
        )
        resample = PILImageResampling.BICUBIC if resample is None else resample
        outputs = []
        for square in self._to_squares(images, image_aspect_ratio, image_mean):
            if square.is_floating_point():
                square = square.round().clamp_(0, 255).to(torch.uint8)
            pixels = square.permute(1, 2, 0).contiguous().cpu().numpy()
            pil_square = to_pil_image(pixels, input_data_format=ChannelDimension.LAST)
            per_scale = []
            for scale in scales:
                # every scale from the same square, not from the previous scale
                resized = pil_resize(
                    pil_square,
                    (scale, scale),
                    resample=resample,
                    data_format=ChannelDimension.FIRST,
                    input_data_format=ChannelDimension.LAST,
                )
                resized = torch.from_numpy(resized).to(torch.float32)[None]
                per_scale.append(self._tiles_of_scale(resized, scales[0], **normalize_kwargs))
            outputs.append(torch.cat(per_scale, dim=1)[0])
        pixel_values = torch.stack(outputs)
        if return_tensors is None:
            pixel_values = pixel_values.numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = [
    "LlavaMedHiResImageProcessor",
    "LlavaMedHiResImageProcessorKwargs",
    "LlavaMedHiResImageProcessorPil",
    "num_tiles_for_scales",
    "split_into_tiles",
    "validate_scales",
]
