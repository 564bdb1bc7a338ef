"""The loaded teacher: its own image transform and tokenizer, and L2-normalised encoders."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmkd.jsontypes import JSONDict
from mmkd.data.images import convert_mode
from mmkd.teachers.spec import TeacherSpec

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

log = logging.getLogger(__name__)

Allocator = Callable[[tuple[int, ...], type], np.ndarray]  # (shape, dtype) -> an array to fill


@dataclass(frozen=True)
class Preprocessing:
    """A teacher's image transform, resolved from its spec and its model.

    Attributes:
        image_size: output side in pixels (square).
        mean, std: per-channel normalisation (1 value for grayscale models).
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
        resize_mode: ``shortest`` (resize short side, centre crop), ``longest``
            (resize long side, pad to square with black), ``squash``, or
            ``pad_square`` (pad to a black square of side ``max(image_size, w, h)``,
            then resize: MedCLIP's order, which never upscales a small image).
        grayscale: the model takes 1-channel ``L`` input.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    grayscale: bool = False

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to before the transform."""
        return "L" if self.grayscale else "RGB"

    def build(self) -> Callable[[Image.Image], torch.Tensor]:
        """A torchvision transform: PIL image (already in :attr:`mode`) -> (C, H, W) float32."""
        from torchvision import transforms as T

        return T.Compose([self.build_geometry(), self.build_tensor()])

    @property
    def geometry_key(self) -> tuple:
        """Equal keys: equal :meth:`build_geometry` (one resized image serves every teacher that has it)."""
        return self.resize_mode, self.image_size, self.interpolation, self.mode

    def build_geometry(self) -> Callable[[Image.Image], Image.Image]:
        """The PIL part of :meth:`build`: resize, crop or pad to the model's input."""
        from torchvision import transforms as T

        interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                  "nearest": T.InterpolationMode.NEAREST}[self.interpolation]
        s = self.image_size
        if self.resize_mode == "squash":
            resize = [T.Resize((s, s), interpolation=interp)]
        elif self.resize_mode == "longest":
            resize = [_ResizeLongest(s, interp), T.CenterCrop(s)]  # CenterCrop pads with 0
        elif self.resize_mode == "pad_square":
            resize = [_PadSquare(s), T.Resize((s, s), interpolation=interp), T.CenterCrop(s)]
        else:
            resize = [T.Resize(s, interpolation=interp), T.CenterCrop(s)]
        return T.Compose(resize)

    def build_tensor(self) -> Callable[[Image.Image], torch.Tensor]:
        """The tensor part of :meth:`build`: to float (C, H, W) and normalise with the model's mean/std."""
        from torchvision import transforms as T

        channels = 1 if self.grayscale else 3
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        return T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def to_tensor_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """:meth:`build_tensor` of a batch of resized images in one op: ``normalize_uint8(stack_uint8(images))``.

        Returns:
            ``(B, C, H, W)`` float32.

        Raises:
            ValueError: the images' sizes or modes differ.
        """
        return self.normalize_uint8(self.stack_uint8(images))

    @staticmethod
    def stack_uint8(images: list[Image.Image], alloc: Allocator = np.empty) -> np.ndarray:
        """Equal-size 8-bit images as one ``(B, H, W, C)`` uint8 array (``C`` = 1 for ``L``). Teachers whose
        resize/crop gave the same images share it; each then applies :meth:`normalize_uint8`.

        ``alloc(shape, dtype)`` gives the output array (default ``np.empty``; an extract worker reuses its
        arrays from batch to batch: :class:`mmkd.extract.runners.block.BatchBuffers`)."""
        arrays = [np.asarray(im, dtype=np.uint8) for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"images of different sizes in one batch: {sorted({a.shape for a in arrays})}")
        h, w = arrays[0].shape[:2]
        out = alloc((len(arrays), h, w, arrays[0].shape[2] if arrays[0].ndim == 3 else 1), np.uint8)
        for i, a in enumerate(arrays):
            out[i] = a.reshape(out.shape[1:])
        return out

    def normalize_uint8(self, pixels: np.ndarray, alloc: Allocator = np.empty) -> torch.Tensor:
        """``ToTensor`` then ``Normalize`` of a :meth:`stack_uint8` batch: ``(B, H, W, C)`` uint8 -> ``(B, C, H, W)``.

        ``ToTensor`` is ``uint8 -> float32, / 255`` and ``Normalize`` ``- mean, / std`` per channel, with mean and
        std as float32: elementwise, correctly rounded float32 operations. They are applied here in that order, in
        float32, one image plane at a time (a plane stays in cache across the three operations): the same values
        bit for bit as the per-image transform (``tests/extract/test_one_pass.py`` compares every byte value), at
        about a third of the CPU of a table lookup (numpy's ``take`` widens each uint8 index to 64 bits first).
        ``alloc``: as in :meth:`stack_uint8`; the tensor shares the array's memory.
        """
        channels = pixels.shape[-1]
        mean, std = _channel_values(self.mean, self.std, channels)
        out = alloc((pixels.shape[0], channels, *pixels.shape[1:3]), np.float32)
        scale = np.float32(255)
        for i in range(pixels.shape[0]):
            for c in range(channels):
                plane = out[i, c]
                plane[...] = pixels[i, :, :, c]
                np.divide(plane, scale, out=plane)
                np.subtract(plane, mean[c], out=plane)
                np.divide(plane, std[c], out=plane)
        return torch.from_numpy(out)


def _channel_values(mean: tuple[float, ...], std: tuple[float, ...],
                    channels: int) -> tuple[list[np.float32], list[np.float32]]:
    """Per-channel mean and std as float32, as ``Normalize`` holds them (``torch.as_tensor(mean, float32)``);
    one value stands for every channel, as ``build_tensor`` repeats it."""
    mean = mean * channels if len(mean) == 1 else mean
    std = std * channels if len(std) == 1 else std
    return [np.float32(m) for m in mean], [np.float32(s) for s in std]


class _ResizeLongest:
    def __init__(self, size: int, interpolation: InterpolationMode) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        from torchvision.transforms import functional as TF

        w, h = img.size
        scale = self.size / max(w, h)
        return TF.resize(img, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=self.interpolation)


class _PadSquare:
    """Paste onto a black square of side ``max(size, w, h)``, offset as upstream MedCLIP does.

    RyanWangZf/MedCLIP medclip/dataset.py, ``MedCLIPFeatureExtractor.pad_img``: pad first,
    then resize to the model size, so an image smaller than ``size`` is padded, never upscaled.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side = max(self.size, w, h)
        square = Image.new(img.mode, (side, side), 0)
        square.paste(img, (int((side - w) / 2), int((side - h) / 2)))
        return square


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to ``RGB`` or ``L`` the way a teacher expects.

    One rule set for the whole project (:func:`mmkd.data.images.convert_mode`):
    transparency composited on white, 16/32-bit and float scaled to 8 bits without
    clipping, CMYK/P/1-bit through Pillow.
    """
    return convert_mode(img, mode)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def autocast_context(device: torch.device, dtype: torch.dtype | str | None):
    """``torch.autocast`` for ``dtype`` (``fp16``/``bf16``/torch dtype) on ``device``, or a no-op."""
    if dtype is None or dtype in ("fp32", "float32", torch.float32):
        return contextlib.nullcontext()
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"autocast dtype {dtype!r} not in {sorted(names) + ['fp32']}")
        dtype = names[dtype]
    return torch.autocast(device_type=device.type, dtype=dtype)


class Teacher:
    """A loaded teacher. Build with :func:`mmkd.teachers.load_teacher`.

    Attributes:
        name: the spec's name.
        spec: the spec it was built from.
        dim: embedding dimension.
        logit_scale: the model's (exponentiated) logit scale.
        preprocessing: the resolved image transform settings.
        context_length: tokenizer max length.
        device: where the model runs.
        text_encoding: how captions become tokens for this model (padding, attention
            mask, cleaning), recorded in the store because it changes text features.
    """

    def __init__(self, spec: TeacherSpec, *, dim: int, logit_scale: float, preprocessing: Preprocessing,
                 context_length: int, tokenizer_id: str, image_fn: Callable[[torch.Tensor], torch.Tensor],
                 tokenize_fn: Callable[[list[str]], dict[str, torch.Tensor]],
                 text_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], device: torch.device,
                 revision: str | None = None, weights_file: str | None = None, model: Any = None,
                 text_encoding: JSONDict | None = None) -> None:
        self.spec, self.name, self.dim = spec, spec.name, dim
        self.logit_scale = float(logit_scale)
        self.preprocessing, self.context_length, self.tokenizer_id = preprocessing, context_length, tokenizer_id
        self.device, self.model = device, model
        self._image_fn, self._tokenize_fn, self._text_fn = image_fn, tokenize_fn, text_fn
        self._transform = preprocessing.build()
        self._revision, self._weights_file, self._sha256 = revision, weights_file, None
        self.text_encoding = dict(text_encoding or {})
        self.tokenizer_key: tuple | None = None  # teachers with equal keys tokenise to equal tokens (loaders set it)

    @property
    def image_mode(self) -> str:
        """``RGB`` or ``L``: the mode images should be decoded to for this teacher."""
        return self.preprocessing.mode

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The teacher's own transform: PIL image in any mode -> (C, H, W) float32."""
        return self._transform(to_mode(image, self.image_mode))

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Token tensors for ``captions`` (over-long ones truncated to :attr:`context_length`)."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, got one string")
        return self._tokenize_fn([str(c) for c in captions])

    def encode_images(self, pixels: torch.Tensor, autocast: torch.dtype | str | None = None) -> torch.Tensor:
        """Image embeddings: (B, C, H, W) -> (B, dim) L2-normalised float32 on CPU."""
        if pixels.ndim != 4:
            raise ValueError(f"teacher {self.name!r}: pixels must be (B, C, H, W), got shape {tuple(pixels.shape)}")
        with torch.inference_mode(), autocast_context(self.device, autocast):
            feats = self._image_fn(pixels.to(self.device, non_blocking=True))
        return self._finish(feats)

    def encode_texts(self, captions: list[str], autocast: torch.dtype | str | None = None,
                     tokens: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Text embeddings: B captions -> (B, dim) L2-normalised float32 on CPU.

        ``tokens``: :meth:`tokenize` of ``captions`` done already (by a teacher with the same
        :attr:`tokenizer_key`: an extract pass tokenises a batch once for all such teachers).
        """
        tokens = self.tokenize(captions) if tokens is None else tokens
        with torch.inference_mode(), autocast_context(self.device, autocast):
            feats = self._text_fn({k: v.to(self.device, non_blocking=True) for k, v in tokens.items()})
        return self._finish(feats)

    def _finish(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.shape[-1] != self.dim:
            raise RuntimeError(f"teacher {self.name!r} returned dim {feats.shape[-1]}, expected {self.dim}")
        return F.normalize(feats.float(), dim=-1).cpu()

    def store_attrs(self) -> JSONDict:
        """JSON-able description of this teacher for the feature store."""
        if self._weights_file and self._sha256 is None:
            self._sha256 = sha256_file(self._weights_file)
        return {
            "teacher": self.name, "loader": self.spec.loader, "weights": self.spec.weights,
            "arch": self.spec.arch, "revision": self._revision, "weights_sha256": self._sha256,
            "preprocessing": asdict(self.preprocessing), "tokenizer": self.tokenizer_id,
            "context_length": self.context_length, "dim": self.dim, "normalized": True,
            "logit_scale": self.logit_scale, "license": self.spec.license, "source": self.spec.source,
            "upstream": dict(self.spec.upstream), "text_encoding": self.text_encoding,
        }

    def __repr__(self) -> str:
        return f"Teacher({self.name!r}, loader={self.spec.loader!r}, dim={self.dim}, device={self.device})"
