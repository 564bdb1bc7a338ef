"""mmkd.extract: teachers (registry + loaders) and the extract runners (datasets: mmkd.data).

    from mmkd.extract import ExtractJob, run_extract
    summary = run_extract(ExtractJob(data="mmkd-clip-demo", teachers=["biomedclip"],
                                     store="stores/demo", runner="local"))

Sub-packages: :mod:`mmkd.teachers`,
:mod:`mmkd.extract.runners`. Importing this package imports neither torch nor ray.
"""

from mmkd.extract.runners import (
    ExtractError,
    ExtractJob,
    ExtractSummary,
    TeacherSummary,
    job_from_config,
    run_extract,
)

__all__ = ["ExtractError", "ExtractJob", "ExtractSummary", "TeacherSummary", "job_from_config", "run_extract"]
