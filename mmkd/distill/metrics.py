"""Run metrics: JSON lines (always), TensorBoard (when installed), a loss-curve PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmkd.jsontypes import JSON, JSONDict

from mmkd.distill.rundir import RunDir

logger = logging.getLogger(__name__)


class MetricsLog:
    """Append-only ``<out>/metrics.jsonl``; mirrors scalars to TensorBoard if available."""

    def __init__(self, out: str | Path, tensorboard: bool = True):
        self.path = RunDir(out).metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(RunDir(out).tensorboard))
            except ImportError:
                logger.debug("tensorboard not installed; metrics go to %s only", self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites them)."""
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, record: JSONDict) -> None:
        """Write one record (must hold ``step``)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(out: str | Path) -> list[JSONDict]:
    """Records of ``<out>/metrics.jsonl``."""
    path = RunDir(out).metrics
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(out: str | Path) -> Path | None:
    """Write ``<out>/loss_curve.png``: every ``loss/*`` term against step (log scale)."""
    records = read_metrics(out)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k.startswith("loss/") and "/" not in k[5:]})
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k[5:])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(p > 0 for r in records for k, p in r.items() if k in keys):
        ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = RunDir(out).loss_curve
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
