"""load_medical_image on real files: pydicom's bundled DICOM test files and images written here through PIL."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from hf_medvlm.medical_image import WINDOW_PRESETS, MedicalImageError, load_medical_image

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MR_LOSSLESS_VARIANTS = [
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
]


def dicom(name: str) -> str:
    return get_testdata_file(name)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def hounsfield(name: str) -> np.ndarray:
    ds = pydicom.dcmread(dicom(name))
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 LINEAR window onto 0..255, written out independently of the module."""
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    scaled[values <= center - 0.5 - (width - 1) / 2] = 0
    scaled[values > center - 0.5 + (width - 1) / 2] = 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def assert_sane(pixels: np.ndarray) -> None:
    """Not a blank, black or white picture."""
    assert pixels.std() > 20
    assert np.isin(pixels, (0, 255)).mean() < 0.9


def saved(ds: Dataset, path) -> str:
    ds.save_as(path)
    return str(path)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# DICOM modalities


@pytest.mark.parametrize(
    ("name", "mode", "size"),
    [
        ("CT_small.dcm", "L", (128, 128)),
        ("MR_small.dcm", "L", (64, 64)),
        ("JPEG2000.dcm", "L", (256, 1024)),
        ("693_J2KI.dcm", "L", (512, 512)),
        ("J2K_pixelrep_mismatch.dcm", "L", (512, 512)),
        ("ExplVR_BigEnd.dcm", "RGB", (80, 60)),
        ("SC_rgb_rle_2frame.dcm", "RGB", (100, 100)),
        ("SC_ybr_full_422_uncompressed.dcm", "RGB", (100, 100)),
        ("examples_palette.dcm", "RGB", (800, 350)),
    ],
)
def test_dicom_loads_in_display_mode(name, mode, size):
    image = load_medical_image(dicom(name))
    assert (image.mode, image.size) == (mode, size)
    assert as_array(image).std() > 5


def test_ct_without_file_window_is_min_max_scaled():
    pixels = as_array(load_medical_image(dicom("CT_small.dcm")))
    assert (pixels.min(), pixels.max()) == (0, 255)
    assert_sane(pixels)
    assert np.array_equal(pixels, as_array(load_medical_image(dicom("CT_small.dcm"), window="full")))


@pytest.mark.parametrize("preset", ["abdomen", "mediastinum", "bone", "lung"])
def test_ct_preset_window_matches_dicom_linear_formula(preset):
    center, width = WINDOW_PRESETS[preset]
    pixels = as_array(load_medical_image(dicom("CT_small.dcm"), window=preset))
    assert np.array_equal(pixels, linear_window(hounsfield("CT_small.dcm"), center, width))
    assert np.array_equal(pixels, as_array(load_medical_image(dicom("CT_small.dcm"), window=(center, width))))


def test_ct_abdomen_window_looks_like_a_picture():
    assert_sane(as_array(load_medical_image(dicom("CT_small.dcm"), window="abdomen")))
    assert_sane(as_array(load_medical_image(dicom("CT_small.dcm"), window="ABDOMEN")))


@pytest.mark.parametrize("name", ["MR_small.dcm", "693_J2KI.dcm"])
def test_file_window_is_used_by_default(name):
    ds = pydicom.dcmread(dicom(name))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    default = as_array(load_medical_image(dicom(name)))
    assert_sane(default)
    assert np.array_equal(default, as_array(load_medical_image(dicom(name), window=(center, width))))
    assert not np.array_equal(default, as_array(load_medical_image(dicom(name), window="full")))


def test_ct_window_from_functional_groups(tmp_path):
    """Enhanced multi-frame files keep rescale and window in (shared / per-frame) functional groups."""
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = ds.RescaleSlope, ds.RescaleIntercept
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    shared, per_frame = Dataset(), Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    per_frame.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame])
    del ds.RescaleSlope, ds.RescaleIntercept
    image = load_medical_image(saved(ds, tmp_path / "enhanced.dcm"))
    assert np.array_equal(as_array(image), as_array(load_medical_image(dicom("CT_small.dcm"), window="abdomen")))


def test_file_voi_lut_sequence_is_applied_and_scaled(tmp_path):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    stored = ds.pixel_array.astype(np.int64)
    table = np.clip((np.arange(4096) - 500) * 40, 0, 65535)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    ds.VOILUTSequence = Sequence([item])
    pixels = as_array(load_medical_image(saved(ds, tmp_path / "voi.dcm")))
    expected = np.rint(table[np.clip(stored, 0, 4095)] / table.max() * 255).astype(np.uint8)
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("name", MR_LOSSLESS_VARIANTS)
def test_lossless_mr_variants_decode_to_the_same_pixels(name):
    reference = as_array(load_medical_image(dicom("MR_small.dcm")))
    assert np.array_equal(as_array(load_medical_image(dicom(name))), reference)


def test_jpeg_ls_decodes_or_names_the_missing_decoder():
    name = "MR_small_jpeg_ls_lossless.dcm"
    if get_decoder(pydicom.uid.JPEGLSLossless).is_available:
        reference = as_array(load_medical_image(dicom("MR_small.dcm")))
        assert np.array_equal(as_array(load_medical_image(dicom(name))), reference)
    else:
        with pytest.raises(ValueError, match=r"JPEG-LS Lossless.*hf-medvlm\[dicom\]"):
            load_medical_image(dicom(name))


@pytest.mark.parametrize("window", [None, "full", (700, 1200)])
def test_monochrome1_is_inverted(tmp_path, window):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = as_array(load_medical_image(saved(ds, tmp_path / "mono1.dcm"), window=window))
    normal = as_array(load_medical_image(dicom("MR_small.dcm"), window=window))
    assert np.array_equal(inverted, 255 - normal)


def test_ybr_is_converted_to_rgb():
    ds = pydicom.dcmread(dicom("SC_ybr_full_422_uncompressed.dcm"))
    expected = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    assert np.array_equal(as_array(load_medical_image(dicom("SC_ybr_full_422_uncompressed.dcm"))), expected)


def test_16_bit_rgb_dicom_is_scaled_to_8_bit():
    eight = as_array(load_medical_image(dicom("SC_rgb_rle.dcm"))).astype(int)
    sixteen = as_array(load_medical_image(dicom("SC_rgb_rle_16bit.dcm"))).astype(int)
    assert np.abs(eight - sixteen).max() <= 1


def test_dicom_without_preamble(tmp_path):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    ds.preamble = None
    path = tmp_path / "no_preamble.dcm"
    ds.save_as(path, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(as_array(load_medical_image(path)), as_array(load_medical_image(dicom("MR_small.dcm"))))


# ----------------------------------------------------------------------------------------------------------------
# frames and sources


def test_frame_selection():
    path = dicom("SC_rgb_rle_2frame.dcm")
    first, second = (as_array(load_medical_image(path, frame=i)) for i in (0, 1))
    assert np.array_equal(as_array(load_medical_image(path)), first)
    assert not np.array_equal(first, second)
    assert np.array_equal(second, pydicom.dcmread(path).pixel_array[1])


@pytest.mark.parametrize("frame", [5, 2])
def test_frame_out_of_range_names_the_count(frame):
    with pytest.raises(ValueError, match=rf"frame {frame}.* 2 frame"):
        load_medical_image(dicom("SC_rgb_rle_2frame.dcm"), frame=frame)


@pytest.mark.parametrize("frame", [-1, 1.0, True, "0"])
def test_invalid_frame_argument(frame):
    with pytest.raises(ValueError, match="frame must be"):
        load_medical_image(dicom("MR_small.dcm"), frame=frame)


def test_multi_page_tiff_frames(tmp_path):
    pages = [Image.new("L", (8, 6), value) for value in (10, 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert as_array(load_medical_image(path, frame=1)).max() == 200
    assert as_array(load_medical_image(path)).max() == 10
    with pytest.raises(ValueError, match="2 frame"):
        load_medical_image(path, frame=2)


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_rle_2frame.dcm"])
def test_bytes_and_file_object_equal_path(name):
    path = dicom(name)
    expected = as_array(load_medical_image(path, frame=0))
    data = open(path, "rb").read()
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(as_array(load_medical_image(source)), expected)
    with open(path, "rb") as handle:
        assert np.array_equal(as_array(load_medical_image(handle)), expected)


def test_unsupported_source_type():
    with pytest.raises(TypeError, match="source must be"):
        load_medical_image(12345)
    with pytest.raises(TypeError, match="binary mode"):
        load_medical_image(io.StringIO("text"))


def test_png_bytes_file_object_and_path_agree(tmp_path):
    ramp = np.arange(48 * 32, dtype=np.uint8).reshape(48, 32)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        assert np.array_equal(as_array(load_medical_image(source)), ramp)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_keeps_its_range(tmp_path, fmt):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / f"ramp16.{fmt.lower()}"
    Image.fromarray(ramp).save(path, fmt)
    image = load_medical_image(path)
    assert image.mode in ("I;16", "I")
    pixels = as_array(image)
    assert pixels.max() > 255
    assert np.array_equal(pixels, ramp)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20), "white").save(path, "JPEG", exif=exif)
    assert load_medical_image(path).size == (20, 40)


# ----------------------------------------------------------------------------------------------------------------
# errors


def test_truncated_png():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    with pytest.raises(MedicalImageError, match="truncated"):
        load_medical_image(data[: len(data) // 2])


@pytest.mark.parametrize("prefix", [b"", b"\x08\x00"])
def test_garbage_bytes(prefix):
    garbage = prefix + np.random.default_rng(1).integers(1, 256, 2000, dtype=np.uint8).tobytes()
    with pytest.raises(MedicalImageError):
        load_medical_image(garbage)


def test_garbage_bytes_message():
    with pytest.raises(MedicalImageError, match="cannot identify the image format"):
        load_medical_image(b"\x01\x02" + bytes(range(256)) * 4)


def test_empty_input():
    with pytest.raises(MedicalImageError, match="empty"):
        load_medical_image(b"")


def test_truncated_dicom():
    data = open(dicom("CT_small.dcm"), "rb").read()
    with pytest.raises(MedicalImageError, match="less than expected"):
        load_medical_image(data[: len(data) // 2])
    with pytest.raises(MedicalImageError, match="cannot decode"):
        load_medical_image(dicom("MR_truncated.dcm"))


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    del ds.PixelData
    with pytest.raises(MedicalImageError, match="no pixel data"):
        load_medical_image(saved(ds, tmp_path / "no_pixels.dcm"))


def test_zero_size_dicom(tmp_path):
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    ds.Rows = 0
    with pytest.raises(MedicalImageError, match="zero-size"):
        load_medical_image(saved(ds, tmp_path / "zero.dcm"))


@pytest.mark.parametrize("limit", [64 * 64 - 1, 100])  # PIL warns up to 2x the limit and raises beyond
def test_png_decompression_bomb(monkeypatch, limit):
    data = png_bytes(Image.new("1", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(MedicalImageError, match="decompression-bomb"):
        load_medical_image(data)


def test_dicom_decompression_bomb(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128 - 1)
    with pytest.raises(MedicalImageError, match="decompression-bomb"):
        load_medical_image(dicom("CT_small.dcm"))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_medical_image(tmp_path / "absent.dcm")


def test_missing_pydicom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r'pip install "hf-medvlm\[dicom\]"'):
        load_medical_image(dicom("CT_small.dcm"))


@pytest.mark.parametrize("window", ["liver", (40,), (40, 0), (40, float("nan")), ("40", "400"), 40])
def test_invalid_window(window):
    with pytest.raises(ValueError, match="window"):
        load_medical_image(dicom("CT_small.dcm"), window=window)


@pytest.mark.parametrize("name", ["ExplVR_BigEnd.dcm", None])
def test_window_on_display_images_is_refused(name):
    source = dicom(name) if name else png_bytes(Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match="grayscale DICOM only"):
        load_medical_image(source, window="lung")


def test_invalid_window_in_file_is_reported(tmp_path):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    ds.WindowWidth = 0
    path = saved(ds, tmp_path / "bad_window.dcm")
    with pytest.raises(MedicalImageError, match="window is invalid"):
        load_medical_image(path)
    assert load_medical_image(path, window="full").mode == "L"


def test_medical_image_error_is_a_value_error():
    assert issubclass(MedicalImageError, ValueError)
