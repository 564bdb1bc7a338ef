"""Shared test fixtures: the real fixture data, and one Ray instance per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMKD_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


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
