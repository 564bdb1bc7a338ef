"""The distill training recipe, torchtune-shaped: ``setup`` / ``train`` / ``cleanup``.

Use :func:`distill` (what ``mmkd distill`` calls); :class:`DistillRecipe` exposes
the steps for tests and notebooks. Launch with ``torchrun`` for several GPUs or
nodes (``python -m mmkd.distill ...``); one process runs on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmkd.config import resolve_device
from mmkd.distill import checkpoint as ckpt
from mmkd.distill.config import DistillConfig
from mmkd.distill.data import DataSpec, StoreBatches, make_loader, uniform
from mmkd.distill.dist import DistEnv, cleanup_distributed, init_distributed
from mmkd.distill.heads import TeacherHeads, TeacherProjections, projected_copy
from mmkd.distill.init import initialise
from mmkd.distill.metrics import MetricsLog, plot_losses
from mmkd.distill.objective import DistillModule, compute_terms
from mmkd.distill.optim import build_optimizer, build_scheduler
from mmkd.distill.outdir import clear_run, prepare_out
from mmkd.distill.rundir import RunDir
from mmkd.distill.student import (
    build_student,
    export_student,
    init_config,
    resolve_student,
)
from mmkd.errors import DistillError
from mmkd.store import FeatureStore, StoreError
from mmkd.store.format import disk_full, disk_full_error
from mmkd.store.validate import index_problems
from mmkd.store.projection import load_projection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillResult:
    """Where a distill run stands when :func:`distill` returns.

    Attributes:
        step: optimizer steps done so far (over every invocation of the run).
        total_steps: steps of the whole run.
        finished: ``step >= total_steps``; the student was exported to ``<out>/export``.
        out: the run folder.
        noop: the run in ``out`` had already finished with these settings; nothing was trained.
        nonfinite_targets: store rows left out because a teacher target was NaN/Inf.
        skipped_steps: steps skipped for a non-finite loss or gradient (``on_nonfinite: skip``).
    """

    step: int
    total_steps: int
    finished: bool
    out: str
    noop: bool = False
    nonfinite_targets: int = 0
    skipped_steps: int = 0

    def to_dict(self) -> dict[str, int | bool | str]:
        """The summary line ``mmkd distill`` prints: the optional fields only when they say something."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k in ("step", "total_steps", "finished", "out") or v}


class NonFiniteError(DistillError):
    """A loss or gradient became NaN/Inf (``on_nonfinite: stop``); nothing was updated or exported."""


class DistillRecipe:
    """One distill run. Call :meth:`setup`, :meth:`train`, then :meth:`cleanup`."""

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.run = RunDir(self.out)
        self.kd = cfg.kd if cfg.stage == 2 else None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Environment, store, model, optimizer, data, and the resume state."""
        self._setup_env()
        self.out_state = prepare_out(self.cfg)  # before anything is written; may set cfg.resume
        if self.env.distributed:
            torch.distributed.barrier()  # every rank has looked at --out before rank 0 writes there
        if self.out_state == "finished":
            return
        self._setup_store()
        self._setup_model()
        self._setup_optimizer()
        self._setup_data()
        self._maybe_resume()
        self._setup_logging()

    def _setup_env(self) -> None:
        c = self.cfg
        dev = resolve_device(c.device)
        self.env: DistEnv = init_distributed(dev.split(":")[0])
        self.device = torch.device(f"cuda:{self.env.local_rank}" if dev == "cuda" else dev)
        self.autocast = c.precision == "bf16" or (c.precision == "auto" and dev.startswith("cuda"))
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % (1 << 32))

    def _setup_store(self) -> None:
        store = FeatureStore.open(self.cfg.store)
        problems = index_problems(store)
        if problems:  # features would be paired with other rows' images and captions
            raise StoreError(f"store {self.cfg.store} is unsound, not trained on: {problems[0]}")
        self.n = store.n
        self.teachers: list[str] = []
        self.dims: dict[str, int] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        if self.kd is None:
            return
        have = store.teachers
        base = [t for t in have if projected_copy(t, have) is None]  # imported _projNNN copies are no teachers
        self.teachers = list(self.cfg.teachers or base)
        unknown = [t for t in self.teachers if t not in have]
        if not self.teachers or unknown:
            raise DistillError(f"store {self.cfg.store!r} holds teachers {base}; stage 2 asked for "
                             f"{self.teachers} (unknown: {unknown}). Extract them first with `mmkd extract`")
        self.store_obj = store
        if self.kd == "mmkd-clip" and self.cfg.targets.source == "projected":
            self.teachers = [self._projected_name(t, have) for t in self.teachers]
        for t in self.teachers:
            self.dims[t] = store.dim(t)
            self.stats[t] = store.attrs(t)
            if store.missing_blocks(t):
                logger.warning("teacher %s is incomplete in the store: %d blocks missing, their rows count as "
                               "invalid", t, len(store.missing_blocks(t)))

    def _projected_name(self, teacher: str, have: list[str]) -> str:
        if projected_copy(teacher, have) is not None:
            return teacher
        copies = sorted(h for h in have if projected_copy(h, have) == teacher)
        if not copies:
            raise DistillError(f"--targets projected: store {self.cfg.store!r} holds no projected copy of teacher "
                             f"{teacher!r} (<teacher>_proj512); import the official features with `mmkd store "
                             f"import-mmkd SRC DST --with-projected`, or use --targets raw")
        return copies[0]

    def _setup_model(self) -> None:
        c = self.cfg
        base = Path(c.students_base_dir) if c.students_base_dir else None
        self.student = build_student(resolve_student(c.student, c.students_section, base))
        self.init_report: dict[str, Any] | None = None
        init = init_config(c.init, self.student.spec)
        if init and not c.resume:  # a resumed run takes every weight from its checkpoint
            self.init_report = initialise(self.student.model, init)
        embed_dim = int(self.student.spec.model_cfg["embed_dim"])
        kd_mod: torch.nn.Module | None = None
        if self.kd == "mmkd-clip":
            kd_mod = TeacherProjections(self.dims, embed_dim, seed=c.seed, trainable=c.train_projections,
                                        normalize=c.targets.normalize)
            self._set_projections(kd_mod, embed_dim)
        elif self.kd == "multi":
            kd_mod = TeacherHeads(self.dims, embed_dim, kind=c.head)
            if c.standardize:
                self._set_stats(kd_mod)
        self.module = DistillModule(self.student.model, kd_mod, standardize=c.standardize).to(self.device)
        self.model: torch.nn.Module = self.module
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)

    def _set_projections(self, proj: TeacherProjections, embed_dim: int) -> None:
        """Identity for the official projected copies; else a projection file, a fitted one, or the random map."""
        c = self.cfg
        if c.targets.source == "projected":
            for t, d in self.dims.items():
                if d != embed_dim:
                    raise DistillError(f"--targets projected: {t} holds {d}-d features but the student embeds in "
                                     f"{embed_dim}-d; use a {d}-d student or --targets raw")
                proj.set_identity(t)
        elif c.projection_file:
            proj.load_file(c.projection_file)
        elif c.targets.projection != "random":
            for t in self.teachers:
                try:
                    w, b, meta = load_projection(self.store_obj, t, c.targets.projection, embed_dim)
                except StoreError as e:
                    raise DistillError(str(e)) from e
                proj.set_map(t, torch.from_numpy(w), torch.from_numpy(b))
                logger.info("teacher %s: %s projection (R² %.4f over %d rows)", t, c.targets.projection,
                            meta["r2"], meta["fit_rows"])

    def _set_stats(self, heads: TeacherHeads) -> None:
        for t in self.teachers:
            for kind in ("image", "text"):
                mean, std = self.stats[t].get(f"{kind}_mean"), self.stats[t].get(f"{kind}_std")
                if mean is None or std is None:
                    raise DistillError(f"teacher {t!r} in store {self.cfg.store!r} has no {kind}_mean/{kind}_std "
                                     f"attrs; compute them (FeatureStore.compute_stats) or drop --standardize")
                heads.set_stats(t, kind, torch.tensor(mean), torch.tensor(std))

    def _setup_optimizer(self) -> None:
        c = self.cfg
        self.optim_cfg = c.optim
        self.optimizer = build_optimizer({"student": self.module.student, "kd": self.module.kd or torch.nn.Module()},
                                         self.optim_cfg)

    def _setup_data(self) -> None:
        c = self.cfg
        spec = DataSpec(store=c.store, batch_size=c.batch_size, seed=c.seed, teachers=self.teachers,
                        rank=self.env.rank, world_size=self.env.world_size, buffer_blocks=c.buffer_blocks,
                        data=c.data, with_features=self.kd is not None, teacher_mask=c.teachers_cfg.mask,
                        teacher_weight=c.teachers_cfg.weight, decode=c.decode,
                        image_cache=c.image_cache, views=c.views, uint8=True)
        transform = self.student.train_transform if c.augment else self.student.eval_transform
        self.data = StoreBatches(spec, transform, self.student.tokenizer)
        per_epoch = self.data.batches_per_epoch
        self.total_steps = c.steps if c.steps is not None else max(1, math.ceil(c.epochs * per_epoch / c.grad_accum))
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg, self.total_steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.nonfinite_targets: set[tuple[int, str]] = set()  # (row, teacher) left out for a NaN/Inf target
        self.skipped_steps = 0
        self._bad_step: tuple[str, list[int]] | None = None  # what went NaN/Inf in this step's micro-batches

    def _maybe_resume(self) -> None:
        if not self.cfg.resume:
            return
        state = ckpt.load_checkpoint(self.out)
        self.module.student.load_state_dict(state["student"])
        if self.module.kd is not None:
            self.module.kd.load_state_dict(state["kd"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        ckpt.set_rng_state(state["rng"])
        logger.info("resumed from step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_in_epoch)

    def _setup_logging(self) -> None:
        self.metrics = MetricsLog(self.out) if self.env.is_main else None
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)
            resolved = {"distill": self.cfg.to_dict(), "student": {"name": self.student.spec.name,
                        "model_cfg": self.student.spec.model_cfg, "preprocess_cfg": self.student.preprocess_cfg},
                        "store": {"rows": self.n, "teachers": self.dims}, "total_steps": self.total_steps,
                        "world_size": self.env.world_size}
            if self.cfg.overwrite and self.run.config.is_file():
                clear_run(self.out)
            self.run.write_config(resolved)
            if self.init_report is not None:
                self.run.write_init_report(self.init_report)

    # ------------------------------------------------------------------ train
    def _batches(self):
        """Endless stream of batches, moving through epochs; updates the data position."""
        # one loader for the run: its workers persist across epochs and read the epoch set here
        loader = make_loader(self.data, self.cfg.num_workers, pin_memory=self.device.type == "cuda", persistent=True)
        while True:
            self.data.set_epoch(self.epoch, self.batch_in_epoch)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        def mv(x):
            if isinstance(x, torch.Tensor):
                return x.to(self.device, non_blocking=True)
            return {k: mv(v) for k, v in x.items()} if isinstance(x, dict) else x
        return {k: mv(v) for k, v in batch.items()}

    def _note_nonfinite_targets(self, batch: dict[str, Any]) -> None:
        bad = batch.get("nonfinite")
        if bad is None or not bool(bad.any()):
            return
        rows = batch["rows"].tolist()
        new = {(rows[i], self.teachers[j]) for i, j in torch.nonzero(bad).tolist()} - self.nonfinite_targets
        if new and not self.nonfinite_targets and self.env.is_main:
            row, teacher = min(new)
            logger.warning("store %s: teacher %s's features of row %d are NaN/Inf: such rows are left out of that "
                           "teacher's terms (warned once; counted in the summary; `mmkd store validate --deep` "
                           "lists them)", self.cfg.store, teacher, row)
        self.nonfinite_targets |= new

    def _nonfinite(self, what: str, batch_rows: list[int]) -> bool:
        """Handle a NaN/Inf loss or gradient at this step: raise (stop) or return True (skip the update)."""
        shown = ", ".join(map(str, batch_rows[:8])) + (f", ... ({len(batch_rows)} rows)" if len(batch_rows) > 8 else "")
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(f"distill: {what} is NaN/Inf at step {self.step + 1} (batch rows {shown}); "
                                 f"stopped before updating, nothing exported (the last checkpoint in {self.out} "
                                 "is finite). Check the rows with `mmkd store validate --deep`, lower --lr, or "
                                 "pass --on-nonfinite skip to skip such steps")
        if not self.skipped_steps:
            logger.warning("distill: %s is NaN/Inf at step %d (batch rows %s): step skipped, no update "
                           "(--on-nonfinite skip; warned once, counted in the summary)", what, self.step + 1, shown)
        self.skipped_steps += 1
        return True

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> dict[str, float]:
        c = self.cfg
        self._note_nonfinite_targets(batch)
        b = self._to_device(batch)
        if self.data.image_norm is not None:  # uint8 from the loader: ToTensor + Normalize here, on the device
            b["image"] = self.data.image_norm(b["image"], b["ok"])
        no_sync = self.model.no_sync if (self.env.distributed and not sync) else contextlib.nullcontext
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with no_sync():
            with amp:
                out = self.model(b["image"], b["text"], b.get("feats"), b.get("choice"))
            drop = float(c.teachers_cfg.drop) if self.kd == "multi" else 0.0
            drop_u = None
            if drop:
                u = uniform(c.seed, self.step, np.arange(len(self.teachers)), salt=3)
                drop_u = {t: float(u[j]) for j, t in enumerate(self.teachers)}
            terms = compute_terms(out, b, self.env, self.kd, c.loss, self.teachers, c.teacher_weights,
                                  c.standardize, drop_u=drop_u, drop=drop)
            if self._bad_step is None and not bool(torch.isfinite(terms["total"].detach())):
                self._bad_step = ("the loss", batch["rows"].tolist())
            # backward even so: every DDP rank must join the gradient all-reduce; the step is then refused
            (terms["total"] / c.grad_accum).backward()
        return {k: float(v.detach()) for k, v in terms.items()}

    def _optimizer_step(self, rows: list[int]) -> float:
        c = self.cfg
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip else float("inf"))
        bad, self._bad_step = self._bad_step, None
        if bad is None and not bool(torch.isfinite(norm)):
            bad = ("the gradient norm", rows)
        if bad is not None and self._nonfinite(*bad):
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.module.student.logit_scale.clamp_(0, math.log(c.max_logit_scale))
        return float(norm)

    def train(self) -> DistillResult:
        """Run until ``total_steps`` (or ``stop_at_step``); returns a summary."""
        c = self.cfg
        if self.out_state == "finished":
            import yaml

            total = int((yaml.safe_load(self.run.config.read_text()) or {}).get("total_steps") or 0)
            logger.warning("distill: the run in %s already finished with these settings; nothing to do "
                           "(--overwrite trains it again)", self.out)
            return DistillResult(step=total, total_steps=total, finished=True, out=str(self.out), noop=True)
        end = min(self.total_steps, c.stop_at_step) if c.stop_at_step else self.total_steps
        stream = self._batches()
        bar = self._progress(end)
        t0, seen, acc, wait = time.perf_counter(), 0, {}, 0.0
        while self.step < end:
            rows: list[int] = []
            for micro in range(c.grad_accum):
                tw = time.perf_counter()
                batch = next(stream)
                wait += time.perf_counter() - tw
                rows += batch["rows"].tolist()
                terms = self._micro_step(batch, sync=micro == c.grad_accum - 1)
                for k, v in terms.items():
                    acc[k] = acc.get(k, 0.0) + v / c.grad_accum
            grad_norm = self._optimizer_step(rows)
            self.step += 1
            seen += c.batch_size * self.env.world_size * c.grad_accum
            if self.step % c.log_every == 0 or self.step == end:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                self._log(acc, grad_norm, seen / elapsed, bar, data_share=wait / elapsed)
                t0, seen, wait = time.perf_counter(), 0, 0.0
            acc = {}
            if bar is not None:
                bar.update(1)
            if self.step % c.checkpoint_every == 0 or self.step == end:
                self._save()
        if bar is not None:
            bar.close()
        finished = self.step >= self.total_steps
        if finished and self.env.is_main:
            self._finish()
        return DistillResult(step=self.step, total_steps=self.total_steps, finished=finished, out=str(self.out),
                             nonfinite_targets=len(self.nonfinite_targets), skipped_steps=self.skipped_steps)

    def _progress(self, end: int):
        if not (self.cfg.progress and self.env.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=self.step, desc=f"distill stage {self.cfg.stage}", unit="step")

    def _log(self, acc: dict[str, float], grad_norm: float, rate: float, bar, data_share: float) -> None:
        if self.metrics is None:
            return
        # data_wait_share: fraction of wall time spent waiting for batches (loader-bound when high)
        rec = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
               "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "samples_per_s": rate,
               "data_wait_share": data_share,
               "logit_scale": float(self.module.student.logit_scale.detach().exp())}
        rec.update({f"loss/{k}": v for k, v in acc.items()})
        self.metrics.log(rec)
        if bar is not None:
            short = {k: f"{v:.4g}" for k, v in acc.items() if "/" not in k}
            bar.set_postfix(**short, sps=f"{rate:.1f}")

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "student": self.module.student.state_dict(),
                "kd": self.module.kd.state_dict() if self.module.kd is not None else None,
                "kd_mode": self.kd, "teachers": self.dims,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.rng_state(), "config": self.cfg.to_dict(),
                "student_spec": {"name": self.student.spec.name, "model_cfg": self.student.spec.model_cfg}}

    def _save(self) -> None:
        if self.env.is_main:
            ckpt.save_checkpoint(self.out, self._state(), keep_step_copy=self.cfg.keep_checkpoints)
        if self.env.distributed:
            torch.distributed.barrier()

    def _finish(self) -> None:
        export_student(self.student, self.run.export)
        if self.module.kd is not None:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.module.kd.state_dict().items()}
            save_file(state, str(self.run.kd_adaptors),
                      metadata={"kd": str(self.kd), "teachers": ",".join(self.teachers)})
        plot_losses(self.out)

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Close logs and leave the process group."""
        if getattr(self, "metrics", None) is not None:
            try:
                self.metrics.close()
            except OSError as e:  # the TensorBoard flush on a full disk: the run's own error is what matters
                logger.warning("closing the metrics log failed: %s", e)
        cleanup_distributed()


def distill(cfg: DistillConfig) -> DistillResult:
    """Run a distill job end to end (setup, train, cleanup); see :class:`DistillRecipe`."""
    recipe = DistillRecipe(cfg)
    try:
        recipe.setup()
        return recipe.train()
    except Exception as e:  # a full disk surfaces from torch.save, the metrics log or the export: one line
        full = disk_full(e)
        if full is None or not cfg.out:
            raise
        last = RunDir(cfg.out).last_checkpoint
        then = f"the run resumes from {last}" if last.is_file() else "the run starts again (no checkpoint yet)"
        raise disk_full_error(full, cfg.out, "run folder", then) from e
    finally:
        recipe.cleanup()
