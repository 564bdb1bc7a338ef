"""Augmented views of an image that a teacher (at extract) and the student (at distill) both see.

A view is a crop box in the *original* image's pixels plus a horizontal flip, drawn from a
seeded hash of ``(row, view)``: nothing but the :class:`ViewRecipe` needs storing to replay it,
and extract, distill, an image cache or a test all get the same box for the same row and view.

The box follows torchvision's ``RandomResizedCrop.get_params`` (10 tries of an area fraction in
``scale`` and a log-uniform aspect ratio in ``ratio``, then a centre-crop fallback), with the
uniforms taken from SplitMix64 instead of a global RNG:

``u(seed, row, view, j) = splitmix64(splitmix64(splitmix64(seed ^ SALT) + row) + view * 256 + j) >> 11 / 2**53``
(uint64 wrapping arithmetic; ``j`` 0..39 for the 10 tries, 4 uniforms each; ``j = 40`` for the flip).

:func:`render_view` turns a decoded image (full size, DCT-reduced, or a resized cache copy) and a
box into the pixels a model takes: on the original's pixels the box is cropped and resized to
``out_size`` (torchvision's ``resized_crop``; the box squashed to the model's square input, as
``RandomResizedCrop`` does); on a smaller decode the box is scaled onto its pixels and resized in
one PIL call; then flipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from PIL import Image

from mmkd.jsontypes import JSONDict

VIEWS_VERSION = 1
HASH_SCHEME = "splitmix64(splitmix64(splitmix64(seed ^ 0x5649455753) + row) + view * 256 + j) >> 11 / 2**53"
DEFAULT_SCALE = (0.35, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)
_SALT = 0x5649455753  # "VIEWS"
_MASK = (1 << 64) - 1
_TRIES = 10
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}


class ViewRecipeError(ValueError):
    """A view recipe is malformed or of an unknown version."""


def splitmix64(x: int) -> int:
    """SplitMix64's finaliser of ``x + golden gamma`` (the same function as ``mmkd.distill.data.mix64``)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@dataclass(frozen=True)
class ViewBox:
    """One view: ``(left, top, right, bottom)`` in the original image's pixels, and whether it is flipped."""

    left: int
    top: int
    right: int
    bottom: int
    flip: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


@dataclass(frozen=True)
class ViewRecipe:
    """How the K views of every row are drawn (recorded in each teacher's attrs as ``views``).

    Attributes:
        k: views per row.
        scale: range of the crop's area as a fraction of the image's (CLIP training: 0.35-1.0).
        ratio: range of the crop's aspect ratio (width / height), drawn log-uniformly.
        flip: a view is flipped horizontally with probability 1/2.
        seed: seed of the hash (module doc).
        version: the drawing scheme; a reader refuses versions it does not know.
    """

    k: int
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    flip: bool = True
    seed: int = 0
    version: int = VIEWS_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
            raise ViewRecipeError(f"views: k must be a positive integer, got {self.k!r}")
        lo, hi = (float(x) for x in self.scale)
        if not 0 < lo <= hi <= 1:
            raise ViewRecipeError(f"views: scale must be 0 < min <= max <= 1, got {tuple(self.scale)}")
        rlo, rhi = (float(x) for x in self.ratio)
        if not 0 < rlo <= rhi:
            raise ViewRecipeError(f"views: ratio must be 0 < min <= max, got {tuple(self.ratio)}")
        if self.version != VIEWS_VERSION:
            raise ViewRecipeError(f"views: recipe version {self.version!r} is unknown; this mmkd draws version "
                                  f"{VIEWS_VERSION}: upgrade mmkd or re-extract with --views")
        object.__setattr__(self, "scale", (lo, hi))
        object.__setattr__(self, "ratio", (rlo, rhi))
        object.__setattr__(self, "seed", int(self.seed))

    def to_attrs(self) -> JSONDict:
        """The JSON value stored as the teacher attribute ``views``."""
        return {"k": self.k, "scale": list(self.scale), "ratio": list(self.ratio), "flip": self.flip,
                "seed": self.seed, "version": self.version, "hash": HASH_SCHEME, "frame": "original image pixels",
                "resize": "crop box squashed to the model's square input, then flipped"}

    @classmethod
    def from_attrs(cls, attrs: JSONDict) -> ViewRecipe:
        """The recipe from a teacher's ``views`` attribute.

        Raises:
            ViewRecipeError: a key is missing or the version is unknown.
        """
        try:
            return cls(k=int(attrs["k"]), scale=tuple(attrs["scale"]), ratio=tuple(attrs["ratio"]),
                       flip=bool(attrs["flip"]), seed=int(attrs["seed"]), version=int(attrs["version"]))
        except (KeyError, TypeError) as e:
            raise ViewRecipeError(f"views attribute {attrs!r} is not a view recipe ({type(e).__name__}: {e})") from e

    def same_views(self, other: ViewRecipe) -> bool:
        """Whether both recipes draw the same boxes for every (row, view)."""
        return (self.k, self.scale, self.ratio, self.flip, self.seed, self.version) == \
            (other.k, other.scale, other.ratio, other.flip, other.seed, other.version)

    def box(self, row: int, view: int, size: tuple[int, int]) -> ViewBox:
        """View ``view`` of ``row`` for an image of ``size`` (width, height) pixels (module doc)."""
        if not 0 <= view < self.k:
            raise ViewRecipeError(f"view {view} out of range: the recipe has views 0..{self.k - 1}")
        width, height = int(size[0]), int(size[1])
        base = splitmix64(splitmix64(self.seed ^ _SALT) + int(row)) + int(view) * 256

        def u(j: int) -> float:
            return (splitmix64(base + j) >> 11) / float(1 << 53)

        flip = self.flip and u(4 * _TRIES) < 0.5
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for t in range(_TRIES):
            target = area * (self.scale[0] + u(4 * t) * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + u(4 * t + 1) * (log_hi - log_lo))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u(4 * t + 2) * (height - h + 1)), height - h)
                left = min(int(u(4 * t + 3) * (width - w + 1)), width - w)
                return ViewBox(left, top, left + w, top + h, flip)
        in_ratio = width / height  # fallback: the centre crop of the aspect ratio nearest the image's
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        return ViewBox(left, top, left + w, top + h, flip)

    def boxes(self, row: int, size: tuple[int, int]) -> list[ViewBox]:
        """All K views of ``row`` for an image of ``size``."""
        return [self.box(row, v, size) for v in range(self.k)]

    def min_side_fraction(self) -> float:
        """A lower bound of a view box's short side as a fraction of the image's short side.

        A box of area ``s * W * H`` and aspect ``r`` has short side ``sqrt(s W H) * min(sqrt r, 1/sqrt r)``
        and ``W * H >= short**2``; the fallback centre crop is larger. Used to decide whether a
        resized copy (the image cache) still holds every view at the student's size.
        """
        return math.sqrt(self.scale[0] * min(self.ratio[0], 1 / self.ratio[1], 1.0))


def draft_request(size: tuple[int, int], boxes: Sequence[ViewBox | tuple[float, float, float, float]],
                  side: int) -> tuple[int, int]:
    """The size to ask a JPEG ``draft`` for so every box still holds at least ``side`` pixels each way.

    ``draft`` keeps the largest DCT scale with both sides at least the request, so the request is
    the image scaled by ``side / (shortest box side)`` (never above the full size).
    """
    width, height = size
    shortest = min(min(b[2] - b[0], b[3] - b[1]) if isinstance(b, tuple) else
                   min(b.right - b.left, b.bottom - b.top) for b in boxes)
    f = min(1.0, side / max(shortest, 1e-9))
    return max(1, math.ceil(width * f)), max(1, math.ceil(height * f))


def render_view(img: Image.Image, view: ViewBox, frame: tuple[int, int], out_size: tuple[int, int],
                resample: int | str = "bicubic") -> Image.Image:
    """The pixels of ``view`` at ``out_size`` (width, height) from ``img``.

    Args:
        img: the decoded image: the original, a DCT-reduced decode of it, or a resized copy.
        view: the box, in the pixels of an image of size ``frame``.
        frame: (width, height) of the original image the box was drawn for.
        out_size: (width, height) of the result (the crop box is squashed to it, as RandomResizedCrop does).
        resample: a PIL filter or ``bicubic``/``bilinear``/``nearest``.
    """
    if isinstance(resample, str):
        resample = RESAMPLE[resample]
    size = tuple(int(x) for x in out_size)
    if tuple(img.size) == tuple(frame):
        # the original's pixels: crop, then resize, exactly torchvision's resized_crop on a PIL image
        out = img.crop(view.box).resize(size, resample)
    else:  # a reduced decode or a resized copy: the box in its pixels is fractional, PIL resizes from it
        sx, sy = img.size[0] / frame[0], img.size[1] / frame[1]
        out = img.resize(size, resample, box=(view.left * sx, view.top * sy, view.right * sx, view.bottom * sy))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if view.flip else out

