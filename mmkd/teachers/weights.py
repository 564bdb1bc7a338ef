"""Where a teacher's weights live, whether they are on this machine, and the error when not.

Nothing here downloads: hub ids are looked up in the local Hugging Face cache only.
"""

from __future__ import annotations

import functools
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmkd.teachers.spec import TeacherError, TeacherSpec

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                   "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# One HEAD to the hub before downloading: an unreachable hub is then one error in seconds, not
# huggingface_hub's five retries per file (about a minute and ~45 log lines for one teacher).
HUB_PROBE_TIMEOUT_S = 5.0
# Names one custom checkpoint is published under; a spec naming one also finds the others in the same folder.
CHECKPOINT_ALIASES: dict[str, tuple[str, ...]] = {
    # UniMed-CLIP README: unimed_clip_vit_b16.pt; Hugging Face hub / public demo: unimed-clip-vit-b16.pt
    "unimed_clip": ("unimed_clip_vit_b16.pt", "unimed-clip-vit-b16.pt"),
}


class WeightsNotFoundError(TeacherError, FileNotFoundError):
    """A teacher's weights are not on this machine (and could not be fetched)."""


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a teacher's files are present locally.

    Attributes:
        available: every file the loader needs was found.
        where: the local path found, or the path where files are expected.
        missing: what is absent, in words (empty when available).
    """

    available: bool
    where: str
    missing: str = ""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be reached ('' when it answers), asked once per process.

    One HEAD to the endpoint huggingface_hub uses (``HF_ENDPOINT`` honoured; proxies from the
    environment, as huggingface_hub), with a short timeout. Any HTTP answer counts as reachable:
    the download then reports what the hub said.
    """
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return ""
    except (OSError, ValueError) as e:  # URLError, a timeout, a refused connection, a malformed HF_ENDPOINT
        why = getattr(e, "reason", None) or e
        return f"{endpoint} gave no answer: {why}"
    return ""


def hub_download_impossible(spec: TeacherSpec) -> bool:
    """True when ``spec``'s absent files cannot be downloaded: offline, not a hub id, or the hub unreachable."""
    return hub_offline() or spec.weights_kind not in ("hf-hub", "hub-id") or bool(hub_unreachable())


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in effect (``HF_HUB_CACHE``/``HF_HOME`` honoured)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def repo_cache_path(repo: str) -> str:
    """The cache folder a hub repo downloads into."""
    return str(Path(hub_cache_dir()) / ("models--" + repo.replace("/", "--")))


def cached_file(repo: str, filename: str, revision: str | None = None) -> str | None:
    """Path of ``filename`` of ``repo`` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(), revision=revision)
    return found if isinstance(found, str) else None


def cache_revision(path: str | None) -> str | None:
    """The commit hash in a hub cache path (``.../snapshots/<commit>/file``), if any."""
    parts = Path(path).parts if path else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _first_cached(repo: str, files: tuple[str, ...], revision: str | None = None) -> str | None:
    return next((p for f in files if (p := cached_file(repo, f, revision))), None)


def _hf_text_deps(config_path: str | None) -> list[str]:
    """Hub repos an open_clip config needs besides itself (HF text tower, HF tokenizer)."""
    if not config_path or not Path(config_path).is_file():
        return []
    text = json.loads(Path(config_path).read_text()).get("model_cfg", {}).get("text_cfg", {})
    return sorted({r for r in (text.get("hf_model_name"), text.get("hf_tokenizer_name")) if r})


def _tokenizer_status(tok: str | None) -> str:
    if not tok:
        return ""
    if Path(tok).is_dir():
        return "" if any((Path(tok) / f).is_file() for f in TOKENIZER_FILES) else f"tokenizer files in {tok}"
    if "/" in tok and not tok.startswith((".", "/", "~")):
        return "" if _first_cached(tok, TOKENIZER_FILES) else f"tokenizer {tok} in {repo_cache_path(tok)}"
    return f"tokenizer folder {tok}"


def resolve_checkpoint(spec: TeacherSpec) -> str | None:
    """The checkpoint file a ``file`` spec points at, or its published alias beside it; None when absent.

    UniMed-CLIP's checkpoint is published as ``unimed_clip_vit_b16.pt`` (README) and
    ``unimed-clip-vit-b16.pt`` (hub): either name is found whichever the spec gives.
    """
    path = Path(spec.weights)
    if path.is_file():
        return str(path)
    names = CHECKPOINT_ALIASES.get(spec.arch or "", ())
    if path.name in names:
        return next((str(p) for n in names if (p := path.with_name(n)).is_file()), None)
    return None


def checkpoint_missing(spec: TeacherSpec) -> str:
    """'' when a checkpoint-file spec's file (or a published alias) is here, else what is missing."""
    if resolve_checkpoint(spec):
        return ""
    names = CHECKPOINT_ALIASES.get(spec.arch or "", ())
    name = Path(spec.weights).name
    alias = f" (or {' / '.join(n for n in names if n != name)} beside it)" if name in names else ""
    return f"checkpoint file {spec.weights}{alias}"


def weights_status(spec: TeacherSpec) -> WeightsStatus:
    """Check, without downloading, whether ``spec``'s weights (and tokenizer) are here."""
    kind, w = spec.weights_kind, spec.weights
    declared = spec.model_config.get("model_cfg") if spec.loader == "open_clip" else None
    if kind == "hf-hub" and declared:  # architecture in pipelines.yaml: weights + tokenizer from the cache
        repo = w[len("hf-hub:"):]
        missing = [] if _first_cached(repo, OPEN_CLIP_WEIGHT_FILES) else [f"{w} weights in {repo_cache_path(repo)}"]
        tok = declared.get("text_cfg", {}).get("hf_tokenizer_name")
        if tok and not _first_cached(tok, TOKENIZER_FILES):
            missing.append(f"tokenizer {tok} in {repo_cache_path(tok)}")
        where = repo_cache_path(repo)
    elif kind == "hf-hub":
        repo = w[len("hf-hub:"):]
        config = cached_file(repo, "open_clip_config.json")
        missing = [] if config and _first_cached(repo, OPEN_CLIP_WEIGHT_FILES) else [f"{w} in {repo_cache_path(repo)}"]
        missing += [f"{dep} (config + tokenizer) in {repo_cache_path(dep)}" for dep in _hf_text_deps(config)
                    if not cached_file(dep, "config.json") and not _first_cached(dep, TOKENIZER_FILES)]
        where = repo_cache_path(repo)
    elif kind == "hub-id":
        ok = cached_file(w, "config.json", spec.revision) and _first_cached(w, HF_WEIGHT_FILES, spec.revision)
        missing, where = ([] if ok else [f"{w} in {repo_cache_path(w)}"]), repo_cache_path(w)
    elif kind in ("local-dir", "dir"):
        folder = Path(w[len("local-dir:"):] if kind == "local-dir" else w)
        need = "open_clip_config.json" if kind == "local-dir" else "config.json"
        has_weights = any(p.suffix in CHECKPOINT_SUFFIXES or p.name.endswith(".index.json")
                          for p in folder.glob("*")) if folder.is_dir() else False
        ok = (folder / need).is_file() and has_weights
        missing, where = ([] if ok else [f"{need} + weights file in {folder}"]), str(folder)
    else:
        found = resolve_checkpoint(spec)
        missing, where = ([] if found else [checkpoint_missing(spec)]), found or w
    if spec.loader == "custom" and (tok := _tokenizer_status(spec.tokenizer)):
        missing.append(tok)
    return WeightsStatus(available=not missing, where=where, missing="; ".join(missing))


def missing_weights_error(spec: TeacherSpec, cause: BaseException | None = None) -> WeightsNotFoundError:
    """The error for absent weights: names the teacher, the id, and where to put the files."""
    status = weights_status(spec)
    kind = spec.weights_kind
    if kind in ("hf-hub", "hub-id"):
        repo = spec.weights.removeprefix("hf-hub:")
        how = (f"download them on a machine with internet (`hf download {repo}`"
               + (f" --revision {spec.revision}" if spec.revision else "") + f") and copy {repo_cache_path(repo)} "
               f"into {hub_cache_dir()} here (HF_HUB_CACHE), or point this teacher's weights: at a local folder")
        state = ("the hub is offline (HF_HUB_OFFLINE)" if hub_offline() else
                 f"the hub could not be reached ({hub_unreachable() or 'the download failed'}; set HF_HUB_OFFLINE=1 "
                 "not to try it)")
    else:
        how = f"put the files at {status.where}" + (f" ({spec.source})" if spec.source else "")
        state = "they are not on this machine"
    needed = status.missing or (str(cause) if cause else "weights")
    return WeightsNotFoundError(
        f"teacher {spec.name!r}: weights {spec.weights!r} are not available and {state}. Missing: {needed}. "
        f"To fix: {how}; or set MMKD_WEIGHTS / edit the pipelines file.")
