"""``mmkd eval``: students and teachers on eval sets, one table."""

from __future__ import annotations

import click

TASK_CHOICES = ("zeroshot", "linear", "retrieval", "knn", "all")


def _stores(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: write DATASET=STORE_PATH", param_hint="--store")
        out[name] = path
    return out


@click.command("eval")
@click.option("--pipeline", "pipeline", type=click.Path(dir_okay=False), default=None,
              help="pipelines.yaml (default: $MMKD_PIPELINES, ./pipelines.yaml, the repo's).")
@click.option("--job", default=None, help="An entry of the `eval:` section giving defaults for the options below.")
@click.option("--model", "models", multiple=True,
              help="Student export folder or teacher name (repeatable).")
@click.option("--dataset", "datasets", multiple=True,
              help="Eval set: a name under `eval_sets:` / shipped in mmkd/eval/sets, or a spec path (repeatable).")
@click.option("--task", "tasks", multiple=True, type=click.Choice(TASK_CHOICES),
              help="Task(s) to run (repeatable; default all, each where the set allows it).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output folder for results.json, results.md, results.png.")
@click.option("--store", "stores", multiple=True, metavar="DATASET=PATH",
              help="Read teachers' features for eval set DATASET (its name; a spec path's file stem) from a "
                   "store built over it (repeatable).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Feature cache folder (default: <out>/cache).")
@click.option("--device", default=None, help="torch device (default: cuda when available).")
@click.option("--batch-size", type=int, default=None, help="Images/texts per forward pass (default 32).")
@click.option("--resamples", type=int, default=None, help="Bootstrap resamples for the CIs (default 1000).")
@click.option("--seed", type=int, default=None, help="Bootstrap and split seed (default 0).")
@click.option("--knn-k", type=int, default=None, help="Neighbours for kNN classification (default 20).")
@click.option("--strict", is_flag=True, default=None,
              help="An unreadable eval image is an error (exit 1). Default: it is skipped for every model, "
                   "counted and listed in results.json and under the table of results.md.")
def eval_cmd(pipeline, job, models, datasets, tasks, out, stores, cache_dir, device, batch_size, resamples, seed,
             knn_k, strict) -> None:
    """Zero-shot, linear probe, retrieval and kNN for students and teachers, as one table.

    Example: mmkd eval --model runs/student/export --model biomedclip --dataset modality9 --out runs/eval
    """
    from mmkd.config import ConfigError, load_pipelines
    from mmkd.eval.encoders import EncoderError
    from mmkd.eval.report import summary_text
    from mmkd.eval.runner import EvalConfig, EvalError, evaluate, job_config, parse_tasks

    try:
        cfg = load_pipelines(pipeline)
        entry = job_config(cfg, job) if job else {}
        given = {"resamples": resamples, "seed": seed, "knn_k": knn_k, "batch_size": batch_size, "device": device,
                 "cache_dir": cache_dir, "strict": strict}
        settings = {k: v for k, v in entry.items() if k not in ("models", "datasets", "tasks", "out")}
        settings.update({k: v for k, v in given.items() if v is not None})
        settings["stores"] = {**settings.get("stores", {}), **_stores(stores)}
        ecfg = EvalConfig(tasks=parse_tasks(list(tasks) or entry.get("tasks")), progress=True, **settings)
        out = out or entry.get("out")
        if not out:
            raise click.UsageError("give --out DIR (or a --job with `out:`)")
        results = evaluate(list(models) or list(entry.get("models") or []),
                           list(datasets) or list(entry.get("datasets") or []), out, cfg=cfg, ecfg=ecfg)
    except (ConfigError, EvalError, EncoderError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(summary_text(results))
    click.echo(f"results: {out}/results.json  table: {out}/results.md  chart: {out}/results.png")


def register(main: click.Group) -> None:
    """Add ``mmkd eval`` to the top-level group."""
    main.add_command(eval_cmd)
