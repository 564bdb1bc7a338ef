"""Shared test helpers, in one place: the hub offline for the whole session, the real fixture data
(``fixture_absent`` skips, or fails under ``MMKD_REQUIRE_FIXTURES=1`` as CI sets it), one Ray instance
per session, and ``run_mmkd`` (the ``mmkd`` console script as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys

# Offline for the whole session, set before any test module imports transformers or huggingface_hub
# (both read these once at import; a later monkeypatch is too late and the hub is retried for minutes).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMKD_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
REQUIRE_FIXTURES = os.environ.get("MMKD_REQUIRE_FIXTURES", "") not in ("", "0")


def fixture_absent(message: str) -> None:
    """A fixture the test needs is absent: skip, saying why; under ``MMKD_REQUIRE_FIXTURES=1`` (CI) fail."""
    if REQUIRE_FIXTURES:
        pytest.fail(f"{message} (MMKD_REQUIRE_FIXTURES is set: fixtures are required here)", pytrace=False)
    pytest.skip(message)


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
    """``../shared/fixtures`` (override with ``MMKD_FIXTURES``); skips when absent (fails in CI)."""
    if not FIXTURES.is_dir():
        fixture_absent(f"fixture data not found at {FIXTURES}; set MMKD_FIXTURES to the shared/fixtures folder")
    return FIXTURES


@pytest.fixture(scope="session")
def mmkd_demo_dir(fixtures_dir: Path) -> Path:
    """The official MMKD-CLIP sample layout (8 samples)."""
    path = fixtures_dir / "mmkd-clip-demo"
    if not (path / "meta.jsonl").is_file():
        fixture_absent(f"{path}/meta.jsonl not found; the mmkd-clip-demo fixture is incomplete")
    return path


@pytest.fixture(scope="session")
def modality_dir(fixtures_dir: Path) -> Path:
    """Nine real images, one per modality."""
    path = fixtures_dir / "modality-examples"
    if not path.is_dir():
        fixture_absent(f"{path} not found; the modality-examples fixture is absent")
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


def mmkd_script() -> str:
    """The installed ``mmkd`` console script beside this interpreter (what a user types)."""
    exe = Path(sys.executable).with_name("mmkd")
    if not exe.is_file():
        pytest.fail(f"the mmkd console script is not installed beside {sys.executable}; pip install -e . first")
    return str(exe)


def mmkd(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300,
         ok: bool = False) -> subprocess.CompletedProcess:
    """Run ``mmkd ARGS`` as a user would (the console script, this checkout first on ``PYTHONPATH``, hub offline);
    ``env`` adds to or, with a ``None`` value, removes from the environment; ``ok`` asserts exit 0, showing the output."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for key, value in (env or {}).items():
        full.pop(key, None) if value is None else full.__setitem__(key, value)
    proc = subprocess.run([mmkd_script(), *map(str, args)], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if ok:
        assert proc.returncode == 0, f"mmkd {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def run_mmkd():
    """:func:`mmkd` as a fixture: ``run_mmkd(*args, timeout=...)`` -> CompletedProcess."""
    return mmkd
