"""Teacher registry and loaders: tiny teachers of every kind, saved to disk, loaded back."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmkd.config import load_pipelines
from mmkd.teachers import (
    TeacherError, TeacherSpec, UnknownTeacherError, WeightsNotFoundError, get_teacher_spec, load_teacher,
    teachers_from_config,
)
from mmkd.teachers.tiny import KINDS, make_tiny_teachers, write_pipelines

CAPTIONS = ["chest x ray showing a mass in the right lung", "brain mri axial view", "h e stained tissue", ""]



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_teachers(tmp_path_factory.mktemp("tiny"), kinds=("all",), seed=0, dim=24, image_size=32)


@pytest.fixture(scope="module")
def loaded(tiny):
    return {name: load_teacher(spec) for name, spec in tiny.items()}


def _pixels(teacher, n=4, seed=0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]
    return torch.stack([teacher.preprocess(im) for im in images])


def _direct(spec, pixels, captions):
    """Embeddings from the underlying library model, built without mmkd's loader."""
    if spec.loader == "open_clip":
        import open_clip

        model = open_clip.create_model_from_pretrained(spec.weights, return_transform=False).eval()
        tokens = open_clip.get_tokenizer(spec.weights)(captions)
        return model.encode_image(pixels), model.encode_text(tokens)
    from transformers import AutoTokenizer

    if spec.loader == "transformers":
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(spec.weights).eval()
        tok = AutoTokenizer.from_pretrained(spec.weights)
        enc = tok(captions, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    from mmkd.teachers.custom_models import build_custom_model

    model = build_custom_model(spec.arch, spec.model_config).eval()
    sd = torch.load(spec.weights, weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    enc = AutoTokenizer.from_pretrained(spec.tokenizer)(captions, padding="max_length", truncation=True,
                                                        max_length=spec.context_length, return_tensors="pt")
    return model.encode_image(pixels), model.encode_text(enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("name", [f"tiny_{k}" for k in KINDS])
def test_embeddings_match_underlying_model(tiny, loaded, name):
    teacher, spec = loaded[name], tiny[name]
    pixels = _pixels(teacher)
    img, txt = teacher.encode_images(pixels), teacher.encode_texts(CAPTIONS)
    assert img.shape == (4, 24) and txt.shape == (4, 24) and img.dtype == torch.float32
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    with torch.inference_mode():
        ref_img, ref_txt = _direct(spec, pixels, CAPTIONS)
    assert torch.allclose(img, F.normalize(ref_img, dim=-1), atol=1e-5)
    assert torch.allclose(txt, F.normalize(ref_txt, dim=-1), atol=1e-5)
    assert teacher.dim == 24 and teacher.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)


@pytest.mark.parametrize("name", ["tiny_open_clip", "tiny_transformers", "tiny_pmc_clip"])
def test_deterministic_rebuild_and_reload(tmp_path, tiny, loaded, name):
    kind = name.removeprefix("tiny_")
    again = make_tiny_teachers(tmp_path, kinds=(kind,), seed=0, dim=24, image_size=32)[name]
    other = load_teacher(again)
    pixels = _pixels(loaded[name])
    assert torch.equal(loaded[name].encode_images(pixels), other.encode_images(pixels))
    assert torch.equal(loaded[name].encode_texts(CAPTIONS), other.encode_texts(CAPTIONS))
    # a batch of one gives the same vector as the same row inside a batch
    assert torch.allclose(other.encode_texts(CAPTIONS[:1])[0], other.encode_texts(CAPTIONS)[0], atol=1e-5)


def test_over_long_caption_is_truncated(loaded):
    long = "chest x ray " * 400
    for name, teacher in loaded.items():
        tokens = teacher.tokenize([long, "brain"])
        assert tokens["input_ids"].shape[1] <= teacher.context_length, name
        emb = teacher.encode_texts([long])
        assert emb.shape == (1, teacher.dim) and torch.isfinite(emb).all(), name


def test_any_caption_tokenizes_inside_the_vocabulary(loaded):
    # single letters and digits are also words of the tiny vocabulary: ids must stay < vocab size
    from mmkd.teachers.tiny import _word_vocab

    vocab = _word_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab)))
    for name, teacher in loaded.items():
        emb = teacher.encode_texts(["synthetic caption 12", "a 7 b 99 zz 0123 x-ray", "¿qué? 中文"])
        assert torch.isfinite(emb).all(), name


def test_modality_images_preprocess(modality_dir, loaded):
    paths = sorted(modality_dir.iterdir())
    assert len(paths) == 9
    for name, teacher in loaded.items():
        channels = 1 if name == "tiny_medclip" else 3
        batch = torch.stack([teacher.preprocess(Image.open(p)) for p in paths])
        assert batch.shape == (9, channels, 32, 32), name
        assert torch.isfinite(batch).all()
        assert torch.isfinite(teacher.encode_images(batch)).all()


def test_odd_modes_are_converted(loaded):
    teacher = loaded["tiny_open_clip"]
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent black -> white
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    assert torch.equal(teacher.preprocess(rgba), teacher.preprocess(white))
    twelve_bit = Image.fromarray(np.full((40, 40), 4095, dtype=np.uint16))
    gray_white = Image.new("L", (40, 40), 255)
    assert torch.equal(teacher.preprocess(twelve_bit), teacher.preprocess(gray_white.convert("RGB")))
    for img in (Image.new("CMYK", (30, 50), (0, 255, 0, 0)), Image.new("P", (50, 30)), Image.new("1", (33, 33)),
                Image.fromarray(np.random.default_rng(0).random((40, 40), dtype=np.float32), mode="F")):
        assert teacher.preprocess(img).shape == (3, 32, 32)
    med = loaded["tiny_medclip"]
    assert med.image_mode == "L" and med.preprocess(white).shape == (1, 32, 32)


def test_autocast_bf16_on_cpu(loaded):
    teacher = loaded["tiny_open_clip"]
    pixels = _pixels(teacher)
    out = teacher.encode_images(pixels, autocast="bf16")
    assert out.dtype == torch.float32
    assert F.cosine_similarity(out, teacher.encode_images(pixels)).min() > 0.98
    with pytest.raises(ValueError, match="autocast dtype"):
        teacher.encode_images(pixels, autocast="int8")


def test_store_attrs_json(loaded, tiny):
    attrs = loaded["tiny_unimed_clip"].store_attrs()
    json.dumps(attrs)
    assert attrs["normalized"] is True and attrs["dim"] == 24 and attrs["loader"] == "custom"
    assert len(attrs["weights_sha256"]) == 64 and attrs["context_length"] == 16
    assert attrs["preprocessing"]["image_size"] == 32
    assert loaded["tiny_open_clip"].store_attrs()["weights_sha256"]


def test_spec_roundtrip_and_pickle(tiny):
    for spec in tiny.values():
        assert TeacherSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert pickle.loads(pickle.dumps(spec)) == spec


def test_minimal_entry_reads_everything_from_model(tmp_path, tiny):
    folder = tiny["tiny_open_clip"].weights.removeprefix("local-dir:")
    path = tmp_path / "p.yaml"
    path.write_text(f"teachers:\n  mini: {{loader: open_clip, weights: 'local-dir:{folder}'}}\n"
                    f"  hf: {{loader: transformers, weights: {tiny['tiny_transformers'].weights}}}\n")
    cfg = load_pipelines(path)
    mini = load_teacher(get_teacher_spec("mini", cfg))
    assert mini.dim == 24 and mini.preprocessing.image_size == 32 and mini.context_length == 16
    hf = load_teacher(get_teacher_spec("hf", cfg))
    assert hf.dim == 24 and hf.preprocessing.resize_mode == "shortest" and hf.context_length == 16


def test_write_pipelines_roundtrip_and_relative_paths(tmp_path, tiny, monkeypatch):
    path = write_pipelines(tmp_path / "pipelines.yaml", tiny)
    loaded = teachers_from_config(load_pipelines(path))
    assert {n: loaded[n] for n in tiny} == tiny and "biomedclip" in loaded  # extends the shipped registry
    (tmp_path / "rel.yaml").write_text("teachers:\n  r: {loader: custom, arch: medclip, weights: w/m.pt, "
                                       "tokenizer: ./tok}\n  e: {loader: custom, arch: pmc_clip, "
                                       "weights: '${MMKD_TEST_W:-/nowhere}/c.pt', tokenizer: t/t}\n")
    monkeypatch.setenv("MMKD_TEST_W", "/somewhere")
    specs = teachers_from_config(load_pipelines(tmp_path / "rel.yaml"))
    assert specs["r"].weights == str(tmp_path / "w" / "m.pt") and specs["r"].tokenizer == str(tmp_path / "tok")
    assert specs["e"].weights == "/somewhere/c.pt"


def test_unknown_teacher_lists_names(tmp_path, tiny):
    cfg = load_pipelines(write_pipelines(tmp_path / "p.yaml", tiny))
    with pytest.raises(UnknownTeacherError) as err:
        get_teacher_spec("nope", cfg)
    assert isinstance(err.value, KeyError)
    assert "nope" in str(err.value) and all(name in str(err.value) for name in tiny)


@pytest.mark.parametrize("entry, match", [
    ({"loader": "onnx", "weights": "x"}, "unknown loader"),
    ({"loader": "open_clip"}, "'weights' is required"),
    ({"loader": "open_clip", "weights": "/x/model.pt"}, "'arch' is required"),
    ({"loader": "custom", "weights": "hf-hub:a/b"}, "local checkpoint file"),
    ({"loader": "open_clip", "weights": "hf-hub:a/b", "colour": 1}, "unknown keys"),
    ({"loader": "open_clip", "weights": "hf-hub:a/b", "mean": [0.5, 0.5], "std": [1, 1]}, "mean needs"),
    ({"loader": "open_clip", "weights": "hf-hub:a/b", "dim": -3}, "positive integer"),
    ({"loader": "open_clip", "weights": "hf-hub:a/b", "interpolation": "lanczos"}, "interpolation"),
])
def test_bad_entries_are_refused(entry, match):
    with pytest.raises(TeacherError, match=match):
        teachers_from_config({"teachers": {"bad": entry}})


def test_missing_custom_checkpoint_names_path(tmp_path, tiny):
    spec = TeacherSpec.from_dict({**tiny["tiny_pmc_clip"].to_dict(), "weights": str(tmp_path / "gone" / "ck.pt")})
    with pytest.raises(WeightsNotFoundError) as err:
        load_teacher(spec)
    msg = str(err.value)
    assert "tiny_pmc_clip" in msg and str(tmp_path / "gone" / "ck.pt") in msg


def test_missing_hub_weights_offline_names_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for entry in ({"loader": "open_clip", "weights": "hf-hub:org/some-clip"},
                  {"loader": "transformers", "weights": "org/some-clip"}):
        spec = teachers_from_config({"teachers": {"remote": entry}})["remote"]
        with pytest.raises(WeightsNotFoundError) as err:
            load_teacher(spec)
        msg = str(err.value)
        assert "'remote'" in msg and "org/some-clip" in msg and str(tmp_path / "hub" / "models--org--some-clip") in msg
        assert "offline" in msg


def test_missing_local_dir_names_path(tmp_path):
    spec = TeacherSpec(name="gone", loader="open_clip", weights=f"local-dir:{tmp_path}/nothing")
    with pytest.raises(WeightsNotFoundError, match="open_clip_config.json"):
        load_teacher(spec)


def test_checkpoint_key_mismatch_is_loud(tmp_path, tiny):
    from mmkd.teachers.custom_models import CheckpointError

    spec = tiny["tiny_medclip"]
    sd = torch.load(spec.weights, weights_only=True)["state_dict"]
    sd.pop("module.text_model.projection_head.weight")
    sd["module.extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"text_model\.projection_head\.weight.*extra\.weight"):
        load_teacher(TeacherSpec.from_dict({**spec.to_dict(), "weights": str(tmp_path / "bad.pt")}))


def test_dim_mismatch_is_loud(tiny):
    spec = TeacherSpec.from_dict({**tiny["tiny_transformers"].to_dict(), "dim": 512})
    with pytest.raises(TeacherError, match="dim 512.*outputs 24"):
        load_teacher(spec)


REAL_DIMS = {"biomedclip": 512, "bmca_clip": 768, "unimedclip": 512, "quiltnet": 512, "genmedclip": 512,
             "plip": 512, "pubmedclip": 512, "pmc_clip": 768, "medclip": 512}


def test_repo_pipelines_declares_nine_teachers():
    from pathlib import Path

    cfg = load_pipelines(Path(__file__).resolve().parents[2] / "pipelines.yaml")
    specs = teachers_from_config(cfg)
    assert {n: s.dim for n, s in specs.items()} == REAL_DIMS
    assert {n for n, s in specs.items() if s.loader == "custom"} == {"unimedclip", "pmc_clip", "medclip"}
    assert all(s.license and s.source and not s.trust_remote_code for s in specs.values())
    assert specs["medclip"].grayscale and specs["biomedclip"].context_length == 256
