"""Decoding image bytes into PIL images, and the bad-sample classes.

A sample whose image or caption cannot be used raises :class:`BadSample` with a
short machine-readable ``reason`` (one of :data:`REASONS`); the extract runners
record that reason in the store's failures table and carry on.

Mode conversion rules (to ``mode="RGB"`` or ``"L"``):

* ``1``/``L``/``RGB``/``YCbCr``/``CMYK``: Pillow's own conversion (CMYK uses
  Pillow's formula; embedded ICC profiles are not applied).
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a
  ``transparency`` entry): alpha-composited on white, then converted.
* 16-bit integer (``I;16*``, and ``I`` holding values in 0..65535): scaled by the
  smallest bit depth (8..16) that holds the image's maximum, so a 12-bit scan
  (max <= 4095) fills 0..255 like a full 16-bit one does; never clipped.
* ``I`` with values outside 0..65535 and ``F``: min-max scaled to 0..255 (``F``
  already within 0..1 is multiplied by 255).
"""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from mmkd.errors import MMKDError

REASONS = ("missing", "corrupt", "truncated", "decompression_bomb", "unsupported_mode", "empty_caption", "bad_row")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS (about 9459 x 9459)
_TARGET_MODES = ("RGB", "L")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


class _DecodeCounter:
    """Images decoded by :func:`decode_image` in this process (thread-safe); read by benchmarks and tests."""

    def __init__(self) -> None:
        self._lock, self.count = threading.Lock(), 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


DECODES = _DecodeCounter()


def decode_count() -> int:
    """How many images this process has decoded (or tried to) so far: a counter in the decode path, not an estimate."""
    return DECODES.count


class BadSample(MMKDError):
    """One sample cannot be used; ``reason`` says why in one word from :data:`REASONS`.

    Attributes:
        reason: machine-readable class (``missing``, ``corrupt``, ``truncated``,
            ``decompression_bomb``, ``unsupported_mode``, ``empty_caption``, ``bad_row``:
            a dataset table row that is not UTF-8 or not valid JSON/CSV).
        detail: a human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; valid reasons: {list(REASONS)}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # keep (reason, detail) through pickling (Ray, multiprocessing)
        return (type(self), (self.reason, self.detail))


def check_caption(text: object) -> str:
    """Return the caption stripped of surrounding whitespace.

    Raises:
        BadSample: ``empty_caption`` when the caption is missing, not a string or blank.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadSample("empty_caption", f"caption is {text!r}")
    return text.strip()


def decode_image(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB",
                 reduce_to: tuple[int, str] | list[tuple[int, str]] | None = None) -> Image.Image:
    """Decode image bytes and convert them to ``mode``.

    Args:
        data: the encoded image (JPEG, PNG, ...); ``None`` means the image is absent.
        max_pixels: images with more pixels (width x height, read from the header
            before decoding) are refused as decompression bombs. Pillow's own limit
            (``PIL.Image.MAX_IMAGE_PIXELS``, twice of which is a hard error) still
            applies above this one.
        mode: ``"RGB"`` or ``"L"``.
        reduce_to: ``(side, fit)``: decode a JPEG at the smallest DCT scale (1/2,
            1/4, 1/8; Pillow's ``draft``) that still covers ``side`` pixels the way the
            teacher's resize will use them (``fit``: ``shortest`` short side, ``longest``
            long side, ``squash`` both sides). The teacher's own resize then runs on the
            smaller image: several times faster on large JPEGs, pixels differ slightly
            (``mmkd extract --decode reduced``). Other formats decode in full. A list
            of ``(side, fit)`` decodes at the scale that covers every one of them
            (one decode feeding several teachers).

    Returns:
        A loaded image in ``mode``.

    Raises:
        BadSample: ``missing``, ``corrupt``, ``truncated``, ``decompression_bomb`` or
            ``unsupported_mode``.
        ValueError: ``mode`` is not one this function produces.
    """
    if mode not in _TARGET_MODES:
        raise ValueError(f"decode_image mode {mode!r} not supported; use one of {list(_TARGET_MODES)}")
    return convert_mode(decode_loaded(data, max_pixels=max_pixels, reduce_to=reduce_to), mode)


def decode_loaded(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  reduce_to: tuple[int, str] | list[tuple[int, str]] | None = None,
                  draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes, in the file's own mode (:func:`decode_image` without the mode conversion).

    One decode can then be converted to each mode its teachers need (:func:`convert_mode`),
    with the same pixels :func:`decode_image` gives for each. Every call is counted in
    :func:`decode_count` (also one that finds the data damaged).

    Args:
        draft: with ``reduce_to``, a further (width, height) the DCT-reduced decode must cover
            (e.g. :func:`mmkd.data.views.draft_request` for the crop boxes of a row's views).

    With ``reduce_to``, the image's ``info["dct_scale"]`` is the ``s`` of the DCT scale 1/s it was decoded at
    (1, 2, 4 or 8; 1 for a format other than JPEG).

    Raises:
        BadSample: as :func:`decode_image`.
    """
    DECODES.add()
    img = open_image(data, max_pixels=max_pixels)
    if reduce_to is not None and img.format == "JPEG":
        covers = [reduce_to] if isinstance(reduce_to, tuple) else list(reduce_to)
        sizes = [draft_size(img.size, *c) for c in covers] + ([tuple(draft)] if draft is not None else [])
        # draft picks the largest scale with both sides >= the request: the side-wise max covers every teacher
        width = img.size[0]
        drafted = img.draft(None, (max(w for w, _ in sizes), max(h for _, h in sizes)))
        # the DCT scale 1/s the decoder uses: draft returns the original image's box in the reduced image's units
        img.info["dct_scale"] = round(width / drafted[1][2]) if drafted else 1
    elif reduce_to is not None:
        img.info["dct_scale"] = 1  # not a JPEG: decoded at full size
    return _load(img, data)


def open_image(data: bytes | None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes, reading the header only (size, format), so a caller can ``draft`` before
    :func:`load_image` decodes the pixels.

    Raises:
        BadSample: ``missing``, ``corrupt``, ``truncated`` or ``decompression_bomb``.
    """
    if data is None:
        raise BadSample("missing", "no image data")
    if len(data) == 0:
        raise BadSample("corrupt", "image data is empty (0 bytes)")
    return _open_checked(data, max_pixels)


def load_image(img: Image.Image, data: bytes, mode: str = "RGB") -> Image.Image:
    """Decode an image from :func:`open_image` (at its draft size, if one was set) and convert it to ``mode``.

    Raises:
        BadSample: ``corrupt``, ``truncated``, ``decompression_bomb`` or ``unsupported_mode``.
    """
    return convert_mode(_load(img, data), mode)


def _load(img: Image.Image, data: bytes) -> Image.Image:
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise BadSample("decompression_bomb", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadSample(_damage_reason(data, e), f"{type(e).__name__}: {e}") from e
    return img


def jpeg_size(data: object, colours: tuple[str, ...] = ("YCbCr", "RGB", "Gray")) -> tuple[int, int] | None:
    """(width, height) of a JPEG that libjpeg-turbo decodes to RGB from one of ``colours`` within the pixel limit,
    from its header (in C: Pillow's parser in Python costs as much as a small decode); else ``None``."""
    if not isinstance(data, (bytes, bytearray)) or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colour not in colours or width <= 0 or height <= 0 or width * height > DEFAULT_MAX_PIXELS:
        return None
    return int(width), int(height)


def decode_jpeg_scaled(data: bytes, full: tuple[int, int], m: int) -> np.ndarray | None:
    """A JPEG of size ``full`` (:func:`jpeg_size`) as (h, w, 3) uint8 RGB at DCT scale ``m``/8 (m = 1..8,
    libjpeg-turbo's scaled IDCT), or ``None`` when its strict mode refuses the file (Pillow then decodes it,
    or names the damage)."""
    try:
        # the smallest scaled size with both sides >= these is exactly M/8 (libjpeg rounds scaled sizes up)
        return simplejpeg.decode_jpeg(data, "RGB", min_width=-(-full[0] * m // 8), min_height=-(-full[1] * m // 8))
    except ValueError:
        return None


def resize_uint8(pixels: np.ndarray, size: tuple[int, int], mode: str = "bicubic",
                 antialias: bool = True) -> np.ndarray:
    """(H, W, C) uint8 resized to ``size`` (height, width) by torch's uint8 kernel (``mode`` of
    ``F.interpolate``; bicubic antialiased: Pillow's a = -0.5 kernel and support, within 2 grey levels of it
    and several times faster); ``pixels`` itself when it already has that size."""
    if tuple(pixels.shape[:2]) == tuple(size):
        return pixels
    import torch
    import torch.nn.functional as F

    if not (pixels.flags.c_contiguous and pixels.flags.writeable):  # Pillow's arrays are read-only
        pixels = pixels.copy()
    # (1, C, h, w) in channels-last memory: the layout torch's vectorised uint8 antialiased kernel reads
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    y = F.interpolate(x, size=tuple(size), mode=mode, antialias=antialias)
    return y[0].permute(1, 2, 0).numpy()  # channels-last memory: a contiguous (H, W, C) array, no copy


def draft_size(size: tuple[int, int], side: int, fit: str) -> tuple[int, int]:
    """The size to ask a JPEG ``draft`` for so the decoded image still covers ``side`` under ``fit``.

    ``draft`` picks the largest scale 1/s (s in 1, 2, 4, 8) with both sides at least
    the requested ones, so the answer scales the image until the side the resize
    reads (the short one for ``shortest``, the long one for ``longest`` and ``pad_square``,
    each for ``squash``) equals ``side``, rounding up.
    """
    w, h = size
    if fit == "squash":
        return max(1, min(side, w)), max(1, min(side, h))
    # pad_square (MedCLIP) pads to a square of the long side, then resizes it: the long side is what it reads
    ref = min(w, h) if fit == "shortest" else max(w, h) if fit in ("longest", "pad_square") else None
    if ref is None:
        raise ValueError(f"reduce_to fit {fit!r} is unknown; use shortest, longest or squash")
    if ref <= side:
        return w, h
    return max(1, -(-w * side // ref)), max(1, -(-h * side // ref))  # integer ceil: no float rounding up a side


def _damage_reason(data: bytes, error: BaseException) -> str:
    """``truncated`` when the data ends early, else ``corrupt``.

    Pillow says "truncated" for any JPEG whose entropy-coded data runs out, which
    also happens when bytes in the middle are damaged. Where the format has an end
    marker (JPEG ``FFD9``, PNG ``IEND``), its presence decides: a file that still
    ends properly is corrupt, not truncated. Other formats go by Pillow's message.
    """
    if data[:3] == b"\xff\xd8\xff":
        return "corrupt" if data.rstrip(b"\r\n ").endswith(b"\xff\xd9") else "truncated"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "corrupt" if b"IEND" in data[-16:] else "truncated"
    return "truncated" if "truncat" in str(error).lower() else "corrupt"


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse images over ``max_pixels``."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample("decompression_bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise BadSample("corrupt", f"not a recognised image ({len(data)} bytes)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadSample(_damage_reason(data, e), f"{type(e).__name__}: {e}") from e
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadSample("corrupt", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise BadSample(
            "decompression_bomb", f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
        )
    return img


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert a loaded image to ``mode`` (``RGB`` or ``L``) following the module rules.

    Raises:
        BadSample: ``unsupported_mode`` when the mode cannot be converted.
    """
    try:
        if img.mode in _HIGH_DEPTH_MODES:
            img = _to_8bit(img)
        elif img.mode in _ALPHA_MODES or "transparency" in img.info:
            img = _flatten_alpha(img)
        if img.mode == mode:
            return img
        if img.mode not in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX"):
            raise BadSample("unsupported_mode", f"image mode {img.mode!r} cannot be converted to {mode}")
        if mode == "L" and img.mode not in ("RGB", "1", "P"):
            img = img.convert("RGB")
        return img.convert(mode)
    except BadSample:
        raise
    except (ValueError, OSError) as e:
        raise BadSample("unsupported_mode", f"image mode {img.mode!r} -> {mode}: {e}") from e


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite an image with transparency on a white background (RGB or L result)."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    return flat.convert("L") if img.mode in ("LA", "La", "L") else flat


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grayscale image to 8-bit ``L`` (see module doc)."""
    arr = np.asarray(img)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise BadSample("corrupt", f"{img.mode} image has no finite pixel values")
    lo, hi = float(finite.min()), float(finite.max())
    if img.mode != "F" and lo >= 0 and hi <= 65535:
        bits = max(8, math.ceil(math.log2(hi + 1)))
        scaled = arr * (255.0 / (2**bits - 1))
    elif img.mode == "F" and lo >= 0 and hi <= 1:
        scaled = arr * 255.0
    else:
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
