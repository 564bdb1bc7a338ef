"""Helpers shared by the extract runner tests (local and Ray): datasets, references, store snapshots."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

KINDS = ("open_clip", "transformers", "unimed_clip", "medclip")
MODALITY_CAPTIONS = {
    "ct": "axial ct scan of the chest", "dermatology": "dermatology image of a skin lesion",
    "endoscopy": "endoscopy view of the colon", "fundus": "fundus image of the retina",
    "mri": "brain mri axial view", "oct": "retinal oct scan", "pathology": "h e stained tissue showing cells",
    "ultrasound": "ultrasound scan of the liver", "xray": "chest x ray showing a mass in the right lung",
}
# sample id -> failure reason expected for the bad samples written by modality_dataset(bad=True)
BAD = {"bad-missing": "missing", "bad-corrupt": "corrupt", "bad-truncated": "truncated",
       "bad-empty-caption": "empty_caption"}


def tiny_pipelines(root: Path, demo_dir: Path | None = None, jsonl: Path | None = None,
                   kinds=KINDS, extract: dict | None = None) -> tuple[Path, dict]:
    """Tiny teachers under ``root`` and a pipelines file declaring them (+ datasets, + extract runs)."""
    specs = make_tiny_teachers(root / "teachers", kinds=kinds, seed=0, dim=24, image_size=32, context_length=16)
    datasets = {}
    if demo_dir is not None:
        datasets["demo"] = {"path": str(demo_dir), "format": "mmkd-clip"}
    if jsonl is not None:
        datasets["modality"] = {"path": str(jsonl), "format": "jsonl"}
    extra = {"datasets": datasets, **({"extract": extract} if extract else {})}
    return write_pipelines(root / "pipelines.yaml", specs, extra=extra), specs


def modality_dataset(modality_dir: Path, root: Path, *, bad: bool = True) -> Path:
    """A JSONL dataset over the nine modality images, plus mode variants and (optionally) bad samples.

    Extra valid samples: an RGBA PNG, a 16-bit grayscale PNG and a CMYK JPEG made from
    the fixture images (each must be converted as the teacher expects).
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in sorted(modality_dir.iterdir()):
        rows.append({"id": path.stem, "image": str(path), "caption": MODALITY_CAPTIONS[path.stem]})
    rgb = Image.open(modality_dir / "dermatology.jpeg").convert("RGB").resize((64, 48))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(root / "rgba.png")
    gray = np.asarray(Image.open(modality_dir / "xray.png").convert("L").resize((60, 50)), dtype=np.uint16) * 16
    Image.fromarray(gray).save(root / "gray16.png")  # 12-bit values in a 16-bit PNG
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    rows += [{"id": "rgba", "image": "rgba.png", "caption": "skin lesion with transparency"},
             {"id": "gray16", "image": "gray16.png", "caption": "a 16 bit chest x ray"},
             {"id": "cmyk", "image": "cmyk.jpg", "caption": "a cmyk dermatology image"}]
    if bad:
        (root / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG")
        (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        shutil.copy(root / "rgba.png", root / "ok.png")
        rows[4:4] = [{"id": "bad-missing", "image": "not-there.png", "caption": "a missing image"},
                     {"id": "bad-corrupt", "image": "corrupt.jpg", "caption": "a corrupt image"}]
        rows += [{"id": "bad-truncated", "image": "truncated.jpg", "caption": "a truncated image"},
                 {"id": "bad-empty-caption", "image": "ok.png", "caption": "   "}]
    jsonl = root / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl


def direct_features(teacher, image_path: Path, caption: str) -> tuple[np.ndarray, np.ndarray]:
    """The teacher run directly on one sample: its own preprocess on the opened file, its own tokenizer."""
    import torch

    pixels = teacher.preprocess(Image.open(image_path))
    img = teacher.encode_images(torch.stack([pixels])).numpy()[0]
    txt = teacher.encode_texts([caption]).numpy()[0]
    return img, txt


def snapshot(path: Path) -> dict:
    """Everything that defines a store's content (not its timestamps or job records)."""
    from mmkd.store import FeatureStore

    store = FeatureStore.open(path)
    out = {"ids": store.sample_ids, "teachers": store.teachers}
    for t in store.teachers:
        fails = store.failures(t).to_pylist()
        out[t] = {
            "image": store.read(t, np.arange(store.n), "image"),
            "text": store.read(t, np.arange(store.n), "text"),
            "valid": store.valid(t),
            "done": sorted(store.done_blocks(t)),
            "failures": sorted((f["sample_id"], f["row"], f["reason"]) for f in fails),
            "dim": store.dim(t),
            "views": store.read(t, np.arange(store.n), "image_views") if store.num_views(t) else None,
        }
    return out


def assert_same_store(a: Path, b: Path, teachers: list[str] | None = None) -> None:
    """Two stores hold bit-for-bit the same features, valid flags, failures and done blocks.

    Args:
        teachers: compare only these (default: both stores must hold the same teachers).
    """
    sa, sb = snapshot(a), snapshot(b)
    assert sa["ids"] == sb["ids"]
    if teachers is None:
        assert sa["teachers"] == sb["teachers"]
    for t in teachers or sa["teachers"]:
        for key in ("valid", "done", "failures", "dim"):
            assert np.array_equal(sa[t][key], sb[t][key]) if key == "valid" else sa[t][key] == sb[t][key], (t, key)
        for kind in ("image", "text"):
            assert sa[t][kind].tobytes() == sb[t][kind].tobytes(), f"{t} {kind} features differ"
        assert (sa[t]["views"] is None) == (sb[t]["views"] is None), f"{t}: one store has views, the other not"
        if sa[t]["views"] is not None:
            assert sa[t]["views"].tobytes() == sb[t]["views"].tobytes(), f"{t} view features differ"
