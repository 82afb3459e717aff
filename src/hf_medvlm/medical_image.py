"""Load medical images (PNG, JPEG, TIFF, DICOM) as PIL images ready for the image processors.

`load_medical_image` reads a path, raw bytes or a binary file object. Ordinary image formats go through PIL with
EXIF orientation applied and their bit depth kept (16-bit grayscale stays 16-bit). DICOM goes through pydicom
(optional: `pip install "hf-medvlm[dicom]"`): the modality rescale gives physical values (e.g. Hounsfield units),
a window maps them to 8 bits as a radiologist would see them, and MONOCHROME1 is inverted. Anything that cannot be
read faithfully raises `MedicalImageError` instead of returning a wrong picture.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["WINDOW_PRESETS", "MedicalImageError", "load_medical_image"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]
Window = Union[str, Sequence[float], None]

# (center, width) in Hounsfield units, the usual CT reading presets
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}
FULL_RANGE = "full"

_DICOM_INSTALL_HINT = 'pip install "hf-medvlm[dicom]"'
# first tag group of a DICOM stream written without the 128-byte preamble (file meta or identifying module)
_PREAMBLE_LESS_DICOM_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FRAME_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
}


class MedicalImageError(ValueError):
    """An input that cannot be read as a faithful image: corrupt, truncated, empty, too large or without pixels."""


def load_medical_image(source: ImageSource, window: Window = None, frame: int | None = None) -> Image.Image:
    """Read one image (one frame) from a PNG, JPEG, TIFF, ... or DICOM source.

    Args:
        source: a path (`str` or `os.PathLike`), the file's bytes (`bytes`, `bytearray`, `memoryview`) or a binary
            file object (read from its current position to the end). DICOM is recognised by the "DICM" marker at
            byte 128, or, without the preamble, by its first tag when PIL does not know the format.
        window: DICOM grayscale only; how stored values become 8-bit grey levels.
            - `None`: the file's own VOI LUT, else its first WindowCenter/WindowWidth (with its VOI LUT function),
              else the frame's min-max range.
            - a preset name: "lung" (-600, 1500), "mediastinum" (50, 350), "bone" (400, 1800), "brain" (40, 80),
              "abdomen" (40, 400), as (center, width) in rescaled units (Hounsfield units for CT).
            - `(center, width)`: a linear DICOM window in rescaled units, width >= 1.
            - "full": the frame's min-max range, ignoring any window in the file.
            A window given for a colour DICOM or a non-DICOM image raises `ValueError`: those are already display
            values and windowing them would silently change the picture.
        frame: 0-based frame of a multi-frame DICOM or page of a multi-page TIFF/GIF; `None` means 0.

    Returns:
        A fully loaded PIL image, independent of `source`:
        - DICOM grayscale (MONOCHROME1/2): mode "L", `(Rows, Columns)`, windowed, MONOCHROME1 inverted so that high
          values are bright as in MONOCHROME2.
        - DICOM colour (RGB, YBR_* converted, PALETTE COLOR applied): mode "RGB", samples above 8 bits scaled to 8.
        - other formats: the mode PIL decodes ("L", "RGB", "RGBA", "I;16", "I", "F", ...), 16-bit grayscale kept at
          16 bits, EXIF orientation applied (so the size may be transposed).

    Raises:
        MedicalImageError (a `ValueError`): unreadable, corrupt or truncated data, a DICOM without pixel data, a
            zero-size image, an image over PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), or a DICOM
            transfer syntax whose decoder is not installed.
        ValueError: an invalid `window` or `frame` (out of range: the message gives the frame count).
        FileNotFoundError: a path that does not exist.
        ImportError: a DICOM source when pydicom is not installed.
    """
    window = _validate_window(window)
    frame = _validate_frame_argument(frame)
    with _open_stream(source) as stream:
        head = stream.read(132)
        stream.seek(0)
        if not head:
            raise MedicalImageError("cannot read an image from empty input")
        if head[128:132] == b"DICM":
            return _load_dicom(stream, window, frame, force=False)
        return _load_with_pil(stream, head, window, frame)


# ----------------------------------------------------------------------------------------------------------------
# arguments and sources


def _validate_window(window: Window) -> str | tuple[float, float] | None:
    """The window as None, "full" or a `(center, width)` float pair."""
    if window is None:
        return None
    if isinstance(window, str):
        name = window.lower()
        if name == FULL_RANGE:
            return FULL_RANGE
        if name in WINDOW_PRESETS:
            return WINDOW_PRESETS[name]
        presets = ", ".join(WINDOW_PRESETS)
        raise ValueError(f"unknown window {window!r}: use a preset ({presets}), {FULL_RANGE!r} or (center, width)")
    if isinstance(window, Sequence) and len(window) == 2 and all(_is_real(v) for v in window):
        center, width = float(window[0]), float(window[1])
        if math.isfinite(center) and math.isfinite(width) and width >= 1:
            return center, width
    raise ValueError(
        f"window must be None, a preset name, {FULL_RANGE!r} or (center, width) with width >= 1, got {window!r}"
    )


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _validate_frame_argument(frame: int | None) -> int:
    if frame is None:
        return 0
    if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool) or frame < 0:
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    return int(frame)


def _check_frame_in_range(frame: int, n_frames: int) -> None:
    if frame >= n_frames:
        raise ValueError(f"frame {frame} is out of range: the image has {n_frames} frame(s) (0-based)")


def _check_size(width: int, height: int) -> None:
    """Refuse empty images and images over PIL's decompression-bomb limit, before any pixels are decoded."""
    if width <= 0 or height <= 0:
        raise MedicalImageError(f"zero-size image ({width}x{height} pixels)")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise MedicalImageError(
            f"image of {width}x{height} = {width * height} pixels exceeds the decompression-bomb limit of {limit} "
            "pixels (PIL.Image.MAX_IMAGE_PIXELS)"
        )


@contextmanager
def _open_stream(source: ImageSource) -> Iterator[IO[bytes]]:
    """A seekable binary stream over `source`; closes only a file it opened itself."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield handle
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("a file object source must be opened in binary mode ('rb')")
        # a private copy: the caller's stream may be unseekable, and PIL/pydicom may read it lazily
        yield io.BytesIO(bytes(data))
    else:
        raise TypeError(f"source must be a path, bytes or a binary file object, got {type(source).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# PIL formats


def _load_with_pil(stream: IO[bytes], head: bytes, window, frame: int) -> Image.Image:
    """PNG/JPEG/TIFF/...: one page, loaded, EXIF-oriented, in PIL's decoded mode (16-bit kept)."""
    try:
        with warnings.catch_warnings():
            # between 1x and 2x MAX_IMAGE_PIXELS PIL only warns; a warning would let the bomb through
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except UnidentifiedImageError as exc:
        if head[:2] in _PREAMBLE_LESS_DICOM_STARTS:
            stream.seek(0)
            return _load_dicom(stream, window, frame, force=True)
        raise MedicalImageError("cannot identify the image format: corrupt, or neither an image nor DICOM") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MedicalImageError(f"image exceeds the decompression-bomb limit: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MedicalImageError(f"corrupt image header: {exc}") from exc
    with image:
        if window is not None:
            raise ValueError(f"window applies to grayscale DICOM only; this is a {image.format} image")
        _check_frame_in_range(frame, getattr(image, "n_frames", 1))
        return _decode_pil_frame(image, frame)


def _decode_pil_frame(image: Image.Image, frame: int) -> Image.Image:
    try:
        if frame:
            image.seek(frame)
        _check_size(*image.size)
        image.load()
        # exif_transpose returns a copy, so the result outlives the stream
        return ImageOps.exif_transpose(image)
    except MedicalImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MedicalImageError(f"corrupt or truncated {image.format} image: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------------
# DICOM


def _import_pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as exc:
        raise ImportError(f"reading DICOM needs pydicom and its pixel decoders: {_DICOM_INSTALL_HINT}") from exc
    return pydicom


def _load_dicom(stream: IO[bytes], window, frame: int, force: bool) -> Image.Image:
    """DICOM -> mode "L" (grayscale, windowed) or "RGB" image of one frame."""
    pydicom = _import_pydicom()
    try:
        ds = pydicom.dcmread(stream, force=force)
    except Exception as exc:  # pydicom signals malformed files with many exception types
        raise MedicalImageError(f"corrupt or truncated DICOM: {exc}") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise MedicalImageError("DICOM dataset has no pixel data (no PixelData element)")
    if "Rows" not in ds or "Columns" not in ds:
        raise MedicalImageError("DICOM dataset has pixel data but no Rows/Columns")
    _check_size(int(ds.Columns or 0), int(ds.Rows or 0))
    _check_frame_in_range(frame, int(ds.get("NumberOfFrames") or 1))
    pixels, photometric = _decode_dicom_frame(ds, frame)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _window_to_uint8(_modality_values(pixels, ds, frame), ds, window, frame)
        # MONOCHROME1 stores high values as dark
        return Image.fromarray(255 - grey if photometric == "MONOCHROME1" else grey)
    if window is not None:
        raise ValueError(f"window applies to grayscale DICOM only; this one is {photometric}")
    return Image.fromarray(_colour_to_rgb8(pixels, ds, photometric))


def _transfer_syntax(ds):
    """The dataset's transfer syntax, inferred from how it was read when the file meta is absent."""
    from pydicom import uid

    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax:
        return tsyntax
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        return uid.ExplicitVRBigEndian
    return uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian


def _decode_dicom_frame(ds, frame: int) -> tuple[np.ndarray, str]:
    """One frame as `(Rows, Columns)` or `(Rows, Columns, 3)` stored values, and its photometric interpretation."""
    from pydicom.pixels import get_decoder

    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise MedicalImageError(f"DICOM transfer syntax {tsyntax.name} ({tsyntax}) has no pixel decoder") from exc
    if not decoder.is_available:
        raise MedicalImageError(
            f"no decoder installed for DICOM transfer syntax {tsyntax.name} ({tsyntax}): {_DICOM_INSTALL_HINT}, "
            f"or install one of: {'; '.join(decoder.missing_dependencies)}"
        )
    try:
        pixels, properties = decoder.as_array(ds, index=frame)
    except Exception as exc:  # plugins raise RuntimeError/ValueError/... for data they cannot decode
        hint = f" ({_DICOM_INSTALL_HINT} adds decoders)" if decoder.is_encapsulated else ""
        raise MedicalImageError(f"cannot decode {tsyntax.name} DICOM pixel data{hint}: {exc}") from exc
    return pixels, str(properties["photometric_interpretation"])


def _frame_attributes(ds, frame: int):
    """Rescale and window attributes for `frame`: top level, overridden by shared then per-frame functional groups."""
    from pydicom.dataset import Dataset

    attributes = Dataset()
    keywords = [kw for kws in _FRAME_FUNCTIONAL_GROUPS.values() for kw in kws]
    for keyword in keywords:
        if keyword in ds:
            attributes[keyword] = ds[keyword]
    items = list(ds.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    items += [per_frame[frame]] if frame < len(per_frame) else []
    for item in items:
        for sequence, kws in _FRAME_FUNCTIONAL_GROUPS.items():
            for sub in item.get(sequence) or []:
                for keyword in kws:
                    if keyword in sub:
                        attributes[keyword] = sub[keyword]
    return attributes


def _modality_values(pixels: np.ndarray, ds, frame: int) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units) through the Modality LUT or rescale slope/intercept."""
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels, ds)
    attributes = _frame_attributes(ds, frame)
    if "RescaleSlope" in attributes and "RescaleIntercept" in attributes:
        return apply_modality_lut(pixels, attributes)
    return pixels


def _window_to_uint8(values: np.ndarray, ds, window, frame: int) -> np.ndarray:
    """Modality values -> uint8 grey levels, same shape, by the chosen window (see `load_medical_image`)."""
    if isinstance(window, tuple):
        return _linear_window(values, *window, function="LINEAR")
    if window == FULL_RANGE:
        return _min_max(values)
    if ds.get("VOILUTSequence"):
        return _file_voi_lut(values, ds)
    attributes = _frame_attributes(ds, frame)
    if "WindowCenter" in attributes and "WindowWidth" in attributes:
        center, width = (_first_value(attributes[kw].value) for kw in ("WindowCenter", "WindowWidth"))
        function = str(attributes.get("VOILUTFunction") or "LINEAR")
        try:
            return _linear_window(values, center, width, function=function)
        except ValueError as exc:
            raise MedicalImageError(f"the DICOM file's window is invalid ({exc}); pass window=... explicitly") from exc
    return _min_max(values)


def _first_value(value) -> float:
    # WindowCenter/WindowWidth may hold several alternative views; the first is the default one
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _linear_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM windowing (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT or SIGMOID) onto 0..255."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # an 8-bit unsigned output description makes pydicom's output range exactly 0..255
    target = Dataset()
    target.PhotometricInterpretation = "MONOCHROME2"
    target.BitsStored = 8
    target.PixelRepresentation = 0
    target.WindowCenter = center
    target.WindowWidth = width
    target.VOILUTFunction = function
    return _round_to_uint8(apply_windowing(values, target))


def _file_voi_lut(values: np.ndarray, ds) -> np.ndarray:
    """The file's first VOI LUT, its output range scaled onto 0..255."""
    from pydicom.pixels import apply_voi

    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    table = apply_voi(np.arange(first, first + entries), ds)
    lo, hi = float(table.min()), float(table.max())
    # a VOI LUT indexes integer modality values
    mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return _round_to_uint8((mapped - lo) / (hi - lo) * 255.0)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Frame's own [min, max] onto 0..255; a constant frame becomes 0."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MedicalImageError("DICOM pixel values are not finite (NaN or infinity)")
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return _round_to_uint8((values - lo) / (hi - lo) * 255.0)


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _colour_to_rgb8(pixels: np.ndarray, ds, photometric: str) -> np.ndarray:
    """Colour DICOM frame -> `(Rows, Columns, 3)` uint8 RGB."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        # palette entries are 8 or 16 bit, as the LUT descriptor says
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _round_to_uint8(rgb.astype(np.float64) * 255.0 / (2**bits - 1))
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        pixels, photometric = convert_color_space(pixels, photometric, "RGB"), "RGB"
    if photometric != "RGB" or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise MedicalImageError(f"unsupported DICOM photometric interpretation {photometric} for shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    return _round_to_uint8(pixels.astype(np.float64) * 255.0 / (2**bits - 1))
