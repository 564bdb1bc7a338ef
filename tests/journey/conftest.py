"""The user's journey: the ``mmkd`` console script, run from a folder outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ORGANS = ("lung", "liver", "brain")


def mmkd_exe() -> str:
    """The installed console script beside this interpreter (what a user types)."""
    exe = Path(sys.executable).parent / "mmkd"
    if not exe.is_file():
        pytest.fail(f"the mmkd console script is not installed beside {sys.executable}; pip install -e . first")
    return str(exe)


def run_mmkd(cwd: Path, *args: str, ok: bool = True, timeout: int = 600, env: dict | None = None):
    """Run ``mmkd ARGS`` in ``cwd``; with ``ok`` assert exit 0 (showing the output when not)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("MMKD_PIPELINES", None)  # the user's ./pipelines.yaml, as a user has it
    proc = subprocess.run([mmkd_exe(), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"mmkd {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


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

    from mmkd.extract.tiny import make_tiny_teachers, pipelines_fragment

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
