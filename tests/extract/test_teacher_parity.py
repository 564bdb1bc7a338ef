"""``mmkd teachers --parity``: the custom teachers against their upstream code (shared teacher-parity fixture).

The fixture holds, per teacher, a random checkpoint in the upstream container format at reduced
dims and the embeddings the upstream code computes from it. Two upstream runs are bit-identical;
mmkd on a matching path gives cosine 1.0 up to float32 rounding (measured >= 0.9999999 on 2 CPU
threads), so the gate 0.9999 leaves room for any x86 CPU's summation order while catching every
real difference (the fixed bugs were at 0.84-0.998).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mmkd.cli import main
from tests.conftest import REPO_ROOT, fixture_absent

TEACHERS = ("medclip", "pmc_clip", "unimedclip")
COS = 0.9999  # the CLI's gate
PIXEL_TOL = 1e-4  # |mmkd - upstream| after normalisation; PIL does the resampling on both sides



@pytest.fixture(scope="module")
def parity_dir(fixtures_dir: Path) -> Path:
    path = fixtures_dir / "teacher-parity"
    if not all((path / t / "reference.npz").is_file() for t in TEACHERS):
        fixture_absent(f"{path} lacks <teacher>/reference.npz for {TEACHERS}; the teacher-parity fixture is absent")
    return path


def _parity(args: list[str]):
    return CliRunner().invoke(main, ["teachers", *args], catch_exceptions=False)


def _copy_fixture(parity_dir: Path, tmp_path: Path, teacher: str) -> Path:
    """A writable parity folder with one teacher, beside links to the images reference.npz lists."""
    root = tmp_path / "fixtures"
    shutil.copytree(parity_dir / teacher, root / "teacher-parity" / teacher)
    for images in ("mmkd-clip-demo", "modality-examples"):
        (root / images).symlink_to(parity_dir.parent / images)
    return root / "teacher-parity"


def test_parity_on_shared_fixture(parity_dir):
    out = _parity(["--parity", str(parity_dir), "--pipeline", str(REPO_ROOT / "pipelines.yaml"), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["teacher"]: r for r in json.loads(out.output)}
    assert set(rows) == set(TEACHERS)
    for name, r in rows.items():
        assert r["error"] is None and r["passed"], r
        assert min(r["image_cos_min"], r["text_cos_min"], r["upstream_pixels_cos_min"]) >= COS, r
        assert r["pixel_max_diff"] <= PIXEL_TOL, r
    # the quirks that made the difference are visible in the report
    assert rows["medclip"]["text_reference"] == "text_raw_single"
    assert min(rows["pmc_clip"]["extra"]["text_raw_with_attention_mask"]) < 0.9


def test_parity_table_and_failure_exit(parity_dir, tmp_path):
    # The pipelines entry as it was before the fix (resize then pad): the parity check must catch it.
    cfg = yaml.safe_load((REPO_ROOT / "pipelines.yaml").read_text())
    cfg["teachers"]["medclip"]["resize_mode"] = "longest"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "teachers": cfg["teachers"]}))
    root = _copy_fixture(parity_dir, tmp_path, "medclip")
    out = _parity(["--parity", str(root), "--pipeline", str(path)])
    assert out.exit_code == 1, out.output
    assert "medclip" in out.output and "FAIL" in out.output and "0 of 1 teachers" in out.output


def _expect_load_error(root: Path, *needles: str) -> None:
    out = _parity(["--parity", str(root), "--pipeline", str(REPO_ROOT / "pipelines.yaml"), "--json"])
    assert out.exit_code == 1, out.output
    (row,) = json.loads(out.output)
    assert not row["passed"] and row["error"], row
    for needle in needles:
        assert needle in row["error"], (needle, row["error"])


def test_another_teachers_checkpoint_is_refused(parity_dir, tmp_path):
    root = _copy_fixture(parity_dir, tmp_path, "medclip")
    (root / "medclip" / "checkpoint.bin").unlink()
    shutil.copy(parity_dir / "pmc_clip" / "checkpoint.pt", root / "medclip" / "checkpoint.pt")
    _expect_load_error(root, "teacher 'medclip'", str(root / "medclip" / "checkpoint.pt"), "First mismatching key")


def test_truncated_checkpoint_is_refused(parity_dir, tmp_path):
    root = _copy_fixture(parity_dir, tmp_path, "pmc_clip")
    ckpt = root / "pmc_clip" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _expect_load_error(root, "teacher 'pmc_clip'", str(ckpt), "truncated or corrupt")


class _NotATensor:
    """Any class outside torch's weights_only allow-list."""


def test_pickled_objects_are_refused(parity_dir, tmp_path):
    import torch

    root = _copy_fixture(parity_dir, tmp_path, "unimedclip")
    ckpt = root / "unimedclip" / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["args"] = _NotATensor()
    torch.save(payload, ckpt)
    _expect_load_error(root, "teacher 'unimedclip'", str(ckpt), "pickled Python objects")


def test_arch_json_contradicting_checkpoint_names_first_key(parity_dir, tmp_path):
    root = _copy_fixture(parity_dir, tmp_path, "pmc_clip")
    arch_file = root / "pmc_clip" / "arch.json"
    arch = json.loads(arch_file.read_text())
    arch["mmkd_model_config"]["text"]["bert"]["intermediate_size"] = 128  # the checkpoint has 256
    arch_file.write_text(json.dumps(arch))
    _expect_load_error(root, "teacher 'pmc_clip'", str(root / "pmc_clip" / "checkpoint.pt"), str(arch_file),
                       "First mismatching key 'text_encoder.encoder.layer.0.intermediate.dense.bias': "
                       "checkpoint shape (256,) vs model (128,)")


def test_parity_folder_errors_are_clear(tmp_path):
    out = CliRunner().invoke(main, ["teachers", "--parity", str(tmp_path / "nowhere")])
    assert out.exit_code != 0 and "does not exist" in out.output
    (tmp_path / "ghost").mkdir()
    (tmp_path / "ghost" / "reference.npz").write_bytes(b"")
    (tmp_path / "ghost" / "checkpoint.pt").write_bytes(b"")
    out = CliRunner().invoke(main, ["teachers", "--parity", str(tmp_path),
                                    "--pipeline", str(REPO_ROOT / "pipelines.yaml")])
    assert out.exit_code != 0 and "'ghost', which is not declared" in out.output


def test_bad_checkpoint_writes_no_features(parity_dir, tmp_path, mmkd_demo_dir):
    """``mmkd extract`` with a truncated checkpoint: non-zero exit naming the file; no features stored."""
    from mmkd.store import FeatureStore

    cfg = yaml.safe_load((REPO_ROOT / "pipelines.yaml").read_text())
    arch = json.loads((parity_dir / "pmc_clip" / "arch.json").read_text())
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes((parity_dir / "pmc_clip" / "checkpoint.pt").read_bytes()[:100_000])
    entry = {**cfg["teachers"]["pmc_clip"], "weights": str(ckpt), "tokenizer": str(parity_dir / "pmc_clip" / "tokenizer"),
             "model_config": arch["mmkd_model_config"], "dim": arch["reduced"]["embed_dim"]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "teachers": {"pmc_clip": entry}}))
    store = tmp_path / "store"
    out = CliRunner().invoke(main, ["extract", "--pipeline", str(path), "--teacher", "pmc_clip", "--data",
                                    str(mmkd_demo_dir), "--store", str(store), "--runner", "local", "--no-progress"])
    assert out.exit_code != 0 and "teacher 'pmc_clip'" in out.output and str(ckpt) in out.output, out.output
    if store.exists():
        s = FeatureStore.open(store)
        assert "pmc_clip" not in s.teachers or s.missing_blocks("pmc_clip") == list(range(s.num_blocks))
