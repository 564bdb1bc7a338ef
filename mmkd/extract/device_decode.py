"""JPEG batches decoded and preprocessed on the teacher's device (``mmkd extract --decode gpu``).

On a GPU node the wall of extraction is JPEG decoding on the CPU. With ``--decode gpu``
the decode threads only read bytes and parse headers; JPEGs are decoded in batches by
torchvision's nvJPEG path (``torchvision.io.decode_jpeg(..., device="cuda")``), then
resized, cropped and normalised on the same device. Everything the device path does
not cover goes through the CPU path per sample, with the same bad-sample reasons:
PNG / WebP / other formats, progressive and CMYK JPEGs, the ``pad_square`` resize,
and any JPEG the device decoder rejects.

The same functions run on a CPU device (torchvision's libjpeg decoder), which is how
they are tested without a GPU. Pixels differ slightly from the PIL path (another JPEG
decoder's rounding and torch's antialiased resize instead of PIL's); the tests state
the tolerance, and the teacher's store attrs record ``decode: gpu``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmkd.data.images import DEFAULT_MAX_PIXELS, BadSample, _open_checked

if TYPE_CHECKING:
    import torch

    from mmkd.teachers.base import Preprocessing

DEVICE_RESIZE_MODES = ("shortest", "longest", "squash")
_JPEG_MAGIC = b"\xff\xd8\xff"


class DeviceJpeg:
    """A sample's JPEG bytes, left for the batched device decode (checked: baseline, RGB or L, size allowed)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def device_decodable(data: bytes, pp: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether the device path takes these bytes (else the CPU path does, with its own reasons).

    Only the header is parsed: a baseline JPEG in ``RGB`` / ``L`` within ``max_pixels``,
    for a teacher whose resize mode the device path implements.
    """
    if pp.resize_mode not in DEVICE_RESIZE_MODES or data[:3] != _JPEG_MAGIC:
        return False
    try:
        img = _open_checked(data, max_pixels)
    except BadSample:
        return False  # the CPU path raises the same BadSample and records it
    return img.format == "JPEG" and img.mode in ("RGB", "L") and not img.info.get("progressive") \
        and not img.info.get("progression")


def decode_batch(datas: list[bytes], pp: Preprocessing, device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEGs on ``device`` and apply the teacher's transform there.

    Args:
        datas: JPEG bytes (checked with :func:`device_decodable`).
        pp: the teacher's preprocessing.
        device: where to decode (``cuda``: nvJPEG; ``cpu``: libjpeg).

    Returns:
        Per input, a ``(C, S, S)`` float32 tensor on ``device``, or ``None`` where the
        device decoder refused the data (the caller sends it through the CPU path).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if pp.grayscale else ImageReadMode.RGB
    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        images: list[torch.Tensor | None] = list(decode_jpeg(raw, mode=mode, device=device))
    except RuntimeError:  # one bad image fails the whole batch: decode one by one to find it
        images = []
        for r in raw:
            try:
                images.append(decode_jpeg(r, mode=mode, device=device))
            except RuntimeError:
                images.append(None)
    return [None if img is None else preprocess_tensor(img, pp) for img in images]


def preprocess_tensor(img: torch.Tensor, pp: Preprocessing) -> torch.Tensor:
    """The teacher's transform on a decoded ``(C, H, W)`` uint8 tensor, where it lies.

    Mirrors :meth:`Preprocessing.build` (resize per ``resize_mode``, centre crop padding
    with black, scale to [0, 1], normalise); the resize is torch's antialiased one, and
    the result is rounded to 8 bits before scaling, as PIL's resize output is.
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
              "nearest": InterpolationMode.NEAREST}[pp.interpolation]
    s = pp.image_size
    x = img.float()
    h, w = x.shape[-2:]
    if pp.resize_mode == "squash":
        x = TF.resize(x, [s, s], interpolation=interp, antialias=True)
    elif pp.resize_mode == "longest":
        scale = s / max(w, h)
        x = TF.resize(x, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=interp, antialias=True)
    elif pp.resize_mode == "shortest":
        x = TF.resize(x, s, interpolation=interp, antialias=True)
    else:
        raise ValueError(f"resize_mode {pp.resize_mode!r} has no device path; use one of {DEVICE_RESIZE_MODES}")
    x = TF.center_crop(x, [s, s])
    x = x.clamp_(0, 255).round_().div_(255)
    channels = x.shape[0]
    mean = torch.tensor(pp.mean * channels if len(pp.mean) == 1 else pp.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(pp.std * channels if len(pp.std) == 1 else pp.std, device=x.device).view(-1, 1, 1)
    return (x - mean) / std

