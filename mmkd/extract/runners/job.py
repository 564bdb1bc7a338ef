"""The extract job: one typed description of what ``mmkd extract`` runs.

A job comes either from CLI flags or from a named entry of the ``extract:`` section
of ``pipelines.yaml`` (``mmkd extract --run NAME``), with every flag given on the
command line overriding the entry (:func:`job_from_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmkd.errors import MMKDError
from mmkd.jsontypes import JSON, JSONDict

if TYPE_CHECKING:
    from mmkd.store import FeatureStore
    from mmkd.teachers import TeacherSpec

from mmkd.config import ConfigError, Pipelines, is_url, load_pipelines, merge_entry, resolve_path, section
from mmkd.data import open_dataset, resolve_data
from mmkd.data.views import DEFAULT_SCALE, ViewRecipe
from mmkd.teachers import get_teacher_spec
from mmkd.teachers.spec import teachers_in_scope

RUNNERS = ("ray", "local")
PRECISIONS = ("fp32", "fp16", "bf16")
DECODES = ("full", "reduced", "gpu")
RESIZES = ("own", "cascade")
DEVICES = ("auto", "cpu", "cuda")
ALL_TEACHERS = "all"


class ExtractError(MMKDError, RuntimeError):
    """An extract job cannot run as asked (bad job, dataset/store mismatch, worker failure)."""


@dataclass
class ExtractJob:
    """Everything one ``mmkd extract`` run needs.

    Attributes:
        data: a name from the ``datasets:`` section, a path (file, folder or shard
            pattern), or a dataset spec (mapping or :class:`mmkd.data.DatasetSpec`).
        teachers: teacher names from the ``teachers:`` section; ``["all"]`` means all of them.
        store: the feature store folder (created by the first extract into it).
        runner: ``ray`` (actor pool; local Ray or ``address``) or ``local`` (in-process).
        address: Ray cluster to join (default ``$RAY_ADDRESS``, else a local instance).
        batch_size: images per forward pass.
        precision: ``fp32``, ``fp16`` or ``bf16`` autocast; applied on CUDA only.
        workers: decode/preprocess threads per worker.
        limit: use only the first ``limit`` samples of the dataset (a trial run); the
            store records it, so later runs must use the same limit.
        overwrite: redo blocks that are already done.
        block_size: rows per store block (the unit of work); only used when the
            store is created, an existing store keeps its own.
        pipeline: the pipelines file (default: ``$MMKD_PIPELINES`` or ``./pipelines.yaml``).
        device: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``.
        actors: Ray actors per teacher (default: one per GPU, else one per CPU).
        max_restarts: times Ray restarts a dead actor (its block is then retried).
        on_bad_row: ``record`` (default): a dataset table row that is not UTF-8 or
            not valid JSON/CSV is skipped and recorded in ``<store>/_failures/dataset.parquet``;
            ``fail``: it stops the job, naming ``file:line``.
        decode: ``full`` (default: pixels exactly as the teacher's authors decode them)
            or ``reduced`` (JPEGs decoded at the smallest DCT scale that still covers
            the teacher's input size, then its own resize; several times faster on
            large JPEGs, see bench/decode_bench.py) or ``gpu`` (JPEG batches decoded and
            preprocessed on the teacher's GPU with nvJPEG; other images on the CPU).
            Recorded in the teacher's attrs.
        resize: ``own`` (default: each teacher resizes every decoded image itself; with ``decode``
            ``full`` the features equal a run of that teacher alone, bit for bit) or ``cascade``
            (teachers of a pass with the same resize mode resize from the largest input among them,
            one large resize per image instead of one per input size; pixels of the smaller inputs
            differ slightly; recorded per teacher as ``resize: cascade from <side>px``).
        liveness_timeout: Ray runner: seconds without a finished block and without an
            answer from any actor before the job fails (finished blocks stay; rerun resumes).
        fail_fast: with several teachers, a teacher that fails to load stops the job
            (default: the others go on, the failure is in the summary, a rerun does what
            is missing).
        gpu_memory: GiB of memory of one GPU, for placing the pass's teachers on workers
            (default: read from this machine's GPU when extracting on CUDA; no limit otherwise).
        views: also store, per teacher, the image features of this many augmented views per row
            (crop + flip drawn from a hash of (row, view): :mod:`mmkd.data.views`; docs/views.md).
        view_scale: ``[min, max]`` area fraction of a view's crop (default 0.35-1.0, as CLIP training).
        view_seed: seed of the views' hash.
        image_cache: also write the store's student image cache of this short side (``mmkd store images
            --size S``, :mod:`mmkd.store.images`) from the image bytes this run reads anyway: each block's
            cache file is written with the block, ``cache.json`` once every block has one (a local store only).
    """

    data: str | dict[str, Any] | Any
    teachers: list[str]
    store: str
    runner: str = "ray"
    address: str | None = None
    batch_size: int = 256
    precision: str = "fp16"
    workers: int = 4
    limit: int | None = None
    overwrite: bool = False
    block_size: int | None = None
    pipeline: str | None = None
    device: str = "auto"
    actors: int | None = None
    max_restarts: int = 3
    on_bad_row: str = "record"
    decode: str = "full"
    resize: str = "own"
    liveness_timeout: float = 300.0
    fail_fast: bool = False
    gpu_memory: float | None = None
    views: int | None = None
    view_scale: tuple[float, float] | list[float] | None = None
    view_seed: int = 0
    image_cache: int | None = None
    name: str | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        self.teachers = list(self.teachers or [])
        self.store = "" if self.store is None else str(self.store)
        _check_job(self)

    def to_dict(self) -> JSONDict:
        """A JSON-able copy (saved into the store with every run)."""
        out = dataclasses.asdict(self)
        if hasattr(self.data, "to_dict"):
            out["data"] = self.data.to_dict()
        return out


def _check_job(job: ExtractJob) -> None:
    where = f"extract job {job.name!r}" if job.name else "extract job"
    if not job.teachers:
        raise ExtractError(f"{where}: no teachers given; pass --teacher NAME (repeatable) or --all-teachers")
    if not job.store:
        raise ExtractError(f"{where}: no store path given; pass --store PATH")
    if not job.data:
        raise ExtractError(f"{where}: no dataset given; pass --data PATH_OR_NAME")
    if job.runner not in RUNNERS:
        raise ExtractError(f"{where}: runner {job.runner!r} not in {list(RUNNERS)}")
    if job.precision not in PRECISIONS:
        raise ExtractError(f"{where}: precision {job.precision!r} not in {list(PRECISIONS)}")
    if job.device not in DEVICES:
        raise ExtractError(f"{where}: device {job.device!r} not in {list(DEVICES)}")
    for key in ("batch_size", "workers", "limit", "block_size", "actors"):
        v = getattr(job, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ExtractError(f"{where}: {key} must be a positive integer, got {v!r}")
    if job.decode not in DECODES:
        raise ExtractError(f"{where}: decode {job.decode!r} not in {list(DECODES)}")
    if job.resize not in RESIZES:
        raise ExtractError(f"{where}: resize {job.resize!r} not in {list(RESIZES)}")
    if job.views is not None:
        if isinstance(job.views, bool) or not isinstance(job.views, int) or job.views <= 0:
            raise ExtractError(f"{where}: views must be a positive integer (views per row), got {job.views!r}")
        if job.decode == "gpu":
            raise ExtractError(f"{where}: views with decode 'gpu' is not supported (views are cropped on the CPU); "
                               "use --decode reduced or full")
        try:
            view_recipe(job)
        except ValueError as e:
            raise ExtractError(f"{where}: {e}") from None
    elif job.view_scale is not None:
        raise ExtractError(f"{where}: view_scale {job.view_scale!r} given without views; pass --views K too")
    if job.image_cache is not None:
        if isinstance(job.image_cache, bool) or not isinstance(job.image_cache, int) or job.image_cache < 16:
            raise ExtractError(f"{where}: image_cache must be the cache's short side in pixels (>= 16, e.g. 256 "
                               f"for a 224 px student), got {job.image_cache!r}")
        if is_url(job.store):
            raise ExtractError(f"{where}: image_cache: the student image cache is written beside a store on local "
                               f"disk only, and store {job.store!r} is on object storage; drop --image-cache (distill "
                               "then reads the originals, with read-ahead)")
    if job.on_bad_row not in ("record", "fail"):
        raise ExtractError(f"{where}: on_bad_row {job.on_bad_row!r} not in ['record', 'fail']")
    if not isinstance(job.max_restarts, int) or job.max_restarts < 0:
        raise ExtractError(f"{where}: max_restarts must be an integer >= 0, got {job.max_restarts!r}")
    if not isinstance(job.fail_fast, bool):
        raise ExtractError(f"{where}: fail_fast must be true or false, got {job.fail_fast!r}")
    if job.gpu_memory is not None and (isinstance(job.gpu_memory, bool) or not isinstance(job.gpu_memory, int | float)
                                       or not job.gpu_memory > 0):
        raise ExtractError(f"{where}: gpu_memory must be a number of GiB > 0, got {job.gpu_memory!r}")
    if isinstance(job.liveness_timeout, bool) or not isinstance(job.liveness_timeout, int | float) \
            or not job.liveness_timeout > 0:
        raise ExtractError(f"{where}: liveness_timeout must be a number of seconds > 0, got {job.liveness_timeout!r}")


def views_mismatch(store: FeatureStore, teacher: str, want: ViewRecipe | None) -> str | None:
    """Why resuming ``teacher`` with views ``want`` would mix blocks of two view recipes (``None``: it would not)."""
    done = store.done_blocks(teacher) if teacher in store.teachers else set()
    if not done:
        return None
    stored = store.attrs(teacher).get("views")
    had = ViewRecipe.from_attrs(stored) if stored else None
    if (had is None and want is None) or (had is not None and want is not None and had.same_views(want)):
        return None
    was = f"with --views {had.k} (scale {list(had.scale)}, seed {had.seed})" if had else "without --views"
    now = f"--views {want.k} (scale {list(want.scale)}, seed {want.seed})" if want else "no --views"
    return (f"teacher {teacher!r} in store {store.path} has {len(done)} blocks done {was}, but this run asks for "
            f"{now}; pass --overwrite to redo every block this way, rerun with the store's view settings, or use a "
            "new store")


def view_recipe(job: ExtractJob) -> ViewRecipe | None:
    """The job's view recipe (``None`` without ``views``)."""
    if not job.views:
        return None
    scale = tuple(job.view_scale) if job.view_scale is not None else DEFAULT_SCALE
    return ViewRecipe(k=int(job.views), scale=scale, seed=int(job.view_seed or 0))


JOB_KEYS = tuple(f.name for f in dataclasses.fields(ExtractJob) if f.name not in ("pipeline", "name"))


def job_from_config(pipelines: Pipelines | None = None, run: str | None = None, **overrides: JSON) -> ExtractJob:
    """Build a job from a named ``extract:`` entry and/or explicit values.

    Args:
        pipelines: a loaded pipelines file (:func:`mmkd.config.load_pipelines`); ``None``
            loads the one named by ``overrides["pipeline"]`` (or the default).
        run: name of an entry in the ``extract:`` section, or ``None``.
        **overrides: :class:`ExtractJob` fields; ``None`` values are ignored, so CLI
            flags left unset keep the entry's value.

    Raises:
        ExtractError: unknown run name (the message lists the valid ones), unknown
            keys in the entry, or an invalid resulting job.
    """
    pipelines = load_pipelines(overrides.get("pipeline")) if pipelines is None else Pipelines.of(pipelines)
    try:
        values = merge_entry(pipelines, "extract", run, overrides, allowed=JOB_KEYS + ("pipeline",),
                             path_keys=("store",), what="extract run")
    except ConfigError as e:
        raise ExtractError(str(e)) from e
    if run is not None and isinstance(values.get("data"), (str, dict)) and "data" not in overrides:
        values["data"] = _entry_data(pipelines, run, values["data"])
    values.setdefault("pipeline", None if pipelines.path is None else str(pipelines.path))
    values.setdefault("name", run)
    for key in ("data", "teachers", "store"):
        values.setdefault(key, None)
    try:
        return ExtractJob(**values)
    except TypeError as e:
        raise ExtractError(f"bad extract job values {sorted(values)}: {e}") from e


def _entry_data(pipelines: Pipelines, run: str, value: JSON) -> JSON:
    """An entry's ``data:``: a declared name stays a name; paths resolve against the declaring file."""
    if isinstance(value, str):
        return value if value in section(pipelines, "datasets") else str(resolve_path(pipelines, value, section="extract", entry=run))
    return resolve_data(value, pipelines, base=resolve_path(pipelines, ".", section="extract", entry=run))


def resolve_teachers(job: ExtractJob, pipelines: Pipelines) -> list[TeacherSpec]:
    """The job's teacher specs, in the order given (``all`` = every declared teacher).

    Raises:
        UnknownTeacherError: a name is not declared (the message lists the valid names).
    """
    if ALL_TEACHERS in job.teachers:
        specs = list(teachers_in_scope(pipelines).values())  # the user's own teachers, else every shipped one
        if not specs:
            raise ExtractError(f"--all-teachers: no teachers declared in {Pipelines.of(pipelines).where}")
        return specs
    return [get_teacher_spec(name, pipelines) for name in dict.fromkeys(job.teachers)]


def resolve_dataset(job: ExtractJob, pipelines: Pipelines):
    """Open the job's dataset (a ``datasets:`` name, a path, or a spec) with the job's ``on_bad_row``.

    Raises:
        DatasetError: the dataset cannot be opened, or ``data`` names nothing (the message says why).
    """
    ds = open_dataset(resolve_data(job.data, pipelines))
    if hasattr(ds, "on_bad_row"):  # a run policy, not part of the dataset spec
        ds.on_bad_row = job.on_bad_row
    return ds
