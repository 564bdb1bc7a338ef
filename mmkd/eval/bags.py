"""Where a slide's patch features come from: a CLAM folder, a feature store, or patch images.

* :class:`ClamBags`: the layout CLAM's ``extract_features_fp.py`` writes
  (github:mahmoodlab/CLAM): ``<dir>/h5_files/<slide_id>.h5`` with datasets
  ``features`` (patches, dim) and ``coords``, and/or ``<dir>/pt_files/<slide_id>.pt``
  holding a (patches, dim) tensor. ``h5_files`` needs ``h5py``.
* :class:`StoreBags`: a teacher's features in an mmkd feature store whose index
  rows are patches; each row's ``labels`` names its slide (``slide_key``).
* :class:`ImageBags`: ``<dir>/<slide_id>/*.png|jpg|...`` embedded by the model under
  evaluation, one slide at a time, each slide's features kept in the eval feature cache.

Every source loads one bag per call; :class:`BagSource` adds an optional in-memory
memo bounded in bytes, so small sets train from memory and large ones stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmkd.config import ConfigError
from mmkd.eval.features import set_features
from mmkd.eval.types import EvalItem, EvalSet

if TYPE_CHECKING:
    from mmkd.store import FeatureStore

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class BagError(ConfigError):
    """Patch features that cannot serve as bags (missing slides, mixed dims, unassigned patches)."""


class BagSource:
    """Base: ``load(slide_id)`` -> (patches, dim) float32, with a byte-bounded memo and a dim check.

    Args:
        memo_bytes: keep loaded bags in memory up to this many bytes (0: stream every time).
    """

    kind = "bags"

    def __init__(self, memo_bytes: int = 0) -> None:
        self.memo_bytes = memo_bytes
        self._memo: dict[str, np.ndarray] = {}
        self._held = 0
        self.dim: int | None = None

    def available(self) -> set[str]:
        """Slide ids this source holds patches for."""
        raise NotImplementedError

    def _load(self, slide_id: str) -> np.ndarray:
        raise NotImplementedError

    def load(self, slide_id: str) -> np.ndarray:
        """The bag of ``slide_id``.

        Raises:
            BagError: an empty bag, or a feature dim unlike the other bags' (names both).
        """
        if slide_id in self._memo:
            return self._memo[slide_id]
        x = np.asarray(self._load(slide_id), dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise BagError(f"{self.kind}: slide {slide_id!r} has no patch features (array of shape {x.shape}); "
                           "expected (patches, dim) with at least one patch")
        if self.dim is None:
            self.dim = x.shape[1]
        elif x.shape[1] != self.dim:
            raise BagError(f"{self.kind}: slide {slide_id!r} has {x.shape[1]}-d patch features, other slides "
                           f"{self.dim}-d; all bags must come from one feature extractor")
        if self._held + x.nbytes <= self.memo_bytes:
            self._memo[slide_id] = x
            self._held += x.nbytes
        return x

    def check(self, slide_ids: Sequence[str]) -> None:
        """Raise :class:`BagError` naming the slides of the table this source has no patches for."""
        have = self.available()
        missing = [s for s in slide_ids if s not in have]
        if missing:
            raise BagError(f"{self.kind}: {len(missing)} of {len(slide_ids)} slides in the slide table have no "
                           f"patches, e.g. {missing[:10]}; add their features or remove them from the table")


class ClamBags(BagSource):
    """A CLAM features folder (``h5_files/`` and/or ``pt_files/``); ``h5_files`` are preferred."""

    def __init__(self, root: str | Path, memo_bytes: int = 0) -> None:
        super().__init__(memo_bytes)
        self.root = Path(root)
        self.h5 = self.root / "h5_files"
        self.pt = self.root / "pt_files"
        if not (self.h5.is_dir() or self.pt.is_dir()):
            raise BagError(f"{str(self.root)!r} is not a CLAM features folder: no h5_files/ or pt_files/ in it")
        self.use_h5 = self.h5.is_dir() and any(self.h5.glob("*.h5"))
        self.kind = f"CLAM folder {str(self.root)!r}"
        if self.use_h5:
            _h5py(self.root)

    @staticmethod
    def is_clam(path: Path) -> bool:
        return (path / "h5_files").is_dir() or (path / "pt_files").is_dir()

    def available(self) -> set[str]:
        folder, suffix = (self.h5, ".h5") if self.use_h5 else (self.pt, ".pt")
        return {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")}

    def _load(self, slide_id: str) -> np.ndarray:
        if self.use_h5:
            with _h5py(self.root).File(self.h5 / f"{slide_id}.h5", "r") as f:
                if "features" not in f:
                    raise BagError(f"{self.kind}: {slide_id}.h5 has no `features` dataset (it has {list(f)})")
                return f["features"][:]
        import torch

        x = torch.load(self.pt / f"{slide_id}.pt", map_location="cpu", weights_only=True)
        return x.float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def fingerprint(self) -> str:
        folder = self.h5 if self.use_h5 else self.pt
        return json.dumps(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))


def _h5py(root: Path):
    try:
        import h5py
    except ImportError as e:
        raise BagError(f"{str(root)!r} holds CLAM h5_files, which need h5py: pip install h5py "
                       "(or point `patches:` at the pt_files/ variant)") from e
    return h5py


class StoreBags(BagSource):
    """One teacher's patch features in a feature store; ``labels[slide_key]`` of each row names its slide.

    Raises:
        BagError: rows without a slide id (counted, first ones named), or invalid rows.
    """

    def __init__(self, store: FeatureStore, teacher: str, slide_key: str = "slide_id", memo_bytes: int = 0) -> None:
        super().__init__(memo_bytes)
        self.store, self.teacher = store, teacher
        self.kind = f"store {store.path} ({teacher})"
        labels = store.index.column("labels").to_pylist()
        ids = store.sample_ids
        rows: dict[str, list[int]] = {}
        unassigned = []
        for r, text in enumerate(labels):
            slide = (json.loads(text) if text else {}).get(slide_key)
            if slide is None:
                unassigned.append(ids[r])
            else:
                rows.setdefault(str(slide), []).append(r)
        if unassigned:
            raise BagError(f"{self.kind}: {len(unassigned)} of {len(ids)} patches have no {slide_key!r} label, e.g. "
                           f"{unassigned[:5]}; every row of a patch store must name its slide (or set `slide_key:`)")
        valid = store.valid(teacher)
        bad = [ids[r] for rs in rows.values() for r in rs if not valid[r]]
        if bad:
            raise BagError(f"{self.kind}: {len(bad)} patches have no valid features, e.g. {bad[:5]}; "
                           f"re-run `mmkd extract --teacher {teacher}` over the store")
        self.rows = {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}

    def available(self) -> set[str]:
        return set(self.rows)

    def _load(self, slide_id: str) -> np.ndarray:
        return self.store.read(self.teacher, self.rows[slide_id]).astype(np.float32)


class ImageBags(BagSource):
    """``<root>/<slide_id>/`` folders of patch images, embedded by ``encoder`` (cached per slide).

    Args:
        root: folder of per-slide patch folders.
        encoder: the model under evaluation (:class:`mmkd.eval.encoders.Encoder`).
        cache: :class:`mmkd.eval.features.FeatureCache` (``None``: keep bags in memory).
        set_name: eval-set name, part of each slide's cache key.
        batch_size: images per forward pass.
    """

    def __init__(self, root: str | Path, encoder: Any, cache: Any, set_name: str, batch_size: int = 32,
                 memo_bytes: int = 0) -> None:
        super().__init__(memo_bytes if cache is not None and cache.root is not None else 1 << 62)
        self.root, self.encoder, self.cache = Path(root), encoder, cache
        self.set_name, self.batch_size = set_name, batch_size
        self.kind = f"patch-image folder {str(self.root)!r}"

    def available(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_dir() and self._files(p)}

    def check(self, slide_ids: Sequence[str]) -> None:
        """Also refuse patch images lying in the root, outside any slide folder (they have no slide id)."""
        loose = self._files(self.root)
        if loose:
            raise BagError(f"{self.kind}: {len(loose)} patch images lie outside any <slide_id>/ folder, e.g. "
                           f"{[p.name for p in loose[:5]]}; move each into its slide's folder")
        super().check(slide_ids)

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def _load(self, slide_id: str) -> np.ndarray:
        folder = self.root / slide_id
        items = [EvalItem(f"{slide_id}/{p.name}", p.name) for p in self._files(folder)]
        evalset = EvalSet(name=f"{self.set_name}-{slide_id}", items=items, root=folder, source=str(folder))
        return set_features(self.encoder, evalset, cache=self.cache, batch_size=self.batch_size).image
