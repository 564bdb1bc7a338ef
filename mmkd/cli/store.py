"""``mmkd store``: inspect, validate, import and synthesise feature stores."""

from __future__ import annotations

import json
import sys

import click

from mmkd.cli.paths import PathOrURL
from mmkd.errors import MMKDError


@click.group("store")
def store_group() -> None:
    """Inspect, validate and import feature stores."""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _open(path: str):
    from mmkd.store import FeatureStore

    try:
        return FeatureStore.open(path, mode="r")
    except MMKDError as e:  # ClickException exits 1, as an unsound store does
        raise click.ClickException(str(e)) from e


@store_group.command("info")
@click.argument("path", type=PathOrURL(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(path: str, as_json: bool) -> None:
    """What the store at PATH holds: samples, teachers, dims, progress, size."""
    from mmkd.store import StoreError, store_info

    try:
        info = store_info(_open(path))
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        from mmkd.store.projection import list_projections

        from mmkd.store.trust import trust_info

        for t, d in info["teachers"].items():
            d["projections"] = list_projections(_open(path), t)
            d["trust"] = trust_info(_open(path), t)
        click.echo(json.dumps(info, indent=2))
        return
    ds = info["dataset"]
    click.echo(f"store      {info['path']}  (format v{info['format_version']}, created {info['created_at']})")
    click.echo(f"samples    {info['num_samples']}  in {info['num_blocks']} blocks of {info['block_size']}")
    from mmkd.store.manifest import short_fingerprint

    click.echo(f"dataset    {ds.get('uri') or '-'}  fingerprint {short_fingerprint(ds.get('fingerprint') or '') or '-'}")
    spec = ds.get("spec") or {}
    if spec:
        parts = [f"{k}={spec[k]}" for k in ("format", "root") if spec.get(k)]
        parts += [f"{k}={v}" for k, v in (spec.get("fields") or {}).items()]
        click.echo(f"           {'  '.join(parts) or 'defaults'}  (reopened from here by distill and eval)")
    click.echo(f"size       {_human(info['size_bytes'])}")
    if info.get("dataset_bad_rows"):
        click.echo(f"bad rows   {info['dataset_bad_rows']} dataset row(s) unreadable, not in the index "
                   f"(_failures/dataset.parquet), e.g.:")
        for r in info["dataset_bad_rows_sample"]:
            click.echo(f"             {r['file']}:{r['line']} {r['reason']}: {r['detail'][:100]}")
    if not info["teachers"]:
        click.echo("teachers   none yet")
        return
    click.echo(f"{'teacher':<24}{'dim':>6} {'dtype':>8} {'blocks':>13} {'valid rows':>12} {'failures':>9}")
    for t, d in info["teachers"].items():
        blocks = f"{d['blocks_done']}/{d['blocks_total']}"
        click.echo(f"{t:<24}{d['dim']:>6} {d['dtype']:>8} {blocks:>13} {d['valid_rows']:>12} {d['failures']:>9}")
        _echo_projections(info["path"], t)


def _echo_projections(path: str, teacher: str) -> None:
    from mmkd.store.projection import list_projections
    from mmkd.store.trust import trust_info

    projs = list_projections(_open(path), teacher)
    if projs:
        click.echo("  projections  " + ", ".join(f"{p['method']}-{p['dim']} (R² {p['r2']:.4f}, {p['fit_rows']} rows)"
                                               for p in projs))
    tr = trust_info(_open(path), teacher)
    if tr:
        click.echo(f"  trust        {tr['method']} >= {tr['threshold']:g}: {tr['trusted']} of {tr['scored']} valid "
                   f"rows trusted ({100 * tr['coverage']:.1f}%, reference {tr['reference']})")


@store_group.command("validate")
@click.argument("path", type=PathOrURL(exists=True, file_okay=False))
@click.option("--deep", is_flag=True,
              help="Also read and decode every feature chunk and check its values (NaN/Inf, norms); "
                   "slower: reads the whole store.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (same exit codes).")
def validate_cmd(path: str, deep: bool, as_json: bool) -> None:
    """Check that the store at PATH is whole and sound; list every problem found.

    \b
    Exit codes:
      0  sound: every check passed and at least one teacher is in the store
      1  unsound: at least one problem (listed), or PATH is not a readable store
      3  empty: no problem, but no teacher was ever added (run `mmkd extract`)
    The default check reads the index, markers and `valid` chunks and checks the
    size of every feature chunk file; --deep also reads every feature chunk.
    """
    from mmkd.store.validate import EXIT_CODES, validate_store

    report = validate_store(_open(path), deep=deep)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        sys.exit(report.exit_code)
    for p in report.problems:
        click.echo(f"PROBLEM [{p.kind}]: {p.message}", err=True)
    checked = (f"{report.chunks_checked} chunk files sized, {report.chunks_read} chunks read, "
               f"{report.seconds:.2f}s{', deep' if deep else ''}")
    unread = f"{report.not_read}; " if report.not_read else ""
    if report.status == "unsound":
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items()))
        click.echo(f"{path}: UNSOUND, {len(report.problems)} problem(s) ({kinds}); {unread}{checked}", err=True)
    elif report.status == "empty":
        click.echo(f"{path}: EMPTY: the index is sound but no teacher was added (the first extract never ran "
                   f"or was killed before adding one); run `mmkd extract --store {path}`; {unread}{checked}", err=True)
    else:
        click.echo(f"{path}: OK ({unread}{len(report.teachers)} teacher(s); {checked})")
    sys.exit(EXIT_CODES[report.status])


@store_group.command("import-mmkd")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--with-projected", is_flag=True, help="Also import clips_project_output.pt as <teacher>_proj512.")
@click.option("--block-size", type=int, default=2048, show_default=True, help="Rows per block (chunk).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at DST.")
def import_cmd(src: str, dst: str, with_projected: bool, block_size: int, overwrite: bool) -> None:
    """Convert the official MMKD-CLIP layout at SRC (meta.jsonl + .pt files) into a store at DST."""
    from mmkd.store import import_mmkd

    try:
        store = import_mmkd(src, dst, with_projected=with_projected, block_size=block_size, overwrite=overwrite)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"imported {store.n} samples, teachers {', '.join(store.teachers)} -> {dst}")


@store_group.command("synth")
@click.argument("path", type=click.Path())
@click.option("--rows", type=int, default=10_000, show_default=True, help="Number of synthetic samples.")
@click.option("--teacher", "teachers", multiple=True, default=("teacher_a:512", "teacher_b:768"), show_default=True,
              help="NAME:DIM, repeatable.")
@click.option("--block-size", type=int, default=2048, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def synth_cmd(path: str, rows: int, teachers: tuple[str, ...], block_size: int, seed: int, overwrite: bool) -> None:
    """Create a store at PATH with random unit-norm features (for trials and benchmarks)."""
    from mmkd.store.synthetic import make_synthetic_store

    spec = {}
    for t in teachers:
        name, _, dim = t.partition(":")
        if not dim.isdigit():
            raise click.BadParameter(f"{t!r}: expected NAME:DIM, e.g. biomedclip:512", param_hint="--teacher")
        spec[name] = int(dim)
    try:
        make_synthetic_store(path, rows, spec, block_size=block_size, seed=seed, overwrite=overwrite)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"created synthetic store {path}: {rows} rows, teachers {spec}")


@store_group.command("project")
@click.argument("path", type=PathOrURL(exists=True, file_okay=False))
@click.option("--teacher", "teachers", multiple=True, required=True, metavar="NAME",
              help="Teacher to fit (repeatable).")
@click.option("--dim", type=click.IntRange(min=1), default=512, show_default=True, help="Output dim (the student's).")
@click.option("--method", type=click.Choice(["ae", "pca", "random"]), default="pca", show_default=True,
              help="ae: linear autoencoder as the official; pca: its closed form; random: semi-orthogonal.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="ae: passes over the store.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="ae: Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Fit again over an existing projection.")
def project_cmd(path: str, teachers: tuple[str, ...], dim: int, method: str, epochs: int, lr: float, seed: int,
                overwrite: bool) -> None:
    """Fit per-teacher linear maps to DIM on the store's own features; saved in the store (read block by block)."""
    from mmkd.store.projection import check_request, fit_projection

    store = _open(path)
    try:
        for t in teachers:
            check_request(store, t, dim, method, overwrite)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    for t in teachers:
        try:
            meta = fit_projection(store, t, dim, method, epochs=epochs, lr=lr, seed=seed, overwrite=overwrite)
        except MMKDError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"{t}: {method}-{dim} from {meta['fit_rows']} rows, R² {meta['r2']:.4f} (image "
                   f"{meta['r2_image']:.4f}, text {meta['r2_text']:.4f}) -> {meta['path']}")


@store_group.command("trust")
@click.argument("path", type=PathOrURL(exists=True, file_okay=False))
@click.option("--teacher", "teachers", multiple=True, metavar="NAME",
              help="Teacher to score (repeatable; default: every teacher in the store).")
@click.option("--method", type=click.Choice(["pair-rank", "margin"]), default="pair-rank", show_default=True,
              help="pair-rank: 1 - rank of the paired caption among reference captions / their number; "
                   "margin: paired cosine minus the best other reference caption's.")
@click.option("--threshold", type=float, help="Least trust of a trusted row (default 0.9 pair-rank, 0.0 margin).")
@click.option("--reference", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Reference captions (drawn once, seeded, from the teacher's valid rows).")
@click.option("--seed", type=int, default=0, show_default=True)
def trust_cmd(path: str, teachers: tuple[str, ...], method: str, threshold: float | None, reference: int,
              seed: int) -> None:
    """Score how well each teacher knows each sample, in its own embedding space; saved in the store.

    Writes <PATH>/trust/<teacher>.zarr (trust float16, trusted bool); `valid` is
    untouched. Distill uses it with --teacher-mask trusted / --teacher-weight trust.
    """
    from mmkd.store.trust import compute_trust

    store = _open(path)
    names = list(teachers) or store.teachers
    unknown = [t for t in names if t not in store.teachers]
    if unknown:
        raise click.ClickException(f"store {path} holds no teacher {unknown}; it holds {store.teachers}")
    for t in names:
        try:
            meta = compute_trust(store, t, method, threshold, reference=reference, seed=seed)
        except MMKDError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"{t}: {method} >= {meta['threshold']:g}: {meta['trusted']} of {meta['scored']} valid rows "
                   f"trusted ({100 * meta['coverage']:.1f}%) -> {meta['path']}")
        if meta["scored"] and not meta["trusted"]:
            click.echo(f"WARNING: teacher {t!r}: every row untrusted (share kept 0.0%); lower --threshold or try "
                       f"another --method", err=True)


def register(main: click.Group) -> None:
    main.add_command(store_group)


@store_group.command("images")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True,
              help="Short side of the cached images (at least the students' input size: 256 serves 224 px).")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality.")
@click.option("--data", metavar="PATH", help="Where the store's dataset is now, if it moved.")
def images_cmd(path: str, size: int, quality: int, data: str | None) -> None:
    """Write every row's image at a short side of SIZE beside the store, for distill to read.

    Writes <PATH>/image_cache/s<SIZE>/ (one Parquet file of JPEG bytes, row, id and the
    source's sha256 and size per store block; cache.json last). Rerunning finishes an
    interrupted write. Distill reads it when the student's size fits (docs/distill-data.md).
    """
    from tqdm import tqdm

    from mmkd.store.images import write_image_cache

    store = _open(path)
    bar = tqdm(total=store.n, unit="img", desc=f"image cache s{size}", disable=None)

    def advance(done: int) -> None:
        bar.update(done - bar.n)

    try:
        out = write_image_cache(store, size, quality=quality, data=data, progress=advance)
    except MMKDError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bar.close()
    meta = json.loads((out / "cache.json").read_text())
    total = sum(f.stat().st_size for f in out.glob("*.parquet"))
    click.echo(f"image cache {out}: {meta['rows']} rows at short side {size} ({meta['failed']} unreadable), "
               f"{_human(total)}")
