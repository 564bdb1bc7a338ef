"""`mmkd store info / validate / import-mmkd / synth` and CLI start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from mmkd.cli import main


def test_info_validate_synth(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["store", "synth", str(tmp_path / "st"), "--rows", "100", "--teacher", "x:8",
                          "--block-size", "32"])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["store", "info", str(tmp_path / "st"), "--json"])
    info = json.loads(res.output)
    assert info["num_samples"] == 100 and info["teachers"]["x"]["blocks_done"] == 4
    res = r.invoke(main, ["store", "info", str(tmp_path / "st")])
    assert "x" in res.output and "4/4" in res.output
    assert r.invoke(main, ["store", "validate", str(tmp_path / "st")]).exit_code == 0
    (tmp_path / "st" / "_progress" / "x" / "block-000001.done").unlink()
    res = r.invoke(main, ["store", "validate", str(tmp_path / "st")])
    assert res.exit_code == 1 and "blocks not done: 1" in res.output
    res = r.invoke(main, ["store", "synth", str(tmp_path / "s2"), "--teacher", "nodim"])
    assert res.exit_code != 0 and "expected NAME:DIM" in res.output


def test_import_cli(mmkd_demo_dir, tmp_path):
    res = CliRunner().invoke(main, ["store", "import-mmkd", str(mmkd_demo_dir), str(tmp_path / "st"),
                                    "--with-projected"])
    assert res.exit_code == 0, res.output
    assert "biomedclip_proj512" in res.output
    res = CliRunner().invoke(main, ["store", "import-mmkd", str(mmkd_demo_dir), str(tmp_path / "st")])
    assert res.exit_code != 0 and "exists" in res.output


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from click.testing import CliRunner; from mmkd.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "heavy = [m for m in ('torch', 'ray', 'zarr', 'open_clip', 'transformers') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
