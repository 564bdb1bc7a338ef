"""``mmkd eval``: students and teachers on eval sets and on image-caption data, one table."""

from __future__ import annotations

from pathlib import Path

import click

from mmkd.errors import MMKDError

TASK_CHOICES = ("zeroshot", "linear", "retrieval", "knn", "diagnosis", "survival", "vqa", "all")


def _shipped_sets() -> str:
    # a glob, not an import of mmkd.eval (keeps `mmkd --help` fast)
    folder = Path(__file__).resolve().parents[1] / "eval" / "sets"
    return ", ".join(p.stem for p in sorted(folder.glob("*.yaml"))) or "none"


def _stores(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: write SET=STORE_PATH", param_hint="--store")
        out[name] = path
    return out


@click.command("eval", epilog=f"Shipped eval sets: {_shipped_sets()} (their images are read from the fixtures "
                              "folder: $MMKD_FIXTURES or --fixtures DIR).")
@click.option("--pipeline", "pipeline", type=click.Path(dir_okay=False), default=None,
              help="Your pipelines file (default: $MMKD_PIPELINES, else ./pipelines.yaml; extends the shipped one).")
@click.option("--run", "run", default=None, metavar="NAME",
              help="An entry of the `eval:` section giving defaults for the options below.")
@click.option("--model", "models", multiple=True,
              help="Student export folder or teacher name (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="NAME_OR_SPEC",
              help="Eval set: a name under `eval_sets:` / shipped, a spec file (labelled / captioned images, or "
                   "`task: diagnosis|survival|vqa`), or a clip_benchmark webdataset folder (repeatable).")
@click.option("--data", "data", multiple=True, metavar="PATH_OR_NAME",
              help="Image-caption data, anything `mmkd extract --data` takes (repeatable): retrieval, and "
                   "zero-shot / linear / kNN when --label names a label field.")
@click.option("--label", default=None, metavar="KEY",
              help="With --data: the label field (a mapped label column / JSON key) to classify.")
@click.option("--task", "tasks", multiple=True, type=click.Choice(TASK_CHOICES),
              help="Task(s) to run (repeatable; default all, each where the set allows it).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder for results.json, results.md, results.png.")
@click.option("--store", "stores", multiple=True, metavar="SET=PATH",
              help="Read teachers' features for set SET (its name; a spec path's or --data's file stem) from a "
                   "store built over it (repeatable).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Feature cache folder (default: <out>/cache).")
@click.option("--device", default=None, help="auto (default: cuda when available), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=None, help="Images/texts per forward pass (default 32).")
@click.option("--resamples", type=int, default=None, help="Bootstrap resamples for the CIs (default 1000).")
@click.option("--seed", type=int, default=None, help="Bootstrap and split seed (default 0).")
@click.option("--knn-k", type=int, default=None, help="Neighbours for kNN classification (default 20).")
@click.option("--format", "formats", multiple=True, type=click.Choice(("csv",)),
              help="Also write results.csv with the columns `clip_benchmark build` writes.")
@click.option("--split", default=None, metavar="SPLIT",
              help="Split of clip_benchmark sets to evaluate (a folder under the set, e.g. train; default test).")
@click.option("--fixtures", type=click.Path(file_okay=False), default=None,
              help="Folder that `fixtures:` paths of the shipped sets point into (sets $MMKD_FIXTURES).")
@click.option("--strict", is_flag=True, default=None,
              help="An unreadable eval image is an error (exit 1). Default: it is skipped for every model, "
                   "counted and listed in results.json and under the table of results.md.")
def eval_cmd(pipeline, run, models, sets, data, label, tasks, out, stores, cache_dir, device, batch_size, resamples,
             seed, knn_k, formats, fixtures, strict, split) -> None:
    """Zero-shot, linear probe, retrieval, kNN, slide diagnosis, survival and VQA for students and teachers.

    \b
    mmkd eval --model runs/s2/export --model biomedclip --set modality9 --out runs/eval
    mmkd eval --model runs/s2/export --data /data/roco/test.jsonl --out runs/eval-roco
    mmkd eval --model biomedclip --set diag.yaml --set surv.yaml --set vqa.yaml --out runs/eval-tasks
    mmkd eval --model runs/s2/export --set /data/wds_pcam --format csv --out runs/eval-cb
    """
    from mmkd.cli import set_fixtures
    from mmkd.config import load_pipelines, resolve_device
    from mmkd.eval.report import summary_text
    from mmkd.eval.runner import evaluate, plan_eval

    set_fixtures(fixtures)
    flags = {"models": list(models), "sets": list(sets), "data": list(data), "label": label, "tasks": list(tasks),
             "out": out, "stores": _stores(stores), "cache_dir": cache_dir, "device": device,
             "batch_size": batch_size, "resamples": resamples, "seed": seed, "knn_k": knn_k, "strict": strict,
             "split": split}
    try:
        cfg = load_pipelines(pipeline)
        plan = plan_eval(cfg, run, flags)
        plan.config.device = resolve_device(plan.config.device)
        plan.config.progress = True
        results = evaluate(plan.models, plan.sets, plan.out, pipelines=cfg, ecfg=plan.config,
                           csv=Path(plan.out) / "results.csv" if "csv" in formats else None)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    click.echo(summary_text(results))
    click.echo(f"results: {plan.out}/results.json  table: {plan.out}/results.md  chart: {plan.out}/results.png")


def register(main: click.Group) -> None:
    """Add ``mmkd eval`` to the top-level group."""
    main.add_command(eval_cmd)
