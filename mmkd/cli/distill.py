"""``mmkd distill``: train a student from a feature store (stage 1 CLIP, stage 2 KD).

Every flag overrides the named ``distill:`` entry of pipelines.yaml. Several GPUs
or nodes: ``torchrun --nproc-per-node 8 -m mmkd.distill --store ... ``.
"""

from __future__ import annotations

import json

import click

from mmkd.cli.paths import PathOrURL
from mmkd.errors import MMKDError

OVERRIDES = (
    "store", "stage", "student", "out", "kd", "steps", "epochs", "batch_size", "grad_accum", "lr",
    "weight_decay", "warmup_steps", "grad_clip", "precision", "init", "stop_at_step", "checkpoint_every",
    "log_every", "seed", "num_workers", "buffer_blocks", "projection_file", "head", "fd_weight", "icl_weight",
    "clip_weight", "icl_scale", "device", "data", "targets", "projection",
    "init_image", "init_text", "init_min_share", "init_cache_dir", "teacher_mask", "teacher_weight", "teacher_drop",
    "decode", "image_cache",
    "on_nonfinite",
)


class Finite(click.FloatRange):
    """A float range that also refuses NaN and infinity (``--lr inf`` would train a NaN student)."""

    def convert(self, value, param, ctx):
        import math

        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return out


POSITIVE = Finite(min=0, min_open=True)
NON_NEGATIVE = Finite(min=0)

# `mmkd distill --help` in sections (click has no option groups): section -> option names (param names).
SECTIONS = {
    "Required (here or in the --run entry)": ("store", "student", "out"),
    "Run": ("run_name", "pipeline", "stage", "kd", "teachers", "data", "device", "seed", "no_progress"),
    "Length and optimizer": ("steps", "epochs", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps",
                             "grad_clip", "precision"),
    "Start from weights": ("init", "init_image", "init_text", "init_partial", "init_min_share", "init_cache_dir"),
    "Checkpoints and resume": ("resume", "overwrite", "stop_at_step", "checkpoint_every", "log_every",
                               "on_nonfinite"),
    "Data loading": ("num_workers", "buffer_blocks", "augment", "decode", "image_cache"),
    "Stage 2: teachers and targets": ("teacher_mask", "teacher_weight", "teacher_drop", "targets", "projection",
                                      "projection_file", "projections_old", "normalize_targets", "standardize", "head"),
    "Stage 2: loss weights": ("fd_weight", "icl_weight", "clip_weight", "icl_scale"),
}
REQUIRED = SECTIONS["Required (here or in the --run entry)"]


class SectionedCommand(click.Command):
    """A command whose --help lists its options under the headings of ``SECTIONS``."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed = {name for names in SECTIONS.values() for name in names}
        sections = [*SECTIONS.items(), ("Other", tuple(n for n in rows if n not in placed))]
        for title, names in sections:
            records = [rows[n] for n in names if rows.get(n)]
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


INIT_HELP = ("a stage-1 run, export folder, checkpoint file, open_clip ARCH:TAG (ViT-B-16-quickgelu:metaclip_400m) "
             "or hf-hub:ORG/NAME")


@click.command("distill", cls=SectionedCommand)
@click.option("--store", type=PathOrURL(exists=True, file_okay=False), help="Feature store path or URL (s3://...). [required]")
@click.option("--stage", type=click.IntRange(1, 2), help="1: CLIP pretraining; 2: distillation from teacher features.")
@click.option("--student", help="students entry, open_clip JSON config path or open_clip architecture name. [required]")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (checkpoints, metrics, export). [required]")
@click.option("--kd", type=click.Choice(["mmkd-clip", "multi"]), help="Stage-2 recipe (default mmkd-clip).")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps to run.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), help="Epochs to run (instead of --steps).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per GPU per micro-batch.")
@click.option("--grad-accum", type=click.IntRange(min=1), help="Micro-batches per optimizer step.")
@click.option("--lr", type=POSITIVE, help="Peak learning rate (default 5e-5 stage 1, 1e-6 stage 2).")
@click.option("--weight-decay", type=NON_NEGATIVE, help="AdamW weight decay (default 0.2).")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Linear warmup steps (default 2000).")
@click.option("--grad-clip", type=NON_NEGATIVE, help="Max gradient norm (0: off; default 1.0).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), help="auto: bf16 autocast on CUDA.")
@click.option("--init", metavar="SOURCE", help=f"Start both towers from {INIT_HELP}; loaded non-strictly, reported in "
              "<out>/init_report.json.")
@click.option("--init-image", metavar="SOURCE", help="Image tower's source (overrides --init for it).")
@click.option("--init-text", metavar="SOURCE", help="Text tower's source (overrides --init); 'hf' or 'hf:NAME|FOLDER': "
              "the Hugging Face text model's pretrained weights (HF cache; offline with HF_HUB_OFFLINE=1).")
@click.option("--init-partial", is_flag=True, default=None, help="Accept a tower of which less than the least share "
              "loads.")
@click.option("--init-min-share", type=click.FloatRange(0, 1), help="Least share of a tower's parameters that must "
              "load (default 0.9).")
@click.option("--init-cache-dir", type=click.Path(file_okay=False), help="Download cache of open_clip pretrained tags "
              "(default: the Hugging Face cache, or ~/.cache/clip for URL-only tags).")
@click.option("--resume", is_flag=True, default=None, help="Continue from <out>/checkpoints/last.pt exactly (also done "
              "without it when --out holds a run with the same settings).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace the run in --out when its settings differ "
              "(without it such a rerun is refused and nothing is written).")
@click.option("--stop-at-step", type=click.IntRange(min=1), help="End this invocation after this step.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Steps between checkpoints.")
@click.option("--log-every", type=click.IntRange(min=1), help="Steps between metric records.")
@click.option("--seed", type=int, help="Seed of data order, augmentation and teacher draws.")
@click.option("--num-workers", type=click.IntRange(min=0), help="DataLoader workers per GPU.")
@click.option("--buffer-blocks", type=click.IntRange(min=1), help="Store blocks shuffled together.")
@click.option("--teacher", "teachers", multiple=True, metavar="NAME",
              help="Teacher to distil from (repeatable; default: every teacher in the store).")
@click.option("--projection-file", type=click.Path(exists=True, dir_okay=False),
              help="mmkd-clip: per-teacher projection weights file (instead of --projection).")
@click.option("--projections", "projections_old", type=click.Path(exists=True, dir_okay=False), hidden=True,
              help="Deprecated name of --projection-file.")
@click.option("--targets", type=click.Choice(["raw", "projected"]), help="mmkd-clip: raw store features mapped by "
              "--projection (default), or the imported official <teacher>_proj512 copies as they are.")
@click.option("--projection", type=click.Choice(["random", "pca", "ae"]), help="mmkd-clip, raw targets: random "
              "semi-orthogonal map (default), or the pca/ae map fitted by `mmkd store project`.")
@click.option("--normalize-targets/--no-normalize-targets", default=None, help="mmkd-clip: L2-normalise targets "
              "(default on; the official code does not).")
@click.option("--head", type=click.Choice(["linear", "mlp"]), help="multi: head kind.")
@click.option("--teacher-mask", type=click.Choice(["valid", "trusted"]), help="Teachers a row is distilled from: "
              "valid (default: every teacher with features) or trusted (also trusted by `mmkd store trust`).")
@click.option("--teacher-weight", type=click.Choice(["none", "trust"]), help="trust: multi weighs each row's "
              "teacher terms by its trust; mmkd-clip draws a row's teacher in proportion to trust (default none).")
@click.option("--teacher-drop", type=click.FloatRange(0, 1, max_open=True), help="multi: drop each teacher from a "
              "step with this probability, the highest-loss teacher kept (UNIC; default 0).")
@click.option("--augment/--no-augment", default=None, help="open_clip train augmentation (default on).")
@click.option("--decode", type=click.Choice(["reduced", "full"]),
              help="Student images: reduced (default) decodes JPEGs at a DCT-reduced scale that still covers the crop (docs/distill-data.md); full runs open_clip's "
              "transform on each fully decoded image.")
@click.option("--image-cache", type=click.Choice(["auto", "off"]), help="auto (default): read the store's student "
              "image cache (`mmkd store images`) when one fits the student's size; off: the originals.")
@click.option("--standardize/--no-standardize", default=None, help="multi: standardise targets by store stats.")
@click.option("--fd-weight", type=NON_NEGATIVE, help="Feature-distillation weight (default 50).")
@click.option("--icl-weight", type=NON_NEGATIVE, help="ICL weight (default 1).")
@click.option("--clip-weight", type=NON_NEGATIVE, help="CLIP term weight (default 1).")
@click.option("--icl-scale", metavar="NUMBER|learned",
              help="ICL logit multiplier: the official fixed ln(1/0.07) ~ 2.66 (default), another number "
              "(14.3 = 1/0.07), or 'learned' (the student's own logit scale, as CLIP-KD).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--data", metavar="PATH_OR_NAME", help="Where the store's dataset is now, if it moved: a path (its spec "
              "is kept, the image root found beside it or where it was) or a `datasets:` name (its spec, with its "
              "root, is used); the fingerprint is checked.")
@click.option("--on-nonfinite", type=click.Choice(["stop", "skip"]), help="A NaN/Inf loss or gradient: stop (default: "
              "one line naming the step and batch rows, nothing exported) or skip that step's update. Rows with "
              "NaN/Inf teacher targets are always left out (counted, warned once).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--run", "run_name", help="Name of the distill: entry in the pipelines file.")
@click.option("--pipeline", type=click.Path(exists=True, dir_okay=False), help="Pipelines file (default: pipelines.yaml).")
def distill_cmd(run_name: str | None, pipeline: str | None, teachers: tuple[str, ...], resume: bool | None,
                overwrite: bool | None,
                standardize: bool | None, augment: bool | None, no_progress: bool, init_partial: bool | None,
                normalize_targets: bool | None, projections_old: str | None, **flags) -> None:
    """Train a student from a feature store; no teacher is ever loaded.

    \b
    mmkd distill --store STORE --stage 1 --student NAME --out runs/s1 --steps 10000
    mmkd distill --store STORE --stage 2 --student NAME --init runs/s1 --out runs/s2 --steps 10000
    """
    from mmkd.config import load_pipelines
    from mmkd.distill.config import load_distill_config
    from mmkd.distill.init import summary_lines
    from mmkd.distill.recipe import distill
    from mmkd.distill.rundir import RunDir

    if projections_old is not None:
        click.echo("--projections is deprecated: use --projection-file", err=True)
        flags["projection_file"] = flags.get("projection_file") or projections_old
    overrides = {k: flags.get(k) for k in OVERRIDES}
    overrides.update(resume=resume, overwrite=overwrite, standardize=standardize, augment=augment,
                     init_partial=init_partial,
                     normalize_targets=normalize_targets,
                     teachers=list(teachers) or None,
                     progress=False if no_progress else None)
    try:
        cfg = load_distill_config(load_pipelines(pipeline), run_name, overrides)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    try:
        summary = distill(cfg)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    report = RunDir(summary.out).init_report
    if not cfg.resume and not summary.noop and report.is_file():
        for line in summary_lines(json.loads(report.read_text())):
            click.echo(line, err=True)
    click.echo(json.dumps(summary.to_dict()))


def register(main: click.Group) -> None:
    """Add ``mmkd distill`` to the top-level group."""
    main.add_command(distill_cmd)
