"""chunk_shuffled_batches: deterministic, complete, chunk-aware, sharded, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from mmkd.store import chunk_shuffled_batches, num_batches


def _all(**kw):
    return list(chunk_shuffled_batches(**kw))


def test_epoch_is_a_permutation_and_deterministic():
    kw = dict(n=1003, block_size=64, batch_size=10, seed=3, epoch=0, drop_last=False)
    a, b = _all(**kw), _all(**kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == num_batches(1003, 10, drop_last=False)
    rows = np.concatenate(a)
    assert sorted(rows.tolist()) == list(range(1003))
    assert not np.array_equal(rows, np.arange(1003))  # shuffled
    other = np.concatenate(_all(**{**kw, "epoch": 1}))
    assert not np.array_equal(rows, other)


def test_chunk_aware_locality():
    bs, buf = 100, 4
    batches = _all(n=5000, block_size=bs, batch_size=32, seed=0, epoch=0, buffer_blocks=buf)
    # each batch draws from at most the blocks of two consecutive windows
    assert max(len(np.unique(b // bs)) for b in batches) <= 2 * buf
    # and a window's blocks are used up before moving on: few distinct blocks over a window of batches
    first_window = np.concatenate(batches[: (buf * bs) // 32])
    assert len(np.unique(first_window // bs)) <= buf + 1


@pytest.mark.parametrize("world_size,num_workers", [(2, 1), (2, 3), (1, 4)])
def test_sharding_is_disjoint_and_equal(world_size, num_workers):
    n, bsz = 997, 8
    per_rank = []
    for rank in range(world_size):
        seq = _all(n=n, block_size=50, batch_size=bsz, seed=1, epoch=2, rank=rank, world_size=world_size)
        # workers split a rank's sequence round-robin, as a DataLoader interleaves them
        parts = [_all(n=n, block_size=50, batch_size=bsz, seed=1, epoch=2, rank=rank, world_size=world_size,
                      worker_id=w, num_workers=num_workers) for w in range(num_workers)]
        inter = [parts[j % num_workers][j // num_workers] for j in range(len(seq))]
        assert all(np.array_equal(x, y) for x, y in zip(seq, inter))
        per_rank.append(np.concatenate(seq))
    assert len({len(r) for r in per_rank}) == 1
    allrows = np.concatenate(per_rank)
    assert len(np.unique(allrows)) == len(allrows) == num_batches(n, bsz, world_size) * bsz * world_size


def test_resume_from_batch():
    kw = dict(n=700, block_size=32, batch_size=16, seed=9, epoch=4)
    full = _all(**kw)
    for num_workers in (1, 2):
        resumed = []
        parts = [_all(**kw, start_batch=11, worker_id=w, num_workers=num_workers) for w in range(num_workers)]
        for j in range(len(full) - 11):
            resumed.append(parts[j % num_workers][j // num_workers])
        assert all(np.array_equal(x, y) for x, y in zip(full[11:], resumed))


def test_bad_arguments():
    with pytest.raises(ValueError, match="bad shard"):
        _all(n=10, block_size=2, batch_size=2, seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="must be positive"):
        _all(n=10, block_size=2, batch_size=0, seed=0, epoch=0)


def test_exclude_mask_drops_rows_keeps_draws_and_equal_rank_batches():
    n, bs = 103, 10
    plain = list(chunk_shuffled_batches(n, bs, 4, seed=5, epoch=1))
    none_excluded = list(chunk_shuffled_batches(n, bs, 4, seed=5, epoch=1, exclude=np.zeros(n, bool)))
    assert [b.tolist() for b in plain] == [b.tolist() for b in none_excluded]
    exclude = np.zeros(n, bool)
    exclude[[0, 7, 50, 99]] = True
    kept = np.concatenate(list(chunk_shuffled_batches(n, bs, 4, seed=5, epoch=1, exclude=exclude)))
    assert not exclude[kept].any() and kept.size == num_batches(n, 4, exclude=exclude) * 4 == 96
    # same relative order as without the mask: excluded rows are filtered out of the same draw
    order = np.concatenate(plain + [np.array([], np.int64)])
    assert kept.tolist() == [r for r in order.tolist() if not exclude[r]][:96]
    ranks = [list(chunk_shuffled_batches(n, bs, 2, seed=5, epoch=1, rank=r, world_size=2, exclude=exclude))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == num_batches(n, 2, 2, exclude=exclude)
    assert all(a.size == b.size == 2 for a, b in zip(*ranks))
    with pytest.raises(ValueError, match="shape"):
        list(chunk_shuffled_batches(n, bs, 4, seed=5, epoch=1, exclude=np.zeros(3, bool)))


def test_fetched_ahead_keeps_order_and_fetches_each_batch_horizon_ahead() -> None:
    from mmkd.store.sampler import fetched_ahead

    batches = [np.arange(i * 4, i * 4 + 4) for i in range(10)]
    fetched: list[int] = []
    yielded = []
    for rows in fetched_ahead(batches, lambda r: fetched.append(int(r[0]) // 4), horizon=3):
        # when batch k is handed out, batches up to k + 3 have been asked for (all of them near the end)
        k = int(rows[0]) // 4
        assert fetched == list(range(min(k + 4, 10)))
        yielded.append(rows)
    assert [r.tolist() for r in yielded] == [b.tolist() for b in batches]
    assert list(fetched_ahead(iter([]), fetched.append, horizon=2)) == []
