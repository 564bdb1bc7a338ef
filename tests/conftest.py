"""Shared test fixtures: the real fixture data, and one Ray instance per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMKD_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after). Tiny models and per-bag steps are small matmuls:
    on 2 shared cores a second thread only adds sync cost (~4x slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` (override with ``MMKD_FIXTURES``); skips when absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"fixture data not found at {FIXTURES}; set MMKD_FIXTURES to the shared/fixtures folder")
    return FIXTURES


@pytest.fixture(scope="session")
def mmkd_demo_dir(fixtures_dir: Path) -> Path:
    """The official MMKD-CLIP sample layout (8 samples)."""
    path = fixtures_dir / "mmkd-clip-demo"
    if not (path / "meta.jsonl").is_file():
        pytest.skip(f"{path}/meta.jsonl not found; the mmkd-clip-demo fixture is incomplete")
    return path


@pytest.fixture(scope="session")
def modality_dir(fixtures_dir: Path) -> Path:
    """Nine real images, one per modality."""
    path = fixtures_dir / "modality-examples"
    if not path.is_dir():
        pytest.skip(f"{path} not found; the modality-examples fixture is absent")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one takes ~5 s)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def run_mmkd():
    """Run the ``mmkd`` console script as a user would: ``run_mmkd(*args, timeout=..., cwd=..., extra_env=...)`` ->
    CompletedProcess.

    Uses the script installed next to this Python (falls back to ``python -c`` when
    absent), with this checkout first on ``PYTHONPATH``.
    """
    import subprocess
    import sys

    script = Path(sys.executable).with_name("mmkd")
    head = [str(script)] if script.is_file() else [sys.executable, "-c", "from mmkd.cli import main; main()"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}

    def run(*args: str, timeout: float = 300, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*head, *map(str, args)], capture_output=True, text=True,
                              env={**env, **(extra_env or {})}, timeout=timeout, check=False, cwd=cwd)

    return run
