"""``mmkd teachers`` and ``mmkd extract``: the extract stage's commands.

Only click is imported at module level; library imports live in the command bodies.
"""

from __future__ import annotations

import json

import click

from mmkd.cli.paths import PathOrURL
from mmkd.errors import MMKDError

PIPELINE_OPTION = click.option(
    "--pipeline", "pipeline", type=click.Path(dir_okay=False), default=None,
    help="pipelines file (default: $MMKD_PIPELINES, else ./pipelines.yaml).")


@click.command("teachers")
@PIPELINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="print one JSON list instead of a table.")
@click.option("--parity", "parity_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="compare each teacher in DIR (<teacher>/{checkpoint.*, arch.json, tokenizer, reference.npz}) "
                   "with its upstream reference embeddings; exit 1 if any cosine < 0.9999.")
@click.option("--teacher", "names", multiple=True, metavar="NAME",
              help="only this teacher (repeatable); --check/--parity default: your file's teachers, else all.")
@click.option("--check", "check", is_flag=True,
              help="build every architecture offline without weights; report missing config, tokenizer, weights.")
def teachers_cmd(pipeline: str | None, as_json: bool, parity_dir: str | None, check: bool,
                 names: tuple[str, ...]) -> None:
    """List the declared teachers and whether their weights are on this machine (nothing is downloaded).

    \b
    mmkd teachers --check                       # architectures build offline? what is missing?
    mmkd teachers --parity ../shared/fixtures/teacher-parity
    """
    from mmkd.config import load_pipelines
    from mmkd.teachers import get_teacher_spec, list_teachers

    if parity_dir and check:
        raise click.UsageError("give --parity DIR or --check, not both")
    try:
        if parity_dir or check:  # one library report each; exit 1 when a teacher fails it
            from mmkd.teachers.archs import check_teachers, format_check
            from mmkd.teachers.parity import format_parity, run_parity
            from mmkd.teachers.spec import teachers_in_scope

            specs = teachers_in_scope(load_pipelines(pipeline), names)
            results = run_parity(parity_dir, specs) if parity_dir else check_teachers(specs)
            click.echo(json.dumps([r.to_dict() for r in results], indent=2) if as_json
                       else format_parity(results) if parity_dir else format_check(results))
            # --check: exit 1 only for what is checkable offline (an architecture from the hub is not)
            if not all(r.passed if parity_dir else (r.arch_ok or r.arch_on_hub) for r in results):
                raise SystemExit(1)
            return
        cfg = load_pipelines(pipeline)
        for n in names:
            get_teacher_spec(n, cfg)  # an unknown name: the registry's error, listing the valid ones
        rows = [r for r in list_teachers(cfg) if not names or r["name"] in names]
    except MMKDError as e:
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


@click.command("extract")
@click.option("--run", "run", default=None, metavar="NAME",
              help="a named job from the 'extract:' section of the pipelines file; flags override its values.")
@click.option("--teacher", "teachers", multiple=True, metavar="NAME", help="teacher to run (repeatable).")
@click.option("--all-teachers", is_flag=True, default=None, help="run every teacher declared in the pipelines file.")
@click.option("--data", "data", default=None, metavar="PATH_OR_NAME",
              help="image-caption data: a name from 'datasets:', or a path (meta.jsonl folder, jsonl/csv, parquet, "
                   "tar shards).")
@click.option("--store", default=None, type=PathOrURL(file_okay=False),
              help="feature store folder or object-storage URL (s3://bucket/prefix; created if absent).")
@click.option("--runner", type=click.Choice(["ray", "local"]), default=None, help="executor (default: ray).")
@click.option("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="images per forward pass (default 256).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="autocast precision on GPU (default fp16; CPU always runs fp32).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="decode threads per worker (default 4).")
@click.option("--decode", type=click.Choice(["full", "reduced", "gpu"]), default=None,
              help="full (default): images decoded as the teachers' authors do; reduced: JPEGs decoded at the "
                   "smallest DCT scale covering the teacher's input size (several times faster on large JPEGs); "
                   "gpu: JPEG batches decoded and preprocessed on the teacher's GPU (nvJPEG). Pixels differ "
                   "slightly from full; the mode is recorded in the store.")
@click.option("--resize", type=click.Choice(["own", "cascade"]), default=None,
              help="own (default): each teacher resizes every decoded image itself (features equal a run of that "
                   "teacher alone); cascade: teachers with the same resize mode resize from the largest input "
                   "of the pass (one large resize per image; pixels of smaller inputs differ slightly; recorded "
                   "per teacher).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N samples (a trial run).")
@click.option("--overwrite", is_flag=True, default=None, help="redo blocks that are already done.")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="rows per store block, the unit of work (new stores only; default 2048).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="where models run.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Ray actors (default: one per GPU, else one per CPU).")
@click.option("--on-bad-row", "on_bad_row", type=click.Choice(["record", "fail"]), default=None,
              help="a dataset row that is not UTF-8 or not valid JSON/CSV: 'record' (default) skips it and lists "
                   "it in <store>/_failures/dataset.parquet and the summary; 'fail' stops with its file:line.")
@click.option("--liveness-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Ray runner: fail when no block finishes and no worker answers for SECONDS (default 300); "
                   "finished blocks stay in the store and a rerun resumes.")
@click.option("--fail-fast", "fail_fast", is_flag=True, default=None,
              help="several teachers: stop when one fails to load (default: the others go on; the summary names "
                   "the failure and a rerun does what is missing).")
@click.option("--gpu-memory", "gpu_memory", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GIB",
              help="memory of one GPU, for placing teachers that share it (default: read from this machine's GPU).")
@click.option("--views", "views", type=click.IntRange(min=1), default=None, metavar="K",
              help="also store each teacher's image features of K augmented views per row (crop + flip drawn "
                   "from a hash of (row, view); distill --views trains on them; docs/views.md). Storage x(1+K).")
@click.option("--view-scale", "view_scale", type=click.FloatRange(min=0, max=1, min_open=True), nargs=2,
              default=None, metavar="MIN MAX", help="--views: area fraction of a view's crop (default 0.35 1.0).")
@click.option("--view-seed", "view_seed", type=int, default=None, help="--views: seed of the views' hash (default 0).")
@click.option("--image-cache", "image_cache", type=click.IntRange(min=16), default=None, metavar="S",
              help="also write the store's student image cache of short side S (as `mmkd store images --size S`) "
                   "from the image bytes this run reads anyway (e.g. 256 for a 224 px student; local stores).")
@PIPELINE_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="no progress bar.")
def extract_cmd(run: str | None, teachers: tuple[str, ...], all_teachers: bool | None, pipeline: str | None,
                as_json: bool, no_progress: bool, **flags: object) -> None:
    """Run teachers over a dataset and write their features into a feature store.

    \b
    mmkd extract --teacher biomedclip --data mmkd-clip-demo --store stores/demo
    mmkd extract --all-teachers --data /data/roco/train.jsonl --store stores/roco --runner local
    mmkd extract --teacher a --teacher b --data d.jsonl --store s   # one pass: each image decoded once
    mmkd extract --run mmkd-clip-demo-all --limit 4 --store /tmp/trial
    """
    from mmkd.extract import job_from_config, run_extract

    if teachers and all_teachers:
        raise click.UsageError("give --teacher NAME (repeatable) or --all-teachers, not both")
    overrides = dict(flags, pipeline=pipeline,
                     teachers=["all"] if all_teachers else list(teachers) or None)
    try:
        job = job_from_config(None, run, **overrides)
        summary = run_extract(job, progress=not (no_progress or as_json))
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.format())
    if summary.failed_teachers:
        raise click.ClickException(f"{len(summary.failed_teachers)} teacher(s) failed to load: "
                                   f"{', '.join(summary.failed_teachers)}; the others are done; fix the teacher and "
                                   "rerun the same command to do only what is missing")


def register(main: click.Group) -> None:
    """Add the extract stage's commands to the ``mmkd`` group."""
    main.add_command(teachers_cmd)
    main.add_command(extract_cmd)
