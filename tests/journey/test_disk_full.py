"""A disk that fills up during extract and distill, on a real small filesystem (a tmpfs mounted in a private
mount namespace, so nothing outlives the test): one line naming the folder, its filesystem and what to free;
nothing half-written that looks complete; after freeing space the same command resumes and finishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, mmkd_script
from tests.distill.conftest import TINY_STUDENT, make_store

pytestmark = pytest.mark.slow
TMPFS_BYTES = 64 * 2**20
sys.path.insert(0, str(REPO_ROOT / "tests" / "extract"))
from test_runner_support import MODALITY_CAPTIONS, assert_same_store, tiny_pipelines  # noqa: E402

# In the namespace: a tmpfs, a filler leaving $FREE bytes, the command; the results copied out; the filler
# removed (the user frees space); the same command again; the results copied out.
SCRIPT = r"""
set -u
mount -t tmpfs -o size=$TMPFS tmpfs "$MNT" || exit 90
head -c $((TMPFS - FREE)) /dev/zero > "$MNT/filler"
"$MMKD" "$@" > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
ls -A "$MNT" > "$OUT/first.ls"
[ -d "$MNT/target" ] && cp -a "$MNT/target" "$OUT/first"
rm "$MNT/filler"
"$MMKD" "$@" > "$OUT/second.out" 2> "$OUT/second.err"; echo $? > "$OUT/second.rc"
cp -a "$MNT/target" "$OUT/second"
"""


def _in_small_fs(tmp_path: Path, free: int, *args: object) -> dict[str, object]:
    """Run ``mmkd ARGS`` (``{T}`` = the output on the small filesystem) with ``free`` bytes left, then again with
    the filler gone; returns each run's exit code, output and a copy of what it left."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare(1) and a private mount namespace (user namespaces or root) to mount a tmpfs")
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "MNT": str(mnt), "OUT": str(out), "FREE": str(free), "TMPFS": str(TMPFS_BYTES), "MMKD": mmkd_script()}
    argv = [str(a).replace("{T}", str(mnt / "target")) for a in args]
    done = subprocess.run(["unshare", "-rm", "--propagation", "private", "sh", "-c", SCRIPT, "sh", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    res = {}
    for run in ("first", "second"):
        res[run] = {"rc": int((out / f"{run}.rc").read_text()), "stdout": (out / f"{run}.out").read_text(),
                    "stderr": (out / f"{run}.err").read_text(), "path": out / run}
    res["first"]["left"] = (out / "first.ls").read_text().split()
    return res


def _assert_disk_full_line(run: dict, target: Path, then: str) -> None:
    assert run["rc"] == 1 and "Traceback" not in run["stderr"], run["stderr"][-3000:]
    lines = run["stderr"].strip().splitlines()
    line = lines[-1]
    # the one line: no other says what went wrong (notes about the data, unrelated to the disk, may come before)
    assert not [ln for ln in lines[:-1] if "space" in ln or "Errno" in ln or "ERROR" in ln], lines
    assert line.startswith("Error: disk full while writing ") and str(target) in line, line
    assert f"No space left on device on the filesystem mounted at {target.parent}" in line, line
    assert "MiB free there now" in line and f"du -xsh {target.parent}/*" in line and then in line, line


def test_extract_on_a_full_disk_then_resumes_to_the_same_store(tmp_path, modality_dir, run_mmkd):
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]} for p in sorted(modality_dir.iterdir())]
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(tmp_path / "t", kinds=("open_clip",))
    args = ["extract", "--pipeline", pipelines, "--data", table, "--teacher", "tiny_open_clip", "--runner", "local",
            "--block-size", "2", "--no-progress", "--store"]
    assert run_mmkd(*args, tmp_path / "ref", cwd=tmp_path).returncode == 0  # the store an ample disk gives
    pages = sum(-(-p.stat().st_size // 4096) for p in (tmp_path / "ref").rglob("*") if p.is_file())

    res = _in_small_fs(tmp_path, pages * 4096 // 2, *args, "{T}")  # room for about half of the store
    first, second = res["first"], res["second"]
    _assert_disk_full_line(first, tmp_path / "mnt" / "target", "the blocks already marked done are kept")
    assert not [n for n in first["left"] if n not in ("filler", "target")], first["left"]  # no half-created store
    if first["path"].exists():  # what was left: every block marked done is whole, nothing else is wrong
        assert not list(first["path"].rglob("*.tmp-*"))
        check = run_mmkd("store", "validate", "--deep", "--json", first["path"], cwd=tmp_path)
        problems = {p["kind"] for p in json.loads(check.stdout)["problems"]}
        assert problems <= {"blocks_not_done"}, check.stdout
    assert second["rc"] == 0, second["stderr"][-3000:]
    assert_same_store(tmp_path / "ref", second["path"])


def test_distill_checkpoint_on_a_full_disk_then_resumes(tmp_path, run_mmkd):
    store = make_store(tmp_path / "s", n=32, block_size=16)
    student_json = tmp_path / "tiny.json"
    student_json.write_text(json.dumps(TINY_STUDENT))
    args = ["distill", "--store", store, "--stage", "1", "--student", student_json, "--steps", "3",
            "--checkpoint-every", "1", "--log-every", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress",
            "--out"]
    ref = tmp_path / "ref"
    assert run_mmkd(*args, ref, cwd=tmp_path).returncode == 0
    checkpoint = (ref / "checkpoints" / "last.pt").stat().st_size

    res = _in_small_fs(tmp_path, checkpoint * 3 // 2, *args, "{T}")  # one checkpoint fits, the next does not
    first, second = res["first"], res["second"]
    _assert_disk_full_line(first, tmp_path / "mnt" / "target",
                           f"the run resumes from {tmp_path / 'mnt' / 'target' / 'checkpoints' / 'last.pt'}")
    left = first["path"]
    assert sorted(p.name for p in (left / "checkpoints").iterdir()) == ["last.pt"]  # no half-written .tmp
    assert not (left / "export").exists()  # nothing that looks finished
    assert second["rc"] == 0, second["stderr"][-3000:]
    summary = json.loads(second["stdout"].strip().splitlines()[-1])
    assert summary["finished"] and summary["step"] == 3
    assert [json.loads(x)["step"] for x in (second["path"] / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    weights = "export/open_clip_model.safetensors"
    assert (second["path"] / weights).read_bytes() == (ref / weights).read_bytes()  # resumed exactly
