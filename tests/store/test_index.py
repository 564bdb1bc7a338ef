"""The store's one index accessor: row ranges and rows by column, through a bounded row-group LRU."""

from __future__ import annotations

import numpy as np
import pytest

from mmkd.data import Sample
from mmkd.store import FeatureStore, StoreError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    samples = [Sample(f"s{i}", f"caption {i}", f"img/{i}.png", labels={"k": i % 3}) for i in range(5000)]
    # row groups follow max(block_size, 1024) rows: 5 groups here
    path = tmp_path_factory.mktemp("idx") / "st"
    FeatureStore.create(path, samples, block_size=1000)
    return FeatureStore.open(path, index_cache_groups=2)


def test_index_rows_spans_row_groups(store):
    t = store.index_rows(990, 1010, ["row", "caption"])
    assert t.column_names == ["row", "caption"]
    assert t.column("row").to_pylist() == list(range(990, 1010))
    assert t.column("caption").to_pylist()[-1] == "caption 1009"
    assert store.index_rows(4999, 5000).column("sample_id").to_pylist() == ["s4999"]
    assert store.index_rows(7, 7, ["image"]).num_rows == 0


def test_index_columns_any_order_bounded_cache(store):
    got = store.index_columns(np.array([4999, 0, 2500, 0]), ("caption", "image"))
    assert got == {"caption": ["caption 4999", "caption 0", "caption 2500", "caption 0"],
                   "image": ["img/4999.png", "img/0.png", "img/2500.png", "img/0.png"]}
    assert len(store._group_cache) == 2  # bounded: never the whole index
    assert store.index_columns([3], ["labels"]) == {"labels": ['{"k": 0}']}


def test_index_accessor_errors_name_the_problem(store):
    with pytest.raises(StoreError, match=r"out of range \[0, 5000\)"):
        store.index_columns([5000], ["caption"])
    with pytest.raises(StoreError, match="unknown index column"):
        store.index_rows(0, 3, ["nope"])
    with pytest.raises(StoreError, match=r"\[4, 9999\) out of range"):
        store.index_rows(4, 9999)
