"""``mmkd demo``: the whole method end to end, in miniature, on a synthetic corpus (CPU, minutes)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (must be fresh).")
@click.option("--quick", is_flag=True, help="Smaller corpus and fewer steps (about a third of the time).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of corpus, experts, distill and eval.")
@click.option("--runner", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="Extract runner.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice; 1 helps on a busy machine).")
def demo_cmd(out: str, quick: bool, seed: int, runner: str, threads: int | None) -> None:
    """Synthetic corpus -> expert teachers -> extract -> distill (stage 1, stage 2) -> eval, one table.

    Example: mmkd demo --out runs/demo --quick
    """
    from mmkd.demo.report import claims_text, table_markdown
    from mmkd.demo.run import run_demo

    try:
        summary = run_demo(out, quick=quick, seed=seed, runner=runner, threads=threads)
    except (ValueError, FileExistsError) as e:
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
    click.echo(claims_text(summary["claims"]))
    click.echo("wall seconds: " + ", ".join(f"{k} {v}" for k, v in summary["wall_s"].items()))


def register(main: click.Group) -> None:
    """Add ``mmkd demo`` to the top-level group."""
    main.add_command(demo_cmd)
