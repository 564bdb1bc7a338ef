"""The student's image path: a JPEG decoded at the smallest DCT scale that still covers the crop, cropped and
resized by one antialiased uint8 kernel, normalised as one batch.

open_clip builds the student's transforms as ``RandomResizedCrop -> RGB -> ToTensor -> Normalize``
(train) or ``Resize(shortest) -> CenterCrop -> RGB -> ToTensor -> Normalize`` (eval). Run as is,
each image is decoded in full (~1.2 MP for a typical figure) only to be shrunk to 224 px.
:class:`FastImages` recognises those two shapes and does the same work cheaper:

1. the crop box is drawn from the image *header* with the same torch RNG calls, in the same order,
   as the transform's ``RandomResizedCrop.get_params`` (:func:`crop_params`, tested box for box
   against it), under the same per-row seed, so a row gets the same crop box as the plain transform
   gives it;
2. a JPEG is decoded by libjpeg-turbo (``simplejpeg``) at the smallest scale M/8 (M = 1..8, the
   IDCT's own scaled outputs) that still leaves the crop box at least the student's size, so nothing
   is upsampled that the plain path would not upsample, and the resize that follows shrinks by less
   than M/(M-1) (for M > 1) where Pillow's ``draft`` (1/2, 1/4, 1/8 only) left up to 2x; other formats, CMYK JPEGs and JPEGs libjpeg-turbo's strict mode
   refuses go through Pillow (``draft`` at 1/2, 1/4, 1/8), which also names what is wrong with a
   damaged file;
3. the crop box is rounded to whole pixels of the decoded image, cut out, and resized by torch's uint8
   antialiased kernel with the transform's filter (bicubic: Pillow's a = -0.5 kernel and support; within
   2 grey levels of Pillow's crop-then-resize, which is what torchvision's ``resized_crop`` does to a PIL
   image, and several times faster);
4. the batch is stacked as uint8; ``ToTensor`` + ``Normalize`` run once on it (:class:`ImageNorm`: one
   float conversion and an in-place scale per batch), in the loader, or, for distill's trainer, on its
   device after the transfer (4x fewer bytes through the loader's queues and to the accelerator).

Pixels differ slightly from the plain path: the DCT scaling is a different low-pass filter than
bicubic, and the rounded box moves the crop by less than half a decoded pixel; measured in
docs/distill-data.md and held by tests/distill/test_data.py and test_images.py. Any other transform (custom
augmentations) returns ``None`` from :meth:`FastImages.plan` and the plain per-image path runs
unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmkd.data.images import BadSample, decode_jpeg_scaled, jpeg_size, load_image, open_image, resize_uint8
from mmkd.data.views import ViewRecipe, draft_request, render_view

# the transform's filter -> torch's interpolate mode and antialias flag; "nearest-exact" is Pillow's NEAREST
_FILTERS = {"bicubic": ("bicubic", True), "bilinear": ("bilinear", True), "nearest": ("nearest-exact", False)}


@dataclass
class FastImages:
    """Decode + the student's transform for the two open_clip transform shapes (see module doc).

    Attributes:
        size: output (height, width).
        mean, std: per-channel normalisation.
        crop: the train transform's ``RandomResizedCrop`` (its scale and ratio ranges); ``None`` for the
            eval shape (shortest-side resize + centre crop).
        resample: torch's interpolate mode for the transform's filter (``bicubic``, ``bilinear``,
            ``nearest-exact``).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: object | None
    resample: str

    @classmethod
    def plan(cls, transform: Callable) -> FastImages | None:
        """A fast equivalent of ``transform``, or ``None`` when it is not one of the two shapes."""
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", []))
        names = [type(s).__name__ for s in steps]
        if names[-3:] != ["MaybeConvertMode", "MaybeToTensor", "Normalize"] or \
                getattr(steps[-3], "mode", "RGB") != "RGB":
            return None
        norm = steps[-1]
        mean, std = tuple(float(x) for x in norm.mean), tuple(float(x) for x in norm.std)
        head = steps[:-3]
        if len(head) == 1 and isinstance(head[0], T.RandomResizedCrop):
            rrc = head[0]
            mode = _filter(rrc.interpolation)
            if mode is None:
                return None
            return cls(tuple(int(x) for x in rrc.size), mean, std, rrc, mode)
        if len(head) == 2 and isinstance(head[0], T.Resize) and isinstance(head[1], T.CenterCrop):
            resize, centre = head
            side = resize.size[0] if isinstance(resize.size, (list, tuple)) else resize.size
            if isinstance(resize.size, (list, tuple)) and len(resize.size) != 1 or resize.max_size is not None:
                return None
            crop = tuple(int(x) for x in centre.size)
            mode = _filter(resize.interpolation)
            if mode is None or crop != (int(side), int(side)):
                return None
            return cls(crop, mean, std, None, mode)
        return None

    def box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The (left, top, right, bottom) source box in the pixels of an image of ``size`` (width, height);
        draws from torch's global RNG for the train shape exactly as the transform's ``RandomResizedCrop``
        does on an image of that size."""
        w, h = size
        if self.crop is not None:
            i, j, ch, cw = crop_params(h, w, self.crop.scale, self.crop.ratio)
            return float(j), float(i), float(j + cw), float(i + ch)
        side = self.size[0]
        short, long_ = (w, h) if w <= h else (h, w)
        new_short, new_long = side, int(side * long_ / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        top, left = int(round((nh - side) / 2.0)), int(round((nw - side) / 2.0))
        sx, sy = w / nw, h / nh
        return left * sx, top * sy, (left + side) * sx, (top + side) * sy

    def decode(self, data: bytes, source_size: tuple[int, int] | None = None) -> np.ndarray:
        """One image as (H, W, 3) uint8 at the output size (the crop box drawn from the current RNG).

        Args:
            data: the encoded image.
            source_size: (width, height) of the image ``data`` stands for, when it is a resized copy
                (the image cache): the box is drawn in that frame and scaled onto ``data``'s pixels.

        Raises:
            BadSample: the image cannot be read (as :func:`mmkd.data.images.decode_image`).
        """
        oh, ow = self.size
        full, pixels = jpeg_size(data), None
        if full is not None:
            box = self._source_box(full, source_size)
            pixels = _decode_jpeg(data, full, box, (ow, oh))
        if pixels is None:
            # not a JPEG libjpeg-turbo decodes to RGB, or one it refuses: Pillow decodes it or names the damage
            img = open_image(data)
            if full is None:
                full = img.size
                box = self._source_box(full, source_size)
            reduce = min((box[2] - box[0]) / ow, (box[3] - box[1]) / oh)
            if img.format == "JPEG" and reduce >= 2:
                img.draft(None, (math.ceil(full[0] / reduce), math.ceil(full[1] / reduce)))
            pixels = np.asarray(load_image(img, data, "RGB"))
        sx, sy = full[0] / pixels.shape[1], full[1] / pixels.shape[0]
        return _resized_crop(pixels, (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy), self.size, self.resample)

    def _source_box(self, full: tuple[int, int], source_size: tuple[int, int] | None) -> tuple[float, ...]:
        """The crop box (drawn now) in the pixels of an image of size ``full``, drawn in ``source_size``'s frame."""
        frame = source_size or full
        left, top, right, bottom = self.box(frame)
        fx, fy = full[0] / frame[0], full[1] / frame[1]
        return left * fx, top * fy, right * fx, bottom * fy

    def decode_view(self, data: bytes, recipe: ViewRecipe, row: int, view: int,
                    source_size: tuple[int, int] | None = None, reduce: bool = True) -> np.ndarray:
        """View ``view`` of store row ``row`` (:mod:`mmkd.data.views`) as (H, W, 3) uint8 at the output size.

        The box is the one extract's teachers saw for that (row, view), in the original image's pixels;
        :func:`mmkd.data.views.render_view` crops it from whatever was decoded, as it does for them.

        Args:
            source_size: (width, height) of the original when ``data`` is a resized copy (the image cache).
            reduce: decode a JPEG at the smallest DCT scale that still holds the box at the output size.

        Raises:
            BadSample: the image cannot be read.
        """
        img = open_image(data)
        full = img.size
        frame = source_size or full
        box = recipe.box(row, view, frame)
        oh, ow = self.size
        if reduce and img.format == "JPEG":
            fx, fy = full[0] / frame[0], full[1] / frame[1]
            scaled = (box.left * fx, box.top * fy, box.right * fx, box.bottom * fy)
            img.draft(None, draft_request(full, [scaled], max(oh, ow)))
        img = load_image(img, data, "RGB")
        # Pillow's resize, as the teachers' views were made (render_view), not the torch kernel of decode()
        resample = "nearest" if self.resample == "nearest-exact" else self.resample
        return np.asarray(render_view(img, box, frame, (ow, oh), resample))

    def normalize(self, images: Sequence[np.ndarray | None]) -> torch.Tensor:
        """(B, 3, H, W) float32, ``ToTensor`` + ``Normalize`` on the whole batch; ``None`` entries are zeros
        (:meth:`stack` then :meth:`norm`)."""
        return self.norm(self.stack(images), torch.tensor([x is not None for x in images]))

    def stack(self, images: Sequence[np.ndarray | None]) -> torch.Tensor:
        """(B, 3, H, W) uint8: each (H, W, 3) image copied channel-first into one batch (numpy's strided copy:
        several times faster than torch's for uint8); ``None`` entries are zeros."""
        oh, ow = self.size
        stacked = np.zeros((len(images), 3, oh, ow), dtype=np.uint8)
        for k, x in enumerate(images):
            if x is not None:
                stacked[k] = np.asarray(x).transpose(2, 0, 1)
        return torch.from_numpy(stacked)

    @property
    def norm(self) -> ImageNorm:
        """``ToTensor`` + ``Normalize`` of a uint8 batch from :meth:`stack`, on whatever device it is on."""
        return ImageNorm(self.mean, self.std)


@dataclass(frozen=True)
class ImageNorm:
    """``ToTensor`` + ``Normalize`` of a (B, C, H, W) uint8 batch: one float conversion and an in-place
    ``x * 1/(255 std) - mean/std``, on the batch's device.

    The student data path hands uint8 batches to the trainer (4x fewer bytes between processes and to the
    accelerator; the conversion runs on the accelerator, as timm's ``PrefetchLoader`` does); on the CPU the
    result is bit for bit what the loader computed before.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, batch: torch.Tensor, ok: torch.Tensor | None = None) -> torch.Tensor:
        """``batch`` (uint8) normalised as float32; rows where ``ok`` is False are zeros (unreadable images)."""
        std = np.asarray(self.std, dtype=np.float64)
        scale = torch.from_numpy((1.0 / (255.0 * std)).astype(np.float32)).view(1, -1, 1, 1).to(batch.device)
        bias = torch.from_numpy((-np.asarray(self.mean, dtype=np.float64) / std).astype(np.float32)) \
            .view(1, -1, 1, 1).to(batch.device)
        out = batch.float().mul_(scale).add_(bias)
        if ok is not None and not bool(ok.all()):
            out[~ok.to(out.device)] = 0.0
        return out


def crop_params(height: int, width: int, scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` for an image of ``height`` x ``width``, without an image.

    The same torch RNG calls in the same order, with the same float32 arithmetic (torchvision 0.29's
    body; a test compares the two box for box over many seeds and sizes), on one reused 1-element
    tensor instead of two new ones per attempt: a 0.9-1.0 scale range on a 4:3 figure can take all ten
    attempts, and the allocations were most of this function's cost.

    Returns:
        (top, left, height, width) of the crop, as ``get_params``.
    """
    area = height * width
    lo, hi = _log_ratio(tuple(ratio))
    u = torch.empty(1)
    for _ in range(10):
        target_area = area * u.uniform_(scale[0], scale[1]).item()
        aspect_ratio = u.uniform_(lo, hi).exp_().item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # fallback: central crop
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=16)
def _log_ratio(ratio: tuple[float, ...]) -> tuple[float, float]:
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as get_params computes it
    return float(log_ratio[0]), float(log_ratio[1])


def _decode_jpeg(data: bytes, full: tuple[int, int], box: tuple[float, float, float, float],
                 out: tuple[int, int]) -> np.ndarray | None:
    """The JPEG as (h, w, 3) uint8 at the smallest scale M/8 that leaves ``box`` (in full-size pixels) at
    least ``out`` (width, height), or ``None`` when libjpeg-turbo refuses it (the caller's Pillow path
    then decodes it or names the damage)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    m = next((m for m in range(1, 8) if bw * m >= 8 * out[0] and bh * m >= 8 * out[1]), 8)
    return decode_jpeg_scaled(data, full, m)


def _resized_crop(pixels: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int],
                  mode: str) -> np.ndarray:
    """``box`` of ``pixels`` (rounded to whole pixels) resized to ``size`` (height, width), as (H, W, 3) uint8."""
    h, w = pixels.shape[:2]
    left, right = _span(box[0], box[2], w)
    top, bottom = _span(box[1], box[3], h)
    method, antialias = _FILTERS[mode]
    return resize_uint8(pixels[top:bottom, left:right], size, method, antialias)


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """[lo, hi) rounded to whole pixels within [0, n), never empty."""
    a = min(max(int(math.floor(lo + 0.5)), 0), n - 1)
    return a, min(max(int(math.floor(hi + 0.5)), a + 1), n)


def _filter(mode) -> str | None:
    name = getattr(mode, "value", str(mode)).lower()
    return name if name in _FILTERS else None


__all__ = ["BadSample", "FastImages", "ImageNorm", "crop_params"]
