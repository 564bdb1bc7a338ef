"""mmkd.data: image-caption datasets, the ground floor every stage reads through.

Readers (official MMKD-CLIP ``meta.jsonl``, JSONL/CSV + image folder, Parquet with
image bytes, webdataset shards), image decoding with bad-sample reasons, caption
checks, dataset specs and fingerprints. Nothing here imports a stage
(``extract``, ``distill``, ``eval``) or the store.

Example::

    from mmkd.data import open_dataset, decode_image
    ds = open_dataset("../shared/fixtures/mmkd-clip-demo")
    for sample in ds.samples():
        image = decode_image(ds.read_image_bytes(sample.image))
"""

import importlib
from typing import Any

from mmkd.data.errors import DatasetError
from mmkd.data.sample import Sample
from mmkd.data.spec import DatasetSpec

# Readers and decoding (PIL, numpy) load on first use, so that `import mmkd.store`, which
# needs only `Sample`, stays light. name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(("DEFAULT_MAX_PIXELS", "REASONS", "BadSample", "check_caption", "decode_image"),
                    "mmkd.data.images"),
    **dict.fromkeys(("FORMATS", "REF_SEP", "CsvDataset", "Dataset", "JsonlDataset", "MmkdClipDataset",
                     "ParquetDataset", "WebDataset", "datasets_from_config", "detect_format", "get_dataset",
                     "open_dataset", "resolve_data"), "mmkd.data.readers"),
}

__all__ = ["DatasetError", "DatasetSpec", "Sample", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
