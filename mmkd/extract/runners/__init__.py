"""Extract runners: one job description, one block worker, one runner base, two executors (local, Ray).

    job = job_from_config(run="mmkd-clip-demo-all")          # or ExtractJob(...)
    summary = run_extract(job)
    print(summary.format())

``import ray`` happens only inside :mod:`mmkd.extract.runners.ray_runner`.
"""

from mmkd.extract.runners.base import BaseRunner, Runner, TeacherRun
from mmkd.extract.runners.block import BlockWorker, WorkerConfig
from mmkd.extract.runners.job import ExtractError, ExtractJob, job_from_config
from mmkd.extract.runners.run import run_extract
from mmkd.extract.runners.summary import ExtractSummary, TeacherSummary

__all__ = ["BaseRunner", "BlockWorker", "ExtractError", "ExtractJob", "ExtractSummary", "Runner", "TeacherRun",
           "TeacherSummary", "WorkerConfig", "job_from_config", "run_extract"]
