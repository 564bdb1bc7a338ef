"""`mmkd extract` with a teacher whose features of one sample are NaN: that row is invalid, reason `nonfinite`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines

from mmkd.store import FeatureStore

NAN_ID = "fundus"


def _poison_word(teacher_dir: Path, caption: str, others: list[str]) -> None:
    """NaN the token embedding of a token only ``caption`` holds: that caption's text features become NaN."""
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    def tokens(text: str) -> set[int]:
        return set(open_clip.tokenize([text])[0].tolist())

    unique = sorted(tokens(caption) - set().union(*map(tokens, others)))
    weights_file = teacher_dir / "open_clip_model.safetensors"
    state = load_file(str(weights_file))
    state["token_embedding.weight"][unique[0]] = torch.nan
    save_file(state, str(weights_file))


@pytest.mark.slow
def test_nonfinite_features_make_the_row_invalid(tmp_path, modality_dir, run_mmkd):
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())]
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, specs = tiny_pipelines(tmp_path, kinds=("open_clip",))
    _poison_word(Path(specs["tiny_open_clip"].weights.split(":", 1)[1]), MODALITY_CAPTIONS[NAN_ID],
                 [c for k, c in MODALITY_CAPTIONS.items() if k != NAN_ID])
    store = tmp_path / "st"
    res = run_mmkd("extract", "--pipeline", pipelines, "--data", table, "--teacher", "tiny_open_clip", "--store",
                   store, "--runner", "local", "--block-size", "4", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nonfinite 1" in res.stdout + res.stderr, res.stdout + res.stderr
    st = FeatureStore.open(store)
    row = st.sample_ids.index(NAN_ID)
    valid = st.valid("tiny_open_clip")
    assert not valid[row] and valid.sum() == len(rows) - 1
    fails = st.failures("tiny_open_clip").to_pylist()
    assert [(f["sample_id"], f["row"], f["reason"]) for f in fails] == [(NAN_ID, row, "nonfinite")]
    assert "text features" in fails[0]["detail"] and "image" not in fails[0]["detail"]
    assert np.isfinite(st.read("tiny_open_clip", np.arange(st.n), "text")).all()  # stored as zeros
    deep = run_mmkd("store", "validate", store, "--deep", cwd=tmp_path)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    info = run_mmkd("store", "info", store, cwd=tmp_path)
    assert "nonfinite" in info.stdout, info.stdout
