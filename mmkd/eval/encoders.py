"""Models under evaluation, behind one :class:`Encoder` interface.

* :class:`StudentEncoder`: an exported open_clip folder (``open_clip_config.json`` +
  weights), loaded through ``open_clip``'s ``local-dir:`` schema.
* :class:`TeacherEncoder`: a teacher declared in pipelines.yaml, loaded with
  :func:`mmkd.teachers.load_teacher` on first use (a feature-cache hit
  never loads it).
* :class:`StoreEncoder`: a teacher's features read by sample id from a feature store
  built over the eval set. A store holds embeddings of the set's images and
  captions only; zero-shot prompts ("a CT scan.") are no sample of it, so their
  embeddings come from the teacher's text tower (``prompt_encoder``) once and then
  live in the feature cache with the image features: later runs never load the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mmkd.errors import MMKDError
from mmkd.eval.zeroshot import l2_normalize
from mmkd.config import Pipelines, is_remote
from mmkd.jsontypes import JSON
from mmkd.store import FeatureStore
from mmkd.teachers import get_teacher_spec

log = logging.getLogger(__name__)


class EncoderError(MMKDError, RuntimeError):
    """A model cannot be loaded or cannot produce the features asked for."""


@runtime_checkable
class Encoder(Protocol):
    """A model to evaluate.

    Attributes:
        name: how results name it (column/row label).
        model_id: content key for the feature cache (changes when weights change).
        logit_scale: temperature for zero-shot softmax.
    """

    name: str
    model_id: str
    logit_scale: float

    def encode_images(self, images: list) -> np.ndarray:
        """PIL images -> (n, D) L2-normalised float32."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> (n, D) L2-normalised float32."""


def _digest(*parts: JSON) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weights_stamp(weights: str) -> list:
    """Sizes and mtimes of local weight files, so replaced weights at the same path miss the cache."""
    path = Path(weights.removeprefix("local-dir:"))
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class StudentEncoder:
    """An exported open_clip student (or any open_clip ``local-dir`` folder).

    Args:
        export_dir: folder with ``open_clip_config.json`` and ``open_clip_model.safetensors``
            (or ``open_clip_pytorch_model.bin``).
        device: torch device (default: cuda when available).
        name: label in the results (default: the folder name; for a distill run's
            ``<run>/export`` folder, the run's name).
    """

    def __init__(self, export_dir: str | Path, device: str | None = None, name: str | None = None) -> None:
        import open_clip
        import torch

        self.path = Path(export_dir).resolve()
        config = self.path / "open_clip_config.json"
        if not config.is_file():
            raise EncoderError(f"{str(self.path)!r} is not a student export: {config.name} not found; "
                               "export one with `mmkd distill` or pass a teacher name")
        weights = sorted(p for p in self.path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))
        if not weights:
            raise EncoderError(f"student export {str(self.path)!r} holds no weights (*.safetensors, *.bin, *.pth)")
        self.name = name or (self.path.parent.name if self.path.name == "export" else self.path.name)
        self.model_id = "student-" + _digest(config.read_text(), [_file_digest(w) for w in weights])
        self.device = _device(device)
        try:
            model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{self.path}", device=self.device)
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{self.path}")
        except Exception as e:
            raise EncoderError(f"cannot load student export {str(self.path)!r}: {e}") from e
        self.model, self.preprocess = model.eval(), preprocess
        self.logit_scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0
        self._torch = torch

    def encode_images(self, images: list) -> np.ndarray:
        pixels = self._torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with self._torch.inference_mode():
            return l2_normalize(self.model.encode_image(pixels).float().cpu().numpy())

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._torch.inference_mode():
            return l2_normalize(self.model.encode_text(tokens).float().cpu().numpy())


class TeacherEncoder:
    """A teacher from pipelines.yaml ``teachers:``, loaded lazily on the first encode call.

    Args:
        name: the teacher's key.
        pipelines: the loaded pipelines file.
        device: torch device (default: cuda when available).
    """

    def __init__(self, name: str, pipelines: Pipelines | None = None, device: str | None = None) -> None:
        self.spec = get_teacher_spec(name, pipelines)
        self.name = name
        self.model_id = f"teacher-{_digest(self.spec.to_dict(), _weights_stamp(self.spec.weights))}"
        self._device = device
        self._teacher = None
        self._logit_scale: float | None = None

    @property
    def teacher(self):
        if self._teacher is None:
            from mmkd.teachers.loaders import load_teacher  # torch, open_clip: not for features read from a store

            log.info("loading teacher %s", self.name)
            self._teacher = load_teacher(self.spec, device=str(_device(self._device)))
        return self._teacher

    @property
    def logit_scale(self) -> float:
        return self._logit_scale if self._logit_scale is not None else self.teacher.logit_scale

    @logit_scale.setter
    def logit_scale(self, value: float) -> None:
        self._logit_scale = float(value)

    def encode_images(self, images: list) -> np.ndarray:
        import torch

        t = self.teacher
        return l2_normalize(t.encode_images(torch.stack([t.preprocess(im) for im in images])).numpy())

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.teacher.encode_texts(list(texts)).numpy())


class StoreEncoder:
    """One teacher's precomputed features in a :class:`mmkd.store.FeatureStore`.

    Args:
        store: path to (or an open) feature store built over the eval set.
        teacher: the teacher's name in the store.
        prompt_encoder: encodes zero-shot prompts (normally a :class:`TeacherEncoder`
            of the same teacher); without it zero-shot from a store fails with a
            clear error unless the prompts are already in the feature cache.
    """

    def __init__(self, store: FeatureStore | str, teacher: str, prompt_encoder: Encoder | None = None) -> None:
        self.store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        if teacher not in self.store.teachers:
            raise EncoderError(f"store {self.store.path} holds no features of teacher {teacher!r}; it holds "
                               f"{self.store.teachers}. Run `mmkd extract --teacher {teacher}` over the eval set")
        self.name, self.teacher = teacher, teacher
        attrs = self.store.attrs(teacher)
        where = str(self.store.path) if is_remote(self.store.path) else str(Path(self.store.path).resolve())
        self.model_id = "store-" + _digest(where, self.store.manifest.index_fingerprint,
                                           teacher, attrs.get("weights_sha256"),
                                           sorted(self.store.done_blocks(teacher)))
        self.logit_scale = float(attrs.get("logit_scale") or 100.0)
        self.prompt_encoder = prompt_encoder

    def _lookup(self, sample_ids: list[str], kind: str) -> np.ndarray:
        try:
            rows = self.store.rows(sample_ids)
        except KeyError as e:
            raise EncoderError(f"store {self.store.path} was not built over this eval set: {e}") from e
        bad = ~self.store.valid(self.teacher)[rows]
        if bad.any():
            missing = [sample_ids[i] for i in np.flatnonzero(bad)[:5]]
            raise EncoderError(f"store {self.store.path} has no valid {self.teacher!r} features for {int(bad.sum())} "
                               f"samples of the eval set (e.g. {missing}); extract them or evaluate the teacher "
                               "directly")
        return l2_normalize(self.store.read(self.teacher, rows, kind=kind).astype(np.float32))

    def lookup_images(self, sample_ids: list[str]) -> np.ndarray:
        """Stored image features of ``sample_ids`` (L2-normalised float32)."""
        return self._lookup(sample_ids, "image")

    def lookup_texts(self, sample_ids: list[str], captions: list[str] | None = None) -> np.ndarray:
        """Stored caption features of ``sample_ids`` (L2-normalised float32).

        Args:
            sample_ids: which samples.
            captions: the eval set's captions; when given, the store's must be the same.
        """
        if captions is not None:
            stored = self.store.index.column("caption").to_pylist()
            rows = self.store.rows(sample_ids)
            diff = [sid for sid, r, c in zip(sample_ids, rows, captions) if stored[r].strip() != c.strip()]
            if diff:
                raise EncoderError(f"store {self.store.path} holds other captions than the eval set for "
                                   f"{len(diff)} samples (e.g. {diff[:3]}); rebuild the store over this set")
        return self._lookup(sample_ids, "text")

    def encode_images(self, images: list) -> np.ndarray:
        raise EncoderError(f"a store encoder ({self.teacher!r} in {self.store.path}) only looks features up by "
                           "sample id; it cannot encode new images")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if self.prompt_encoder is None:
            raise EncoderError(f"zero-shot prompts are not in store {self.store.path} and no text encoder for "
                               f"{self.teacher!r} is available; declare the teacher in pipelines.yaml so its text "
                               "tower can embed the prompts once (they are cached afterwards)")
        return self.prompt_encoder.encode_texts(texts)
