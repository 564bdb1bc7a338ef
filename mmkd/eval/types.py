"""The values eval passes between its modules: items, image sets, task sets (a leaf of :mod:`mmkd.eval`).

:class:`EvalSet` (labelled / captioned images: zero-shot, linear probe, kNN,
retrieval) is built by :mod:`mmkd.eval.sets` and :mod:`mmkd.eval.clip_benchmark`;
a :class:`TaskSet` (slide diagnosis / survival, VQA) carries its own task and is
run by the :class:`SetKind` registered for that task in :mod:`mmkd.eval.tasksets`.
Nothing here imports another eval module but the zero-shot templates, so every
eval module can import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from mmkd.data.images import decode_image
from mmkd.data.sample import Sample
from mmkd.eval.zeroshot import DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from mmkd.eval.encoders import Encoder
    from mmkd.eval.features import FeatureCache


class ImageReader(Protocol):
    """Where a set's images come from when not files under ``root``: an mmkd.data dataset, a clip_benchmark tar."""

    def read_image_bytes(self, ref: str) -> bytes: ...


@dataclass(frozen=True)
class EvalItem:
    """One sample of an eval set: ``image`` is a reference its set knows how to read."""

    sample_id: str
    image: str
    caption: str | None = None
    label: int | None = None
    split: str | None = None


@dataclass
class EvalSet:
    """A loaded eval set. Build with :func:`load_eval_set`."""

    name: str
    items: list[EvalItem]
    class_names: list[str] = field(default_factory=list)
    prompt_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    root: Path | None = None
    store: Path | None = None
    source: str = ""
    benchmark_name: str = ""  # clip_benchmark's dataset name (wds/<name>) for a clip_benchmark folder
    reader: ImageReader | None = None  # an mmkd.data Dataset for `data:` sets

    @property
    def labelled(self) -> bool:
        return bool(self.class_names) and all(it.label is not None for it in self.items)

    @property
    def captioned(self) -> bool:
        return all(it.caption for it in self.items)

    @property
    def sample_ids(self) -> list[str]:
        return [it.sample_id for it in self.items]

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def splits(self) -> np.ndarray | None:
        s = [it.split for it in self.items]
        return np.array(s) if all(s) else None

    def store_samples(self) -> list[Sample]:
        """The items as :class:`mmkd.data.Sample` rows, to build a feature store over this set."""
        return [Sample(it.sample_id, it.caption or "", it.image, source=f"eval:{self.name}",
                       labels=None if it.label is None else {"label": self.class_names[it.label]})
                for it in self.items]

    def read_image_bytes(self, item: EvalItem) -> bytes:
        """The encoded image of ``item``.

        Raises:
            FileNotFoundError: the image file is absent (names the path and the set).
        """
        if self.reader is not None:
            return self.reader.read_image_bytes(item.image)
        path = (self.root or Path.cwd()) / item.image
        if not path.is_file():
            raise FileNotFoundError(f"eval set {self.name!r}: image {str(path)!r} of sample {item.sample_id!r} not "
                                    f"found; check `root:` (fixtures: set MMKD_FIXTURES)")
        return path.read_bytes()

    def load_image(self, item: EvalItem) -> Image.Image:
        """``item``'s image as a PIL RGB image."""
        return decode_image(self.read_image_bytes(item))

    def fingerprint(self) -> str:
        """Content key for feature caches: items, classes, prompts and the image files' sizes and mtimes."""
        h = hashlib.sha256()
        h.update(json.dumps([self.class_names, self.prompt_names, self.templates], sort_keys=True).encode())
        for it in self.items:
            h.update(json.dumps([it.sample_id, it.image, it.caption, it.label]).encode())
            if self.reader is None and self.root is not None:
                p = self.root / it.image
                st = p.stat() if p.is_file() else None
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode() if st else b"absent")
        if self.reader is not None and hasattr(self.reader, "fingerprint"):
            h.update(str(self.reader.fingerprint()).encode())
        return h.hexdigest()[:16]


class TaskSet(Protocol):
    """A set that carries its own task (``diagnosis``, ``survival``, ``vqa``): a slide set or a VQA set."""

    name: str
    task: str

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class RunOptions:
    """What a task set's runner takes from ``mmkd eval``'s options."""

    cache: FeatureCache | None = None
    device: str | None = None
    batch_size: int = 32
    seed: int = 0
    resamples: int = 1000


@dataclass(frozen=True)
class SetKind:
    """One kind of task set: how its spec is built and how its task runs (registered in :mod:`mmkd.eval.tasksets`).

    Attributes:
        tasks: the ``task:`` values of a spec this kind builds.
        build: ``(name, spec, base folder) -> set``; relative paths resolve against the folder.
        run: ``(encoder, set, options) -> {task: {metric: value}}``.
    """

    tasks: tuple[str, ...]
    build: Callable[[str, Mapping[str, Any], Path], TaskSet]
    # the set parameter is the kind's own set class (SlideSet, VqaSet), narrower than TaskSet
    run: Callable[[Encoder, Any, RunOptions], dict[str, dict[str, Any]]]
