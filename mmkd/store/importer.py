"""Import the official MMKD-CLIP feature layout into an mmkd store.

The official code keeps one pair of ``.pt`` files per sample::

    <src>/meta.jsonl                      {"folderid", "id", "imgpath", "metapath", "txt", "available_clips"}
    <src>/features/<folderid>/<id>/clips_output.pt           {"<Teacher>_img": tensor, "<Teacher>_txt": tensor}
    <src>/features/<folderid>/<id>/clips_project_output.pt   same keys, projected to 512-d

The ``.pt`` keys are the truth of what was stored (``available_clips`` may list
fewer). ``.pt`` files are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from mmkd.config import AnyPath, as_path, is_url
from mmkd.data import DatasetError, MmkdClipDataset, Sample, open_dataset
from mmkd.store import format as fmt
from mmkd.store.format import DEFAULT_BLOCK_SIZE, StoreError
from mmkd.store.store import FeatureStore

log = logging.getLogger(__name__)

TEACHER_KEYS = {
    "BiomedCLIP": "biomedclip",
    "BMCA": "bmca_clip",
    "UniMedCLIP": "unimedclip",
    "QuiltNet": "quiltnet",
    "GenMedClip": "genmedclip",
    "PLIP": "plip",
    "PUBMEDCLIP": "pubmedclip",
    "PMCCLIP": "pmc_clip",
    "MedCLIP": "medclip",
}
RAW_FILE = "clips_output.pt"
PROJ_FILE = "clips_project_output.pt"


def teacher_name(key: str) -> str:
    """Our name for an official teacher key (unknown keys: lower-cased, non-alphanumerics to '_')."""
    return TEACHER_KEYS.get(key) or re.sub(r"[^a-z0-9_]+", "_", key.lower())


def open_layout(src: Path):
    """The official layout's ``meta.jsonl`` through the one reader mmkd has for it (:class:`mmkd.data.MmkdClipDataset`).

    Labels: ``available_clips`` and the BIOMEDICA metadata labels; the image
    SHA-256 is filled. The same reader (so the same sample ids, captions, labels
    and fingerprint) is what ``mmkd extract --data <src>`` uses.

    Raises:
        StoreError: ``src`` is not an MMKD-CLIP layout, or its meta.jsonl is malformed.
    """
    if not (src / "meta.jsonl").is_file():
        raise StoreError(f"{str(src)!r} is not an MMKD-CLIP layout: {src / 'meta.jsonl'} not found")
    try:
        ds = open_dataset({"path": str(src), "format": "mmkd-clip", "options": {"hash_images": True}})
    except DatasetError as e:
        raise StoreError(f"cannot import {str(src)!r}: {e}") from e
    ds.on_bad_row = "fail"  # an official layout with a malformed line is not imported partially
    return ds


def load_feature_file(path: Path) -> dict[str, np.ndarray]:
    """Load one official ``.pt`` as ``{key: float32 vector}``, refusing anything but a dict of tensors.

    Raises:
        StoreError: the file holds pickled objects (``weights_only`` refuses them),
            is not a dict of 1-D float tensors, or cannot be read.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects, RuntimeError for corrupt zips
        raise StoreError(
            f"{path}: refused: not a plain tensor file loadable with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); re-export the features as a dict of tensors"
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StoreError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if v.ndim != 1 or not v.is_floating_point():
            raise StoreError(f"{path}: key {k!r} holds a {tuple(v.shape)} {v.dtype} tensor, expected a 1-D float vector")
        out[str(k)] = v.float().numpy()
    return out


def import_mmkd(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    with_projected: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    overwrite: bool = False,
) -> FeatureStore:
    """Convert an official MMKD-CLIP layout at ``src`` into a new store at ``dst``.

    Each official teacher key becomes a teacher (``BMCA`` -> ``bmca_clip`` ...); a
    teacher absent from a sample's ``.pt`` gets ``valid=False`` there. With
    ``with_projected`` the 512-d projected features become ``<teacher>_proj512``
    (attrs ``normalized: False``: the official projections are not unit norm). A
    sample with no feature file is recorded as a failure (``missing_features``).
    The store is built beside ``dst`` and renamed into place at the end, so an
    error leaves nothing at ``dst``. ``dst`` may be an object-storage URL (``s3://...``,
    any fsspec URL; credentials from the provider's chain): there, with no rename, the
    store is written in place and removed again when the import fails.
    """
    src = Path(src)
    if is_url(str(dst)):
        return _import_remote(src, as_path(str(dst)), with_projected, block_size, overwrite)
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise StoreError(f"destination {str(dst)!r} exists; choose a new path or pass overwrite=True")

    layout = _read_layout(src)
    tmp = dst.with_name(f".{dst.name}.importing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, *layout, with_projected, block_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    log.info("imported %d samples from %s into %s", len(layout[0]), src, dst)
    return FeatureStore.open(dst, mode="a")


def _import_remote(src: Path, dst: AnyPath, with_projected: bool, block_size: int, overwrite: bool) -> FeatureStore:
    """:func:`import_mmkd` into a store on object storage, written in place (see there)."""
    if fmt.probe(dst / fmt.MANIFEST) is not None and not overwrite:
        raise StoreError(f"destination {str(dst)!r} holds a store; choose a new path or pass overwrite=True")
    layout = _read_layout(src)  # before anything is written: a bad layout leaves dst as it is
    try:
        _build(dst, *layout, with_projected, block_size, overwrite=True)
    except BaseException:
        try:  # a half-imported store is not left looking like one
            if dst.exists():
                dst.fs.rm(dst.path, recursive=True)
        except OSError as e:
            log.warning("could not remove the half-imported store at %s (%s); delete it before using the path", dst, e)
        raise
    log.info("imported %d samples from %s into %s", len(layout[0]), src, dst)
    return FeatureStore.open(dst, mode="a")


def _read_layout(src: Path) -> tuple[list[Sample], str, MmkdClipDataset]:
    ds = open_layout(src)
    try:
        return list(ds.samples()), ds.fingerprint(), ds
    except DatasetError as e:
        raise StoreError(f"cannot import {str(src)!r}: {e}") from e


def _build(path: AnyPath, samples: list[Sample], fingerprint: str, ds: MmkdClipDataset, with_projected: bool,
           block_size: int, overwrite: bool = False) -> None:
    """Create the store at ``path`` for the layout's samples and import every block and its stats."""
    store = FeatureStore.create(path, samples, block_size=block_size, dataset_uri=ds.uri,
                                dataset_fingerprint=fingerprint, dataset_spec=ds.spec().to_dict(), overwrite=overwrite)
    _import_blocks(store, ds.root, samples, with_projected)
    for t in store.teachers:
        store.compute_stats(t)


def _import_blocks(store: FeatureStore, root: Path, samples: list[Sample], with_projected: bool) -> None:
    files = [(RAW_FILE, "")] + ([(PROJ_FILE, "_proj512")] if with_projected else [])
    for block in range(store.num_blocks):
        start, stop = store.block_range(block)
        feats: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        failures = []
        for row in range(start, stop):
            sample = samples[row]
            # features/<folderid>/<id>/: the .pt files lie beside the sample's image
            folder = (root / sample.image).parent
            for fname, suffix in files:
                path = folder / fname
                if not path.is_file():
                    failures.append({"sample_id": sample.sample_id, "row": row, "reason": "missing_features",
                                     "detail": f"{path} not found"})
                    continue
                for t, (img, txt) in _pairs(load_feature_file(path), path).items():
                    feats.setdefault(t + suffix, {})[row] = (img, txt)
        for t, by_row in sorted(feats.items()):
            _ensure_teacher(store, t, by_row, block)
        for t in store.teachers:
            _write(store, t, block, feats.get(t, {}), failures)


def _pairs(d: dict[str, np.ndarray], path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key in d:
        if key.endswith("_img"):
            base = key[:-4]
            if base + "_txt" not in d:
                raise StoreError(f"{path}: {key!r} has no matching {base + '_txt'!r}")
            if d[key].shape != d[base + "_txt"].shape:
                raise StoreError(f"{path}: {key!r} and {base}_txt differ in dim: {d[key].shape} vs {d[base + '_txt'].shape}")
            out[teacher_name(base)] = (d[key], d[base + "_txt"])
        elif not key.endswith("_txt"):
            raise StoreError(f"{path}: unexpected key {key!r}; keys must be '<Teacher>_img' / '<Teacher>_txt'")
    return out


def _ensure_teacher(store: FeatureStore, t: str, by_row: dict, block: int) -> None:
    dim = int(next(iter(by_row.values()))[0].shape[0])
    if t in store.teachers:
        if store.dim(t) != dim:
            raise StoreError(f"teacher {t!r}: dim {dim} in block {block} but {store.dim(t)} earlier")
        return
    proj = t.endswith("_proj512")
    base = t[: -len("_proj512")] if proj else t
    official = {v: k for k, v in TEACHER_KEYS.items()}.get(base, base)
    store.add_teacher(t, dim, {"source": "mmkd-clip import", "official_key": official,
                               "normalized": not proj, "projected_to": 512 if proj else None})
    for earlier in range(block):  # teacher first seen now: its earlier blocks hold no rows of it
        s, e = store.block_range(earlier)
        z = np.zeros((e - s, dim), np.float32)
        store.write_block(t, earlier, z, z, np.zeros(e - s, bool))


def _write(store: FeatureStore, t: str, block: int, by_row: dict, failures: list) -> None:
    start, stop = store.block_range(block)
    dim = store.dim(t)
    image = np.zeros((stop - start, dim), np.float32)
    text = np.zeros_like(image)
    valid = np.zeros(stop - start, bool)
    for row, (img, txt) in by_row.items():
        if img.shape != (dim,):
            raise StoreError(f"teacher {t!r}: row {row} has dim {img.shape[0]}, expected {dim}")
        image[row - start], text[row - start], valid[row - start] = img, txt, True
    store.write_block(t, block, image, text, valid, failures)
