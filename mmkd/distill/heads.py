"""Per-teacher adaptors stored with a run.

- :class:`TeacherProjections` (``--kd mmkd-clip``): one linear map per teacher from
  its dim to the student dim; the mapped targets are L2-normalised. The official
  code uses a frozen projection trained beforehand as an autoencoder; here it is
  loaded from a file when given, else a fixed random semi-orthogonal map (which
  keeps the teacher's inner-product geometry as far as the dims allow), frozen
  unless ``trainable``.
- :class:`TeacherHeads` (``--kd multi``): learned heads from the student dim to each
  teacher's dim (AM-RADIO / UNIC style), plus optional per-dim standardisation
  statistics of the teacher features as buffers.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmkd.errors import DistillError

_PROJ_COPY = re.compile(r"^(?P<base>.+)_proj(?P<dim>\d+)$")


def projected_copy(name: str, teachers: list[str]) -> str | None:
    """The base teacher of an imported projected copy (``biomedclip_proj512`` -> ``biomedclip``), else ``None``."""
    m = _PROJ_COPY.match(name)
    return m.group("base") if m and m.group("base") in teachers else None


def _semi_orthogonal(out_dim: int, in_dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(out_dim, in_dim), min(out_dim, in_dim), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    w = q if out_dim >= in_dim else q.t()
    return w.float().contiguous()


def _key(name: str) -> str:
    # ModuleDict keys cannot hold dots
    return name.replace(".", "_")


class TeacherProjections(nn.Module):
    """teacher dim -> student dim linear maps, one per teacher."""

    def __init__(self, teacher_dims: dict[str, int], student_dim: int, *, seed: int = 0,
                 trainable: bool = False, normalize: bool = True):
        super().__init__()
        self.teachers = list(teacher_dims)
        self.normalize = normalize
        self.proj = nn.ModuleDict()
        for t, d in teacher_dims.items():
            lin = nn.Linear(d, student_dim, bias=False)
            with torch.no_grad():
                lin.weight.copy_(_semi_orthogonal(student_dim, d, seed + zlib.crc32(t.encode())))
            lin.weight.requires_grad_(trainable)
            self.proj[_key(t)] = lin

    def load_file(self, path: str | Path) -> None:
        """Load maps from a safetensors / torch file with keys ``<teacher>.weight`` [``.bias``].

        Raises:
            ValueError: a teacher is missing from the file or its shape does not fit.
        """
        p = Path(path)
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
        for t in self.teachers:
            w = state.get(f"{t}.weight")
            lin = self.proj[_key(t)]
            if w is None or tuple(w.shape) != tuple(lin.weight.shape):
                have = None if w is None else tuple(w.shape)
                raise DistillError(f"projection file {str(p)!r}: '{t}.weight' is {have}, need "
                                 f"{tuple(lin.weight.shape)} (student_dim, teacher_dim)")
            with torch.no_grad():
                lin.weight.copy_(w)
            if f"{t}.bias" in state:
                trainable = lin.weight.requires_grad
                lin.bias = nn.Parameter(state[f"{t}.bias"].float(), requires_grad=trainable)

    def set_map(self, teacher: str, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Use ``weight`` (student_dim, teacher_dim) [and ``bias``] as the teacher's map.

        Raises:
            ValueError: the shape does not fit.
        """
        lin = self.proj[_key(teacher)]
        w = torch.as_tensor(weight, dtype=torch.float32)
        if tuple(w.shape) != tuple(lin.weight.shape):
            raise DistillError(f"projection of teacher {teacher!r} is {tuple(w.shape)}, the run needs "
                             f"{tuple(lin.weight.shape)} (student_dim, teacher_dim); fit one with --dim "
                             f"{lin.weight.shape[0]}")
        trainable = lin.weight.requires_grad
        with torch.no_grad():
            lin.weight.copy_(w)
        if bias is not None:
            lin.bias = nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone(), requires_grad=trainable)

    def set_identity(self, teacher: str) -> None:
        """Use the features as they are (already in the student dim), e.g. the official projected copies."""
        lin = self.proj[_key(teacher)]
        self.set_map(teacher, torch.eye(*lin.weight.shape))

    def forward(self, teacher: str, x: torch.Tensor) -> torch.Tensor:
        """Map one teacher's features to the student dim (and L2-normalise unless ``normalize`` is off)."""
        y = self.proj[_key(teacher)](x.float())
        return F.normalize(y, dim=-1) if self.normalize else y

    def select(self, feats: dict[str, torch.Tensor], choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the projected features of the teacher at index ``choice`` (-1: none).

        Args:
            feats: teacher -> (B, D_t) features.
            choice: (B,) long, index into ``self.teachers`` or -1.

        Returns:
            (B, D_student) targets (zeros where ``choice`` is -1) and the (B,) bool mask.
        """
        out = None
        for i, t in enumerate(self.teachers):
            y = self(t, feats[t])
            out = torch.zeros_like(y) if out is None else out
            out = torch.where((choice == i).unsqueeze(1), y, out)
        return out, choice >= 0


class TeacherHeads(nn.Module):
    """student dim -> teacher dim heads, one pair (image, text) per teacher."""

    def __init__(self, teacher_dims: dict[str, int], student_dim: int, *, kind: str = "linear"):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise DistillError(f"head kind {kind!r} is unknown; use 'linear' or 'mlp'")
        self.teachers = list(teacher_dims)
        self.image = nn.ModuleDict({_key(t): self._head(student_dim, d, kind) for t, d in teacher_dims.items()})
        self.text = nn.ModuleDict({_key(t): self._head(student_dim, d, kind) for t, d in teacher_dims.items()})
        for t, d in teacher_dims.items():
            for kind_ in ("image", "text"):
                self.register_buffer(f"mean_{kind_}_{_key(t)}", torch.zeros(d))
                self.register_buffer(f"std_{kind_}_{_key(t)}", torch.ones(d))

    @staticmethod
    def _head(i: int, o: int, kind: str) -> nn.Module:
        if kind == "linear":
            return nn.Linear(i, o)
        return nn.Sequential(nn.Linear(i, (i + o) // 2), nn.GELU(), nn.Linear((i + o) // 2, o))

    def set_stats(self, teacher: str, kind: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-dim mean/std used by :meth:`standardize` (std floored at 1e-6)."""
        getattr(self, f"mean_{kind}_{_key(teacher)}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"std_{kind}_{_key(teacher)}").copy_(
            torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def standardize(self, teacher: str, kind: str, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with the stored statistics."""
        k = _key(teacher)
        return (x.float() - getattr(self, f"mean_{kind}_{k}")) / getattr(self, f"std_{kind}_{k}")

    def forward(self, s_img: torch.Tensor, s_txt: torch.Tensor) -> tuple[dict, dict]:
        """Raw head outputs: teacher -> (B, D_t) for image and text."""
        hi = {t: self.image[_key(t)](s_img) for t in self.teachers}
        ht = {t: self.text[_key(t)](s_txt) for t in self.teachers}
        return hi, ht
