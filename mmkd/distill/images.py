"""The student's image path: JPEG decoded at a DCT-reduced size, cropped and resized in one PIL call,
normalised as one batch.

open_clip builds the student's transforms as ``RandomResizedCrop -> RGB -> ToTensor -> Normalize``
(train) or ``Resize(shortest) -> CenterCrop -> RGB -> ToTensor -> Normalize`` (eval). Run as is,
each image is decoded in full (~1.2 MP for a typical figure) only to be shrunk to 224 px.
:class:`FastImages` recognises those two shapes and does the same work cheaper:

1. the crop box is drawn from the image *header* with the transform's own ``get_params``, under
   the same per-row seed, so a row gets the same crop box as the plain transform gives it;
2. the JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8; Pillow's ``draft``, the
   mechanism of ``mmkd extract --decode reduced``) that still leaves the crop box at least the
   student's size, so nothing is upsampled that the plain path would not upsample;
3. crop and resize are one ``Image.resize(box=...)`` with the transform's filter;
4. ``ToTensor`` + ``Normalize`` run once on the stacked uint8 batch.

Pixels differ slightly from the plain path (the DCT scaling is a different low-pass filter than
bicubic): the same trade extract's ``--decode reduced`` makes, measured in docs/distill-data.md.
Any other transform (custom augmentations) returns ``None`` from :meth:`FastImages.plan` and the
plain per-image path runs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mmkd.data.images import BadSample, load_image, open_image

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}


@dataclass
class FastImages:
    """Decode + the student's transform for the two open_clip transform shapes (see module doc).

    Attributes:
        size: output (height, width).
        mean, std: per-channel normalisation.
        crop: the train transform's ``RandomResizedCrop`` (its ``get_params`` draws the box); ``None``
            for the eval shape (shortest-side resize + centre crop).
        resample: the PIL filter of the transform's resize.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: object | None
    resample: int

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
            # get_params reads only the dimensions: an expanded 1-element tensor has them, for free
            i, j, ch, cw = self.crop.get_params(torch.empty(1).expand(3, h, w), self.crop.scale, self.crop.ratio)
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
        img = open_image(data)
        full = img.size
        frame = source_size or full
        left, top, right, bottom = self.box(frame)
        fx, fy = full[0] / frame[0], full[1] / frame[1]
        left, top, right, bottom = left * fx, top * fy, right * fx, bottom * fy
        oh, ow = self.size
        reduce = min((right - left) / ow, (bottom - top) / oh)
        if img.format == "JPEG" and reduce >= 2:
            img.draft(None, (math.ceil(full[0] / reduce), math.ceil(full[1] / reduce)))
        img = load_image(img, data, "RGB")
        sx, sy = full[0] / img.size[0], full[1] / img.size[1]
        out = img.resize((ow, oh), self.resample, box=(left / sx, top / sy, right / sx, bottom / sy))
        return np.asarray(out)

    def normalize(self, images: Sequence[np.ndarray | None]) -> torch.Tensor:
        """(B, 3, H, W) float32, ``ToTensor`` + ``Normalize`` on the whole batch; ``None`` entries are zeros.

        The channel transpose runs on uint8 and the scaling as one multiply-add per pixel
        (``x * 1/(255 std) - mean/std``): the batch is touched twice in float, not four times.
        """
        oh, ow = self.size
        batch = np.zeros((len(images), 3, oh, ow), dtype=np.uint8)
        for k, x in enumerate(images):
            if x is not None:
                batch[k] = x.transpose(2, 0, 1)
        std = np.asarray(self.std, dtype=np.float64)
        scale = torch.from_numpy((1.0 / (255.0 * std)).astype(np.float32)).view(1, 3, 1, 1)
        bias = torch.from_numpy((-np.asarray(self.mean, dtype=np.float64) / std).astype(np.float32)).view(1, 3, 1, 1)
        out = torch.from_numpy(batch).float().mul_(scale).add_(bias)
        bad = [k for k, x in enumerate(images) if x is None]
        if bad:
            out[bad] = 0.0
        return out


def _filter(mode) -> int | None:
    name = getattr(mode, "value", str(mode)).lower()
    return _FILTERS.get(name)


__all__ = ["FastImages", "BadSample"]
