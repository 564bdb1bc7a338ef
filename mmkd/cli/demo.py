"""``mmkd demo``: the whole method end to end, in miniature, on a synthetic corpus (CPU, minutes)."""

from __future__ import annotations

import click

from mmkd.errors import MMKDError


@click.command("demo")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (must be fresh).")
@click.option("--quick", is_flag=True, help="Smaller corpus and fewer steps (about a third of the time).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of corpus, experts, distill and eval.")
@click.option("--runner", type=click.Choice(["ray", "local"]), default=None,
              help="Extract runner (default ray; --quick: local, since Ray's start-up costs its tiny extract more "
                   "than the extract itself: 32 vs 9 CPU seconds).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads of each training (default: the cores shared among --jobs).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Trainings side by side, each in its own process (default 2: tiny models use a second core "
                   "poorly within one process).")
@click.option("--ablation", is_flag=True,
              help="Also train the ablation students (teacher drop, trust weights, trusted mmkd-clip, ICL scale 14.3 "
                   "and learned), each reported against the no-KD student (summary.json: claims.ablation).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run N seeds (seed, seed+1, ...) into OUT/seed-<s>; OUT/summary.json reports each claim's mean "
                   "and worst case.")
@click.option("--vague", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of corpus captions that name the modality but not the finding (default 0.85, as many "
                   "figure captions are); the experts train on their own specific captions, so the vaguer the corpus "
                   "the more only KD can teach.")
@click.option("--views", type=click.IntRange(min=0), default=None, metavar="K",
              help="Extract K augmented views per row and train an mmkd-clip student on view-matched targets "
                   "(crops of scale 0.35-1.0) beside the single-view one, at the same budget; its gain is in "
                   "summary.json (claims.views_vs_single_view). Default 4; --quick: 0 (none).")
def demo_cmd(out: str, quick: bool, seed: int, runner: str | None, threads: int | None, jobs: int | None,
             ablation: bool, seeds: int, vague: float | None, views: int | None) -> None:
    """Synthetic corpus -> expert teachers -> extract -> distill (stage 1, stage 2) -> eval, one table.

    Example: mmkd demo --out runs/demo --quick
    """
    import json
    from pathlib import Path

    from mmkd.demo.claims import aggregate_seeds, gain_text
    from mmkd.demo.report import claims_text, table_markdown
    from mmkd.demo.run import run_demo

    extra = {k: v for k, v in {"vague": vague, "jobs": jobs, "views": views}.items() if v is not None}
    if ablation:
        extra["ablation"] = True

    if seeds > 1:
        runs = []
        for s in range(seed, seed + seeds):
            try:
                runs.append(run_demo(Path(out) / f"seed-{s}", quick=quick, seed=s, runner=runner, threads=threads,
                                     progress=_progress, **extra))
            except MMKDError as e:
                raise click.ClickException(str(e)) from e
            click.echo(f"seed {s}:\n" + table_markdown(runs[-1]) + claims_text(runs[-1]["claims"])
                       + gain_text(runs[-1]["claims"]))
        agg = {"seeds": list(range(seed, seed + seeds)), "claims": aggregate_seeds(runs),
               "per_seed": [{"seed": r["config"]["seed"], "claims": r["claims"], "wall_s": r["wall_s"]} for r in runs]}
        (Path(out) / "summary.json").write_text(json.dumps(agg, indent=2, default=str))
        click.echo(json.dumps(agg["claims"], indent=2))
        click.echo(f"output:    {_size(sum(r['output_bytes'] for r in runs))} in {out} (delete the folder when done)")
        return
    try:
        summary = run_demo(out, quick=quick, seed=seed, runner=runner, threads=threads, progress=_progress, **extra)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    art = summary["artefacts"]
    click.echo(f"corpus:    {art['corpus']['train']} (+ eval sets in {out}/corpus/eval)")
    click.echo(f"teachers:  {art['pipelines']} (experts in {out}/experts)")
    click.echo(f"store:     {art['store']}")
    for name, path in art["students"].items():
        click.echo(f"student:   {name}: {path}")
    click.echo(f"eval:      {art['eval']}/results.{{json,md,png}}")
    click.echo(f"summary:   {out}/summary.json  {out}/summary.md  {out}/summary.png")
    click.echo("")
    click.echo(table_markdown(summary))
    click.echo(claims_text(summary["claims"]) + gain_text(summary["claims"]))
    click.echo("wall seconds: " + ", ".join(f"{k} {v}" for k, v in summary["wall_s"].items()))
    click.echo(f"output:    {_size(summary['output_bytes'])} in {out} (delete the folder when done)")


def _progress(line: str) -> None:
    click.echo(line, err=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def register(main: click.Group) -> None:
    """Add ``mmkd demo`` to the top-level group."""
    main.add_command(demo_cmd)
