"""The fixtures switch: a test whose fixture data is absent skips locally, and fails under
``MMKD_REQUIRE_FIXTURES=1`` (what ``.ci/run`` sets), so CI without the fixtures cannot pass green."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

NEEDS_FIXTURES = "def test_needs_fixtures(fixtures_dir):\n    assert fixtures_dir.is_dir()\n"


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """pytest on one tiny test file with tests/conftest.py as a plugin and MMKD_FIXTURES at a missing folder."""
    (tmp_path / "test_tiny.py").write_text(NEEDS_FIXTURES)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    full = {k: v for k, v in os.environ.items() if k != "MMKD_REQUIRE_FIXTURES"}
    full.update(PYTHONPATH=str(REPO_ROOT), MMKD_FIXTURES=str(tmp_path / "no-fixtures"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-rs", "-q", "-c",
                           str(tmp_path / "pytest.ini"), str(tmp_path / "test_tiny.py")],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120, check=False)


def test_absent_fixtures_skip_by_default(tmp_path):
    out = _pytest(tmp_path)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout + out.stderr
    assert "no-fixtures" in out.stdout


def test_absent_fixtures_fail_when_required(tmp_path):
    out = _pytest(tmp_path, MMKD_REQUIRE_FIXTURES="1")
    assert out.returncode == 1 and "1 error" in out.stdout, out.stdout + out.stderr
    assert "MMKD_REQUIRE_FIXTURES is set" in out.stdout and "no-fixtures" in out.stdout


def test_ci_requires_fixtures():
    assert "export MMKD_REQUIRE_FIXTURES=1" in (REPO_ROOT / ".ci" / "run").read_text()
