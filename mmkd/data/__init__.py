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

from mmkd.data.images import DEFAULT_MAX_PIXELS, REASONS, BadSample, check_caption, decode_image
from mmkd.data.readers import (
    FORMATS,
    REF_SEP,
    CsvDataset,
    Dataset,
    DatasetError,
    JsonlDataset,
    MmkdClipDataset,
    ParquetDataset,
    WebDataset,
    datasets_from_config,
    detect_format,
    get_dataset,
    open_dataset,
    resolve_data,
)
from mmkd.data.spec import DatasetSpec
from mmkd.data.sample import Sample

__all__ = [
    "DEFAULT_MAX_PIXELS", "FORMATS", "REASONS", "REF_SEP", "BadSample", "CsvDataset", "Dataset", "DatasetError", "DatasetSpec",
    "JsonlDataset", "MmkdClipDataset", "ParquetDataset", "Sample", "WebDataset", "check_caption",
    "datasets_from_config", "decode_image", "detect_format", "get_dataset", "open_dataset", "resolve_data",
]
