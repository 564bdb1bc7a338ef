"""The built wheel, installed into a temporary folder, works from any directory (no repository beside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.journey.conftest import REPO


def test_installed_wheel_finds_teachers_and_eval_sets(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("mmkd-*.whl")
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the wheel's code only: PYTHONPATH puts it ahead of the editable checkout; -P keeps the cwd off sys.path
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    env.pop("MMKD_PIPELINES", None)

    def mmkd(*args: str) -> subprocess.CompletedProcess:
        code = "import sys; from mmkd.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-P", "-c", code, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([sys.executable, "-P", "-c", "import mmkd; print(mmkd.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    teachers = mmkd("teachers", "--json")
    assert teachers.returncode == 0, teachers.stderr
    assert len(json.loads(teachers.stdout)) == 9
    assert "modality9" in mmkd("eval", "--help").stdout

    fixtures = Path(os.environ.get("MMKD_FIXTURES", REPO.parent / "shared" / "fixtures"))
    missing = mmkd("eval", "--model", "nope", "--set", "modality9", "--out", "ev")
    assert missing.returncode != 0 and "MMKD_FIXTURES" in missing.stderr and not (work / "ev").exists()
    if (fixtures / "modality-examples").is_dir():
        # one eval from outside the repo: the shipped set, a tiny student export, the fixtures pointed at
        from tests.eval.test_e2e import export_tiny_student

        export = export_tiny_student(tmp_path / "student")
        ok = mmkd("--fixtures", str(fixtures), "eval", "--model", str(export), "--set", "modality9",
                  "--task", "zeroshot", "--resamples", "0", "--out", "ev", "--device", "cpu")
        assert ok.returncode == 0, ok.stderr
        scores = json.loads((work / "ev" / "results.json").read_text())
        assert "zeroshot" in next(iter(scores.values()))["modality9"]
