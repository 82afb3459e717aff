"""Pictures of what the model sees: every scale's tile grid drawn over the image."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers.image_utils import OPENAI_CLIP_MEAN

from .medical_image import load_medical_image
from .processing.image_processing_llava_med_hires import validate_scales

PANEL = 384  # display side of each scale's panel, in pixels


def _square_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, padded to a square with CLIP's mean colour like the processor's `"pad"` mode."""
    if image.mode in ("I;16", "I", "F"):
        # stretch a 16-bit or float image's own range to 8 bit for display
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        image = Image.fromarray(((values - low) / max(high - low, 1e-6) * 255).astype(np.uint8))
    image = image.convert("RGB")
    side = max(image.size)
    background = tuple(int(round(255 * c)) for c in OPENAI_CLIP_MEAN)
    square = Image.new("RGB", (side, side), background)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def draw_tile_grid(image, scales=(378, 756, 1134), out="tiles.png", window=None, frame=None) -> Path:
    """Draw one panel per scale, the image with its `(scale / tile)^2` tile grid, side by side; returns `out`.

    `image` is anything `load_medical_image` reads (path, bytes, file object) or a PIL image.
    """
    scales = list(scales)
    validate_scales(scales)
    picture = image if isinstance(image, Image.Image) else load_medical_image(image, window=window, frame=frame)
    square = _square_rgb(picture)
    tile = scales[0]
    canvas = Image.new("RGB", (len(scales) * (PANEL + 16) + 16, PANEL + 56), "white")
    draw = ImageDraw.Draw(canvas)
    for index, scale in enumerate(scales):
        k = scale // tile
        left = 16 + index * (PANEL + 16)
        canvas.paste(square.resize((PANEL, PANEL), Image.Resampling.BICUBIC), (left, 40))
        step = PANEL / k
        for line in range(k + 1):
            offset = round(line * step)
            draw.line([(left + offset, 40), (left + offset, 40 + PANEL)], fill=(255, 64, 64), width=2)
            draw.line([(left, 40 + offset), (left + PANEL, 40 + offset)], fill=(255, 64, 64), width=2)
        draw.text((left, 12), f"scale {scale}px: {k}x{k} tile(s) of {tile}px", fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
