"""decode_image / check_caption: every bad-sample class and every mode conversion."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmkd.data.images import DEFAULT_MAX_PIXELS, BadSample, check_caption, decode_image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _reason(data, **kw) -> str:
    with pytest.raises(BadSample) as info:
        decode_image(data, **kw)
    return info.value.reason


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (1-bit gray) with a tiny data stream: a cheap bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_modality_images_decode_to_rgb(modality_dir: Path) -> None:
    paths = sorted(p for p in modality_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(paths) == 9
    for path in paths:
        original = Image.open(path)
        img = decode_image(path.read_bytes())
        assert img.mode == "RGB" and img.size == original.size, path.name
        if original.mode == "L":  # gray stays gray: R == G == B
            arr = np.asarray(img)
            assert np.array_equal(arr[..., 0], arr[..., 2]), path.name
        gray = decode_image(path.read_bytes(), mode="L")
        assert gray.mode == "L" and gray.size == original.size


def test_truncated_jpeg(modality_dir: Path) -> None:
    data = (modality_dir / "mri.jpg").read_bytes()
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_truncated_png(modality_dir: Path) -> None:
    data = (modality_dir / "xray.png").read_bytes()
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_random_bytes_zero_bytes_and_missing() -> None:
    rng = np.random.default_rng(0)
    assert _reason(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()) == "corrupt"
    assert _reason(b"") == "corrupt"
    assert _reason(None) == "missing"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs() -> None:
    # above our limit but below twice Pillow's: Pillow only warns, our own check refuses
    assert _reason(_png_header_only(10_000, 10_000)) == "decompression_bomb"
    # far above Pillow's hard limit: Pillow's DecompressionBombError becomes our reason
    assert _reason(_png_header_only(60_000, 60_000), max_pixels=10**12) == "decompression_bomb"
    small = _png(Image.new("RGB", (20, 20)))
    assert _reason(small, max_pixels=399) == "decompression_bomb"
    assert decode_image(small, max_pixels=400).size == (20, 20)
    assert DEFAULT_MAX_PIXELS < 10_000 * 10_000


def test_16bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    data = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_image(data, mode="L")).astype(int)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone
    assert abs(out.ravel()[128] - 128) <= 2  # mid-gray stays mid-gray (clipping would give 255)
    rgb = np.asarray(decode_image(data))
    assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 0], out)


def test_12bit_values_in_16bit_png_fill_the_range() -> None:
    ramp = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    out = np.asarray(decode_image(_png(Image.fromarray(ramp)), mode="L")).astype(int)
    assert out.min() == 0 and out.max() == 255


def test_float_and_int32_images() -> None:
    f = Image.fromarray(np.linspace(-5.0, 5.0, 64, dtype=np.float32).reshape(8, 8), mode="F")
    out = np.asarray(decode_image(_tiff(f), mode="L")).astype(int)
    assert out.min() == 0 and out.max() == 255
    i = Image.fromarray(np.linspace(-100000, 100000, 64).astype(np.int32).reshape(8, 8), mode="I")
    out = np.asarray(decode_image(_tiff(i), mode="L")).astype(int)
    assert out.min() == 0 and out.max() == 255


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


def test_cmyk_jpeg_to_rgb() -> None:
    red = Image.new("RGB", (16, 16), (220, 20, 30)).convert("CMYK")
    buf = io.BytesIO()
    red.save(buf, format="JPEG", quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "CMYK"
    px = np.asarray(decode_image(buf.getvalue())).reshape(-1, 3).mean(0)
    assert px[0] > 180 and px[1] < 70 and px[2] < 70


def test_rgba_png_composited_on_white() -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid gray
    out = np.asarray(decode_image(_png(Image.fromarray(arr, mode="RGBA")))).astype(int)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert all(120 <= v <= 135 for v in out[1, 0])
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA")
    assert np.asarray(decode_image(_png(la), mode="L")).tolist() == [[255, 0]]


def test_palette_png_with_and_without_transparency() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    assert np.asarray(decode_image(_png(pal))).tolist() == [[[0, 0, 255], [0, 255, 0]]]
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "P"
    assert np.asarray(decode_image(buf.getvalue())).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_unsupported_target_mode_and_reason() -> None:
    with pytest.raises(ValueError, match="mode"):
        decode_image(_png(Image.new("RGB", (2, 2))), mode="CMYK")
    with pytest.raises(ValueError, match="valid reasons"):
        BadSample("nope")


def test_check_caption() -> None:
    assert check_caption("  a chest x-ray \n") == "a chest x-ray"
    for bad in ("", "   \n", None, 3):
        with pytest.raises(BadSample) as info:
            check_caption(bad)
        assert info.value.reason == "empty_caption"


def test_bad_sample_pickles_with_reason() -> None:
    e = pickle.loads(pickle.dumps(BadSample("truncated", "12 bytes missing")))
    assert (e.reason, e.detail) == ("truncated", "12 bytes missing")
    assert "truncated" in str(e)


def test_corrupt_jpeg_is_corrupt_not_truncated(modality_dir: Path) -> None:
    data = (modality_dir / "mri.jpg").read_bytes()
    flipped = data[:600] + bytes(255 - b for b in data[600:1200]) + data[1200:]  # full length, damaged middle
    assert len(flipped) == len(data) and _reason(flipped) == "corrupt"
    png = (modality_dir / "xray.png").read_bytes()
    assert _reason(png[:200] + bytes(255 - b for b in png[200:600]) + png[600:]) == "corrupt"


# ---- reduced-size JPEG decode (mmkd extract --decode reduced)

@pytest.mark.parametrize("size, side, fit, want", [
    ((4000, 3000), 224, "shortest", (299, 224)),
    ((4000, 3000), 224, "longest", (224, 168)),
    ((4000, 3000), 224, "squash", (224, 224)),
    ((200, 160), 224, "shortest", (200, 160)),  # never asks for more than the image has
])
def test_draft_size_covers_the_side_the_resize_reads(size, side, fit, want):
    from mmkd.data.images import draft_size

    assert draft_size(size, side, fit) == want


@pytest.mark.parametrize("fit", ["shortest", "longest", "squash"])
def test_reduced_decode_is_smaller_covers_the_input_and_stays_close(fit, modality_dir):
    """A real fundus JPEG (3504x2336): DCT-scaled decode, still >= 224 where the resize reads, near-equal pixels."""
    import torch
    from torchvision import transforms as T

    from mmkd.data.images import decode_image

    data = (modality_dir / "fundus.jpeg").read_bytes()
    full = decode_image(data)
    small = decode_image(data, reduce_to=(224, fit))
    assert small.size[0] < full.size[0] and small.size[1] < full.size[1]
    ref = {"shortest": min, "longest": max}.get(fit)
    assert (ref(small.size) >= 224) if ref else min(small.size) >= 224
    resize = T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])
    a, b = resize(full).flatten(), resize(small).flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.995


def test_reduced_decode_says_the_dct_scale_it_used(modality_dir):
    """decode_loaded records the scale 1/s the JPEG was decoded at (what a reduced extract counts per block)."""
    from mmkd.data.images import decode_loaded

    data = (modality_dir / "fundus.jpeg").read_bytes()  # 3504x2336
    assert "dct_scale" not in decode_loaded(data).info  # a full decode says nothing
    for side, s in ((224, 8), (300, 4), (600, 2), (2336, 1)):
        img = decode_loaded(data, reduce_to=(side, "shortest"))
        assert img.info["dct_scale"] == s and img.size == (-(-3504 // s), -(-2336 // s)), side
    png = next(p for p in sorted(modality_dir.iterdir()) if p.suffix.lower() == ".png")
    assert decode_loaded(png.read_bytes(), reduce_to=(32, "shortest")).info["dct_scale"] == 1


def test_reduced_decode_leaves_other_formats_alone(modality_dir):
    from mmkd.data.images import decode_image

    png = next(p for p in sorted(modality_dir.iterdir()) if p.suffix.lower() == ".png")
    data = png.read_bytes()
    assert decode_image(data, reduce_to=(32, "shortest")).size == decode_image(data).size


@pytest.mark.parametrize("kind", ["progressive", "cmyk", "grey", "lying_header"])
def test_reduced_decode_bad_and_unusual_jpegs(kind):
    """Progressive, CMYK and greyscale JPEGs decode reduced like full (mode, near-equal pixels); a JPEG whose
    header claims more data than it holds gets the same bad-sample reason either way."""
    import io

    import numpy as np
    from PIL import Image

    from mmkd.data.images import BadSample, decode_image

    rng = np.random.default_rng(0)
    base = Image.fromarray(np.kron(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), np.ones((20, 20, 1),
                                                                                              dtype=np.uint8)))
    img = {"cmyk": base.convert("CMYK"), "grey": base.convert("L")}.get(kind, base)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, progressive=kind == "progressive")
    data = buf.getvalue()
    if kind == "lying_header":
        data = data[: len(data) // 2]  # the header's 1200x800 is not backed by data
        reasons = set()
        for reduce_to in (None, (224, "shortest")):
            with pytest.raises(BadSample) as e:
                decode_image(data, reduce_to=reduce_to)
            reasons.add(e.value.reason)
        assert reasons == {"truncated"}
        return
    full, small = decode_image(data), decode_image(data, reduce_to=(224, "shortest"))
    assert full.mode == small.mode == "RGB" and min(small.size) >= 224 and small.size[0] < full.size[0]
    a = np.asarray(full.resize(small.size, Image.BICUBIC), dtype=np.float64).ravel()
    b = np.asarray(small, dtype=np.float64).ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
