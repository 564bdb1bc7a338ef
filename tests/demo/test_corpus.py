"""The synthetic corpus: deterministic, balanced, learnable cues, readable by the real readers and eval sets."""

from __future__ import annotations

import numpy as np
import pytest

from mmkd.demo.corpus import (
    MODALITIES,
    get_modality,
    make_batch,
    write_eval_set,
    write_jsonl_dataset,
)


def test_same_seed_same_corpus_other_seed_other_corpus() -> None:
    a = make_batch(("xray", "fundus"), 8, seed=3)
    b = make_batch(("xray", "fundus"), 8, seed=3)
    c = make_batch(("xray", "fundus"), 8, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_every_modality_balanced_with_its_own_look() -> None:
    batch = make_batch(tuple(MODALITIES), 10, seed=0, size=48)
    assert batch.images.shape == (10 * 3 * len(MODALITIES), 48, 48, 3) and batch.images.dtype == np.uint8
    mods = np.array(batch.modalities)
    means = {}
    for name, mod in MODALITIES.items():
        labels = batch.labels[mods == name]
        assert np.bincount(labels, minlength=len(mod.classes)).tolist() == [10] * len(mod.classes)
        means[name] = batch.images[mods == name].reshape(-1, 3).mean(0)
    # the modalities differ in colour: x-rays grey, histology pink, fundus orange on black
    assert np.ptp(means["xray"]) < 3 and means["histology"][0] > means["histology"][1] + 20
    assert means["fundus"][0] > 2 * means["fundus"][2]


@pytest.mark.parametrize("modality", sorted(MODALITIES))
def test_class_cues_are_in_the_pixels(modality: str) -> None:
    # nearest class centroid on per-channel histograms of each standardised image (free of
    # position and brightness jitter), fitted on one half and tested on the other, beats
    # chance (1/3) clearly: the class is drawn into the pixels, not only named in the caption
    batch = make_batch((modality,), 60, seed=1)
    im = batch.images.astype(np.float32)
    im = (im - im.mean((1, 2, 3), keepdims=True)) / im.std((1, 2, 3), keepdims=True)
    x = np.stack([np.concatenate([np.histogram(i[..., c], bins=12, range=(-3, 3))[0] for c in range(3)])
                  for i in im]).astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = batch.labels
    train = np.arange(len(y)) % 2 == 0
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(3)])
    pred = ((x[~train, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[~train]).mean() > 0.45


def test_captions_name_modality_and_finding_unless_vague() -> None:
    batch = make_batch(("dermoscopy",), 40, seed=2, vague=0.5)
    mod = get_modality("dermoscopy")
    findings = [f for fs in mod.findings.values() for f in fs]
    vague = [c for c in batch.captions if not any(f in c for f in findings)]
    assert 0.3 < len(vague) / len(batch) < 0.7
    assert all(any(p in c for p in mod.phrases) for c in batch.captions)
    for caption, label in zip(batch.captions, batch.labels):
        named = [cls for cls, fs in mod.findings.items() if any(f in caption for f in fs)]
        assert named in ([], [mod.classes[label]])


def test_unknown_modality_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="xray"):
        get_modality("ultrasound")


def test_written_corpus_opens_with_the_jsonl_reader(tmp_path) -> None:
    from mmkd.data.images import decode_image
    from mmkd.data import open_dataset

    batch = make_batch(("histology", "xray"), 4, seed=0)
    write_jsonl_dataset(tmp_path / "train", batch, prefix="t")
    ds = open_dataset(tmp_path / "train", format="jsonl", label_columns=["modality", "label"])
    samples = list(ds.samples())
    assert [s.caption for s in samples] == batch.captions
    assert {s.labels["modality"] for s in samples} == {"histology", "xray"}
    img = decode_image(ds.read_image_bytes(samples[0].image))
    assert img.size == (48, 48)
    assert np.array_equal(np.asarray(img.convert("RGB")), batch.images[0])


def test_eval_set_loads_with_classes_prompts_and_splits(tmp_path) -> None:
    from mmkd.eval.sets import load_eval_set

    spec = write_eval_set(tmp_path, "fundus", 6, seed=5)
    es = load_eval_set(str(spec))
    assert es.name == "fundus" and es.labelled and es.captioned
    assert es.class_names == ["healthy", "glaucoma", "retinopathy"]
    assert es.prompt_names == [get_modality("fundus").class_prompts[c] for c in es.class_names]
    assert sorted(np.bincount(es.labels).tolist()) == [6, 6, 6]
    assert sorted(set(es.splits.tolist())) == ["test", "train"]
    assert (es.splits == "train").sum() == 9
    assert es.load_image(es.items[0]).size == (48, 48)
