"""Student specs, building, init and export (tiny open_clip models, no network)."""

from __future__ import annotations

import json

import pytest
import torch

from mmkd.distill.student import (
    StudentError,
    build_student,
    export_student,
    load_student_weights,
    resolve_student,
)
from tests.distill.conftest import TINY_STUDENT

# float32 tolerance: reductions over hundreds of terms sum in another order under other BLAS kernels
# (seen: default atol failed on an AMD EPYC); 1e-5 is ~100 float32 ulps at unit scale.
F32 = {"rtol": 1e-5, "atol": 1e-5}


def test_resolve_json_entry_arch_and_unknown(student_json, tmp_path):
    spec = resolve_student(str(student_json))
    assert spec.model_cfg["embed_dim"] == 32
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"model_cfg": TINY_STUDENT, "preprocess_cfg": {"mean": [0.5] * 3}}))
    assert resolve_student(str(wrapped)).preprocess_cfg == {"mean": [0.5] * 3}
    entry = resolve_student("tiny", {"tiny": {"config": TINY_STUDENT, "preprocess_cfg": {"std": [0.2] * 3}}})
    assert entry.name == "tiny" and entry.preprocess_cfg["std"] == [0.2] * 3
    arch = resolve_student("ViT-B-16-quickgelu")
    assert arch.model_cfg["quick_gelu"] is True and arch.model_cfg["vision_cfg"]["patch_size"] == 16
    with pytest.raises(StudentError, match="unknown student 'nope'"):
        resolve_student("nope", {"tiny": {}})
    with pytest.raises(StudentError, match="not found"):
        resolve_student(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(StudentError, match="lacks"):
        resolve_student(str(bad))


def test_build_export_loads_in_open_clip(student_json, tmp_path):
    import open_clip
    from PIL import Image

    student = build_student(resolve_student(str(student_json)))
    assert student.preprocess_cfg["size"] == (32, 32) or student.preprocess_cfg["size"] == [32, 32]
    export_student(student, tmp_path / "export")
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'export'}")
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    student.model.eval()
    img = preprocess(Image.new("RGB", (50, 40), (200, 10, 10))).unsqueeze(0)
    with torch.no_grad():
        a = model.encode_image(img)
        b = student.model.encode_image(img)
        t = model.encode_text(tok(["a ct scan"]))
    assert a.shape == (1, 32) and t.shape == (1, 32)
    assert torch.allclose(a, b, **F32)


def test_init_from_export_and_mismatch(student_json, tmp_path):
    s1 = build_student(resolve_student(str(student_json)))
    export_student(s1, tmp_path / "run" / "export")
    s2 = build_student(resolve_student(str(student_json)))
    load_student_weights(s2.model, tmp_path / "run")  # a run folder resolves to its export
    for (k, v), (_, w) in zip(s1.model.state_dict().items(), s2.model.state_dict().items()):
        assert torch.equal(v, w), k
    other = dict(TINY_STUDENT, embed_dim=16)
    s3 = build_student(resolve_student(other))
    with pytest.raises(StudentError, match="does not fit"):
        load_student_weights(s3.model, tmp_path / "run")
    with pytest.raises(StudentError, match="not found"):
        load_student_weights(s3.model, tmp_path / "nothing.pt")


def test_hf_text_tower_student_exports_self_contained(tmp_path):
    """The paper's student shape (HF text tower, MLP proj) at toy size; the export loads offline."""
    import shutil

    import open_clip
    from transformers import BertConfig

    from mmkd.teachers import tiny
    bert = tmp_path / "bert"
    tiny.save_tiny_tokenizer(bert, 16)
    BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(bert)
    cfg = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": TINY_STUDENT["vision_cfg"],
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}
    student = build_student(resolve_student(cfg))
    export_student(student, tmp_path / "export")
    shutil.rmtree(bert)  # the export must not need the original HF folder
    model, _ = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'export'}")
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    student.model.eval()
    ids = tok(["ct lung lesion"])
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), student.model.encode_text(ids), **F32)
