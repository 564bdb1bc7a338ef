"""The user's journey: the ``mmkd`` console script, run from a folder outside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import mmkd

REPO = Path(__file__).resolve().parents[2]
ORGANS = ("lung", "liver", "brain")


def run_mmkd(cwd: Path, *args: str, ok: bool = True, timeout: int = 600, env: dict | None = None):
    """Run ``mmkd ARGS`` in ``cwd`` (the shared :func:`tests.conftest.mmkd`), with the user's own ./pipelines.yaml
    (no ``$MMKD_PIPELINES``); with ``ok`` assert exit 0 (showing the output when not)."""
    return mmkd(*args, cwd=cwd, ok=ok, timeout=timeout,
                env={"PYTHONWARNINGS": "ignore", "MMKD_PIPELINES": None, **(env or {})})


def write_user_dataset(folder: Path, n: int = 24, seed: int = 0) -> dict[str, Path]:
    """A JSONL with the user's own field names, its images in a separate folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "pixels"
    table_dir = folder / "tables"
    images.mkdir(parents=True)
    table_dir.mkdir(parents=True)
    rows = []
    for i in range(n):
        organ = ORGANS[i % len(ORGANS)]
        arr = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
        arr[..., i % 3] += np.uint8(150)
        Image.fromarray(arr).save(images / f"scan_{i:03d}.jpg", quality=90)
        rows.append({"uid": f"case-{i:03d}", "file": f"scan_{i:03d}.jpg",
                     "report": f"a {organ} scan, study {i}", "organ": organ})
    table = table_dir / "train.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"table": table, "images": images}


def write_user_pipelines(path: Path, teachers_root: Path, data: dict[str, Path]) -> Path:
    """The user's pipelines file: two tiny teachers of different loaders and dims, a dataset with a field map."""
    import yaml

    from mmkd.teachers.tiny import make_tiny_teachers, pipelines_fragment

    specs = {**make_tiny_teachers(teachers_root / "a", kinds=("open_clip",), dim=32),
             **make_tiny_teachers(teachers_root / "b", kinds=("transformers",), dim=48, seed=1)}
    cfg = {
        "version": 1,
        **pipelines_fragment(specs),
        "datasets": {"scans": {
            "path": str(data["table"]), "format": "jsonl", "root": str(data["images"]),
            "fields": {"image": "file", "caption": "report", "id": "uid", "labels": ["organ"]}}},
        "eval_sets": {"organs": {"data": "scans", "label_key": "organ",
                                 "templates": ["a {} scan.", "{}"]}},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_shards(folder: Path, n: int = 16, seed: int = 2) -> Path:
    """BIOMEDICA-style webdataset shards: ``{key}.jpg`` + ``{key}.json`` with the user's own caption key."""
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(folder / f"shard-{shard:06d}.tar", "w") as tar:
            for i in range(shard * n // 2, (shard + 1) * n // 2):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(buf, format="JPEG")
                meta = json.dumps({"figure_caption": f"{ORGANS[i % 3]} figure {i}", "pmcid": f"PMC{i:05d}"}).encode()
                for name, payload in ((f"{i:05d}.jpg", buf.getvalue()), (f"{i:05d}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return folder


def write_parquet(folder: Path, n: int = 16, seed: int = 3) -> Path:
    """An HF-datasets-style Parquet file: image ``{bytes, path}`` structs and the user's own column names."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    images = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    table = pa.table({"img": images, "text": [f"{ORGANS[i % 3]} slide {i}" for i in range(n)],
                      "key": [f"k{i:03d}" for i in range(n)]})
    pq.write_table(table, folder / "train-00000.parquet", row_group_size=4)
    return folder / "train-00000.parquet"
