"""Every error the CLI reports derives from MMKDError and keeps the built-in base callers catch."""

import pytest

from mmkd.config import ConfigError
from mmkd.data import DatasetError
from mmkd.errors import DemoError, DistillError, MMKDError
from mmkd.eval.runner import EvalError
from mmkd.extract import ExtractError
from mmkd.store import StoreError
from mmkd.teachers.spec import TeacherError, UnknownTeacherError
from mmkd.teachers.weights import WeightsNotFoundError


@pytest.mark.parametrize("cls, builtin", [
    (ConfigError, ValueError), (DatasetError, ValueError), (StoreError, RuntimeError),
    (ExtractError, RuntimeError), (EvalError, RuntimeError), (TeacherError, ValueError),
    (UnknownTeacherError, KeyError), (WeightsNotFoundError, FileNotFoundError),
    (DistillError, ValueError), (DemoError, ValueError),
])
def test_error_has_the_one_base_and_its_old_one(cls, builtin):
    assert issubclass(cls, MMKDError) and issubclass(cls, builtin)


def test_resume_without_checkpoint_is_a_distill_error_and_file_not_found(tmp_path):
    from mmkd.distill.checkpoint import load_checkpoint

    with pytest.raises(DistillError, match="without --resume") as e:
        load_checkpoint(tmp_path)
    assert isinstance(e.value, FileNotFoundError)
