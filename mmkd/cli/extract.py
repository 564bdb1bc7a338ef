"""``mmkd teachers`` (and, later, ``mmkd extract``): the extract stage's commands.

Only click is imported at module level; library imports live in the command bodies.
"""

from __future__ import annotations

import json

import click

PIPELINE_OPTION = click.option(
    "--pipeline", "pipeline", type=click.Path(dir_okay=False), default=None,
    help="pipelines file (default: $MMKD_PIPELINES, else ./pipelines.yaml).")


@click.command("teachers")
@PIPELINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="print one JSON list instead of a table.")
def teachers_cmd(pipeline: str | None, as_json: bool) -> None:
    """List the declared teachers and whether their weights are on this machine (nothing is downloaded)."""
    from mmkd.config import ConfigError, load_pipelines
    from mmkd.extract.teachers import TeacherError, list_teachers

    try:
        rows = list_teachers(load_pipelines(pipeline))
    except (ConfigError, TeacherError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no teachers declared (add entries under 'teachers:' in the pipelines file)")
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'teacher':<{width}}  {'loader':<12}  {'dim':>4}  {'weights':<9}  id")
    for r in rows:
        state = "available" if r["available"] else "MISSING"
        click.echo(f"{r['name']:<{width}}  {r['loader']:<12}  {r['dim'] or '?':>4}  {state:<9}  {r['weights']}")
    missing = [r for r in rows if not r["available"]]
    if missing:
        click.echo(f"\n{len(missing)} of {len(rows)} teachers lack weights here:")
        for r in missing:
            click.echo(f"  {r['name']}: needs {r['missing']}")


def register(main: click.Group) -> None:
    """Add the extract stage's commands to the ``mmkd`` group."""
    main.add_command(teachers_cmd)
