"""The run folder of ``mmkd distill``: one owner of its layout, for the run that writes it and whoever reopens it.

::

    <out>/
      config.yaml               the resolved run: distill config, student, store rows and teachers, steps
      init_report.json          what each tower loaded from its init source (runs with --init)
      metrics.jsonl             one record per logged step (tb/: the TensorBoard mirror)
      loss_curve.png            every loss term against step
      checkpoints/last.pt       the resume state (step-XXXXXXXX.pt too with keep_checkpoints)
      export/                   open_clip_config.json + open_clip_model.safetensors (open_clip ``local-dir:``)
      kd_adaptors.safetensors   the KD adaptors of a stage-2 run

The recipe writes through a :class:`RunDir`; ``--init RUN``, ``--resume``, the
demo and the CLI reopen a run through one. Light: no torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXPORT = "export"
EXPORT_CONFIG = "open_clip_config.json"
EXPORT_WEIGHTS = "open_clip_model.safetensors"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
CONFIG = "config.yaml"
INIT_REPORT = "init_report.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
CURVE = "loss_curve.png"
KD_ADAPTORS = "kd_adaptors.safetensors"


@dataclass(frozen=True)
class RunDir:
    """One run folder (``--out``); every path of its layout is a property."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def init_report(self) -> Path:
        return self.root / INIT_REPORT

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def loss_curve(self) -> Path:
        return self.root / CURVE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}.pt"

    @property
    def export(self) -> Path:
        return self.root / EXPORT

    @property
    def kd_adaptors(self) -> Path:
        return self.root / KD_ADAPTORS

    def write_config(self, resolved: dict[str, Any]) -> Path:
        """Write ``config.yaml`` (creating the folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(resolved, sort_keys=False))
        return self.config

    def write_init_report(self, report: dict[str, Any]) -> Path:
        """Write ``init_report.json``."""
        self.init_report.write_text(json.dumps(report, indent=2))
        return self.init_report

    def student_weights(self) -> Path | None:
        """The student weights this folder holds, best first: its own export files (an export folder),
        ``export/``, then ``checkpoints/last.pt``; ``None`` when none is there."""
        for cand in (self.root / EXPORT_WEIGHTS, self.export / EXPORT_WEIGHTS, self.last_checkpoint):
            if cand.is_file():
                return cand
        return None
